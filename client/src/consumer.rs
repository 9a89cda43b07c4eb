//! [`Consumer`] (a `Stream` of [`Received`] messages), its builder, and the ack handle a received
//! message carries.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tandem_protocol::model::{Destination, Message};
use tandem_protocol::{Frame, wire};

use crate::error::{Error, Result};
use crate::session::{AckMode, SessionCore, ack_frame};
use crate::shared::{AfterAnswer, ConsumerSlot, OnLoss, Shared, State};

/// Options of a consumer before it opens (see [`crate::Session::consumer`]).
#[must_use = "call build().await to open the consumer"]
pub struct ConsumerBuilder {
    session: Arc<SessionCore>,
    destination: Destination,
    selector: Option<String>,
    prefetch: Option<u32>,
    subscription_name: Option<String>,
    durable: bool,
    shared: bool,
    no_local: bool,
    browser: bool,
}

impl std::fmt::Debug for ConsumerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder {
    pub(crate) fn new(session: Arc<SessionCore>, destination: Destination) -> ConsumerBuilder {
        ConsumerBuilder {
            session,
            destination,
            selector: None,
            prefetch: None,
            subscription_name: None,
            durable: false,
            shared: false,
            no_local: false,
            browser: false,
        }
    }

    /// A JMS message selector (SQL-92 subset); the broker checks it.
    pub fn selector(mut self, selector: impl Into<String>) -> Self {
        self.selector = Some(selector.into());
        self
    }

    /// How many unacknowledged deliveries the broker may have outstanding to this consumer. Zero
    /// makes it a pull consumer: each receive asks for one message.
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// A durable topic subscription of this name, identified with the connection's client id (an
    /// unshared one requires a client id; a shared one may do without).
    pub fn durable(mut self, name: impl Into<String>) -> Self {
        self.subscription_name = Some(name.into());
        self.durable = true;
        self
    }

    /// A shared topic subscription of this name (durable too if [`ConsumerBuilder::durable`] is
    /// also called; the last name given wins).
    pub fn shared(mut self, name: impl Into<String>) -> Self {
        self.subscription_name = Some(name.into());
        self.shared = true;
        self
    }

    /// Do not receive messages published by this connection (topics).
    pub fn no_local(mut self, no_local: bool) -> Self {
        self.no_local = no_local;
        self
    }

    /// A queue browser: sees the queue's messages without consuming them (nothing is acknowledged).
    pub fn browser(mut self) -> Self {
        self.browser = true;
        self
    }

    /// Opens the consumer.
    pub async fn build(self) -> Result<Consumer> {
        let shared = self.session.shared.clone();
        let consumer_id = shared.next_id();
        let prefetch = self.prefetch.unwrap_or(shared.settings.default_prefetch);
        let session_id = self.session.id;
        shared.ready().await?;
        let (id, rx) = {
            let mut st = shared.lock();
            st.check_open()?;
            if !st.sessions.contains_key(&session_id) {
                return Err(Error::Closed("session"));
            }
            let open = wire::ConsumerOpen {
                request_id: 0,
                session_id,
                consumer_id,
                destination: Some(self.destination.to_wire()),
                selector: self.selector.clone().unwrap_or_default(),
                prefetch,
                subscription_name: self.subscription_name.clone().unwrap_or_default(),
                durable: self.durable,
                shared: self.shared,
                no_local: self.no_local,
                browser: self.browser,
            };
            // The slot exists before the request is queued: deliveries may follow the Ok at once.
            st.consumers.insert(
                consumer_id,
                ConsumerSlot {
                    session_id,
                    prefetch,
                    browser: self.browser,
                    buffer: VecDeque::new(),
                    waker: None,
                    pull_outstanding: 0,
                    open: open.clone(),
                    browse_done: false,
                },
            );
            let r = shared.request_locked_on_loss(
                &mut st,
                |request_id| Frame::ConsumerOpen(wire::ConsumerOpen { request_id, ..open }),
                AfterAnswer::None,
                OnLoss::ForgetConsumer(consumer_id),
            );
            if r.is_err() {
                st.consumers.remove(&consumer_id);
            }
            r?
        };
        if let Err(e) = shared.wait(id, rx).await {
            shared.lock().consumers.remove(&consumer_id);
            return Err(e);
        }
        Ok(Consumer {
            session: self.session,
            id: consumer_id,
            destination: self.destination,
            prefetch,
            browser: self.browser,
            closed: false,
            ended: false,
        })
    }
}

/// Receives messages (JMS `MessageConsumer`): a [`Stream`] of [`Received`] messages, or
/// [`Consumer::receive`] with a timeout.
///
/// Messages are handed out only while the connection is started. Acknowledgement follows the
/// session's [`AckMode`]: automatic for `Auto` and `DupsOk`, [`Received::ack`] for `Client` and
/// `Individual`. The stream ends (`None`) after the consumer or its session is closed; a lost
/// connection yields its error once, then ends.
pub struct Consumer {
    session: Arc<SessionCore>,
    id: u64,
    destination: Destination,
    prefetch: u32,
    browser: bool,
    closed: bool,
    ended: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("id", &self.id)
            .field("destination", &self.destination)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

enum Polled {
    Message(Received),
    Failed(Error),
    Ended,
    /// A browser has shown everything.
    Exhausted,
}

impl Consumer {
    /// The connection-local id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The destination.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// The prefetch the consumer was opened with.
    pub fn prefetch(&self) -> u32 {
        self.prefetch
    }

    /// The next message, waiting at most `timeout`; `Ok(None)` when none came in time.
    pub async fn receive(&mut self, timeout: Duration) -> Result<Option<Received>> {
        let next = std::future::poll_fn(|cx| self.poll_next_message(cx));
        match tokio::time::timeout(timeout, next).await {
            Ok(Polled::Message(m)) => Ok(Some(m)),
            Ok(Polled::Failed(e)) => Err(e),
            Ok(Polled::Ended) => Err(self.end_reason()),
            Ok(Polled::Exhausted) | Err(_) => Ok(None),
        }
    }

    /// A message already buffered, if any (never waits). For a pull consumer (prefetch 0) a call
    /// that finds nothing asks the broker for one message, which a later receive will find.
    pub fn receive_no_wait(&mut self) -> Result<Option<Received>> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match self.poll_next_message(&mut cx) {
            Poll::Ready(Polled::Message(m)) => Ok(Some(m)),
            Poll::Ready(Polled::Failed(e)) => Err(e),
            Poll::Ready(Polled::Ended) => Err(self.end_reason()),
            Poll::Ready(Polled::Exhausted) | Poll::Pending => Ok(None),
        }
    }

    fn end_reason(&self) -> Error {
        let st = self.session.shared.lock();
        if let Some(e) = &st.closed {
            e.clone()
        } else if !st.sessions.contains_key(&self.session.id) {
            Error::Closed("session")
        } else {
            Error::Closed("consumer")
        }
    }

    fn poll_next_message(&mut self, cx: &mut Context<'_>) -> Poll<Polled> {
        if self.closed || self.ended {
            return Poll::Ready(Polled::Ended);
        }
        let shared: &Shared = &self.session.shared;
        let generation;
        let delivery = {
            let mut st = shared.lock();
            generation = st.generation;
            if let Some(e) = &st.closed {
                self.ended = true;
                return Poll::Ready(Polled::Failed(e.clone()));
            }
            let started = st.started;
            let State {
                consumers,
                sessions,
                ..
            } = &mut *st;
            let Some(slot) = consumers.get_mut(&self.id) else {
                return Poll::Ready(Polled::Ended);
            };
            if slot.browser && slot.browse_done && slot.buffer.is_empty() {
                return Poll::Ready(Polled::Exhausted);
            }
            let Some(sess) = sessions.get_mut(&slot.session_id) else {
                return Poll::Ready(Polled::Ended);
            };
            if !started || slot.buffer.is_empty() {
                slot.waker = Some(cx.waker().clone());
                // Dups-ok batches acks while messages stream in; once the application has caught
                // up and waits for more, the batch so far goes out, so acks never lag for long.
                if slot.buffer.is_empty()
                    && !slot.browser
                    && sess.ack_mode == AckMode::DupsOk
                    && let Some(pos) = sess.positions.get_mut(&self.id)
                    && pos.handed > pos.acked
                {
                    let sid = self.session.id;
                    shared.push(ack_frame(
                        sid,
                        self.id,
                        pos.handed,
                        wire::AckKind::Cumulative,
                        0,
                    ));
                    pos.acked = pos.handed;
                    pos.pending = 0;
                }
                if started
                    && slot.prefetch == 0
                    && slot.pull_outstanding == 0
                    && sess.recovering == 0
                {
                    // Pull: one credit at a time, so a receive that times out leaves at most one
                    // message prefetched.
                    slot.pull_outstanding = 1;
                    shared.push(Frame::Flow(wire::Flow {
                        consumer_id: self.id,
                        credit: 1,
                    }));
                }
                return Poll::Pending;
            }
            let Some(d) = slot.buffer.pop_front() else {
                return Poll::Pending;
            };
            if slot.browser && slot.prefetch > 0 && !slot.browse_done {
                // A browser acknowledges nothing: its window refills by credit instead.
                shared.push(Frame::Flow(wire::Flow {
                    consumer_id: self.id,
                    credit: 1,
                }));
            }
            if !slot.browser {
                let pos = sess.positions.entry(self.id).or_default();
                pos.handed = d.delivery_id;
                let sid = self.session.id;
                match sess.ack_mode {
                    AckMode::Auto => {
                        shared.push(ack_frame(
                            sid,
                            self.id,
                            d.delivery_id,
                            wire::AckKind::Individual,
                            0,
                        ));
                    }
                    AckMode::DupsOk => {
                        pos.pending += 1;
                        // Half the window: the broker keeps delivering while the ack travels.
                        if pos.pending >= (slot.prefetch / 2).max(1) {
                            shared.push(ack_frame(
                                sid,
                                self.id,
                                d.delivery_id,
                                wire::AckKind::Cumulative,
                                0,
                            ));
                            pos.acked = d.delivery_id;
                            pos.pending = 0;
                        }
                    }
                    AckMode::Transacted => {
                        if let Some(tx) = sess.tx.as_mut() {
                            tx.dirty = true;
                        }
                    }
                    AckMode::Client | AckMode::Individual => {}
                }
            }
            d
        };
        let wire::Deliver {
            consumer_id,
            delivery_id,
            redelivered,
            delivery_count,
            message,
        } = delivery;
        Poll::Ready(match Message::decode(message) {
            Ok(mut m) => {
                m.redelivered = redelivered;
                m.delivery_count = delivery_count;
                Polled::Message(Received {
                    message: m,
                    handle: AckHandle {
                        session: self.session.clone(),
                        consumer_id,
                        delivery_id,
                        browser: self.browser,
                        acked: Arc::new(AtomicBool::new(false)),
                        generation,
                    },
                })
            }
            Err(e) => Polled::Failed(Error::Model(e)),
        })
    }

    /// Closes the consumer. Messages buffered but never handed to the application go back to the
    /// broker unchanged; handed ones not yet acknowledged stay with the session (a later client ack
    /// covers them; recover or session close sends them back). Idempotent.
    pub async fn close(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        let shared = self.session.shared.clone();
        // Bound first: the guard must be gone before the await below.
        let pending = close_consumer_locked(&shared, &mut shared.lock(), self.session.id, self.id)?;
        match pending {
            Some((id, rx)) => shared.wait(id, rx).await,
            None => Ok(()),
        }
    }
}

type PendingAnswer = (u64, tokio::sync::oneshot::Receiver<Result<()>>);

fn close_consumer_locked(
    shared: &Shared,
    st: &mut State,
    session_id: u64,
    consumer_id: u64,
) -> Result<Option<PendingAnswer>> {
    if st.closed.is_some() {
        return Ok(None);
    }
    let Some(slot) = st.consumers.remove(&consumer_id) else {
        return Ok(None);
    };
    if !st.up {
        // Failing over: the lost link took the consumer and its deliveries with it, and it is
        // not recreated.
        if let Some(sess) = st.sessions.get_mut(&session_id) {
            sess.positions.remove(&consumer_id);
        }
        return Ok(None);
    }
    let mut last_consumed = 0;
    if let Some(sess) = st.sessions.get_mut(&session_id) {
        if let Some(pos) = sess.positions.get_mut(&consumer_id) {
            last_consumed = pos.handed;
            if sess.ack_mode == AckMode::DupsOk && pos.handed > pos.acked {
                shared.push(ack_frame(
                    session_id,
                    consumer_id,
                    pos.handed,
                    wire::AckKind::Cumulative,
                    0,
                ));
                pos.acked = pos.handed;
            }
            // Auto and dups-ok have nothing left to acknowledge; client and individual keep the
            // position for the session's later ack or recover.
            if matches!(sess.ack_mode, AckMode::Auto | AckMode::DupsOk)
                || slot.browser
                || pos.handed == pos.acked
            {
                sess.positions.remove(&consumer_id);
            }
        }
    } else {
        return Ok(None);
    }
    shared
        .request_locked_on_loss(
            st,
            |request_id| {
                Frame::ConsumerClose(wire::ConsumerClose {
                    request_id,
                    consumer_id,
                    last_consumed,
                })
            },
            AfterAnswer::None,
            OnLoss::Succeed,
        )
        .map(Some)
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if !self.closed {
            let shared = &self.session.shared;
            // The answer is not awaited: the receiver is dropped here.
            let _ = close_consumer_locked(shared, &mut shared.lock(), self.session.id, self.id);
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Received>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Received>>> {
        self.get_mut().poll_next_message(cx).map(|p| match p {
            Polled::Message(m) => Some(Ok(m)),
            Polled::Failed(e) => Some(Err(e)),
            Polled::Ended | Polled::Exhausted => None,
        })
    }
}

/// A message as a consumer hands it out: the [`Message`] (through `Deref`, or
/// [`Received::into_message`]) plus what is needed to acknowledge it.
///
/// JMS puts `acknowledge()` on the message itself; here the model's `Message` stays a plain value
/// (the one producers build and send) and the wrapper carries the session's ack handle, so
/// `msg.text_body()` and `msg.ack().await` both read naturally.
#[derive(Debug)]
pub struct Received {
    message: Message,
    handle: AckHandle,
}

/// What acknowledging a received message needs: its session, consumer and delivery id.
#[derive(Clone)]
pub struct AckHandle {
    session: Arc<SessionCore>,
    consumer_id: u64,
    delivery_id: u64,
    browser: bool,
    /// Individual mode: this delivery is acknowledged (a second `ack` sends nothing).
    acked: Arc<AtomicBool>,
    /// The link the delivery came over: delivery ids mean nothing to another link's broker.
    generation: u64,
}

impl std::fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckHandle")
            .field("session", &self.session.id)
            .field("consumer", &self.consumer_id)
            .field("delivery", &self.delivery_id)
            .finish()
    }
}

impl Received {
    /// The message (also reachable through `Deref`).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Takes the message out; keep [`Received::ack_handle`] first if it still has to be
    /// acknowledged.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// The handle that acknowledges this message, detachable from it.
    pub fn ack_handle(&self) -> AckHandle {
        self.handle.clone()
    }

    /// The broker's delivery id (per session, increasing).
    pub fn delivery_id(&self) -> u64 {
        self.handle.delivery_id
    }

    /// JMS `Message.acknowledge()`; see [`AckHandle::ack`].
    pub async fn ack(&self) -> Result<()> {
        self.handle.ack().await
    }
}

impl Deref for Received {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl DerefMut for Received {
    fn deref_mut(&mut self) -> &mut Message {
        &mut self.message
    }
}

impl AckHandle {
    /// Acknowledges per the session's mode and waits for the broker to confirm:
    ///
    /// - `Client`: everything the session has handed to the application so far, on all its
    ///   consumers (one cumulative ack per consumer up to the last message it handed out),
    /// - `Individual`: this message only,
    /// - `Auto`, `DupsOk` and browsers: nothing to do (the session acknowledges by itself).
    pub async fn ack(&self) -> Result<()> {
        if self.browser {
            return Ok(());
        }
        let shared = &self.session.shared;
        let session_id = self.session.id;
        let pending = {
            let mut st = shared.lock();
            st.check_open()?;
            if st.generation != self.generation {
                // Acking the new link's delivery with this id would ack another message.
                return match st.sessions.get(&session_id).map(|s| s.ack_mode) {
                    None => Err(Error::Closed("session")),
                    Some(AckMode::Auto | AckMode::DupsOk | AckMode::Transacted) => Ok(()),
                    Some(_) if self.acked.load(Ordering::Acquire) => Ok(()),
                    Some(_) => Err(Error::AckAfterFailover),
                };
            }
            let sess = st
                .sessions
                .get_mut(&session_id)
                .ok_or(Error::Closed("session"))?;
            match sess.ack_mode {
                AckMode::Client => {
                    let todo: Vec<(u64, u64)> = sess
                        .positions
                        .iter_mut()
                        .filter(|(_, p)| p.handed > p.acked)
                        .map(|(cid, p)| {
                            p.acked = p.handed;
                            (*cid, p.handed)
                        })
                        .collect();
                    let open: Vec<u64> = st.consumers.keys().copied().collect();
                    if let Some(sess) = st.sessions.get_mut(&session_id) {
                        // Closed consumers are done once acknowledged.
                        sess.positions.retain(|cid, _| open.contains(cid));
                    }
                    let mut pending = Vec::with_capacity(todo.len());
                    for (cid, did) in todo {
                        pending.push(shared.request_locked_on_loss(
                            &mut st,
                            |rid| ack_frame(session_id, cid, did, wire::AckKind::Cumulative, rid),
                            AfterAnswer::None,
                            OnLoss::AckLost,
                        )?);
                    }
                    pending
                }
                AckMode::Individual if self.acked.load(Ordering::Acquire) => Vec::new(),
                AckMode::Individual => {
                    let (cid, did) = (self.consumer_id, self.delivery_id);
                    vec![shared.request_locked_on_loss(
                        &mut st,
                        |rid| ack_frame(session_id, cid, did, wire::AckKind::Individual, rid),
                        AfterAnswer::None,
                        OnLoss::AckLost,
                    )?]
                }
                AckMode::Auto | AckMode::DupsOk | AckMode::Transacted => Vec::new(),
            }
        };
        for (id, rx) in pending {
            shared.wait(id, rx).await?;
        }
        self.acked.store(true, Ordering::Release);
        Ok(())
    }
}
