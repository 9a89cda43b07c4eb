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
use crate::journal::{Journal, JournalError, JournalOptions, Recovered};
use crate::message::Refusal;
use crate::message::{BrokerMessage, now_ms};
use crate::queue::{Queue, QueueSnapshot};
use crate::store::{JournalStore, MemoryStore, MessageStore, StoreError};
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
    /// The journal could not be opened or recovered.
    #[error("cannot open the journal in {}: {source}", dir.display())]
    Journal {
        /// The journal directory.
        dir: std::path::PathBuf,
        /// What went wrong (corruption names the segment and offset).
        source: JournalError,
    },
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
    /// Resent messages recognised as already stored (duplicate detection).
    pub duplicates: AtomicU64,
}

/// Destinations are keyed by kind and name: a queue and a temporary queue may share a name.
pub(crate) type DestinationKey = (DestinationKind, Arc<str>);

#[derive(Debug)]
pub(crate) struct BrokerInner {
    pub config: BrokerConfig,
    pub queues: RwLock<HashMap<DestinationKey, Arc<Queue>>>,
    pub topics: RwLock<HashMap<DestinationKey, Arc<Topic>>>,
    pub next_message_id: AtomicU64,
    /// Journal transaction ids: above every id the journal has seen, never reused.
    pub next_tx_id: AtomicU64,
    pub next_connection_id: AtomicU64,
    pub next_consumer_key: AtomicU64,
    pub permits: Arc<Semaphore>,
    pub client_ids: Mutex<HashSet<String>>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub started: Instant,
    pub stats: BrokerStats,
    pub store: Box<dyn MessageStore>,
    /// The global budget of queued bodies and the store's reader, given to every queue.
    pub paging: crate::queue::Paging,
    /// Duplicate detection: the highest sequence stored per producer name.
    pub dup_seen: Mutex<DupCache>,
    /// Distinguishes this broker process in generated names.
    pub instance: String,
    /// Set when the lane lost its lease: connections close with `Fenced`, not `ShuttingDown`.
    pub fenced: std::sync::atomic::AtomicBool,
    /// Dead-letter and expiry moves, carried out by the mover task.
    pub mover: tokio::sync::mpsc::UnboundedSender<crate::queue::Move>,
    /// Wakeups for scheduled messages (delivery delay), carried out by the scheduler task.
    pub scheduler: tokio::sync::mpsc::UnboundedSender<crate::queue::Wakeup>,
    /// Authentication and authorization (docs/SECURITY.md).
    pub security: crate::security::Security,
    /// TLS for the listeners; `None`: plaintext.
    pub tls: Option<crate::tls::Tls>,
    /// Durable and shared topic subscriptions.
    pub subscriptions: crate::subscription::Registry,
    /// Temporary destinations and the connections that own them.
    pub temps: crate::temp::Registry,
}

impl BrokerInner {
    /// Checks `(producer, seq)` and, when it is new, reserves it in the same step (under the
    /// cache's lock): a resend arriving on another connection before this send is durable then
    /// waits for this send's outcome instead of being stored a second time. The returned ticket
    /// settles the reservation ([`DupTicket::settle`]); dropping it unsettled counts as failed.
    pub(crate) fn dup_reserve(self: &Arc<Self>, producer: &Arc<str>, seq: u64) -> DupStatus {
        let mut cache = self.dup_seen.lock();
        if let Some(d) = cache.map.get(&**producer) {
            if seq <= d.stored {
                return DupStatus::Stored;
            }
            if let Some(f) = d.inflight.get(&seq) {
                return DupStatus::InFlight(f.clone());
            }
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), StoreError>>();
        let outcome: crate::store::Durable = Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError("the original send was dropped".into())))
        });
        let outcome = futures::FutureExt::shared(outcome);
        cache.touch(producer.clone()).inflight.insert(seq, outcome);
        DupStatus::New(DupTicket {
            inner: self.clone(),
            producer: producer.clone(),
            seq,
            tx: Some(tx),
        })
    }

    pub(crate) fn active_connections(&self) -> usize {
        self.config.max_connections - self.permits.available_permits()
    }

    fn missing(&self, d: &Destination) -> Refusal {
        if d.kind().is_temporary() {
            return Refusal::new(
                ErrorCode::DestinationNotFound,
                format!("{d} does not exist (deleted, or the connection that created it closed)"),
            );
        }
        Refusal::new(
            ErrorCode::DestinationNotFound,
            format!("{d} does not exist and auto-create is off"),
        )
    }

    /// Whether `d` may be created on first use: never a temporary destination (those exist only
    /// between their create and delete); otherwise the matching address settings' `auto_create`,
    /// or the broker's.
    fn may_auto_create(&self, d: &Destination) -> bool {
        if d.kind().is_temporary() {
            return false;
        }
        crate::settings::resolve(&self.config.address_settings, d.name())
            .auto_create
            .unwrap_or(self.config.auto_create)
    }

    /// The queue for a queue or temporary-queue destination, created on first use if allowed.
    pub(crate) fn queue(&self, d: &Destination) -> Result<Arc<Queue>, Refusal> {
        let key = (d.kind(), Arc::<str>::from(d.name()));
        if let Some(q) = self.queues.read().get(&key) {
            return Ok(q.clone());
        }
        // Temporary destinations exist only between their create and delete.
        if !self.may_auto_create(d) {
            return Err(self.missing(d));
        }
        Ok(self.queue_forced(d))
    }

    /// A new queue with the settings that match `settings_name` (its own name, or its topic's).
    pub(crate) fn make_queue(
        &self,
        name: Arc<str>,
        durable: bool,
        settings_name: &str,
    ) -> Arc<Queue> {
        let settings = crate::settings::resolve(&self.config.address_settings, settings_name);
        let limit = self.config.destination_memory_limit;
        let (mover, scheduler) = (Some(self.mover.clone()), Some(self.scheduler.clone()));
        Queue::with_settings(name, durable, limit, settings, mover, scheduler)
            .with_paging(self.paging.clone())
    }

    /// The queue, created whatever auto_create says (dead-letter and expiry targets, recovery).
    pub(crate) fn queue_forced(&self, d: &Destination) -> Arc<Queue> {
        let key = (d.kind(), Arc::<str>::from(d.name()));
        if let Some(q) = self.queues.read().get(&key) {
            return q.clone();
        }
        self.queues
            .write()
            .entry(key.clone())
            .or_insert_with(|| {
                self.make_queue(key.1.clone(), key.0 == DestinationKind::Queue, &key.1)
            })
            .clone()
    }

    /// The topic for a topic or temporary-topic destination, created on first use if allowed.
    pub(crate) fn topic(&self, d: &Destination) -> Result<Arc<Topic>, Refusal> {
        let key = (d.kind(), Arc::<str>::from(d.name()));
        if let Some(t) = self.topics.read().get(&key) {
            return Ok(t.clone());
        }
        if !self.may_auto_create(d) {
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

/// A store completion several sends can wait on (a resend mirrors its original's outcome).
pub(crate) type SharedDurable = futures::future::Shared<crate::store::Durable>;

/// Duplicate detection per producer name: producers send strictly increasing sequences, so the
/// highest stored one is the whole cache of what is durable; sends still being written are kept
/// apart so that a resend arriving meanwhile is not stored a second time.
#[derive(Debug, Default)]
pub(crate) struct DupEntry {
    stored: u64,
    inflight: HashMap<u64, SharedDurable>,
    stamp: u64,
}

/// The per-producer entries, bounded to [`crate::config::DUP_PRODUCERS`]: the least recently
/// used producer is forgotten first (never one with a send still being written).
#[derive(Debug, Default)]
pub(crate) struct DupCache {
    map: HashMap<Arc<str>, DupEntry>,
    order: std::collections::VecDeque<(u64, Arc<str>)>,
    stamp: u64,
}

impl DupCache {
    fn touch(&mut self, producer: Arc<str>) -> &mut DupEntry {
        self.stamp += 1;
        let stamp = self.stamp;
        if self.map.len() >= crate::config::DUP_PRODUCERS && !self.map.contains_key(&producer) {
            self.forget_one();
        }
        self.order.push_back((stamp, producer.clone()));
        if self.order.len() > 2 * self.map.len() + 1024 {
            // Drop stale entries (producers written again since).
            let map = &self.map;
            self.order
                .retain(|(s, n)| map.get(n).is_none_or(|e| e.stamp == *s) || *s == stamp);
        }
        let e = self.map.entry(producer).or_default();
        e.stamp = stamp;
        e
    }

    /// Forgets the least recently used producer that has nothing in flight.
    fn forget_one(&mut self) {
        for _ in 0..self.order.len() {
            let Some((stamp, name)) = self.order.pop_front() else {
                return;
            };
            match self.map.get(&name) {
                Some(e) if e.stamp == stamp && e.inflight.is_empty() => {
                    self.map.remove(&name);
                    return;
                }
                // Busy: keep it (at the back) and look further.
                Some(e) if e.stamp == stamp => self.order.push_back((stamp, name)),
                _ => {}
            }
        }
    }
}

/// See [`BrokerInner::dup_reserve`].
pub(crate) enum DupStatus {
    /// Not seen: reserved for this send.
    New(DupTicket),
    /// Already durable: confirm, store nothing.
    Stored,
    /// Being written by another send: answer as that one is answered.
    InFlight(SharedDurable),
}

/// A reserved `(producer, seq)`: settled once the send is durable or has failed.
pub(crate) struct DupTicket {
    inner: Arc<BrokerInner>,
    producer: Arc<str>,
    seq: u64,
    tx: Option<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
}

impl DupTicket {
    /// Records the outcome: durable (later resends are duplicates) or failed (a later resend
    /// must be stored); a resend that waited on this one gets the same outcome.
    pub(crate) fn settle(mut self, outcome: Result<(), StoreError>) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Result<(), StoreError>) {
        let Some(tx) = self.tx.take() else { return };
        {
            let mut cache = self.inner.dup_seen.lock();
            if let Some(e) = cache.map.get_mut(&*self.producer) {
                if outcome.is_ok() {
                    e.stored = e.stored.max(self.seq);
                }
                e.inflight.remove(&self.seq);
            }
        }
        let _ = tx.send(outcome);
    }
}

impl Drop for DupTicket {
    fn drop(&mut self) {
        // Refused before it reached the store (flow control, a full queue): not stored.
        self.finish(Err(StoreError("the original send was refused".into())));
    }
}

impl std::fmt::Debug for DupTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DupTicket({}, {})", self.producer, self.seq)
    }
}

/// Puts the journal's live state back: durable subscriptions, messages on their queues (flagged
/// redelivered, counts raised: they may have been delivered before the crash), the
/// duplicate-detection cache, and the message id sequence above every id used before. Returns
/// `AckRef`s for refs left on subscription queues that no longer exist (a crash between a
/// subscription's deletion and the acks of its messages), to be written once the broker runs.
fn restore(inner: &BrokerInner, recovered: Recovered) -> Vec<crate::journal::Record> {
    let r = &recovered.report;
    inner
        .next_message_id
        .store(recovered.max_msg_id + 1, Ordering::Relaxed);
    inner
        .next_tx_id
        .store(recovered.max_tx_id + 1, Ordering::Relaxed);
    {
        let mut dup = inner.dup_seen.lock();
        for (producer, seqs) in &recovered.dup_ids {
            if let Some(max) = seqs.iter().max() {
                dup.touch(Arc::from(producer.as_str())).stored = *max;
            }
        }
    }
    let mut sub_queues: HashMap<Arc<str>, Arc<Queue>> = HashMap::new();
    for rec in &recovered.subscriptions {
        if !rec.durable {
            continue;
        }
        let topic = match Destination::topic(&rec.topic) {
            Ok(d) => inner
                .topics
                .write()
                .entry((d.kind(), Arc::from(d.name())))
                .or_insert_with(|| Topic::new(Arc::from(d.name())))
                .clone(),
            Err(e) => {
                tracing::error!(queue = %rec.queue, error = %e, "journaled subscription names a bad topic; skipped");
                continue;
            }
        };
        match inner.subscriptions.restore(inner, topic, rec) {
            Ok(q) => {
                sub_queues.insert(q.name().clone(), q);
            }
            Err(e) => {
                tracing::error!(queue = %rec.queue, error = %e, "journaled subscription does not restore; skipped")
            }
        }
    }
    let mut orphans = Vec::new();
    let now = now_ms();
    let mut messages = 0usize;
    for m in recovered.messages {
        let msg = match BrokerMessage::recovered(m.msg_id, m.encoded) {
            Ok(msg) => {
                if let Some(at) = m.location {
                    msg.set_location(at);
                }
                Arc::new(msg)
            }
            Err(e) => {
                tracing::error!(msg_id = m.msg_id, error = %e.message, "journaled message does not decode; skipped");
                continue;
            }
        };
        for r in m.refs {
            if let Some(q) = sub_queues.get(&r.queue) {
                q.restore(msg.clone(), r.delivery_count, r.deliver_at_ms, now);
                continue;
            }
            if crate::subscription::is_subscription_queue(&r.queue) {
                orphans.push(crate::journal::Record::AckRef {
                    msg_id: m.msg_id,
                    queue: r.queue.to_string(),
                });
                continue;
            }
            let key: DestinationKey = (DestinationKind::Queue, r.queue.clone());
            let q = inner
                .queues
                .write()
                .entry(key)
                .or_insert_with(|| inner.make_queue(r.queue.clone(), true, &r.queue))
                .clone();
            q.restore(msg.clone(), r.delivery_count, r.deliver_at_ms, now);
        }
        messages += 1;
    }
    tracing::info!(
        messages,
        subscriptions = sub_queues.len(),
        orphan_refs = orphans.len(),
        producers = recovered.dup_ids.len(),
        torn_tail = ?r.torn_tail,
        skipped = r.skipped.len(),
        "journal recovered"
    );
    orphans
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
    ///
    /// With `persistence` on, the journal in `data_dir/journal` is opened and recovered first:
    /// every message it holds is back on its queue before the listeners open.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        if !config.persistence {
            return Broker::start_with_store(config, Box::new(MemoryStore::new())).await;
        }
        let options = config.journal_options();
        Broker::start_with_journal(config, options).await
    }

    /// [`Broker::start`] with explicit journal options (tests inject I/O faults through them).
    pub async fn start_with_journal(
        config: BrokerConfig,
        options: JournalOptions,
    ) -> Result<Broker, BrokerError> {
        config.validate().map_err(BrokerError::Config)?;
        let dir = config.data_dir.join("journal");
        let open_dir = dir.clone();
        let opened = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&open_dir).map_err(|e| JournalError::Io {
                op: "create the journal directory",
                path: open_dir.clone(),
                source: Arc::new(e),
            })?;
            Journal::open(&open_dir, options)
        })
        .await
        .expect("journal open does not panic");
        let (journal, recovered) = opened.map_err(|source| BrokerError::Journal { dir, source })?;
        let store = Box::new(JournalStore::new(journal));
        Broker::start_inner(config, store, Some(recovered)).await
    }

    /// [`Broker::start`] with a given store and nothing to recover.
    pub async fn start_with_store(
        config: BrokerConfig,
        store: Box<dyn MessageStore>,
    ) -> Result<Broker, BrokerError> {
        Broker::start_inner(config, store, None).await
    }

    async fn start_inner(
        config: BrokerConfig,
        store: Box<dyn MessageStore>,
        recovered: Option<Recovered>,
    ) -> Result<Broker, BrokerError> {
        config.validate().map_err(BrokerError::Config)?;
        let (mover_tx, mover_rx) = tokio::sync::mpsc::unbounded_channel();
        let (scheduler_tx, scheduler_rx) = tokio::sync::mpsc::unbounded_channel();
        // Security hook: load the users file and certificates before anything listens.
        crate::security::log_posture(&config);
        let security = crate::security::Security::new(&config).map_err(BrokerError::Config)?;
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::Tls::load(t).map_err(BrokerError::Config)?),
            None => None,
        };
        let paging = crate::queue::Paging {
            budget: crate::queue::Budget::new(config.global_memory_limit),
            // A store the broker does not submit to holds no bodies to read back.
            pager: store.persistent().then(|| store.pager()).flatten(),
        };
        let inner = Arc::new(BrokerInner {
            paging,
            permits: Arc::new(Semaphore::new(config.max_connections)),
            config,
            queues: RwLock::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            next_message_id: AtomicU64::new(1),
            next_tx_id: AtomicU64::new(1),
            next_connection_id: AtomicU64::new(1),
            next_consumer_key: AtomicU64::new(1),
            client_ids: Mutex::new(HashSet::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            started: Instant::now(),
            stats: BrokerStats::default(),
            store,
            dup_seen: Mutex::new(DupCache::default()),
            fenced: std::sync::atomic::AtomicBool::new(false),
            mover: mover_tx,
            scheduler: scheduler_tx,
            instance: format!("{:x}", std::process::id() as u64 ^ (now_ms() as u64) << 16),
            security,
            tls,
            subscriptions: Default::default(),
            temps: Default::default(),
        });
        inner
            .tasks
            .spawn(crate::mover::run(inner.clone(), mover_rx));
        inner
            .tasks
            .spawn(crate::mover::scheduler(inner.clone(), scheduler_rx));
        if let Some(recovered) = recovered {
            let orphans = restore(&inner, recovered);
            if !orphans.is_empty() {
                // Cleanup only: if it is lost, the next recovery drops the same refs again.
                match inner.store.submit(orphans).await {
                    Ok(durable) => {
                        inner.tasks.spawn(durable);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not acknowledge orphaned subscription refs")
                    }
                }
            }
        }
        for q in &inner.config.queues {
            let d = Destination::queue(q).expect("validated");
            let key = (d.kind(), Arc::<str>::from(d.name()));
            inner
                .queues
                .write()
                .insert(key.clone(), inner.make_queue(key.1.clone(), true, &key.1));
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

    /// What this broker's `/health` and `/metrics` would serve, for a server of someone else's (the
    /// failover lane reports its role and the current broker's metrics).
    pub fn http_source(&self) -> std::sync::Arc<dyn crate::http::HttpSource> {
        crate::http::broker_source(self.inner.clone())
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

    /// Messages held (ready, scheduled or delivered and unacknowledged) by the durable
    /// subscription `name` of `client_id`; `None` if there is no such subscription.
    pub fn durable_subscription_pending(
        &self,
        client_id: Option<&str>,
        name: &str,
    ) -> Option<usize> {
        self.inner.subscriptions.pending(client_id, name)
    }

    /// How many temporary destinations exist.
    pub fn temporary_destinations(&self) -> usize {
        self.inner.temps.count()
    }

    /// Bytes of queued bodies held in memory by every destination together, and the limit.
    pub fn memory_used(&self) -> (usize, usize) {
        let b = &self.inner.paging.budget;
        (b.used(), b.limit())
    }

    /// Broker-wide counters.
    pub fn stats(&self) -> &BrokerStats {
        &self.inner.stats
    }

    /// The lane lost its lease (failover): the journal stops at once (nothing more is written;
    /// queued sends fail), every connection is closed with `Fenced` so clients fail over, and the
    /// listeners stop. Returns when the connections are gone (bounded by the shutdown timeout).
    pub async fn fence(self) {
        self.inner.fenced.store(true, Ordering::SeqCst);
        let inner = self.inner.clone();
        // First the journal: not one more byte, whatever the connections are doing.
        let _ = tokio::task::spawn_blocking(move || inner.store.fence()).await;
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        let wait = Duration::from_millis(self.inner.config.shutdown_timeout_ms);
        if tokio::time::timeout(wait, self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("fence: connections still open after {wait:?}; leaving them");
        }
        tracing::warn!("broker fenced");
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
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.store.close()).await;
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
    connect_local_as(inner, permit, crate::security::Peer::in_process())
}

/// [`connect_local_with`] on behalf of a remote peer (the STOMP listener's client): the native
/// connection authenticates it as that peer.
pub(crate) fn connect_local_as(
    inner: &Arc<BrokerInner>,
    permit: tokio::sync::OwnedSemaphorePermit,
    peer: crate::security::Peer,
) -> LocalLink {
    let (client, server) = local_link_pair(LOCAL_LINK_CAPACITY);
    let (out_tx, mut out_rx) = crate::session::Outbound::channel();
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
        peer,
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

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn the_dup_cache_is_bounded_and_keeps_producers_with_sends_in_flight() {
        let mut c = DupCache::default();
        let busy: Arc<str> = Arc::from("busy");
        let ready: crate::store::Durable = Box::pin(std::future::ready(Ok(())));
        c.touch(busy.clone()).inflight.insert(1, ready.shared());
        for i in 0..crate::config::DUP_PRODUCERS + 10 {
            c.touch(Arc::from(format!("p{i}").as_str())).stored = 1;
        }
        assert_eq!(c.map.len(), crate::config::DUP_PRODUCERS);
        assert!(
            c.map.contains_key(&busy),
            "a producer with a send in flight is never forgotten"
        );
        assert!(
            !c.map.contains_key("p0"),
            "the least recently used idle producer is forgotten"
        );
        assert!(
            c.map
                .contains_key(format!("p{}", crate::config::DUP_PRODUCERS + 9).as_str())
        );
        assert!(c.order.len() <= 2 * c.map.len() + 1024 + 1);
    }
}
