//! The storage layer across processes: the cluster's own store between a
//! private-disk node and the driver (with its size budget); S3 against a
//! real S3-compatible server (moto's server mode, from PyPI; set up by
//! scripts/s3-venv.sh), including the server cut off mid-upload; and Azure
//! Blob Storage against Azurite (npm, scripts/azurite.sh).

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
    rayforge_integration_tests::own_process!();
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

/// An object-store server (moto or Azurite) on a free
/// loopback port, killed when dropped.
struct StoreServer {
    child: std::process::Child,
    port: u16,
    /// The server's working directory (whatever it writes there goes).
    _data: tempfile::TempDir,
}

impl StoreServer {
    /// Starts the program `var` names with the arguments `args(port)`.
    /// `None` (the test skips) where the test script's set-up has not run;
    /// under CI the test script always sets it up, so there it is an error.
    fn start(var: &str, setup: &str, args: impl FnOnce(u16) -> Vec<String>) -> Option<StoreServer> {
        let Some(bin) = std::env::var_os(var) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "{var} is unset: scripts/test.sh sets it up through {setup}"
            );
            eprintln!("skipped: {var} is unset (run {setup})");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(bin)
            .args(args(port))
            .current_dir(data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {var}: {e}"));
        let server = StoreServer {
            child,
            port,
            _data: data,
        };
        assert!(
            wait_until(Duration::from_secs(60), || TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "{var} did not listen"
        );
        Some(server)
    }

    /// moto's S3 server.
    fn s3() -> Option<StoreServer> {
        StoreServer::start("RAYFORGE_MOTO_SERVER", "scripts/s3-venv.sh", |port| {
            vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()]
        })
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

impl Drop for StoreServer {
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

/// What every object store must do as local storage does, under `base`
/// (`scheme://bucket/exp1`, its bucket made): a file larger than one part
/// (a multipart upload), listing, download, checkpoints committed and read
/// back through a cold cache; and a bucket that does not exist refused
/// naming the URI.
fn holds_files_and_checkpoints(base: &str, missing_bucket: &str) {
    let s = StorageUri::from(base).open().unwrap();
    s.check_writable().unwrap();
    let dir = std::env::temp_dir().join(format!("rayforge-store-test-{}", std::process::id()));
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
    assert_eq!(s.read("data/small").unwrap().as_deref(), Some(&b"x"[..]));
    assert_eq!(s.read("data/none").unwrap(), None);
    s.delete("data/small").unwrap();
    assert_eq!(s.read("data/small").unwrap(), None);
    // Checkpoints: committed, listed, read back through a cold cache.
    let ckpts = CheckpointDir::new(s.join("run").unwrap());
    let mut w = CheckpointWriter::new().unwrap();
    w.write("model.bin", b"weights-1").unwrap();
    let c = ckpts.commit(w, 1, &Default::default(), "test").unwrap();
    assert_eq!(c.uri(), Some(format!("{base}/run/checkpoint_000001").as_str()));
    std::fs::remove_dir_all(c.path()).unwrap();
    let latest = ckpts.latest().unwrap().unwrap().to_local().unwrap();
    assert_eq!(latest.read("model.bin").unwrap(), b"weights-1");
    // Unknown buckets are refused before a run.
    let err = StorageUri::from(missing_bucket)
        .open()
        .unwrap()
        .check_writable()
        .unwrap_err();
    assert!(err.to_string().contains(missing_bucket), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn s3_holds_files_and_checkpoints_as_local_storage_does() {
    rayforge_integration_tests::own_process!();
    let Some(server) = StoreServer::s3() else { return };
    server.create_bucket("runs");
    s3_env(server.port);
    holds_files_and_checkpoints("s3://runs/exp1", "s3://no-such-bucket/x");
}

/// Azure Blob Storage through Azurite (npm), with the emulator's
/// well-known account, as `AZURE_STORAGE_USE_EMULATOR` selects it.
#[test]
fn azure_holds_files_and_checkpoints_as_local_storage_does() {
    rayforge_integration_tests::own_process!();
    let Some(server) = StoreServer::start("RAYFORGE_AZURITE", "scripts/azurite.sh", |port| {
        [
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            &port.to_string(),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--silent",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }) else {
        return;
    };
    azure::create_container(server.port, "runs");
    std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", format!("http://127.0.0.1:{}", server.port));
    holds_files_and_checkpoints("az://runs/exp1", "az://no-such-container/x");
}

/// Creating a container in Azurite: object_store reads and writes blobs
/// but makes no containers, and Azurite takes only signed requests.
mod azure {
    use base64::Engine;
    use hmac::Mac;

    /// Azurite's account and its published key (the emulator's, not a
    /// secret).
    const ACCOUNT: &str = "devstoreaccount1";
    const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    /// `PUT /{account}/{name}?restype=container`, signed with the
    /// account's shared key.
    pub(super) fn create_container(port: u16, name: &str) {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let version = "2021-08-06";
        // Verb, then eleven standard headers (all empty here), then the
        // x-ms- headers and the resource, as the Blob service signs them.
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD.decode(KEY).unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let auth = format!("SharedKey {ACCOUNT}:{signature}");
        let r = rayforge_integration_tests::http(
            &format!("127.0.0.1:{port}"),
            "PUT",
            &format!("/{ACCOUNT}/{name}?restype=container"),
            &[
                ("x-ms-date", date.as_str()),
                ("x-ms-version", version),
                ("Authorization", auth.as_str()),
            ],
            "",
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
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
    rayforge_integration_tests::own_process!();
    let Some(server) = StoreServer::s3() else { return };
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
    rayforge_integration_tests::own_process!();
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
/// and the path, rather than leave the part on that node's own disk; a
/// read of files there fails the same way.
#[test]
fn a_dataset_written_to_a_path_a_node_does_not_share_fails_naming_the_node() {
    rayforge_integration_tests::own_process!();
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

    // Reading files the driver sees but the node does not: the read task
    // names the node and the file, not a bare "not found".
    let csv = dir.join("points.csv");
    std::fs::write(&csv, "x,y\n1,2\n3,4\n").unwrap();
    let err = rayforge_data::read_csv(dir_s)
        .and_then(|ds| ds.count())
        .expect_err("a file the reading node does not see");
    match &err {
        rayforge_data::Error::PathNotShared { node, path, .. } => {
            assert_eq!(
                (node.as_str(), path.as_str()),
                (private.as_str(), csv.to_str().unwrap()),
                "{err}"
            );
        }
        other => panic!("expected PathNotShared, got {other:?}"),
    }
    assert!(
        err.to_string().contains("a file the driver listed for this read"),
        "{err}"
    );
}
