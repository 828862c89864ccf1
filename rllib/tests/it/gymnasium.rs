//! Our classic-control ports against Gymnasium 1.2.2 itself: each test
//! replays action sequences in both from the same start states (our
//! `set_state`, Gymnasium's `env.unwrapped.state`, by
//! `rllib/python/gym_dump.py`) and compares every step: observations to
//! within 1e-6, rewards bit for bit, the terminated and truncated flags, the
//! episode's length, and the spaces. The sequences are random (fixed seeds)
//! and scripted, so that episodes end in termination and in truncation.
//! The `process_env_*` tests drive Gymnasium through `ProcessEnv` and
//! `rllib/python/gym_server.py`.
//!
//! They need a Python with gymnasium: `RAYFORGE_GYM_PYTHON` (set up by
//! `scripts/gym-venv.sh`; `scripts/test.sh` exports it). Without it each
//! test says why and passes without checking anything.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use rayforge_rllib::env::{
    Acrobot, Action, BatchEnv, CartPole, Env, EnvError, EnvRng, MountainCar, MountainCarContinuous, Pendulum,
    ProcessEnv, Space, Step,
};
use serde_json::{json, Value};

const DUMP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/gym_dump.py");
const OBS_TOLERANCE: f64 = 1e-6;

/// The Python to run Gymnasium in, or `None` (said on stderr) when there
/// is none.
fn gym_python(test: &str) -> Option<String> {
    let Ok(python) = std::env::var("RAYFORGE_GYM_PYTHON") else {
        eprintln!(
            "skipping {test}: RAYFORGE_GYM_PYTHON is unset (run `bash scripts/gym-venv.sh` and set it to \
             target/gym-venv/bin/python; scripts/test.sh does both)"
        );
        return None;
    };
    let check = Command::new(&python)
        .args([
            "-c",
            "import gymnasium; assert gymnasium.__version__ == '1.2.2', gymnasium.__version__",
        ])
        .output();
    match check {
        Ok(out) if out.status.success() => Some(python),
        Ok(out) => {
            eprintln!(
                "skipping {test}: {python} has no gymnasium 1.2.2 ({})",
                String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
            );
            None
        }
        Err(e) => {
            eprintln!("skipping {test}: cannot run RAYFORGE_GYM_PYTHON={python}: {e}");
            None
        }
    }
}

/// A start state and the actions to replay from it.
struct Case {
    state: Vec<f64>,
    actions: Vec<Action>,
    /// What the case is for, in failure messages.
    label: String,
}

/// What one side returned, step by step (until the episode ended).
#[derive(Debug, Default)]
struct Trajectory {
    steps: Vec<Step>,
}

/// Our environment `id`, put in `state`.
fn ours(id: &str, state: &[f64]) -> Box<dyn Env> {
    match id {
        "CartPole-v1" => {
            let mut e = CartPole::new();
            e.set_state(state.try_into().expect("a CartPole state has 4 numbers"));
            Box::new(e)
        }
        "Pendulum-v1" => {
            let mut e = Pendulum::new();
            e.set_state(state.try_into().expect("a Pendulum state has 2 numbers"));
            Box::new(e)
        }
        "MountainCar-v0" => {
            let mut e = MountainCar::new();
            e.set_state(state.try_into().expect("a MountainCar state has 2 numbers"));
            Box::new(e)
        }
        "MountainCarContinuous-v0" => {
            let mut e = MountainCarContinuous::new();
            e.set_state(state.try_into().expect("a MountainCarContinuous state has 2 numbers"));
            Box::new(e)
        }
        "Acrobot-v1" => {
            let mut e = Acrobot::new();
            e.set_state(state.try_into().expect("an Acrobot state has 4 numbers"));
            Box::new(e)
        }
        _ => panic!("no set_state for {id}"),
    }
}

/// Steps our `env` through `actions` until its episode ends.
fn run_ours(env: &mut dyn Env, actions: &[Action]) -> Trajectory {
    let mut t = Trajectory::default();
    for a in actions {
        let s = env.step(a).expect("a valid action mid-episode");
        let ended = s.terminated || s.truncated;
        t.steps.push(s);
        if ended {
            break;
        }
    }
    t
}

/// Runs a policy in our env from `state` for up to `max` steps, recording
/// its actions: the sequence Gymnasium then replays.
fn scripted(id: &str, state: &[f64], max: usize, mut policy: impl FnMut(&[f32]) -> Action) -> Vec<Action> {
    let mut env = ours(id, state);
    let mut obs = observe(id, state);
    let mut actions = Vec::new();
    for _ in 0..max {
        let a = policy(&obs);
        let s = env.step(&a).expect("a valid action mid-episode");
        actions.push(a);
        obs = s.obs;
        if s.terminated || s.truncated {
            break;
        }
    }
    actions
}

/// The observation of `state` (as `set_state` returns it).
fn observe(id: &str, state: &[f64]) -> Vec<f32> {
    match id {
        "CartPole-v1" => CartPole::new().set_state(state.try_into().unwrap()),
        "Pendulum-v1" => Pendulum::new().set_state(state.try_into().unwrap()),
        "MountainCar-v0" => MountainCar::new().set_state(state.try_into().unwrap()),
        "MountainCarContinuous-v0" => MountainCarContinuous::new().set_state(state.try_into().unwrap()),
        "Acrobot-v1" => Acrobot::new().set_state(state.try_into().unwrap()),
        _ => panic!("no set_state for {id}"),
    }
}

fn action_json(a: &Action) -> Value {
    match a {
        Action::Discrete(i) => json!(i),
        // Widened exactly, so that Python's float32 is ours.
        Action::Continuous(v) => json!(v.iter().map(|x| *x as f64).collect::<Vec<_>>()),
        Action::MultiDiscrete(v) => json!(v),
        Action::Mixed { discrete, continuous } => json!({
            "discrete": discrete,
            "continuous": continuous.iter().map(|x| *x as f64).collect::<Vec<_>>(),
        }),
    }
}

/// Gymnasium's trajectories for `cases` and its spaces, from gym_dump.py.
fn run_gymnasium(python: &str, id: &str, cases: &[Case]) -> (Vec<Trajectory>, Space, Space) {
    let request: Vec<Value> = cases
        .iter()
        .map(|c| json!({"env": id, "state": c.state, "actions": c.actions.iter().map(action_json).collect::<Vec<_>>()}))
        .collect();
    let mut child = Command::new(python)
        .arg(DUMP)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gym_dump.py");
    let mut stdin = child.stdin.take().unwrap();
    let body = serde_json::to_vec(&request).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().expect("run gym_dump.py");
    writer.join().unwrap().expect("write the cases to gym_dump.py");
    assert!(
        out.status.success(),
        "gym_dump.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("gym_dump.py's JSON");
    assert_eq!(results.len(), cases.len());
    let space = |v: &Value| -> Space {
        match v["type"].as_str() {
            Some("discrete") => Space::Discrete(v["n"].as_u64().unwrap() as usize),
            Some("box") => {
                let bounds = |key: &str, inf: f32| -> Vec<f32> {
                    v[key]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().map_or(inf, |x| x as f32))
                        .collect()
                };
                Space::Box {
                    low: bounds("low", f32::NEG_INFINITY),
                    high: bounds("high", f32::INFINITY),
                }
            }
            other => panic!("space type {other:?}"),
        }
    };
    let obs_space = space(&results[0]["observation_space"]);
    let action_space = space(&results[0]["action_space"]);
    let trajectories = results
        .iter()
        .map(|r| {
            let list = |k: &str| r[k].as_array().unwrap().clone();
            let steps = list("obs_bits")
                .iter()
                .zip(list("reward_bits"))
                .zip(list("terminated"))
                .zip(list("truncated"))
                .map(|(((obs, reward), terminated), truncated)| Step {
                    obs: obs
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| f32::from_bits(b.as_u64().unwrap() as u32))
                        .collect(),
                    reward: f64::from_bits(reward.as_u64().unwrap()),
                    terminated: terminated.as_bool().unwrap(),
                    truncated: truncated.as_bool().unwrap(),
                })
                .collect();
            Trajectory { steps }
        })
        .collect();
    (trajectories, obs_space, action_space)
}

/// How the episodes of a comparison ended.
#[derive(Debug, Default)]
struct Ends {
    terminated: usize,
    truncated: usize,
    /// Both at once (terminated on the step limit's step).
    both: usize,
    steps: usize,
    /// Observation components equal to the bit.
    exact: usize,
    components: usize,
    max_diff: f64,
}

/// Runs `cases` in ours and in Gymnasium and asserts that they agree.
fn compare(python: &str, id: &str, cases: &[Case]) -> Ends {
    let (theirs, obs_space, action_space) = run_gymnasium(python, id, cases);
    let probe = ours(id, &cases[0].state);
    assert_eq!(probe.observation_space(), obs_space, "{id}: observation space");
    assert_eq!(probe.action_space(), action_space, "{id}: action space");
    let mut ends = Ends::default();
    for (case, theirs) in cases.iter().zip(theirs) {
        let mine = run_ours(ours(id, &case.state).as_mut(), &case.actions);
        let what = format!("{id}, {} from {:?}", case.label, case.state);
        for (k, (m, t)) in mine.steps.iter().zip(&theirs.steps).enumerate() {
            let at = format!("{what}, step {}", k + 1);
            assert_eq!(m.obs.len(), t.obs.len(), "{at}: observation length");
            for (i, (a, b)) in m.obs.iter().zip(&t.obs).enumerate() {
                let diff = (*a as f64 - *b as f64).abs();
                assert!(
                    diff <= OBS_TOLERANCE,
                    "{at}: observation[{i}] is {a} here, {b} in Gymnasium\n ours: {:?}\n gymnasium: {:?}",
                    m.obs,
                    t.obs
                );
                ends.max_diff = ends.max_diff.max(diff);
                ends.exact += usize::from(a.to_bits() == b.to_bits());
                ends.components += 1;
            }
            assert_eq!(
                m.reward.to_bits(),
                t.reward.to_bits(),
                "{at}: reward {} here, {} in Gymnasium",
                m.reward,
                t.reward
            );
            assert_eq!(
                (m.terminated, m.truncated),
                (t.terminated, t.truncated),
                "{at}: (terminated, truncated)"
            );
        }
        assert_eq!(mine.steps.len(), theirs.steps.len(), "{what}: episode length");
        let last = mine.steps.last().expect("at least one step");
        ends.steps += mine.steps.len();
        match (last.terminated, last.truncated) {
            (true, true) => ends.both += 1,
            (true, false) => ends.terminated += 1,
            (false, true) => ends.truncated += 1,
            (false, false) => {}
        }
    }
    eprintln!(
        "{id}: {} cases, {} steps, {} terminated, {} truncated, {} both; {} of {} observation components bit-exact, \
         largest difference {:e}",
        cases.len(),
        ends.steps,
        ends.terminated,
        ends.truncated,
        ends.both,
        ends.exact,
        ends.components,
        ends.max_diff
    );
    ends
}

fn discrete_random(rng: &mut EnvRng, n: usize, len: usize) -> Vec<Action> {
    (0..len)
        .map(|_| Action::Discrete(((rng.next_f64() * n as f64) as usize).min(n - 1)))
        .collect()
}

fn continuous_random(rng: &mut EnvRng, low: f64, high: f64, len: usize) -> Vec<Action> {
    (0..len)
        .map(|_| Action::Continuous(vec![rng.uniform(low, high) as f32]))
        .collect()
}

/// Balances the pole (a linear policy on the angle, the angular velocity
/// and the cart's drift): CartPole's 500-step truncation.
fn balance(o: &[f32]) -> Action {
    let push = o[2] + 0.3 * o[3] + 0.02 * o[0] + 0.05 * o[1];
    Action::Discrete(usize::from(push > 0.0))
}

#[test]
fn cartpole_matches_gymnasium() {
    let Some(python) = gym_python("cartpole_matches_gymnasium") else {
        return;
    };
    let id = "CartPole-v1";
    let mut rng = EnvRng::new(11);
    let mut cases = Vec::new();
    for k in 0..6 {
        let state: Vec<f64> = (0..4).map(|_| rng.uniform(-0.05, 0.05)).collect();
        cases.push(Case {
            actions: discrete_random(&mut rng, 2, 500),
            state: state.clone(),
            label: format!("random actions #{k}"),
        });
        cases.push(Case {
            actions: scripted(id, &state, 500, balance),
            state,
            label: format!("balancing #{k}"),
        });
    }
    // Near the edges: off the track or over 12 degrees in a step or two.
    for (state, a) in [
        ([2.39, 0.5, 0.0, 0.0], 1),
        ([-2.3, -1.0, 0.05, 0.0], 0),
        ([0.0, 0.0, 0.2, 0.5], 0),
    ] {
        cases.push(Case {
            state: state.to_vec(),
            actions: vec![Action::Discrete(a); 20],
            label: "near a termination edge".into(),
        });
    }
    // Terminated on the 500th step, so truncated as well (TimeLimit's
    // rule): balance, then push one way from a step that makes the pole
    // fall exactly at the limit.
    let starts = [
        [0.01, -0.02, 0.03, 0.01],
        [-0.03, 0.04, -0.01, 0.02],
        [0.0, 0.0, 0.0, 0.0],
    ];
    let (state, both) = starts
        .iter()
        .flat_map(|state| (400..500).flat_map(move |k| [(state, k, 0), (state, k, 1)]))
        .map(|(state, k, dir)| {
            let mut n = 0;
            let actions = scripted(id, state, 500, |o| {
                n += 1;
                if n > k {
                    Action::Discrete(dir)
                } else {
                    balance(o)
                }
            });
            (state, actions)
        })
        .find(|(state, actions)| {
            let t = run_ours(ours(id, &state[..]).as_mut(), actions);
            t.steps.len() == 500 && t.steps[499].terminated
        })
        .expect("a push that drops the pole on the 500th step");
    cases.push(Case {
        state: state.to_vec(),
        actions: both,
        label: "terminated on the 500th step".into(),
    });
    let ends = compare(&python, id, &cases);
    assert!(
        ends.terminated >= 6 && ends.truncated >= 3 && ends.both == 1,
        "{ends:?}"
    );
}

#[test]
fn pendulum_matches_gymnasium() {
    let Some(python) = gym_python("pendulum_matches_gymnasium") else {
        return;
    };
    let id = "Pendulum-v1";
    let mut rng = EnvRng::new(12);
    let mut cases = Vec::new();
    for k in 0..6 {
        let state = vec![
            rng.uniform(-std::f64::consts::PI, std::f64::consts::PI),
            rng.uniform(-1.0, 1.0),
        ];
        // Beyond [-2, 2] half the time: clipped.
        cases.push(Case {
            actions: continuous_random(&mut rng, -4.0, 4.0, 200),
            state: state.clone(),
            label: format!("random torques #{k}"),
        });
        // Pumping energy in at full torque (then past the speed limit).
        cases.push(Case {
            actions: scripted(id, &state, 200, |o| {
                Action::Continuous(vec![if o[2] >= 0.0 { 2.0 } else { -2.0 }])
            }),
            state,
            label: format!("pumping #{k}"),
        });
    }
    cases.push(Case {
        state: vec![3.0, 7.9],
        actions: vec![Action::Continuous(vec![2.0]); 200],
        label: "at the speed limit".into(),
    });
    cases.push(Case {
        state: vec![-20.0, -3.0],
        actions: vec![Action::Continuous(vec![-1e6]); 200],
        label: "far wound, huge torque".into(),
    });
    let ends = compare(&python, id, &cases);
    assert_eq!((ends.truncated, ends.terminated), (cases.len(), 0), "{ends:?}");
}

/// Pushes with the velocity: rocks the car up to the flag.
fn rock(o: &[f32]) -> Action {
    Action::Discrete(if o[1] >= 0.0 { 2 } else { 0 })
}

#[test]
fn mountain_car_matches_gymnasium() {
    let Some(python) = gym_python("mountain_car_matches_gymnasium") else {
        return;
    };
    let id = "MountainCar-v0";
    let mut rng = EnvRng::new(13);
    let mut cases = Vec::new();
    for k in 0..5 {
        let state = vec![rng.uniform(-0.6, -0.4), 0.0];
        cases.push(Case {
            actions: discrete_random(&mut rng, 3, 200),
            state: state.clone(),
            label: format!("random actions #{k}"),
        });
        cases.push(Case {
            actions: scripted(id, &state, 200, rock),
            state,
            label: format!("rocking #{k}"),
        });
    }
    cases.push(Case {
        state: vec![-1.19, -0.05],
        actions: [vec![Action::Discrete(0); 10], scripted(id, &[-1.19, -0.05], 200, rock)].concat(),
        label: "into the left wall".into(),
    });
    cases.push(Case {
        state: vec![0.49, 0.02],
        actions: vec![Action::Discrete(1)],
        label: "at the flag".into(),
    });
    let ends = compare(&python, id, &cases);
    assert!(ends.terminated >= 6 && ends.truncated >= 5, "{ends:?}");
}

#[test]
fn mountain_car_continuous_matches_gymnasium() {
    let Some(python) = gym_python("mountain_car_continuous_matches_gymnasium") else {
        return;
    };
    let id = "MountainCarContinuous-v0";
    let mut rng = EnvRng::new(14);
    let mut cases = Vec::new();
    for k in 0..4 {
        let state = vec![rng.uniform(-0.6, -0.4), 0.0];
        cases.push(Case {
            actions: continuous_random(&mut rng, -1.5, 1.5, 999),
            state: state.clone(),
            label: format!("random forces #{k}"),
        });
        // Full force with the velocity: past the bounds (clipped, and
        // charged as given), on them, and inside them.
        for force in [1.5f32, 1.0, 0.8] {
            cases.push(Case {
                actions: scripted(id, &state, 999, |o| {
                    Action::Continuous(vec![if o[1] >= 0.0 { force } else { -force }])
                }),
                state: state.clone(),
                label: format!("rocking with {force} #{k}"),
            });
        }
    }
    cases.push(Case {
        state: vec![-1.19, -0.05],
        actions: [
            vec![Action::Continuous(vec![-1.0]); 10],
            continuous_random(&mut rng, -1.0, 1.0, 999),
        ]
        .concat(),
        label: "into the left wall".into(),
    });
    cases.push(Case {
        state: vec![0.44, 0.02],
        actions: vec![Action::Continuous(vec![0.25])],
        label: "at the flag".into(),
    });
    let ends = compare(&python, id, &cases);
    assert!(ends.terminated >= 12 && ends.truncated >= 4, "{ends:?}");
}

#[test]
fn acrobot_matches_gymnasium() {
    let Some(python) = gym_python("acrobot_matches_gymnasium") else {
        return;
    };
    let id = "Acrobot-v1";
    let mut rng = EnvRng::new(15);
    let mut cases = Vec::new();
    for k in 0..5 {
        // Gymnasium's reset draws float32 values.
        let state: Vec<f64> = (0..4).map(|_| rng.uniform(-0.1, 0.1) as f32 as f64).collect();
        cases.push(Case {
            actions: discrete_random(&mut rng, 3, 500),
            state: state.clone(),
            label: format!("random torques #{k}"),
        });
        // Pumping with the second joint's velocity swings it up.
        cases.push(Case {
            actions: scripted(id, &state, 500, |o| Action::Discrete(if o[5] >= 0.0 { 2 } else { 0 })),
            state,
            label: format!("pumping #{k}"),
        });
    }
    // Angles past ±π (wrapped) and velocities at the bounds (bounded).
    cases.push(Case {
        state: vec![3.1, -3.1, 12.0, 28.0],
        actions: discrete_random(&mut rng, 3, 500),
        label: "fast, near ±π".into(),
    });
    cases.push(Case {
        state: vec![-3.0, 3.0, -12.5, -28.2],
        actions: vec![Action::Discrete(0); 500],
        label: "fast the other way".into(),
    });
    let ends = compare(&python, id, &cases);
    assert!(ends.terminated >= 5 && ends.truncated >= 3, "{ends:?}");
}

#[test]
fn process_env_serves_gymnasium_cartpole_with_same_step_autoreset() {
    let Some(python) = gym_python("process_env_serves_gymnasium_cartpole_with_same_step_autoreset") else {
        return;
    };
    let mut envs = ProcessEnv::gymnasium(&python, "CartPole-v1", 3).spawn().unwrap();
    let mine = CartPole::new();
    assert_eq!(envs.num_envs(), 3);
    assert_eq!(envs.observation_space(), mine.observation_space());
    assert_eq!(envs.action_space(), mine.action_space());
    let first = envs.reset(Some(5)).unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.iter().flatten().all(|x| x.abs() <= 0.05));
    assert_ne!(first[0], first[1], "env i is seeded with seed + i");
    assert_eq!(envs.reset(Some(5)).unwrap(), first, "the same seed, the same starts");
    let mut lengths = [0u64; 3];
    let mut episodes = 0;
    for _ in 0..120 {
        let s = envs
            .step(&[Action::Discrete(1), Action::Discrete(0), Action::Discrete(1)])
            .unwrap();
        for (i, (step, length)) in s.steps.iter().zip(&mut lengths).enumerate() {
            *length += 1;
            let ended = step.terminated || step.truncated;
            assert_eq!(ended, s.final_obs[i].is_some());
            assert_eq!(step.reward, 1.0);
            if ended {
                // The new episode's first observation, from the reset range.
                assert!(step.obs.iter().all(|x| x.abs() <= 0.05), "{:?}", step.obs);
                let e = s.episodes.iter().find(|e| e.env == i).expect("the episode is reported");
                assert_eq!(
                    (e.length, e.total_reward, e.terminated),
                    (*length, *length as f64, true)
                );
                *length = 0;
                episodes += 1;
            }
        }
    }
    assert!(episodes >= 6, "{episodes}");
    assert!(matches!(
        envs.step(&[Action::Discrete(1)]),
        Err(EnvError::BatchSize { .. })
    ));
    assert!(matches!(
        envs.step(&[Action::Discrete(1), Action::Discrete(2), Action::Discrete(1)]),
        Err(EnvError::BadAction { .. })
    ));
    envs.close().unwrap();
}

#[test]
fn process_env_serves_continuous_gymnasium_envs_to_truncation() {
    let Some(python) = gym_python("process_env_serves_continuous_gymnasium_envs_to_truncation") else {
        return;
    };
    let mut envs = ProcessEnv::gymnasium(&python, "Pendulum-v1", 2).spawn().unwrap();
    assert_eq!(envs.action_space(), Pendulum::new().action_space());
    assert_eq!(envs.observation_space(), Pendulum::new().observation_space());
    envs.reset(None).unwrap();
    for t in 1..=200 {
        // 3.0 is beyond the bound: Gymnasium clips it.
        let s = envs
            .step(&[Action::Continuous(vec![3.0]), Action::Continuous(vec![-0.5])])
            .unwrap();
        assert!(s.steps.iter().all(|s| !s.terminated && s.truncated == (t == 200)));
        if t == 200 {
            assert_eq!(s.episodes.len(), 2);
            assert!(s
                .episodes
                .iter()
                .all(|e| e.length == 200 && !e.terminated && e.total_reward < 0.0));
        }
    }
    assert!(matches!(
        envs.step(&[Action::Continuous(vec![0.0, 1.0]), Action::Continuous(vec![0.0])]),
        Err(EnvError::BadAction { .. })
    ));
}

#[test]
fn process_env_reports_gymnasium_failures_and_a_killed_server() {
    let Some(python) = gym_python("process_env_reports_gymnasium_failures_and_a_killed_server") else {
        return;
    };
    // An unknown id: the server dies at start-up with Gymnasium's error.
    match ProcessEnv::gymnasium(&python, "NoSuchEnv-v0", 1).spawn() {
        Err(EnvError::Remote(m)) => {
            assert!(
                m.contains("before replying to `spaces`") && m.contains("NoSuchEnv"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    let mut envs = ProcessEnv::gymnasium(&python, "MountainCar-v0", 2)
        .timeout(Duration::from_secs(30))
        .spawn()
        .unwrap();
    envs.reset(Some(0)).unwrap();
    let status = Command::new("kill")
        .args(["-9", &envs.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    match envs.step(&[Action::Discrete(0), Action::Discrete(2)]) {
        Err(EnvError::Remote(m)) => assert!(
            m.contains("signal: 9") && m.contains("before replying to `step`"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(envs.reset(None), Err(EnvError::Remote(m)) if m.contains("failed earlier")));
}

/// A Gymnasium environment module with composite spaces, written for the
/// test: `Spaces-v0` observes a Dict (MultiBinary, Discrete, Box) that
/// echoes its Tuple action (Discrete, MultiDiscrete, MultiBinary),
/// `Mixed-v0` takes a Tuple of a Box, a Discrete and a MultiBinary (a mixed
/// action), and `Sequence-v0` an action space that is not served.
const SPACES_MODULE: &str = r#"
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Spaces(gym.Env):
    observation_space = spaces.Dict(
        {"pos": spaces.Discrete(3), "vel": spaces.Box(-1.0, 1.0, (2,), np.float32), "flags": spaces.MultiBinary(2)}
    )
    action_space = spaces.Tuple((spaces.Discrete(3), spaces.MultiDiscrete([2, 4]), spaces.MultiBinary(2)))

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return {"pos": 0, "vel": np.zeros(2, np.float32), "flags": np.zeros(2, np.int8)}, {}

    def step(self, action):
        pos, md, mb = action
        assert isinstance(pos, int) and md.shape == (2,) and mb.shape == (2,), action
        self.t += 1
        obs = {"pos": pos, "vel": np.array([md[0], md[1] / 4], np.float32), "flags": mb.astype(np.int8)}
        return obs, float(pos + md.sum() + mb.sum()), False, self.t >= 3, {}


class Mixed(Spaces):
    action_space = spaces.Tuple((spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(2), spaces.MultiBinary(1)))

    def step(self, action):
        knob, switch, bit = action
        assert knob.shape == (2,) and knob.dtype == np.float32 and isinstance(switch, int) and bit.shape == (1,), action
        self.t += 1
        obs = {"pos": switch, "vel": knob, "flags": np.array([bit[0], 0], np.int8)}
        return obs, float(knob.sum() + 10 * switch + 100 * bit[0]), False, self.t >= 3, {}


class Sequence(Spaces):
    action_space = spaces.Sequence(spaces.Discrete(2))


gym.register("Spaces-v0", entry_point=Spaces)
gym.register("Mixed-v0", entry_point=Mixed)
gym.register("Sequence-v0", entry_point=Sequence)
"#;

#[test]
fn composite_gymnasium_spaces_are_flattened_and_multi_discrete_and_mixed_actions_rebuilt() {
    let Some(python) =
        gym_python("composite_gymnasium_spaces_are_flattened_and_multi_discrete_and_mixed_actions_rebuilt")
    else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("rayforge-gym-spaces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("spaces_test_env.py"), SPACES_MODULE).unwrap();
    let spawn = |id: &str| {
        let mut command = Command::new(&python);
        command
            .env("PYTHONPATH", &dir)
            .args(["-u", "-c", rayforge_rllib::env::GYM_SERVER_PY, id, "--num-envs", "2"]);
        ProcessEnv::builder(command).spawn()
    };
    let mut envs = spawn("spaces_test_env:Spaces-v0").unwrap();
    // Dict keys in Gymnasium's (sorted) order: flags (2 bits), pos (one-hot
    // of 3), vel (2 floats).
    assert_eq!(
        envs.observation_space(),
        Space::Box {
            low: vec![0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0],
            high: vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        }
    );
    assert_eq!(envs.action_space(), Space::MultiDiscrete(vec![3, 2, 4, 2, 2]));
    let first = envs.reset(Some(0)).unwrap();
    assert_eq!(first[0], vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let s = envs
        .step(&[
            Action::MultiDiscrete(vec![2, 1, 3, 0, 1]),
            Action::MultiDiscrete(vec![0, 0, 0, 1, 1]),
        ])
        .unwrap();
    assert_eq!(s.steps[0].obs, vec![0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.75]);
    assert_eq!(s.steps[0].reward, 7.0);
    assert_eq!(s.steps[1].obs, vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(s.steps[1].reward, 2.0);
    // An index past its choice is refused before it is sent.
    let e = envs
        .step(&[
            Action::MultiDiscrete(vec![3, 0, 0, 0, 0]),
            Action::MultiDiscrete(vec![0, 0, 0, 0, 0]),
        ])
        .unwrap_err();
    assert!(matches!(e, EnvError::BadAction { .. }), "{e}");
    envs.close().unwrap();
    // A Tuple of a Box and discrete spaces: its choices, then its box; the
    // server rebuilds the Tuple (the env checks the parts' types).
    let mut envs = spawn("spaces_test_env:Mixed-v0").unwrap();
    assert_eq!(
        envs.action_space(),
        Space::Mixed {
            discrete: vec![2, 2],
            low: vec![-1.0, -1.0],
            high: vec![1.0, 1.0],
        }
    );
    envs.reset(Some(0)).unwrap();
    let act = |d: Vec<usize>, c: Vec<f32>| Action::Mixed {
        discrete: d,
        continuous: c,
    };
    let s = envs
        .step(&[act(vec![1, 0], vec![0.5, -0.25]), act(vec![0, 1], vec![1.0, 1.0])])
        .unwrap();
    assert_eq!(s.steps[0].reward, 10.25);
    assert_eq!(s.steps[0].obs, vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.5, -0.25]);
    assert_eq!(s.steps[1].reward, 102.0);
    // A choice out of range, or a box value missing, is refused before it is
    // sent.
    for bad in [act(vec![2, 0], vec![0.0, 0.0]), act(vec![0, 0], vec![0.0])] {
        let e = envs.step(&[bad.clone(), bad]).unwrap_err();
        assert!(matches!(e, EnvError::BadAction { .. }), "{e}");
    }
    envs.close().unwrap();
    // A space with no fixed form is refused, named.
    let Err(e) = spawn("spaces_test_env:Sequence-v0") else {
        panic!("a Sequence action space was served")
    };
    assert!(e.to_string().contains("is not supported"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ppo_learns_gymnasium_mujoco_inverted_pendulum_through_the_process_env() {
    let Some(python) = gym_python("ppo_learns_gymnasium_mujoco_inverted_pendulum_through_the_process_env") else {
        return;
    };
    // MuJoCo's spaces come through as they are: 4 unbounded floats in, one
    // force in [-3, 3] out.
    let envs = ProcessEnv::gymnasium(&python, "InvertedPendulum-v5", 1)
        .spawn()
        .unwrap();
    assert_eq!(
        envs.action_space(),
        Space::Box {
            low: vec![-3.0],
            high: vec![3.0]
        }
    );
    assert!(
        matches!(envs.observation_space(), Space::Box { low, .. } if low.len() == 4 && low[0] == f32::NEG_INFINITY)
    );
    envs.close().unwrap();
    // The preset (the zoo's MuJoCo defaults on normalized observations)
    // balances the pole for a whole episode, 1000 steps, evaluated
    // deterministically: seen at 20k steps; the budget is 100k.
    rayforge_integration_tests::cluster();
    let c = rayforge_rllib::AlgoConfig::preset(rayforge_rllib::Algo::Ppo, "gym:InvertedPendulum-v5");
    assert!(c.evaluation_interval > 0 && c.observation_filter == "MeanStdFilter");
    let mut a = rayforge_rllib::Algorithm::new(c).unwrap();
    let last = crate::train_until(&mut a, 1000.0, 100_000);
    a.stop();
    assert!(
        last.evaluation_return_mean.is_some_and(|e| e >= 1000.0),
        "{}",
        last.line()
    );
    assert!(last.env_steps_lifetime <= 100_000 + 2048, "{}", last.line());
}
