//! MountainCar-v0, as Gymnasium 1.x's `MountainCarEnv` (Moore's mountain
//! car): push left (0), nothing (1) or right (2) to rock an underpowered car
//! up to the flag at x = 0.5. A reward of -1 per step, termination at the
//! flag, truncation at 200 steps. The state is `float64`, as Gymnasium's.

use super::{Action, Env, EnvError, EpisodeState, Space, Step};

const MIN_POSITION: f64 = -1.2;
const MAX_POSITION: f64 = 0.6;
const MAX_SPEED: f64 = 0.07;
const GOAL_POSITION: f64 = 0.5;
const GOAL_VELOCITY: f64 = 0.0;
const FORCE: f64 = 0.001;
const GRAVITY: f64 = 0.0025;
/// Gymnasium's `max_episode_steps` for MountainCar-v0.
const MAX_STEPS: u32 = 200;

/// The mountain car with three discrete actions.
#[derive(Debug, Clone)]
pub struct MountainCar {
    /// Position and velocity.
    episode: EpisodeState<[f64; 2]>,
}

impl Default for MountainCar {
    fn default() -> Self {
        MountainCar::new()
    }
}

impl MountainCar {
    /// A mountain car, to be reset.
    pub fn new() -> MountainCar {
        MountainCar {
            episode: EpisodeState::new(MAX_STEPS),
        }
    }

    /// Puts the environment in `state` (position, velocity) with a fresh
    /// episode: to replay a trajectory from a known start. Returns its
    /// observation.
    pub fn set_state(&mut self, state: [f64; 2]) -> Vec<f32> {
        self.episode.start(state);
        state.iter().map(|x| *x as f32).collect()
    }
}

impl Env for MountainCar {
    fn observation_space(&self) -> Space {
        Space::Box {
            low: vec![MIN_POSITION as f32, -MAX_SPEED as f32],
            high: vec![MAX_POSITION as f32, MAX_SPEED as f32],
        }
    }

    fn action_space(&self) -> Space {
        Space::Discrete(3)
    }

    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        self.episode.reseed(seed);
        let position = self.episode.rng.uniform(-0.6, -0.4);
        self.set_state([position, 0.0])
    }

    fn step(&mut self, action: &Action) -> Result<Step, EnvError> {
        let push = match action {
            Action::Discrete(a @ 0..=2) => *a as f64 - 1.0,
            a => {
                return Err(EnvError::BadAction {
                    action: a.clone(),
                    space: self.action_space(),
                })
            }
        };
        let [mut position, mut velocity] = self.episode.current()?;
        // `velocity += (action - 1) * force + math.cos(3 * position) * (-gravity)`:
        // the right-hand side is summed first.
        velocity += push * FORCE + (3.0 * position).cos() * (-GRAVITY);
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED);
        position += velocity;
        position = position.clamp(MIN_POSITION, MAX_POSITION);
        if position == MIN_POSITION && velocity < 0.0 {
            velocity = 0.0;
        }
        let terminated = position >= GOAL_POSITION && velocity >= GOAL_VELOCITY;
        let truncated = self.episode.advance([position, velocity], terminated);
        Ok(Step {
            obs: vec![position as f32, velocity as f32],
            reward: -1.0,
            terminated,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocking_reaches_the_flag_and_the_left_wall_stops_the_car() {
        let mut car = MountainCar::new();
        let o = car.reset(Some(0));
        assert!((-0.6..-0.4).contains(&o[0]) && o[1] == 0.0);
        // Push with the velocity: the flag is reached well within 200 steps.
        let mut n = 0;
        let mut v = 0.0;
        loop {
            let s = car.step(&Action::Discrete(if v >= 0.0 { 2 } else { 0 })).unwrap();
            n += 1;
            assert_eq!(s.reward, -1.0);
            v = s.obs[1];
            if s.terminated || s.truncated {
                assert!(s.terminated && !s.truncated && s.obs[0] >= 0.5, "{n} {s:?}");
                break;
            }
        }
        assert!(matches!(car.step(&Action::Discrete(1)), Err(EnvError::NeedsReset(_))));
        // At the left wall moving left: stopped there.
        car.set_state([-1.19, -0.02]);
        let s = car.step(&Action::Discrete(0)).unwrap();
        assert_eq!(s.obs, vec![-1.2, 0.0]);
        // Doing nothing from the bottom: truncated at 200.
        car.set_state([-0.52, 0.0]);
        for n in 1..=MAX_STEPS {
            let s = car.step(&Action::Discrete(1)).unwrap();
            assert_eq!((s.terminated, s.truncated), (false, n == MAX_STEPS));
        }
        assert!(matches!(
            car.step(&Action::Discrete(3)),
            Err(EnvError::BadAction { .. })
        ));
    }
}
