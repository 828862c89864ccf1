//! A driver whose task writes far more output than any log read may carry,
//! for the tests of how large worker logs are read.
//!
//! It joins the cluster named by its environment (`RAYFORGE_ADDRESS`,
//! `RAYFORGE_TOKEN`), prints `joined` on stderr, then for each line
//! `flood MIB` on stdin has one task write MIB MiB to its stdout, in lines
//! of 1 MiB, and prints `flooded PID` (the worker's pid) on stderr once the
//! worker wrote it all. At the end of stdin it leaves the cluster.
//!
//! The worker's output comes back to this driver's stdout, as any driver's
//! does: a test sends that to `/dev/null`, and reads stderr.

use std::io::{BufRead, Write};

/// One line of output: 1 MiB with its newline.
const LINE: usize = 1 << 20;

/// Writes `mib` lines of 1 MiB to stdout (one write each); returns its pid.
#[rayforge::remote]
fn flood(mib: usize) -> u32 {
    let mut line = vec![b'x'; LINE];
    line[LINE - 1] = b'\n';
    let mut out = std::io::stdout().lock();
    for _ in 0..mib {
        // A closed pipe only means nobody reads the log: stop early.
        if out.write_all(&line).is_err() {
            break;
        }
    }
    let _ = out.flush();
    std::process::id()
}

fn run() -> rayforge::Result<()> {
    rayforge::init(rayforge::Config::default())?;
    eprintln!("joined");
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| rayforge::Error::io("reading stdin", e))?;
        let Some(mib) = line.strip_prefix("flood ").and_then(|n| n.trim().parse::<usize>().ok()) else {
            eprintln!("not understood: {line:?} (say `flood MIB`)");
            continue;
        };
        let pid = flood::remote(mib).get()?;
        eprintln!("flooded {pid}");
    }
    rayforge::shutdown();
    Ok(())
}

#[rayforge::main]
fn main() {
    if let Err(e) = run() {
        eprintln!("log flood failed: {e}");
        std::process::exit(1);
    }
}
