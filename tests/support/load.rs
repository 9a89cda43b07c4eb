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

/// Continuous persistent load on a failover URL that runs across any number of failovers: pipelined
/// producers whose sends must never fail, and client-ack consumers that keep every delivery with
/// its redelivered flag. `finish` stops it and checks the ledger.
pub struct Continuous {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub confirmed: Arc<Mutex<Vec<Key>>>,
    /// Key -> the redelivered flag of each delivery.
    pub seen: Arc<Mutex<std::collections::HashMap<Key, Vec<bool>>>>,
    producers: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    n_producers: i64,
}

impl Continuous {
    pub fn start(url: &str, q: &Destination, producers: i64, consumers: usize) -> Continuous {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let confirmed: Arc<Mutex<Vec<Key>>> = Arc::default();
        let seen: Arc<Mutex<std::collections::HashMap<Key, Vec<bool>>>> = Arc::default();
        let mut ptasks = Vec::new();
        for p in 0..producers {
            let (url, q, stop, confirmed) =
                (url.to_string(), q.clone(), stop.clone(), confirmed.clone());
            ptasks.push(tokio::spawn(async move {
                let c = ConnectionFactory::new(&url)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let s = c.create_session(AckMode::Auto).await.unwrap();
                let mut producer = s.create_producer(Some(&q)).await.unwrap();
                let mut inflight = FuturesOrdered::new();
                let mut n = 0i64;
                while !stop.load(Ordering::SeqCst) || !inflight.is_empty() {
                    if !stop.load(Ordering::SeqCst) && inflight.len() < 32 {
                        n += 1;
                        let m = Message::text("x")
                            .with_property("p", p)
                            .unwrap()
                            .with_property("n", n)
                            .unwrap();
                        let receipt = producer
                            .send_async(m)
                            .await
                            .expect("sends wait through failover");
                        inflight.push_back(async move { (n, receipt.await) });
                        continue;
                    }
                    let (k, r) = inflight.next().await.unwrap();
                    r.unwrap_or_else(|e| panic!("send {p}/{k} failed across failover: {e}"));
                    confirmed.lock().unwrap().push((p, k));
                }
                c.close().await.unwrap();
            }));
        }
        let mut ctasks = Vec::new();
        for _ in 0..consumers {
            let (url, q, stop, seen) = (url.to_string(), q.clone(), stop.clone(), seen.clone());
            ctasks.push(tokio::spawn(async move {
                let c = ConnectionFactory::new(&url)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let s = c.create_session(AckMode::Client).await.unwrap();
                let mut consumer = s.consumer(&q).prefetch(20).build().await.unwrap();
                c.start();
                let mut idle = 0;
                loop {
                    match consumer.receive(Duration::from_millis(500)).await {
                        Ok(Some(m)) => {
                            idle = 0;
                            seen.lock()
                                .unwrap()
                                .entry(key(&m))
                                .or_default()
                                .push(m.redelivered);
                            match m.ack().await {
                                // The link died before the ack: the message comes back, flagged.
                                Ok(()) | Err(tandem_client::Error::AckAfterFailover) => {}
                                Err(e) if e.is_connection_error() => {}
                                Err(e) => panic!("ack: {e}"),
                            }
                        }
                        Ok(None) if stop.load(Ordering::SeqCst) => {
                            idle += 1;
                            if idle >= 6 {
                                break;
                            }
                        }
                        Ok(None) => {}
                        Err(e) if e.is_connection_error() => {}
                        Err(e) => panic!("receive: {e}"),
                    }
                }
                c.close().await.unwrap();
            }));
        }
        Continuous {
            stop,
            confirmed,
            seen,
            producers: ptasks,
            consumers: ctasks,
            n_producers: producers,
        }
    }

    /// How many sends were confirmed so far.
    pub fn confirmed_count(&self) -> usize {
        self.confirmed.lock().unwrap().len()
    }

    /// Stop producing, let the consumers drain, and check: every confirmed message was consumed, no
    /// producer has a gap, and any message seen twice was flagged redelivered after the first time.
    /// Returns (confirmed, delivered more than once).
    pub async fn finish(self, what: &str) -> (usize, usize) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for p in self.producers {
            tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .expect("producers finish")
                .unwrap();
        }
        for c in self.consumers {
            tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .expect("consumers finish")
                .unwrap();
        }
        let confirmed = self.confirmed.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap();
        assert!(!confirmed.is_empty(), "{what}: nothing was confirmed");
        let missing: Vec<_> = confirmed.iter().filter(|k| !seen.contains_key(k)).collect();
        assert!(
            missing.is_empty(),
            "{what}: {} confirmed but never consumed, e.g. {:?} ({} confirmed)",
            missing.len(),
            &missing[..missing.len().min(5)],
            confirmed.len()
        );
        let unflagged: Vec<_> = seen
            .iter()
            .filter(|(_, flags)| flags.iter().skip(1).any(|r| !r))
            .map(|(k, _)| k)
            .take(5)
            .collect();
        assert!(
            unflagged.is_empty(),
            "{what}: delivered again without the redelivered flag: {unflagged:?}"
        );
        for p in 0..self.n_producers {
            let max = confirmed
                .iter()
                .filter(|k| k.0 == p)
                .map(|k| k.1)
                .max()
                .unwrap_or(0);
            assert!(
                (1..=max).all(|n| seen.contains_key(&(p, n))),
                "{what}: producer {p}: a gap below {max}"
            );
        }
        let again = seen.values().filter(|f| f.len() > 1).count();
        (confirmed.len(), again)
    }
}
