//! Seeing what ran: task listings, worker logs and the Chrome timeline, in
//! the embedded cluster (library API) and across a real multi-node cluster
//! (the `rayforge list tasks|objects`, `logs` and `timeline` commands).

use std::time::Duration;

use rayforge::state::{self, TaskInfo};
use rayforge::{Buffer, Error};
use rayforge_integration_tests::{cluster, marker, rayforge_bin, wait_until, LocalCluster};

/// Prints a line to stdout and one to stderr; returns its process id.
#[rayforge::remote]
fn chatty(tag: String) -> u32 {
    println!("stdout says {tag}");
    eprintln!("stderr says {tag}");
    std::process::id()
}

/// Writes `mib` MiB to stdout, a numbered line at the end.
#[rayforge::remote]
fn flood(mib: usize) -> u32 {
    use std::io::Write;
    let line = [b'x'; 1023];
    let mut out = std::io::stdout().lock();
    for _ in 0..mib * 1024 {
        out.write_all(&line).unwrap();
        out.write_all(b"\n").unwrap();
    }
    writeln!(out, "the last line").unwrap();
    out.flush().unwrap();
    std::process::id()
}

#[rayforge::remote]
fn fails(tag: String) -> u32 {
    panic!("failing on purpose: {tag}")
}

/// Writes its pid to `path`, then runs until killed.
#[rayforge::remote]
fn hang(path: String) -> u32 {
    let _ = std::fs::write(&path, std::process::id().to_string());
    loop {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Passes its argument on.
#[rayforge::remote]
fn after(x: u32) -> u32 {
    x
}

/// An actor whose constructor waits for a file to appear.
#[rayforge::actor]
pub struct Gated;

#[rayforge::actor]
impl Gated {
    /// Waits (up to a minute) until `path` exists.
    pub fn new(path: String) -> Self {
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while !std::path::Path::new(&path).exists() && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        Gated
    }
    /// Answers 1.
    pub fn one(&self) -> u32 {
        1
    }
}

/// Greets with a fixed greeting.
#[rayforge::actor]
pub struct Greeter {
    greeting: String,
}

#[rayforge::actor]
impl Greeter {
    /// A greeter saying `greeting`.
    pub fn new(greeting: String) -> Self {
        Greeter { greeting }
    }
    /// Greets `who`.
    pub fn greet(&mut self, who: String) -> String {
        format!("{} {who}", self.greeting)
    }
}

/// Waits until the listing holds a task named `name` that satisfies `ok`.
fn wait_for_task(name: &str, ok: impl Fn(&TaskInfo) -> bool) -> TaskInfo {
    let mut seen = Vec::new();
    let mut found = None;
    let hit = wait_until(Duration::from_secs(30), || {
        seen = state::list_tasks().expect("list tasks").items;
        found = seen.iter().find(|t| t.name.ends_with(name) && ok(t)).cloned();
        found.is_some()
    });
    assert!(hit, "no task {name} as expected in {seen:#?}");
    found.expect("found")
}

#[test]
fn tasks_waiting_to_run_are_listed_as_pending() {
    rayforge_integration_tests::own_process!();
    cluster();
    let path = std::env::temp_dir().join(marker("pending-pid"));
    let h = hang::remote(path.display().to_string());
    let waiting = after::remote(&h);
    let p = wait_for_task("after", |t| t.state == "PENDING");
    assert_eq!((p.pid, p.kind.as_str()), (std::process::id(), "NORMAL_TASK"));
    assert_eq!(p.node_id, rayforge::node_id().unwrap());
    assert!(p.start_us > 0 && p.end_us == 0, "{p:?}");
    let tasks = state::list_tasks().unwrap().items;
    let trace = state::chrome_trace(&tasks).to_string();
    assert!(
        !trace.contains("after"),
        "a queued task is not on the timeline: {trace}"
    );

    // Once it cannot run any more, it is no longer pending.
    rayforge::cancel(&h).unwrap();
    assert!(waiting.get().is_err());
    let gone = wait_until(Duration::from_secs(30), || {
        !state::list_tasks()
            .unwrap()
            .items
            .iter()
            .any(|t| t.name.ends_with("after") && t.state == "PENDING")
    });
    assert!(gone, "the cancelled chain's task still shows as pending");
    let _ = std::fs::remove_file(path);

    // Calls to an actor still being created wait, listed as pending.
    let gate = std::env::temp_dir().join(marker("gate"));
    let a = Gated::remote(gate.display().to_string()).unwrap();
    let call = a.one();
    let p = wait_for_task("Gated.one", |t| t.state == "PENDING");
    assert_eq!(p.kind, "ACTOR_TASK");
    std::fs::write(&gate, b"open").unwrap();
    assert_eq!(call.get().unwrap(), 1);
    wait_for_task("Gated.one", |t| t.state == "FINISHED");
    let pending_left = state::list_tasks()
        .unwrap()
        .items
        .into_iter()
        .filter(|t| t.name.ends_with("Gated.one") && t.state == "PENDING")
        .count();
    assert_eq!(pending_left, 0);
    let _ = std::fs::remove_file(gate);
}

#[test]
fn tasks_logs_and_timeline_of_the_embedded_cluster() {
    rayforge_integration_tests::own_process!();
    cluster();
    let tag = marker("observe");
    let pid = chatty::remote(tag.clone()).get().unwrap();
    let err = fails::remote(tag.clone()).get().unwrap_err();
    assert!(err.to_string().contains("failing on purpose"), "{err}");
    let g = Greeter::remote("hello".to_string()).unwrap();
    assert_eq!(g.greet("you".to_string()).get().unwrap(), "hello you");

    // Tasks: what ran, where, and how it ended.
    let ok = wait_for_task("chatty", |t| t.state == "FINISHED");
    assert_eq!((ok.pid, ok.kind.as_str()), (pid, "NORMAL_TASK"));
    assert!(ok.end_us >= ok.start_us && ok.start_us > 0, "{ok:?}");
    assert_eq!(ok.node_id, rayforge::node_id().unwrap());
    let bad = wait_for_task("fails", |t| t.state == "FAILED");
    assert!(bad.error.contains("failing on purpose"), "{bad:?}");
    wait_for_task("::Greeter", |t| {
        t.kind == "ACTOR_CREATION_TASK" && t.state == "FINISHED"
    });
    wait_for_task("::Greeter.greet", |t| t.kind == "ACTOR_TASK" && t.state == "FINISHED");

    // Logs: both streams of the worker that ran `chatty`, and only its log
    // when asked for one pid.
    let mut logs = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            logs = state::worker_logs(Some(pid), None).unwrap().items;
            logs.len() == 1
                && logs[0].text.contains(&format!("stdout says {tag}"))
                && logs[0].text.contains(&format!("stderr says {tag}"))
        }),
        "{logs:#?}"
    );
    assert!(logs[0].alive);
    let tail = state::worker_logs(Some(pid), Some(8)).unwrap().items;
    assert_eq!(tail[0].text.len(), 8);
    assert_eq!(tail[0].size, logs[0].size);
    let all = state::worker_logs(None, None).unwrap().items;
    assert!(all.len() >= 2, "one log per worker process: {all:#?}");
    assert!(state::worker_logs(Some(u32::MAX), None).unwrap().items.is_empty());

    // A worker killed mid-task: its task is marked failed.
    let gate = std::env::temp_dir().join(format!("{tag}-pid"));
    let hung = hang::options()
        .max_retries(0)
        .remote(gate.to_string_lossy().to_string());
    let running = wait_for_task("hang", |t| t.state == "RUNNING");
    assert!(wait_until(Duration::from_secs(30), || gate.exists()));
    let hung_pid: u32 = std::fs::read_to_string(&gate).unwrap().parse().unwrap();
    assert_eq!(running.pid, hung_pid);
    // SAFETY: a plain signal to a worker process of this test.
    unsafe {
        libc::kill(hung_pid as i32, libc::SIGKILL);
    }
    assert!(matches!(hung.get().unwrap_err(), Error::WorkerDied { .. }));
    let dead = wait_for_task("hang", |t| t.state == "FAILED");
    assert!(dead.error.contains("worker died"), "{dead:?}");
    let _ = std::fs::remove_file(&gate);

    // The timeline: a Chrome trace with a complete event per task.
    let path = std::env::temp_dir().join(format!("{tag}-timeline.json"));
    let n = state::timeline(&path).unwrap();
    let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let spans: Vec<&serde_json::Value> = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    assert_eq!(spans.len(), n);
    let chatty_span = spans
        .iter()
        .find(|e| e["name"].as_str().is_some_and(|s| s.ends_with("chatty")))
        .expect("chatty in the timeline");
    assert_eq!(chatty_span["tid"], pid);
    assert!(chatty_span["dur"].as_u64().is_some());
    let _ = std::fs::remove_file(&path);

    // Store objects are listed with their size.
    let big = rayforge::put(Buffer::from(vec![7u64; 1 << 17])).unwrap();
    let objects = state::list_objects().unwrap().items;
    let id = big.id().hex();
    let o = objects
        .iter()
        .find(|o| o.object_id == id)
        .expect("the put object is listed");
    assert!(o.size >= 8 << 17 && !o.spilled, "{o:?}");
    rayforge::shutdown();
}

#[rayforge::remote]
fn chatty_big(tag: String) -> (u32, Buffer<u64>) {
    println!("remote node says {tag}");
    (std::process::id(), Buffer::from(vec![1u64; 1 << 17]))
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(rayforge_bin())
        .args(args)
        .output()
        .expect("run rayforge")
}

#[test]
fn the_cli_lists_tasks_objects_and_logs_of_every_node() {
    rayforge_integration_tests::own_process!();
    let mut c = LocalCluster::start(&["--num-cpus", "1"], 5000);
    let other = c.add_node(&["--num-cpus", "1", "--resources", r#"{"far": 1}"#]);
    rayforge::init(c.config()).expect("join the cluster");
    let tag = marker("cli-observe");
    let r = chatty_big::options().resource("far", 1.0).remote(tag.clone());
    let (pid, big) = r.get().unwrap();
    assert_eq!(big.len(), 1 << 17);
    // The token from a file, as from a mounted Secret.
    let token_file = c.base_dir().join("cli-token");
    std::fs::write(&token_file, format!("{}\n", c.token)).unwrap();
    let token_file = token_file.to_string_lossy().into_owned();
    let auth = ["--address", c.address.as_str(), "--token-file", token_file.as_str()];

    // `list tasks`: the task, on the other node, in its worker.
    let mut tasks = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            tasks = c.list("tasks");
            tasks.as_array().unwrap().iter().any(|t| {
                t["name"].as_str().is_some_and(|n| n.ends_with("chatty_big"))
                    && t["state"] == "FINISHED"
                    && t["node_id"] == other.as_str()
                    && t["pid"] == pid
            })
        }),
        "{tasks:#}"
    );
    // `list objects`: its large return, held on the other node.
    let objects = c.list("objects");
    assert!(
        objects
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["node_id"] == other.as_str() && o["size"].as_u64().unwrap_or(0) >= 8 << 17),
        "{objects:#}"
    );
    // `logs --pid`: that worker's output, read from the other node.
    let mut text = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let out = cli(&[&["logs", "--pid", &pid.to_string()][..], &auth[..]].concat());
            text = String::from_utf8_lossy(&out.stdout).into_owned();
            out.status.success() && text.contains(&format!("remote node says {tag}"))
        }),
        "{text}"
    );
    assert!(text.contains(&format!("worker pid {pid} on node {other}")), "{text}");
    // `timeline`: a trace file holding the task.
    let trace_path = std::env::temp_dir().join(format!("{tag}.json"));
    let out = cli(&[&["timeline", "-o", &trace_path.to_string_lossy()][..], &auth[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    assert!(
        trace.contains("chatty_big") && trace.contains(&format!("node {other}")),
        "{trace}"
    );
    let _ = std::fs::remove_file(&trace_path);

    // Bad input: an unknown pid, a head that is not there.
    let out = cli(&[&["logs", "--pid", "4294967295"][..], &auth[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no worker process 4294967295"),
        "{err}"
    );
    let out = cli(&["list", "tasks", "--address", "127.0.0.1:1", "--token-file", &token_file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("127.0.0.1:1"), "{err}");
    rayforge::shutdown();
}

/// A worker that writes far more than any reply may carry: a listing has
/// no text, a read of "all of it" is its last 4 MiB, and a reply of every
/// log stays within 16 MiB.
#[test]
fn log_reads_are_capped_however_large_the_log() {
    rayforge_integration_tests::own_process!();
    cluster();
    let mib = 24;
    let pid = flood::remote(mib).get().unwrap();
    let want = (mib as u64) << 20;
    assert!(
        wait_until(Duration::from_secs(60), || {
            state::worker_logs(Some(pid), Some(0))
                .unwrap()
                .items
                .first()
                .is_some_and(|l| l.size > want)
        }),
        "the log reached {want} bytes"
    );
    let listing = state::worker_logs(Some(pid), Some(0)).unwrap().items;
    assert!(listing[0].text.is_empty() && listing[0].size > want);
    let all = state::worker_logs(Some(pid), None).unwrap().items;
    assert_eq!(all[0].text.len() as u64, state::MAX_LOG_TEXT);
    assert!(all[0].text.ends_with("the last line\n"));
    let every: u64 = state::worker_logs(None, None)
        .unwrap()
        .items
        .iter()
        .map(|l| l.text.len() as u64)
        .sum();
    assert!(every <= state::MAX_LOGS_REPLY, "{every}");
}
