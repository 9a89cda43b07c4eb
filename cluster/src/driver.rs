//! Runs a [`RoleMachine`] against a [`LeaseStore`] on a real monotonic clock, as a tokio task.
//!
//! The broker runtime observes [`Role`] on a `watch` channel and reacts:
//!
//! | role | runtime does |
//! |---|---|
//! | `Active { epoch, serving: false }` | recover the journal stamping `epoch`, then [`RecoveryReporter::done`] |
//! | `Active { serving: true }` | open listeners, report healthy |
//! | `Fenced { .. }`, `Stopped` | stop writing at once, close listeners and connections, report unhealthy |
//! | `Dormant`, `Acquiring { .. }` | nothing running |
//!
//! The runtime's journal must also call [`WriteGuard::check`] before each batch: the role channel tells it
//! *what* to do, the guard tells it *whether it may still write now*, from the lease deadline alone, even if
//! this task is starved of CPU and has not yet published the fence.
//!
//! Store calls run in `spawn_blocking`. The machine issues one at a time per phase and ignores answers meant for
//! an earlier phase; timers keep running while a call hangs, so a hung NFS call cannot delay a fence.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::machine::{Action, ClaimOutcome, Event, RenewOutcome, Role, RoleMachine};
use crate::{Config, Epoch, LaneId, LeaseError, LeaseStore};

/// Returned by [`WriteGuard::check`] when this lane must not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this lane does not hold an unexpired lease")]
pub struct NotHolding;

/// Whether this lane may write the journal now, and under which epoch. Cheap to clone and to check (an
/// uncontended mutex); check before every journal batch and stamp the returned epoch on it.
#[derive(Debug, Clone, Default)]
pub struct WriteGuard {
    lease: Arc<Mutex<Option<(Epoch, Instant)>>>,
}

impl WriteGuard {
    /// The epoch to stamp if this lane may write at this instant.
    pub fn check(&self) -> Result<Epoch, NotHolding> {
        self.check_at(Instant::now())
    }

    /// The epoch to stamp if this lane may write at `now`.
    pub fn check_at(&self, now: Instant) -> Result<Epoch, NotHolding> {
        match *self.lock() {
            Some((epoch, deadline)) if now < deadline => Ok(epoch),
            _ => Err(NotHolding),
        }
    }

    fn set(&self, lease: Option<(Epoch, Instant)>) {
        *self.lock() = lease;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Epoch, Instant)>> {
        // The value is a plain Copy pair; a panic elsewhere cannot leave it half written.
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Command {
    RecoveryDone(Epoch),
    RecoveryFailed(Epoch),
}

/// Tells the driver how journal recovery went. Holding one does not keep the driver running.
#[derive(Debug, Clone)]
pub struct RecoveryReporter {
    commands: mpsc::Sender<Command>,
}

impl RecoveryReporter {
    /// Journal recovery for `epoch` finished; the role becomes `Active { serving: true }` (if still active).
    pub async fn done(&self, epoch: Epoch) {
        // A closed channel means the driver stopped; its role already says so.
        let _ = self.commands.send(Command::RecoveryDone(epoch)).await;
    }

    /// Journal recovery for `epoch` failed; the lane fences.
    pub async fn failed(&self, epoch: Epoch) {
        let _ = self.commands.send(Command::RecoveryFailed(epoch)).await;
    }
}

/// Starts lease drivers.
#[derive(Debug)]
pub struct LeaseDriver;

impl LeaseDriver {
    /// Spawn the driver for one lane on the current tokio runtime. It starts Dormant and reads the lease at once.
    pub fn spawn(config: Config, store: Arc<dyn LeaseStore>) -> DriverHandle {
        let origin = Instant::now();
        let machine = RoleMachine::new(config, Duration::ZERO);
        let (role_tx, role_rx) = watch::channel(machine.role());
        let (commands_tx, commands_rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = oneshot::channel();
        let guard = WriteGuard::default();
        let task = tokio::spawn(run(
            machine,
            store,
            origin,
            role_tx,
            guard.clone(),
            commands_rx,
            stop_rx,
        ));
        DriverHandle {
            role: role_rx,
            guard,
            commands: commands_tx,
            stop: stop_tx,
            task,
        }
    }
}

/// Control of a running driver. Dropping it shuts the driver down (fencing first if active).
#[derive(Debug)]
pub struct DriverHandle {
    role: watch::Receiver<Role>,
    guard: WriteGuard,
    commands: mpsc::Sender<Command>,
    /// Dropping or sending on it stops the driver.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl DriverHandle {
    /// The role channel.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The write guard for the journal.
    pub fn write_guard(&self) -> WriteGuard {
        self.guard.clone()
    }

    /// A cloneable reporter for the task that runs journal recovery.
    pub fn recovery_reporter(&self) -> RecoveryReporter {
        RecoveryReporter {
            commands: self.commands.clone(),
        }
    }

    /// Stop: fence if active (the guard is revoked and `Stopped` published before this returns).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Stop the task abruptly, as a crash would: no fence is published and the lease is left to expire. The write
    /// guard still turns false at the lease deadline.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// The driver task's state.
struct Runner {
    machine: RoleMachine,
    store: Arc<dyn LeaseStore>,
    lane: LaneId,
    /// The machine's time zero.
    origin: Instant,
    role: watch::Sender<Role>,
    guard: WriteGuard,
    /// Where store calls answer. Bounded: the machine has at most one call outstanding per phase (a call
    /// abandoned by a fence may still be running alongside the next phase's call).
    results: mpsc::Sender<Event>,
}

async fn run(
    machine: RoleMachine,
    store: Arc<dyn LeaseStore>,
    origin: Instant,
    role: watch::Sender<Role>,
    guard: WriteGuard,
    mut commands: mpsc::Receiver<Command>,
    mut stop: oneshot::Receiver<()>,
) {
    let (results, mut results_rx) = mpsc::channel::<Event>(4);
    let timing = machine.config().timing.clone();
    // Wake at least this often even when the machine has no timer due (cheap; bounds any lateness).
    let max_idle = timing.poll_interval.min(timing.renew_interval);
    let mut runner = Runner {
        lane: machine.config().lane.clone(),
        machine,
        store,
        origin,
        role,
        guard,
        results,
    };
    let mut event = Event::Tick;
    loop {
        runner.step(event);
        if runner.machine.role() == Role::Stopped {
            return;
        }
        let now = runner.now();
        let wake = runner
            .machine
            .next_wakeup()
            .unwrap_or(now + max_idle)
            .clamp(now + Duration::from_millis(1), now + max_idle);
        event = tokio::select! {
            biased;
            // Sent or dropped: either way the owner is gone or asked us to stop.
            _ = &mut stop => Event::Shutdown,
            Some(cmd) = commands.recv() => match cmd {
                Command::RecoveryDone(epoch) => Event::RecoveryDone { epoch },
                Command::RecoveryFailed(epoch) => Event::RecoveryFailed { epoch },
            },
            Some(event) = results_rx.recv() => event,
            () = tokio::time::sleep_until((origin + wake).into()) => Event::Tick,
        };
    }
}

impl Runner {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Feed one event (timestamped now, i.e. no earlier than it happened) and carry out the actions.
    fn step(&mut self, event: Event) {
        let actions = self.machine.step(self.now(), event);
        // Guard first: a fence revokes writing before anything else happens.
        let lease = self.machine.write_deadline();
        self.guard
            .set(lease.map(|(epoch, deadline)| (epoch, self.origin + deadline)));
        let role = self.machine.role();
        let lane = &self.lane;
        self.role.send_if_modified(|current| {
            if *current == role {
                return false;
            }
            tracing::info!(lane = %lane, from = ?current, to = ?role, "lease role changed");
            *current = role;
            true
        });
        for action in actions {
            self.execute(action);
        }
    }

    fn execute(&self, action: Action) {
        let lane = self.lane.clone();
        match action {
            Action::ReadLease { hint } => self.call(move |s| match s.read(hint) {
                Ok(view) => Event::LeaseObserved(view),
                Err(error) => {
                    tracing::warn!(%error, "lease read failed");
                    Event::ReadFailed
                }
            }),
            Action::ClaimEpoch(epoch) => self.call(move |s| {
                Event::ClaimResult(match s.claim(epoch, &lane) {
                    Ok(()) => ClaimOutcome::Won(epoch),
                    Err(LeaseError::Lost { .. }) => ClaimOutcome::Lost(epoch),
                    Err(error) => {
                        tracing::warn!(%error, %epoch, "lease claim failed");
                        ClaimOutcome::Failed
                    }
                })
            }),
            Action::RenewHeartbeat { epoch, counter } => self.call(move |s| {
                let outcome = match s.renew(epoch, &lane, counter) {
                    Ok(()) => RenewOutcome::Renewed,
                    Err(LeaseError::Superseded { newer, .. }) => RenewOutcome::Superseded { newer },
                    Err(error) => {
                        tracing::warn!(%error, %epoch, "lease renewal failed");
                        RenewOutcome::Failed
                    }
                };
                Event::RenewResult {
                    epoch,
                    counter,
                    outcome,
                }
            }),
            Action::CollectGarbage { current } => {
                let store = Arc::clone(&self.store);
                // Fire and forget: garbage collection is never on the path of a role decision.
                tokio::task::spawn_blocking(move || {
                    if let Err(error) = store.collect_garbage(current) {
                        tracing::warn!(%error, "lease garbage collection failed");
                    }
                });
            }
            Action::Fence { epoch, reason } => {
                tracing::warn!(lane = %lane, %epoch, ?reason, "fenced: stop writing");
            }
            Action::RecoverJournal { .. }
            | Action::OpenListeners { .. }
            | Action::CloseListeners => {
                // Carried out by the broker runtime from the published role.
            }
        }
    }

    /// Run a store call on the blocking pool; its answer comes back as an event.
    fn call(&self, op: impl FnOnce(&dyn LeaseStore) -> Event + Send + 'static) {
        let (store, results) = (Arc::clone(&self.store), self.results.clone());
        tokio::task::spawn_blocking(move || {
            let event = op(store.as_ref());
            // The driver may have stopped meanwhile; then nobody needs the answer.
            let _ = results.blocking_send(event);
        });
    }
}
