//! Jobs on a real cluster (a head and two node daemons): `rayforge job
//! submit` with a runtime env, a node SIGKILLed mid-job while the job still
//! finishes, `job status|logs|stop|list`, a driver killed without
//! `shutdown`, and clear errors from the jobs API and the CLI.

use std::process::Command;
use std::time::Duration;

use rayforge::jobs::{JobClient, RuntimeEnv};
use rayforge::Error;
use rayforge_integration_tests::{rayforge_bin, wait_until, workspace_bin, LocalCluster};

fn cli(cluster: &LocalCluster, args: &[&str]) -> std::process::Output {
    Command::new(rayforge_bin())
        .arg("job")
        .args(["--address", &cluster.jobs_address])
        .env("RAYFORGE_TOKEN", &cluster.token)
        .args(args)
        .output()
        .expect("run rayforge job")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_submitted_job_gets_its_runtime_env_and_survives_a_killed_node() {
    rayforge_integration_tests::own_process!();
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 2000);
    let b = cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"x": 1}"#]);
    let c = cluster.add_node(&["--num-cpus", "1", "--resources", r#"{"x": 1}"#]);

    let base = std::env::temp_dir().join(format!("rayforge-jobs-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let wd = base.join("wd");
    std::fs::create_dir_all(&wd).unwrap();
    std::fs::write(wd.join("data.txt"), "payload-42").unwrap();
    let env_file = base.join("env.json");
    std::fs::write(
        &env_file,
        r#"{"env_vars": {"PROBE_VAR": "hello-env"}, "working_dir": "wd"}"#,
    )
    .unwrap();
    let gate = base.join("gate");
    let probe = workspace_bin("job_probe", "rayforge-integration-tests");

    let out = cli(
        &cluster,
        &[
            "submit",
            "--runtime-env",
            env_file.to_str().unwrap(),
            "--no-wait",
            "--",
            probe.to_str().unwrap(),
            gate.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let id = stdout
        .split_whitespace()
        .nth(1)
        .expect("job <id> submitted")
        .to_string();

    // The gated task reports its node: kill that node mid-job.
    let at = base.join("gate.at");
    let mut victim = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            victim = std::fs::read_to_string(&at).unwrap_or_default();
            !victim.is_empty()
        }),
        "the job's gated task never started: {}",
        text(&cli(&cluster, &["logs", &id]).stdout)
    );
    assert!(victim == b || victim == c, "{victim}");
    let survivor = if victim == b { c.clone() } else { b.clone() };
    cluster.kill_node(&victim);
    std::fs::write(&gate, b"go").unwrap();

    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let mut log = String::new();
    let done = jobs.follow(&id, |s| log.push_str(s)).unwrap();
    assert_eq!(done.state, "SUCCEEDED", "{done:?}\n{log}");
    assert!(log.contains("driver var=hello-env data=payload-42"), "{log}");
    // What the tasks printed on the nodes reached the driver's output.
    assert!(
        log.lines()
            .any(|l| l.starts_with("(pid=") && l.contains(", node=") && l.ends_with(") probe task says hi")),
        "{log}"
    );
    // The gated task was retried on the surviving node; every task saw the
    // runtime env wherever it ran.
    assert!(
        log.contains(&format!("gated node={survivor} var=hello-env data=payload-42")),
        "{log}"
    );
    let probes: Vec<&str> = log.lines().filter(|l| l.starts_with("probe ")).collect();
    assert_eq!(probes.len(), 3, "{log}");
    for p in &probes {
        assert!(p.ends_with(" var=hello-env data=payload-42"), "{log}");
    }

    // The CLI sees the same.
    let out = cli(&cluster, &["status", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (st["state"].as_str(), st["submitted"].as_bool()),
        (Some("SUCCEEDED"), Some(true))
    );
    let out = cli(&cluster, &["logs", &id]);
    assert_eq!(text(&out.stdout), log);
    let out = cli(&cluster, &["list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list.as_array().unwrap().iter().any(|j| j["job_id"] == id.as_str()),
        "{list}"
    );

    // A failing entrypoint: the CLI follows it and exits non-zero.
    let out = cli(&cluster, &["submit", "--", "sh", "-c", "echo about to fail; exit 3"]);
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("about to fail") && stdout.contains("FAILED") && stdout.contains("code 3"),
        "{stdout}"
    );

    // Stop a long job: its whole process group ends.
    let long = jobs.submit("sleep 600", &RuntimeEnv::default()).unwrap();
    assert_eq!(jobs.status(&long).unwrap().state, "RUNNING");
    assert!(jobs.stop(&long).unwrap());
    assert!(
        wait_until(Duration::from_secs(30), || jobs.status(&long).unwrap().state
            == "STOPPED"),
        "{:?}",
        jobs.status(&long)
    );
    assert!(!jobs.stop(&long).unwrap(), "a stopped job is not running");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn bad_job_requests_get_clear_errors() {
    rayforge_integration_tests::own_process!();
    let cluster = LocalCluster::start(&["--num-cpus", "1"], 5000);
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();

    let err = jobs.status("nope").unwrap_err();
    assert!(
        matches!(err, Error::NotFound(_)) && err.to_string().contains("nope"),
        "{err}"
    );
    let err = jobs.logs("nope", 0).unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let err = jobs.submit("  ", &RuntimeEnv::default()).unwrap_err();
    assert!(err.to_string().contains("entrypoint is empty"), "{err}");
    let missing = RuntimeEnv {
        working_dir: Some("/definitely/not/here".into()),
        ..Default::default()
    };
    let err = jobs.submit("true", &missing).unwrap_err();
    assert!(err.to_string().contains("/definitely/not/here"), "{err}");
    let unuploaded = RuntimeEnv {
        working_dir: Some(format!("package://{}", "0".repeat(64))),
        ..Default::default()
    };
    let err = jobs.submit("true", &unuploaded).unwrap_err();
    assert!(err.to_string().contains("was not uploaded"), "{err}");

    // Wrong token; no token; a head that is not there; a malformed address.
    let err = JobClient::connect(&cluster.jobs_address, Some("wrong"))
        .unwrap()
        .list()
        .unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    let err = JobClient::connect("127.0.0.1:1", Some("t"))
        .unwrap()
        .list()
        .unwrap_err();
    assert!(err.to_string().contains("cannot reach the jobs API"), "{err}");
    let err = JobClient::connect("http://no-port/", None).err().unwrap();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");

    // Raw HTTP: a malformed body, an unknown field, an unknown endpoint.
    let raw = |method: &str, path: &str, body: &str, token: &str| -> (u16, String) {
        use std::io::{Read, Write};
        let hostport = cluster.jobs_address.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(hostport).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        let code = reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, reply)
    };
    let (code, body) = raw("POST", "/api/jobs/", "{not json", &cluster.token);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed"), "{body}");
    let (code, body) = raw(
        "POST",
        "/api/jobs/",
        r#"{"entrypoint": "true", "bogus": 1}"#,
        &cluster.token,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("bogus"), "{body}");
    let (code, body) = raw("GET", "/api/nothing", "", &cluster.token);
    assert_eq!(code, 404, "{body}");
    let (code, body) = raw("GET", "/api/jobs/", "", "");
    assert_eq!(code, 401, "{body}");
    let (code, body) = raw(
        "PUT",
        &format!("/api/packages/{}", "0".repeat(64)),
        "junk",
        &cluster.token,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("SHA-256"), "{body}");

    // The CLI: a malformed runtime env file, a missing job.
    let bad = std::env::temp_dir().join(format!("rayforge-bad-env-{}.json", std::process::id()));
    std::fs::write(&bad, "{\"env_vars\": [1, 2]}").unwrap();
    let out = cli(
        &cluster,
        &["submit", "--runtime-env", bad.to_str().unwrap(), "--", "true"],
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("malformed"), "{}", text(&out.stderr));
    let out = cli(&cluster, &["status", "ffffffff"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no job `ffffffff`"), "{}", text(&out.stderr));
    let _ = std::fs::remove_file(&bad);
}

#[test]
fn a_driver_killed_without_shutdown_fails_its_job_and_ends_its_actors() {
    rayforge_integration_tests::own_process!();
    use std::io::BufRead;
    let cluster = LocalCluster::start(&["--num-cpus", "1"], 5000);
    let probe = workspace_bin("job_probe", "rayforge-integration-tests");
    let mut driver = Command::new(probe)
        .arg("--hold-actors")
        .env("RAYFORGE_ADDRESS", &cluster.address)
        .env("RAYFORGE_TOKEN", &cluster.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the driver");
    let mut line = String::new();
    std::io::BufReader::new(driver.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("driver output");
    assert_eq!(line.trim(), "ready");
    let mut head = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&cluster.token)).unwrap();
    let jobs = head.jobs().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].state, "RUNNING");
    let state_of = |head: &mut rayforge::cluster::HeadClient, name: &str| {
        head.actors()
            .unwrap()
            .into_iter()
            .find(|a| a.name == name)
            .map(|a| a.state)
    };
    assert_eq!(state_of(&mut head, "held").as_deref(), Some("ALIVE"));

    driver.kill().unwrap();
    driver.wait().unwrap();
    let mut job = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            job = head.jobs().unwrap().into_iter().find(|j| j.state != "RUNNING");
            job.is_some()
        }),
        "the job of a killed driver stayed RUNNING"
    );
    let job = job.unwrap();
    assert_eq!(job.state, "FAILED");
    assert!(
        job.message.contains("exited without calling rayforge::shutdown"),
        "{job:?}"
    );
    // Its actor ends with the job; the detached one lives on.
    let mut actors = Vec::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            actors = head.actors().unwrap();
            actors.iter().any(|a| a.name == "held" && a.state == "DEAD")
        }),
        "{actors:?}"
    );
    let held = actors.iter().find(|a| a.name == "held").unwrap();
    assert!(held.death_cause.contains("finished"), "{held:?}");
    assert_eq!(state_of(&mut head, "held-detached").as_deref(), Some("ALIVE"));
}

/// Sets this process's soft limit on open files; returns the hard one.
fn set_open_files(soft: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one `rlimit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = soft.min(l.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    l.rlim_max
}

/// Slowloris: 2,000 connections to the head's HTTP port, each with half a
/// request line sent and nothing more, do not stop `rayforge status` or a
/// job submit from another client (the head starts with the common soft
/// limit of 1,024 open files and must raise it), and the head closes them
/// once their headers are late.
#[test]
fn two_thousand_half_open_connections_do_not_shut_others_out() {
    rayforge_integration_tests::own_process!();
    use std::io::{Read, Write};
    // The head inherits a soft limit of 1,024, as under most shells.
    let hard = set_open_files(1024);
    if hard < 4096 {
        eprintln!("skipped: the hard limit on open files is {hard}, the test needs 4,096");
        return;
    }
    let cluster = LocalCluster::start(&["--num-cpus", "1"], 5000);
    set_open_files(hard);
    let http = cluster
        .jobs_address
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut idle = Vec::new();
    for i in 0..2000 {
        let mut s = std::net::TcpStream::connect(&http).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n").unwrap();
        idle.push(s);
    }
    // Another client still gets through, on gRPC and on HTTP.
    let status = cluster.status();
    assert!(status.contains("1 alive"), "{status}");
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let id = jobs.submit("echo through-the-crowd", &RuntimeEnv::default()).unwrap();
    let mut log = String::new();
    let done = jobs.follow(&id, |s| log.push_str(s)).unwrap();
    assert_eq!(done.state, "SUCCEEDED", "{done:?}\n{log}");
    assert!(log.contains("through-the-crowd"), "{log}");
    // The head hangs up on connections whose headers never end (10 s).
    let started = std::time::Instant::now();
    for s in idle.iter_mut().step_by(97) {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!(
                    "a half-open connection was still open after {:?}: {e}",
                    started.elapsed()
                ),
            }
        }
    }
}

/// The pid in `path`, once written.
fn pid_in(path: &std::path::Path) -> u32 {
    let mut pid = 0;
    assert!(
        wait_until(Duration::from_secs(60), || {
            pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        }),
        "{} was never written",
        path.display()
    );
    pid
}

/// A submitted job's processes end with the head however it dies: when the
/// head is SIGKILLed, the job's watchdog ends its whole process group (a
/// grandchild included, which the entrypoint's parent-death signal never
/// reached); and when the watchdog died too, a head restarted on the same
/// state ends what is left and says so in the job's message.
#[test]
fn a_jobs_processes_end_with_a_crashed_head() {
    rayforge_integration_tests::own_process!();
    use rayforge_integration_tests::process_running;
    let mut cluster = LocalCluster::start(&["--num-cpus", "1"], 60_000);
    let port: u16 = cluster.address.rsplit(':').next().unwrap().parse().unwrap();
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let dir = std::env::temp_dir().join(format!("rayforge-job-groups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let entry = |name: &str| {
        let d = dir.display();
        format!("sleep 600 & echo $! > {d}/{name}.pid; echo $$ > {d}/{name}.pgid; wait")
    };
    let a = jobs.submit(&entry("a"), &RuntimeEnv::default()).unwrap();
    let b = jobs.submit(&entry("b"), &RuntimeEnv::default()).unwrap();
    let (a_sleep, b_sleep) = (pid_in(&dir.join("a.pid")), pid_in(&dir.join("b.pid")));
    let b_group = pid_in(&dir.join("b.pgid"));
    // B's watchdog dies first, as if the head's whole process tree were
    // killed at once.
    let watch = format!("rayforge-group-watch\0{b_group}\0");
    let watchdogs: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(watch.len()).any(|w| w == watch.as_bytes()))
        })
        .collect();
    assert_eq!(watchdogs.len(), 1, "job {b}'s watchdog: {watchdogs:?}");
    // SAFETY: kill(2) on the watchdog found above.
    unsafe { libc::kill(watchdogs[0] as i32, libc::SIGKILL) };
    let head = cluster.daemons[0].1.clone();
    cluster.kill_node(&head);
    assert!(
        wait_until(Duration::from_secs(60), || !process_running(a_sleep)),
        "job {a}'s grandchild outlived the head"
    );
    assert!(
        process_running(b_sleep),
        "job {b}'s grandchild, without a watchdog, should be left"
    );
    cluster.start_head(&["--num-cpus", "1"], 60_000, port);
    assert!(
        wait_until(Duration::from_secs(60), || !process_running(b_sleep)),
        "the restarted head did not end job {b}'s leftovers"
    );
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let st = jobs.status(&b).unwrap();
    assert_eq!(st.state, "FAILED", "{st:?}");
    assert!(st.message.contains("1 leftover process"), "{st:?}");
    let st = jobs.status(&a).unwrap();
    assert!(st.state == "FAILED" && !st.message.contains("leftover"), "{st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The head keeps job binaries, packages and logs within
/// `--artifact-budget`: past it, the oldest finished job's log goes (and
/// reading it says so), while a running job's log and a fresh one stay.
#[test]
fn old_job_logs_go_past_the_artifact_budget() {
    rayforge_integration_tests::own_process!();
    let cluster = LocalCluster::start(&["--num-cpus", "1", "--artifact-budget", "100000"], 60_000);
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let logs = cluster.state_dir.join("job-logs");
    // Older than the grace the janitor gives fresh uploads.
    let age = |id: &str| {
        std::fs::File::options()
            .write(true)
            .open(logs.join(format!("{id}.log")))
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    };
    let big = "head -c 60000 /dev/zero | tr '\\0' x; echo";
    let first = jobs.submit(big, &RuntimeEnv::default()).unwrap();
    assert_eq!(jobs.follow(&first, |_| {}).unwrap().state, "SUCCEEDED");
    age(&first);
    let running = jobs
        .submit(
            "head -c 60000 /dev/zero | tr '\\0' y; echo; sleep 600",
            &RuntimeEnv::default(),
        )
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || {
        std::fs::metadata(logs.join(format!("{running}.log"))).is_ok_and(|m| m.len() > 60000)
    }));
    age(&running);
    // A third job's end takes the total (180 kB) past the budget.
    let second = jobs.submit(big, &RuntimeEnv::default()).unwrap();
    assert_eq!(jobs.follow(&second, |_| {}).unwrap().state, "SUCCEEDED");
    assert!(
        wait_until(Duration::from_secs(60), || !logs.join(format!("{first}.log")).exists()),
        "the oldest log was kept past the budget"
    );
    assert!(
        logs.join(format!("{running}.log")).exists(),
        "a running job's log was removed"
    );
    assert!(logs.join(format!("{second}.log")).exists(), "a fresh log was removed");
    let chunk = jobs.logs(&first, 0).unwrap();
    assert!(chunk.logs.contains("was removed") && chunk.finished, "{chunk:?}");
    assert!(jobs.stop(&running).unwrap());
}

/// A daemon a job starts with `setsid` leaves the job's process group, but
/// not its cgroup: it ends when the job is stopped, and when a job that
/// exits on its own leaves one behind. Skipped where cgroup v2 is not
/// writable (the test script requires it as root: RAYFORGE_REQUIRE_CGROUPS).
#[test]
fn daemons_that_leave_a_jobs_process_group_end_with_the_job() {
    rayforge_integration_tests::own_process!();
    use rayforge_integration_tests::process_running;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    if rayforge::util::Cgroup::create(&format!("rayforge-probe-{}-{nanos}", std::process::id()))
        .map(|c| c.end(Duration::from_secs(5)))
        .is_none()
    {
        assert!(
            std::env::var("RAYFORGE_REQUIRE_CGROUPS").as_deref() != Ok("1"),
            "cgroup v2 is not writable here"
        );
        eprintln!("skipped: cgroup v2 is not writable here");
        return;
    }
    let cluster = LocalCluster::start(&["--num-cpus", "1"], 60_000);
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let dir = std::env::temp_dir().join(format!("rayforge-job-cgroups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    // Stopped: the daemon outside the group goes with the job.
    let stopped = jobs
        .submit(
            &format!("setsid sleep 600 & echo $! > {d}/stopped.pid; sleep 600"),
            &RuntimeEnv::default(),
        )
        .unwrap();
    let daemon = pid_in(&dir.join("stopped.pid"));
    // `$!` is written as soon as the shell forks: setsid may not have run
    // yet, so wait for the daemon to lead a group of its own.
    // SAFETY: getpgid(2) on the pid the job wrote.
    let group = || unsafe { libc::getpgid(daemon as i32) };
    assert!(
        wait_until(Duration::from_secs(60), || group() == daemon as i32),
        "setsid made the daemon a group of its own: its group is {}",
        group()
    );
    // Another cluster on this machine whose job has the same id: its
    // cgroup is its own, and stopping this one leaves it running.
    let other = LocalCluster::start(&["--num-cpus", "1"], 60_000);
    let other_jobs = JobClient::connect(&other.jobs_address, Some(&other.token)).unwrap();
    let same_id = other_jobs
        .submit(&format!("echo $$ > {d}/other.pid; sleep 600"), &RuntimeEnv::default())
        .unwrap();
    assert_eq!(same_id, stopped, "both heads number their first job alike");
    let other_pid = pid_in(&dir.join("other.pid"));
    assert!(jobs.stop(&stopped).unwrap());
    assert!(
        wait_until(Duration::from_secs(60), || !process_running(daemon)),
        "the daemon outlived `job stop`"
    );
    let st = jobs.follow(&stopped, |_| {}).unwrap();
    assert_eq!(st.state, "STOPPED", "{st:?}");
    assert!(
        process_running(other_pid),
        "stopping a job ended another cluster's job of the same id"
    );
    assert_eq!(other_jobs.status(&same_id).unwrap().state, "RUNNING");
    assert!(other_jobs.stop(&same_id).unwrap());
    // Exiting on its own: what it left running ends with it.
    let left = jobs
        .submit(
            &format!("setsid sleep 600 & echo $! > {d}/left.pid"),
            &RuntimeEnv::default(),
        )
        .unwrap();
    let st = jobs.follow(&left, |_| {}).unwrap();
    assert_eq!(st.state, "SUCCEEDED", "{st:?}");
    let daemon = pid_in(&dir.join("left.pid"));
    assert!(
        wait_until(Duration::from_secs(60), || !process_running(daemon)),
        "the daemon outlived the job that started it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
