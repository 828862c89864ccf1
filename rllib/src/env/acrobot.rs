//! Acrobot-v1, as Gymnasium 1.x's `AcrobotEnv` (Sutton and Barto's
//! acrobot, the book's dynamics): a torque of -1, 0 or +1 (actions 0, 1, 2)
//! on the joint between two links swings the free end above the bar (the
//! height `-cos θ1 - cos(θ1 + θ2) > 1` terminates). A reward of -1 per
//! step (0 on the terminal one), truncation at 500 steps.
//!
//! Each step integrates 0.2 s with one classical Runge-Kutta step (`rk4`,
//! as Gymnasium's), wraps the angles into [-π, π] and bounds the angular
//! velocities to ±4π and ±9π (`wrap` and `bound`, as Gymnasium's). The
//! expressions keep Gymnasium's order of operations (and its `x ** 2`,
//! which is C's `pow`) so that trajectories match bit for bit: the system
//! is chaotic, so a last-bit difference would grow over 500 steps.
//!
//! Gymnasium draws the reset state in `float32`; the state is `float64`
//! from the first step on (NumPy widens it when it appends the torque).

use super::numpy::pow2;
use super::{Action, Env, EnvError, EpisodeState, Space, Step};
use std::f64::consts::PI;

const DT: f64 = 0.2;
const LINK_LENGTH_1: f64 = 1.0;
const LINK_MASS_1: f64 = 1.0;
const LINK_MASS_2: f64 = 1.0;
const LINK_COM_POS_1: f64 = 0.5;
const LINK_COM_POS_2: f64 = 0.5;
const LINK_MOI: f64 = 1.0;
const MAX_VEL_1: f64 = 4.0 * PI;
const MAX_VEL_2: f64 = 9.0 * PI;
const AVAIL_TORQUE: [f64; 3] = [-1.0, 0.0, 1.0];
const G: f64 = 9.8;
/// Gymnasium's `max_episode_steps` for Acrobot-v1.
const MAX_STEPS: u32 = 500;

/// The acrobot with three discrete torques.
#[derive(Debug, Clone)]
pub struct Acrobot {
    /// θ1, θ2, θ̇1, θ̇2.
    episode: EpisodeState<[f64; 4]>,
}

impl Default for Acrobot {
    fn default() -> Self {
        Acrobot::new()
    }
}

impl Acrobot {
    /// An acrobot, to be reset.
    pub fn new() -> Acrobot {
        Acrobot {
            episode: EpisodeState::new(MAX_STEPS),
        }
    }

    /// Puts the environment in `state` (θ1, θ2, θ̇1, θ̇2) with a fresh
    /// episode: to replay a trajectory from a known start. Returns its
    /// observation.
    pub fn set_state(&mut self, state: [f64; 4]) -> Vec<f32> {
        self.episode.start(state);
        Acrobot::obs(&state)
    }

    /// `[cos θ1, sin θ1, cos θ2, sin θ2, θ̇1, θ̇2]`.
    fn obs(s: &[f64; 4]) -> Vec<f32> {
        [s[0].cos(), s[0].sin(), s[1].cos(), s[1].sin(), s[2], s[3]]
            .iter()
            .map(|x| *x as f32)
            .collect()
    }

    fn terminal(s: &[f64; 4]) -> bool {
        -s[0].cos() - (s[1] + s[0]).cos() > 1.0
    }
}

/// Gymnasium's `_dsdt` with the book's dynamics: the derivative of
/// `(θ1, θ2, θ̇1, θ̇2, torque)`.
fn dsdt(s: &[f64; 5]) -> [f64; 5] {
    let (m1, m2, l1, lc1, lc2) = (LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1, LINK_COM_POS_1, LINK_COM_POS_2);
    let (i1, i2) = (LINK_MOI, LINK_MOI);
    let [theta1, theta2, dtheta1, dtheta2, a] = *s;
    let d1 = m1 * pow2(lc1) + m2 * (pow2(l1) + pow2(lc2) + 2.0 * l1 * lc2 * theta2.cos()) + i1 + i2;
    let d2 = m2 * (pow2(lc2) + l1 * lc2 * theta2.cos()) + i2;
    let phi2 = m2 * lc2 * G * (theta1 + theta2 - PI / 2.0).cos();
    let phi1 = -m2 * l1 * lc2 * pow2(dtheta2) * theta2.sin() - 2.0 * m2 * l1 * lc2 * dtheta2 * dtheta1 * theta2.sin()
        + (m1 * lc1 + m2 * l1) * G * (theta1 - PI / 2.0).cos()
        + phi2;
    let ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * pow2(dtheta1) * theta2.sin() - phi2)
        / (m2 * pow2(lc2) + i2 - pow2(d2) / d1);
    let ddtheta1 = -(d2 * ddtheta2 + phi1) / d1;
    [dtheta1, dtheta2, ddtheta1, ddtheta2, 0.0]
}

/// `y + h * k`, element by element (NumPy's `y0 + dt2 * k1`).
fn axpy(y: &[f64; 5], h: f64, k: &[f64; 5]) -> [f64; 5] {
    std::array::from_fn(|i| y[i] + h * k[i])
}

/// Gymnasium's `rk4(derivs, y0, [0, dt])`: one classical Runge-Kutta step
/// of `dt`, returning the first four components.
fn rk4(y0: &[f64; 5], dt: f64) -> [f64; 4] {
    let dt2 = dt / 2.0;
    let k1 = dsdt(y0);
    let k2 = dsdt(&axpy(y0, dt2, &k1));
    let k3 = dsdt(&axpy(y0, dt2, &k2));
    let k4 = dsdt(&axpy(y0, dt, &k3));
    // `y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)`
    let h = dt / 6.0;
    std::array::from_fn(|i| y0[i] + h * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]))
}

/// Gymnasium's `wrap`: `x` into `[m, M]` by whole turns of `M - m`.
fn wrap(mut x: f64, m: f64, big_m: f64) -> f64 {
    let diff = big_m - m;
    while x > big_m {
        x -= diff;
    }
    while x < m {
        x += diff;
    }
    x
}

/// Gymnasium's `bound`: `min(max(x, m), M)` with Python's `min`/`max`.
fn bound(x: f64, m: f64, big_m: f64) -> f64 {
    let x = if m > x { m } else { x };
    if big_m < x {
        big_m
    } else {
        x
    }
}

impl Env for Acrobot {
    fn observation_space(&self) -> Space {
        let high = [1.0f32, 1.0, 1.0, 1.0, MAX_VEL_1 as f32, MAX_VEL_2 as f32];
        Space::Box {
            low: high.iter().map(|h| -h).collect(),
            high: high.to_vec(),
        }
    }

    fn action_space(&self) -> Space {
        Space::Discrete(3)
    }

    fn reset(&mut self, seed: Option<u64>) -> Vec<f32> {
        self.episode.reseed(seed);
        // `uniform(-0.1, 0.1, size=(4,)).astype(np.float32)`
        let s = [(); 4].map(|_| self.episode.rng.uniform(-0.1, 0.1) as f32 as f64);
        self.set_state(s)
    }

    fn step(&mut self, action: &Action) -> Result<Step, EnvError> {
        let torque = match action {
            Action::Discrete(a @ 0..=2) => AVAIL_TORQUE[*a],
            a => {
                return Err(EnvError::BadAction {
                    action: a.clone(),
                    space: self.action_space(),
                })
            }
        };
        let s = self.episode.current()?;
        let mut ns = rk4(&[s[0], s[1], s[2], s[3], torque], DT);
        ns[0] = wrap(ns[0], -PI, PI);
        ns[1] = wrap(ns[1], -PI, PI);
        ns[2] = bound(ns[2], -MAX_VEL_1, MAX_VEL_1);
        ns[3] = bound(ns[3], -MAX_VEL_2, MAX_VEL_2);
        let terminated = Acrobot::terminal(&ns);
        let truncated = self.episode.advance(ns, terminated);
        Ok(Step {
            obs: Acrobot::obs(&ns),
            reward: if terminated { 0.0 } else { -1.0 },
            terminated,
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hanging_still_stays_still_and_truncates_at_500() {
        let mut a = Acrobot::new();
        let o = a.reset(Some(2));
        assert_eq!(o.len(), 6);
        assert!(o[4].abs() <= 0.1 && o[5].abs() <= 0.1);
        a.set_state([0.0; 4]);
        for n in 1..=MAX_STEPS {
            let s = a.step(&Action::Discrete(1)).unwrap();
            // Still, up to the rounding of cos(-π/2) in the gravity terms.
            for (x, want) in s.obs.iter().zip([1.0, 0.0, 1.0, 0.0, 0.0, 0.0]) {
                assert!((x - want).abs() < 1e-12, "{:?}", s.obs);
            }
            assert_eq!((s.reward, s.terminated, s.truncated), (-1.0, false, n == MAX_STEPS));
        }
        assert!(matches!(a.step(&Action::Discrete(1)), Err(EnvError::NeedsReset(_))));
        assert!(matches!(a.step(&Action::Discrete(3)), Err(EnvError::BadAction { .. })));
    }

    #[test]
    fn pumping_with_the_second_joints_velocity_swings_it_up() {
        let mut a = Acrobot::new();
        a.reset(Some(0));
        let mut obs = a.set_state([0.05, 0.0, 0.0, 0.0]);
        for _ in 0..MAX_STEPS {
            let s = a.step(&Action::Discrete(if obs[5] >= 0.0 { 2 } else { 0 })).unwrap();
            obs = s.obs;
            for (x, h) in obs.iter().zip([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2]) {
                assert!(x.abs() as f64 <= h + 1e-6);
            }
            if s.terminated {
                assert_eq!(s.reward, 0.0);
                return;
            }
        }
        panic!("did not swing up in {MAX_STEPS} steps");
    }

    #[test]
    fn wrap_and_bound_as_gymnasium() {
        assert!((wrap(4.0, -PI, PI) - (4.0 - 2.0 * PI)).abs() < 1e-15);
        assert!((wrap(-10.0, -PI, PI) - (-10.0 + 4.0 * PI)).abs() < 1e-15);
        assert_eq!(wrap(PI, -PI, PI), PI);
        assert_eq!(bound(20.0, -MAX_VEL_1, MAX_VEL_1), MAX_VEL_1);
        assert_eq!(bound(-20.0, -MAX_VEL_1, MAX_VEL_1), -MAX_VEL_1);
        assert_eq!(bound(1.0, -2.0, 2.0), 1.0);
    }
}
