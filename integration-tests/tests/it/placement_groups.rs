//! Placement groups on the embedded one-node cluster: bundles reserved and
//! used by tasks and actors, infeasible groups pending with the reason, and
//! removal ending what ran inside.

use std::collections::BTreeMap;
use std::time::Duration;

use rayforge::{placement_group, Config, Error, PlacementGroupState, PlacementStrategy};
use rayforge_integration_tests::{cluster_with, marker, wait_until};

use crate::tasks::pid;

pub(crate) fn cpu(n: f64) -> BTreeMap<String, f64> {
    [("CPU".to_string(), n)].into_iter().collect()
}

#[rayforge::remote]
fn block_until(path: String) -> u32 {
    let _ = std::fs::write(format!("{path}.started"), b"");
    while !std::path::Path::new(&path).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::id()
}

/// An actor holding a number.
#[rayforge::actor]
pub struct Holder {
    n: u32,
}

#[rayforge::actor]
impl Holder {
    fn new(n: u32) -> Self {
        Holder { n }
    }

    fn get(&self) -> u32 {
        self.n
    }
}

#[test]
fn groups_reserve_bundles_and_removal_ends_what_ran_inside() {
    rayforge_integration_tests::own_process!();
    cluster_with(|c: Config| c.num_cpus(3.0));

    let pg = placement_group(vec![cpu(1.0), cpu(2.0)], PlacementStrategy::Pack)
        .name("trainers")
        .create()
        .unwrap();
    assert!(pg.wait(Duration::from_secs(60)).unwrap(), "{:?}", pg.state());
    assert_eq!(pg.state().unwrap(), PlacementGroupState::Created);
    assert_eq!(rayforge::get_placement_group("trainers").unwrap(), pg);

    // Tasks in a bundle, in any bundle, and an actor in bundle 0.
    assert!(
        pid::options()
            .placement_group(&pg, Some(1))
            .num_cpus(2.0)
            .remote()
            .get()
            .unwrap()
            > 0
    );
    assert!(pid::options().placement_group(&pg, None).remote().get().unwrap() > 0);
    let h = Holder::options()
        .placement_group(&pg, Some(0))
        .num_cpus(1.0)
        .remote(7)
        .unwrap();
    assert_eq!(h.get().get().unwrap(), 7);
    // More than the bundle holds can never run there.
    let err = pid::options()
        .placement_group(&pg, Some(0))
        .num_cpus(2.0)
        .remote()
        .get()
        .unwrap_err();
    assert!(matches!(err, Error::Infeasible { .. }), "{err}");
    let err = pid::options().placement_group(&pg, Some(5)).remote().get().unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");

    // The node has 3 CPUs and the group holds all of them: a second group
    // waits, naming why; STRICT_SPREAD over two nodes can never be placed here.
    let waiting = placement_group(vec![cpu(1.0)], PlacementStrategy::Pack)
        .create()
        .unwrap();
    let w = waiting.wait(Duration::from_millis(300));
    assert!(matches!(w, Ok(false)), "{w:?} {:?}", waiting.state());
    match waiting.state().unwrap() {
        PlacementGroupState::Pending(why) => assert!(why.contains("waiting for resources"), "{why}"),
        other => panic!("{other:?}"),
    }
    let never = placement_group(vec![cpu(1.0), cpu(1.0)], PlacementStrategy::StrictSpread)
        .create()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || matches!(
            never.state().unwrap(),
            PlacementGroupState::Pending(ref why) if why.contains("infeasible") && why.contains("STRICT_SPREAD")
        )),
        "{:?}",
        never.state()
    );

    // Removal stops the task and the actor running inside, and frees the
    // CPUs for the waiting group.
    let gate = marker("pg-gate");
    let running = block_until::options()
        .placement_group(&pg, Some(1))
        .max_retries(0)
        .remote(gate.clone());
    assert!(
        wait_until(Duration::from_secs(60), || std::path::Path::new(&format!(
            "{gate}.started"
        ))
        .exists()),
        "never started"
    );
    rayforge::remove_placement_group(&pg).unwrap();
    assert_eq!(pg.state().unwrap(), PlacementGroupState::Removed);
    let err = running.get().unwrap_err();
    assert!(err.to_string().contains("placement group"), "{err}");
    let err = h.get().get().unwrap_err();
    assert!(
        matches!(err, Error::ActorDied { .. }) && err.to_string().contains("placement group"),
        "{err}"
    );
    assert!(waiting.wait(Duration::from_secs(60)).unwrap(), "{:?}", waiting.state());
    assert!(
        rayforge::get_placement_group("trainers").is_err(),
        "the name is released"
    );
    let _ = std::fs::write(&gate, b"");

    // Malformed groups are refused.
    let err = placement_group(vec![], PlacementStrategy::Pack).create().unwrap_err();
    assert!(err.to_string().contains("at least one bundle"), "{err}");
    let err = placement_group(vec![cpu(-1.0)], PlacementStrategy::Pack)
        .create()
        .unwrap_err();
    assert!(err.to_string().contains("bundle 0"), "{err}");
    let err = placement_group(vec![cpu(1.0)], PlacementStrategy::Pack)
        .name("dup")
        .create()
        .and_then(|_| {
            placement_group(vec![cpu(1.0)], PlacementStrategy::Pack)
                .name("dup")
                .create()
        })
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    rayforge::shutdown();
}
