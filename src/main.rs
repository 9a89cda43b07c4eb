//! `tandem`: the broker's command line.
//!
//! `tandem run` starts a broker. Settings come from, in rising precedence: built-in defaults, the
//! TOML file named by `--config` (or `TANDEM_CONFIG`), environment variables, flags.

mod perf;
mod provision;
mod up;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tandem_broker::{Broker, BrokerConfig};

mod user;
mod witness;

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "tandem: a JMS-compatible message broker with active/dormant failover",
    long_about = "tandem: a JMS-compatible message broker with active/dormant failover.\n\n\
        Start a broker with `tandem run`; every setting has a default, so no file is needed.\n\
        Logging follows RUST_LOG (default: info)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker in the foreground until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Manage the users file: add, remove, list (see docs/SECURITY.md).
    User(user::UserArgs),
    /// Load generator: rates, latency histograms and exact-once accounting (docs/BENCHMARKS.md).
    Perf(perf::PerfArgs),
    /// Tenant spec to resource plan, CloudFormation template, one-machine layout, or its AWS stack
    /// (apply, status, destroy, promote-region: docs/PROVISIONING.md).
    Provision(provision::ProvisionArgs),
    /// Run a tenant spec on this machine: lanes, a proxy that follows /health, a monitor (docs/LOCAL.md).
    Up(up::UpArgs),
    /// Lanes, roles, epochs, proxy target and queue depths of a tenant started with `tandem up`.
    Status(up::StatusArgs),
    /// Stop everything `tandem up` started for a tenant.
    Down(up::DownArgs),
    #[command(name = "up-supervisor", hide = true)]
    UpSupervisor(up::SuperviseArgs),
    /// The third member of two lanes' quorum lease (`run --lease raft`): serves only raft.
    Witness(witness::WitnessArgs),
}

/// Where a lane's lease lives.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseKind {
    /// Files on --shared-dir.
    File,
    /// A raft group of both lanes and a witness (--raft-listen, --raft-peers).
    Raft,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// A tandem.toml file; its keys are the fields of BrokerConfig (see docs/CONFIG.md).
    #[arg(long, env = "TANDEM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Native protocol listener address, or "off" [default: 127.0.0.1:61616].
    #[arg(long, env = "TANDEM_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// HTTP address for /health and /metrics, or "off" [default: 127.0.0.1:8161].
    #[arg(long, env = "TANDEM_HTTP", value_name = "ADDR")]
    http: Option<String>,
    /// STOMP listener address, or "off" [default: 127.0.0.1:61613].
    #[arg(long, env = "TANDEM_STOMP", value_name = "ADDR")]
    stomp: Option<String>,
    /// Data directory [default: ./data].
    #[arg(long, env = "TANDEM_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Most simultaneous connections [default: 1024].
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Add this many ms to every journal sync: emulates EFS latency (~3 ms) for benchmarks.
    #[arg(long, env = "TANDEM_JOURNAL_SYNC_DELAY_MS", value_name = "MS")]
    journal_sync_delay_ms: Option<u64>,
    /// Run as a failover lane (e.g. `a` or `b`): serve only while holding the lease on --shared-dir.
    #[arg(long, env = "TANDEM_LANE", value_name = "ID", requires = "shared_dir")]
    lane: Option<String>,
    /// The volume the two lanes share (lease and journal); with --lane, it is the data dir.
    #[arg(long, env = "TANDEM_SHARED_DIR", value_name = "DIR", requires = "lane")]
    shared_dir: Option<PathBuf>,
    /// Lease time-to-live: the dormant takes over this long after the active stops renewing.
    #[arg(
        long,
        env = "TANDEM_LEASE_TTL_MS",
        value_name = "MS",
        default_value_t = 1000
    )]
    lease_ttl_ms: u64,
    /// Where the lease lives: on --shared-dir, or in a quorum of both lanes and a witness.
    #[arg(long, env = "TANDEM_LEASE", value_enum, default_value_t = LeaseKind::File)]
    lease: LeaseKind,
    #[command(flatten)]
    raft: witness::RaftLaneArgs,
    /// Keep messages in memory only: nothing survives a restart.
    #[arg(long, env = "TANDEM_NO_PERSISTENCE")]
    no_persistence: bool,
}

fn parse_addr(flag: &str, v: &str) -> anyhow::Result<Option<SocketAddr>> {
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse::<SocketAddr>().map(Some).with_context(|| {
        format!("--{flag} {v:?}: expected HOST:PORT such as 127.0.0.1:61616, or off")
    })
}

fn load_config(args: &RunArgs) -> anyhow::Result<BrokerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading config file {}", path.display()))?;
            toml::from_str::<BrokerConfig>(&text)
                .with_context(|| format!("config file {}", path.display()))?
        }
        None => BrokerConfig::default(),
    };
    if let Some(v) = &args.listen {
        config.listen = parse_addr("listen", v)?;
    }
    if let Some(v) = &args.http {
        config.http = parse_addr("http", v)?;
    }
    if let Some(v) = &args.stomp {
        config.stomp = parse_addr("stomp", v)?;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = args.max_connections {
        config.max_connections = v;
    }
    if let Some(v) = args.journal_sync_delay_ms {
        config.journal_sync_delay_ms = v;
    }
    if args.no_persistence {
        config.persistence = false;
    }
    if let Err(errs) = config.validate() {
        let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
        bail!("invalid configuration:\n{}", lines.join("\n"));
    }
    Ok(config)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
    if args.lease == LeaseKind::Raft && args.lane.is_none() {
        bail!("--lease raft is for failover lanes: add --lane ID and --shared-dir DIR");
    }
    if let (Some(lane), Some(shared)) = (&args.lane, &args.shared_dir) {
        return run_lane(lane, shared, &args, config).await;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let broker = Broker::start(config).await?;
    let show = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    // One machine-readable line on stdout: scripts and system tests read the bound ports from it.
    println!(
        "READY native={} http={} stomp={}",
        show(broker.local_addr()),
        show(broker.http_addr()),
        show(broker.stomp_addr())
    );
    wait_for_signal().await?;
    tracing::info!("signal received; shutting down");
    broker.shutdown().await;
    Ok(())
}

/// A failover lane: the broker runs only while this lane holds the lease.
async fn run_lane(
    lane: &str,
    shared: &Path,
    args: &RunArgs,
    config: BrokerConfig,
) -> anyhow::Result<()> {
    let ttl_ms = args.lease_ttl_ms;
    use tandem_cluster::{LaneId, LaneOptions, Timing};
    std::fs::create_dir_all(shared)
        .with_context(|| format!("creating shared dir {}", shared.display()))?;
    let show = |a: Option<SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    let (native, stomp) = (show(config.listen), show(config.stomp));
    let config_dir = config.data_dir.clone();
    let opts = LaneOptions {
        lane: LaneId::new(lane).map_err(|e| anyhow::anyhow!("--lane {lane:?}: {e}"))?,
        shared_dir: shared.to_path_buf(),
        timing: match args.lease {
            LeaseKind::File => Timing::from_ttl(std::time::Duration::from_millis(ttl_ms)),
            LeaseKind::Raft => {
                tandem_cluster::RaftTiming::lease_timing(std::time::Duration::from_millis(ttl_ms))
            }
        },
        broker: config,
    };
    let member = match args.lease {
        LeaseKind::File => None,
        LeaseKind::Raft => Some(
            args.raft
                .start_member(&opts.lane, &config_dir, opts.timing.ttl)
                .await?,
        ),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let lane = lane.to_string();
    let ready = move |http| {
        // Listeners open only while active, on the configured addresses.
        println!(
            "READY native={native} http={} stomp={stomp} lane={lane}",
            show(http)
        );
    };
    let mut lane_task = match &member {
        Some(m) => tokio::spawn(tandem_cluster::run_lane_with_store(
            opts,
            std::sync::Arc::new(m.store()),
            stop.clone(),
            ready,
        )),
        None => tokio::spawn(tandem_cluster::run_lane(opts, stop.clone(), ready)),
    };
    tokio::select! {
        r = wait_for_signal() => {
            r?;
            tracing::info!("signal received; leaving the lease");
            stop.cancel();
            lane_task.await.context("lane task")??;
        }
        // The lane ends by itself only on an error (e.g. the HTTP port is taken).
        r = &mut lane_task => r.context("lane task")??,
    }
    if let Some(m) = member {
        m.shutdown().await;
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // One readable line with its causes, never a backtrace: these are a user's mistakes (bad
    // config, taken port), not crashes.
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::User(args) = cli.command {
        // No runtime and no log subscriber: a short file edit.
        return user::run(args);
    }
    if let Command::Provision(args) = cli.command {
        return provision::run(args);
    }
    if let Command::Down(args) = cli.command {
        return up::down(args);
    }
    // perf's stdout and stderr are its report and progress: only warnings from the embedded broker.
    let default_log = match cli.command {
        Command::Perf(_) | Command::Status(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // openraft logs every failed RPC to a dead member at warn/error; the lease's own logs
                // say what matters. RUST_LOG=openraft=warn brings them back.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(format!("{default_log},openraft=off"))
                }),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: `tandem up` sends lane and supervisor logs to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => rt.block_on(run(args)),
        Command::Up(args) => rt.block_on(up::up(args)),
        Command::UpSupervisor(args) => rt.block_on(up::supervise_detached(args)),
        Command::Status(args) => rt.block_on(up::status(args)),
        Command::Witness(args) => rt.block_on(witness::run(args)),
        Command::User(_) | Command::Provision(_) | Command::Down(_) => {
            unreachable!("handled before the runtime starts")
        }
        Command::Perf(args) => {
            let code = rt.block_on(perf::main(args))?;
            drop(rt);
            std::process::exit(code)
        }
    }
}
