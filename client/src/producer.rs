//! [`Producer`]: stamps the JMS headers, numbers sends, and waits for receipts of persistent ones.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_protocol::model::{DEFAULT_PRIORITY, DeliveryMode, Destination, Message, ModelError};
use tandem_protocol::{Frame, wire};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::session::SessionCore;
use crate::shared::{OnLoss, Outgoing, ProducerReg, ReceiptSlot};

/// A globally unique producer name: 128 random bits as hex.
///
/// `RandomState` is seeded from the OS's randomness once per process; mixing in the time, the
/// process id and a counter keeps names distinct across producers and processes without a
/// dependency.
pub(crate) fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(n);
        h.write_usize(i);
        *w = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sends messages (JMS `MessageProducer`).
///
/// The producer's settings (delivery mode, priority, time to live, delivery delay) apply to every
/// message it sends, replacing what the message had, as in JMS. Not shareable between tasks
/// (`send` takes `&mut self`): one producer's sequence numbers must reach the wire in order.
pub struct Producer {
    session: Arc<SessionCore>,
    id: u64,
    name: String,
    destination: Option<Destination>,
    sequence: u64,
    delivery_mode: DeliveryMode,
    priority: u8,
    time_to_live: Duration,
    delivery_delay: Duration,
    closed: bool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub(crate) async fn open(
        session: Arc<SessionCore>,
        destination: Option<Destination>,
    ) -> Result<Producer> {
        let shared = session.shared.clone();
        let producer_id = shared.next_id();
        let name = unique_name();
        shared.ready().await?;
        let (id, rx) = {
            let mut st = shared.lock();
            st.check_open()?;
            if !st.sessions.contains_key(&session.id) {
                return Err(Error::Closed("session"));
            }
            let producer_name = name.clone();
            let session_id = session.id;
            let dest = destination.as_ref().map(Destination::to_wire);
            let reg = ProducerReg {
                session_id,
                name: name.clone(),
                destination: dest.clone(),
            };
            let r = shared.request_locked_on_loss(
                &mut st,
                |request_id| {
                    Frame::ProducerOpen(wire::ProducerOpen {
                        request_id,
                        session_id,
                        producer_id,
                        producer_name,
                        destination: dest,
                    })
                },
                crate::shared::AfterAnswer::None,
                OnLoss::ForgetProducer(producer_id),
            )?;
            // Known from now on, so a failover after the broker's answer recreates it.
            st.producers.insert(producer_id, reg);
            r
        };
        if let Err(e) = shared.wait(id, rx).await {
            shared.lock().producers.remove(&producer_id);
            return Err(e);
        }
        Ok(Producer {
            session,
            id: producer_id,
            name,
            destination,
            sequence: 0,
            delivery_mode: DeliveryMode::Persistent,
            priority: DEFAULT_PRIORITY,
            time_to_live: Duration::ZERO,
            delivery_delay: Duration::ZERO,
            closed: false,
        })
    }

    /// The connection-local id (as in [`crate::ConnectionEvent::SendFailed`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The globally unique name: with the sequence, the broker's duplicate-detection key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The destination (`None`: anonymous).
    pub fn destination(&self) -> Option<&Destination> {
        self.destination.as_ref()
    }

    /// The sequence number of the last send (0: none yet).
    pub fn last_sequence(&self) -> u64 {
        self.sequence
    }

    /// Sets the delivery mode (default persistent).
    pub fn set_delivery_mode(&mut self, mode: DeliveryMode) {
        self.delivery_mode = mode;
    }

    /// The delivery mode.
    pub fn delivery_mode(&self) -> DeliveryMode {
        self.delivery_mode
    }

    /// Sets the priority, 0-9 (default 4).
    pub fn set_priority(&mut self, priority: u8) -> Result<()> {
        if priority > 9 {
            return Err(ModelError::InvalidPriority(priority.into()).into());
        }
        self.priority = priority;
        Ok(())
    }

    /// The priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Sets the time to live (zero: messages never expire).
    pub fn set_time_to_live(&mut self, ttl: Duration) {
        self.time_to_live = ttl;
    }

    /// Sets the delivery delay (zero: deliverable at once).
    pub fn set_delivery_delay(&mut self, delay: Duration) {
        self.delivery_delay = delay;
    }

    /// Sends a message and, for a persistent one, waits until the broker has made it durable.
    /// Returns the JMSMessageID given to it.
    ///
    /// A non-persistent send returns once the frame is queued for the writer; if the broker refuses
    /// it, [`crate::Connection::events`] reports [`crate::ConnectionEvent::SendFailed`].
    pub async fn send(&mut self, message: Message) -> Result<String> {
        let receipt = self.send_async(message).await?;
        let id = receipt.message_id().to_string();
        receipt.await?;
        Ok(id)
    }

    /// Queues a send and returns its [`Receipt`] without waiting for the broker: await the receipt
    /// (in any order, from anywhere) to learn the outcome. This is how to pipeline persistent sends.
    ///
    /// The `.await` on this call only waits for room in the connection's send budget (a bounded
    /// number of bytes queued for the writer).
    pub async fn send_async(&mut self, mut message: Message) -> Result<Receipt> {
        if self.closed {
            return Err(Error::Closed("producer"));
        }
        let destination = match &self.destination {
            Some(d) => d.clone(),
            None => message.destination.clone().ok_or(Error::InvalidArgument(
                "an anonymous producer's message needs a destination",
            ))?,
        };
        let shared = self.session.shared.clone();
        self.sequence += 1;
        let sequence = self.sequence;
        let now = now_ms();
        let message_id = format!("ID:{}:{}", self.name, sequence);
        message.message_id = Some(message_id.clone());
        message.destination = Some(destination);
        message.delivery_mode = self.delivery_mode;
        message.set_priority(self.priority)?;
        message.timestamp = now;
        message.expiration = if self.time_to_live.is_zero() {
            0
        } else {
            now + self.time_to_live.as_millis() as i64
        };
        message.delivery_time = if self.delivery_delay.is_zero() {
            0
        } else {
            now + self.delivery_delay.as_millis() as i64
        };
        let receipt = self.delivery_mode == DeliveryMode::Persistent;
        let frame = Frame::Send(wire::Send {
            producer_id: self.id,
            sequence,
            receipt,
            message: message.encode(),
        });
        shared.check_size(&frame)?;
        let cost = frame.wire_len().min(shared.send_budget_bytes) as u32;
        // With failover a persistent send is kept until confirmed, to be resent on a new link;
        // what is kept is bounded too.
        let mut keep = None;
        // A transaction's sends are not resent: a lost link dooms the transaction instead.
        let transacted = self.session.ack_mode == crate::session::AckMode::Transacted;
        if receipt && shared.failover_enabled() && !transacted {
            let cost = frame.wire_len().min(shared.unconfirmed_budget_bytes) as u32;
            let permit = shared
                .unconfirmed_budget
                .clone()
                .acquire_many_owned(cost)
                .await
                .map_err(|_| Error::ConnectionClosed)?;
            let Frame::Send(f) = &frame else {
                unreachable!("built as a Send above")
            };
            keep = Some((f.clone(), permit));
        }
        let permit = shared
            .send_budget
            .clone()
            .acquire_many_owned(cost)
            .await
            .map_err(|_| Error::ConnectionClosed)?;
        // While the connection fails over, wait for the new link (bounded by the request
        // timeout) rather than fail.
        let deadline = tokio::time::Instant::now() + shared.settings.request_timeout;
        loop {
            {
                let mut st = shared.lock();
                st.check_open()?;
                let Some(sess) = st.sessions.get_mut(&self.session.id) else {
                    return Err(Error::Closed("session"));
                };
                if let Some(tx) = sess.tx.as_mut() {
                    tx.dirty = true;
                }
                if st.up {
                    let rx = receipt.then(|| {
                        let (tx, rx) = oneshot::channel();
                        let slot = ReceiptSlot {
                            tx,
                            resend: keep.take(),
                        };
                        st.receipts.insert((self.id, sequence), slot);
                        rx
                    });
                    shared.push_outgoing(Outgoing::Send(frame, permit));
                    return Ok(Receipt { message_id, rx });
                }
            }
            shared.wait_up(deadline).await?;
        }
    }

    /// Closes the producer. Idempotent.
    pub async fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        let producer_id = self.id;
        let shared = &self.session.shared;
        let (id, rx) = {
            let mut st = shared.lock();
            st.producers.remove(&producer_id);
            // While failing over there is nothing to close: the lost link took the producer.
            if st.closed.is_some() || !st.up || !st.sessions.contains_key(&self.session.id) {
                return Ok(());
            }
            shared.request_locked_on_loss(
                &mut st,
                |request_id| {
                    Frame::ProducerClose(wire::ProducerClose {
                        request_id,
                        producer_id,
                    })
                },
                crate::shared::AfterAnswer::None,
                OnLoss::Succeed,
            )?
        };
        shared.wait(id, rx).await
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        if !self.closed {
            let producer_id = self.id;
            let shared = &self.session.shared;
            let mut st = shared.lock();
            st.producers.remove(&producer_id);
            if st.closed.is_none() && st.sessions.contains_key(&self.session.id) {
                shared.fire_and_forget(&mut st, |request_id| {
                    Frame::ProducerClose(wire::ProducerClose {
                        request_id,
                        producer_id,
                    })
                });
            }
        }
    }
}

/// The outcome of one send, to await: `Ok(())` once the broker has accepted it (for a persistent
/// message: made it durable), or the broker's error ([`Error::Broker`] with its code) or the
/// connection's.
///
/// A non-persistent send's receipt is ready at once: the broker does not confirm it.
#[must_use = "a receipt reports whether the broker accepted the message"]
#[derive(Debug)]
pub struct Receipt {
    message_id: String,
    rx: Option<oneshot::Receiver<Result<()>>>,
}

impl Receipt {
    /// The JMSMessageID given to the message.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

impl Future for Receipt {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match self.rx.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(rx) => Pin::new(rx).poll(cx).map(|r| {
                // The sender is dropped only when the connection state is dropped, which fails it
                // first; keep a sensible error anyway.
                r.unwrap_or_else(|_| {
                    Err(Error::ConnectionLost {
                        code: None,
                        reason: "the connection ended".into(),
                    })
                })
            }),
        }
    }
}
