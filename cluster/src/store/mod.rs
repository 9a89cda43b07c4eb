//! Lease stores: where epochs are claimed and heartbeats are written.
//!
//! The trait is synchronous on purpose. The file store is a handful of blocking syscalls (on a hard NFS mount
//! any of them can block for minutes), `tokio::fs` would only wrap each in `spawn_blocking` again, and a sync
//! trait is object safe and testable without a runtime. The driver calls every method inside
//! `tokio::task::spawn_blocking` with at most one call in flight, and keeps its own timers running meanwhile, so a
//! hung call delays nothing but itself: the active still fences on time. An async store (the quorum store
//! in `raft/`) implements this trait by blocking on its runtime handle inside those blocking threads.
//!
//! Contract every store must meet (checked by the conformance suite, `conformance.rs`):
//! - `claim(n)` succeeds for exactly one caller, ever, and only if `n == 1` or epoch `n - 1` exists, so epochs are
//!   dense and "a newer epoch exists" is "epoch `n + 1` exists".
//! - `read` returns the newest claimed epoch with its heartbeat counter, and is fresh: it reflects every claim
//!   and renewal that completed before the read started.
//! - `renew(n)` fails with [`LeaseError::Superseded`] if a newer epoch exists before or after the heartbeat is
//!   written, so a holder learns of a successor at its next renewal.

mod file;
mod memory;
pub mod raft;

#[cfg(test)]
mod conformance;

use std::io;
use std::path::PathBuf;

pub use file::FileLeaseStore;
pub use memory::{Faults, MemoryLeaseStore};
pub use raft::{RaftLeaseStore, RaftMember, RaftMemberOptions, RaftStoreError, RaftTiming};

use crate::{Epoch, LaneId, LeaseView};

/// Errors from a lease store.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Someone else claimed this epoch first.
    #[error("epoch {epoch} was already claimed")]
    Lost {
        /// The epoch.
        epoch: Epoch,
    },
    /// Claiming `epoch` would skip an epoch: its predecessor was never claimed.
    #[error("cannot claim epoch {epoch}: its predecessor was never claimed")]
    NotNext {
        /// The epoch.
        epoch: Epoch,
    },
    /// A newer epoch than the holder's exists.
    #[error("epoch {epoch} is superseded by epoch {newer}")]
    Superseded {
        /// The holder's epoch.
        epoch: Epoch,
        /// A newer epoch (the newest found).
        newer: Epoch,
    },
    /// Renewing an epoch that was never claimed, or was claimed by another lane.
    #[error("epoch {epoch} is not held by {holder}")]
    NotHolder {
        /// The epoch.
        epoch: Epoch,
        /// Who tried to renew.
        holder: LaneId,
    },
    /// A filesystem call failed.
    #[error("lease store: {op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A lease file that cannot be parsed.
    #[error("lease store: corrupt file {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: &'static str,
    },
    /// The quorum store could not complete the call in time: no leader, no majority, or the network failed. The
    /// driver treats it like any failed call (a failed renewal leads to a fence at the deadline).
    #[error("lease store: {op} not completed within {timeout_ms} ms: {reason}")]
    Unavailable {
        /// The operation.
        op: &'static str,
        /// The operation's time budget.
        timeout_ms: u64,
        /// The last attempt's failure.
        reason: String,
    },
    /// A fault injected by a test store.
    #[error("lease store: injected fault in {op}")]
    Injected {
        /// The operation that was failed.
        op: &'static str,
    },
}

/// Storage for the lease. See the module docs for the contract.
pub trait LeaseStore: Send + Sync + 'static {
    /// The newest claimed epoch, its holder and heartbeat, or `None` if no epoch was ever claimed. `hint` is the
    /// highest epoch the caller has seen; the store may start its search there.
    fn read(&self, hint: Option<Epoch>) -> Result<Option<LeaseView>, LeaseError>;

    /// Claim `epoch` for `holder`. Exactly one claim of an epoch ever succeeds; the others get
    /// [`LeaseError::Lost`].
    fn claim(&self, epoch: Epoch, holder: &LaneId) -> Result<(), LeaseError>;

    /// Publish heartbeat `counter` for `epoch`, which `holder` must hold. Fails with
    /// [`LeaseError::Superseded`] if a newer epoch exists.
    fn renew(&self, epoch: Epoch, holder: &LaneId, counter: u64) -> Result<(), LeaseError>;

    /// Remove state of epochs older than `current` that no reader needs. Best effort; never removes anything the
    /// claim and supersession checks depend on.
    fn collect_garbage(&self, current: Epoch) -> Result<(), LeaseError>;
}
