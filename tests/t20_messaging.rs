//! Core messaging through the client library, twice over: against the real `tandem run` binary
//! over TCP, and against an embedded broker through the in-process connection.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use support::*;
use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{
    AckMode, ConnectionFactory, DeliveryMode, Destination, Error, ErrorCode, Message,
};

enum Target {
    Process(BrokerProcess),
    Embedded(Broker),
}

impl Target {
    /// A broker of the given kind; `toml` holds extra configuration.
    fn start(embedded: bool, toml: &str) -> Target {
        if embedded {
            let mut config: BrokerConfig = toml::from_str(toml).unwrap();
            config.listen = None;
            config.http = None;
            config.stomp = None;
            // In memory: a journal under the default ./data would be shared between runs.
            config.persistence = false;
            let rt = tokio::runtime::Handle::current();
            let b = tokio::task::block_in_place(|| rt.block_on(Broker::start(config))).unwrap();
            Target::Embedded(b)
        } else {
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("tandem.toml");
            std::fs::write(&cfg, toml).unwrap();
            let p = BrokerProcess::start(&["--config", cfg.to_str().unwrap()]);
            drop(dir);
            Target::Process(p)
        }
    }

    fn factory(&self) -> ConnectionFactory {
        match self {
            Target::Process(p) => ConnectionFactory::new(&p.url()).unwrap(),
            Target::Embedded(b) => ConnectionFactory::in_process(Arc::new(b.connector())),
        }
    }

    async fn stop(self) {
        match self {
            Target::Process(p) => {
                p.terminate();
            }
            Target::Embedded(b) => b.shutdown().await,
        }
    }
}

fn text(body: &str, n: i64) -> Message {
    Message::text(body).with_property("n", n).unwrap()
}

fn n_of(m: &Message) -> i64 {
    m.property("n").unwrap().to_long().unwrap()
}

async fn send_receive(embedded: bool) {
    let t = Target::start(embedded, "");
    let c = t.factory().connect().await.unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let q = Destination::queue("orders").unwrap();
    let mut p = s.create_producer(Some(&q)).await.unwrap();
    let id = p
        .send(text("hello", 1).with_property("region", "eu").unwrap())
        .await
        .unwrap();
    assert!(id.starts_with("ID:"), "{id}");
    let mut consumer = s.create_consumer(&q, None).await.unwrap();
    c.start();
    let m = consumer
        .receive(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(m.text_body(), Some("hello"));
    assert_eq!(m.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(m.destination.as_ref(), Some(&q));
    assert_eq!(m.property("region").unwrap().to_string_value(), "eu");
    assert!(!m.redelivered);
    assert_eq!(m.delivery_count, 1);
    assert!(m.timestamp > 0);
    assert!(
        consumer
            .receive(Duration::from_millis(200))
            .await
            .unwrap()
            .is_none()
    );
    c.close().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_tcp() {
    send_receive(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_receive_in_process() {
    send_receive(true).await;
}

async fn competing_consumers(embedded: bool) {
    const N: i64 = 10_000;
    let t = Target::start(embedded, "");
    let q = Destination::queue("work").unwrap();
    let f = t.factory();
    let mut handles = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let c = f.connect().await.unwrap();
        let s = c.create_session(AckMode::Auto).await.unwrap();
        let mut consumer = s.consumer(&q).prefetch(100).build().await.unwrap();
        c.start();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            // Drain until nothing has come for a while after every message was sent.
            while let Ok(Some(m)) = consumer.receive(Duration::from_secs(3)).await {
                got.push(n_of(&m));
            }
            (got, s)
        }));
        conns.push(c);
    }
    let pc = f.connect().await.unwrap();
    let ps = pc.create_session(AckMode::Auto).await.unwrap();
    let mut p = ps.create_producer(Some(&q)).await.unwrap();
    p.set_delivery_mode(DeliveryMode::NonPersistent);
    for i in 1..=N {
        p.send(text("w", i)).await.unwrap();
    }
    let mut all = Vec::new();
    let mut per = Vec::new();
    for h in handles {
        let (got, _s) = h.await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one producer's order holds per consumer"
        );
        per.push(got.len());
        all.extend(got);
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(
        all.len(),
        N as usize,
        "every message delivered once (per consumer {per:?})"
    );
    assert_eq!(unique.len(), N as usize, "no duplicates");
    assert!(
        per.iter().all(|n| *n > 0),
        "both consumers shared the work: {per:?}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_competing_consumers_share_10k_tcp() {
    competing_consumers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_competing_consumers_share_10k_in_process() {
    competing_consumers(true).await;
}

async fn topic_fan_out(embedded: bool) {
    let t = Target::start(embedded, "");
    let topic = Destination::topic("prices").unwrap();
    let f = t.factory();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let c = f.connect().await.unwrap();
        let s = c.create_session(AckMode::Auto).await.unwrap();
        let consumer = s.create_consumer(&topic, None).await.unwrap();
        c.start();
        subs.push((c, s, consumer));
    }
    let pc = f.connect().await.unwrap();
    let ps = pc.create_session(AckMode::Auto).await.unwrap();
    let mut p = ps.create_producer(Some(&topic)).await.unwrap();
    for i in 1..=50 {
        p.send(text("tick", i)).await.unwrap();
    }
    for (_, _, consumer) in &mut subs {
        let got: Vec<i64> = consumer.take(50).map(|r| n_of(&r.unwrap())).collect().await;
        assert_eq!(
            got,
            (1..=50).collect::<Vec<_>>(),
            "every subscriber gets every message in order"
        );
        assert!(
            consumer
                .receive(Duration::from_millis(200))
                .await
                .unwrap()
                .is_none()
        );
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_fan_out_to_three_subscribers_tcp() {
    topic_fan_out(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_fan_out_to_three_subscribers_in_process() {
    topic_fan_out(true).await;
}

async fn client_ack_recover(embedded: bool) {
    let t = Target::start(embedded, "");
    let q = Destination::queue("recover").unwrap();
    let c = t.factory().connect().await.unwrap();
    let s = c.create_session(AckMode::Client).await.unwrap();
    let mut p = s.create_producer(Some(&q)).await.unwrap();
    p.send(text("a", 1)).await.unwrap();
    p.send(text("b", 2)).await.unwrap();
    let mut consumer = s.create_consumer(&q, None).await.unwrap();
    c.start();
    let first = consumer
        .receive(Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (n_of(&first), first.redelivered, first.delivery_count),
        (1, false, 1)
    );
    s.recover().await.unwrap();
    let again = consumer
        .receive(Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        n_of(&again),
        1,
        "recover restarts with the oldest unacknowledged message"
    );
    assert!(again.redelivered, "JMSRedelivered after recover");
    assert_eq!(again.delivery_count, 2, "JMSXDeliveryCount after recover");
    let second = consumer
        .receive(Duration::from_secs(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n_of(&second), 2);
    assert_eq!(
        second.delivery_count, 1,
        "message 2 was only prefetched, never seen, before recover"
    );
    // Client ack acknowledges both; a new session sees nothing.
    second.ack().await.unwrap();
    let c2 = t.factory().connect().await.unwrap();
    let s2 = c2.create_session(AckMode::Auto).await.unwrap();
    let mut consumer2 = s2.create_consumer(&q, None).await.unwrap();
    c2.start();
    assert!(
        consumer2
            .receive(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    c2.close().await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ack_and_recover_redeliver_with_count_two_tcp() {
    client_ack_recover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ack_and_recover_redeliver_with_count_two_in_process() {
    client_ack_recover(true).await;
}

async fn prefetch_ten(embedded: bool) {
    let t = Target::start(embedded, "");
    let q = Destination::queue("window").unwrap();
    let f = t.factory();
    let pc = f.connect().await.unwrap();
    let ps = pc.create_session(AckMode::Auto).await.unwrap();
    let mut p = ps.create_producer(Some(&q)).await.unwrap();
    for i in 1..=30 {
        p.send(text("x", i)).await.unwrap();
    }
    let c = f.connect().await.unwrap();
    let s = c.create_session(AckMode::Client).await.unwrap();
    let mut consumer = s.consumer(&q).prefetch(10).build().await.unwrap();
    c.start();
    let mut held = Vec::new();
    while let Some(m) = consumer.receive(Duration::from_millis(500)).await.unwrap() {
        held.push(m);
        assert!(
            held.len() <= 10,
            "more than 10 unacknowledged messages reached the consumer"
        );
    }
    assert_eq!(held.len(), 10);
    // The broker agrees: 10 in flight, 20 waiting.
    match &t {
        Target::Process(proc_) => {
            let (_, metrics) = http_get(proc_.http, "/metrics");
            assert!(
                metrics.contains("tandem_destination_inflight{kind=\"queue\",name=\"window\"} 10"),
                "{metrics}"
            );
        }
        Target::Embedded(b) => {
            let snap = b.queue_snapshot("window").unwrap();
            assert_eq!((snap.inflight, snap.ready), (10, 20));
        }
    }
    // Acknowledging (client mode: all ten) opens the window by ten, no more.
    held.last().unwrap().ack().await.unwrap();
    let mut next = Vec::new();
    while let Some(m) = consumer.receive(Duration::from_millis(500)).await.unwrap() {
        next.push(n_of(&m));
        assert!(
            next.len() <= 10,
            "more than 10 unacknowledged after the ack"
        );
    }
    assert_eq!(next, (11..=20).collect::<Vec<_>>());
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_ten_never_holds_more_than_ten_unacked_tcp() {
    prefetch_ten(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_ten_never_holds_more_than_ten_unacked_in_process() {
    prefetch_ten(true).await;
}

async fn full_destination(embedded: bool) {
    let t = Target::start(
        embedded,
        // `block`: the process target journals, and the default policy (`page`) would page
        // these persistent sends instead of refusing them.
        "destination_memory_limit = 8192\nmax_message_size = 2048\nproducer_block_timeout_ms = 300\n\
         [[address_settings]]\nmatch = \"tiny\"\nfull_policy = \"block\"\n",
    );
    let q = Destination::queue("tiny").unwrap();
    let c = t.factory().connect().await.unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let mut p = s.create_producer(Some(&q)).await.unwrap();
    let mut sent = 0;
    let err = loop {
        sent += 1;
        assert!(sent < 100, "the 8 KiB budget never filled");
        match p.send(text(&"x".repeat(1000), sent)).await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    match &err {
        Error::Broker { code, message } => {
            assert_eq!(*code, ErrorCode::DestinationFull);
            assert!(
                message.contains("queue://tiny is full") && message.contains("300 ms"),
                "{message}"
            );
        }
        other => panic!("expected DestinationFull, got {other:?}"),
    }
    // Consuming makes room; sending works again.
    let mut consumer = s.create_consumer(&q, None).await.unwrap();
    c.start();
    for _ in 0..3 {
        consumer
            .receive(Duration::from_secs(20))
            .await
            .unwrap()
            .unwrap();
    }
    p.send(text("after", 1000)).await.unwrap();
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_on_full_destination_gets_the_clear_error_tcp() {
    full_destination(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_on_full_destination_gets_the_clear_error_in_process() {
    full_destination(true).await;
}
