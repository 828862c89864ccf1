//! The reference talk's first program: `read_array` and `add` tasks, and a
//! `Counter` actor whose `inc` is called twice.
//!
//! Run: `cargo run -p rayforge-examples --bin quickstart`

use rayforge::{Config, ObjectRef};

/// Pretend to read an array from disk (a task).
#[rayforge::remote]
fn read_array(n: usize, value: f64) -> Vec<f64> {
    vec![value; n]
}

/// Add two arrays element by element (a task).
#[rayforge::remote]
fn add(a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
    a.iter().zip(&b).map(|(x, y)| x + y).collect()
}

/// A counter that lives in its own worker process (an actor).
#[rayforge::actor]
pub struct Counter {
    value: i64,
}

#[rayforge::actor]
impl Counter {
    fn new() -> Self {
        Counter { value: 0 }
    }

    fn inc(&mut self) -> i64 {
        self.value += 1;
        self.value
    }
}

#[rayforge::main]
fn main() -> rayforge::Result<()> {
    rayforge::init(Config::default())?;

    // Two tasks run in parallel in worker processes; `add` starts once both
    // of its arguments are ready (they are passed as references).
    let a: ObjectRef<Vec<f64>> = read_array::remote(5usize, 1.0);
    let b = read_array::remote(5usize, 2.0);
    let sum = add::remote(a, b).get()?;
    println!("add(read_array(), read_array()) = {sum:?}");

    // An actor keeps state between calls, which run in order.
    let c = Counter::remote()?;
    let first = c.inc();
    let second = c.inc();
    println!("counter after two inc() calls: {} then {}", first.get()?, second.get()?);
    Ok(())
}
