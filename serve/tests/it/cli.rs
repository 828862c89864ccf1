//! The `serve` binary: `serve run serve.toml`, `serve status`, `serve deploy`
//! (a live config change), `serve shutdown`, and config errors that name
//! the field and line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rayforge_serve::client::request;

const SERVE: &str = env!("CARGO_BIN_EXE_serve");

fn config(dir: &std::path::Path, name: &str, stages: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[http]
port = 0
admin_port = 0

[[applications]]
name = "pipe"
route_prefix = "/pipe"
ingress = "Pipeline"

[[applications.deployments]]
name = "Pipeline"
user_config = {{ stages = [{stages}] }}

[[applications.deployments]]
name = "StageA"
deployment = "Stage"

[[applications.deployments]]
name = "StageB"
deployment = "Stage"
num_replicas = 2

[[applications]]
name = "noop"
route_prefix = "/"
ingress = "Noop"

[[applications.deployments]]
name = "Noop"
"#
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Ends `serve run` even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(SERVE).args(args).output().expect("run serve")
}

#[test]
fn serve_run_status_deploy_and_shutdown() {
    let dir = std::env::temp_dir().join(format!("serve-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(&dir, "serve.toml", r#""StageA", "StageB""#);
    let mut child = KillOnDrop(
        Command::new(SERVE)
            .arg("run")
            .arg(&cfg)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start serve run"),
    );
    // "serve: listening on http://ADDR (admin API on ADDR)"
    let mut lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    let (http, admin) = loop {
        let line = lines.next().expect("serve run printed its address").unwrap();
        if let Some(rest) = line.strip_prefix("serve: listening on http://") {
            let (http, admin) = rest.split_once(" (admin API on ").unwrap();
            break (http.to_string(), admin.trim_end_matches(')').to_string());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let get = |path: &str| request(&http, "GET", path, b"", Duration::from_secs(60)).unwrap();
    assert_eq!(get("/pipe").text(), "2");
    assert_eq!(get("/").text(), "ok");

    let out = cli(&["status", "--admin", &admin]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("application pipe at /pipe"), "{text}");
    assert!(text.contains("StageB HEALTHY: 2/2 replicas running"), "{text}");

    // A live change of the pipeline's user config: three stages now.
    let cfg3 = config(&dir, "serve3.toml", r#""StageA", "StageB", "StageA""#);
    let out = cli(&["deploy", cfg3.to_str().unwrap(), "--admin", &admin]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while get("/pipe").text() != "3" {
        assert!(std::time::Instant::now() < deadline, "the new config never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A bad config is refused by deploy, naming the field and line; the
    // server keeps serving the old one.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("num_replicas = 2", "num_replicas = -2"),
    )
    .unwrap();
    let out = cli(&["deploy", bad.to_str().unwrap(), "--admin", &admin]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("line 22") && err.contains("num_replicas"), "{err}");
    assert_eq!(get("/").text(), "ok");

    // A web page posting to the admin port (a form from any site) shuts
    // nothing down.
    let form = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&admin).unwrap();
        write!(
            s,
            "POST /api/serve/shutdown HTTP/1.1\r\nHost: {admin}\r\nOrigin: https://evil.example\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    };
    assert!(form.starts_with("HTTP/1.1 403"), "{form}");
    assert_eq!(get("/").text(), "ok");
    // Another program on this machine (any user reaches the loopback)
    // without the admin token, or with a wrong one, shuts nothing down.
    let port: u16 = admin.rsplit_once(':').unwrap().1.parse().unwrap();
    let token_file = rayforge_serve::admin_token_path(port).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", token_file.display());
    let shutdown = |headers: &[(&str, &str)]| {
        rayforge_serve::client::request_with(
            &admin,
            "POST",
            "/api/serve/shutdown",
            headers,
            b"",
            Duration::from_secs(30),
        )
        .unwrap()
    };
    assert_eq!(shutdown(&[]).status, 401);
    assert_eq!(shutdown(&[("Authorization", "Bearer not-the-token")]).status, 401);
    assert_eq!(get("/").text(), "ok");

    let out = cli(&["shutdown", "--admin", &admin]);
    assert!(out.status.success());
    let status = child.0.wait().unwrap();
    assert!(status.success(), "serve run exited with {status}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_run_refuses_bad_configs_with_the_field_and_line() {
    let dir = std::env::temp_dir().join(format!("serve-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = config(&dir, "serve.toml", r#""StageA""#);
    let text = std::fs::read_to_string(&cfg).unwrap();

    std::fs::write(
        &cfg,
        text.replace("route_prefix = \"/pipe\"", "route_prefx = \"/pipe\""),
    )
    .unwrap();
    let out = cli(&["run", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("route_prefx") && err.contains("line 8"), "{err}");

    std::fs::write(&cfg, text.replace("deployment = \"Stage\"", "deployment = \"Stagee\"")).unwrap();
    let out = cli(&["run", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("`Stagee`") && err.contains("Noop"), "{err}");

    let out = cli(&["run", dir.join("missing.toml").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// SIGTERM (what `rayforge job stop` and Kubernetes send) drains: a
/// request in flight is answered, then `serve run` exits cleanly.
#[test]
fn sigterm_drains_requests_in_flight_then_exits() {
    signal_drains_requests_in_flight_then_exits(libc::SIGTERM, "term");
}

/// Ctrl-C (SIGINT) drains the same way.
#[test]
fn sigint_drains_requests_in_flight_then_exits() {
    signal_drains_requests_in_flight_then_exits(libc::SIGINT, "int");
}

/// Starts `serve run` with a deployment that sleeps, sends `signal` while a
/// request sleeps on its replica, and checks that the request is answered
/// whole and that `serve run` then exits with success.
fn signal_drains_requests_in_flight_then_exits(signal: i32, tag: &str) {
    let dir = std::env::temp_dir().join(format!("serve-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        "[http]\nport = 0\nadmin_port = 0\n\n[[applications]]\nname = \"sleep\"\nroute_prefix = \"/\"\n\
         ingress = \"Sleep\"\n\n[[applications.deployments]]\nname = \"Sleep\"\n",
    )
    .unwrap();
    let mut child = KillOnDrop(
        Command::new(SERVE)
            .arg("run")
            .arg(&cfg)
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start serve run"),
    );
    // Both streams, line by line, into one channel.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let out = child.0.stdout.take().unwrap();
    let err = child.0.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(|l| l.ok())
            .for_each(|l| drop(tx2.send(l)))
    });
    std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(|l| l.ok())
            .for_each(|l| drop(tx.send(l)))
    });
    let wait_for = |what: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("serve run never printed {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    let line = wait_for("serve: listening on http://");
    let http = line
        .split("serve: listening on http://")
        .nth(1)
        .and_then(|r| r.split_once(" (admin API on "))
        .map(|(h, _)| h.to_string())
        .unwrap();
    // 3 s: the replica's line reaches us through the cluster's log
    // forwarding, which may lag on a loaded machine; the signal must still
    // land while the request sleeps.
    let req = std::thread::spawn(move || request(&http, "POST", "/", b"3000", Duration::from_secs(120)));
    // The request is on the replica (it says so) when the signal comes.
    wait_for("sleep: 3000 ms");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.0.id() as i32, signal) };
    let reply = req.join().unwrap().expect("the request in flight was answered");
    assert_eq!((reply.status, reply.text()), (200, "slept 3000".to_string()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve run did not exit after signal {signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "serve run exited with {status}");
    std::fs::remove_dir_all(&dir).unwrap();
}
