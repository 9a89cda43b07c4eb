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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use crate::message::{BrokerMessage, SelectorView};
use crate::session::ConsumerShared;
use crate::settings::DestinationSettings;

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

/// Where a queue browser stands: the last message it was shown.
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
    ready: [BTreeMap<u64, Entry>; 10],
    ready_count: usize,
    inflight: usize,
    memory: usize,
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
}

/// A snapshot for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSnapshot {
    /// Ready to deliver.
    pub ready: usize,
    /// Delivered, not acknowledged.
    pub inflight: usize,
    /// Bytes held (ready and in flight).
    pub memory: usize,
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
        Arc::new(Queue {
            name,
            durable,
            memory_limit,
            settings,
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
            consumers: st.consumers.len(),
            scheduled: st.scheduled.len(),
        }
    }

    /// Whether a message of `size` bytes fits the budget. An empty queue always takes one message,
    /// so a message larger than the budget is not refused forever.
    pub fn has_room(&self, size: usize) -> bool {
        let st = self.state.lock();
        st.memory == 0 || st.memory + size <= self.memory_limit
    }

    /// Waits until [`Queue::has_room`] or the deadline. Returns whether there is room.
    pub async fn wait_for_room(&self, size: usize, deadline: tokio::time::Instant) -> bool {
        self.blocked_producers.fetch_add(1, Ordering::SeqCst);
        let room = loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            // Register before checking, so a release between the check and the await is not missed.
            notified.as_mut().enable();
            if self.has_room(size) {
                break true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break self.has_room(size);
            }
        };
        self.blocked_producers.fetch_sub(1, Ordering::SeqCst);
        room
    }

    fn released(&self) {
        if self.blocked_producers.load(Ordering::SeqCst) > 0 {
            self.space.notify_waiters();
        }
    }

    /// Adds a message and dispatches.
    pub fn enqueue(self: &Arc<Queue>, msg: Arc<BrokerMessage>, now_ms: i64) {
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.memory += msg.size();
        self.stats.enqueued.fetch_add(1, Ordering::Relaxed);
        let at = msg.headers.delivery_time;
        if at > now_ms && self.scheduler.is_some() {
            let entry = Entry {
                msg,
                delivery_count: 0,
                redelivered: false,
            };
            self.schedule(&mut st, at, seq, entry);
            return;
        }
        st.ready_count += 1;
        let prio = usize::from(msg.priority.min(9));
        st.ready[prio].insert(
            seq,
            Entry {
                msg,
                delivery_count: 0,
                redelivered: false,
            },
        );
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
            st.ready[prio].insert(seq, entry);
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
        st.memory += msg.size();
        let at = deliver_at.map_or(0, |t| t as i64);
        if at > now_ms && self.scheduler.is_some() {
            // Still scheduled at the crash, so never delivered: not flagged.
            let entry = Entry {
                msg,
                delivery_count,
                redelivered: delivery_count > 0,
            };
            self.schedule(&mut st, at, seq, entry);
            return;
        }
        st.ready_count += 1;
        let prio = usize::from(msg.priority.min(9));
        st.ready[prio].insert(
            seq,
            Entry {
                msg,
                delivery_count: delivery_count.saturating_add(1),
                redelivered: true,
            },
        );
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
            st.memory = st.memory.saturating_sub(entry.msg.size());
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
                st.memory = st.memory.saturating_sub(entry.msg.size());
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
            let prio = usize::from(entry.msg.priority.min(9));
            st.ready[prio].insert(seq, entry);
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
    /// flight), so that their journal refs can be acknowledged.
    pub fn remove_returning(&self) -> Vec<Arc<BrokerMessage>> {
        let held: Vec<Arc<BrokerMessage>> = {
            let st = self.state.lock();
            st.ready
                .iter()
                .flat_map(|level| level.values())
                .chain(st.scheduled.values())
                .map(|e| e.msg.clone())
                .collect()
        };
        self.remove();
        held
    }

    /// Up to `limit` ready messages after `after` in delivery order (priority high to low, FIFO
    /// within one), those `selector` selects; for a queue browser, which consumes nothing. The
    /// second value is true when the queue has nothing further. Messages being delivered, or
    /// scheduled for later, are not shown.
    pub fn browse(
        &self,
        after: Option<BrowsePos>,
        limit: usize,
        selector: Option<&tandem_protocol::selector::Selector>,
    ) -> (Vec<(BrowsePos, Entry)>, bool) {
        let st = self.state.lock();
        let mut out = Vec::new();
        for prio in (0..10u8).rev() {
            let range = match after {
                Some(a) if prio > a.priority => continue,
                Some(a) if prio == a.priority => st.ready[prio as usize].range(a.seq + 1..),
                _ => st.ready[prio as usize].range(0..),
            };
            for (&seq, e) in range {
                let selected = selector.is_none_or(|s| {
                    s.matches(&SelectorView {
                        msg: &e.msg,
                        delivery_count: e.delivery_count + 1,
                    })
                });
                if !selected {
                    continue;
                }
                if out.len() == limit {
                    return (out, false);
                }
                let entry = Entry {
                    msg: e.msg.clone(),
                    delivery_count: e.delivery_count,
                    redelivered: e.redelivered,
                };
                out.push((
                    BrowsePos {
                        priority: prio,
                        seq,
                    },
                    entry,
                ));
            }
        }
        (out, true)
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
        st.memory = 0;
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
        for prio in (0..10).rev() {
            let mut cursor = 0u64;
            loop {
                if !st.consumers.iter().any(ConsumerSlot::has_room) {
                    return;
                }
                let Some((&seq, entry)) = st.ready[prio].range(cursor..).next() else {
                    break;
                };
                cursor = seq + 1;
                if entry.msg.is_expired(now_ms) {
                    let entry = st.ready[prio].remove(&seq).expect("present");
                    st.ready_count -= 1;
                    st.memory -= entry.msg.size();
                    self.stats.expired.fetch_add(1, Ordering::Relaxed);
                    // The mover sends it to the expiry queue, or drops it (journaling the drop).
                    self.send_move(entry, MoveReason::Expired);
                    continue;
                }
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
                let Some(i) = pick else { continue };
                if let Some(g) = group
                    && owner.is_none()
                {
                    let key = st.consumers[i].consumer.key;
                    st.groups.insert(g, key);
                }
                let entry = st.ready[prio].remove(&seq).expect("present");
                st.ready_count -= 1;
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
                        st.ready[prio].insert(seq, entry);
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

/// Whether a consumer's selector takes a message.
fn accepts(consumer: &ConsumerShared, entry: &Entry) -> bool {
    consumer.selector.as_ref().is_none_or(|s| {
        s.matches(&SelectorView {
            msg: &entry.msg,
            delivery_count: entry.delivery_count + 1,
        })
    })
}
