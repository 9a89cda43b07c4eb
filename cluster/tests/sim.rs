//! Seeded simulation of two (or more) lanes running the pure role machine against a shared in-memory lease,
//! with clock-rate drift, store latency, paused processes (SIGSTOP), crashes, restarts and failing renewals.
//!
//! Real time is simulated in microseconds. Each lane's monotonic clock runs at its own rate within the
//! configured drift bound, from an arbitrary origin. Store operations take effect at a random point after they
//! are issued and answer later; a paused lane's results wait until it resumes, but its in-flight operations still
//! land (like NFS writes already sent). A lane "writes the journal" every simulated millisecond while the machine
//! allows it, and each write lands up to `write_latency` later.
//!
//! The check (invariant 6): for epochs e < e', every write stamped e lands before the first write stamped e' is
//! issued, and each epoch is written by one lane only. On failure the seed is in the panic message; rerun one seed
//! with `SIM_SEED=<n> cargo test -p tandem-cluster --test sim`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_cluster::{
    Action, ClaimOutcome, Config, Epoch, Event, LaneId, LeaseError, LeaseStore, MemoryLeaseStore,
    RenewOutcome, Role, RoleMachine, Timing,
};

const MS: u64 = 1000; // microseconds

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

#[derive(Clone)]
struct Params {
    timing: Timing,
    lanes: usize,
    /// Clock rate of each lane, in ppm above (positive) or below real time; within the drift bound.
    rate_ppm: Vec<i64>,
    /// Issue -> effect, and effect -> answer, uniformly random up to these (µs).
    op_latency: (u64, u64),
    /// A journal write lands up to this long after it is issued (µs).
    write_latency: u64,
    /// Lane 0 runs alone for this long before the others start (µs), so it becomes the first active.
    head_start: u64,
    end: u64,
}

impl Params {
    fn new(ttl_ms: u64) -> Params {
        Params {
            timing: Timing::from_ttl(Duration::from_millis(ttl_ms)),
            lanes: 2,
            rate_ppm: vec![0, 0],
            op_latency: (2 * MS, 2 * MS),
            write_latency: 0,
            head_start: 0,
            end: 20_000 * MS,
        }
    }
}

enum Fault {
    Pause {
        lane: usize,
        for_us: u64,
    },
    FailRenewals {
        lane: usize,
        on: bool,
    },
    LoseRenewalReplies {
        lane: usize,
        on: bool,
    },
    Crash {
        lane: usize,
    },
    Restart {
        lane: usize,
    },
    Slow {
        lane: usize,
        op_latency: Option<(u64, u64)>,
    },
}

enum Pending {
    Apply {
        lane: usize,
        generation: u32,
        action: Action,
    },
    Deliver {
        lane: usize,
        generation: u32,
        event: Event,
    },
    Fault(Fault),
}

struct Lane {
    id: LaneId,
    store: MemoryLeaseStore,
    machine: Option<RoleMachine>,
    generation: u32,
    rate_ppm: i64,
    origin_us: u64,
    paused_until: u64,
    inbox: Vec<Event>,
    op_latency: Option<(u64, u64)>,
}

impl Lane {
    fn local(&self, real: u64) -> Duration {
        let scaled = (real as i128 * (1_000_000 + self.rate_ppm as i128) / 1_000_000) as u64;
        Duration::from_micros(self.origin_us + scaled)
    }
}

#[derive(Debug, Clone, Copy)]
struct Write {
    lane: usize,
    epoch: Epoch,
    issued: u64,
    landed: u64,
}

struct Outcome {
    writes: Vec<Write>,
    final_roles: Vec<Option<Role>>,
}

struct Sim {
    p: Params,
    rng: Rng,
    lanes: Vec<Lane>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    items: BTreeMap<u64, Pending>,
    seq: u64,
    writes: Vec<Write>,
}

impl Sim {
    fn new(p: Params, seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let store = MemoryLeaseStore::new();
        let lanes = (0..p.lanes)
            .map(|i| Lane {
                id: LaneId::new(format!("l{i}")).unwrap(),
                store: store.new_handle(),
                machine: None,
                generation: 0,
                rate_ppm: p.rate_ppm[i],
                // Arbitrary monotonic origins, up to ~11 days apart.
                origin_us: rng.below(1 << 40),
                paused_until: 0,
                inbox: Vec::new(),
                op_latency: None,
            })
            .collect();
        Sim {
            p,
            rng,
            lanes,
            queue: BinaryHeap::new(),
            items: BTreeMap::new(),
            seq: 0,
            writes: Vec::new(),
        }
    }

    fn at(&mut self, time: u64, item: Pending) {
        self.seq += 1;
        self.queue.push(Reverse((time, self.seq)));
        self.items.insert(self.seq, item);
    }

    fn start(&mut self, lane: usize, now: u64) {
        let l = &mut self.lanes[lane];
        l.generation += 1;
        l.inbox.clear();
        let cfg = Config::new(l.id.clone(), self.p.timing.clone()).unwrap();
        l.machine = Some(RoleMachine::new(cfg, l.local(now)));
    }

    fn run(mut self, faults: Vec<(u64, Fault)>) -> Outcome {
        for (t, f) in faults {
            self.at(t, Pending::Fault(f));
        }
        self.start(0, 0);
        let mut started_rest = self.p.lanes == 1;
        let mut now = 0;
        while now < self.p.end {
            if !started_rest && now >= self.p.head_start {
                for i in 1..self.p.lanes {
                    self.start(i, now);
                }
                started_rest = true;
            }
            while let Some(&Reverse((t, seq))) = self.queue.peek() {
                if t > now {
                    break;
                }
                self.queue.pop();
                let item = self.items.remove(&seq).unwrap();
                self.handle(now, item);
            }
            for i in 0..self.lanes.len() {
                self.run_lane(i, now);
            }
            now += MS;
        }
        let final_roles = self
            .lanes
            .iter()
            .map(|l| l.machine.as_ref().map(RoleMachine::role))
            .collect();
        Outcome {
            writes: self.writes,
            final_roles,
        }
    }

    fn handle(&mut self, now: u64, item: Pending) {
        match item {
            Pending::Apply {
                lane,
                generation,
                action,
            } => {
                let event = {
                    let l = &self.lanes[lane];
                    apply(&l.store, &l.id, action)
                };
                let (_, answer) = self.latency(lane);
                let delay = self.rng.below(answer + 1);
                self.at(
                    now + delay,
                    Pending::Deliver {
                        lane,
                        generation,
                        event,
                    },
                );
            }
            Pending::Deliver {
                lane,
                generation,
                event,
            } => {
                let l = &mut self.lanes[lane];
                if l.generation == generation && l.machine.is_some() {
                    l.inbox.push(event);
                }
            }
            Pending::Fault(f) => match f {
                Fault::Pause { lane, for_us } => self.lanes[lane].paused_until = now + for_us,
                Fault::FailRenewals { lane, on } => self.lanes[lane]
                    .store
                    .faults()
                    .fail_renewals
                    .store(on, Ordering::Relaxed),
                Fault::LoseRenewalReplies { lane, on } => self.lanes[lane]
                    .store
                    .faults()
                    .lose_renewal_replies
                    .store(on, Ordering::Relaxed),
                Fault::Crash { lane } => {
                    self.lanes[lane].machine = None;
                    self.lanes[lane].generation += 1;
                }
                Fault::Restart { lane } => {
                    if self.lanes[lane].machine.is_none() {
                        self.start(lane, now);
                    }
                }
                Fault::Slow { lane, op_latency } => self.lanes[lane].op_latency = op_latency,
            },
        }
    }

    fn latency(&self, lane: usize) -> (u64, u64) {
        self.lanes[lane].op_latency.unwrap_or(self.p.op_latency)
    }

    fn run_lane(&mut self, i: usize, now: u64) {
        if now < self.lanes[i].paused_until || self.lanes[i].machine.is_none() {
            return;
        }
        let local = self.lanes[i].local(now);
        // The journal checks the lease before anything else runs, e.g. first thing after a SIGSTOP ends: the
        // deadline alone must keep it safe.
        if let Some(epoch) = self.lanes[i].machine.as_ref().unwrap().may_write(local) {
            let landed = now + self.rng.below(self.p.write_latency + 1);
            self.writes.push(Write {
                lane: i,
                epoch,
                issued: now,
                landed,
            });
        }
        let mut events: Vec<Event> = std::mem::take(&mut self.lanes[i].inbox);
        events.push(Event::Tick);
        for event in events {
            let actions = self.lanes[i].machine.as_mut().unwrap().step(local, event);
            let generation = self.lanes[i].generation;
            for action in actions {
                match action {
                    Action::ReadLease { .. }
                    | Action::ClaimEpoch(_)
                    | Action::RenewHeartbeat { .. } => {
                        let (effect, _) = self.latency(i);
                        let delay = self.rng.below(effect + 1);
                        self.at(
                            now + delay,
                            Pending::Apply {
                                lane: i,
                                generation,
                                action,
                            },
                        );
                    }
                    Action::RecoverJournal { epoch } => {
                        let delay = self.rng.below(50 * MS);
                        let event = Event::RecoveryDone { epoch };
                        self.at(
                            now + delay,
                            Pending::Deliver {
                                lane: i,
                                generation,
                                event,
                            },
                        );
                    }
                    Action::CollectGarbage { current } => {
                        let _ = self.lanes[i].store.collect_garbage(current);
                    }
                    Action::OpenListeners { .. }
                    | Action::Fence { .. }
                    | Action::CloseListeners => {}
                }
            }
        }
    }
}

fn apply(store: &MemoryLeaseStore, lane: &LaneId, action: Action) -> Event {
    match action {
        Action::ReadLease { hint } => match store.read(hint) {
            Ok(view) => Event::LeaseObserved(view),
            Err(_) => Event::ReadFailed,
        },
        Action::ClaimEpoch(epoch) => Event::ClaimResult(match store.claim(epoch, lane) {
            Ok(()) => ClaimOutcome::Won(epoch),
            Err(LeaseError::Lost { .. }) => ClaimOutcome::Lost(epoch),
            Err(_) => ClaimOutcome::Failed,
        }),
        Action::RenewHeartbeat { epoch, counter } => Event::RenewResult {
            epoch,
            counter,
            outcome: match store.renew(epoch, lane, counter) {
                Ok(()) => RenewOutcome::Renewed,
                Err(LeaseError::Superseded { newer, .. }) => RenewOutcome::Superseded { newer },
                Err(_) => RenewOutcome::Failed,
            },
        },
        other => unreachable!("{other:?}"),
    }
}

/// Invariant 6 on the write log. Returns, per takeover, the gap between the old epoch's last landing and the new
/// epoch's first issue (µs).
fn check_writes(writes: &[Write], context: &str) -> Vec<i64> {
    let mut by_epoch: BTreeMap<Epoch, (usize, u64, u64, u64)> = BTreeMap::new(); // lane, first issue, last landing, count
    for w in writes {
        let e = by_epoch
            .entry(w.epoch)
            .or_insert((w.lane, w.issued, w.landed, 0));
        assert_eq!(
            e.0, w.lane,
            "{context}: epoch {} written by two lanes",
            w.epoch
        );
        e.1 = e.1.min(w.issued);
        e.2 = e.2.max(w.landed);
        e.3 += 1;
    }
    let epochs: Vec<_> = by_epoch.iter().collect();
    let mut gaps = Vec::new();
    for (i, (old, (_, _, old_last, _))) in epochs.iter().enumerate() {
        for (new, (_, new_first, _, _)) in &epochs[i + 1..] {
            assert!(
                old_last < new_first,
                "{context}: epoch {old} write landed at {old_last} µs, epoch {new} wrote from {new_first} µs"
            );
        }
        if let Some((_, (_, new_first, _, _))) = epochs.get(i + 1) {
            gaps.push(*new_first as i64 - *old_last as i64);
        }
    }
    gaps
}

fn random_faults(rng: &mut Rng, p: &Params) -> Vec<(u64, Fault)> {
    let mut faults = Vec::new();
    let ttl = p.timing.ttl.as_micros() as u64;
    let quiet_from = p.end - 8 * ttl; // the tail is fault-free so liveness can be checked
    let mut t = p.head_start + rng.below(2 * ttl);
    while t < quiet_from {
        let lane = rng.below(p.lanes as u64) as usize;
        match rng.below(6) {
            0 => faults.push((
                t,
                Fault::Pause {
                    lane,
                    for_us: rng.below(3 * ttl),
                },
            )),
            1 => {
                faults.push((t, Fault::FailRenewals { lane, on: true }));
                faults.push((
                    t + rng.below(2 * ttl),
                    Fault::FailRenewals { lane, on: false },
                ));
            }
            2 => {
                faults.push((t, Fault::Crash { lane }));
                faults.push((t + rng.below(3 * ttl), Fault::Restart { lane }));
            }
            3 => {
                // Mostly a slow disk; sometimes a hang (hard NFS mount) that outlives a fence, a rejoin and a claim.
                let worst = if rng.below(2) == 0 { ttl / 2 } else { 6 * ttl };
                let spike = (rng.below(worst), rng.below(worst));
                faults.push((
                    t,
                    Fault::Slow {
                        lane,
                        op_latency: Some(spike),
                    },
                ));
                faults.push((
                    t + rng.below(2 * ttl),
                    Fault::Slow {
                        lane,
                        op_latency: None,
                    },
                ));
            }
            4 => {
                faults.push((t, Fault::LoseRenewalReplies { lane, on: true }));
                faults.push((
                    t + rng.below(2 * ttl),
                    Fault::LoseRenewalReplies { lane, on: false },
                ));
            }
            _ => {}
        }
        t += rng.below(3 * ttl);
    }
    for lane in 0..p.lanes {
        faults.push((quiet_from, Fault::Restart { lane }));
        faults.push((quiet_from, Fault::FailRenewals { lane, on: false }));
        faults.push((quiet_from, Fault::LoseRenewalReplies { lane, on: false }));
        faults.push((
            quiet_from,
            Fault::Slow {
                lane,
                op_latency: None,
            },
        ));
    }
    faults
}

fn seeds() -> Vec<u64> {
    match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED must be a number")],
        Err(_) => (0..120).collect(),
    }
}

#[test]
fn timing_inequality_holds_in_the_worst_drift_case() {
    // The old active's clock runs slow and the dormant's fast, both at the drift bound; the old active's
    // renewals start failing at every phase offset of the dormant's poll cycle; journal writes take up to
    // 150 ms to land. The old epoch's last write must land before the new epoch's first write, with at least the
    // slack the argument predicts: ttl/(1+rho) - (ttl-margin)/(1-rho) - write_latency.
    let mut p = Params::new(1000);
    let drift = i64::from(p.timing.max_clock_drift_ppm);
    p.rate_ppm = vec![-drift, drift];
    p.op_latency = (0, 0);
    p.write_latency = 150 * MS;
    p.head_start = 500 * MS;
    p.end = 6000 * MS;
    let ttl = p.timing.ttl.as_micros() as f64;
    let margin = p.timing.safety_margin.as_micros() as f64;
    let rho = drift as f64 / 1e6;
    let predicted = ttl / (1.0 + rho) - (ttl - margin) / (1.0 - rho) - p.write_latency as f64;
    assert!(predicted > 0.0);
    let mut min_gap = i64::MAX;
    for phase in 0..250 {
        // Shift both the dormant's poll cycle (its start time) and the moment renewals begin to fail.
        let mut p = p.clone();
        p.head_start = 500 * MS + (phase % 125) * MS;
        let sim = Sim::new(p, phase);
        let fail_at = 2000 * MS + (phase * 7 % 250) * MS;
        let out = sim.run(vec![(fail_at, Fault::FailRenewals { lane: 0, on: true })]);
        let gaps = check_writes(&out.writes, &format!("phase {phase}"));
        assert_eq!(
            gaps.len(),
            1,
            "phase {phase}: exactly one takeover expected"
        );
        assert!(
            gaps[0] as f64 >= predicted - 1000.0,
            "phase {phase}: gap {} µs < {predicted}",
            gaps[0]
        );
        min_gap = min_gap.min(gaps[0]);
        assert!(matches!(
            out.final_roles[1],
            Some(Role::Active { serving: true, .. })
        ));
    }
    eprintln!(
        "worst-case gap between old epoch's last landing and new epoch's first write: {min_gap} µs"
    );
}

#[test]
fn a_paused_active_never_writes_after_the_takeover() {
    let mut p = Params::new(1000);
    p.head_start = 300 * MS;
    p.end = 12_000 * MS;
    for pause_ms in [700, 1000, 1500, 3000, 5000] {
        let sim = Sim::new(p.clone(), pause_ms);
        let out = sim.run(vec![(
            2000 * MS,
            Fault::Pause {
                lane: 0,
                for_us: pause_ms * MS,
            },
        )]);
        let gaps = check_writes(&out.writes, &format!("pause {pause_ms} ms"));
        if pause_ms >= 1500 {
            // Long enough for the other lane to take over; the woken lane fenced and now watches.
            assert_eq!(gaps.len(), 1, "pause {pause_ms} ms");
            assert!(matches!(
                out.final_roles[1],
                Some(Role::Active { serving: true, .. })
            ));
            assert_eq!(out.final_roles[0], Some(Role::Dormant));
            let woke = 2000 * MS + pause_ms * MS;
            assert!(!out.writes.iter().any(|w| w.lane == 0 && w.issued >= woke));
        }
    }
}

fn randomized(lanes: usize, seeds: Vec<u64>) {
    let (mut takeovers, mut runs) = (0, 0);
    for seed in seeds {
        let mut rng = Rng(seed ^ 0x5eed ^ ((lanes as u64) << 32));
        let mut p = Params::new(200);
        p.lanes = lanes;
        let drift = i64::from(p.timing.max_clock_drift_ppm);
        p.rate_ppm = (0..lanes)
            .map(|_| rng.below(2 * drift as u64 + 1) as i64 - drift)
            .collect();
        p.op_latency = (rng.below(20 * MS), rng.below(20 * MS));
        p.write_latency = rng.below(30 * MS);
        p.head_start = rng.below(300 * MS);
        p.end = 15_000 * MS;
        let faults = random_faults(&mut rng, &p);
        let out = Sim::new(p, seed).run(faults);
        let context = format!("{lanes} lanes, seed {seed} (rerun with SIM_SEED={seed})");
        takeovers += check_writes(&out.writes, &context).len();
        runs += 1;
        // After the fault-free tail, exactly one lane serves.
        let serving = out
            .final_roles
            .iter()
            .filter(|r| matches!(r, Some(Role::Active { serving: true, .. })))
            .count();
        assert_eq!(serving, 1, "{context}: final roles {:?}", out.final_roles);
    }
    eprintln!("{lanes} lanes: {runs} runs, {takeovers} takeovers checked");
    // The faults must actually cause failovers, or this test proves nothing.
    assert!(takeovers >= runs, "{takeovers} takeovers in {runs} runs");
}

#[test]
fn randomized_faults_never_overlap_writes_and_always_recover() {
    randomized(2, seeds());
}

#[test]
fn randomized_faults_with_three_lanes() {
    randomized(3, seeds().into_iter().take(40).collect());
}
