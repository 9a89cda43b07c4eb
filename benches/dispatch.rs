//! Dispatch through an embedded broker, end to end over in-process links, with the public APIs
//! only (tandem-broker to start it, tandem-client to talk to it):
//!
//! - `topic_fanout/S`: one producer publishes a batch of non-persistent 1 KiB messages to a topic
//!   with S subscribers (each on its own connection); an iteration ends when every subscriber has
//!   every message. Throughput counts deliveries (batch × S).
//! - `queue/C`: the same batch to a queue with C competing consumers; an iteration ends when the
//!   consumers together have every message.
//!
//! Consumers count in their own tasks and wake the measuring task through a `Notify`; the time
//! covers sending, routing, dispatch, the links and the client's decode.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{
    AckMode, Connection, ConnectionFactory, DeliveryMode, Destination, Message, Producer,
};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

/// Messages sent per iteration.
const BATCH: u64 = 2_000;

struct Rig {
    producer: Producer,
    body: Bytes,
    received: Arc<AtomicU64>,
    wake: Arc<Notify>,
    /// Deliveries one message makes (subscribers of a topic; 1 for a queue).
    fanout: u64,
    _connections: Vec<Connection>,
    broker: Option<Broker>,
}

impl Rig {
    async fn new(destination: Destination, consumers: usize) -> Rig {
        let broker = Broker::start(BrokerConfig::embedded()).await.unwrap();
        let factory =
            ConnectionFactory::in_process(Arc::new(broker.connector())).with_prefetch(1000);
        let received = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        let mut connections = Vec::new();
        for _ in 0..consumers {
            let conn = factory.connect().await.unwrap();
            let session = conn.create_session(AckMode::Auto).await.unwrap();
            let mut consumer = session.create_consumer(&destination, None).await.unwrap();
            conn.start();
            let (received, wake) = (received.clone(), wake.clone());
            tokio::spawn(async move {
                let _session = session;
                while let Some(Ok(_m)) = consumer.next().await {
                    received.fetch_add(1, Ordering::Release);
                    wake.notify_one();
                }
            });
            connections.push(conn);
        }
        let conn = factory.connect().await.unwrap();
        let session = conn.create_session(AckMode::Auto).await.unwrap();
        let mut producer = session.create_producer(Some(&destination)).await.unwrap();
        producer.set_delivery_mode(DeliveryMode::NonPersistent);
        connections.push(conn);
        let fanout = if destination.kind().is_queue() {
            1
        } else {
            consumers as u64
        };
        Rig {
            producer,
            body: Bytes::from(vec![b'x'; 1024]),
            received,
            wake,
            fanout,
            _connections: connections,
            broker: Some(broker),
        }
    }

    /// Sends `iters` batches and waits for every delivery; returns the time taken.
    async fn run(&mut self, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            let target = self.received.load(Ordering::Acquire) + BATCH * self.fanout;
            for _ in 0..BATCH {
                self.producer
                    .send(Message::bytes(self.body.clone()))
                    .await
                    .unwrap();
            }
            loop {
                let woken = self.wake.notified();
                if self.received.load(Ordering::Acquire) >= target {
                    break;
                }
                woken.await;
            }
        }
        start.elapsed()
    }
}

fn dispatch(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let mut g = c.benchmark_group("dispatch");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let cases = [
        ("topic_fanout", 1usize),
        ("topic_fanout", 4),
        ("topic_fanout", 16),
        ("queue", 1),
        ("queue", 4),
    ];
    for (kind, n) in cases {
        let dest = if kind == "queue" {
            Destination::queue("bench.q").unwrap()
        } else {
            Destination::topic("bench.t").unwrap()
        };
        let mut rig = rt.block_on(Rig::new(dest, n));
        g.throughput(Throughput::Elements(BATCH * rig.fanout));
        g.bench_function(format!("{kind}/{n}"), |b| {
            b.iter_custom(|iters| rt.block_on(rig.run(iters)))
        });
        let broker = rig.broker.take();
        drop(rig);
        if let Some(b) = broker {
            rt.block_on(b.shutdown());
        }
    }
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
