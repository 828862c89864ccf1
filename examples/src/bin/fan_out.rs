//! Fan out 4, 8 and 16 tasks over the worker processes and show which process
//! ran each one.
//!
//! Run: `cargo run -p rayforge-examples --bin fan_out`

use std::collections::BTreeMap;
use std::time::Duration;

use rayforge::Config;

/// Does a little work and reports the process it ran in.
#[rayforge::remote]
fn which_process(i: u32) -> (u32, u32) {
    std::thread::sleep(Duration::from_millis(50));
    (i, std::process::id())
}

#[rayforge::main]
fn main() -> rayforge::Result<()> {
    rayforge::init(Config::default())?;
    for n in [4u32, 8, 16] {
        let refs: Vec<_> = (0..n).map(which_process::remote).collect();
        let mut by_pid: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (i, pid) in rayforge::get_all(&refs)? {
            by_pid.entry(pid).or_default().push(i);
        }
        println!("{n} tasks ran in {} worker processes:", by_pid.len());
        for (pid, tasks) in by_pid {
            println!("  pid {pid}: tasks {tasks:?}");
        }
    }
    Ok(())
}
