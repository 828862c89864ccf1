//! A small object store spills to disk instead of failing, restores on read,
//! and refuses objects larger than itself with a clear error.

use rayforge::{Buffer, Error};
use rayforge_integration_tests::cluster_with;

#[rayforge::remote]
fn checksum(b: Buffer<u8>) -> u64 {
    b.iter().map(|x| *x as u64).sum()
}

#[test]
fn full_store_spills_and_restores_and_oversized_objects_are_refused() {
    rayforge_integration_tests::own_process!();
    cluster_with(|c| c.object_store_memory(8 << 20));
    let refs: Vec<_> = (0..6u8)
        .map(|i| rayforge::put(Buffer::from(vec![i; 3 << 20])).unwrap())
        .collect();
    let s = rayforge::store_stats().unwrap();
    assert!(s.num_spilled >= 3, "expected spilling, got {s:?}");
    assert!(s.used_bytes <= 8 << 20, "{s:?}");
    for (i, r) in refs.iter().enumerate() {
        let b = r.get().unwrap();
        assert_eq!(b.len(), 3 << 20);
        assert!(b.iter().all(|x| *x == i as u8));
        assert_eq!(checksum::remote(r).get().unwrap(), (i as u64) * (3 << 20));
    }
    assert!(rayforge::store_stats().unwrap().restored_total > 0);
    let err = rayforge::put(Buffer::from(vec![0u8; 20 << 20])).unwrap_err();
    match &err {
        Error::ObjectStoreFull(m) => assert!(m.contains("capacity"), "{err}"),
        other => panic!("expected ObjectStoreFull, got {other:?}"),
    }
    // Still usable afterwards.
    assert_eq!(rayforge::put(5u8).unwrap().get().unwrap(), 5);
}
