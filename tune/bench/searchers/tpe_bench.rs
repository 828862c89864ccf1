//! TPE's benchmark, the rayforge side (`tune/bench/searchers/compare` runs
//! it beside Optuna's `TPESampler`, `optuna_bench.py`, with the same
//! functions, budgets and seeds):
//!
//! - quality: the best value found within a fixed budget, per seed, on
//!   Branin (2-d, 100 trials, minimum 0.397887), Hartmann-6 (6-d, 200
//!   trials, minimum -3.32237) and Rosenbrock-10 (10-d on [-2.048,
//!   2.048], 300 trials, minimum 0), univariate and multivariate, with our
//!   defaults and with Optuna's exact algorithm (`rank_weights: false`:
//!   the modes `uni-uniform` and `multi-uniform`);
//! - speed: the total time to suggest and tell N trials one after the
//!   other on Branin's 2-d space.
//!
//! Prints one JSON line per run:
//!
//! ```text
//! tpe-bench [--seeds 10] [--functions branin,hartmann6,rosenbrock10]
//!           [--modes uni,multi,uni-uniform,multi-uniform]
//!           [--timing 1000,10000]
//! ```
//!
//! `--functions none` or `--timing none` skips that part; timings run
//! the `uni` and `multi` modes of `--modes`.

use std::time::Instant;

use rayforge_tune::{Config, Domain, Mode, SearchSpace, Searcher, Tpe, TpeOptions};
use serde_json::json;

/// A benchmark function: its name, space, budget and objective.
struct Function {
    name: &'static str,
    space: SearchSpace,
    trials: usize,
    f: fn(&Config) -> f64,
}

fn x(c: &Config, name: &str) -> f64 {
    c.get(name).and_then(|v| v.as_f64()).unwrap_or(f64::NAN)
}

fn branin(c: &Config) -> f64 {
    let (x, y) = (x(c, "x"), x(c, "y"));
    let pi = std::f64::consts::PI;
    let b = 5.1 / (4.0 * pi * pi);
    (y - b * x * x + 5.0 / pi * x - 6.0).powi(2) + 10.0 * (1.0 - 1.0 / (8.0 * pi)) * x.cos() + 10.0
}

fn hartmann6(c: &Config) -> f64 {
    const ALPHA: [f64; 4] = [1.0, 1.2, 3.0, 3.2];
    const A: [[f64; 6]; 4] = [
        [10.0, 3.0, 17.0, 3.5, 1.7, 8.0],
        [0.05, 10.0, 17.0, 0.1, 8.0, 14.0],
        [3.0, 3.5, 1.7, 10.0, 17.0, 8.0],
        [17.0, 8.0, 0.05, 10.0, 0.1, 14.0],
    ];
    const P: [[f64; 6]; 4] = [
        [1312.0, 1696.0, 5569.0, 124.0, 8283.0, 5886.0],
        [2329.0, 4135.0, 8307.0, 3736.0, 1004.0, 9991.0],
        [2348.0, 1451.0, 3522.0, 2883.0, 3047.0, 6650.0],
        [4047.0, 8828.0, 8732.0, 5743.0, 1091.0, 381.0],
    ];
    let xs: Vec<f64> = (0..6).map(|j| x(c, &format!("x{j}"))).collect();
    -(0..4)
        .map(|i| {
            let inner: f64 = (0..6).map(|j| A[i][j] * (xs[j] - P[i][j] * 1e-4).powi(2)).sum();
            ALPHA[i] * (-inner).exp()
        })
        .sum::<f64>()
}

fn rosenbrock10(c: &Config) -> f64 {
    let xs: Vec<f64> = (0..10).map(|j| x(c, &format!("x{j}"))).collect();
    xs.windows(2)
        .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
        .sum()
}

fn cube(n: usize, low: f64, high: f64) -> SearchSpace {
    (0..n).fold(SearchSpace::new(), |s, j| {
        s.domain(&format!("x{j}"), Domain::Uniform { low, high })
    })
}

fn functions() -> Vec<Function> {
    vec![
        Function {
            name: "branin",
            space: SearchSpace::new()
                .domain("x", Domain::Uniform { low: -5.0, high: 10.0 })
                .domain("y", Domain::Uniform { low: 0.0, high: 15.0 }),
            trials: 100,
            f: branin,
        },
        Function {
            name: "hartmann6",
            space: cube(6, 0.0, 1.0),
            trials: 200,
            f: hartmann6,
        },
        Function {
            name: "rosenbrock10",
            space: cube(10, -2.048, 2.048),
            trials: 300,
            f: rosenbrock10,
        },
    ]
}

/// A mode: multivariate or not, with rank weights or not.
#[derive(Clone, Copy)]
struct Variant {
    multivariate: bool,
    rank_weights: bool,
}

fn tpe(space: &SearchSpace, seed: u64, v: Variant) -> Result<Tpe, rayforge_tune::Error> {
    let opts = TpeOptions {
        seed,
        multivariate: v.multivariate,
        rank_weights: v.rank_weights,
        ..TpeOptions::default()
    };
    Tpe::new(space.clone(), Mode::Min, None, opts)
}

/// Runs `trials` trials one after the other: the best value.
fn run(searcher: &mut Tpe, f: fn(&Config) -> f64, trials: usize) -> f64 {
    let mut best = f64::INFINITY;
    for i in 0..trials {
        let id = format!("t{i}");
        let Some(c) = searcher.suggest(&id) else { break };
        let v = f(&c);
        best = best.min(v);
        searcher.on_trial_complete(&id, Some(v));
    }
    best
}

fn list(args: &[String], name: &str, default: &str) -> Vec<String> {
    let v = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |s| s.as_str());
    v.split(',')
        .filter(|s| !s.is_empty() && *s != "none")
        .map(str::to_string)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let seeds: u64 = list(&args, "--seeds", "10")
        .first()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let names = list(&args, "--functions", "branin,hartmann6,rosenbrock10");
    let modes: Vec<(String, Variant)> = list(&args, "--modes", "uni,multi,uni-uniform,multi-uniform")
        .into_iter()
        .map(|m| {
            let (multivariate, rank_weights) = match m.as_str() {
                "uni" => (false, true),
                "multi" => (true, true),
                "uni-uniform" => (false, false),
                "multi-uniform" => (true, false),
                other => {
                    return Err(format!(
                        "--modes: unknown `{other}` (uni, multi, uni-uniform, multi-uniform)"
                    ))
                }
            };
            Ok((
                m,
                Variant {
                    multivariate,
                    rank_weights,
                },
            ))
        })
        .collect::<Result<_, _>>()?;
    let timing: Vec<usize> = list(&args, "--timing", "1000,10000")
        .iter()
        .map(|n| n.parse())
        .collect::<Result<_, _>>()?;
    let all = functions();
    for name in &names {
        let Some(func) = all.iter().find(|f| f.name == name) else {
            return Err(format!("--functions: no function `{name}` (branin, hartmann6, rosenbrock10)").into());
        };
        for (mode, v) in &modes {
            for seed in 0..seeds {
                let mut searcher = tpe(&func.space, seed, *v)?;
                let start = Instant::now();
                let best = run(&mut searcher, func.f, func.trials);
                println!(
                    "{}",
                    json!({
                        "impl": "rayforge", "kind": "best", "function": func.name, "mode": mode,
                        "multivariate": v.multivariate, "rank_weights": v.rank_weights, "seed": seed,
                        "trials": func.trials, "best": best, "seconds": start.elapsed().as_secs_f64(),
                    })
                );
            }
        }
    }
    let branin_space = &all[0].space;
    for &n in &timing {
        for (mode, v) in modes.iter().filter(|(m, _)| m == "uni" || m == "multi") {
            let mut searcher = tpe(branin_space, 0, *v)?;
            let start = Instant::now();
            run(&mut searcher, branin, n);
            println!(
                "{}",
                json!({
                    "impl": "rayforge", "kind": "time", "function": "branin", "mode": mode,
                    "multivariate": v.multivariate, "trials": n,
                    "seconds": start.elapsed().as_secs_f64(), "extrapolated": false,
                })
            );
        }
    }
    Ok(())
}
