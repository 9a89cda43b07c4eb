//! The STOMP listener over TCP with raw frames: the mapping onto the JMS model (docs/STOMP.md),
//! acks, redelivery, selectors, receipts, fan-out, bad input, heart-beats, and interop with the
//! native protocol in both directions.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use support::*;
use tandem_broker::{Broker, BrokerConfig};
use tandem_protocol::model::{
    Body, DeliveryMode, Destination, DestinationKind, Message, PropertyValue,
};
use tandem_protocol::stomp::{Command, Item, StompCodec, StompFrame};
use tandem_protocol::wire::AckMode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A STOMP client just smart enough for tests: frames in, frames out, heart-beats counted.
struct Stomp {
    io: Framed<TcpStream, StompCodec>,
    heart_beats: usize,
    /// Frames received while waiting for a RECEIPT.
    stash: Vec<StompFrame>,
}

fn frame(command: Command, headers: &[(&str, &str)]) -> StompFrame {
    let mut f = StompFrame::new(command);
    for (n, v) in headers {
        f.headers.push((n.to_string(), v.to_string()));
    }
    f
}

impl Stomp {
    async fn open(b: &Broker) -> Stomp {
        let sock = TcpStream::connect(b.stomp_addr().unwrap()).await.unwrap();
        Stomp {
            io: Framed::new(sock, StompCodec::default()),
            heart_beats: 0,
            stash: Vec::new(),
        }
    }

    /// Connects as STOMP 1.2 with extra CONNECT headers; returns the CONNECTED frame.
    async fn connect_with(b: &Broker, headers: &[(&str, &str)]) -> (Stomp, StompFrame) {
        let mut s = Stomp::open(b).await;
        let mut c = frame(
            Command::Connect,
            &[("accept-version", "1.0,1.1,1.2"), ("host", "tandem")],
        );
        for (n, v) in headers {
            c.headers.push((n.to_string(), v.to_string()));
        }
        s.send(c).await;
        let connected = s.expect(Command::Connected).await;
        (s, connected)
    }

    async fn connect(b: &Broker) -> Stomp {
        Stomp::connect_with(b, &[]).await.0
    }

    async fn send(&mut self, f: StompFrame) {
        self.io.send(Item::Frame(f)).await.unwrap();
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.get_mut().write_all(bytes).await.unwrap();
    }

    /// The next frame within `d` (heart-beats counted and skipped); None on close or timeout.
    async fn recv_within(&mut self, d: Duration) -> Option<StompFrame> {
        if !self.stash.is_empty() {
            return Some(self.stash.remove(0));
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.io.next()).await {
                Ok(Some(Ok(Item::HeartBeat))) => self.heart_beats += 1,
                Ok(Some(Ok(Item::Frame(f)))) => return Some(f),
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn recv(&mut self) -> StompFrame {
        self.recv_within(GUARD)
            .await
            .expect("a frame within the guard time")
    }

    async fn expect(&mut self, command: Command) -> StompFrame {
        let f = self.recv().await;
        assert_eq!(f.command, command, "expected {command}, got {f:?}");
        f
    }

    /// Sends `f` with `receipt:<id>` and waits for that RECEIPT; other frames are stashed.
    async fn with_receipt(&mut self, mut f: StompFrame, id: &str) {
        f.headers.push(("receipt".into(), id.into()));
        self.send(f).await;
        let mut others = Vec::new();
        loop {
            let r = self
                .recv_fresh(GUARD)
                .await
                .unwrap_or_else(|| panic!("no RECEIPT {id}"));
            match r.command {
                Command::Receipt if r.header("receipt-id") == Some(id) => break,
                Command::Error => panic!("ERROR instead of RECEIPT {id}: {r:?}"),
                _ => others.push(r),
            }
        }
        self.stash.extend(others);
    }

    async fn recv_fresh(&mut self, d: Duration) -> Option<StompFrame> {
        let stash = std::mem::take(&mut self.stash);
        let r = self.recv_within(d).await;
        self.stash = stash;
        r
    }

    /// A SEND with a receipt. It says `content-type:text/plain` (unless `headers` name one):
    /// with the `content-length` every encoder writes, a body without a text type is bytes.
    async fn send_text(&mut self, dest: &str, body: &str, headers: &[(&str, &str)]) {
        let mut f = frame(Command::Send, &[("destination", dest)]);
        if !headers.iter().any(|(n, _)| *n == "content-type") {
            f.headers.push(("content-type".into(), "text/plain".into()));
        }
        for (n, v) in headers {
            f.headers.push((n.to_string(), v.to_string()));
        }
        f.body = Bytes::from(body.to_string());
        let id = format!("send-{body}");
        self.with_receipt(f, &id).await;
    }

    async fn subscribe(&mut self, id: &str, dest: &str, ack: &str, extra: &[(&str, &str)]) {
        let mut f = frame(
            Command::Subscribe,
            &[("id", id), ("destination", dest), ("ack", ack)],
        );
        for (n, v) in extra {
            f.headers.push((n.to_string(), v.to_string()));
        }
        self.with_receipt(f, &format!("sub-{id}")).await;
    }

    /// The server closed the connection (after anything it had to say).
    async fn closed(&mut self) -> bool {
        self.recv_within(GUARD).await.is_none()
    }
}

fn body(f: &StompFrame) -> &str {
    std::str::from_utf8(&f.body).unwrap()
}

async fn broker_with(config: BrokerConfig) -> Broker {
    Broker::start(BrokerConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        stomp: Some("127.0.0.1:0".parse().unwrap()),
        ..config
    })
    .await
    .unwrap()
}

async fn broker() -> Broker {
    broker_with(BrokerConfig::embedded()).await
}

#[tokio::test]
async fn send_and_receive_on_a_queue() {
    let b = broker().await;
    let (mut s, connected) = Stomp::connect_with(&b, &[("login", "u"), ("passcode", "p")]).await;
    assert_eq!(connected.header("version"), Some("1.2"));
    assert!(connected.header("server").unwrap().starts_with("tandem/"));

    s.send_text("/queue/a", "one", &[]).await;
    s.subscribe("s1", "/queue/a", "auto", &[]).await;
    let m = s.expect(Command::Message).await;
    assert_eq!(body(&m), "one");
    assert_eq!(m.header("subscription"), Some("s1"));
    assert_eq!(m.header("destination"), Some("/queue/a"));
    assert_eq!(m.header("redelivered"), Some("false"));
    assert_eq!(m.header("persistent"), Some("false"));
    assert_eq!(m.header("content-type"), Some("text/plain;charset=utf-8"));
    assert!(m.header("message-id").unwrap().starts_with("ID:"));
    assert!(m.header("ack").unwrap().parse::<u64>().is_ok());

    // Sent after the subscription: delivered at once.
    // A body with a content-length and no content type is a BytesMessage.
    s.send(
        frame(Command::Send, &[("destination", "/queue/a")]).with_body(Bytes::from_static(b"two")),
    )
    .await;
    let m = s.expect(Command::Message).await;
    assert_eq!(body(&m), "two");
    assert_eq!(m.header("content-type"), Some("application/octet-stream"));
    assert_eq!(m.header("content-length"), Some("3"));

    // Auto mode acknowledges as it delivers: nothing stays in flight.
    s.with_receipt(frame(Command::Unsubscribe, &[("id", "s1")]), "u")
        .await;
    assert!(s.stash.is_empty());
    let snap = b.queue_snapshot("a").unwrap();
    assert_eq!((snap.ready, snap.inflight, snap.consumers), (0, 0, 0));

    // DISCONNECT with a receipt: RECEIPT, then the server closes.
    s.send(frame(Command::Disconnect, &[("receipt", "bye")]))
        .await;
    let r = s.expect(Command::Receipt).await;
    assert_eq!(r.header("receipt-id"), Some("bye"));
    assert!(s.closed().await);
    b.shutdown().await;
}

#[tokio::test]
async fn client_ack_is_cumulative_and_client_individual_is_not() {
    let b = broker().await;
    let mut s = Stomp::connect(&b).await;
    for n in ["c1", "c2", "c3"] {
        s.send_text("/queue/cumulative", n, &[]).await;
    }
    s.subscribe("c", "/queue/cumulative", "client", &[]).await;
    let ms: Vec<StompFrame> = [
        s.expect(Command::Message).await,
        s.expect(Command::Message).await,
        s.expect(Command::Message).await,
    ]
    .into();
    assert_eq!(ms.iter().map(body).collect::<Vec<_>>(), ["c1", "c2", "c3"]);
    // ACK of the second acknowledges the first too.
    let ack = ms[1].header("ack").unwrap();
    s.with_receipt(frame(Command::Ack, &[("id", ack)]), "a")
        .await;
    let snap = b.queue_snapshot("cumulative").unwrap();
    assert_eq!(snap.inflight, 1, "{snap:?}");
    // UNSUBSCRIBE gives the unacknowledged third back, marked redelivered.
    s.with_receipt(frame(Command::Unsubscribe, &[("id", "c")]), "u")
        .await;
    s.subscribe("c2", "/queue/cumulative", "client", &[]).await;
    let again = s.expect(Command::Message).await;
    assert_eq!(body(&again), "c3");
    assert_eq!(again.header("redelivered"), Some("true"));
    assert_eq!(again.header("JMSXDeliveryCount"), Some("2"));
    s.with_receipt(
        frame(Command::Ack, &[("id", again.header("ack").unwrap())]),
        "a2",
    )
    .await;
    assert!(s.recv_within(Duration::from_millis(200)).await.is_none());

    for n in ["i1", "i2", "i3"] {
        s.send_text("/queue/individual", n, &[]).await;
    }
    s.subscribe("i", "/queue/individual", "client-individual", &[])
        .await;
    let ms = [
        s.expect(Command::Message).await,
        s.expect(Command::Message).await,
        s.expect(Command::Message).await,
    ];
    s.with_receipt(
        frame(Command::Ack, &[("id", ms[1].header("ack").unwrap())]),
        "b",
    )
    .await;
    let snap = b.queue_snapshot("individual").unwrap();
    assert_eq!(
        snap.inflight, 2,
        "only the second was acknowledged: {snap:?}"
    );
    // Acking the same message twice is an error naming the id, and ends the session.
    s.send(frame(
        Command::Ack,
        &[("id", ms[1].header("ack").unwrap()), ("receipt", "twice")],
    ))
    .await;
    let e = s.expect(Command::Error).await;
    assert_eq!(e.header("receipt-id"), Some("twice"));
    assert!(body(&e).contains("awaiting acknowledgement"), "{e:?}");
    assert!(s.closed().await);

    // The connection's end gave the other two back.
    let mut s = Stomp::connect(&b).await;
    s.subscribe("i", "/queue/individual", "client-individual", &[])
        .await;
    let mut got = vec![
        body(&s.expect(Command::Message).await).to_string(),
        body(&s.expect(Command::Message).await).to_string(),
    ];
    got.sort();
    assert_eq!(got, ["i1", "i3"]);
    b.shutdown().await;
}

#[tokio::test]
async fn nack_redelivers_marked_redelivered() {
    let b = broker().await;
    let mut s = Stomp::connect(&b).await;
    s.send_text("/queue/n", "retry me", &[]).await;
    s.subscribe("n", "/queue/n", "client-individual", &[]).await;
    let m = s.expect(Command::Message).await;
    assert_eq!(m.header("redelivered"), Some("false"));
    assert_eq!(m.header("JMSXDeliveryCount"), Some("1"));
    let first_ack = m.header("ack").unwrap().to_string();
    s.with_receipt(frame(Command::Nack, &[("id", &first_ack)]), "n1")
        .await;
    let again = s.expect(Command::Message).await;
    assert_eq!(body(&again), "retry me");
    assert_eq!(again.header("redelivered"), Some("true"));
    assert_eq!(again.header("JMSXDeliveryCount"), Some("2"));
    assert_eq!(again.header("message-id"), m.header("message-id"));
    assert_ne!(
        again.header("ack"),
        Some(first_ack.as_str()),
        "a new delivery, a new ack id"
    );
    s.with_receipt(
        frame(Command::Ack, &[("id", again.header("ack").unwrap())]),
        "a",
    )
    .await;
    let snap = b.queue_snapshot("n").unwrap();
    assert_eq!((snap.ready, snap.inflight), (0, 0));
    b.shutdown().await;
}

#[tokio::test]
async fn selectors_filter_and_bad_ones_are_refused() {
    let b = broker().await;
    let mut s = Stomp::connect(&b).await;
    for (color, n) in [("blue", "1"), ("red", "2"), ("blue", "3"), ("red", "4")] {
        s.send_text(
            "/queue/colors",
            &format!("{color}-{n}"),
            &[("color", color), ("n", n)],
        )
        .await;
    }
    // STOMP headers are String properties: compare them as strings.
    s.subscribe(
        "r",
        "/queue/colors",
        "auto",
        &[("selector", "color = 'red' AND n <> '2'")],
    )
    .await;
    assert_eq!(body(&s.expect(Command::Message).await), "red-4");
    assert!(s.recv_within(Duration::from_millis(200)).await.is_none());

    s.send(frame(
        Command::Subscribe,
        &[
            ("id", "bad"),
            ("destination", "/queue/colors"),
            ("selector", "color = "),
            ("receipt", "r-bad"),
        ],
    ))
    .await;
    let e = s.expect(Command::Error).await;
    assert_eq!(e.header("error-name"), Some("invalid-selector"));
    assert_eq!(e.header("receipt-id"), Some("r-bad"));
    assert!(s.closed().await);
    b.shutdown().await;
}

#[tokio::test]
async fn receipts_for_every_frame_that_asks() {
    let b = broker().await;
    let mut s = Stomp::connect(&b).await;
    // A persistent SEND is confirmed once stored (the native SendReceipt).
    s.send_text("/queue/r", "p", &[("persistent", "true")])
        .await;
    s.subscribe("r", "/queue/r", "client", &[]).await;
    let m = s.expect(Command::Message).await;
    assert_eq!(m.header("persistent"), Some("true"));
    s.with_receipt(
        frame(Command::Ack, &[("id", m.header("ack").unwrap())]),
        "ack",
    )
    .await;
    s.with_receipt(frame(Command::Unsubscribe, &[("id", "r")]), "unsub")
        .await;
    assert!(s.stash.is_empty());
    // A refused frame's ERROR names its receipt.
    s.send(frame(
        Command::Send,
        &[("destination", "/mailbox/x"), ("receipt", "bad-dest")],
    ))
    .await;
    let e = s.expect(Command::Error).await;
    assert_eq!(e.header("receipt-id"), Some("bad-dest"));
    let text = body(&e);
    assert!(
        text.contains("/queue/NAME, /topic/NAME, /temp-queue/NAME or /temp-topic/NAME"),
        "{text}"
    );
    assert!(s.closed().await);
    b.shutdown().await;
}

#[tokio::test]
async fn topic_fan_out_to_stomp_and_native_subscribers() {
    let b = broker().await;
    let mut a = Stomp::connect(&b).await;
    let mut c = Stomp::connect(&b).await;
    a.subscribe("a", "/topic/news", "auto", &[]).await;
    c.subscribe("c", "/topic/news", "client-individual", &[])
        .await;
    let mut native = Raw::tcp(&b).await;
    native.session(1, AckMode::Auto).await;
    native.consumer(1, 1, &topic("news"), 10).await.unwrap();

    let mut p = Stomp::connect(&b).await;
    p.send_text("/topic/news", "extra", &[]).await;
    assert_eq!(body(&a.expect(Command::Message).await), "extra");
    let m = c.expect(Command::Message).await;
    assert_eq!(body(&m), "extra");
    assert_eq!(m.header("destination"), Some("/topic/news"));
    let d = native.deliver().await;
    assert_eq!(
        Message::decode(d.message).unwrap().text_body(),
        Some("extra")
    );
    b.shutdown().await;
}

#[tokio::test]
async fn malformed_input_gets_error_and_close_while_others_keep_working() {
    let b = broker().await;
    let mut good = Stomp::connect(&b).await;
    good.subscribe("g", "/queue/steady", "auto", &[]).await;
    let mut native = Raw::tcp(&b).await;
    native.session(1, AckMode::Auto).await;
    native.producer(1, 1, None).await;

    let cases: [(&str, &[u8], &str); 6] = [
        (
            "bad content-length",
            b"CONNECT\naccept-version:1.2\n\n\0SEND\ndestination:/queue/x\ncontent-length:abc\n\n\0",
            "content-length",
        ),
        ("not STOMP at all", b"GET / HTTP/1.1\r\n\r\n", "unknown command"),
        (
            "frame before CONNECT",
            b"SEND\ndestination:/queue/x\n\nhi\0",
            "CONNECT",
        ),
        (
            "undefined escape",
            b"CONNECT\naccept-version:1.2\n\n\0SEND\ndestination:/queue/x\nk:\\t\n\n\0",
            "escape",
        ),
        (
            "body on SUBSCRIBE",
            b"CONNECT\naccept-version:1.2\n\n\0SUBSCRIBE\nid:1\ndestination:/queue/x\n\nbody\0",
            "must not have a body",
        ),
        (
            "invalid UTF-8 text",
            b"CONNECT\naccept-version:1.2\n\n\0SEND\ndestination:/queue/x\n\n\xff\xfe\0",
            "UTF-8",
        ),
    ];
    for (what, bytes, says) in cases {
        let mut bad = Stomp::open(&b).await;
        bad.send_raw(bytes).await;
        let mut error = None;
        while let Some(f) = bad.recv_within(GUARD).await {
            if f.command == Command::Error {
                error = Some(f);
                break;
            }
        }
        let e = error.unwrap_or_else(|| panic!("{what}: no ERROR frame"));
        let text = format!("{:?} {}", e.header("message"), body(&e));
        assert!(text.contains(says), "{what}: {text}");
        assert!(bad.closed().await, "{what}: connection stays open");

        // Everyone else is still served.
        good.send_text("/queue/steady", what, &[]).await;
        assert_eq!(body(&good.expect(Command::Message).await), what);
        native
            .send_msg(1, 1 + what.len() as u64, text_msg("native-ok"))
            .await
            .unwrap();
    }
    assert!(
        b.stats()
            .protocol_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    b.shutdown().await;
}

fn text_msg(body: &str) -> Bytes {
    let mut m = Message::text(body);
    m.destination = Some(queue("native-side"));
    m.message_id = Some(format!("ID:{body}"));
    m.encode()
}

#[tokio::test]
async fn stomp_to_native_keeps_headers_and_properties() {
    let b = broker().await;
    let mut native = Raw::tcp(&b).await;
    native.session(1, AckMode::Auto).await;
    native.consumer(1, 1, &queue("interop"), 10).await.unwrap();

    let mut s = Stomp::connect(&b).await;
    let expires = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 3_600_000)
        .to_string();
    s.send_text(
        "/queue/interop",
        "héllo",
        &[
            ("persistent", "true"),
            ("priority", "8"),
            ("expires", &expires),
            ("correlation-id", "corr-1"),
            ("reply-to", "/temp-queue/replies"),
            ("type", "greeting"),
            ("message-id", "ID:from-stomp"),
            ("JMSXGroupID", "g1"),
            ("region", "eu"),
            ("custom-header", "x:y"),
        ],
    )
    .await;
    let d = native.deliver().await;
    let m = Message::decode(d.message).unwrap();
    assert_eq!(m.text_body(), Some("héllo"));
    assert_eq!(m.delivery_mode, DeliveryMode::Persistent);
    assert_eq!(m.priority(), 8);
    assert_eq!(m.expiration.to_string(), expires);
    assert_eq!(m.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(
        m.reply_to,
        Some(Destination::new(DestinationKind::TempQueue, "replies").unwrap())
    );
    assert_eq!(m.jms_type.as_deref(), Some("greeting"));
    assert_eq!(m.message_id.as_deref(), Some("ID:from-stomp"));
    assert_eq!(m.group_id.as_deref(), Some("g1"));
    assert!(m.timestamp > 0);
    assert_eq!(
        m.property("region"),
        Some(PropertyValue::String("eu".into()))
    );
    assert_eq!(
        m.property("JMS_stomp_custom$2Dheader"),
        Some(PropertyValue::String("x:y".into()))
    );

    // A content-length without a text content-type is a BytesMessage, NULs included.
    s.send(
        frame(
            Command::Send,
            &[("destination", "/queue/interop"), ("content-length", "3")],
        )
        .with_body(Bytes::from_static(b"\0\x01\xff")),
    )
    .await;
    let m = Message::decode(native.deliver().await.message).unwrap();
    assert_eq!(m.body, Body::Bytes(Bytes::from_static(b"\0\x01\xff")));
    assert_eq!(
        m.delivery_mode,
        DeliveryMode::NonPersistent,
        "STOMP's default"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn native_to_stomp_keeps_headers_and_properties() {
    let b = broker().await;
    let mut s = Stomp::connect(&b).await;
    s.subscribe("in", "/queue/from-native", "client-individual", &[])
        .await;
    let mut native = Raw::tcp(&b).await;
    native.session(1, AckMode::Auto).await;
    native.producer(1, 1, None).await;

    let mut m = Message::text("from native")
        .with_property("count", 42i32)
        .unwrap()
        .with_property("flag", true)
        .unwrap()
        .with_property("JMS_stomp_custom$2Dheader", "back")
        .unwrap()
        .with_property("priority", "a property, not the header")
        .unwrap();
    m.destination = Some(queue("from-native"));
    m.message_id = Some("ID:native-1".into());
    m.correlation_id = Some("corr-9".into());
    m.reply_to = Some(topic("answers"));
    m.jms_type = Some("t".into());
    m.set_priority(2).unwrap();
    m.timestamp = 1234;
    m.set_property("JMSXGroupID", "grp").unwrap();
    m.set_property("JMSXGroupSeq", 5).unwrap();
    native.send_msg(1, 1, m.encode()).await.unwrap();

    let f = s.expect(Command::Message).await;
    let h = |n: &str| f.header(n).map(str::to_string);
    assert_eq!(body(&f), "from native");
    assert_eq!(h("message-id").as_deref(), Some("ID:native-1"));
    assert_eq!(h("destination").as_deref(), Some("/queue/from-native"));
    assert_eq!(h("persistent").as_deref(), Some("true"), "JMS's default");
    assert_eq!(h("priority").as_deref(), Some("2"));
    assert_eq!(h("timestamp").as_deref(), Some("1234"));
    assert_eq!(h("correlation-id").as_deref(), Some("corr-9"));
    assert_eq!(h("reply-to").as_deref(), Some("/topic/answers"));
    assert_eq!(h("type").as_deref(), Some("t"));
    assert_eq!(h("JMSXGroupID").as_deref(), Some("grp"));
    assert_eq!(h("JMSXGroupSeq").as_deref(), Some("5"));
    assert_eq!(h("count").as_deref(), Some("42"));
    assert_eq!(h("flag").as_deref(), Some("true"));
    assert_eq!(h("custom-header").as_deref(), Some("back"));
    assert_eq!(
        h("JMS_stomp_priority").as_deref(),
        Some("a property, not the header")
    );

    // And a STOMP client forwarding what it got reproduces the original for a native consumer.
    let mut fwd = frame(Command::Send, &[("destination", "/queue/forwarded")]);
    for (n, v) in &f.headers {
        if n != "destination" {
            fwd.headers.push((n.clone(), v.clone()));
        }
    }
    fwd.body = f.body.clone();
    native
        .consumer(1, 2, &queue("forwarded"), 10)
        .await
        .unwrap();
    s.with_receipt(fwd, "fwd").await;
    let back = Message::decode(native.deliver().await.message).unwrap();
    assert_eq!(back.text_body(), Some("from native"));
    assert_eq!(back.correlation_id.as_deref(), Some("corr-9"));
    assert_eq!(back.priority(), 2);
    assert_eq!(back.group_seq, 5);
    assert_eq!(
        back.property("priority"),
        Some(PropertyValue::String("a property, not the header".into()))
    );
    assert_eq!(
        back.property("JMS_stomp_custom$2Dheader"),
        Some(PropertyValue::String("back".into()))
    );
    assert_eq!(
        back.property("count"),
        Some(PropertyValue::String("42".into()))
    );
    b.shutdown().await;
}

#[tokio::test]
async fn transactions_commit_atomically_abort_gives_back_and_unknown_ones_are_refused() {
    let b = broker().await;
    let mut native = Raw::local(&b).await;
    native.session(1, AckMode::Auto).await;
    let q = queue("stomp.tx");
    native.producer(1, 1, Some(&q)).await;
    native.send_msg(1, 1, text(&q, 1, true)).await.unwrap();
    let mut s = Stomp::connect(&b).await;
    s.with_receipt(
        frame(
            Command::Subscribe,
            &[
                ("id", "s"),
                ("destination", "/queue/stomp.tx"),
                ("ack", "client-individual"),
            ],
        ),
        "sub",
    )
    .await;
    let m1 = s.expect(Command::Message).await;
    s.with_receipt(frame(Command::Begin, &[("transaction", "t1")]), "b1")
        .await;
    // Within t1: SEND to another queue and ACK the received message, then COMMIT.
    s.send(
        frame(
            Command::Send,
            &[
                ("destination", "/queue/stomp.tx.out"),
                ("transaction", "t1"),
                ("content-type", "text/plain"),
            ],
        )
        .with_body(Bytes::from_static(b"out")),
    )
    .await;
    s.send(frame(
        Command::Ack,
        &[("id", m1.header("ack").unwrap()), ("transaction", "t1")],
    ))
    .await;
    native
        .consumer(1, 9, &queue("stomp.tx.out"), 10)
        .await
        .unwrap();
    assert!(
        native
            .deliver_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nothing of t1 before COMMIT"
    );
    s.with_receipt(frame(Command::Commit, &[("transaction", "t1")]), "c1")
        .await;
    let out = Message::decode(native.deliver().await.message).unwrap();
    assert_eq!(out.text_body(), Some("out"));
    // The ACK took effect with the commit: nothing comes back when the subscription goes.
    s.with_receipt(frame(Command::Unsubscribe, &[("id", "s")]), "u")
        .await;
    let mut check = Raw::local(&b).await;
    check.session(1, AckMode::Auto).await;
    check.consumer(1, 1, &q, 10).await.unwrap();
    assert!(
        check
            .deliver_within(Duration::from_millis(300))
            .await
            .is_none()
    );

    // ABORT: the SEND is dropped and the ACKed message comes back redelivered.
    native.send_msg(1, 2, text(&q, 2, true)).await.unwrap();
    let d = check.deliver().await;
    assert_eq!(n_of(&d), 2);
    drop(check); // gives message 2 back
    s.with_receipt(
        frame(
            Command::Subscribe,
            &[
                ("id", "s2"),
                ("destination", "/queue/stomp.tx"),
                ("ack", "client-individual"),
            ],
        ),
        "sub2",
    )
    .await;
    let m2 = s.expect(Command::Message).await;
    s.with_receipt(frame(Command::Begin, &[("transaction", "t2")]), "b2")
        .await;
    s.send(
        frame(
            Command::Send,
            &[
                ("destination", "/queue/stomp.tx.out"),
                ("transaction", "t2"),
            ],
        )
        .with_body(Bytes::from_static(b"dropped")),
    )
    .await;
    s.with_receipt(
        frame(
            Command::Ack,
            &[("id", m2.header("ack").unwrap()), ("transaction", "t2")],
        ),
        "a2",
    )
    .await;
    s.with_receipt(frame(Command::Abort, &[("transaction", "t2")]), "ab2")
        .await;
    let again = s.expect(Command::Message).await;
    assert_eq!(again.header("redelivered"), Some("true"));
    assert_eq!(again.header("message-id"), m2.header("message-id"));
    assert!(
        native
            .deliver_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the aborted SEND never arrives"
    );

    // A SEND in a transaction that was never begun is refused, naming it.
    let mut s = Stomp::connect(&b).await;
    s.send(
        frame(
            Command::Send,
            &[("destination", "/queue/x"), ("transaction", "nope")],
        )
        .with_body(Bytes::from_static(b"x")),
    )
    .await;
    let e = s.expect(Command::Error).await;
    assert!(body(&e).contains("\"nope\" is not open"), "{e:?}");
    assert!(s.closed().await);
    b.shutdown().await;
}

#[tokio::test]
async fn durable_subscriptions_pass_through() {
    let b = broker().await;
    // Durable subscriptions pass through to the native ones: the subscription collects what is
    // published while no subscriber is attached, and a new SUBSCRIBE of that name gets it.
    let mut s = Stomp::connect_with(&b, &[("client-id", "durable-client")])
        .await
        .0;
    let keep = [("activemq.subscriptionName", "keep")];
    s.subscribe("d", "/topic/t", "auto", &keep).await;
    assert_eq!(
        b.durable_subscription_pending(Some("durable-client"), "keep"),
        Some(0)
    );
    s.with_receipt(frame(Command::Unsubscribe, &[("id", "d")]), "unsub-d")
        .await;
    let mut p = Stomp::connect(&b).await;
    p.send_text("/topic/t", "kept", &[]).await;
    assert_eq!(
        b.durable_subscription_pending(Some("durable-client"), "keep"),
        Some(1)
    );
    s.subscribe("d2", "/topic/t", "auto", &keep).await;
    assert_eq!(body(&s.expect(Command::Message).await), "kept");

    b.shutdown().await;
}

#[tokio::test]
async fn heart_beats_both_ways() {
    let b = broker_with(BrokerConfig {
        heartbeat_ms: 200,
        ..BrokerConfig::embedded()
    })
    .await;
    // The client wants beats every 200 ms and sends none: the server beats.
    let (mut s, connected) = Stomp::connect_with(&b, &[("heart-beat", "0,200")]).await;
    assert_eq!(connected.header("heart-beat"), Some("200,200"));
    assert!(s.recv_within(Duration::from_millis(1500)).await.is_none());
    assert!(s.heart_beats >= 3, "{} heart-beats", s.heart_beats);
    // Still connected: the server did not expect beats from this client.
    s.send_text("/queue/hb", "alive", &[]).await;

    // A client that promises beats every 100 ms (200 agreed) and goes quiet is cut off.
    let (mut quiet, _) = Stomp::connect_with(&b, &[("heart-beat", "100,0")]).await;
    let started = std::time::Instant::now();
    let e = quiet.expect(Command::Error).await;
    assert_eq!(e.header("message"), Some("heart-beat timeout"));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(quiet.closed().await);

    // One that keeps its promise stays.
    let (mut beating, _) = Stomp::connect_with(&b, &[("heart-beat", "100,0")]).await;
    for _ in 0..10 {
        beating.send_raw(b"\n").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    beating.send_text("/queue/hb", "still here", &[]).await;
    b.shutdown().await;
}

#[tokio::test]
async fn stomp_1_1_acks_by_message_id() {
    let b = broker().await;
    let mut s = Stomp::open(&b).await;
    s.send(frame(Command::Connect, &[("accept-version", "1.0,1.1")]))
        .await;
    assert_eq!(
        s.expect(Command::Connected).await.header("version"),
        Some("1.1")
    );
    s.send_text("/queue/old", "m", &[]).await;
    s.subscribe("o", "/queue/old", "client", &[]).await;
    let m = s.expect(Command::Message).await;
    let id = m.header("message-id").unwrap().to_string();
    s.with_receipt(
        frame(Command::Ack, &[("subscription", "o"), ("message-id", &id)]),
        "a",
    )
    .await;
    assert_eq!(b.queue_snapshot("old").unwrap().inflight, 0);
    b.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_stomp_clients() {
    let b = broker().await;
    let mut s = Stomp::connect(&b).await;
    s.subscribe("x", "/queue/x", "auto", &[]).await;
    let stopping = tokio::spawn(b.shutdown());
    let e = s.expect(Command::Error).await;
    assert_eq!(e.header("error-name"), Some("shutting-down"));
    assert!(s.closed().await);
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_stomp_connection_counts_once_against_the_limit() {
    let b = broker_with(BrokerConfig {
        max_connections: 2,
        ..BrokerConfig::embedded()
    })
    .await;
    let mut first = Stomp::connect(&b).await;
    let _second = Stomp::connect(&b).await;
    let mut third = Stomp::open(&b).await;
    let e = third.expect(Command::Error).await;
    assert_eq!(e.header("error-name"), Some("connection-limit"));
    assert!(third.closed().await);
    // The two admitted ones work.
    first.send_text("/queue/limit", "fine", &[]).await;
    b.shutdown().await;
}

#[tokio::test]
async fn listener_is_off_when_not_configured() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    assert_eq!(b.stomp_addr(), None);
    b.shutdown().await;
}

#[tokio::test]
async fn temporary_destinations_belong_to_the_subscribing_connection() {
    let b = broker().await;
    let mut owner = Stomp::connect(&b).await;
    let mut other = Stomp::connect(&b).await;
    // Nobody created it yet: a send finds nothing.
    let mut f = frame(Command::Send, &[("destination", "/temp-queue/replies")]);
    f.headers.push(("receipt".into(), "early".into()));
    other.send(f).await;
    let e = other.expect(Command::Error).await;
    assert_eq!(
        e.header("error-name"),
        Some("destination-not-found"),
        "{e:?}"
    );
    assert!(other.closed().await);

    owner
        .subscribe("r", "/temp-queue/replies", "auto", &[])
        .await;
    let mut sender = Stomp::connect(&b).await;
    sender.send_text("/temp-queue/replies", "hi", &[]).await;
    assert_eq!(body(&owner.expect(Command::Message).await), "hi");
    // Only its connection may subscribe.
    let mut thief = Stomp::connect(&b).await;
    thief
        .send(frame(
            Command::Subscribe,
            &[("id", "t"), ("destination", "/temp-queue/replies")],
        ))
        .await;
    let e = thief.expect(Command::Error).await;
    assert_eq!(e.header("error-name"), Some("illegal-state"), "{e:?}");
    b.shutdown().await;
}

/// ActiveMQ's STOMP browser convention: `browser:true` on SUBSCRIBE shows the queue's messages, then
/// one MESSAGE with `browser:end`; nothing is consumed and nothing needs an ACK.
#[tokio::test]
async fn a_browser_subscription_shows_messages_then_browser_end_and_consumes_nothing() {
    let b = broker().await;
    let mut s = Stomp::connect(&b).await;
    for body in ["one", "two", "three"] {
        s.send_text("/queue/stomp.browse", body, &[]).await;
    }
    // A window of 2 for 3 messages: the browser's window refills without acks.
    s.subscribe(
        "b",
        "/queue/stomp.browse",
        "client",
        &[("browser", "true"), ("activemq.prefetchSize", "2")],
    )
    .await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let m = s.expect(Command::Message).await;
        assert_eq!(m.header("subscription"), Some("b"));
        bodies.push(body(&m).to_string());
    }
    assert_eq!(bodies, ["one", "two", "three"]);
    let end = s.expect(Command::Message).await;
    assert_eq!(end.header("browser"), Some("end"));
    assert_eq!(end.header("subscription"), Some("b"));
    // Nothing was consumed: a consumer gets all three.
    s.subscribe("c", "/queue/stomp.browse", "auto", &[]).await;
    for want in ["one", "two", "three"] {
        assert_eq!(body(&s.expect(Command::Message).await), want);
    }
    b.shutdown().await;
}
