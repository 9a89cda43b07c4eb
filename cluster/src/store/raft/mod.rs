//! The quorum lease: a [`LeaseStore`] replicated by an openraft group of three members (lane a, lane b and a
//! witness), for deployments where the shared volume's semantics (exclusive create, fresh reads) are in doubt.
//!
//! ```text
//!  lane a process                      lane b process                      tandem witness
//!  LeaseDriver ─▶ RaftLeaseStore       LeaseDriver ─▶ RaftLeaseStore
//!                  │ local or forwarded to the leader
//!  RaftMember a ◀──── raft RPCs (TCP, length-prefixed JSON) ────▶ RaftMember b ◀────▶ RaftMember w
//!   <raft-dir>/raft.redb: vote, log, snapshot (the lease table)     (stands only when nobody leads)
//! ```
//!
//! The replicated state machine is the lease table (`table.rs`): every claim and renewal is a log entry applied in
//! log order on every member, with exactly the trait's rules (claim `n` only if `n == 1` or `n - 1` exists and `n`
//! is unclaimed; renew fails `Superseded` when a newer epoch exists). The epoch is the fencing token, as with the
//! file store.
//!
//! Invariants:
//! - **Writes** go through the leader's log: a member that is not the leader forwards the operation to the one it
//!   knows. A claim carries a random nonce, so a retry of a claim whose first attempt landed (answer lost) is
//!   recognised as won, not lost: exactly one caller ever wins an epoch.
//! - **Reads** are linearizable: the leader confirms with a majority that it still leads (`ensure_linearizable`)
//!   and waits until its state machine has applied everything committed before the read began. This is the
//!   freshness the role machine's expiry argument needs (crate docs, step 3).
//! - **Every operation is bounded** by [`RaftTiming::op_timeout`]: without a majority it fails with
//!   [`LeaseError::Unavailable`], which the driver counts as a failed read, claim or renewal, so an active lane
//!   that loses its majority stops renewing and fences itself at its deadline.
//! - **Durability**: a member acknowledges an entry or a vote only after redb fsynced it (`storage.rs`), so a
//!   restarted member never votes twice in a term.
//! - **Bootstrap** is deterministic: the member whose id sorts first initialises the membership (all members,
//!   from the shared `--peers` list) the first time it starts; a member with state on disk never initialises.
//! - **The witness stands for election only when nobody leads**: it keeps elections off while AppendEntries
//!   arrive, and turns them on after [`WITNESS_PATIENCE`] election timeouts without any. So a lane that can lead
//!   wins first, and the witness's death usually costs no leader change. It must still be able to lead: a lane
//!   restarted with an empty or stale log cannot win a vote (nobody votes for an older log), and with the other
//!   lane dead only the witness can, and then bring that lane up to date. Its timeouts (and so its leader
//!   lease, during which it refuses to vote) are the lanes', so it never slows down the lanes' elections.

mod network;
mod storage;
mod table;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, RaftMetrics, SnapshotPolicy};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::network::{Conn, LeaseOp, LeaseOpReply, Network, OpRefused, Request, Response};
use self::storage::SmState;
pub use self::storage::StorageFailure;
use self::table::{LeaseCommand, LeaseReply, NewestView};
use super::{LeaseError, LeaseStore};
use crate::{Epoch, LaneId, LeaseView};

openraft::declare_raft_types!(
    /// openraft's types for the lease group.
    pub TypeConfig:
        D = LeaseCommand,
        R = LeaseReply,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = table::LeaseTable,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

/// How many (maximum) election timeouts without AppendEntries before a witness may stand for election.
pub const WITNESS_PATIENCE: u32 = 3;

/// Pause between attempts of one operation while no leader is known or the leader is unreachable.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Raft timing, derived from the lease TTL so that a leader change fits inside the holder's write window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// The leader's heartbeat. openraft also uses it as the deadline of each AppendEntries call, so it must cover
    /// a follower's fsync.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in `[election_min, election_max)` stands for election.
    pub election_min: Duration,
    /// See `election_min`.
    pub election_max: Duration,
    /// Cap on any single RPC.
    pub rpc_timeout: Duration,
    /// How long one lease operation (read, claim, renew) may take, retries included, before it fails.
    pub op_timeout: Duration,
}

impl RaftTiming {
    /// For lease TTL `ttl` (1 s → heartbeat 50 ms, elections after 125–200 ms, operations fail after 300 ms).
    ///
    /// When the leader dies, openraft's followers wait out its lease (`election_max`) plus a random election
    /// timeout before standing, so a new leader commits about `2 × election_max` plus a vote and an append round
    /// after the last heartbeat: ~420 ms at a 1 s TTL. A holder whose member is not the leader keeps renewing
    /// meanwhile (a failed renewal is retried within a quarter renew interval), and the renewal that succeeds
    /// first after the election must complete inside its write window (`ttl - safety margin` = 800 ms) after the
    /// start of its last successful renewal, which was at most one renew interval before the leader died. With
    /// [`RaftTiming::lease_timing`]'s renew interval of TTL/8 that leaves 800 − 125 − 420 ≈ 250 ms for a loaded
    /// machine.
    pub fn from_lease_ttl(ttl: Duration) -> RaftTiming {
        let ms = |d: Duration| d.max(Duration::from_millis(5));
        RaftTiming {
            heartbeat: ms(ttl / 20),
            election_min: ms(ttl / 8),
            election_max: ms(ttl / 5),
            rpc_timeout: ms(ttl / 4),
            op_timeout: ms(ttl * 3 / 10),
        }
    }

    /// The lease timing a lane on the raft lease should use for `ttl`: the defaults, renewing every TTL/8
    /// instead of TTL/4 so a leader election fits in the write window with room to spare (see
    /// [`RaftTiming::from_lease_ttl`]). A renewal is one small log entry.
    pub fn lease_timing(ttl: Duration) -> crate::Timing {
        let mut timing = crate::Timing::from_ttl(ttl);
        timing.renew_interval = ttl / 8;
        timing
    }
}

/// Why a raft member could not start.
#[derive(Debug, thiserror::Error)]
pub enum RaftStoreError {
    /// The `--peers` list is unusable.
    #[error("raft peers: {detail}")]
    Peers {
        /// What is wrong.
        detail: String,
    },
    /// The raft listener could not bind.
    #[error("raft listener {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The member's directory could not be created.
    #[error("raft dir {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The member's storage failed to open.
    #[error(transparent)]
    Storage(#[from] StorageFailure),
    /// openraft refused the configuration.
    #[error("raft config: {0}")]
    Config(#[from] Box<openraft::ConfigError>),
    /// openraft stopped.
    #[error("raft: {0}")]
    Fatal(String),
}

/// Parse `a=HOST:PORT,b=HOST:PORT,w=HOST:PORT` into member ids and addresses.
pub fn parse_peers(text: &str) -> Result<Vec<(LaneId, String)>, RaftStoreError> {
    let bad = |detail: String| RaftStoreError::Peers { detail };
    let mut peers: Vec<(LaneId, String)> = Vec::new();
    for item in text.split(',').filter(|s| !s.trim().is_empty()) {
        let (id, addr) = item
            .trim()
            .split_once('=')
            .ok_or_else(|| bad(format!("{item:?}: expected ID=HOST:PORT")))?;
        let id = LaneId::new(id).map_err(|e| bad(format!("{item:?}: {e}")))?;
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(bad(format!("{item:?}: expected HOST:PORT after '='")));
        }
        if peers.iter().any(|(p, _)| *p == id) {
            return Err(bad(format!("member {id} is listed twice")));
        }
        peers.push((id, addr.to_string()));
    }
    if peers.is_empty() {
        return Err(bad("no members listed".into()));
    }
    Ok(peers)
}

/// How to run one member of the lease group.
#[derive(Debug, Clone)]
pub struct RaftMemberOptions {
    /// This member's id; must be in `peers`.
    pub id: LaneId,
    /// Every member (three: lane a, lane b, the witness) with the address it listens on; the same list everywhere.
    pub peers: Vec<(LaneId, String)>,
    /// This member's own local directory (not the shared volume): vote, log and snapshot.
    pub dir: PathBuf,
    /// Timing.
    pub timing: RaftTiming,
    /// A witness stands for election only when no leader has been heard of for a while ([`WITNESS_PATIENCE`]).
    pub witness: bool,
}

/// The raft node ids: the members sorted by id, numbered from 1. Every member derives the same numbering.
fn node_ids(peers: &[(LaneId, String)]) -> BTreeMap<u64, (LaneId, String)> {
    let mut sorted: Vec<_> = peers.to_vec();
    sorted.sort();
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, p))
        .collect()
}

/// What the server side and every store handle share.
struct Core {
    id: u64,
    raft: Raft<TypeConfig>,
    state: Arc<Mutex<SmState>>,
    members: BTreeMap<u64, (LaneId, String)>,
    timing: RaftTiming,
    /// One connection per peer for forwarded operations; the async mutex serialises calls on it.
    forward: BTreeMap<u64, tokio::sync::Mutex<Conn>>,
    nonces: RandomState,
    next_nonce: AtomicU64,
    /// When this member last received AppendEntries (a witness's sign that someone leads).
    last_append: Mutex<Instant>,
}

impl Core {
    fn name(&self, id: u64) -> String {
        self.members
            .get(&id)
            .map_or_else(|| format!("node {id}"), |(n, _)| n.to_string())
    }

    /// Run `op` on this member if it leads, answering within `timeout`.
    async fn local(&self, op: &LeaseOp, timeout: Duration) -> Result<LeaseOpReply, OpRefused> {
        let run = async {
            match op {
                LeaseOp::Write(command) => match self.raft.client_write(command.clone()).await {
                    Ok(resp) => Ok(LeaseOpReply::Write(resp.data)),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                        Err(OpRefused::NotLeader(f.leader_id))
                    }
                    Err(e) => Err(OpRefused::Unavailable(e.to_string())),
                },
                LeaseOp::Read => match self.raft.ensure_linearizable().await {
                    Ok(_) => Ok(LeaseOpReply::Read(self.state.lock().table.newest())),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(OpRefused::NotLeader(f.leader_id))
                    }
                    Err(e) => Err(OpRefused::Unavailable(e.to_string())),
                },
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(OpRefused::Unavailable(format!(
                    "no majority answered within {} ms",
                    timeout.as_millis()
                )))
            })
    }

    /// Ask member `leader` to run `op`.
    async fn forward(
        &self,
        leader: u64,
        op: &LeaseOp,
        timeout: Duration,
    ) -> Result<LeaseOpReply, String> {
        let Some(conn) = self.forward.get(&leader) else {
            return Err(format!("unknown leader id {leader}"));
        };
        let request = Request::Lease {
            op: op.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        // The remote side answers within `timeout`; the network gets a little more so its answer can arrive.
        let mut conn = match tokio::time::timeout(timeout, conn.lock()).await {
            Ok(c) => c,
            Err(_) => return Err(format!("connection to {} busy", self.name(leader))),
        };
        match conn.call(&request, timeout + RETRY_PAUSE).await {
            Ok(Response::Lease(Ok(reply))) => Ok(reply),
            Ok(Response::Lease(Err(refused))) => Err(format!("{}: {refused}", self.name(leader))),
            Ok(_) => Err(format!("{}: answer to another request", self.name(leader))),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Run `op` on whichever member leads, retrying until it answers or `op_timeout` passes.
    async fn execute(&self, op: LeaseOp, what: &'static str) -> Result<LeaseOpReply, LeaseError> {
        let timeout = self.timing.op_timeout;
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt finished");
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(LeaseError::Unavailable {
                    op: what,
                    timeout_ms: timeout.as_millis() as u64,
                    reason: last,
                });
            }
            match self.local(&op, remaining).await {
                Ok(reply) => return Ok(reply),
                Err(OpRefused::NotLeader(Some(leader))) if leader != self.id => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    match self.forward(leader, &op, remaining).await {
                        Ok(reply) => return Ok(reply),
                        Err(e) => last = format!("via leader {}: {e}", self.name(leader)),
                    }
                }
                Err(OpRefused::NotLeader(_)) => last = "no leader elected".into(),
                Err(refused) => last = refused.to_string(),
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
        }
    }

    fn nonce(&self) -> u64 {
        // SipHash with this process's random keys over a counter: distinct per call, unguessable across restarts.
        self.nonces
            .hash_one(self.next_nonce.fetch_add(1, Ordering::Relaxed))
    }
}

impl network::Handler for Core {
    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Append(r) => {
                *self.last_append.lock() = Instant::now();
                Response::Append(self.raft.append_entries(r).await)
            }
            Request::Vote(r) => Response::Vote(self.raft.vote(r).await),
            Request::Snapshot { vote, meta, table } => {
                let snapshot = openraft::Snapshot {
                    meta,
                    snapshot: Box::new(table),
                };
                Response::Snapshot(self.raft.install_full_snapshot(vote, snapshot).await)
            }
            Request::Lease { op, timeout_ms } => {
                // Never forwarded again: one hop, so two members that disagree on the leader cannot loop.
                let timeout = Duration::from_millis(timeout_ms).min(self.timing.op_timeout);
                Response::Lease(self.local(&op, timeout).await)
            }
        }
    }
}

/// A witness's election switch: on only while no AppendEntries has arrived for a while, i.e. no lane leads (or
/// the witness itself does, when turning it off would change nothing).
async fn witness_elections(core: Arc<Core>, stop: CancellationToken) {
    let patience = core.timing.election_max * WITNESS_PATIENCE;
    let mut enabled = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(core.timing.heartbeat) => {}
        }
        let quiet = core.last_append.lock().elapsed() > patience;
        if quiet != enabled {
            enabled = quiet;
            tracing::info!(elections = enabled, "witness: leader heard of: {}", !quiet);
            core.raft.runtime_config().elect(enabled);
        }
    }
}

/// A running member of the lease group: its raft node and the TCP server peers talk to.
pub struct RaftMember {
    core: Arc<Core>,
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
    storage: storage::OpenProbe,
}

impl std::fmt::Debug for RaftMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftMember")
            .field("id", &self.core.name(self.core.id))
            .field("addr", &self.addr)
            .finish()
    }
}

impl RaftMember {
    /// Bind `listen` and start.
    pub async fn start(
        opts: RaftMemberOptions,
        listen: &str,
    ) -> Result<RaftMember, RaftStoreError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| RaftStoreError::Bind {
                addr: listen.to_string(),
                source,
            })?;
        RaftMember::start_on(opts, listener).await
    }

    /// Start on an already bound listener (tests bind port 0 first, then tell every member the addresses).
    pub async fn start_on(
        opts: RaftMemberOptions,
        listener: TcpListener,
    ) -> Result<RaftMember, RaftStoreError> {
        let members = node_ids(&opts.peers);
        let id = members
            .iter()
            .find(|(_, (name, _))| *name == opts.id)
            .map(|(&id, _)| id)
            .ok_or_else(|| RaftStoreError::Peers {
                detail: format!("this member ({}) is not in the list", opts.id),
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RaftStoreError::Bind {
                addr: "listener".into(),
                source,
            })?;
        std::fs::create_dir_all(&opts.dir).map_err(|source| RaftStoreError::Dir {
            path: opts.dir.clone(),
            source,
        })?;
        let dir = opts.dir.clone();
        let (log_store, state_machine) = tokio::task::spawn_blocking(move || storage::open(&dir))
            .await
            .map_err(|e| RaftStoreError::Fatal(e.to_string()))??;
        let state = state_machine.shared();
        let storage_probe = log_store.probe();
        let t = opts.timing;
        let config = openraft::Config {
            cluster_name: "tandem-lease".into(),
            heartbeat_interval: t.heartbeat.as_millis() as u64,
            election_timeout_min: t.election_min.as_millis() as u64,
            election_timeout_max: t.election_max.as_millis() as u64,
            enable_elect: !opts.witness,
            // Renewals arrive a few times a second; a snapshot every 500 entries keeps the log (and a restart's
            // replay) short, and the table it saves is a few hundred bytes.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 100,
            max_payload_entries: 256,
            ..Default::default()
        }
        .validate()
        .map_err(Box::new)?;
        let network = Network {
            me: id,
            rpc_timeout: t.rpc_timeout,
            // A dead peer is retried at this pace (openraft logs every failed attempt).
            backoff: t.election_min,
        };
        let raft = Raft::new(id, Arc::new(config), network, log_store, state_machine)
            .await
            .map_err(|e| RaftStoreError::Fatal(e.to_string()))?;
        let forward = members
            .iter()
            .filter(|&(&m, _)| m != id)
            .map(|(&m, (_, a))| (m, tokio::sync::Mutex::new(Conn::new(a.clone()))))
            .collect();
        let core = Arc::new(Core {
            id,
            raft,
            state,
            members: members.clone(),
            timing: t,
            forward,
            nonces: RandomState::new(),
            next_nonce: AtomicU64::new(0),
            last_append: Mutex::new(Instant::now()),
        });
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        tasks.spawn(network::serve(
            listener,
            Arc::clone(&core),
            stop.clone(),
            tasks.clone(),
        ));
        if opts.witness {
            tasks.spawn(witness_elections(Arc::clone(&core), stop.clone()));
        }
        let first = *members.keys().next().expect("peers is never empty");
        let initialized = core
            .raft
            .is_initialized()
            .await
            .map_err(|e| RaftStoreError::Fatal(e.to_string()))?;
        if id == first && !initialized {
            let nodes: BTreeMap<u64, BasicNode> = members
                .iter()
                .map(|(&m, (_, a))| (m, BasicNode::new(a)))
                .collect();
            match core.raft.initialize(nodes).await {
                Ok(()) => tracing::info!(member = %opts.id, "lease group initialised"),
                // Another start already did it (a vote or log exists): nothing to do.
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::debug!(member = %opts.id, %e, "lease group already initialised");
                }
                Err(e) => return Err(RaftStoreError::Fatal(e.to_string())),
            }
        }
        tracing::info!(member = %opts.id, node = id, %addr, witness = opts.witness, "raft member started");
        Ok(RaftMember {
            core,
            addr,
            stop,
            tasks,
            storage: storage_probe,
        })
    }

    /// The address peers reach this member on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This member's raft node id.
    pub fn node_id(&self) -> u64 {
        self.core.id
    }

    /// openraft's metrics (leader, term, log indexes).
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<RaftMetrics<u64, BasicNode>> {
        self.core.raft.metrics()
    }

    /// A [`LeaseStore`] on this member, bound to the current tokio runtime. Its calls block on that runtime, so
    /// make them from blocking threads (the driver's `spawn_blocking`), never from inside an async task.
    pub fn store(&self) -> RaftLeaseStore {
        RaftLeaseStore {
            core: Arc::clone(&self.core),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Stop serving peers, stop the raft node and wait (bounded) until its storage is closed, so the directory
    /// can be opened again at once.
    pub async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.tasks.close();
        self.tasks.wait().await;
        // openraft's state machine and replication workers end shortly after the core; their storage handles
        // go with them.
        let t0 = Instant::now();
        while self.storage.is_open() && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.storage.is_open() {
            tracing::warn!("raft storage still open 5 s after shutdown");
        }
    }
}

/// The lease on the raft group, through one member. Cheap to clone.
#[derive(Clone)]
pub struct RaftLeaseStore {
    core: Arc<Core>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for RaftLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLeaseStore")
            .field("member", &self.core.name(self.core.id))
            .finish()
    }
}

impl RaftLeaseStore {
    fn run(&self, op: LeaseOp, what: &'static str) -> Result<LeaseOpReply, LeaseError> {
        self.runtime.block_on(self.core.execute(op, what))
    }

    fn write(&self, command: LeaseCommand, what: &'static str) -> Result<LeaseReply, LeaseError> {
        match self.run(LeaseOp::Write(command), what)? {
            LeaseOpReply::Write(reply) => Ok(reply),
            LeaseOpReply::Read(_) => Err(LeaseError::Unavailable {
                op: what,
                timeout_ms: 0,
                reason: "the leader answered a write with a read".into(),
            }),
        }
    }
}

fn refused(reply: LeaseReply, epoch: Epoch, holder: &LaneId) -> Result<(), LeaseError> {
    match reply {
        LeaseReply::Done => Ok(()),
        LeaseReply::Lost { .. } => Err(LeaseError::Lost { epoch }),
        LeaseReply::NotNext => Err(LeaseError::NotNext { epoch }),
        LeaseReply::Superseded { newer } => Err(LeaseError::Superseded {
            epoch,
            newer: Epoch(newer),
        }),
        LeaseReply::NotHolder => Err(LeaseError::NotHolder {
            epoch,
            holder: holder.clone(),
        }),
    }
}

fn view(v: NewestView) -> LeaseView {
    LeaseView {
        epoch: Epoch(v.epoch),
        // The holder was a valid LaneId when claimed; a record that no longer parses reads as unknown.
        holder: v.holder.and_then(|h| LaneId::new(h).ok()),
        heartbeat: v.heartbeat,
    }
}

impl LeaseStore for RaftLeaseStore {
    fn read(&self, _hint: Option<Epoch>) -> Result<Option<LeaseView>, LeaseError> {
        match self.run(LeaseOp::Read, "read")? {
            LeaseOpReply::Read(v) => Ok(v.map(view)),
            LeaseOpReply::Write(_) => Err(LeaseError::Unavailable {
                op: "read",
                timeout_ms: 0,
                reason: "the leader answered a read with a write".into(),
            }),
        }
    }

    fn claim(&self, epoch: Epoch, holder: &LaneId) -> Result<(), LeaseError> {
        let nonce = self.core.nonce();
        let reply = self.write(
            LeaseCommand::Claim {
                epoch: epoch.0,
                holder: holder.to_string(),
                nonce,
            },
            "claim",
        )?;
        match reply {
            // Our own earlier attempt landed and its answer was lost.
            LeaseReply::Lost { nonce: Some(n) } if n == nonce => Ok(()),
            other => refused(other, epoch, holder),
        }
    }

    fn renew(&self, epoch: Epoch, holder: &LaneId, counter: u64) -> Result<(), LeaseError> {
        let reply = self.write(
            LeaseCommand::Renew {
                epoch: epoch.0,
                holder: holder.to_string(),
                counter,
            },
            "renew",
        )?;
        refused(reply, epoch, holder)
    }

    fn collect_garbage(&self, current: Epoch) -> Result<(), LeaseError> {
        self.write(LeaseCommand::Collect { current: current.0 }, "collect")
            .map(|_| ())
    }
}
