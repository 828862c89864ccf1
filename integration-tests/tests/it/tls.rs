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
    rayforge::shutdown();

    // Plain HTTP to the head's port gets no answer.
    let hostport = cluster.jobs_address.trim_start_matches("https://").to_string();
    let mut s = std::net::TcpStream::connect(&hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(!String::from_utf8_lossy(&reply).starts_with("HTTP/1.1"), "{reply:?}");
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
