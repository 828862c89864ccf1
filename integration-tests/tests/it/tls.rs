//! TLS on every port: a head and a node started with a certificate (made
//! here, self-signed for localhost and 127.0.0.1) speak only TLS on gRPC and
//! HTTP; the jobs API is `https://`, a node joins, a driver runs tasks on it,
//! and clients without the authority, or speaking plain HTTP, get nowhere.

use std::io::{Read, Write};
use std::time::Duration;

use rayforge::jobs::{JobClient, RuntimeEnv};
use rayforge_integration_tests::{rayforge_bin, LocalCluster};

/// Doubles on the node that offers `tls_node`.
#[rayforge::remote]
fn double(x: u64) -> (u64, String) {
    (2 * x, rayforge::node_id().unwrap_or_default())
}

#[test]
fn a_cluster_with_tls_speaks_only_tls() {
    rayforge_integration_tests::own_process!();
    let dir = std::env::temp_dir().join(format!("rayforge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    // This process is a client and a driver of the cluster: it trusts the
    // certificate and serves its own worker service with it. Set before
    // any thread of rayforge starts.
    std::env::set_var(rayforge::tls::ENV_CERT, &cert);
    std::env::set_var(rayforge::tls::ENV_KEY, &key);
    std::env::set_var(rayforge::tls::ENV_CA, &cert);
    let (c, k) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut cluster = LocalCluster::start(&["--num-cpus", "1", "--tls-cert", c, "--tls-key", k], 60_000);
    assert!(cluster.jobs_address.starts_with("https://"), "{}", cluster.jobs_address);
    let node = cluster.add_node(&[
        "--num-cpus",
        "1",
        "--resources",
        r#"{"tls_node": 1}"#,
        "--tls-cert",
        c,
        "--tls-key",
        k,
    ]);
    let status = cluster.status();
    assert!(status.contains("2 alive"), "{status}");

    // The jobs API over https.
    let jobs = JobClient::connect(&cluster.jobs_address, Some(&cluster.token)).unwrap();
    let id = jobs.submit("echo tls-ok", &RuntimeEnv::default()).unwrap();
    let mut log = String::new();
    let done = jobs.follow(&id, |s| log.push_str(s)).unwrap();
    assert_eq!(done.state, "SUCCEEDED", "{done:?}\n{log}");
    assert!(log.contains("tls-ok"), "{log}");

    // A driver's task on the other node: gRPC over TLS between every pair.
    rayforge::init(cluster.config()).unwrap();
    let (x, on) = double::options().resource("tls_node", 1.0).remote(21u64).get().unwrap();
    assert_eq!((x, on.as_str()), (42, node.as_str()));
    let nodes = rayforge::state::list_nodes().unwrap();
    rayforge::shutdown();

    // Each node's HTTP port (/healthz, /metrics, /api/node) speaks https
    // only.
    let auth = format!("Bearer {}", cluster.token);
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for n in &nodes {
        assert!(!n.http_address.is_empty(), "{n:?}");
        let (status, body) = https_get(&format!("https://{}/metrics", n.http_address), &auth);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("ray_node_mem_capacity "), "{body}");
        assert!(
            !plain_http_answers(&n.http_address),
            "{} answered plain HTTP",
            n.http_address
        );
    }
    // The dashboard's backend reaches every node's /api/node over TLS.
    let (status, body) = https_get(&format!("{}/api/v0/nodes", cluster.jobs_address), &auth);
    assert_eq!(status, 200, "{body}");
    let views: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(views.len(), 2, "{body}");
    for v in &views {
        assert!(
            v["error"].is_null() && v["stats"].is_object(),
            "a node's figures were not fetched: {v}"
        );
    }

    // Plain HTTP to the head's port gets no answer.
    let hostport = cluster.jobs_address.trim_start_matches("https://").to_string();
    assert!(!plain_http_answers(&hostport), "the head answered plain HTTP");
    // A client that does not trust the authority is refused.
    let out = std::process::Command::new(rayforge_bin())
        .args(["status", "--address", &cluster.address])
        .env("RAYFORGE_TOKEN", &cluster.token)
        .env_remove(rayforge::tls::ENV_CERT)
        .env_remove(rayforge::tls::ENV_KEY)
        .env_remove(rayforge::tls::ENV_CA)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // A node whose certificate file is missing does not start, naming it.
    let out = std::process::Command::new(rayforge_bin())
        .args(["start", "--address", &cluster.address, "--block", "--tls-cert"])
        .arg(dir.join("missing.pem"))
        .args(["--tls-key", k])
        .env("RAYFORGE_TOKEN", &cluster.token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("missing.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A GET through the cluster's https client (trusting `RAYFORGE_TLS_CA`):
/// the status and the body.
fn https_get(url: &str, auth: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build::<_, http_body_util::Empty<bytes::Bytes>>(rayforge::tls::https_connector());
        let req = hyper::Request::get(url)
            .header("authorization", auth)
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{url} did not answer within 60 s"))
            .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// Whether `hostport` answers a plain-HTTP request with an HTTP reply.
fn plain_http_answers(hostport: &str) -> bool {
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).starts_with("HTTP/1.1")
}
