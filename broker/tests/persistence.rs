//! The journal behind the broker: what survives a restart, duplicate detection, a full disk,
//! corruption. Raw frames over in-process connections; the kill -9 tests are in the root
//! package's system tests.

mod support;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::*;
use tandem_broker::journal::{IoFaults, JournalOptions};
use tandem_broker::{Broker, BrokerConfig, BrokerError};
use tandem_protocol::ErrorCode;
use tandem_protocol::wire::{self, AckKind, AckMode};

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        persistence: true,
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::embedded()
    }
}

async fn producer_named(
    c: &mut Raw,
    producer_id: u64,
    name: &str,
    q: &tandem_protocol::model::Destination,
) {
    c.request(|request_id| {
        wire::ProducerOpen {
            request_id,
            session_id: 1,
            producer_id,
            producer_name: name.into(),
            destination: Some(q.to_wire()),
        }
        .into()
    })
    .await
    .unwrap();
}

/// Drains a queue with a fresh auto-ack consumer: (n, redelivered, delivery_count) in order.
async fn drain(b: &Broker, q: &tandem_protocol::model::Destination) -> Vec<(i64, bool, u32)> {
    let mut c = Raw::local(b).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, q, 100).await.unwrap();
    let mut got = Vec::new();
    while let Some(d) = c.deliver_within(Duration::from_millis(500)).await {
        got.push((n_of(&d), d.redelivered, d.delivery_count));
        c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_unacked_persistent_messages_flagged_and_never_returns_acked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("durable.orders");
    let b = Broker::start(config(dir.path())).await.unwrap();
    assert_eq!(b.health().store, "journal");
    assert!(
        b.metrics().contains("\ntandem_journal_fsyncs_total "),
        "journal counters in /metrics"
    );
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    for i in 1..=10 {
        p.send_msg(1, i, text(&q, i, true)).await.unwrap();
    }
    for i in 11..=13 {
        p.send_msg(1, i, text(&q, i, false)).await.unwrap();
    }
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Client).await;
    c.consumer(1, 1, &q, 4).await.unwrap();
    let ds: Vec<_> = [
        c.deliver().await,
        c.deliver().await,
        c.deliver().await,
        c.deliver().await,
    ]
    .into();
    assert_eq!(ds.iter().map(n_of).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // A durable ack of 1 and 2: the Ok comes only once the ack is in the journal.
    c.request(|request_id| {
        wire::Ack {
            session_id: 1,
            consumer_id: 1,
            delivery_id: ds[1].delivery_id,
            kind: AckKind::Cumulative as i32,
            request_id,
        }
        .into()
    })
    .await
    .unwrap();
    b.shutdown().await;

    let b = Broker::start(config(dir.path())).await.unwrap();
    let got = drain(&b, &q).await;
    let ns: Vec<i64> = got.iter().map(|g| g.0).collect();
    assert_eq!(
        ns,
        (3..=10).collect::<Vec<_>>(),
        "acked 1-2 gone, non-persistent 11-13 gone, order kept"
    );
    assert!(
        got.iter().all(|g| g.1 && g.2 >= 2),
        "every recovered message is flagged: {got:?}"
    );
    b.shutdown().await;

    // Acked after the restart: gone for good.
    let b = Broker::start(config(dir.path())).await.unwrap();
    assert!(drain(&b, &q).await.is_empty());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_of_stored_messages_are_recognised_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("dedup");
    let b = Broker::start(config(dir.path())).await.unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    producer_named(&mut p, 1, "orders-service-7", &q).await;
    for i in 1..=5 {
        p.send_msg(1, i, text(&q, i, true)).await.unwrap();
    }
    // Same connection, same producer: a resend of 5 is confirmed but not stored again.
    p.send_msg(1, 5, text(&q, 5, true)).await.unwrap();
    b.shutdown().await;

    let b = Broker::start(config(dir.path())).await.unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    // After "failover", the producer resends 4 and 5 (unconfirmed, it thinks) and goes on with 6.
    producer_named(&mut p, 1, "orders-service-7", &q).await;
    for i in 4..=6 {
        p.send_msg(1, i, text(&q, i, true)).await.unwrap();
    }
    let ns: Vec<i64> = drain(&b, &q).await.iter().map(|g| g.0).collect();
    assert_eq!(ns, vec![1, 2, 3, 4, 5, 6], "each message exactly once");
    assert_eq!(b.stats().duplicates.load(Ordering::Relaxed), 2);
    b.shutdown().await;
}

/// Fails every segment write with "no space left" while `full` is set.
#[derive(Default)]
struct DiskFull {
    full: AtomicBool,
}

impl IoFaults for DiskFull {
    fn on_write(&self, _: &Path, _: u64, _: usize) -> Option<(usize, io::Error)> {
        self.full
            .load(Ordering::SeqCst)
            .then(|| (0, io::Error::from(io::ErrorKind::StorageFull)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_persistent_sends_clearly_keeps_serving_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("full.disk");
    let faults = Arc::new(DiskFull::default());
    let mut options = JournalOptions::new(1);
    options.faults = Some(faults.clone());
    let b = Broker::start_with_journal(config(dir.path()), options)
        .await
        .unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Client).await;
    c.consumer(1, 1, &q, 100).await.unwrap();

    p.send_msg(1, 1, text(&q, 1, true)).await.unwrap();
    assert_eq!(n_of(&c.deliver().await), 1);

    faults.full.store(true, Ordering::SeqCst);
    let (code, message) = p.send_msg(1, 2, text(&q, 2, true)).await.unwrap_err();
    assert_eq!(code, ErrorCode::StorageFailure);
    assert!(message.contains("disk is full"), "{message}");
    // Non-persistent traffic and consumers keep going while the disk is full.
    p.send_msg(1, 3, text(&q, 3, false)).await.unwrap();
    assert_eq!(n_of(&c.deliver().await), 3);

    faults.full.store(false, Ordering::SeqCst);
    p.send_msg(1, 4, text(&q, 4, true)).await.unwrap();
    assert_eq!(n_of(&c.deliver().await), 4);
    b.shutdown().await;

    // Confirmed messages are there after a restart; the refused one never is.
    let b = Broker::start(config(dir.path())).await.unwrap();
    let ns: Vec<i64> = drain(&b, &q).await.iter().map(|g| g.0).collect();
    assert_eq!(ns, vec![1, 4]);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_mid_journal_stops_the_start_naming_segment_and_offset_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("corrupt");
    let b = Broker::start(config(dir.path())).await.unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let mut first = tandem_protocol::model::Message::text("FIRST-BODY-MARKER");
    first.destination = Some(q.clone());
    let first = first.with_property("n", 1i64).unwrap();
    p.send_msg(1, 1, first.encode()).await.unwrap();
    p.send_msg(1, 2, text(&q, 2, true)).await.unwrap();
    b.shutdown().await;

    // Flip one byte of the first message's body: its batch fails its CRC, a valid batch follows.
    let seg = std::fs::read_dir(dir.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .find(|p| {
            let b = std::fs::read(p).unwrap();
            b.windows(17).any(|w| w == b"FIRST-BODY-MARKER")
        })
        .expect("the segment holding the first message");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(17)
        .position(|w| w == b"FIRST-BODY-MARKER")
        .unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    let err = Broker::start(config(dir.path())).await.unwrap_err();
    assert!(matches!(err, BrokerError::Journal { .. }), "{err}");
    let text = err.to_string();
    let name = seg.file_name().unwrap().to_str().unwrap();
    assert!(text.contains(name) && text.contains("offset"), "{text}");

    let skip = BrokerConfig {
        journal_skip_corrupt: true,
        ..config(dir.path())
    };
    let b = Broker::start(skip).await.unwrap();
    let ns: Vec<i64> = drain(&b, &q).await.iter().map(|g| g.0).collect();
    assert_eq!(ns, vec![2], "the corrupt batch is skipped, the rest served");
    b.shutdown().await;
}

fn delayed(dest: &tandem_protocol::model::Destination, n: u64, deliver_at: i64) -> bytes::Bytes {
    let mut m = tandem_protocol::model::Message::text("later")
        .with_property("n", n as i64)
        .unwrap();
    m.destination = Some(dest.clone());
    m.delivery_time = deliver_at;
    m.encode()
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// JMSDeliveryTime: never delivered before it, delivered after it, and the schedule survives a
/// restart. (Only "not before" is asserted against the clock: it holds on any loaded machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_delay_is_honoured_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("delayed");
    let b = Broker::start(config(dir.path())).await.unwrap();
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let t0 = wall_ms();
    p.send_msg(1, 1, delayed(&q, 1, t0 + 400)).await.unwrap();
    p.send_msg(1, 2, text(&q, 2, true)).await.unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let first = c.deliver().await;
    assert_eq!(
        n_of(&first),
        2,
        "the undelayed message overtakes the delayed one"
    );
    c.ack(1, 1, first.delivery_id, AckKind::Individual).await;
    let second = c.deliver().await;
    assert!(wall_ms() >= t0 + 400, "delivered before its delivery time");
    assert_eq!(n_of(&second), 1);
    c.ack(1, 1, second.delivery_id, AckKind::Individual).await;
    // Scheduled far ahead, then a restart: still scheduled, not delivered, not lost.
    p.send_msg(1, 3, delayed(&q, 3, wall_ms() + 60_000))
        .await
        .unwrap();
    b.shutdown().await;
    let b = Broker::start(config(dir.path())).await.unwrap();
    let snap = b.queue_snapshot("delayed").unwrap();
    assert_eq!((snap.scheduled, snap.ready), (1, 0), "{snap:?}");
    b.shutdown().await;
}

/// A resend that arrives while its original is still being written (a reconnect to the same
/// broker within the sync window) is answered with the original's outcome, not stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_racing_its_original_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("race");
    let mut options = JournalOptions::new(1);
    // A slow disk keeps the original in flight while the resend arrives.
    options.sync_delay = Duration::from_millis(300);
    let b = Broker::start_with_journal(config(dir.path()), options)
        .await
        .unwrap();
    let mut first = Raw::local(&b).await;
    first.session(1, AckMode::Auto).await;
    producer_named(&mut first, 1, "racer", &q).await;
    let mut second = Raw::local(&b).await;
    second.session(1, AckMode::Auto).await;
    producer_named(&mut second, 1, "racer", &q).await;
    // The original goes out without waiting; the resend follows on another connection.
    first
        .send(
            wire::Send {
                producer_id: 1,
                sequence: 1,
                receipt: true,
                message: text(&q, 1, true),
            }
            .into(),
        )
        .await;
    tokio::task::yield_now().await;
    second.send_msg(1, 1, text(&q, 1, true)).await.unwrap();
    // Both are confirmed; the message is there once.
    let r = first.recv().await;
    assert!(
        matches!(r, Some(tandem_protocol::Frame::SendReceipt(_))),
        "{r:?}"
    );
    let ns: Vec<i64> = drain(&b, &q).await.iter().map(|g| g.0).collect();
    assert_eq!(ns, vec![1], "stored exactly once");
    assert_eq!(b.stats().duplicates.load(Ordering::Relaxed), 1);
    b.shutdown().await;
}

/// Eight connections send the same (producer, sequence) at once: one is stored, all are confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resends_of_one_message_store_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("race8");
    let mut options = JournalOptions::new(1);
    options.sync_delay = Duration::from_millis(50);
    let b = Broker::start_with_journal(config(dir.path()), options)
        .await
        .unwrap();
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut c = Raw::local(&b).await;
        c.session(1, AckMode::Auto).await;
        producer_named(&mut c, 1, "racer8", &q).await;
        conns.push(c);
    }
    let sends = conns.into_iter().map(|mut c| {
        let q = q.clone();
        tokio::spawn(async move { c.send_msg(1, 1, text(&q, 1, true)).await })
    });
    for r in futures::future::join_all(sends).await {
        r.unwrap().unwrap();
    }
    let ns: Vec<i64> = drain(&b, &q).await.iter().map(|g| g.0).collect();
    assert_eq!(ns, vec![1], "stored exactly once");
    assert_eq!(b.stats().duplicates.load(Ordering::Relaxed), 7);
    b.shutdown().await;
}
