//! A queue: ready messages by priority, competing consumers under per-consumer windows.
//!
//! Every queue is one `parking_lot` mutex around [`QueueState`]; all work under it is synchronous
//! and short (no await, no I/O). Ready messages sit in one ordered map per priority, keyed by their
//! sequence in the queue, so a message that comes back (recover, consumer close) returns to its
//! original place and order within a priority is kept (invariant 5). Dispatch walks priorities from
//! 9 down, and within one priority in sequence order, and gives each message to the next consumer in
//! round-robin order that has room in its window and accepts it.
//!
//! Topic subscriptions are queues too (one per subscription), fed by the topic's fan-out.
//!
//! Memory (invariant 10): every queue counts the bodies it holds (ready and in flight) against
//! its own budget and the broker's global [`Budget`]. Beyond either, a queue whose full policy is
//! `page` keeps a new persistent message as a compact [`Slot::Paged`] entry (id, body location,
//! expiration, delivery history: about 40 bytes) and reads the body back from the store when
//! dispatch reaches it; `block` and `fail` push back on producers instead (see docs/PAGING.md).
//! Read-back happens under the queue lock (one `pread`); it is counted in the queue's stats.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::journal::Location;
use crate::message::{BrokerMessage, SelectorView};
use crate::session::ConsumerShared;
use crate::settings::{DestinationSettings, FullPolicy};
use crate::store::Pager;

/// The broker-wide budget of queued message bodies, shared by every queue.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    space: Notify,
    waiting: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether `size` more bytes fit. With nothing held, anything fits (a message larger than
    /// the budget is not refused forever).
    fn fits(&self, size: usize) -> bool {
        let used = self.used();
        used == 0 || used + size <= self.limit
    }

    fn charge(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, Ordering::Relaxed);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            limit: usize::MAX,
            used: AtomicUsize::new(0),
            space: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// How a queue holds memory: the broker's global budget and the store's reader (`None`: the
/// store cannot read bodies back, so nothing is paged).
#[derive(Debug, Clone, Default)]
pub struct Paging {
    /// The global budget.
    pub budget: Arc<Budget>,
    /// Reads paged bodies back.
    pub pager: Option<Arc<dyn Pager>>,
}

/// Paged messages one dispatch pass may read back without delivering them (see `dispatch`).
/// Beyond it, a consumer whose selector skips the first PAGE_SCAN_LIMIT paged messages waits
/// until others consume them (Artemis has the same limit on paged selectors).
pub const PAGE_SCAN_LIMIT: usize = 512;

/// A paged message: what dispatch needs without the body. Everything else (group, selector
/// fields, delivery time) is read back with the body.
#[derive(Debug, Clone, Copy)]
struct Paged {
    msg_id: u64,
    at: Location,
    expiration: i64,
    delivery_count: u32,
    redelivered: bool,
}

/// A ready message as the queue holds it.
#[derive(Debug)]
enum Slot {
    Resident(Entry),
    Paged(Paged),
}

impl Slot {
    fn is_expired(&self, now_ms: i64) -> bool {
        match self {
            Slot::Resident(e) => e.msg.is_expired(now_ms),
            Slot::Paged(p) => p.expiration != 0 && p.expiration <= now_ms,
        }
    }
}

/// A message on a queue, with its delivery history.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The shared message.
    pub msg: Arc<BrokerMessage>,
    /// How many times it has been delivered and seen (JMSXDeliveryCount of the next delivery minus 1).
    pub delivery_count: u32,
    /// The next delivery is a redelivery.
    pub redelivered: bool,
}

/// Most messages one [`Queue::browse`] call examines.
pub const BROWSE_SCAN_LIMIT: usize = 1024;

/// What one [`Queue::browse`] call found.
#[derive(Debug)]
pub struct Browsed {
    /// The selected messages, in delivery order.
    pub shown: Vec<(BrowsePos, Entry)>,
    /// The last message examined (shown or not): where the next call continues.
    pub scanned_to: Option<BrowsePos>,
    /// The queue has nothing after `scanned_to`.
    pub end: bool,
}

/// Where a queue browser stands: the last message it examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrowsePos {
    /// Its priority level.
    pub priority: u8,
    /// Its position within that level.
    pub seq: u64,
}

#[derive(Debug)]
struct ConsumerSlot {
    consumer: Arc<ConsumerShared>,
    outstanding: u32,
    credit: u32,
}

impl ConsumerSlot {
    fn has_room(&self) -> bool {
        self.outstanding < self.consumer.prefetch || self.credit > 0
    }
}

#[derive(Debug, Default)]
struct QueueState {
    ready: [BTreeMap<u64, Slot>; 10],
    ready_count: usize,
    inflight: usize,
    memory: usize,
    /// Ready messages held as [`Slot::Paged`], and their body bytes.
    paged: usize,
    paged_bytes: usize,
    consumers: Vec<ConsumerSlot>,
    rr: usize,
    next_seq: u64,
    /// Message groups (JMSXGroupID) pinned to a consumer (its key), so that one consumer sees a
    /// group's messages in order. Dropped when the consumer goes; the group is then reassigned.
    groups: HashMap<String, u64>,
    /// Messages whose JMSDeliveryTime is still ahead, by (deliver at, seq).
    scheduled: BTreeMap<(i64, u64), Entry>,
}

/// Counters exposed in `/metrics`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Messages added.
    pub enqueued: AtomicU64,
    /// Messages acknowledged.
    pub dequeued: AtomicU64,
    /// Messages dropped because they expired.
    pub expired: AtomicU64,
    /// Messages kept paged (body not in memory) when they were added.
    pub paged_total: AtomicU64,
    /// Bodies read back from the store (for delivery, selectors or expiry).
    pub page_reads: AtomicU64,
    /// Read-backs that failed (the message stays paged and is tried again).
    pub page_read_errors: AtomicU64,
}

/// A snapshot for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Ready to deliver.
    pub ready: usize,
    /// Delivered, not acknowledged.
    pub inflight: usize,
    /// Bytes held in memory (ready and in flight).
    pub memory: usize,
    /// Ready messages whose bodies are paged out.
    pub paged: usize,
    /// Body bytes of the paged messages.
    pub paged_bytes: usize,
    /// Attached consumers.
    pub consumers: usize,
    /// Waiting for their delivery time.
    pub scheduled: usize,
}

/// A queue (or a topic subscription's queue).
#[derive(Debug)]
pub struct Queue {
    name: Arc<str>,
    durable: bool,
    memory_limit: usize,
    settings: DestinationSettings,
    paging: Paging,
    mover: Option<mpsc::UnboundedSender<Move>>,
    scheduler: Option<mpsc::UnboundedSender<Wakeup>>,
    state: Mutex<QueueState>,
    space: Notify,
    blocked_producers: AtomicUsize,
    removed: AtomicBool,
    /// Counters.
    pub stats: QueueStats,
}

/// Asks the broker's scheduler to call [`Queue::promote_due`] at `at` (Unix ms).
#[derive(Debug)]
pub struct Wakeup {
    /// When.
    pub at: i64,
    /// Which queue (weak: a removed queue is simply skipped).
    pub queue: std::sync::Weak<Queue>,
}

/// Why a message leaves its queue for another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// Delivered (and returned) `max_delivery_attempts` times.
    MaxDeliveries(u32),
    /// Its JMSExpiration passed before it was delivered.
    Expired,
}

/// A message taken off `from` that the broker's mover puts where the settings say.
#[derive(Debug)]
pub struct Move {
    /// Where it was.
    pub from: Arc<Queue>,
    /// The entry.
    pub entry: Entry,
    /// Why.
    pub reason: MoveReason,
}

impl Queue {
    /// An empty queue with a memory budget. A durable queue's persistent messages are journaled
    /// (queues); others' are not (temporary queues, non-durable subscriptions).
    pub fn new(name: Arc<str>, durable: bool, memory_limit: usize) -> Arc<Queue> {
        Queue::with_settings(
            name,
            durable,
            memory_limit,
            DestinationSettings::default(),
            None,
            None,
        )
    }

    /// Sets how this queue holds memory (the broker does it when it creates the queue).
    pub fn with_paging(mut self: Arc<Queue>, paging: Paging) -> Arc<Queue> {
        Arc::get_mut(&mut self)
            .expect("with_paging on a queue nobody else holds yet")
            .paging = paging;
        self
    }

    /// A queue with its destination settings and the broker's mover (dead-letter and expiry
    /// moves go there: the mover journals them and enqueues into the target queue, outside this
    /// queue's lock).
    pub fn with_settings(
        name: Arc<str>,
        durable: bool,
        memory_limit: usize,
        settings: DestinationSettings,
        mover: Option<mpsc::UnboundedSender<Move>>,
        scheduler: Option<mpsc::UnboundedSender<Wakeup>>,
    ) -> Arc<Queue> {
        // A destination's own limit (address settings) wins over the broker default.
        let memory_limit = if settings.memory_limit > 0 {
            settings.memory_limit
        } else {
            memory_limit
        };
        Arc::new(Queue {
            name,
            durable,
            memory_limit,
            settings,
            paging: Paging::default(),
            mover,
            scheduler,
            state: Mutex::new(QueueState::default()),
            space: Notify::new(),
            blocked_producers: AtomicUsize::new(0),
            removed: AtomicBool::new(false),
            stats: QueueStats::default(),
        })
    }

    /// The name (for subscriptions: the subscription's own name).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The settings that apply to this queue.
    pub fn settings(&self) -> &DestinationSettings {
        &self.settings
    }

    /// Whether persistent messages on this queue are journaled.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// Removed (a closed non-durable subscription): returns are dropped.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Counts for metrics.
    pub fn snapshot(&self) -> QueueSnapshot {
        let st = self.state.lock();
        QueueSnapshot {
            ready: st.ready_count,
            inflight: st.inflight,
            memory: st.memory,
            paged: st.paged,
            paged_bytes: st.paged_bytes,
            consumers: st.consumers.len(),
            scheduled: st.scheduled.len(),
        }
    }

    /// This queue's memory budget in bytes.
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// How long a send to this queue may wait for room when it is full: `block` waits up to the
    /// producer block timeout, `fail` not at all.
    pub fn block_timeout(&self, configured: std::time::Duration) -> std::time::Duration {
        match self.settings.full_policy {
            FullPolicy::Fail => std::time::Duration::ZERO,
            FullPolicy::Page | FullPolicy::Block => configured,
        }
    }

    /// Whether `msg` would be paged rather than refused when this queue is full: the policy is
    /// `page`, the message is persistent, the queue durable and the store can read bodies back.
    pub fn can_page(&self, msg: &BrokerMessage) -> bool {
        self.settings.full_policy == FullPolicy::Page
            && self.durable
            && msg.persistent
            && self.paging.pager.is_some()
    }

    /// Whether a message of `size` bytes fits this queue's budget and the global one. An empty
    /// queue always takes one message, so a message larger than the budget is not refused
    /// forever.
    pub fn has_room(&self, size: usize) -> bool {
        let st = self.state.lock();
        (st.memory == 0 || st.memory + size <= self.memory_limit) && self.paging.budget.fits(size)
    }

    /// Whether a send of `msg` may go ahead now: it fits, or it will be paged.
    pub fn has_room_for(&self, msg: &BrokerMessage) -> bool {
        self.can_page(msg) || self.has_room(msg.size())
    }

    /// Waits until [`Queue::has_room`] or the deadline. Returns whether there is room. Woken by
    /// releases of this queue and of the global budget.
    pub async fn wait_for_room(&self, size: usize, deadline: tokio::time::Instant) -> bool {
        let budget = &self.paging.budget;
        self.blocked_producers.fetch_add(1, Ordering::SeqCst);
        budget.waiting.fetch_add(1, Ordering::SeqCst);
        let room = loop {
            let mine = self.space.notified();
            let global = budget.space.notified();
            tokio::pin!(mine, global);
            // Register before checking, so a release between the check and the await is not missed.
            mine.as_mut().enable();
            global.as_mut().enable();
            if self.has_room(size) {
                break true;
            }
            let woken = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    () = &mut mine => {}
                    () = &mut global => {}
                }
            });
            if woken.await.is_err() {
                break self.has_room(size);
            }
        };
        budget.waiting.fetch_sub(1, Ordering::SeqCst);
        self.blocked_producers.fetch_sub(1, Ordering::SeqCst);
        room
    }

    fn released(&self) {
        if self.blocked_producers.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    fn charge(&self, st: &mut QueueState, n: usize) {
        st.memory += n;
        self.paging.budget.charge(n);
    }

    fn uncharge(&self, st: &mut QueueState, n: usize) {
        // Saturating: a purged subscription's deliveries may still be acknowledged.
        let n = n.min(st.memory);
        st.memory -= n;
        self.paging.budget.release(n);
    }

    /// The slot for a message arriving with this history: paged if the policy allows it and a
    /// budget is exceeded, resident (and charged) otherwise.
    fn slot_for(&self, st: &mut QueueState, entry: Entry) -> Slot {
        let size = entry.msg.size();
        if self.can_page(&entry.msg)
            && let Some(at) = entry.msg.location()
            && (st.memory + size > self.memory_limit || !self.paging.budget.fits(size))
        {
            st.paged += 1;
            st.paged_bytes += size;
            self.stats.paged_total.fetch_add(1, Ordering::Relaxed);
            return Slot::Paged(Paged {
                msg_id: entry.msg.id,
                at,
                expiration: entry.msg.expiration,
                delivery_count: entry.delivery_count,
                redelivered: entry.redelivered,
            });
        }
        self.charge(st, size);
        Slot::Resident(entry)
    }

    /// Reads a paged message back. Not charged: the caller charges it if it keeps it.
    fn page_in(&self, p: &Paged) -> Result<Entry, String> {
        let pager = self.paging.pager.as_ref().ok_or("no pager")?;
        self.stats.page_reads.fetch_add(1, Ordering::Relaxed);
        let body = pager.read_body(p.msg_id, p.at).map_err(|e| e.0)?;
        let msg = BrokerMessage::recovered(p.msg_id, body).map_err(|r| r.message)?;
        msg.set_location(p.at);
        Ok(Entry {
            msg: Arc::new(msg),
            delivery_count: p.delivery_count,
            redelivered: p.redelivered,
        })
    }

    /// Removes a ready slot from `prio`, undoing its accounting (paged ones leave the paged
    /// counts; resident ones stay charged: they go in flight or to the mover, which uncharge).
    fn take_slot(st: &mut QueueState, prio: usize, seq: u64) -> Slot {
        let slot = st.ready[prio].remove(&seq).expect("present");
        st.ready_count -= 1;
        if let Slot::Paged(p) = &slot {
            st.paged -= 1;
            st.paged_bytes -= p.at.len as usize;
        }
        slot
    }

    /// Adds a message and dispatches.
    pub fn enqueue(self: &Arc<Queue>, msg: Arc<BrokerMessage>, now_ms: i64) {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
        let at = msg.headers.delivery_time;
        let entry = Entry {
            msg,
            delivery_count: 0,
            redelivered: false,
        };
        if at > now_ms && self.scheduler.is_some() {
            // Scheduled messages stay in memory until due (not paged; see docs/PAGING.md).
            self.charge(&mut st, entry.msg.size());
            self.schedule(&mut st, at, seq, entry);
            return;
        }
        st.ready_count += 1;
        let prio = usize::from(entry.msg.priority.min(9));
        let slot = self.slot_for(&mut st, entry);
        st.ready[prio].insert(seq, slot);
        self.dispatch(&mut st, now_ms);
    }

    fn schedule(self: &Arc<Queue>, st: &mut QueueState, at: i64, seq: u64, entry: Entry) {
        let earliest = st.scheduled.keys().next().map(|k| k.0);
        st.scheduled.insert((at, seq), entry);
        if earliest.is_none_or(|e| at < e)
            && let Some(s) = &self.scheduler
        {
            let _ = s.send(Wakeup {
                at,
                queue: Arc::downgrade(self),
            });
        }
    }

    /// Moves every scheduled message that is due into the ready set and dispatches; asks for the
    /// next wakeup if more are waiting.
    pub fn promote_due(self: &Arc<Queue>, now_ms: i64) {
        let mut st = self.state.lock();
        while let Some((&(at, seq), _)) = st.scheduled.iter().next() {
            if at > now_ms {
                if let Some(s) = &self.scheduler {
                    let _ = s.send(Wakeup {
                        at,
                        queue: Arc::downgrade(self),
                    });
                }
                break;
            }
            let entry = st.scheduled.remove(&(at, seq)).expect("present");
            let prio = usize::from(entry.msg.priority.min(9));
            st.ready[prio].insert(seq, Slot::Resident(entry));
            st.ready_count += 1;
        }
        self.dispatch(&mut st, now_ms);
    }

    /// Puts a recovered message back (no dispatch: no consumer exists yet at recovery). It may
    /// have been delivered before the crash, so it comes back flagged redelivered with its count
    /// raised (invariant 2): `delivery_count` is the last count the journal holds.
    pub fn restore(
        self: &Arc<Queue>,
        msg: Arc<BrokerMessage>,
        delivery_count: u32,
        deliver_at: Option<u64>,
        now_ms: i64,
    ) {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let at = deliver_at.map_or(0, |t| t as i64);
        if at > now_ms && self.scheduler.is_some() {
            // Still scheduled at the crash, so never delivered: not flagged.
            let entry = Entry {
                msg,
                delivery_count,
                redelivered: delivery_count > 0,
            };
            self.charge(&mut st, entry.msg.size());
            self.schedule(&mut st, at, seq, entry);
            return;
        }
        st.ready_count += 1;
        let prio = usize::from(msg.priority.min(9));
        let entry = Entry {
            msg,
            delivery_count: delivery_count.saturating_add(1),
            redelivered: true,
        };
        let slot = self.slot_for(&mut st, entry);
        st.ready[prio].insert(seq, slot);
    }

    /// Attaches a consumer and dispatches to it.
    pub fn add_consumer(self: &Arc<Queue>, consumer: Arc<ConsumerShared>, now_ms: i64) {
        let mut st = self.state.lock();
        st.consumers.push(ConsumerSlot {
            consumer,
            outstanding: 0,
            credit: 0,
        });
        self.dispatch(&mut st, now_ms);
    }

    /// Detaches a consumer (by its broker-wide key). Its deliveries stay with its session.
    pub fn remove_consumer(self: &Arc<Queue>, consumer_key: u64, now_ms: i64) {
        let mut st = self.state.lock();
        st.consumers.retain(|s| s.consumer.key != consumer_key);
        st.groups.retain(|_, owner| *owner != consumer_key);
        if st.rr >= st.consumers.len() {
            st.rr = 0;
        }
        self.dispatch(&mut st, now_ms);
    }

    /// Grants one-off credit beyond the consumer's window.
    pub fn add_credit(self: &Arc<Queue>, consumer_key: u64, credit: u32, now_ms: i64) {
        let mut st = self.state.lock();
        if let Some(s) = st
            .consumers
            .iter_mut()
            .find(|s| s.consumer.key == consumer_key)
        {
            s.credit = s.credit.saturating_add(credit);
        }
        self.dispatch(&mut st, now_ms);
    }

    /// Acknowledges delivered messages, given with their consumer's key: they leave the queue.
    pub fn ack(self: &Arc<Queue>, acked: impl IntoIterator<Item = (u64, Entry)>, now_ms: i64) {
        let mut st = self.state.lock();
        let mut n = 0u64;
        for (consumer_key, entry) in acked {
            n += 1;
            // Saturating: a purged subscription's deliveries may still be acknowledged.
            st.inflight = st.inflight.saturating_sub(1);
            self.uncharge(&mut st, entry.msg.size());
            if let Some(s) = st
                .consumers
                .iter_mut()
                .find(|s| s.consumer.key == consumer_key)
            {
                s.outstanding = s.outstanding.saturating_sub(1);
            }
        }
        self.stats.dequeued.fetch_add(n, Ordering::Relaxed);
        self.dispatch(&mut st, now_ms);
        drop(st);
        self.released();
    }

    /// Puts delivered messages back in their places. `seen` ones come back flagged redelivered with
    /// their count raised; the others (prefetched, never handed to the application) as they were.
    pub fn requeue(
        self: &Arc<Queue>,
        returned: impl IntoIterator<Item = (u64, u64, Entry, bool)>,
        now_ms: i64,
    ) {
        if self.is_removed() {
            return;
        }
        let mut st = self.state.lock();
        let max = self.settings.max_delivery_attempts;
        let mut dead = Vec::new();
        for (consumer_key, seq, mut entry, seen) in returned {
            if seen {
                entry.delivery_count += 1;
                entry.redelivered = true;
            }
            st.inflight = st.inflight.saturating_sub(1);
            if seen && max > 0 && entry.delivery_count >= max && self.mover.is_some() {
                if let Some(s) = st
                    .consumers
                    .iter_mut()
                    .find(|s| s.consumer.key == consumer_key)
                {
                    s.outstanding = s.outstanding.saturating_sub(1);
                }
                self.uncharge(&mut st, entry.msg.size());
                dead.push(entry);
                continue;
            }
            st.ready_count += 1;
            if let Some(s) = st
                .consumers
                .iter_mut()
                .find(|s| s.consumer.key == consumer_key)
            {
                s.outstanding = s.outstanding.saturating_sub(1);
            }
            let delay = self.settings.redelivery_delay_ms;
            if seen && delay > 0 && self.scheduler.is_some() {
                // Redelivery delay: due again later (still charged: it waits in memory).
                st.ready_count -= 1;
                let at = now_ms.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
                self.schedule(&mut st, at, seq, entry);
                continue;
            }
            let prio = usize::from(entry.msg.priority.min(9));
            // Still charged from its delivery: it comes back in memory.
            st.ready[prio].insert(seq, Slot::Resident(entry));
        }
        self.dispatch(&mut st, now_ms);
        drop(st);
        for entry in dead {
            let n = entry.delivery_count;
            self.send_move(entry, MoveReason::MaxDeliveries(n));
        }
        if !self.is_removed() {
            self.released();
        }
    }

    fn send_move(self: &Arc<Queue>, entry: Entry, reason: MoveReason) {
        if let Some(m) = &self.mover {
            let _ = m.send(Move {
                from: self.clone(),
                entry,
                reason,
            });
        }
    }

    /// [`Queue::remove`], returning the messages it still held (ready and scheduled; not those in
    /// flight) as (message id, persistent), so that their journal refs can be acknowledged.
    pub fn remove_returning(&self) -> Vec<(u64, bool)> {
        let held: Vec<(u64, bool)> = {
            let st = self.state.lock();
            st.ready
                .iter()
                .flat_map(|level| level.values())
                .map(|slot| match slot {
                    Slot::Resident(e) => (e.msg.id, e.msg.persistent),
                    // Only persistent messages are paged.
                    Slot::Paged(p) => (p.msg_id, true),
                })
                .chain(st.scheduled.values().map(|e| (e.msg.id, e.msg.persistent)))
                .collect()
        };
        self.remove();
        held
    }

    /// Up to `limit` ready messages after `after` in delivery order (priority high to low, FIFO
    /// within one), those `selector` selects; for a queue browser, which consumes nothing. One call
    /// examines at most [`BROWSE_SCAN_LIMIT`] messages, so the queue's lock (and the reads of paged
    /// bodies under it) is held for a bounded time; the caller continues from
    /// [`Browsed::scanned_to`]. Messages being delivered, or scheduled for later, are not shown.
    pub fn browse(
        &self,
        after: Option<BrowsePos>,
        limit: usize,
        selector: Option<&tandem_protocol::selector::Selector>,
    ) -> Browsed {
        let st = self.state.lock();
        let mut out = Browsed {
            shown: Vec::new(),
            scanned_to: after,
            end: false,
        };
        let mut scanned = 0usize;
        for prio in (0..10u8).rev() {
            let range = match after {
                Some(a) if prio > a.priority => continue,
                Some(a) if prio == a.priority => st.ready[prio as usize].range(a.seq + 1..),
                _ => st.ready[prio as usize].range(0..),
            };
            for (&seq, slot) in range {
                if out.shown.len() == limit || scanned == BROWSE_SCAN_LIMIT {
                    return out;
                }
                scanned += 1;
                let pos = BrowsePos {
                    priority: prio,
                    seq,
                };
                out.scanned_to = Some(pos);
                let paged_in;
                let e = match slot {
                    Slot::Resident(e) => e,
                    Slot::Paged(p) => match self.page_in(p) {
                        Ok(e) => {
                            paged_in = e;
                            &paged_in
                        }
                        Err(error) => {
                            // A browser shows what it can; the consumer path reports the failure.
                            tracing::warn!(msg_id = p.msg_id, %error, "paged message not readable for a browser");
                            continue;
                        }
                    },
                };
                let selected = selector.is_none_or(|s| {
                    s.matches(&SelectorView {
                        msg: &e.msg,
                        delivery_count: e.delivery_count + 1,
                    })
                });
                if selected {
                    out.shown.push((pos, e.clone()));
                }
            }
        }
        out.end = true;
        out
    }

    /// Drops every message and refuses returns from now on (a non-durable subscription going away).
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        let mut st = self.state.lock();
        for level in &mut st.ready {
            level.clear();
        }
        st.scheduled.clear();
        st.ready_count = 0;
        st.paged = 0;
        st.paged_bytes = 0;
        let held = st.memory;
        self.uncharge(&mut st, held);
        st.inflight = 0;
        drop(st);
        self.space.notify_waiters();
    }

    fn dispatch(self: &Arc<Queue>, st: &mut QueueState, now_ms: i64) {
        if st.ready_count == 0 || st.consumers.is_empty() {
            return;
        }
        let before = st.consumers.len();
        st.consumers.retain(|s| s.consumer.is_open());
        if st.consumers.len() != before {
            let QueueState {
                groups, consumers, ..
            } = &mut *st;
            groups.retain(|_, owner| consumers.iter().any(|s| s.consumer.key == *owner));
        }
        // Paged messages read back and then taken by nobody (selectors, pinned groups) in this
        // pass: bounded, so that a selective consumer on a deep paged backlog costs at most
        // PAGE_SCAN_LIMIT reads per dispatch, not one per queued message.
        let mut wasted_reads = 0usize;
        for prio in (0..10).rev() {
            let mut cursor = 0u64;
            loop {
                if !st.consumers.iter().any(ConsumerSlot::has_room) {
                    return;
                }
                let Some((&seq, slot)) = st.ready[prio].range(cursor..).next() else {
                    break;
                };
                cursor = seq + 1;
                let paged = match slot {
                    Slot::Paged(p) => Some(*p),
                    Slot::Resident(_) => None,
                };
                if slot.is_expired(now_ms) {
                    let entry = match Queue::take_slot(st, prio, seq) {
                        Slot::Resident(e) => {
                            self.uncharge(st, e.msg.size());
                            e
                        }
                        // The mover needs the message (to move it, or to journal the drop).
                        Slot::Paged(p) => match self.page_in(&p) {
                            Ok(e) => e,
                            Err(e) => {
                                self.page_read_failed(st, prio, seq, p, &e);
                                continue;
                            }
                        },
                    };
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                    // The mover sends it to the expiry queue, or drops it (journaling the drop).
                    self.send_move(entry, MoveReason::Expired);
                    continue;
                }
                // A paged message is read back to be judged (group, selector) and delivered; if
                // nobody takes it now, it goes back to being paged (its body is dropped again).
                let mut read_back = None;
                let entry = match (paged, &st.ready[prio][&seq]) {
                    (Some(p), _) => match self.page_in(&p) {
                        Ok(e) => &*read_back.insert(e),
                        Err(e) => {
                            let slot = Queue::take_slot(st, prio, seq);
                            debug_assert!(matches!(slot, Slot::Paged(_)));
                            self.page_read_failed(st, prio, seq, p, &e);
                            continue;
                        }
                    },
                    (None, Slot::Resident(e)) => e,
                    (None, Slot::Paged(_)) => unreachable!("checked above"),
                };
                let n = st.consumers.len();
                let group = entry.msg.headers.group_id.clone();
                let owner = group
                    .as_deref()
                    .and_then(|g| st.groups.get(g))
                    .and_then(|key| st.consumers.iter().position(|s| s.consumer.key == *key))
                    .filter(|&i| accepts(&st.consumers[i].consumer, entry));
                let pick = match owner {
                    // A pinned group waits for its consumer: order within the group holds.
                    Some(i) => st.consumers[i].has_room().then_some(i),
                    None => (0..n).map(|i| (st.rr + i) % n).find(|&i| {
                        let s = &st.consumers[i];
                        s.has_room() && accepts(&s.consumer, entry)
                    }),
                };
                let Some(i) = pick else {
                    if paged.is_some() {
                        wasted_reads += 1;
                        if wasted_reads >= PAGE_SCAN_LIMIT {
                            return;
                        }
                    }
                    continue;
                };
                if let Some(g) = group
                    && owner.is_none()
                {
                    let key = st.consumers[i].consumer.key;
                    st.groups.insert(g, key);
                }
                let entry = match Queue::take_slot(st, prio, seq) {
                    Slot::Resident(e) => e,
                    Slot::Paged(_) => {
                        // In flight it is held in memory (bounded by the consumers' windows).
                        let e = read_back.expect("read back above");
                        self.charge(st, e.msg.size());
                        e
                    }
                };
                let slot = &mut st.consumers[i];
                match slot.consumer.deliver(self, seq, entry) {
                    Ok(()) => {
                        slot.outstanding += 1;
                        if slot.outstanding > slot.consumer.prefetch {
                            slot.credit -= 1;
                        }
                        st.inflight += 1;
                        st.rr = (i + 1) % n;
                    }
                    Err(entry) => {
                        cursor = seq;
                        // Back as it is, in memory and charged.
                        st.ready[prio].insert(seq, Slot::Resident(entry));
                        st.ready_count += 1;
                        st.consumers.remove(i);
                        st.rr = 0;
                        if st.consumers.is_empty() {
                            return;
                        }
                    }
                }
                if st.ready_count == 0 {
                    return;
                }
            }
        }
    }
}

impl Queue {
    /// A paged message could not be read back: it stays (paged) where it was and is tried again
    /// at the next dispatch; the error is counted and logged.
    fn page_read_failed(&self, st: &mut QueueState, prio: usize, seq: u64, p: Paged, e: &str) {
        self.stats.page_read_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(queue = %self.name, msg_id = p.msg_id, error = %e, "cannot read a paged message back");
        st.ready[prio].insert(seq, Slot::Paged(p));
        st.ready_count += 1;
        st.paged += 1;
        st.paged_bytes += p.at.len as usize;
    }
}

/// Whether a consumer's selector takes a message.
fn accepts(consumer: &ConsumerShared, entry: &Entry) -> bool {
    consumer.selector.as_ref().is_none_or(|s| {
        s.matches(&SelectorView {
            msg: &entry.msg,
            delivery_count: entry.delivery_count + 1,
        })
    })
}
