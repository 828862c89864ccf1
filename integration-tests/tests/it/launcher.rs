//! The cluster launcher as a user runs it: `rayforge up cluster.yaml`,
//! programs submitted to the cluster, changes applied by running `up`
//! again, files copied both ways, and `rayforge down` leaving nothing
//! behind — with the local provider, and with the ssh provider against a
//! real sshd serving hosts that are network namespaces on this machine,
//! each with its own disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rayforge_integration_tests::{process_running, rayforge_bin, wait_until, workspace_bin};

/// Runs `rayforge ARGS` with the launcher's home in `home`.
fn rf(home: &Path, args: &[&str]) -> Output {
    Command::new(rayforge_bin())
        .args(args)
        .env("RAYFORGE_HOME", home)
        .env_remove("RAYFORGE_TOKEN")
        .env_remove("RAYFORGE_ADDRESS")
        .output()
        .expect("run rayforge")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    t
}

/// The pids a launcher ledger and the autoscaler's ledger under it name.
fn ledger_pids(home: &Path, cluster: &str) -> Vec<u32> {
    let path = home.join("clusters").join(format!("{cluster}.json"));
    let Ok(l) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let l: serde_json::Value = serde_json::from_str(&l).unwrap();
    let mut pids = vec![l["head_pid"].as_u64().unwrap() as u32];
    let dir = PathBuf::from(l["head_dir"].as_str().unwrap());
    if let Ok(n) = std::fs::read_to_string(dir.join("head/autoscaler/ledger.json")) {
        let n: Vec<serde_json::Value> = serde_json::from_str(&n).unwrap();
        pids.extend(n.iter().filter_map(|n| n["pid"].as_u64()).map(|p| p as u32));
    }
    pids
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn up_submit_apply_rsync_and_down_with_the_local_provider_leave_nothing_behind() {
    let base = std::env::temp_dir().join(format!("rf-launch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let home = base.join("home");
    let (port, jobs_port) = (free_port(), free_port());
    std::fs::write(base.join("hello.txt"), "hello from the laptop").unwrap();
    let yaml = |max: u32| {
        format!(
            "cluster_name: lc\nmax_workers: {max}\nidle_timeout_s: 3\nprovider:\n  type: local\n\
             head:\n  resources: {{CPU: 0}}\n  port: {port}\n  jobs_port: {jobs_port}\n\
             file_mounts:\n  data/hello.txt: {}\nsetup_commands:\n  - echo ready > setup.txt\n\
             available_node_types:\n  cpu2:\n    resources: {{CPU: 2}}\n    min_workers: 1\n    max_workers: {max}\n",
            base.join("hello.txt").display()
        )
    };
    let cfg = base.join("cluster.yaml");
    std::fs::write(&cfg, yaml(3)).unwrap();
    let cfg_s = cfg.to_str().unwrap();

    // A config with a mistake is refused before anything starts.
    let bad = base.join("bad.yaml");
    std::fs::write(&bad, yaml(3).replace("idle_timeout_s", "idle_timeout")).unwrap();
    let o = rf(&home, &["up", bad.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("idle_timeout"), "{}", text(&o));
    assert!(!home.join("clusters/lc.json").exists());

    // The head's port taken: refused before anything is created, naming it.
    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let o = rf(&home, &["up", cfg_s]);
    assert!(
        !o.status.success() && text(&o).contains(&format!("head.port {port} is in use")),
        "{}",
        text(&o)
    );
    assert!(!home.join("clusters/lc.json").exists() && !home.join("clusters/lc").exists());
    drop(taken);

    let _down = DownOnDrop(&home, cfg_s);
    let out = ok(rf(&home, &["up", cfg_s]));
    assert!(
        out.contains("cpu2 {CPU: 2}: 1 to 3 nodes") && out.contains("cluster lc is up"),
        "{out}"
    );
    let head_pid = ledger_pids(&home, "lc")[0];
    assert!(process_running(head_pid));

    // min_workers: one node joins; the file mount and setup command ran in
    // the cluster's directory.
    let mut status = String::new();
    assert!(
        wait_until(Duration::from_secs(120), || {
            status = text(&rf(&home, &["exec", cfg_s, "--", "rayforge", "status"]));
            status.contains("Nodes: 2 alive") && status.contains("idle")
        }),
        "{status}"
    );
    let files = ok(rf(&home, &["exec", cfg_s, "cat data/hello.txt setup.txt"]));
    assert!(
        files.contains("hello from the laptop") && files.contains("ready"),
        "{files}"
    );

    // A program submitted to the cluster: six one-CPU tasks on a head with
    // no CPUs grow it past its one node.
    let probe = workspace_bin("spread_probe", "rayforge-integration-tests");
    let out = ok(rf(&home, &["submit", cfg_s, probe.to_str().unwrap(), "6"]));
    assert!(out.contains("done 6"), "{out}");
    let nodes: BTreeSet<&str> = out.lines().filter_map(|l| l.strip_prefix("ran on ")).collect();
    assert!(!nodes.is_empty() && nodes.len() <= 3, "{out}");

    // Files both ways.
    ok(rf(
        &home,
        &["rsync-up", cfg_s, base.join("hello.txt").to_str().unwrap(), "up.txt"],
    ));
    let back = base.join("back.txt");
    ok(rf(&home, &["rsync-down", cfg_s, "up.txt", back.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "hello from the laptop");

    // `up` again with a new limit: applied without restarting the head.
    std::fs::write(&cfg, yaml(2)).unwrap();
    let out = ok(rf(&home, &["up", cfg_s]));
    assert!(out.contains("nothing was restarted"), "{out}");
    assert_eq!(ledger_pids(&home, "lc")[0], head_pid);
    let mut log = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            log = text(&rf(&home, &["monitor", cfg_s, "--no-follow", "--lines", "400"]));
            log.contains("max_workers 2")
        }),
        "{log}"
    );
    assert!(log.contains("launching"), "{log}");

    // Down: every process it or the autoscaler started, the cluster's
    // directory (pid files and sockets are under it) and the ledger go,
    // the ports are free; a second down finds nothing.
    let pids = ledger_pids(&home, "lc");
    assert!(pids.len() >= 2, "{pids:?}");
    let dir = home.join("clusters/lc");
    assert!(dir.join("tmp/rayforge/daemons").exists());
    let out = ok(rf(&home, &["down", cfg_s]));
    assert!(
        out.contains("removed head process") && out.contains("cluster lc is down"),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || pids.iter().all(|p| !process_running(*p))),
        "{pids:?} still run"
    );
    assert!(!dir.exists());
    assert!(!home.join("clusters/lc.json").exists());
    assert!(port_free(port) && port_free(jobs_port));
    let out = ok(rf(&home, &["down", cfg_s]));
    assert!(out.contains("nothing to remove"), "{out}");
    // Nothing runs on a cluster that is down.
    let o = rf(&home, &["exec", cfg_s, "true"]);
    assert!(!o.status.success() && text(&o).contains("is not up"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&base);
}

/// Runs `rayforge down` when dropped: a test that fails half-way leaves
/// no cluster running.
struct DownOnDrop<'a>(&'a Path, &'a str);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = rf(self.0, &["down", self.1]);
    }
}

/// Hosts for the ssh provider: network namespaces on a bridge, each
/// running Debian's sshd in a mount namespace of its own with a tmpfs over
/// `disk` (so each host has its own disk there). Removed when dropped.
struct SshHosts {
    tag: String,
    ips: Vec<String>,
    sshd: Vec<std::process::Child>,
    dir: PathBuf,
}

fn sh(script: &str) -> Output {
    Command::new("sh").args(["-c", script]).output().expect("sh")
}

fn must(script: &str) {
    let o = sh(script);
    assert!(o.status.success(), "`{script}` failed: {}", text(&o));
}

impl SshHosts {
    /// `n` hosts, or `None` (and why) where this machine cannot make them.
    fn start(n: usize, dir: &Path) -> Result<SshHosts, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root (network namespaces need it)".into());
        }
        if !Path::new("/usr/sbin/sshd").exists() {
            return Err("no /usr/sbin/sshd (Debian: openssh-server)".into());
        }
        if !sh("ip netns list").status.success() {
            return Err("`ip netns` does not work here".into());
        }
        let pid = std::process::id();
        let tag = format!("rf{}", pid % 100_000);
        let net = format!("10.{}.{}", 100 + (pid / 250) % 100, pid % 250);
        std::fs::create_dir_all(dir.join("disk")).unwrap();
        let d = dir.display();
        must(&format!(
            "ssh-keygen -q -t ed25519 -N '' -f {d}/key && ssh-keygen -q -t ed25519 -N '' -f {d}/hostkey && \
             cp {d}/key.pub {d}/authorized_keys && chmod 600 {d}/authorized_keys && mkdir -p /run/sshd"
        ));
        must(&format!(
            "ip link add {tag}br type bridge && ip addr add {net}.1/24 dev {tag}br && ip link set {tag}br up"
        ));
        let mut hosts = SshHosts {
            tag: tag.clone(),
            ips: Vec::new(),
            sshd: Vec::new(),
            dir: dir.to_path_buf(),
        };
        for i in 0..n {
            let (ns, ip) = (format!("{tag}n{i}"), format!("{net}.{}", i + 2));
            must(&format!(
                "ip netns add {ns} && ip link add {tag}v{i} type veth peer name eth0 netns {ns} && \
                 ip link set {tag}v{i} master {tag}br && ip link set {tag}v{i} up && \
                 ip netns exec {ns} ip link set lo up && ip netns exec {ns} ip addr add {ip}/24 dev eth0 && \
                 ip netns exec {ns} ip link set eth0 up"
            ));
            let cfg = dir.join(format!("sshd{i}.conf"));
            std::fs::write(
                &cfg,
                format!(
                    "ListenAddress {ip}\nPort 22\nHostKey {d}/hostkey\nAuthorizedKeysFile {d}/authorized_keys\n\
                     PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\n\
                     PidFile {d}/sshd{i}.pid\nSubsystem sftp /usr/lib/openssh/sftp-server\n"
                ),
            )
            .unwrap();
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                ])
                .arg(format!(
                    "mount -t tmpfs tmpfs {d}/disk && exec /usr/sbin/sshd -D -e -f {}",
                    cfg.display()
                ))
                .stderr(std::fs::File::create(dir.join(format!("sshd{i}.log"))).unwrap())
                .spawn()
                .expect("start sshd");
            hosts.sshd.push(child);
            hosts.ips.push(ip);
        }
        // Each answers over SSH.
        for ip in &hosts.ips {
            let up = wait_until(Duration::from_secs(30), || {
                sh(&format!(
                    "ssh -i {d}/key -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
                     -o LogLevel=ERROR root@{ip} true"
                ))
                .status
                .success()
            });
            assert!(up, "sshd on {ip} does not answer");
        }
        Ok(hosts)
    }

    /// Runs `script` on host `i` over SSH; returns its output.
    fn run(&self, i: usize, script: &str) -> String {
        let o = sh(&format!(
            "ssh -i {}/key -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o LogLevel=ERROR root@{} {}",
            self.dir.display(),
            self.ips[i],
            rayforge::autoscaler::hosts::sh_quote(script)
        ));
        text(&o)
    }
}

impl Drop for SshHosts {
    fn drop(&mut self) {
        for c in &mut self.sshd {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..self.ips.len() {
            // Whatever still runs there (a test that failed half-way) goes
            // with its namespace.
            let ns = format!("{}n{i}", self.tag);
            let _ = sh(&format!(
                "ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}; ip link del {}v{i} 2>/dev/null",
                self.tag
            ));
        }
        let _ = sh(&format!("ip link del {}br", self.tag));
    }
}

#[test]
fn up_a_job_scale_up_and_down_with_the_ssh_provider_against_real_sshd() {
    let base = std::env::temp_dir().join(format!("rf-ssh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let hosts = match SshHosts::start(3, &base) {
        Ok(h) => h,
        Err(why) if std::env::var_os("RAYFORGE_REQUIRE_SSHD").is_none() => {
            eprintln!("skipped: {why}");
            return;
        }
        Err(why) => panic!("RAYFORGE_REQUIRE_SSHD is set, but {why}"),
    };
    let home = base.join("home");
    let remote = base.join("disk").join("rf");
    let cfg = base.join("cluster.yaml");
    std::fs::write(
        &cfg,
        format!(
            "cluster_name: sc\nmax_workers: 2\nidle_timeout_s: 3\n\
             provider:\n  type: ssh\n  head_ip: {}\n  worker_ips: [{}, {}]\n  ssh_user: root\n  \
             ssh_private_key: {}\n  remote_dir: {}\n\
             head:\n  resources: {{CPU: 0}}\n\
             setup_commands:\n  - hostname -I > where.txt\n\
             available_node_types:\n  cpu2:\n    resources: {{CPU: 2}}\n    max_workers: 2\n",
            hosts.ips[0],
            hosts.ips[1],
            hosts.ips[2],
            base.join("key").display(),
            remote.display()
        ),
    )
    .unwrap();
    let cfg_s = cfg.to_str().unwrap();

    // A host that does not answer: refused before anything is created.
    let unreachable = hosts.ips[0]
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.250"))
        .unwrap();
    let bad = base.join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace(&format!(", {}]", hosts.ips[2]), &format!(", {unreachable}]")),
    )
    .unwrap();
    let o = rf(&home, &["up", bad.to_str().unwrap()]);
    assert!(
        !o.status.success() && text(&o).contains(&format!("host {unreachable} is unreachable")),
        "{}",
        text(&o)
    );
    assert!(!home.join("clusters/sc.json").exists());
    assert!(hosts
        .run(0, &format!("test -e {} || echo none", remote.display()))
        .contains("none"));

    let _down = DownOnDrop(&home, cfg_s);
    let out = ok(rf(&home, &["up", cfg_s]));
    assert!(out.contains(&format!("checking {} over SSH", hosts.ips[2])), "{out}");
    assert!(out.contains("cluster sc is up"), "{out}");
    // The head's files are on the head's own disk, not this machine's.
    assert!(!remote.exists());
    assert!(hosts
        .run(0, &format!("cat {}/where.txt", remote.display()))
        .contains(&hosts.ips[0]));

    // A job on a head with no CPUs: the autoscaler starts nodes over SSH
    // on the worker hosts (copying the binary there), and the tasks run on
    // them.
    let probe = workspace_bin("spread_probe", "rayforge-integration-tests");
    let out = ok(rf(&home, &["submit", cfg_s, probe.to_str().unwrap(), "4"]));
    assert!(out.contains("done 4"), "{out}");
    let status = ok(rf(&home, &["exec", cfg_s, "rayforge status"]));
    let log = || text(&rf(&home, &["monitor", cfg_s, "--no-follow", "--lines", "60"]));
    assert!(
        status.contains("Autoscaler:") && status.contains("sc-cpu2-"),
        "{status}\n{}",
        log()
    );
    let on_workers: Vec<bool> = (1..3)
        .map(|i| {
            hosts
                .run(i, &format!("test -x {}/bin/rayforge && echo yes", remote.display()))
                .contains("yes")
        })
        .collect();
    assert!(
        on_workers.iter().any(|b| *b),
        "no worker host got a node: {on_workers:?}"
    );

    // Down: the nodes (their processes and directories) and the head go.
    let out = ok(rf(&home, &["down", cfg_s]));
    assert!(
        out.contains("removed head process") && out.contains("cluster sc is down"),
        "{out}"
    );
    for i in 0..3 {
        let left = hosts.run(i, &format!("ls {} 2>/dev/null; echo end", remote.display()));
        assert_eq!(left.trim(), "end", "host {i} keeps {left}");
    }
    let ps = sh(&format!(
        "ps -eo args | grep -F {} | grep -v grep || true",
        remote.display()
    ));
    assert_eq!(text(&ps).trim(), "", "processes of the cluster remain");
    let o = ok(rf(&home, &["down", cfg_s]));
    assert!(o.contains("nothing to remove"), "{o}");
    let _ = std::fs::remove_dir_all(&base);
}
