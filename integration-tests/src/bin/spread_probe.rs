//! A driver the launcher tests submit with `rayforge submit`: it joins the
//! cluster named by its environment (`RAYFORGE_ADDRESS`, set by the
//! launcher), runs N one-CPU tasks of 500 ms each and prints the node each
//! ran on, one `ran on NODE` line per task, then `done N`.
//!
//! Usage: `spread_probe N`

#[rayforge::remote]
fn where_am_i() -> String {
    std::thread::sleep(std::time::Duration::from_millis(500));
    rayforge::node_id().unwrap_or_default()
}

#[rayforge::main]
fn main() -> rayforge::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(4);
    rayforge::init(rayforge::Config::default())?;
    let refs: Vec<_> = (0..n).map(|_| where_am_i::remote()).collect();
    for r in refs {
        println!("ran on {}", r.get()?);
    }
    println!("done {n}");
    rayforge::shutdown();
    Ok(())
}
