//! Crash safety of the journal: pipelined producers send persistent messages, a consumer acks some,
//! the broker process is killed with SIGKILL at a (seeded) random moment, restarted on the same data
//! directory, and every message is counted:
//!
//! - every message confirmed to its producer and not acknowledged is there exactly once, flagged
//!   redelivered (invariants 1 and 2);
//! - no acknowledged message comes back (the consumer's acks were confirmed, so durable);
//! - nothing is delivered twice; unconfirmed sends may or may not be there, but at most once;
//! - messages whose ack was sent but never answered (the kill came first) are in doubt: the ack
//!   may or may not have become durable, so they may or may not come back.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use support::*;
use tandem_client::{AckMode, ConnectionFactory, Destination, Message};

const PRODUCERS: i64 = 3;
const IN_FLIGHT: usize = 64;

type Key = (i64, i64);

fn key(m: &Message) -> Key {
    (
        m.property("p").unwrap().to_long().unwrap(),
        m.property("n").unwrap().to_long().unwrap(),
    )
}

/// A small seeded generator: the kill moment differs per round, and a failure names its seed.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn round(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start_in(&data, &[]);
    let url = broker.url();
    let q = Destination::queue("crash.orders").unwrap();
    let confirmed: Arc<Mutex<HashSet<Key>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<Key>>> = Arc::default();
    let in_doubt: Arc<Mutex<HashSet<Key>>> = Arc::default();

    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (url, q, confirmed) = (url.clone(), q.clone(), confirmed.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(c) = ConnectionFactory::new(&url).unwrap().connect().await else {
                return;
            };
            let Ok(s) = c.create_session(AckMode::Auto).await else {
                return;
            };
            let Ok(mut producer) = s.create_producer(Some(&q)).await else {
                return;
            };
            let mut inflight = FuturesOrdered::new();
            for n in 1..=20_000i64 {
                let m = Message::text("payload")
                    .with_property("p", p)
                    .unwrap()
                    .with_property("n", n)
                    .unwrap();
                let Ok(receipt) = producer.send_async(m).await else {
                    break;
                };
                inflight.push_back(async move { (n, receipt.await) });
                if inflight.len() >= IN_FLIGHT {
                    match inflight.next().await {
                        Some((n, Ok(()))) => {
                            confirmed.lock().unwrap().insert((p, n));
                        }
                        _ => break,
                    }
                }
            }
            while let Some((n, r)) = inflight.next().await {
                if r.is_ok() {
                    confirmed.lock().unwrap().insert((p, n));
                }
            }
        }));
    }
    {
        let (url, q, acked, in_doubt) = (url.clone(), q.clone(), acked.clone(), in_doubt.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(c) = ConnectionFactory::new(&url).unwrap().connect().await else {
                return;
            };
            let Ok(s) = c.create_session(AckMode::Client).await else {
                return;
            };
            let Ok(mut consumer) = s.consumer(&q).prefetch(50).build().await else {
                return;
            };
            c.start();
            let mut handed = Vec::new();
            while let Ok(Some(m)) = consumer.receive(Duration::from_secs(5)).await {
                handed.push(key(&m));
                if handed.len() % 25 == 0 {
                    // Client ack covers everything handed so far; count it only once confirmed.
                    if m.ack().await.is_err() {
                        in_doubt.lock().unwrap().extend(handed.drain(..));
                        break;
                    }
                    acked.lock().unwrap().extend(handed.drain(..));
                }
            }
        }));
    }

    let mut x = seed;
    let delay = 300 + next(&mut x) % 1200;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    broker.kill9();
    for t in tasks {
        let _ = tokio::time::timeout(GUARD, t)
            .await
            .expect("clients notice the kill");
    }
    let confirmed = confirmed.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let in_doubt = in_doubt.lock().unwrap().clone();
    assert!(
        !confirmed.is_empty(),
        "seed {seed}: nothing was confirmed before the kill ({delay} ms)"
    );

    let broker = BrokerProcess::start_in(&data, &[]);
    let c = ConnectionFactory::new(&broker.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let mut consumer = s.consumer(&q).prefetch(500).build().await.unwrap();
    c.start();
    let mut seen = HashSet::new();
    let mut unflagged = Vec::new();
    while let Some(m) = consumer.receive(Duration::from_secs(3)).await.unwrap() {
        let k = key(&m);
        assert!(
            seen.insert(k),
            "seed {seed}: {k:?} delivered twice after the restart"
        );
        assert!(
            !acked.contains(&k),
            "seed {seed}: acknowledged {k:?} came back"
        );
        if !m.redelivered || m.delivery_count < 2 {
            unflagged.push(k);
        }
    }
    let missing: BTreeSet<Key> = confirmed
        .difference(&acked)
        .filter(|k| !seen.contains(k) && !in_doubt.contains(k))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: {} confirmed messages lost, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        unflagged.is_empty(),
        "seed {seed}: recovered messages not flagged redelivered: {:?}",
        &unflagged[..unflagged.len().min(5)]
    );
    eprintln!(
        "seed {seed}: killed after {delay} ms; {} confirmed, {} acked, {} in doubt, {} back after restart",
        confirmed.len(),
        acked.len(),
        in_doubt.len(),
        seen.len()
    );
    c.close().await.unwrap();
    broker.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_pipelined_persistent_load_loses_and_doubles_nothing() {
    for seed in [0x5eed_0001u64, 0x5eed_0002, 0x5eed_0003] {
        round(seed).await;
    }
}
