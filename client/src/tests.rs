//! The client against scripted fake servers: a `LocalLink` pair (frames, no encoding), a duplex
//! byte stream with a gated, counting writer (coalescing), and a real loopback TCP socket.
//!
//! No test sleeps: time-dependent behaviour (heartbeats, pull timeouts, a stopped connection) runs
//! under `tokio::time::pause`, and every wait on the server side is bounded by a guard timeout that
//! only fires when the client misbehaves.

use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tandem_protocol::link::{LocalLink, local_link_pair};
use tandem_protocol::model::{DeliveryMode, Destination, Message};
use tandem_protocol::{ErrorCode, Frame, FrameCodec, wire};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use crate::{
    AckMode, Connection, ConnectionEvent, ConnectionFactory, Consumer, Error, Producer, Session,
};

const GUARD: Duration = Duration::from_secs(5);

/// Receives the next frame of the given variant or panics with what came instead.
macro_rules! expect {
    ($srv:expr, $variant:ident) => {
        match $srv.recv().await {
            Frame::$variant(x) => x,
            other => panic!("expected {}, got {:?}", stringify!($variant), other),
        }
    };
}

struct FakeServer {
    link: LocalLink,
}

impl FakeServer {
    async fn recv(&mut self) -> Frame {
        tokio::time::timeout(GUARD, self.link.rx.recv())
            .await
            .expect("the client sent nothing within the guard timeout")
            .expect("the client closed the link")
    }

    /// Nothing queued right now (the client has had every chance to run: callers yield first).
    fn nothing_pending(&mut self) -> Option<Frame> {
        self.link.rx.try_recv().ok()
    }

    async fn send(&self, f: impl Into<Frame>) {
        self.link.tx.send(f.into()).await.expect("client link gone");
    }

    async fn ok(&self, request_id: u64) {
        self.send(wire::Ok {
            request_id,
            last_delivery_id: 0,
        })
        .await;
    }

    async fn deliver(&self, consumer_id: u64, delivery_id: u64, text: &str) {
        self.send(deliver(consumer_id, delivery_id, text, false, 1))
            .await;
    }
}

fn deliver(
    consumer_id: u64,
    delivery_id: u64,
    text: &str,
    redelivered: bool,
    count: u32,
) -> wire::Deliver {
    let mut m = Message::text(text);
    m.destination = Some(Destination::queue("q").unwrap());
    wire::Deliver {
        consumer_id,
        delivery_id,
        redelivered,
        delivery_count: count,
        message: m.encode(),
    }
}

fn connected(heartbeat_ms: u32) -> wire::Connected {
    wire::Connected {
        version: 1,
        server: "fake/0".into(),
        connection_id: 7,
        heartbeat_ms,
        max_frame_size: 0,
    }
}

fn factory_for(link: LocalLink) -> ConnectionFactory {
    let slot = Arc::new(Mutex::new(Some(link)));
    ConnectionFactory::in_process(Arc::new(move || {
        slot.lock()
            .unwrap()
            .take()
            .ok_or_else(|| "used".to_string())
    }))
}

/// A connection over a local link, handshake done; heartbeats off unless `heartbeat_ms`.
async fn connect(
    configure: impl FnOnce(ConnectionFactory) -> ConnectionFactory,
    heartbeat_ms: u32,
) -> (Connection, FakeServer, wire::Connect) {
    let (client, server) = local_link_pair(256);
    let factory = configure(factory_for(client).with_heartbeat(Duration::ZERO));
    let mut srv = FakeServer { link: server };
    let script = async {
        let c = expect!(srv, Connect);
        srv.send(connected(heartbeat_ms)).await;
        c
    };
    let (conn, c) = tokio::join!(factory.connect(), script);
    (conn.expect("connect"), srv, c)
}

async fn session(conn: &Connection, srv: &mut FakeServer, mode: AckMode) -> Session {
    let script = async {
        let o = expect!(srv, SessionOpen);
        srv.ok(o.request_id).await;
        o
    };
    let (s, o) = tokio::join!(conn.create_session(mode), script);
    let s = s.expect("session");
    assert_eq!(o.session_id, s.id());
    assert_eq!(o.ack_mode, mode_wire(mode) as i32);
    s
}

fn mode_wire(m: AckMode) -> wire::AckMode {
    match m {
        AckMode::Auto => wire::AckMode::Auto,
        AckMode::Client => wire::AckMode::Client,
        AckMode::DupsOk => wire::AckMode::DupsOk,
        AckMode::Individual => wire::AckMode::Individual,
        AckMode::Transacted => wire::AckMode::Transacted,
    }
}

async fn producer(
    s: &Session,
    srv: &mut FakeServer,
    dest: Option<&Destination>,
) -> (Producer, wire::ProducerOpen) {
    let script = async {
        let o = expect!(srv, ProducerOpen);
        srv.ok(o.request_id).await;
        o
    };
    let (p, o) = tokio::join!(s.create_producer(dest), script);
    (p.expect("producer"), o)
}

async fn consumer(s: &Session, srv: &mut FakeServer, queue: &str, prefetch: u32) -> Consumer {
    let dest = Destination::queue(queue).unwrap();
    let script = async {
        let o = expect!(srv, ConsumerOpen);
        srv.ok(o.request_id).await;
        o
    };
    let (c, o) = tokio::join!(s.consumer(&dest).prefetch(prefetch).build(), script);
    let c = c.expect("consumer");
    assert_eq!(
        (o.consumer_id, o.prefetch, o.session_id),
        (c.id(), prefetch, s.id())
    );
    assert_eq!(o.destination, Some(dest.to_wire()));
    c
}

async fn recv_text(c: &mut Consumer) -> crate::Received {
    c.receive(GUARD)
        .await
        .expect("receive")
        .expect("a message within the guard timeout")
}

fn text(r: &crate::Received) -> &str {
    r.text_body().unwrap()
}

// ------------------------------------------------------------------ connection

#[tokio::test]
async fn handshake_sends_options_and_reads_connected() {
    let (conn, _srv, c) = connect(
        |f| f.with_client_id("billing").with_credentials("u", "p"),
        0,
    )
    .await;
    assert_eq!((c.min_version, c.max_version), (1, 1));
    assert_eq!(
        (
            c.client_id.as_str(),
            c.username.as_str(),
            c.password.as_str()
        ),
        ("billing", "u", "p")
    );
    assert_eq!(c.heartbeat_ms, 0);
    assert!(c.client_name.starts_with("tandem-client/"));
    assert_eq!(conn.client_id(), Some("billing"));
    assert_eq!(conn.connection_id(), 7);
    assert_eq!(conn.server(), "fake/0");
    assert_eq!(conn.heartbeat(), None);
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn handshake_error_is_typed() {
    let (client, server) = local_link_pair(8);
    let mut srv = FakeServer { link: server };
    let script = async {
        expect!(srv, Connect);
        srv.send(Frame::error(0, ErrorCode::ClientIdInUse, "taken"))
            .await;
        srv.send(wire::Close {
            code: ErrorCode::ClientIdInUse.code(),
            message: String::new(),
        })
        .await;
    };
    let f = factory_for(client).with_client_id("x");
    let (r, ()) = tokio::join!(f.connect(), script);
    match r {
        Err(Error::Broker {
            code: ErrorCode::ClientIdInUse,
            message,
        }) => assert_eq!(message, "taken"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn handshake_without_answer_times_out() {
    let (client, mut server) = local_link_pair(8);
    let f = factory_for(client).with_connect_timeout(Duration::from_secs(2));
    let r = f.connect().await;
    assert!(matches!(r, Err(Error::Timeout("connect"))), "{r:?}");
    assert!(matches!(server.rx.try_recv(), Ok(Frame::Connect(_))));
}

#[tokio::test]
async fn urls_failover_and_refused_links() {
    assert!(matches!(
        ConnectionFactory::new("tcp//x"),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        ConnectionFactory::new("failover:(tcp://a:1)?maxReconnectAttempts=x"),
        Err(Error::InvalidUrl { .. })
    ));
    // Two ports nobody listens on: the initial connect tries both, then gives up, typed.
    let closed = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!(
        "failover:(tcp://127.0.0.1:{},tcp://127.0.0.1:{})?maxReconnectAttempts=3&initialReconnectDelay=1&randomize=false",
        closed(),
        closed()
    );
    match ConnectionFactory::new(&url).unwrap().connect().await {
        Err(Error::ReconnectFailed { attempts, last, .. }) => {
            assert_eq!(attempts, 3);
            assert!(matches!(*last, Error::Io(_)), "{last:?}");
        }
        other => panic!("{other:?}"),
    }
    let f = ConnectionFactory::in_process(Arc::new(|| Err("broker stopped".to_string())));
    match f.connect().await {
        Err(Error::ConnectionLost { reason, .. }) => assert!(reason.contains("broker stopped")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_are_matched_by_request_id() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let script = async {
        let a = expect!(srv, SessionOpen);
        let b = expect!(srv, SessionOpen);
        assert_ne!(a.request_id, b.request_id);
        // Answer out of order: the second first, the first with an error.
        srv.ok(b.request_id).await;
        srv.send(Frame::error(a.request_id, ErrorCode::NotAuthorized, "no"))
            .await;
        b.session_id
    };
    let (a, b, b_id) = tokio::join!(
        conn.create_session(AckMode::Auto),
        conn.create_session(AckMode::Client),
        script
    );
    assert!(
        matches!(
            a,
            Err(Error::Broker {
                code: ErrorCode::NotAuthorized,
                ..
            })
        ),
        "{a:?}"
    );
    let b = b.unwrap();
    assert_eq!(b.id(), b_id);
    assert_eq!(b.ack_mode(), AckMode::Client);
}

#[tokio::test]
async fn transacted_commit_names_what_was_received_and_rollback_takes_back() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Transacted).await;
    let mut a = consumer(&s, &mut srv, "a", 10).await;
    conn.start();
    srv.deliver(a.id(), 1, "a1").await;
    srv.deliver(a.id(), 2, "a2").await;
    srv.deliver(a.id(), 3, "a3").await; // prefetched, never received: stays for the next tx
    let m1 = recv_text(&mut a).await;
    let _m2 = recv_text(&mut a).await;
    // acknowledge() in a transacted session is ignored (JMS): nothing goes out.
    m1.ack().await.unwrap();
    tokio::task::yield_now().await;
    assert!(
        srv.nothing_pending().is_none(),
        "no ack in a transacted session"
    );
    let script = async {
        let c = expect!(srv, TxCommit);
        srv.ok(c.request_id).await;
        c
    };
    let (r, c1) = tokio::join!(s.commit(), script);
    r.unwrap();
    assert_eq!(c1.session_id, s.id());
    assert!(!c1.resolve);
    assert!(!c1.tx_name.is_empty());
    assert_eq!(c1.tx_seq, 1);
    assert_eq!(
        c1.consumed,
        vec![wire::ConsumerPosition {
            consumer_id: a.id(),
            delivery_id: 2
        }]
    );
    // Nothing received since: the next commit acknowledges nothing, under the next number.
    let script = async {
        let c = expect!(srv, TxCommit);
        srv.ok(c.request_id).await;
        c
    };
    let (r, c2) = tokio::join!(s.commit(), script);
    r.unwrap();
    assert!(c2.consumed.is_empty(), "{c2:?}");
    assert_eq!((c2.tx_name.as_str(), c2.tx_seq), (c1.tx_name.as_str(), 2));
    // Rollback names how far the application got and drops the local buffer.
    let _m3 = recv_text(&mut a).await;
    let script = async {
        let r = expect!(srv, TxRollback);
        srv.send(wire::Ok {
            request_id: r.request_id,
            last_delivery_id: 3,
        })
        .await;
        r
    };
    let (r, rb) = tokio::join!(s.rollback(), script);
    r.unwrap();
    assert_eq!(
        rb.consumed,
        vec![wire::ConsumerPosition {
            consumer_id: a.id(),
            delivery_id: 3
        }]
    );
    // A refused commit is a rolled-back transaction, typed.
    let script = async {
        let c = expect!(srv, TxCommit);
        srv.send(wire::Error {
            request_id: c.request_id,
            code: ErrorCode::TransactionRolledBack.code(),
            message: "a send in it was refused".into(),
        })
        .await;
    };
    let (r, ()) = tokio::join!(s.commit(), script);
    assert!(
        matches!(&r, Err(Error::TransactionRolledBack(m)) if m.contains("refused")),
        "{r:?}"
    );
    // recover() belongs to non-transacted sessions; commit() to transacted ones.
    assert!(matches!(s.recover().await, Err(Error::InvalidArgument(_))));
    let plain = session(&conn, &mut srv, AckMode::Auto).await;
    assert!(matches!(
        plain.commit().await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        plain.rollback().await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn close_closes_sessions_then_sends_close() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let mut events = conn.events();
    let script = async {
        let sc = expect!(srv, SessionClose);
        assert_eq!(sc.session_id, s.id());
        srv.ok(sc.request_id).await;
        let c = expect!(srv, Close);
        assert_eq!(c.code, 0);
    };
    let (r, ()) = tokio::join!(conn.close(), script);
    r.unwrap();
    assert!(conn.is_closed());
    assert!(matches!(
        conn.create_session(AckMode::Auto).await,
        Err(Error::ConnectionClosed)
    ));
    assert!(matches!(
        events.recv().await,
        Some(ConnectionEvent::Closed(Error::ConnectionClosed))
    ));
    assert!(events.recv().await.is_none());
    // Closing twice is fine.
    conn.close().await.unwrap();
}

#[tokio::test]
async fn broker_close_ends_the_connection_with_its_code() {
    let (conn, srv, _) = connect(|f| f, 0).await;
    let mut events = conn.events();
    srv.send(wire::Close {
        code: ErrorCode::Fenced.code(),
        message: "lost the lease".into(),
    })
    .await;
    match events.recv().await {
        Some(ConnectionEvent::Closed(Error::ConnectionLost {
            code: Some(ErrorCode::Fenced),
            reason,
        })) => {
            assert_eq!(reason, "lost the lease")
        }
        other => panic!("{other:?}"),
    }
    let r = conn.create_session(AckMode::Auto).await;
    assert!(
        matches!(
            r,
            Err(Error::ConnectionLost {
                code: Some(ErrorCode::Fenced),
                ..
            })
        ),
        "{r:?}"
    );
    // A listener subscribing after the end still hears it.
    assert!(matches!(
        conn.events().recv().await,
        Some(ConnectionEvent::Closed(_))
    ));
}

#[tokio::test]
async fn connection_loss_fails_pending_sends_and_requests() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let q = Destination::queue("q").unwrap();
    let (mut p, _) = producer(&s, &mut srv, Some(&q)).await;
    let r1 = p.send_async(Message::text("1")).await.unwrap();
    let r2 = p.send_async(Message::text("2")).await.unwrap();
    let mut events = conn.events();
    let pending_open = conn.create_session(AckMode::Auto);
    let script = async {
        expect!(srv, Send);
        expect!(srv, Send);
        expect!(srv, SessionOpen);
        drop(srv);
    };
    let (open, ()) = tokio::join!(pending_open, script);
    for r in [open.map(|_| ()), r1.await, r2.await] {
        assert!(
            matches!(r, Err(Error::ConnectionLost { code: None, .. })),
            "{r:?}"
        );
    }
    assert!(matches!(
        events.recv().await,
        Some(ConnectionEvent::Closed(Error::ConnectionLost { .. }))
    ));
    let r = p.send(Message::text("3")).await;
    assert!(r.as_ref().is_err_and(Error::is_connection_error), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn heartbeat_pings_when_idle_answers_pings_and_times_out() {
    let (conn, mut srv, c) = connect(|f| f.with_heartbeat(Duration::from_secs(1)), 1000).await;
    assert_eq!(c.heartbeat_ms, 1000);
    assert_eq!(conn.heartbeat(), Some(Duration::from_secs(1)));
    let mut events = conn.events();
    let t0 = Instant::now();
    let ping = expect!(srv, Ping);
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "pinged after {:?}",
        t0.elapsed()
    );
    srv.send(wire::Pong { nonce: ping.nonce }).await;
    srv.send(wire::Ping { nonce: 42 }).await;
    assert_eq!(expect!(srv, Pong).nonce, 42);
    // Now the server goes silent: the client keeps pinging, then gives up after 3 intervals.
    let silent_since = Instant::now();
    let close = loop {
        match srv.recv().await {
            Frame::Ping(_) => continue,
            Frame::Close(c) => break c,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(close.code, ErrorCode::IdleTimeout.code());
    let silent = silent_since.elapsed();
    assert!(
        silent >= Duration::from_secs(3) && silent < Duration::from_secs(4),
        "{silent:?}"
    );
    match events.recv().await {
        Some(ConnectionEvent::Closed(Error::ConnectionLost {
            code: Some(ErrorCode::IdleTimeout),
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------ producing

#[tokio::test]
async fn persistent_send_waits_for_receipt_and_failure_is_typed() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let q = Destination::queue("orders").unwrap();
    let (mut p, open) = producer(&s, &mut srv, Some(&q)).await;
    assert_eq!(open.producer_name, p.name());
    assert_eq!(open.producer_name.len(), 32);
    assert_eq!(open.destination, Some(q.to_wire()));
    p.set_priority(7).unwrap();
    p.set_time_to_live(Duration::from_secs(60));
    p.set_delivery_delay(Duration::from_secs(5));

    {
        let mut send = pin!(p.send(Message::text("one")));
        let frame = tokio::select! {
            r = &mut send => panic!("send finished before its receipt: {r:?}"),
            f = srv.recv() => f,
        };
        let Frame::Send(sent) = frame else {
            panic!("{frame:?}")
        };
        assert!(sent.receipt);
        assert_eq!((sent.producer_id, sent.sequence), (open.producer_id, 1));
        let m = Message::decode(sent.message.clone()).unwrap();
        assert_eq!(
            m.message_id.as_deref(),
            Some(format!("ID:{}:1", p_name(&open)).as_str())
        );
        assert_eq!(m.destination.as_ref(), Some(&q));
        assert_eq!(m.delivery_mode, DeliveryMode::Persistent);
        assert_eq!(m.priority(), 7);
        assert!(m.timestamp > 1_600_000_000_000);
        assert_eq!(m.expiration, m.timestamp + 60_000);
        assert_eq!(m.delivery_time, m.timestamp + 5_000);
        srv.send(wire::SendReceipt {
            producer_id: sent.producer_id,
            sequence: 1,
        })
        .await;
        let id = send.await.unwrap();
        assert_eq!(Some(id), m.message_id);
    }

    let script = async {
        let sent = expect!(srv, Send);
        assert_eq!(sent.sequence, 2);
        srv.send(wire::SendFailure {
            producer_id: sent.producer_id,
            sequence: 2,
            code: ErrorCode::DestinationFull.code(),
            message: "full".into(),
        })
        .await;
    };
    let (r, ()) = tokio::join!(p.send(Message::text("two")), script);
    match r {
        Err(
            e @ Error::Broker {
                code: ErrorCode::DestinationFull,
                ..
            },
        ) => {
            assert_eq!(e.code(), Some(ErrorCode::DestinationFull))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.last_sequence(), 2);
}

fn p_name(open: &wire::ProducerOpen) -> &str {
    &open.producer_name
}

#[tokio::test]
async fn non_persistent_sends_are_pipelined_and_failures_become_events() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let (mut p, open) = producer(&s, &mut srv, None).await;
    assert_eq!(open.destination, None);
    p.set_delivery_mode(DeliveryMode::NonPersistent);
    // An anonymous producer needs the message's destination.
    let r = p.send(Message::text("x")).await;
    assert!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    let mut events = conn.events();
    let t = Destination::topic("prices").unwrap();
    for i in 0..3 {
        let mut m = Message::text(format!("tick {i}"));
        m.destination = Some(t.clone());
        // Returns without the server doing anything.
        p.send(m).await.unwrap();
    }
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let sent = expect!(srv, Send);
        assert!(!sent.receipt);
        let m = Message::decode(sent.message).unwrap();
        assert_eq!(m.destination.as_ref(), Some(&t));
        assert_eq!(m.delivery_mode, DeliveryMode::NonPersistent);
        seqs.push(sent.sequence);
    }
    // The failed sequence 1 was 2nd in the script: the first attempt (no destination) used no frame
    // but did take a sequence number, so sequences stay strictly increasing.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    srv.send(wire::SendFailure {
        producer_id: p.id(),
        sequence: seqs[1],
        code: ErrorCode::InvalidDestination.code(),
        message: "bad".into(),
    })
    .await;
    match events.recv().await {
        Some(ConnectionEvent::SendFailed {
            producer_id,
            sequence,
            error,
        }) => {
            assert_eq!((producer_id, sequence), (p.id(), seqs[1]));
            assert_eq!(error.code(), Some(ErrorCode::InvalidDestination));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn oversized_messages_are_refused_before_sending() {
    let (conn, mut srv, _) = connect(|f| f.with_max_frame_size(1024), 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let q = Destination::queue("q").unwrap();
    let (mut p, _) = producer(&s, &mut srv, Some(&q)).await;
    let r = p.send(Message::bytes(vec![0u8; 2000])).await;
    assert!(
        matches!(r, Err(Error::MessageTooLarge { max: 1024, .. })),
        "{r:?}"
    );
}

/// An `AsyncWrite` that counts the writes that move bytes and can be held shut.
struct GatedWriter<W> {
    inner: W,
    writes: Arc<AtomicUsize>,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for GatedWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.gate.closed.load(Ordering::SeqCst) {
            *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.gate.closed.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn the_writer_coalesces_ready_frames_into_one_write() {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let (cr, cw) = tokio::io::split(client_io);
    let writes = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::default());
    let w = GatedWriter {
        inner: cw,
        writes: writes.clone(),
        gate: gate.clone(),
    };
    let (rx, tx) = crate::transport::stream(Box::new(cr), Box::new(w), 1 << 20);
    let mut server = tokio_util::codec::Framed::new(server_io, FrameCodec::default());
    let opts = crate::ConnectionOptions {
        heartbeat: Duration::ZERO,
        ..Default::default()
    };
    let script = async {
        let f = server.next().await.unwrap().unwrap();
        assert!(matches!(f, Frame::Connect(_)), "{f:?}");
        server.send(Frame::Connected(connected(0))).await.unwrap();
    };
    let (conn, ()) = tokio::join!(crate::connection::handshake(rx, tx, &opts), script);
    let conn = conn.unwrap();
    let script = async {
        let Some(Ok(Frame::SessionOpen(o))) = server.next().await else {
            panic!()
        };
        server
            .send(Frame::Ok(wire::Ok {
                request_id: o.request_id,
                last_delivery_id: 0,
            }))
            .await
            .unwrap();
        let Some(Ok(Frame::ProducerOpen(o))) = server.next().await else {
            panic!()
        };
        server
            .send(Frame::Ok(wire::Ok {
                request_id: o.request_id,
                last_delivery_id: 0,
            }))
            .await
            .unwrap();
    };
    let q = Destination::queue("q").unwrap();
    let open = async {
        let s = conn.create_session(AckMode::Auto).await.unwrap();
        let p = s.create_producer(Some(&q)).await.unwrap();
        (s, p)
    };
    let ((_s, mut p), ()) = tokio::join!(open, script);
    p.set_delivery_mode(DeliveryMode::NonPersistent);
    let before = writes.load(Ordering::SeqCst);
    assert_eq!(
        before, 3,
        "Connect, SessionOpen, ProducerOpen: one write each"
    );

    // Hold the writer at its next write: whatever it has taken by then is one write, everything
    // queued meanwhile must go out as one more.
    gate.closed.store(true, Ordering::SeqCst);
    const N: u64 = 20;
    for i in 0..N {
        p.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    gate.open();
    for i in 1..=N {
        let Some(Ok(Frame::Send(s))) = tokio::time::timeout(GUARD, server.next()).await.unwrap()
        else {
            panic!("expected a Send")
        };
        assert_eq!(s.sequence, i);
    }
    let used = writes.load(Ordering::SeqCst) - before;
    assert!((1..=2).contains(&used), "{N} frames took {used} writes");
}

#[tokio::test]
async fn works_over_a_real_tcp_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = async {
        let (sock, _) = listener.accept().await.unwrap();
        let mut f = tokio_util::codec::Framed::new(sock, FrameCodec::default());
        let Some(Ok(Frame::Connect(c))) = f.next().await else {
            panic!()
        };
        assert_eq!(c.client_id, "tcp-client");
        f.send(Frame::Connected(connected(0))).await.unwrap();
        let Some(Ok(Frame::SessionOpen(o))) = f.next().await else {
            panic!()
        };
        f.send(Frame::Ok(wire::Ok {
            request_id: o.request_id,
            last_delivery_id: 0,
        }))
        .await
        .unwrap();
        let Some(Ok(Frame::ProducerOpen(o))) = f.next().await else {
            panic!()
        };
        f.send(Frame::Ok(wire::Ok {
            request_id: o.request_id,
            last_delivery_id: 0,
        }))
        .await
        .unwrap();
        let Some(Ok(Frame::Send(s))) = f.next().await else {
            panic!()
        };
        assert_eq!(
            Message::decode(s.message).unwrap().text_body(),
            Some("over tcp")
        );
        f.send(Frame::SendReceipt(wire::SendReceipt {
            producer_id: s.producer_id,
            sequence: s.sequence,
        }))
        .await
        .unwrap();
        let Some(Ok(Frame::SessionClose(c))) = f.next().await else {
            panic!()
        };
        f.send(Frame::Ok(wire::Ok {
            request_id: c.request_id,
            last_delivery_id: 0,
        }))
        .await
        .unwrap();
        let Some(Ok(Frame::Close(c))) = f.next().await else {
            panic!()
        };
        assert_eq!(c.code, 0);
        assert!(
            f.next().await.is_none(),
            "the client shuts its side after Close"
        );
    };
    let client = async {
        let conn = ConnectionFactory::new(&format!("tcp://{addr}"))
            .unwrap()
            .with_client_id("tcp-client")
            .connect()
            .await
            .unwrap();
        let s = conn.create_session(AckMode::Auto).await.unwrap();
        let q = Destination::queue("q").unwrap();
        let mut p = s.create_producer(Some(&q)).await.unwrap();
        p.send(Message::text("over tcp")).await.unwrap();
        conn.close().await.unwrap();
    };
    tokio::time::timeout(GUARD, async { tokio::join!(server, client) })
        .await
        .unwrap();
}

// ------------------------------------------------------------------ consuming

#[tokio::test]
async fn deliveries_are_routed_by_consumer_and_auto_acked() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let mut a = consumer(&s, &mut srv, "a", 10).await;
    let mut b = consumer(&s, &mut srv, "b", 10).await;
    conn.start();
    srv.deliver(b.id(), 1, "b1").await;
    srv.deliver(a.id(), 2, "a1").await;
    srv.send(deliver(b.id(), 3, "b2", true, 3)).await;
    let m = recv_text(&mut a).await;
    assert_eq!(
        (text(&m), m.redelivered, m.delivery_count),
        ("a1", false, 1)
    );
    let ack = expect!(srv, Ack);
    assert_eq!(
        (ack.session_id, ack.consumer_id, ack.delivery_id),
        (s.id(), a.id(), 2)
    );
    assert_eq!(
        (ack.kind, ack.request_id),
        (wire::AckKind::Individual as i32, 0)
    );
    let m = recv_text(&mut b).await;
    assert_eq!(text(&m), "b1");
    let m = b.next().await.unwrap().unwrap();
    assert_eq!((text(&m), m.redelivered, m.delivery_count), ("b2", true, 3));
    assert_eq!(
        m.property("JMSXDeliveryCount"),
        Some(crate::PropertyValue::Int(3))
    );
    let acks: Vec<u64> = [expect!(srv, Ack), expect!(srv, Ack)]
        .iter()
        .map(|a| a.delivery_id)
        .collect();
    assert_eq!(acks, [1, 3]);
    // In auto mode ack() is a no-op.
    m.ack().await.unwrap();
    assert!(a.receive_no_wait().unwrap().is_none());
    tokio::task::yield_now().await;
    assert!(srv.nothing_pending().is_none());
}

#[tokio::test]
async fn client_ack_is_cumulative_per_consumer_of_the_session() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Client).await;
    let mut a = consumer(&s, &mut srv, "a", 10).await;
    let mut b = consumer(&s, &mut srv, "b", 10).await;
    conn.start();
    srv.deliver(a.id(), 1, "a1").await;
    srv.deliver(a.id(), 2, "a2").await;
    srv.deliver(b.id(), 3, "b1").await;
    srv.deliver(a.id(), 4, "a3").await; // buffered, not handed out: not acknowledged
    let m1 = recv_text(&mut a).await;
    let _m2 = recv_text(&mut a).await;
    let _m3 = recv_text(&mut b).await;
    tokio::task::yield_now().await;
    assert!(
        srv.nothing_pending().is_none(),
        "client mode sends no ack by itself"
    );
    let script = async {
        let x = expect!(srv, Ack);
        let y = expect!(srv, Ack);
        for ack in [&x, &y] {
            assert_eq!(ack.kind, wire::AckKind::Cumulative as i32);
            assert_eq!(ack.session_id, s.id());
            assert_ne!(ack.request_id, 0);
            srv.ok(ack.request_id).await;
        }
        let mut got = vec![
            (x.consumer_id, x.delivery_id),
            (y.consumer_id, y.delivery_id),
        ];
        got.sort();
        got
    };
    // Acknowledging the first message acknowledges everything handed out so far.
    let (r, got) = tokio::join!(m1.ack(), script);
    r.unwrap();
    assert_eq!(got, vec![(a.id(), 2), (b.id(), 3)]);
    // Nothing new handed out: nothing to send.
    m1.ack().await.unwrap();
    let m4 = recv_text(&mut a).await;
    let script = async {
        let x = expect!(srv, Ack);
        srv.ok(x.request_id).await;
        (x.consumer_id, x.delivery_id)
    };
    let (r, got) = tokio::join!(m4.ack(), script);
    r.unwrap();
    assert_eq!(got, (a.id(), 4));
}

#[tokio::test]
async fn individual_ack_acknowledges_one_message_and_reports_errors() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Individual).await;
    let mut c = consumer(&s, &mut srv, "q", 10).await;
    conn.start();
    srv.deliver(c.id(), 5, "x").await;
    srv.deliver(c.id(), 6, "y").await;
    let x = recv_text(&mut c).await;
    let y = recv_text(&mut c).await;
    let script = async {
        let a = expect!(srv, Ack);
        assert_eq!(
            (a.consumer_id, a.delivery_id, a.kind),
            (c.id(), 6, wire::AckKind::Individual as i32)
        );
        srv.send(Frame::error(
            a.request_id,
            ErrorCode::UnknownDelivery,
            "gone",
        ))
        .await;
    };
    let (r, ()) = tokio::join!(y.ack(), script);
    assert!(
        matches!(
            r,
            Err(Error::Broker {
                code: ErrorCode::UnknownDelivery,
                ..
            })
        ),
        "{r:?}"
    );
    // A successful ack is not repeated.
    let script = async {
        let a = expect!(srv, Ack);
        assert_eq!(a.delivery_id, 5);
        srv.ok(a.request_id).await;
    };
    let (r, ()) = tokio::join!(x.ack(), script);
    r.unwrap();
    x.ack().await.unwrap();
    tokio::task::yield_now().await;
    assert!(srv.nothing_pending().is_none());
}

#[tokio::test]
async fn dups_ok_acks_in_batches_when_idle_and_on_close() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::DupsOk).await;
    let mut c = consumer(&s, &mut srv, "q", 4).await;
    conn.start();
    for id in 1..=3 {
        srv.deliver(c.id(), id, "m").await;
    }
    for _ in 0..3 {
        recv_text(&mut c).await;
    }
    // Batch of prefetch/2 = 2: one cumulative ack after the second message, none after the third.
    let a = expect!(srv, Ack);
    assert_eq!(
        (a.delivery_id, a.kind, a.request_id),
        (2, wire::AckKind::Cumulative as i32, 0)
    );
    tokio::task::yield_now().await;
    assert!(srv.nothing_pending().is_none());
    // Caught up: looking for more flushes the batch.
    assert!(c.receive_no_wait().unwrap().is_none());
    assert_eq!(expect!(srv, Ack).delivery_id, 3);
    srv.deliver(c.id(), 4, "m").await;
    recv_text(&mut c).await;
    let cid = c.id();
    let script = async {
        let a = expect!(srv, Ack);
        assert_eq!(
            (a.delivery_id, a.kind),
            (4, wire::AckKind::Cumulative as i32)
        );
        let close = expect!(srv, ConsumerClose);
        assert_eq!((close.consumer_id, close.last_consumed), (cid, 4));
        srv.ok(close.request_id).await;
    };
    let (r, ()) = tokio::join!(c.close(), script);
    r.unwrap();
    assert!(c.next().await.is_none(), "a closed consumer's stream ends");
}

#[tokio::test]
async fn dropped_handles_close_on_the_broker() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Client).await;
    let q = Destination::queue("q").unwrap();
    let (p, open) = producer(&s, &mut srv, Some(&q)).await;
    let mut c = consumer(&s, &mut srv, "q", 10).await;
    conn.start();
    srv.deliver(c.id(), 1, "seen").await;
    srv.deliver(c.id(), 2, "buffered").await;
    let m = recv_text(&mut c).await.into_message();
    assert_eq!(m.text_body(), Some("seen"));
    let cid = c.id();
    drop(p);
    assert_eq!(expect!(srv, ProducerClose).producer_id, open.producer_id);
    drop(c);
    let close = expect!(srv, ConsumerClose);
    assert_eq!((close.consumer_id, close.last_consumed), (cid, 1));
    let sid = s.id();
    drop(s);
    assert_eq!(expect!(srv, SessionClose).session_id, sid);
}

#[tokio::test]
async fn recover_drops_buffers_and_nacks_the_consumed_positions() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Client).await;
    let mut a = consumer(&s, &mut srv, "a", 10).await;
    let mut b = consumer(&s, &mut srv, "b", 10).await;
    conn.start();
    srv.deliver(a.id(), 1, "a1").await;
    srv.deliver(a.id(), 2, "a2").await;
    srv.deliver(a.id(), 3, "a3").await; // prefetched, never seen
    srv.deliver(b.id(), 4, "b1").await;
    recv_text(&mut a).await;
    recv_text(&mut a).await;
    recv_text(&mut b).await;
    let script = async {
        let n = expect!(srv, Nack);
        assert_eq!((n.session_id, n.delivery_id), (s.id(), 0));
        let mut pos: Vec<(u64, u64)> = n
            .consumed
            .iter()
            .map(|p| (p.consumer_id, p.delivery_id))
            .collect();
        pos.sort();
        assert_eq!(pos, vec![(a.id(), 2), (b.id(), 4)]);
        // Sent before the broker took the Nack: stale, must be dropped.
        srv.deliver(a.id(), 5, "stale").await;
        // A redelivery may overtake the answer (another connection's traffic can dispatch it
        // first): it is above the mark, so it is kept.
        srv.send(deliver(a.id(), 6, "a1", true, 2)).await;
        srv.send(Frame::Ok(wire::Ok {
            request_id: n.request_id,
            last_delivery_id: 5,
        }))
        .await;
    };
    let (r, ()) = tokio::join!(s.recover(), script);
    r.unwrap();
    let m = recv_text(&mut a).await;
    assert_eq!(
        (text(&m), m.redelivered, m.delivery_count, m.delivery_id()),
        ("a1", true, 2, 6)
    );
    assert!(
        a.receive_no_wait().unwrap().is_none(),
        "the buffered a3 and the stale delivery are gone"
    );
    // Only what was handed out after the recover is acknowledged.
    let script = async {
        let x = expect!(srv, Ack);
        srv.ok(x.request_id).await;
        (x.consumer_id, x.delivery_id)
    };
    let (r, got) = tokio::join!(m.ack(), script);
    r.unwrap();
    assert_eq!(got, (a.id(), 6));
}

#[tokio::test(start_paused = true)]
async fn prefetch_zero_pulls_one_message_per_receive() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let mut c = consumer(&s, &mut srv, "q", 0).await;
    // Stopped: no pull.
    assert!(
        c.receive(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none()
    );
    assert!(srv.nothing_pending().is_none());
    conn.start();
    // A receive that times out leaves its credit outstanding; the next one does not ask again.
    assert!(
        c.receive(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none()
    );
    let flow = expect!(srv, Flow);
    assert_eq!((flow.consumer_id, flow.credit), (c.id(), 1));
    let cid = c.id();
    let script = async {
        tokio::task::yield_now().await;
        assert!(
            srv.nothing_pending().is_none(),
            "a second Flow while one is outstanding"
        );
        srv.deliver(cid, 1, "pulled").await;
    };
    let (m, ()) = tokio::join!(recv_text(&mut c), script);
    assert_eq!(text(&m), "pulled");
    assert_eq!(expect!(srv, Ack).delivery_id, 1);
    // The next receive pulls again.
    let script = async {
        let flow = expect!(srv, Flow);
        assert_eq!(flow.credit, 1);
        srv.deliver(cid, 2, "again").await;
    };
    let (m, ()) = tokio::join!(recv_text(&mut c), script);
    assert_eq!(text(&m), "again");
}

#[tokio::test(start_paused = true)]
async fn a_stopped_connection_buffers_deliveries() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let mut c = consumer(&s, &mut srv, "q", 10).await;
    srv.deliver(c.id(), 1, "early").await;
    assert!(
        c.receive(Duration::from_secs(1)).await.unwrap().is_none(),
        "not started yet"
    );
    assert!(c.receive_no_wait().unwrap().is_none());
    let (m, ()) = tokio::join!(recv_text(&mut c), async { conn.start() });
    assert_eq!(text(&m), "early");
    conn.stop();
    srv.deliver(c.id(), 2, "later").await;
    assert!(
        c.receive(Duration::from_secs(1)).await.unwrap().is_none(),
        "stopped again"
    );
    conn.start();
    assert_eq!(text(&recv_text(&mut c).await), "later");
    let acks: Vec<u64> = [expect!(srv, Ack), expect!(srv, Ack)]
        .iter()
        .map(|a| a.delivery_id)
        .collect();
    assert_eq!(acks, [1, 2]);
}

#[tokio::test]
async fn consumer_close_reports_last_consumed_and_client_ack_still_covers_it() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Client).await;
    let mut c = consumer(&s, &mut srv, "q", 10).await;
    conn.start();
    srv.deliver(c.id(), 1, "seen").await;
    srv.deliver(c.id(), 2, "buffered").await;
    let m = recv_text(&mut c).await;
    let id = c.id();
    let script = async {
        let close = expect!(srv, ConsumerClose);
        assert_eq!((close.consumer_id, close.last_consumed), (id, 1));
        srv.ok(close.request_id).await;
        // In flight when the consumer closed: dropped (the broker takes it back).
        srv.deliver(id, 3, "late").await;
    };
    let (r, ()) = tokio::join!(c.close(), script);
    r.unwrap();
    let script = async {
        let a = expect!(srv, Ack);
        srv.ok(a.request_id).await;
        (a.consumer_id, a.delivery_id, a.kind)
    };
    let (r, got) = tokio::join!(m.ack(), script);
    r.unwrap();
    assert_eq!(got, (id, 1, wire::AckKind::Cumulative as i32));
    assert!(matches!(
        c.receive_no_wait(),
        Err(Error::Closed("consumer"))
    ));
}

#[tokio::test]
async fn session_close_ends_its_consumers() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let mut c = consumer(&s, &mut srv, "q", 10).await;
    let script = async {
        let sc = expect!(srv, SessionClose);
        srv.ok(sc.request_id).await;
    };
    let (r, ()) = tokio::join!(s.close(), script);
    r.unwrap();
    assert!(c.next().await.is_none());
    assert!(matches!(
        c.receive(GUARD).await,
        Err(Error::Closed("session"))
    ));
    let r = s.create_producer(None).await;
    assert!(matches!(r, Err(Error::Closed("session"))), "{r:?}");
    // Dropping the consumer afterwards sends nothing more.
    drop(c);
    tokio::task::yield_now().await;
    assert!(srv.nothing_pending().is_none());
}

#[tokio::test]
async fn a_broker_exceeding_credit_is_a_protocol_error() {
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let c = consumer(&s, &mut srv, "q", 1).await;
    let mut events = conn.events();
    for id in 1..=100 {
        srv.deliver(c.id(), id, "flood").await;
    }
    let close = expect!(srv, Close);
    assert_eq!(close.code, ErrorCode::IllegalState.code());
    assert!(matches!(
        events.recv().await,
        Some(ConnectionEvent::Closed(Error::Protocol(_)))
    ));
}

/// Compile-time check: every future of the API is `Send` (so none holds the state's `MutexGuard`
/// across an await, and all can run on a multi-threaded runtime).
#[allow(dead_code)]
fn futures_are_send(
    conn: &Connection,
    s: &Session,
    p: &mut Producer,
    c: &mut Consumer,
    r: &crate::Received,
) {
    fn is_send<T: Send>(_: T) {}
    let q = Destination::queue("q").unwrap();
    is_send(conn.create_session(AckMode::Auto));
    is_send(s.create_producer(Some(&q)));
    is_send(s.create_consumer(&q, None));
    is_send(s.consumer(&q).build());
    is_send(s.recover());
    is_send(s.close());
    is_send(p.send(Message::text("x")));
    is_send(p.send_async(Message::text("x")));
    is_send(p.close());
    is_send(c.receive(GUARD));
    is_send(c.next());
    is_send(c.close());
    is_send(r.ack());
    is_send(conn.events());
    is_send(conn.close());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_and_a_streaming_consumer_on_a_multi_thread_runtime() {
    const N: u64 = 300;
    const PREFETCH: u64 = 50;
    let (conn, mut srv, _) = connect(|f| f, 0).await;
    let s = session(&conn, &mut srv, AckMode::Auto).await;
    let q = Destination::queue("q").unwrap();
    let (mut p, _) = producer(&s, &mut srv, Some(&q)).await;
    let mut c = consumer(&s, &mut srv, "q", PREFETCH as u32).await;
    let cid = c.id();
    let mut events = conn.events();
    conn.start();
    let server = tokio::spawn(async move {
        let mut sends = Vec::new();
        while sends.len() < N as usize {
            let sent = expect!(srv, Send);
            assert!(sent.receipt);
            sends.push((sent.producer_id, sent.sequence));
        }
        assert!(
            sends.windows(2).all(|w| w[0].1 < w[1].1),
            "sequences out of order"
        );
        // Receipts in reverse order: each send must still get its own.
        for (producer_id, sequence) in sends.iter().rev().copied() {
            srv.send(wire::SendReceipt {
                producer_id,
                sequence,
            })
            .await;
        }
        // Deliver within the credit window, as a broker would; auto acks come back one by one.
        let (mut next, mut acked) = (1u64, 0u64);
        while acked < N {
            while next <= N && next - 1 - acked < PREFETCH {
                srv.deliver(cid, next, &format!("m{next}")).await;
                next += 1;
            }
            let ack = expect!(srv, Ack);
            assert_eq!(
                (ack.delivery_id, ack.kind),
                (acked + 1, wire::AckKind::Individual as i32)
            );
            acked += 1;
        }
        srv
    });
    let consumer = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < N as usize {
            let m = c
                .next()
                .await
                .expect("stream ended")
                .expect("receive failed");
            assert_eq!(
                m.text_body(),
                Some(format!("m{}", m.delivery_id()).as_str())
            );
            ids.push(m.delivery_id());
        }
        ids
    });
    let mut receipts = Vec::new();
    for i in 0..N {
        receipts.push(p.send_async(Message::text(format!("s{i}"))).await.unwrap());
    }
    for r in futures::future::join_all(receipts).await {
        r.unwrap();
    }
    let ids = tokio::time::timeout(GUARD, consumer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids, (1..=N).collect::<Vec<_>>());
    let _srv = tokio::time::timeout(GUARD, server).await.unwrap().unwrap();
    // Nothing went wrong on the side.
    assert!(futures::FutureExt::now_or_never(events.next()).is_none());
}

#[tokio::test]
async fn undecodable_bytes_from_the_broker_close_with_the_codec_code() {
    use tokio::io::AsyncWriteExt;
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (cr, cw) = tokio::io::split(client_io);
    let (rx, tx) = crate::transport::stream(Box::new(cr), Box::new(cw), 1 << 16);
    let mut server = tokio_util::codec::Framed::new(server_io, FrameCodec::default());
    let opts = crate::ConnectionOptions {
        heartbeat: Duration::ZERO,
        ..Default::default()
    };
    let script = async {
        let Some(Ok(Frame::Connect(_))) = server.next().await else {
            panic!()
        };
        server.send(Frame::Connected(connected(0))).await.unwrap();
    };
    let (conn, ()) = tokio::join!(crate::connection::handshake(rx, tx, &opts), script);
    let conn = conn.unwrap();
    let mut events = conn.events();
    // A well-framed frame of a type no frame uses.
    server
        .get_mut()
        .write_all(&[0, 0, 0, 2, 0xee, 0])
        .await
        .unwrap();
    let Some(Ok(Frame::Close(c))) = tokio::time::timeout(GUARD, server.next()).await.unwrap()
    else {
        panic!("expected Close")
    };
    assert_eq!(c.code, ErrorCode::UnknownFrameType.code());
    match events.next().await {
        Some(ConnectionEvent::Closed(Error::Protocol(m))) => assert!(m.contains("0xee"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn handles_can_move_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Connection>();
    send_sync::<ConnectionFactory>();
    send_sync::<Session>();
    send_sync::<Producer>();
    send_sync::<Consumer>();
    send_sync::<crate::Received>();
    send_sync::<crate::Receipt>();
    send_sync::<Error>();
    send::<crate::Events>();
}

// ------------------------------------------------------------------ failover (fake servers)

/// A connector handing out the links pushed into it, one per attempt; none left: the attempt
/// fails (a broker that is down).
#[derive(Clone, Default)]
struct Links(Arc<Mutex<std::collections::VecDeque<LocalLink>>>);

impl Links {
    /// A new broker to connect to: its server side.
    fn add(&self) -> FakeServer {
        let (client, server) = local_link_pair(256);
        self.0.lock().unwrap().push_back(client);
        FakeServer { link: server }
    }
}

fn exact_policy() -> crate::ReconnectPolicy {
    crate::ReconnectPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        jitter: 0.0,
        randomize: false,
        ..crate::ReconnectPolicy::default()
    }
}

async fn failover_connect(
    links: &Links,
    policy: crate::ReconnectPolicy,
) -> (Connection, FakeServer) {
    let mut srv = links.add();
    let l = links.clone();
    let factory = ConnectionFactory::in_process(Arc::new(move || {
        l.0.lock()
            .unwrap()
            .pop_front()
            .ok_or_else(|| "broker down".to_string())
    }))
    .with_heartbeat(Duration::ZERO)
    .with_client_id("app")
    .with_reconnect(policy);
    let script = async {
        let c = expect!(srv, Connect);
        assert_eq!(c.client_id, "app");
        srv.send(connected(0)).await;
    };
    let (conn, ()) = tokio::join!(factory.connect(), script);
    (conn.expect("connect"), srv)
}

/// The handshake and the replay on a new link, answered: returns what was replayed.
async fn accept_replay(
    srv: &mut FakeServer,
    sessions: usize,
    producers: usize,
    consumers: usize,
) -> (
    Vec<wire::SessionOpen>,
    Vec<wire::ProducerOpen>,
    Vec<wire::ConsumerOpen>,
) {
    let c = expect!(srv, Connect);
    assert_eq!(c.client_id, "app", "the same client id");
    srv.send(connected(0)).await;
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sessions {
        let o = expect!(srv, SessionOpen);
        srv.ok(o.request_id).await;
        out.0.push(o);
    }
    for _ in 0..producers {
        let o = expect!(srv, ProducerOpen);
        srv.ok(o.request_id).await;
        out.1.push(o);
    }
    for _ in 0..consumers {
        let o = expect!(srv, ConsumerOpen);
        srv.ok(o.request_id).await;
        out.2.push(o);
    }
    out
}

async fn next_event(events: &mut crate::Events) -> ConnectionEvent {
    tokio::time::timeout(GUARD, events.recv())
        .await
        .expect("an event within the guard timeout")
        .expect("the event stream ended")
}

#[tokio::test(start_paused = true)]
async fn failover_recreates_everything_and_resends_only_unconfirmed_persistent_sends() {
    let links = Links::default();
    let (conn, mut srv1) = failover_connect(&links, exact_policy()).await;
    let s = session(&conn, &mut srv1, AckMode::Client).await;
    let q = Destination::queue("q").unwrap();
    let (mut p, popen) = producer(&s, &mut srv1, Some(&q)).await;
    let mut c = consumer(&s, &mut srv1, "q", 10).await;
    conn.start();
    let mut events = conn.events();

    // seq 1 confirmed, 2 and 3 unconfirmed, 4 non-persistent, 5 unconfirmed.
    let r1 = p.send_async(Message::text("1")).await.unwrap();
    let r2 = p.send_async(Message::text("2")).await.unwrap();
    let r3 = p.send_async(Message::text("3")).await.unwrap();
    p.set_delivery_mode(DeliveryMode::NonPersistent);
    p.send(Message::text("4")).await.unwrap();
    p.set_delivery_mode(DeliveryMode::Persistent);
    let r5 = p.send_async(Message::text("5")).await.unwrap();
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(expect!(srv1, Send));
    }
    srv1.send(wire::SendReceipt {
        producer_id: p.id(),
        sequence: 1,
    })
    .await;
    r1.await.unwrap();
    // Two deliveries: one handed to the application (not acked), one only buffered.
    srv1.deliver(c.id(), 1, "a").await;
    srv1.deliver(c.id(), 2, "b").await;
    let a = recv_text(&mut c).await;
    assert_eq!(text(&a), "a");

    let mut srv2 = links.add();
    drop(srv1); // the broker dies
    match next_event(&mut events).await {
        ConnectionEvent::Disconnected { endpoint, error } => {
            assert_eq!(endpoint, "in-process");
            assert!(error.is_connection_error(), "{error:?}");
        }
        other => panic!("{other:?}"),
    }
    let (so, po, co) = accept_replay(&mut srv2, 1, 1, 1).await;
    assert_eq!(
        (so[0].session_id, so[0].ack_mode),
        (s.id(), wire::AckMode::Client as i32)
    );
    assert_eq!(
        (po[0].producer_id, &po[0].producer_name, &po[0].destination),
        (p.id(), &popen.producer_name, &popen.destination),
        "the same producer id, stable name and destination"
    );
    assert_eq!((co[0].consumer_id, co[0].prefetch), (c.id(), 10));
    assert_eq!(co[0].destination, Some(q.to_wire()));
    // Exactly the unconfirmed persistent sends, in order, byte for byte.
    for seq in [2u64, 3, 5] {
        let resent = expect!(srv2, Send);
        let orig = &first[seq as usize - 1];
        assert_eq!(
            (resent.producer_id, resent.sequence, resent.receipt),
            (p.id(), seq, true)
        );
        assert_eq!(resent.message, orig.message);
        srv2.send(wire::SendReceipt {
            producer_id: p.id(),
            sequence: seq,
        })
        .await;
    }
    tokio::task::yield_now().await;
    assert!(
        srv2.nothing_pending().is_none(),
        "no resend of the non-persistent send"
    );
    r2.await.unwrap();
    r3.await.unwrap();
    r5.await.unwrap();
    match next_event(&mut events).await {
        ConnectionEvent::Reconnected { endpoint, attempts } => {
            assert_eq!((endpoint.as_str(), attempts), ("in-process", 1));
        }
        other => panic!("{other:?}"),
    }
    assert!(conn.is_connected());

    // The message handed out by the dead link cannot be acknowledged; the buffered one is gone.
    assert!(matches!(a.ack().await, Err(Error::AckAfterFailover)));
    assert!(c.receive_no_wait().unwrap().is_none());
    srv2.send(deliver(c.id(), 1, "a", true, 2)).await;
    let again = recv_text(&mut c).await;
    assert_eq!(
        (text(&again), again.redelivered, again.delivery_count),
        ("a", true, 2)
    );
    let (ack, ()) = tokio::join!(again.ack(), async {
        let a = expect!(srv2, Ack);
        assert_eq!((a.consumer_id, a.delivery_id), (c.id(), 1));
        srv2.ok(a.request_id).await;
    });
    ack.unwrap();
    // Later sends continue the sequence on the new link.
    let r6 = p.send_async(Message::text("6")).await.unwrap();
    let sent = expect!(srv2, Send);
    assert_eq!(sent.sequence, 6);
    srv2.send(wire::SendReceipt {
        producer_id: p.id(),
        sequence: 6,
    })
    .await;
    r6.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn sends_wait_while_reconnecting_and_requests_in_flight_resolve_by_kind() {
    let links = Links::default();
    let (conn, mut srv1) = failover_connect(&links, exact_policy()).await;
    let s = session(&conn, &mut srv1, AckMode::Individual).await;
    let q = Destination::queue("q").unwrap();
    let (mut p, _) = producer(&s, &mut srv1, Some(&q)).await;
    let mut c = consumer(&s, &mut srv1, "q", 10).await;
    conn.start();
    srv1.deliver(c.id(), 1, "a").await;
    let a = recv_text(&mut c).await;
    // In flight at the loss: an ack, a consumer open, a consumer close.
    let ack = a.ack();
    let open = s.consumer(&Destination::queue("other").unwrap()).build();
    let (ack_r, open_r, ()) = tokio::join!(ack, open, async {
        expect!(srv1, Ack);
        expect!(srv1, ConsumerOpen);
        // No broker for a while: attempts fail on the schedule until one is added.
        drop(srv1);
    });
    assert!(matches!(ack_r, Err(Error::AckAfterFailover)), "{ack_r:?}");
    assert!(
        matches!(open_r, Err(Error::ConnectionLost { .. })),
        "{open_r:?}"
    );
    assert!(!conn.is_closed(), "the connection carries on");
    // A send while down waits instead of failing...
    let send = tokio::spawn(async move {
        let r = p.send(Message::text("while down")).await;
        (p, r)
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!send.is_finished());
    // ...until a broker is back; the half-opened consumer is not recreated.
    let mut srv2 = links.add();
    let (_, _, co) = accept_replay(&mut srv2, 1, 1, 1).await;
    assert_eq!(co[0].consumer_id, c.id());
    let sent = expect!(srv2, Send);
    assert_eq!(sent.sequence, 1);
    srv2.send(wire::SendReceipt {
        producer_id: sent.producer_id,
        sequence: 1,
    })
    .await;
    let (_p, r) = tokio::time::timeout(GUARD, send).await.unwrap().unwrap();
    r.unwrap();
    drop(c);
}

#[tokio::test(start_paused = true)]
async fn a_spent_reconnect_budget_fails_everything_and_closes() {
    let links = Links::default();
    let policy = crate::ReconnectPolicy {
        max_attempts: Some(3),
        ..exact_policy()
    };
    let (conn, mut srv1) = failover_connect(&links, policy).await;
    let s = session(&conn, &mut srv1, AckMode::Auto).await;
    let q = Destination::queue("q").unwrap();
    let (mut p, _) = producer(&s, &mut srv1, Some(&q)).await;
    let mut c = consumer(&s, &mut srv1, "q", 10).await;
    conn.start();
    let mut events = conn.events();
    let unconfirmed = p.send_async(Message::text("1")).await.unwrap();
    expect!(srv1, Send);
    let started = Instant::now();
    drop(srv1);
    assert!(matches!(
        next_event(&mut events).await,
        ConnectionEvent::Disconnected { .. }
    ));
    let failed =
        |r: &crate::Result<()>| matches!(r, Err(Error::ReconnectFailed { attempts: 3, .. }));
    // A send made while reconnecting waits, then fails with the budget.
    let waiting = tokio::spawn(async move {
        let r = p.send(Message::text("while down")).await.map(|_| ());
        (p, r)
    });
    let r = unconfirmed.await;
    assert!(failed(&r), "{r:?}");
    let (mut p, r) = tokio::time::timeout(GUARD, waiting).await.unwrap().unwrap();
    assert!(failed(&r), "{r:?}");
    // Attempts at 0, +10 ms, +20 ms (10 · 2): then the budget is spent.
    assert_eq!(started.elapsed(), Duration::from_millis(30));
    match next_event(&mut events).await {
        ConnectionEvent::Closed(e) => assert!(failed(&Err(e.clone())), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert!(conn.is_closed());
    let r = p.send(Message::text("2")).await.map(|_| ());
    assert!(failed(&r), "{r:?}");
    let r = c.receive(GUARD).await.map(|_| ());
    assert!(failed(&r), "{r:?}");
    assert!(matches!(
        conn.create_session(AckMode::Auto).await,
        Err(Error::ReconnectFailed { .. })
    ));
    conn.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_pull_consumer_asks_for_credit_again_on_the_new_link() {
    let links = Links::default();
    let (conn, mut srv1) = failover_connect(&links, exact_policy()).await;
    let s = session(&conn, &mut srv1, AckMode::Auto).await;
    let mut c = consumer(&s, &mut srv1, "q", 0).await;
    let cid = c.id();
    conn.start();
    let receiving = tokio::spawn(async move {
        let m = c.receive(GUARD).await.unwrap().expect("a message");
        m.text_body().unwrap().to_string()
    });
    let f = expect!(srv1, Flow);
    assert_eq!((f.consumer_id, f.credit), (cid, 1));
    let mut srv2 = links.add();
    drop(srv1); // the credit asked of the dead broker is gone with it
    accept_replay(&mut srv2, 1, 0, 1).await;
    let f = expect!(srv2, Flow);
    assert_eq!((f.consumer_id, f.credit), (cid, 1));
    srv2.deliver(cid, 1, "x").await;
    let a = expect!(srv2, Ack);
    assert_eq!((a.consumer_id, a.delivery_id), (cid, 1));
    assert_eq!(
        tokio::time::timeout(GUARD, receiving)
            .await
            .unwrap()
            .unwrap(),
        "x"
    );
}

#[tokio::test(start_paused = true)]
async fn failover_dooms_an_open_transaction_and_resolves_a_commit_in_flight() {
    let links = Links::default();
    let (conn, mut srv1) = failover_connect(&links, exact_policy()).await;
    let s = session(&conn, &mut srv1, AckMode::Transacted).await;
    let q = Destination::queue("q").unwrap();
    let (mut p, _) = producer(&s, &mut srv1, Some(&q)).await;

    // An open transaction with a send in it when the link dies: it cannot commit.
    let r = p.send_async(Message::text("lost")).await.unwrap();
    let sent = expect!(srv1, Send);
    srv1.send(wire::SendReceipt {
        producer_id: p.id(),
        sequence: sent.sequence,
    })
    .await;
    r.await.unwrap();
    let mut srv2 = links.add();
    drop(srv1);
    accept_replay(&mut srv2, 1, 1, 0).await;
    tokio::task::yield_now().await;
    assert!(
        srv2.nothing_pending().is_none(),
        "a transaction's send is never resent"
    );
    // commit() rolls the doomed transaction back on the new link and says so.
    let script = async {
        let rb = expect!(srv2, TxRollback);
        srv2.send(wire::Ok {
            request_id: rb.request_id,
            last_delivery_id: 0,
        })
        .await;
    };
    let (r, ()) = tokio::join!(s.commit(), script);
    assert!(
        matches!(&r, Err(Error::TransactionRolledBack(m)) if m.contains("connection was lost")),
        "{r:?}"
    );

    // The next transaction commits, but the link dies before the answer: the client asks the new
    // link about that very commit and reports what the broker says.
    let r = p.send_async(Message::text("kept")).await.unwrap();
    let sent = expect!(srv2, Send);
    srv2.send(wire::SendReceipt {
        producer_id: p.id(),
        sequence: sent.sequence,
    })
    .await;
    r.await.unwrap();
    let mut srv3 = links.add();
    let script = async {
        let c = expect!(srv2, TxCommit);
        assert!(!c.resolve);
        drop(srv2); // the answer never comes
        accept_replay(&mut srv3, 1, 1, 0).await;
        let q = expect!(srv3, TxCommit);
        assert!(q.resolve, "asks, does not commit again");
        assert!(q.consumed.is_empty());
        assert_eq!((&q.tx_name, q.tx_seq), (&c.tx_name, c.tx_seq));
        srv3.ok(q.request_id).await;
        srv3
    };
    let (r, mut srv3) = tokio::join!(s.commit(), script);
    r.unwrap();
    // Asked about and not committed: reported rolled back.
    let r = p.send_async(Message::text("maybe")).await.unwrap();
    let sent = expect!(srv3, Send);
    srv3.send(wire::SendReceipt {
        producer_id: p.id(),
        sequence: sent.sequence,
    })
    .await;
    r.await.unwrap();
    let mut srv4 = links.add();
    let script = async {
        let c = expect!(srv3, TxCommit);
        drop(srv3);
        accept_replay(&mut srv4, 1, 1, 0).await;
        let q = expect!(srv4, TxCommit);
        assert!(q.resolve && q.tx_seq == c.tx_seq);
        srv4.send(wire::Error {
            request_id: q.request_id,
            code: ErrorCode::TransactionRolledBack.code(),
            message: "was not committed".into(),
        })
        .await;
    };
    let (r, ()) = tokio::join!(s.commit(), script);
    assert!(matches!(&r, Err(Error::TransactionRolledBack(_))), "{r:?}");
}
