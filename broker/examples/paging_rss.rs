//! Memory with a persistent backlog far larger than the memory budget (docs/BENCHMARKS.md,
//! "Paging"). Starts a journaling broker in process, fills one queue with `--messages` persistent
//! messages of `--body` bytes from `--producers` in-process connections (no consumer), and reports
//! the process's resident memory (VmRSS, peak VmHWM from /proc/self/status) as the backlog grows;
//! then drains `--drain` messages with one consumer to measure paged read-back, with and without a
//! selector that matches nothing but must read each body to say so.
//!
//! ```text
//! cargo run --release -p tandem-broker --example paging_rss -- \
//!     --dir /tmp/tandem-rss --messages 10000000 --body 1024
//! ```
//!
//! The data directory is deleted at the end unless `--keep` is given.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::Raw;
use tandem_broker::{Broker, BrokerConfig};
use tandem_protocol::Frame;
use tandem_protocol::model::{Destination, Message};
use tandem_protocol::wire::{self, AckMode};

struct Args {
    dir: PathBuf,
    messages: u64,
    body: usize,
    producers: u64,
    drain: u64,
    global_limit: usize,
    selector_backlog: u64,
    keep: bool,
}

fn args() -> Args {
    let mut a = Args {
        dir: std::env::temp_dir().join("tandem-paging-rss"),
        messages: 1_000_000,
        body: 1024,
        producers: 4,
        drain: 200_000,
        global_limit: 256 << 20,
        selector_backlog: 100_000,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--dir" => a.dir = v().into(),
            "--messages" => a.messages = v().parse().expect("--messages N"),
            "--body" => a.body = v().parse().expect("--body BYTES"),
            "--producers" => a.producers = v().parse().expect("--producers N"),
            "--drain" => a.drain = v().parse().expect("--drain N"),
            "--global-limit" => a.global_limit = v().parse().expect("--global-limit BYTES"),
            "--selector-backlog" => a.selector_backlog = v().parse().expect("N"),
            "--keep" => a.keep = true,
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// (VmRSS, VmHWM) in MiB.
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:") / 1024, kb("VmHWM:") / 1024)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn page_reads(b: &Broker, queue: &str) -> u64 {
    let prefix = format!("tandem_destination_page_reads_total{{kind=\"queue\",name=\"{queue}\"}} ");
    b.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn open_producer(b: &Broker, q: &Destination, name: String) -> Raw {
    let mut p = Raw::local(b).await;
    p.session(1, AckMode::Auto).await;
    p.request(|request_id| {
        wire::ProducerOpen {
            request_id,
            session_id: 1,
            producer_id: 1,
            producer_name: name,
            destination: Some(q.to_wire()),
        }
        .into()
    })
    .await
    .expect("producer opens");
    p
}

/// Consumes `n` messages (client-acknowledged every 100) and returns the time it took.
async fn consume(b: &Broker, q: &Destination, n: u64, selector: &str) -> (u64, Duration) {
    let mut c = Raw::local(b).await;
    c.session(1, AckMode::Client).await;
    c.request(|request_id| {
        wire::ConsumerOpen {
            request_id,
            session_id: 1,
            consumer_id: 1,
            destination: Some(q.to_wire()),
            prefetch: 1000,
            selector: selector.into(),
            ..Default::default()
        }
        .into()
    })
    .await
    .expect("consumer opens");
    let t = Instant::now();
    let mut got = 0;
    while got < n {
        match c.recv_within(Duration::from_secs(2)).await {
            Some(Frame::Deliver(d)) => {
                got += 1;
                if got % 100 == 0 {
                    c.ack(1, 1, d.delivery_id, wire::AckKind::Cumulative).await;
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    (got, t.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let _ = std::fs::remove_dir_all(&a.dir);
    let mut config = BrokerConfig {
        persistence: true,
        data_dir: a.dir.clone(),
        global_memory_limit: a.global_limit,
        destination_memory_limit: a.global_limit,
        ..BrokerConfig::embedded()
    };
    // The selector measurement's queue pages after 1 MiB whatever the global budget holds then.
    config
        .address_settings
        .push(tandem_broker::settings::DestinationSettings {
            pattern: "selective".into(),
            memory_limit: 1 << 20,
            ..Default::default()
        });
    let b = Broker::start(config).await.expect("broker starts");
    let q = Destination::queue("backlog").unwrap();
    let mut m = Message::bytes(vec![7u8; a.body]);
    m.destination = Some(q.clone());
    // One encoded message sent over and over: the broker keeps each as its own message (own id,
    // own journal record); the client side then costs no memory.
    let encoded: Bytes = m.encode();
    println!(
        "paging_rss: {} messages of {} encoded bytes, {} producers, global limit {} MiB, dir {}",
        a.messages,
        encoded.len(),
        a.producers,
        a.global_limit >> 20,
        a.dir.display()
    );
    let (rss0, _) = rss();
    let started = Instant::now();
    let per = a.messages / a.producers;
    let mut tasks = Vec::new();
    for i in 0..a.producers {
        let mut p = open_producer(&b, &q, format!("rss-{i}")).await;
        let encoded = encoded.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 1..=per {
                // A receipt every 10,000 sends keeps this producer within sight of the journal.
                if seq % 10_000 == 0 || seq == per {
                    p.send_msg(1, seq, encoded.clone())
                        .await
                        .unwrap_or_else(|e| panic!("send {seq}: {e:?}"));
                } else {
                    p.send(
                        wire::Send {
                            producer_id: 1,
                            sequence: seq,
                            receipt: false,
                            message: encoded.clone(),
                        }
                        .into(),
                    )
                    .await;
                }
            }
            p
        }));
    }
    let total = per * a.producers;
    let mut next_report = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let s = b.queue_snapshot("backlog").unwrap_or_else(|| {
            panic!("the backlog queue exists once producers opened");
        });
        let depth = (s.ready + s.inflight) as u64;
        if Instant::now() >= next_report || depth >= total {
            let (r, h) = rss();
            println!(
                "  {:>6.1}s depth {:>9} in memory {:>4} MiB paged {:>9} ({:>6} MiB) rss {r} MiB hwm {h} MiB",
                started.elapsed().as_secs_f64(),
                depth,
                s.memory >> 20,
                s.paged,
                s.paged_bytes >> 20
            );
            next_report += Duration::from_secs(10);
        }
        if depth >= total {
            break;
        }
    }
    let mut producers = Vec::new();
    for t in tasks {
        producers.push(t.await.expect("producer task"));
    }
    let fill = started.elapsed();
    let (r, h) = rss();
    let s = b.queue_snapshot("backlog").unwrap();
    println!(
        "filled: {total} messages in {:.1}s ({:.0} msg/s); journal {} MiB on disk",
        fill.as_secs_f64(),
        total as f64 / fill.as_secs_f64(),
        dir_bytes(&a.dir.join("journal")) >> 20
    );
    println!(
        "RESULT backlog={total} body={} rss_mib={r} hwm_mib={h} rss_at_start_mib={rss0} in_memory_mib={} paged={} per_message_bytes={:.0}",
        encoded.len(),
        s.memory >> 20,
        s.paged,
        ((r - rss0) << 20) as f64 / total as f64
    );
    drop(producers);

    let (n, took) = consume(&b, &q, a.drain, "").await;
    println!(
        "drain (no selector): {n} paged messages in {:.2}s ({:.0} msg/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    let (r, h) = rss();
    println!("after drain: rss {r} MiB hwm {h} MiB");

    // A selector that matches nothing must still read every paged body it looks at; one dispatch
    // pass reads at most PAGE_SCAN_LIMIT of them (the open is answered after that first pass).
    let sq = Destination::queue("selective").unwrap();
    let mut m = Message::bytes(vec![7u8; a.body]);
    m.destination = Some(sq.clone());
    let sel = m.encode();
    let mut p = open_producer(&b, &sq, "rss-selective".into()).await;
    for seq in 1..=a.selector_backlog {
        let receipt = seq == a.selector_backlog;
        p.send(
            wire::Send {
                producer_id: 1,
                sequence: seq,
                receipt,
                message: sel.clone(),
            }
            .into(),
        )
        .await;
    }
    p.recv().await.expect("receipt of the last send");
    let paged = b.queue_snapshot("selective").unwrap().paged;
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    let t = Instant::now();
    // The Ok of the open comes before the consumer is attached (and the first dispatch pass
    // runs); the next request on the same connection is answered after it.
    c.request(|request_id| {
        wire::ConsumerOpen {
            request_id,
            session_id: 1,
            consumer_id: 1,
            destination: Some(sq.to_wire()),
            prefetch: 1000,
            selector: "JMSPriority = 10".into(),
            ..Default::default()
        }
        .into()
    })
    .await
    .expect("consumer opens");
    c.session(2, AckMode::Auto).await;
    let took = t.elapsed();
    let reads = page_reads(&b, "selective");
    println!(
        "selector matching nothing over {paged} paged messages: first dispatch pass {:.2} ms, \
         {reads} bodies read back ({:.1} us per read-back and selector evaluation)",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / reads.max(1) as f64
    );
    b.shutdown().await;
    if !a.keep {
        let _ = std::fs::remove_dir_all(&a.dir);
    }
}
