//! Moves messages between queues: dead-lettering after too many deliveries, and expiry.
//!
//! Queues hand a [`Move`] to this task instead of touching another queue while holding their own
//! lock. The moved message is a copy with its JMSDestination set to the target and these
//! properties added:
//!
//! | property | value |
//! |---|---|
//! | `JMS_TANDEM_ORIG_DESTINATION` | the destination it was sent to (`queue://orders`) |
//! | `JMS_TANDEM_ORIG_QUEUE` | the queue it left (a subscription's queue for topics) |
//! | `JMS_TANDEM_DLQ_REASON` | `max-delivery-attempts:N` or `expired` |
//! | `JMS_TANDEM_ORIG_EXPIRATION` | expiry moves: the JMSExpiration it had (the copy never expires) |
//!
//! For a persistent message on a durable queue the move is one atomic journal append (the copy's
//! `AddMessage` and `AddRef`, the original's `AckRef`): after a crash the message is in exactly one
//! of the two queues. With no target configured the message is dropped (the drop is journaled) and
//! logged.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use prost::Message as _;
use tandem_protocol::model::{Destination, PropertyValue};
use tandem_protocol::wire;
use tokio::sync::mpsc;

use crate::broker::BrokerInner;
use crate::journal::Record;
use crate::message::{BrokerMessage, now_ms};
use crate::queue::{Move, MoveReason};

pub(crate) async fn run(inner: Arc<BrokerInner>, mut rx: mpsc::UnboundedReceiver<Move>) {
    loop {
        // Stops with the broker: the task holds the broker, whose queues hold its sender.
        let m = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        if let Err(e) = move_one(&inner, m).await {
            tracing::error!(error = %e, "moving a message failed; it stays where it was in the journal");
        }
    }
}

async fn move_one(inner: &Arc<BrokerInner>, m: Move) -> Result<(), String> {
    let settings = m.from.settings();
    let (target, reason) = match m.reason {
        MoveReason::MaxDeliveries(n) => (
            settings.dead_letter_queue.clone(),
            format!("max-delivery-attempts:{n}"),
        ),
        MoveReason::Expired => (settings.expiry_queue.clone(), "expired".to_string()),
    };
    let old = &m.entry.msg;
    let journaled = old.persistent && m.from.is_durable() && inner.store.persistent();
    let ack_old = Record::AckRef {
        msg_id: old.id,
        queue: m.from.name().to_string(),
    };
    if target.is_empty() {
        if matches!(m.reason, MoveReason::MaxDeliveries(_)) {
            tracing::warn!(queue = %m.from.name(), msg_id = old.id, %reason, "no dead-letter queue: message dropped");
        }
        if journaled {
            submit(inner, vec![ack_old]).await?;
        }
        return Ok(());
    }
    let dest = Destination::queue(&target).map_err(|e| e.to_string())?;
    let mut w = wire::Message::decode(old.encoded.clone()).map_err(|e| e.to_string())?;
    let mut add = |name: &str, value: String| {
        w.properties.retain(|p| p.name != name);
        w.properties.push(wire::Property {
            name: name.into(),
            value: Some(PropertyValue::String(value).to_wire()),
        });
    };
    add("JMS_TANDEM_ORIG_DESTINATION", old.destination.to_string());
    add("JMS_TANDEM_ORIG_QUEUE", m.from.name().to_string());
    add("JMS_TANDEM_DLQ_REASON", reason);
    if m.reason == MoveReason::Expired {
        add("JMS_TANDEM_ORIG_EXPIRATION", old.expiration.to_string());
        w.expiration = 0;
    }
    w.destination = Some(dest.to_wire());
    let id = inner.next_message_id.fetch_add(1, Ordering::Relaxed);
    let copy =
        BrokerMessage::recovered(id, Bytes::from(w.encode_to_vec())).map_err(|r| r.message)?;
    let queue = inner.queue_forced(&dest);
    if journaled {
        let records = vec![
            Record::AddMessage {
                msg_id: id,
                encoded: copy.encoded.clone(),
            },
            Record::AddRef {
                msg_id: id,
                queue: queue.name().to_string(),
            },
            ack_old,
        ];
        submit(inner, records).await?;
        if let Some(at) = inner.store.take_location(id) {
            copy.set_location(at);
        }
    }
    queue.enqueue(Arc::new(copy), now_ms());
    Ok(())
}

/// Wakes queues whose scheduled messages (JMSDeliveryTime) are due. Delivery times are wall-clock
/// (JMS defines them so); the wait is measured on tokio's clock from the wall-clock difference.
pub(crate) async fn scheduler(
    inner: Arc<BrokerInner>,
    mut rx: mpsc::UnboundedReceiver<crate::queue::Wakeup>,
) {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    let mut heap: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut queues: HashMap<u64, std::sync::Weak<crate::queue::Queue>> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        let wait = heap
            .peek()
            .map(|Reverse((at, _))| (at - now_ms()).max(0) as u64);
        let timer = tokio::time::sleep(std::time::Duration::from_millis(wait.unwrap_or(3_600_000)));
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            w = rx.recv() => match w {
                Some(w) => {
                    next_id += 1;
                    heap.push(Reverse((w.at, next_id)));
                    queues.insert(next_id, w.queue);
                }
                None => return,
            },
            _ = timer, if wait.is_some() => {
                let now = now_ms();
                while let Some(Reverse((at, id))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    if let Some(q) = queues.remove(&id).and_then(|w| w.upgrade()) {
                        q.promote_due(now);
                    }
                }
            }
        }
    }
}

async fn submit(inner: &BrokerInner, records: Vec<Record>) -> Result<(), String> {
    let durable = inner.store.submit(records).await.map_err(|e| e.0)?;
    durable.await.map_err(|e| e.0)
}
