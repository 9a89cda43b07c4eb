//! The driver on a real clock: two lanes on one lease with a 200 ms TTL. Every wait is bounded by a generous
//! timeout that only guards against hangs; nothing sleeps for a fixed time hoping things settle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem_cluster::{
    Config, DriverHandle, Epoch, FenceReason, FileLeaseStore, LaneId, LeaseDriver, LeaseStore,
    MemoryLeaseStore, Role, Timing, WriteGuard,
};
use tokio::sync::watch;

const GUARD: Duration = Duration::from_secs(10);

fn config(lane: &str) -> Config {
    Config::new(
        LaneId::new(lane).unwrap(),
        Timing::from_ttl(Duration::from_millis(200)),
    )
    .unwrap()
}

/// Stands in for the broker runtime: "recovers" at once whenever the lane becomes active.
fn spawn_lane(lane: &str, store: Arc<dyn LeaseStore>) -> DriverHandle {
    let handle = LeaseDriver::spawn(config(lane), store);
    let mut role = handle.role();
    let reporter = handle.recovery_reporter();
    tokio::spawn(async move {
        loop {
            let current = *role.borrow_and_update();
            if let Role::Active {
                epoch,
                serving: false,
            } = current
            {
                reporter.done(epoch).await;
            }
            if role.changed().await.is_err() {
                return;
            }
        }
    });
    handle
}

fn serving(role: Role) -> Option<Epoch> {
    match role {
        Role::Active {
            epoch,
            serving: true,
        } => Some(epoch),
        _ => None,
    }
}

/// Wait until `pred` holds for the pair of roles; fails the test after `GUARD`.
async fn until(
    a: &mut watch::Receiver<Role>,
    b: &mut watch::Receiver<Role>,
    what: &str,
    pred: impl Fn(Role, Role) -> bool,
) -> (Role, Role) {
    let wait = async {
        loop {
            let roles = (*a.borrow_and_update(), *b.borrow_and_update());
            if pred(roles.0, roles.1) {
                return roles;
            }
            tokio::select! {
                r = a.changed() => r.expect("driver a ended"),
                r = b.changed() => r.expect("driver b ended"),
            }
        }
    };
    match tokio::time::timeout(GUARD, wait).await {
        Ok(roles) => roles,
        Err(_) => panic!(
            "timed out waiting for {what}: a={:?} b={:?}",
            *a.borrow(),
            *b.borrow()
        ),
    }
}

async fn until_one(
    rx: &mut watch::Receiver<Role>,
    what: &str,
    pred: impl Fn(Role) -> bool,
) -> Role {
    let result = tokio::time::timeout(GUARD, rx.wait_for(|r| pred(*r)))
        .await
        .map(|r| r.map(|role| *role));
    match result {
        Ok(Ok(role)) => role,
        Ok(Err(_)) => panic!("driver ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}: {:?}", *rx.borrow()),
    }
}

/// Samples both guards at the same instant, as often as it can, until stopped; fails if both allow writing.
fn watch_guards(a: WriteGuard, b: WriteGuard) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let task = tokio::task::spawn_blocking(move || {
        let mut samples = 0;
        while !flag.load(Ordering::Relaxed) {
            let now = Instant::now();
            if let (Ok(ea), Ok(eb)) = (a.check_at(now), b.check_at(now)) {
                panic!("both lanes may write at once: a under {ea}, b under {eb}");
            }
            samples += 1;
            // A sampling interval, not a wait for anything: keeps the checker from eating a core.
            std::thread::sleep(Duration::from_millis(1));
        }
        samples
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_the_active_hands_over_to_the_dormant_on_a_shared_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = |_| -> Arc<dyn LeaseStore> { Arc::new(FileLeaseStore::open(dir.path()).unwrap()) };
    let a = spawn_lane("a", store(0));
    let b = spawn_lane("b", store(1));
    let (stop, sampler) = watch_guards(a.write_guard(), b.write_guard());
    let (mut ra, mut rb) = (a.role(), b.role());
    let (role_a, role_b) = until(
        &mut ra,
        &mut rb,
        "one lane serving, the other dormant",
        |x, y| {
            (serving(x).is_some() && y == Role::Dormant)
                || (serving(y).is_some() && x == Role::Dormant)
        },
    )
    .await;
    let (active, mut survivor_rx, survivor, first_epoch) = match (serving(role_a), serving(role_b))
    {
        (Some(e), _) => (a, rb, b, e),
        (_, Some(e)) => (b, ra, a, e),
        _ => unreachable!(),
    };
    let old_guard = active.write_guard();
    let crashed_at = Instant::now();
    active.abort();
    let role = until_one(&mut survivor_rx, "the survivor to serve", |r| {
        serving(r).is_some_and(|e| e > first_epoch)
    })
    .await;
    let took = crashed_at.elapsed();
    // The crashed lane's own deadline had passed before the survivor could start writing.
    assert!(old_guard.check().is_err());
    assert!(survivor.write_guard().check().is_ok());
    eprintln!("takeover after crash: {took:?} (ttl 200 ms), now {role:?}");
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    assert!(samples > 0);
    survivor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_revokes_at_once_and_the_other_lane_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_lane("a", Arc::new(FileLeaseStore::open(dir.path()).unwrap()));
    let mut ra = a.role();
    until_one(&mut ra, "a to serve", |r| serving(r).is_some()).await;
    // b starts after a serves, so a stays the active and b watches.
    let b = spawn_lane("b", Arc::new(FileLeaseStore::open(dir.path()).unwrap()));
    let mut rb = b.role();
    let guard_a = a.write_guard();
    a.shutdown().await;
    assert_eq!(*ra.borrow(), Role::Stopped);
    assert!(
        guard_a.check().is_err(),
        "shutdown returns only after the guard is revoked"
    );
    let role = until_one(&mut rb, "b to serve", |r| serving(r).is_some()).await;
    assert!(serving(role).unwrap() >= Epoch(2));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_renewals_fence_the_active_and_it_rejoins_as_dormant() {
    let store = MemoryLeaseStore::new();
    let store_b = store.new_handle();
    let a = spawn_lane("a", Arc::new(store.clone()));
    let mut ra = a.role();
    let first = until_one(&mut ra, "a to serve", |r| serving(r).is_some()).await;
    let b = spawn_lane("b", Arc::new(store_b));
    let mut rb = b.role();
    let (stop, sampler) = watch_guards(a.write_guard(), b.write_guard());

    store.faults().fail_renewals.store(true, Ordering::Relaxed);
    let fenced = until_one(&mut ra, "a to fence", |r| matches!(r, Role::Fenced { .. })).await;
    assert!(
        matches!(
            fenced,
            Role::Fenced {
                reason: FenceReason::LeaseExpired | FenceReason::NewerEpoch { .. },
                ..
            }
        ),
        "{fenced:?}"
    );
    let taken = until_one(&mut rb, "b to serve", |r| serving(r).is_some()).await;
    assert!(serving(taken) > serving(first));

    // The storage heals: a comes back as a watcher, never as the old epoch's holder.
    store.faults().fail_renewals.store(false, Ordering::Relaxed);
    let rejoined = until_one(&mut ra, "a to leave Fenced", |r| {
        !matches!(r, Role::Fenced { .. })
    })
    .await;
    match rejoined {
        Role::Dormant | Role::Acquiring { .. } => {}
        Role::Active { epoch, .. } => assert!(Some(epoch) > serving(taken), "{rejoined:?}"),
        Role::Fenced { .. } | Role::Stopped => unreachable!(),
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_call_cannot_delay_the_fence() {
    let store = MemoryLeaseStore::new();
    let a = spawn_lane("a", Arc::new(store.clone()));
    let mut ra = a.role();
    until_one(&mut ra, "a to serve", |r| serving(r).is_some()).await;
    let guard = a.write_guard();
    // Every store call now blocks for 1.5 s: far longer than the 160 ms write window.
    store.faults().delay_ms.store(1500, Ordering::Relaxed);
    let hung_at = Instant::now();
    until_one(&mut ra, "a to fence", |r| {
        matches!(
            r,
            Role::Fenced {
                reason: FenceReason::LeaseExpired,
                ..
            }
        )
    })
    .await;
    assert!(guard.check().is_err());
    assert!(
        hung_at.elapsed() < Duration::from_millis(1500),
        "fenced only after the hung call returned"
    );
    store.faults().delay_ms.store(0, Ordering::Relaxed);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_fences_and_stops_the_driver() {
    let store = MemoryLeaseStore::new();
    let a = spawn_lane("a", Arc::new(store.clone()));
    let mut ra = a.role();
    until_one(&mut ra, "a to serve", |r| serving(r).is_some()).await;
    let guard = a.write_guard();
    drop(a);
    until_one(&mut ra, "a to stop", |r| r == Role::Stopped).await;
    assert!(guard.check().is_err());
    // The lease itself is left to expire: a new lane on the same store takes over with a higher epoch.
    let b = spawn_lane("b", Arc::new(store.new_handle()));
    let mut rb = b.role();
    let role = until_one(&mut rb, "b to serve", |r| serving(r).is_some()).await;
    assert_eq!(serving(role), Some(Epoch(2)));
    b.shutdown().await;
}
