//! Durable and shared topic subscriptions (Jakarta Messaging 3.1 §8.3), through the client library
//! against an embedded broker: one test per JMS rule, plus restarts with a journal.
//!
//! Absence is checked without waiting on a clock: after the messages that must not arrive, a
//! marker that must arrive is published by the same producer, and it has to be the next message
//! received (one producer's messages keep their order).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{
    AckMode, Connection, ConnectionFactory, Consumer, Destination, Error, ErrorCode, Message,
    Producer, Session,
};

const WAIT: Duration = Duration::from_secs(20);

async fn broker(journal: Option<&Path>) -> Broker {
    let config = match journal {
        Some(dir) => BrokerConfig {
            persistence: true,
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::embedded()
        },
        None => BrokerConfig::embedded(),
    };
    Broker::start(config).await.unwrap()
}

async fn connect(b: &Broker, client_id: Option<&str>) -> (Connection, Session) {
    let mut f = ConnectionFactory::in_process(Arc::new(b.connector()));
    if let Some(id) = client_id {
        f = f.with_client_id(id);
    }
    let c = f.connect().await.unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    c.start();
    (c, s)
}

fn topic(name: &str) -> Destination {
    Destination::topic(name).unwrap()
}

fn msg(n: i64) -> Message {
    Message::text(format!("m{n}"))
        .with_property("n", n)
        .unwrap()
}

async fn publish(p: &mut Producer, ns: impl IntoIterator<Item = i64>) {
    for n in ns {
        p.send(msg(n)).await.unwrap();
    }
}

async fn next_n(c: &mut Consumer) -> i64 {
    let m = c
        .receive(WAIT)
        .await
        .unwrap()
        .expect("a message within the guard time");
    m.property("n").unwrap().to_long().unwrap()
}

async fn take(c: &mut Consumer, count: usize) -> Vec<i64> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        got.push(next_n(c).await);
    }
    got
}

fn code(r: Result<impl std::fmt::Debug, Error>) -> ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("{e} carries no broker code")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unshared_durable_subscription_needs_a_client_id() {
    let b = broker(None).await;
    let (_c, s) = connect(&b, None).await;
    let r = s.durable_consumer(&topic("news"), "sub", None, false).await;
    assert_eq!(code(r), ErrorCode::IllegalState);
    // A shared durable subscription may do without one.
    s.shared_durable_consumer(&topic("news"), "sub", None)
        .await
        .unwrap();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_collects_messages_while_no_consumer_is_attached() {
    let b = broker(None).await;
    let t = topic("news");
    let (c1, s1) = connect(&b, Some("reader")).await;
    s1.durable_consumer(&t, "daily", None, false)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    c1.close().await.unwrap();
    let (_pc, ps) = connect(&b, None).await;
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    publish(&mut p, 1..=3).await;
    assert_eq!(
        b.durable_subscription_pending(Some("reader"), "daily"),
        Some(3)
    );
    // A plain subscriber opened now gets nothing of what was published before it.
    let mut plain = ps.create_consumer(&t, None).await.unwrap();
    let (_c2, s2) = connect(&b, Some("reader")).await;
    let mut d = s2.durable_consumer(&t, "daily", None, false).await.unwrap();
    assert_eq!(take(&mut d, 3).await, vec![1, 2, 3]);
    publish(&mut p, [4]).await;
    assert_eq!(
        next_n(&mut plain).await,
        4,
        "the plain subscriber missed 1..=3"
    );
    assert_eq!(next_n(&mut d).await, 4);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unshared_durable_subscription_has_at_most_one_consumer() {
    let b = broker(None).await;
    let t = topic("news");
    let (_c, s) = connect(&b, Some("reader")).await;
    let mut first = s.durable_consumer(&t, "daily", None, false).await.unwrap();
    let second = s.durable_consumer(&t, "daily", None, false).await;
    assert_eq!(code(second), ErrorCode::IllegalState);
    first.close().await.unwrap();
    s.durable_consumer(&t, "daily", None, false)
        .await
        .expect("free again once the first consumer closed");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_selector_topic_or_no_local_replaces_the_subscription() {
    let b = broker(None).await;
    let (t1, t2) = (topic("news"), topic("sports"));
    let (_pc, ps) = connect(&b, None).await;
    let mut p1 = ps.create_producer(Some(&t1)).await.unwrap();
    let mut p2 = ps.create_producer(Some(&t2)).await.unwrap();
    let (_c, s) = connect(&b, Some("reader")).await;
    let durable = |t: Destination, sel: Option<&'static str>, no_local: bool| {
        let s = s.clone();
        async move { s.durable_consumer(&t, "daily", sel, no_local).await }
    };

    durable(t1.clone(), None, false)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    publish(&mut p1, [1, 2]).await;
    // Another selector: the old subscription and its two messages are gone.
    let mut d = durable(t1.clone(), Some("n > 0"), false).await.unwrap();
    publish(&mut p1, [3]).await;
    assert_eq!(
        next_n(&mut d).await,
        3,
        "1 and 2 went with the replaced subscription"
    );
    d.close().await.unwrap();

    publish(&mut p1, [4]).await;
    // Another topic: replaced again; it now follows `sports`.
    let mut d = durable(t2.clone(), Some("n > 0"), false).await.unwrap();
    publish(&mut p1, [5]).await;
    publish(&mut p2, [6]).await;
    assert_eq!(
        next_n(&mut d).await,
        6,
        "4 (and 5, on the old topic) are not in it"
    );
    d.close().await.unwrap();

    publish(&mut p2, [7]).await;
    // Another noLocal value: replaced too.
    let mut d = durable(t2.clone(), Some("n > 0"), true).await.unwrap();
    publish(&mut p2, [8]).await;
    assert_eq!(
        next_n(&mut d).await,
        8,
        "7 went with the replaced subscription"
    );
    d.close().await.unwrap();

    // The same topic, selector and noLocal: the same subscription, messages kept.
    publish(&mut p2, [9]).await;
    let mut d = durable(t2.clone(), Some("n > 0"), true).await.unwrap();
    assert_eq!(next_n(&mut d).await, 9);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_in_use_cannot_change_topic_or_selector() {
    let b = broker(None).await;
    let t = topic("news");
    let (_c, s) = connect(&b, None).await;
    let _open = s.shared_durable_consumer(&t, "sd", None).await.unwrap();
    let r = s.shared_durable_consumer(&t, "sd", Some("n > 1")).await;
    assert_eq!(code(r), ErrorCode::IllegalState, "durable");
    let _open = s.shared_consumer(&t, "sn", None).await.unwrap();
    let r = s.shared_consumer(&topic("other"), "sn", None).await;
    assert_eq!(code(r), ErrorCode::IllegalState, "non-durable");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_refuses_unknown_names_active_consumers_and_unacknowledged_messages() {
    let b = broker(None).await;
    let t = topic("news");
    let (_pc, ps) = connect(&b, None).await;
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    let (c, s) = connect(&b, Some("reader")).await;
    assert_eq!(
        code(s.unsubscribe("nope").await),
        ErrorCode::UnknownSubscription
    );

    let mut d = s.durable_consumer(&t, "daily", None, false).await.unwrap();
    assert_eq!(code(s.unsubscribe("daily").await), ErrorCode::IllegalState);
    d.close().await.unwrap();

    // A message received in a client-ack session and not acknowledged pins the subscription.
    let cs = c.create_session(AckMode::Client).await.unwrap();
    let mut d = cs.durable_consumer(&t, "daily", None, false).await.unwrap();
    publish(&mut p, [1]).await;
    assert_eq!(next_n(&mut d).await, 1);
    d.close().await.unwrap();
    assert_eq!(code(s.unsubscribe("daily").await), ErrorCode::IllegalState);
    cs.close().await.unwrap(); // gives the message back to the subscription
    s.unsubscribe("daily").await.unwrap();
    assert_eq!(
        b.durable_subscription_pending(Some("reader"), "daily"),
        None
    );
    assert_eq!(
        code(s.unsubscribe("daily").await),
        ErrorCode::UnknownSubscription
    );

    // Gone with its message: a new subscription of that name starts empty.
    publish(&mut p, [2]).await;
    let mut d = s.durable_consumer(&t, "daily", None, false).await.unwrap();
    publish(&mut p, [3]).await;
    assert_eq!(next_n(&mut d).await, 3);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_durable_consumers_on_two_connections_share_the_messages() {
    const N: i64 = 200;
    let b = broker(None).await;
    let t = topic("work");
    let (_c1, s1) = connect(&b, None).await;
    let (_c2, s2) = connect(&b, None).await;
    let mut a = s1
        .consumer(&t)
        .shared("jobs")
        .durable("jobs")
        .prefetch(10)
        .build()
        .await
        .unwrap();
    let mut z = s2
        .consumer(&t)
        .shared("jobs")
        .durable("jobs")
        .prefetch(10)
        .build()
        .await
        .unwrap();
    let (_pc, ps) = connect(&b, None).await;
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    publish(&mut p, 1..=N).await;
    let mut got = Vec::new();
    let (mut from_a, mut from_z) = (0, 0);
    while (got.len() as i64) < N {
        tokio::select! {
            m = a.receive(WAIT) => { got.push(m.unwrap().expect("a message").property("n").unwrap().to_long().unwrap()); from_a += 1; }
            m = z.receive(WAIT) => { got.push(m.unwrap().expect("a message").property("n").unwrap().to_long().unwrap()); from_z += 1; }
        }
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "each message once, across both"
    );
    assert!(
        from_a > 0 && from_z > 0,
        "both consumers got some: {from_a}/{from_z}"
    );

    // Durable: with both consumers gone it keeps collecting.
    a.close().await.unwrap();
    z.close().await.unwrap();
    publish(&mut p, [N + 1]).await;
    assert_eq!(b.durable_subscription_pending(None, "jobs"), Some(1));
    let mut again = s1.shared_durable_consumer(&t, "jobs", None).await.unwrap();
    assert_eq!(next_n(&mut again).await, N + 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_non_durable_subscription_lives_while_it_has_consumers() {
    let b = broker(None).await;
    let t = topic("work");
    let (_pc, ps) = connect(&b, None).await;
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    let (_c, s) = connect(&b, None).await;
    let mut a = s.shared_consumer(&t, "jobs", None).await.unwrap();
    let mut z = s.shared_consumer(&t, "jobs", None).await.unwrap();
    publish(&mut p, 1..=20).await;
    let mut got = Vec::new();
    while got.len() < 20 {
        tokio::select! {
            m = a.receive(WAIT) => got.push(m.unwrap().expect("a message").property("n").unwrap().to_long().unwrap()),
            m = z.receive(WAIT) => got.push(m.unwrap().expect("a message").property("n").unwrap().to_long().unwrap()),
        }
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=20).collect::<Vec<_>>(),
        "each message once, across both"
    );
    a.close().await.unwrap();
    publish(&mut p, [21]).await;
    assert_eq!(next_n(&mut z).await, 21, "alive while one consumer is left");
    z.close().await.unwrap();
    publish(&mut p, [22]).await;
    let mut again = s.shared_consumer(&t, "jobs", None).await.unwrap();
    publish(&mut p, [23]).await;
    assert_eq!(
        next_n(&mut again).await,
        23,
        "22 was published while it did not exist"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_and_shared_non_durable_names_are_separate_but_shared_and_unshared_durable_clash() {
    let b = broker(None).await;
    let t = topic("news");
    let (_c, s) = connect(&b, Some("reader")).await;
    let mut durable = s.durable_consumer(&t, "x", None, false).await.unwrap();
    let mut shared = s.shared_consumer(&t, "x", None).await.unwrap();
    let (_pc, ps) = connect(&b, None).await;
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    publish(&mut p, [1]).await;
    assert_eq!(next_n(&mut durable).await, 1);
    assert_eq!(
        next_n(&mut shared).await,
        1,
        "a separate subscription: its own copy"
    );
    durable.close().await.unwrap();
    let r = s.shared_durable_consumer(&t, "x", None).await;
    assert_eq!(code(r), ErrorCode::IllegalState, "unshared exists");
    let _sd = s.shared_durable_consumer(&t, "y", None).await.unwrap();
    let r = s.durable_consumer(&t, "y", None, false).await;
    assert_eq!(code(r), ErrorCode::IllegalState, "shared exists");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_are_named_with_the_client_id() {
    let b = broker(None).await;
    let t = topic("news");
    let (_c1, s1) = connect(&b, Some("one")).await;
    let (_c2, s2) = connect(&b, Some("two")).await;
    let mut a = s1.shared_consumer(&t, "s", None).await.unwrap();
    let mut z = s2.shared_consumer(&t, "s", None).await.unwrap();
    let (_pc, ps) = connect(&b, None).await;
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    publish(&mut p, [1, 2]).await;
    assert_eq!(take(&mut a, 2).await, vec![1, 2], "its own subscription");
    assert_eq!(take(&mut z, 2).await, vec![1, 2], "its own subscription");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_local_durable_subscription_skips_its_own_connection() {
    let b = broker(None).await;
    let t = topic("chat");
    let (_c, s) = connect(&b, Some("me")).await;
    let mut d = s.durable_consumer(&t, "inbox", None, true).await.unwrap();
    let mut own = s.create_producer(Some(&t)).await.unwrap();
    let (_oc, os) = connect(&b, None).await;
    let mut other = os.create_producer(Some(&t)).await.unwrap();
    publish(&mut own, [1]).await;
    publish(&mut other, [2]).await;
    assert_eq!(next_n(&mut d).await, 2, "1 came from its own connection");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_names_are_for_topics() {
    let b = broker(None).await;
    let (_c, s) = connect(&b, Some("me")).await;
    let q = Destination::queue("q").unwrap();
    let r = s.durable_consumer(&q, "d", None, false).await;
    assert_eq!(code(r), ErrorCode::InvalidDestination);
    let r = s.shared_consumer(&q, "d", None).await;
    assert_eq!(code(r), ErrorCode::InvalidDestination);
    b.shutdown().await;
}

/// The restart test: a durable subscription with a selector, queued persistent messages and a
/// raised delivery count survives a broker restart; a replaced subscription's messages do not
/// come back; an unsubscribed subscription stays gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_subscriptions_and_their_messages_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = topic("orders");
    {
        let b = broker(Some(dir.path())).await;
        let (c, _) = connect(&b, Some("audit")).await;
        let s = c.create_session(AckMode::Client).await.unwrap();
        let mut d = s
            .durable_consumer(&t, "eu", Some("region = 'eu'"), false)
            .await
            .unwrap();
        // A second subscription, replaced below: its messages must not come back.
        let mut r = s
            .durable_consumer(&t, "replaced", None, false)
            .await
            .unwrap();
        r.close().await.unwrap();
        let (_pc, ps) = connect(&b, None).await;
        let mut p = ps.create_producer(Some(&t)).await.unwrap();
        for (n, region) in [(1, "eu"), (2, "us"), (3, "eu"), (4, "eu")] {
            p.send(msg(n).with_property("region", region).unwrap())
                .await
                .unwrap();
        }
        // Seen once and given back: its count is raised and journaled.
        assert_eq!(next_n(&mut d).await, 1);
        s.recover().await.unwrap();
        let m = d.receive(WAIT).await.unwrap().expect("redelivered");
        assert!(m.redelivered);
        assert_eq!(m.delivery_count, 2);
        d.close().await.unwrap();
        // "replaced" holds 4 messages; one of them is delivered and left unacknowledged in `s`.
        let mut r = s
            .durable_consumer(&t, "replaced", None, false)
            .await
            .unwrap();
        assert_eq!(next_n(&mut r).await, 1);
        r.close().await.unwrap();
        // Replace it by one with a selector: the 3 it still held are acknowledged in the
        // journal; the one in flight is left behind as a ref to a subscription that is gone.
        let mut r = s_of(&c)
            .await
            .durable_consumer(&t, "replaced", Some("n > 100"), false)
            .await
            .unwrap();
        r.close().await.unwrap();
        s.close().await.unwrap();
        assert_eq!(b.durable_subscription_pending(Some("audit"), "eu"), Some(3));
        // And one to unsubscribe.
        let us = s_of(&c).await;
        us.durable_consumer(&t, "gone", None, false)
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
        p.send(msg(5).with_property("region", "us").unwrap())
            .await
            .unwrap();
        us.unsubscribe("gone").await.unwrap();
        c.close().await.unwrap();
        b.shutdown().await;
    }
    let b = broker(Some(dir.path())).await;
    assert_eq!(b.durable_subscription_pending(Some("audit"), "eu"), Some(3));
    assert_eq!(
        b.durable_subscription_pending(Some("audit"), "replaced"),
        Some(0)
    );
    assert_eq!(b.durable_subscription_pending(Some("audit"), "gone"), None);
    // The replaced and the unsubscribed subscriptions' refs were not turned into queues.
    let metrics = b.metrics();
    assert!(
        !metrics.contains("/replaced/") && !metrics.contains("/gone/"),
        "{metrics}"
    );
    let (_c, s) = connect(&b, Some("audit")).await;
    let mut d = s
        .durable_consumer(&t, "eu", Some("region = 'eu'"), false)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = d.receive(WAIT).await.unwrap().expect("a recovered message");
        assert!(m.redelivered, "recovered messages are flagged");
        seen.push((
            m.property("n").unwrap().to_long().unwrap(),
            m.delivery_count,
        ));
    }
    // 1 was seen twice before the restart (count 2 journaled when its session gave it back), the
    // others never; a restart raises every count once more (they may have been delivered since
    // the last count was written), so this delivery is 1's fourth and the others' second.
    assert_eq!(seen, vec![(1, 4), (3, 2), (4, 2)]);
    // The selector survived too: a "us" message does not enter; an "eu" one does.
    let (_pc, ps) = connect(&b, None).await;
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    p.send(msg(6).with_property("region", "us").unwrap())
        .await
        .unwrap();
    p.send(msg(7).with_property("region", "eu").unwrap())
        .await
        .unwrap();
    assert_eq!(next_n(&mut d).await, 7);
    b.shutdown().await;
}

/// The real `tandem run` binary over TCP, killed with SIGKILL: the durable subscription (with its
/// selector) and every confirmed persistent message in it are back after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_survives_kill_9_of_the_broker_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = topic("crash.news");
    let broker = support::BrokerProcess::start_in(&data, &[]);
    let factory = |url: &str, client_id: Option<&str>| {
        let f = ConnectionFactory::new(url).unwrap();
        match client_id {
            Some(id) => f.with_client_id(id),
            None => f,
        }
    };
    let c = factory(&broker.url(), Some("crash-reader"))
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    s.durable_consumer(&t, "kept", Some("n > 1"), false)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    c.close().await.unwrap();
    let pc = factory(&broker.url(), None).connect().await.unwrap();
    let ps = pc.create_session(AckMode::Auto).await.unwrap();
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    // Persistent sends return once durable: all five are confirmed before the kill.
    publish(&mut p, 1..=5).await;
    broker.kill9();
    drop(pc);

    let broker = support::BrokerProcess::start_in(&data, &[]);
    let c = factory(&broker.url(), Some("crash-reader"))
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let mut d = s
        .durable_consumer(&t, "kept", Some("n > 1"), false)
        .await
        .unwrap();
    c.start();
    for want in 2..=5 {
        let m = d.receive(WAIT).await.unwrap().expect("a recovered message");
        assert_eq!(m.property("n").unwrap().to_long().unwrap(), want);
        assert!(m.redelivered, "recovered messages are flagged");
        assert_eq!(
            m.delivery_count, 2,
            "one possible delivery before the crash"
        );
    }
    let pc = factory(&broker.url(), None).connect().await.unwrap();
    let ps = pc.create_session(AckMode::Auto).await.unwrap();
    let mut p = ps.create_producer(Some(&t)).await.unwrap();
    publish(&mut p, [1, 7]).await;
    assert_eq!(
        next_n(&mut d).await,
        7,
        "the selector survived: 1 did not enter"
    );
    c.close().await.unwrap();
    pc.close().await.unwrap();
    broker.terminate();
}

async fn s_of(c: &Connection) -> Session {
    c.create_session(AckMode::Auto).await.unwrap()
}
