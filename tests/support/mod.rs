//! System-test harness: starts the real `tandem` binary on free loopback ports, reads the bound
//! addresses from its `READY` line, and kills it (SIGKILL) when dropped.
#![allow(dead_code)]

pub mod load;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Failure guard for waits that should succeed quickly; generous for a loaded 2-core machine.
pub const GUARD: Duration = Duration::from_secs(30);

pub fn tandem_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tandem")
}

/// A running `tandem run` process.
pub struct BrokerProcess {
    child: Child,
    pub native: SocketAddr,
    pub http: SocketAddr,
    /// The STOMP listener; `None` when started with `--stomp off`.
    pub stomp: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Every line the broker wrote to stderr so far (its log).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

impl BrokerProcess {
    /// `tandem run` on 127.0.0.1 port 0 for every listener, a fresh data dir, plus `extra` args.
    pub fn start(extra: &[&str]) -> BrokerProcess {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut p = BrokerProcess::start_in(&dir, extra);
        p._tmp = Some(tmp);
        p
    }

    pub fn start_in(data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        let mut args: Vec<std::ffi::OsString> = [
            "run",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--stomp",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .map(Into::into)
        .collect();
        args.push(data_dir.into());
        args.extend(extra.iter().map(Into::into));
        BrokerProcess::spawn(args, data_dir)
    }

    /// A failover lane: `tandem run --lane LANE --shared-dir SHARED` with its native listener on
    /// `native_port` (fixed: clients must find it again after a restart) and HTTP on port 0.
    pub fn lane(lane: &str, shared: &Path, native_port: u16) -> BrokerProcess {
        let args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--lane".into(),
            lane.into(),
            "--shared-dir".into(),
            shared.into(),
            "--listen".into(),
            format!("127.0.0.1:{native_port}").into(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--stomp".into(),
            "off".into(),
        ];
        BrokerProcess::spawn(args, shared)
    }

    /// [`BrokerProcess::lane`] with `extra` arguments (e.g. `--lease raft ...`).
    pub fn lane_with(lane: &str, shared: &Path, native_port: u16, extra: &[&str]) -> BrokerProcess {
        let mut args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--lane".into(),
            lane.into(),
            "--shared-dir".into(),
            shared.into(),
            "--listen".into(),
            format!("127.0.0.1:{native_port}").into(),
            "--http".into(),
            "127.0.0.1:0".into(),
            "--stomp".into(),
            "off".into(),
        ];
        args.extend(extra.iter().map(Into::into));
        BrokerProcess::spawn(args, shared)
    }

    fn spawn(args: Vec<std::ffi::OsString>, data_dir: &Path) -> BrokerProcess {
        let mut cmd = Command::new(tandem_bin());
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("tandem binary starts");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        // Forward stderr so a failing test shows the broker's log; keep it for assertions too.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[tandem] {line}");
                kept.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = rx.recv_timeout(GUARD).expect("tandem prints READY");
        let raw = |k: &str| -> &str {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
        };
        let field = |k: &str| -> SocketAddr { raw(k).parse().unwrap() };
        let optional = |k: &str| -> Option<SocketAddr> {
            match raw(k) {
                "off" => None,
                v => Some(v.parse().unwrap()),
            }
        };
        BrokerProcess {
            native: field("native="),
            http: field("http="),
            stomp: optional("stomp="),
            child,
            data_dir: data_dir.to_path_buf(),
            log,
            _tmp: None,
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://{}", self.native)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        signal(self.child.id(), "TERM");
        wait_exit(&mut self.child)
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago (for listeners that must keep their port across
/// restarts, such as failover lanes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `/health` until it answers `want` (200 or 503); returns how long it took.
pub fn wait_health(http: SocketAddr, want: u16) -> Duration {
    let t0 = std::time::Instant::now();
    loop {
        let status = std::net::TcpStream::connect(http)
            .ok()
            .map(|_| http_get(http, "/health").0);
        if status == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < GUARD,
            "{http}/health never answered {want} (last: {status:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal ("TERM", "STOP", "CONT", "KILL") to a process, without any external tool.
pub fn signal(pid: u32, sig: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let sig = match sig {
        "TERM" => Signal::TERM,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "KILL" => Signal::KILL,
        other => panic!("signal {other} is not used by the tests"),
    };
    let pid = Pid::from_raw(pid as i32).expect("a live child has a positive pid");
    kill_process(pid, sig).unwrap_or_else(|e| panic!("signal {sig:?} to {pid:?}: {e}"));
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        assert!(std::time::Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `tandem ARGS` to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(tandem_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let code = wait_exit(&mut child);
    (code, out, err)
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
