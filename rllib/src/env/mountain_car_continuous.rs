//! MountainCarContinuous-v0, as Gymnasium 1.x's
//! `Continuous_MountainCarEnv`: a force in [-1, 1] (clipped there) rocks
//! the car up to the flag at x = 0.45. The reward is 100 on reaching it,
//! minus 0.1 × action² every step (of the action as given, before the
//! clip: Gymnasium's), and the episode is truncated at 999 steps.
//!
//! Gymnasium stores the state as a `float32` array after each step (the
//! reset state is `float64`), and the step's arithmetic mixes that with
//! `float32` actions and Python floats. The step is written over
//! [`Scalar`], which follows NumPy 2's promotion rules, so that every
//! observation matches bit for bit.

use super::numpy::{pow2, Scalar};
use super::{one_float, Action, Env, EnvError, EpisodeState, Space, Step};

const MIN_ACTION: f64 = -1.0;
const MAX_ACTION: f64 = 1.0;
const MIN_POSITION: f64 = -1.2;
const MAX_POSITION: f64 = 0.6;
const MAX_SPEED: f64 = 0.07;
const GOAL_POSITION: f64 = 0.45;
const POWER: f64 = 0.0015;
/// Gymnasium's `max_episode_steps` for MountainCarContinuous-v0.
const MAX_STEPS: u32 = 999;

/// The mountain car with a continuous force.
#[derive(Debug, Clone)]
pub struct MountainCarContinuous {
    /// Position and velocity, typed as Gymnasium holds them.
    episode: EpisodeState<[Scalar; 2]>,
}

impl Default for MountainCarContinuous {
    fn default() -> Self {
        MountainCarContinuous::new()
    }
}

impl MountainCarContinuous {
    /// A mountain car, to be reset.
    pub fn new() -> MountainCarContinuous {
        MountainCarContinuous {
            episode: EpisodeState::new(MAX_STEPS),
        }
    }

    /// Puts the environment in `state` (position, velocity, held in
    /// `float64` as after Gymnasium's reset) with a fresh episode: to
    /// replay a trajectory from a known start. Returns its observation.
    pub fn set_state(&mut self, state: [f64; 2]) -> Vec<f32> {
        self.episode.start(state.map(Scalar::F64));
        state.iter().map(|x| *x as f32).collect()
    }
}

impl Env for MountainCarContinuous {
    fn observation_space(&self) -> Space {
        Space::Box {
            low: vec![MIN_POSITION as f32, -MAX_SPEED as f32],
            high: vec![MAX_POSITION as f32, MAX_SPEED as f32],
        }
    }

    fn action_space(&self) -> Space {
        Space::Box {
            low: vec![MIN_ACTION as f32],
            high: vec![MAX_ACTION as f32],
        }
    }

    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        self.episode.reseed(seed);
        let position = self.episode.rng.uniform(-0.6, -0.4);
        self.set_state([position, 0.0])
    }

    fn step(&mut self, action: &Action) -> Result<Step, EnvError> {
        let a = one_float(action, || self.action_space())?;
        let [mut position, mut velocity] = self.episode.current()?;
        let py = Scalar::Py;
        // `min(max(action[0], -1.0), 1.0)`: Python's min and max keep the
        // float32 unless the bound wins, which is then a Python float.
        let force = if (a as f64) < MIN_ACTION {
            py(MIN_ACTION)
        } else if (a as f64) > MAX_ACTION {
            py(MAX_ACTION)
        } else {
            Scalar::F32(a)
        };
        // `velocity += force * power - 0.0025 * math.cos(3 * position)`
        let cos = py((Scalar::Py(3.0).mul(position)).value().cos());
        velocity = velocity.add(force.mul(py(POWER)).sub(py(0.0025).mul(cos)));
        if velocity.gt(py(MAX_SPEED)) {
            velocity = py(MAX_SPEED);
        }
        if velocity.lt(py(-MAX_SPEED)) {
            velocity = py(-MAX_SPEED);
        }
        position = position.add(velocity);
        if position.gt(py(MAX_POSITION)) {
            position = py(MAX_POSITION);
        }
        if position.lt(py(MIN_POSITION)) {
            position = py(MIN_POSITION);
        }
        if position.eq(py(MIN_POSITION)) && velocity.value() < 0.0 {
            velocity = py(0.0);
        }
        // `goal_velocity` is the int 0: compared exactly.
        let terminated = position.ge(py(GOAL_POSITION)) && velocity.value() >= 0.0;
        let bonus = if terminated { 100.0 } else { 0.0 };
        let reward = bonus - pow2(a as f64) * 0.1;
        // `self.state = np.array([position, velocity], dtype=np.float32)`
        let obs = vec![position.value() as f32, velocity.value() as f32];
        let truncated = self
            .episode
            .advance([Scalar::F32(obs[0]), Scalar::F32(obs[1])], terminated);
        Ok(Step {
            obs,
            reward,
            terminated,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_force_with_the_velocity_reaches_the_flag_with_the_bonus() {
        let mut car = MountainCarContinuous::new();
        let o = car.reset(Some(7));
        assert!((-0.6..-0.4).contains(&o[0]) && o[1] == 0.0);
        let mut v = 0.0;
        let mut total = 0.0;
        for n in 1.. {
            // 1.5 is clipped to 1 as a force but costs 0.225.
            let a = if v >= 0.0 { 1.5 } else { -1.0 };
            let s = car.step(&Action::Continuous(vec![a])).unwrap();
            total += s.reward;
            v = s.obs[1];
            if s.terminated {
                assert!(s.obs[0] >= 0.45 && !s.truncated && n < 300, "{n} {s:?}");
                assert_eq!(s.reward, 100.0 - pow2(a as f64) * 0.1);
                break;
            }
            assert!(!s.truncated);
            assert!(s.reward == -0.225 || s.reward == -0.1, "{}", s.reward);
        }
        assert!(total > 50.0);
        assert!(matches!(
            car.step(&Action::Continuous(vec![0.0])),
            Err(EnvError::NeedsReset(_))
        ));
        assert!(matches!(
            car.step(&Action::Discrete(0)),
            Err(EnvError::BadAction { .. })
        ));
        assert!(matches!(
            car.step(&Action::Continuous(vec![0.0, 1.0])),
            Err(EnvError::BadAction { .. })
        ));
    }

    #[test]
    fn stays_float32_after_the_first_step_and_truncates_at_999() {
        let mut car = MountainCarContinuous::new();
        car.set_state([-0.5, 0.0]);
        for n in 1..=MAX_STEPS {
            let s = car.step(&Action::Continuous(vec![0.0])).unwrap();
            assert!(matches!(car.episode.state(), Some([Scalar::F32(_), Scalar::F32(_)])));
            assert_eq!((s.terminated, s.truncated), (false, n == MAX_STEPS));
        }
    }
}
