//! The storage layer across processes: the cluster's own store between a
//! private-disk node and the driver (with its size budget), and S3 against
//! a real S3-compatible server (moto's server mode, from PyPI; set up by
//! scripts/s3-venv.sh), including the server cut off mid-upload.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rayforge::checkpoint::{CheckpointDir, CheckpointWriter};
use rayforge::storage::StorageUri;
use rayforge_integration_tests::{http, wait_until, LocalCluster};

/// Writes `len` bytes to `uri`/`key` from wherever this task runs; returns
/// its node and the error, if any.
#[rayforge::remote]
fn write_from_node(uri: String, key: String, len: usize) -> (String, Option<String>) {
    let node = rayforge::node_id().unwrap_or_default();
    let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let r = StorageUri::from(uri.as_str()).open().and_then(|s| s.put(&key, &data));
    (node, r.err().map(|e| e.to_string()))
}

#[test]
fn the_cluster_store_carries_files_between_private_disks_within_its_budget() {
    let mut cluster = LocalCluster::start(&["--num-cpus", "0", "--storage-budget", "3000000"], 10_000);
    let node = cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&1.0)
    }));
    // Written on the private-disk node, read by the driver.
    let (ran_on, err) = write_from_node::remote("cluster://t".to_string(), "a/one".to_string(), 1 << 20)
        .get()
        .unwrap();
    assert_eq!((ran_on.as_str(), err), (node.as_str(), None));
    let s = StorageUri::from("cluster://t").open().unwrap();
    let back = s.read("a/one").unwrap().expect("the node's file reached the head");
    assert_eq!(back.len(), 1 << 20);
    assert!(back.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8));
    assert!(cluster.state_dir.join("storage/t/a/one").exists());
    // Past the budget: refused, naming the budget; nothing half-written.
    let (_, err) = write_from_node::remote("cluster://t".to_string(), "a/big".to_string(), 4 << 20)
        .get()
        .unwrap();
    let err = err.expect("a write past the budget fails");
    assert!(
        err.contains("budget is 3000000") && err.contains("cluster://t/a/big"),
        "{err}"
    );
    let keys: Vec<String> = s.list("").unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, vec!["a/one"]);
    // Deleting frees the budget for the next write.
    assert_eq!(s.delete("a/").unwrap(), 1);
    let (_, err) = write_from_node::remote("cluster://t".to_string(), "a/two".to_string(), 2 << 20)
        .get()
        .unwrap();
    assert_eq!(err, None);
    // A bad key is refused with the key named.
    let err = s.put("../x", b"1").unwrap_err();
    assert!(err.to_string().contains("../x"), "{err}");
}

/// A moto S3 server on a free loopback port, killed when dropped.
struct S3Server {
    child: std::process::Child,
    port: u16,
}

impl S3Server {
    /// `None` (the test skips) where scripts/s3-venv.sh has not run; under
    /// CI the test script always sets it up, so there it is an error.
    fn start() -> Option<S3Server> {
        let Some(bin) = std::env::var_os("RAYFORGE_MOTO_SERVER") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "RAYFORGE_MOTO_SERVER is unset: scripts/test.sh sets up moto through scripts/s3-venv.sh"
            );
            eprintln!("skipped: RAYFORGE_MOTO_SERVER is unset (run scripts/s3-venv.sh)");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = S3Server { child, port };
        assert!(
            wait_until(Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "moto_server did not listen"
        );
        Some(server)
    }

    fn create_bucket(&self, bucket: &str) {
        let r = http(
            &format!("127.0.0.1:{}", self.port),
            "PUT",
            &format!("/{bucket}"),
            &[],
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points the S3 client of this process at `port`.
fn s3_env(port: u16) {
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::set_var("AWS_REGION", "us-east-1");
}

#[test]
fn s3_holds_files_and_checkpoints_as_local_storage_does() {
    let Some(server) = S3Server::start() else { return };
    server.create_bucket("runs");
    s3_env(server.port);
    let s = StorageUri::from("s3://runs/exp1").open().unwrap();
    s.check_writable().unwrap();
    // A file larger than one part goes up as a multipart upload.
    let dir = std::env::temp_dir().join(format!("rayforge-s3-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big: Vec<u8> = (0..(20 << 20) + 3).map(|i| (i % 241) as u8).collect();
    std::fs::write(dir.join("big"), &big).unwrap();
    s.put_file("data/big", &dir.join("big")).unwrap();
    s.put("data/small", b"x").unwrap();
    let listed: Vec<(String, u64)> = s.list("data/").unwrap().into_iter().map(|e| (e.key, e.size)).collect();
    assert_eq!(
        listed,
        vec![("data/big".into(), big.len() as u64), ("data/small".into(), 1)]
    );
    assert!(s.download("data/big", &dir.join("back")).unwrap());
    assert!(std::fs::read(dir.join("back")).unwrap() == big);
    // Checkpoints: committed, listed, read back through a cold cache.
    let ckpts = CheckpointDir::new(s.join("run").unwrap());
    let mut w = CheckpointWriter::new().unwrap();
    w.write("model.bin", b"weights-1").unwrap();
    let c = ckpts.commit(w, 1, &Default::default(), "test").unwrap();
    assert_eq!(c.uri(), Some("s3://runs/exp1/run/checkpoint_000001"));
    std::fs::remove_dir_all(c.path()).unwrap();
    let latest = ckpts.latest().unwrap().unwrap().to_local().unwrap();
    assert_eq!(latest.read("model.bin").unwrap(), b"weights-1");
    // Unknown buckets and unreachable servers are refused before a run.
    let err = StorageUri::from("s3://no-such-bucket/x")
        .open()
        .unwrap()
        .check_writable()
        .unwrap_err();
    assert!(err.to_string().contains("s3://no-such-bucket/x"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy in front of the S3 server that can be cut (every connection
/// closed, no new ones) once `cut_after` bytes went to the server, and
/// opened again: a server that goes away mid-upload and comes back.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    cut_after: Arc<AtomicU64>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let forwarded = Arc::new(AtomicU64::new(0));
        let cut_after = Arc::new(AtomicU64::new(u64::MAX));
        let (u, f, c) = (up.clone(), forwarded.clone(), cut_after.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: refused while down
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let (u2, f2, c2) = (u.clone(), f.clone(), c.clone());
                let (client_r, server_w) = (conn.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client_r, server_w, Some((u2, f2, c2))));
                std::thread::spawn(move || pump(server, conn, None));
            }
        });
        Proxy {
            port,
            up,
            forwarded,
            cut_after,
        }
    }
}

/// Copies `from` to `to`; the client-to-server direction counts bytes and
/// cuts both sockets once past the limit or while the proxy is down.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<(Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>)>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((up, fwd, cut)) = &limit {
            let total = fwd.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if total > cut.load(Ordering::SeqCst) {
                up.store(false, Ordering::SeqCst);
            }
            if !up.load(Ordering::SeqCst) {
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn s3_cut_off_mid_upload_names_the_object_and_keeps_the_previous_checkpoint() {
    let Some(server) = S3Server::start() else { return };
    server.create_bucket("runs");
    let proxy = Proxy::start(server.port);
    s3_env(proxy.port);
    let ckpts = CheckpointDir::new(StorageUri::from("s3://runs/cut").open().unwrap());
    let mut w = CheckpointWriter::new().unwrap();
    w.write("model.bin", b"first").unwrap();
    ckpts.commit(w, 1, &Default::default(), "test").unwrap();
    // The second checkpoint's 40 MB model goes up in parts; the server
    // goes away after 12 MB of it.
    let mut w = CheckpointWriter::new().unwrap();
    w.write("model.bin", &vec![7u8; 40 << 20]).unwrap();
    proxy
        .cut_after
        .store(proxy.forwarded.load(Ordering::SeqCst) + (12 << 20), Ordering::SeqCst);
    let started = std::time::Instant::now();
    let err = ckpts.commit(w, 2, &Default::default(), "test").unwrap_err();
    assert!(
        err.to_string().contains("s3://runs/cut/checkpoint_000002/model.bin"),
        "the error names the object: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(120), "failed in bounded time");
    // The server comes back: the first checkpoint is whole and latest; the
    // second, without its manifest, does not exist for readers.
    proxy.cut_after.store(u64::MAX, Ordering::SeqCst);
    proxy.up.store(true, Ordering::SeqCst);
    let all = ckpts.list().unwrap();
    assert_eq!(all.len(), 1);
    let first = all[0].clone();
    std::fs::remove_dir_all(first.path()).unwrap();
    assert_eq!(first.to_local().unwrap().read("model.bin").unwrap(), b"first");
}

/// Parquet written by the tasks of one private-disk node into the
/// cluster's store, then read on another after the first is gone: the
/// files came from the head, not a shared disk. A second write into the
/// same directory is refused unless it says overwrite or append.
#[test]
fn a_dataset_written_on_one_node_is_read_on_another() {
    use rayforge_data::arrow::array::Int64Array;
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    let writer = cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&1.0)
    }));
    let done = rayforge_data::range_with_blocks(1000, 4)
        .write_parquet("cluster://datasets/ids")
        .unwrap();
    assert_eq!((done.rows, done.files.len()), (1000, 4));
    assert!(
        done.files[0].starts_with("cluster://datasets/ids/part-00000-"),
        "{:?}",
        done.files
    );
    let err = rayforge_data::range(5)
        .write_parquet("cluster://datasets/ids")
        .unwrap_err();
    assert!(err.to_string().contains("already holds 4 file(s)"), "{err}");
    // The writer's node goes (and its disk with it); another reads.
    cluster.kill_node(&writer);
    cluster.add_private_disk_node(&["--num-cpus", "1"]);
    let ds = rayforge_data::read_parquet("cluster://datasets/ids").unwrap();
    let mut ids: Vec<i64> = ds
        .iter_batches(Default::default())
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, (0..1000).collect::<Vec<i64>>());
    // Append commits with the marker; the reader sees both writes.
    rayforge_data::range(10)
        .write_parquet_with(
            "cluster://datasets/ids",
            rayforge_data::WriteOptions {
                mode: rayforge_data::WriteMode::Append,
            },
        )
        .unwrap();
    assert_eq!(
        rayforge_data::read_parquet("cluster://datasets/ids")
            .unwrap()
            .count()
            .unwrap(),
        1010
    );
}

/// Parquet written to a plain local path on a cluster whose nodes do not
/// share that path: the task writing a part on the private-disk node
/// cannot see the driver's marker, and the write fails naming that node
/// and the path, rather than leave the part on that node's own disk.
#[test]
fn a_dataset_written_to_a_path_a_node_does_not_share_fails_naming_the_node() {
    let mut cluster = LocalCluster::start(&["--num-cpus", "0"], 10_000);
    // The head has no CPU: every part is written on the private-disk node.
    let private = cluster.add_private_disk_node(&["--num-cpus", "1"]);
    rayforge::init(cluster.config()).expect("join the cluster");
    assert!(wait_until(Duration::from_secs(60), || {
        rayforge::cluster_resources().unwrap().total.get("CPU") == Some(&1.0)
    }));
    let dir = cluster.base_dir().join("datasets").join("local");
    let dir_s = dir.to_str().unwrap();
    let err = rayforge_data::range_with_blocks(100, 2)
        .write_parquet(dir_s)
        .expect_err("a path the writing node does not share");
    match &err {
        rayforge_data::Error::PathNotShared { node, path, .. } => {
            assert_eq!((node.as_str(), path.as_str()), (private.as_str(), dir_s), "{err}");
        }
        other => panic!("expected PathNotShared, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&private) && message.contains(dir_s), "{message}");
    // Nothing was committed, and the driver's marker is gone.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
