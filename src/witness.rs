//! `tandem witness` and the lane's `--lease raft` flags: the quorum lease's members on the command line.
//!
//! A lane with `--lease raft` runs its own raft member in-process (`--raft-listen`, `--raft-dir`) and keeps the
//! lease in the group; `tandem witness` runs the third member and nothing else, so two lanes and a witness keep a
//! majority when any one of them dies. Every member gets the same `--peers` list; the member whose id sorts first
//! bootstraps the group (cluster/src/store/raft/mod.rs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_cluster::{LaneId, RaftMember, RaftMemberOptions, RaftTiming};

/// `tandem run --lane ID --lease raft` flags.
#[derive(clap::Args, Debug)]
pub struct RaftLaneArgs {
    /// With --lease raft: the address this lane's raft member listens on (peers dial it).
    #[arg(long, env = "TANDEM_RAFT_LISTEN", value_name = "ADDR")]
    pub raft_listen: Option<String>,
    /// With --lease raft: every member as ID=HOST:PORT, comma separated (a=...,b=...,w=...); the same on all.
    #[arg(long, env = "TANDEM_RAFT_PEERS", value_name = "LIST")]
    pub raft_peers: Option<String>,
    /// With --lease raft: this member's own local directory (vote, log) [default: DATA_DIR/raft-LANE].
    #[arg(long, env = "TANDEM_RAFT_DIR", value_name = "DIR")]
    pub raft_dir: Option<PathBuf>,
}

impl RaftLaneArgs {
    /// Start this lane's member of the lease group.
    pub async fn start_member(
        &self,
        lane: &LaneId,
        data_dir: &Path,
        ttl: Duration,
    ) -> anyhow::Result<RaftMember> {
        let (Some(listen), Some(peers)) = (&self.raft_listen, &self.raft_peers) else {
            bail!("--lease raft needs --raft-listen ADDR and --raft-peers a=ADDR,b=ADDR,w=ADDR");
        };
        let dir = self
            .raft_dir
            .clone()
            .unwrap_or_else(|| data_dir.join(format!("raft-{lane}")));
        start(lane.clone(), listen, peers, dir, ttl, false).await
    }
}

/// `tandem witness`: the third member of a lane pair's quorum lease.
#[derive(clap::Args, Debug)]
pub struct WitnessArgs {
    /// This member's id in --peers.
    #[arg(
        long,
        env = "TANDEM_WITNESS_ID",
        value_name = "ID",
        default_value = "w"
    )]
    id: String,
    /// The address peers dial.
    #[arg(long, env = "TANDEM_WITNESS_LISTEN", value_name = "ADDR")]
    listen: String,
    /// Every member as ID=HOST:PORT, comma separated (a=...,b=...,w=...); the same on all.
    #[arg(long, env = "TANDEM_WITNESS_PEERS", value_name = "LIST")]
    peers: String,
    /// This member's local directory (vote, log).
    #[arg(long, env = "TANDEM_WITNESS_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// The lanes' lease TTL; raft timing is derived from it and should match theirs.
    #[arg(
        long,
        env = "TANDEM_LEASE_TTL_MS",
        value_name = "MS",
        default_value_t = 1000
    )]
    lease_ttl_ms: u64,
}

async fn start(
    id: LaneId,
    listen: &str,
    peers: &str,
    dir: PathBuf,
    ttl: Duration,
    witness: bool,
) -> anyhow::Result<RaftMember> {
    let opts = RaftMemberOptions {
        id,
        peers: tandem_cluster::store::raft::parse_peers(peers)
            .with_context(|| format!("--peers {peers:?}"))?,
        dir,
        timing: RaftTiming::from_lease_ttl(ttl),
        witness,
    };
    Ok(RaftMember::start(opts, listen).await?)
}

/// Serve the witness until SIGINT or SIGTERM.
pub async fn run(args: WitnessArgs) -> anyhow::Result<()> {
    let id = LaneId::new(&args.id).map_err(|e| anyhow::anyhow!("--id {:?}: {e}", args.id))?;
    let member = start(
        id.clone(),
        &args.listen,
        &args.peers,
        args.data_dir.clone(),
        Duration::from_millis(args.lease_ttl_ms),
        true,
    )
    .await?;
    // One machine-readable line, like the broker's.
    println!("READY raft={} witness={id}", member.local_addr());
    crate::wait_for_signal().await?;
    tracing::info!("signal received; leaving the group");
    member.shutdown().await;
    Ok(())
}
