//! Scheduling strategies beyond the default (Ray's `scheduling_strategy`).
//!
//! By default a lease is granted by the node it was asked of while that node
//! has the resources, and spilled back to another node otherwise (see the
//! cluster module). A `SPREAD` lease goes round-robin over the nodes that
//! have the resources free; a node-affinity lease goes to the node it names,
//! or, when soft and that node cannot take it, falls back to the default.
//! The node first asked decides; the chosen node then grants or queues the
//! lease without redirecting it again.

use std::sync::atomic::Ordering;

use super::scheduler::{fits, infeasibility, Resources};
use super::NodeDaemon;
use crate::error::{Error, Result};
use crate::proto::{self, scheduling_strategy::Kind};

/// Where a lease under a strategy goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Grant or queue it on this node.
    Here,
    /// Redirect it to the node at this address.
    There(String),
    /// As if no strategy had been given.
    Default,
}

fn as_res(m: &std::collections::HashMap<String, f64>) -> Resources {
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

impl NodeDaemon {
    /// Where a lease for `res` under `strategy` goes; an error when a hard
    /// node affinity cannot be met.
    pub(crate) fn strategy_choice(
        &self,
        res: &Resources,
        strategy: &proto::SchedulingStrategy,
        display: &str,
    ) -> Result<Choice> {
        match &strategy.kind {
            None => Ok(Choice::Default),
            Some(Kind::Spread(_)) => Ok(self.spread_choice(res)),
            Some(Kind::NodeAffinity(a)) => self.affinity_choice(res, a, display),
        }
    }

    fn affinity_choice(&self, res: &Resources, a: &proto::NodeAffinity, display: &str) -> Result<Choice> {
        let refuse = |detail: String| -> Result<Choice> {
            if a.soft {
                Ok(Choice::Default)
            } else {
                Err(Error::Infeasible {
                    function: display.to_string(),
                    detail,
                })
            }
        };
        if a.node_id == self.state.node_id {
            let never = infeasibility(&self.state.sched.lock().total, res);
            return match never {
                None => Ok(Choice::Here),
                Some(why) => refuse(format!("its node affinity names node {} which lacks: {why}", a.node_id)),
            };
        }
        let entry = self
            .link()
            .and_then(|l| l.alive_nodes().into_iter().find(|n| n.node_id == a.node_id));
        match entry {
            None => refuse(format!(
                "its node affinity names node {}, which is not an alive node of this cluster",
                a.node_id
            )),
            Some(n) => match infeasibility(&as_res(&n.total), res) {
                None => Ok(Choice::There(n.addr)),
                Some(why) => refuse(format!("its node affinity names node {} which lacks: {why}", a.node_id)),
            },
        }
    }

    /// The next node, round-robin by node id, among those with the
    /// resources free now (or, when none is, those that could ever fit).
    fn spread_choice(&self, res: &Resources) -> Choice {
        let (own_free, own_feasible) = {
            let s = self.state.sched.lock();
            (fits(&s.available, res), infeasibility(&s.total, res).is_none())
        };
        // (node id, address, free now); this node's address is "".
        let mut nodes: Vec<(String, String, bool)> = Vec::new();
        if own_feasible {
            nodes.push((self.state.node_id.clone(), String::new(), own_free));
        }
        if let Some(link) = self.link() {
            for n in link.alive_nodes() {
                if n.node_id != self.state.node_id && infeasibility(&as_res(&n.total), res).is_none() {
                    let free = fits(&as_res(&n.available), res);
                    nodes.push((n.node_id, n.addr, free));
                }
            }
        }
        if nodes.iter().any(|n| n.2) {
            nodes.retain(|n| n.2);
        }
        if nodes.is_empty() {
            return Choice::Default;
        }
        nodes.sort();
        let i = self.state.spread_next.fetch_add(1, Ordering::Relaxed) % nodes.len();
        match &nodes[i] {
            (_, addr, _) if addr.is_empty() => Choice::Here,
            (_, addr, _) => Choice::There(addr.clone()),
        }
    }
}
