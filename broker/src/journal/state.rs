//! The journal's live-state machine, shared by recovery and the writer thread so that both
//! account segments identically.
//!
//! It knows, for every live message, ref, destination, subscription, dup-id entry and pending
//! transaction, which segment holds the record that keeps it alive; per segment it keeps a live
//! count and the set of segments it *needs* (see "Reclaim" in the module docs). Message bodies
//! are held only during recovery (`keep_bodies`); the running writer keeps ids only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use super::record::{RECORD_HEADER_LEN, Record, RecordView, SubscriptionRecord};

pub(crate) type SegId = u64;

/// A small multiplicative hasher: keys are broker-assigned ids and queue names, and recovery of
/// a million messages should not pay for SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastBuild;

#[derive(Debug)]
pub(crate) struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for FastBuild {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(0)
    }
}

type FastMap<K, V> = HashMap<K, V, FastBuild>;

/// A message recovered live: its body and the queues it is still on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMessage {
    pub msg_id: u64,
    /// The body as appended. It may share memory with other bodies read from the same segment.
    pub encoded: Bytes,
    /// The queues it is on (never empty), in the order they were added.
    pub refs: Vec<RecoveredRef>,
    /// Where its body is, for reading it back ([`super::Journal::read_body`]); `None` if it
    /// was added inside a transaction.
    pub location: Option<super::Location>,
}

/// One live ref of a recovered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredRef {
    pub queue: Arc<str>,
    /// Last `DeliveryCount` written for this ref (0 if none). The broker adds one when it
    /// redelivers after recovery and marks the message redelivered if the count is > 0 or if the
    /// message may have been delivered before the crash.
    pub delivery_count: u32,
    /// Last `ScheduledDelivery` for this ref.
    pub deliver_at_ms: Option<u64>,
}

/// A live destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredDestination {
    pub name: String,
    pub kind: u8,
}

/// A transaction that was prepared and neither committed nor rolled back. Its ops are NOT
/// applied to the recovered state; the broker decides (append `TxCommit` or `TxRollback`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedTx {
    pub tx_id: u64,
    /// The ops in write order (each a transactional record, without the `Tx` wrapper).
    pub ops: Vec<super::Record>,
}

/// The live state found at open.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Live messages by ascending `msg_id`.
    pub messages: Vec<RecoveredMessage>,
    pub destinations: Vec<RecoveredDestination>,
    /// Live subscriptions (never `deleted`).
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Duplicate-detection cache: per producer, its last N sequence numbers, oldest first.
    pub dup_ids: HashMap<String, Vec<u64>>,
    pub prepared_txs: Vec<PreparedTx>,
    /// Highest epoch seen in the journal (batch epochs and markers), 0 for a new journal.
    pub max_epoch: u64,
    /// Highest `msg_id` ever seen (live or not): the broker must allocate above it.
    pub max_msg_id: u64,
    /// Highest `tx_id` ever seen: transaction ids must never be reused.
    pub max_tx_id: u64,
    pub report: super::RecoveryReport,
}

#[derive(Debug)]
struct RefEntry {
    queue: Arc<str>,
    seg: SegId,
    count: u32,
    count_seg: Option<SegId>,
    deliver_at: Option<u64>,
    deliver_at_seg: Option<SegId>,
}

#[derive(Debug)]
struct MsgEntry {
    seg: SegId,
    refs: Vec<RefEntry>,
}

#[derive(Debug)]
enum PendingOp {
    AddMessage {
        msg_id: u64,
        body: Option<Bytes>,
    },
    AddRef {
        msg_id: u64,
        queue: Arc<str>,
    },
    AckRef {
        msg_id: u64,
        queue: Arc<str>,
    },
    DeliveryCount {
        msg_id: u64,
        queue: Arc<str>,
        count: u32,
    },
    Scheduled {
        msg_id: u64,
        queue: Arc<str>,
        at: u64,
    },
    DupId {
        producer: String,
        seq: u64,
    },
}

#[derive(Debug, Default)]
struct PendingTx {
    ops: Vec<(SegId, PendingOp)>,
    prepared_seg: Option<SegId>,
}

#[derive(Debug, Default)]
struct SegInfo {
    live: u64,
    /// Records ever applied in this segment (for the compaction ratio).
    written: u64,
    /// Live records that compaction does not move (destinations, subscriptions, dup ids,
    /// undecided transactions): a segment with any is not compacted.
    special: u64,
    /// Older (or, for tx ops, other) segments that must be gone before this one may go.
    needs: Vec<SegId>,
}

#[derive(Debug)]
pub(crate) struct State {
    msgs: FastMap<u64, MsgEntry>,
    /// Keep bodies (recovery) or not (the running writer).
    keep_bodies: bool,
    /// During recovery only: where each message's top-level `AddMessage` is.
    locations: FastMap<u64, super::Location>,
    /// During recovery only: live bodies. Apart from `msgs` so that the running writer's entry
    /// per live message stays small (paging keeps millions of them).
    bodies: FastMap<u64, Bytes>,
    segs: BTreeMap<SegId, SegInfo>,
    queues: HashSet<Arc<str>, FastBuild>,
    dests: HashMap<String, (u8, SegId), FastBuild>,
    subs: HashMap<String, (SubscriptionRecord, SegId), FastBuild>,
    dups: HashMap<String, VecDeque<(u64, SegId)>, FastBuild>,
    dup_limit: usize,
    /// Producers remembered at most; the least recently written one is forgotten first, so the
    /// cache (and the segments its live `DupId`s pin) stays bounded however many producers come
    /// and go (a client that opens a producer per send, say).
    dup_producers: usize,
    dup_stamp: u64,
    /// Last write stamp per producer, and the producer's name shared with `dup_order`.
    dup_last: HashMap<String, (u64, Arc<str>), FastBuild>,
    /// (stamp, producer) in write order; entries whose stamp is no longer the producer's last are
    /// stale and skipped (lazy LRU).
    dup_order: VecDeque<(u64, Arc<str>)>,
    txs: FastMap<u64, PendingTx>,
    epoch: u64,
    epoch_seg: Option<SegId>,
    pub(crate) max_msg_id: u64,
    pub(crate) max_tx_id: u64,
    /// Some segment's live count reached zero since the last reclaim sweep.
    pub(crate) dirty: bool,
    /// Refs/acks that named an unknown message or queue (ignored, counted for the report).
    pub(crate) anomalies: u64,
}

impl State {
    pub(crate) fn new(dup_limit: usize, keep_bodies: bool) -> Self {
        State {
            msgs: FastMap::default(),
            keep_bodies,
            locations: FastMap::default(),
            bodies: FastMap::default(),
            segs: BTreeMap::new(),
            queues: HashSet::default(),
            dests: HashMap::default(),
            subs: HashMap::default(),
            dups: HashMap::default(),
            dup_limit: dup_limit.max(1),
            dup_producers: 65_536,
            dup_stamp: 0,
            dup_last: HashMap::default(),
            dup_order: VecDeque::new(),
            txs: FastMap::default(),
            epoch: 0,
            epoch_seg: None,
            max_msg_id: 0,
            max_tx_id: 0,
            dirty: false,
            anomalies: 0,
        }
    }

    /// Room for `additional` more messages (recovery estimates it after the first segment, to
    /// avoid rehashing a million-entry map several times).
    pub(crate) fn reserve_messages(&mut self, additional: usize) {
        self.msgs.reserve(additional);
    }

    pub(crate) fn has_message(&self, msg_id: u64) -> bool {
        self.msgs.contains_key(&msg_id)
    }

    pub(crate) fn message_count(&self) -> usize {
        self.msgs.len()
    }

    pub(crate) fn add_segment(&mut self, id: SegId) {
        self.segs.entry(id).or_default();
    }

    pub(crate) fn segment_ids(&self) -> Vec<SegId> {
        self.segs.keys().copied().collect()
    }

    #[cfg(test)]
    pub(crate) fn live_count(&self, id: SegId) -> Option<u64> {
        self.segs.get(&id).map(|s| s.live)
    }

    fn inc(&mut self, seg: SegId) {
        self.segs.entry(seg).or_default().live += 1;
    }

    fn dec(&mut self, seg: SegId) {
        if let Some(s) = self.segs.get_mut(&seg) {
            s.live = s.live.saturating_sub(1);
            if s.live == 0 {
                self.dirty = true;
            }
        }
    }

    fn inc_special(&mut self, seg: SegId) {
        let s = self.segs.entry(seg).or_default();
        s.live += 1;
        s.special += 1;
    }

    fn dec_special(&mut self, seg: SegId) {
        if let Some(s) = self.segs.get_mut(&seg) {
            s.special = s.special.saturating_sub(1);
        }
        self.dec(seg);
    }

    /// `n` more records were applied in `seg` (called once per batch).
    pub(crate) fn note_written(&mut self, seg: SegId, n: u64) {
        self.segs.entry(seg).or_default().written += n;
    }

    /// `seg` holds a record that cancels or completes one in `other`.
    fn need(&mut self, seg: SegId, other: SegId) {
        if seg == other {
            return;
        }
        let s = self.segs.entry(seg).or_default();
        if !s.needs.contains(&other) {
            s.needs.push(other);
        }
    }

    fn intern(&mut self, q: &str) -> Arc<str> {
        if let Some(a) = self.queues.get(q) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(q);
        self.queues.insert(a.clone());
        a
    }

    /// Applies one record found (or just written) in segment `seg`. `src` is the buffer the
    /// view borrows from when bodies are being kept (recovery).
    pub(crate) fn apply(&mut self, seg: SegId, rec: &RecordView<'_>, src: Option<&Bytes>) {
        match rec {
            RecordView::AddMessage { msg_id, encoded } => {
                let body = self.body_of(encoded, src);
                if self.keep_bodies
                    && let Some(src) = src
                {
                    // The body is a slice of the segment read: its record starts 13 bytes before.
                    let at = encoded.as_ptr() as usize - src.as_ptr() as usize;
                    self.locations.insert(
                        *msg_id,
                        super::Location {
                            segment: seg,
                            offset: (at - RECORD_HEADER_LEN - 8) as u32,
                            len: encoded.len() as u32,
                        },
                    );
                }
                self.add_message(seg, *msg_id, body)
            }
            RecordView::AddRef { msg_id, queue } => self.add_ref(seg, *msg_id, queue),
            RecordView::AckRef { msg_id, queue } => self.ack_ref(seg, *msg_id, queue),
            RecordView::DeliveryCount {
                msg_id,
                queue,
                count,
            } => self.delivery_count(seg, *msg_id, queue, *count),
            RecordView::ScheduledDelivery {
                msg_id,
                queue,
                deliver_at_ms,
            } => self.scheduled(seg, *msg_id, queue, *deliver_at_ms),
            RecordView::Destination {
                name,
                kind,
                deleted,
            } => {
                if let Some((_, old)) = self.dests.remove(*name) {
                    self.dec_special(old);
                    self.need(seg, old);
                }
                if !deleted {
                    self.dests.insert((*name).to_owned(), (*kind, seg));
                    self.inc_special(seg);
                }
            }
            RecordView::Subscription(s) => {
                if let Some((_, old)) = self.subs.remove(&s.queue) {
                    self.dec_special(old);
                    self.need(seg, old);
                }
                if !s.deleted {
                    self.subs.insert(s.queue.clone(), (s.clone(), seg));
                    self.inc_special(seg);
                }
            }
            RecordView::DupId { producer, seq } => self.dup_id(seg, producer, *seq),
            RecordView::EpochMarker { epoch } => {
                // The newest marker pins its segment so the highest epoch is never forgotten.
                if *epoch >= self.epoch {
                    if let Some(old) = self.epoch_seg.take() {
                        self.dec(old);
                    }
                    self.epoch = *epoch;
                    self.epoch_seg = Some(seg);
                    self.inc(seg);
                }
            }
            RecordView::Tx { tx_id, op } => {
                self.max_tx_id = self.max_tx_id.max(*tx_id);
                let op = self.pending_op(op, src);
                self.txs.entry(*tx_id).or_default().ops.push((seg, op));
                // A pending op pins its segment until the transaction is decided.
                self.inc_special(seg);
            }
            RecordView::TxPrepare { tx_id } => {
                self.max_tx_id = self.max_tx_id.max(*tx_id);
                let tx = self.txs.entry(*tx_id).or_default();
                if tx.prepared_seg.is_none() {
                    tx.prepared_seg = Some(seg);
                    self.inc_special(seg);
                }
            }
            RecordView::TxCommit { tx_id } => {
                self.max_tx_id = self.max_tx_id.max(*tx_id);
                if let Some(tx) = self.txs.remove(tx_id) {
                    self.settle(seg, &tx);
                    for (op_seg, op) in tx.ops {
                        self.apply_op(op_seg, op);
                    }
                }
            }
            RecordView::TxRollback { tx_id } => {
                self.max_tx_id = self.max_tx_id.max(*tx_id);
                if let Some(tx) = self.txs.remove(tx_id) {
                    self.settle(seg, &tx);
                }
            }
        }
    }

    /// Unpins a decided transaction's records; the decision (in `seg`) must outlive them.
    fn settle(&mut self, seg: SegId, tx: &PendingTx) {
        for (op_seg, _) in &tx.ops {
            self.dec_special(*op_seg);
            self.need(seg, *op_seg);
        }
        if let Some(p) = tx.prepared_seg {
            self.dec_special(p);
            self.need(seg, p);
        }
    }

    fn body_of(&self, encoded: &[u8], src: Option<&Bytes>) -> Option<Bytes> {
        match (self.keep_bodies, src) {
            (true, Some(src)) => Some(src.slice_ref(encoded)),
            (true, None) => Some(Bytes::copy_from_slice(encoded)),
            (false, _) => None,
        }
    }

    fn pending_op(&mut self, op: &RecordView<'_>, src: Option<&Bytes>) -> PendingOp {
        match op {
            RecordView::AddMessage { msg_id, encoded } => {
                self.max_msg_id = self.max_msg_id.max(*msg_id);
                PendingOp::AddMessage {
                    msg_id: *msg_id,
                    body: self.body_of(encoded, src),
                }
            }
            RecordView::AddRef { msg_id, queue } => PendingOp::AddRef {
                msg_id: *msg_id,
                queue: self.intern(queue),
            },
            RecordView::AckRef { msg_id, queue } => PendingOp::AckRef {
                msg_id: *msg_id,
                queue: self.intern(queue),
            },
            RecordView::DeliveryCount {
                msg_id,
                queue,
                count,
            } => PendingOp::DeliveryCount {
                msg_id: *msg_id,
                queue: self.intern(queue),
                count: *count,
            },
            RecordView::ScheduledDelivery {
                msg_id,
                queue,
                deliver_at_ms,
            } => PendingOp::Scheduled {
                msg_id: *msg_id,
                queue: self.intern(queue),
                at: *deliver_at_ms,
            },
            RecordView::DupId { producer, seq } => PendingOp::DupId {
                producer: (*producer).to_owned(),
                seq: *seq,
            },
            // Decode and `Record::validate` reject anything else inside a Tx.
            _ => unreachable!("non-transactional op inside Tx"),
        }
    }

    fn apply_op(&mut self, seg: SegId, op: PendingOp) {
        match op {
            PendingOp::AddMessage { msg_id, body } => {
                // Its record is a `Tx` wrapper, which `read_body` does not read.
                self.locations.remove(&msg_id);
                self.add_message(seg, msg_id, body)
            }
            PendingOp::AddRef { msg_id, queue } => self.add_ref(seg, msg_id, &queue),
            PendingOp::AckRef { msg_id, queue } => self.ack_ref(seg, msg_id, &queue),
            PendingOp::DeliveryCount {
                msg_id,
                queue,
                count,
            } => self.delivery_count(seg, msg_id, &queue, count),
            PendingOp::Scheduled { msg_id, queue, at } => self.scheduled(seg, msg_id, &queue, at),
            PendingOp::DupId { producer, seq } => self.dup_id(seg, &producer, seq),
        }
    }

    fn add_message(&mut self, seg: SegId, msg_id: u64, body: Option<Bytes>) {
        self.max_msg_id = self.max_msg_id.max(msg_id);
        if let Some(b) = body {
            self.bodies.insert(msg_id, b);
        }
        if let Some(m) = self.msgs.get_mut(&msg_id) {
            // A copy written by compaction: the message now lives here. The copy must not
            // outlive the original (or the original would come back after the copy's acks).
            let old = std::mem::replace(&mut m.seg, seg);
            self.dec(old);
            self.inc(seg);
            self.need(seg, old);
            return;
        }
        self.msgs.insert(
            msg_id,
            MsgEntry {
                seg,
                refs: Vec::new(),
            },
        );
        self.inc(seg);
    }

    fn add_ref(&mut self, seg: SegId, msg_id: u64, queue: &str) {
        let Some(m) = self.msgs.get(&msg_id) else {
            self.anomalies += 1;
            return;
        };
        if m.refs.iter().any(|r| &*r.queue == queue) {
            // A copy written by compaction: the ref now lives here (see `add_message`).
            let r = self.find_ref(msg_id, queue).unwrap();
            let old = std::mem::replace(&mut r.seg, seg);
            self.dec(old);
            self.inc(seg);
            self.need(seg, old);
            return;
        }
        let queue = self.intern(queue);
        self.msgs.get_mut(&msg_id).unwrap().refs.push(RefEntry {
            queue,
            seg,
            count: 0,
            count_seg: None,
            deliver_at: None,
            deliver_at_seg: None,
        });
        self.inc(seg);
    }

    fn ack_ref(&mut self, seg: SegId, msg_id: u64, queue: &str) {
        let Some(m) = self.msgs.get_mut(&msg_id) else {
            self.anomalies += 1;
            return;
        };
        let Some(i) = m.refs.iter().position(|r| &*r.queue == queue) else {
            self.anomalies += 1;
            return;
        };
        let r = m.refs.swap_remove(i);
        let now_empty = m.refs.is_empty();
        let msg_seg = m.seg;
        self.dec(r.seg);
        // Ack-after-delete: this ack must survive as long as the AddRef it cancels.
        self.need(seg, r.seg);
        if let Some(s) = r.count_seg {
            self.dec(s);
        }
        if let Some(s) = r.deliver_at_seg {
            self.dec(s);
        }
        if now_empty {
            self.msgs.remove(&msg_id);
            if !self.bodies.is_empty() {
                self.bodies.remove(&msg_id);
            }
            // No `need` here: an AddMessage without refs is dropped at recovery anyway.
            self.dec(msg_seg);
        }
    }

    fn find_ref(&mut self, msg_id: u64, queue: &str) -> Option<&mut RefEntry> {
        self.msgs
            .get_mut(&msg_id)?
            .refs
            .iter_mut()
            .find(|r| &*r.queue == queue)
    }

    fn delivery_count(&mut self, seg: SegId, msg_id: u64, queue: &str, count: u32) {
        let Some(r) = self.find_ref(msg_id, queue) else {
            self.anomalies += 1;
            return;
        };
        r.count = count;
        let old = r.count_seg.replace(seg);
        if let Some(old) = old {
            self.dec(old);
        }
        self.inc(seg);
    }

    fn scheduled(&mut self, seg: SegId, msg_id: u64, queue: &str, at: u64) {
        let Some(r) = self.find_ref(msg_id, queue) else {
            self.anomalies += 1;
            return;
        };
        r.deliver_at = Some(at);
        let old = r.deliver_at_seg.replace(seg);
        if let Some(old) = old {
            self.dec(old);
        }
        self.inc(seg);
    }

    fn dup_id(&mut self, seg: SegId, producer: &str, seq: u64) {
        let limit = self.dup_limit;
        let q = match self.dups.get_mut(producer) {
            Some(q) => q,
            None => self.dups.entry(producer.to_owned()).or_default(),
        };
        q.push_back((seq, seg));
        let evicted = if q.len() > limit { q.pop_front() } else { None };
        self.inc_special(seg);
        if let Some((_, old)) = evicted {
            self.dec_special(old);
        }
        self.dup_stamp += 1;
        let stamp = self.dup_stamp;
        let name = match self.dup_last.get_mut(producer) {
            Some(e) => {
                e.0 = stamp;
                e.1.clone()
            }
            None => {
                let name: Arc<str> = Arc::from(producer);
                self.dup_last
                    .insert(producer.to_owned(), (stamp, name.clone()));
                name
            }
        };
        self.dup_order.push_back((stamp, name));
        while self.dups.len() > self.dup_producers {
            self.forget_oldest_producer();
        }
        if self.dup_order.len() > 2 * self.dup_last.len() + 1024 {
            let mut fresh: Vec<(u64, Arc<str>)> = self.dup_last.values().cloned().collect();
            fresh.sort_unstable_by_key(|e| e.0);
            self.dup_order = fresh.into();
        }
    }

    /// Sets how many producers the duplicate-detection cache remembers.
    pub(crate) fn with_dup_producers(mut self, n: usize) -> Self {
        self.dup_producers = n.max(1);
        self
    }

    fn forget_oldest_producer(&mut self) {
        while let Some((stamp, name)) = self.dup_order.pop_front() {
            if self.dup_last.get(&*name).is_some_and(|e| e.0 == stamp) {
                self.dup_last.remove(&*name);
                if let Some(q) = self.dups.remove(&*name) {
                    for (_, seg) in q {
                        self.dec_special(seg);
                    }
                }
                return;
            }
        }
    }

    /// The next segment (never `active` or newer) that may be deleted: nothing live in it, and
    /// every segment it needs is already gone. The caller deletes the file, then calls
    /// [`State::remove_segment`].
    pub(crate) fn next_reclaimable(&self, active: SegId) -> Option<SegId> {
        self.segs.iter().find_map(|(id, s)| {
            (*id < active && s.live == 0 && s.needs.iter().all(|n| !self.segs.contains_key(n)))
                .then_some(*id)
        })
    }

    /// A sealed segment worth compacting: mostly dead (live records below 1/`ratio` of those
    /// written), nothing in it that compaction cannot move, and nothing that keeps it from being
    /// deleted once its live records are copied forward.
    pub(crate) fn compaction_candidate(&self, active: SegId, ratio: u64) -> Option<SegId> {
        self.segs.iter().find_map(|(id, s)| {
            (*id < active
                && s.live > 0
                && s.special == 0
                && s.live * ratio < s.written
                && s.needs.iter().all(|n| !self.segs.contains_key(n)))
            .then_some(*id)
        })
    }

    /// The records that move everything still live in `seg` forward: each live message whose
    /// body is in `seg` with all its refs, and each live ref whose `AddRef`, count or schedule is
    /// in `seg`. `bodies` and `refs` are what the compactor found in the segment file; the live
    /// state decides what is still worth copying, so acks that raced with the read win.
    pub(crate) fn compaction_records(
        &self,
        seg: SegId,
        bodies: &[(u64, Bytes)],
        refs: &[(u64, String)],
    ) -> Vec<Record> {
        fn push_ref(out: &mut Vec<Record>, msg_id: u64, r: &RefEntry) {
            out.push(Record::AddRef {
                msg_id,
                queue: r.queue.to_string(),
            });
            if r.count_seg.is_some() {
                out.push(Record::DeliveryCount {
                    msg_id,
                    queue: r.queue.to_string(),
                    count: r.count,
                });
            }
            if let (Some(at), Some(_)) = (r.deliver_at, r.deliver_at_seg) {
                out.push(Record::ScheduledDelivery {
                    msg_id,
                    queue: r.queue.to_string(),
                    deliver_at_ms: at,
                });
            }
        }
        let mut out = Vec::new();
        if self.epoch_seg == Some(seg) {
            out.push(Record::EpochMarker { epoch: self.epoch });
        }
        let mut moved: HashSet<u64, FastBuild> = HashSet::default();
        for (msg_id, body) in bodies {
            let Some(m) = self.msgs.get(msg_id) else {
                continue;
            };
            if m.seg != seg || !moved.insert(*msg_id) {
                continue;
            }
            out.push(Record::AddMessage {
                msg_id: *msg_id,
                encoded: body.clone(),
            });
            for r in &m.refs {
                push_ref(&mut out, *msg_id, r);
            }
        }
        let mut done: HashSet<(u64, &str), FastBuild> = HashSet::default();
        for (msg_id, queue) in refs {
            if moved.contains(msg_id) || !done.insert((*msg_id, queue.as_str())) {
                continue;
            }
            let Some(r) = self
                .msgs
                .get(msg_id)
                .and_then(|m| m.refs.iter().find(|r| &*r.queue == queue.as_str()))
            else {
                continue;
            };
            if r.seg == seg || r.count_seg == Some(seg) || r.deliver_at_seg == Some(seg) {
                push_ref(&mut out, *msg_id, r);
            }
        }
        out
    }

    pub(crate) fn remove_segment(&mut self, id: SegId) {
        self.segs.remove(&id);
    }

    /// Ends recovery: lists transactions that were never prepared (the writer records their
    /// rollback), drops messages with no live ref, and hands out the live state.
    /// Bodies from segments that are mostly dead are copied so that they do not keep whole
    /// segment buffers alive.
    pub(crate) fn finish_recovery(
        &mut self,
        seg_sizes: &HashMap<SegId, usize>,
        out: &mut Recovered,
    ) -> Vec<u64> {
        // Left in `txs` on purpose: the writer's first batch holds a `TxRollback` for each, and
        // applying it settles them with the usual `need`s (the rollback outlives the ops).
        let mut discarded: Vec<u64> = self
            .txs
            .iter()
            .filter(|(_, t)| t.prepared_seg.is_none())
            .map(|(id, _)| *id)
            .collect();
        discarded.sort_unstable();

        let orphans: Vec<u64> = self
            .msgs
            .iter()
            .filter(|(_, m)| m.refs.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            let m = self.msgs.remove(&id).unwrap();
            self.bodies.remove(&id);
            self.dec(m.seg);
        }

        self.keep_bodies = false;
        let mut live_bytes: HashMap<SegId, usize, FastBuild> = HashMap::default();
        for (id, m) in &self.msgs {
            if let Some(b) = self.bodies.get(id) {
                *live_bytes.entry(m.seg).or_default() += b.len();
            }
        }
        let sparse: HashSet<SegId, FastBuild> = live_bytes
            .iter()
            .filter(|(s, n)| **n * 2 < seg_sizes.get(*s).copied().unwrap_or(0))
            .map(|(s, _)| *s)
            .collect();

        let mut messages = Vec::with_capacity(self.msgs.len());
        let mut bodies = std::mem::take(&mut self.bodies);
        for (id, m) in self.msgs.iter() {
            let Some(mut body) = bodies.remove(id) else {
                continue;
            };
            if sparse.contains(&m.seg) {
                body = Bytes::copy_from_slice(&body);
            }
            messages.push(RecoveredMessage {
                msg_id: *id,
                location: self
                    .locations
                    .get(id)
                    .copied()
                    .filter(|l| l.segment == m.seg),
                encoded: body,
                refs: m
                    .refs
                    .iter()
                    .map(|r| RecoveredRef {
                        queue: r.queue.clone(),
                        delivery_count: r.count,
                        deliver_at_ms: r.deliver_at,
                    })
                    .collect(),
            });
        }
        messages.sort_unstable_by_key(|m| m.msg_id);
        out.messages = messages;
        self.locations = FastMap::default();

        out.destinations = self
            .dests
            .iter()
            .map(|(name, (kind, _))| RecoveredDestination {
                name: name.clone(),
                kind: *kind,
            })
            .collect();
        out.destinations.sort_by(|a, b| a.name.cmp(&b.name));
        out.subscriptions = self.subs.values().map(|(s, _)| s.clone()).collect();
        out.subscriptions.sort_by(|a, b| a.queue.cmp(&b.queue));
        out.dup_ids = self
            .dups
            .iter()
            .map(|(p, q)| (p.clone(), q.iter().map(|(s, _)| *s).collect()))
            .collect();
        let mut prepared: Vec<PreparedTx> = self
            .txs
            .iter()
            .filter(|(_, tx)| tx.prepared_seg.is_some())
            .map(|(id, tx)| PreparedTx {
                tx_id: *id,
                ops: tx.ops.iter().map(|(_, op)| op.to_record()).collect(),
            })
            .collect();
        prepared.sort_by_key(|t| t.tx_id);
        out.prepared_txs = prepared;
        out.max_msg_id = self.max_msg_id;
        out.max_tx_id = self.max_tx_id;
        discarded
    }
}

impl PendingOp {
    fn to_record(&self) -> super::Record {
        use super::Record;
        match self {
            PendingOp::AddMessage { msg_id, body } => Record::AddMessage {
                msg_id: *msg_id,
                encoded: body.clone().unwrap_or_default(),
            },
            PendingOp::AddRef { msg_id, queue } => Record::AddRef {
                msg_id: *msg_id,
                queue: queue.to_string(),
            },
            PendingOp::AckRef { msg_id, queue } => Record::AckRef {
                msg_id: *msg_id,
                queue: queue.to_string(),
            },
            PendingOp::DeliveryCount {
                msg_id,
                queue,
                count,
            } => Record::DeliveryCount {
                msg_id: *msg_id,
                queue: queue.to_string(),
                count: *count,
            },
            PendingOp::Scheduled { msg_id, queue, at } => Record::ScheduledDelivery {
                msg_id: *msg_id,
                queue: queue.to_string(),
                deliver_at_ms: *at,
            },
            PendingOp::DupId { producer, seq } => Record::DupId {
                producer: producer.clone(),
                seq: *seq,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(st: &mut State, seg: SegId, id: u64, q: &str) {
        st.apply(
            seg,
            &RecordView::AddMessage {
                msg_id: id,
                encoded: b"b",
            },
            None,
        );
        st.apply(
            seg,
            &RecordView::AddRef {
                msg_id: id,
                queue: q,
            },
            None,
        );
    }

    #[test]
    fn ack_in_later_segment_is_kept_until_the_add_segment_is_gone() {
        let mut st = State::new(4, false);
        for s in 1..=4 {
            st.add_segment(s);
        }
        add(&mut st, 1, 10, "q"); // seg 1: message 10
        add(&mut st, 2, 11, "q"); // seg 2: message 11 (stays live)
        st.apply(
            3,
            &RecordView::AckRef {
                msg_id: 10,
                queue: "q",
            },
            None,
        );
        // seg 3 only holds the ack of message 10; it needs seg 1 gone first.
        assert_eq!(st.live_count(3), Some(0));
        assert_eq!(st.next_reclaimable(4), Some(1));
        st.remove_segment(1);
        assert_eq!(st.next_reclaimable(4), Some(3));
        st.remove_segment(3);
        assert_eq!(st.next_reclaimable(4), None, "seg 2 is live, 4 is active");
    }

    #[test]
    fn ack_segment_not_reclaimed_while_add_segment_lives() {
        let mut st = State::new(4, false);
        for s in 1..=3 {
            st.add_segment(s);
        }
        add(&mut st, 1, 10, "q");
        add(&mut st, 1, 11, "q");
        st.apply(
            2,
            &RecordView::AckRef {
                msg_id: 10,
                queue: "q",
            },
            None,
        );
        assert_eq!(st.next_reclaimable(3), None);
    }

    #[test]
    fn a_commit_outlives_the_ops_it_commits_and_pending_ops_pin_their_segment() {
        let mut st = State::new(4, false);
        st.add_segment(1);
        st.add_segment(2);
        let add = RecordView::AddMessage {
            msg_id: 1,
            encoded: b"b",
        };
        let add_ref = RecordView::AddRef {
            msg_id: 1,
            queue: "q",
        };
        for op in [add, add_ref] {
            let tx = RecordView::Tx {
                tx_id: 9,
                op: Box::new(op),
            };
            st.apply(1, &tx, None);
        }
        assert_eq!(st.next_reclaimable(2), None, "undecided tx pins segment 1");
        st.apply(2, &RecordView::TxCommit { tx_id: 9 }, None);
        // Message 1 is live in segment 1; the commit in segment 2 needs segment 1.
        assert_eq!(st.live_count(1), Some(2));
        assert_eq!(st.live_count(2), Some(0));
        st.add_segment(3);
        assert_eq!(st.next_reclaimable(3), None);
        st.apply(
            3,
            &RecordView::AckRef {
                msg_id: 1,
                queue: "q",
            },
            None,
        );
        assert_eq!(st.next_reclaimable(4), Some(1));
        st.remove_segment(1);
        assert_eq!(st.next_reclaimable(4), Some(2));
        st.remove_segment(2);
        assert_eq!(st.next_reclaimable(4), Some(3));
    }

    #[test]
    fn compaction_copies_only_what_is_live_and_the_copy_moves_the_accounting() {
        let mut st = State::new(4, false);
        for s in 1..=3 {
            st.add_segment(s);
        }
        add(&mut st, 1, 10, "q");
        add(&mut st, 1, 11, "q");
        st.apply(
            1,
            &RecordView::DeliveryCount {
                msg_id: 11,
                queue: "q",
                count: 4,
            },
            None,
        );
        st.apply(
            2,
            &RecordView::AckRef {
                msg_id: 10,
                queue: "q",
            },
            None,
        );
        let body = Bytes::from_static(b"b");
        let bodies = vec![(10, body.clone()), (11, body.clone())];
        let refs = vec![(10, "q".to_string()), (11, "q".to_string())];
        let copy = st.compaction_records(1, &bodies, &refs);
        assert_eq!(
            copy,
            vec![
                Record::AddMessage {
                    msg_id: 11,
                    encoded: body
                },
                Record::AddRef {
                    msg_id: 11,
                    queue: "q".into()
                },
                Record::DeliveryCount {
                    msg_id: 11,
                    queue: "q".into(),
                    count: 4
                },
            ],
            "message 10 was acked: not copied"
        );
        for r in &copy {
            st.apply(3, &r.view(), None);
        }
        assert_eq!(st.live_count(1), Some(0));
        assert_eq!(st.live_count(3), Some(3));
        // Segment 2 (the ack) needs 1; the copy in 3 needs 1 too: 1 goes first.
        assert_eq!(st.next_reclaimable(4), Some(1));
        st.remove_segment(1);
        assert_eq!(st.next_reclaimable(4), Some(2));
        // A second pass finds nothing left to copy.
        assert!(st.compaction_records(1, &bodies, &refs).is_empty());
    }

    #[test]
    fn a_compaction_copy_never_outlives_its_original() {
        let mut st = State::new(4, false);
        for s in 1..=4 {
            st.add_segment(s);
        }
        add(&mut st, 1, 10, "q");
        // Something else keeps segment 1 alive.
        st.apply(
            1,
            &RecordView::Destination {
                name: "d",
                kind: 1,
                deleted: false,
            },
            None,
        );
        let copy = st.compaction_records(1, &[(10, Bytes::from_static(b"b"))], &[]);
        for r in &copy {
            st.apply(2, &r.view(), None);
        }
        st.apply(
            3,
            &RecordView::AckRef {
                msg_id: 10,
                queue: "q",
            },
            None,
        );
        // Segment 2 (the copy) is dead but must stay while segment 1 (the original) exists,
        // or message 10 would come back from segment 1 at recovery.
        assert_eq!(st.live_count(2), Some(0));
        assert_eq!(st.next_reclaimable(4), None);
    }

    #[test]
    fn dup_ids_evict_and_unpin() {
        let mut st = State::new(2, false);
        st.add_segment(1);
        st.add_segment(2);
        st.add_segment(3);
        st.apply(
            1,
            &RecordView::DupId {
                producer: "p",
                seq: 1,
            },
            None,
        );
        st.apply(
            2,
            &RecordView::DupId {
                producer: "p",
                seq: 2,
            },
            None,
        );
        st.apply(
            2,
            &RecordView::DupId {
                producer: "p",
                seq: 3,
            },
            None,
        );
        assert_eq!(st.live_count(1), Some(0));
        assert_eq!(st.next_reclaimable(3), Some(1));
    }

    /// Producers come and go (one per send, in some clients): the cache remembers the most
    /// recently written ones only, and a forgotten producer's `DupId`s stop pinning segments.
    #[test]
    fn dup_cache_forgets_the_least_recently_written_producers() {
        let mut st = State::new(1, false).with_dup_producers(3);
        st.add_segment(1);
        for (i, p) in ["a", "b", "c", "a", "d", "e"].iter().enumerate() {
            st.apply(
                1,
                &RecordView::DupId {
                    producer: p,
                    seq: i as u64 + 1,
                },
                None,
            );
        }
        // "b" and "c" were the least recently written when "d" and "e" arrived.
        let mut left: Vec<&String> = st.dups.keys().collect();
        left.sort();
        assert_eq!(left, vec!["a", "d", "e"]);
        assert_eq!(st.dup_last.len(), 3);
        assert!(st.dup_order.len() <= 2 * 3 + 1024);
    }
}
