//! The pure lease/role state machine.
//!
//! [`RoleMachine::step`] takes the lane's monotonic time and one [`Event`] and returns the [`Action`]s to carry
//! out. It does no I/O, never sleeps and never reads a clock, so tests drive time directly. The driver
//! ([`crate::driver`]) runs the actions against a [`crate::LeaseStore`] and feeds the results back as events.
//!
//! Invariants kept here (numbers from DESIGN.md):
//! - 7: a dormant lane claims only after a read *issued* at least one TTL after it first saw the current heartbeat
//!   value returned that same value; times are this lane's monotonic clock only.
//! - 8: the active stops writing at `deadline = start of last successful renewal + (ttl - margin)`, checked
//!   before every event is interpreted, so a result that arrives late can never extend a lease that ran out; it
//!   also fences when a renewal reports a newer epoch.
//! - After fencing, the only way back to Active is a claim of an epoch above every epoch this machine has seen.
//!
//! Answers to store actions: at most one read, claim or renewal is outstanding per phase. Dormant and Acquiring
//! are left only when their call answers, so a read or claim answer always belongs to the current phase. A
//! renewal can be abandoned by a fence and answer much later, so renewal answers carry `(epoch, counter)` and only
//! the one in flight counts.

use std::time::Duration;

use crate::{Config, Epoch, LeaseView};

/// Why the active lane fenced itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// No renewal succeeded within `ttl - safety_margin` of the previous one's start.
    LeaseExpired,
    /// A renewal found that a newer epoch was claimed.
    NewerEpoch {
        /// The newer epoch the store reported.
        newer: Epoch,
    },
    /// The claim itself completed too late to leave any write window.
    ClaimTooSlow,
    /// The broker runtime could not recover the journal.
    RecoveryFailed,
    /// The driver is shutting down.
    Shutdown,
}

/// The lane's role, as the broker runtime observes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Watching the lease; must not write the journal or accept clients.
    Dormant,
    /// Claiming `epoch`; must not write yet.
    Acquiring {
        /// The epoch being claimed.
        epoch: Epoch,
    },
    /// Holding `epoch`. With `serving == false` the runtime recovers the journal (stamping `epoch`) and then
    /// reports [`Event::RecoveryDone`]; with `serving == true` listeners are open.
    Active {
        /// The held epoch: stamp it on every journal batch.
        epoch: Epoch,
        /// Whether recovery is done and listeners are open.
        serving: bool,
    },
    /// Stopped writing and closed listeners; will watch the lease again after `rejoin_after`.
    Fenced {
        /// The epoch it held.
        epoch: Epoch,
        /// Why.
        reason: FenceReason,
    },
    /// Shut down for good.
    Stopped,
}

/// Result of a [`Action::ClaimEpoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This lane now holds the epoch.
    Won(Epoch),
    /// Another lane claimed it first (exclusive create failed).
    Lost(Epoch),
    /// The store failed; whether the epoch was taken is unknown, so it is treated as lost.
    Failed,
}

/// Result of a [`Action::RenewHeartbeat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The heartbeat was written and the epoch was still the newest afterwards.
    Renewed,
    /// A newer epoch exists.
    Superseded {
        /// The newer epoch.
        newer: Epoch,
    },
    /// The store failed; the machine retries until the deadline.
    Failed,
}

/// An input to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Time passed; run timers.
    Tick,
    /// Result of [`Action::ReadLease`]: the newest lease, or `None` if no epoch was ever claimed.
    LeaseObserved(Option<LeaseView>),
    /// [`Action::ReadLease`] failed.
    ReadFailed,
    /// Result of [`Action::ClaimEpoch`].
    ClaimResult(ClaimOutcome),
    /// Result of [`Action::RenewHeartbeat`], naming the epoch and counter of that action. A result that does not
    /// match the renewal in flight (e.g. one abandoned by a fence, answering after this lane claimed a later
    /// epoch) is ignored: it must never extend a deadline.
    RenewResult {
        /// The epoch of the renewal.
        epoch: Epoch,
        /// The counter of the renewal.
        counter: u64,
        /// What happened.
        outcome: RenewOutcome,
    },
    /// The runtime finished recovering the journal for `epoch`.
    RecoveryDone {
        /// The epoch recovery ran under.
        epoch: Epoch,
    },
    /// The runtime could not recover the journal for `epoch`.
    RecoveryFailed {
        /// The epoch recovery ran under.
        epoch: Epoch,
    },
    /// Stop for good (fences first if active).
    Shutdown,
}

/// An output of the machine, for the driver and the broker runtime to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the newest lease; start the search at `hint` (the highest epoch seen so far) if given.
    ReadLease {
        /// Highest epoch seen so far.
        hint: Option<Epoch>,
    },
    /// Claim `epoch` by exclusive create; answer with [`Event::ClaimResult`].
    ClaimEpoch(Epoch),
    /// Write heartbeat `counter` for `epoch`; answer with [`Event::RenewResult`].
    RenewHeartbeat {
        /// The held epoch.
        epoch: Epoch,
        /// The new counter value (strictly increasing).
        counter: u64,
    },
    /// Recover the journal, stamping `epoch` on everything written; answer with [`Event::RecoveryDone`].
    RecoverJournal {
        /// The held epoch.
        epoch: Epoch,
    },
    /// Open client listeners (and report healthy).
    OpenListeners {
        /// The held epoch.
        epoch: Epoch,
    },
    /// Stop writing the journal now.
    Fence {
        /// The epoch that was held.
        epoch: Epoch,
        /// Why.
        reason: FenceReason,
    },
    /// Close client listeners and connections (follows a `Fence` when listeners were open).
    CloseListeners,
    /// Remove lease files of epochs older than `current` (best effort).
    CollectGarbage {
        /// The held epoch.
        current: Epoch,
    },
}

#[derive(Debug, Clone)]
struct Seen {
    view: Option<LeaseView>,
    /// When this lane first saw `view` (completion time of that read).
    since: Duration,
}

#[derive(Debug, Clone)]
struct Watch {
    last: Option<Seen>,
    /// Issue time of the read in flight.
    read_issued: Option<Duration>,
    next_read: Duration,
}

impl Watch {
    fn fresh(now: Duration) -> Watch {
        Watch {
            last: None,
            read_issued: None,
            next_read: now,
        }
    }
}

#[derive(Debug, Clone)]
struct Holding {
    epoch: Epoch,
    /// No write at or after this time.
    deadline: Duration,
    /// The last counter *attempted*. Every attempt, retries included, writes a new value: a failed attempt may
    /// still have landed, and a retry that rewrote the same value would be invisible to the dormant while it
    /// extended the deadline.
    counter: u64,
    serving: bool,
    /// Start time of the renewal in flight.
    renewing: Option<Duration>,
    next_renew: Duration,
}

#[derive(Debug, Clone)]
enum State {
    Dormant(Watch),
    Acquiring {
        epoch: Epoch,
        started: Duration,
    },
    Active(Holding),
    Fenced {
        epoch: Epoch,
        reason: FenceReason,
        since: Duration,
    },
    Stopped,
}

/// The lease/role state machine of one lane. See the module docs.
#[derive(Debug, Clone)]
pub struct RoleMachine {
    cfg: Config,
    state: State,
    highest_seen: Option<Epoch>,
}

impl RoleMachine {
    /// A machine that starts Dormant at time `now` and reads the lease at once.
    pub fn new(cfg: Config, now: Duration) -> RoleMachine {
        RoleMachine {
            cfg,
            state: State::Dormant(Watch::fresh(now)),
            highest_seen: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match &self.state {
            State::Dormant(_) => Role::Dormant,
            State::Acquiring { epoch, .. } => Role::Acquiring { epoch: *epoch },
            State::Active(h) => Role::Active {
                epoch: h.epoch,
                serving: h.serving,
            },
            State::Fenced { epoch, reason, .. } => Role::Fenced {
                epoch: *epoch,
                reason: *reason,
            },
            State::Stopped => Role::Stopped,
        }
    }

    /// The highest epoch this machine has seen (read, claimed or been told about).
    pub fn highest_seen(&self) -> Option<Epoch> {
        self.highest_seen
    }

    /// While active: the held epoch and the time from which this lane must not write. The journal must check
    /// `now < deadline` before each batch (the driver's [`crate::WriteGuard`] does), independently of when the
    /// machine next runs.
    pub fn write_deadline(&self) -> Option<(Epoch, Duration)> {
        match &self.state {
            State::Active(h) => Some((h.epoch, h.deadline)),
            _ => None,
        }
    }

    /// The epoch this lane may write under at `now`, if any.
    pub fn may_write(&self, now: Duration) -> Option<Epoch> {
        self.write_deadline()
            .filter(|(_, deadline)| now < *deadline)
            .map(|(epoch, _)| epoch)
    }

    /// The next time a [`Event::Tick`] would do something, if any. A driver may sleep until then (or until a
    /// result arrives).
    pub fn next_wakeup(&self) -> Option<Duration> {
        match &self.state {
            State::Dormant(w) => w.read_issued.is_none().then_some(w.next_read),
            State::Acquiring { .. } | State::Stopped => None,
            State::Active(h) => Some(match h.renewing {
                Some(_) => h.deadline,
                None => h.deadline.min(h.next_renew),
            }),
            State::Fenced { since, .. } => Some(*since + self.cfg.timing.rejoin_after),
        }
    }

    /// Feed one event at monotonic time `now` (this lane's clock, any fixed origin; never a wall clock) and get
    /// the actions to carry out, in order.
    pub fn step(&mut self, now: Duration, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        // Time is checked before the event: a renewal result that arrives after the deadline must not revive
        // the lease (the dormant may already have claimed).
        self.expire(now, &mut out);
        match event {
            Event::Tick => {}
            Event::LeaseObserved(view) => self.on_observed(now, view, &mut out),
            Event::ReadFailed => {
                if let State::Dormant(w) = &mut self.state
                    && w.read_issued.take().is_some()
                {
                    w.next_read = now + self.cfg.timing.poll_interval;
                }
            }
            Event::ClaimResult(outcome) => self.on_claim(now, outcome, &mut out),
            Event::RenewResult {
                epoch,
                counter,
                outcome,
            } => self.on_renew(now, epoch, counter, outcome, &mut out),
            Event::RecoveryDone { epoch } => {
                if let State::Active(h) = &mut self.state
                    && h.epoch == epoch
                    && !h.serving
                {
                    h.serving = true;
                    out.push(Action::OpenListeners { epoch });
                }
            }
            Event::RecoveryFailed { epoch } => {
                if matches!(&self.state, State::Active(h) if h.epoch == epoch) {
                    self.fence(now, FenceReason::RecoveryFailed, &mut out);
                }
            }
            Event::Shutdown => {
                if matches!(self.state, State::Active(_)) {
                    self.fence(now, FenceReason::Shutdown, &mut out);
                }
                self.state = State::Stopped;
            }
        }
        self.timers(now, &mut out);
        out
    }

    fn note_epoch(&mut self, epoch: Epoch) {
        self.highest_seen = Some(self.highest_seen.map_or(epoch, |h| h.max(epoch)));
    }

    fn expire(&mut self, now: Duration, out: &mut Vec<Action>) {
        if let State::Active(h) = &self.state
            && now >= h.deadline
        {
            self.fence(now, FenceReason::LeaseExpired, out);
        }
    }

    fn fence(&mut self, now: Duration, reason: FenceReason, out: &mut Vec<Action>) {
        let State::Active(h) = &self.state else {
            return;
        };
        let epoch = h.epoch;
        out.push(Action::Fence { epoch, reason });
        if h.serving {
            out.push(Action::CloseListeners);
        }
        self.state = State::Fenced {
            epoch,
            reason,
            since: now,
        };
    }

    fn on_observed(&mut self, now: Duration, view: Option<LeaseView>, out: &mut Vec<Action>) {
        let State::Dormant(w) = &mut self.state else {
            return; // a stray result from an earlier role
        };
        let Some(issued) = w.read_issued.take() else {
            return;
        };
        let ttl = self.cfg.timing.ttl;
        w.next_read = issued + self.cfg.timing.poll_interval;
        let view_epoch = view.as_ref().map(|v| v.epoch);
        // A view older than an epoch already seen is a stale read: it proves nothing about the holder.
        if let (Some(h), seen) = (self.highest_seen, view_epoch)
            && seen.is_none_or(|e| e < h)
        {
            return;
        }
        let claim = match &w.last {
            Some(seen) if seen.view == view => {
                // Unchanged since `seen.since`. Expired only if this read was *issued* a full TTL after the
                // change was first seen: every heartbeat the holder could still have written landed before then
                // and this read would have returned it (timing argument in the crate docs).
                view.is_none() || issued >= seen.since + ttl
            }
            _ => {
                w.last = Some(Seen {
                    view: view.clone(),
                    since: now,
                });
                // An empty store has no holder to wait for; exclusive create settles a race for epoch 1.
                view.is_none()
            }
        };
        if let Some(e) = view_epoch {
            self.note_epoch(e);
        }
        if claim {
            let epoch = self.highest_seen.map_or(Epoch::FIRST, Epoch::next);
            self.state = State::Acquiring {
                epoch,
                started: now,
            };
            out.push(Action::ClaimEpoch(epoch));
        }
    }

    fn on_claim(&mut self, now: Duration, outcome: ClaimOutcome, out: &mut Vec<Action>) {
        let State::Acquiring { epoch, started } = self.state else {
            return;
        };
        match outcome {
            ClaimOutcome::Won(won) if won == epoch => {
                self.note_epoch(epoch);
                // The claim's own record is the first heartbeat, written no earlier than `started`.
                let deadline = started + self.cfg.timing.write_window();
                self.state = State::Active(Holding {
                    epoch,
                    deadline,
                    counter: 0,
                    serving: false,
                    renewing: None,
                    next_renew: started + self.cfg.timing.renew_interval,
                });
                if now >= deadline {
                    self.fence(now, FenceReason::ClaimTooSlow, out);
                } else {
                    out.push(Action::RecoverJournal { epoch });
                    out.push(Action::CollectGarbage { current: epoch });
                }
            }
            ClaimOutcome::Won(_) | ClaimOutcome::Failed => {
                // Unknown or mismatched: watch again. If the epoch was in fact taken by us, it shows up as a
                // lease whose heartbeat never moves and is superseded after a TTL, never silently reused.
                self.state = State::Dormant(Watch::fresh(now));
            }
            ClaimOutcome::Lost(lost) => {
                self.note_epoch(lost);
                self.state = State::Dormant(Watch::fresh(now));
            }
        }
    }

    fn on_renew(
        &mut self,
        now: Duration,
        epoch: Epoch,
        counter: u64,
        outcome: RenewOutcome,
        out: &mut Vec<Action>,
    ) {
        let timing = &self.cfg.timing;
        let State::Active(h) = &mut self.state else {
            return;
        };
        if h.epoch != epoch || h.counter != counter {
            return;
        }
        let Some(started) = h.renewing.take() else {
            return;
        };
        match outcome {
            RenewOutcome::Renewed => {
                h.deadline = h.deadline.max(started + timing.write_window());
                h.next_renew = started + timing.renew_interval;
            }
            RenewOutcome::Failed => {
                // Retry sooner than the normal cadence; the deadline bounds the retries.
                h.next_renew = now + timing.renew_interval / 4;
            }
            RenewOutcome::Superseded { newer } => {
                self.note_epoch(newer);
                self.fence(now, FenceReason::NewerEpoch { newer }, out);
            }
        }
    }

    fn timers(&mut self, now: Duration, out: &mut Vec<Action>) {
        if let State::Fenced { since, .. } = self.state
            && now >= since + self.cfg.timing.rejoin_after
        {
            self.state = State::Dormant(Watch::fresh(now));
        }
        match &mut self.state {
            State::Dormant(w) => {
                if w.read_issued.is_none() && now >= w.next_read {
                    w.read_issued = Some(now);
                    out.push(Action::ReadLease {
                        hint: self.highest_seen,
                    });
                }
            }
            State::Active(h) => {
                if h.renewing.is_none() && now >= h.next_renew {
                    h.counter += 1;
                    h.renewing = Some(now);
                    out.push(Action::RenewHeartbeat {
                        epoch: h.epoch,
                        counter: h.counter,
                    });
                }
            }
            State::Acquiring { .. } | State::Fenced { .. } | State::Stopped => {}
        }
    }
}

#[cfg(test)]
mod tests;
