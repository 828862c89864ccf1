//! The dashboard, metrics and health endpoints against a live two-node
//! cluster of real daemons, with a submitted job (`dashboard_probe`)
//! giving it tasks, actors, waiting tasks and output to show.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rayforge_integration_tests::{http, process_running, wait_until, workspace_bin, LocalCluster};

fn get_json(base: &str, path: &str, token: &str) -> serde_json::Value {
    let auth = format!("Bearer {token}");
    let r = http(base, "GET", path, &[("Authorization", &auth)], "");
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {}", r.body))
}

/// The `name=value` of the cookie a login reply sets.
fn session_cookie(r: &rayforge_integration_tests::Resp) -> String {
    r.head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a cookie")
        .to_string()
}

/// Reads a server-sent event stream until `want` lines of `data: PREFIX`
/// came, or the deadline.
fn sse_lines(base: &str, path: &str, token: &str, prefix: &str, want: usize) -> Vec<String> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    let mut buf = [0u8; 8192];
    loop {
        let lines: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        match s.read(&mut buf) {
            Ok(0) => return lines,
            Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
}

/// Runs `promtool check metrics` on `text` when promtool is installed (CI
/// installs it and sets `RAYFORGE_REQUIRE_PROMTOOL=1`, making it required).
fn promtool_check(text: &str) {
    let required = std::env::var("RAYFORGE_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(!required, "promtool is required here but cannot run: {e}");
            eprintln!("promtool is not installed: metrics format not linted");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A head (2 CPUs) and a node (1 CPU, `slot: 1`) running the probe job,
/// once it printed `ready`: (cluster, the node's id, the job's id, a jobs
/// client).
fn probed_cluster() -> (LocalCluster, String, String, rayforge::jobs::JobClient) {
    let mut cluster = LocalCluster::start(&["--num-cpus", "2", "--metrics-port", "0"], 3000);
    let worker_node = cluster.add_node(&["--num-cpus", "1", "--resources", "{\"slot\": 1}"]);
    let jobs = rayforge::jobs::JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let probe = workspace_bin("dashboard_probe", "rayforge-integration-tests");
    let job = jobs
        .submit(&probe.to_string_lossy(), &rayforge::jobs::RuntimeEnv::default())
        .unwrap();
    let mut out = String::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            out = jobs.logs(&job, 0).map(|c| c.logs).unwrap_or_default();
            out.contains("ready") || out.contains("failed")
        }),
        "the probe job did not get ready: {out}"
    );
    assert!(out.contains("ready"), "{out}");
    (cluster, worker_node, job, jobs)
}

#[test]
fn the_dashboard_shows_a_live_cluster_and_its_endpoints_guard_the_token() {
    rayforge_integration_tests::own_process!();
    let (mut cluster, worker_node, job, jobs) = probed_cluster();
    let base = cluster.jobs_address.clone();
    let token = cluster.token.clone();

    // Health needs no token; everything else does.
    assert_eq!(http(&base, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(http(&base, "GET", "/readyz", &[], "").status, 200);
    let r = http(&base, "GET", "/api/v0/cluster", &[], "");
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.body.contains("token"), "{}", r.body);
    let r = http(
        &base,
        "GET",
        "/api/v0/cluster",
        &[("Authorization", "Bearer wrong")],
        "",
    );
    assert_eq!(r.status, 401);
    assert_eq!(http(&base, "GET", "/metrics", &[], "").status, 401);
    let r = http(&base, "GET", "/actors", &[("Accept", "text/html")], "");
    assert_eq!(r.status, 303);
    assert!(r.head.contains("location: /login?next=/actors"), "{}", r.head);
    // The login page: a wrong token is refused, the right one sets the cookie.
    assert!(http(&base, "GET", "/login", &[], "").body.contains("name=\"token\""));
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = http(&base, "POST", "/login", &form, "token=nope&next=%2Factors");
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong token"));
    let r = http(&base, "POST", "/login", &form, &format!("token={token}&next=%2Factors"));
    assert_eq!(r.status, 303, "{}", r.head);
    assert!(r.head.contains("location: /actors"), "{}", r.head);
    assert!(r.head.to_ascii_lowercase().contains("max-age=43200"), "{}", r.head);
    let cookie = session_cookie(&r);
    let r = http(
        &base,
        "GET",
        "/actors",
        &[("Cookie", &cookie), ("Accept", "text/html")],
        "",
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("/assets/app.js"));
    assert_eq!(
        http(&base, "GET", "/assets/app.js", &[("Cookie", &cookie)], "").status,
        200
    );
    // CSRF: a form posted with the cookie from another port of this
    // machine (a page there) submits no job; nor does a same-site fetch.
    let submit = r#"{"entrypoint": "touch /tmp/csrf-was-here"}"#;
    let r = http(
        &base,
        "POST",
        "/api/jobs/",
        &[
            ("Cookie", &cookie),
            ("Origin", "http://127.0.0.1:9"),
            ("Content-Type", "text/plain"),
        ],
        submit,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = http(
        &base,
        "POST",
        "/api/jobs/",
        &[
            ("Cookie", &cookie),
            ("Sec-Fetch-Site", "same-site"),
            ("Content-Type", "application/json"),
        ],
        submit,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // The cookie is a session id, not the token, and it ends at logout
    // (a raw token in a cookie proves nothing).
    assert!(
        cookie.starts_with("rayforge_session=") && !cookie.contains(&token),
        "{cookie}"
    );
    let raw_token_cookie = format!("rayforge_session={token}");
    assert_eq!(
        http(&base, "GET", "/api/v0/cluster", &[("Cookie", &raw_token_cookie)], "").status,
        401
    );
    let r = http(&base, "GET", "/logout", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 303, "{}", r.head);
    assert_eq!(
        http(&base, "GET", "/api/v0/cluster", &[("Cookie", &cookie)], "").status,
        401
    );

    let c = get_json(&base, "/api/v0/cluster", &token);
    assert_eq!(c["nodes"].as_array().unwrap().len(), 2, "{c}");
    assert_eq!(c["resources"]["total"]["CPU"], 3.0, "{c}");
    assert!(c["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["job_id"] == job.as_str() && j["state"] == "RUNNING"));
    assert!(c["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "NODE_JOINED"));

    // Nodes: /proc figures and workers with real pids.
    let nodes = get_json(&base, "/api/v0/nodes", &token);
    for n in nodes.as_array().unwrap() {
        let s = &n["stats"];
        assert!(s["mem_total_bytes"].as_u64().unwrap() > 0, "{n}");
        assert!(s["mem_used_bytes"].as_u64().unwrap() > 0, "{n}");
        assert!(s["disk_total_bytes"].as_u64().unwrap() > 0, "{n}");
        assert!(s["store_capacity_bytes"].as_u64().unwrap() > 0, "{n}");
        assert!(!n["http_address"].as_str().unwrap().is_empty(), "{n}");
    }
    let workers: Vec<&serde_json::Value> = nodes
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["stats"]["workers"].as_array().unwrap().iter())
        .collect();
    assert!(!workers.is_empty(), "{nodes}");
    for w in &workers {
        assert!(process_running(w["pid"].as_u64().unwrap() as u32), "{w}");
        assert!(w["rss_bytes"].as_u64().unwrap() > 0, "{w}");
    }

    // Actors, with their pids.
    let mut counter = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            let actors = get_json(&base, "/api/v0/actors", &token);
            counter = actors
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["name"] == "dash-counter")
                .cloned()
                .unwrap_or_default();
            counter["pid"].is_u64()
        }),
        "{counter}"
    );
    assert_eq!(counter["state"], "ALIVE");
    assert_eq!(counter["class_name"], "dashboard_probe::Counter");
    let pid = counter["pid"].as_u64().unwrap() as u32;
    assert!(process_running(pid));
    let id = counter["actor_id"].as_str().unwrap().to_string();
    let one = get_json(&base, &format!("/api/v0/actors/{id}"), &token);
    assert!(
        one["logs"].to_string().contains("counter actor started"),
        "the actor's log: {one}"
    );

    // Tasks: counts, pages, and why each waiting task waits.
    let mut reasons = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let t = get_json(&base, "/api/v0/tasks?state=PENDING&per_page=1000", &token);
            reasons = t["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| format!("{} {}", t["name"], t["wait_reason"]))
                .collect();
            [
                "NO_NODE_HAS_RESOURCES",
                "ARGS_NOT_READY",
                "PLACEMENT_GROUP_PENDING",
                "ALL_BUSY",
            ]
            .iter()
            .all(|r| reasons.iter().any(|x| x.contains(r)))
        }),
        "{reasons:#?}"
    );
    assert!(reasons
        .iter()
        .any(|r| r.contains("square") && r.contains("NO_NODE_HAS_RESOURCES") && r.contains("unobtainium")));
    assert!(reasons
        .iter()
        .any(|r| r.contains("add_one") && r.contains("ARGS_NOT_READY")));
    let t = get_json(&base, "/api/v0/tasks?per_page=5&page=2", &token);
    assert_eq!(t["items"].as_array().unwrap().len(), 5, "{t}");
    assert!(t["counts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "dashboard_probe::square" && c["state"] == "FINISHED" && c["count"] == 20));
    let auth = format!("Bearer {token}");
    assert_eq!(
        http(
            &base,
            "GET",
            "/api/v0/tasks?per_page=0",
            &[("Authorization", &auth)],
            ""
        )
        .status,
        400
    );

    // Placement groups, objects, the timeline.
    let groups = get_json(&base, "/api/v0/placement_groups", &token);
    assert!(
        groups.as_array().unwrap().iter().any(|g| g["state"] == "PENDING"),
        "{groups}"
    );
    let objects = get_json(&base, "/api/v0/objects", &token);
    assert!(objects["summary"].is_array(), "{objects}");
    let trace = get_json(&base, "/api/v0/timeline", &token);
    assert!(trace.to_string().contains("dashboard_probe::square"), "{trace}");

    // The job's output follows live.
    let ticks = sse_lines(&base, &format!("/api/v0/jobs/{job}/logs/stream"), &token, "tick ", 3);
    assert!(ticks.len() >= 3, "{ticks:?}");
    let logs = get_json(&base, &format!("/api/v0/logs?pid={pid}"), &token);
    assert!(logs.to_string().contains("counter actor started"), "{logs}");
    // The Logs page's listing (tail=0) carries no text, only sizes.
    let listing = get_json(&base, "/api/v0/logs?tail=0", &token);
    let items = listing["logs"].as_array().unwrap();
    assert!(!items.is_empty(), "{listing}");
    assert!(
        items.iter().all(|l| l["text"] == "" && l["size"].as_u64().is_some()),
        "{listing}"
    );

    // Missing things are 404s that say what is missing.
    for path in [
        "/api/v0/actors/ffffffffffffffffffffffff",
        "/api/v0/jobs/ffffffff",
        "/api/v0/nodes/nosuchnode",
        "/api/v0/logs?pid=1",
    ] {
        let r = http(&base, "GET", path, &[("Authorization", &auth)], "");
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(r.body.contains("no "), "{path}: {}", r.body);
    }
    let r = http(
        &base,
        "POST",
        "/api/v0/actors/ffffffffffffffffffffffff/kill",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 404, "{}", r.body);
    let r = http(
        &base,
        "POST",
        "/api/v0/actors/xyz/kill",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // Metrics: Ray's names, on the head's port and every node's.
    let r = http(&base, "GET", "/metrics", &[("Authorization", &auth)], "");
    assert_eq!(r.status, 200);
    for name in [
        "ray_tasks{",
        "ray_actors{State=\"ALIVE\"}",
        "ray_resources{",
        "ray_object_store_memory{",
        "ray_node_cpu_utilization ",
        "ray_node_mem_used ",
        "ray_placement_groups{State=\"PENDING\"}",
    ] {
        assert!(
            r.body.contains(name),
            "{name} missing from the head's metrics:\n{}",
            r.body
        );
    }
    promtool_check(&r.body);
    for n in nodes.as_array().unwrap() {
        let addr = format!("http://{}", n["http_address"].as_str().unwrap());
        assert_eq!(http(&addr, "GET", "/healthz", &[], "").status, 200);
        assert_eq!(http(&addr, "GET", "/metrics", &[], "").status, 401);
        let m = http(&addr, "GET", "/metrics", &[("Authorization", &auth)], "");
        assert!(m.body.contains("ray_node_mem_capacity "), "{}", m.body);
        promtool_check(&m.body);
    }

    // The kill button's endpoint kills the actor for good.
    let r = http(
        &base,
        "POST",
        &format!("/api/v0/actors/{id}/kill?no_restart=true"),
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(wait_until(Duration::from_secs(30), || !process_running(pid)));
    assert!(wait_until(Duration::from_secs(30), || {
        get_json(&base, &format!("/api/v0/actors/{id}"), &token)["actor"]["state"] == "DEAD"
    }));
    let events = get_json(&base, "/api/v0/events", &token);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "ACTOR_DIED" && e["actor_id"] == id.as_str()),
        "{events}"
    );

    // A dead node keeps its page, which says so.
    cluster.kill_node(&worker_node);
    let mut n = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            n = get_json(&base, &format!("/api/v0/nodes/{worker_node}"), &token);
            n["alive"] == false
        }),
        "{n}"
    );
    assert!(n["error"].as_str().unwrap().contains("dead"), "{n}");
    assert!(n["death_cause"].as_str().unwrap().contains("heartbeat"), "{n}");
    let events = get_json(&base, "/api/v0/events", &token);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "NODE_DIED" && e["node_id"] == worker_node.as_str()));
    let _ = jobs.stop(&job);
}

/// Where the browser test's script and its npm packages are.
fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/dashboard/tests/browser")
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    rayforge_integration_tests::own_process!();
    let Some(chromium) = browser() else { return };
    let dir = browser_dir();
    let (cluster, worker_node, job, jobs) = probed_cluster();
    let token = cluster.token.clone();
    let base = cluster.jobs_address.clone();
    let mut actor = String::new();
    assert!(wait_until(Duration::from_secs(30), || {
        let actors = get_json(&base, "/api/v0/actors", &token);
        actor = actors
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "dash-counter" && a["pid"].is_u64())
            .map(|a| a["actor_id"].as_str().unwrap().to_string())
            .unwrap_or_default();
        !actor.is_empty()
    }));
    let head_node = cluster.daemons[0].1.clone();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    let out = std::process::Command::new("node")
        .arg(dir.join("check.mjs"))
        .current_dir(&dir)
        .env("BASE", &base)
        .env("TOKEN", &token)
        .env("JOB", &job)
        .env("NODES", format!("{head_node},{worker_node}"))
        .env("ACTOR", &actor)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the browser check failed:\n{text}");
    assert!(text.contains("\"ok\":true"), "{text}");
    // What the browser did happened: the actor it killed is dead.
    let a = get_json(&base, &format!("/api/v0/actors/{actor}"), &token);
    assert_eq!(a["actor"]["state"], "DEAD", "{a}");
    assert!(shots.join("actors.png").exists());
    let _ = jobs.stop(&job);
}

/// Sleeps long enough to be killed.
#[rayforge::remote]
fn sleepy() -> u32 {
    std::thread::sleep(Duration::from_secs(120));
    1
}

#[test]
fn a_task_killed_by_the_memory_monitor_is_in_the_events_feed() {
    rayforge_integration_tests::own_process!();
    // With the threshold at 0 every retriable task is "over".
    let cluster = LocalCluster::start(&["--num-cpus", "1", "--memory-usage-threshold", "0"], 5000);
    rayforge::init(cluster.config()).unwrap();
    let _running = sleepy::options().max_retries(3).remote();
    let mut events = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            events = get_json(&cluster.jobs_address, "/api/v0/events", &cluster.token);
            events
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "TASK_KILLED_OOM")
        }),
        "{events}"
    );
    let e = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "TASK_KILLED_OOM")
        .unwrap();
    assert_eq!(e["severity"], "ERROR");
    assert!(e["message"].as_str().unwrap().contains("threshold"), "{e}");
    assert_eq!(e["node_id"], cluster.daemons[0].1.as_str());
    rayforge::shutdown();
}

/// A viewer token (given to a head and a node as a file) reads the
/// dashboard's API and every node's /metrics, logs in to a read-only
/// session, and changes nothing: no job submitted, none stopped; it is no
/// key between nodes either.
#[test]
fn the_viewer_token_reads_everything_and_changes_nothing() {
    rayforge_integration_tests::own_process!();
    let dir = std::env::temp_dir().join(format!("rf-viewer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("viewer-token");
    let viewer = format!("viewer-{:016x}", std::process::id() as u64 * 7919);
    std::fs::write(&file, format!("{viewer}\n")).unwrap();
    let file_arg = file.to_string_lossy().into_owned();
    let mut cluster = LocalCluster::start(&["--num-cpus", "1", "--viewer-token-file", &file_arg], 10_000);
    let node = cluster.add_node(&["--num-cpus", "1", "--viewer-token-file", &file_arg]);
    let base = cluster.jobs_address.clone();
    let as_viewer = format!("Bearer {viewer}");
    let auth = [("Authorization", as_viewer.as_str())];

    // Reads: the cluster, jobs, the head's and the node's metrics.
    let r = http(&base, "GET", "/api/v0/cluster", &auth, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(http(&base, "GET", "/api/jobs/", &auth, "").status, 200);
    assert_eq!(http(&base, "GET", "/metrics", &auth, "").status, 200);
    let nodes = get_json(&base, "/api/v0/nodes", &cluster.token);
    let node_http = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == node.as_str())
        .and_then(|n| n["http_address"].as_str())
        .expect("the node's HTTP address")
        .to_string();
    let node_base = if node_http.starts_with("http") {
        node_http
    } else {
        format!("http://{node_http}")
    };
    let r = http(&node_base, "GET", "/metrics", &auth, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("ray_resources{"), "{}", r.body);

    // Changes: refused with 403 naming the viewer token, and nothing ran.
    let submit = r#"{"entrypoint": "echo should-not-run"}"#;
    let json = ("Content-Type", "application/json");
    let r = http(&base, "POST", "/api/jobs/", &[auth[0], json], submit);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("viewer token only reads"), "{}", r.body);
    let jobs: serde_json::Value = get_json(&base, "/api/jobs/", &cluster.token);
    assert!(
        !jobs.to_string().contains("should-not-run"),
        "a viewer submitted a job: {jobs}"
    );
    // The same through a login session, even from the dashboard's origin.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = http(&base, "POST", "/login", &form, &format!("token={viewer}&next=%2F"));
    assert_eq!(r.status, 303, "{}", r.head);
    let cookie = session_cookie(&r);
    assert_eq!(
        http(&base, "GET", "/api/v0/cluster", &[("Cookie", &cookie)], "").status,
        200
    );
    let page = [("Cookie", cookie.as_str()), ("Sec-Fetch-Site", "same-origin"), json];
    let r = http(&base, "POST", "/api/jobs/", &page, submit);
    assert_eq!(r.status, 403, "{}", r.body);

    // Not a key between nodes: gRPC refuses it.
    let err = rayforge::cluster::HeadClient::connect(&cluster.address, Some(&viewer))
        .and_then(|mut c| c.nodes())
        .expect_err("the viewer token opened gRPC");
    assert!(err.to_string().contains("refused"), "{err}");

    // A viewer token equal to the cluster token is refused at start.
    let same = dir.join("same-token");
    std::fs::write(&same, &cluster.token).unwrap();
    let out = std::process::Command::new(rayforge_integration_tests::rayforge_bin())
        .args(["start", "--address", &cluster.address, "--viewer-token-file"])
        .arg(&same)
        .arg("--block")
        .env("RAYFORGE_TOKEN", &cluster.token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("viewer token is the cluster token"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A field of `/proc/PID/status`, in KiB (`VmRSS`, `VmHWM`).
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the head's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Deletes a file when dropped (a large log, whatever the test's outcome).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The first line `lines` brings that starts with `tag`, without it.
fn line_after(lines: &std::sync::mpsc::Receiver<String>, tag: &str, within: Duration) -> String {
    let end = Instant::now() + within;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no `{tag}` line came: {e}"));
        if let Some(rest) = line.strip_prefix(tag) {
            return rest.trim().to_string();
        }
    }
}

/// A worker writes 1 GiB of output (`log_flood`). The Logs page's listing
/// (`tail=0`) carries no text, every read of the log stays within the caps
/// however much is asked, and the head's peak memory across the flood and
/// those requests grows by far less than the log.
#[test]
fn a_gibibyte_worker_log_leaves_log_replies_and_the_head_bounded() {
    rayforge_integration_tests::own_process!();
    use rayforge::state::{MAX_LOGS_REPLY, MAX_LOG_TEXT};
    use std::io::{BufRead, Write};
    const MIB: u64 = 1 << 20;
    let cluster = LocalCluster::start(&["--num-cpus", "1"], 10_000);
    let head = cluster.daemons[0].0.id();
    let base = cluster.jobs_address.clone();
    let auth = format!("Bearer {}", cluster.token);
    let mut driver = std::process::Command::new(workspace_bin("log_flood", "rayforge-integration-tests"))
        .env("RAYFORGE_ADDRESS", &cluster.address)
        .env("RAYFORGE_TOKEN", &cluster.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the log_flood driver");
    let mut input = driver.stdin.take().expect("piped stdin");
    let err = driver.stderr.take().expect("piped stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("log_flood: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    line_after(&lines, "joined", Duration::from_secs(120));

    // The head's peak memory counts from here (the driver's binary, shipped
    // when it joined, is not the log's).
    std::fs::write(format!("/proc/{head}/clear_refs"), "5").expect("reset the head's peak memory");
    let before = proc_status_kib(head, "VmRSS");
    writeln!(input, "flood 1024").expect("write to the driver");
    let pid: u32 = line_after(&lines, "flooded ", Duration::from_secs(600))
        .parse()
        .expect("the worker's pid");
    let session = std::fs::read_dir(std::env::temp_dir())
        .expect("the temporary directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(&format!("rayforge-{head}-")) && name.ends_with("-logs")
        })
        .expect("the head's log directory");
    let log = std::fs::read_dir(&session)
        .expect("the head's log directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("-{pid}.log")))
        .expect("the worker's log file");
    let _remove = RemoveOnDrop(log.clone());
    let on_disk = std::fs::metadata(&log).map_or(0, |m| m.len());
    assert!(
        (256 * MIB..300 * MIB).contains(&on_disk),
        "the node keeps the first 256 MiB of a worker's output: {on_disk} bytes"
    );

    let get = |path: &str| {
        let r = http(&base, "GET", path, &[("Authorization", &auth)], "");
        assert_eq!(r.status, 200, "GET {path}: {}", &r.body[..r.body.len().min(1000)]);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        (r.body.len() as u64, v)
    };
    let text_of = |v: &serde_json::Value| -> String {
        let logs = v["logs"].as_array().expect("a list of logs");
        let mine = logs.iter().find(|l| l["pid"] == pid).expect("the worker's log");
        mine["text"].as_str().expect("text").to_string()
    };
    // Each request twice: nothing it reads stays behind in the head.
    for _ in 0..2 {
        // The Logs page's listing: sizes, no text.
        let (len, v) = get("/api/v0/logs?tail=0");
        assert!(len < 64 << 10, "the listing is {len} bytes");
        let logs = v["logs"].as_array().expect("a list of logs");
        assert!(logs.iter().all(|l| l["text"] == ""), "the listing carries text");
        let mine = logs
            .iter()
            .find(|l| l["pid"] == pid)
            .expect("the worker's log is listed");
        assert_eq!(mine["size"].as_u64(), Some(on_disk));
        // A read of the log: 16 KiB unless more is asked.
        let (len, v) = get(&format!("/api/v0/logs?pid={pid}"));
        assert!(len < 64 << 10, "a default read is {len} bytes");
        assert_eq!(text_of(&v).len(), 16 << 10);
        // Asked for all of it: its last MAX_LOG_TEXT bytes.
        let (len, v) = get(&format!("/api/v0/logs?pid={pid}&tail={}", u64::MAX));
        assert!(len < MAX_LOG_TEXT + (64 << 10), "a read of all of it is {len} bytes");
        let text = text_of(&v);
        assert_eq!(text.len() as u64, MAX_LOG_TEXT);
        assert!(
            text.trim_end()
                .ends_with("log truncated; the worker wrote more than 256 MiB]"),
            "{}",
            &text[text.len() - 200..]
        );
        // Every log, as much as may be sent.
        let (len, _) = get(&format!("/api/v0/logs?tail={}", u64::MAX));
        assert!(len < MAX_LOGS_REPLY + (64 << 10), "a read of every log is {len} bytes");
    }
    let peak = proc_status_kib(head, "VmHWM");
    let grew = peak.saturating_sub(before) * 1024;
    eprintln!("the head's peak memory grew by {} MiB", grew / MIB);
    assert!(
        grew < 200 * MIB,
        "the head's memory grew by {} MiB (from {} MiB RSS to a peak of {} MiB) for a 1 GiB log",
        grew / MIB,
        before / 1024,
        peak / 1024
    );

    drop(input);
    assert!(
        wait_until(Duration::from_secs(60), || driver.try_wait().ok().flatten().is_some()),
        "the driver did not leave"
    );
}

/// Chromium and playwright-core for the browser tests: `None` (the test
/// skips) where they are not installed. CI installs them (scripts/test.sh)
/// and makes the browser tests required.
fn browser() -> Option<String> {
    let required = std::env::var("RAYFORGE_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let chromium = std::env::var("RAYFORGE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = browser_dir();
    if std::path::Path::new(&chromium).exists() && dir.join("node_modules/playwright-core").exists() {
        return Some(chromium);
    }
    assert!(
        !required,
        "Chromium ({chromium}) or {}/node_modules is missing",
        dir.display()
    );
    eprintln!(
        "skipped: no Chromium at {chromium} or no playwright-core in {}",
        dir.display()
    );
    None
}

/// Runs `charts.mjs` against `base` with the expectations `expect`.
fn check_charts(base: &str, token: Option<&str>, expect: &serde_json::Value, chromium: &str) -> String {
    let dir = browser_dir();
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots");
    let file = std::env::temp_dir().join(format!("rayforge-charts-expect-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec_pretty(expect).unwrap()).unwrap();
    let mut cmd = std::process::Command::new("node");
    cmd.arg(dir.join("charts.mjs"))
        .current_dir(&dir)
        .env("BASE", base)
        .env("EXPECT", &file)
        .env("SHOTS", &shots)
        .env("CHROMIUM", chromium);
    if let Some(t) = token {
        cmd.env("TOKEN", t);
    }
    let out = cmd.output().expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "the charts check failed:\n{text}");
    assert!(text.contains("\"ok\":true"), "{text}");
    // Each page's drawing times, for the log.
    eprintln!("{text}");
    text
}

/// The points a published series has (its non-null values).
fn points(series: &serde_json::Value) -> usize {
    series
        .as_array()
        .map_or(0, |v| v.iter().filter(|x| x.is_number()).count())
}

/// What the Train, Tune and RLlib pages must draw of what was published:
/// a chart per Train metric (checkpoints and restarts marked), a Tune
/// experiment's trial curves (stopped and paused trials' ends marked),
/// optimization history and parallel coordinates, RLlib's returns and
/// losses.
fn chart_expectations(
    train: &serde_json::Value,
    tune: &serde_json::Value,
    rllib: &serde_json::Value,
) -> serde_json::Value {
    let mut train_charts = serde_json::Map::new();
    for run in train.as_array().unwrap() {
        let (name, s) = (run["name"].as_str().unwrap(), &run["status"]);
        let steps: Vec<f64> = serde_json::from_value(s["history"]["steps"].clone()).unwrap();
        let (lo, hi) = (steps[0], steps[steps.len() - 1]);
        let in_range = |x: f64| x >= lo && x <= hi;
        let checkpoints = s["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| in_range(c.as_f64().unwrap()))
            .count();
        let restarts = s["restarts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["iteration"].as_f64().is_some_and(in_range))
            .count();
        for (metric, values) in s["history"]["series"].as_object().unwrap() {
            let mut c = serde_json::Map::new();
            c.insert(metric.clone(), points(values).into());
            if checkpoints <= 300 {
                c.insert(".mark-checkpoint".into(), serde_json::json!({ "count": checkpoints }));
            }
            c.insert(".mark-restart".into(), serde_json::json!({ "count": restarts }));
            train_charts.insert(format!("train-{name}-{metric}"), c.into());
        }
    }
    let mut tune_charts = serde_json::Map::new();
    for ex in tune.as_array().unwrap() {
        let (name, s) = (ex["name"].as_str().unwrap(), &ex["status"]);
        let metric = s["metric"].as_str().unwrap();
        let trials = s["trials"].as_array().unwrap();
        let mut c = serde_json::Map::new();
        let (mut stopped, mut paused) = (0, 0);
        for t in trials {
            let n = points(&t["curve"]["values"]);
            c.insert(t["trial"].as_str().unwrap().into(), n.into());
            match t["status"].as_str().unwrap() {
                "STOPPED" | "ERROR" if n > 0 => stopped += 1,
                "PAUSED" if n > 0 => paused += 1,
                _ => {}
            }
        }
        c.insert(".end-stopped".into(), serde_json::json!({ "count": stopped }));
        c.insert(".end-paused".into(), serde_json::json!({ "count": paused }));
        tune_charts.insert(format!("tune-{name}-trials"), c.into());
        let finished = trials
            .iter()
            .filter(|t| matches!(t["status"].as_str(), Some("TERMINATED" | "STOPPED")) && t[metric].is_number())
            .count();
        if finished > 0 {
            tune_charts.insert(
                format!("tune-{name}-history"),
                serde_json::json!({ "trials": finished, "best so far": finished }),
            );
        }
        let params = s["params"].as_array().unwrap().len();
        tune_charts.insert(
            format!("tune-{name}-parallel"),
            serde_json::json!({ ".pc-line": { "count": trials.len(), "points": params + 1 } }),
        );
    }
    let mut rllib_charts = serde_json::Map::new();
    for run in rllib.as_array().unwrap() {
        let (name, series) = (run["name"].as_str().unwrap(), &run["status"]["history"]["series"]);
        rllib_charts.insert(
            format!("rllib-{name}-return"),
            serde_json::json!({ "episode_return_mean": points(&series["episode_return_mean"]) }),
        );
        let losses: serde_json::Map<_, _> = series
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.ends_with("loss") || k.as_str() == "entropy")
            .map(|(k, v)| (k.clone(), points(v).into()))
            .collect();
        rllib_charts.insert(format!("rllib-{name}-losses"), losses.into());
    }
    serde_json::json!({ "pages": [
        { "path": "/train", "charts": train_charts,
          "max_ms": { "train-hundred-thousand-reports-loss": 1000 } },
        { "path": "/tune", "charts": tune_charts },
        { "path": "/rllib", "charts": rllib_charts },
    ]})
}

#[test]
fn the_dashboard_charts_train_tune_and_rllib_runs_finished_and_running_in_a_real_browser() {
    rayforge_integration_tests::own_process!();
    let Some(chromium) = browser() else { return };
    let cluster = LocalCluster::start(&["--num-cpus", "8"], 3000);
    let jobs = rayforge::jobs::JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let tour = workspace_bin("dashboard_tour", "rayforge-examples");
    let job = jobs
        .submit(&tour.to_string_lossy(), &rayforge::jobs::RuntimeEnv::default())
        .unwrap();
    let mut out = String::new();
    // Within nextest's 4 minutes (the tour gives up on each wait after 2).
    let ready = wait_until(Duration::from_secs(200), || {
        out = jobs.logs(&job, 0).map(|c| c.logs).unwrap_or_default();
        out.contains("ready")
            || jobs
                .status(&job)
                .is_ok_and(|s| s.state != "RUNNING" && s.state != "PENDING")
    });
    assert!(ready && out.contains("ready"), "the tour did not get ready: {out}");
    let (base, token) = (cluster.jobs_address.clone(), cluster.token.clone());
    let train = get_json(&base, "/api/v0/train", &token);
    let tune = get_json(&base, "/api/v0/tune", &token);
    let rllib = get_json(&base, "/api/v0/rllib", &token);
    // What the libraries published: finished and running runs with their
    // whole curves.
    let status = |list: &serde_json::Value, name: &str| -> serde_json::Value {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {list}"))["status"]
            .clone()
    };
    let s = status(&train, "line-restarted");
    // Thirty iterations, those after the checkpoint before the restart
    // reported again.
    assert_eq!(s["status"], "FINISHED", "{s}");
    assert!(s["history"]["total"].as_u64() >= Some(30), "{s}");
    assert_eq!(
        s["history"]["steps"].as_array().unwrap().last(),
        Some(&serde_json::json!(30.0)),
        "{s}"
    );
    assert_eq!(s["restarts"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(
        s["checkpoints"],
        serde_json::json!((1..=10).map(|i| i * 3).collect::<Vec<u64>>()),
        "{s}"
    );
    let s = status(&train, "line-running");
    assert_eq!(
        (s["status"].as_str(), s["history"]["total"].as_u64()),
        (Some("RUNNING"), Some(5)),
        "{s}"
    );
    let s = status(&train, "hundred-thousand-reports");
    assert!(s["history"]["steps"].as_array().unwrap().len() <= 1001, "downsampled");
    let s = status(&tune, "asha-search");
    assert!(
        s["trials"].as_array().unwrap().iter().any(|t| t["status"] == "STOPPED"),
        "{s}"
    );
    let s = status(&tune, "search-running");
    assert_eq!(s["status"], "RUNNING", "{s}");
    let s = status(&rllib, "ppo-running");
    assert_eq!(
        (s["status"].as_str(), s["history"]["total"].as_u64()),
        (Some("RUNNING"), Some(3)),
        "{s}"
    );
    assert_eq!(status(&rllib, "ppo-cartpole")["status"], "FINISHED");
    // The overview's last hour: the head samples the cluster every 5 s.
    assert!(wait_until(Duration::from_secs(60), || {
        get_json(&base, "/api/v0/cluster/history", &token)["t"]
            .as_array()
            .is_some_and(|t| t.len() >= 2)
    }));
    let h = get_json(&base, "/api/v0/cluster/history", &token);
    assert_eq!(h["series"]["cpu_total"][0], 8.0, "{h}");
    // Behind the token, as every endpoint.
    for path in ["/api/v0/cluster/history", "/api/v0/rllib"] {
        assert_eq!(http(&base, "GET", path, &[], "").status, 401, "{path}");
    }
    assert!(
        h["series"]["alive_actors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a.as_f64() > Some(0.0)),
        "{h}"
    );
    let mut expect = chart_expectations(&train, &tune, &rllib);
    let n = h["t"].as_array().unwrap().len();
    expect["pages"].as_array_mut().unwrap().push(serde_json::json!({
        "path": "/",
        "charts": {
            "cluster-cpu": { "used": { "min": n }, "total": { "min": n } },
            "cluster-memory": { "used": { "min": n }, "total": { "min": n } },
            "cluster-store": { "used": { "min": n }, "capacity": { "min": n } },
            "cluster-work": { "running tasks": { "min": n }, "alive actors": { "min": n } },
        },
    }));
    check_charts(&base, Some(&token), &expect, &chromium);
    let _ = jobs.stop(&job);
}

#[test]
fn the_charts_draw_edge_cases_without_nan_and_keep_markup_as_text() {
    use std::io::BufRead;
    let Some(chromium) = browser() else { return };
    // The mock serves the pages with data no cluster makes on demand:
    // gaps, a single point, null metrics, markup in names, paused trials.
    let file = std::env::temp_dir().join(format!("rayforge-mock-expect-{}.json", std::process::id()));
    let mut mock = std::process::Command::new("node")
        .arg(browser_dir().join("mock.mjs"))
        .args(["--port", "0", "--expect"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    let mut line = String::new();
    std::io::BufReader::new(mock.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    let expect: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    check_charts(&base, None, &expect, &chromium);
    let _ = mock.kill();
    let _ = mock.wait();
    let _ = std::fs::remove_file(&file);
}
