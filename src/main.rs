//! `tandem`: the broker's command line.
//!
//! `tandem run` starts a broker. Settings come from, in rising precedence: built-in defaults, the
//! TOML file named by `--config` (or `TANDEM_CONFIG`), environment variables, flags.

mod perf;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tandem_broker::{Broker, BrokerConfig};

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
    /// Load generator: rates, latency histograms and exact-once accounting (docs/BENCHMARKS.md).
    Perf(perf::PerfArgs),
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
    if let Err(errs) = config.validate() {
        let lines: Vec<String> = errs.iter().map(|e| format!("  {e}")).collect();
        bail!("invalid configuration:\n{}", lines.join("\n"));
    }
    Ok(config)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(&args)?;
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

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // perf's stdout and stderr are its report and progress: only warnings from the embedded broker.
    let default_log = match cli.command {
        Command::Perf(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run(args) => rt.block_on(run(args)),
        Command::Perf(args) => {
            let code = rt.block_on(perf::main(args))?;
            drop(rt);
            std::process::exit(code)
        }
    }
}
