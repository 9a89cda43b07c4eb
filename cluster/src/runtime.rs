//! The lane runtime: runs a broker only while this lane holds the lease.
//!
//! ```text
//!  role (LeaseDriver) ──▶ Dormant / Acquiring : no broker, no journal open, /health 503
//!                    ──▶ Active{epoch, serving: false} : open the journal with `epoch` (recovery,
//!                         epoch marker), open listeners, report RecoveryDone
//!                    ──▶ Active{serving: true} : /health 200
//!                    ──▶ Fenced / Stopped : fence the broker (journal stops at once, connections
//!                         closed with Fenced, listeners closed), /health 503
//! ```
//!
//! The journal asks the driver's [`WriteGuard`] before every batch (its write gate), so even a
//! runtime that is slow to react to a role change cannot write past the lease's deadline. The HTTP
//! endpoints live as long as the lane, not the broker: the load balancer's health check must see
//! the dormant answer 503 (DESIGN.md, "The two deployments").

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tandem_broker::http::HttpSource;
use tandem_broker::journal::WriteGate;
use tandem_broker::{Broker, BrokerConfig, BrokerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{
    Config, ConfigError, FileLeaseStore, LaneId, LeaseDriver, LeaseError, LeaseStore, Role, Timing,
    WriteGuard,
};

/// How to run one lane.
#[derive(Debug, Clone)]
pub struct LaneOptions {
    /// This lane's id (`a`, `b`).
    pub lane: LaneId,
    /// The volume both lanes share: the lease in `lease/`, the journal in `journal/`.
    pub shared_dir: PathBuf,
    /// Lease timing (TTL 1 s by default).
    pub timing: Timing,
    /// The broker's settings; `data_dir` is replaced by `shared_dir`, `journal_epoch` by the lease's
    /// epoch, and `http` is served by the lane for as long as it runs.
    pub broker: BrokerConfig,
}

/// Why a lane could not run.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// The lease directory could not be opened.
    #[error("lease store in {dir}: {source}")]
    Lease {
        /// The lease directory.
        dir: PathBuf,
        /// The store's error.
        source: LeaseError,
    },
    /// The timing breaks the safety inequalities.
    #[error("lease timing: {0}")]
    Config(#[from] ConfigError),
    /// The HTTP listener could not bind.
    #[error(transparent)]
    Http(BrokerError),
}

/// The journal's write gate: the lease's deadline, on the real clock.
struct LeaseGate(WriteGuard);

impl WriteGate for LeaseGate {
    fn may_write(&self) -> bool {
        self.0.check().is_ok()
    }
}

/// What `/health` and `/metrics` see.
struct LaneState {
    lane: LaneId,
    role: Mutex<Role>,
    broker: Mutex<Option<Arc<dyn HttpSource>>>,
    activations: AtomicU64,
    started: Instant,
}

impl HttpSource for LaneState {
    fn health(&self) -> (bool, String) {
        let role = *self.role.lock();
        let serving =
            matches!(role, Role::Active { serving: true, .. }) && self.broker.lock().is_some();
        let (name, epoch) = match &role {
            Role::Dormant => ("dormant", None),
            Role::Acquiring { epoch } => ("acquiring", Some(epoch.0)),
            Role::Active {
                epoch,
                serving: false,
            } => ("recovering", Some(epoch.0)),
            Role::Active {
                epoch,
                serving: true,
            } => ("active", Some(epoch.0)),
            Role::Fenced { epoch, .. } => ("fenced", Some(epoch.0)),
            Role::Stopped => ("stopped", None),
        };
        let body = format!(
            "{{\"state\":\"{}\",\"role\":\"{name}\",\"lane\":\"{}\",\"epoch\":{},\"version\":\"{}\",\"uptime_secs\":{}}}\n",
            if serving { "active" } else { "standby" },
            self.lane,
            epoch.map_or("null".to_string(), |e| e.to_string()),
            env!("CARGO_PKG_VERSION"),
            self.started.elapsed().as_secs(),
        );
        (serving, body)
    }

    fn metrics(&self) -> String {
        let (serving, _) = self.health();
        let mut s = format!(
            "# HELP tandem_lane_serving 1 while this lane holds the lease and serves.\n# TYPE tandem_lane_serving gauge\ntandem_lane_serving{{lane=\"{lane}\"}} {}\n\
             # HELP tandem_lane_activations_total Times this lane became active (failovers to it).\n# TYPE tandem_lane_activations_total counter\ntandem_lane_activations_total{{lane=\"{lane}\"}} {}\n",
            u8::from(serving),
            self.activations.load(Ordering::Relaxed),
            lane = self.lane,
        );
        if let Some(b) = self.broker.lock().as_ref() {
            s.push_str(&b.metrics());
        }
        s
    }
}

/// Runs the lane until `shutdown`: watches the lease, runs the broker while active. `ready` is
/// called once with the bound HTTP address.
pub async fn run_lane(
    opts: LaneOptions,
    shutdown: CancellationToken,
    ready: impl FnOnce(Option<std::net::SocketAddr>),
) -> Result<(), LaneError> {
    // The store keeps its files in `lease/` under the root it is given.
    let store = FileLeaseStore::open(&opts.shared_dir).map_err(|source| LaneError::Lease {
        dir: opts.shared_dir.clone(),
        source,
    })?;
    run_lane_with_store(opts, Arc::new(store), shutdown, ready).await
}

/// [`run_lane`] with the lease in `store` (the quorum lease, [`crate::RaftLeaseStore`]); the journal
/// stays in `shared_dir`.
pub async fn run_lane_with_store(
    opts: LaneOptions,
    store: Arc<dyn LeaseStore>,
    shutdown: CancellationToken,
    ready: impl FnOnce(Option<std::net::SocketAddr>),
) -> Result<(), LaneError> {
    let driver = LeaseDriver::spawn(Config::new(opts.lane.clone(), opts.timing)?, store);
    let state = Arc::new(LaneState {
        lane: opts.lane.clone(),
        role: Mutex::new(Role::Dormant),
        broker: Mutex::new(None),
        activations: AtomicU64::new(0),
        started: Instant::now(),
    });
    let http_tasks = TaskTracker::new();
    let http_stop = CancellationToken::new();
    let http = match opts.broker.http {
        Some(addr) => Some(
            tandem_broker::http::serve(addr, state.clone(), http_stop.clone(), http_tasks.clone())
                .await
                .map_err(LaneError::Http)?,
        ),
        None => None,
    };
    ready(http);
    let mut roles = driver.role();
    let mut broker: Option<Broker> = None;
    loop {
        let role = *roles.borrow_and_update();
        *state.role.lock() = role;
        match role {
            Role::Active {
                epoch,
                serving: false,
            } if broker.is_none() => {
                tracing::info!(lane = %opts.lane, %epoch, "lease acquired; recovering the journal");
                let mut config = opts.broker.clone();
                config.http = None;
                config.persistence = true;
                config.data_dir = opts.shared_dir.clone();
                config.journal_epoch = epoch.0;
                let mut journal = config.journal_options();
                journal.write_gate = Some(Arc::new(LeaseGate(driver.write_guard())));
                match Broker::start_with_journal(config, journal).await {
                    Ok(b) => {
                        *state.broker.lock() = Some(b.http_source());
                        state.activations.fetch_add(1, Ordering::Relaxed);
                        broker = Some(b);
                        driver.recovery_reporter().done(epoch).await;
                        tracing::info!(lane = %opts.lane, %epoch, "serving");
                    }
                    Err(e) => {
                        tracing::error!(lane = %opts.lane, %epoch, error = %e, "could not start the broker");
                        driver.recovery_reporter().failed(epoch).await;
                    }
                }
            }
            Role::Active { .. } => {}
            other => {
                if let Some(b) = broker.take() {
                    tracing::warn!(lane = %opts.lane, role = ?other, "lease lost: fencing the broker");
                    *state.broker.lock() = None;
                    b.fence().await;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = roles.changed() => if r.is_err() { break },
        }
    }
    *state.broker.lock() = None;
    if let Some(b) = broker.take() {
        b.shutdown().await;
    }
    driver.shutdown().await;
    http_stop.cancel();
    http_tasks.close();
    http_tasks.wait().await;
    Ok(())
}
