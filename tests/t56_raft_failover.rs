//! Failover with the quorum (openraft) lease, as real processes: two `tandem run --lane --lease raft`
//! lanes and a `tandem witness`, each raft member with its own local directory; the lanes share a
//! directory for the journal only. The lease lives in the three-member group, so any two members
//! are a majority: the witness can die without the lanes noticing, and with the witness dead and
//! the active killed, nobody may take over until a majority is back.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::load::{self, Continuous, Ledger};
use support::*;
use tandem_client::Destination;

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

const LANES: [&str; 2] = ["a", "b"];

/// A running `tandem witness`.
struct Witness {
    child: Child,
}

impl Witness {
    fn start(port: u16, peers: &str, dir: &std::path::Path) -> Witness {
        let mut child = Command::new(tandem_bin())
            .args(["witness", "--id", "w", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["--peers", peers, "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tandem witness starts");
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[witness] {line}");
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(GUARD).expect("the witness prints READY");
        assert!(
            line.starts_with("READY raft=127.0.0.1:") && line.ends_with("witness=w"),
            "{line}"
        );
        Witness { child }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Group {
    shared: tempfile::TempDir,
    /// Each member's own raft directory: local/a, local/b, local/w.
    local: tempfile::TempDir,
    ports: [u16; 2],
    raft: [u16; 3],
    peers: String,
    lanes: [Option<BrokerProcess>; 2],
    witness: Option<Witness>,
}

impl Group {
    /// Lanes a and b and the witness; returns once one lane serves.
    fn start() -> Group {
        let raft = [free_port(), free_port(), free_port()];
        let peers = format!(
            "a=127.0.0.1:{},b=127.0.0.1:{},w=127.0.0.1:{}",
            raft[0], raft[1], raft[2]
        );
        let mut g = Group {
            shared: tempfile::tempdir().unwrap(),
            local: tempfile::tempdir().unwrap(),
            ports: [free_port(), free_port()],
            raft,
            peers,
            lanes: [None, None],
            witness: None,
        };
        g.restart_lane(0);
        g.restart_lane(1);
        g.restart_witness();
        g.wait_active();
        g
    }

    fn raft_dir(&self, name: &str) -> PathBuf {
        self.local.path().join(name)
    }

    fn restart_lane(&mut self, i: usize) {
        let listen = format!("127.0.0.1:{}", self.raft[i]);
        let dir = self.raft_dir(LANES[i]);
        let extra = [
            "--lease",
            "raft",
            "--raft-listen",
            &listen,
            "--raft-peers",
            &self.peers,
            "--raft-dir",
            dir.to_str().unwrap(),
        ];
        self.lanes[i] = Some(BrokerProcess::lane_with(
            LANES[i],
            self.shared.path(),
            self.ports[i],
            &extra,
        ));
    }

    fn restart_witness(&mut self) {
        self.witness = Some(Witness::start(
            self.raft[2],
            &self.peers,
            &self.raft_dir("w"),
        ));
    }

    fn lane(&self, i: usize) -> &BrokerProcess {
        self.lanes[i].as_ref().unwrap()
    }

    /// The health of lane `i`: (status, epoch).
    fn health(&self, i: usize) -> (u16, Option<u64>) {
        let (status, body) = http_get(self.lane(i).http, "/health");
        let epoch = body
            .split("\"epoch\":")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|v| v.parse().ok());
        (status, epoch)
    }

    /// The lane that serves, waiting (bounded) for one.
    fn wait_active(&self) -> usize {
        let t0 = Instant::now();
        loop {
            for i in 0..2 {
                if self.lanes[i].is_some() && self.health(i).0 == 200 {
                    return i;
                }
            }
            assert!(t0.elapsed() < GUARD, "no lane became active");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn failover_url(&self) -> String {
        format!(
            "failover:(tcp://127.0.0.1:{},tcp://127.0.0.1:{})?maxReconnectDelay=200&maxReconnectTime=30000&randomize=false",
            self.ports[0], self.ports[1]
        )
    }

    fn url(&self, i: usize) -> String {
        format!("tcp://127.0.0.1:{}", self.ports[i])
    }
}

/// kill -9 the active lane (and so its raft member), wait for the other to serve, restart the
/// killed one as the dormant. Returns the takeover time.
async fn fail_over(g: &mut Group, active: usize) -> Duration {
    g.lanes[active].take().unwrap().kill9();
    let http = g.lane(1 - active).http;
    let took = tokio::task::spawn_blocking(move || wait_health(http, 200))
        .await
        .unwrap();
    g.restart_lane(active);
    took
}

/// The claim for the quorum lease: continuous persistent load on a failover URL through
/// kills of the active lane (3 by default, `RAFT_FAILOVER_KILLS=N` for more), then with the witness
/// killed: the active keeps serving and renewing on the a+b majority; the witness comes back and
/// one more kill of the active fails over. Every confirmed message is consumed, none has a gap,
/// a repeat is always flagged redelivered, and no send fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_load_survives_kills_of_the_active_and_of_the_witness() {
    let mut g = tokio::task::spawn_blocking(Group::start).await.unwrap();
    let q = Destination::queue("raft.continuous").unwrap();
    let load = Continuous::start(&g.failover_url(), &q, 2, 2);
    let kills: usize = std::env::var("RAFT_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut x = 0x0af7_0011u64;
    let mut active = g.wait_active();
    let mut takeovers = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(300 + next(&mut x) % 500)).await;
        takeovers.push(fail_over(&mut g, active).await);
        active = 1 - active;
    }

    // The witness dies. Lanes a and b are a majority: the active must go on renewing (same epoch,
    // serving) and confirming sends for several TTLs, and the dormant must stay dormant.
    g.witness.take().unwrap().kill9();
    let (status, epoch) = g.health(active);
    assert_eq!(status, 200);
    let confirmed_before = load.confirmed_count();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        assert_eq!(
            g.health(active),
            (200, epoch),
            "the active lost the lease with only the witness dead"
        );
        assert_eq!(g.health(1 - active).0, 503, "the dormant took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let confirmed_during = load.confirmed_count() - confirmed_before;
    assert!(
        confirmed_during > 0,
        "no send confirmed while the witness was dead"
    );

    // The witness comes back; one more kill of the active fails over as before.
    g.restart_witness();
    tokio::time::sleep(Duration::from_millis(500)).await;
    takeovers.push(fail_over(&mut g, active).await);

    let (confirmed, again) = load.finish("raft lease").await;
    takeovers.sort();
    eprintln!(
        "raft lease: {} kills of the active; takeover (kill -9 to /health 200) median {:?}, max {:?}; \
         {confirmed_during} confirmed while the witness was dead; {confirmed} confirmed in all, \
         {again} delivered more than once, all flagged",
        takeovers.len(),
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1],
    );
}

/// Quorum safety: with the witness dead and the active killed, one member of three is left; the
/// surviving lane must not take over (it cannot read nor claim the lease). When the witness comes
/// back, it takes over, and nothing the killed active confirmed is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_majority_nobody_takes_over_until_the_witness_returns() {
    let mut g = tokio::task::spawn_blocking(Group::start).await.unwrap();
    let active = g.wait_active();
    let other = 1 - active;
    let q = Destination::queue("raft.minority").unwrap();
    let ledger = Ledger::default();
    let tasks = load::start(&g.url(active), &q, 0, 2, &ledger);
    tokio::time::sleep(Duration::from_millis(500)).await;
    g.witness.take().unwrap().kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    g.lanes[active].take().unwrap().kill9();
    for t in tasks {
        let _ = tokio::time::timeout(GUARD, t)
            .await
            .expect("clients notice the kill");
    }
    // Three TTLs: far past the point where a lease judged expired would be claimed.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let (status, body) = http_get(g.lane(other).http, "/health");
        assert_eq!(status, 503, "took over without a majority: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g.restart_witness();
    let http = g.lane(other).http;
    let took = tokio::task::spawn_blocking(move || wait_health(http, 200))
        .await
        .unwrap();
    eprintln!("takeover {took:?} after the witness returned");
    load::check(&g.url(other), &q, &ledger, "after the minority period").await;
}

/// Misconfigurations of the quorum lease fail at start with one line naming the problem.
#[test]
fn raft_flags_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = run_cli(&["run", "--lease", "raft", "--data-dir", d]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--lease raft is for failover lanes"), "{err}");
    let (code, _, err) = run_cli(&[
        "run",
        "--lane",
        "a",
        "--shared-dir",
        d,
        "--lease",
        "raft",
        "--http",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--raft-listen") && err.contains("--raft-peers"),
        "{err}"
    );
    let (code, _, err) = run_cli(&[
        "witness",
        "--listen",
        "127.0.0.1:0",
        "--peers",
        "a=127.0.0.1:1,w",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("expected ID=HOST:PORT"), "{err}");
    let (code, _, err) = run_cli(&[
        "witness",
        "--id",
        "x",
        "--listen",
        "127.0.0.1:0",
        "--peers",
        "a=127.0.0.1:1,w=127.0.0.1:2",
        "--data-dir",
        d,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("(x) is not in the list"), "{err}");
}
