//! The head's durability and the cluster's front door: a head restarted
//! mid-job loses nothing and the job finishes; bad addresses, tokens and
//! arguments get clear errors.

use std::time::Duration;

use rayforge::cluster::HeadClient;
use rayforge::Error;
use rayforge_integration_tests::{rayforge_bin, wait_until, workspace_bin, LocalCluster};

use crate::cluster::{wait_for_file, where_am_i};
use crate::cluster_actors::{Tally, TallyHandle};

#[rayforge::remote]
fn square(x: u64) -> u64 {
    x * x
}

/// Reads a key of the `train` namespace where the task runs.
#[rayforge::remote]
fn kv_read(key: String) -> rayforge::Result<Option<Vec<u8>>> {
    rayforge::kv::get("train", &key)
}

#[test]
fn head_restart_mid_job_loses_nothing_and_the_job_finishes() {
    rayforge_integration_tests::own_process!();
    let head_args = ["--num-cpus", "1", "--resources", r#"{"h": 1, "hp": 1}"#];
    let mut cluster = LocalCluster::start(&head_args, 3000);
    let b = cluster.add_node(&["--num-cpus", "2", "--resources", r#"{"b": 1}"#]);
    // The driver runs on b, so the head can go away under it.
    rayforge::init(cluster.config().attach_to(&b)).expect("join the cluster");
    let mut head = HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    assert!(head.kv_put("model/best", b"42", false).unwrap());
    assert!(
        !head.kv_put("model/best", b"43", false).unwrap(),
        "no overwrite unless asked"
    );
    // The library API reaches the same store, from the driver and from a
    // worker on the other node.
    assert!(rayforge::kv::put("train", "run/addr", b"b:1234", false).unwrap());
    assert_eq!(
        kv_read::remote("run/addr".to_string()).get().unwrap(),
        Some(b"b:1234".to_vec())
    );

    let gate = std::env::temp_dir().join(format!("rayforge-head-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let running = wait_for_file::remote(gate.to_string_lossy().to_string());
    // A named detached actor on b, and a restartable one on the head's node.
    let keeper = Tally::options()
        .resource("b", 1.0)
        .name("keeper")
        .detached()
        .remote(0i64)
        .unwrap();
    assert_eq!(keeper.inc().get().unwrap(), 1);
    let on_head = Tally::options()
        .resource("h", 1.0)
        .max_restarts(1)
        .max_task_retries(-1)
        .remote(50i64)
        .unwrap();
    assert_eq!(on_head.node().get().unwrap(), cluster.daemons[0].1);
    // A named placement group whose bundle only the head's node can hold.
    let hp = [("hp".to_string(), 1.0)].into_iter().collect();
    let pg = rayforge::placement_group(vec![hp], rayforge::PlacementStrategy::StrictPack)
        .name("on-head")
        .create()
        .unwrap();
    assert!(pg.wait(Duration::from_secs(60)).unwrap(), "{:?}", pg.state());

    // SIGKILL the head (control service and its node), then start it again
    // on the same port and state directory.
    let port: u16 = cluster.address.rsplit(':').next().unwrap().parse().unwrap();
    let old_head = cluster.daemons[0].1.clone();
    cluster.kill_node(&old_head);
    assert!(head.nodes().is_err(), "the head is down");
    // The actor on b keeps answering while the head is down.
    assert_eq!(keeper.inc().get().unwrap(), 2);
    cluster.start_head(&head_args, 3000, port);
    let new_head = cluster.daemons[0].1.clone();

    // Tables came back from disk; b keeps heartbeating to the new head; the
    // dead head node is noticed.
    assert_eq!(head.kv_get("model/best").unwrap().as_deref(), Some(&b"42"[..]));
    assert_eq!(
        rayforge::kv::get("train", "run/addr").unwrap().as_deref(),
        Some(&b"b:1234"[..])
    );
    assert_eq!(rayforge::kv::list("train", "run/").unwrap(), vec!["run/addr"]);
    let jobs = head.jobs().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, "RUNNING");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let nodes = head.nodes().unwrap();
            let alive = |id: &str| nodes.iter().any(|n| n.node_id == id && n.alive);
            alive(&b) && alive(&new_head) && !alive(&old_head)
        }),
        "{:?}",
        head.nodes()
    );

    // The actor table came back: the named actor is found, its state kept;
    // the one on the dead head node was restarted on the new one.
    let found: TallyHandle = rayforge::get_actor("keeper").unwrap();
    assert_eq!(found.inc().get().unwrap(), 3);
    assert_eq!(on_head.node().get().unwrap(), new_head);
    assert_eq!(on_head.inc().get().unwrap(), 51);
    let actors = head.actors().unwrap();
    let keeper_rec = actors.iter().find(|a| a.name == "keeper").unwrap();
    assert_eq!((keeper_rec.state.as_str(), keeper_rec.num_restarts), ("ALIVE", 0));
    // A driver sees the same listings as `rayforge list` (through its node).
    let listed = rayforge::state::list_actors().unwrap();
    assert!(
        listed.iter().any(|a| a.name == "keeper" && a.state == "ALIVE"),
        "{listed:?}"
    );
    let nodes = rayforge::state::list_nodes().unwrap();
    assert_eq!(nodes.len(), head.nodes().unwrap().len());
    assert!(nodes.iter().any(|n| n.node_id == b && n.alive));
    let groups = rayforge::state::list_placement_groups().unwrap();
    assert!(groups.iter().any(|g| g.name == "on-head"), "{groups:?}");
    // So did the placement group: its bundle is held by the new head node.
    let found_pg = rayforge::get_placement_group("on-head").unwrap();
    assert_eq!(found_pg, pg);
    assert!(pg.wait(Duration::from_secs(60)).unwrap(), "{:?}", pg.state());
    let in_bundle = where_am_i::options()
        .placement_group(&pg, Some(0))
        .num_cpus(0.0)
        .remote()
        .get()
        .unwrap();
    assert_eq!(in_bundle, new_head);

    // The job goes on: the running task finishes, new tasks run.
    std::fs::write(&gate, b"go").unwrap();
    assert_eq!(running.get().unwrap(), b);
    let refs: Vec<_> = (0..20u64).map(square::remote).collect();
    let got = rayforge::get_all(&refs).unwrap();
    assert_eq!(got, (0..20u64).map(|x| x * x).collect::<Vec<_>>());
    rayforge::shutdown();
    assert!(
        wait_until(Duration::from_secs(10), || head.jobs().unwrap()[0].state == "SUCCEEDED"),
        "{:?}",
        head.jobs()
    );
    let _ = std::fs::remove_file(&gate);
}

/// A head started again on the state of a cluster whose nodes were all
/// stopped counts none of them alive (they used to show ALIVE, two heads
/// among them, until their heartbeat timeout, and could be picked); a node
/// still running counts again once it is heard from.
#[test]
fn a_restarted_head_counts_restored_nodes_alive_only_once_they_reconnect() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 60_000);
    let b = cluster.add_node(&["--num-cpus", "1"]);
    let c = cluster.add_node(&["--num-cpus", "1"]);
    let old_head = cluster.daemons[0].1.clone();
    let port: u16 = cluster.address.rsplit(':').next().unwrap().parse().unwrap();
    cluster.kill_node(&c);
    cluster.kill_node(&old_head);
    cluster.start_head(&["--num-cpus", "1"], 60_000, port);
    let new_head = cluster.daemons[0].1.clone();
    let mut head = HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    let alive = |head: &mut HeadClient| -> Vec<String> {
        let mut v: Vec<String> = head
            .nodes()
            .unwrap()
            .into_iter()
            .filter(|n| n.alive)
            .map(|n| n.node_id)
            .collect();
        v.sort();
        v
    };
    // At once: the stopped node and the old head are not alive (their
    // 60 s heartbeat timeout has not passed).
    let now = alive(&mut head);
    assert!(!now.contains(&c) && !now.contains(&old_head), "{now:?}");
    // The node still running reconnects and counts again.
    let mut want = vec![b.clone(), new_head.clone()];
    want.sort();
    assert!(
        wait_until(Duration::from_secs(30), || alive(&mut head) == want),
        "{:?}",
        head.nodes()
    );
    let status = cluster.status();
    assert!(status.contains("2 alive"), "{status}");
}

#[test]
fn bad_addresses_tokens_and_arguments_get_clear_errors() {
    rayforge_integration_tests::own_process!();
    let cluster = LocalCluster::start(&["--num-cpus", "1"], 3000);

    // Wrong token: refused, saying why.
    let mut bad = HeadClient::connect(&cluster.address, Some("not-the-token")).unwrap();
    let err = bad.nodes().unwrap_err().to_string();
    assert!(err.contains("refused") && err.contains("token"), "{err}");
    let err = rayforge::init(rayforge::Config::address(&cluster.address).token("wrong")).unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");

    // A head that is not there, an address that is not one.
    let err = HeadClient::connect("127.0.0.1:1", Some("t"))
        .unwrap()
        .nodes()
        .unwrap_err();
    assert!(
        err.to_string().contains("cannot reach the head at 127.0.0.1:1"),
        "{err}"
    );
    let err = rayforge::init(rayforge::Config::address("no-port-here")).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("host:port"),
        "{err}"
    );
    let err = rayforge::init(
        rayforge::Config::address(&cluster.address)
            .token(&cluster.token)
            .attach_to("nonexistent"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nonexistent"), "{err}");

    // The CLI: non-zero exit and the reason on stderr, never a hang.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(rayforge_bin())
            .args(args)
            .env("RAYFORGE_CLUSTER_FILE", "/nonexistent/cluster.json")
            .env_remove("RAYFORGE_TOKEN")
            .output()
            .expect("run rayforge");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = cli(&["status", "--address", "127.0.0.1:1", "--token", "t"]);
    assert!(!ok && err.contains("cannot reach the head"), "{err}");
    let (ok, err) = cli(&["status"]);
    assert!(!ok && err.contains("no cluster is running on this machine"), "{err}");
    // A head refuses a token that guards nothing.
    for (token, why) in [
        ("short", "fewer than 16"),
        ("replace-me-with-a-random-token", "placeholder"),
    ] {
        let (ok, err) = cli(&["start", "--head", "--port", "0", "--token", token, "--block"]);
        assert!(
            !ok && err.contains(why) && err.contains("openssl rand"),
            "{token}: {err}"
        );
    }
    let (ok, err) = cli(&["start", "--head", "--port", "0", "--resources", "[1, 2]", "--block"]);
    assert!(!ok && err.contains("--resources must be a JSON object"), "{err}");
    let (ok, err) = cli(&[
        "start",
        "--head",
        "--port",
        "0",
        "--resources",
        r#"{"a": -1}"#,
        "--block",
    ]);
    assert!(!ok && err.contains("`a` must be a non-negative number"), "{err}");
    let (ok, err) = cli(&["start", "--address", &cluster.address, "--block"]);
    assert!(!ok && err.contains("no token"), "{err}");
    let (ok, err) = cli(&["status", "--address", &cluster.address, "--token", "wrong"]);
    assert!(!ok && err.contains("refused"), "{err}");
    let (ok, err) = cli(&["status", "--address", &cluster.address, "--token", &cluster.token]);
    assert!(ok, "{err}");
}

/// Ends a child process even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_run_joins_a_head_started_with_the_default_ports() {
    rayforge_integration_tests::own_process!();
    use std::io::BufRead;
    // The head's jobs API on its default port, as `rayforge start --head`
    // gives a new user.
    let port = rayforge::jobs::DEFAULT_JOBS_PORT.to_string();
    let cluster = LocalCluster::start(&["--num-cpus", "2", "--jobs-port", &port], 10_000);
    assert!(
        cluster.jobs_address.ends_with(&format!(":{port}")),
        "{}",
        cluster.jobs_address
    );
    let dir = cluster.state_dir.with_file_name("serve");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("serve.toml");
    // Every [http] default but the HTTP port (the admin port stays default).
    let text = "[http]\nport = 0\n\n[[applications]]\nname = \"noop\"\nroute_prefix = \"/\"\ningress = \"Noop\"\n\n[[applications.deployments]]\nname = \"Noop\"\n";
    std::fs::write(&cfg, text).unwrap();
    let serve = workspace_bin("serve", "rayforge-serve");
    let mut child = KillOnDrop(
        std::process::Command::new(&serve)
            .arg("run")
            .arg(&cfg)
            .args(["--address", &cluster.address])
            .env("RAYFORGE_TOKEN", &cluster.token)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start serve run"),
    );
    let mut lines = std::io::BufReader::new(child.0.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let admin = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("serve run ended before listening: {seen:#?}");
        };
        if let Some((_, admin)) = line.split_once(" (admin API on ") {
            break admin.trim_end_matches(')').to_string();
        }
        seen.push(line);
    };
    std::thread::spawn(move || for _ in lines {});
    assert_eq!(admin, format!("127.0.0.1:{}", rayforge_serve::DEFAULT_ADMIN_PORT));
    // `serve status` finds it with no --admin flag.
    let out = std::process::Command::new(&serve).arg("status").output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(status.contains("application noop at /"), "{status}");
    let out = std::process::Command::new(&serve).arg("shutdown").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(child.0.wait().unwrap().success());
    // The admin token's file goes with the server; the commands then say
    // what is missing.
    let port = rayforge_serve::DEFAULT_ADMIN_PORT;
    assert!(!rayforge_serve::admin_token_path(port).unwrap().exists());
    let out = std::process::Command::new(&serve).arg("status").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no admin token"), "{err}");
}

/// The processes whose arguments contain `needle`, with their arguments.
fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args = String::from_utf8_lossy(&raw).replace('\0', " ");
        if args.contains(needle) && rayforge_integration_tests::process_running(pid) {
            found.push((pid, args));
        }
    }
    found
}

/// Ends the daemons a test started in the background, however it ends.
struct StopOnDrop(Vec<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: plain kill(2) of a pid this test found running.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let gone = |pid: &u32| !rayforge_integration_tests::process_running(*pid);
        wait_until(Duration::from_secs(30), || self.0.iter().all(gone));
    }
}

/// The token never shows where other users of the machine, or logs, see
/// it: a head takes it from `$RAYFORGE_TOKEN`, its start line names the file
/// that holds it instead of printing it, and a daemon given `--token` gets
/// it in its environment, not in its arguments.
#[test]
fn the_token_stays_out_of_arguments_and_output() {
    rayforge_integration_tests::own_process!();
    let base = std::env::temp_dir().join(format!("rf-token-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let cluster_file = base.join("cluster.json");
    let state = base.join("head-state");
    let token = format!("token-from-the-environment-{}", std::process::id());
    let mut stop = StopOnDrop(Vec::new());
    let run = |args: &[&str], env_token: Option<&str>| {
        let mut cmd = std::process::Command::new(rayforge_bin());
        cmd.args(args).env("RAYFORGE_CLUSTER_FILE", &cluster_file);
        match env_token {
            Some(t) => cmd.env("RAYFORGE_TOKEN", t),
            None => cmd.env_remove("RAYFORGE_TOKEN"),
        };
        let out = cmd.output().expect("run rayforge");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };

    // A head in the background, its token from the environment.
    let state_arg = state.to_string_lossy().into_owned();
    let (ok, out, err) = run(
        &[
            "start",
            "--head",
            "--port",
            "0",
            "--jobs-port",
            "0",
            "--num-cpus",
            "0",
            "--state-dir",
            &state_arg,
        ],
        Some(&token),
    );
    stop.0
        .extend(processes_with(&state_arg).into_iter().map(|(pid, _)| pid));
    assert!(ok, "{err}");
    assert!(!out.contains(&token), "the start line printed the token: {out}");
    assert!(out.contains("rayforge token"), "{out}");
    let ready: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cluster_file).unwrap()).unwrap();
    assert_eq!(ready["token"], token.as_str(), "the head did not take $RAYFORGE_TOKEN");
    let address = ready["address"].as_str().unwrap().to_string();
    let (ok, out, err) = run(&["token"], None);
    assert!(ok && out.trim() == token, "{out} {err}");

    // A node in the background, given --token on its command line: warned,
    // and the daemon's own arguments do not carry it.
    let tag = format!("argv_check_{}", std::process::id());
    let resources = format!(r#"{{"{tag}": 1}}"#);
    let (ok, out, err) = run(
        &[
            "start",
            "--address",
            &address,
            "--token",
            &token,
            "--num-cpus",
            "1",
            "--resources",
            &resources,
        ],
        None,
    );
    let nodes = processes_with(&tag);
    stop.0.extend(nodes.iter().map(|(pid, _)| *pid));
    assert!(ok, "{err}");
    assert!(err.contains("visible to every user"), "{err}");
    assert!(!out.contains(&token), "{out}");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert!(
        !nodes[0].1.contains(&token),
        "the daemon's arguments carry the token: {}",
        nodes[0].1
    );
    let mut head = HeadClient::connect(&address, Some(&token)).unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || head.nodes().is_ok_and(|n| n
            .iter()
            .filter(|n| n.alive)
            .count()
            == 2)),
        "the node did not join"
    );

    // A token file: read, or refused naming the file.
    let file = base.join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    let (ok, out, err) = run(&["status", "--address", &address, "--token-file", &file_arg], None);
    assert!(ok && out.contains("2 alive"), "{out} {err}");
    let (ok, _, err) = run(
        &["status", "--address", &address, "--token-file", "/nonexistent/token"],
        None,
    );
    assert!(!ok && err.contains("/nonexistent/token"), "{err}");
    std::fs::write(&file, "\n").unwrap();
    let (ok, _, err) = run(&["status", "--address", &address, "--token-file", &file_arg], None);
    assert!(!ok && err.contains("is empty"), "{err}");
    drop(stop);
    let _ = std::fs::remove_dir_all(&base);
}

/// What `rayforge` trusts in the temporary directory (the cluster file,
/// pid files, the head's default state with its token) must be this
/// user's: a `rayforge` directory another user made first is refused by
/// `start`, `stop` and drivers alike, and `stop` kills only daemons, not
/// whatever process took a stale pid file's pid.
#[test]
fn a_planted_temp_directory_is_refused_and_stop_kills_only_daemons() {
    rayforge_integration_tests::own_process!();
    let base = std::env::temp_dir().join(format!("rf-planted-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let run = |tmp: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(rayforge_bin())
            .args(args)
            .env("TMPDIR", tmp)
            .env_remove("RAYFORGE_CLUSTER_FILE")
            .env_remove("RAYFORGE_TOKEN")
            .output()
            .expect("run rayforge");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let theirs = base.join("theirs");
        std::fs::create_dir_all(theirs.join("rayforge")).unwrap();
        std::os::unix::fs::chown(theirs.join("rayforge"), Some(65534), Some(65534)).unwrap();
        for args in [
            &["start", "--head", "--port", "0", "--jobs-port", "0", "--block"][..],
            &["stop"][..],
            &["status"][..],
        ] {
            let (ok, err) = run(&theirs, args);
            assert!(!ok && err.contains("owned by uid 65534"), "{args:?}: {err}");
        }
    } else {
        eprintln!("not root: the case of another user's directory is skipped");
    }

    // Ours, with a pid file whose process is not a daemon: left alone.
    let mine = base.join("mine");
    let daemons = mine.join("rayforge").join("daemons");
    std::fs::create_dir_all(&daemons).unwrap();
    let mut bystander = std::process::Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(daemons.join(bystander.id().to_string()), "127.0.0.1:1").unwrap();
    let (ok, err) = run(&mine, &["stop", "--grace", "1"]);
    assert!(ok, "{err}");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "`rayforge stop` killed a process that is not a daemon"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(mine.join("rayforge")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "our directory was not closed to others");
    let _ = std::fs::remove_dir_all(&base);
}

/// A node stopped cleanly says so: the head records it as stopped at once
/// (not alive until its heartbeat timeout), and a head stopped cleanly
/// records itself; a head restarted on that state counts neither alive nor
/// reconnecting.
#[test]
fn cleanly_stopped_nodes_are_recorded_as_stopped() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 60_000);
    let b = cluster.add_node(&["--num-cpus", "1"]);
    let old_head = cluster.daemons[0].1.clone();
    let port: u16 = cluster.address.rsplit(':').next().unwrap().parse().unwrap();
    let mut head = HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    cluster.stop_node(&b);
    // At once, not after the 60 s heartbeat timeout.
    let nodes = head.nodes().unwrap();
    let gone = nodes.iter().find(|n| n.node_id == b).unwrap();
    assert!(!gone.alive && gone.death_cause.contains("stopped cleanly"), "{gone:?}");
    cluster.stop_node(&old_head);
    cluster.start_head(&["--num-cpus", "1"], 60_000, port);
    let mut head = HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    let nodes = head.nodes().unwrap();
    for id in [&b, &old_head] {
        let n = nodes.iter().find(|n| &n.node_id == id).unwrap();
        assert!(
            !n.alive && !n.reconnecting && n.death_cause.contains("stopped cleanly"),
            "{n:?}"
        );
    }
    let status = cluster.status();
    assert!(status.contains("1 alive, 0 reconnecting, 2 dead"), "{status}");
}

/// A head that cannot write its state (a full disk, here a directory where
/// the state's temporary file goes, which fails even for root) says so on
/// `/readyz` (503, naming the error) instead of only logging, and is ready
/// again once a write succeeds.
#[test]
fn the_head_is_not_ready_while_it_cannot_write_its_state() {
    rayforge_integration_tests::own_process!();
    use rayforge::jobs::{JobClient, RuntimeEnv};
    use rayforge_integration_tests::http;
    let cluster = LocalCluster::start(&["--num-cpus", "1"], 60_000);
    let base = cluster.jobs_address.clone();
    assert_eq!(http(&base, "GET", "/readyz", &[], "").status, 200);
    let blocker = cluster.state_dir.join("state.pb.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    // Submitting a job writes the state.
    jobs.submit("true", &RuntimeEnv::default()).unwrap();
    let r = http(&base, "GET", "/readyz", &[], "");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("cannot write the head's state"), "{}", r.body);
    std::fs::remove_dir(&blocker).unwrap();
    jobs.submit("true", &RuntimeEnv::default()).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || http(&base, "GET", "/readyz", &[], "")
            .status
            == 200),
        "{}",
        http(&base, "GET", "/readyz", &[], "").body
    );
}
