//! Broker behaviour through raw frames, over the in-process link and over TCP.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::*;
use tandem_broker::{Broker, BrokerConfig};
use tandem_protocol::wire::{self, AckKind, AckMode};
use tandem_protocol::{ErrorCode, Frame};

#[derive(Clone, Copy, Debug)]
enum Via {
    Local,
    Tcp,
}

async fn client(b: &Broker, via: Via) -> Raw {
    match via {
        Via::Local => Raw::local(b).await,
        Via::Tcp => Raw::tcp(b).await,
    }
}

async fn send_receive(via: Via) {
    let b = broker_tcp().await;
    let q = queue("orders");
    let mut p = client(&b, via).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    p.send_msg(1, 1, text(&q, 7, true)).await.unwrap();

    let mut c = client(&b, via).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let d = c.deliver().await;
    assert_eq!(n_of(&d), 7);
    assert!(!d.redelivered);
    assert_eq!(d.delivery_count, 1);
    c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
    // The ack is processed: the queue empties.
    wait_until(|| {
        b.queue_snapshot("orders")
            .is_some_and(|s| s.ready + s.inflight == 0)
    })
    .await;
    b.shutdown().await;
}

#[tokio::test]
async fn send_receive_local() {
    send_receive(Via::Local).await;
}

#[tokio::test]
async fn send_receive_tcp() {
    send_receive(Via::Tcp).await;
}

/// Polls a condition the broker reaches asynchronously; the guard is a failure bound, not a pause.
async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {GUARD:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn competing_consumers(via: Via) {
    const N: u64 = 10_000;
    let b = broker_tcp().await;
    let q = queue("work");
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let mut c = client(&b, via).await;
        c.session(1, AckMode::Auto).await;
        c.consumer(1, 1, &q, 50).await.unwrap();
        consumers.push(c);
    }
    let mut p = client(&b, via).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let producer = tokio::spawn(async move {
        for i in 1..=N {
            p.send(
                wire::Send {
                    producer_id: 1,
                    sequence: i,
                    receipt: false,
                    message: text(&q, i, false),
                }
                .into(),
            )
            .await;
        }
        p
    });
    let mut handles = Vec::new();
    for mut c in consumers {
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            // Each consumer drains until the queue has been idle for a while after all were sent.
            while let Some(d) = c.deliver_within(Duration::from_secs(3)).await {
                got.push(n_of(&d) as u64);
                c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
            }
            got
        }));
    }
    let _p = producer.await.unwrap();
    let mut all = Vec::new();
    let mut per = Vec::new();
    for h in handles {
        let got = h.await.unwrap();
        // Within one consumer, one producer's messages arrive in order.
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "out of order within a consumer"
        );
        per.push(got.len());
        all.extend(got);
    }
    let unique: HashSet<_> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        N as usize,
        "delivered count (per consumer: {per:?})"
    );
    assert_eq!(unique.len(), N as usize, "duplicates");
    assert!(
        per.iter().all(|n| *n > 0),
        "both consumers got work: {per:?}"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn competing_consumers_share_10k_local() {
    competing_consumers(Via::Local).await;
}

#[tokio::test]
async fn competing_consumers_share_10k_tcp() {
    competing_consumers(Via::Tcp).await;
}

async fn topic_fan_out(via: Via) {
    let b = broker_tcp().await;
    let t = topic("news");
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut c = client(&b, via).await;
        c.session(1, AckMode::Auto).await;
        c.consumer(1, 1, &t, 100).await.unwrap();
        subs.push(c);
    }
    let mut p = client(&b, via).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&t)).await;
    for i in 1..=20 {
        p.send_msg(1, i, text(&t, i, false)).await.unwrap();
    }
    for c in &mut subs {
        let mut got = Vec::new();
        for _ in 0..20 {
            let d = c.deliver().await;
            got.push(n_of(&d));
            c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
        }
        assert_eq!(got, (1..=20).collect::<Vec<_>>());
        assert!(
            c.deliver_within(Duration::from_millis(200)).await.is_none(),
            "no extra copies"
        );
    }
    b.shutdown().await;
}

#[tokio::test]
async fn topic_fan_out_to_three_local() {
    topic_fan_out(Via::Local).await;
}

#[tokio::test]
async fn topic_fan_out_to_three_tcp() {
    topic_fan_out(Via::Tcp).await;
}

async fn client_ack_recover(via: Via) {
    let b = broker_tcp().await;
    let q = queue("rq");
    let mut p = client(&b, via).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    for i in 1..=3 {
        p.send_msg(1, i, text(&q, i, true)).await.unwrap();
    }
    let mut c = client(&b, via).await;
    c.session(1, AckMode::Client).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let first: Vec<_> = [c.deliver().await, c.deliver().await, c.deliver().await].into();
    assert!(
        first
            .iter()
            .all(|d| !d.redelivered && d.delivery_count == 1)
    );
    // The application saw the first two; the third was only prefetched.
    c.request(|request_id| {
        wire::Nack {
            session_id: 1,
            request_id,
            consumed: vec![wire::ConsumerPosition {
                consumer_id: 1,
                delivery_id: first[1].delivery_id,
            }],
            delivery_id: 0,
        }
        .into()
    })
    .await
    .unwrap();
    let again: Vec<_> = [c.deliver().await, c.deliver().await, c.deliver().await].into();
    assert_eq!(
        again.iter().map(n_of).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "original order"
    );
    assert!(again[0].redelivered && again[0].delivery_count == 2);
    assert!(again[1].redelivered && again[1].delivery_count == 2);
    assert!(
        !again[2].redelivered && again[2].delivery_count == 1,
        "unseen one comes back unchanged"
    );
    // Client ack: cumulative for the consumer acknowledges all three.
    c.ack(1, 1, again[2].delivery_id, AckKind::Cumulative).await;
    wait_until(|| {
        b.queue_snapshot("rq")
            .is_some_and(|s| s.ready + s.inflight == 0)
    })
    .await;
    b.shutdown().await;
}

#[tokio::test]
async fn client_ack_recover_local() {
    client_ack_recover(Via::Local).await;
}

#[tokio::test]
async fn client_ack_recover_tcp() {
    client_ack_recover(Via::Tcp).await;
}

async fn prefetch_window(via: Via) {
    let b = broker_tcp().await;
    let q = queue("pf");
    let mut p = client(&b, via).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    for i in 1..=30 {
        p.send_msg(1, i, text(&q, i, false)).await.unwrap();
    }
    let mut c = client(&b, via).await;
    c.session(1, AckMode::Client).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(c.deliver().await);
    }
    assert!(
        c.deliver_within(Duration::from_millis(300)).await.is_none(),
        "an 11th unacked delivery"
    );
    let snap = b.queue_snapshot("pf").unwrap();
    assert_eq!((snap.inflight, snap.ready), (10, 20));
    // Acking three opens the window by three, no more.
    c.ack(1, 1, held[2].delivery_id, AckKind::Cumulative).await;
    for _ in 0..3 {
        held.push(c.deliver().await);
    }
    assert!(
        c.deliver_within(Duration::from_millis(300)).await.is_none(),
        "window exceeded after ack"
    );
    // One-off credit lets exactly one more through.
    c.send(
        wire::Flow {
            consumer_id: 1,
            credit: 1,
        }
        .into(),
    )
    .await;
    assert!(c.deliver().await.delivery_id > 0);
    assert!(c.deliver_within(Duration::from_millis(300)).await.is_none());
    b.shutdown().await;
}

#[tokio::test]
async fn prefetch_ten_never_more_than_ten_unacked_local() {
    prefetch_window(Via::Local).await;
}

#[tokio::test]
async fn prefetch_ten_never_more_than_ten_unacked_tcp() {
    prefetch_window(Via::Tcp).await;
}

async fn full_destination(via: Via) {
    let config = BrokerConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        destination_memory_limit: 4096,
        max_message_size: 1024,
        producer_block_timeout_ms: 200,
        ..BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let q = queue("small");
    let mut p = client(&b, via).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let mut seq = 0;
    let err = loop {
        seq += 1;
        assert!(seq < 100, "the budget never filled");
        if let Err(e) = p.send_msg(1, seq, padded(&q, seq, 500)).await {
            break e;
        }
    };
    assert_eq!(err.0, ErrorCode::DestinationFull);
    assert!(
        err.1.contains("queue://small is full") && err.1.contains("waited 200 ms"),
        "{}",
        err.1
    );
    // A consumer frees room; the producer's next send succeeds.
    let mut c = client(&b, via).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &q, 100).await.unwrap();
    let d = c.deliver().await;
    c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
    p.send_msg(1, seq + 1, padded(&q, seq + 1, 500))
        .await
        .unwrap();
    b.shutdown().await;
}

fn padded(dest: &tandem_protocol::model::Destination, n: u64, size: usize) -> bytes::Bytes {
    let mut m = tandem_protocol::model::Message::text("x".repeat(size))
        .with_property("n", n as i64)
        .unwrap();
    m.destination = Some(dest.clone());
    m.encode()
}

#[tokio::test]
async fn producer_on_full_destination_gets_clear_error_local() {
    full_destination(Via::Local).await;
}

#[tokio::test]
async fn producer_on_full_destination_gets_clear_error_tcp() {
    full_destination(Via::Tcp).await;
}

#[tokio::test]
async fn blocked_producer_resumes_when_room_appears() {
    let config = BrokerConfig {
        destination_memory_limit: 4096,
        max_message_size: 1024,
        producer_block_timeout_ms: 20_000,
        ..BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let q = queue("small");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let mut seq = 0;
    while b
        .queue_snapshot("small")
        .is_none_or(|s| s.memory + 200 <= 4096)
    {
        seq += 1;
        p.send_msg(1, seq, text(&q, seq, true)).await.unwrap();
    }
    // The next send blocks; a consumer's ack releases it well before the 20 s timeout.
    let blocked = tokio::spawn(async move {
        let r = p.send_msg(1, seq + 1, text(&q, seq + 1, true)).await;
        (p, r)
    });
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &queue("small"), 100).await.unwrap();
    let d = c.deliver().await;
    c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
    let (_p, r) = blocked.await.unwrap();
    r.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn priority_order_and_fifo_within_priority() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("prio");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    for (i, prio) in [(1u64, 1u8), (2, 9), (3, 4), (4, 9), (5, 1)] {
        let mut m = tandem_protocol::model::Message::text("x")
            .with_property("n", i as i64)
            .unwrap();
        m.destination = Some(q.clone());
        m.set_priority(prio).unwrap();
        p.send_msg(1, i, m.encode()).await.unwrap();
    }
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(n_of(&c.deliver().await));
    }
    assert_eq!(got, vec![2, 4, 3, 1, 5]);
    b.shutdown().await;
}

#[tokio::test]
async fn consumer_close_returns_unseen_prefetched_messages_unchanged() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("cc");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    for i in 1..=4 {
        p.send_msg(1, i, text(&q, i, true)).await.unwrap();
    }
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Client).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let ds: Vec<_> = [
        c.deliver().await,
        c.deliver().await,
        c.deliver().await,
        c.deliver().await,
    ]
    .into();
    // Seen: the first; the rest only prefetched. Closing the consumer returns the rest unchanged.
    c.request(|request_id| {
        wire::ConsumerClose {
            request_id,
            consumer_id: 1,
            last_consumed: ds[0].delivery_id,
        }
        .into()
    })
    .await
    .unwrap();
    c.consumer(1, 2, &q, 10).await.unwrap();
    let again: Vec<_> = [c.deliver().await, c.deliver().await, c.deliver().await].into();
    assert_eq!(again.iter().map(n_of).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert!(
        again
            .iter()
            .all(|d| !d.redelivered && d.delivery_count == 1)
    );
    // The seen one stays with the session; closing the connection returns it flagged.
    drop(c);
    let mut c2 = Raw::local(&b).await;
    c2.session(1, AckMode::Auto).await;
    c2.consumer(1, 1, &q, 10).await.unwrap();
    let mut back: Vec<_> = Vec::new();
    for _ in 0..4 {
        back.push(c2.deliver().await);
    }
    let first = back
        .iter()
        .find(|d| n_of(d) == 1)
        .expect("message 1 comes back");
    assert!(first.redelivered && first.delivery_count == 2);
    b.shutdown().await;
}

#[tokio::test]
async fn requests_on_unknown_ids_get_errors_and_the_connection_stays_usable() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let mut c = Raw::local(&b).await;
    let e = c.consumer(9, 1, &queue("q"), 1).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::UnknownSession);
    c.session(1, AckMode::Auto).await;
    let e = c
        .request(|request_id| {
            wire::SessionOpen {
                request_id,
                session_id: 1,
                ack_mode: 0,
            }
            .into()
        })
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::IllegalState);
    let e = c
        .request(|request_id| {
            wire::SessionOpen {
                request_id,
                session_id: 2,
                ack_mode: 99,
            }
            .into()
        })
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::IllegalState, "an unknown ack mode");
    let e = c
        .send_msg(5, 1, text(&queue("q"), 1, true))
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::UnknownProducer);
    c.producer(1, 1, None).await;
    // An anonymous producer: the destination comes from the message.
    c.send_msg(1, 1, text(&queue("q"), 1, true)).await.unwrap();
    let mut bad = tandem_protocol::model::Message::text("x");
    bad.destination = None;
    let e = c.send_msg(1, 2, bad.encode()).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::InvalidDestination);
    b.shutdown().await;
}

#[tokio::test]
async fn auto_create_off_refuses_unknown_destinations() {
    let config = BrokerConfig {
        auto_create: false,
        queues: vec!["known".into()],
        ..BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    let e = c
        .request(|request_id| {
            wire::ProducerOpen {
                request_id,
                session_id: 1,
                producer_id: 1,
                producer_name: "p".into(),
                destination: Some(queue("unknown").to_wire()),
            }
            .into()
        })
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::DestinationNotFound);
    c.producer(1, 2, Some(&queue("known"))).await;
    c.send_msg(2, 1, text(&queue("known"), 1, true))
        .await
        .unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn duplicate_client_id_is_refused() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let _a = Raw::handshake(Transport::Local(b.connect_local().unwrap()), "app-1").await;
    let mut second = Raw::unconnected(Transport::Local(b.connect_local().unwrap()));
    second.send(connect("app-1", 0)).await;
    match second.recv().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::ClientIdInUse.code()),
        other => panic!("{other:?}"),
    }
    b.shutdown().await;
}

#[tokio::test]
async fn connection_limit_refuses_with_a_code() {
    let config = BrokerConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        max_connections: 2,
        ..BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let _a = Raw::tcp(&b).await;
    let _c = Raw::local(&b).await;
    assert!(b.connect_local().is_err());
    let sock = tokio::net::TcpStream::connect(b.local_addr().unwrap())
        .await
        .unwrap();
    let mut r = Raw::unconnected(Transport::Tcp(tokio_util::codec::Framed::new(
        sock,
        tandem_protocol::FrameCodec::default(),
    )));
    match r.recv().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::ConnectionLimit.code()),
        other => panic!("{other:?}"),
    }
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_sent_and_silence_closes_the_connection() {
    let config = BrokerConfig {
        heartbeat_ms: 1000,
        ..BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let mut r = Raw::unconnected(Transport::Local(b.connect_local().unwrap()));
    r.send(connect("", 1000)).await;
    let Some(Frame::Connected(c)) = r.recv().await else {
        panic!("not connected")
    };
    assert_eq!(c.heartbeat_ms, 1000);
    let mut pings = 0;
    let close = loop {
        match r.recv().await {
            Some(Frame::Ping(_)) => pings += 1,
            Some(Frame::Close(c)) => break c,
            other => panic!("{other:?}"),
        }
    };
    assert!(pings >= 2, "pings before the close: {pings}");
    assert_eq!(close.code, ErrorCode::IdleTimeout.code());
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_talking_client_is_not_timed_out_and_pings_are_answered() {
    let config = BrokerConfig {
        heartbeat_ms: 1000,
        ..BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let mut r = Raw::unconnected(Transport::Local(b.connect_local().unwrap()));
    r.send(connect("", 1000)).await;
    let Some(Frame::Connected(_)) = r.recv().await else {
        panic!("not connected")
    };
    for nonce in 0..10 {
        // Answer the server's pings and ping it: 10 s of talk at a 1 s heartbeat, no close.
        match r.recv().await {
            Some(Frame::Ping(p)) => r.send(wire::Pong { nonce: p.nonce }.into()).await,
            other => panic!("{other:?}"),
        }
        r.send(wire::Ping { nonce }.into()).await;
        match r.recv().await {
            Some(Frame::Pong(p)) => assert_eq!(p.nonce, nonce),
            other => panic!("{other:?}"),
        }
    }
    b.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_clients_and_completes() {
    let b = broker_tcp().await;
    let mut t = Raw::tcp(&b).await;
    let mut l = Raw::local(&b).await;
    b.shutdown().await;
    for r in [&mut t, &mut l] {
        match r.recv().await {
            Some(Frame::Close(c)) => assert_eq!(c.code, ErrorCode::ShuttingDown.code()),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn health_and_metrics_over_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = broker_tcp().await;
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&queue("m.q"))).await;
    p.send_msg(1, 1, text(&queue("m.q"), 1, true))
        .await
        .unwrap();
    let get = |path: &'static str| {
        let addr = b.http_addr().unwrap();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let h = get("/health").await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(
        h.contains("\"state\":\"active\"") && h.contains("\"version\""),
        "{h}"
    );
    let m = get("/metrics").await;
    assert!(m.contains("tandem_connections 1"), "{m}");
    assert!(
        m.contains("tandem_destination_depth{kind=\"queue\",name=\"m.q\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tandem_destination_enqueued_total{kind=\"queue\",name=\"m.q\"} 1"),
        "{m}"
    );
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    b.shutdown().await;
}

async fn consumer_with_selector(
    c: &mut Raw,
    consumer_id: u64,
    dest: &tandem_protocol::model::Destination,
    selector: &str,
) -> Result<(), (ErrorCode, String)> {
    c.request(|request_id| {
        wire::ConsumerOpen {
            request_id,
            session_id: 1,
            consumer_id,
            destination: Some(dest.to_wire()),
            selector: selector.into(),
            prefetch: 100,
            ..Default::default()
        }
        .into()
    })
    .await
}

#[tokio::test]
async fn selectors_on_queue_consumers_and_topic_subscriptions() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("sel");
    let t = topic("sel.t");
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    let e = consumer_with_selector(&mut c, 1, &q, "n >")
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::InvalidSelector);
    assert!(e.1.contains("n >"), "{}", e.1);
    // Odd and even consumers compete on one queue; a topic subscriber takes only n > 8.
    consumer_with_selector(&mut c, 2, &q, "n / 2 * 2 = n")
        .await
        .unwrap();
    let mut odd = Raw::local(&b).await;
    odd.session(1, AckMode::Auto).await;
    consumer_with_selector(&mut odd, 1, &q, "n / 2 * 2 <> n AND JMSPriority = 4")
        .await
        .unwrap();
    let mut sub = Raw::local(&b).await;
    sub.session(1, AckMode::Auto).await;
    consumer_with_selector(&mut sub, 1, &t, "n > 8 AND JMSDeliveryMode = 'PERSISTENT'")
        .await
        .unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, None).await;
    for i in 1..=10 {
        p.send_msg(1, i, text(&q, i, true)).await.unwrap();
        p.send_msg(1, 100 + i, text(&t, i, true)).await.unwrap();
    }
    let mut evens = Vec::new();
    let mut odds = Vec::new();
    for _ in 0..5 {
        evens.push(n_of(&c.deliver().await));
        odds.push(n_of(&odd.deliver().await));
    }
    assert_eq!(evens, vec![2, 4, 6, 8, 10]);
    assert_eq!(odds, vec![1, 3, 5, 7, 9]);
    assert_eq!(
        vec![n_of(&sub.deliver().await), n_of(&sub.deliver().await)],
        vec![9, 10]
    );
    assert!(
        sub.deliver_within(Duration::from_millis(200))
            .await
            .is_none()
    );
    b.shutdown().await;
}

/// Consumer ids are per connection: two connections may both use consumer 1 on one queue. An ack
/// on one must open that consumer's window, not the other's.
#[tokio::test]
async fn same_consumer_id_on_two_connections_keeps_windows_apart() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("shared.ids");
    let mut a = Raw::local(&b).await;
    a.session(1, AckMode::Client).await;
    a.consumer(1, 1, &q, 1).await.unwrap();
    let mut bb = Raw::local(&b).await;
    bb.session(1, AckMode::Client).await;
    bb.consumer(1, 1, &q, 1).await.unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    for i in 1..=2 {
        p.send_msg(1, i, text(&q, i, true)).await.unwrap();
    }
    let da = a.deliver().await;
    let db = bb.deliver().await;
    assert_eq!((n_of(&da), n_of(&db)), (1, 2));
    // Only bb acknowledges; the third message must go to bb, whose window opened.
    bb.ack(1, 1, db.delivery_id, AckKind::Individual).await;
    p.send_msg(1, 3, text(&q, 3, true)).await.unwrap();
    assert_eq!(n_of(&bb.deliver().await), 3);
    assert!(
        a.deliver_within(Duration::from_millis(200)).await.is_none(),
        "a's window is full"
    );
    // Closing bb's consumer must not detach a's.
    bb.request(|request_id| {
        wire::ConsumerClose {
            request_id,
            consumer_id: 1,
            last_consumed: 0,
        }
        .into()
    })
    .await
    .unwrap();
    a.ack(1, 1, da.delivery_id, AckKind::Individual).await;
    assert_eq!(
        n_of(&a.deliver().await),
        3,
        "message 3 returned by bb's close goes to a"
    );
    b.shutdown().await;
}

fn grouped(dest: &tandem_protocol::model::Destination, n: u64, group: &str) -> bytes::Bytes {
    let mut m = tandem_protocol::model::Message::text("g")
        .with_property("n", n as i64)
        .unwrap()
        .with_property("JMSXGroupID", group)
        .unwrap();
    m.destination = Some(dest.clone());
    m.encode()
}

/// JMSXGroupID pins a group to one consumer (order within the group holds across competing
/// consumers); when that consumer closes, the group moves to another one.
#[tokio::test]
async fn message_groups_stick_to_one_consumer_and_move_when_it_closes() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("grouped");
    let mut c1 = Raw::local(&b).await;
    c1.session(1, AckMode::Auto).await;
    c1.consumer(1, 1, &q, 100).await.unwrap();
    let mut c2 = Raw::local(&b).await;
    c2.session(1, AckMode::Auto).await;
    c2.consumer(1, 1, &q, 100).await.unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    // A A B B A A B B ...: plain round-robin would split each group across both consumers.
    let group_of = |n: i64| if ((n - 1) / 2) % 2 == 0 { "A" } else { "B" };
    for i in 1..=20u64 {
        p.send_msg(1, i, grouped(&q, i, group_of(i as i64)))
            .await
            .unwrap();
    }
    let mut got = [Vec::new(), Vec::new()];
    for (k, c) in [&mut c1, &mut c2].into_iter().enumerate() {
        while let Some(d) = c.deliver_within(Duration::from_millis(300)).await {
            got[k].push(n_of(&d));
            c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
        }
    }
    let parity = |v: &Vec<i64>| {
        v.iter()
            .map(|n| group_of(*n))
            .collect::<std::collections::HashSet<_>>()
    };
    assert_eq!(got[0].len() + got[1].len(), 20);
    assert_eq!(parity(&got[0]).len(), 1, "one group per consumer: {got:?}");
    assert_eq!(parity(&got[1]).len(), 1, "one group per consumer: {got:?}");
    assert!(
        got.iter().all(|v| v.windows(2).all(|w| w[0] < w[1])),
        "in order within the group"
    );
    // The owner of group A closes; group A moves to the other consumer.
    let odd_owner = if group_of(got[0][0]) == "A" { 0 } else { 1 };
    let (owner, other) = if odd_owner == 0 {
        (&mut c1, &mut c2)
    } else {
        (&mut c2, &mut c1)
    };
    owner
        .request(|request_id| {
            wire::ConsumerClose {
                request_id,
                consumer_id: 1,
                last_consumed: u64::MAX,
            }
            .into()
        })
        .await
        .unwrap();
    p.send_msg(1, 21, grouped(&q, 21, "A")).await.unwrap();
    assert_eq!(n_of(&other.deliver().await), 21);
    b.shutdown().await;
}

/// Flow credit goes to the consumer that asked, even when another connection uses the same
/// consumer id on the same queue (queues know consumers by a broker-wide key).
#[tokio::test]
async fn pull_credit_reaches_the_consumer_that_asked_not_a_namesake() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("pull.namesakes");
    let mut a = Raw::local(&b).await;
    a.session(1, AckMode::Auto).await;
    a.consumer(1, 1, &q, 0).await.unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &q, 0).await.unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    p.send_msg(1, 1, text(&q, 1, false)).await.unwrap();
    c.send(
        wire::Flow {
            consumer_id: 1,
            credit: 1,
        }
        .into(),
    )
    .await;
    let d = c
        .deliver_within(Duration::from_secs(5))
        .await
        .expect("the consumer that pulled gets the message");
    assert_eq!(n_of(&d), 1);
    assert!(
        a.deliver_within(Duration::from_millis(200)).await.is_none(),
        "the namesake on the other connection asked for nothing"
    );
    b.shutdown().await;
}

/// A browser's selector may skip far more messages than one scan examines (the queue's lock is held
/// for bounded scans): it still finds what lies beyond, then ends with BrowseDone.
#[tokio::test]
async fn a_browser_finds_a_match_beyond_many_scans_of_non_matches() {
    let b = Broker::start(BrokerConfig::embedded()).await.unwrap();
    let q = queue("browse.deep");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let skipped = 2 * tandem_broker::queue::BROWSE_SCAN_LIMIT as u64 + 10;
    for i in 1..=skipped + 1 {
        p.send_msg(1, i, text(&q, i, false)).await.unwrap();
    }
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.request(|request_id| {
        wire::ConsumerOpen {
            request_id,
            session_id: 1,
            consumer_id: 1,
            destination: Some(q.to_wire()),
            selector: format!("n = {}", skipped + 1),
            prefetch: 10,
            browser: true,
            ..Default::default()
        }
        .into()
    })
    .await
    .unwrap();
    let d = c.deliver().await;
    assert_eq!(n_of(&d), (skipped + 1) as i64);
    loop {
        match c.recv().await.expect("connection open") {
            Frame::BrowseDone(done) => {
                assert_eq!(done.consumer_id, 1);
                break;
            }
            Frame::Deliver(d) => panic!("only one message matches, got {}", n_of(&d)),
            _ => {}
        }
    }
    b.shutdown().await;
}
