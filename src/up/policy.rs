//! The decisions of `tandem up`, as pure state machines: which lane the proxy routes to, when the
//! monitor restarts a dead lane, which log files rotate and which are old enough to delete.
//!
//! Nothing here reads a clock, sleeps or touches a socket: the runtime (`proxy.rs`, `monitor.rs`)
//! feeds in probe results, exits and file ages together with `now`, and carries out what comes
//! back. That keeps the timing rules testable by driving time directly.
//!
//! Invariants the router keeps:
//! - it routes only to a lane whose last `healthy_threshold` probes all said "active, serving";
//! - a lane that answered anything else `unhealthy_threshold` times in a row is dropped, and the
//!   runtime is told to close the client connections it carries (so clients fail over promptly
//!   instead of talking to a fenced or dead broker);
//! - with no healthy lane there is no target: new connections are refused.

use std::time::{Duration, Instant, SystemTime};

/// One `/health` probe of one lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// 200 with `"role":"active"`: the lane holds the lease and serves.
    Active { epoch: Option<u64> },
    /// The lane answered, but not as the serving active (503: dormant, acquiring, fenced, …).
    NotActive,
    /// No answer within the timeout, or the connection was refused: dead or hung.
    Unreachable,
}

/// What the router tells the proxy to do after a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteChange {
    /// The lane new connections go to now (`None`: refuse them).
    pub target: Option<usize>,
    /// Lanes whose client connections must be closed (they stopped being the serving active).
    pub close: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
struct LaneHealth {
    healthy: bool,
    /// Consecutive probes that disagree with `healthy`.
    streak: u32,
    epoch: Option<u64>,
}

/// Follows every lane's `/health` the way a network load balancer follows its targets.
#[derive(Debug, Clone)]
pub struct Router {
    lanes: Vec<LaneHealth>,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    target: Option<usize>,
}

impl Router {
    /// `lanes` lanes, all starting unhealthy. Thresholds below 1 are taken as 1.
    pub fn new(lanes: usize, healthy_threshold: u32, unhealthy_threshold: u32) -> Router {
        Router {
            lanes: vec![LaneHealth::default(); lanes],
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            target: None,
        }
    }

    /// Where new connections go now.
    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// Records one probe of `lane`; returns a change when the target moved or connections must be
    /// closed. An index out of range is ignored (returns `None`).
    pub fn observe(&mut self, lane: usize, probe: Probe) -> Option<RouteChange> {
        let l = self.lanes.get_mut(lane)?;
        let says_active = matches!(probe, Probe::Active { .. });
        if let Probe::Active { epoch } = probe {
            l.epoch = epoch;
        }
        let mut close = Vec::new();
        if says_active == l.healthy {
            l.streak = 0;
        } else {
            l.streak += 1;
            let needed = if l.healthy {
                self.unhealthy_threshold
            } else {
                self.healthy_threshold
            };
            if l.streak >= needed {
                l.healthy = says_active;
                l.streak = 0;
                if !l.healthy {
                    close.push(lane);
                }
            }
        }
        let target = self.choose();
        // A lane that stays healthy but loses the target (a newer epoch appeared elsewhere) is
        // about to be fenced: move its clients now rather than when it fences.
        if let Some(old) = self.target
            && target != Some(old)
            && !close.contains(&old)
        {
            close.push(old);
        }
        let changed = target != self.target;
        self.target = target;
        (changed || !close.is_empty()).then_some(RouteChange { target, close })
    }

    /// Keep the current target while it is healthy (no flapping between two lanes that both claim
    /// to be active for a moment during a takeover); otherwise the healthy lane with the newest
    /// epoch, the lowest index on a tie.
    fn choose(&self) -> Option<usize> {
        let healthy = |i: usize| self.lanes[i].healthy;
        let newest = (0..self.lanes.len())
            .filter(|&i| healthy(i))
            .max_by_key(|&i| (self.lanes[i].epoch, std::cmp::Reverse(i)));
        match self.target {
            Some(t) if healthy(t) => {
                // A strictly newer epoch elsewhere means the current one lost the lease.
                match newest {
                    Some(n) if self.lanes[n].epoch > self.lanes[t].epoch => Some(n),
                    _ => Some(t),
                }
            }
            _ => newest,
        }
    }
}

/// Restart policy of a lane that exited: bounded exponential backoff, reset after a long enough
/// run, and a cap on restarts in a row so a lane that cannot start is reported, not looped forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// A lane that ran at least this long before exiting starts over at `initial`.
    pub reset_after: Duration,
    /// Restarts in a row (without a reset) before giving up.
    pub max_restarts: u32,
}

/// What to do about a lane that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    At(Instant),
    GiveUp { restarts: u32 },
}

/// Per-lane backoff state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Restarts since the last reset.
    pub in_a_row: u32,
}

impl Backoff {
    /// The lane started at `started` exited at `now`.
    pub fn on_exit(&mut self, policy: &RestartPolicy, started: Instant, now: Instant) -> Restart {
        if now.saturating_duration_since(started) >= policy.reset_after {
            self.in_a_row = 0;
        }
        if self.in_a_row >= policy.max_restarts {
            return Restart::GiveUp {
                restarts: self.in_a_row,
            };
        }
        let factor = 1u32.checked_shl(self.in_a_row.min(31)).unwrap_or(u32::MAX);
        let delay = policy
            .initial
            .checked_mul(factor)
            .unwrap_or(policy.max)
            .min(policy.max);
        self.in_a_row += 1;
        Restart::At(now + delay)
    }
}

/// When the live log file is closed and renamed: when it is too big, or was opened too long ago
/// (so retention, which goes by age, can remove old output without cutting the live file).
pub fn should_rotate(
    size: u64,
    opened: SystemTime,
    now: SystemTime,
    max_size: u64,
    max_age: Duration,
) -> bool {
    size >= max_size || now.duration_since(opened).is_ok_and(|age| age >= max_age)
}

/// The rotated files (name, last modified) to delete: those last written more than `retention`
/// before `now`. A file with a modification time in the future is kept (clock skew is not age).
pub fn expired(files: &[(String, SystemTime)], now: SystemTime, retention: Duration) -> Vec<&str> {
    files
        .iter()
        .filter(|(_, modified)| {
            now.duration_since(*modified)
                .is_ok_and(|age| age > retention)
        })
        .map(|(name, _)| name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIVE: Probe = Probe::Active { epoch: Some(1) };

    #[test]
    fn a_lane_becomes_the_target_after_the_healthy_threshold() {
        let mut r = Router::new(2, 2, 2);
        assert_eq!(r.observe(0, ACTIVE), None);
        assert_eq!(r.observe(1, Probe::NotActive), None);
        assert_eq!(
            r.observe(0, ACTIVE),
            Some(RouteChange {
                target: Some(0),
                close: vec![]
            })
        );
        // Steady state: no changes reported.
        assert_eq!(r.observe(0, ACTIVE), None);
        assert_eq!(r.observe(1, Probe::NotActive), None);
        assert_eq!(r.target(), Some(0));
    }

    #[test]
    fn a_dead_active_is_dropped_its_clients_closed_and_the_new_active_takes_over() {
        let mut r = Router::new(2, 2, 2);
        r.observe(0, ACTIVE);
        r.observe(0, ACTIVE);
        // One failed probe is not enough (a hiccup under load).
        assert_eq!(r.observe(0, Probe::Unreachable), None);
        assert_eq!(r.target(), Some(0));
        assert_eq!(
            r.observe(0, Probe::Unreachable),
            Some(RouteChange {
                target: None,
                close: vec![0]
            })
        );
        r.observe(1, Probe::Active { epoch: Some(2) });
        assert_eq!(
            r.observe(1, Probe::Active { epoch: Some(2) }),
            Some(RouteChange {
                target: Some(1),
                close: vec![]
            })
        );
    }

    #[test]
    fn a_streak_is_broken_by_one_good_probe() {
        let mut r = Router::new(1, 2, 3);
        r.observe(0, ACTIVE);
        r.observe(0, ACTIVE);
        r.observe(0, Probe::NotActive);
        r.observe(0, Probe::NotActive);
        r.observe(0, ACTIVE);
        r.observe(0, Probe::NotActive);
        assert_eq!(r.observe(0, Probe::NotActive), None);
        assert_eq!(r.target(), Some(0));
        assert_eq!(r.observe(0, Probe::Unreachable).unwrap().target, None);
    }

    #[test]
    fn two_claimants_route_to_the_newest_epoch_and_close_the_old_ones_clients() {
        let mut r = Router::new(2, 1, 2);
        r.observe(0, Probe::Active { epoch: Some(3) });
        assert_eq!(r.target(), Some(0));
        // Lane 1 took over (epoch 4) before lane 0 noticed and fenced itself.
        assert_eq!(
            r.observe(1, Probe::Active { epoch: Some(4) }),
            Some(RouteChange {
                target: Some(1),
                close: vec![0]
            })
        );
        // Same epoch on both (cannot happen with a working lease): stay where we are.
        let mut r = Router::new(2, 1, 1);
        r.observe(1, Probe::Active { epoch: Some(5) });
        r.observe(0, Probe::Active { epoch: Some(5) });
        assert_eq!(r.target(), Some(1));
    }

    #[test]
    fn out_of_range_lanes_are_ignored_and_zero_thresholds_mean_one() {
        let mut r = Router::new(1, 0, 0);
        assert_eq!(r.observe(7, ACTIVE), None);
        assert_eq!(r.observe(0, ACTIVE).unwrap().target, Some(0));
        assert_eq!(r.observe(0, Probe::NotActive).unwrap().close, vec![0]);
    }

    fn policy() -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(2),
            reset_after: Duration::from_secs(60),
            max_restarts: 5,
        }
    }

    #[test]
    fn restart_delays_double_up_to_the_max_then_give_up() {
        let p = policy();
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let mut delays = Vec::new();
        let mut now = t0;
        loop {
            // Each run dies one second after it started: well short of the reset.
            let started = now;
            now = started + Duration::from_secs(1);
            match b.on_exit(&p, started, now) {
                Restart::At(at) => {
                    delays.push(at - now);
                    now = at;
                }
                Restart::GiveUp { restarts } => {
                    assert_eq!(restarts, 5);
                    break;
                }
            }
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![250, 500, 1000, 2000, 2000]);
    }

    #[test]
    fn a_long_run_resets_the_backoff() {
        let p = policy();
        let t0 = Instant::now();
        let mut b = Backoff::default();
        for _ in 0..4 {
            b.on_exit(&p, t0, t0);
        }
        assert_eq!(b.in_a_row, 4);
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            b.on_exit(&p, t0 + Duration::from_secs(30), later),
            Restart::At(later + Duration::from_millis(250))
        );
        assert_eq!(b.in_a_row, 1);
    }

    #[test]
    fn huge_backoff_counts_do_not_overflow() {
        let p = RestartPolicy {
            max_restarts: u32::MAX,
            ..policy()
        };
        let t0 = Instant::now();
        let mut b = Backoff { in_a_row: 40 };
        assert_eq!(b.on_exit(&p, t0, t0), Restart::At(t0 + p.max));
    }

    #[test]
    fn rotation_by_size_or_age() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert!(!should_rotate(
            10,
            t0,
            t0 + Duration::from_secs(5),
            100,
            day
        ));
        assert!(should_rotate(100, t0, t0, 100, day));
        assert!(should_rotate(0, t0, t0 + day, 100, day));
        // A clock that went backwards does not rotate.
        assert!(!should_rotate(0, t0, t0 - day, 100, day));
    }

    #[test]
    fn retention_deletes_only_files_older_than_the_period() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100 * 86_400);
        let day = Duration::from_secs(86_400);
        let files = vec![
            ("tandem.log.1".to_owned(), now - 31 * day),
            ("tandem.log.2".to_owned(), now - 29 * day),
            (
                "tandem.log.3".to_owned(),
                now - 30 * day - Duration::from_secs(1),
            ),
            ("tandem.log.4".to_owned(), now + day),
        ];
        assert_eq!(
            expired(&files, now, 30 * day),
            vec!["tandem.log.1", "tandem.log.3"]
        );
        assert!(expired(&files, now, 365 * day).is_empty());
    }
}
