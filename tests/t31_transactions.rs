//! JMS local transactions (Jakarta Messaging 3.1, §6.2.7 "Transactions"): each rule one assertion,
//! against the real `tandem run` binary with its journal, and against an embedded in-memory broker.
//! Then crash safety: transacted producers commit batches while the broker is killed with SIGKILL;
//! after a restart every batch is there entirely or not at all, and every batch whose commit was
//! answered is there.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{AckMode, ConnectionFactory, Destination, Error, Message};

const SHORT: Duration = Duration::from_millis(300);

fn text(n: i64) -> Message {
    Message::text(format!("m{n}"))
        .with_property("n", n)
        .unwrap()
}

fn n_of(m: &Message) -> i64 {
    m.property("n").unwrap().to_long().unwrap()
}

async fn rules(factory: ConnectionFactory) {
    let conn = factory.connect().await.unwrap();
    conn.start();
    let tx = conn.create_session(AckMode::Transacted).await.unwrap();
    let plain = conn.create_session(AckMode::Auto).await.unwrap();
    let q = Destination::queue("tx.rules").unwrap();
    let out = Destination::queue("tx.rules.out").unwrap();
    let mut p = tx.create_producer(Some(&q)).await.unwrap();
    let mut watch = plain.create_consumer(&q, None).await.unwrap();

    // Rule: messages sent in a transaction are not delivered before the commit ...
    for n in 1..=3 {
        p.send(text(n)).await.unwrap();
    }
    assert!(
        watch.receive(SHORT).await.unwrap().is_none(),
        "an uncommitted send is invisible"
    );
    // ... and all of them are, in order, after it.
    tx.commit().await.unwrap();
    for n in 1..=3 {
        let m = watch.receive(GUARD).await.unwrap().expect("committed send");
        assert_eq!(n_of(m.message()), n);
    }

    // Rule: rollback discards the transaction's sends.
    p.send(text(4)).await.unwrap();
    tx.rollback().await.unwrap();
    tx.commit().await.unwrap();
    assert!(
        watch.receive(SHORT).await.unwrap().is_none(),
        "a rolled-back send never arrives"
    );
    watch.close().await.unwrap();

    // Rule: messages received in a transaction are acknowledged by its commit; a rollback gives
    // them back marked redelivered with JMSXDeliveryCount raised.
    let mut plain_p = plain.create_producer(Some(&q)).await.unwrap();
    for n in 10..=12 {
        plain_p.send(text(n)).await.unwrap();
    }
    let mut c = tx.create_consumer(&q, None).await.unwrap();
    let m10 = c.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(n_of(m10.message()), 10);
    assert!(!m10.message().redelivered);
    tx.rollback().await.unwrap();
    let again = c.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(
        n_of(again.message()),
        10,
        "the rolled-back message comes first again"
    );
    assert!(
        again.message().redelivered,
        "flagged redelivered after rollback"
    );
    assert_eq!(again.message().delivery_count, 2);
    // Messages prefetched but never received were not part of the transaction: unchanged.
    let m11 = c.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(n_of(m11.message()), 11);
    assert!(
        !m11.message().redelivered,
        "never received: not redelivered"
    );
    tx.commit().await.unwrap();
    // Acknowledged by the commit: closing the consumer gives back only 12, unreceived.
    c.close().await.unwrap();
    let mut rest = plain.create_consumer(&q, None).await.unwrap();
    let m12 = rest.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(n_of(m12.message()), 12);
    assert!(
        rest.receive(SHORT).await.unwrap().is_none(),
        "10 and 11 were committed: never again"
    );
    rest.close().await.unwrap();

    // Rule: a receive and a send in one transaction take effect together (consume-transform-
    // produce): the input is gone exactly when the output exists.
    plain_p.send(text(20)).await.unwrap();
    let mut c = tx.create_consumer(&q, None).await.unwrap();
    let mut fwd = tx.create_producer(Some(&out)).await.unwrap();
    let m = c.receive(GUARD).await.unwrap().unwrap();
    fwd.send(text(n_of(m.message()) + 100)).await.unwrap();
    let mut out_c = plain.create_consumer(&out, None).await.unwrap();
    assert!(out_c.receive(SHORT).await.unwrap().is_none());
    tx.commit().await.unwrap();
    let o = out_c.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(n_of(o.message()), 120);
    c.close().await.unwrap();
    let mut check = plain.create_consumer(&q, None).await.unwrap();
    assert!(
        check.receive(SHORT).await.unwrap().is_none(),
        "input consumed"
    );
    check.close().await.unwrap();

    // Rule: acknowledge() is ignored in a transacted session (JMS): only the commit counts.
    plain_p.send(text(30)).await.unwrap();
    let mut c = tx.create_consumer(&q, None).await.unwrap();
    let m = c.receive(GUARD).await.unwrap().unwrap();
    m.ack().await.unwrap();
    tx.rollback().await.unwrap();
    let m = c.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(n_of(m.message()), 30, "ack() did not acknowledge");
    assert!(m.message().redelivered);
    tx.commit().await.unwrap();
    c.close().await.unwrap();

    // Rule: closing a session rolls its open transaction back.
    let tx2 = conn.create_session(AckMode::Transacted).await.unwrap();
    let mut p2 = tx2.create_producer(Some(&q)).await.unwrap();
    p2.send(text(40)).await.unwrap();
    plain_p.send(text(41)).await.unwrap();
    let mut c2 = tx2.create_consumer(&q, None).await.unwrap();
    let m = c2.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(n_of(m.message()), 41);
    tx2.close().await.unwrap();
    let mut check = plain.create_consumer(&q, None).await.unwrap();
    let m = check.receive(GUARD).await.unwrap().unwrap();
    assert_eq!(
        n_of(m.message()),
        41,
        "the received message is back, not the sent one"
    );
    assert!(m.message().redelivered);
    assert!(
        check.receive(SHORT).await.unwrap().is_none(),
        "40 was never committed"
    );
    check.close().await.unwrap();

    // Rule: commit/rollback belong to transacted sessions, recover to the others.
    assert!(matches!(
        plain.commit().await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(tx.recover().await, Err(Error::InvalidArgument(_))));
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jms_transaction_rules_tcp_with_journal() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_in(&dir.path().join("data"), &[]);
    rules(ConnectionFactory::new(&broker.url()).unwrap()).await;
    broker.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jms_transaction_rules_in_process() {
    let broker = Broker::start(BrokerConfig::embedded()).await.unwrap();
    rules(ConnectionFactory::in_process(Arc::new(broker.connector()))).await;
    broker.shutdown().await;
}

/// A transaction holding more than `max_transaction_bytes` cannot commit: the send that crosses the
/// limit is refused, the commit reports the rollback, nothing of it is delivered, and the session
/// goes on with the next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_transaction_is_refused_and_rolled_back_whole() {
    let broker = Broker::start(BrokerConfig {
        max_transaction_bytes: 1024 * 1024,
        ..BrokerConfig::embedded()
    })
    .await
    .unwrap();
    let conn = ConnectionFactory::in_process(Arc::new(broker.connector()))
        .connect()
        .await
        .unwrap();
    conn.start();
    let tx = conn.create_session(AckMode::Transacted).await.unwrap();
    let q = Destination::queue("tx.big").unwrap();
    let mut p = tx.create_producer(Some(&q)).await.unwrap();
    let big = || Message::bytes(vec![7u8; 600 * 1024]);
    p.send(big()).await.unwrap();
    let refused = p.send(big()).await;
    assert!(
        matches!(&refused, Err(Error::Broker { message, .. }) if message.contains("max_transaction_bytes")),
        "{refused:?}"
    );
    let r = tx.commit().await;
    assert!(
        matches!(&r, Err(Error::TransactionRolledBack(m)) if m.contains("refused")),
        "{r:?}"
    );
    let plain = conn.create_session(AckMode::Auto).await.unwrap();
    let mut c = plain.create_consumer(&q, None).await.unwrap();
    assert!(c.receive(SHORT).await.unwrap().is_none(), "nothing of it");
    // The next transaction is a fresh one.
    p.send(Message::text("small")).await.unwrap();
    tx.commit().await.unwrap();
    assert!(c.receive(GUARD).await.unwrap().is_some());
    conn.close().await.unwrap();
    broker.shutdown().await;
}

/// Persistent transactions survive a restart exactly as committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_transactions_survive_a_restart_open_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let q = Destination::queue("tx.restart").unwrap();
    let broker = BrokerProcess::start_in(&data, &[]);
    let conn = ConnectionFactory::new(&broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    conn.start();
    let tx = conn.create_session(AckMode::Transacted).await.unwrap();
    let mut p = tx.create_producer(Some(&q)).await.unwrap();
    for n in 1..=5 {
        p.send(text(n)).await.unwrap();
    }
    tx.commit().await.unwrap();
    // Receive 1 and 2 and commit (acknowledged), receive 3 and leave it open; send 6 uncommitted.
    let mut c = tx.create_consumer(&q, None).await.unwrap();
    for n in 1..=2 {
        assert_eq!(n_of(c.receive(GUARD).await.unwrap().unwrap().message()), n);
    }
    tx.commit().await.unwrap();
    assert_eq!(n_of(c.receive(GUARD).await.unwrap().unwrap().message()), 3);
    p.send(text(6)).await.unwrap();
    broker.kill9();
    drop(conn);

    let broker = BrokerProcess::start_in(&data, &[]);
    let conn = ConnectionFactory::new(&broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    conn.start();
    let s = conn.create_session(AckMode::Auto).await.unwrap();
    let mut c = s.create_consumer(&q, None).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = c.receive(SHORT * 2).await.unwrap() {
        got.push(n_of(m.message()));
    }
    assert_eq!(
        got,
        vec![3, 4, 5],
        "1-2 were acknowledged by a commit; 6 was never committed"
    );
    conn.close().await.unwrap();
    broker.terminate();
}

/// A small seeded generator: the kill moment differs per round, and a failure names its seed.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

const BATCH: i64 = 5;

/// Commits batches of BATCH persistent messages until the connection fails; returns the batches
/// whose commit was answered Ok, and the one whose commit was in flight (if any).
async fn commit_batches(url: String, producer: i64) -> (Vec<i64>, Option<i64>) {
    let mut ok = Vec::new();
    let Ok(conn) = ConnectionFactory::new(&url).unwrap().connect().await else {
        return (ok, None);
    };
    let q = Destination::queue("tx.crash").unwrap();
    let Ok(tx) = conn.create_session(AckMode::Transacted).await else {
        return (ok, None);
    };
    let Ok(mut p) = tx.create_producer(Some(&q)).await else {
        return (ok, None);
    };
    for batch in 0..10_000i64 {
        let id = producer * 1_000_000 + batch;
        for i in 0..BATCH {
            let m = Message::text("x")
                .with_property("batch", id)
                .unwrap()
                .with_property("i", i)
                .unwrap();
            if p.send_async(m).await.is_err() {
                return (ok, None);
            }
        }
        match tx.commit().await {
            Ok(()) => ok.push(id),
            Err(_) => return (ok, Some(id)),
        }
    }
    (ok, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_commits_exposes_no_partial_transaction() {
    for seed in [0x7a_0001u64, 0x7a_0002] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let broker = BrokerProcess::start_in(&data, &[]);
        let producers: Vec<_> = (1..=2)
            .map(|p| tokio::spawn(commit_batches(broker.url(), p)))
            .collect();
        let mut x = seed;
        let delay = 300 + next(&mut x) % 900;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        broker.kill9();
        let mut committed = Vec::new();
        let mut in_doubt = Vec::new();
        for t in producers {
            let (ok, doubt) = tokio::time::timeout(GUARD, t)
                .await
                .expect("producers notice the kill")
                .unwrap();
            committed.extend(ok);
            in_doubt.extend(doubt);
        }
        let what = format!("seed {seed:#x}, killed after {delay} ms");
        assert!(
            !committed.is_empty(),
            "{what}: some commits before the kill"
        );

        let broker = BrokerProcess::start_in(&data, &[]);
        let conn = ConnectionFactory::new(&broker.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        conn.start();
        let s = conn.create_session(AckMode::Auto).await.unwrap();
        let q = Destination::queue("tx.crash").unwrap();
        let mut c = s.consumer(&q).prefetch(500).build().await.unwrap();
        let mut found: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        while let Some(m) = c.receive(Duration::from_millis(800)).await.unwrap() {
            let batch = m.message().property("batch").unwrap().to_long().unwrap();
            let i = m.message().property("i").unwrap().to_long().unwrap();
            found.entry(batch).or_default().push(i);
        }
        for (batch, is) in &found {
            assert_eq!(
                is,
                &(0..BATCH).collect::<Vec<_>>(),
                "{what}: batch {batch} is partial or doubled"
            );
            assert!(
                committed.contains(batch) || in_doubt.contains(batch),
                "{what}: batch {batch} was never committed"
            );
        }
        for batch in &committed {
            assert!(
                found.contains_key(batch),
                "{what}: committed batch {batch} lost"
            );
        }
        conn.close().await.unwrap();
        broker.terminate();
    }
}
