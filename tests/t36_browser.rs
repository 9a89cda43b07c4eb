//! Queue browsers (Jakarta Messaging 3.1 §4.1.5 / `QueueBrowser`): each rule one assertion, through
//! the client library against the real binary over TCP and an embedded broker.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{AckMode, ConnectionFactory, Destination, Error, Message};

fn msg(n: i64, color: &str) -> Message {
    Message::text(format!("m{n}"))
        .with_property("n", n)
        .unwrap()
        .with_property("color", color)
        .unwrap()
}

fn n_of(m: &Message) -> i64 {
    m.property("n").unwrap().to_long().unwrap()
}

async fn browse_all(
    s: &tandem_client::Session,
    q: &Destination,
    selector: Option<&str>,
    prefetch: u32,
) -> Vec<i64> {
    let mut b = s.consumer(q).browser().prefetch(prefetch);
    if let Some(sel) = selector {
        b = b.selector(sel);
    }
    let mut browser = b.build().await.unwrap();
    let mut seen = Vec::new();
    // The end of the browse is an immediate None, not a timeout: the guard only catches a hang.
    while let Some(m) = browser.receive(GUARD).await.unwrap() {
        seen.push(n_of(m.message()));
    }
    browser.close().await.unwrap();
    seen
}

async fn rules(factory: ConnectionFactory) {
    let conn = factory.connect().await.unwrap();
    conn.start();
    let s = conn.create_session(AckMode::Auto).await.unwrap();
    let q = Destination::queue("browse.rules").unwrap();

    // Rule: browsing an empty queue ends at once with nothing.
    let started = std::time::Instant::now();
    assert!(browse_all(&s, &q, None, 10).await.is_empty());
    assert!(
        started.elapsed() < GUARD,
        "the end of a browse is reported, not timed out"
    );

    let mut p = s.create_producer(Some(&q)).await.unwrap();
    for (n, color, prio) in [
        (1, "red", 4u8),
        (2, "blue", 4),
        (3, "red", 9),
        (4, "red", 4),
        (5, "blue", 0),
    ] {
        p.set_priority(prio).unwrap();
        p.send(msg(n, color)).await.unwrap();
    }
    // Rule: a browser sees the queue's messages in the order consumers would get them (priority
    // high to low, FIFO within one), with a window smaller than the queue and with none (pull).
    assert_eq!(browse_all(&s, &q, None, 2).await, vec![3, 1, 2, 4, 5]);
    assert_eq!(browse_all(&s, &q, None, 0).await, vec![3, 1, 2, 4, 5]);
    // Rule: a browser's selector filters what it sees.
    assert_eq!(
        browse_all(&s, &q, Some("color = 'red'"), 10).await,
        vec![3, 1, 4]
    );
    // Rule: browsing consumes nothing: a consumer still gets every message, once.
    let mut c = s.create_consumer(&q, None).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = c.receive(Duration::from_millis(500)).await.unwrap() {
        got.push(n_of(m.message()));
    }
    assert_eq!(got, vec![3, 1, 2, 4, 5]);
    c.close().await.unwrap();
    assert!(
        browse_all(&s, &q, None, 10).await.is_empty(),
        "consumed: gone"
    );

    // Rule: only queues can be browsed; an invalid selector is refused as for consumers.
    let t = Destination::topic("browse.topic").unwrap();
    let r = s.consumer(&t).browser().build().await;
    assert!(matches!(r, Err(Error::Broker { .. })), "{r:?}");
    let r = s.consumer(&q).browser().selector("color = ").build().await;
    assert!(
        matches!(&r, Err(e) if e.code() == Some(tandem_client::ErrorCode::InvalidSelector)),
        "{r:?}"
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_browser_rules_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_in(&dir.path().join("data"), &[]);
    rules(ConnectionFactory::new(&broker.url()).unwrap()).await;
    broker.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_browser_rules_in_process() {
    let broker = Broker::start(BrokerConfig::embedded()).await.unwrap();
    rules(ConnectionFactory::in_process(Arc::new(broker.connector()))).await;
    broker.shutdown().await;
}
