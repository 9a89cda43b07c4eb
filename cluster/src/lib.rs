//! tandem-cluster: which lane is active.
//!
//! Two broker lanes share one volume (a local directory, or AWS EFS over NFS 4.1). Exactly one is **active**
//! and writes the journal; the other is **dormant** and takes over about one TTL after the active dies. A lease
//! on the shared volume decides which, using no advisory locks at all (Artemis' shared-store HA relies on NFS
//! file locks and has seen split brain: ARTEMIS-4143, ARTEMIS-2421).
//!
//! The crate has three layers:
//!
//! - [`RoleMachine`] ([`machine`]): the pure state machine. Events and this lane's monotonic time in, [`Action`]s
//!   out; no I/O, no sleeping, no clock reads, so tests drive time directly.
//! - [`LeaseStore`] ([`store`]): where epochs are claimed and heartbeats written. [`FileLeaseStore`] on a shared
//!   directory, [`MemoryLeaseStore`] for tests, [`RaftLeaseStore`] on a three-member openraft group
//!   ([`store::raft`]); one conformance suite checks all three. An epoch is a fencing token in each.
//! - [`LeaseDriver`] ([`driver`]): runs the machine against a store on the real clock as a tokio task and
//!   publishes the [`Role`] on a `watch` channel, plus a [`WriteGuard`] for the journal.
//!
//! # Roles
//!
//! ```text
//!            read: empty store, or heartbeat unchanged for a TTL
//!  Dormant ───────────────────────────────────────────────▶ Acquiring(n = highest seen + 1)
//!     ▲  ▲                          lost / failed             │ won (exclusive create of epoch n)
//!     │  └────────────────────────────────────────────────────┤
//!     │                                                       ▼
//!     │ rejoin_after               no renewal by deadline   Active(n): recover journal → serve, renew every TTL/4
//!  Fenced(n) ◀────────────────────────────────────────────────┘ or a renewal saw epoch > n, or recovery failed
//! ```
//!
//! A fenced lane can become active again only through Acquiring, i.e. by claiming an epoch above every epoch it
//! has seen. Epoch `n` is claimed by exclusive create, so exactly one lane ever holds it.
//!
//! # Protocol
//!
//! - **Claim** epoch `n`: exclusive create of `lease/epoch-n` (only if `epoch-(n-1)` exists, so epochs are dense).
//!   The loser gets `EEXIST`. The claim record doubles as heartbeat 0.
//! - **Renew**: the holder writes heartbeat `counter` (a new value on *every* attempt, retries included) for its
//!   epoch, and fails with `Superseded` if `epoch-(n+1)` exists before or after the write.
//! - **Watch**: the dormant reads the newest epoch and its heartbeat every poll interval. It claims only when a
//!   read *issued* at least one TTL after it first saw the current (epoch, holder, counter) value returns that same
//!   value (invariant 7). It measures this on its own monotonic clock; it never compares two machines' clocks.
//! - **Fence**: the active may write only before `deadline = start of its last successful renewal (or claim) +
//!   TTL − safety margin`. The deadline is checked before every event is interpreted, so a renewal that answers
//!   late cannot extend it (invariant 8). The journal checks the same deadline through [`WriteGuard::check`]
//!   before each batch, so a starved driver task does not delay the fence.
//!
//! # Timing argument
//!
//! Let `T` = TTL, `M` = safety margin, `ρ` = bound on how far either lane's monotonic clock *rate* may deviate
//! from real time (default 1000 ppm; NTP slews at most 500 ppm; offsets and wall-clock jumps are irrelevant
//! because only differences of one lane's monotonic readings are ever used). Suppose the dormant D claims.
//!
//! 1. Let `c` be the last heartbeat value D saw change, first seen when a read completed at D-time `o`. The
//!    renewal that wrote `c` started at A-time `s` no later, in real time, than that read: `real(s) ≤ real(o)`.
//! 2. After that renewal, A's deadline is `d = s + (T − M)` A-time, i.e. at most `real(s) + (T − M)/(1 − ρ)`.
//!    A renewal after `c` counts only if it *completes* before the current deadline, so its heartbeat `c' > c`
//!    landed before `real(d)`.
//! 3. D claims only after a read issued at D-time `r ≥ o + T`, i.e. at real time `≥ real(o) + T/(1 + ρ)`.
//!    The validation requires `M(1 + ρ) > 2ρT`, which is exactly `(T − M)/(1 − ρ) < T/(1 + ρ)`, so
//!    `real(d) < real(r)`. A heartbeat `c'` would have landed before `real(r)` and that read would have returned
//!    it, contradicting "unchanged". So A made no successful renewal after `c`, and A stops writing at `d`.
//! 4. Hence A's last write is issued before `real(d) < real(r) ≤` D's claim `≤` D's first write. The slack
//!    `T/(1 + ρ) − (T − M)/(1 − ρ)` (≈ 198 ms with the defaults T = 1 s, M = 200 ms, ρ = 0.1%) also bounds how long
//!    a journal write issued just before `d` may take to land; anything slower is caught by the epoch stamped on
//!    every batch (invariant 6: recovery ignores a batch older than an epoch already seen).
//!
//! `tests/sim.rs` checks this with drifting clocks, store latency, pauses, crashes and failing renewals, and
//! measures the gap; `machine/tests.rs` pins each rule.
//!
//! # What this relies on, and what it does not cover
//!
//! - **Fresh reads of the heartbeat.** Step 3 needs a read to see every renewal that completed before the read
//!   began. Locally that is POSIX. On NFS it is close-to-open consistency: every read here opens the file anew,
//!   and `open` revalidates the file's attributes with the server (whatever `actimeo` says) and drops cached data
//!   if it changed; the writer fsyncs and closes the temp file before renaming it over the heartbeat, and a
//!   renamed-over name resolves to the new file (NFSv4 opens by name; a cached handle to the replaced file gets
//!   `ESTALE` and the kernel looks the name up again). So: **never mount with `nocto`**. `actimeo`, `noac` and
//!   attribute caching do not matter for reads that open the file, which is why no read here uses `stat`.
//! - **Directory listings are not trusted.** A listing (cached per `acdirmin`/`acdirmax`) is only a starting
//!   point; the newest epoch is found by opening `epoch-(k+1)` by exact name. Negative lookups are cached by
//!   default on Linux, so a holder may learn of a successor late, and a dormant may try to claim an epoch that
//!   exists (it gets `EEXIST` from the server and retries higher). Neither is unsafe: safety rests on the deadline.
//!   Mount with **`lookupcache=positive`** for prompt detection. On EFS: AWS's recommended
//!   `nfsvers=4.1,hard,timeo=600,retrans=2,noresvport` plus `lookupcache=positive`; `hard` means a call can block
//!   for minutes, which is why the driver never waits on a store call to fence. A dormant poll costs about four
//!   opens (two to find the newest epoch, then the claim record and the heartbeat).
//! - **Exclusive create is atomic at the server.** NFSv4.1 (EFS) has session exactly-once semantics, so a
//!   retransmitted create cannot report `EEXIST` to its own winner; if some client did, that lane would treat its
//!   claim as lost and watch a lease nobody renews, then claim the next epoch: slower, not unsafe.
//! - **Clock rates** within `max_clock_drift_ppm`. A VM whose monotonic clock stalls while the guest is paused is a
//!   pause, which is covered; a clock that runs slow beyond the bound is not.
//! - **Check-then-write.** A lane paused between [`WriteGuard::check`] and its write, or with writes stuck in an NFS
//!   client queue on a hard mount, can land data after its lease ended. Only the epoch in every journal batch
//!   covers that (invariant 6, in the broker's journal and recovery).
//! - **Old epoch files are kept.** Heartbeats and temp files of older epochs are garbage-collected; `epoch-n`
//!   files are not, because exclusive create can refuse a second claimant of `n` only while the file exists.
//!   One ~40-byte file per takeover; reads do not list the directory once they have a hint.
//! - **No graceful release.** A lane that shuts down fences at once, but the other still waits a TTL.
//! - **Corrupt heartbeat files** make reads fail, and a failed read never counts towards expiry: the dormant does
//!   not take over (fail safe). Heartbeats are replaced whole by rename, so this needs outside damage.
//! - Not yet tested against a real NFS/EFS mount; the file store's tests run on a local directory.
//!
//! # Example: the pure machine
//!
//! ```
//! use std::time::Duration;
//! use tandem_cluster::{Action, ClaimOutcome, Config, Epoch, Event, LaneId, Role, RoleMachine, Timing};
//!
//! let cfg = Config::new(LaneId::new("a")?, Timing::from_ttl(Duration::from_secs(1)))?;
//! let ms = Duration::from_millis;
//! let mut m = RoleMachine::new(cfg, ms(0));
//! assert_eq!(m.step(ms(0), Event::Tick), vec![Action::ReadLease { hint: None }]);
//! // The store is empty: claim epoch 1.
//! assert_eq!(m.step(ms(2), Event::LeaseObserved(None)), vec![Action::ClaimEpoch(Epoch(1))]);
//! let actions = m.step(ms(4), Event::ClaimResult(ClaimOutcome::Won(Epoch(1))));
//! assert_eq!(actions[0], Action::RecoverJournal { epoch: Epoch(1) });
//! assert_eq!(m.role(), Role::Active { epoch: Epoch(1), serving: false });
//! // Writing is allowed until claim start + TTL - margin = 2 ms + 800 ms, unless a renewal extends it.
//! assert_eq!(m.write_deadline(), Some((Epoch(1), ms(802))));
//! # Ok::<(), tandem_cluster::ConfigError>(())
//! ```
//!
//! # Example: the driver, as the broker runtime uses it
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use tandem_cluster::{Config, FileLeaseStore, LaneId, LeaseDriver, Role, Timing};
//!
//! let store = Arc::new(FileLeaseStore::open("/mnt/efs/tenant-1")?);
//! let cfg = Config::new(LaneId::new("a")?, Timing::from_ttl(Duration::from_secs(1)))?;
//! let driver = LeaseDriver::spawn(cfg, store);
//! let (mut role, guard, recovery) = (driver.role(), driver.write_guard(), driver.recovery_reporter());
//! loop {
//!     match *role.borrow_and_update() {
//!         Role::Active { epoch, serving: false } => {
//!             // recover the journal, stamping `epoch`; the journal calls `guard.check()` before each batch
//!             recovery.done(epoch).await;
//!         }
//!         Role::Active { serving: true, .. } => { /* open listeners, report healthy */ }
//!         _ => { /* stop writing, close listeners, report unhealthy */ }
//!     }
//!     role.changed().await?;
//! }
//! # }
//! ```

mod config;
pub mod driver;
pub mod machine;
pub mod runtime;
pub mod store;
mod types;

pub use config::{Config, ConfigError, Timing};
pub use driver::{DriverHandle, LeaseDriver, NotHolding, RecoveryReporter, WriteGuard};
pub use machine::{Action, ClaimOutcome, Event, FenceReason, RenewOutcome, Role, RoleMachine};
pub use runtime::{LaneError, LaneOptions, run_lane, run_lane_with_store};
pub use store::{
    FileLeaseStore, LeaseError, LeaseStore, MemoryLeaseStore, RaftLeaseStore, RaftMember,
    RaftMemberOptions, RaftStoreError, RaftTiming,
};
pub use types::{Epoch, LaneId, LeaseView};
