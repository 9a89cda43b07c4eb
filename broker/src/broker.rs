//! The broker handle: start, connect in process, inspect, shut down.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tandem_protocol::ErrorCode;
use tandem_protocol::link::{LOCAL_LINK_CAPACITY, LocalLink, local_link_pair};
use tandem_protocol::model::{Destination, DestinationKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{BrokerConfig, ConfigError};
use crate::message::Refusal;
use crate::queue::{Queue, QueueSnapshot};
use crate::store::{MemoryStore, MessageStore};
use crate::topic::Topic;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration breaks a rule.
    #[error("invalid configuration: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config(Vec<ConfigError>),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection limit is reached.
    #[error("connection limit of {0} reached")]
    ConnectionLimit(usize),
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// Broker-wide counters.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections refused at the limit.
    pub connections_refused: AtomicU64,
    /// Messages accepted.
    pub messages_in: AtomicU64,
    /// Sends refused (any reason).
    pub sends_refused: AtomicU64,
    /// Connections closed for a protocol error.
    pub protocol_errors: AtomicU64,
}

/// Destinations are keyed by kind and name: a queue and a temporary queue may share a name.
pub(crate) type DestinationKey = (DestinationKind, Arc<str>);

#[derive(Debug)]
pub(crate) struct BrokerInner {
    pub config: BrokerConfig,
    pub queues: RwLock<HashMap<DestinationKey, Arc<Queue>>>,
    pub topics: RwLock<HashMap<DestinationKey, Arc<Topic>>>,
    pub next_message_id: AtomicU64,
    pub next_connection_id: AtomicU64,
    pub next_consumer_key: AtomicU64,
    pub permits: Arc<Semaphore>,
    pub client_ids: Mutex<HashSet<String>>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub started: Instant,
    pub stats: BrokerStats,
    pub store: Box<dyn MessageStore>,
}

impl BrokerInner {
    pub(crate) fn active_connections(&self) -> usize {
        self.config.max_connections - self.permits.available_permits()
    }

    fn missing(&self, d: &Destination) -> Refusal {
        Refusal::new(
            ErrorCode::DestinationNotFound,
            format!("{d} does not exist and auto-create is off"),
        )
    }

    /// The queue for a queue or temporary-queue destination, created on first use if allowed.
    pub(crate) fn queue(&self, d: &Destination) -> Result<Arc<Queue>, Refusal> {
        let key = (d.kind(), Arc::<str>::from(d.name()));
        if let Some(q) = self.queues.read().get(&key) {
            return Ok(q.clone());
        }
        if !self.config.auto_create {
            return Err(self.missing(d));
        }
        let limit = self.config.destination_memory_limit;
        Ok(self
            .queues
            .write()
            .entry(key.clone())
            .or_insert_with(|| Queue::new(key.1, limit))
            .clone())
    }

    /// The topic for a topic or temporary-topic destination, created on first use if allowed.
    pub(crate) fn topic(&self, d: &Destination) -> Result<Arc<Topic>, Refusal> {
        let key = (d.kind(), Arc::<str>::from(d.name()));
        if let Some(t) = self.topics.read().get(&key) {
            return Ok(t.clone());
        }
        if !self.config.auto_create {
            return Err(self.missing(d));
        }
        Ok(self
            .topics
            .write()
            .entry(key.clone())
            .or_insert_with(|| Topic::new(key.1))
            .clone())
    }

    /// Makes sure a destination exists (producer open), within the auto-create rule.
    pub(crate) fn ensure(&self, d: &Destination) -> Result<(), Refusal> {
        if d.kind().is_queue() {
            self.queue(d).map(drop)
        } else {
            self.topic(d).map(drop)
        }
    }
}

/// A running broker. Dropping it does not stop it; call [`Broker::shutdown`].
#[derive(Debug)]
pub struct Broker {
    pub(crate) inner: Arc<BrokerInner>,
    local_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    stomp_addr: Option<SocketAddr>,
}

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// "active" while serving, "stopping" during shutdown.
    pub state: &'static str,
    /// Crate version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Open connections.
    pub connections: usize,
    /// The store kind.
    pub store: &'static str,
}

impl Broker {
    /// Validates the configuration, binds the listeners and starts serving.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        Broker::start_with_store(config, Box::new(MemoryStore)).await
    }

    /// [`Broker::start`] with a given store.
    pub async fn start_with_store(
        config: BrokerConfig,
        store: Box<dyn MessageStore>,
    ) -> Result<Broker, BrokerError> {
        config.validate().map_err(BrokerError::Config)?;
        let inner = Arc::new(BrokerInner {
            permits: Arc::new(Semaphore::new(config.max_connections)),
            config,
            queues: RwLock::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            next_message_id: AtomicU64::new(1),
            next_connection_id: AtomicU64::new(1),
            next_consumer_key: AtomicU64::new(1),
            client_ids: Mutex::new(HashSet::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            stats: BrokerStats::default(),
            store,
        });
        for q in &inner.config.queues {
            let d = Destination::queue(q).expect("validated");
            let key = (d.kind(), Arc::<str>::from(d.name()));
            let limit = inner.config.destination_memory_limit;
            inner
                .queues
                .write()
                .insert(key.clone(), Queue::new(key.1, limit));
        }
        for t in &inner.config.topics {
            let d = Destination::topic(t).expect("validated");
            let key = (d.kind(), Arc::<str>::from(d.name()));
            inner.topics.write().insert(key.clone(), Topic::new(key.1));
        }
        let local_addr = match inner.config.listen {
            Some(addr) => Some(crate::listener::start(inner.clone(), addr).await?),
            None => None,
        };
        let http_addr = match inner.config.http {
            Some(addr) => Some(crate::http::start(inner.clone(), addr).await?),
            None => None,
        };
        let stomp_addr = match inner.config.stomp {
            Some(addr) => Some(crate::stomp::start(inner.clone(), addr).await?),
            None => None,
        };
        tracing::info!(native = ?local_addr, http = ?http_addr, stomp = ?stomp_addr, "broker started");
        Ok(Broker {
            inner,
            local_addr,
            http_addr,
            stomp_addr,
        })
    }

    /// The bound native listener address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound STOMP listener address.
    pub fn stomp_addr(&self) -> Option<SocketAddr> {
        self.stomp_addr
    }

    /// A new in-process connection: the client end of a frame link. Counts against the connection
    /// limit like a TCP connection.
    pub fn connect_local(&self) -> Result<LocalLink, BrokerError> {
        connect_local(&self.inner)
    }

    /// A connector for `tandem_client::ConnectionFactory::in_process`: each call opens a new
    /// in-process connection to this broker.
    pub fn connector(&self) -> impl Fn() -> Result<LocalLink, String> + Send + Sync + 'static {
        let inner = self.inner.clone();
        move || connect_local(&inner).map_err(|e| e.to_string())
    }

    /// Liveness and role, as `/health` reports it.
    pub fn health(&self) -> Health {
        health(&self.inner)
    }

    /// The Prometheus text `/metrics` serves.
    pub fn metrics(&self) -> String {
        crate::http::metrics_text(&self.inner)
    }

    /// Counts of a queue (`DestinationKind::Queue`), if it exists.
    pub fn queue_snapshot(&self, name: &str) -> Option<QueueSnapshot> {
        let key = (DestinationKind::Queue, Arc::<str>::from(name));
        self.inner.queues.read().get(&key).map(|q| q.snapshot())
    }

    /// Broker-wide counters.
    pub fn stats(&self) -> &BrokerStats {
        &self.inner.stats
    }

    /// Stops accepting, tells every connection to close (Close with ShuttingDown), waits up to the
    /// shutdown timeout for them to flush, and returns.
    pub async fn shutdown(self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        let wait = Duration::from_millis(self.inner.config.shutdown_timeout_ms);
        if tokio::time::timeout(wait, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: connections still open after {wait:?}; leaving them");
        }
        tracing::info!("broker stopped");
    }
}

pub(crate) fn health(inner: &BrokerInner) -> Health {
    Health {
        state: if inner.shutdown.is_cancelled() {
            "stopping"
        } else {
            "active"
        },
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: inner.started.elapsed().as_secs(),
        connections: inner.active_connections(),
        store: inner.store.kind(),
    }
}

fn connect_local(inner: &Arc<BrokerInner>) -> Result<LocalLink, BrokerError> {
    if inner.shutdown.is_cancelled() {
        return Err(BrokerError::ShuttingDown);
    }
    let permit = inner.permits.clone().try_acquire_owned().map_err(|_| {
        inner
            .stats
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        BrokerError::ConnectionLimit(inner.config.max_connections)
    })?;
    Ok(connect_local_with(inner, permit))
}

/// An in-process connection holding an already acquired connection permit (the STOMP listener
/// takes one at accept and hands it on).
pub(crate) fn connect_local_with(
    inner: &Arc<BrokerInner>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> LocalLink {
    let (client, server) = local_link_pair(LOCAL_LINK_CAPACITY);
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel();
    let LocalLink { tx, rx } = server;
    inner.tasks.spawn(async move {
        // The writer side of an in-process connection: frames move unencoded.
        while let Some(f) = out_rx.recv().await {
            let closing = matches!(f, tandem_protocol::Frame::Close(_));
            if tx.send(f).await.is_err() || closing {
                break;
            }
        }
    });
    let inbound = tokio_stream_like(rx);
    inner.tasks.spawn(crate::connection::run(
        inner.clone(),
        inbound,
        out_tx,
        "in-process".into(),
        permit,
    ));
    client
}

fn tokio_stream_like(
    mut rx: tokio::sync::mpsc::Receiver<tandem_protocol::Frame>,
) -> impl futures::Stream<Item = Result<tandem_protocol::Frame, tandem_protocol::CodecError>> + Unpin
{
    Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(Ok))
    }))
}
