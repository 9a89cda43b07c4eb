//! Client failover against a real broker over TCP, through a small proxy that plays the load
//! balancer: clients connect to the proxy's fixed address, the proxy forwards to whichever broker
//! is current, and can cut every connection at once. A broker restart on the same journal
//! directory (a new port each time) stands in for a failover to the other lane.
//!
//! Every wait is bounded by a guard that only fires when something is wrong; nothing sleeps to
//! "let things settle".

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{
    AckMode, Connection, ConnectionEvent, ConnectionFactory, Destination, Error, Events, Message,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bound on anything that should happen promptly (generous: a loaded 2-core machine).
const GUARD: Duration = Duration::from_secs(60);

async fn start_broker(dir: &Path) -> Broker {
    Broker::start(BrokerConfig {
        persistence: true,
        data_dir: dir.to_path_buf(),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..BrokerConfig::embedded()
    })
    .await
    .expect("broker starts")
}

/// The load balancer: a fixed address forwarding to the current backend (none: refuse).
struct Proxy {
    addr: SocketAddr,
    backend: watch::Sender<Option<SocketAddr>>,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(backend: Option<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (backend_tx, backend_rx) = watch::channel(backend);
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let target = *backend_rx.borrow();
                let mut cut = cut_rx.clone();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    let Some(target) = target else { return };
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            backend: backend_tx,
            cut: cut_tx,
            task,
        }
    }

    fn point_to(&self, backend: Option<SocketAddr>) {
        self.backend.send_replace(backend);
    }

    /// Drops every connection it carries (new ones are accepted as usual).
    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn failover_url(&self, options: &str) -> String {
        format!("failover:(tcp://{})?{options}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The next failover event (other events are skipped), within the guard.
async fn failover_event(events: &mut Events) -> ConnectionEvent {
    loop {
        let ev = tokio::time::timeout(GUARD, events.recv())
            .await
            .expect("an event within the guard")
            .expect("events ended");
        match ev {
            ConnectionEvent::Disconnected { .. }
            | ConnectionEvent::Reconnected { .. }
            | ConnectionEvent::Closed(_) => return ev,
            _ => {}
        }
    }
}

async fn expect_failover(events: &mut Events) -> u32 {
    match failover_event(events).await {
        ConnectionEvent::Disconnected { error, .. } => {
            assert!(error.is_connection_error(), "{error:?}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    match failover_event(events).await {
        ConnectionEvent::Reconnected { attempts, .. } => attempts,
        other => panic!("expected Reconnected, got {other:?}"),
    }
}

/// Drains `queue` from `broker` with an auto-ack consumer over a plain TCP connection: the
/// numbers in the text bodies, in delivery order. Knows how many to expect from the broker's
/// own count, so it never waits for "nothing more".
async fn drain(broker: &Broker, queue: &str) -> Vec<u64> {
    let expected = broker.queue_snapshot(queue).map(|s| s.ready).unwrap_or(0);
    let url = format!("tcp://{}", broker.local_addr().unwrap());
    let conn = ConnectionFactory::new(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = conn.create_session(AckMode::Auto).await.unwrap();
    let mut c = s
        .consumer(&Destination::queue(queue).unwrap())
        .prefetch(500)
        .build()
        .await
        .unwrap();
    conn.start();
    let mut got = Vec::with_capacity(expected);
    while got.len() < expected {
        let m = c
            .receive(GUARD)
            .await
            .unwrap()
            .expect("a message within the guard");
        got.push(m.text_body().unwrap().parse().unwrap());
    }
    conn.close().await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_persistent_sends_survive_broker_restarts_without_loss_or_duplicates() {
    const N: u64 = 3000;
    const WINDOW: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path()).await;
    let proxy = Proxy::start(broker.local_addr()).await;
    let url = proxy.failover_url("initialReconnectDelay=10&maxReconnectDelay=200");
    let conn: Connection = ConnectionFactory::new(&url)
        .unwrap()
        .with_client_id("orders-producer")
        .with_request_timeout(GUARD)
        .connect()
        .await
        .unwrap();
    let mut events = conn.events();
    let session = conn.create_session(AckMode::Auto).await.unwrap();
    let queue = Destination::queue("failover.orders").unwrap();
    let mut producer = session.create_producer(Some(&queue)).await.unwrap();
    let (progress_tx, mut progress) = watch::channel(0u64);
    // Up to WINDOW sends in flight at any time; every receipt must come back Ok.
    let sender = tokio::spawn(async move {
        let mut inflight = VecDeque::with_capacity(WINDOW);
        let mut confirmed = 0u64;
        for n in 1..=N {
            inflight.push_back(producer.send_async(Message::text(n.to_string())).await?);
            if inflight.len() == WINDOW {
                inflight.pop_front().unwrap().await?;
                confirmed += 1;
                progress_tx.send_replace(confirmed);
            }
        }
        for r in inflight {
            r.await?;
        }
        Ok::<_, Error>(producer)
    });

    let mut reconnects = 0;
    for at in [N / 3, 2 * N / 3] {
        tokio::time::timeout(GUARD, progress.wait_for(|c| *c >= at))
            .await
            .expect("the producer makes progress")
            .expect("the producer is still running");
        // The active broker goes away mid-stream (Close with ShuttingDown to every client); the
        // other "lane" comes up on the same journal at a new address, and the load balancer
        // follows it.
        broker.shutdown().await;
        broker = start_broker(dir.path()).await;
        proxy.point_to(broker.local_addr());
        let attempts = expect_failover(&mut events).await;
        reconnects += 1;
        eprintln!("failover {reconnects}: reconnected after {attempts} attempts");
    }
    let producer = tokio::time::timeout(GUARD, sender)
        .await
        .expect("the producer finishes")
        .unwrap()
        .expect("every persistent send confirmed");
    assert_eq!(producer.last_sequence(), N);
    assert_eq!(reconnects, 2);
    assert!(conn.is_connected());

    // Resends the new broker recognised as stored (how many depends on timing).
    eprintln!(
        "duplicates dropped by the last broker: {}",
        broker
            .stats()
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let got = drain(&broker, "failover.orders").await;
    let mut seen = vec![0u32; N as usize + 1];
    for n in &got {
        seen[*n as usize] += 1;
    }
    let lost: Vec<usize> = (1..=N as usize).filter(|n| seen[*n] == 0).collect();
    let doubled: Vec<usize> = (1..=N as usize).filter(|n| seen[*n] > 1).collect();
    assert!(lost.is_empty(), "lost {} messages: {lost:?}", lost.len());
    assert!(doubled.is_empty(), "duplicated: {doubled:?}");
    assert_eq!(got.len() as u64, N);
    // One producer, one queue: in order, across both failovers.
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_come_back_flagged_redelivered_after_failover() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let proxy = Proxy::start(broker.local_addr()).await;
    let queue = Destination::queue("failover.work").unwrap();
    {
        let url = format!("tcp://{}", broker.local_addr().unwrap());
        let conn = ConnectionFactory::new(&url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let s = conn.create_session(AckMode::Auto).await.unwrap();
        let mut p = s.create_producer(Some(&queue)).await.unwrap();
        for n in 1..=5 {
            p.send(Message::text(n.to_string())).await.unwrap();
        }
        conn.close().await.unwrap();
    }
    // The same client id on the new link: the broker may still hold the old connection for a
    // moment (refusing the id), which the schedule rides out.
    let url = proxy.failover_url("initialReconnectDelay=10&maxReconnectDelay=100");
    let conn = ConnectionFactory::new(&url)
        .unwrap()
        .with_client_id("worker")
        .connect()
        .await
        .unwrap();
    let mut events = conn.events();
    let s = conn.create_session(AckMode::Client).await.unwrap();
    let mut c = s.consumer(&queue).prefetch(10).build().await.unwrap();
    conn.start();
    let mut seen = Vec::new();
    for n in 1..=3u64 {
        let m = c.receive(GUARD).await.unwrap().expect("a message");
        assert_eq!(m.text_body(), Some(n.to_string().as_str()));
        assert!(!m.redelivered);
        seen.push(m);
    }
    // The load balancer drops the connection; the broker takes the session's deliveries back.
    proxy.cut_all();
    expect_failover(&mut events).await;
    // A message from the lost link cannot be acknowledged: typed, not pretended.
    assert!(matches!(seen[0].ack().await, Err(Error::AckAfterFailover)));
    let mut again = Vec::new();
    for n in 1..=5u64 {
        let m = c.receive(GUARD).await.unwrap().expect("a redelivery");
        assert_eq!(m.text_body(), Some(n.to_string().as_str()), "in order");
        again.push(m);
    }
    for m in &again[..3] {
        assert!(m.redelivered, "seen before the failover: flagged");
        assert!(m.delivery_count >= 2, "count raised: {}", m.delivery_count);
    }
    again[4].ack().await.unwrap();
    let snap = broker.queue_snapshot("failover.work").unwrap();
    assert_eq!((snap.ready, snap.inflight), (0, 0), "all acknowledged once");
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_reconnect_budget_closes_the_connection_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let proxy = Proxy::start(broker.local_addr()).await;
    let url = proxy.failover_url("maxReconnectAttempts=3&initialReconnectDelay=5");
    let conn = ConnectionFactory::new(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut events = conn.events();
    let s = conn.create_session(AckMode::Auto).await.unwrap();
    let queue = Destination::queue("failover.gone").unwrap();
    let mut p = s.create_producer(Some(&queue)).await.unwrap();
    p.send(Message::text("before")).await.unwrap();
    // No broker behind the load balancer any more.
    proxy.point_to(None);
    broker.shutdown().await;
    match failover_event(&mut events).await {
        ConnectionEvent::Disconnected { .. } => {}
        other => panic!("{other:?}"),
    }
    match failover_event(&mut events).await {
        ConnectionEvent::Closed(Error::ReconnectFailed { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("{other:?}"),
    }
    assert!(conn.is_closed());
    let r = p.send(Message::text("after")).await;
    assert!(matches!(r, Err(Error::ReconnectFailed { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_url_goes_round_robin_over_its_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    // Lane a has no broker behind it yet; lane b has.
    let a = Proxy::start(None).await;
    let b = Proxy::start(broker.local_addr()).await;
    let url = format!(
        "failover:(tcp://{},tcp://{})?randomize=false&initialReconnectDelay=5&maxReconnectDelay=50",
        a.addr, b.addr
    );
    let conn = ConnectionFactory::new(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut events = conn.events();
    let s = conn.create_session(AckMode::Auto).await.unwrap();
    let queue = Destination::queue("failover.rr").unwrap();
    let mut p = s.create_producer(Some(&queue)).await.unwrap();
    p.send(Message::text("1")).await.unwrap();
    // The broker moves to lane a: after the loss of b, the first attempt goes to a and succeeds.
    a.point_to(broker.local_addr());
    b.point_to(None);
    b.cut_all();
    match failover_event(&mut events).await {
        ConnectionEvent::Disconnected { endpoint, .. } => {
            assert_eq!(endpoint, format!("tcp://{}", b.addr))
        }
        other => panic!("{other:?}"),
    }
    match failover_event(&mut events).await {
        ConnectionEvent::Reconnected { endpoint, attempts } => {
            assert_eq!(endpoint, format!("tcp://{}", a.addr));
            assert_eq!(attempts, 1, "the next endpoint first");
        }
        other => panic!("{other:?}"),
    }
    p.send(Message::text("2")).await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(drain(&broker, "failover.rr").await, vec![1, 2]);
    broker.shutdown().await;
}

/// After a failover to the other "lane" (a restart on the same journal), a temporary queue is
/// created again under its name (replies addressed to it in JMSReplyTo still reach this
/// connection), and a durable consumer is attached again to its subscription, which kept
/// collecting (from the journal) while the link was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_queues_and_durable_consumers_come_back_after_failover() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path()).await;
    let proxy = Proxy::start(broker.local_addr()).await;
    let url = proxy.failover_url("initialReconnectDelay=10&maxReconnectDelay=200");
    let conn = ConnectionFactory::new(&url)
        .unwrap()
        .with_client_id("fo-subscriber")
        .with_request_timeout(GUARD)
        .connect()
        .await
        .unwrap();
    let mut events = conn.events();
    let s = conn.create_session(AckMode::Auto).await.unwrap();
    let replies = s.create_temporary_queue().await.unwrap();
    let mut reply_consumer = s
        .create_consumer(replies.destination(), None)
        .await
        .unwrap();
    let news = Destination::topic("fo.news").unwrap();
    let mut durable = s
        .durable_consumer(&news, "fo-daily", None, false)
        .await
        .unwrap();
    conn.start();

    // Published while the subscriber's link is down: only the journal holds it.
    broker.shutdown().await;
    broker = start_broker(dir.path()).await;
    assert_eq!(
        broker.durable_subscription_pending(Some("fo-subscriber"), "fo-daily"),
        Some(0)
    );
    let direct = ConnectionFactory::new(&format!("tcp://{}", broker.local_addr().unwrap()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let ds = direct.create_session(AckMode::Auto).await.unwrap();
    let mut publisher = ds.create_producer(Some(&news)).await.unwrap();
    publisher.send(Message::text("while away")).await.unwrap();
    proxy.point_to(broker.local_addr());
    expect_failover(&mut events).await;

    let got = durable
        .receive(GUARD)
        .await
        .unwrap()
        .expect("the durable subscription kept it");
    assert_eq!(got.text_body(), Some("while away"));
    assert_eq!(broker.temporary_destinations(), 1, "created again");
    let mut replier = ds
        .create_producer(Some(replies.destination()))
        .await
        .unwrap();
    replier.send(Message::text("reply")).await.unwrap();
    let got = reply_consumer
        .receive(GUARD)
        .await
        .unwrap()
        .expect("the reply reaches the recreated temporary queue");
    assert_eq!(got.text_body(), Some("reply"));
    direct.close().await.unwrap();
    conn.close().await.unwrap();
    broker.shutdown().await;
}
