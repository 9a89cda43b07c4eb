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
    /// The consumer it went to.
    pub consumer_id: u64,
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

    pub(crate) fn next_delivery_id(&self) -> u64 {
        self.next_delivery.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A consumer as its queue sees it.
#[derive(Debug)]
pub struct ConsumerShared {
    /// The client's id for it.
    pub id: u64,
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
    pub(crate) fn new(
        id: u64,
        connection_id: u64,
        session: Arc<SessionShared>,
        prefetch: u32,
        selector: Option<Selector>,
        out: Outbound,
    ) -> Arc<ConsumerShared> {
        Arc::new(ConsumerShared {
            id,
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
    pub(crate) fn deliver(&self, queue: &Arc<Queue>, seq: u64, entry: Entry) -> Result<(), Entry> {
        let delivery_id = self.session.next_delivery_id();
        let frame = Frame::Deliver(wire::Deliver {
            consumer_id: self.id,
            delivery_id,
            redelivered: entry.redelivered,
            delivery_count: entry.delivery_count + 1,
            message: entry.msg.encoded.clone(),
        });
        self.session.unacked.lock().insert(
            delivery_id,
            Unacked {
                consumer_id: self.id,
                queue: queue.clone(),
                seq,
                entry,
            },
        );
        if self.out.send(frame).is_err() {
            // The connection is gone; its cleanup will not see this delivery, so take it back.
            let u = self.session.unacked.lock().remove(&delivery_id);
            return Err(u.map(|u| u.entry).expect("inserted above"));
        }
        Ok(())
    }
}
