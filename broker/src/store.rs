//! The store seam: where the send and ack paths hand persistent work to durable storage.
//!
//! The broker describes its durable changes as journal [`Record`]s (message bodies stored once,
//! refs per queue, acks, delivery counts, duplicate-detection ids) and submits them in units that
//! must survive or vanish together. [`MessageStore::submit`] waits only for room in the store's
//! bounded queue; the [`Durable`] future it returns resolves once the unit is durable. The
//! connection keeps reading while earlier units are in flight (pipelining), and confirms each send
//! to its producer only when its unit is durable (invariant 1).
//!
//! Two implementations, held to one contract by `broker/tests/store_conformance.rs`: the file
//! [`Journal`] (`"journal"`) and [`MemoryStore`] (`"memory"`).
//!
//! Restart semantics: a journal reopened on its directory returns the live state (every message
//! with a ref that was not acked, counts, schedules, dup ids, destinations, subscriptions,
//! prepared transactions). A [`MemoryStore`] keeps the same live state in memory for as long as
//! the value lives; [`MemoryStore::reopen`] is its "restart" (same state, new handle, undecided
//! unprepared transactions dropped, as the journal does). Nothing survives the process. A broker
//! started without persistence does not submit anything to its store (`persistent()` is false):
//! a broker restart then loses every message, and nothing can be paged (a full destination
//! blocks or fails).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::journal::{
    Journal, JournalError, Location, PreparedTx, Record, Recovered, RecoveredDestination,
    RecoveredMessage, RecoveredRef, SubscriptionRecord,
};

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

/// The live state in memory; every unit is "durable" as soon as it is applied. See the module
/// docs for its restart semantics.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<parking_lot::Mutex<MemState>>,
}

/// Duplicate-detection entries kept per producer (the journal's default).
const MEMORY_DUP_IDS: usize = 1024;

#[derive(Debug, Default)]
struct MemState {
    stopped: Option<&'static str>,
    msgs: BTreeMap<u64, (Bytes, Vec<RecoveredRef>)>,
    dests: BTreeMap<String, u8>,
    subs: BTreeMap<String, SubscriptionRecord>,
    dups: HashMap<String, VecDeque<u64>>,
    /// Undecided transactions: ops in order, and whether prepared.
    txs: BTreeMap<u64, (Vec<Record>, bool)>,
    /// Messages appended since the last `take_location` for them.
    fresh: HashSet<u64>,
    max_epoch: u64,
    max_msg_id: u64,
    max_tx_id: u64,
}

impl MemState {
    fn apply(&mut self, r: Record) {
        match r {
            Record::AddMessage { msg_id, encoded } => {
                self.max_msg_id = self.max_msg_id.max(msg_id);
                self.fresh.insert(msg_id);
                self.msgs
                    .entry(msg_id)
                    .and_modify(|m| m.0 = encoded.clone())
                    .or_insert((encoded, Vec::new()));
            }
            Record::AddRef { msg_id, queue } => {
                if let Some((_, refs)) = self.msgs.get_mut(&msg_id)
                    && !refs.iter().any(|r| *r.queue == *queue)
                {
                    refs.push(RecoveredRef {
                        queue: queue.into(),
                        delivery_count: 0,
                        deliver_at_ms: None,
                    });
                }
            }
            Record::AckRef { msg_id, queue } => {
                if let Some((_, refs)) = self.msgs.get_mut(&msg_id) {
                    refs.retain(|r| *r.queue != *queue);
                    if refs.is_empty() {
                        self.msgs.remove(&msg_id);
                        self.fresh.remove(&msg_id);
                    }
                }
            }
            Record::DeliveryCount {
                msg_id,
                queue,
                count,
            } => {
                if let Some(r) = self.find_ref(msg_id, &queue) {
                    r.delivery_count = count;
                }
            }
            Record::ScheduledDelivery {
                msg_id,
                queue,
                deliver_at_ms,
            } => {
                if let Some(r) = self.find_ref(msg_id, &queue) {
                    r.deliver_at_ms = Some(deliver_at_ms);
                }
            }
            Record::Destination {
                name,
                kind,
                deleted,
            } => {
                if deleted {
                    self.dests.remove(&name);
                } else {
                    self.dests.insert(name, kind);
                }
            }
            Record::Subscription(sub) => {
                if sub.deleted {
                    self.subs.remove(&sub.queue);
                } else {
                    self.subs.insert(sub.queue.clone(), sub);
                }
            }
            Record::DupId { producer, seq } => {
                let q = self.dups.entry(producer).or_default();
                q.push_back(seq);
                if q.len() > MEMORY_DUP_IDS {
                    q.pop_front();
                }
            }
            Record::EpochMarker { epoch } => self.max_epoch = self.max_epoch.max(epoch),
            Record::Tx { tx_id, op } => {
                self.max_tx_id = self.max_tx_id.max(tx_id);
                if let Record::AddMessage { msg_id, .. } = &*op {
                    self.max_msg_id = self.max_msg_id.max(*msg_id);
                }
                self.txs.entry(tx_id).or_default().0.push(*op);
            }
            Record::TxPrepare { tx_id } => {
                self.max_tx_id = self.max_tx_id.max(tx_id);
                self.txs.entry(tx_id).or_default().1 = true;
            }
            Record::TxCommit { tx_id } => {
                self.max_tx_id = self.max_tx_id.max(tx_id);
                for op in self.txs.remove(&tx_id).map(|t| t.0).unwrap_or_default() {
                    // Like the journal: a body added in a transaction has no location to
                    // hand out (the broker keeps it in memory).
                    let added = match &op {
                        Record::AddMessage { msg_id, .. } => Some(*msg_id),
                        _ => None,
                    };
                    self.apply(op);
                    if let Some(id) = added {
                        self.fresh.remove(&id);
                    }
                }
            }
            Record::TxRollback { tx_id } => {
                self.max_tx_id = self.max_tx_id.max(tx_id);
                self.txs.remove(&tx_id);
            }
        }
    }

    fn find_ref(&mut self, msg_id: u64, queue: &str) -> Option<&mut RecoveredRef> {
        let (_, refs) = self.msgs.get_mut(&msg_id)?;
        refs.iter_mut().find(|r| &*r.queue == queue)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// What a journal would recover from the same history now.
    pub fn recovered(&self) -> Recovered {
        let st = self.state.lock();
        Recovered {
            messages: st
                .msgs
                .iter()
                .filter(|(_, (_, refs))| !refs.is_empty())
                .map(|(id, (body, refs))| RecoveredMessage {
                    msg_id: *id,
                    encoded: body.clone(),
                    refs: refs.clone(),
                    location: Some(memory_location(*id, body)),
                })
                .collect(),
            destinations: st
                .dests
                .iter()
                .map(|(name, kind)| RecoveredDestination {
                    name: name.clone(),
                    kind: *kind,
                })
                .collect(),
            subscriptions: st.subs.values().cloned().collect(),
            dup_ids: st
                .dups
                .iter()
                .map(|(p, q)| (p.clone(), q.iter().copied().collect()))
                .collect(),
            prepared_txs: st
                .txs
                .iter()
                .filter(|(_, (_, prepared))| *prepared)
                .map(|(id, (ops, _))| PreparedTx {
                    tx_id: *id,
                    ops: ops.clone(),
                })
                .collect(),
            max_epoch: st.max_epoch,
            max_msg_id: st.max_msg_id,
            max_tx_id: st.max_tx_id,
            report: Default::default(),
        }
    }

    /// "Restarts" the store: a new handle on the same live state (this one is closed), with
    /// undecided transactions that were never prepared dropped, and what it recovers.
    pub fn reopen(&self) -> (MemoryStore, Recovered) {
        let mut st = self.state.lock();
        st.stopped
            .get_or_insert("the memory store was reopened elsewhere");
        let mut fresh = std::mem::take(&mut *st);
        fresh.stopped = None;
        fresh.fresh.clear();
        fresh.txs.retain(|_, (_, prepared)| *prepared);
        // Messages without a ref (added, never referenced) are dropped at recovery.
        fresh.msgs.retain(|_, (_, refs)| !refs.is_empty());
        drop(st);
        let store = MemoryStore {
            state: Arc::new(parking_lot::Mutex::new(fresh)),
        };
        let recovered = store.recovered();
        (store, recovered)
    }
}

/// Memory "locations" carry only the length: the body is found by id.
fn memory_location(_msg_id: u64, body: &Bytes) -> Location {
    Location {
        segment: 0,
        offset: 0,
        len: body.len() as u32,
    }
}

impl MessageStore for MemoryStore {
    fn submit(&self, records: Vec<Record>) -> Submitted<'_> {
        let outcome = (|| {
            for r in &records {
                r.validate()
                    .map_err(|e| StoreError(format!("invalid record: {e}")))?;
            }
            let mut st = self.state.lock();
            if let Some(why) = st.stopped {
                return Err(StoreError(why.into()));
            }
            for r in records {
                st.apply(r);
            }
            Ok(Box::pin(std::future::ready(Ok(()))) as Durable)
        })();
        Box::pin(std::future::ready(outcome))
    }

    /// False: a broker without persistence keeps no store state (see the module docs).
    fn persistent(&self) -> bool {
        false
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn close(&self) {
        self.state
            .lock()
            .stopped
            .get_or_insert("the memory store is closed");
    }

    fn fence(&self) {
        self.state
            .lock()
            .stopped
            .get_or_insert("the memory store is fenced");
    }

    fn take_location(&self, msg_id: u64) -> Option<Location> {
        let mut st = self.state.lock();
        if !st.fresh.remove(&msg_id) {
            return None;
        }
        st.msgs
            .get(&msg_id)
            .map(|(b, _)| memory_location(msg_id, b))
    }

    fn pager(&self) -> Option<Arc<dyn Pager>> {
        Some(Arc::new(self.clone()))
    }
}

impl Pager for MemoryStore {
    fn read_body(&self, msg_id: u64, _at: Location) -> Result<Bytes, StoreError> {
        self.state
            .lock()
            .msgs
            .get(&msg_id)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StoreError(format!("message {msg_id} is not in the memory store")))
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
            (
                "tandem_journal_placed_locations",
                "Body locations the journal holds for paging (untaken appends, compaction moves).",
                self.journal.placed_len() as u64,
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
