//! Failover time, end to end: from `kill -9` of the active lane to the first message delivered by
//! the new active lane to a consumer that reconnects through a failover URL. 20 runs (override with
//! `FAILOVER_RUNS`), with an empty journal and with a backlog (`FAILOVER_BACKLOG`, default 1M x 1 KiB
//! persistent messages: the new active recovers them before it serves).
//!
//! With `--lease raft` the lanes keep the lease in a raft group with a third member, a `tandem
//! witness` process (each member with its own directory), instead of files on the shared directory.
//!
//! ```text
//! cargo bench --bench failover_time
//! FAILOVER_RUNS=5 FAILOVER_BACKLOG=100000 cargo bench --bench failover_time
//! FAILOVER_BACKLOG=0 cargo bench --bench failover_time -- --lease raft
//! ```
//!
//! Uses the release `tandem` binary Cargo builds for benches; lanes bind 127.0.0.1 only.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tandem_client::{AckMode, ConnectionFactory, DeliveryMode, Destination, Message};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Lane {
    child: Child,
    http: String,
}

impl Drop for Lane {
    // A failed run must not leave lane processes behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The raft flags of a lane or witness: (`--lease raft` flags for lane `name`, the peers list).
struct Raft {
    ports: [u16; 3],
}

impl Raft {
    fn new() -> Raft {
        Raft {
            ports: [free_port(), free_port(), free_port()],
        }
    }

    fn peers(&self) -> String {
        format!(
            "a=127.0.0.1:{},b=127.0.0.1:{},w=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }

    fn lane_args(&self, name: &str, shared: &Path) -> Vec<String> {
        let i = usize::from(name == "b");
        vec![
            "--lease".into(),
            "raft".into(),
            "--raft-listen".into(),
            format!("127.0.0.1:{}", self.ports[i]),
            "--raft-peers".into(),
            self.peers(),
            "--raft-dir".into(),
            shared.join(format!("raft-{name}")).display().to_string(),
        ]
    }

    fn witness(&self, dir: &Path) -> Lane {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["witness", "--id", "w", "--listen"])
            .arg(format!("127.0.0.1:{}", self.ports[2]))
            .args(["--peers", &self.peers(), "--data-dir"])
            .arg(dir.join("raft-w"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("READY raft="), "{line}");
        Lane {
            child,
            http: String::new(),
        }
    }
}

fn lane(name: &str, shared: &Path, port: u16, extra: &[String]) -> Lane {
    // Until paging lands, a 1M x 1 KiB backlog must fit in memory: raise the per-destination budget.
    let cfg = shared.join(format!("{name}.toml"));
    std::fs::write(&cfg, "destination_memory_limit = 4294967296\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["run", "--lane", name, "--shared-dir"])
        .arg(shared)
        .arg("--config")
        .arg(&cfg)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http",
            "127.0.0.1:0",
            "--stomp",
            "off",
        ])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let http = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap()
        .to_string();
    Lane { child, http }
}

fn healthy(http: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return false;
    };
    let _ = write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r.starts_with("HTTP/1.1 200")
}

fn wait_healthy(http: &str) {
    let t0 = Instant::now();
    while !healthy(http) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{http} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn fill(url: &str, q: &Destination, n: usize) {
    let c = ConnectionFactory::new(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let mut p = s.create_producer(Some(q)).await.unwrap();
    let body = "x".repeat(1024);
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        inflight.push(p.send_async(Message::text(body.clone())).await.unwrap());
        if inflight.len() >= 512 {
            inflight.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = inflight.next().await {
        r.unwrap();
    }
    c.close().await.unwrap();
}

/// One failover: returns kill -> first delivery by the new active.
async fn once(backlog: usize, raft: bool) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    // Lane a starts first and initialises the raft group, so it becomes active (and raft leader):
    // the kill then costs an election too, the worst case for the quorum lease.
    let group = raft.then(Raft::new);
    let args = |name: &str| {
        group
            .as_ref()
            .map_or_else(Vec::new, |g| g.lane_args(name, dir.path()))
    };
    let witness = group.as_ref().map(|g| g.witness(dir.path()));
    let a = lane("a", dir.path(), ports[0], &args("a"));
    wait_healthy(&a.http);
    let b = lane("b", dir.path(), ports[1], &args("b"));
    let q = Destination::queue("failover.bench").unwrap();
    let direct = format!("tcp://127.0.0.1:{}", ports[0]);
    if backlog > 0 {
        fill(&direct, &q, backlog).await;
    }
    // A probe queue the consumer watches: one message sent before the kill, so the new active has
    // something to deliver at once.
    let probe = Destination::queue("failover.probe").unwrap();
    let c = ConnectionFactory::new(&direct)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let mut p = s.create_producer(Some(&probe)).await.unwrap();
    p.set_delivery_mode(DeliveryMode::Persistent);
    p.send(Message::text("probe")).await.unwrap();
    c.close().await.unwrap();
    let url = format!(
        "failover:(tcp://127.0.0.1:{},tcp://127.0.0.1:{})?initialReconnectDelay=5&maxReconnectDelay=20&maxReconnectTime=120000&randomize=false",
        ports[0], ports[1]
    );
    let t0 = Instant::now();
    drop(a);
    let c = ConnectionFactory::new(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    let mut consumer = s.create_consumer(&probe, None).await.unwrap();
    c.start();
    let m = consumer
        .receive(Duration::from_secs(120))
        .await
        .unwrap()
        .expect("the probe");
    let took = t0.elapsed();
    assert_eq!(m.text_body(), Some("probe"));
    c.close().await.unwrap();
    drop(b);
    drop(witness);
    took
}

fn report(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "failover {label}: runs {} median {:.0} ms, min {:.0} ms, max {:.0} ms",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1])
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let backlog: usize = std::env::var("FAILOVER_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let args: Vec<String> = std::env::args().collect();
    let raft = args.windows(2).any(|w| w[0] == "--lease" && w[1] == "raft");
    let lease = if raft { "raft lease" } else { "file lease" };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if std::env::var("FAILOVER_SKIP_EMPTY").is_err() {
            let mut empty = Vec::new();
            for _ in 0..runs {
                empty.push(once(0, raft).await);
            }
            report(&format!("{lease}, empty journal"), empty);
        }
        if backlog > 0 {
            let mut full = Vec::new();
            for _ in 0..runs.min(3) {
                full.push(once(backlog, raft).await);
            }
            report(&format!("{lease}, {backlog} x 1 KiB backlog"), full);
        }
    });
}
