//! A driver the dashboard tests submit as a job, so the cluster has
//! something of each kind to show: finished tasks, two named actors, tasks
//! waiting for each reason the dashboard names (arguments not ready, no
//! node has the resources, all busy, placement group pending), and output
//! that keeps coming.
//!
//! Names and output carry markup, which the dashboard must show as text
//! (the browser test checks that none of it runs): an actor named
//! [`XSS_ACTOR`], a trial named like it, and a printed [`XSS_LINE`].
//!
//! It prints `ready` once all of that is in place, then `tick N` every
//! 300 ms until it is stopped. The cluster needs a node offering custom
//! resource `slot: 1` (for the busy case).

use std::collections::BTreeMap;
use std::time::Duration;

/// The name of an actor that would run script if a page put it in as HTML.
const XSS_ACTOR: &str = r#"<img src=x onerror="document.body.dataset.xss='actor'">"#;

/// A line of output that would run script if a page put it in as HTML.
const XSS_LINE: &str = "<script>document.body.dataset.xss='log'</script>";

/// A quick task.
#[rayforge::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Holds a worker (and its resources) for `ms` milliseconds.
#[rayforge::remote]
fn hold(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits for another task's result.
#[rayforge::remote]
fn add_one(x: u64) -> u64 {
    x + 1
}

/// A named actor to look at (and kill) in the dashboard.
#[rayforge::actor]
pub struct Counter {
    n: u64,
}

#[rayforge::actor]
impl Counter {
    fn new() -> Self {
        println!("counter actor started");
        Counter { n: 0 }
    }

    fn inc(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

fn run() -> rayforge::Result<()> {
    let squares: Vec<_> = (0..20u64).map(square::remote).collect();
    let sum: u64 = rayforge::get_all(&squares)?.into_iter().sum();
    println!("sum of squares {sum}");
    let a = Counter::options().name("dash-counter").num_cpus(0.0).remote()?;
    let b = Counter::options().name("dash-other").num_cpus(0.0).remote()?;
    let c = Counter::options().name(XSS_ACTOR).num_cpus(0.0).remote()?;
    a.inc().get()?;
    b.inc().get()?;
    c.inc().get()?;
    println!("{XSS_LINE}");
    // Waiting, each for its own reason (kept alive until the job ends).
    let never = square::options().resource("unobtainium", 1.0).remote(7u64);
    let busy = hold::options().resource("slot", 1.0).remote(600_000u64);
    let queued = hold::options().resource("slot", 1.0).remote(1u64);
    let slow = hold::options().num_cpus(0.5).remote(600_000u64);
    let after = add_one::remote(&slow);
    let big: BTreeMap<String, f64> = [("CPU".to_string(), 64.0)].into_iter().collect();
    let pg = rayforge::placement_group(vec![big], rayforge::PlacementStrategy::Pack).create()?;
    let in_group = square::options().placement_group(&pg, Some(0)).remote(3u64);
    // What the dashboard's Tune page draws (a library's status is a JSON
    // object; arrays of objects become tables).
    let status = serde_json::json!({
        "status": "RUNNING",
        "metric": "loss",
        "trials": [{"trial": "probe_trial_1", "loss": 0.25}, {"trial": "probe_trial_2", "loss": 0.5}, {"trial": XSS_ACTOR, "loss": 1.0}],
    });
    rayforge::state::publish("tune", "probe-experiment", &status)?;
    println!("ready");
    let _keep = (never, busy, queued, slow, after, in_group, a, b, c, pg);
    for i in 0.. {
        println!("tick {i}");
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

#[rayforge::main]
fn main() {
    if let Err(e) = rayforge::init(rayforge::Config::default()).and_then(|_| run()) {
        eprintln!("dashboard probe failed: {e}");
        std::process::exit(1);
    }
}
