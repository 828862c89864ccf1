//! GPUs (CUDA_VISIBLE_DEVICES per task, fractions sharing a device),
//! per-task and per-actor environment variables, the runtime context, and
//! custom resources, on a node configured with 2 GPUs (it need not have
//! them) and 2 "TPU" units.

use std::time::Duration;

use rayforge::ActorHandleType;
use rayforge_integration_tests::cluster_with;

/// What a task or actor sees of where it runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct View {
    cuda: Option<String>,
    gpu_ids: Vec<u32>,
    rank: Option<String>,
    actor: Option<rayforge::ActorId>,
    has_task: bool,
    group: Option<String>,
    bundle: Option<usize>,
}

fn view() -> View {
    let ctx = rayforge::runtime_context().expect("runtime context");
    View {
        cuda: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        gpu_ids: ctx.gpu_ids,
        rank: std::env::var("RANK").ok(),
        actor: ctx.actor_id,
        has_task: ctx.task_id.is_some(),
        group: ctx.placement_group,
        bundle: ctx.bundle_index,
    }
}

/// Reports its view, holding its resources for a moment so that several
/// such tasks overlap.
#[rayforge::remote]
fn slow_view() -> View {
    std::thread::sleep(Duration::from_millis(300));
    view()
}

#[rayforge::remote]
fn quick_view() -> View {
    view()
}

/// An actor that reports its view.
#[rayforge::actor]
pub struct Viewer;

#[rayforge::actor]
impl Viewer {
    fn new() -> Self {
        Viewer
    }

    fn view(&self) -> View {
        view()
    }
}

/// Reports the GPUs this task was given, holding them for a moment so two
/// tasks overlap.
#[rayforge::remote]
fn visible_gpus() -> String {
    std::thread::sleep(Duration::from_millis(300));
    std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
}

#[rayforge::remote]
fn uses_tpu(x: u32) -> u32 {
    x + 1
}

#[test]
fn gpu_tasks_see_distinct_devices_and_custom_resources_schedule() {
    rayforge_integration_tests::own_process!();
    cluster_with(|c| c.num_gpus(2.0).resource("TPU", 2.0));
    let a = visible_gpus::options().num_gpus(1.0).remote();
    let b = visible_gpus::options().num_gpus(1.0).remote();
    let mut ids = vec![a.get().unwrap(), b.get().unwrap()];
    ids.sort();
    assert_eq!(ids, vec!["0".to_string(), "1".to_string()]);
    let both = visible_gpus::options().num_gpus(2.0).remote().get().unwrap();
    assert_eq!(both, "0,1");
    let refs: Vec<_> = (0..6u32)
        .map(|i| uses_tpu::options().resource("TPU", 1.0).remote(i))
        .collect();
    assert_eq!(rayforge::get_all(&refs).unwrap(), (1..=6).collect::<Vec<_>>());
    let res = rayforge::node_resources().unwrap();
    assert_eq!(res.total.get("TPU"), Some(&2.0));
    assert_eq!(res.total.get("GPU"), Some(&2.0));
    // One node: the cluster's totals are this node's.
    assert_eq!(rayforge::cluster_resources().unwrap().total, res.total);
}

#[test]
fn gpu_fractions_environment_and_runtime_context_reach_user_code() {
    rayforge_integration_tests::own_process!();
    cluster_with(|c| c.num_gpus(2.0));
    // Two halves share one device, and both know it.
    let a = slow_view::options().num_gpus(0.5).remote();
    let b = slow_view::options().num_gpus(0.5).remote();
    let (a, b) = (a.get().unwrap(), b.get().unwrap());
    assert_eq!(
        (a.cuda.as_deref(), b.cuda.as_deref()),
        (Some("0"), Some("0")),
        "{a:?} {b:?}"
    );
    assert_eq!((a.gpu_ids, b.gpu_ids), (vec![0], vec![0]));
    assert!(a.has_task && a.actor.is_none() && a.group.is_none());
    // Tasks that asked for no GPU, on the workers the GPU tasks used, see
    // none; a task's variables do not outlive it.
    let with_rank = quick_view::options().env("RANK", "3").remote().get().unwrap();
    assert_eq!(with_rank.rank.as_deref(), Some("3"));
    let plain: Vec<View> = rayforge::get_all(&(0..8).map(|_| quick_view::remote()).collect::<Vec<_>>()).unwrap();
    for v in &plain {
        assert_eq!((v.cuda.as_deref(), v.rank.as_deref()), (None, None), "{v:?}");
        assert!(v.gpu_ids.is_empty());
    }
    // An actor keeps its GPU, variables and identity in every call; with
    // half of device 0 held, a whole GPU is device 1, and another half
    // shares device 0.
    let half = Viewer::options().num_gpus(0.5).remote().unwrap();
    assert_eq!(half.view().get().unwrap().gpu_ids, vec![0]);
    let actor = Viewer::options().num_gpus(1.0).env("RANK", "1").remote().unwrap();
    let v = actor.view().get().unwrap();
    assert_eq!(v.rank.as_deref(), Some("1"));
    assert_eq!((v.cuda.as_deref(), &v.gpu_ids), (Some("1"), &vec![1]), "{v:?}");
    assert_eq!(v.actor, Some(actor.raw().id()));
    assert_eq!(actor.view().get().unwrap(), v, "the same in the next call");
    let other_half = Viewer::options().num_gpus(0.5).remote().unwrap();
    assert_eq!(other_half.view().get().unwrap().cuda.as_deref(), Some("0"));
    // A task in a placement group's bundle knows which.
    let bundle = [("CPU".to_string(), 1.0)].into_iter().collect();
    let pg = rayforge::placement_group(vec![bundle], rayforge::PlacementStrategy::Pack)
        .create()
        .unwrap();
    assert!(pg.wait(Duration::from_secs(60)).unwrap());
    let v = quick_view::options()
        .placement_group(&pg, Some(0))
        .remote()
        .get()
        .unwrap();
    assert_eq!((v.group.as_deref(), v.bundle), (Some(pg.id()), Some(0)));
    // The driver's own context.
    let ctx = rayforge::runtime_context().unwrap();
    assert!(ctx.is_driver && ctx.task_id.is_none() && ctx.actor_id.is_none());
    assert_eq!(ctx.node_ip, "127.0.0.1");
    assert_eq!(ctx.node_id, rayforge::node_id().unwrap());
}
