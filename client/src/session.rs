//! [`Session`]: the unit of acknowledgement. Producers and consumers are made from it and keep it
//! alive; acks, recover and close act on all its consumers at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tandem_protocol::model::Destination;
use tandem_protocol::{Frame, wire};
use tokio::sync::oneshot;

use crate::consumer::{Consumer, ConsumerBuilder};
use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::shared::{AfterAnswer, OnLoss, Position, SessionState, Shared, State, TxClient};

/// How a session acknowledges what its consumers receive (JMS acknowledge modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckMode {
    /// Each message is acknowledged as the application receives it.
    Auto,
    /// [`crate::Received::ack`] acknowledges everything the session has handed to the application.
    Client,
    /// Acknowledged lazily in batches; after a failure some messages may come again.
    DupsOk,
    /// [`crate::Received::ack`] acknowledges that one message.
    Individual,
    /// A local transaction: sends and acknowledgements take effect together at
    /// [`Session::commit`]; [`Session::rollback`] drops the sends and redelivers what was received.
    Transacted,
}

pub(crate) fn ack_mode_wire(mode: AckMode) -> wire::AckMode {
    mode.to_wire()
}

impl AckMode {
    fn to_wire(self) -> wire::AckMode {
        match self {
            AckMode::Auto => wire::AckMode::Auto,
            AckMode::Client => wire::AckMode::Client,
            AckMode::DupsOk => wire::AckMode::DupsOk,
            AckMode::Individual => wire::AckMode::Individual,
            AckMode::Transacted => wire::AckMode::Transacted,
        }
    }
}

pub(crate) struct SessionCore {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    pub(crate) ack_mode: AckMode,
    closed: AtomicBool,
}

impl Drop for SessionCore {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let mut st = self.shared.lock();
            // The answer is not awaited: nobody is left to hear it.
            let _ = close_session_locked(&self.shared, &mut st, self.id);
        }
    }
}

/// Flushes dups-ok acks, forgets the session's consumers and queues `SessionClose`. `None` when the
/// session is not open (or the connection is gone).
pub(crate) fn close_session_locked(
    shared: &Shared,
    st: &mut State,
    session_id: u64,
) -> Option<(u64, oneshot::Receiver<Result<()>>)> {
    let sess = st.sessions.remove(&session_id)?;
    if st.closed.is_some() {
        return None;
    }
    if sess.ack_mode == AckMode::DupsOk {
        for (cid, pos) in &sess.positions {
            if pos.handed > pos.acked {
                shared.push(ack_frame(
                    session_id,
                    *cid,
                    pos.handed,
                    wire::AckKind::Cumulative,
                    0,
                ));
            }
        }
    }
    let ids: Vec<u64> = st
        .consumers
        .iter()
        .filter(|(_, c)| c.session_id == session_id)
        .map(|(id, _)| *id)
        .collect();
    for id in ids {
        if let Some(mut c) = st.consumers.remove(&id)
            && let Some(w) = c.waker.take()
        {
            w.wake();
        }
    }
    // Not to be recreated on a new link.
    st.producers.retain(|_, p| p.session_id != session_id);
    // While failing over nothing is sent: the lost link took the session with it.
    shared
        .request_locked_on_loss(
            st,
            |request_id| {
                Frame::SessionClose(wire::SessionClose {
                    request_id,
                    session_id,
                })
            },
            AfterAnswer::None,
            OnLoss::Succeed,
        )
        .ok()
}

pub(crate) fn ack_frame(
    session_id: u64,
    consumer_id: u64,
    delivery_id: u64,
    kind: wire::AckKind,
    request_id: u64,
) -> Frame {
    Frame::Ack(wire::Ack {
        session_id,
        consumer_id,
        delivery_id,
        kind: kind as i32,
        request_id,
    })
}

/// A JMS session: makes producers and consumers and owns their acknowledgements.
///
/// Cheap to clone (all clones are the same session). It closes when [`Session::close`] is called or
/// when the last clone, producer and consumer made from it are dropped.
#[derive(Clone)]
pub struct Session {
    pub(crate) core: Arc<SessionCore>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.core.id)
            .field("ack_mode", &self.core.ack_mode)
            .finish()
    }
}

impl Session {
    pub(crate) async fn open(shared: Arc<Shared>, ack_mode: AckMode) -> Result<Session> {
        let session_id = shared.next_id();
        shared.ready().await?;
        let (id, rx) = {
            let mut st = shared.lock();
            let r = shared.request_locked_on_loss(
                &mut st,
                |request_id| {
                    Frame::SessionOpen(wire::SessionOpen {
                        request_id,
                        session_id,
                        ack_mode: ack_mode.to_wire() as i32,
                    })
                },
                AfterAnswer::None,
                OnLoss::ForgetSession(session_id),
            )?;
            st.sessions.insert(
                session_id,
                SessionState {
                    ack_mode,
                    recovering: 0,
                    stale_up_to: 0,
                    held: Vec::new(),
                    positions: BTreeMap::new(),
                    tx: (ack_mode == AckMode::Transacted).then(|| TxClient {
                        name: format!("{}:tx", crate::producer::unique_name()),
                        seq: 0,
                        dirty: false,
                        doomed: None,
                    }),
                },
            );
            r
        };
        let core = Arc::new(SessionCore {
            shared: shared.clone(),
            id: session_id,
            ack_mode,
            closed: AtomicBool::new(false),
        });
        if let Err(e) = shared.wait(id, rx).await {
            // Nothing to close on the broker's side.
            core.closed.store(true, Ordering::Release);
            shared.lock().sessions.remove(&session_id);
            return Err(e);
        }
        Ok(Session { core })
    }

    /// The session's connection-local id.
    pub fn id(&self) -> u64 {
        self.core.id
    }

    /// The acknowledge mode.
    pub fn ack_mode(&self) -> AckMode {
        self.core.ack_mode
    }

    /// A producer for `destination`, or an anonymous one (`None`) that sends each message to its
    /// own [`Message::destination`](tandem_protocol::model::Message::destination).
    pub async fn create_producer(&self, destination: Option<&Destination>) -> Result<Producer> {
        Producer::open(self.core.clone(), destination.cloned()).await
    }

    /// A consumer with the connection's default prefetch; see [`Session::consumer`] for the other
    /// options.
    pub async fn create_consumer(
        &self,
        destination: &Destination,
        selector: Option<&str>,
    ) -> Result<Consumer> {
        let mut b = self.consumer(destination);
        if let Some(s) = selector {
            b = b.selector(s);
        }
        b.build().await
    }

    /// A builder for a consumer with options (prefetch, durable or shared subscription, no-local,
    /// browser).
    pub fn consumer(&self, destination: &Destination) -> ConsumerBuilder {
        ConsumerBuilder::new(self.core.clone(), destination.clone())
    }

    /// JMS `createDurableConsumer`: a consumer on the unshared durable subscription `name` of the
    /// connection's client id (which must be set), created if it does not exist. The subscription
    /// keeps collecting messages while no consumer is open, and survives broker restarts. At most
    /// one consumer may be open on it ([`tandem_protocol::ErrorCode::IllegalState`]). Asking with a
    /// different topic, selector or `no_local` deletes it (its messages are lost) and creates it
    /// anew.
    pub async fn durable_consumer(
        &self,
        topic: &Destination,
        name: &str,
        selector: Option<&str>,
        no_local: bool,
    ) -> Result<Consumer> {
        let mut b = self.consumer(topic).durable(name).no_local(no_local);
        if let Some(s) = selector {
            b = b.selector(s);
        }
        b.build().await
    }

    /// JMS `createSharedConsumer`: a consumer on the shared non-durable subscription `name` (with
    /// the client id, if set). Its consumers, on any connection, share its messages; it ends when
    /// its last consumer closes.
    pub async fn shared_consumer(
        &self,
        topic: &Destination,
        name: &str,
        selector: Option<&str>,
    ) -> Result<Consumer> {
        let mut b = self.consumer(topic).shared(name);
        if let Some(s) = selector {
            b = b.selector(s);
        }
        b.build().await
    }

    /// JMS `createSharedDurableConsumer`: a consumer on the shared durable subscription `name`
    /// (with the client id, if set). Its consumers share its messages; it outlives them until
    /// [`Session::unsubscribe`].
    pub async fn shared_durable_consumer(
        &self,
        topic: &Destination,
        name: &str,
        selector: Option<&str>,
    ) -> Result<Consumer> {
        let mut b = self.consumer(topic).shared(name).durable(name);
        if let Some(s) = selector {
            b = b.selector(s);
        }
        b.build().await
    }

    /// JMS `unsubscribe`: deletes the durable subscription `name` (of the connection's client id)
    /// and its messages. Refused with [`tandem_protocol::ErrorCode::IllegalState`] while a consumer
    /// is open on it or one of its messages is unacknowledged, and with
    /// [`tandem_protocol::ErrorCode::UnknownSubscription`] if there is none of that name.
    pub async fn unsubscribe(&self, name: &str) -> Result<()> {
        crate::temp::unsubscribe(&self.core.shared, name).await
    }

    /// JMS `createTemporaryQueue`: see [`crate::TemporaryDestination`].
    pub async fn create_temporary_queue(&self) -> Result<crate::TemporaryDestination> {
        crate::TemporaryDestination::create(
            self.core.shared.clone(),
            tandem_protocol::model::DestinationKind::TempQueue,
        )
        .await
    }

    /// JMS `createTemporaryTopic`: see [`crate::TemporaryDestination`].
    pub async fn create_temporary_topic(&self) -> Result<crate::TemporaryDestination> {
        crate::TemporaryDestination::create(
            self.core.shared.clone(),
            tandem_protocol::model::DestinationKind::TempTopic,
        )
        .await
    }

    /// JMS `Session.recover()`: stops handing out what is buffered, drops the local buffers and
    /// asks the broker to take back everything unacknowledged in the session. Messages the
    /// application had seen come again marked redelivered; merely prefetched ones come back
    /// unchanged. Deliveries still on their way when the broker took the `Nack` are dropped on
    /// arrival (the broker has taken them back too).
    pub async fn recover(&self) -> Result<()> {
        if self.core.ack_mode == AckMode::Transacted {
            return Err(Error::InvalidArgument(
                "recover() on a transacted session: use rollback()",
            ));
        }
        self.take_back(|session_id, request_id, consumed| {
            Frame::Nack(wire::Nack {
                session_id,
                request_id,
                consumed,
                delivery_id: 0,
            })
        })
        .await
    }

    /// Recover and rollback: drops the local buffers and has the broker take back everything
    /// unacknowledged in the session, telling it how far the application got per consumer.
    async fn take_back(
        &self,
        frame: impl FnOnce(u64, u64, Vec<wire::ConsumerPosition>) -> Frame,
    ) -> Result<()> {
        let shared = &self.core.shared;
        let session_id = self.core.id;
        let (id, rx) = {
            let mut st = shared.lock();
            st.check_open()?;
            if !st.up {
                // The failover already dropped the buffers; the old broker gives everything back.
                return if st.sessions.contains_key(&session_id) {
                    Ok(())
                } else {
                    Err(Error::Closed("session"))
                };
            }
            let State {
                consumers,
                sessions,
                ..
            } = &mut *st;
            let sess = sessions
                .get_mut(&session_id)
                .ok_or(Error::Closed("session"))?;
            for slot in consumers
                .values_mut()
                .filter(|c| c.session_id == session_id)
            {
                slot.buffer.clear();
            }
            let consumed = handed_positions(sess, |p| p.handed > 0);
            // Everything unacknowledged goes back: nothing is left to acknowledge.
            for p in sess.positions.values_mut() {
                *p = Position {
                    handed: p.handed,
                    acked: p.handed,
                    pending: 0,
                };
            }
            let open: Vec<u64> = consumers.keys().copied().collect();
            sess.positions.retain(|cid, _| open.contains(cid));
            sess.recovering += 1;
            shared.request_locked_on_loss(
                &mut st,
                |request_id| frame(session_id, request_id, consumed),
                AfterAnswer::EndRecover(session_id),
                OnLoss::Succeed,
            )?
        };
        shared.wait(id, rx).await
    }

    /// JMS `Session.commit()`: every message sent in the session since the last commit or
    /// rollback, and the acknowledgement of every message its consumers handed to the application
    /// since then, take effect together, durably, or not at all. Messages prefetched but not yet
    /// received stay for the next transaction.
    ///
    /// Fails with [`Error::TransactionRolledBack`] when the transaction could not commit and was
    /// rolled back instead (a send in it was refused; the store failed; the connection failed over
    /// while it was open): the application may run it again. If the link is lost while the commit
    /// itself is on its way, the client asks the broker on the next link whether it committed
    /// (commits carry an id the broker's duplicate detection keeps) and answers accordingly, so a
    /// commit is never reported rolled back when it took effect, nor the reverse.
    pub async fn commit(&self) -> Result<()> {
        let shared = &self.core.shared;
        let session_id = self.core.id;
        let deadline = tokio::time::Instant::now() + shared.settings.request_timeout;
        shared.wait_up(deadline).await?;
        let doomed = {
            let mut st = shared.lock();
            st.check_open()?;
            let sess = st
                .sessions
                .get_mut(&session_id)
                .ok_or(Error::Closed("session"))?;
            let tx = sess.tx.as_mut().ok_or(Error::InvalidArgument(
                "commit() on a session that is not transacted",
            ))?;
            tx.doomed.take()
        };
        if let Some(reason) = doomed {
            // Whatever the new link carried of it (sends, deliveries) is dropped too.
            self.rollback().await?;
            return Err(Error::TransactionRolledBack(reason));
        }
        let (id, rx, generation, name, seq) = {
            let mut st = shared.lock();
            st.check_open()?;
            let generation = st.generation;
            let sess = st
                .sessions
                .get_mut(&session_id)
                .ok_or(Error::Closed("session"))?;
            let consumed = handed_positions(sess, |p| p.handed > p.acked);
            let tx = sess.tx.as_mut().ok_or(Error::InvalidArgument(
                "commit() on a session that is not transacted",
            ))?;
            tx.seq += 1;
            tx.dirty = false;
            let (name, seq) = (tx.name.clone(), tx.seq);
            let tx_name = name.clone();
            let (id, rx) = shared.request_locked_on_loss(
                &mut st,
                |request_id| {
                    Frame::TxCommit(wire::TxCommit {
                        request_id,
                        session_id,
                        consumed,
                        tx_name,
                        tx_seq: seq,
                        resolve: false,
                        acks: Vec::new(),
                    })
                },
                AfterAnswer::None,
                OnLoss::Fail,
            )?;
            (id, rx, generation, name, seq)
        };
        let r = shared.wait(id, rx).await.map_err(commit_error);
        let lost = shared.lock().generation != generation;
        let r = match r {
            Err(e) if lost && e.is_connection_error() => {
                self.resolve_commit(name, seq, deadline).await
            }
            r => r,
        };
        // Committed, or rolled back by the broker: either way what was handed is settled.
        if matches!(r, Ok(()) | Err(Error::TransactionRolledBack(_)))
            && let Some(sess) = shared.lock().sessions.get_mut(&session_id)
        {
            for p in sess.positions.values_mut() {
                p.acked = p.handed;
            }
        }
        r
    }

    /// Asks the broker on a new link whether commit `seq` took effect.
    async fn resolve_commit(
        &self,
        name: String,
        seq: u64,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        let shared = &self.core.shared;
        let session_id = self.core.id;
        shared.wait_up(deadline).await?;
        let (id, rx) = {
            let mut st = shared.lock();
            if let Some(tx) = st.sessions.get_mut(&session_id).and_then(|s| s.tx.as_mut()) {
                // The loss doomed nothing of this transaction: it is decided by the answer.
                tx.doomed = None;
            }
            shared.request_locked_on_loss(
                &mut st,
                |request_id| {
                    Frame::TxCommit(wire::TxCommit {
                        request_id,
                        session_id,
                        tx_name: name,
                        tx_seq: seq,
                        resolve: true,
                        ..Default::default()
                    })
                },
                AfterAnswer::None,
                OnLoss::Fail,
            )?
        };
        shared.wait(id, rx).await.map_err(commit_error)
    }

    /// JMS `Session.rollback()`: drops every message sent in the open transaction and gives back
    /// every message received in it (they come again marked redelivered); prefetched messages the
    /// application has not received come back unchanged.
    pub async fn rollback(&self) -> Result<()> {
        {
            let mut st = self.core.shared.lock();
            st.check_open()?;
            let sess = st
                .sessions
                .get_mut(&self.core.id)
                .ok_or(Error::Closed("session"))?;
            let tx = sess.tx.as_mut().ok_or(Error::InvalidArgument(
                "rollback() on a session that is not transacted",
            ))?;
            tx.dirty = false;
            tx.doomed = None;
        }
        self.take_back(|session_id, request_id, consumed| {
            Frame::TxRollback(wire::TxRollback {
                request_id,
                session_id,
                consumed,
            })
        })
        .await
    }

    /// Closes the session: its consumers stop, dups-ok acks are flushed, and the broker takes back
    /// everything unacknowledged (redelivered later, flagged). Producers and consumers of the
    /// session fail with [`Error::Closed`] afterwards. Idempotent.
    pub async fn close(&self) -> Result<()> {
        if self.core.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let shared = &self.core.shared;
        let pending = {
            let mut st = shared.lock();
            close_session_locked(shared, &mut st, self.core.id)
        };
        match pending {
            Some((id, rx)) => shared.wait(id, rx).await,
            None => Ok(()),
        }
    }
}

/// Each consumer's position where `pick` holds, as the broker wants it.
fn handed_positions(
    sess: &SessionState,
    pick: impl Fn(&Position) -> bool,
) -> Vec<wire::ConsumerPosition> {
    sess.positions
        .iter()
        .filter(|(_, p)| pick(p))
        .map(|(cid, p)| wire::ConsumerPosition {
            consumer_id: *cid,
            delivery_id: p.handed,
        })
        .collect()
}

/// A refused commit is a rolled-back transaction.
fn commit_error(e: Error) -> Error {
    match e {
        Error::Broker {
            code: tandem_protocol::ErrorCode::TransactionRolledBack,
            message,
        } => Error::TransactionRolledBack(message),
        e => e,
    }
}
