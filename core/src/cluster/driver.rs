//! A driver joining a cluster (`Config::address`): its binary shipped to the
//! head, its job registered, a node to attach to, and its workers' output
//! shown on its terminal as they print it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto::{self, control_service_client::ControlServiceClient};
use crate::rpc::Chan;
use crate::worker::{self, CoreWorker};

use super::*;

/// The job a driver runs in a cluster.
pub(crate) struct DriverJob {
    head: ControlServiceClient<Chan>,
    job_id: String,
    /// What this driver has shown of its workers' output.
    printed: Printed,
}

impl DriverJob {
    /// Shows what the job's workers printed that the driver has not shown
    /// yet, then marks the job finished at the head (its workers are then
    /// stopped).
    pub(crate) async fn finish(mut self, state: &str, message: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            show_rest_of_output(&mut self.head, &self.job_id, &self.printed),
        )
        .await;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.head.finish_job(proto::FinishJobRequest {
                job_id: self.job_id.clone(),
                state: state.into(),
                message: message.into(),
            }),
        )
        .await;
    }
}

/// Joins the cluster named in `cfg` as a driver: ships this program's
/// binary, registers a job, and attaches to a node on this machine.
pub(crate) async fn join_as_driver(
    cfg: &Config,
    handle: tokio::runtime::Handle,
) -> Result<(Arc<CoreWorker>, DriverJob)> {
    let address = cfg.address.as_deref().unwrap_or("auto");
    let (addr, token) = resolve(address, cfg.token.as_deref())?;
    if let Some(t) = &token {
        crate::rpc::set_token(t)?;
    }
    let mut head = crate::gcs::client(&addr)?;
    let nodes = ask_head(&addr, head.list_nodes(proto::ListNodesRequest {}))
        .await?
        .into_inner()
        .nodes;
    let here = crate::node::cluster::hostname();
    let mut local: Vec<&proto::NodeEntry> = nodes
        .iter()
        .filter(|n| n.alive && n.hostname == here && Path::new(&n.uds_path).exists())
        .filter(|n| cfg.node_id.as_ref().is_none_or(|want| &n.node_id == want))
        .collect();
    local.sort_by_key(|n| !n.is_head);
    let node = local.first().ok_or_else(|| {
        if let Some(want) = &cfg.node_id {
            return Error::NotFound(format!(
                "no alive node `{want}` of the cluster at {addr} runs on this machine"
            ));
        }
        Error::Runtime(format!(
            "the cluster at {addr} has no alive node on this machine to attach the driver to; start one \
             with `rayforge start --address {addr}`"
        ))
    })?;
    let exe = std::env::current_exe().map_err(|e| Error::io("locating the program's own binary", e))?;
    let hash = crate::gcs::upload_binary(&mut head, &exe).await?;
    let entrypoint = std::env::args().collect::<Vec<_>>().join(" ");
    let r = head
        .register_job(proto::JobInfo {
            binary_hash: hash,
            entrypoint,
            driver_pid: std::process::id(),
            driver_node: node.node_id.clone(),
            env: cfg.worker_env.clone(),
            // Started by a submitted job: take over its record.
            job_id: std::env::var(crate::jobs::ENV_SUBMISSION_ID).unwrap_or_default(),
            ..Default::default()
        })
        .await
        .map_err(|s| head_error(&addr, s))?
        .into_inner();
    if let Some(e) = r.error {
        return Err(Error::from_proto(&e));
    }
    let job_id = r.job_id;
    let bind_host = node
        .addr
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let my_addr = worker::executor::serve(Path::new(""), Some(&bind_host)).await?;
    let ch = crate::rpc::connect(&node.uds_path).await?;
    tracing::info!(job = %job_id, node = %node.node_id, "driver joined the cluster at {addr}");
    let cw = CoreWorker::new(
        crate::ids::new_worker_id(),
        my_addr,
        true,
        handle,
        crate::rpc::node_client(ch),
        worker::NodePlace {
            store_dir: PathBuf::from(&node.store_dir),
            node_addr: node.addr.clone(),
            job_id: job_id.clone(),
        },
        None,
    );
    let printed = Printed::default();
    cw.handle
        .spawn(show_worker_output(head.clone(), job_id.clone(), printed.clone()));
    Ok((cw, DriverJob { head, job_id, printed }))
}

/// What a driver has shown of its job's worker output: the last line
/// printed from each node (by node id), so following a node again after a
/// broken stream, or collecting the rest at the end, prints nothing twice.
type Printed = Arc<parking_lot::Mutex<HashMap<String, u64>>>;

/// Prints one line a worker printed, prefixed with its pid and node, unless
/// it was printed already.
fn show_line(printed: &Printed, node_id: &str, l: &proto::WorkerOutputLine) {
    use std::io::Write;
    {
        let mut p = printed.lock();
        let last = p.entry(node_id.to_string()).or_insert(0);
        if l.seq <= *last {
            return;
        }
        *last = l.seq;
    }
    let short = &node_id[..node_id.len().min(8)];
    let text = format!("(pid={}, node={short}) {}\n", l.pid, l.text);
    // A closed terminal is not the job's problem.
    let _ = if l.stderr {
        std::io::stderr().lock().write_all(text.as_bytes())
    } else {
        std::io::stdout().lock().write_all(text.as_bytes())
    };
}

/// Prints what the job's workers print, on every node, as the embedded
/// cluster does: each line prefixed with the worker's pid and node. Nodes
/// that join later are followed within a few seconds.
async fn show_worker_output(mut head: ControlServiceClient<Chan>, job: String, printed: Printed) {
    let following: Arc<parking_lot::Mutex<std::collections::HashSet<String>>> = Default::default();
    loop {
        if let Ok(r) = head.list_nodes(proto::ListNodesRequest {}).await {
            for n in r.into_inner().nodes.into_iter().filter(|n| n.alive) {
                if following.lock().insert(n.addr.clone()) {
                    tokio::spawn(follow_node_output(n, job.clone(), following.clone(), printed.clone()));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn follow_node_output(
    node: proto::NodeEntry,
    job: String,
    following: Arc<parking_lot::Mutex<std::collections::HashSet<String>>>,
    printed: Printed,
) {
    if let Ok(ch) = crate::rpc::channel(&node.addr) {
        let mut c = crate::rpc::node_client(ch);
        let after_seq = printed.lock().get(&node.node_id).copied().unwrap_or(0);
        if let Ok(r) = c
            .stream_worker_output(proto::StreamWorkerOutputRequest {
                job_id: job,
                after_seq,
                until_now: false,
            })
            .await
        {
            let mut lines = r.into_inner();
            while let Ok(Some(l)) = lines.message().await {
                show_line(&printed, &node.node_id, &l);
            }
        }
    }
    following.lock().remove(&node.addr);
}

/// Prints the job's worker output that the live streams have not brought
/// yet: a task's printed lines reach its node before its result reaches the
/// driver, but the stream to the driver can lag behind the result, and a
/// driver that exits at once would lose them.
async fn show_rest_of_output(head: &mut ControlServiceClient<Chan>, job: &str, printed: &Printed) {
    let Ok(r) = head.list_nodes(proto::ListNodesRequest {}).await else {
        return;
    };
    let each = r.into_inner().nodes.into_iter().filter(|n| n.alive).map(|n| {
        let job = job.to_string();
        let printed = printed.clone();
        async move {
            let Ok(ch) = crate::rpc::channel(&n.addr) else {
                return;
            };
            let after_seq = printed.lock().get(&n.node_id).copied().unwrap_or(0);
            let req = proto::StreamWorkerOutputRequest {
                job_id: job,
                after_seq,
                until_now: true,
            };
            if let Ok(r) = crate::rpc::node_client(ch).stream_worker_output(req).await {
                let mut lines = r.into_inner();
                while let Ok(Some(l)) = lines.message().await {
                    show_line(&printed, &n.node_id, &l);
                }
            }
        }
    });
    futures::future::join_all(each).await;
}
