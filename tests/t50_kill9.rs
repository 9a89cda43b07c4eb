//! Crash safety of the journal: pipelined producers send persistent messages, a consumer acks some,
//! the broker process is killed with SIGKILL at a (seeded) random moment, restarted on the same data
//! directory, and every message is counted (see `support/load.rs`):
//!
//! - every message confirmed to its producer and not acknowledged is there exactly once, flagged
//!   redelivered (invariants 1 and 2);
//! - no acknowledged message comes back (the consumer's acks were confirmed, so durable);
//! - nothing is delivered twice; unconfirmed sends may or may not be there, but at most once;
//! - messages whose ack was sent but never answered (the kill came first) are in doubt: the ack
//!   may or may not have become durable, so they may or may not come back.

mod support;

use std::time::Duration;

use support::load::{self, Ledger};
use support::*;
use tandem_client::Destination;

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
    let q = Destination::queue("crash.orders").unwrap();
    let ledger = Ledger::default();
    let tasks = load::start(&broker.url(), &q, 0, 3, &ledger);
    let mut x = seed;
    let delay = 300 + next(&mut x) % 1200;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    broker.kill9();
    for t in tasks {
        let _ = tokio::time::timeout(GUARD, t)
            .await
            .expect("clients notice the kill");
    }
    let broker = BrokerProcess::start_in(&data, &[]);
    load::check(
        &broker.url(),
        &q,
        &ledger,
        &format!("seed {seed:#x}, killed after {delay} ms"),
    )
    .await;
    broker.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_pipelined_persistent_load_loses_and_doubles_nothing() {
    for seed in [0x5eed_0001u64, 0x5eed_0002, 0x5eed_0003] {
        round(seed).await;
    }
}
