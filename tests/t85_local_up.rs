//! The local provider end to end: `tandem up` a double-lane tenant, traffic through the proxy on
//! the spec's JMS port, kill -9 the active lane, traffic resumes through the same proxy address
//! with nothing confirmed lost, the monitor brings the killed lane back as the dormant, and
//! `tandem down` leaves none of the processes it started running.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::load::{self, Ledger};
use support::*;
use tandem_client::Destination;

/// A port `p` such that `p`, `p + 10` and `p + 20` are free (the proxy and the two lanes'
/// derived ports, see provisioning's local layout), below the kernel's ephemeral range: a lane
/// binds its JMS port only when it becomes active, and meanwhile an outgoing connection elsewhere
/// on the machine could take an ephemeral port as its source port.
fn free_port_with_lanes() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (first, last) = (10_000u16, low.saturating_sub(21).max(10_100));
    let span = u64::from(last - first);
    // Spread parallel runs apart; collisions are caught by the bind checks anyway.
    let mut x = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = first + (x % span) as u16;
        let free = |q: u16| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok();
        if free(p) && free(p + 10) && free(p + 20) {
            return p;
        }
    }
    panic!("no free port triple on 127.0.0.1 in 1000 tries");
}

/// jms, stomp and http ports whose derived lane ports do not collide either.
fn spec_ports() -> [u16; 3] {
    for _ in 0..100 {
        let v = [
            free_port_with_lanes(),
            free_port_with_lanes(),
            free_port_with_lanes(),
        ];
        let clash = |a: u16, b: u16| matches!(a.abs_diff(b), 0 | 10 | 20);
        if !clash(v[0], v[1]) && !clash(v[0], v[2]) && !clash(v[1], v[2]) {
            return v;
        }
    }
    panic!("no three port triples without collisions in 100 tries");
}

/// Runs `tandem down` when dropped, so a failing test leaves no processes behind.
struct Tenant {
    dir: PathBuf,
    down: bool,
}

impl Tenant {
    fn down(&mut self) -> (Option<i32>, String, String) {
        self.down = true;
        run_cli(&["down", "--dir", self.dir.to_str().unwrap()])
    }

    fn status(&self) -> Value {
        status(&self.dir)
    }

    fn state_file(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("monitor.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        if !self.down {
            let _ = run_cli(&["down", "--dir", self.dir.to_str().unwrap()]);
        }
    }
}

fn status(dir: &Path) -> Value {
    let (code, out, err) = run_cli(&["status", "--dir", dir.to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// Polls `status --json` until `ok` holds; returns that status.
fn wait_status(dir: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let s = status(dir);
        if ok(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < GUARD,
            "{what}: never happened; last status {s:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lane<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap()
}

/// Gone: no such process, or a zombie (it exited; only its reaper has not collected it).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X"),
    }
}

fn write_spec(dir: &Path, [jms, stomp, http]: [u16; 3]) -> PathBuf {
    let spec = dir.join("tenant.toml");
    std::fs::write(
        &spec,
        format!(
            "tenant = \"acme\"\nmodel = \"orders\"\ncontingency_region = \"eu-west-1\"\nlanes = 2\n\
             allowed_cidrs = [\"127.0.0.1/32\"]\nlog_retention_days = 7\n\
             [ports]\njms = {jms}\nstomp = {stomp}\nhttp = {http}\n\
             [dns]\nzone = \"tandem.example.com\"\nname = \"acme-orders\"\n"
        ),
    )
    .unwrap();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_kill_the_active_traffic_resumes_through_the_proxy_and_down_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = spec_ports();
    let spec = write_spec(tmp.path(), ports);
    let mut tenant = Tenant {
        dir: tmp.path().join("acme"),
        down: false,
    };
    let (code, out, err) = run_cli(&[
        "up",
        spec.to_str().unwrap(),
        "--dir",
        tenant.dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "up failed: {out}{err}");
    assert!(
        out.contains(&format!("jms 127.0.0.1:{}", ports[0])),
        "{out}"
    );

    // One lane active and routed to, the other dormant.
    let st = tokio::task::spawn_blocking({
        let dir = tenant.dir.clone();
        move || {
            wait_status(&dir, "one active, one dormant lane", |s| {
                let Some(r) = s["routed_to"].as_str() else {
                    return false;
                };
                let other = if r == "a" { "b" } else { "a" };
                lane(s, r)["role"] == "active" && lane(s, other)["role"] == "dormant"
            })
        }
    })
    .await
    .unwrap();
    let active = st["routed_to"].as_str().unwrap().to_owned();
    let dormant = if active == "a" { "b" } else { "a" }.to_owned();
    let killed_pid = lane(&st, &active)["pid"].as_u64().unwrap();
    let dormant_pid = lane(&st, &dormant)["pid"].as_u64().unwrap();
    assert_eq!(
        st["supervisor_running"], true,
        "the supervisor outlives `tandem up`"
    );

    let proxy = format!("tcp://127.0.0.1:{}", ports[0]);
    // A client that reconnects to the same (proxy) address, sending and receiving across the kill.
    let failover = format!("failover:({proxy})?maxReconnectDelay=200&maxReconnectTime=30000");
    let cq = Destination::queue("up.continuous").unwrap();
    let fload = load::Continuous::start(&failover, &cq, 1, 1);
    // Plain `tcp://` clients with exact accounting: they end when the proxy closes them.
    let lq = Destination::queue("up.ledger").unwrap();
    let ledger = Ledger::default();
    let tasks = load::start(&proxy, &lq, 0, 2, &ledger);

    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < GUARD, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (c2, l2) = (fload.confirmed.clone(), ledger.clone());
    tokio::task::spawn_blocking(move || {
        wait_for("traffic flows through the proxy", &|| {
            c2.lock().unwrap().len() >= 100 && l2.confirmed.lock().unwrap().len() >= 500
        })
    })
    .await
    .unwrap();
    let st = tenant.status();
    let queues: Vec<&str> = st["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert!(
        queues.contains(&"up.ledger") && queues.contains(&"up.continuous"),
        "status shows the active lane's queue depths: {st:#}"
    );

    let confirmed_at_kill = fload.confirmed_count();
    let killed_at = Instant::now();
    signal(killed_pid as u32, "KILL");
    // When the failover client gets a send confirmed by the new active through the proxy: past
    // the 32 that may have been in flight (and confirmed by the old lane) at the kill.
    let resumed = {
        let c = fload.confirmed.clone();
        tokio::task::spawn_blocking(move || {
            while c.lock().unwrap().len() <= confirmed_at_kill + 32 {
                assert!(
                    killed_at.elapsed() < GUARD,
                    "no send confirmed after the kill"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            killed_at.elapsed()
        })
    };
    for t in tasks {
        tokio::time::timeout(GUARD, t)
            .await
            .expect("the proxy closes the killed lane's clients")
            .unwrap();
    }
    // The dormant takes over and the proxy follows it.
    let dir = tenant.dir.clone();
    let d2 = dormant.clone();
    tokio::task::spawn_blocking(move || {
        wait_status(&dir, "the proxy routes to the new active", |s| {
            s["routed_to"] == d2.as_str() && lane(s, &d2)["role"] == "active"
        })
    })
    .await
    .unwrap();
    let rerouted = killed_at.elapsed();
    // The same proxy address, the same failover connection: sending resumes.
    let c2 = fload.confirmed.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the failover client sends again after the kill", &|| {
            c2.lock().unwrap().len() >= confirmed_at_kill + 100
        })
    })
    .await
    .unwrap();
    // Every confirmed message of the plain clients is on the new active, read through the proxy.
    load::check(
        &proxy,
        &lq,
        &ledger,
        "after kill -9 of the active lane, via the proxy",
    )
    .await;

    // The monitor restarted the killed lane; it came back as the dormant.
    let dir = tenant.dir.clone();
    let a2 = active.clone();
    let st = tokio::task::spawn_blocking(move || {
        wait_status(&dir, "the killed lane is back as the dormant", |s| {
            let l = lane(s, &a2);
            l["running"] == true
                && l["role"] == "dormant"
                && l["restarts"].as_u64() >= Some(1)
                && l["pid"].as_u64().is_some_and(|p| p != killed_pid)
        })
    })
    .await
    .unwrap();
    assert_eq!(lane(&st, &active)["last_exit"], "signal 9", "{st:#}");
    assert_eq!(
        lane(&st, &dormant)["pid"].as_u64(),
        Some(dormant_pid),
        "the surviving lane was not restarted"
    );

    let (confirmed, _) = fload
        .finish("the failover client through the proxy, across kill -9 of the active lane")
        .await;
    let resumed = resumed.await.unwrap();
    eprintln!(
        "failover client: {} confirmed ({} before the kill), all consumed; kill -9 to sends \
         confirmed again through the proxy: {resumed:?}; to `status` showing the new route: \
         {rerouted:?} (status is polled every 100 ms)",
        confirmed, confirmed_at_kill
    );

    // Each lane's output went to its own log file.
    for name in ["a", "b"] {
        let log = std::fs::read_to_string(tenant.dir.join(format!("lane-{name}/tandem.log")))
            .unwrap_or_default();
        assert!(log.contains("READY"), "lane {name}'s log: {log}");
    }

    // Every process `up` ever started, from its state file: supervisor, both lanes, the restart.
    let state = tenant.state_file();
    let mut pids: Vec<u64> = vec![state["supervisor"]["pid"].as_u64().unwrap()];
    for l in state["lanes"].as_array().unwrap() {
        pids.extend(
            l["pids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["pid"].as_u64().unwrap()),
        );
    }
    assert_eq!(pids.len(), 4, "supervisor, a, b and one restart: {state:#}");
    assert!(pids.contains(&killed_pid) && pids.contains(&dormant_pid));

    let (code, out, err) = tenant.down();
    assert_eq!(code, Some(0), "down failed: {out}{err}");
    let running: Vec<u64> = pids.iter().copied().filter(|p| !gone(*p)).collect();
    assert!(running.is_empty(), "still running after down: {running:?}");
    assert!(
        !tenant.dir.join("monitor.json").exists(),
        "down removes the state file"
    );
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the proxy on {port} is closed"
        );
    }
    let (code, _, err) = run_cli(&["status", "--dir", tenant.dir.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(err.contains("no tenant is up"), "{err}");
}

#[test]
fn up_refuses_a_bad_spec_and_a_taken_port_and_status_down_name_a_missing_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "tenant = \"acme\"\nlanes = 3\n").unwrap();
    let (code, _, err) = run_cli(&["up", bad.to_str().unwrap(), "--dir", dir.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("model") && err.contains("is required"),
        "{err}"
    );

    // The proxy's JMS port is taken: up fails with the supervisor's reason, nothing keeps running.
    let ports = spec_ports();
    let spec = write_spec(tmp.path(), ports);
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    let (code, _, err) = run_cli(&["up", spec.to_str().unwrap(), "--dir", dir.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{}", ports[0])),
        "{err}"
    );
    assert!(!dir.join("monitor.json").exists());

    for cmd in ["status", "down"] {
        let (code, _, err) = run_cli(&[cmd, "--dir", dir.to_str().unwrap()]);
        assert_ne!(code, Some(0), "{cmd}");
        assert!(err.contains("no tenant is up"), "{cmd}: {err}");
    }
    let (code, _, err) = run_cli(&["status"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--dir"), "{err}");
}

#[test]
fn a_killed_supervisor_leaves_lanes_that_down_still_stops_and_up_refuses_a_running_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = spec_ports();
    let spec = write_spec(tmp.path(), ports);
    let mut tenant = Tenant {
        dir: tmp.path().join("acme"),
        down: false,
    };
    let dir = tenant.dir.to_str().unwrap().to_owned();
    let (code, out, err) = run_cli(&["up", spec.to_str().unwrap(), "--dir", &dir]);
    assert_eq!(code, Some(0), "up failed: {out}{err}");
    let st = wait_status(&tenant.dir, "a lane is active", |s| {
        s["routed_to"].is_string()
            && s["lanes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["running"] == true)
    });
    // STOMP goes through its proxy port to the active lane too.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ports[1])).unwrap();
        s.set_read_timeout(Some(GUARD)).unwrap();
        s.write_all(b"CONNECT\naccept-version:1.2\nhost:acme\n\n\0")
            .unwrap();
        let mut buf = [0u8; 9];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(
            &buf, b"CONNECTED",
            "the STOMP proxy reaches the active lane"
        );
    }
    // The HTTP proxy answers with the active lane's /health.
    let (code, body) = http_get(
        format!("127.0.0.1:{}", ports[2]).parse().unwrap(),
        "/health",
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!(
            "\"lane\":\"{}\"",
            st["routed_to"].as_str().unwrap()
        )),
        "{body}"
    );

    let (code, _, err) = run_cli(&["up", spec.to_str().unwrap(), "--dir", &dir]);
    assert_ne!(code, Some(0));
    assert!(err.contains("already up"), "{err}");

    let sup = st["supervisor_pid"].as_u64().unwrap();
    let lanes: Vec<u64> = st["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["pid"].as_u64().unwrap())
        .collect();
    signal(sup as u32, "KILL");
    let t0 = Instant::now();
    while !gone(sup) {
        assert!(t0.elapsed() < GUARD, "the supervisor survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = status(&tenant.dir);
    assert_eq!(st["supervisor_running"], false, "{st:#}");
    assert!(
        lanes.iter().all(|p| !gone(*p)),
        "the orphaned lanes still run"
    );

    let (code, out, err) = tenant.down();
    assert_eq!(code, Some(0), "down failed: {out}{err}");
    let running: Vec<u64> = lanes.iter().copied().filter(|p| !gone(*p)).collect();
    assert!(
        running.is_empty(),
        "orphaned lanes still running after down: {running:?}"
    );
}
