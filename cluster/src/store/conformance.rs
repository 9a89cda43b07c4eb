//! The conformance suite every [`LeaseStore`] must pass. `pair` makes two handles (lanes "a" and "b") on one fresh,
//! empty lease.

use std::sync::{Arc, Barrier};

use super::{LeaseError, LeaseStore};
use crate::{Epoch, LaneId};

fn lane(id: &str) -> LaneId {
    LaneId::new(id).unwrap()
}

/// Run every check, each on a fresh lease.
pub fn run_all<S: LeaseStore>(pair: impl Fn() -> (S, S)) {
    empty_store_reads_none(pair());
    claim_is_exclusive(pair());
    claims_are_dense(pair());
    heartbeat_is_visible_to_the_other_lane(pair());
    newest_epoch_is_found_from_any_hint(pair());
    superseded_holder_cannot_renew(pair());
    only_the_holder_renews(pair());
    garbage_collection_keeps_what_matters(pair());
    concurrent_claims_have_one_winner(pair);
}

fn empty_store_reads_none<S: LeaseStore>((a, b): (S, S)) {
    assert_eq!(a.read(None).unwrap(), None);
    assert_eq!(b.read(Some(Epoch(3))).unwrap(), None);
}

fn claim_is_exclusive<S: LeaseStore>((a, b): (S, S)) {
    a.claim(Epoch(1), &lane("a")).unwrap();
    assert!(matches!(
        b.claim(Epoch(1), &lane("b")),
        Err(LeaseError::Lost { epoch: Epoch(1) })
    ));
    // Not even the winner can claim it twice.
    assert!(matches!(
        a.claim(Epoch(1), &lane("a")),
        Err(LeaseError::Lost { .. })
    ));
    let view = b.read(None).unwrap().unwrap();
    assert_eq!(view.epoch, Epoch(1));
    assert_eq!(view.holder, Some(lane("a")));
    assert_eq!(view.heartbeat, 0);
}

fn claims_are_dense<S: LeaseStore>((a, b): (S, S)) {
    assert!(matches!(
        a.claim(Epoch(2), &lane("a")),
        Err(LeaseError::NotNext { .. })
    ));
    assert!(matches!(
        a.claim(Epoch(0), &lane("a")),
        Err(LeaseError::NotNext { .. })
    ));
    a.claim(Epoch(1), &lane("a")).unwrap();
    assert!(matches!(
        b.claim(Epoch(3), &lane("b")),
        Err(LeaseError::NotNext { .. })
    ));
    b.claim(Epoch(2), &lane("b")).unwrap();
    assert_eq!(a.read(None).unwrap().unwrap().epoch, Epoch(2));
}

fn heartbeat_is_visible_to_the_other_lane<S: LeaseStore>((a, b): (S, S)) {
    a.claim(Epoch(1), &lane("a")).unwrap();
    for counter in 1..=20 {
        a.renew(Epoch(1), &lane("a"), counter).unwrap();
        let view = b.read(Some(Epoch(1))).unwrap().unwrap();
        assert_eq!((view.epoch, view.heartbeat), (Epoch(1), counter));
        assert_eq!(view.holder, Some(lane("a")));
    }
}

fn newest_epoch_is_found_from_any_hint<S: LeaseStore>((a, b): (S, S)) {
    for e in 1..=6 {
        let (store, id) = if e % 2 == 1 { (&a, "a") } else { (&b, "b") };
        store.claim(Epoch(e), &lane(id)).unwrap();
    }
    b.renew(Epoch(6), &lane("b"), 9).unwrap();
    for hint in [
        None,
        Some(Epoch(1)),
        Some(Epoch(4)),
        Some(Epoch(6)),
        Some(Epoch(60)),
    ] {
        let view = a.read(hint).unwrap().unwrap();
        assert_eq!((view.epoch, view.heartbeat), (Epoch(6), 9), "hint {hint:?}");
        assert_eq!(view.holder, Some(lane("b")));
    }
}

fn superseded_holder_cannot_renew<S: LeaseStore>((a, b): (S, S)) {
    a.claim(Epoch(1), &lane("a")).unwrap();
    a.renew(Epoch(1), &lane("a"), 1).unwrap();
    b.claim(Epoch(2), &lane("b")).unwrap();
    match a.renew(Epoch(1), &lane("a"), 2) {
        Err(LeaseError::Superseded { epoch, newer }) => {
            assert_eq!((epoch, newer), (Epoch(1), Epoch(2)))
        }
        other => panic!("expected Superseded, got {other:?}"),
    }
    // The stale renewal did not change what readers see.
    let view = b.read(None).unwrap().unwrap();
    assert_eq!((view.epoch, view.heartbeat), (Epoch(2), 0));
    assert_eq!(view.holder, Some(lane("b")));
    // The newest epoch is reported even several claims later.
    b.claim(Epoch(3), &lane("b")).unwrap();
    assert!(matches!(
        a.renew(Epoch(1), &lane("a"), 3),
        Err(LeaseError::Superseded {
            newer: Epoch(3),
            ..
        })
    ));
}

fn only_the_holder_renews<S: LeaseStore>((a, b): (S, S)) {
    assert!(matches!(
        a.renew(Epoch(1), &lane("a"), 1),
        Err(LeaseError::NotHolder { .. })
    ));
    a.claim(Epoch(1), &lane("a")).unwrap();
    assert!(matches!(
        b.renew(Epoch(1), &lane("b"), 1),
        Err(LeaseError::NotHolder { .. })
    ));
    assert_eq!(a.read(None).unwrap().unwrap().heartbeat, 0);
}

fn garbage_collection_keeps_what_matters<S: LeaseStore>((a, b): (S, S)) {
    a.claim(Epoch(1), &lane("a")).unwrap();
    a.renew(Epoch(1), &lane("a"), 5).unwrap();
    b.claim(Epoch(2), &lane("b")).unwrap();
    b.renew(Epoch(2), &lane("b"), 7).unwrap();
    b.collect_garbage(Epoch(2)).unwrap();
    b.collect_garbage(Epoch(2)).unwrap(); // idempotent
    let view = a.read(None).unwrap().unwrap();
    assert_eq!((view.epoch, view.heartbeat), (Epoch(2), 7));
    // The old epoch still cannot be claimed again nor renewed.
    assert!(matches!(
        a.claim(Epoch(1), &lane("a")),
        Err(LeaseError::Lost { .. })
    ));
    assert!(matches!(
        a.renew(Epoch(1), &lane("a"), 6),
        Err(LeaseError::Superseded { .. })
    ));
}

fn concurrent_claims_have_one_winner<S: LeaseStore>(pair: impl Fn() -> (S, S)) {
    for round in 0..20 {
        let (a, b) = pair();
        let stores = [Arc::new(a), Arc::new(b)];
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let store = Arc::clone(&stores[i % 2]);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let me = lane(&format!("l{i}"));
                    barrier.wait();
                    store.claim(Epoch(1), &me).map(|()| me)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .filter(|r| r.is_err())
                .all(|r| matches!(r, Err(LeaseError::Lost { .. }))),
            "round {round}: {results:?}"
        );
        let view = stores[0].read(None).unwrap().unwrap();
        assert_eq!(view.holder.as_ref(), Some(winners[0]));
    }
}

#[test]
fn memory_store_conforms() {
    run_all(|| {
        let a = super::MemoryLeaseStore::new();
        let b = a.new_handle();
        (a, b)
    });
}

#[test]
fn file_store_conforms() {
    // Each pair gets its own directory; the TempDir values live until the suite ends.
    let dirs = std::sync::Mutex::new(Vec::new());
    run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let a = super::FileLeaseStore::open(dir.path()).unwrap();
        let b = super::FileLeaseStore::open(dir.path()).unwrap();
        dirs.lock().unwrap().push(dir);
        (a, b)
    });
}

#[test]
fn memory_store_faults_are_per_handle() {
    let a = super::MemoryLeaseStore::new();
    let b = a.new_handle();
    a.claim(Epoch(1), &lane("a")).unwrap();
    a.faults()
        .fail_renewals
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        a.renew(Epoch(1), &lane("a"), 1),
        Err(LeaseError::Injected { .. })
    ));
    assert_eq!(b.read(None).unwrap().unwrap().heartbeat, 0);
    b.faults()
        .fail_reads
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(b.read(None).is_err());
    assert!(a.read(None).is_ok());
}
