//! One STOMP connection, translated onto a native connection.
//!
//! ```text
//!  STOMP peer ──tcp── Framed<StompCodec> ──▶ Session::on_stomp ──Frame──▶ local link ──▶ connection::run
//!             ◀────── MESSAGE/RECEIPT/ERROR ◀── Session::on_native ◀──Frame── local link ◀──┘
//! ```
//!
//! The broker's own connection handler does all the work (routing, dispatch, acks, flow
//! control); this task only translates. It owns one native session (id 1) and one anonymous
//! producer (id 1); each SUBSCRIBE is a native consumer. Invariants:
//!
//! - Every STOMP frame that asks for a `receipt` maps to native frames whose last one is answered
//!   (Ok or SendReceipt); the RECEIPT goes out when that answer arrives. The native connection
//!   answers in order, so a RECEIPT means everything before it was handled, and for a persistent
//!   SEND that the message is durable.
//! - Any native refusal (Error, SendFailure, an unsolicited Close) and any malformed or unmappable
//!   STOMP frame ends the session with one ERROR frame (STOMP has no other way to report one),
//!   carrying `receipt-id` when the failing frame asked for a receipt.
//! - Auto-acknowledged deliveries are acked natively only after their MESSAGE frames were
//!   written to the socket, so the consumer's prefetch window bounds what waits in this task.
//! - Nothing here blocks the broker: a slow peer stalls only this task (its socket writes), and
//!   the native side keeps its deliveries within the consumers' windows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tandem_protocol::link::LocalLink;
use tandem_protocol::stomp::{
    Command, HeartBeat, HeartBeatIntervals, Item, SUPPORTED_VERSIONS, StompCodec, StompError,
    StompFrame, StompLimits, StompVersion, negotiate_heart_beat, negotiate_version,
};
use tandem_protocol::wire::{self, AckKind, AckMode};
use tandem_protocol::{ErrorCode, Frame, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::codec::Framed;

use super::mapping::{self, Delivery, MapError};
use crate::broker::BrokerInner;
use crate::message::now_ms;

/// The one native session every STOMP subscription and ack lives in.
const SESSION_ID: u64 = 1;
/// The anonymous native producer every SEND goes through.
const PRODUCER_ID: u64 = 1;
/// Prefetch of a subscription that names none.
pub(crate) const DEFAULT_PREFETCH: u32 = 100;
/// Largest prefetch a SUBSCRIBE may ask for (invariant 10: windows are bounded).
pub(crate) const MAX_PREFETCH: u32 = 65_535;
/// Most subscriptions open at once on one STOMP connection.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 1024;
/// How long a closing connection keeps reading (and discarding) so the peer sees our last frame
/// instead of a reset.
const LINGER: Duration = Duration::from_secs(1);
/// The same during broker shutdown, which waits for every connection task.
const LINGER_SHUTDOWN: Duration = Duration::from_millis(100);
/// Native frames handled before the socket is flushed.
const MAX_BATCH: usize = 256;
/// Most transactions open at once on one STOMP connection (invariant 10).
pub(crate) const MAX_TRANSACTIONS: usize = 64;

/// An open STOMP transaction: a native transacted session with its own anonymous producer (both
/// under the same id, above the connection's own session and producer), and the ACKs and NACKs
/// that take effect at COMMIT.
struct StompTx {
    native: u64,
    /// Native acks of deliveries in the connection's session, sent inside the native commit.
    acks: Vec<wire::Ack>,
    /// The deliveries those acks cover: given back (redelivered) on ABORT.
    acked: Vec<u64>,
    /// Deliveries NACKed in the transaction: given back at COMMIT or ABORT.
    nacked: Vec<u64>,
}

type Io = Framed<crate::tls::Transport, StompCodec>;

/// A STOMP-side failure: the ERROR frame that ends the session.
struct Fatal(StompFrame);

impl Fatal {
    fn new(message: impl Into<String>, detail: impl Into<String>) -> Fatal {
        Fatal(StompFrame::error(message, detail))
    }

    /// A refusal of the native broker, with its stable code.
    fn native(code: u32, message: &str, context: Option<&str>) -> Fatal {
        let name = ErrorCode::from_code(code).map_or("unknown", |c| c.name());
        let detail = match context {
            Some(c) => format!("{c}: {message} (code {code}, {name})"),
            None => format!("{message} (code {code}, {name})"),
        };
        let mut f = StompFrame::error(format!("{name}: {}", first_line(message)), detail);
        f.headers.insert(1, ("error-code".into(), code.to_string()));
        f.headers.insert(2, ("error-name".into(), name.into()));
        Fatal(f)
    }

    fn mapping(e: MapError) -> Fatal {
        Fatal::new("invalid frame", e.to_string())
    }

    fn codec(e: &StompError) -> Fatal {
        Fatal(e.to_error_frame())
    }

    fn with_receipt(mut self, receipt: Option<&str>) -> Fatal {
        if let Some(r) = receipt {
            self.0.headers.insert(1, ("receipt-id".into(), r.into()));
        }
        self
    }
}

fn first_line(s: &str) -> &str {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(200) {
        Some((cut, _)) => &line[..cut],
        None => line,
    }
}

fn required<'f>(f: &'f StompFrame, header: &'static str) -> Result<&'f str, Fatal> {
    f.header(header).ok_or_else(|| {
        Fatal::mapping(MapError::MissingHeader {
            command: f.command,
            header,
        })
    })
}

/// How a session continues after an event.
enum Flow {
    Continue,
    /// A clean end (DISCONNECT answered, or the peer or the native side went away).
    End,
}

type Step = Result<Flow, Fatal>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckModeStomp {
    Auto,
    Client,
    ClientIndividual,
}

struct Subscription {
    consumer_id: u64,
    ack: AckModeStomp,
    /// Highest delivery id written to the peer: ConsumerClose's `last_consumed`.
    last_forwarded: u64,
    /// A queue browser (header `browser:true`): nothing to acknowledge; ends with a MESSAGE
    /// carrying `browser:end` (ActiveMQ's convention). Holds its destination header for that frame.
    browser: Option<String>,
}

/// A delivery written to the peer and waiting for its ACK or NACK.
struct Outstanding {
    consumer_id: u64,
    subscription: String,
    message_id: String,
}

struct Session {
    inner: Arc<BrokerInner>,
    io: Io,
    link: LocalLink,
    version: StompVersion,
    connection_id: u64,
    next_request: u64,
    /// Native request id → (what it was for, the STOMP receipt to send on Ok).
    pending: HashMap<u64, (String, Option<String>)>,
    next_sequence: u64,
    /// Native send sequence → STOMP receipt.
    send_receipts: HashMap<u64, String>,
    next_message: u64,
    subs: HashMap<String, Subscription>,
    /// Native consumer id → STOMP subscription id.
    consumers: HashMap<u64, String>,
    next_consumer: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    /// Auto subscriptions: consumer → highest delivery written, acked after the next flush.
    auto_acks: HashMap<u64, u64>,
    /// Set by DISCONNECT: the receipt to send once the native side has closed.
    disconnecting: Option<Option<String>>,
    last_write: Instant,
    last_native_ping: Instant,
    ping_nonce: u64,
    /// Open transactions by their STOMP name.
    txs: HashMap<String, StompTx>,
    /// The last native id given to a transaction's session and producer.
    next_tx_native: u64,
}

/// Serves one accepted STOMP socket until it ends. `permit` is the connection's slot under the
/// broker's connection limit; the native connection inherits it.
pub(crate) async fn serve(
    inner: Arc<BrokerInner>,
    sock: crate::tls::Transport,
    peer: crate::security::Peer,
    permit: OwnedSemaphorePermit,
) {
    let limits = StompLimits {
        max_frame_size: inner.config.max_frame_size,
        ..StompLimits::default()
    };
    let mut io = Framed::new(sock, StompCodec::new(limits));
    match handshake(&inner, &mut io, peer, permit).await {
        Ok(Some(c)) => {
            let now = Instant::now();
            let mut session = Session {
                inner,
                io,
                link: c.link,
                version: c.version,
                connection_id: c.connection_id,
                next_request: 2,
                pending: HashMap::new(),
                next_sequence: 0,
                send_receipts: HashMap::new(),
                next_message: 0,
                subs: HashMap::new(),
                consumers: HashMap::new(),
                next_consumer: 0,
                outstanding: BTreeMap::new(),
                auto_acks: HashMap::new(),
                disconnecting: None,
                last_write: now,
                last_native_ping: now,
                ping_nonce: 0,
                txs: HashMap::new(),
                next_tx_native: SESSION_ID.max(PRODUCER_ID),
            };
            let last = match session.run(c.beats).await {
                Ok(()) => None,
                Err(Fatal(frame)) => Some(frame),
            };
            // End the native connection first: its cleanup gives back every unacknowledged
            // delivery at once instead of after the linger.
            let Session {
                mut io,
                link,
                inner,
                ..
            } = session;
            drop(link);
            finish(&mut io, last, linger(&inner)).await;
        }
        Ok(None) => {}
        Err(Fatal(frame)) => {
            inner.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
            finish(&mut io, Some(frame), linger(&inner)).await;
        }
    }
    tracing::debug!("stomp connection closed");
}

fn linger(inner: &BrokerInner) -> Duration {
    if inner.shutdown.is_cancelled() {
        LINGER_SHUTDOWN
    } else {
        LINGER
    }
}

/// Writes the last frame (if any), closes our side and drains the peer's for up to `linger`.
async fn finish(io: &mut Io, last: Option<StompFrame>, linger: Duration) {
    if let Some(f) = last {
        tracing::debug!(message = ?f.header("message"), "closing with ERROR");
        let _ = tokio::time::timeout(LINGER, io.send(Item::Frame(f))).await;
    }
    let _ = tokio::time::timeout(LINGER, io.get_mut().shutdown()).await;
    let deadline = Instant::now() + linger;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, io.next()).await {}
}

/// What the handshake settled.
struct Connected {
    link: LocalLink,
    version: StompVersion,
    beats: HeartBeatIntervals,
    connection_id: u64,
}

/// Reads CONNECT/STOMP, opens the native connection, session and producer, answers CONNECTED.
/// `Ok(None)`: the peer left before connecting.
async fn handshake(
    inner: &Arc<BrokerInner>,
    io: &mut Io,
    peer: crate::security::Peer,
    permit: OwnedSemaphorePermit,
) -> Result<Option<Connected>, Fatal> {
    let limit = Duration::from_millis(inner.config.handshake_timeout_ms);
    let deadline = Instant::now() + limit;
    let connect = loop {
        let item = tokio::select! {
            _ = inner.shutdown.cancelled() => {
                return Err(Fatal::new("shutting down", "the broker is shutting down"));
            }
            r = tokio::time::timeout_at(deadline, io.next()) => r,
        };
        match item {
            Err(_) => {
                return Err(Fatal::new(
                    "no CONNECT frame",
                    format!("no CONNECT or STOMP frame within {limit:?}"),
                ));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(Fatal::codec(&e)),
            Ok(Some(Ok(Item::HeartBeat))) => continue,
            Ok(Some(Ok(Item::Frame(f)))) => match f.command {
                Command::Connect | Command::Stomp if f.body.is_empty() => break f,
                Command::Connect | Command::Stomp => {
                    return Err(Fatal::new(
                        "invalid frame",
                        format!("{} frames must not have a body", f.command),
                    ));
                }
                other => {
                    return Err(Fatal::new(
                        "not connected",
                        format!("the first frame must be CONNECT or STOMP, not {other}"),
                    ));
                }
            },
        }
    };
    let version = negotiate_version(connect.header("accept-version"), &SUPPORTED_VERSIONS)
        .map_err(|e| Fatal::codec(&e))?;
    io.codec_mut().set_version(version);
    let client_beats =
        HeartBeat::from_header(connect.header("heart-beat")).map_err(|e| Fatal::codec(&e))?;
    let ms = inner.config.heartbeat_ms.min(u64::from(u32::MAX)) as u32;
    let server_beats = HeartBeat {
        send_ms: ms,
        recv_ms: ms,
    };
    let beats = negotiate_heart_beat(client_beats, server_beats);

    // The native connection authenticates the STOMP client as itself (address, TLS, certificate).
    let link = crate::broker::connect_local_as(inner, permit, peer.clone());
    let header = |n: &str| connect.header(n).unwrap_or("").to_string();
    let opening = [
        Frame::Connect(wire::Connect {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            client_id: header("client-id"),
            username: header("login"),
            password: header("passcode"),
            // STOMP heart-beats are handled on the STOMP side; the link itself cannot go quiet.
            heartbeat_ms: 0,
            client_name: format!("stomp {peer}"),
        }),
        Frame::SessionOpen(wire::SessionOpen {
            request_id: 1,
            session_id: SESSION_ID,
            // Every STOMP ack names its kind, so the session's mode only matters for
            // transactions, which STOMP BEGIN requests separately.
            ack_mode: AckMode::Individual as i32,
        }),
        Frame::ProducerOpen(wire::ProducerOpen {
            request_id: 2,
            session_id: SESSION_ID,
            producer_id: PRODUCER_ID,
            producer_name: match peer.addr {
                Some(a) => format!("stomp-{a}-{}", now_ms()),
                None => format!("stomp-local-{}", now_ms()),
            },
            destination: None,
        }),
    ];
    for f in opening {
        if link.tx.send(f).await.is_err() {
            return Err(Fatal::new(
                "internal error",
                "the broker closed the connection",
            ));
        }
    }
    let mut link = link;
    let mut connection_id = 0;
    let mut answered = 0;
    while answered < 3 {
        let f = match tokio::time::timeout_at(deadline + limit, link.rx.recv()).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => {
                return Err(Fatal::new(
                    "internal error",
                    "the broker did not answer CONNECT",
                ));
            }
        };
        match f {
            Frame::Connected(c) => {
                connection_id = c.connection_id;
                answered += 1;
            }
            Frame::Ok(_) => answered += 1,
            Frame::Error(e) => return Err(Fatal::native(e.code, &e.message, Some("CONNECT"))),
            Frame::Close(c) => return Err(Fatal::native(c.code, &c.message, Some("CONNECT"))),
            _ => {}
        }
    }

    let mut connected = StompFrame::new(Command::Connected)
        .with_header("version", version.as_str())
        .with_header("heart-beat", server_beats.to_string())
        .with_header("server", format!("tandem/{}", env!("CARGO_PKG_VERSION")))
        .with_header("session", connection_id.to_string());
    if version == StompVersion::V1_0 {
        // 1.0 has no heart-beating; do not advertise it.
        connected.headers.retain(|(n, _)| n != "heart-beat");
    }
    if io.send(Item::Frame(connected)).await.is_err() {
        return Ok(None);
    }
    let beats = if version == StompVersion::V1_0 {
        HeartBeatIntervals::default()
    } else {
        beats
    };
    tracing::debug!(%version, ?beats, connection_id, "stomp connected");
    Ok(Some(Connected {
        link,
        version,
        beats,
        connection_id,
    }))
}

impl Session {
    async fn run(&mut self, beats: HeartBeatIntervals) -> Result<(), Fatal> {
        // Tolerance for a late client heart-beat: three intervals, as the native protocol allows.
        let silence = beats.client_to_server().map(|d| d * 3);
        let send_every = beats.server_to_client();
        let tick = [send_every.map(|d| d / 2), silence.map(|d| d / 4)]
            .into_iter()
            .flatten()
            .min()
            .map(|d| d.max(Duration::from_millis(10)));
        let mut ticker = tokio::time::interval(tick.unwrap_or(Duration::from_secs(3600)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut last_rx = Instant::now();
        loop {
            let step = tokio::select! {
                f = self.link.rx.recv() => match f {
                    None => Ok(Flow::End),
                    Some(f) => self.on_native_batch(f).await,
                },
                item = self.io.next(), if self.disconnecting.is_none() => match item {
                    None => Ok(Flow::End),
                    Some(Err(e)) => {
                        self.inner.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                        Err(Fatal::codec(&e))
                    }
                    Some(Ok(Item::HeartBeat)) => {
                        last_rx = Instant::now();
                        self.on_heart_beat().await
                    }
                    Some(Ok(Item::Frame(f))) => {
                        last_rx = Instant::now();
                        let receipt = f.header("receipt").map(str::to_string);
                        self.on_stomp(f).await.map_err(|e| e.with_receipt(receipt.as_deref()))
                    }
                },
                _ = ticker.tick(), if tick.is_some() => {
                    // After DISCONNECT the client owes nothing more; the native Close ends it.
                    if let Some(s) = silence
                        && self.disconnecting.is_none()
                        && last_rx.elapsed() > s
                    {
                        Err(Fatal::new(
                            "heart-beat timeout",
                            format!("nothing received for {s:?}"),
                        ))
                    } else {
                        if let Some(every) = send_every
                            && self.last_write.elapsed() >= every / 2
                        {
                            self.write(Item::HeartBeat).await?;
                        }
                        Ok(Flow::Continue)
                    }
                }
            };
            let flow = match step {
                Ok(flow) => flow,
                Err(fatal) => {
                    // Write what is already buffered (earlier RECEIPTs) before the ERROR.
                    let _ = self.flush().await;
                    return Err(fatal);
                }
            };
            self.flush().await?;
            if matches!(flow, Flow::End) {
                return Ok(());
            }
        }
    }

    // ------------------------------------------------------------------ output

    /// Queues an item for the socket; a write error ends the session quietly (the peer is gone).
    async fn write(&mut self, item: Item) -> Result<(), Fatal> {
        self.last_write = Instant::now();
        match self.io.feed(item).await {
            Ok(()) => Ok(()),
            Err(StompError::Unencodable { reason }) => Err(Fatal::new(
                "internal error",
                format!("a frame could not be encoded: {reason}"),
            )),
            Err(_) => Err(Fatal::new("connection error", "write failed")),
        }
    }

    /// Flushes the socket, then acks what auto subscriptions delivered.
    async fn flush(&mut self) -> Result<(), Fatal> {
        if SinkExt::<Item>::flush(&mut self.io).await.is_err() {
            return Err(Fatal::new("connection error", "write failed"));
        }
        let acks: Vec<(u64, u64)> = self.auto_acks.drain().collect();
        for (consumer_id, delivery_id) in acks {
            self.forward(Frame::Ack(wire::Ack {
                session_id: SESSION_ID,
                consumer_id,
                delivery_id,
                kind: AckKind::Cumulative as i32,
                request_id: 0,
            }))
            .await?;
        }
        Ok(())
    }

    async fn receipt(&mut self, receipt_id: String) -> Result<(), Fatal> {
        self.write(Item::Frame(
            StompFrame::new(Command::Receipt).with_header("receipt-id", receipt_id),
        ))
        .await
    }

    async fn forward(&mut self, f: Frame) -> Result<(), Fatal> {
        self.link
            .tx
            .send(f)
            .await
            .map_err(|_| Fatal::new("connection error", "the broker closed the connection"))
    }

    /// A native request id; its Ok sends `receipt` (if any), its Error names `what`.
    fn request(&mut self, what: String, receipt: Option<String>) -> u64 {
        self.next_request += 1;
        self.pending.insert(self.next_request, (what, receipt));
        self.next_request
    }

    /// A request id only when a receipt is wanted (Ack and Nack answer only then).
    fn optional_request(&mut self, what: impl FnOnce() -> String, receipt: Option<String>) -> u64 {
        match receipt {
            Some(r) => self.request(what(), Some(r)),
            None => 0,
        }
    }

    // ------------------------------------------------------------------ native → STOMP

    /// Handles a native frame and whatever else is already waiting, then the caller flushes once.
    async fn on_native_batch(&mut self, first: Frame) -> Step {
        let mut next = Some(first);
        let mut n = 0;
        while let Some(f) = next.take() {
            if let Flow::End = self.on_native(f).await? {
                return Ok(Flow::End);
            }
            n += 1;
            if n < MAX_BATCH {
                next = self.link.rx.try_recv().ok();
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_native(&mut self, f: Frame) -> Step {
        match f {
            Frame::Deliver(d) => self.on_deliver(d).await?,
            Frame::BrowseDone(b) => {
                let Some(sub_id) = self.consumers.get(&b.consumer_id).cloned() else {
                    return Ok(Flow::Continue);
                };
                let dest = self.subs.get(&sub_id).and_then(|s| s.browser.clone());
                let end = StompFrame::new(Command::Message)
                    .with_header("subscription", sub_id)
                    .with_header("message-id", "BrowseEnd")
                    .with_header("destination", dest.unwrap_or_default())
                    .with_header("browser", "end");
                self.write(Item::Frame(end)).await?;
            }
            Frame::Ok(o) => {
                if let Some((_, Some(r))) = self.pending.remove(&o.request_id) {
                    self.receipt(r).await?;
                }
            }
            Frame::Error(e) => {
                let (what, receipt) = self.pending.remove(&e.request_id).unzip();
                return Err(Fatal::native(e.code, &e.message, what.as_deref())
                    .with_receipt(receipt.flatten().as_deref()));
            }
            Frame::SendReceipt(r) => {
                if let Some(receipt) = self.send_receipts.remove(&r.sequence) {
                    self.receipt(receipt).await?;
                }
            }
            Frame::SendFailure(f) => {
                let receipt = self.send_receipts.remove(&f.sequence);
                return Err(Fatal::native(f.code, &f.message, Some("SEND"))
                    .with_receipt(receipt.as_deref()));
            }
            Frame::Ping(p) => {
                self.forward(Frame::Pong(wire::Pong { nonce: p.nonce }))
                    .await?
            }
            Frame::Close(c) => {
                return match self.disconnecting.take() {
                    Some(receipt) => {
                        if let Some(r) = receipt {
                            self.receipt(r).await?;
                        }
                        Ok(Flow::End)
                    }
                    None => Err(Fatal::native(c.code, &c.message, None)),
                };
            }
            other => tracing::debug!(frame = ?other.frame_type(), "native frame ignored"),
        }
        Ok(Flow::Continue)
    }

    async fn on_deliver(&mut self, d: wire::Deliver) -> Result<(), Fatal> {
        let Some(sub_id) = self.consumers.get(&d.consumer_id) else {
            // Unsubscribed: the native side took back every delivery after `last_consumed`.
            return Ok(());
        };
        let msg = wire::Message::decode(d.message.clone()).map_err(|e| {
            Fatal::native(
                ErrorCode::Internal.code(),
                &format!("a delivered message does not decode: {e}"),
                None,
            )
        })?;
        let frame = mapping::message_frame(
            &msg,
            Delivery {
                subscription: sub_id,
                ack: d.delivery_id,
                redelivered: d.redelivered,
                delivery_count: d.delivery_count,
            },
            self.version.escapes_headers(),
        );
        let sub_id = sub_id.clone();
        self.write(Item::Frame(frame)).await?;
        let sub = self
            .subs
            .get_mut(&sub_id)
            .expect("consumers and subs agree");
        sub.last_forwarded = sub.last_forwarded.max(d.delivery_id);
        if sub.browser.is_some() {
            // A browser consumes nothing: keep its window full instead of acknowledging.
            return self
                .forward(Frame::Flow(wire::Flow {
                    consumer_id: d.consumer_id,
                    credit: 1,
                }))
                .await;
        }
        match sub.ack {
            AckModeStomp::Auto => {
                let e = self.auto_acks.entry(d.consumer_id).or_default();
                *e = (*e).max(d.delivery_id);
            }
            AckModeStomp::Client | AckModeStomp::ClientIndividual => {
                self.outstanding.insert(
                    d.delivery_id,
                    Outstanding {
                        consumer_id: d.consumer_id,
                        subscription: sub_id,
                        message_id: msg.message_id,
                    },
                );
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ STOMP → native

    async fn on_heart_beat(&mut self) -> Step {
        // The native connection may enforce an idle timeout; STOMP heart-beats keep it alive.
        if self.inner.config.idle_timeout_ms != 0
            && self.last_native_ping.elapsed() >= Duration::from_secs(1)
        {
            self.last_native_ping = Instant::now();
            self.ping_nonce += 1;
            let nonce = self.ping_nonce;
            self.forward(Frame::Ping(wire::Ping { nonce })).await?;
        }
        Ok(Flow::Continue)
    }

    async fn on_stomp(&mut self, f: StompFrame) -> Step {
        if !f.command.allows_body() && !f.body.is_empty() {
            return Err(Fatal::new(
                "invalid frame",
                format!("{} frames must not have a body", f.command),
            ));
        }
        let receipt = f.header("receipt").map(str::to_string);
        match f.command {
            Command::Send => self.on_send(f, receipt).await?,
            Command::Subscribe => self.on_subscribe(&f, receipt).await?,
            Command::Unsubscribe => self.on_unsubscribe(&f, receipt).await?,
            Command::Ack => self.on_ack(&f, receipt, false).await?,
            Command::Nack => self.on_ack(&f, receipt, true).await?,
            Command::Begin | Command::Commit | Command::Abort => self.on_tx(&f, receipt).await?,
            Command::Disconnect => {
                self.disconnecting = Some(receipt);
                // The native side answers Close after everything sent before it.
                self.forward(Frame::Close(wire::Close {
                    code: 0,
                    message: "DISCONNECT".into(),
                }))
                .await?;
            }
            Command::Connect | Command::Stomp => {
                return Err(Fatal::new(
                    "already connected",
                    format!("{} after the connection was established", f.command),
                ));
            }
            server => {
                return Err(Fatal::new(
                    "invalid frame",
                    format!("{server} is a server frame; a client cannot send it"),
                ));
            }
        }
        Ok(Flow::Continue)
    }

    /// The open transaction a frame's `transaction` header names (`None` without the header).
    fn tx_of(&mut self, f: &StompFrame) -> Result<Option<&mut StompTx>, Fatal> {
        match f.header("transaction") {
            None => Ok(None),
            Some(name) => match self.txs.get_mut(name) {
                Some(tx) => Ok(Some(tx)),
                None => Err(Fatal::new(
                    "invalid frame",
                    format!(
                        "{}: transaction {name:?} is not open (BEGIN it first)",
                        f.command
                    ),
                )),
            },
        }
    }

    async fn on_send(&mut self, f: StompFrame, receipt: Option<String>) -> Result<(), Fatal> {
        let producer_id = self.tx_of(&f)?.map_or(PRODUCER_ID, |tx| tx.native);
        let (conn, next) = (self.connection_id, &mut self.next_message);
        let msg = mapping::message_from_send(&f, now_ms(), || {
            *next += 1;
            format!("ID:stomp-{conn}-{next}")
        })
        .map_err(Fatal::mapping)?;
        self.next_sequence += 1;
        let sequence = self.next_sequence;
        let wants_receipt = receipt.is_some();
        if let Some(r) = receipt {
            self.send_receipts.insert(sequence, r);
        }
        // One sequence across the connection's producers, so a receipt is found by it alone.
        self.forward(Frame::Send(wire::Send {
            producer_id,
            sequence,
            receipt: wants_receipt,
            message: msg.encode(),
        }))
        .await
    }

    async fn on_subscribe(&mut self, f: &StompFrame, receipt: Option<String>) -> Result<(), Fatal> {
        let dest_header = required(f, "destination")?;
        let destination = mapping::parse_destination(dest_header).map_err(Fatal::mapping)?;
        let id = match (f.header("id"), self.version) {
            (Some(id), _) => id.to_string(),
            // STOMP 1.0 makes the id optional; the destination then names the subscription.
            (None, StompVersion::V1_0) => dest_header.to_string(),
            (None, _) => required(f, "id")?.to_string(),
        };
        if self.subs.contains_key(&id) {
            return Err(Fatal::new(
                "invalid frame",
                format!("subscription id {id:?} is already in use on this connection"),
            ));
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(Fatal::new(
                "too many subscriptions",
                format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"),
            ));
        }
        let bad = |header: &str, value: &str, reason: &str| {
            Fatal::mapping(MapError::InvalidHeader {
                header: header.into(),
                value: value.into(),
                reason: reason.into(),
            })
        };
        let ack = match f.header("ack").unwrap_or("auto") {
            "auto" => AckModeStomp::Auto,
            "client" => AckModeStomp::Client,
            "client-individual" => AckModeStomp::ClientIndividual,
            other => {
                return Err(bad(
                    "ack",
                    other,
                    "expected auto, client or client-individual",
                ));
            }
        };
        let mut prefetch = DEFAULT_PREFETCH;
        if let Some((name, value)) = ["activemq.prefetchSize", "prefetch", "prefetch-count"]
            .into_iter()
            .find_map(|n| f.header(n).map(|v| (n, v)))
        {
            prefetch = value
                .parse::<u32>()
                .ok()
                .filter(|p| (1..=MAX_PREFETCH).contains(p))
                .ok_or_else(|| {
                    bad(
                        name,
                        value,
                        &format!("expected 1 to {MAX_PREFETCH} (STOMP cannot pull, so not 0)"),
                    )
                })?;
        }
        let subscription_name = f
            .header("activemq.subscriptionName")
            .or(f.header("durable-subscription-name"))
            .unwrap_or("")
            .to_string();
        let truthy = |n: &str| f.header(n).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let no_local = truthy("activemq.noLocal") || truthy("no-local");
        let browser = truthy("browser");
        self.next_consumer += 1;
        let consumer_id = self.next_consumer;
        let request_id = self.request(format!("SUBSCRIBE id={id}"), receipt);
        self.subs.insert(
            id.clone(),
            Subscription {
                consumer_id,
                ack,
                last_forwarded: 0,
                browser: browser.then(|| dest_header.to_string()),
            },
        );
        self.consumers.insert(consumer_id, id);
        if destination.kind().is_temporary() {
            // STOMP has no create frame: the first SUBSCRIBE creates the temporary destination,
            // owned by this connection (again is a no-op). Sends before it find nothing.
            let request_id = self.request(format!("SUBSCRIBE {dest_header}"), None);
            self.forward(Frame::TempDestinationCreate(wire::TempDestinationCreate {
                request_id,
                destination: Some(destination.to_wire()),
            }))
            .await?;
        }
        self.forward(Frame::ConsumerOpen(wire::ConsumerOpen {
            request_id,
            session_id: SESSION_ID,
            consumer_id,
            destination: Some(destination.to_wire()),
            selector: f.header("selector").unwrap_or("").to_string(),
            prefetch,
            durable: !subscription_name.is_empty(),
            subscription_name,
            shared: false,
            no_local,
            browser,
        }))
        .await
    }

    async fn on_unsubscribe(
        &mut self,
        f: &StompFrame,
        receipt: Option<String>,
    ) -> Result<(), Fatal> {
        let id = match (f.header("id"), self.version) {
            (Some(id), _) => id,
            (None, StompVersion::V1_0) => required(f, "destination")?,
            (None, _) => required(f, "id")?,
        };
        let Some(sub) = self.subs.remove(id) else {
            return Err(Fatal::new(
                "invalid frame",
                format!("UNSUBSCRIBE: no subscription with id {id:?}"),
            ));
        };
        let id = id.to_string();
        // `auto_acks` is empty here: every event ends with a flush that sends them.
        self.consumers.remove(&sub.consumer_id);
        let unacked: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.consumer_id == sub.consumer_id)
            .map(|(d, _)| *d)
            .collect();
        for d in &unacked {
            self.outstanding.remove(d);
        }
        let what = format!("UNSUBSCRIBE id={id}");
        let close_receipt = if unacked.is_empty() {
            receipt.clone()
        } else {
            None
        };
        let request_id = self.request(what.clone(), close_receipt);
        self.forward(Frame::ConsumerClose(wire::ConsumerClose {
            request_id,
            consumer_id: sub.consumer_id,
            last_consumed: sub.last_forwarded,
        }))
        .await?;
        // What the peer was given but never acknowledged goes back, marked redelivered, as
        // when a JMS consumer's session recovers.
        self.nack_all(&unacked, &what, receipt).await
    }

    /// Native Nacks for `deliveries` in order; the last carries the receipt.
    async fn nack_all(
        &mut self,
        deliveries: &[u64],
        what: &str,
        receipt: Option<String>,
    ) -> Result<(), Fatal> {
        for (i, d) in deliveries.iter().enumerate() {
            let request_id = if i + 1 == deliveries.len() {
                self.optional_request(|| what.to_string(), receipt.clone())
            } else {
                0
            };
            self.forward(Frame::Nack(wire::Nack {
                session_id: SESSION_ID,
                request_id,
                consumed: Vec::new(),
                delivery_id: *d,
            }))
            .await?;
        }
        Ok(())
    }

    /// The delivery an ACK or NACK names: `id` (the MESSAGE's `ack` header) in 1.2,
    /// `message-id` (with `subscription` if given) in 1.0 and 1.1.
    fn find_delivery(&self, f: &StompFrame) -> Result<u64, Fatal> {
        let not_waiting = |what: String| {
            Fatal::new(
                "invalid frame",
                format!(
                    "{}: no message {what} is awaiting acknowledgement",
                    f.command
                ),
            )
        };
        if self.version == StompVersion::V1_2 {
            let id = required(f, "id")?;
            return id
                .parse::<u64>()
                .ok()
                .filter(|d| self.outstanding.contains_key(d))
                .ok_or_else(|| not_waiting(format!("with ack id {id:?}")));
        }
        let message_id = required(f, "message-id")?;
        let subscription = f.header("subscription");
        self.outstanding
            .iter()
            .find(|(_, o)| {
                o.message_id == message_id && subscription.is_none_or(|s| s == o.subscription)
            })
            .map(|(d, _)| *d)
            .ok_or_else(|| not_waiting(format!("with message-id {message_id:?}")))
    }

    async fn on_ack(
        &mut self,
        f: &StompFrame,
        receipt: Option<String>,
        nack: bool,
    ) -> Result<(), Fatal> {
        self.tx_of(f)?;
        let delivery_id = self.find_delivery(f)?;
        let consumer_id = self.outstanding[&delivery_id].consumer_id;
        let sub_id = self.outstanding[&delivery_id].subscription.clone();
        let mode = self
            .subs
            .get(&sub_id)
            .map_or(AckModeStomp::ClientIndividual, |s| s.ack);
        // `client` acknowledges cumulatively (this message and every earlier one of the
        // subscription); `client-individual` just this one. NACK follows the same rule.
        let ids: Vec<u64> = if mode == AckModeStomp::Client {
            self.outstanding
                .range(..=delivery_id)
                .filter(|(_, o)| o.consumer_id == consumer_id)
                .map(|(d, _)| *d)
                .collect()
        } else {
            vec![delivery_id]
        };
        for d in &ids {
            self.outstanding.remove(d);
        }
        let what = format!("{} {delivery_id}", f.command);
        let kind = if mode == AckModeStomp::Client {
            AckKind::Cumulative
        } else {
            AckKind::Individual
        } as i32;
        if let Some(tx) = self.tx_of(f)? {
            // Takes effect at COMMIT; the receipt only says the frame was taken in order.
            if nack {
                tx.nacked.extend(&ids);
            } else {
                tx.acks.push(wire::Ack {
                    session_id: SESSION_ID,
                    consumer_id,
                    delivery_id,
                    kind,
                    request_id: 0,
                });
                tx.acked.extend(&ids);
            }
            let native = tx.native;
            if receipt.is_some() {
                let request_id = self.request(what, receipt);
                self.forward(Frame::TxBegin(wire::TxBegin {
                    request_id,
                    session_id: native,
                }))
                .await?;
            }
            return Ok(());
        }
        if nack {
            return self.nack_all(&ids, &what, receipt).await;
        }
        let request_id = self.optional_request(|| what, receipt);
        self.forward(Frame::Ack(wire::Ack {
            session_id: SESSION_ID,
            consumer_id,
            delivery_id,
            kind,
            request_id,
        }))
        .await
    }

    /// BEGIN opens a native transacted session (and its producer) for the transaction; COMMIT
    /// commits it natively with the transaction's ACKs inside the same atomic commit, then gives
    /// back what was NACKed; ABORT rolls it back and gives back what was ACKed or NACKed in it.
    /// Either ends with the native session closed. A transaction left open when the connection
    /// ends is rolled back with it.
    async fn on_tx(&mut self, f: &StompFrame, receipt: Option<String>) -> Result<(), Fatal> {
        let name = required(f, "transaction")?.to_string();
        let what = format!("{} transaction={name}", f.command);
        match f.command {
            Command::Begin => {
                if self.txs.contains_key(&name) {
                    return Err(Fatal::new(
                        "invalid frame",
                        format!("transaction {name:?} is already open"),
                    ));
                }
                if self.txs.len() >= MAX_TRANSACTIONS {
                    return Err(Fatal::new(
                        "too many transactions",
                        format!("at most {MAX_TRANSACTIONS} transactions may be open at once"),
                    ));
                }
                self.next_tx_native += 1;
                let native = self.next_tx_native;
                self.txs.insert(
                    name.clone(),
                    StompTx {
                        native,
                        acks: Vec::new(),
                        acked: Vec::new(),
                        nacked: Vec::new(),
                    },
                );
                let open = self.request(what.clone(), None);
                self.forward(Frame::SessionOpen(wire::SessionOpen {
                    request_id: open,
                    session_id: native,
                    ack_mode: AckMode::Transacted as i32,
                }))
                .await?;
                let request_id = self.request(what, receipt);
                self.forward(Frame::ProducerOpen(wire::ProducerOpen {
                    request_id,
                    session_id: native,
                    producer_id: native,
                    producer_name: String::new(),
                    destination: None,
                }))
                .await
            }
            Command::Commit | Command::Abort => {
                let Some(tx) = self.txs.remove(&name) else {
                    return Err(Fatal::new(
                        "invalid frame",
                        format!("{}: transaction {name:?} is not open", f.command),
                    ));
                };
                let (decide, give_back) = if f.command == Command::Commit {
                    let request_id = self.request(what.clone(), None);
                    let commit = Frame::TxCommit(wire::TxCommit {
                        request_id,
                        session_id: tx.native,
                        acks: tx.acks,
                        ..Default::default()
                    });
                    (commit, tx.nacked)
                } else {
                    let request_id = self.request(what.clone(), None);
                    let rollback = Frame::TxRollback(wire::TxRollback {
                        request_id,
                        session_id: tx.native,
                        ..Default::default()
                    });
                    let mut back = tx.acked;
                    back.extend(tx.nacked);
                    (rollback, back)
                };
                self.forward(decide).await?;
                self.nack_all(&give_back, &what, None).await?;
                let request_id = self.request(what, receipt);
                self.forward(Frame::SessionClose(wire::SessionClose {
                    request_id,
                    session_id: tx.native,
                }))
                .await
            }
            _ => unreachable!("on_tx handles BEGIN, COMMIT and ABORT"),
        }
    }
}
