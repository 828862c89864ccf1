//! Pendulum-v1, as Gymnasium 1.x's `PendulumEnv`: swing a pendulum up and
//! hold it there with a torque in [-2, 2]. Semi-implicit Euler with
//! `dt = 0.05`, the angular velocity clipped to [-8, 8], a cost of
//! `θ² + 0.1 θ̇² + 0.001 u²` (θ normalised to [-π, π)), no termination and
//! truncation at 200 steps.
//!
//! Gymnasium keeps the state in `float64` but receives the action as a
//! `float32` array, so the torque's terms (`3 u` and `0.001 u²`) are
//! `float32` arithmetic under NumPy's promotion rules; the step below does
//! the same so that rewards match exactly.

use super::numpy::{pow2, pow2_f32, remainder};
use super::{one_float, Action, Env, EnvError, EpisodeState, Space, Step};
use std::f64::consts::PI;

const MAX_SPEED: f64 = 8.0;
const MAX_TORQUE: f32 = 2.0;
const DT: f64 = 0.05;
const MASS: f64 = 1.0;
const LENGTH: f64 = 1.0;
/// Gymnasium's default gravity (`g=10.0`).
const DEFAULT_GRAVITY: f64 = 10.0;
/// Gymnasium's `max_episode_steps` for Pendulum-v1.
const MAX_STEPS: u32 = 200;

/// The inverted pendulum: apply a torque (one float in [-2, 2]; beyond it
/// the torque is clipped, as Gymnasium does) to keep it upright.
#[derive(Debug, Clone)]
pub struct Pendulum {
    g: f64,
    /// θ (0 is upright) and θ̇.
    episode: EpisodeState<[f64; 2]>,
}

impl Default for Pendulum {
    fn default() -> Self {
        Pendulum::new()
    }
}

impl Pendulum {
    /// A pendulum under Gymnasium's default gravity, to be reset.
    pub fn new() -> Pendulum {
        Pendulum::with_gravity(DEFAULT_GRAVITY)
    }

    /// A pendulum under gravity `g` (`gymnasium.make("Pendulum-v1", g=g)`).
    pub fn with_gravity(g: f64) -> Pendulum {
        Pendulum {
            g,
            episode: EpisodeState::new(MAX_STEPS),
        }
    }

    /// Puts the environment in `state` (θ, θ̇) with a fresh episode: to
    /// replay a trajectory from a known start. Returns its observation.
    pub fn set_state(&mut self, state: [f64; 2]) -> Vec<f32> {
        self.episode.start(state);
        Pendulum::obs(&state)
    }

    fn obs(&[th, thdot]: &[f64; 2]) -> Vec<f32> {
        vec![th.cos() as f32, th.sin() as f32, thdot as f32]
    }
}

/// Gymnasium's `angle_normalize`: θ into [-π, π).
fn angle_normalize(x: f64) -> f64 {
    remainder(x + PI, 2.0 * PI) - PI
}

impl Env for Pendulum {
    fn observation_space(&self) -> Space {
        let high = [1.0f32, 1.0, MAX_SPEED as f32];
        Space::Box {
            low: high.iter().map(|h| -h).collect(),
            high: high.to_vec(),
        }
    }

    fn action_space(&self) -> Space {
        Space::Box {
            low: vec![-MAX_TORQUE],
            high: vec![MAX_TORQUE],
        }
    }

    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        self.episode.reseed(seed);
        let th = self.episode.rng.uniform(-PI, PI);
        let thdot = self.episode.rng.uniform(-1.0, 1.0);
        self.set_state([th, thdot])
    }

    fn step(&mut self, action: &Action) -> Result<Step, EnvError> {
        let u = one_float(action, || self.action_space())?.clamp(-MAX_TORQUE, MAX_TORQUE);
        let [th, thdot] = self.episode.current()?;
        // The order and types of Gymnasium's expressions, term by term:
        // `u ** 2` and `0.001 * ...` and `3.0 * u` are float32.
        let costs = pow2(angle_normalize(th)) + 0.1 * pow2(thdot) + (0.001f32 * pow2_f32(u)) as f64;
        let g = self.g;
        let torque_coeff = 3.0 / (MASS * pow2(LENGTH));
        let torque_term = (torque_coeff as f32 * u) as f64;
        let newthdot = thdot + (3.0 * g / (2.0 * LENGTH) * th.sin() + torque_term) * DT;
        let newthdot = newthdot.clamp(-MAX_SPEED, MAX_SPEED);
        let newth = th + newthdot * DT;
        let s = [newth, newthdot];
        let truncated = self.episode.advance(s, false);
        Ok(Step {
            obs: Pendulum::obs(&s),
            reward: -costs,
            terminated: false,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangs_down_without_torque_truncates_at_200_and_clips_torque() {
        let mut p = Pendulum::new();
        let o = p.reset(Some(1));
        assert_eq!(o.len(), 3);
        assert!((o[0] * o[0] + o[1] * o[1] - 1.0).abs() < 1e-6);
        // Upright and still: no cost, stays put.
        p.set_state([0.0, 0.0]);
        let s = p.step(&Action::Continuous(vec![0.0])).unwrap();
        assert_eq!(s.reward, 0.0);
        assert_eq!(s.obs, vec![1.0, 0.0, 0.0]);
        // A torque of 5 acts as 2, but costs as 2 too (Gymnasium clips first).
        let mut a = Pendulum::new();
        let mut b = Pendulum::new();
        a.set_state([0.5, 0.1]);
        b.set_state([0.5, 0.1]);
        assert_eq!(
            a.step(&Action::Continuous(vec![5.0])),
            b.step(&Action::Continuous(vec![2.0]))
        );
        for n in 2..=MAX_STEPS {
            let s = a.step(&Action::Continuous(vec![0.0])).unwrap();
            assert!(!s.terminated);
            assert_eq!(s.truncated, n == MAX_STEPS);
            assert!(s.obs[2].abs() <= 8.0);
        }
        assert!(matches!(
            a.step(&Action::Continuous(vec![0.0])),
            Err(EnvError::NeedsReset(_))
        ));
        for bad in [
            Action::Discrete(0),
            Action::Continuous(vec![]),
            Action::Continuous(vec![f32::NAN]),
        ] {
            assert!(matches!(b.step(&bad), Err(EnvError::BadAction { .. })), "{bad:?}");
        }
    }

    #[test]
    fn angle_normalize_wraps_into_minus_pi_to_pi() {
        assert!((angle_normalize(2.0 * PI + 0.5) - 0.5).abs() < 1e-12);
        assert!((angle_normalize(-PI - 0.5) - (PI - 0.5)).abs() < 1e-12);
        assert_eq!(angle_normalize(PI), -PI);
    }
}
