//! Paging and the full policies (docs/PAGING.md): a backlog far beyond a destination's memory
//! budget is kept as compact entries with bodies in the journal, and consumed completely, in
//! priority and send order, exactly once, with selectors, and again after a restart. `block`
//! and `fail` push back on producers; what cannot be paged (non-persistent messages, no
//! journal) is refused once the budget is used up.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use support::*;
use tandem_broker::settings::{DestinationSettings, FullPolicy};
use tandem_broker::{Broker, BrokerConfig};
use tandem_protocol::ErrorCode;
use tandem_protocol::model::{DeliveryMode, Destination, Message};
use tandem_protocol::wire::{self, AckKind, AckMode};

const LIMIT: usize = 16 << 10;
const BODY: usize = 1000;

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        persistence: true,
        data_dir: dir.to_path_buf(),
        max_message_size: 4096,
        destination_memory_limit: LIMIT,
        global_memory_limit: 1 << 20,
        producer_block_timeout_ms: 200,
        ..BrokerConfig::embedded()
    }
}

fn with_policy(mut c: BrokerConfig, pattern: &str, policy: FullPolicy) -> BrokerConfig {
    c.address_settings.push(DestinationSettings {
        pattern: pattern.into(),
        full_policy: policy,
        ..DestinationSettings::default()
    });
    c
}

/// Message `n`: priority from `n`, a colour property, a body of about 1 KB.
fn msg(dest: &Destination, n: u64, persistent: bool) -> Bytes {
    let mut m = Message::text(format!("{n:06}-{}", "x".repeat(BODY)))
        .with_property("n", n as i64)
        .unwrap()
        .with_property("color", if n.is_multiple_of(2) { "red" } else { "blue" })
        .unwrap();
    m.set_priority(prio(n)).unwrap();
    m.destination = Some(dest.clone());
    m.message_id = Some(format!("ID:{n}"));
    if !persistent {
        m.delivery_mode = DeliveryMode::NonPersistent;
    }
    m.encode()
}

fn prio(n: u64) -> u8 {
    [0, 4, 9][(n % 3) as usize]
}

/// The order a queue must deliver `ns` in: priority 9 to 0, send order within a priority.
fn expected_order(ns: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = ns.into_iter().collect();
    v.sort_by_key(|n| (std::cmp::Reverse(prio(*n)), *n));
    v
}

/// A connection with session 1 and producer 1 to `q`, under a name no other producer has (the
/// support helper names every producer `p-1`: duplicate detection would drop our sends).
async fn producer(b: &Broker, q: &Destination) -> Raw {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let name = format!(
        "paging-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut p = Raw::local(b).await;
    p.session(1, AckMode::Auto).await;
    p.request(|request_id| {
        wire::ProducerOpen {
            request_id,
            session_id: 1,
            producer_id: 1,
            producer_name: name.clone(),
            destination: Some(q.to_wire()),
        }
        .into()
    })
    .await
    .unwrap();
    p
}

async fn send_all(b: &Broker, q: &Destination, ns: impl IntoIterator<Item = u64>) {
    let mut p = producer(b, q).await;
    for n in ns {
        p.send_msg(1, n, msg(q, n, true))
            .await
            .unwrap_or_else(|e| panic!("send {n}: {e:?}"));
    }
}

/// Consumes exactly `n` messages with an individual-ack consumer (with `selector`), each waited
/// for up to the guard time (a loaded machine may pause for seconds), then checks that nothing
/// more comes (exactly once). Returns the `n`s in delivery order and whether any came flagged
/// redelivered.
async fn drain(b: &Broker, q: &Destination, selector: &str, n: usize) -> (Vec<u64>, bool) {
    let mut c = Raw::local(b).await;
    c.session(1, AckMode::Individual).await;
    c.request(|request_id| {
        wire::ConsumerOpen {
            request_id,
            session_id: 1,
            consumer_id: 1,
            destination: Some(q.to_wire()),
            prefetch: 10,
            selector: selector.into(),
            ..Default::default()
        }
        .into()
    })
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut redelivered = false;
    while got.len() < n {
        let d = c.deliver().await;
        got.push(n_of(&d) as u64);
        redelivered |= d.redelivered;
        c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
    }
    if let Some(extra) = c.deliver_within(Duration::from_millis(300)).await {
        panic!("a message beyond the {n} expected: {}", n_of(&extra));
    }
    (got, redelivered)
}

fn metric(b: &Broker, family: &str, queue: &str) -> u64 {
    let text = b.metrics();
    let prefix = format!("{family}{{kind=\"queue\",name=\"{queue}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{prefix} not in /metrics"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_far_beyond_the_budget_is_paged_and_consumed_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path())).await.unwrap();
    let q = queue("paged.orders");
    let count = 300u64; // ~300 KB through a 16 KiB budget
    send_all(&b, &q, 1..=count).await;

    let snap = b.queue_snapshot("paged.orders").unwrap();
    assert_eq!(snap.ready, count as usize);
    assert!(
        snap.memory <= LIMIT,
        "bodies in memory stay within the budget: {snap:?}"
    );
    assert!(
        snap.paged as u64 >= count - (LIMIT / BODY) as u64,
        "{snap:?}"
    );
    assert_eq!(
        metric(&b, "tandem_destination_paged", "paged.orders"),
        snap.paged as u64
    );
    assert!(metric(&b, "tandem_destination_paged_bytes", "paged.orders") > 250_000);
    assert_eq!(
        b.memory_used().0,
        snap.memory,
        "the global budget counts the same bytes"
    );

    let (got, redelivered) = drain(&b, &q, "", count as usize).await;
    assert_eq!(
        got,
        expected_order(1..=count),
        "priority, then send order, each once"
    );
    assert!(!redelivered);
    assert!(metric(&b, "tandem_destination_page_reads_total", "paged.orders") >= snap.paged as u64);
    assert_eq!(
        metric(
            &b,
            "tandem_destination_page_read_errors_total",
            "paged.orders"
        ),
        0
    );
    let snap = b.queue_snapshot("paged.orders").unwrap();
    assert_eq!((snap.ready, snap.inflight, snap.paged), (0, 0, 0));
    assert_eq!(snap.memory, 0);
    assert_eq!(b.memory_used().0, 0, "everything released");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_see_paged_messages_and_each_consumer_gets_exactly_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path())).await.unwrap();
    let q = queue("paged.colors");
    send_all(&b, &q, 1..=200).await;
    assert!(b.queue_snapshot("paged.colors").unwrap().paged > 150);

    let (red, _) = drain(&b, &q, "color = 'red'", 100).await;
    assert_eq!(
        red,
        expected_order((1..=200).filter(|n: &u64| n.is_multiple_of(2)))
    );
    // The blue ones were read back to be judged and left paged: they are all still there.
    let snap = b.queue_snapshot("paged.colors").unwrap();
    assert_eq!(snap.ready, 100, "{snap:?}");
    assert!(
        snap.paged >= 90,
        "read back for the selector, then paged again: {snap:?}"
    );
    let (blue, _) = drain(&b, &q, "color = 'blue' AND n > 0", 100).await;
    assert_eq!(blue, expected_order((1..=200).filter(|n| n % 2 == 1)));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_paged_backlog_comes_back_paged_in_order_without_acked_ones() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("paged.restart");
    let count = 240u64;
    let b = Broker::start(config(dir.path())).await.unwrap();
    send_all(&b, &q, 1..=count).await;
    // Acknowledge the first 30 in delivery order (durable acks: client waits for them).
    let first: Vec<u64> = {
        let mut c = Raw::local(&b).await;
        c.session(1, AckMode::Individual).await;
        c.consumer(1, 1, &q, 30).await.unwrap();
        let mut acked = Vec::new();
        for _ in 0..30 {
            let d = c.deliver().await;
            acked.push(n_of(&d) as u64);
            c.request(|request_id| {
                wire::Ack {
                    session_id: 1,
                    consumer_id: 1,
                    delivery_id: d.delivery_id,
                    kind: AckKind::Individual as i32,
                    request_id,
                }
                .into()
            })
            .await
            .unwrap();
        }
        acked
    };
    assert_eq!(first, expected_order(1..=count)[..30]);
    b.shutdown().await;

    let b = Broker::start(config(dir.path())).await.unwrap();
    let snap = b.queue_snapshot("paged.restart").unwrap();
    assert_eq!(snap.ready, (count - 30) as usize);
    assert!(
        snap.memory <= LIMIT && snap.paged > 150,
        "recovered paged: {snap:?}"
    );
    let (got, redelivered) = drain(&b, &q, "", (count - 30) as usize).await;
    let acked: HashSet<u64> = first.into_iter().collect();
    assert_eq!(
        got,
        expected_order((1..=count).filter(|n| !acked.contains(n))),
        "every unacknowledged message once, in order; no acknowledged one"
    );
    assert!(redelivered, "recovered messages are flagged");
    b.shutdown().await;

    let b = Broker::start(config(dir.path())).await.unwrap();
    assert_eq!(b.queue_snapshot("paged.restart").map_or(0, |s| s.ready), 0);
    b.shutdown().await;
}

/// Sends until the first refusal; returns (messages accepted, the refusal, time it took).
async fn fill(
    b: &Broker,
    q: &Destination,
    persistent: bool,
) -> (u64, (ErrorCode, String), Duration) {
    let mut p = producer(b, q).await;
    for n in 1..=200 {
        let t = tokio::time::Instant::now();
        if let Err(e) = p.send_msg(1, n, msg(q, n, persistent)).await {
            return (n - 1, e, t.elapsed());
        }
    }
    panic!("200 messages of 1 KB never filled a 16 KiB budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_waits_for_room_and_fail_refuses_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_policy(config(dir.path()), "blocking.#", FullPolicy::Block);
    // Long enough for a consumer to make room below even on a loaded machine.
    c.producer_block_timeout_ms = 3000;
    let c = with_policy(c, "failing.#", FullPolicy::Fail);
    let b = Broker::start(c).await.unwrap();

    let q = queue("blocking.q");
    let (accepted, (code, message), waited) = fill(&b, &q, true).await;
    assert_eq!(code, ErrorCode::DestinationFull);
    assert!(message.contains("waited 3000 ms"), "{message}");
    assert!(
        waited >= Duration::from_millis(3000),
        "blocked first: {waited:?}"
    );
    assert!(accepted >= (LIMIT / 1100) as u64 && accepted <= (LIMIT / BODY) as u64 + 1);
    assert_eq!(
        b.queue_snapshot("blocking.q").unwrap().paged,
        0,
        "block never pages"
    );
    // A blocked send goes through as soon as a consumer makes room.
    let mut p = producer(&b, &q).await;
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Individual).await;
    let send = tokio::spawn(async move {
        let r = p
            .send_msg(1, 1000, msg(&queue("blocking.q"), 1000, true))
            .await;
        (r, p)
    });
    c.consumer(1, 1, &q, 1).await.unwrap();
    let d = c.deliver().await;
    c.ack(1, 1, d.delivery_id, AckKind::Individual).await;
    let (r, _p) = send.await.unwrap();
    r.expect("room was made within the block timeout");

    let q = queue("failing.q");
    let (_, (code, message), _) = fill(&b, &q, true).await;
    assert_eq!(code, ErrorCode::DestinationFull);
    assert!(
        message.contains("waited 0 ms"),
        "fail does not wait: {message}"
    );
    assert_eq!(b.queue_snapshot("failing.q").unwrap().paged, 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_paged_is_refused_once_the_budget_is_used_up() {
    // Non-persistent messages never touch the journal: a `page` destination blocks them.
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path())).await.unwrap();
    let q = queue("paged.mixed");
    let (accepted, (code, message), _) = fill(&b, &q, false).await;
    assert_eq!(code, ErrorCode::DestinationFull, "{message}");
    assert!(message.contains("waited 200 ms"), "{message}");
    assert!(accepted <= (LIMIT / BODY) as u64 + 1);
    // ... while persistent ones to the same full destination are paged.
    let mut p = producer(&b, &q).await;
    for n in 500..520 {
        p.send_msg(1, n, msg(&q, n, true)).await.unwrap();
    }
    assert_eq!(b.queue_snapshot("paged.mixed").unwrap().paged, 20);
    b.shutdown().await;

    // Without a journal there is nothing to page to: `page` acts as `block`.
    let c = BrokerConfig {
        persistence: false,
        ..config(dir.path())
    };
    let b = Broker::start(c).await.unwrap();
    let (_, (code, message), _) = fill(&b, &q, true).await;
    assert_eq!(code, ErrorCode::DestinationFull, "{message}");
    assert_eq!(b.queue_snapshot("paged.mixed").unwrap().paged, 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_budget_pages_or_refuses_across_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.destination_memory_limit = 1 << 20;
    c.global_memory_limit = LIMIT;
    let b = Broker::start(c).await.unwrap();
    // The first queue uses up the global budget (its own is far from full)...
    send_all(&b, &queue("global.a"), 1..=40).await;
    let a = b.queue_snapshot("global.a").unwrap();
    assert!(a.memory <= LIMIT && a.paged >= 40 - (LIMIT / BODY), "{a:?}");
    // ... so a second one pages persistent messages from the start...
    let q = queue("global.b");
    send_all(&b, &q, 1..=10).await;
    assert_eq!(b.queue_snapshot("global.b").unwrap().paged, 10);
    // ... and refuses non-persistent ones, naming the global budget.
    let (accepted, (code, message), _) = fill(&b, &queue("global.c"), false).await;
    assert_eq!((accepted, code), (0, ErrorCode::DestinationFull));
    assert!(message.contains("all destinations: "), "{message}");
    let (used, limit) = b.memory_used();
    assert!(used <= limit, "{used} > {limit}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selective_consumer_reads_a_bounded_window_of_a_deep_paged_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path())).await.unwrap();
    let q = queue("paged.deep");
    // 600 blue (odd n) ahead of one red of priority 0 (n divisible by 6): in dispatch order
    // the red one comes after more than PAGE_SCAN_LIMIT paged blue ones.
    let blues: Vec<u64> = (0..600).map(|k| 2 * k + 1).collect();
    send_all(&b, &q, blues.iter().copied().chain([6000])).await;
    assert!(blues.len() > tandem_broker::queue::PAGE_SCAN_LIMIT + LIMIT / BODY);
    let reads_before = metric(&b, "tandem_destination_page_reads_total", "paged.deep");

    let mut red = Raw::local(&b).await;
    red.session(1, AckMode::Individual).await;
    red.request(|request_id| {
        wire::ConsumerOpen {
            request_id,
            session_id: 1,
            consumer_id: 1,
            destination: Some(q.to_wire()),
            prefetch: 10,
            selector: "color = 'red'".into(),
            ..Default::default()
        }
        .into()
    })
    .await
    .unwrap();
    assert!(
        red.deliver_within(Duration::from_millis(500))
            .await
            .is_none(),
        "the red message lies beyond the scan window"
    );
    let reads = metric(&b, "tandem_destination_page_reads_total", "paged.deep") - reads_before;
    assert!(
        reads <= (tandem_broker::queue::PAGE_SCAN_LIMIT + 16) as u64,
        "one bounded pass, not one read per queued message: {reads}"
    );
    // Once the blue ones are consumed, the red consumer gets its message.
    // Slow on purpose: every ack's dispatch pass also reads PAGE_SCAN_LIMIT messages for the
    // red consumer's sake.
    let (got, _) = drain(&b, &q, "color = 'blue'", blues.len()).await;
    assert_eq!(got, expected_order(blues.iter().copied()));
    let d = red.deliver().await;
    assert_eq!(n_of(&d), 6000);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paged_messages_read_back_after_compaction_moved_their_records() {
    let dir = tempfile::tempdir().unwrap();
    // A small budget (4 KiB) so that few kept messages are mostly paged and their segment soon
    // holds less than the compaction ratio's share of live records.
    let mut c = config(dir.path());
    c.address_settings.push(DestinationSettings {
        pattern: "paged.keep".into(),
        memory_limit: 4096,
        ..DestinationSettings::default()
    });
    // The broker's own journal options (one dup id per producer), with small segments.
    let mut options = c.journal_options();
    options.segment_size = 64 << 10;
    let b = Broker::start_with_journal(c, options).await.unwrap();
    let keep = queue("paged.keep");
    let mut kp = producer(&b, &keep).await;
    for n in 1..=10 {
        kp.send_msg(1, n, msg(&keep, n, true)).await.unwrap();
    }
    assert!(b.queue_snapshot("paged.keep").unwrap().paged >= 6);
    // Traffic on another queue, consumed and acknowledged, until the first segment (holding the
    // paged messages' records) has been compacted away.
    let first = dir.path().join("journal").join("0000000000000001.seg");
    let churn = queue("paged.churn");
    let mut cp = producer(&b, &churn).await;
    let mut cc = Raw::local(&b).await;
    cc.session(1, AckMode::Auto).await;
    cc.consumer(1, 1, &churn, 100).await.unwrap();
    let mut seq = 0;
    while first.exists() {
        assert!(seq < 5_000, "the first segment was never compacted");
        for _ in 0..50 {
            seq += 1;
            cp.send_msg(1, seq, msg(&churn, seq, true)).await.unwrap();
            let d = cc.deliver().await;
            cc.ack(1, 1, d.delivery_id, AckKind::Individual).await;
        }
        if seq == 50 {
            // Keep's producer writes again, so its live duplicate-detection record (which
            // compaction does not move) leaves the first segment.
            kp.send_msg(1, 11, msg(&keep, 11, true)).await.unwrap();
        }
    }
    let (got, _) = drain(&b, &keep, "", 11).await;
    assert_eq!(
        got,
        expected_order(1..=11),
        "bodies read from their moved records"
    );
    assert_eq!(
        metric(
            &b,
            "tandem_destination_page_read_errors_total",
            "paged.keep"
        ),
        0
    );
    b.shutdown().await;
}
