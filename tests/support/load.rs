//! Persistent load with exact accounting, shared by the crash and failover tests: pipelined
//! producers record what was confirmed, a client-ack consumer records what it acked (and what it
//! tried to ack when the connection died: in doubt), and `check` counts what came back.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use tandem_client::{AckMode, ConnectionFactory, Destination, Message};

pub type Key = (i64, i64);

pub fn key(m: &Message) -> Key {
    (
        m.property("p").unwrap().to_long().unwrap(),
        m.property("n").unwrap().to_long().unwrap(),
    )
}

#[derive(Default, Clone)]
pub struct Ledger {
    pub confirmed: Arc<Mutex<HashSet<Key>>>,
    pub acked: Arc<Mutex<HashSet<Key>>>,
    pub in_doubt: Arc<Mutex<HashSet<Key>>>,
}

/// Starts `producers` pipelined persistent producers (ids `first_producer..`) and one client-ack
/// consumer against `url`; they run until their connection fails (the broker is killed).
pub fn start(
    url: &str,
    q: &Destination,
    first_producer: i64,
    producers: i64,
    ledger: &Ledger,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for p in first_producer..first_producer + producers {
        let (url, q, confirmed) = (url.to_string(), q.clone(), ledger.confirmed.clone());
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
            for n in 1..=50_000i64 {
                let m = Message::text("payload")
                    .with_property("p", p)
                    .unwrap()
                    .with_property("n", n)
                    .unwrap();
                let Ok(receipt) = producer.send_async(m).await else {
                    break;
                };
                inflight.push_back(async move { (n, receipt.await) });
                if inflight.len() >= 64 {
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
    let (url, q, acked, in_doubt) = (
        url.to_string(),
        q.clone(),
        ledger.acked.clone(),
        ledger.in_doubt.clone(),
    );
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
                if m.ack().await.is_err() {
                    in_doubt.lock().unwrap().extend(handed.drain(..));
                    break;
                }
                acked.lock().unwrap().extend(handed.drain(..));
            }
        }
    }));
    tasks
}

/// Drains `q` at `url` (auto ack) and checks the ledger: every confirmed, unacknowledged message
/// is there exactly once, flagged redelivered; no acknowledged one is. Returns what came back.
pub async fn check(url: &str, q: &Destination, ledger: &Ledger, what: &str) -> usize {
    let confirmed = ledger.confirmed.lock().unwrap().clone();
    let acked = ledger.acked.lock().unwrap().clone();
    let in_doubt = ledger.in_doubt.lock().unwrap().clone();
    assert!(!confirmed.is_empty(), "{what}: nothing was confirmed");
    let c = ConnectionFactory::new(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let mut consumer = s.consumer(q).prefetch(500).build().await.unwrap();
    c.start();
    let mut seen = HashSet::new();
    while let Some(m) = consumer.receive(Duration::from_secs(3)).await.unwrap() {
        let k = key(&m);
        assert!(seen.insert(k), "{what}: {k:?} delivered twice");
        assert!(!acked.contains(&k), "{what}: acknowledged {k:?} came back");
        assert!(
            m.redelivered && m.delivery_count >= 2,
            "{what}: recovered {k:?} not flagged redelivered"
        );
    }
    let missing: BTreeSet<Key> = confirmed
        .difference(&acked)
        .filter(|k| !seen.contains(k) && !in_doubt.contains(k))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} confirmed messages lost, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    eprintln!(
        "{what}: {} confirmed, {} acked, {} in doubt, {} back",
        confirmed.len(),
        acked.len(),
        in_doubt.len(),
        seen.len()
    );
    c.close().await.unwrap();
    seen.len()
}
