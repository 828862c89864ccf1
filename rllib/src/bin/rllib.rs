//! `rllib train --algo ppo --env CartPole-v1`: trains an algorithm on an
//! environment on an embedded cluster, a progress line per iteration.

fn main() {
    eprintln!("usage: rllib train --algo ppo|dqn|sac --env NAME");
    std::process::exit(2);
}
