//! `tandem perf`: the end-to-end load generator (issue 6), in the manner of Artemis' `perf
//! client` and RabbitMQ's PerfTest.
//!
//! - [`config`]: arguments and their validation (pure).
//! - [`pacing`]: when each message is meant to go (pure; the base of coordinated-omission
//!   correction).
//! - [`accounting`]: exact-once accounting by per-producer sequence numbers (pure).
//! - [`stats`]: HDR latency histograms, process CPU readings, the report.
//! - [`run`]: one run's tasks, pacing thread, drain and verdict.
//! - [`native`], [`stomp`]: the drivers (tandem-client over TCP or in process; STOMP 1.2 over TCP,
//!   which also drives ActiveMQ Classic and RabbitMQ).
//!
//! Exit status: 0 ok; 1 the run failed; 2 invalid arguments (or a non-loopback target without
//! `--allow-remote`); 3 messages missing, or duplicated without the redelivered flag.

pub mod accounting;
pub mod config;
pub mod native;
pub mod pacing;
pub mod run;
pub mod stats;
pub mod stomp;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tandem_broker::{Broker, BrokerConfig};
use tandem_client::ConnectionFactory;

pub use config::PerfArgs;
use config::{PerfConfig, Target, check_loopback};

/// Exit status for invalid arguments (as clap's own usage errors).
pub const EXIT_USAGE: i32 = 2;

/// Runs `tandem perf`; returns the process exit status. Output: the report on stdout (table or
/// JSON), progress and errors on stderr.
pub async fn main(args: PerfArgs) -> anyhow::Result<i32> {
    let cfg = match PerfConfig::from_args(&args) {
        Ok(c) => c,
        Err(errs) => {
            for e in errs {
                eprintln!("error: {e}");
            }
            return Ok(EXIT_USAGE);
        }
    };
    let addrs = match resolve(&cfg).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_USAGE);
        }
    };
    let json = cfg.json;
    let report = match &cfg.target {
        Target::Embedded => {
            let broker = Broker::start(BrokerConfig::embedded())
                .await
                .context("starting the embedded broker")?;
            let factory = ConnectionFactory::in_process(Arc::new(broker.connector()));
            let report = run::execute(cfg, native::Native { factory }).await;
            broker.shutdown().await;
            report
        }
        Target::Native { url, .. } => {
            let factory = ConnectionFactory::new(url)?;
            run::execute(cfg, native::Native { factory }).await
        }
        Target::Stomp { .. } => {
            let addr = addrs[0];
            run::execute(cfg, stomp::Stomp { addr }).await
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.exit_code)
}

/// Resolves the target's hosts and applies the loopback rule.
async fn resolve(cfg: &PerfConfig) -> Result<Vec<SocketAddr>, String> {
    let port = match &cfg.target {
        Target::Embedded => return Ok(Vec::new()),
        Target::Stomp { port, .. } => *port,
        // The client resolves the URL itself; the port does not matter for the check.
        Target::Native { .. } => 0,
    };
    let mut all = Vec::new();
    for host in cfg.target.hosts() {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .collect();
        check_loopback(&host, &addrs, cfg.allow_remote)?;
        all.extend(addrs);
    }
    Ok(all)
}
