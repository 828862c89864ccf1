//! Serve end to end with real processes: an embedded cluster whose replicas
//! are worker processes, the HTTP proxy on a real port, requests over TCP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayforge_integration_tests::wait_until;
use rayforge_serve::client::{request, Reply};
use rayforge_serve::{
    deployment, Application, Autoscaling, Batcher, Context, Deployment, DeploymentHandle, Error, HttpOptions, Json,
    Result, Serve,
};
use serde::{Deserialize, Serialize};

/// The embedded cluster. Serve is one per cluster, so each test here runs in
/// a process (and cluster) of its own (`own_process!`).
fn init() {
    rayforge_integration_tests::cluster();
}

fn opts() -> HttpOptions {
    HttpOptions {
        port: 0,
        admin_port: 0,
        ..Default::default()
    }
}

fn start(apps: Vec<Application>, http: HttpOptions) -> Serve {
    init();
    let s = rayforge_serve::start(apps, http).expect("start serve");
    s.wait_healthy(Duration::from_secs(120))
        .expect("deployments become healthy");
    s
}

fn send(s: &Serve, method: &str, path: &str, body: &[u8]) -> Reply {
    request(&s.http_addr().to_string(), method, path, body, Duration::from_secs(60)).expect("HTTP request")
}

// ---------------------------------------------------------------- deployments

#[derive(Deserialize, Default)]
struct GreeterConfig {
    greeting: Option<String>,
}

/// Greets by name; says which replica and process answered.
struct Greeter {
    greeting: String,
    replica: String,
}

impl Deployment for Greeter {
    type Config = GreeterConfig;
    type Request = Json<String>;
    type Response = String;
    fn new(ctx: &Context, c: GreeterConfig) -> Result<Self> {
        Ok(Greeter {
            greeting: c.greeting.unwrap_or_else(|| "hello".into()),
            replica: ctx.replica().to_string(),
        })
    }
    async fn handle(&self, Json(name): Json<String>) -> Result<String> {
        if name == "slow" {
            tokio::time::sleep(Duration::from_millis(3000)).await;
        }
        Ok(format!(
            "{} {name} from {} pid {}",
            self.greeting,
            self.replica,
            std::process::id()
        ))
    }
    fn reconfigure(&mut self, c: GreeterConfig) -> Result<()> {
        let greeting = c.greeting.unwrap_or_else(|| "hello".into());
        if greeting.is_empty() {
            return Err(Error::Invalid("an empty greeting".into()));
        }
        self.greeting = greeting;
        Ok(())
    }
}

/// Answers the request's path and body.
struct Echo;

impl Deployment for Echo {
    type Config = ();
    type Request = rayforge_serve::HttpRequest;
    type Response = rayforge_serve::HttpResponse;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Echo)
    }
    async fn handle(&self, r: rayforge_serve::HttpRequest) -> Result<rayforge_serve::HttpResponse> {
        if r.query_param("fail") == Some("1") {
            return Err(Error::User {
                deployment: String::new(),
                message: "asked to fail".into(),
            });
        }
        if r.query_param("panic") == Some("1") {
            panic!("asked to panic");
        }
        if r.query_param("cookie") == Some("1") {
            // What user code sees of the request's cookies.
            let cookie = r
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                .map_or("none".to_string(), |(_, v)| v.clone());
            return Ok(rayforge_serve::HttpResponse::text(200, cookie));
        }
        if r.query_param("sneak") == Some("1") {
            // The proxy's own stream header, from user code.
            let mut resp = rayforge_serve::HttpResponse::text(200, "my own body");
            resp.headers.push(("X-Rayforge-Stream".into(), "1".into()));
            return Ok(resp);
        }
        Ok(rayforge_serve::HttpResponse::text(
            201,
            format!("{} {} {}", r.method, r.path, String::from_utf8_lossy(&r.body)),
        ))
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Doubled {
    value: i64,
    batch: usize,
}

/// Doubles numbers in batches; says how big the batch was.
struct Doubler {
    batcher: Batcher<i64, (i64, usize)>,
}

impl Deployment for Doubler {
    type Config = ();
    type Request = i64;
    type Response = Json<Doubled>;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Doubler {
            batcher: Batcher::new(8, Duration::from_millis(200)),
        })
    }
    async fn handle(&self, x: i64) -> Result<Json<Doubled>> {
        let (value, batch) = self
            .batcher
            .call(x, |xs: Vec<i64>| async move {
                let n = xs.len();
                Ok(xs.into_iter().map(|x| (x * 2, n)).collect())
            })
            .await?;
        Ok(Json(Doubled { value, batch }))
    }
}

/// Adds its user config's `add` (default 1).
struct Adder {
    add: i64,
}

#[derive(Deserialize, Default)]
struct AdderConfig {
    add: Option<i64>,
}

impl Deployment for Adder {
    type Config = AdderConfig;
    type Request = i64;
    type Response = i64;
    fn new(_: &Context, c: AdderConfig) -> Result<Self> {
        Ok(Adder {
            add: c.add.unwrap_or(1),
        })
    }
    async fn handle(&self, x: i64) -> Result<i64> {
        Ok(x + self.add)
    }
}

/// `x -> C(B(A(x)))` and, in parallel, `A(x) + B(x)`: a pipeline and an
/// ensemble through handles.
struct Composer {
    a: DeploymentHandle<Adder>,
    b: DeploymentHandle<Adder>,
    c: DeploymentHandle<Adder>,
}

impl Deployment for Composer {
    type Config = ();
    type Request = i64;
    type Response = Json<(i64, i64)>;
    fn new(ctx: &Context, _: ()) -> Result<Self> {
        Ok(Composer {
            a: ctx.handle("A"),
            b: ctx.handle("B"),
            c: ctx.handle("C"),
        })
    }
    async fn handle(&self, x: i64) -> Result<Json<(i64, i64)>> {
        let piped = self.c.call(self.b.call(self.a.call(x).await?).await?).await?;
        let (l, r) = tokio::join!(self.a.call(x), self.b.call(x));
        Ok(Json((piped, l? + r?)))
    }
}

/// Sleeps for the number of milliseconds in the body; answers its pid.
struct Sleeper;

impl Deployment for Sleeper {
    type Config = ();
    type Request = u64;
    type Response = u32;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Sleeper)
    }
    async fn handle(&self, ms: u64) -> Result<u32> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(std::process::id())
    }
}

/// Streams `n` lines, one every few milliseconds; fails midway on request.
struct Lines;

impl Deployment for Lines {
    type Config = ();
    type Request = rayforge_serve::HttpRequest;
    type Response = rayforge_serve::Streaming;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Lines)
    }
    async fn handle(&self, r: rayforge_serve::HttpRequest) -> Result<rayforge_serve::Streaming> {
        let n: usize = r.query_param("n").and_then(|n| n.parse().ok()).unwrap_or(5);
        let fail_at = r.query_param("fail_at").and_then(|n| n.parse::<usize>().ok());
        let ms: u64 = r.query_param("ms").and_then(|n| n.parse().ok()).unwrap_or(2);
        let lines = futures::stream::unfold(0usize, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if Some(i) == fail_at {
                return Some((Err(Error::BadRequest("the generator broke".into())), i + 1));
            }
            Some((Ok(format!("line {i}\n").into_bytes()), i + 1))
        });
        Ok(rayforge_serve::Streaming::new(lines).header("content-type", "text/plain"))
    }
}

/// Passes the request on to `Sleeper` through a handle.
struct Relay {
    sleeper: DeploymentHandle<Sleeper>,
}

impl Deployment for Relay {
    type Config = ();
    type Request = u64;
    type Response = u32;
    fn new(ctx: &Context, _: ()) -> Result<Self> {
        Ok(Relay {
            sleeper: ctx.handle("Sleeper"),
        })
    }
    async fn handle(&self, ms: u64) -> Result<u32> {
        self.sleeper.call(ms).await
    }
}

/// Fails to start.
struct Broken;

impl Deployment for Broken {
    type Config = ();
    type Request = ();
    type Response = String;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Err(Error::Invalid("the model file is missing".into()))
    }
    async fn handle(&self, _: ()) -> Result<String> {
        Ok(String::new())
    }
}

/// Turns unhealthy after a request with body `"poison"`.
struct Fragile {
    poisoned: std::sync::atomic::AtomicBool,
}

impl Deployment for Fragile {
    type Config = ();
    type Request = Json<String>;
    type Response = String;
    fn new(_: &Context, _: ()) -> Result<Self> {
        Ok(Fragile {
            poisoned: Default::default(),
        })
    }
    async fn handle(&self, Json(s): Json<String>) -> Result<String> {
        if s == "poison" {
            self.poisoned.store(true, Ordering::Relaxed);
        }
        Ok(std::process::id().to_string())
    }
    fn check_health(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(Error::User {
                deployment: String::new(),
                message: "poisoned".into(),
            });
        }
        Ok(())
    }
}

/// Runs `promtool check metrics` when it is installed (required where
/// `RAYFORGE_REQUIRE_PROMTOOL=1`): no parse error, and no lint finding
/// but the two that Ray Serve's own names draw (the histogram's `_ms`,
/// and OpenMetrics counters' help under the family name).
fn promtool_check(text: &str) {
    use std::io::Write;
    let required = std::env::var("RAYFORGE_REQUIRE_PROMTOOL").is_ok_and(|v| v == "1");
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(!required, "promtool is required here but cannot run: {e}");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool cannot parse Serve's metrics: {findings}\n{text}"
    );
    for line in findings.lines().filter(|l| !l.trim().is_empty()) {
        let known = line
            .contains("ray_serve_http_request_latency_ms metric names should not contain abbreviated units")
            || (line.contains("_total no help text") && line.starts_with("ray_serve_num_http"));
        assert!(known, "promtool: {line}\n{text}");
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn http_requests_reach_replicas_and_bad_ones_get_a_reason() {
    rayforge_integration_tests::own_process!();
    let s = start(
        vec![
            Application::new("greet")
                .route_prefix("/greet")
                .ingress(deployment::<Greeter>("Greeter").num_replicas(2)),
            Application::new("echo")
                .route_prefix("/echo")
                .ingress(deployment::<Echo>("Echo")),
        ],
        HttpOptions {
            max_body_bytes: 1024,
            ..opts()
        },
    );
    let r = send(&s, "POST", "/greet", br#""bob""#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("hello bob from Greeter#"), "{}", r.text());
    let r = send(&s, "POST", "/echo/a/b?x=1", b"payload");
    assert_eq!((r.status, r.text().as_str()), (201, "POST /echo/a/b payload"));

    // Both replicas take requests.
    let mut pids = std::collections::HashSet::new();
    assert!(wait_until(Duration::from_secs(30), || {
        let r = send(&s, "POST", "/greet", br#""x""#);
        pids.insert(r.text().rsplit(' ').next().unwrap_or("").to_string());
        pids.len() == 2
    }));

    // Bad requests: malformed JSON, no such route, too big a body, a failing
    // and a panicking handler. Each says why; the server keeps serving.
    let r = send(&s, "POST", "/greet", b"\"bob");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("malformed JSON"), "{}", r.text());
    let r = send(&s, "GET", "/nowhere", b"");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("/nowhere"), "{}", r.text());
    let r = send(&s, "POST", "/echo", &vec![b'x'; 4096]);
    assert_eq!(r.status, 413);
    let r = send(&s, "GET", "/echo?fail=1", b"");
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("asked to fail") && r.text().contains("echo/Echo"),
        "{}",
        r.text()
    );
    // A panic is a bug inside the server: the client learns only the id
    // under which the proxy logged it.
    let r = send(&s, "GET", "/echo?panic=1", b"");
    assert_eq!(r.status, 500);
    assert!(
        !r.text().contains("asked to panic") && !r.text().contains("panicked"),
        "{}",
        r.text()
    );
    assert!(
        r.text().starts_with("internal server error (error ") && r.text().ends_with(" in the server's log)"),
        "{}",
        r.text()
    );
    // A handler setting the proxy's stream header gets its own body, not
    // another request's stream.
    let r = send(&s, "GET", "/echo?sneak=1", b"");
    assert_eq!((r.status, r.text().as_str()), (200, "my own body"));
    assert!(r.header("x-rayforge-stream").is_none());
    let r = send(&s, "POST", "/greet", br#""again""#);
    assert_eq!(r.status, 200);
    // The dashboard's login cookie (same host, another port) never reaches
    // user code; the application's own cookies do.
    let with_cookie = |cookie: &str| {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(s.http_addr()).unwrap();
        let req = format!("GET /echo?cookie=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: {cookie}\r\n\r\n");
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default()
    };
    let session = rayforge::http::SESSION_COOKIE;
    assert_eq!(
        with_cookie(&format!("theme=dark; {session}=abc; cart=2")),
        "theme=dark; cart=2"
    );
    assert_eq!(with_cookie(&format!("{session}=abc")), "none");

    let r = send(&s, "GET", "/-/healthz", b"");
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let r = send(&s, "GET", "/-/routes", b"");
    let routes: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(routes, serde_json::json!({"/greet": "greet", "/echo": "echo"}));

    // Ray Serve's metrics, counted by the proxy.
    let r = send(&s, "GET", "/-/metrics", b"");
    let m = r.text();
    assert!(
        m.contains("ray_serve_num_http_requests_total{route=\"/greet\",method=\"POST\",application=\"greet\",status_code=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("error_code=\"400\""), "{m}");
    assert!(m.contains("ray_serve_http_request_latency_ms_bucket{"), "{m}");
    promtool_check(&m);

    // What the dashboard's Serve page shows: each application's
    // deployments and replicas.
    let mut status = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            status = rayforge::kv::get(rayforge::state::DASHBOARD_NAMESPACE, "serve/greet")
                .unwrap()
                .map(|b| serde_json::from_slice(&b).unwrap())
                .unwrap_or_default();
            status["status"] == "RUNNING"
        }),
        "{status}"
    );
    assert_eq!(status["route_prefix"], "/greet");
    assert_eq!(status["deployments"][0]["name"], "Greeter");
    assert_eq!(status["replicas"].as_array().unwrap().len(), 2, "{status}");
    s.shutdown().unwrap();
}

#[test]
fn batching_gathers_concurrent_requests_and_answers_each() {
    rayforge_integration_tests::own_process!();
    let s = Arc::new(start(
        vec![Application::new("d").ingress(deployment::<Doubler>("Doubler"))],
        opts(),
    ));
    let threads: Vec<_> = (0..16i64)
        .map(|i| {
            let s = s.clone();
            std::thread::spawn(move || {
                let r = send(&s, "POST", "/", i.to_string().as_bytes());
                assert_eq!(r.status, 200, "{}", r.text());
                let d: Doubled = serde_json::from_slice(&r.body).unwrap();
                (i, d)
            })
        })
        .collect();
    let answers: Vec<(i64, Doubled)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, d) in &answers {
        assert_eq!(d.value, i * 2);
        assert!(d.batch >= 1 && d.batch <= 8, "{d:?}");
    }
    assert!(
        answers.iter().any(|(_, d)| d.batch > 1),
        "no request shared a batch: {answers:?}"
    );
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

#[test]
fn deployments_compose_through_handles() {
    rayforge_integration_tests::own_process!();
    let s = start(
        vec![Application::new("calc")
            .ingress(deployment::<Composer>("Composer"))
            .deployment(deployment::<Adder>("A").user_config(serde_json::json!({"add": 1})))
            .deployment(deployment::<Adder>("B").user_config(serde_json::json!({"add": 10})))
            .deployment(deployment::<Adder>("C").user_config(serde_json::json!({"add": 100})))],
        opts(),
    );
    let r = send(&s, "POST", "/", b"5");
    assert_eq!(r.status, 200, "{}", r.text());
    // Pipeline: 5 + 1 + 10 + 100; ensemble: (5 + 1) + (5 + 10).
    assert_eq!(serde_json::from_slice::<(i64, i64)>(&r.body).unwrap(), (116, 21));
    // A handle from the driver.
    let b: DeploymentHandle<Adder> = s.handle("calc", "B");
    assert_eq!(s.block_on(b.call(1)).unwrap(), 11);
    let missing: DeploymentHandle<Adder> = s.handle("calc", "Nope");
    let e = s.block_on(async { tokio::time::timeout(Duration::from_secs(120), missing.call(1)).await });
    assert!(
        matches!(e, Ok(Err(Error::NotFound(ref d))) if d.contains("calc/Nope")),
        "{e:?}"
    );
    s.shutdown().unwrap();
}

#[test]
fn user_config_changes_in_place_and_other_changes_roll_without_dropping_requests() {
    rayforge_integration_tests::own_process!();
    let greeter = |greeting: &str, max_ongoing: usize| {
        Application::new("greet").ingress(
            deployment::<Greeter>("Greeter")
                .num_replicas(2)
                .max_ongoing_requests(max_ongoing)
                .user_config(serde_json::json!({ "greeting": greeting })),
        )
    };
    let s = Arc::new(start(vec![greeter("hello", 100)], opts()));
    let replicas = |s: &Serve| -> Vec<String> {
        let st = s.status().unwrap();
        let mut ids: Vec<String> = st.deployments[0]
            .replicas
            .iter()
            .filter(|r| r.state == rayforge_serve::ReplicaState::Running)
            .map(|r| r.id.clone())
            .collect();
        ids.sort();
        ids
    };
    let before = replicas(&s);
    assert_eq!(before.len(), 2);

    // Load during both changes: every request must succeed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (s, stop, ok, failed) = (s.clone(), stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = send(&s, "POST", "/", br#""ann""#);
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.lock().unwrap().push((r.status, r.text()));
                    }
                }
            })
        })
        .collect();

    s.deploy(vec![greeter("hi", 100)]).unwrap();
    assert!(wait_until(Duration::from_secs(60), || {
        (0..4).all(|_| send(&s, "POST", "/", br#""x""#).text().starts_with("hi x"))
    }));
    assert_eq!(replicas(&s), before, "a user config change restarted replicas");

    // A config the deployment refuses: reported, and the old one stays.
    s.deploy(vec![greeter("", 100)]).unwrap();
    assert!(wait_until(Duration::from_secs(60), || {
        s.status().unwrap().deployments[0].message.contains("an empty greeting")
    }));
    assert!(send(&s, "POST", "/", br#""x""#).text().starts_with("hi x"));

    s.deploy(vec![greeter("hi", 50)]).unwrap();
    assert!(wait_until(Duration::from_secs(120), || {
        let now = replicas(&s);
        now.len() == 2 && now.iter().all(|id| !before.contains(id)) && s.status().unwrap().healthy()
    }));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(*failed.lock().unwrap(), Vec::<(u16, String)>::new());
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

/// The controller's process dying loses nothing for good: it restarts,
/// declares the applications it saved in the cluster's key-value store
/// again, and requests are answered again.
#[test]
fn a_killed_controller_restarts_with_its_applications() {
    rayforge_integration_tests::own_process!();
    // The controller says in its log that it runs: that is how this test
    // finds its process.
    // SAFETY: set before any other thread of this process starts (each
    // test runs in a process of its own).
    unsafe { std::env::set_var("RAYFORGE_LOG", "rayforge_serve::controller=info") };
    let s = start(
        vec![Application::new("greet").ingress(deployment::<Greeter>("Greeter"))],
        opts(),
    );
    assert!(send(&s, "POST", "/", br#""ann""#).text().starts_with("hello ann"));
    let mut pid = 0;
    assert!(wait_until(Duration::from_secs(60), || {
        pid = rayforge::state::worker_logs(None, Some(1 << 16))
            .map(|l| {
                l.items
                    .iter()
                    .find(|w| w.alive && w.text.contains("serve controller running"))
                    .map_or(0, |w| w.pid)
            })
            .unwrap_or(0);
        pid > 0
    }));
    // SAFETY: kill(2) on the controller's worker process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(90), || {
            let r = request(
                &s.http_addr().to_string(),
                "POST",
                "/",
                br#""bob""#,
                Duration::from_secs(10),
            );
            r.is_ok_and(|r| r.status == 200 && r.text().starts_with("hello bob"))
        }),
        "{:?}",
        s.status()
    );
    assert!(wait_until(Duration::from_secs(60), || s
        .status()
        .is_ok_and(|st| st.healthy())));
    s.shutdown().unwrap();
}

/// Greets like [`Greeter`], but takes a second and a half to start.
struct SlowStarter(Greeter);

impl Deployment for SlowStarter {
    type Config = GreeterConfig;
    type Request = Json<String>;
    type Response = String;
    fn new(ctx: &Context, c: GreeterConfig) -> Result<Self> {
        std::thread::sleep(Duration::from_millis(1500));
        Ok(SlowStarter(Greeter::new(ctx, c)?))
    }
    async fn handle(&self, name: Json<String>) -> Result<String> {
        self.0.handle(name).await
    }
    fn reconfigure(&mut self, c: GreeterConfig) -> Result<()> {
        self.0.reconfigure(c)
    }
}

/// A user config changed while a replica is still starting reaches it
/// before its first request (it used to keep the config it started with).
#[test]
fn a_user_config_changed_while_a_replica_starts_reaches_it() {
    rayforge_integration_tests::own_process!();
    init();
    let app = |greeting: &str| {
        Application::new("greet")
            .ingress(deployment::<SlowStarter>("SlowStarter").user_config(serde_json::json!({ "greeting": greeting })))
    };
    let s = rayforge_serve::start(vec![app("hello")], opts()).expect("start serve");
    // The replica takes 1.5 s to start: this lands while it does.
    s.deploy(vec![app("hi")]).unwrap();
    s.wait_healthy(Duration::from_secs(120)).unwrap();
    for _ in 0..4 {
        let r = send(&s, "POST", "/", br#""ann""#);
        assert!(r.text().starts_with("hi ann"), "{}", r.text());
    }
    s.shutdown().unwrap();
}

/// Kills one of `Sleeper`'s two replicas under load; every request must
/// still succeed and a replacement must start. `st.deployments[sleeper]`
/// is the Sleeper deployment's status.
fn kill_a_sleeper_under_load(app: Application, sleeper: usize) {
    let s = Arc::new(start(vec![app], opts()));
    let mut pids = std::collections::HashSet::new();
    assert!(wait_until(Duration::from_secs(30), || {
        pids.insert(send(&s, "POST", "/", b"0").text());
        pids.len() == 2
    }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (s, stop, statuses) = (s.clone(), stop.clone(), statuses.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = send(&s, "POST", "/", b"20");
                    statuses.lock().unwrap().push((r.status, r.text()));
                }
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(30), || statuses.lock().unwrap().len() >= 20));
    let victim: i32 = pids.iter().next().unwrap().parse().unwrap();
    // SAFETY: plain kill(2) of a replica process this test started.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let seen = statuses.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(30), || statuses.lock().unwrap().len() >= seen + 50));
    // The controller starts a replacement.
    assert!(wait_until(Duration::from_secs(60), || {
        let st = s.status().unwrap();
        st.healthy() && st.deployments[sleeper].message.contains("replaced")
    }));
    let mut fresh = std::collections::HashSet::new();
    assert!(wait_until(Duration::from_secs(30), || {
        fresh.insert(send(&s, "POST", "/", b"0").text());
        fresh.len() == 2
    }));
    assert!(!fresh.contains(&victim.to_string()));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    // Requests in flight on the killed replica were sent to the other one.
    let statuses = statuses.lock().unwrap();
    let failed: Vec<_> = statuses.iter().filter(|(st, _)| *st != 200).collect();
    assert!(failed.is_empty(), "{failed:?}");
    drop(statuses);
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

#[test]
fn a_killed_replica_is_replaced_and_no_request_is_lost() {
    rayforge_integration_tests::own_process!();
    kill_a_sleeper_under_load(
        Application::new("sleep").ingress(deployment::<Sleeper>("Sleeper").num_replicas(2)),
        0,
    );
}

#[test]
fn a_handle_call_to_a_dead_replica_goes_to_another() {
    rayforge_integration_tests::own_process!();
    // Statuses are listed by key: "sleep/Relay" before "sleep/Sleeper".
    kill_a_sleeper_under_load(
        Application::new("sleep")
            .ingress(deployment::<Relay>("Relay"))
            .deployment(deployment::<Sleeper>("Sleeper").num_replicas(2)),
        1,
    );
}

#[test]
fn overload_is_refused_with_503_instead_of_queueing_without_bound() {
    rayforge_integration_tests::own_process!();
    let s = Arc::new(start(
        vec![Application::new("sleep").ingress(
            deployment::<Sleeper>("Sleeper")
                .max_ongoing_requests(1)
                .max_queued_requests(2),
        )],
        opts(),
    ));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || send(&s, "POST", "/", b"3000"))
        })
        .collect();
    let replies: Vec<Reply> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let shed: Vec<&Reply> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(
        ok + shed.len(),
        10,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        (1..=3).contains(&ok),
        "one running and two queued at most: {ok} succeeded"
    );
    assert!(shed
        .iter()
        .all(|r| r.header("retry-after") == Some("1") && r.text().contains("overloaded")));
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

#[test]
fn the_proxy_sheds_load_beyond_its_concurrency_limit() {
    rayforge_integration_tests::own_process!();
    let s = Arc::new(start(
        vec![Application::new("sleep").ingress(deployment::<Sleeper>("Sleeper"))],
        HttpOptions {
            max_concurrent_requests: 2,
            ..opts()
        },
    ));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || send(&s, "POST", "/", b"2000"))
        })
        .collect();
    let replies: Vec<Reply> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let shed = replies
        .iter()
        .filter(|r| r.status == 503 && r.header("retry-after") == Some("1"))
        .count();
    assert!((1..=2).contains(&ok) && ok + shed == 8, "{ok} ok, {shed} shed");
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

#[test]
fn autoscaling_adds_replicas_under_load_and_removes_them_after() {
    rayforge_integration_tests::own_process!();
    let s = Arc::new(start(
        vec![Application::new("sleep").ingress(
            deployment::<Sleeper>("Sleeper")
                .autoscaling(Autoscaling {
                    min_replicas: 1,
                    max_replicas: 3,
                    target_ongoing_requests: 1.0,
                    upscale_delay_s: 0.0,
                    downscale_delay_s: 1.0,
                })
                .health_check_period_s(0.1),
        )],
        opts(),
    ));
    let running = |s: &Serve| {
        s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .filter(|r| r.state == rayforge_serve::ReplicaState::Running)
            .count()
    };
    assert_eq!(running(&s), 1);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(send(&s, "POST", "/", b"300").status, 200);
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || running(&s) == 3),
        "{:?}",
        s.status().unwrap()
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || running(&s) == 1
            && s.status().unwrap().healthy()),
        "{:?}",
        s.status().unwrap()
    );
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

/// Requests queued past `max_ongoing_requests` count as demand (the
/// replicas' own counts never show them), and a deployment with
/// `min_replicas = 0`, scaled down to none, starts a replica when a request
/// arrives and answers it instead of refusing it after a wait.
#[test]
fn autoscaling_counts_queued_requests_and_scales_up_from_zero() {
    rayforge_integration_tests::own_process!();
    let s = Arc::new(start(
        vec![Application::new("sleep").ingress(
            deployment::<Sleeper>("Sleeper")
                .max_ongoing_requests(1)
                .autoscaling(Autoscaling {
                    min_replicas: 0,
                    max_replicas: 3,
                    target_ongoing_requests: 1.0,
                    upscale_delay_s: 0.0,
                    downscale_delay_s: 1.0,
                })
                .health_check_period_s(0.1),
        )],
        opts(),
    ));
    let running = |s: &Serve| {
        s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .filter(|r| r.state == rayforge_serve::ReplicaState::Running)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(60), || running(&s) == 0),
        "{:?}",
        s.status().unwrap()
    );
    // From zero: the request waits for the replica it caused.
    assert_eq!(send(&s, "POST", "/", b"10").status, 200);
    // Six clients, one request per replica at a time: five wait in the
    // router's queue, and that demand takes the deployment to three.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(send(&s, "POST", "/", b"300").status, 200);
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || running(&s) == 3),
        "{:?}",
        s.status().unwrap()
    );
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(60), || running(&s) == 0),
        "{:?}",
        s.status().unwrap()
    );
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

#[test]
fn a_replica_failing_its_health_check_is_replaced() {
    rayforge_integration_tests::own_process!();
    let s = start(
        vec![Application::new("f").ingress(deployment::<Fragile>("Fragile").health_check_period_s(0.1))],
        opts(),
    );
    let pid = send(&s, "POST", "/", br#""poison""#).text();
    assert!(wait_until(Duration::from_secs(60), || {
        let r = send(&s, "POST", "/", br#""hi""#);
        r.status == 200 && r.text() != pid
    }));
    let st = s.status().unwrap();
    assert!(st.deployments[0].message.contains("poisoned"), "{st:?}");
    s.shutdown().unwrap();
}

#[test]
fn a_deployment_that_cannot_start_is_reported() {
    rayforge_integration_tests::own_process!();
    init();
    let s = rayforge_serve::start(
        vec![Application::new("b").ingress(deployment::<Broken>("Broken"))],
        opts(),
    )
    .unwrap();
    let e = s.wait_healthy(Duration::from_secs(120)).unwrap_err();
    assert!(
        matches!(&e, Error::Unavailable(m) if m.contains("the model file is missing") && m.contains("b/Broken")),
        "{e}"
    );
    // Requests fail at once with the reason instead of waiting.
    let r = send(&s, "GET", "/", b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("the model file is missing"), "{}", r.text());
    s.shutdown().unwrap();
}

#[test]
fn invalid_declarations_are_refused_before_anything_runs() {
    rayforge_integration_tests::own_process!();
    init();
    let e = rayforge_serve::start(vec![Application::new("x")], opts())
        .err()
        .unwrap();
    assert!(e.to_string().contains("no ingress"), "{e}");
    let e = rayforge_serve::start(
        vec![Application::new("x").ingress(deployment::<Echo>("Echo").max_ongoing_requests(0))],
        opts(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("max_ongoing_requests"), "{e}");
    // Nothing was left behind: a valid start works.
    let s = rayforge_serve::start(vec![Application::new("x").ingress(deployment::<Echo>("Echo"))], opts()).unwrap();
    s.wait_healthy(Duration::from_secs(120)).unwrap();
    let e = rayforge_serve::start(vec![Application::new("y").ingress(deployment::<Echo>("Echo"))], opts())
        .err()
        .unwrap();
    assert!(e.to_string().contains("already running"), "{e}");
    s.shutdown().unwrap();
}

#[test]
fn shutdown_lets_requests_in_flight_finish() {
    rayforge_integration_tests::own_process!();
    let s = start(
        vec![Application::new("greet").ingress(deployment::<Greeter>("Greeter").health_check_period_s(0.05))],
        opts(),
    );
    let addr = s.http_addr().to_string();
    let slow = std::thread::spawn(move || request(&addr, "POST", "/", br#""slow""#, Duration::from_secs(60)));
    // The replica reports the request as ongoing: it is in flight there.
    assert!(wait_until(Duration::from_secs(30), || {
        s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .any(|r| r.ongoing > 0)
    }));
    s.shutdown().unwrap();
    let r = slow.join().unwrap().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("hello slow"));
}

#[test]
fn responses_stream_in_chunks() {
    rayforge_integration_tests::own_process!();
    let s = start(
        vec![Application::new("lines").ingress(deployment::<Lines>("Lines"))],
        opts(),
    );
    let r = send(&s, "GET", "/?n=200", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let want: String = (0..200).map(|i| format!("line {i}\n")).collect();
    assert_eq!(r.text(), want);
    // A stream that fails midway ends the response early (the client sees a
    // cut-off body, not a clean end); the server keeps serving.
    let cut = request(
        &s.http_addr().to_string(),
        "GET",
        "/?n=50&fail_at=10",
        b"",
        Duration::from_secs(60),
    );
    if let Ok(r) = cut {
        assert!(!r.text().contains("line 10"), "{}", r.text());
    }
    let r = send(&s, "GET", "/?n=3", b"");
    assert_eq!(r.text(), "line 0\nline 1\nline 2\n");
    // A handle cannot carry a stream: a clear error instead.
    let h: DeploymentHandle<Lines> = s.handle("lines", "Lines");
    let e = s.block_on(h.call(rayforge_serve::HttpRequest::default())).unwrap_err();
    assert!(e.to_string().contains("over HTTP only"), "{e}");
    s.shutdown().unwrap();
}

/// A streamed response holds its replica's slot until its body ends (it
/// counts against `max_ongoing_requests`), and a redeploy lets a stream in
/// progress finish instead of cutting it.
#[test]
fn streams_count_as_ongoing_and_are_drained_not_cut() {
    rayforge_integration_tests::own_process!();
    let lines = |max_ongoing: usize| {
        Application::new("lines").ingress(
            deployment::<Lines>("Lines")
                .max_ongoing_requests(max_ongoing)
                .health_check_period_s(0.1),
        )
    };
    let s = Arc::new(start(vec![lines(1)], opts()));
    let addr = s.http_addr().to_string();
    // 30 lines, 50 ms apart: a stream of 1.5 s.
    let long = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let r = request(&addr, "GET", "/?n=30&ms=50", b"", Duration::from_secs(60)).unwrap();
            (r.text(), Instant::now())
        })
    };
    // Once the stream has begun, a second request waits for the slot.
    assert!(wait_until(Duration::from_secs(60), || {
        s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .any(|r| r.ongoing > 0)
    }));
    let short = send(&s, "GET", "/?n=1", b"");
    let short_done = Instant::now();
    let (text, long_done) = long.join().unwrap();
    assert_eq!(short.text(), "line 0\n");
    assert_eq!(text, (0..30).map(|i| format!("line {i}\n")).collect::<String>());
    assert!(short_done >= long_done, "the second request ran beside the stream");
    // A stream in progress when the deployment rolls ends whole.
    let long = {
        let addr = addr.clone();
        std::thread::spawn(move || request(&addr, "GET", "/?n=30&ms=50", b"", Duration::from_secs(60)).unwrap())
    };
    assert!(wait_until(Duration::from_secs(60), || {
        s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .any(|r| r.ongoing > 0)
    }));
    s.deploy(vec![lines(2)]).unwrap();
    let r = long.join().unwrap();
    assert_eq!(r.text(), (0..30).map(|i| format!("line {i}\n")).collect::<String>());
    Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
}

/// Scaling down drains the replica it removes: a stream that replica is
/// sending when the deployment goes from 2 replicas to 1 ends whole.
#[test]
fn streams_on_a_replica_removed_by_downscale_are_drained_not_cut() {
    rayforge_integration_tests::own_process!();
    let lines = |replicas: usize| {
        Application::new("lines").ingress(
            deployment::<Lines>("Lines")
                .num_replicas(replicas)
                .max_ongoing_requests(1)
                .health_check_period_s(0.1),
        )
    };
    let s = start(vec![lines(2)], opts());
    let addr = s.http_addr().to_string();
    // 60 lines, 100 ms apart: a stream of 6 s on each replica (one slot
    // each, so the second stream goes to the other replica).
    let whole = (0..60).map(|i| format!("line {i}\n")).collect::<String>();
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || request(&addr, "GET", "/?n=60&ms=100", b"", Duration::from_secs(120)))
        })
        .collect();
    let streaming = |s: &Serve| {
        s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .filter(|r| r.ongoing > 0)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(60), || streaming(&s) == 2),
        "both replicas never streamed at once"
    );
    s.deploy(vec![lines(1)]).unwrap();
    // One replica is told to stop while both streams still run.
    assert!(
        wait_until(Duration::from_secs(30), || s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .any(|r| r.state == rayforge_serve::ReplicaState::Stopping)),
        "no replica was stopped by the downscale"
    );
    assert!(
        streams.iter().all(|t| !t.is_finished()),
        "a stream ended before the downscale began: the test proves nothing"
    );
    for t in streams {
        let r = t
            .join()
            .unwrap()
            .expect("the stream ended whole (a cut one reads as a broken reply)");
        assert_eq!((r.status, r.text()), (200, whole.clone()));
    }
    // The downscale went through: one replica serves.
    assert!(wait_until(Duration::from_secs(60), || {
        let st = s.status().unwrap();
        st.healthy() && st.deployments[0].replicas.len() == 1
    }));
    assert_eq!(send(&s, "GET", "/?n=2", b"").text(), "line 0\nline 1\n");
    s.shutdown().unwrap();
}

#[test]
fn a_request_past_the_timeout_gets_408_and_the_server_keeps_serving() {
    rayforge_integration_tests::own_process!();
    let s = start(
        vec![Application::new("sleep").ingress(deployment::<Sleeper>("Sleeper"))],
        HttpOptions {
            request_timeout_s: 0.5,
            ..opts()
        },
    );
    let r = send(&s, "POST", "/", b"2000");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(r.text().contains("timed out"));
    let r = send(&s, "POST", "/", b"0");
    assert_eq!(r.status, 200, "{}", r.text());
    s.shutdown().unwrap();
}

#[test]
fn a_timed_out_request_is_cancelled_and_gives_its_replica_slot_back() {
    rayforge_integration_tests::own_process!();
    let s = start(
        vec![Application::new("sleep").ingress(
            deployment::<Sleeper>("Sleeper")
                .max_ongoing_requests(1)
                .health_check_period_s(0.1),
        )],
        HttpOptions {
            request_timeout_s: 2.0,
            ..opts()
        },
    );
    let ongoing = |s: &Serve| -> usize {
        s.status().unwrap().deployments[0]
            .replicas
            .iter()
            .map(|r| r.ongoing)
            .sum()
    };
    // A minute of work, abandoned by the proxy after two seconds.
    let addr = s.http_addr().to_string();
    let long = std::thread::spawn(move || request(&addr, "POST", "/", b"60000", Duration::from_secs(60)));
    assert!(
        wait_until(Duration::from_secs(30), || ongoing(&s) == 1),
        "the long request never showed as running on the replica"
    );
    let r = long.join().unwrap().expect("HTTP request");
    assert_eq!(r.status, 408, "{}", r.text());
    // The replica is told to cancel it: its handler is dropped at its
    // next await, so the replica's one slot is free long before the
    // minute is up (without the cancel, the handler ran to its end).
    assert!(
        wait_until(Duration::from_secs(20), || ongoing(&s) == 0),
        "the abandoned request still runs on the replica"
    );
    for i in 0..100 {
        let r = send(&s, "POST", "/", b"0");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    s.shutdown().unwrap();
}
