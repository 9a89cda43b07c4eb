//! Raft RPCs and forwarded lease operations between members over TCP.
//!
//! ```text
//! frame := length (u32, big endian) | JSON body        body ≤ MAX_FRAME bytes, checked before allocation
//! one connection carries one request at a time: Request frame → Response frame
//! ```
//!
//! Invariants: every call has a deadline (a call that misses it drops its connection, so a late answer can never
//! be read as the answer to the next request); a frame over [`MAX_FRAME`] or a body that does not parse closes
//! that connection and nothing else; the server holds at most [`MAX_CONNECTIONS`] connections.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RPCTypes, Snapshot, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TypeConfig;
use super::table::{LeaseCommand, LeaseReply, LeaseTable, NewestView};

/// Largest frame either side accepts. A full append batch (256 small entries) or the snapshot is far below it.
pub const MAX_FRAME: usize = 1 << 20;
/// Most connections a member serves at once (peers keep a handful each).
pub const MAX_CONNECTIONS: usize = 64;
/// A connection with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(60);

type NodeId = u64;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// A lease operation one member asks another (the leader) to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseOp {
    /// Propose a command through the log.
    Write(LeaseCommand),
    /// A linearizable read of the newest epoch.
    Read,
}

/// The answer to a [`LeaseOp`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseOpReply {
    /// What applying the command did.
    Write(LeaseReply),
    /// The newest epoch.
    Read(Option<NewestView>),
}

/// Why a member could not run a [`LeaseOp`] itself.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum OpRefused {
    /// It is not the leader; the leader it knows of, if any.
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// It is the leader (or thinks so) but no majority answered, or raft stopped.
    #[error("{0}")]
    Unavailable(String),
}

/// A request frame.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Request {
    /// Raft AppendEntries (also the heartbeat).
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft RequestVote.
    Vote(VoteRequest<NodeId>),
    /// A whole snapshot (the lease table is small, so it is never chunked).
    Snapshot {
        /// The leader's vote.
        vote: Vote<NodeId>,
        /// What the snapshot covers.
        meta: SnapshotMeta<NodeId, BasicNode>,
        /// The table.
        table: LeaseTable,
    },
    /// A forwarded lease operation, to be answered within `timeout_ms`.
    Lease {
        /// The operation.
        op: LeaseOp,
        /// The caller's remaining time.
        timeout_ms: u64,
    },
}

/// A response frame, one per request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Response {
    /// To [`Request::Append`].
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Vote`].
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To [`Request::Snapshot`].
    Snapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    /// To [`Request::Lease`].
    Lease(Result<LeaseOpReply, OpRefused>),
}

/// Why a call failed on the way.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection could be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The peer.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// No answer within the deadline.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The peer.
        addr: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The connection failed or was closed mid-call, or a frame was too large.
    #[error("connection to {addr}: {source}")]
    Io {
        /// The peer.
        addr: String,
        /// The I/O or framing error.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the connection without answering.
    #[error("{addr} closed the connection")]
    Closed {
        /// The peer.
        addr: String,
    },
    /// The answer did not parse, or answered another request type.
    #[error("bad answer from {addr}: {detail}")]
    BadAnswer {
        /// The peer.
        addr: String,
        /// What was wrong.
        detail: String,
    },
}

/// One connection to a peer, opened on first use and after any failure.
#[derive(Debug)]
pub struct Conn {
    addr: String,
    framed: Option<Framed<TcpStream, LengthDelimitedCodec>>,
}

impl Conn {
    /// A connection to `addr` (`host:port`), not yet opened.
    pub fn new(addr: String) -> Conn {
        Conn { addr, framed: None }
    }

    /// Send `request` and wait at most `timeout` for its answer.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let body = Bytes::from(serde_json::to_vec(request).expect("requests always serialize"));
        let result = match tokio::time::timeout(timeout, self.exchange(body)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        };
        if result.is_err() {
            // A late answer must never be taken for the next request's.
            self.framed = None;
        }
        result
    }

    async fn exchange(&mut self, body: Bytes) -> Result<Response, CallError> {
        let addr = self.addr.clone();
        if self.framed.is_none() {
            let stream = TcpStream::connect(&addr)
                .await
                .map_err(|source| CallError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            // Heartbeats and votes are tiny; Nagle would hold them back.
            let _ = stream.set_nodelay(true);
            self.framed = Some(Framed::new(stream, codec()));
        }
        let framed = self.framed.as_mut().expect("opened above");
        let io = |source| CallError::Io {
            addr: addr.clone(),
            source,
        };
        framed.send(body).await.map_err(io)?;
        match framed.next().await {
            Some(Ok(frame)) => serde_json::from_slice(&frame).map_err(|e| CallError::BadAnswer {
                addr: addr.clone(),
                detail: e.to_string(),
            }),
            Some(Err(e)) => Err(io(e)),
            None => Err(CallError::Closed { addr: addr.clone() }),
        }
    }
}

/// Builds one [`PeerClient`] per replication target.
#[derive(Debug, Clone)]
pub struct Network {
    /// This member's id.
    pub me: NodeId,
    /// Cap on every raft RPC (openraft's own per-call TTL applies too).
    pub rpc_timeout: Duration,
    /// Pause before retrying an unreachable peer.
    pub backoff: Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            me: self.me,
            target,
            conn: Conn::new(node.addr.clone()),
            rpc_timeout: self.rpc_timeout,
            backoff: self.backoff,
        }
    }
}

/// Raft RPCs to one peer.
#[derive(Debug)]
pub struct PeerClient {
    me: NodeId,
    target: NodeId,
    conn: Conn,
    rpc_timeout: Duration,
    backoff: Duration,
}

impl PeerClient {
    async fn rpc<E: std::error::Error>(
        &mut self,
        action: RPCTypes,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, E>> {
        let timeout = option.hard_ttl().min(self.rpc_timeout);
        self.conn
            .call(&request, timeout)
            .await
            .map_err(|e| match e {
                CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Timeout { .. } => RPCError::Timeout(Timeout {
                    action,
                    id: self.me,
                    target: self.target,
                    timeout,
                }),
                _ => RPCError::Network(NetworkError::new(&e)),
            })
    }

    fn unexpected(&self) -> NetworkError {
        NetworkError::new(&CallError::BadAnswer {
            addr: self.conn.addr.clone(),
            detail: "answer to another request type".into(),
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .rpc(RPCTypes::AppendEntries, Request::Append(rpc), &option)
            .await?
        {
            Response::Append(Ok(r)) => Ok(r),
            Response::Append(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(RPCError::Network(self.unexpected())),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .rpc(RPCTypes::Vote, Request::Vote(rpc), &option)
            .await?
        {
            Response::Vote(Ok(r)) => Ok(r),
            Response::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(RPCError::Network(self.unexpected())),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let request = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            table: *snapshot.snapshot,
        };
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = self.rpc::<Fatal<NodeId>>(RPCTypes::InstallSnapshot, request, &option) => r,
        };
        match answer {
            Ok(Response::Snapshot(Ok(r))) => Ok(r),
            Ok(Response::Snapshot(Err(e))) => Err(StreamingError::RemoteError(RemoteError::new(
                self.target,
                e,
            ))),
            Ok(_) => Err(StreamingError::Network(self.unexpected())),
            Err(RPCError::Timeout(t)) => Err(StreamingError::Timeout(t)),
            Err(RPCError::Unreachable(u)) => Err(StreamingError::Unreachable(u)),
            Err(RPCError::Network(n)) => Err(StreamingError::Network(n)),
            Err(RPCError::PayloadTooLarge(p)) => {
                Err(StreamingError::Network(NetworkError::new(&p)))
            }
            Err(RPCError::RemoteError(r)) => Err(StreamingError::RemoteError(r)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}

/// What answers requests on the server side.
pub trait Handler: Send + Sync + 'static {
    /// Answer one request.
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response> + Send;
}

/// Accept peers on `listener` until `stop`; each connection is served on `tasks`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of descriptors and the like: pause instead of spinning on the error.
                tracing::warn!(%error, "raft accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!(%peer, "raft connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let (handler, stop) = (Arc::clone(&handler), stop.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let mut framed = Framed::new(stream, codec());
            loop {
                let frame = tokio::select! {
                    () = stop.cancelled() => return,
                    f = tokio::time::timeout(IDLE, framed.next()) => f,
                };
                let frame = match frame {
                    Ok(Some(Ok(frame))) => frame,
                    Ok(Some(Err(error))) => {
                        tracing::warn!(%peer, %error, "raft connection closed: bad frame");
                        return;
                    }
                    Ok(None) | Err(_) => return,
                };
                let request: Request = match serde_json::from_slice(&frame) {
                    Ok(r) => r,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "raft connection closed: unparsable request");
                        return;
                    }
                };
                let response = tokio::select! {
                    () = stop.cancelled() => return,
                    r = handler.handle(request) => r,
                };
                let body = serde_json::to_vec(&response).expect("responses always serialize");
                if framed.send(Bytes::from(body)).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Response {
            match request {
                Request::Lease { .. } => Response::Lease(Ok(LeaseOpReply::Read(None))),
                _ => Response::Lease(Err(OpRefused::NotLeader(None))),
            }
        }
    }

    async fn server() -> (String, CancellationToken, TaskTracker) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        tokio::spawn(serve(listener, Arc::new(Echo), stop.clone(), tasks.clone()));
        (addr, stop, tasks)
    }

    fn read() -> Request {
        Request::Lease {
            op: LeaseOp::Read,
            timeout_ms: 100,
        }
    }

    #[tokio::test]
    async fn a_call_is_answered_and_the_connection_reused() {
        let (addr, stop, _) = server().await;
        let mut conn = Conn::new(addr);
        for _ in 0..3 {
            let r = conn.call(&read(), Duration::from_secs(5)).await.unwrap();
            assert!(matches!(r, Response::Lease(Ok(LeaseOpReply::Read(None)))));
            assert!(conn.framed.is_some());
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_close_only_that_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, stop, _) = server().await;
        // A length prefix above the limit: the server closes without allocating it.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed");
        // A well-framed body that is not a request.
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&5u32.to_be_bytes()).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed");
        // The server still answers others.
        let mut conn = Conn::new(addr);
        conn.call(&read(), Duration::from_secs(5)).await.unwrap();
        stop.cancel();
    }

    #[tokio::test]
    async fn unreachable_and_silent_peers_fail_within_the_deadline() {
        // Nothing listens on a port we bound and released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conn = Conn::new(format!("127.0.0.1:{port}"));
        let err = conn
            .call(&read(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Connect { .. }), "{err}");
        // A listener that accepts and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let (s, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let mut conn = Conn::new(addr);
        let t0 = std::time::Instant::now();
        let err = conn
            .call(&read(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(conn.framed.is_none(), "a timed-out connection is dropped");
        hold.abort();
    }
}
