//! Active/dormant failover with real processes: two `tandem run --lane` processes on one shared
//! directory. Load runs against the active lane by its direct address (client failover URLs are
//! covered in the client's own tests); after each failover every message is counted on the new
//! active lane (see `support/load.rs`).

mod support;

use std::time::Duration;

use support::load::{self, Ledger};
use support::*;
use tandem_client::Destination;

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

struct Lanes {
    shared: tempfile::TempDir,
    ports: [u16; 2],
    procs: [Option<BrokerProcess>; 2],
}

impl Lanes {
    fn start() -> Lanes {
        let shared = tempfile::tempdir().unwrap();
        let ports = [free_port(), free_port()];
        let a = BrokerProcess::lane("a", shared.path(), ports[0]);
        wait_health(a.http, 200);
        let b = BrokerProcess::lane("b", shared.path(), ports[1]);
        let (_, body) = http_get(b.http, "/health");
        assert!(
            body.contains("\"role\":\"dormant\""),
            "the second lane is dormant: {body}"
        );
        Lanes {
            shared,
            ports,
            procs: [Some(a), Some(b)],
        }
    }

    fn restart(&mut self, i: usize) {
        let name = ["a", "b"][i];
        self.procs[i] = Some(BrokerProcess::lane(name, self.shared.path(), self.ports[i]));
    }

    fn proc(&self, i: usize) -> &BrokerProcess {
        self.procs[i].as_ref().unwrap()
    }

    fn url(&self, i: usize) -> String {
        format!("tcp://127.0.0.1:{}", self.ports[i])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_active_ten_times_loses_nothing() {
    let mut lanes = Lanes::start();
    let q = Destination::queue("failover.orders").unwrap();
    let mut active = 0usize;
    let mut x = 0xfa11_0fe5u64;
    let mut takeovers = Vec::new();
    for round in 0..10 {
        let ledger = Ledger::default();
        let tasks = load::start(&lanes.url(active), &q, 0, 2, &ledger);
        let delay = 200 + next(&mut x) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        lanes.procs[active].take().unwrap().kill9();
        let other = 1 - active;
        let http = lanes.proc(other).http;
        let took = tokio::task::spawn_blocking(move || wait_health(http, 200))
            .await
            .unwrap();
        takeovers.push(took);
        for t in tasks {
            let _ = tokio::time::timeout(GUARD, t)
                .await
                .expect("clients notice the kill");
        }
        let what = format!(
            "round {round}: lane {} killed after {delay} ms, takeover in {took:?}",
            ["a", "b"][active]
        );
        load::check(&lanes.url(other), &q, &ledger, &what).await;
        // The killed lane comes back as the dormant.
        lanes.restart(active);
        active = other;
    }
    takeovers.sort();
    eprintln!(
        "takeover (kill -9 to /health 200): median {:?}, max {:?}",
        takeovers[5], takeovers[9]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_active_is_fenced_when_it_wakes_and_writes_nothing_more() {
    let lanes = Lanes::start();
    let q = Destination::queue("paused").unwrap();
    let ledger = Ledger::default();
    let tasks = load::start(&lanes.url(0), &q, 0, 2, &ledger);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let a = lanes.proc(0);
    signal(a.pid(), "STOP");
    let http_b = lanes.proc(1).http;
    tokio::task::spawn_blocking(move || wait_health(http_b, 200))
        .await
        .unwrap();
    // Frozen for well past its TTL; now it wakes up: it must fence itself, not write.
    let confirmed_before_wake = ledger.confirmed.lock().unwrap().len();
    signal(a.pid(), "CONT");
    let http_a = a.http;
    tokio::task::spawn_blocking(move || wait_health(http_a, 503))
        .await
        .unwrap();
    for t in tasks {
        let _ = tokio::time::timeout(GUARD, t)
            .await
            .expect("a's clients are disconnected");
    }
    let (_, body) = http_get(http_a, "/health");
    assert!(
        !body.contains("\"role\":\"active\""),
        "the old active no longer claims to be active: {body}"
    );
    // Whatever the old active confirmed, before or after its pause, is on the new active: a write
    // it made after the new epoch's marker would be missing here.
    load::check(&lanes.url(1), &q, &ledger, "after SIGSTOP/SIGCONT").await;
    eprintln!(
        "confirmed before the wake: {confirmed_before_wake}, after: {}",
        ledger.confirmed.lock().unwrap().len()
    );
    // The journal files themselves: stop both lanes, read a copy of the journal back. A batch of
    // the old epoch written after the new epoch's marker would be counted as stale (invariant 6).
    let Lanes {
        shared, mut procs, ..
    } = lanes;
    for p in procs.iter_mut() {
        if let Some(p) = p.take() {
            p.terminate();
        }
    }
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shared.path().join("journal")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    let (_j, recovered) = tandem_broker::journal::Journal::open(
        copy.path(),
        tandem_broker::journal::JournalOptions::new(1000),
    )
    .unwrap();
    assert_eq!(
        recovered.report.stale_batches_ignored, 0,
        "the old epoch wrote after the new marker"
    );
    assert!(
        recovered.max_epoch >= 2,
        "the new active's epoch is in the journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_dormant_leaves_the_active_alone_and_killing_both_loses_nothing() {
    let mut lanes = Lanes::start();
    let q = Destination::queue("both").unwrap();
    let ledger = Ledger::default();
    let tasks = load::start(&lanes.url(0), &q, 0, 2, &ledger);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ledger.confirmed.lock().unwrap().len();
    lanes.procs[1].take().unwrap().kill9();
    // The active keeps confirming after the dormant died.
    let deadline = std::time::Instant::now() + GUARD;
    while ledger.confirmed.lock().unwrap().len() < before + 500 {
        assert!(
            std::time::Instant::now() < deadline,
            "the active stalled after the dormant's death"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(lanes.proc(0).http, "/health").0, 200);
    // Now both die; both restart; whichever becomes active has everything.
    lanes.procs[0].take().unwrap().kill9();
    for t in tasks {
        let _ = tokio::time::timeout(GUARD, t)
            .await
            .expect("clients notice the kill");
    }
    lanes.restart(0);
    lanes.restart(1);
    let (ha, hb) = (lanes.proc(0).http, lanes.proc(1).http);
    let winner = tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        loop {
            if http_get(ha, "/health").0 == 200 {
                return 0;
            }
            if http_get(hb, "/health").0 == 200 {
                return 1;
            }
            assert!(
                t0.elapsed() < GUARD,
                "no lane became active after restarting both"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    })
    .await
    .unwrap();
    load::check(&lanes.url(winner), &q, &ledger, "after killing both").await;
}

/// The main claim: continuous persistent load through 10 kills of the active lane, with
/// producers and client-ack consumers on a failover URL. Every confirmed message reaches a
/// consumer; a message seen twice is flagged redelivered the second time; no send fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_load_on_a_failover_url_survives_ten_kills() {
    let mut lanes = Lanes::start();
    let url = format!(
        "failover:(tcp://127.0.0.1:{},tcp://127.0.0.1:{})?maxReconnectDelay=200&maxReconnectTime=30000&randomize=false",
        lanes.ports[0], lanes.ports[1]
    );
    let q = Destination::queue("continuous").unwrap();
    let load = load::Continuous::start(&url, &q, 2, 2);
    // 10 kills in the default run; `FAILOVER_KILLS=200 cargo test --test t55_failover continuous`
    // for the long run (docs/FAILOVER.md).
    let kills: usize = std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut x = 0xc0ff_ee00u64;
    let mut active = 0usize;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(300 + next(&mut x) % 500)).await;
        lanes.procs[active].take().unwrap().kill9();
        let other = 1 - active;
        let http = lanes.proc(other).http;
        tokio::task::spawn_blocking(move || wait_health(http, 200))
            .await
            .unwrap();
        lanes.restart(active);
        active = other;
    }
    let (confirmed, again) = load.finish(&format!("{kills} kills")).await;
    eprintln!(
        "{confirmed} confirmed over {kills} kills; {again} delivered more than once, all flagged"
    );
}
