//! An in-memory lease store for tests: several handles share one lease, each with its own fault switches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{LeaseError, LeaseStore};
use crate::{Epoch, LaneId, LeaseView};

/// Fault switches of one [`MemoryLeaseStore`] handle.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail every `read`.
    pub fail_reads: AtomicBool,
    /// Fail every `claim` (before it takes effect).
    pub fail_claims: AtomicBool,
    /// Fail every `renew` (before it takes effect).
    pub fail_renewals: AtomicBool,
    /// Let every `renew` take effect, then report it failed (a reply lost after the write landed).
    pub lose_renewal_replies: AtomicBool,
    /// Block every call this many milliseconds before it takes effect (a slow or hung disk).
    pub delay_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    /// Epoch -> holder.
    epochs: BTreeMap<u64, LaneId>,
    /// Epoch -> heartbeat counter.
    heartbeats: BTreeMap<u64, u64>,
}

/// An in-memory lease store. [`MemoryLeaseStore::new_handle`] gives another handle on the same lease with its own
/// [`Faults`], so two lanes in one process can share a lease and fail independently.
#[derive(Debug, Clone, Default)]
pub struct MemoryLeaseStore {
    shared: Arc<Mutex<Shared>>,
    faults: Arc<Faults>,
}

impl MemoryLeaseStore {
    /// An empty lease.
    pub fn new() -> MemoryLeaseStore {
        MemoryLeaseStore::default()
    }

    /// Another handle on the same lease, with fresh (all off) fault switches.
    pub fn new_handle(&self) -> MemoryLeaseStore {
        MemoryLeaseStore {
            shared: Arc::clone(&self.shared),
            faults: Arc::default(),
        }
    }

    /// This handle's fault switches.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn enter(
        &self,
        op: &'static str,
        fail: &AtomicBool,
    ) -> Result<MutexGuard<'_, Shared>, LeaseError> {
        let delay = self.faults.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            // Test-only store: blocking here models a slow disk; the driver runs store calls off the runtime.
            std::thread::sleep(Duration::from_millis(delay));
        }
        if fail.load(Ordering::Relaxed) {
            return Err(LeaseError::Injected { op });
        }
        // A poisoned lock only means another test thread panicked; the map itself is always consistent.
        Ok(self.shared.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

fn newest(shared: &Shared) -> Option<u64> {
    shared.epochs.keys().next_back().copied()
}

impl LeaseStore for MemoryLeaseStore {
    fn read(&self, _hint: Option<Epoch>) -> Result<Option<LeaseView>, LeaseError> {
        let shared = self.enter("read", &self.faults.fail_reads)?;
        Ok(shared
            .epochs
            .iter()
            .next_back()
            .map(|(&epoch, holder)| LeaseView {
                epoch: Epoch(epoch),
                holder: Some(holder.clone()),
                heartbeat: shared.heartbeats.get(&epoch).copied().unwrap_or(0),
            }))
    }

    fn claim(&self, epoch: Epoch, holder: &LaneId) -> Result<(), LeaseError> {
        let mut shared = self.enter("claim", &self.faults.fail_claims)?;
        if shared.epochs.contains_key(&epoch.0) {
            return Err(LeaseError::Lost { epoch });
        }
        if epoch.0 == 0 || (epoch.0 > 1 && !shared.epochs.contains_key(&(epoch.0 - 1))) {
            return Err(LeaseError::NotNext { epoch });
        }
        shared.epochs.insert(epoch.0, holder.clone());
        Ok(())
    }

    fn renew(&self, epoch: Epoch, holder: &LaneId, counter: u64) -> Result<(), LeaseError> {
        let mut shared = self.enter("renew", &self.faults.fail_renewals)?;
        if shared.epochs.get(&epoch.0) != Some(holder) {
            return Err(LeaseError::NotHolder {
                epoch,
                holder: holder.clone(),
            });
        }
        if let Some(newer) = newest(&shared).filter(|&n| n > epoch.0) {
            return Err(LeaseError::Superseded {
                epoch,
                newer: Epoch(newer),
            });
        }
        shared.heartbeats.insert(epoch.0, counter);
        if self.faults.lose_renewal_replies.load(Ordering::Relaxed) {
            return Err(LeaseError::Injected { op: "renew reply" });
        }
        Ok(())
    }

    fn collect_garbage(&self, current: Epoch) -> Result<(), LeaseError> {
        let mut shared = self.enter("collect_garbage", &AtomicBool::new(false))?;
        shared.heartbeats.retain(|&e, _| e >= current.0);
        Ok(())
    }
}
