//! The quorum store against the lease contract (the shared conformance suite, on a real three-member group over
//! loopback TCP), openraft's own storage suite, durability across restarts, and losing members.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, Vote};
use tokio::net::TcpListener;

use super::storage::{self, LogStore, StateMachine};
use super::*;
use crate::store::conformance;
use crate::{Config, LeaseDriver, Role};

fn lane(id: &str) -> LaneId {
    LaneId::new(id).unwrap()
}

/// Generous timing for tests that check the contract, not the speed: a loaded 2-core machine must not make an
/// operation time out.
fn patient() -> RaftTiming {
    RaftTiming {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(300),
        election_max: Duration::from_millis(600),
        rpc_timeout: Duration::from_secs(1),
        op_timeout: Duration::from_secs(10),
    }
}

/// Three members (a, b, w) on loopback, each with its own directory.
struct Group {
    dirs: Vec<tempfile::TempDir>,
    peers: Vec<(LaneId, String)>,
    members: Vec<Option<RaftMember>>,
    timing: RaftTiming,
}

const NAMES: [&str; 3] = ["a", "b", "w"];

impl Group {
    async fn start(timing: RaftTiming) -> Group {
        let mut listeners = Vec::new();
        for _ in NAMES {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let peers: Vec<_> = NAMES
            .iter()
            .zip(&listeners)
            .map(|(n, l)| (lane(n), l.local_addr().unwrap().to_string()))
            .collect();
        let dirs: Vec<_> = NAMES.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        let mut group = Group {
            dirs,
            peers,
            members: Vec::new(),
            timing,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let m = RaftMember::start_on(group.options(i), listener)
                .await
                .unwrap();
            group.members.push(Some(m));
        }
        group
    }

    fn options(&self, i: usize) -> RaftMemberOptions {
        RaftMemberOptions {
            id: lane(NAMES[i]),
            peers: self.peers.clone(),
            dir: self.dirs[i].path().to_path_buf(),
            timing: self.timing,
            witness: NAMES[i] == "w",
        }
    }

    /// Restart member `i` on its old address and directory.
    async fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} is running");
        let m = RaftMember::start(self.options(i), &self.peers[i].1)
            .await
            .unwrap();
        self.members[i] = Some(m);
    }

    fn member(&self, i: usize) -> &RaftMember {
        self.members[i].as_ref().unwrap()
    }

    async fn stop(&mut self, i: usize) {
        self.members[i].take().unwrap().shutdown().await;
    }

    async fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].is_some() {
                self.stop(i).await;
            }
        }
    }

    /// The index of the member every running member agrees leads, waiting (bounded) for one.
    async fn leader(&self) -> usize {
        let t0 = Instant::now();
        loop {
            let seen: Vec<Option<u64>> = self
                .members
                .iter()
                .flatten()
                .map(|m| m.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(id)) = seen.first()
                && seen.iter().all(|s| *s == Some(*id))
                && let Some(i) = self
                    .members
                    .iter()
                    .position(|m| m.as_ref().is_some_and(|m| m.node_id() == *id))
            {
                return i;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no agreed leader: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Run a blocking store call off the runtime, as the driver does.
async fn off<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[test]
fn raft_store_conforms() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Each pair is a fresh group; the previous one is stopped first (its checks have finished by then).
    let groups: std::sync::Mutex<Vec<Group>> = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let mut old = groups.lock().unwrap();
        for mut g in old.drain(..) {
            rt.block_on(g.stop_all());
        }
        let g = rt.block_on(Group::start(patient()));
        let _enter = rt.enter();
        // a initialises the group and is most likely the leader: b's calls are forwarded.
        let pair = (g.member(0).store(), g.member(1).store());
        old.push(g);
        pair
    });
    for mut g in groups.into_inner().unwrap() {
        rt.block_on(g.stop_all());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_alone_serve_every_operation_through_the_leader() {
    let mut g = Group::start(patient()).await;
    let leader = g.leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (x, y) = (
        g.member(followers[0]).store(),
        g.member(followers[1]).store(),
    );
    off(move || {
        x.claim(Epoch(1), &lane("a")).unwrap();
        x.renew(Epoch(1), &lane("a"), 3).unwrap();
        let v = y.read(None).unwrap().unwrap();
        assert_eq!((v.epoch, v.heartbeat), (Epoch(1), 3));
        assert!(matches!(
            y.claim(Epoch(1), &lane("b")),
            Err(LeaseError::Lost { .. })
        ));
    })
    .await;
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_keeps_the_lease_working() {
    let mut g = Group::start(patient()).await;
    let any = g.member(0).store();
    off(move || any.claim(Epoch(1), &lane("a")).unwrap()).await;
    let leader = g.leader().await;
    g.stop(leader).await;
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (x, y) = (g.member(rest[0]).store(), g.member(rest[1]).store());
    let t0 = Instant::now();
    off(move || {
        // The claim committed before the loss is there, and the survivors elect and go on.
        assert_eq!(x.read(None).unwrap().unwrap().epoch, Epoch(1));
        y.claim(Epoch(2), &lane("b")).unwrap();
        y.renew(Epoch(2), &lane("b"), 1).unwrap();
        assert!(matches!(
            x.renew(Epoch(1), &lane("a"), 9),
            Err(LeaseError::Superseded {
                newer: Epoch(2),
                ..
            })
        ));
    })
    .await;
    eprintln!("operations after the leader loss took {:?}", t0.elapsed());
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_every_operation_fails_within_its_timeout() {
    let mut timing = patient();
    timing.op_timeout = Duration::from_millis(500);
    let mut g = Group::start(timing).await;
    let s = g.member(0).store();
    let s2 = s.clone();
    // The first call may meet the bootstrap election; the timeout above is only for the no-majority checks.
    let t0 = Instant::now();
    while off({
        let s = s2.clone();
        move || s.claim(Epoch(1), &lane("a"))
    })
    .await
    .is_err()
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "group never formed");
    }
    g.stop(1).await;
    g.stop(2).await;
    for _ in 0..3 {
        let s = s.clone();
        let (elapsed, results) = off(move || {
            let t0 = Instant::now();
            let r = [
                s.read(None).map(|_| ()),
                s.renew(Epoch(1), &lane("a"), 1),
                s.claim(Epoch(2), &lane("a")),
            ];
            (t0.elapsed(), r)
        })
        .await;
        for r in &results {
            match r {
                Err(LeaseError::Unavailable { timeout_ms, .. }) => assert_eq!(*timeout_ms, 500),
                other => panic!("expected Unavailable, got {other:?}"),
            }
        }
        // Three calls of 500 ms each, plus scheduling slack on a loaded machine.
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        eprintln!("{}", results[0].as_ref().unwrap_err());
    }
    // A member coming back restores the majority, and the claim made before is still there.
    g.restart(1).await;
    let t0 = Instant::now();
    loop {
        let s = s.clone();
        match off(move || s.read(None)).await {
            Ok(v) => {
                assert_eq!(v.unwrap().epoch, Epoch(1));
                break;
            }
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(30), "{e}"),
        }
    }
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_group_keeps_its_lease_and_terms() {
    let mut g = Group::start(patient()).await;
    let s = g.member(1).store();
    off(move || {
        s.claim(Epoch(1), &lane("a")).unwrap();
        s.renew(Epoch(1), &lane("a"), 5).unwrap();
        s.claim(Epoch(2), &lane("b")).unwrap();
        s.renew(Epoch(2), &lane("b"), 7).unwrap();
    })
    .await;
    let terms: Vec<u64> = (0..3)
        .map(|i| g.member(i).metrics().borrow().current_term)
        .collect();
    g.stop_all().await;
    for i in 0..3 {
        g.restart(i).await;
    }
    for (i, before) in terms.into_iter().enumerate() {
        let term = g.member(i).metrics().borrow().current_term;
        assert!(term >= before, "member {i}: term {term} < {before}");
    }
    let s = g.member(2).store();
    off(move || {
        let v = s.read(None).unwrap().unwrap();
        assert_eq!((v.epoch, v.heartbeat), (Epoch(2), 7));
        assert_eq!(v.holder, Some(lane("b")));
        assert!(matches!(
            s.claim(Epoch(2), &lane("a")),
            Err(LeaseError::Lost { .. })
        ));
        s.claim(Epoch(3), &lane("a")).unwrap();
    })
    .await;
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_purges_keep_the_table() {
    // More entries than the snapshot policy's 500, so a snapshot is built and the log purged behind it; a member
    // restarted afterwards recovers from the snapshot plus the kept tail.
    let mut g = Group::start(patient()).await;
    let s = g.member(0).store();
    off(move || {
        s.claim(Epoch(1), &lane("a")).unwrap();
        for c in 1..=700 {
            s.renew(Epoch(1), &lane("a"), c).unwrap();
        }
    })
    .await;
    let t0 = Instant::now();
    while g.member(2).metrics().borrow().snapshot.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no snapshot built");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g.stop(2).await;
    g.restart(2).await;
    let s = g.member(2).store();
    off(move || {
        let v = s.read(None).unwrap().unwrap();
        assert_eq!((v.epoch, v.heartbeat), (Epoch(1), 700));
    })
    .await;
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_the_purged_log_catches_up_from_a_snapshot() {
    let mut g = Group::start(patient()).await;
    g.stop(2).await;
    let s = g.member(0).store();
    off(move || {
        s.claim(Epoch(1), &lane("a")).unwrap();
        for c in 1..=700 {
            s.renew(Epoch(1), &lane("a"), c).unwrap();
        }
    })
    .await;
    let leader = g.leader().await;
    let t0 = Instant::now();
    while g.member(leader).metrics().borrow().purged.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "log never purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Member 2's log ends before the purged point: only a snapshot sent over the network (the
    // full_snapshot RPC) can bring it up to date.
    g.restart(2).await;
    let t0 = Instant::now();
    loop {
        let newest = g.member(2).core.state.lock().table.newest();
        if newest.as_ref().is_some_and(|v| v.heartbeat == 700) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "member 2 never caught up: {newest:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(g.member(2).metrics().borrow().snapshot.is_some());
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_fences_when_its_majority_is_gone() {
    let ttl = Duration::from_secs(1);
    let mut g = Group::start(RaftTiming::from_lease_ttl(ttl)).await;
    let cfg = Config::new(lane("a"), RaftTiming::lease_timing(ttl)).unwrap();
    let driver = LeaseDriver::spawn(cfg, Arc::new(g.member(0).store()));
    let mut role = driver.role();
    let recovery = driver.recovery_reporter();
    let t0 = Instant::now();
    let epoch = loop {
        let r = *role.borrow_and_update();
        match r {
            Role::Active {
                epoch,
                serving: false,
            } => recovery.done(epoch).await,
            Role::Active { epoch, .. } => break epoch,
            _ => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never active: {r:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), role.changed()).await;
    };
    // Serving for a few renewals with all three up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(matches!(*role.borrow(), Role::Active { .. }));
    g.stop(1).await;
    g.stop(2).await;
    let lost = Instant::now();
    let guard = driver.write_guard();
    loop {
        if matches!(*role.borrow_and_update(), Role::Fenced { epoch: e, .. } if e == epoch) {
            break;
        }
        assert!(
            lost.elapsed() < Duration::from_secs(10),
            "still {:?} without a majority",
            *role.borrow()
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), role.changed()).await;
    }
    assert!(guard.check().is_err(), "a fenced lane may not write");
    eprintln!("fenced {:?} after losing the majority", lost.elapsed());
    driver.shutdown().await;
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_leads_when_the_only_live_lane_has_no_log() {
    // Lane b comes back with an empty raft directory while lane a is dead: b cannot win a vote (its log is
    // older than the witness's) and does not even know the membership, so only the witness can lead, and
    // must, to bring b up to date.
    let mut g = Group::start(patient()).await;
    let s = g.member(0).store();
    off(move || {
        s.claim(Epoch(1), &lane("a")).unwrap();
        s.renew(Epoch(1), &lane("a"), 4).unwrap();
    })
    .await;
    g.stop(1).await;
    g.dirs[1] = tempfile::tempdir().unwrap();
    g.stop(0).await;
    g.restart(1).await;
    let s = g.member(1).store();
    let t0 = Instant::now();
    let view = loop {
        let s = s.clone();
        match off(move || s.read(None)).await {
            Ok(v) => break v,
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(30), "{e}"),
        }
    };
    assert_eq!(view.map(|v| (v.epoch, v.heartbeat)), Some((Epoch(1), 4)));
    let leader = g.member(1).metrics().borrow().current_leader;
    assert_eq!(leader, Some(g.member(2).node_id()), "the witness leads");
    g.stop_all().await;
}

/// Drive lane `i`'s driver on member `i` until it is active and serving; returns its epoch.
async fn until_serving(driver: &crate::DriverHandle) -> Epoch {
    let mut role = driver.role();
    let recovery = driver.recovery_reporter();
    let t0 = Instant::now();
    loop {
        let r = *role.borrow_and_update();
        match r {
            Role::Active {
                epoch,
                serving: false,
            } => recovery.done(epoch).await,
            Role::Active { epoch, .. } => return epoch,
            _ => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never active: {r:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), role.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_rides_out_the_death_of_the_leader_member() {
    // The active lane's member is a follower; the leader (another lane's member) dies. The group elects a
    // new leader inside the active's write window, so it neither fences nor changes epoch.
    let ttl = Duration::from_secs(1);
    let mut g = Group::start(RaftTiming::from_lease_ttl(ttl)).await;
    let leader = g.leader().await;
    // The lane whose member follows (never the witness, index 2).
    let lane_idx = if leader == 0 { 1 } else { 0 };
    let cfg = Config::new(lane(NAMES[lane_idx]), RaftTiming::lease_timing(ttl)).unwrap();
    let driver = LeaseDriver::spawn(cfg, Arc::new(g.member(lane_idx).store()));
    let epoch = until_serving(&driver).await;
    let leader = g.leader().await;
    assert_ne!(leader, lane_idx, "the active's own member became leader");
    g.stop(leader).await;

    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            *driver.role().borrow(),
            Role::Active {
                epoch,
                serving: true
            },
            "the active lost the lease when the leader member died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    driver.shutdown().await;
    g.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dormant_takes_over_when_the_active_lane_and_its_member_die() {
    let ttl = Duration::from_secs(1);
    let mut g = Group::start(RaftTiming::from_lease_ttl(ttl)).await;
    let spawn = |i: usize| {
        let cfg = Config::new(lane(NAMES[i]), RaftTiming::lease_timing(ttl)).unwrap();
        LeaseDriver::spawn(cfg, Arc::new(g.member(i).store()))
    };
    let (a, b) = (spawn(0), spawn(1));
    let active = |d: &crate::DriverHandle| matches!(*d.role().borrow(), Role::Active { .. });
    let t0 = Instant::now();
    while !active(&a) && !active(&b) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "nobody became active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (dead, (alive_idx, alive)) = if active(&a) { (a, (1, b)) } else { (b, (0, a)) };
    let dead_idx = 1 - alive_idx;
    let Role::Active { epoch: old, .. } = *dead.role().borrow() else {
        unreachable!()
    };
    // A crash: the driver and its raft member vanish without a word.
    dead.abort();
    g.stop(dead_idx).await;
    let crashed = Instant::now();
    let recovery = alive.recovery_reporter();
    let mut role = alive.role();
    loop {
        let r = *role.borrow_and_update();
        match r {
            Role::Active { epoch, serving } => {
                assert!(epoch > old);
                if !serving {
                    recovery.done(epoch).await;
                }
                break;
            }
            _ => assert!(
                crashed.elapsed() < Duration::from_secs(15),
                "no takeover: {r:?}"
            ),
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), role.changed()).await;
    }
    eprintln!("takeover {:?} after the crash", crashed.elapsed());
    alive.shutdown().await;
    g.stop_all().await;
}

/// openraft's storage suite against our redb log store and state machine.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let (log, sm) = storage::open(dir.path()).unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn storage_passes_openraft_suite() {
    Suite::test_all(Builder).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_and_log_survive_reopening() {
    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, _sm) = storage::open(dir.path()).unwrap();
        log.save_vote(&Vote::new(7, 2)).await.unwrap();
        let entries: Vec<Entry<TypeConfig>> = (1..=3)
            .map(|i| Entry {
                log_id: LogId::new(CommittedLeaderId::new(7, 2), i),
                payload: EntryPayload::Normal(LeaseCommand::Collect { current: i }),
            })
            .collect();
        log.append_for_test(entries).await;
    }
    let (mut log, _sm) = storage::open(dir.path()).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(7, 2)));
    let got = log.try_get_log_entries(1..=3).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].log_id.index, 3);
}

#[test]
fn peers_parse_and_number_the_same_everywhere() {
    let peers = parse_peers("w=10.0.0.3:7100, a=10.0.0.1:7100,b=host-b:7100").unwrap();
    assert_eq!(peers.len(), 3);
    assert_eq!(peers[2], (lane("b"), "host-b:7100".to_string()));
    // Numbering depends on the ids only, not on the order they were listed in.
    let mut shuffled = peers.clone();
    shuffled.reverse();
    let ids: Vec<_> = node_ids(&peers).into_iter().collect();
    assert_eq!(ids, node_ids(&shuffled).into_iter().collect::<Vec<_>>());
    assert_eq!(ids[0].1.0, lane("a"));
    assert_eq!(ids[0].0, 1);
    for bad in [
        "",
        "a",
        "a=",
        "a=host",
        "a=host:port",
        "a=:7100",
        "a=h:70000",
        "a b=h:1",
        "a=h:1,a=h:2",
    ] {
        assert!(
            matches!(parse_peers(bad), Err(RaftStoreError::Peers { .. })),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test]
async fn a_member_missing_from_its_peers_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RaftMemberOptions {
        id: lane("c"),
        peers: parse_peers("a=127.0.0.1:1,b=127.0.0.1:2").unwrap(),
        dir: dir.path().to_path_buf(),
        timing: patient(),
        witness: false,
    };
    let err = RaftMember::start(opts, "127.0.0.1:0").await.unwrap_err();
    assert!(matches!(err, RaftStoreError::Peers { .. }), "{err}");
}
