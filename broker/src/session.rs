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

/// Frames to a connection's writer. Unbounded on purpose: deliveries are bounded by the consumers'
/// windows and answers by the requests the connection sent, so the backlog is bounded by the peer's
/// own behaviour, and dispatch (which runs under a queue lock) never waits on a slow socket.
pub type Outbound = mpsc::UnboundedSender<Frame>;

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
