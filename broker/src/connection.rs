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
use crate::queue::Queue;
use crate::security::acl::Permission;
use crate::security::{Authenticated, Peer};
use crate::session::{ConsumerShared, OUTBOUND_HIGH, Outbound, SessionShared, Unacked};
use crate::store::Durable;
use crate::topic::{Subscription, Topic};

struct Producer {
    /// The stable name: with the sequence, the duplicate-detection key.
    name: Arc<str>,
    destination: Option<Destination>,
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
}

impl Attachment {
    fn queue(&self) -> &Arc<Queue> {
        match self {
            Attachment::Queue(q) => q,
            Attachment::Topic { queue, .. } => queue,
        }
    }
}

struct Consumer {
    shared: Arc<ConsumerShared>,
    attachment: Attachment,
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
                    c.attachment
                        .queue()
                        .add_credit(f.consumer_id, f.credit, now_ms());
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
                let r = self.on_consumer_open(&c);
                self.reply(c.request_id, r);
                if let Some(c) = self.consumers.get(&c.consumer_id) {
                    // Attach only after the Ok is queued, so no delivery overtakes it.
                    c.attachment
                        .queue()
                        .add_consumer(c.shared.clone(), now_ms());
                }
            }
            Frame::ConsumerClose(c) => {
                let r = self.on_consumer_close(c.consumer_id, Some(c.last_consumed));
                self.reply(c.request_id, r);
            }
            Frame::TxBegin(t) => self.reply(t.request_id, Err(no_transactions())),
            Frame::TxCommit(t) => self.reply(t.request_id, Err(no_transactions())),
            Frame::TxRollback(t) => self.reply(t.request_id, Err(no_transactions())),
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
            Ok(AckMode::Transacted) => return Err(no_transactions()),
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
        self.producers
            .insert(p.producer_id, Producer { name, destination });
        Ok(())
    }

    async fn on_send(&mut self, s: wire::Send) {
        let (producer_id, sequence, receipt) = (s.producer_id, s.sequence, s.receipt);
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

    fn on_consumer_open(&mut self, c: &wire::ConsumerOpen) -> Result<(), Refusal> {
        let Some(session) = self.sessions.get(&c.session_id) else {
            return Err(unknown_session(c.session_id));
        };
        if c.consumer_id == 0 || self.consumers.contains_key(&c.consumer_id) {
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
        if c.durable || c.shared || !c.subscription_name.is_empty() {
            return Err(Refusal::new(
                ErrorCode::NotImplemented,
                "durable and shared subscriptions are not supported yet",
            ));
        }
        if c.browser {
            return Err(Refusal::new(
                ErrorCode::NotImplemented,
                "queue browsers are not supported yet",
            ));
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
        self.consumers
            .insert(c.consumer_id, Consumer { shared, attachment });
        Ok(())
    }

    /// Closes a consumer. Deliveries after `last_consumed` go back unseen; with `None` every
    /// delivery stays with the session.
    fn on_consumer_close(
        &mut self,
        consumer_id: u64,
        last_consumed: Option<u64>,
    ) -> Result<(), Refusal> {
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
        if let Attachment::Topic { topic, .. } = &c.attachment {
            topic.unsubscribe((self.id, consumer_id));
        }
        Ok(())
    }

    fn on_session_close(&mut self, session_id: u64) -> Result<(), Refusal> {
        let Some(session) = self.sessions.remove(&session_id) else {
            return Err(unknown_session(session_id));
        };
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
        let taken: Vec<Unacked> = {
            let mut u = session.unacked.lock();
            match AckKind::try_from(a.kind) {
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
            }
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

fn no_transactions() -> Refusal {
    Refusal::new(
        ErrorCode::NotImplemented,
        "transacted sessions are not supported yet",
    )
}
