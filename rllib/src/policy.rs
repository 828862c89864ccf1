//! The networks the env runners act with (tch, on the CPU in the
//! runners), their weights as one flat vector (how the learner broadcasts
//! them), and sampling with the runner's own seeded random stream so that
//! a run is reproducible.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::env::Space;

/// What the runners' network is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PolicyKind {
    /// PPO: a policy head and a value network.
    ActorCritic,
    /// DQN: action values (`dueling`: a value and an advantage stream).
    QValues {
        /// A dueling head.
        dueling: bool,
    },
    /// SAC: a squashed Gaussian actor.
    SquashedGaussian,
}

/// The runners' network: its kind, input size, action space and hidden
/// layers, or a user's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicySpec {
    /// The kind.
    pub kind: PolicyKind,
    /// Observation length.
    pub obs_dim: i64,
    /// The action space.
    pub action: Space,
    /// Hidden layer widths.
    pub hidden: Vec<i64>,
    /// PPO: a user's network in place of the two MLPs.
    pub model: Option<CustomModel>,
}

/// A user's actor-critic network for PPO (Ray's custom `RLModule`, SB3's
/// custom policy network): built by a [`ModelBuilder`] in the policy's
/// variable store (so its variables are broadcast to the runners,
/// learned and checkpointed as the built-in networks' are).
pub trait ActorCriticModel: Send {
    /// The policy head's output, `[rows, shape.head_dim]` (logits for
    /// discrete actions, one block per choice for multi-discrete ones, the
    /// Gaussian's mean for a box, whose log standard deviation is a
    /// variable of the policy's own), and the value estimates, `[rows]`.
    fn forward(&self, obs: &Tensor) -> (Tensor, Tensor);
}

/// The sizes a custom model takes and gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// Observation length (its input's columns).
    pub obs_dim: i64,
    /// The policy head's columns ([`action_dim`] of the action space).
    pub head_dim: i64,
}

/// Builds a custom model's variables in the policy's store (under any path
/// of `vs.root()` but `log_std`, which the policy keeps for box actions)
/// from the config's `model_config`. A plain function, so that it travels
/// to the runners' processes (see [`rayforge::FnRef`]); an error is the
/// config's fault and names it.
pub type ModelBuilder = fn(&nn::VarStore, ModelShape, serde_json::Value) -> Result<Box<dyn ActorCriticModel>, String>;

/// A registered model as a spec carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomModel {
    /// The name it was registered under.
    pub name: String,
    /// Its builder.
    pub builder: rayforge::FnRef<ModelBuilder>,
    /// What the builder is given (`model_config`).
    pub config: rayforge::Json<serde_json::Value>,
}

/// This process's registered models.
static MODELS: crate::registry::Registry<ModelBuilder> = crate::registry::Registry::new("model");

/// Registers a custom PPO network under `name`: `AlgoConfig { model:
/// Some(name), model_config, .. }` (or `model = "name"` in a config file)
/// then trains it. As with [`crate::env::register_env`], registering in the
/// driver is enough; a name already taken is refused.
///
/// ```
/// use rayforge_rllib::policy::{register_model, ActorCriticModel, ModelShape};
/// use rayforge_rllib::tch::{nn, nn::Module, Tensor};
///
/// /// One shared trunk, two heads.
/// struct Shared { trunk: nn::Sequential, pi: nn::Linear, vf: nn::Linear }
///
/// impl ActorCriticModel for Shared {
///     fn forward(&self, obs: &Tensor) -> (Tensor, Tensor) {
///         let h = self.trunk.forward(obs);
///         (self.pi.forward(&h), self.vf.forward(&h).squeeze_dim(-1))
///     }
/// }
///
/// fn shared(vs: &nn::VarStore, s: ModelShape, config: serde_json::Value)
///     -> Result<Box<dyn ActorCriticModel>, String> {
///     let p = vs.root() / "shared";
///     let w = config.get("width").and_then(|w| w.as_i64()).unwrap_or(64);
///     let trunk = nn::seq().add(nn::linear(&p / "trunk", s.obs_dim, w, Default::default())).add_fn(|x| x.tanh());
///     Ok(Box::new(Shared {
///         trunk,
///         pi: nn::linear(&p / "pi", w, s.head_dim, Default::default()),
///         vf: nn::linear(&p / "vf", w, 1, Default::default()),
///     }))
/// }
/// register_model("shared", shared)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn register_model(name: &str, builder: ModelBuilder) -> Result<(), String> {
    if name.is_empty() {
        return Err("a model's name cannot be empty".into());
    }
    MODELS.register(name, builder)
}

/// The registered model `name` (this process's, else one published to the
/// cluster) with its config.
pub(crate) fn resolve_model(name: &str, config: serde_json::Value) -> Result<CustomModel, String> {
    match MODELS.get(name) {
        Some(builder) => Ok(CustomModel {
            name: name.to_string(),
            builder,
            config: rayforge::Json(config),
        }),
        None => Err(format!(
            "no model registered as `{name}` (registered here: {})",
            MODELS.names().join(", ")
        )),
    }
}

/// See [`crate::env::publish_registered`].
pub(crate) fn publish_models() -> Result<(), String> {
    MODELS.publish_all()
}

/// A multi-layer perceptron: `dims[0] -> ... -> dims[last]`, `tanh` or
/// ReLU between layers. With `out_gain`, orthogonal initial weights (gain
/// √2 for hidden layers, `out_gain` for the last) as Stable-Baselines3's
/// on-policy networks; without, PyTorch's default initialisation (as its
/// off-policy ones).
pub fn mlp(p: &nn::Path, dims: &[i64], relu: bool, out_gain: Option<f64>) -> nn::Sequential {
    let mut s = nn::seq();
    for i in 0..dims.len().saturating_sub(1) {
        let last = i + 2 == dims.len();
        let cfg = match out_gain {
            Some(out) => nn::LinearConfig {
                ws_init: nn::Init::Orthogonal {
                    gain: if last { out } else { 2f64.sqrt() },
                },
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
            None => torch_default(dims[i]),
        };
        s = s.add(nn::linear(p / format!("l{i}"), dims[i], dims[i + 1], cfg));
        if !last {
            s = if relu {
                s.add_fn(|x| x.relu())
            } else {
                s.add_fn(|x| x.tanh())
            };
        }
    }
    s
}

/// PyTorch's default `nn.Linear` initialisation: weights and biases
/// uniform in `±1/√fan_in`.
pub fn torch_default(fan_in: i64) -> nn::LinearConfig {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    nn::LinearConfig {
        ws_init: nn::Init::Uniform { lo: -b, up: b },
        bs_init: Some(nn::Init::Uniform { lo: -b, up: b }),
        bias: true,
    }
}

/// The number of outputs of an action space's head (actions for a
/// discrete space, dimensions for a box, every choice's actions for a
/// multi-discrete space).
pub fn action_dim(space: &Space) -> i64 {
    match space {
        Space::Discrete(n) => *n as i64,
        Space::Box { low, .. } => low.len() as i64,
        Space::MultiDiscrete(n) => n.iter().sum::<usize>() as i64,
        Space::Mixed { discrete, low, .. } => (discrete.iter().sum::<usize>() + low.len()) as i64,
    }
}

/// The length of the Gaussian part of an action space's head (what PPO's
/// `log_std` covers): a box's dimensions, a mixed space's box's, else 0.
pub fn gaussian_dim(space: &Space) -> i64 {
    match space {
        Space::Box { low, .. } | Space::Mixed { low, .. } => low.len() as i64,
        _ => 0,
    }
}

/// Log-probabilities of `actions` (`[rows, choices]` indices) under
/// independent categoricals with these `logits` (`[rows, sum(n)]`), and
/// their entropy, per row.
fn categorical_logp_entropy(logits: &Tensor, n: &[usize], actions: &Tensor) -> (Tensor, Tensor) {
    let actions = actions.to_kind(Kind::Int64).view([logits.size()[0], -1]);
    // Starts from zeros shaped [rows] (the logits summed over nothing but
    // their columns times 0), so an empty space gives zeros.
    // Two tensors of their own: `+=` adds in place, and a shallow clone
    // would share the storage (log-probabilities and entropies summed into
    // one).
    let zeros = (logits * 0.0).sum_dim_intlist(-1, false, Kind::Float);
    let (mut logp, mut ent) = (zeros.copy(), zeros);
    for (i, l) in split_logits(logits, n).iter().enumerate() {
        let logp_all = l.log_softmax(-1, Kind::Float);
        logp += logp_all
            .gather(-1, &actions.narrow(1, i as i64, 1), false)
            .squeeze_dim(-1);
        ent += -(logp_all.exp() * &logp_all).sum_dim_intlist(-1, false, Kind::Float);
    }
    (logp, ent)
}

/// Log-probabilities of `actions` under diagonal Gaussians of `mean` and
/// `log_std`, and their entropy, per row.
fn gaussian_logp_entropy(mean: &Tensor, log_std: &Tensor, actions: &Tensor) -> (Tensor, Tensor) {
    let var = (log_std * 2.0).exp();
    let d = actions - mean;
    let logp = (-(&d * &d) / (&var * 2.0) - log_std - 0.5 * (2.0 * std::f64::consts::PI).ln()).sum_dim_intlist(
        -1,
        false,
        Kind::Float,
    );
    let ent = (log_std + 0.5 + 0.5 * (2.0 * std::f64::consts::PI).ln()).sum(Kind::Float);
    let ent = ent.expand([mean.size()[0]], false);
    (logp, ent)
}

/// The logits of each choice of a multi-discrete head, `[rows, n[i]]` each.
pub fn split_logits(head: &Tensor, n: &[usize]) -> Vec<Tensor> {
    let sizes: Vec<i64> = n.iter().map(|n| *n as i64).collect();
    head.split_with_sizes(&sizes, -1)
}

/// The runners' network with its variables.
pub struct Policy {
    /// Its variables (what is broadcast).
    pub vs: nn::VarStore,
    /// What it is.
    pub spec: PolicySpec,
    body: Body,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("spec", &self.spec).finish()
    }
}

enum Body {
    Custom {
        model: Box<dyn ActorCriticModel>,
        log_std: Option<Tensor>,
    },
    ActorCritic {
        pi: nn::Sequential,
        vf: nn::Sequential,
        log_std: Option<Tensor>,
    },
    Q {
        trunk: nn::Sequential,
        value: Option<nn::Linear>,
        adv: nn::Linear,
    },
    Gaussian {
        trunk: nn::Sequential,
        mean: nn::Linear,
        log_std: nn::Linear,
    },
}

/// SAC's bounds on the actor's log standard deviation.
pub const LOG_STD_MIN: f64 = -20.0;
/// See [`LOG_STD_MIN`].
pub const LOG_STD_MAX: f64 = 2.0;

impl Policy {
    /// A freshly initialised network on `device` (the current tch seed
    /// decides its weights); a custom model's builder may refuse its
    /// config.
    pub fn new(spec: &PolicySpec, device: Device) -> Result<Policy, String> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let a = action_dim(&spec.action);
        if let Some(custom) = &spec.model {
            let build = custom
                .builder
                .get()
                .map_err(|e| format!("model `{}`: {e}", custom.name))?;
            let shape = ModelShape {
                obs_dim: spec.obs_dim,
                head_dim: a,
            };
            let model =
                build(&vs, shape, custom.config.0.clone()).map_err(|e| format!("model `{}`: {e}", custom.name))?;
            let g = gaussian_dim(&spec.action);
            let log_std = (g > 0).then(|| root.var("log_std", &[g], nn::Init::Const(0.0)));
            return Ok(Policy {
                vs,
                spec: spec.clone(),
                body: Body::Custom { model, log_std },
            });
        }
        Ok(Policy::builtin(spec, device))
    }

    /// The built-in network of `spec`'s kind (its custom model, if any,
    /// left out).
    pub(crate) fn builtin(spec: &PolicySpec, device: Device) -> Policy {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let a = action_dim(&spec.action);
        let last = *spec.hidden.last().unwrap_or(&spec.obs_dim);
        let trunk_dims: Vec<i64> = std::iter::once(spec.obs_dim)
            .chain(spec.hidden.iter().copied())
            .collect();
        let body = match spec.kind {
            PolicyKind::ActorCritic => {
                let mut pi_dims = trunk_dims.clone();
                pi_dims.push(a);
                let mut vf_dims = trunk_dims.clone();
                vf_dims.push(1);
                let g = gaussian_dim(&spec.action);
                let log_std = (g > 0).then(|| root.var("log_std", &[g], nn::Init::Const(0.0)));
                Body::ActorCritic {
                    pi: mlp(&(&root / "pi"), &pi_dims, false, Some(0.01)),
                    vf: mlp(&(&root / "vf"), &vf_dims, false, Some(1.0)),
                    log_std,
                }
            }
            PolicyKind::QValues { dueling } => {
                let mut trunk = mlp(&(&root / "q"), &trunk_dims, true, None);
                if trunk_dims.len() > 1 {
                    trunk = trunk.add_fn(|x| x.relu());
                }
                let value = dueling.then(|| nn::linear(&root / "value", last, 1, torch_default(last)));
                let adv = nn::linear(&root / "adv", last, a, torch_default(last));
                Body::Q { trunk, value, adv }
            }
            PolicyKind::SquashedGaussian => {
                let trunk = mlp(&(&root / "actor"), &trunk_dims, true, None).add_fn(|x| x.relu());
                Body::Gaussian {
                    trunk,
                    mean: nn::linear(&root / "mean", last, a, torch_default(last)),
                    log_std: nn::linear(&root / "log_std", last, a, torch_default(last)),
                }
            }
        };
        Policy {
            vs,
            spec: spec.clone(),
            body,
        }
    }

    /// PPO: the policy head's output (logits, or the Gaussian's mean) and
    /// the value estimates.
    pub fn pi_and_value(&self, obs: &Tensor) -> (Tensor, Tensor) {
        match &self.body {
            Body::Custom { model, .. } => model.forward(obs),
            Body::ActorCritic { pi, vf, .. } => (pi.forward(obs), vf.forward(obs).squeeze_dim(-1)),
            _ => (
                Tensor::zeros([0], (Kind::Float, Device::Cpu)),
                Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            ),
        }
    }

    /// PPO's value estimates.
    pub fn value(&self, obs: &Tensor) -> Tensor {
        self.pi_and_value(obs).1
    }

    /// PPO, continuous actions: the log standard deviation.
    pub fn log_std(&self) -> Option<&Tensor> {
        match &self.body {
            Body::ActorCritic { log_std, .. } | Body::Custom { log_std, .. } => log_std.as_ref(),
            _ => None,
        }
    }

    /// PPO: log-probabilities of `actions` and the entropy, per row.
    pub fn log_prob_entropy(&self, head: &Tensor, actions: &Tensor) -> (Tensor, Tensor) {
        match (self.log_std(), &self.spec.action) {
            (None, Space::MultiDiscrete(n)) => categorical_logp_entropy(head, n, actions),
            (None, _) => {
                let logp_all = head.log_softmax(-1, Kind::Float);
                let logp = logp_all
                    .gather(-1, &actions.to_kind(Kind::Int64).view([-1, 1]), false)
                    .squeeze_dim(-1);
                let ent = -(logp_all.exp() * &logp_all).sum_dim_intlist(-1, false, Kind::Float);
                (logp, ent)
            }
            (Some(log_std), Space::Mixed { discrete, low, .. }) => {
                // The choices' categoricals and the box's Gaussian are
                // independent: log-probabilities and entropies add.
                let logits_len = discrete.iter().sum::<usize>() as i64;
                let k = discrete.len() as i64;
                let rows = head.size()[0];
                let actions = actions.view([rows, -1]);
                let (lc, ec) =
                    categorical_logp_entropy(&head.narrow(-1, 0, logits_len), discrete, &actions.narrow(1, 0, k));
                let (lg, eg) = gaussian_logp_entropy(
                    &head.narrow(-1, logits_len, low.len() as i64),
                    log_std,
                    &actions.narrow(1, k, low.len() as i64),
                );
                (lc + lg, ec + eg)
            }
            (Some(log_std), _) => gaussian_logp_entropy(head, log_std, actions),
        }
    }

    /// DQN: the action values.
    pub fn q_values(&self, obs: &Tensor) -> Tensor {
        match &self.body {
            Body::Q { trunk, value, adv } => {
                let h = trunk.forward(obs);
                let a = adv.forward(&h);
                match value {
                    Some(v) => v.forward(&h) + &a - a.mean_dim(-1, true, Kind::Float),
                    None => a,
                }
            }
            _ => Tensor::zeros([0], (Kind::Float, Device::Cpu)),
        }
    }

    /// SAC: the Gaussian's mean and (clamped) log standard deviation,
    /// before squashing.
    pub fn gaussian(&self, obs: &Tensor) -> (Tensor, Tensor) {
        match &self.body {
            Body::Gaussian { trunk, mean, log_std } => {
                let h = trunk.forward(obs);
                (mean.forward(&h), log_std.forward(&h).clamp(LOG_STD_MIN, LOG_STD_MAX))
            }
            _ => (
                Tensor::zeros([0], (Kind::Float, Device::Cpu)),
                Tensor::zeros([0], (Kind::Float, Device::Cpu)),
            ),
        }
    }

    /// The weights as one vector: every variable, by name, flattened.
    pub fn weights(&self) -> Vec<f32> {
        flat_weights(&self.vs)
    }

    /// Loads weights made by [`Policy::weights`] of the same spec.
    pub fn set_weights(&mut self, w: &[f32]) -> Result<(), String> {
        set_flat_weights(&mut self.vs, w)
    }
}

/// Every variable of `vs`, sorted by name, flattened into one vector.
pub fn flat_weights(vs: &nn::VarStore) -> Vec<f32> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::new();
    for (_, t) in vars {
        let t = t
            .detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]);
        // A contiguous CPU f32 vector converts without fail.
        out.extend(Vec::<f32>::try_from(&t).unwrap_or_default());
    }
    out
}

/// Loads a vector made by [`flat_weights`] into `vs`.
pub fn set_flat_weights(vs: &mut nn::VarStore, w: &[f32]) -> Result<(), String> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let total: i64 = vars.iter().map(|(_, t)| t.numel() as i64).sum();
    if total != w.len() as i64 {
        return Err(format!("weights of {} values for a network of {total}", w.len()));
    }
    let mut at = 0usize;
    tch::no_grad(|| {
        for (_, mut t) in vars {
            let n = t.numel();
            let src = Tensor::from_slice(&w[at..at + n])
                .view(t.size().as_slice())
                .to_device(t.device());
            t.copy_(&src);
            at += n;
        }
    });
    Ok(())
}

/// A standard normal draw (Box-Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An index drawn with the probabilities `p`.
pub fn categorical(rng: &mut StdRng, p: &[f32]) -> usize {
    let total: f32 = p.iter().sum();
    let mut x = rng.random::<f32>() * total;
    for (i, pi) in p.iter().enumerate() {
        if x < *pi {
            return i;
        }
        x -= pi;
    }
    p.len().saturating_sub(1)
}

/// Rows of a 2-D CPU tensor as vectors.
pub fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let size = t.size();
    let (n, d) = match size.as_slice() {
        [n] => (*n as usize, 1usize),
        [n, d] => (*n as usize, *d as usize),
        _ => return Vec::new(),
    };
    let flat = Vec::<f32>::try_from(&t.view([-1])).unwrap_or_default();
    (0..n).map(|i| flat[i * d..(i + 1) * d].to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_between_networks_of_one_spec() {
        tch::manual_seed(0);
        let spec = PolicySpec {
            kind: PolicyKind::ActorCritic,
            obs_dim: 4,
            action: Space::Discrete(2),
            hidden: vec![8, 8],
            model: None,
        };
        let a = Policy::new(&spec, Device::Cpu).unwrap();
        let mut b = Policy::new(&spec, Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[0.1f32, -0.2, 0.3, 0.0]).view([1, 4]);
        assert!(!a.pi_and_value(&x).0.allclose(&b.pi_and_value(&x).0, 1e-6, 1e-6, false));
        b.set_weights(&a.weights()).unwrap();
        assert!(a.pi_and_value(&x).0.allclose(&b.pi_and_value(&x).0, 1e-6, 1e-6, false));
        assert!(b.set_weights(&[1.0]).is_err());
    }

    #[test]
    fn log_probabilities_match_the_distributions() {
        let spec = PolicySpec {
            kind: PolicyKind::ActorCritic,
            obs_dim: 2,
            action: Space::Box {
                low: vec![-1.0],
                high: vec![1.0],
            },
            hidden: vec![4],
            model: None,
        };
        let p = Policy::new(&spec, Device::Cpu).unwrap();
        // log_std 0: a standard normal around the mean.
        let mean = Tensor::from_slice(&[0.0f32]).view([1, 1]);
        let (logp, ent) = p.log_prob_entropy(&mean, &Tensor::from_slice(&[1.0f32]).view([1, 1]));
        let want = -0.5 - 0.5 * (2.0 * std::f64::consts::PI).ln();
        assert!((logp.double_value(&[0]) - want).abs() < 1e-6);
        assert!((ent.double_value(&[0]) - (0.5 + 0.5 * (2.0 * std::f64::consts::PI).ln())).abs() < 1e-6);
        // A mixed space: a categorical (logits 0 and ln 3: p = 1/4, 3/4) and
        // a standard normal, independent: log-probabilities and entropies add.
        let mixed = Policy::new(
            &PolicySpec {
                action: Space::Mixed {
                    discrete: vec![2],
                    low: vec![-1.0],
                    high: vec![1.0],
                },
                ..spec.clone()
            },
            Device::Cpu,
        )
        .unwrap();
        let head = Tensor::from_slice(&[0.0f32, 3f32.ln(), 0.0]).view([1, 3]);
        let (logp, ent) = mixed.log_prob_entropy(&head, &Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]));
        assert!(
            (logp.double_value(&[0]) - (0.75f64.ln() + want)).abs() < 1e-6,
            "{} vs {}",
            logp.double_value(&[0]),
            0.75f64.ln() + want
        );
        let h_cat = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        let h_gauss = 0.5 + 0.5 * (2.0 * std::f64::consts::PI).ln();
        assert!((ent.double_value(&[0]) - (h_cat + h_gauss)).abs() < 1e-6);
        let mut rng: StdRng = rand::SeedableRng::seed_from_u64(1);
        let picks: Vec<usize> = (0..1000).map(|_| categorical(&mut rng, &[0.2, 0.8])).collect();
        let ones = picks.iter().filter(|i| **i == 1).count();
        assert!((700..900).contains(&ones), "{ones}");
    }
}
