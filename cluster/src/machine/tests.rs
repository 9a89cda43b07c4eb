//! Unit tests of the role machine: time is driven directly, nothing sleeps.

use std::time::Duration;

use super::*;
use crate::{LaneId, LeaseStore, MemoryLeaseStore, Timing};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// TTL 1 s, renew 250 ms, poll 125 ms, margin 200 ms, rejoin 1 s.
fn config(lane: &str) -> Config {
    Config::new(LaneId::new(lane).unwrap(), Timing::from_ttl(ms(1000))).unwrap()
}

fn view(epoch: u64, holder: &str, heartbeat: u64) -> Option<LeaseView> {
    Some(LeaseView {
        epoch: Epoch(epoch),
        holder: Some(LaneId::new(holder).unwrap()),
        heartbeat,
    })
}

/// A machine that claimed epoch 1 on an empty store at `at` (issue and result at `at`), recovered and serving.
fn active(at: Duration) -> RoleMachine {
    let mut m = RoleMachine::new(config("a"), at);
    assert_eq!(
        m.step(at, Event::Tick),
        vec![Action::ReadLease { hint: None }]
    );
    let out = m.step(at, Event::LeaseObserved(None));
    assert_eq!(out, vec![Action::ClaimEpoch(Epoch(1))]);
    let out = m.step(at, Event::ClaimResult(ClaimOutcome::Won(Epoch(1))));
    assert_eq!(out[0], Action::RecoverJournal { epoch: Epoch(1) });
    let out = m.step(at, Event::RecoveryDone { epoch: Epoch(1) });
    assert_eq!(out, vec![Action::OpenListeners { epoch: Epoch(1) }]);
    m
}

/// The answer to the renewal in flight (or, when not active, to epoch 1's first renewal).
fn renew_result(m: &RoleMachine, outcome: RenewOutcome) -> Event {
    let (epoch, counter) = match &m.state {
        State::Active(h) => (h.epoch, h.counter),
        _ => (Epoch(1), 1),
    };
    Event::RenewResult {
        epoch,
        counter,
        outcome,
    }
}

fn claims(out: &[Action]) -> Vec<Epoch> {
    out.iter()
        .filter_map(|a| match a {
            Action::ClaimEpoch(e) => Some(*e),
            _ => None,
        })
        .collect()
}

/// Drive a dormant machine: answer every read after `latency` with `lease(issue_time)`. Returns the time of the
/// first claim, or `None` if none happens before `until`.
fn watch_until(
    m: &mut RoleMachine,
    latency: Duration,
    until: Duration,
    lease: impl Fn(Duration) -> Option<LeaseView>,
) -> Option<(Duration, Epoch)> {
    let mut now = Duration::ZERO;
    while now < until {
        let wake = m
            .next_wakeup()
            .expect("a dormant machine always has a next read");
        now = now.max(wake);
        let out = m.step(now, Event::Tick);
        if out.is_empty() {
            continue;
        }
        assert!(matches!(out[..], [Action::ReadLease { .. }]), "{out:?}");
        let issued = now;
        now += latency;
        let out = m.step(now, Event::LeaseObserved(lease(issued)));
        if let [epoch] = claims(&out)[..] {
            return Some((now, epoch));
        }
    }
    None
}

#[test]
fn empty_store_claims_epoch_one_recovers_then_serves_and_renews() {
    let mut m = RoleMachine::new(config("a"), ms(0));
    assert_eq!(m.role(), Role::Dormant);
    assert_eq!(
        m.step(ms(0), Event::Tick),
        vec![Action::ReadLease { hint: None }]
    );
    assert_eq!(
        m.step(ms(3), Event::LeaseObserved(None)),
        vec![Action::ClaimEpoch(Epoch(1))]
    );
    assert_eq!(m.role(), Role::Acquiring { epoch: Epoch(1) });
    assert_eq!(m.may_write(ms(4)), None);
    let out = m.step(ms(5), Event::ClaimResult(ClaimOutcome::Won(Epoch(1))));
    assert_eq!(
        out,
        vec![
            Action::RecoverJournal { epoch: Epoch(1) },
            Action::CollectGarbage { current: Epoch(1) }
        ]
    );
    assert_eq!(
        m.role(),
        Role::Active {
            epoch: Epoch(1),
            serving: false
        }
    );
    // The window counts from the claim's issue (3 ms), not its completion.
    assert_eq!(m.write_deadline(), Some((Epoch(1), ms(803))));
    assert_eq!(m.may_write(ms(6)), Some(Epoch(1)));
    assert_eq!(
        m.step(ms(50), Event::RecoveryDone { epoch: Epoch(1) }),
        vec![Action::OpenListeners { epoch: Epoch(1) }]
    );
    // Recovery reports for another epoch, or twice, do nothing.
    assert!(
        m.step(ms(51), Event::RecoveryDone { epoch: Epoch(1) })
            .is_empty()
    );
    assert_eq!(m.next_wakeup(), Some(ms(253)));
    assert!(m.step(ms(252), Event::Tick).is_empty());
    assert_eq!(
        m.step(ms(253), Event::Tick),
        vec![Action::RenewHeartbeat {
            epoch: Epoch(1),
            counter: 1
        }]
    );
    // One renewal in flight at a time.
    assert!(m.step(ms(400), Event::Tick).is_empty());
    assert!(
        m.step(ms(410), renew_result(&m, RenewOutcome::Renewed))
            .is_empty()
    );
    assert_eq!(m.write_deadline(), Some((Epoch(1), ms(1053))));
    assert_eq!(
        m.step(ms(503), Event::Tick),
        vec![Action::RenewHeartbeat {
            epoch: Epoch(1),
            counter: 2
        }]
    );
}

#[test]
fn takeover_only_after_a_read_issued_a_full_ttl_after_the_last_change() {
    let mut m = RoleMachine::new(config("b"), ms(0));
    // Heartbeat 3 is first seen at 5 ms (read issued at 0 with 5 ms latency) and never changes again.
    let (at, epoch) = watch_until(&mut m, ms(5), ms(10_000), |_| view(1, "a", 3)).unwrap();
    assert_eq!(epoch, Epoch(2));
    // Reads are issued every 125 ms: 1000 < 5 + 1000, so the deciding read is the one issued at 1125.
    assert_eq!(at, ms(1130));
    assert_eq!(m.role(), Role::Acquiring { epoch: Epoch(2) });
}

#[test]
fn no_takeover_while_the_heartbeat_moves_even_slowly() {
    for period in [250, 500, 900, 990] {
        let mut m = RoleMachine::new(config("b"), ms(0));
        let claimed = watch_until(&mut m, ms(7), ms(60_000), |t| {
            view(1, "a", t.as_millis() as u64 / period)
        });
        assert_eq!(claimed, None, "heartbeat period {period} ms");
    }
}

#[test]
fn a_new_epoch_or_holder_restarts_the_ttl() {
    let mut m = RoleMachine::new(config("b"), ms(0));
    let claimed = watch_until(&mut m, ms(1), ms(1900), |t| {
        if t < ms(900) {
            view(1, "a", 9)
        } else {
            view(2, "a", 0)
        }
    });
    assert_eq!(claimed, None);
    let (_, epoch) = watch_until(&mut m, ms(1), ms(10_000), |_| view(2, "a", 0)).unwrap();
    assert_eq!(epoch, Epoch(3));
}

#[test]
fn read_failures_never_count_towards_expiry() {
    let mut m = RoleMachine::new(config("b"), ms(0));
    m.step(ms(0), Event::Tick);
    m.step(ms(1), Event::LeaseObserved(view(1, "a", 4)));
    // Five seconds of failed reads: no claim.
    let mut now = ms(1);
    while now < ms(5000) {
        now = m.next_wakeup().unwrap();
        assert_eq!(
            m.step(now, Event::Tick),
            vec![Action::ReadLease {
                hint: Some(Epoch(1))
            }]
        );
        assert!(m.step(now + ms(2), Event::ReadFailed).is_empty());
    }
    // The first successful read issued after that still shows the value seen at 1 ms: that read decides.
    now = m.next_wakeup().unwrap();
    m.step(now, Event::Tick);
    assert_eq!(
        claims(&m.step(now + ms(2), Event::LeaseObserved(view(1, "a", 4)))),
        vec![Epoch(2)]
    );
}

#[test]
fn a_stale_read_showing_an_older_epoch_proves_nothing() {
    let mut m = RoleMachine::new(config("b"), ms(0));
    m.step(ms(0), Event::Tick);
    m.step(ms(1), Event::LeaseObserved(view(3, "a", 0)));
    // Reads now return epoch 2 (a lagging replica or cache) for a long time: never a claim, and in particular
    // never a claim of epoch 3.
    let claimed = watch_until(&mut m, ms(1), ms(10_000), |_| view(2, "a", 0));
    assert_eq!(claimed, None);
    let claimed = watch_until(&mut m, ms(1), ms(10_000), |_| None);
    assert_eq!(claimed, None);
}

#[test]
fn renew_failures_fence_exactly_at_ttl_minus_margin() {
    let mut m = active(ms(0));
    let mut fenced_at = None;
    for t in 1..2000 {
        let now = ms(t);
        let mut out = m.step(now, Event::Tick);
        if out
            .iter()
            .any(|a| matches!(a, Action::RenewHeartbeat { .. }))
        {
            assert!(fenced_at.is_none(), "renewal attempted after fencing");
            out.extend(m.step(now, renew_result(&m, RenewOutcome::Failed)));
        }
        if out.contains(&Action::Fence {
            epoch: Epoch(1),
            reason: FenceReason::LeaseExpired,
        }) {
            assert_eq!(out.last(), Some(&Action::CloseListeners));
            fenced_at = Some(now);
        }
        assert_eq!(m.may_write(now).is_some(), now < ms(800), "at {now:?}");
    }
    assert_eq!(fenced_at, Some(ms(800)));
}

#[test]
fn every_renew_attempt_writes_a_new_counter() {
    // A failed attempt may still have landed; a retry writing the same value would extend the deadline without
    // the dormant seeing any change.
    let mut m = active(ms(0));
    let mut counters = Vec::new();
    for t in 1..700 {
        for a in m.step(ms(t), Event::Tick) {
            if let Action::RenewHeartbeat { counter, .. } = a {
                counters.push(counter);
                m.step(ms(t), renew_result(&m, RenewOutcome::Failed));
            }
        }
    }
    assert!(counters.len() > 3, "{counters:?}");
    assert!(
        counters.windows(2).all(|w| w[1] == w[0] + 1),
        "{counters:?}"
    );
}

#[test]
fn renewal_extends_the_deadline_from_its_start_not_its_completion() {
    let mut m = active(ms(0));
    m.step(ms(250), Event::Tick);
    m.step(ms(700), renew_result(&m, RenewOutcome::Renewed));
    assert_eq!(m.write_deadline(), Some((Epoch(1), ms(1050))));
}

#[test]
fn a_renewal_that_completes_after_the_deadline_does_not_revive_the_lease() {
    let mut m = active(ms(0));
    m.step(ms(250), Event::Tick);
    let out = m.step(ms(800), renew_result(&m, RenewOutcome::Renewed));
    assert_eq!(
        out,
        vec![
            Action::Fence {
                epoch: Epoch(1),
                reason: FenceReason::LeaseExpired
            },
            Action::CloseListeners
        ]
    );
    assert_eq!(m.write_deadline(), None);
    assert!(matches!(m.role(), Role::Fenced { .. }));
}

#[test]
fn a_newer_epoch_fences_at_once_and_the_next_claim_is_above_it() {
    let mut m = active(ms(0));
    m.step(ms(250), Event::Tick);
    let out = m.step(
        ms(260),
        renew_result(&m, RenewOutcome::Superseded { newer: Epoch(5) }),
    );
    assert_eq!(
        out,
        vec![
            Action::Fence {
                epoch: Epoch(1),
                reason: FenceReason::NewerEpoch { newer: Epoch(5) }
            },
            Action::CloseListeners
        ]
    );
    assert_eq!(m.may_write(ms(261)), None);
    assert_eq!(m.highest_seen(), Some(Epoch(5)));
    // Fenced for `rejoin_after`, then dormant; if epoch 5's holder dies, the claim is epoch 6.
    assert!(m.step(ms(1259), Event::Tick).is_empty());
    assert_eq!(
        m.step(ms(1260), Event::Tick),
        vec![Action::ReadLease {
            hint: Some(Epoch(5))
        }]
    );
    m.step(ms(1261), Event::LeaseObserved(view(5, "b", 2)));
    let (_, epoch) = watch_until(&mut m, ms(1), ms(10_000), |_| view(5, "b", 2)).unwrap();
    assert_eq!(epoch, Epoch(6));
}

#[test]
fn after_fencing_the_old_epoch_is_never_active_again() {
    // Renewals fail (storage blip), the lane fences; the other lane is dead, so this lane takes over again, but
    // only by claiming epoch 2 after watching its own stale epoch 1 for a full TTL.
    let mut m = active(ms(0));
    let mut now = ms(0);
    while !matches!(m.role(), Role::Fenced { .. }) {
        now += ms(1);
        if !claims(&m.step(now, Event::Tick)).is_empty() {
            unreachable!()
        }
        m.step(now, renew_result(&m, RenewOutcome::Failed));
    }
    assert_eq!(now, ms(800));
    let mut saw_claim = None;
    while now < ms(5000) && saw_claim.is_none() {
        now += ms(1);
        for a in m.step(now, Event::Tick) {
            match a {
                Action::ReadLease { .. } => {
                    let out = m.step(now, Event::LeaseObserved(view(1, "a", 0)));
                    saw_claim = claims(&out).first().map(|e| (now, *e));
                }
                other => panic!("unexpected {other:?} at {now:?}"),
            }
        }
    }
    let (at, epoch) = saw_claim.unwrap();
    assert_eq!(epoch, Epoch(2));
    // Fenced at 800, rejoined at 1800, first saw the value then, claimed a TTL later.
    assert!(at >= ms(2800), "{at:?}");
    // A claim result naming another epoch is not trusted: back to watching, not active.
    m.step(at, Event::ClaimResult(ClaimOutcome::Won(Epoch(1))));
    assert_eq!(m.role(), Role::Dormant);
}

#[test]
fn a_paused_active_wakes_up_fenced_without_renewing_or_writing() {
    let mut m = active(ms(0));
    m.step(ms(250), Event::Tick);
    m.step(ms(260), renew_result(&m, RenewOutcome::Renewed));
    assert_eq!(m.write_deadline(), Some((Epoch(1), ms(1050))));
    m.step(ms(500), Event::Tick); // renewal 2 issued, then SIGSTOP for 5 s
    // Woken: the renewal's result is the first thing processed. It succeeded on the store (the other lane had not
    // claimed yet) but too late to count.
    let out = m.step(ms(5500), renew_result(&m, RenewOutcome::Renewed));
    assert_eq!(
        out,
        vec![
            Action::Fence {
                epoch: Epoch(1),
                reason: FenceReason::LeaseExpired
            },
            Action::CloseListeners
        ]
    );
    assert_eq!(m.may_write(ms(5500)), None);
    // Same pause, but a tick comes first: still no renewal is issued.
    let mut m = active(ms(0));
    let out = m.step(ms(5000), Event::Tick);
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::RenewHeartbeat { .. })),
        "{out:?}"
    );
    assert!(matches!(out[0], Action::Fence { .. }));
}

#[test]
fn a_claim_that_completes_too_late_fences_instead_of_recovering() {
    let mut m = RoleMachine::new(config("a"), ms(0));
    m.step(ms(0), Event::Tick);
    m.step(ms(0), Event::LeaseObserved(None));
    let out = m.step(ms(900), Event::ClaimResult(ClaimOutcome::Won(Epoch(1))));
    assert_eq!(
        out,
        vec![Action::Fence {
            epoch: Epoch(1),
            reason: FenceReason::ClaimTooSlow
        }]
    );
}

#[test]
fn lost_or_failed_claims_return_to_watching() {
    for (outcome, highest) in [
        (ClaimOutcome::Lost(Epoch(2)), Some(Epoch(2))),
        (ClaimOutcome::Failed, Some(Epoch(1))),
    ] {
        let mut m = RoleMachine::new(config("b"), ms(0));
        watch_until(&mut m, ms(1), ms(10_000), |_| view(1, "a", 0)).unwrap();
        let out = m.step(ms(2000), Event::ClaimResult(outcome));
        assert_eq!(out, vec![Action::ReadLease { hint: highest }]);
        assert_eq!(m.role(), Role::Dormant);
    }
}

#[test]
fn results_meant_for_another_role_are_ignored() {
    let mut m = RoleMachine::new(config("a"), ms(0));
    assert!(m.step(ms(0), renew_result(&m, RenewOutcome::Renewed)).len() == 1); // only the read
    assert!(
        m.step(ms(1), Event::ClaimResult(ClaimOutcome::Won(Epoch(1))))
            .is_empty()
    );
    assert_eq!(m.role(), Role::Dormant);
    let mut m = active(ms(0));
    assert!(m.step(ms(1), Event::LeaseObserved(None)).is_empty());
    assert!(
        m.step(ms(2), renew_result(&m, RenewOutcome::Renewed))
            .is_empty()
    );
    assert_eq!(m.write_deadline(), Some((Epoch(1), ms(800))));
}

#[test]
fn shutdown_fences_an_active_lane_and_stops() {
    let mut m = active(ms(0));
    let out = m.step(ms(10), Event::Shutdown);
    assert_eq!(
        out,
        vec![
            Action::Fence {
                epoch: Epoch(1),
                reason: FenceReason::Shutdown
            },
            Action::CloseListeners
        ]
    );
    assert_eq!(m.role(), Role::Stopped);
    assert_eq!(m.next_wakeup(), None);
    assert!(m.step(ms(5000), Event::Tick).is_empty());
}

#[test]
fn only_monotonic_deltas_matter_not_the_clock_origin() {
    // The same scenario with clock origins 0 and ~31 years: identical actions at identical offsets. Wall-clock
    // jumps never reach the machine at all; a monotonic origin is arbitrary.
    fn scenario(origin: Duration) -> Vec<(Duration, Vec<Action>)> {
        let mut trace = Vec::new();
        let mut a = RoleMachine::new(config("a"), origin);
        let mut b = RoleMachine::new(config("b"), origin);
        let store = MemoryLeaseStore::new();
        let lane_a = LaneId::new("a").unwrap();
        let lane_b = LaneId::new("b").unwrap();
        for t in (0..6000).step_by(5) {
            let now = origin + ms(t);
            for (m, lane, alive) in [(&mut a, &lane_a, t < 2000), (&mut b, &lane_b, true)] {
                if !alive {
                    continue;
                }
                let mut queue = m.step(now, Event::Tick);
                while let Some(action) = queue.first().cloned() {
                    queue.remove(0);
                    trace.push((now - origin, vec![action.clone()]));
                    let event = match action {
                        Action::ReadLease { hint } => {
                            Event::LeaseObserved(store.read(hint).unwrap())
                        }
                        Action::ClaimEpoch(e) => Event::ClaimResult(match store.claim(e, lane) {
                            Ok(()) => ClaimOutcome::Won(e),
                            Err(_) => ClaimOutcome::Lost(e),
                        }),
                        Action::RenewHeartbeat { epoch, counter } => Event::RenewResult {
                            epoch,
                            counter,
                            outcome: match store.renew(epoch, lane, counter) {
                                Ok(()) => RenewOutcome::Renewed,
                                Err(_) => RenewOutcome::Failed,
                            },
                        },
                        Action::RecoverJournal { epoch } => Event::RecoveryDone { epoch },
                        _ => continue,
                    };
                    queue.extend(m.step(now, event));
                }
            }
        }
        trace
    }
    let base = scenario(Duration::ZERO);
    assert_eq!(base, scenario(Duration::from_secs(1_000_000_000)));
    // And the scenario did fail over: b claimed epoch 2 after a stopped at 2 s.
    let claim_2 = base
        .iter()
        .find(|(_, a)| a == &vec![Action::ClaimEpoch(Epoch(2))])
        .unwrap();
    assert!(claim_2.0 > ms(2000) && claim_2.0 < ms(3500), "{claim_2:?}");
}

#[test]
fn two_lanes_racing_for_the_same_epoch_exactly_one_wins() {
    // Both lanes watched epoch 1 go silent and claim epoch 2 at the same instant on a shared store.
    let store = MemoryLeaseStore::new();
    let a_id = LaneId::new("a").unwrap();
    store.claim(Epoch(1), &a_id).unwrap();
    let mut lanes: Vec<_> = ["b", "c"]
        .iter()
        .map(|id| {
            (
                RoleMachine::new(config(id), ms(0)),
                LaneId::new(*id).unwrap(),
            )
        })
        .collect();
    let mut claims_made = Vec::new();
    for (m, _) in &mut lanes {
        let (_, e) = watch_until(m, ms(1), ms(10_000), |_| view(1, "a", 0)).unwrap();
        claims_made.push(e);
    }
    assert_eq!(claims_made, vec![Epoch(2), Epoch(2)]);
    let results: Vec<_> = lanes
        .iter_mut()
        .map(|(m, lane)| {
            let outcome = match store.claim(Epoch(2), lane) {
                Ok(()) => ClaimOutcome::Won(Epoch(2)),
                Err(crate::LeaseError::Lost { epoch }) => ClaimOutcome::Lost(epoch),
                Err(e) => panic!("{e}"),
            };
            m.step(ms(1200), Event::ClaimResult(outcome));
            m.role()
        })
        .collect();
    assert_eq!(
        results,
        vec![
            Role::Active {
                epoch: Epoch(2),
                serving: false
            },
            Role::Dormant
        ]
    );
}

#[test]
fn a_renewal_result_from_an_earlier_epoch_never_extends_a_later_one() {
    // Epoch 1's renewal hangs (hard NFS mount), the lane fences, rejoins, and claims epoch 2; then the old call
    // returns "renewed" while epoch 2's first renewal is in flight. It must not count for epoch 2.
    let mut m = active(ms(0));
    m.step(ms(250), Event::Tick); // renewal (epoch 1, counter 1) hangs
    assert!(matches!(
        m.step(ms(800), Event::Tick)[0],
        Action::Fence { .. }
    ));
    let (at, epoch) = watch_until(&mut m, ms(1), ms(10_000), |_| view(1, "a", 0)).unwrap();
    assert_eq!(epoch, Epoch(2));
    m.step(at, Event::ClaimResult(ClaimOutcome::Won(Epoch(2))));
    let (_, deadline) = m.write_deadline().unwrap();
    let renew_at = m.next_wakeup().unwrap();
    assert_eq!(
        m.step(renew_at, Event::Tick),
        vec![Action::RenewHeartbeat {
            epoch: Epoch(2),
            counter: 1
        }]
    );
    let stale = Event::RenewResult {
        epoch: Epoch(1),
        counter: 1,
        outcome: RenewOutcome::Renewed,
    };
    assert!(m.step(renew_at + ms(5), stale).is_empty());
    assert_eq!(m.write_deadline(), Some((Epoch(2), deadline)));
    // The real answer still counts.
    m.step(renew_at + ms(6), renew_result(&m, RenewOutcome::Renewed));
    assert!(m.write_deadline().unwrap().1 > deadline);
}
