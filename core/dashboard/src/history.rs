//! The cluster's last hour for the overview's charts: a ring buffer the
//! head fills every few seconds (no Prometheus server needed). The same
//! figures are on every node's `/metrics` for those who have one:
//! `ray_resources{Name="CPU"}`, `ray_node_mem_used` / `ray_node_mem_capacity`,
//! `ray_object_store_memory` / `ray_object_store_available_memory`,
//! `ray_tasks{State="RUNNING"}` and, on the head, `ray_actors`.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use parking_lot::Mutex;
use serde::Serialize;

use crate::Dash;

/// How often the head samples the cluster.
pub(crate) const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: an hour's.
const CAP: usize = 720;

/// One sample of the cluster.
#[derive(Debug, Clone, Default, Serialize)]
struct Sample {
    t_ms: u64,
    cpu_used: f64,
    cpu_total: f64,
    memory_used_bytes: f64,
    memory_total_bytes: f64,
    store_used_bytes: f64,
    store_capacity_bytes: f64,
    running_tasks: f64,
    alive_actors: f64,
}

/// The ring buffer.
#[derive(Default)]
pub(crate) struct ClusterHistory {
    samples: Mutex<VecDeque<Sample>>,
}

impl ClusterHistory {
    fn push(&self, s: Sample) {
        let mut q = self.samples.lock();
        q.push_back(s);
        while q.len() > CAP {
            q.pop_front();
        }
    }

    /// `{"interval_s", "t": [unix ms], "series": {name: [..]}}`.
    fn to_json(&self) -> serde_json::Value {
        let q = self.samples.lock();
        let col = |f: fn(&Sample) -> f64| q.iter().map(f).collect::<Vec<_>>();
        serde_json::json!({
            "interval_s": INTERVAL.as_secs(),
            "t": q.iter().map(|s| s.t_ms).collect::<Vec<_>>(),
            "series": {
                "cpu_used": col(|s| s.cpu_used),
                "cpu_total": col(|s| s.cpu_total),
                "memory_used_bytes": col(|s| s.memory_used_bytes),
                "memory_total_bytes": col(|s| s.memory_total_bytes),
                "store_used_bytes": col(|s| s.store_used_bytes),
                "store_capacity_bytes": col(|s| s.store_capacity_bytes),
                "running_tasks": col(|s| s.running_tasks),
                "alive_actors": col(|s| s.alive_actors),
            },
        })
    }
}

/// Samples the cluster every [`INTERVAL`] while the dashboard lives.
pub(crate) fn start(dash: &Arc<Dash>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("the dashboard has no runtime to sample the cluster on: the overview draws no history");
        return;
    };
    let weak: Weak<Dash> = Arc::downgrade(dash);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(d) = weak.upgrade() else { return };
            match sample(&d).await {
                Ok(s) => d.history.push(s),
                Err(e) => tracing::debug!("sampling the cluster for its history: {}", e.1),
            }
        }
    });
}

async fn sample(d: &Dash) -> Result<Sample, crate::ApiError> {
    let (tasks, actors) = d
        .head(|h| {
            let tasks = h.tasks()?;
            let actors = h.actors()?;
            Ok((tasks, actors))
        })
        .await?;
    let views = d.node_views().await?;
    let mut s = Sample {
        t_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        running_tasks: tasks.items.iter().filter(|t| t.state == "RUNNING").count() as f64,
        alive_actors: actors.iter().filter(|a| a.state == "ALIVE").count() as f64,
        ..Sample::default()
    };
    for v in views.iter().filter(|v| v.status.alive) {
        let cpu = v.status.total.get("CPU").copied().unwrap_or(0.0);
        s.cpu_total += cpu;
        s.cpu_used += (cpu - v.status.available.get("CPU").copied().unwrap_or(0.0)).max(0.0);
        if let Some(st) = &v.stats {
            s.memory_used_bytes += st.mem_used_bytes as f64;
            s.memory_total_bytes += st.mem_total_bytes as f64;
            s.store_used_bytes += st.store_used_bytes as f64;
            s.store_capacity_bytes += st.store_capacity_bytes as f64;
        }
    }
    Ok(s)
}

/// `GET /api/v0/cluster/history`.
pub(crate) async fn endpoint(State(d): State<Arc<Dash>>) -> Json<serde_json::Value> {
    Json(d.history.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_hour_in_columns() {
        let h = ClusterHistory::default();
        for i in 0..(CAP as u64 + 10) {
            h.push(Sample {
                t_ms: i,
                cpu_used: i as f64,
                ..Sample::default()
            });
        }
        let j = h.to_json();
        let t = j["t"].as_array().unwrap();
        assert_eq!(t.len(), CAP);
        assert_eq!(t[0], 10);
        assert_eq!(j["series"]["cpu_used"].as_array().unwrap().len(), CAP);
        assert_eq!(j["series"]["cpu_used"][CAP - 1], (CAP + 9) as f64);
    }
}
