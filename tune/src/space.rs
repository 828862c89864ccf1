//! Search spaces: what each hyperparameter may be, as Ray Tune's
//! `tune.uniform`, `tune.loguniform`, `tune.choice`, `tune.grid_search`,
//! `tune.sample_from` and the rest, and how a space turns into trial
//! configs (every grid point, `num_samples` times, the other parameters
//! drawn at random).
//!
//! In a `search.toml`, `[param_space]` holds one entry per parameter: a
//! plain value is a constant, and an inline table with one key is a domain:
//!
//! ```toml
//! [param_space]
//! lr = { loguniform = [1e-4, 1e-1] }
//! width = { choice = [64, 128, 256] }
//! layers = { grid = [1, 2, 3] }
//! momentum = { quniform = [0.5, 0.99, 0.01] }
//! epochs = 10
//! nested = { const = { a = 1 } }    # a table as a constant
//! ```
//!
//! Nested and conditional spaces, as Ray Tune's nested `param_space` dicts and
//! HyperOpt's `hp.choice` of sub-spaces: any other table is a table of
//! parameters of its own (the trial sees a table, its domains drawn, its grids
//! crossed with the others), and a `choice` among tables is a conditional
//! space — one table chosen per trial, only its own parameters drawn:
//!
//! ```toml
//! [param_space.model]
//! layers = { randint = [1, 4] }
//! width = { grid = [64, 128] }
//!
//! [param_space]
//! optimizer = { choice = [
//!     { name = "sgd", lr = { loguniform = [1e-3, 1e-1] }, momentum = { uniform = [0.5, 0.99] } },
//!     { name = "adam", lr = { loguniform = [1e-4, 1e-2] } },
//! ] }
//! ```
//!
//! Model-based searchers (TPE) model the top-level domains and draw the
//! parameters inside tables at random, as the default searcher does.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::error::{Error, Result};

/// One trial's parameters, by name.
pub type Config = BTreeMap<String, Value>;

/// Where a parameter's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// Every value, each in its own trials (`tune.grid_search`).
    Grid(Vec<Value>),
    /// One of the values, uniformly (`tune.choice`).
    Choice(Vec<Value>),
    /// A float in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (excluded).
        high: f64,
    },
    /// A uniform float rounded to a multiple of `q`.
    QUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
        /// The step.
        q: f64,
    },
    /// A float whose logarithm is uniform in `[ln low, ln high)`.
    LogUniform {
        /// Lower bound (above 0).
        low: f64,
        /// Upper bound (excluded).
        high: f64,
    },
    /// A log-uniform float rounded to a multiple of `q`.
    QLogUniform {
        /// Lower bound (above 0).
        low: f64,
        /// Upper bound.
        high: f64,
        /// The step.
        q: f64,
    },
    /// An integer in `[low, high)`.
    RandInt {
        /// Lower bound.
        low: i64,
        /// Upper bound (excluded).
        high: i64,
    },
    /// An integer in `[low, high]` that is a multiple of `q` (as Ray, the
    /// upper bound included).
    QRandInt {
        /// Lower bound.
        low: i64,
        /// Upper bound (included).
        high: i64,
        /// The step.
        q: i64,
    },
    /// An integer in `[low, high)` whose logarithm is uniform.
    LogRandInt {
        /// Lower bound (at least 1).
        low: i64,
        /// Upper bound (excluded).
        high: i64,
    },
    /// A normally distributed float.
    RandN {
        /// The mean.
        mean: f64,
        /// The standard deviation.
        sd: f64,
    },
}

impl Domain {
    /// Checks the bounds, naming `field` in the error.
    fn validate(&self, field: &str, line: Option<usize>) -> Result<()> {
        let bad = |m: String| Err(Error::config(field, line, m));
        match *self {
            Domain::Grid(ref v) | Domain::Choice(ref v) if v.is_empty() => bad("needs at least one value".into()),
            Domain::Uniform { low, high } | Domain::QUniform { low, high, .. } if !below(low, high) => {
                bad(format!("the lower bound {low} must be below the upper bound {high}"))
            }
            Domain::LogUniform { low, high } | Domain::QLogUniform { low, high, .. }
                if !(below(0.0, low) && below(low, high)) =>
            {
                bad(format!("needs 0 < lower ({low}) < upper ({high})"))
            }
            Domain::QUniform { q, .. } | Domain::QLogUniform { q, .. } if !below(0.0, q) => {
                bad(format!("the step q must be above 0, got {q}"))
            }
            Domain::RandInt { low, high } if low >= high => bad(format!(
                "the lower bound {low} must be below the upper bound {high} (excluded)"
            )),
            Domain::QRandInt { low, high, q } if low > high || q <= 0 => bad(format!(
                "needs lower ({low}) <= upper ({high}) and a step above 0 ({q})"
            )),
            Domain::LogRandInt { low, high } if !(1 <= low && low < high) => {
                bad(format!("needs 1 <= lower ({low}) < upper ({high}, excluded)"))
            }
            Domain::RandN { sd, .. } if !below(0.0, sd) => {
                bad(format!("the standard deviation must be above 0, got {sd}"))
            }
            _ => Ok(()),
        }
    }

    /// A value drawn from the domain (a grid draws uniformly, as a choice).
    pub fn sample(&self, rng: &mut impl Rng) -> Value {
        let quantize = |x: f64, q: f64| (x / q).round() * q;
        match self {
            Domain::Grid(v) | Domain::Choice(v) => v[rng.random_range(0..v.len())].clone(),
            Domain::Uniform { low, high } => Value::from(rng.random_range(*low..*high)),
            Domain::QUniform { low, high, q } => {
                Value::from(quantize(rng.random_range(*low..*high), *q).clamp(*low, *high))
            }
            Domain::LogUniform { low, high } => Value::from(rng.random_range(low.ln()..high.ln()).exp()),
            Domain::QLogUniform { low, high, q } => {
                Value::from(quantize(rng.random_range(low.ln()..high.ln()).exp(), *q).clamp(*low, *high))
            }
            Domain::RandInt { low, high } => Value::from(rng.random_range(*low..*high)),
            Domain::QRandInt { low, high, q } => {
                let steps = (high - low) / q;
                Value::from(low + q * rng.random_range(0..=steps))
            }
            Domain::LogRandInt { low, high } => {
                let x = rng.random_range((*low as f64).ln()..(*high as f64).ln()).exp();
                Value::from((x.floor() as i64).clamp(*low, high - 1))
            }
            Domain::RandN { mean, sd } => {
                // Box-Muller: two uniforms in (0, 1] make one normal draw.
                let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random::<f64>());
                Value::from(mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos())
            }
        }
    }
}

/// `a < b`, false when either is NaN.
fn below(a: f64, b: f64) -> bool {
    a < b
}

/// One parameter of a space.
#[derive(Debug, Clone)]
pub enum Param {
    /// The same value in every trial.
    Const(Value),
    /// Drawn from a domain.
    Domain(Domain),
    /// Computed from the trial's other parameters (`tune.sample_from`),
    /// after them, in the order parameters were added.
    Derived(fn(&Config) -> Value),
    /// A table of parameters of its own: the trial's value is a table (a
    /// JSON object) with one entry per parameter of the inner space (Ray
    /// Tune's nested `param_space` dicts). Its grids count in the grid.
    Nested(SearchSpace),
    /// A conditional space: one of the branches, chosen uniformly per trial,
    /// then completed — a constant as it is, a [`Param::Nested`] table with
    /// its own domains drawn (HyperOpt's `hp.choice` of sub-spaces). Grids
    /// inside a branch are refused by [`SearchSpace::validate`].
    OneOf(Vec<Param>),
}

impl Param {
    /// A value for this parameter: `fixed` is what the grid (or a caller)
    /// already decided for it, if anything.
    fn draw(&self, fixed: Option<&Value>, rng: &mut impl Rng) -> Option<Value> {
        match self {
            Param::Const(v) => Some(fixed.cloned().unwrap_or_else(|| v.clone())),
            Param::Domain(d) => Some(fixed.cloned().unwrap_or_else(|| d.sample(rng))),
            Param::Derived(_) => fixed.cloned(),
            Param::Nested(space) => {
                if let Some(v) = fixed.filter(|v| !v.is_object()) {
                    return Some(v.clone());
                }
                let inner: Config = fixed
                    .and_then(Value::as_object)
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default();
                Some(Value::Object(space.complete(&inner, rng).into_iter().collect()))
            }
            Param::OneOf(branches) => {
                if let Some(v) = fixed {
                    return Some(v.clone());
                }
                // validate() refuses an empty list; an empty one draws nothing.
                let n = branches.len();
                (n > 0)
                    .then(|| branches[rng.random_range(0..n)].draw(None, rng))
                    .flatten()
            }
        }
    }

    /// Checks bounds (and, inside a conditional branch, that there is no
    /// grid), naming `field`.
    fn validate(&self, field: &str, in_branch: bool) -> Result<()> {
        match self {
            Param::Domain(Domain::Grid(_)) if in_branch => Err(Error::config(
                field,
                None,
                "a grid inside a choice's table is not supported (each trial draws one table): use a choice",
            )),
            Param::Domain(d) => d.validate(field, None),
            Param::Nested(space) => space.validate_under(field, in_branch),
            Param::OneOf(branches) if branches.is_empty() => {
                Err(Error::config(field, None, "needs at least one value"))
            }
            Param::OneOf(branches) => {
                for (i, b) in branches.iter().enumerate() {
                    b.validate(&format!("{field}.choice[{i}]"), true)?;
                }
                Ok(())
            }
            Param::Const(_) | Param::Derived(_) => Ok(()),
        }
    }
}

/// Named parameters, each a constant, a domain or derived from the others.
#[derive(Debug, Clone, Default)]
pub struct SearchSpace {
    params: Vec<(String, Param)>,
}

impl SearchSpace {
    /// An empty space.
    pub fn new() -> SearchSpace {
        SearchSpace::default()
    }

    /// Adds (or replaces) a parameter.
    pub fn param(mut self, name: &str, p: Param) -> SearchSpace {
        self.params.retain(|(n, _)| n != name);
        self.params.push((name.to_string(), p));
        self
    }

    /// Adds a parameter drawn from `d`.
    pub fn domain(self, name: &str, d: Domain) -> SearchSpace {
        self.param(name, Param::Domain(d))
    }

    /// Adds a constant.
    pub fn constant(self, name: &str, v: impl Into<Value>) -> SearchSpace {
        self.param(name, Param::Const(v.into()))
    }

    /// Adds a parameter computed from the others.
    pub fn derived(self, name: &str, f: fn(&Config) -> Value) -> SearchSpace {
        self.param(name, Param::Derived(f))
    }

    /// The parameters, in the order they were added.
    pub fn params(&self) -> &[(String, Param)] {
        &self.params
    }

    /// Checks every domain's bounds, inside tables too.
    pub fn validate(&self) -> Result<()> {
        self.validate_under("param_space", false)
    }

    fn validate_under(&self, prefix: &str, in_branch: bool) -> Result<()> {
        for (name, p) in &self.params {
            p.validate(&format!("{prefix}.{name}"), in_branch)?;
        }
        Ok(())
    }

    /// The number of grid points (1 without grid parameters), the grids
    /// inside tables included.
    pub fn grid_size(&self) -> usize {
        self.params
            .iter()
            .map(|(_, p)| match p {
                Param::Domain(Domain::Grid(v)) => v.len(),
                Param::Nested(inner) => inner.grid_size(),
                _ => 1,
            })
            .product()
    }

    /// Fills in a config: `fixed` holds the grid parameters' values (and
    /// any others decided elsewhere); the other domains are drawn, then the
    /// derived parameters computed.
    pub fn complete(&self, fixed: &Config, rng: &mut impl Rng) -> Config {
        let mut c = fixed.clone();
        for (name, p) in &self.params {
            if let Some(v) = p.draw(fixed.get(name), rng) {
                c.insert(name.clone(), v);
            }
        }
        for (name, p) in &self.params {
            if let (Param::Derived(f), false) = (p, fixed.contains_key(name)) {
                let v = f(&c);
                c.insert(name.clone(), v);
            }
        }
        c
    }

    /// `fixed` crossed with every value of each grid parameter it does not
    /// set: one config per grid point (`[fixed]` without grids).
    pub(crate) fn grid_points(&self, fixed: &Config) -> Vec<Config> {
        let mut points = vec![fixed.clone()];
        for (name, p) in &self.params {
            if fixed.contains_key(name) {
                continue;
            }
            // A table's grid points are tables holding its grid parameters.
            let nested;
            let values = match p {
                Param::Domain(Domain::Grid(values)) => values,
                Param::Nested(inner) if inner.grid_size() > 1 => {
                    nested = inner
                        .grid_points(&Config::new())
                        .into_iter()
                        .map(|c| Value::Object(c.into_iter().collect()))
                        .collect::<Vec<_>>();
                    &nested
                }
                _ => continue,
            };
            points = points
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(name.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        points
    }

    /// The configs of a random / grid search, as Ray Tune's default
    /// searcher: every point of the grid (the product of the grid
    /// parameters), each `num_samples` times, the other domains drawn from
    /// a generator seeded with `seed`.
    pub fn variants(&self, num_samples: usize, seed: u64) -> Result<Vec<Config>> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let points = self.grid_points(&Config::new());
        let mut out = Vec::with_capacity(points.len() * num_samples);
        for _ in 0..num_samples {
            for p in &points {
                out.push(self.complete(p, &mut rng));
            }
        }
        Ok(out)
    }

    /// The `[param_space]` table of a TOML document (other tables are left
    /// to their readers). An entry that is not a valid domain is an error
    /// naming it and its line.
    pub fn from_toml(text: &str) -> Result<SearchSpace> {
        let doc: BTreeMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(text).map_err(|e| toml_error(text, "search space", e))?;
        let Some(table) = doc.get("param_space") else {
            return Ok(SearchSpace::new());
        };
        let line = line_of(text, table.span().start);
        let Some(entries) = table.get_ref().as_table() else {
            return Err(Error::config(
                "param_space",
                Some(line),
                "must be a table of parameters",
            ));
        };
        // Spans for each entry: parse the table again with spans kept.
        #[derive(serde::Deserialize)]
        struct Doc {
            param_space: BTreeMap<String, toml::Spanned<toml::Value>>,
        }
        let spanned: Doc = toml::from_str(text).map_err(|e| toml_error(text, "param_space", e))?;
        let mut space = SearchSpace::new();
        // Declaration order: by position in the file.
        let mut order: Vec<(&String, &toml::Spanned<toml::Value>)> = spanned.param_space.iter().collect();
        order.sort_by_key(|(_, v)| v.span().start);
        debug_assert_eq!(order.len(), entries.len());
        for (name, value) in order {
            let field = format!("param_space.{name}");
            let line = Some(line_of(text, value.span().start));
            space = space.param(name, parse_param(text, &field, line, value.get_ref())?);
        }
        Ok(space)
    }
}

/// The line (1-based) of `key = ...` in `[table]` of `text`.
pub(crate) fn line_in_table(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut inside = false;
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') {
            inside = l.trim_start_matches('[').split(']').next().map(str::trim) == Some(table);
        } else if inside && l.split('=').next().map(|k| k.trim().trim_matches('"')) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

/// A table of parameters (`[param_space.name]`, or an inline table that is
/// not a domain), each entry read as a parameter of its own. An entry's line
/// is its own under a `[param_space.name]` header, else the table's.
fn parse_table(text: &str, field: &str, line: Option<usize>, t: &toml::Table) -> Result<SearchSpace> {
    let mut space = SearchSpace::new();
    for (key, v) in t {
        let own = line_in_table(text, field, key).or(line);
        space = space.param(key, parse_param(text, &format!("{field}.{key}"), own, v)?);
    }
    Ok(space)
}

/// Whether a space has anything to draw (a domain or a conditional, at any
/// depth): a table of constants is a constant.
fn draws(space: &SearchSpace) -> bool {
    space.params.iter().any(|(_, p)| match p {
        Param::Const(_) => false,
        Param::Nested(inner) => draws(inner),
        _ => true,
    })
}

/// The 1-based line of byte `at` in `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// A TOML syntax error as a config error with its line.
pub(crate) fn toml_error(text: &str, what: &str, e: toml::de::Error) -> Error {
    let line = e.span().map(|s| line_of(text, s.start));
    Error::config(what, line, e.message().to_string())
}

fn to_json(field: &str, line: Option<usize>, v: &toml::Value) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::config(field, line, format!("not a JSON value: {e}")))
}

fn parse_param(text: &str, field: &str, line: Option<usize>, v: &toml::Value) -> Result<Param> {
    let Some(t) = v.as_table() else {
        return Ok(Param::Const(to_json(field, line, v)?));
    };
    let single = if t.len() == 1 { t.iter().next() } else { None };
    let Some((kind, args)) = single.filter(|(k, args)| is_domain(k) || args.is_array()) else {
        // Not a domain: a table of parameters.
        if t.is_empty() {
            return Err(Error::config(field, line, "an empty table"));
        }
        let inner = parse_table(text, field, line, t)?;
        return Ok(if draws(&inner) {
            Param::Nested(inner)
        } else {
            Param::Const(to_json(field, line, v)?)
        });
    };
    let bad = |m: String| Error::config(field, line, m);
    let list = |n: usize| -> Result<Vec<f64>> {
        let a = args
            .as_array()
            .ok_or_else(|| bad(format!("`{kind}` takes an array of {n} numbers")))?;
        if a.len() != n {
            return Err(bad(format!("`{kind}` takes {n} numbers, got {}", a.len())));
        }
        a.iter()
            .map(|x| {
                x.as_float()
                    .or_else(|| x.as_integer().map(|i| i as f64))
                    .ok_or_else(|| bad(format!("`{kind}`: {x} is not a number")))
            })
            .collect()
    };
    let ints = |n: usize| -> Result<Vec<i64>> {
        let a = args
            .as_array()
            .ok_or_else(|| bad(format!("`{kind}` takes an array of {n} integers")))?;
        if a.len() != n {
            return Err(bad(format!("`{kind}` takes {n} integers, got {}", a.len())));
        }
        a.iter()
            .map(|x| {
                x.as_integer()
                    .ok_or_else(|| bad(format!("`{kind}`: {x} is not an integer")))
            })
            .collect()
    };
    let values = || -> Result<Vec<Value>> {
        let a = args
            .as_array()
            .ok_or_else(|| bad(format!("`{kind}` takes an array of values")))?;
        a.iter().map(|x| to_json(field, line, x)).collect()
    };
    let d = match kind.as_str() {
        "const" => return Ok(Param::Const(to_json(field, line, args)?)),
        "grid" | "grid_search" => {
            if args.as_array().is_some_and(|a| a.iter().any(|x| x.is_table())) {
                return Err(bad(
                    "grid values are constants: for tables with domains, give the table's own parameters grids \
                     or use a choice"
                        .into(),
                ));
            }
            Domain::Grid(values()?)
        }
        // A choice among tables with domains: a conditional space.
        "choice" if args.as_array().is_some_and(|a| a.iter().any(|x| x.is_table())) => {
            let a = args.as_array().into_iter().flatten();
            let branches = a
                .enumerate()
                .map(|(i, x)| parse_param(text, &format!("{field}.choice[{i}]"), line, x))
                .collect::<Result<Vec<_>>>()?;
            if branches.iter().all(|b| matches!(b, Param::Const(_))) {
                Domain::Choice(values()?)
            } else {
                let p = Param::OneOf(branches);
                // The checks parse_param did not already make (grids in a
                // branch), with this entry's line.
                p.validate(field, false).map_err(|e| match e {
                    Error::Config {
                        field,
                        line: None,
                        message,
                    } => Error::Config { field, line, message },
                    e => e,
                })?;
                return Ok(p);
            }
        }
        "choice" => Domain::Choice(values()?),
        "uniform" => {
            let v = list(2)?;
            Domain::Uniform { low: v[0], high: v[1] }
        }
        "quniform" => {
            let v = list(3)?;
            Domain::QUniform {
                low: v[0],
                high: v[1],
                q: v[2],
            }
        }
        "loguniform" => {
            let v = list(2)?;
            Domain::LogUniform { low: v[0], high: v[1] }
        }
        "qloguniform" => {
            let v = list(3)?;
            Domain::QLogUniform {
                low: v[0],
                high: v[1],
                q: v[2],
            }
        }
        "randint" => {
            let v = ints(2)?;
            Domain::RandInt { low: v[0], high: v[1] }
        }
        "qrandint" => {
            let v = ints(3)?;
            Domain::QRandInt {
                low: v[0],
                high: v[1],
                q: v[2],
            }
        }
        "lograndint" => {
            let v = ints(2)?;
            Domain::LogRandInt { low: v[0], high: v[1] }
        }
        "randn" => {
            let v = list(2)?;
            Domain::RandN { mean: v[0], sd: v[1] }
        }
        other => {
            return Err(bad(format!(
                "unknown domain `{other}` (known: const, {}); a table of one parameter holding an array \
                 is written {{ {other} = {{ const = [..] }} }}",
                DOMAINS.join(", ")
            )))
        }
    };
    d.validate(field, line)?;
    Ok(Param::Domain(d))
}

/// Whether `k` names a domain (or `const`).
fn is_domain(k: &str) -> bool {
    k == "const" || k == "grid_search" || DOMAINS.contains(&k)
}

/// The domain names a `search.toml` knows.
pub const DOMAINS: &[&str] = &[
    "grid",
    "choice",
    "uniform",
    "quniform",
    "loguniform",
    "qloguniform",
    "randint",
    "qrandint",
    "lograndint",
    "randn",
];

#[cfg(test)]
mod tests {
    use super::*;

    const SPACE: &str = r#"
name = "demo"

[param_space]
lr = { loguniform = [1e-4, 1e-1] }
width = { choice = [64, 128, 256] }
layers = { grid = [1, 2, 3] }
momentum = { quniform = [0.5, 0.99, 0.01] }
batch = { qrandint = [16, 128, 16] }
units = { lograndint = [1, 1024] }
seed = { randint = [0, 10] }
noise = { randn = [0.0, 1.0] }
alpha = { uniform = [-1, 1] }
beta = { qloguniform = [1e-3, 1.0, 1e-3] }
epochs = 10
nested = { const = { a = 1 } }
"#;

    #[test]
    fn every_domain_draws_within_its_bounds() {
        let space = SearchSpace::from_toml(SPACE).unwrap();
        let names: Vec<&str> = space.params().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[..3], ["lr", "width", "layers"], "in file order");
        let configs = space.variants(200, 1).unwrap();
        assert_eq!(configs.len(), 600, "3 grid points, 200 samples each");
        for c in &configs {
            let f = |k: &str| c[k].as_f64().unwrap();
            let i = |k: &str| c[k].as_i64().unwrap();
            assert!((1e-4..1e-1).contains(&f("lr")));
            assert!([64, 128, 256].contains(&i("width")));
            assert!((0.5..=0.99 + 1e-9).contains(&f("momentum")));
            assert!(((f("momentum") / 0.01).round() * 0.01 - f("momentum")).abs() < 1e-9);
            assert!((16..=128).contains(&i("batch")) && i("batch") % 16 == 0);
            assert!((1..1024).contains(&i("units")));
            assert!((0..10).contains(&i("seed")));
            assert!((-1.0..1.0).contains(&f("alpha")));
            assert!((1e-3..=1.0).contains(&f("beta")));
            assert_eq!(i("epochs"), 10);
            assert_eq!(c["nested"], serde_json::json!({"a": 1}));
        }
        // Every grid point equally often; draws differ between samples.
        for layers in 1..=3 {
            assert_eq!(configs.iter().filter(|c| c["layers"] == layers).count(), 200);
        }
        let lrs: std::collections::BTreeSet<String> = configs.iter().map(|c| c["lr"].to_string()).collect();
        assert!(lrs.len() > 500);
        // Log-uniform: about as many below 1e-2.5 as above.
        let low = configs
            .iter()
            .filter(|c| c["lr"].as_f64().unwrap() < 10f64.powf(-2.5))
            .count();
        assert!((200..400).contains(&low), "{low}");
        let mean = configs.iter().map(|c| c["noise"].as_f64().unwrap()).sum::<f64>() / 600.0;
        assert!(mean.abs() < 0.2, "{mean}");
        // The same seed, the same trials.
        assert_eq!(space.variants(200, 1).unwrap(), configs);
        assert_ne!(space.variants(200, 2).unwrap(), configs);
    }

    #[test]
    fn derived_parameters_see_the_others() {
        fn double(c: &Config) -> Value {
            Value::from(c["width"].as_i64().unwrap_or(0) * 2)
        }
        let space = SearchSpace::new()
            .derived("hidden", double)
            .domain("width", Domain::Grid(vec![1.into(), 5.into()]));
        let c = space.variants(1, 0).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c
            .iter()
            .all(|c| c["hidden"].as_i64().unwrap() == 2 * c["width"].as_i64().unwrap()));
    }

    const CONDITIONAL: &str = r#"
name = "conditional"

[param_space.model]
layers = { randint = [1, 4] }
width = { grid = [64, 128] }
kind = "mlp"

[param_space]
optimizer = { choice = [
    { name = "sgd", lr = { loguniform = [1e-3, 1e-1] }, momentum = { uniform = [0.5, 0.99] } },
    { name = "adam", lr = { loguniform = [1e-4, 1e-2] } },
    "none",
] }
plain = { a = 1, b = [1, 2] }
"#;

    #[test]
    fn nested_tables_and_a_choice_of_tables_draw_only_the_chosen_tables_parameters() {
        let space = SearchSpace::from_toml(CONDITIONAL).unwrap();
        assert_eq!(space.grid_size(), 2, "the grid inside [param_space.model]");
        let configs = space.variants(300, 7).unwrap();
        assert_eq!(configs.len(), 600);
        let (mut sgd, mut adam, mut none) = (0, 0, 0);
        for c in &configs {
            let model = c["model"].as_object().expect("model is a table");
            assert!((1..4).contains(&model["layers"].as_i64().unwrap()), "{c:?}");
            assert!([64, 128].contains(&model["width"].as_i64().unwrap()));
            assert_eq!(model["kind"], "mlp");
            assert_eq!(model.len(), 3);
            assert_eq!(c["plain"], serde_json::json!({"a": 1, "b": [1, 2]}));
            let opt = &c["optimizer"];
            match opt.get("name").and_then(Value::as_str) {
                Some("sgd") => {
                    sgd += 1;
                    assert!((1e-3..1e-1).contains(&opt["lr"].as_f64().unwrap()), "{opt}");
                    assert!((0.5..0.99).contains(&opt["momentum"].as_f64().unwrap()), "{opt}");
                }
                Some("adam") => {
                    adam += 1;
                    assert!((1e-4..1e-2).contains(&opt["lr"].as_f64().unwrap()), "{opt}");
                    assert!(
                        opt.get("momentum").is_none(),
                        "only the chosen table's parameters: {opt}"
                    );
                }
                _ => {
                    assert_eq!(opt, "none");
                    none += 1;
                }
            }
        }
        // Each branch about a third of the time; each grid point 300 times.
        for n in [sgd, adam, none] {
            assert!((150..250).contains(&n), "{sgd} {adam} {none}");
        }
        for w in [64, 128] {
            assert_eq!(configs.iter().filter(|c| c["model"]["width"] == w).count(), 300);
        }
        let lrs: std::collections::BTreeSet<String> = configs
            .iter()
            .filter_map(|c| c["optimizer"].get("lr"))
            .map(|v| v.to_string())
            .collect();
        assert!(lrs.len() > 350, "drawn per trial: {}", lrs.len());
        assert_eq!(
            space.variants(300, 7).unwrap(),
            configs,
            "the same seed, the same trials"
        );
    }

    #[test]
    fn bad_entries_inside_tables_name_their_path_and_line() {
        let err = |text: &str| SearchSpace::from_toml(text).unwrap_err().to_string();
        let e = err("[param_space.model]\nkind = \"mlp\"\nlayers = { randint = [4, 1] }\n");
        assert!(
            e.contains("line 3") && e.contains("param_space.model.layers") && e.contains("lower bound"),
            "{e}"
        );
        let e = err("[param_space]\nx = 1\nopt = { choice = [{ lr = { uniform = [1, 0] } }, \"none\"] }\n");
        assert!(
            e.contains("line 3") && e.contains("param_space.opt.choice[0].lr") && e.contains("lower bound"),
            "{e}"
        );
        let e = err("[param_space]\nopt = { choice = [{ lr = { grid = [1, 2] } }, 3] }\n");
        assert!(
            e.contains("line 2") && e.contains("param_space.opt.choice[0].lr") && e.contains("grid"),
            "{e}"
        );
        let e = err("[param_space]\nopt = { grid = [{ lr = { uniform = [0, 1] } }] }\n");
        assert!(
            e.contains("param_space.opt") && e.contains("grid values are constants"),
            "{e}"
        );
        let e = err("[param_space.model]\nlayers = { rnadint = [1, 4] }\n");
        assert!(e.contains("line 2") && e.contains("unknown domain `rnadint`"), "{e}");
    }

    #[test]
    fn bad_entries_name_the_field_and_line() {
        let err = |text: &str| SearchSpace::from_toml(text).unwrap_err().to_string();
        let e = err("[param_space]\nlr = { logunform = [1e-4, 1e-1] }\n");
        assert!(
            e.contains("line 2") && e.contains("param_space.lr") && e.contains("unknown domain `logunform`"),
            "{e}"
        );
        let e = err("[param_space]\nx = 1\nlr = { loguniform = [0, 1] }\n");
        assert!(
            e.contains("line 3") && e.contains("param_space.lr") && e.contains("0 < lower"),
            "{e}"
        );
        let e = err("[param_space]\nn = { randint = [1.5, 3] }\n");
        assert!(e.contains("not an integer"), "{e}");
        let e = err("[param_space]\nn = { uniform = [1] }\n");
        assert!(e.contains("takes 2 numbers, got 1"), "{e}");
        let e = err("[param_space]\nc = { choice = [] }\n");
        assert!(e.contains("at least one value"), "{e}");
        let e = err("[param_space]\nc = { a = 1, sizes = [1] }\nd = { sizes = [1, 2] }\n");
        assert!(
            e.contains("line 3") && e.contains("unknown domain `sizes`") && e.contains("const"),
            "{e}"
        );
        let e = err("[param_space]\nx = [1, 2\n");
        assert!(e.contains("line 2") || e.contains("line 3"), "{e}");
        let e = err("param_space = 3\n");
        assert!(e.contains("line 1") && e.contains("must be a table"), "{e}");
    }
}
