//! The store seam: where the send and ack paths hand persistent work to durable storage.
//!
//! The broker describes its durable changes as journal [`Record`]s (message bodies stored once,
//! refs per queue, acks, delivery counts, duplicate-detection ids) and submits them in units that
//! must survive or vanish together. [`MessageStore::submit`] waits only for room in the store's
//! bounded queue; the [`Durable`] future it returns resolves once the unit is durable. The
//! connection keeps reading while earlier units are in flight (pipelining), and confirms each send
//! to its producer only when its unit is durable (invariant 1).
//!
//! Two implementations: the file [`Journal`] (`"journal"`) and [`MemoryStore`] (`"memory"`),
//! which keeps nothing, so a restart loses every message (embedded brokers and tests).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::journal::{Journal, JournalError, Location, Record};

/// A failure to make something durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<JournalError> for StoreError {
    fn from(e: JournalError) -> StoreError {
        if e.is_storage_full() {
            StoreError(format!(
                "the journal's disk is full; the message was not stored ({e})"
            ))
        } else {
            StoreError(format!("the journal could not store the message: {e}"))
        }
    }
}

/// Resolves once a submitted unit is durable.
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

/// What `submit` returns: a unit accepted (its durability pending) or refused at once.
pub type Submitted<'a> = Pin<Box<dyn Future<Output = Result<Durable, StoreError>> + Send + 'a>>;

/// Durable storage for persistent messages.
pub trait MessageStore: Send + Sync + fmt::Debug + 'static {
    /// Queues `records` as one atomic unit. Waits only for room in the store's queue.
    fn submit(&self, records: Vec<Record>) -> Submitted<'_>;
    /// Whether anything survives a restart (the broker skips building records when not).
    fn persistent(&self) -> bool;
    /// A short name for `/health`.
    fn kind(&self) -> &'static str;
    /// Flushes and stops; later submits fail.
    fn close(&self) {}
    /// Stops at once without writing anything more (the lane lost its lease); queued work fails.
    fn fence(&self) {}
    /// Appends the store's counters to `/metrics` (Prometheus text).
    fn write_metrics(&self, _out: &mut String) {}
    /// Where the body of message `msg_id` was stored, once the unit holding its `AddMessage` is
    /// durable; asked once per message (the store may forget it then). `None`: the store cannot
    /// read it back, so the broker keeps the body in memory.
    fn take_location(&self, _msg_id: u64) -> Option<Location> {
        None
    }
    /// Reads bodies back for paging; `None` if this store cannot (the broker then never pages:
    /// a full destination blocks or fails).
    fn pager(&self) -> Option<Arc<dyn Pager>> {
        None
    }
}

/// Reads stored message bodies back (paging). Blocking: one positional read.
pub trait Pager: Send + Sync + fmt::Debug + 'static {
    /// The body of live message `msg_id`, last known at `at`.
    fn read_body(&self, msg_id: u64, at: Location) -> Result<Bytes, StoreError>;
}

impl Pager for Journal {
    fn read_body(&self, msg_id: u64, at: Location) -> Result<Bytes, StoreError> {
        Journal::read_body(self, msg_id, at)
            .map_err(|e| StoreError(format!("cannot read message {msg_id} back: {e}")))
    }
}

/// Keeps nothing; every unit is "durable" at once.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl MessageStore for MemoryStore {
    fn submit(&self, _records: Vec<Record>) -> Submitted<'_> {
        Box::pin(std::future::ready(Ok(
            Box::pin(std::future::ready(Ok(()))) as Durable
        )))
    }

    fn persistent(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// The file journal as a store.
pub struct JournalStore {
    journal: Arc<Journal>,
}

impl JournalStore {
    /// Wraps an open journal.
    pub fn new(journal: Journal) -> JournalStore {
        JournalStore {
            journal: Arc::new(journal),
        }
    }

    /// The journal, for statistics.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }
}

impl fmt::Debug for JournalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalStore")
            .field("dir", &self.journal.dir())
            .finish()
    }
}

impl MessageStore for JournalStore {
    fn submit(&self, records: Vec<Record>) -> Submitted<'_> {
        Box::pin(async move {
            let completion = self.journal.append_async(records).await?;
            Ok(Box::pin(async move {
                completion.await?;
                Ok(())
            }) as Durable)
        })
    }

    fn persistent(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "journal"
    }

    fn close(&self) {
        self.journal.close();
    }

    fn fence(&self) {
        self.journal.fence();
    }

    fn take_location(&self, msg_id: u64) -> Option<Location> {
        self.journal.take_location(msg_id)
    }

    fn pager(&self) -> Option<Arc<dyn Pager>> {
        Some(self.journal.clone())
    }

    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let s = self.journal.stats();
        for (name, help, v) in [
            (
                "tandem_journal_appends_total",
                "Appends (atomic units) submitted.",
                s.appends,
            ),
            (
                "tandem_journal_batches_total",
                "Batches written (group commits).",
                s.batches,
            ),
            (
                "tandem_journal_records_total",
                "Records written.",
                s.records,
            ),
            ("tandem_journal_bytes_total", "Bytes written.", s.bytes),
            (
                "tandem_journal_fsyncs_total",
                "Segment data syncs.",
                s.fsyncs,
            ),
            (
                "tandem_journal_failed_batches_total",
                "Batches that failed (I/O).",
                s.failed_batches,
            ),
            (
                "tandem_journal_live_segments",
                "Segment files in use.",
                s.live_segments,
            ),
        ] {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
}
