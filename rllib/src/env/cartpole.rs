//! CartPole-v1, as Gymnasium 1.x's `CartPoleEnv` (Barto, Sutton and
//! Anderson's cart-pole): the same constants, Euler integration, a
//! termination at 12 degrees or 2.4 units, a reward of 1 per step, and
//! truncation at 500 steps.

use super::{Action, Env, EnvError, EpisodeState, Space, Step};

const GRAVITY: f64 = 9.8;
const MASS_CART: f64 = 1.0;
const MASS_POLE: f64 = 0.1;
const TOTAL_MASS: f64 = MASS_POLE + MASS_CART;
const LENGTH: f64 = 0.5; // half the pole's length
const POLEMASS_LENGTH: f64 = MASS_POLE * LENGTH;
const FORCE_MAG: f64 = 10.0;
const TAU: f64 = 0.02; // seconds between state updates
const THETA_THRESHOLD: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
const X_THRESHOLD: f64 = 2.4;
/// Gymnasium's `max_episode_steps` for CartPole-v1.
const MAX_STEPS: u32 = 500;

/// The cart-pole: push the cart left (0) or right (1) to keep the pole up.
#[derive(Debug, Clone)]
pub struct CartPole {
    episode: EpisodeState<[f64; 4]>,
}

impl Default for CartPole {
    fn default() -> Self {
        CartPole::new()
    }
}

impl CartPole {
    /// A cart-pole, to be reset.
    pub fn new() -> CartPole {
        CartPole {
            episode: EpisodeState::new(MAX_STEPS),
        }
    }

    /// Puts the environment in `state` (x, x_dot, theta, theta_dot) with a
    /// fresh episode: to replay a trajectory from a known start. Returns its
    /// observation.
    pub fn set_state(&mut self, state: [f64; 4]) -> Vec<f32> {
        self.episode.start(state);
        CartPole::obs(&state)
    }

    fn obs(s: &[f64; 4]) -> Vec<f32> {
        s.iter().map(|x| *x as f32).collect()
    }
}

impl Env for CartPole {
    fn observation_space(&self) -> Space {
        let high = [X_THRESHOLD * 2.0, f64::INFINITY, THETA_THRESHOLD * 2.0, f64::INFINITY];
        Space::Box {
            low: high.iter().map(|h| -*h as f32).collect(),
            high: high.iter().map(|h| *h as f32).collect(),
        }
    }

    fn action_space(&self) -> Space {
        Space::Discrete(2)
    }

    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        self.episode.reseed(seed);
        let s = [(); 4].map(|_| self.episode.rng.uniform(-0.05, 0.05));
        self.set_state(s)
    }

    fn step(&mut self, action: &Action) -> Result<Step, EnvError> {
        let force = match action {
            Action::Discrete(1) => FORCE_MAG,
            Action::Discrete(0) => -FORCE_MAG,
            a => {
                return Err(EnvError::BadAction {
                    action: a.clone(),
                    space: self.action_space(),
                })
            }
        };
        let [x, x_dot, theta, theta_dot] = self.episode.current()?;
        let (sin, cos) = (theta.sin(), theta.cos());
        // Gymnasium's order of operations (`np.square(x)` is `x * x`), so
        // that trajectories match bit for bit.
        let temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sin) / TOTAL_MASS;
        let theta_acc = (GRAVITY * sin - cos * temp) / (LENGTH * (4.0 / 3.0 - MASS_POLE * (cos * cos) / TOTAL_MASS));
        let x_acc = temp - POLEMASS_LENGTH * theta_acc * cos / TOTAL_MASS;
        // Euler, as Gymnasium's default `kinematics_integrator`.
        let s = [
            x + TAU * x_dot,
            x_dot + TAU * x_acc,
            theta + TAU * theta_dot,
            theta_dot + TAU * theta_acc,
        ];
        let terminated = s[0] < -X_THRESHOLD || s[0] > X_THRESHOLD || s[2] < -THETA_THRESHOLD || s[2] > THETA_THRESHOLD;
        let truncated = self.episode.advance(s, terminated);
        Ok(Step {
            obs: CartPole::obs(&s),
            reward: 1.0,
            terminated,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_reset_repeats_and_the_pole_falls_when_pushed_one_way() {
        let mut a = CartPole::new();
        let mut b = CartPole::new();
        let o = a.reset(Some(3));
        assert_eq!(o, b.reset(Some(3)));
        assert!(o.iter().all(|x| x.abs() <= 0.05));
        let mut n = 0;
        loop {
            let s = a.step(&Action::Discrete(1)).unwrap();
            n += 1;
            if s.terminated || s.truncated {
                assert!(s.terminated && n < 50, "{n}");
                break;
            }
        }
        assert!(matches!(a.step(&Action::Discrete(1)), Err(EnvError::NeedsReset(_))));
        assert!(matches!(a.step(&Action::Discrete(2)), Err(EnvError::BadAction { .. })));
    }
}
