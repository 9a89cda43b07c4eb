//! Session and consumer handles shared between a connection task and the dispatchers.
//!
//! Lock order: a queue's lock may be held while taking a session's `unacked` lock (dispatch records
//! a delivery), never the reverse: ack paths take deliveries out of the session first, release it,
//! then lock the queue.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tandem_protocol::selector::Selector;
use tandem_protocol::{Frame, wire};
use tokio::sync::mpsc;

use crate::queue::{Entry, Queue};

/// Frames not yet taken by a connection's writer above which the connection task stops reading its
/// peer (invariant 10): a peer that sends (pings, requests) without reading the answers is pushed
/// back through TCP instead of growing the broker's memory.
pub const OUTBOUND_HIGH: usize = 8192;
/// ... and below which it reads again.
pub const OUTBOUND_LOW: usize = 4096;

/// Frames to a connection's writer.
///
/// The channel never blocks a sender: dispatch runs under a queue lock and must not wait on a slow
/// socket. It is bounded by the reader instead: the backlog is counted, and the connection task
/// waits ([`Outbound::wait_drained`]) before reading the next frame while it is above
/// [`OUTBOUND_HIGH`]. Deliveries are further bounded by the consumers' windows.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Frame>,
    backlog: Arc<Backlog>,
}

#[derive(Debug, Default)]
struct Backlog {
    queued: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

/// The writer's end of an [`Outbound`].
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Frame>,
    backlog: Arc<Backlog>,
}

impl Outbound {
    /// A new channel.
    pub fn channel() -> (Outbound, OutboundRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::default());
        (
            Outbound {
                tx,
                backlog: backlog.clone(),
            },
            OutboundRx { rx, backlog },
        )
    }

    /// Queues a frame for the writer; fails when the writer is gone.
    pub fn send(&self, frame: Frame) -> Result<(), mpsc::error::SendError<Frame>> {
        self.backlog.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(frame).inspect_err(|_| {
            self.backlog.queued.fetch_sub(1, Ordering::AcqRel);
        })
    }

    /// The writer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Frames queued and not yet taken by the writer.
    pub fn backlog(&self) -> usize {
        self.backlog.queued.load(Ordering::Acquire)
    }

    /// Waits until the backlog is at most [`OUTBOUND_LOW`] (or the writer is gone).
    pub async fn wait_drained(&self) {
        loop {
            let drained = self.backlog.drained.notified();
            tokio::pin!(drained);
            // Registered before the check: a drain between the check and the await is not missed.
            drained.as_mut().enable();
            if self.backlog() <= OUTBOUND_LOW || self.is_closed() {
                return;
            }
            drained.await;
        }
    }
}

impl OutboundRx {
    /// The next frame.
    pub async fn recv(&mut self) -> Option<Frame> {
        let f = self.rx.recv().await;
        if f.is_some() {
            self.took();
        }
        f
    }

    /// The next frame if one is waiting.
    pub fn try_recv(&mut self) -> Option<Frame> {
        let f = self.rx.try_recv().ok();
        if f.is_some() {
            self.took();
        }
        f
    }

    fn took(&self) {
        if self.backlog.queued.fetch_sub(1, Ordering::AcqRel) == OUTBOUND_LOW + 1 {
            self.backlog.drained.notify_waiters();
        }
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        // A reader waiting for a drain must not wait for a writer that is gone.
        self.rx.close();
        self.backlog.drained.notify_waiters();
    }
}

/// A delivery the session has not acknowledged yet.
#[derive(Debug)]
pub struct Unacked {
    /// The consumer it went to (the client's id, unique within the connection).
    pub consumer_id: u64,
    /// The same consumer's broker-wide key (what its queue knows it by).
    pub consumer_key: u64,
    /// The queue it came from.
    pub queue: Arc<Queue>,
    /// Its position in that queue.
    pub seq: u64,
    /// The entry as it was before this delivery (its count not yet raised).
    pub entry: Entry,
}

/// A session as the dispatchers see it.
#[derive(Debug)]
pub struct SessionShared {
    /// The client's id for it.
    pub id: u64,
    next_delivery: AtomicU64,
    /// Deliveries not yet acknowledged, by delivery id.
    pub unacked: Mutex<BTreeMap<u64, Unacked>>,
}

impl SessionShared {
    pub(crate) fn new(id: u64) -> Arc<SessionShared> {
        Arc::new(SessionShared {
            id,
            next_delivery: AtomicU64::new(0),
            unacked: Mutex::new(BTreeMap::new()),
        })
    }

    fn next_delivery_id(&self) -> u64 {
        self.next_delivery.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes every unacknowledged delivery, with the highest delivery id allocated so far: every
    /// delivery with an id up to the mark is in the returned map (or was acknowledged before), and
    /// every later one is new.
    pub(crate) fn take_all(&self) -> (BTreeMap<u64, Unacked>, u64) {
        let mut unacked = self.unacked.lock();
        let mark = self.next_delivery.load(Ordering::Relaxed);
        (std::mem::take(&mut *unacked), mark)
    }
}

/// A consumer as its queue sees it.
#[derive(Debug)]
pub struct ConsumerShared {
    /// The client's id for it (unique within its connection only).
    pub id: u64,
    /// Broker-wide unique key: queues tell consumers apart by it, since two connections may use
    /// the same consumer id.
    pub key: u64,
    /// The connection it belongs to.
    pub connection_id: u64,
    /// Its session.
    pub session: Arc<SessionShared>,
    /// Most unacknowledged deliveries outstanding.
    pub prefetch: u32,
    /// Only messages this selects are delivered (queues; topic subscriptions filter at fan-out).
    pub selector: Option<Selector>,
    /// Where its deliveries go.
    pub out: Outbound,
    closed: AtomicBool,
}

impl ConsumerShared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        key: u64,
        connection_id: u64,
        session: Arc<SessionShared>,
        prefetch: u32,
        selector: Option<Selector>,
        out: Outbound,
    ) -> Arc<ConsumerShared> {
        Arc::new(ConsumerShared {
            id,
            key,
            connection_id,
            session,
            prefetch,
            selector,
            out,
            closed: AtomicBool::new(false),
        })
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.out.is_closed()
    }

    /// Records the delivery in the session and sends it. Called with the queue's lock held.
    ///
    /// The delivery id is allocated under the session's lock, so that [`SessionShared::take_all`]
    /// (recover) sees a delivery in the map if and only if its id is at most the mark it returns.
    pub(crate) fn deliver(&self, queue: &Arc<Queue>, seq: u64, entry: Entry) -> Result<(), Entry> {
        let redelivered = entry.redelivered;
        let delivery_count = entry.delivery_count + 1;
        let message = entry.msg.encoded.clone();
        let delivery_id = {
            let mut unacked = self.session.unacked.lock();
            let id = self.session.next_delivery_id();
            let u = Unacked {
                consumer_id: self.id,
                consumer_key: self.key,
                queue: queue.clone(),
                seq,
                entry,
            };
            unacked.insert(id, u);
            id
        };
        let frame = Frame::Deliver(wire::Deliver {
            consumer_id: self.id,
            delivery_id,
            redelivered,
            delivery_count,
            message,
        });
        if self.out.send(frame).is_err() {
            // The connection is gone. Its cleanup may already have run, so take the delivery back
            // here; if cleanup got it first, it has put it back in the queue itself.
            return match self.session.unacked.lock().remove(&delivery_id) {
                Some(u) => Err(u.entry),
                None => Ok(()),
            };
        }
        Ok(())
    }
}
