//! Calling actor methods.
//!
//! Each (caller process, actor) pair has one ordered stream to the actor's
//! process. A per-actor loop resolves each call's dependencies in order and
//! sends it; a reader completes calls as replies come. When the stream
//! breaks, the loop waits for the actor's next incarnation (or its death),
//! resends the calls that still have retries (`max_task_retries`) in their
//! original order, and fails the rest with the actor's death cause.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::Error;
use crate::ids::{ActorId, ObjectId, TaskId};
use crate::object_ref::RefHandle;
use crate::proto;

use super::submitter::{fail_returns, resolve_dependencies, store_returns};
use super::CoreWorker;

pub(crate) struct ActorCall {
    pub(crate) spec: proto::TaskSpec,
    pub(crate) retries_left: i32,
    pub(crate) pins: Vec<Arc<RefHandle>>,
}

impl ActorCall {
    fn return_ids(&self) -> Vec<ObjectId> {
        let t = TaskId::from_bytes(&self.spec.task_id).unwrap_or_default();
        (0..self.spec.num_returns).map(|i| t.return_id(i)).collect()
    }

    /// Fails the call's returns (or ends its stream with `e`); it is no
    /// longer waiting to be sent.
    fn fail(&self, cw: &CoreWorker, e: &Error) {
        cw.queued.remove(&self.spec.task_id);
        self.end(cw, Some(e));
    }

    /// The actor answered: the returns arrive, or the error fails them; a
    /// streaming call's items came before its answer, which ends the stream.
    fn answered(&self, cw: &CoreWorker, r: proto::PushTaskReply) {
        match r.error {
            Some(e) => self.end(cw, Some(&Error::from_proto(&e))),
            None if self.spec.streaming => self.end(cw, None),
            None => store_returns(cw, r.returns),
        }
    }

    fn end(&self, cw: &CoreWorker, e: Option<&Error>) {
        if self.spec.streaming {
            let tid = TaskId::from_bytes(&self.spec.task_id).unwrap_or_default();
            cw.generator_end(tid, e.map_or(Ok(()), |e| Err(e.clone())));
        } else if let Some(e) = e {
            fail_returns(cw, &self.return_ids(), e);
        }
    }
}

#[derive(Default)]
pub(crate) struct ActorCaller {
    channels: Mutex<HashMap<ActorId, mpsc::UnboundedSender<ActorCall>>>,
}

impl ActorCaller {
    /// Queues a call; calls from this process run in submission order.
    pub(crate) fn submit(cw: &Arc<CoreWorker>, actor: ActorId, call: ActorCall) {
        cw.queued.add(&call.spec, &Default::default(), true);
        let mut chans = cw.actors.channels.lock();
        let tx = chans.entry(actor).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let cw2 = cw.clone();
            cw.handle.spawn(actor_loop(cw2, actor, rx));
            tx
        });
        if let Err(mpsc::error::SendError(call)) = tx.send(call) {
            call.fail(cw, &Error::Internal("actor call loop stopped".into()));
        }
    }
}

type Inflight = Arc<Mutex<(HashMap<Vec<u8>, ActorCall>, Vec<Vec<u8>>)>>;

/// Asks the actor manager about `actor`: at once, or (`wait`) once it is
/// alive in an incarnation after `after`, or dead.
pub(crate) async fn actor_info(
    cw: &CoreWorker,
    actor: ActorId,
    wait: bool,
    after: u64,
) -> Result<proto::GetActorInfoReply, Error> {
    let r = cw
        .node
        .clone()
        .get_actor_info(proto::GetActorInfoRequest {
            actor_id: actor.0.to_vec(),
            name: String::new(),
            wait_alive: wait,
            after_incarnation: after,
        })
        .await
        .map_err(|s| Error::rpc("looking up an actor", s))?
        .into_inner();
    match r.error {
        Some(e) => Err(Error::from_proto(&e)),
        None => Ok(r),
    }
}

/// Why an actor whose connection broke is gone: the node's recorded cause
/// once it has marked the actor dead. The node may learn of the death a
/// moment after the caller does (its process is stopped, then reported),
/// so it is asked a few times over a second before the generic cause is
/// used; not at all when no call is waiting for the answer.
async fn death_cause(cw: &CoreWorker, actor: ActorId, nobody_waits: bool) -> String {
    let generic = "its process died while running this call (set max_task_retries to retry calls)";
    if nobody_waits {
        return generic.into();
    }
    for _ in 0..10 {
        match actor_info(cw, actor, false, 0).await {
            Ok(i) if i.state == proto::ActorState::Dead as i32 => return i.death_cause,
            Ok(i) if i.state == proto::ActorState::Alive as i32 => {}
            _ => return generic.into(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    generic.into()
}

async fn actor_loop(cw: Arc<CoreWorker>, actor: ActorId, mut rx: mpsc::UnboundedReceiver<ActorCall>) {
    let mut incarnation = 0u64;
    let mut resend: VecDeque<ActorCall> = VecDeque::new();
    loop {
        let info = actor_info(&cw, actor, true, incarnation).await;
        let info = match info {
            Ok(i) if i.state == proto::ActorState::Alive as i32 => i,
            other => {
                let err = match other {
                    Ok(i) => Error::ActorDied {
                        actor: i.class_name,
                        cause: i.death_cause,
                    },
                    Err(e) => Error::ActorDied {
                        actor: actor.to_string(),
                        cause: e.to_string(),
                    },
                };
                for c in resend.drain(..) {
                    c.fail(&cw, &err);
                }
                while let Some(c) = rx.recv().await {
                    c.fail(&cw, &err);
                }
                return;
            }
        };
        incarnation = info.incarnation;
        let inflight: Inflight = Arc::new(Mutex::new((HashMap::new(), Vec::new())));
        let (stx, srx) = mpsc::channel::<proto::PushTaskRequest>(256);
        let stream = match cw.peer(&info.addr) {
            Ok(mut c) => c
                .push_tasks(ReceiverStream::new(srx))
                .await
                .ok()
                .map(|r| r.into_inner()),
            Err(_) => None,
        };
        let Some(mut replies) = stream else {
            cw.forget_peer(&info.addr);
            continue;
        };
        let (broken_tx, mut broken_rx) = oneshot::channel::<()>();
        {
            let cw = cw.clone();
            let inflight = inflight.clone();
            cw.clone().handle.spawn(async move {
                while let Ok(Some(r)) = replies.message().await {
                    let call = {
                        let mut g = inflight.lock();
                        g.0.remove(&r.task_id)
                    };
                    let Some(call) = call else { continue };
                    call.answered(&cw, r);
                    drop(call.pins);
                }
                let _ = broken_tx.send(());
            });
        }
        // Send calls in order until the stream breaks.
        loop {
            let next = match resend.pop_front() {
                Some(c) => Some(c),
                None => tokio::select! {
                    c = rx.recv() => c,
                    _ = &mut broken_rx => break,
                },
            };
            let Some(mut call) = next else { return };
            let deps = tokio::select! {
                d = resolve_dependencies(&cw, &mut call.spec) => Some(d),
                _ = &mut broken_rx => None,
            };
            match deps {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    call.fail(&cw, &e);
                    continue;
                }
                None => {
                    resend.push_front(call);
                    break;
                }
            }
            let tid = call.spec.task_id.clone();
            let req = proto::PushTaskRequest {
                spec: Some(call.spec.clone()),
                skip_task_id: Vec::new(),
            };
            cw.queued.remove(&tid);
            {
                let mut g = inflight.lock();
                g.1.push(tid.clone());
                g.0.insert(tid, call);
            }
            if stx.send(req).await.is_err() {
                break;
            }
        }
        cw.forget_peer(&info.addr);
        // Calls without a reply: retry those with budget, fail the others.
        let (mut pending, order) = std::mem::take(&mut *inflight.lock());
        let cause = death_cause(&cw, actor, pending.is_empty()).await;
        let mut retry = Vec::new();
        for tid in order {
            let Some(mut c) = pending.remove(&tid) else { continue };
            if c.retries_left != 0 {
                if c.retries_left > 0 {
                    c.retries_left -= 1;
                }
                retry.push(c);
            } else {
                let err = Error::ActorDied {
                    actor: info.class_name.clone(),
                    cause: cause.clone(),
                };
                c.fail(&cw, &err);
            }
        }
        for c in retry.into_iter().rev() {
            resend.push_front(c);
        }
    }
}
