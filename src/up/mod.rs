//! `tandem up|status|down`: the local provider. One tenant spec runs on this machine as the same
//! topology as on AWS: the lanes as processes sharing one directory (the lease decides which is
//! active), a TCP proxy per tenant port that follows `/health` (the load balancer), and a monitor
//! that restarts a lane that dies (auto-healing).
//!
//! ```text
//!  tandem up SPEC ──re-exec──▶ tandem up-supervisor SPEC --dir DIR   (own session, log: DIR/supervisor.log)
//!                                 ├─ proxy jms/stomp/http on 127.0.0.1:<spec ports> ──▶ active lane
//!                                 ├─ health follower: GET /health on each lane every 150 ms
//!                                 ├─ monitor lane a: tandem run --lane a --shared-dir DIR/shared …
//!                                 ├─ monitor lane b: tandem run --lane b --shared-dir DIR/shared …
//!                                 └─ DIR/monitor.json: every pid started, ports, proxy target
//!  tandem status  reads monitor.json, asks each lane's /health and /metrics
//!  tandem down    SIGTERM to the supervisor (which stops its lanes), then to anything recorded
//!                 that still runs; SIGKILL after a bounded wait; removes monitor.json
//! ```
//!
//! Invariant: every process `up` starts is recorded in the state file before it can do anything
//! else, and `down` does not return success while any recorded process still runs.

mod monitor;
mod policy;
mod probe;
mod proxy;
mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rustix::process::Signal;
use tandem_provisioning::{LocalLayout, TenantSpec, local};
use tokio_util::sync::CancellationToken;

use self::monitor::{LaneCommand, StateCell};
use self::policy::{RestartPolicy, Router};
use self::state::{LaneState, ProcId, ProxyState, STATE_VERSION, UpState};

/// Where a tenant runs when no `--dir` is given.
const DEFAULT_BASE: &str = "/var/tmp/tandem";
/// How long `up` waits for the supervisor to bind its proxies and start the lanes, and then for a
/// lane to become active.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long `down` waits for the supervisor, which itself gives each lane `STOP_GRACE`.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(20);
/// After SIGKILL, the kernel needs a moment to tear a process down.
const KILL_WAIT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The tenant spec (see docs/examples/tenant-double.toml).
    spec: PathBuf,
    /// The tenant's directory: shared volume, logs, state [default: /var/tmp/tandem/TENANT-MODEL].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Stay in the foreground (logs on stderr) until SIGINT or SIGTERM, instead of detaching.
    #[arg(long)]
    foreground: bool,
}

/// The detached supervisor `up` starts (not for direct use).
#[derive(clap::Args, Debug)]
pub struct SuperviseArgs {
    spec: PathBuf,
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
}

/// Which tenant: its directory, or its spec (then the default directory).
#[derive(clap::Args, Debug)]
pub struct Which {
    /// The tenant spec `up` was given (its default directory is used).
    #[arg(conflicts_with = "dir")]
    spec: Option<PathBuf>,
    /// The tenant's directory, as given to `up --dir`.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    which: Which,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    which: Which,
}

fn default_dir(spec: &TenantSpec) -> PathBuf {
    Path::new(DEFAULT_BASE).join(format!("{}-{}", spec.tenant, spec.model))
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

fn tenant_dir(which: &Which) -> anyhow::Result<PathBuf> {
    match (&which.dir, &which.spec) {
        (Some(d), _) => absolute(d),
        (None, Some(spec)) => absolute(&default_dir(&crate::provision::load(spec)?)),
        (None, None) => bail!("say which tenant: --dir DIR (as given to `tandem up`) or the SPEC"),
    }
}

/// Refuses to start over a tenant whose recorded processes still run.
fn refuse_if_running(dir: &Path) -> anyhow::Result<()> {
    if !state::state_path(dir).exists() {
        return Ok(());
    }
    let s = UpState::read(dir)?;
    let running: Vec<u32> = s
        .all_procs()
        .iter()
        .filter(|p| p.running())
        .map(|p| p.pid)
        .collect();
    if !running.is_empty() {
        bail!(
            "a tenant is already up in {} (processes {running:?} still run); stop it with `tandem down --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// `tandem up`.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let spec_path = absolute(&args.spec)?;
    let spec = crate::provision::load(&spec_path)?;
    let dir = absolute(&args.dir.clone().unwrap_or_else(|| default_dir(&spec)))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    refuse_if_running(&dir)?;
    if args.foreground {
        return supervise(&spec, &dir).await;
    }
    let log_path = dir.join("supervisor.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("up-supervisor")
        .arg(&spec_path)
        .arg("--dir")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the supervisor")?;
    let deadline = Instant::now() + READY_WAIT;
    let mut state = loop {
        if let Some(st) = child.try_wait()? {
            bail!(
                "the supervisor exited ({st}) before it was ready; its log ({}):\n{}",
                log_path.display(),
                tail(&log_path, 20)
            );
        }
        if let Ok(s) = UpState::read(&dir)
            && s.supervisor.pid == child.id()
            && s.ready
        {
            break s;
        }
        if Instant::now() >= deadline {
            bail!(
                "the supervisor (pid {}) was not ready within {READY_WAIT:?}; see {} or run `tandem down --dir {}`",
                child.id(),
                log_path.display(),
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while state.routed_to.is_none() && Instant::now() < deadline && child.try_wait()?.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = UpState::read(&dir).unwrap_or(state);
    }
    let proxies: Vec<String> = state
        .proxies
        .iter()
        .map(|p| format!("{} {}", p.name, p.listen))
        .collect();
    println!(
        "tenant {}-{} is up in {} (supervisor pid {})",
        state.tenant,
        state.model,
        dir.display(),
        state.supervisor.pid
    );
    println!("proxy: {}", proxies.join(", "));
    match &state.routed_to {
        Some(l) => println!("routing to lane {l}"),
        None => println!(
            "no lane is active yet; see `tandem status --dir {}`",
            dir.display()
        ),
    }
    Ok(())
}

/// `tandem up-supervisor`: the detached supervisor.
pub async fn supervise_detached(args: SuperviseArgs) -> anyhow::Result<()> {
    // A session of its own: the terminal `up` ran in can close (SIGHUP) or be interrupted
    // (SIGINT to its process group) without taking the tenant down.
    let _ = rustix::process::setsid();
    let spec = crate::provision::load(&args.spec)?;
    supervise(&spec, &args.dir).await
}

/// Runs the tenant until SIGINT or SIGTERM.
async fn supervise(spec: &TenantSpec, dir: &Path) -> anyhow::Result<()> {
    // Handlers first: a SIGTERM that arrives while lanes are starting must still stop them.
    let stop_signal = StopSignal::install()?;
    let layout = local::plan(spec, dir);
    for d in [&layout.shared_dir]
        .into_iter()
        .chain(layout.data_sink_dir.as_ref())
    {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Bind every proxy port before starting anything: a taken port is reported now, not as a
    // lane restarting in a loop.
    let mut listeners = Vec::new();
    for route in &layout.proxy.routes {
        let addr = format!("{}:{}", layout.proxy.bind, route.listen_port);
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("the {} proxy cannot listen on {addr}", route.name))?;
        listeners.push((route.clone(), l));
    }
    for lane in &layout.lanes {
        for (what, p) in [
            ("jms", lane.ports.jms),
            ("stomp", lane.ports.stomp),
            ("http", lane.ports.http),
        ] {
            std::net::TcpListener::bind(("127.0.0.1", p)).with_context(|| {
                format!("lane {}'s {what} port 127.0.0.1:{p} is taken", lane.name)
            })?;
        }
    }
    let cell = StateCell::new(dir, initial_state(spec, &layout, &listeners)?)?;
    let shutdown = CancellationToken::new();
    let switch = proxy::Switch::new(layout.lanes.len());
    let mut tasks = Vec::new();
    for (route, l) in listeners {
        tasks.push(tokio::spawn(proxy::serve(
            route.name.clone(),
            l,
            route.lane_ports.clone(),
            switch.clone(),
            shutdown.clone(),
        )));
    }
    let names: Vec<String> = layout.lanes.iter().map(|l| l.name.clone()).collect();
    {
        let cell = cell.clone();
        let http: Vec<SocketAddr> = layout
            .lanes
            .iter()
            .map(|l| SocketAddr::from(([127, 0, 0, 1], l.ports.http)))
            .collect();
        let p = &layout.proxy;
        tasks.push(tokio::spawn(proxy::follow_health(
            http,
            Router::new(
                layout.lanes.len(),
                p.healthy_threshold,
                p.unhealthy_threshold,
            ),
            Duration::from_millis(p.check_interval_ms),
            Duration::from_millis(p.check_timeout_ms),
            switch.clone(),
            move |t| cell.update(|s| s.routed_to = t.and_then(|i| names.get(i).cloned())),
            shutdown.clone(),
        )));
    }
    let m = &layout.monitor;
    let restart = RestartPolicy {
        initial: Duration::from_millis(m.restart_backoff_initial_ms),
        max: Duration::from_millis(m.restart_backoff_max_ms),
        reset_after: Duration::from_millis(m.backoff_reset_after_ms),
        max_restarts: m.max_restarts_without_reset,
    };
    let retention = Duration::from_secs(u64::from(spec.log_retention_days) * 86_400);
    let exe = std::env::current_exe()?;
    let mut lanes = Vec::new();
    for (index, lane) in layout.lanes.iter().enumerate() {
        let cmd = LaneCommand {
            index,
            name: lane.name.clone(),
            exe: exe.clone(),
            args: lane.args.clone(),
            env: lane.env.clone(),
            log_file: lane.log_file.clone(),
            pid_file: lane.pid_file.clone(),
        };
        lanes.push(tokio::spawn(monitor::run_lane(
            cmd,
            restart,
            retention,
            cell.clone(),
            shutdown.clone(),
        )));
    }
    cell.update(|s| s.ready = true);
    tracing::info!(dir = %dir.display(), "tenant {}-{} is up", spec.tenant, spec.model);
    stop_signal.wait().await?;
    tracing::info!("signal received; stopping the lanes");
    shutdown.cancel();
    for t in lanes {
        let _ = t.await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_file(state::state_path(dir));
    tracing::info!("stopped");
    Ok(())
}

fn initial_state(
    spec: &TenantSpec,
    layout: &LocalLayout,
    listeners: &[(local::ProxyRoute, tokio::net::TcpListener)],
) -> anyhow::Result<UpState> {
    let me = std::process::id();
    Ok(UpState {
        version: STATE_VERSION,
        tenant: spec.tenant.clone(),
        model: spec.model.clone(),
        dir: layout.base_dir.clone(),
        shared_dir: layout.shared_dir.clone(),
        supervisor: ProcId::of(me).context("reading this process's start time")?,
        ready: false,
        proxies: listeners
            .iter()
            .map(|(r, l)| {
                Ok(ProxyState {
                    name: r.name.clone(),
                    listen: l.local_addr()?.to_string(),
                })
            })
            .collect::<std::io::Result<_>>()?,
        lanes: layout
            .lanes
            .iter()
            .map(|l| LaneState {
                name: l.name.clone(),
                pid: None,
                pids: Vec::new(),
                jms: l.ports.jms,
                stomp: l.ports.stomp,
                http: l.ports.http,
                restarts: 0,
                last_exit: None,
                given_up: false,
                log_file: l.log_file.clone(),
            })
            .collect(),
        routed_to: None,
    })
}

/// SIGTERM or SIGINT, registered up front so none is missed.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> anyhow::Result<StopSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        Ok(())
    }
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What `status` reports about one lane.
#[derive(Debug, serde::Serialize)]
struct LaneReport {
    name: String,
    pid: Option<u32>,
    running: bool,
    /// From `/health`: active, dormant, acquiring, recovering, fenced; `unreachable` without an answer.
    role: String,
    epoch: Option<u64>,
    restarts: u32,
    last_exit: Option<String>,
    given_up: bool,
    jms: u16,
    stomp: u16,
    http: u16,
    log_file: PathBuf,
}

#[derive(Debug, serde::Serialize)]
struct QueueReport {
    kind: String,
    name: String,
    depth: u64,
}

#[derive(Debug, serde::Serialize)]
struct StatusReport {
    tenant: String,
    model: String,
    dir: PathBuf,
    supervisor_pid: u32,
    supervisor_running: bool,
    routed_to: Option<String>,
    proxies: Vec<ProxyState>,
    lanes: Vec<LaneReport>,
    /// Destination depths as the active lane reports them (empty when no lane is active).
    queues: Vec<QueueReport>,
}

/// `tandem status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let dir = tenant_dir(&args.which)?;
    let s = UpState::read(&dir)?;
    let mut lanes = Vec::new();
    let mut queues = Vec::new();
    for l in &s.lanes {
        let http = SocketAddr::from(([127, 0, 0, 1], l.http));
        let (_, health) = probe::health(http, PROBE_TIMEOUT).await;
        let running = l.pid.is_some() && l.pids.last().is_some_and(ProcId::running);
        let role = health
            .as_ref()
            .map_or_else(|| "unreachable".to_owned(), |h| h.role.clone());
        if role == "active"
            && queues.is_empty()
            && let Some(m) = probe::metrics(http, PROBE_TIMEOUT).await
        {
            queues = probe::queue_depths(&m)
                .into_iter()
                .map(|(kind, name, depth)| QueueReport { kind, name, depth })
                .collect();
        }
        lanes.push(LaneReport {
            name: l.name.clone(),
            pid: l.pid,
            running,
            role,
            epoch: health.and_then(|h| h.epoch),
            restarts: l.restarts,
            last_exit: l.last_exit.clone(),
            given_up: l.given_up,
            jms: l.jms,
            stomp: l.stomp,
            http: l.http,
            log_file: l.log_file.clone(),
        });
    }
    let report = StatusReport {
        tenant: s.tenant.clone(),
        model: s.model.clone(),
        dir: s.dir.clone(),
        supervisor_pid: s.supervisor.pid,
        supervisor_running: s.supervisor.running(),
        routed_to: s.routed_to.clone(),
        proxies: s.proxies.clone(),
        lanes,
        queues,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_status(&report));
    }
    Ok(())
}

fn render_status(r: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tenant {}-{} in {}: supervisor pid {} {}",
        r.tenant,
        r.model,
        r.dir.display(),
        r.supervisor_pid,
        if r.supervisor_running {
            "running"
        } else {
            "NOT running (run `tandem down` to clean up)"
        }
    );
    let proxies: Vec<String> = r
        .proxies
        .iter()
        .map(|p| format!("{} {}", p.name, p.listen))
        .collect();
    let _ = writeln!(
        out,
        "proxy: {} -> {}",
        proxies.join(", "),
        r.routed_to.as_deref().map_or(
            "no active lane (connections refused)".to_owned(),
            |l| format!("lane {l}")
        )
    );
    let _ = writeln!(
        out,
        "{:<5} {:>8} {:<8} {:<12} {:>6} {:>8}  LAST EXIT",
        "LANE", "PID", "RUNNING", "ROLE", "EPOCH", "RESTARTS"
    );
    for l in &r.lanes {
        let _ = writeln!(
            out,
            "{:<5} {:>8} {:<8} {:<12} {:>6} {:>8}  {}{}",
            l.name,
            l.pid.map_or("-".to_owned(), |p| p.to_string()),
            if l.running { "yes" } else { "no" },
            l.role,
            l.epoch.map_or("-".to_owned(), |e| e.to_string()),
            l.restarts,
            l.last_exit.as_deref().unwrap_or("-"),
            if l.given_up {
                " (gave up restarting)"
            } else {
                ""
            }
        );
    }
    if !r.queues.is_empty() {
        let _ = writeln!(out, "{:<6} {:<40} {:>10}", "KIND", "DESTINATION", "DEPTH");
        for q in &r.queues {
            let _ = writeln!(out, "{:<6} {:<40} {:>10}", q.kind, q.name, q.depth);
        }
    }
    out
}

/// `tandem down`.
pub fn down(args: DownArgs) -> anyhow::Result<()> {
    let dir = tenant_dir(&args.which)?;
    let first = UpState::read(&dir)?;
    let sup = first.supervisor;
    if sup.running() {
        // The supervisor stops its lanes itself (SIGTERM, then SIGKILL after its own grace).
        sup.signal(Signal::TERM);
        if !state::wait_gone(&[sup], SUPERVISOR_GRACE).is_empty() {
            eprintln!(
                "supervisor {} did not stop in {SUPERVISOR_GRACE:?}; killing it",
                sup.pid
            );
            sup.signal(Signal::KILL);
            state::wait_gone(&[sup], KILL_WAIT);
        }
    }
    // Anything recorded that still runs (a supervisor that was killed leaves its lanes behind):
    // the file may have been rewritten meanwhile, so take the union of both readings.
    let mut procs = first.all_procs();
    if let Ok(later) = UpState::read(&dir) {
        procs.extend(later.all_procs());
    }
    procs.sort_unstable();
    procs.dedup();
    let left: Vec<ProcId> = procs.iter().copied().filter(ProcId::running).collect();
    for p in &left {
        p.signal(Signal::TERM);
    }
    let stubborn = state::wait_gone(&left, monitor::STOP_GRACE);
    for p in &stubborn {
        p.signal(Signal::KILL);
    }
    let still = state::wait_gone(&stubborn, KILL_WAIT);
    if !still.is_empty() {
        let pids: Vec<u32> = still.iter().map(|p| p.pid).collect();
        bail!("processes {pids:?} are still running after SIGKILL; the state file is kept");
    }
    for p in [state::state_path(&dir), dir.join("monitor.json.tmp")] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    for lane in &first.lanes {
        if let Some(d) = lane.log_file.parent() {
            let _ = std::fs::remove_file(d.join("tandem.pid"));
        }
    }
    let all: Vec<String> = procs.iter().map(|p| p.pid.to_string()).collect();
    println!(
        "tenant {}-{} is down; none of its processes ({}) runs (data and logs stay in {})",
        first.tenant,
        first.model,
        all.join(", "),
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str, role: &str, epoch: Option<u64>) -> LaneReport {
        LaneReport {
            name: name.into(),
            pid: Some(41),
            running: true,
            role: role.into(),
            epoch,
            restarts: 1,
            last_exit: Some("signal 9".into()),
            given_up: false,
            jms: 1,
            stomp: 2,
            http: 3,
            log_file: PathBuf::from("/x"),
        }
    }

    #[test]
    fn status_table_shows_route_roles_and_depths() {
        let mut r = StatusReport {
            tenant: "acme".into(),
            model: "orders".into(),
            dir: PathBuf::from("/t"),
            supervisor_pid: 7,
            supervisor_running: true,
            routed_to: Some("b".into()),
            proxies: vec![ProxyState {
                name: "jms".into(),
                listen: "127.0.0.1:61616".into(),
            }],
            lanes: vec![lane("a", "dormant", None), lane("b", "active", Some(4))],
            queues: vec![QueueReport {
                kind: "queue".into(),
                name: "orders".into(),
                depth: 42,
            }],
        };
        let text = render_status(&r);
        assert!(text.contains("jms 127.0.0.1:61616 -> lane b"), "{text}");
        let b = text.lines().find(|l| l.starts_with("b ")).unwrap();
        assert!(
            b.contains("active") && b.contains(" 4 ") && b.contains("signal 9"),
            "{b}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("orders") && l.ends_with("42")),
            "{text}"
        );
        r.routed_to = None;
        r.supervisor_running = false;
        let text = render_status(&r);
        assert!(
            text.contains("no active lane (connections refused)"),
            "{text}"
        );
        assert!(text.contains("NOT running"), "{text}");
    }

    #[test]
    fn a_tenant_must_be_named() {
        let none = Which {
            spec: None,
            dir: None,
        };
        assert!(
            tenant_dir(&none)
                .unwrap_err()
                .to_string()
                .contains("--dir DIR")
        );
        let dir = Which {
            spec: None,
            dir: Some(PathBuf::from("rel/t")),
        };
        assert!(tenant_dir(&dir).unwrap().is_absolute());
    }
}
