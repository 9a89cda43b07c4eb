//! One client connection, transport-agnostic: frames in (a `Stream` from the TCP codec or an
//! in-process link), frames out (the [`Outbound`] channel to the connection's writer).
//!
//! The connection task owns its sessions, producers and consumers. Dispatchers reach consumers and
//! sessions through shared handles (see `session.rs` for the lock order). Requests are answered in
//! the order they arrive; a send to a full destination holds this connection's input (not the
//! broker) for up to the producer block timeout.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tandem_protocol::model::Destination;
use tandem_protocol::selector::Selector;
use tandem_protocol::wire::{self, AckKind, AckMode};
use tandem_protocol::{CodecError, ErrorCode, Frame, PROTOCOL_VERSION};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use crate::broker::{BrokerInner, DupStatus, DupTicket};
use crate::journal::Record;
use crate::message::{BrokerMessage, Refusal, now_ms};
use crate::queue::{BrowsePos, Queue};
use crate::security::acl::Permission;
use crate::security::{Authenticated, Peer};
use crate::session::{ConsumerShared, OUTBOUND_HIGH, Outbound, SessionShared, Unacked};
use crate::store::Durable;
use crate::subscription::{AttachRequest, SubKey};
use crate::topic::{Subscription, Topic};

struct Producer {
    /// The stable name: with the sequence, the duplicate-detection key.
    name: Arc<str>,
    destination: Option<Destination>,
    session_id: u64,
}

/// The open transaction of a transacted session: its sends wait here, checked and routed but
/// neither journaled nor enqueued, until the commit makes them durable and visible together with
/// the session's acknowledgements (one journal transaction: all or nothing after a crash).
#[derive(Default)]
struct TxState {
    sends: Vec<TxSend>,
    /// Bytes of `sends`, bounded by `max_transaction_bytes`.
    bytes: usize,
    /// Why the transaction can only roll back (a send in it was refused).
    doomed: Option<String>,
}

/// A queue browser: where it stands in its queue and how much more it may be sent.
struct Browser {
    session_id: u64,
    queue: Arc<Queue>,
    selector: Option<Selector>,
    after: Option<BrowsePos>,
    credit: u32,
    shown: u64,
    done: bool,
}

/// Most messages one browser is sent per turn of the connection task (its window may be larger).
const BROWSE_BATCH: usize = 256;

struct TxSend {
    routed: Routed,
    /// The durable queues the message is journaled for at commit (empty: nothing to write).
    durable_refs: Vec<String>,
}

/// A send that passed every check: where it goes.
struct Routed {
    msg: Arc<BrokerMessage>,
    targets: Vec<Arc<Queue>>,
    topic: Option<Arc<Topic>>,
    /// Journaled under this reserved (producer name, sequence): settled once durable (or failed).
    dup: Option<DupTicket>,
}

impl Routed {
    fn route(self, inner: &BrokerInner) {
        let now = now_ms();
        if self.msg.persistent
            && let Some(at) = inner.store.take_location(self.msg.id)
        {
            // Journaled: its queues may page it.
            self.msg.set_location(at);
        }
        for q in &self.targets {
            q.enqueue(self.msg.clone(), now);
        }
        if let Some(t) = self.topic {
            t.published();
        }
        if let Some(ticket) = self.dup {
            ticket.settle(Ok(()));
        }
    }
}

enum Accepted {
    /// Routed (or dropped as expired or duplicate): confirm now.
    Done,
    /// Route and confirm once `Durable` resolves, after everything submitted before it.
    Pending(Durable, Routed),
    /// A resend whose original is still being written: confirm (or fail) as the original is.
    Mirror(Durable),
}

/// Work the confirmer finishes, in submission order, once the store made it durable.
enum Confirm {
    Send {
        durable: Durable,
        routed: Routed,
        producer_id: u64,
        sequence: u64,
        receipt: bool,
    },
    /// A resend answered with its original's outcome; nothing is routed.
    Mirror {
        durable: Durable,
        producer_id: u64,
        sequence: u64,
        receipt: bool,
    },
    /// Answer a request (an ack the client waits for) once its records are durable.
    Reply { durable: Durable, request_id: u64 },
    /// A transaction's commit: once durable, its sends are routed and its acks applied, in that
    /// order and before anything submitted after it; if the store fails it is rolled back.
    Commit {
        durable: Durable,
        sends: Vec<Routed>,
        acked: Vec<Unacked>,
        key: Option<DupTicket>,
        request_id: u64,
    },
    /// A commit asked about after a lost link, whose original is still being written.
    Resolve { durable: Durable, request_id: u64 },
}

/// Finishes a connection's pending sends and replies in order. Completions resolve in journal
/// batch order, so awaiting them one by one costs nothing while later ones are in flight.
async fn confirmer(
    inner: Arc<BrokerInner>,
    out: Outbound,
    mut rx: mpsc::UnboundedReceiver<Confirm>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(c) = rx.recv().await {
        match c {
            Confirm::Send {
                durable,
                routed,
                producer_id,
                sequence,
                receipt,
            } => match durable.await {
                Ok(()) => {
                    routed.route(&inner);
                    if receipt {
                        let r = wire::SendReceipt {
                            producer_id,
                            sequence,
                        };
                        let _ = out.send(Frame::SendReceipt(r));
                    }
                }
                Err(e) => {
                    if let Some(ticket) = routed.dup {
                        ticket.settle(Err(e.clone()));
                    }
                    inner.stats.sends_refused.fetch_add(1, Ordering::Relaxed);
                    let _ = out.send(Frame::SendFailure(wire::SendFailure {
                        producer_id,
                        sequence,
                        code: ErrorCode::StorageFailure.code(),
                        message: e.0,
                    }));
                }
            },
            Confirm::Mirror {
                durable,
                producer_id,
                sequence,
                receipt,
            } => match durable.await {
                Ok(()) => {
                    inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    if receipt {
                        let r = wire::SendReceipt {
                            producer_id,
                            sequence,
                        };
                        let _ = out.send(Frame::SendReceipt(r));
                    }
                }
                Err(e) => {
                    let _ = out.send(Frame::SendFailure(wire::SendFailure {
                        producer_id,
                        sequence,
                        code: ErrorCode::StorageFailure.code(),
                        message: e.0,
                    }));
                }
            },
            Confirm::Commit {
                durable,
                sends,
                acked,
                key,
                request_id,
            } => {
                let frame = match durable.await {
                    Ok(()) => {
                        for routed in sends {
                            routed.route(&inner);
                        }
                        ack_on_queues(acked);
                        if let Some(k) = key {
                            k.settle(Ok(()));
                        }
                        Frame::Ok(wire::Ok {
                            request_id,
                            last_delivery_id: 0,
                        })
                    }
                    Err(e) => {
                        if let Some(k) = key {
                            k.settle(Err(e.clone()));
                        }
                        requeue(&inner, acked.into_iter().map(|u| (u, true)), now_ms());
                        Frame::error(
                            request_id,
                            ErrorCode::TransactionRolledBack,
                            format!("the commit could not be made durable, rolled back: {}", e.0),
                        )
                    }
                };
                let _ = out.send(frame);
            }
            Confirm::Resolve {
                durable,
                request_id,
            } => {
                let frame = match durable.await {
                    Ok(()) => Frame::Ok(wire::Ok {
                        request_id,
                        last_delivery_id: 0,
                    }),
                    Err(e) => Frame::error(
                        request_id,
                        ErrorCode::TransactionRolledBack,
                        format!("the transaction was not committed: {}", e.0),
                    ),
                };
                let _ = out.send(frame);
            }
            Confirm::Reply {
                durable,
                request_id,
            } => {
                let frame = match durable.await {
                    Ok(()) => Frame::Ok(wire::Ok {
                        request_id,
                        last_delivery_id: 0,
                    }),
                    Err(e) => Frame::error(request_id, ErrorCode::StorageFailure, e.0),
                };
                let _ = out.send(frame);
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Attachment {
    Queue(Arc<Queue>),
    Topic {
        topic: Arc<Topic>,
        queue: Arc<Queue>,
    },
    /// A durable or shared subscription (see `subscription.rs`).
    Named {
        key: SubKey,
        queue: Arc<Queue>,
    },
}

impl Attachment {
    fn queue(&self) -> &Arc<Queue> {
        match self {
            Attachment::Queue(q) => q,
            Attachment::Topic { queue, .. } | Attachment::Named { queue, .. } => queue,
        }
    }
}

struct Consumer {
    shared: Arc<ConsumerShared>,
    attachment: Attachment,
    /// What it was opened on (a temporary destination cannot be deleted while it is open).
    destination: Destination,
}

struct Connection {
    inner: Arc<BrokerInner>,
    id: u64,
    out: Outbound,
    client_id: Option<String>,
    /// Who this connection acts as; answers every authorization check.
    auth: Authenticated,
    sessions: HashMap<u64, Arc<SessionShared>>,
    producers: HashMap<u64, Producer>,
    consumers: HashMap<u64, Consumer>,
    /// Sends and replies waiting for the store, finished in order by the confirmer task.
    confirm: mpsc::UnboundedSender<Confirm>,
    /// How many of them are in flight (the fast path routes inline only when none are).
    pending: Arc<AtomicUsize>,
    /// The open transaction of each transacted session (and only of those).
    txs: HashMap<u64, TxState>,
    /// Queue browsers by consumer id: they walk their queue, consuming nothing.
    browsers: HashMap<u64, Browser>,
}

/// Serves one connection until the peer leaves, an error closes it, or the broker shuts down.
pub(crate) async fn run<S>(
    inner: Arc<BrokerInner>,
    mut inbound: S,
    out: Outbound,
    peer: Peer,
    _permit: OwnedSemaphorePermit,
) where
    S: Stream<Item = Result<Frame, CodecError>> + Unpin,
{
    let id = inner.next_connection_id.fetch_add(1, Ordering::Relaxed);
    inner
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!("conn", id, %peer);
    let _e = span.enter();
    let Some((client_id, heartbeat, auth)) = handshake(&inner, &mut inbound, &out, id, &peer).await
    else {
        return;
    };
    tracing::debug!(?client_id, ?heartbeat, "connected");
    let (confirm, confirm_rx) = mpsc::unbounded_channel();
    let pending = Arc::new(AtomicUsize::new(0));
    inner.tasks.spawn(confirmer(
        inner.clone(),
        out.clone(),
        confirm_rx,
        pending.clone(),
    ));
    let mut conn = Connection {
        inner,
        id,
        out,
        client_id,
        auth,
        sessions: HashMap::new(),
        producers: HashMap::new(),
        consumers: HashMap::new(),
        confirm,
        pending,
        txs: HashMap::new(),
        browsers: HashMap::new(),
    };
    conn.serve(&mut inbound, heartbeat).await;
    conn.cleanup();
}

fn fatal(out: &Outbound, code: ErrorCode, message: String) {
    let _ = out.send(Frame::error(0, code, message.clone()));
    let _ = out.send(Frame::Close(wire::Close {
        code: code.code(),
        message,
    }));
}

async fn handshake<S>(
    inner: &BrokerInner,
    inbound: &mut S,
    out: &Outbound,
    id: u64,
    peer: &Peer,
) -> Option<(Option<String>, Duration, Authenticated)>
where
    S: Stream<Item = Result<Frame, CodecError>> + Unpin,
{
    let limit = Duration::from_millis(inner.config.handshake_timeout_ms);
    let first = tokio::select! {
        _ = inner.shutdown.cancelled() => {
            fatal(out, ErrorCode::ShuttingDown, "the broker is shutting down".into());
            return None;
        }
        r = tokio::time::timeout(limit, inbound.next()) => r,
    };
    let c = match first {
        Err(_) => {
            fatal(
                out,
                ErrorCode::IllegalState,
                format!("no Connect frame within {limit:?}"),
            );
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            inner.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            fatal(out, e.error_code(), e.to_string());
            return None;
        }
        Ok(Some(Ok(Frame::Connect(c)))) => c,
        Ok(Some(Ok(other))) => {
            fatal(
                out,
                ErrorCode::IllegalState,
                format!(
                    "the first frame must be Connect, not {:?}",
                    other.frame_type()
                ),
            );
            return None;
        }
    };
    if c.min_version > PROTOCOL_VERSION || c.max_version < PROTOCOL_VERSION {
        fatal(
            out,
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks versions {}..={}, this server speaks {PROTOCOL_VERSION}",
                c.min_version, c.max_version
            ),
        );
        return None;
    }
    // Security hook: authenticate before anything else is looked at (client ids included).
    let auth = match crate::security::authenticate(inner, peer, &c).await {
        Ok(a) => a,
        Err(r) => {
            fatal(out, r.code, r.message);
            return None;
        }
    };
    let client_id = (!c.client_id.is_empty()).then(|| c.client_id.clone());
    if let Some(cid) = &client_id
        && !inner.client_ids.lock().insert(cid.clone())
    {
        fatal(
            out,
            ErrorCode::ClientIdInUse,
            format!("client id {cid:?} is already connected"),
        );
        return None;
    }
    let server_hb = inner.config.heartbeat_ms;
    let agreed = if c.heartbeat_ms == 0 || server_hb == 0 {
        0
    } else {
        u64::from(c.heartbeat_ms).max(server_hb)
    };
    let _ = out.send(Frame::Connected(wire::Connected {
        version: PROTOCOL_VERSION,
        server: format!("tandem/{}", env!("CARGO_PKG_VERSION")),
        connection_id: id,
        heartbeat_ms: agreed.min(u64::from(u32::MAX)) as u32,
        max_frame_size: inner.config.max_frame_size.min(u32::MAX as usize) as u32,
    }));
    Some((client_id, Duration::from_millis(agreed), auth))
}

impl Connection {
    async fn serve<S>(&mut self, inbound: &mut S, heartbeat: Duration)
    where
        S: Stream<Item = Result<Frame, CodecError>> + Unpin,
    {
        let idle_cfg = Duration::from_millis(self.inner.config.idle_timeout_ms);
        // Silence allowed: three heartbeats, or the configured idle timeout, whichever is shorter.
        let silence = [heartbeat * 3, idle_cfg]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min();
        let tick_every = match (heartbeat.is_zero(), silence) {
            (false, _) => Some(heartbeat),
            (true, Some(s)) => Some((s / 4).max(Duration::from_millis(10))),
            (true, None) => None,
        };
        let mut ticker = tokio::time::interval(tick_every.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last_rx = Instant::now();
        let mut nonce = 0u64;
        let shutdown = self.inner.shutdown.clone();
        loop {
            if self.out.backlog() > OUTBOUND_HIGH {
                // The peer is not reading what we send: stop reading it until the writer catches
                // up (TCP then pushes back on the peer), so its pings and requests cannot pile
                // answers up in memory. Waiting on purpose is not silence: restart the idle clock.
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = self.out.wait_drained() => {}
                }
                last_rx = Instant::now();
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    if self.inner.fenced.load(Ordering::SeqCst) {
                        self.close(ErrorCode::Fenced, "this lane lost its lease: fail over");
                    } else {
                        self.close(ErrorCode::ShuttingDown, "the broker is shutting down");
                    }
                    return;
                }
                f = inbound.next() => match f {
                    None => return,
                    Some(Err(e)) => {
                        self.inner.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "closing on a bad frame");
                        fatal(&self.out, e.error_code(), e.to_string());
                        return;
                    }
                    Some(Ok(frame)) => {
                        last_rx = Instant::now();
                        if self.handle(frame).await.is_break() {
                            return;
                        }
                    }
                },
                _ = ticker.tick(), if tick_every.is_some() => {
                    if let Some(s) = silence
                        && last_rx.elapsed() > s
                    {
                        self.close(ErrorCode::IdleTimeout, &format!("nothing received for {s:?}"));
                        return;
                    }
                    if !heartbeat.is_zero() {
                        nonce += 1;
                        let _ = self.out.send(Frame::Ping(wire::Ping { nonce }));
                    }
                }
            }
        }
    }

    fn close(&self, code: ErrorCode, message: &str) {
        let _ = self.out.send(Frame::Close(wire::Close {
            code: code.code(),
            message: message.into(),
        }));
    }

    fn reply(&self, request_id: u64, result: Result<(), Refusal>) {
        let frame = match result {
            Ok(()) => Frame::Ok(wire::Ok {
                request_id,
                last_delivery_id: 0,
            }),
            Err(r) => Frame::error(request_id, r.code, r.message),
        };
        let _ = self.out.send(frame);
    }

    async fn handle(&mut self, frame: Frame) -> ControlFlow<()> {
        match frame {
            Frame::Send(s) => self.on_send(s).await,
            Frame::Ack(a) if self.txs.contains_key(&a.session_id) => self.reply(
                a.request_id,
                Err(illegal(format!(
                    "session {} is transacted: its deliveries are acknowledged by commit",
                    a.session_id
                ))),
            ),
            Frame::Ack(a) => match self.on_ack(&a).await {
                // The client waits: answer once the ack is durable, so an acknowledged message
                // never comes back after a crash (invariant 2). Without a request id the ack is
                // written all the same, unawaited.
                Ok(Some(durable)) if a.request_id != 0 => {
                    self.pending.fetch_add(1, Ordering::AcqRel);
                    let c = Confirm::Reply {
                        durable,
                        request_id: a.request_id,
                    };
                    if self.confirm.send(c).is_err() {
                        self.pending.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                r => self.answer_optional(a.request_id, r.map(drop)),
            },
            Frame::Nack(n) => match self.on_nack(&n) {
                Ok(mark) if n.request_id != 0 => {
                    let _ = self.out.send(Frame::Ok(wire::Ok {
                        request_id: n.request_id,
                        last_delivery_id: mark,
                    }));
                }
                Ok(_) => {}
                Err(r) => self.reply(n.request_id, Err(r)),
            },
            Frame::Flow(f) => {
                if let Some(c) = self.consumers.get(&f.consumer_id) {
                    // The queue knows its consumers by their broker-wide key, not the
                    // connection-local id (another connection may use the same id).
                    c.attachment
                        .queue()
                        .add_credit(c.shared.key, f.credit, now_ms());
                } else if self.browsers.contains_key(&f.consumer_id) {
                    self.browse_more(f.consumer_id, f.credit);
                } else {
                    self.reply(0, Err(unknown_consumer(f.consumer_id)));
                }
            }
            Frame::SessionOpen(s) => {
                let r = self.on_session_open(&s);
                self.reply(s.request_id, r);
            }
            Frame::SessionClose(s) => {
                let r = self.on_session_close(s.session_id);
                self.reply(s.request_id, r);
            }
            Frame::ProducerOpen(p) => {
                let r = self.on_producer_open(&p);
                self.reply(p.request_id, r);
            }
            Frame::ProducerClose(p) => {
                let r = match self.producers.remove(&p.producer_id) {
                    Some(_) => Ok(()),
                    None => Err(Refusal::new(
                        ErrorCode::UnknownProducer,
                        format!("producer {} is not open", p.producer_id),
                    )),
                };
                self.reply(p.request_id, r);
            }
            Frame::ConsumerOpen(c) => {
                let r = self.on_consumer_open(&c).await;
                self.reply(c.request_id, r);
                if let Some(open) = self.consumers.get(&c.consumer_id) {
                    // Attach only after the Ok is queued, so no delivery overtakes it.
                    open.attachment
                        .queue()
                        .add_consumer(open.shared.clone(), now_ms());
                } else if self.browsers.contains_key(&c.consumer_id) {
                    self.browse_more(c.consumer_id, c.prefetch);
                }
            }
            Frame::ConsumerClose(c) => {
                let r = self.on_consumer_close(c.consumer_id, Some(c.last_consumed));
                self.reply(c.request_id, r);
            }
            Frame::Unsubscribe(u) => {
                let r = self.on_unsubscribe(&u).await;
                self.reply(u.request_id, r);
            }
            Frame::TempDestinationCreate(t) => {
                let r = self.on_temp_create(t.destination.as_ref());
                self.reply(t.request_id, r);
            }
            Frame::TempDestinationDelete(t) => {
                let r = self.on_temp_delete(t.destination.as_ref());
                self.reply(t.request_id, r);
            }
            Frame::TxBegin(t) => {
                let r = self.transacted(t.session_id).map(drop);
                self.reply(t.request_id, r);
            }
            Frame::TxCommit(t) => {
                let request_id = t.request_id;
                if let Err(r) = self.on_commit(t).await {
                    self.reply(request_id, Err(r));
                }
            }
            Frame::TxRollback(t) => match self.on_rollback(&t) {
                Ok(mark) => {
                    let _ = self.out.send(Frame::Ok(wire::Ok {
                        request_id: t.request_id,
                        last_delivery_id: mark,
                    }));
                }
                Err(r) => self.reply(t.request_id, Err(r)),
            },
            Frame::Ping(p) => {
                let _ = self.out.send(Frame::Pong(wire::Pong { nonce: p.nonce }));
            }
            Frame::Pong(_) => {}
            Frame::Close(_) => {
                let _ = self.out.send(Frame::Close(wire::Close {
                    code: 0,
                    message: "bye".into(),
                }));
                return ControlFlow::Break(());
            }
            other => {
                self.inner
                    .stats
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                fatal(
                    &self.out,
                    ErrorCode::IllegalState,
                    format!(
                        "{:?} is not a frame a client sends here",
                        other.frame_type()
                    ),
                );
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn answer_optional(&self, request_id: u64, r: Result<(), Refusal>) {
        if request_id != 0 || r.is_err() {
            self.reply(request_id, r);
        }
    }

    fn on_session_open(&mut self, s: &wire::SessionOpen) -> Result<(), Refusal> {
        if s.session_id == 0 || self.sessions.contains_key(&s.session_id) {
            return Err(illegal(format!(
                "session id {} is zero or already open",
                s.session_id
            )));
        }
        match AckMode::try_from(s.ack_mode) {
            Ok(AckMode::Transacted) => {
                self.txs.insert(s.session_id, TxState::default());
            }
            Ok(_) => {}
            Err(_) => return Err(illegal(format!("unknown ack mode {}", s.ack_mode))),
        }
        self.sessions
            .insert(s.session_id, SessionShared::new(s.session_id));
        Ok(())
    }

    fn on_producer_open(&mut self, p: &wire::ProducerOpen) -> Result<(), Refusal> {
        if !self.sessions.contains_key(&p.session_id) {
            return Err(unknown_session(p.session_id));
        }
        if p.producer_id == 0 || self.producers.contains_key(&p.producer_id) {
            return Err(illegal(format!(
                "producer id {} is zero or already open",
                p.producer_id
            )));
        }
        let destination = p.destination.as_ref().map(parse_destination).transpose()?;
        if let Some(d) = &destination {
            self.auth.check_use(&self.inner, Permission::Send, d)?;
            self.inner.ensure(d)?;
        }
        // The name keys duplicate detection across reconnects. A producer without one gets a name
        // unique to this connection: its resends after a reconnect cannot be recognised.
        let name: Arc<str> = if p.producer_name.is_empty() {
            format!(
                "{}:conn-{}:p{}",
                self.inner.instance, self.id, p.producer_id
            )
            .into()
        } else {
            p.producer_name.as_str().into()
        };
        self.producers.insert(
            p.producer_id,
            Producer {
                name,
                destination,
                session_id: p.session_id,
            },
        );
        Ok(())
    }

    async fn on_send(&mut self, s: wire::Send) {
        let (producer_id, sequence, receipt) = (s.producer_id, s.sequence, s.receipt);
        let tx_session = self.producers.get(&producer_id).map(|p| p.session_id);
        let failure = match self.accept(s).await {
            Ok(Accepted::Done) => {
                if receipt {
                    let r = wire::SendReceipt {
                        producer_id,
                        sequence,
                    };
                    let _ = self.out.send(Frame::SendReceipt(r));
                }
                return;
            }
            Ok(Accepted::Pending(durable, routed)) => {
                self.pending.fetch_add(1, Ordering::AcqRel);
                let c = Confirm::Send {
                    durable,
                    routed,
                    producer_id,
                    sequence,
                    receipt,
                };
                if self.confirm.send(c).is_ok() {
                    return;
                }
                Refusal::new(ErrorCode::Internal, "the connection's confirmer stopped")
            }
            Ok(Accepted::Mirror(durable)) => {
                self.pending.fetch_add(1, Ordering::AcqRel);
                let c = Confirm::Mirror {
                    durable,
                    producer_id,
                    sequence,
                    receipt,
                };
                if self.confirm.send(c).is_ok() {
                    return;
                }
                Refusal::new(ErrorCode::Internal, "the connection's confirmer stopped")
            }
            Err(r) => r,
        };
        // A refused send in a transaction leaves it incomplete: it can only roll back (JMS lets
        // the application go on and learn it at commit).
        if let Some(tx) = tx_session.and_then(|sid| self.txs.get_mut(&sid))
            && tx.doomed.is_none()
        {
            tx.doomed = Some(format!(
                "a send in it was refused ({}: {})",
                failure.code.name(),
                failure.message
            ));
        }
        self.inner
            .stats
            .sends_refused
            .fetch_add(1, Ordering::Relaxed);
        let _ = self.out.send(Frame::SendFailure(wire::SendFailure {
            producer_id,
            sequence,
            code: failure.code.code(),
            message: failure.message,
        }));
    }

    /// Checks, flow-controls and routes (or submits to the store) one send.
    async fn accept(&mut self, s: wire::Send) -> Result<Accepted, Refusal> {
        let Some(producer) = self.producers.get(&s.producer_id) else {
            return Err(Refusal::new(
                ErrorCode::UnknownProducer,
                format!("producer {} is not open", s.producer_id),
            ));
        };
        let producer_name = producer.name.clone();
        let session_id = producer.session_id;
        let now = now_ms();
        let id = self.inner.next_message_id.fetch_add(1, Ordering::Relaxed);
        let max = self.inner.config.max_message_size;
        let msg = BrokerMessage::parse(id, s.message, self.id, max)?;
        if let Some(d) = &producer.destination
            && *d != msg.destination
        {
            return Err(Refusal::new(
                ErrorCode::InvalidDestination,
                format!(
                    "message names {} but the producer sends to {d}",
                    msg.destination
                ),
            ));
        }
        if producer.destination.is_none() {
            // An anonymous producer's rights are checked per message (a named one's at open).
            self.auth
                .check_use(&self.inner, Permission::Send, &msg.destination)?;
        }
        let (targets, topic) = if msg.destination.kind().is_queue() {
            (vec![self.inner.queue(&msg.destination)?], None)
        } else {
            let t = self.inner.topic(&msg.destination)?;
            (t.route(&msg), Some(t))
        };
        self.inner.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        if msg.is_expired(now) {
            // JMS lets a provider drop a message that expired before delivery.
            return Ok(Accepted::Done);
        }
        let durable_refs: Vec<String> = if msg.persistent && self.inner.store.persistent() {
            targets
                .iter()
                .filter(|q| q.is_durable())
                .map(|q| q.name().to_string())
                .collect()
        } else {
            Vec::new()
        };
        if self.txs.contains_key(&session_id) {
            return self
                .accept_in_tx(session_id, msg, targets, topic, durable_refs)
                .await;
        }
        let journaled = !durable_refs.is_empty();
        let mut ticket = None;
        if journaled {
            match self.inner.dup_reserve(&producer_name, s.sequence) {
                DupStatus::New(t) => ticket = Some(t),
                DupStatus::Stored => {
                    // A resend of a message already stored (invariant 3): confirm, store nothing.
                    self.inner.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(Accepted::Done);
                }
                // Its original is being written: answer as the original is answered.
                DupStatus::InFlight(original) => return Ok(Accepted::Mirror(Box::pin(original))),
            }
        }
        self.flow_control(&msg, &targets).await?;
        let routed = Routed {
            msg: Arc::new(msg),
            targets,
            topic,
            dup: ticket,
        };
        if !journaled {
            if self.pending.load(Ordering::Acquire) == 0 {
                routed.route(&self.inner);
                return Ok(Accepted::Done);
            }
            // Earlier sends still wait for the store: keep this one behind them.
            return Ok(Accepted::Pending(
                Box::pin(std::future::ready(Ok(()))),
                routed,
            ));
        }
        let mut records = Vec::with_capacity(2 + durable_refs.len());
        records.push(Record::AddMessage {
            msg_id: id,
            encoded: routed.msg.encoded.clone(),
        });
        let deliver_at = routed.msg.headers.delivery_time;
        for queue in durable_refs {
            records.push(Record::AddRef {
                msg_id: id,
                queue: queue.clone(),
            });
            if deliver_at > now {
                // After its AddRef: a schedule applies to a ref that exists.
                let deliver_at_ms = deliver_at as u64;
                records.push(Record::ScheduledDelivery {
                    msg_id: id,
                    queue,
                    deliver_at_ms,
                });
            }
        }
        records.push(Record::DupId {
            producer: producer_name.to_string(),
            seq: s.sequence,
        });
        let durable = self
            .inner
            .store
            .submit(records)
            .await
            .map_err(|e| Refusal::new(ErrorCode::StorageFailure, e.0))?;
        Ok(Accepted::Pending(durable, routed))
    }

    /// A send in a transacted session: checked and flow-controlled now, held until the commit.
    async fn accept_in_tx(
        &mut self,
        session_id: u64,
        msg: BrokerMessage,
        targets: Vec<Arc<Queue>>,
        topic: Option<Arc<Topic>>,
        durable_refs: Vec<String>,
    ) -> Result<Accepted, Refusal> {
        self.flow_control(&msg, &targets).await?;
        let limit = self.inner.config.max_transaction_bytes;
        let size = msg.size();
        let Some(tx) = self.txs.get_mut(&session_id) else {
            // Closed while this send waited for room.
            return Err(unknown_session(session_id));
        };
        if tx.bytes + size > limit {
            return Err(Refusal::new(
                ErrorCode::TransactionRolledBack,
                format!(
                    "the transaction would hold {} bytes of messages, more than \
                     max_transaction_bytes ({limit}): it can only roll back",
                    tx.bytes + size
                ),
            ));
        }
        tx.bytes += size;
        tx.sends.push(TxSend {
            routed: Routed {
                msg: Arc::new(msg),
                targets,
                topic,
                dup: None,
            },
            durable_refs,
        });
        Ok(Accepted::Done)
    }

    fn transacted(&mut self, session_id: u64) -> Result<&mut TxState, Refusal> {
        if !self.sessions.contains_key(&session_id) {
            return Err(unknown_session(session_id));
        }
        self.txs
            .get_mut(&session_id)
            .ok_or_else(|| illegal(format!("session {session_id} is not transacted")))
    }

    /// Commits a transacted session's transaction; the answer comes later (through the confirmer)
    /// unless this returns an error.
    async fn on_commit(&mut self, c: wire::TxCommit) -> Result<(), Refusal> {
        self.transacted(c.session_id)?;
        let key: Option<Arc<str>> = (!c.tx_name.is_empty()).then(|| c.tx_name.as_str().into());
        if c.resolve {
            return self.on_resolve(key, c.tx_seq, c.request_id);
        }
        let session = self.sessions[&c.session_id].clone();
        // Take what the commit acknowledges out of the sessions now: from here on it belongs to
        // this commit (applied once durable, given back if it fails).
        let mut acked = take_consumed(&session, &c.consumed);
        for a in &c.acks {
            let Some(other) = self.sessions.get(&a.session_id) else {
                requeue_all(&self.inner, acked);
                return Err(unknown_session(a.session_id));
            };
            match take_acked(other, a) {
                Ok(mut t) => acked.append(&mut t),
                Err(r) => {
                    requeue_all(&self.inner, acked);
                    return Err(r);
                }
            }
        }
        let tx = std::mem::take(self.transacted(c.session_id)?);
        if let Some(reason) = tx.doomed {
            requeue(&self.inner, acked.into_iter().map(|u| (u, true)), now_ms());
            return Err(Refusal::new(
                ErrorCode::TransactionRolledBack,
                format!("the transaction was rolled back: {reason}"),
            ));
        }
        let now = now_ms();
        let mut ops = Vec::new();
        if self.inner.store.persistent() {
            for send in &tx.sends {
                if send.durable_refs.is_empty() {
                    continue;
                }
                let msg = &send.routed.msg;
                ops.push(Record::AddMessage {
                    msg_id: msg.id,
                    encoded: msg.encoded.clone(),
                });
                let deliver_at = msg.headers.delivery_time;
                for queue in &send.durable_refs {
                    ops.push(Record::AddRef {
                        msg_id: msg.id,
                        queue: queue.clone(),
                    });
                    if deliver_at > now {
                        ops.push(Record::ScheduledDelivery {
                            msg_id: msg.id,
                            queue: queue.clone(),
                            deliver_at_ms: deliver_at as u64,
                        });
                    }
                }
            }
            for u in &acked {
                if u.queue.is_durable() && u.entry.msg.persistent {
                    ops.push(Record::AckRef {
                        msg_id: u.entry.msg.id,
                        queue: u.queue.name().to_string(),
                    });
                }
            }
        }
        let mut ticket = None;
        if let Some(name) = &key {
            match self.inner.dup_reserve(name, c.tx_seq) {
                DupStatus::New(t) => ticket = Some(t),
                DupStatus::Stored | DupStatus::InFlight(_) => {
                    requeue(&self.inner, acked.into_iter().map(|u| (u, true)), now);
                    return Err(illegal(format!(
                        "transaction {name:?} #{} was already committed or resolved",
                        c.tx_seq
                    )));
                }
            }
        }
        let sends: Vec<Routed> = tx.sends.into_iter().map(|s| s.routed).collect();
        let durable: Durable = if ops.is_empty() {
            // Nothing to write: the commit is decided now (in memory, like the messages).
            if let Some(t) = ticket.take() {
                t.settle(Ok(()));
            }
            if self.pending.load(Ordering::Acquire) == 0 {
                for routed in sends {
                    routed.route(&self.inner);
                }
                ack_on_queues(acked);
                self.reply(c.request_id, Ok(()));
                return Ok(());
            }
            Box::pin(std::future::ready(Ok(())))
        } else {
            let tx_id = self.inner.next_tx_id.fetch_add(1, Ordering::Relaxed);
            let mut records: Vec<Record> = ops
                .into_iter()
                .map(|op| Record::Tx {
                    tx_id,
                    op: Box::new(op),
                })
                .collect();
            if let Some(name) = &key {
                records.push(Record::Tx {
                    tx_id,
                    op: Box::new(Record::DupId {
                        producer: name.to_string(),
                        seq: c.tx_seq,
                    }),
                });
            }
            records.push(Record::TxCommit { tx_id });
            match self.inner.store.submit(records).await {
                Ok(d) => d,
                Err(e) => {
                    if let Some(t) = ticket {
                        t.settle(Err(e.clone()));
                    }
                    requeue(&self.inner, acked.into_iter().map(|u| (u, true)), now);
                    return Err(Refusal::new(
                        ErrorCode::TransactionRolledBack,
                        format!("the commit could not be written, rolled back: {}", e.0),
                    ));
                }
            }
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        let commit = Confirm::Commit {
            durable,
            sends,
            acked,
            key: ticket,
            request_id: c.request_id,
        };
        if let Err(mpsc::error::SendError(Confirm::Commit { acked, .. })) =
            self.confirm.send(commit)
        {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            requeue(&self.inner, acked.into_iter().map(|u| (u, true)), now);
            return Err(Refusal::new(
                ErrorCode::Internal,
                "the connection's confirmer stopped",
            ));
        }
        Ok(())
    }

    /// A commit whose answer was lost with its link: committed (or being written), or never —
    /// and then never: the key is burnt, so a late copy of the original commit cannot apply.
    fn on_resolve(
        &mut self,
        key: Option<Arc<str>>,
        seq: u64,
        request_id: u64,
    ) -> Result<(), Refusal> {
        let Some(name) = key else {
            return Err(illegal("resolve needs the transaction's tx_name".into()));
        };
        match self.inner.dup_reserve(&name, seq) {
            DupStatus::Stored => self.reply(request_id, Ok(())),
            DupStatus::InFlight(original) => {
                self.pending.fetch_add(1, Ordering::AcqRel);
                let c = Confirm::Resolve {
                    durable: Box::pin(original),
                    request_id,
                };
                if self.confirm.send(c).is_err() {
                    self.pending.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refusal::new(
                        ErrorCode::Internal,
                        "the connection's confirmer stopped",
                    ));
                }
            }
            DupStatus::New(ticket) => {
                ticket.settle(Ok(()));
                return Err(Refusal::new(
                    ErrorCode::TransactionRolledBack,
                    format!("transaction {name:?} #{seq} was not committed"),
                ));
            }
        }
        Ok(())
    }

    /// Rolls a transacted session's transaction back: its sends are dropped, and what its
    /// consumers received goes back as by recover. Returns the delivery-id mark.
    fn on_rollback(&mut self, t: &wire::TxRollback) -> Result<u64, Refusal> {
        *self.transacted(t.session_id)? = TxState::default();
        self.on_nack(&wire::Nack {
            session_id: t.session_id,
            request_id: t.request_id,
            consumed: t.consumed.clone(),
            delivery_id: 0,
        })
    }

    /// Sends a browser up to `credit` more messages (at once or as earlier credit allows), and
    /// BrowseDone once its queue has nothing further.
    fn browse_more(&mut self, consumer_id: u64, credit: u32) {
        let Some(b) = self.browsers.get_mut(&consumer_id) else {
            return;
        };
        b.credit = b.credit.saturating_add(credit);
        while !b.done && b.credit > 0 {
            let want = (b.credit as usize).min(BROWSE_BATCH);
            let found = b.queue.browse(b.after, want, b.selector.as_ref());
            b.after = found.scanned_to;
            for (_, entry) in found.shown {
                b.credit -= 1;
                b.shown += 1;
                let _ = self.out.send(Frame::Deliver(wire::Deliver {
                    consumer_id,
                    delivery_id: b.shown,
                    redelivered: entry.redelivered,
                    delivery_count: entry.delivery_count + 1,
                    message: entry.msg.encoded.clone(),
                }));
            }
            if found.end {
                b.done = true;
                let _ = self
                    .out
                    .send(Frame::BrowseDone(wire::BrowseDone { consumer_id }));
            }
        }
    }

    /// Waits for room on every target, up to the producer block timeout.
    async fn flow_control(
        &self,
        msg: &BrokerMessage,
        targets: &[Arc<Queue>],
    ) -> Result<(), Refusal> {
        let size = msg.size();
        let configured = self.inner.config.producer_block_timeout();
        let deadline = Instant::now() + configured;
        for q in targets {
            // Per destination: `fail` does not wait, `page` does not need to (persistent).
            let block = q.block_timeout(configured);
            if !q.has_room_for(msg) && (block.is_zero() || !q.wait_for_room(size, deadline).await) {
                let snap = q.snapshot();
                let (used, limit) = (
                    self.inner.paging.budget.used(),
                    self.inner.paging.budget.limit(),
                );
                return Err(Refusal::new(
                    ErrorCode::DestinationFull,
                    format!(
                        "{} is full: {} bytes queued, limit {} bytes (all destinations: {used} of \
                         {limit}); waited {} ms for room",
                        msg.destination,
                        snap.memory,
                        q.memory_limit(),
                        block.as_millis()
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn on_consumer_open(&mut self, c: &wire::ConsumerOpen) -> Result<(), Refusal> {
        let Some(session) = self.sessions.get(&c.session_id).cloned() else {
            return Err(unknown_session(c.session_id));
        };
        if c.consumer_id == 0
            || self.consumers.contains_key(&c.consumer_id)
            || self.browsers.contains_key(&c.consumer_id)
        {
            return Err(illegal(format!(
                "consumer id {} is zero or already open",
                c.consumer_id
            )));
        }
        let Some(dest) = &c.destination else {
            return Err(Refusal::new(
                ErrorCode::InvalidDestination,
                "no destination",
            ));
        };
        let dest = parse_destination(dest)?;
        let perm = if c.browser {
            Permission::Browse
        } else {
            Permission::Consume
        };
        self.auth.check_use(&self.inner, perm, &dest)?;
        let selector = match c.selector.trim() {
            "" => None,
            text => Some(Selector::parse(text).map_err(|e| {
                Refusal::new(
                    ErrorCode::InvalidSelector,
                    format!("selector {text:?}: {e}"),
                )
            })?),
        };
        let named = self.subscription_key(c, &dest)?;
        if dest.kind().is_temporary() {
            self.inner.temps.check_consumer(&dest, self.id)?;
        }
        if c.browser {
            if !dest.kind().is_queue() || named.is_some() {
                return Err(Refusal::new(
                    ErrorCode::InvalidDestination,
                    format!("only queues can be browsed, not {dest}"),
                ));
            }
            let queue = self.inner.queue(&dest)?;
            self.browsers.insert(
                c.consumer_id,
                Browser {
                    session_id: c.session_id,
                    queue,
                    selector,
                    after: None,
                    credit: 0,
                    shown: 0,
                    done: false,
                },
            );
            return Ok(());
        }
        let is_queue = dest.kind().is_queue();
        let shared = ConsumerShared::new(
            c.consumer_id,
            self.inner.next_consumer_key.fetch_add(1, Ordering::Relaxed),
            self.id,
            session.clone(),
            c.prefetch,
            if is_queue { selector.clone() } else { None },
            self.out.clone(),
        );
        let attachment = if is_queue {
            Attachment::Queue(self.inner.queue(&dest)?)
        } else if let Some(key) = named {
            let topic = self.inner.topic(&dest)?;
            let selector_text = (!c.selector.trim().is_empty()).then(|| c.selector.trim().into());
            let attached = self.inner.subscriptions.attach(
                &self.inner,
                AttachRequest {
                    key: key.clone(),
                    shared: c.shared,
                    topic,
                    selector_text,
                    selector,
                    no_local: c.no_local,
                    connection_id: self.id,
                },
            )?;
            if !attached.records.is_empty()
                && let Err(r) = self.journal(attached.records).await
            {
                self.inner.subscriptions.detach(&key);
                return Err(r);
            }
            Attachment::Named {
                key,
                queue: attached.queue,
            }
        } else {
            let topic = self.inner.topic(&dest)?;
            let name: Arc<str> =
                format!("{}:sub:{}:{}", dest.name(), self.id, c.consumer_id).into();
            let queue = self.inner.make_queue(name, false, dest.name());
            topic.subscribe(Arc::new(Subscription {
                consumer_key: (self.id, c.consumer_id),
                queue: queue.clone(),
                no_local_connection: c.no_local.then_some(self.id),
                selector,
            }));
            Attachment::Topic { topic, queue }
        };
        self.consumers.insert(
            c.consumer_id,
            Consumer {
                shared,
                attachment,
                destination: dest,
            },
        );
        Ok(())
    }

    /// The subscription a consumer open names, if any, after the JMS rules on who may name one.
    fn subscription_key(
        &self,
        c: &wire::ConsumerOpen,
        dest: &Destination,
    ) -> Result<Option<SubKey>, Refusal> {
        if !c.durable && !c.shared {
            if !c.subscription_name.is_empty() {
                return Err(illegal(
                    "a subscription name needs a durable or shared subscription".into(),
                ));
            }
            return Ok(None);
        }
        if dest.kind() != tandem_protocol::model::DestinationKind::Topic {
            let what = if c.durable { "durable" } else { "shared" };
            return Err(Refusal::new(
                ErrorCode::InvalidDestination,
                format!("{what} subscriptions are made on topics, not on {dest}"),
            ));
        }
        if c.subscription_name.is_empty() {
            return Err(illegal(
                "a durable or shared subscription needs a name".into(),
            ));
        }
        if c.durable && !c.shared && self.client_id.is_none() {
            return Err(illegal(format!(
                "the unshared durable subscription {:?} needs a client id: set one on the connection",
                c.subscription_name
            )));
        }
        if c.shared && c.no_local {
            return Err(illegal(
                "noLocal is not defined for shared subscriptions".into(),
            ));
        }
        Ok(Some(SubKey {
            durable: c.durable,
            client_id: self.client_id.clone(),
            name: c.subscription_name.clone(),
        }))
    }

    /// Writes records and waits until they are durable (subscription changes: rare, and answered
    /// only once they would survive a crash).
    async fn journal(&self, records: Vec<Record>) -> Result<(), Refusal> {
        let storage = |e: crate::store::StoreError| Refusal::new(ErrorCode::StorageFailure, e.0);
        let durable = self.inner.store.submit(records).await.map_err(storage)?;
        durable.await.map_err(storage)
    }

    async fn on_unsubscribe(&mut self, u: &wire::Unsubscribe) -> Result<(), Refusal> {
        let key = SubKey {
            durable: true,
            client_id: self.client_id.clone(),
            name: u.subscription_name.clone(),
        };
        let records = self.inner.subscriptions.unsubscribe(&self.inner, &key)?;
        if records.is_empty() {
            return Ok(());
        }
        self.journal(records).await
    }

    fn on_temp_create(&mut self, d: Option<&wire::Destination>) -> Result<(), Refusal> {
        let dest = parse_destination(
            d.ok_or_else(|| Refusal::new(ErrorCode::InvalidDestination, "no destination"))?,
        )?;
        if dest.kind().is_temporary() {
            self.auth
                .check_use(&self.inner, Permission::Create, &dest)?;
        }
        self.inner.temps.create(&self.inner, &dest, self.id)
    }

    fn on_temp_delete(&mut self, d: Option<&wire::Destination>) -> Result<(), Refusal> {
        let dest = parse_destination(
            d.ok_or_else(|| Refusal::new(ErrorCode::InvalidDestination, "no destination"))?,
        )?;
        let open = self
            .consumers
            .values()
            .filter(|c| c.destination == dest)
            .count();
        if open > 0 {
            return Err(illegal(format!(
                "{dest} has {open} open consumers: close them before deleting it"
            )));
        }
        self.inner.temps.delete(&self.inner, &dest, self.id)
    }

    /// Closes a consumer. Deliveries after `last_consumed` go back unseen; with `None` every
    /// delivery stays with the session.
    fn on_consumer_close(
        &mut self,
        consumer_id: u64,
        last_consumed: Option<u64>,
    ) -> Result<(), Refusal> {
        if self.browsers.remove(&consumer_id).is_some() {
            return Ok(());
        }
        let Some(c) = self.consumers.remove(&consumer_id) else {
            return Err(unknown_consumer(consumer_id));
        };
        c.shared.close();
        let now = now_ms();
        let queue = c.attachment.queue().clone();
        queue.remove_consumer(c.shared.key, now);
        if let Some(last) = last_consumed {
            let unseen: Vec<Unacked> = {
                let mut u = c.shared.session.unacked.lock();
                let ids: Vec<u64> = u
                    .range(last.saturating_add(1)..)
                    .filter(|(_, d)| d.consumer_id == consumer_id)
                    .map(|(id, _)| *id)
                    .collect();
                ids.into_iter().filter_map(|id| u.remove(&id)).collect()
            };
            requeue(&self.inner, unseen.into_iter().map(|u| (u, false)), now);
        }
        match &c.attachment {
            Attachment::Topic { topic, .. } => topic.unsubscribe((self.id, consumer_id)),
            Attachment::Named { key, .. } => self.inner.subscriptions.detach(key),
            Attachment::Queue(_) => {}
        }
        Ok(())
    }

    fn on_session_close(&mut self, session_id: u64) -> Result<(), Refusal> {
        let Some(session) = self.sessions.remove(&session_id) else {
            return Err(unknown_session(session_id));
        };
        // An open transaction ends with its session: rolled back.
        self.txs.remove(&session_id);
        self.browsers.retain(|_, b| b.session_id != session_id);
        let ids: Vec<u64> = self
            .consumers
            .iter()
            .filter(|(_, c)| c.shared.session.id == session_id)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let _ = self.on_consumer_close(id, None);
        }
        let (all, _) = session.take_all();
        requeue(&self.inner, all.into_values().map(|u| (u, true)), now_ms());
        Ok(())
    }

    /// Acknowledges; returns the store's completion when the ack had to be journaled.
    async fn on_ack(&mut self, a: &wire::Ack) -> Result<Option<Durable>, Refusal> {
        let Some(session) = self.sessions.get(&a.session_id) else {
            return Err(unknown_session(a.session_id));
        };
        let taken = take_acked(session, a)?;
        let now = now_ms();
        let journal = self.inner.store.persistent();
        let mut records = Vec::new();
        for (queue, items) in group_by_queue(
            taken
                .into_iter()
                .map(|u| (u.queue, (u.consumer_key, u.entry))),
        ) {
            if journal && queue.is_durable() {
                for (_, e) in items.iter().filter(|(_, e)| e.msg.persistent) {
                    let queue = queue.name().to_string();
                    records.push(Record::AckRef {
                        msg_id: e.msg.id,
                        queue,
                    });
                }
            }
            queue.ack(items, now);
        }
        if records.is_empty() {
            return Ok(None);
        }
        let durable = self
            .inner
            .store
            .submit(records)
            .await
            .map_err(|e| Refusal::new(ErrorCode::StorageFailure, e.0))?;
        Ok(Some(durable))
    }

    /// Returns the session's delivery-id mark for the answer (see `wire::Ok::last_delivery_id`).
    fn on_nack(&mut self, n: &wire::Nack) -> Result<u64, Refusal> {
        let Some(session) = self.sessions.get(&n.session_id) else {
            return Err(unknown_session(n.session_id));
        };
        let now = now_ms();
        if n.delivery_id != 0 {
            let Some(u) = session.unacked.lock().remove(&n.delivery_id) else {
                return Err(Refusal::new(
                    ErrorCode::UnknownDelivery,
                    format!("delivery {} is not unacknowledged", n.delivery_id),
                ));
            };
            requeue(&self.inner, [(u, true)], now);
            return Ok(0);
        }
        let seen_up_to: HashMap<u64, u64> = n
            .consumed
            .iter()
            .map(|p| (p.consumer_id, p.delivery_id))
            .collect();
        let (all, mark) = session.take_all();
        requeue(
            &self.inner,
            all.into_iter().map(|(id, u)| {
                let seen = seen_up_to
                    .get(&u.consumer_id)
                    .is_some_and(|last| id <= *last);
                (u, seen)
            }),
            now,
        );
        Ok(mark)
    }

    fn cleanup(&mut self) {
        let sessions: Vec<u64> = self.sessions.keys().copied().collect();
        for s in sessions {
            let _ = self.on_session_close(s);
        }
        // After the consumers: nothing of this connection is attached to them any more.
        self.inner.temps.connection_closed(&self.inner, self.id);
        if let Some(cid) = &self.client_id {
            self.inner.client_ids.lock().remove(cid);
        }
        tracing::debug!("connection closed");
    }
}

/// Puts deliveries back; `seen` ones come back with their count raised, which is journaled for
/// persistent messages (so that a restart does not forget redeliveries: the dead-letter policy
/// counts them). The count write is not awaited: losing it in a crash only lowers a count.
fn requeue(inner: &Arc<BrokerInner>, items: impl IntoIterator<Item = (Unacked, bool)>, now: i64) {
    let grouped = group_by_queue(
        items
            .into_iter()
            .map(|(u, seen)| (u.queue, (u.consumer_key, u.seq, u.entry, seen))),
    );
    let journal = inner.store.persistent();
    let mut records = Vec::new();
    for (queue, items) in grouped {
        if journal && queue.is_durable() {
            for (_, _, e, _) in items
                .iter()
                .filter(|(_, _, e, seen)| *seen && e.msg.persistent)
            {
                records.push(Record::DeliveryCount {
                    msg_id: e.msg.id,
                    queue: queue.name().to_string(),
                    count: e.delivery_count + 1,
                });
            }
        }
        queue.requeue(items, now);
    }
    if !records.is_empty() {
        let inner = inner.clone();
        inner.tasks.clone().spawn(async move {
            if let Ok(durable) = inner.store.submit(records).await {
                let _ = durable.await;
            }
        });
    }
}

/// Groups items by queue, keeping their order within each queue.
fn group_by_queue<T>(
    items: impl IntoIterator<Item = (Arc<Queue>, T)>,
) -> Vec<(Arc<Queue>, Vec<T>)> {
    let mut groups: Vec<(Arc<Queue>, Vec<T>)> = Vec::new();
    for (q, t) in items {
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &q)) {
            Some((_, v)) => v.push(t),
            None => groups.push((q, vec![t])),
        }
    }
    groups
}

fn parse_destination(d: &wire::Destination) -> Result<Destination, Refusal> {
    Destination::from_wire(d)
        .map_err(|e| Refusal::new(ErrorCode::InvalidDestination, e.to_string()))
}

fn illegal(message: String) -> Refusal {
    Refusal::new(ErrorCode::IllegalState, message)
}

fn unknown_session(id: u64) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownSession,
        format!("session {id} is not open"),
    )
}

fn unknown_consumer(id: u64) -> Refusal {
    Refusal::new(
        ErrorCode::UnknownConsumer,
        format!("consumer {id} is not open"),
    )
}

/// Takes out of `session` every delivery of each listed consumer up to its position.
fn take_consumed(session: &SessionShared, consumed: &[wire::ConsumerPosition]) -> Vec<Unacked> {
    let mut u = session.unacked.lock();
    let ids: Vec<u64> = u
        .iter()
        .filter(|(id, d)| {
            consumed
                .iter()
                .any(|p| p.consumer_id == d.consumer_id && **id <= p.delivery_id)
        })
        .map(|(id, _)| *id)
        .collect();
    ids.into_iter().filter_map(|id| u.remove(&id)).collect()
}

/// Takes out of `session` what one ack covers.
fn take_acked(session: &SessionShared, a: &wire::Ack) -> Result<Vec<Unacked>, Refusal> {
    let mut u = session.unacked.lock();
    let taken: Vec<Unacked> = match AckKind::try_from(a.kind) {
        Ok(AckKind::Individual) => u.remove(&a.delivery_id).into_iter().collect(),
        Ok(AckKind::Cumulative) => {
            let ids: Vec<u64> = u
                .range(..=a.delivery_id)
                .filter(|(_, d)| d.consumer_id == a.consumer_id)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| u.remove(&id)).collect()
        }
        Err(_) => return Err(illegal(format!("unknown ack kind {}", a.kind))),
    };
    if taken.is_empty() {
        return Err(Refusal::new(
            ErrorCode::UnknownDelivery,
            format!(
                "delivery {} is not unacknowledged in session {}",
                a.delivery_id, a.session_id
            ),
        ));
    }
    Ok(taken)
}

/// Gives deliveries taken for an ack back unchanged (the ack was refused before it applied).
fn requeue_all(inner: &Arc<BrokerInner>, items: Vec<Unacked>) {
    requeue(inner, items.into_iter().map(|u| (u, false)), now_ms());
}

/// Applies acknowledgements on their queues.
fn ack_on_queues(acked: Vec<Unacked>) {
    let now = now_ms();
    for (queue, items) in group_by_queue(
        acked
            .into_iter()
            .map(|u| (u.queue, (u.consumer_key, u.entry))),
    ) {
        queue.ack(items, now);
    }
}
