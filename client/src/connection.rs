//! [`ConnectionFactory`] and [`Connection`]: the handshake, the two tasks, start/stop and close,
//! and for failover connections the supervisor task that reconnects (see `docs/CLIENT-FAILOVER.md`).

use std::sync::Arc;
use std::time::Duration;

use tandem_protocol::link::LocalLink;
use tandem_protocol::{DEFAULT_MAX_FRAME_SIZE, Frame, PROTOCOL_VERSION, wire};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::event::{ConnectionEvent, Events};
use crate::reconnect::{Reconnect, ReconnectPolicy, Step};
use crate::session::{AckMode, Session};
use crate::shared::{self, Io, Settings, Shared};
use crate::transport::{self, FrameRx, FrameTx};
use crate::url::BrokerUrl;

/// Hands out in-process links to an embedded broker (one per connection).
pub type Connector = Arc<dyn Fn() -> std::result::Result<LocalLink, String> + Send + Sync>;

/// What the client tells the broker in its name.
const CLIENT_NAME: &str = concat!("tandem-client/", env!("CARGO_PKG_VERSION"));

/// Connection settings (see the `with_*` methods of [`ConnectionFactory`]).
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// JMS client id; `None` for a connection without one.
    pub client_id: Option<String>,
    /// User name (empty: anonymous).
    pub username: String,
    /// Password.
    pub password: String,
    /// The heartbeat interval proposed; zero turns heartbeats off (the broker may still ask for
    /// a longer interval: the larger wins, zero on either side turns them off).
    pub heartbeat: Duration,
    /// Prefetch of consumers that do not set their own.
    pub prefetch: u32,
    /// The largest frame this client accepts and sends (lowered to the broker's if smaller).
    pub max_frame_size: usize,
    /// Bound on TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Bound on the answer to each request (opening and closing sessions, producers, consumers,
    /// client acks, recover).
    pub request_timeout: Duration,
    /// TLS settings for `tls://` URLs (the CA bundle is required there).
    pub tls: Option<crate::tls::TlsOptions>,
}

impl Default for ConnectionOptions {
    fn default() -> Self {
        ConnectionOptions {
            client_id: None,
            username: String::new(),
            password: String::new(),
            heartbeat: Duration::from_secs(30),
            prefetch: 100,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

#[derive(Clone)]
enum Target {
    Url(BrokerUrl),
    InProcess(Connector),
}

/// Makes connections to one broker (JMS `ConnectionFactory`).
///
/// ```
/// # use std::time::Duration;
/// # use tandem_client::ConnectionFactory;
/// let factory = ConnectionFactory::new("tcp://localhost:61616")?
///     .with_client_id("billing")
///     .with_credentials("app", "secret")
///     .with_heartbeat(Duration::from_secs(10))
///     .with_prefetch(500);
/// # Ok::<(), tandem_client::Error>(())
/// ```
#[derive(Clone)]
pub struct ConnectionFactory {
    target: Target,
    options: ConnectionOptions,
    /// `Some`: the connection fails over (reconnects) when its link is lost.
    reconnect: Option<ReconnectPolicy>,
}

impl std::fmt::Debug for ConnectionFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Url(u) => format!("{u:?}"),
            Target::InProcess(_) => "in-process".to_string(),
        };
        f.debug_struct("ConnectionFactory")
            .field("target", &target)
            .finish_non_exhaustive()
    }
}

impl ConnectionFactory {
    /// A factory for `tcp://host:port`, or for `failover:(tcp://a:1,tcp://b:2)?options`: a
    /// connection that reconnects when its link is lost, to the same address (a load balancer
    /// whose backend moves: `failover:(tcp://lb:61616)`) or the next one, with the
    /// [`ReconnectPolicy`] the options describe. Bad options are an [`Error::InvalidUrl`].
    pub fn new(url: &str) -> Result<ConnectionFactory> {
        let parsed = BrokerUrl::parse(url)?;
        let reconnect = match &parsed {
            BrokerUrl::Failover { options, .. } => {
                Some(ReconnectPolicy::from_options(url, options)?)
            }
            BrokerUrl::Tcp(_) => None,
        };
        Ok(ConnectionFactory {
            target: Target::Url(parsed),
            options: ConnectionOptions::default(),
            reconnect,
        })
    }

    /// A factory for an embedded broker: each connection takes a fresh link from `connector`.
    pub fn in_process(connector: Connector) -> ConnectionFactory {
        ConnectionFactory {
            target: Target::InProcess(connector),
            options: ConnectionOptions::default(),
            reconnect: None,
        }
    }

    /// Makes connections fail over with `policy` (what a `failover:` URL does), whatever the
    /// target: a `tcp://` address, or an in-process connector (which is asked for a new link on
    /// each attempt).
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = Some(policy);
        self
    }

    /// The reconnect policy (`None`: a lost link closes the connection).
    pub fn reconnect_policy(&self) -> Option<&ReconnectPolicy> {
        self.reconnect.as_ref()
    }

    /// The parsed URL (`None` for an in-process factory).
    pub fn url(&self) -> Option<&BrokerUrl> {
        match &self.target {
            Target::Url(u) => Some(u),
            Target::InProcess(_) => None,
        }
    }

    /// The current settings.
    pub fn options(&self) -> &ConnectionOptions {
        &self.options
    }

    /// Replaces all settings.
    pub fn with_options(mut self, options: ConnectionOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets the JMS client id.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.options.client_id = Some(client_id.into());
        self
    }

    /// Sets user name and password.
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.options.username = username.into();
        self.options.password = password.into();
        self
    }

    /// Proposes a heartbeat interval (zero: off).
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.options.heartbeat = interval;
        self
    }

    /// Sets the default consumer prefetch.
    pub fn with_prefetch(mut self, prefetch: u32) -> Self {
        self.options.prefetch = prefetch;
        self
    }

    /// Sets the largest frame this client sends or accepts.
    pub fn with_max_frame_size(mut self, bytes: usize) -> Self {
        self.options.max_frame_size = bytes;
        self
    }

    /// Bounds TCP connect plus handshake.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// TLS settings for `tls://` URLs: the CA bundle, an SNI override, a client certificate.
    pub fn with_tls(mut self, tls: crate::tls::TlsOptions) -> Self {
        self.options.tls = Some(tls);
        self
    }

    /// Bounds the wait for each request's answer.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.options.request_timeout = timeout;
        self
    }

    /// Opens a connection: transport, `Connect`, `Connected`. The connection starts **stopped**, as
    /// in JMS: consumers get nothing until [`Connection::start`].
    ///
    /// A failover factory tries its endpoints on the reconnect schedule (each attempt bounded by
    /// the connect timeout) and fails with [`Error::ReconnectFailed`] when the budget is spent.
    pub async fn connect(&self) -> Result<Connection> {
        let Some(policy) = &self.reconnect else {
            let link = self.dial(0).await?;
            return Ok(Connection::launch(link, &self.options, None));
        };
        let mut machine = Reconnect::new(policy.clone(), self.endpoint_count());
        let mut step = machine.connect(now());
        let mut last = None;
        loop {
            match step {
                Step::GiveUp { attempts, elapsed } => {
                    return Err(Error::ReconnectFailed {
                        attempts,
                        elapsed,
                        last: Box::new(last.unwrap_or(Error::Timeout("no attempt was made"))),
                    });
                }
                Step::Connect { endpoint, at, .. } => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    match self.dial(endpoint).await {
                        Ok(link) => {
                            machine.connected();
                            let failover = (self.clone(), machine);
                            return Ok(Connection::launch(link, &self.options, Some(failover)));
                        }
                        Err(e) => {
                            tracing::debug!(endpoint, error = %e, "connect attempt failed");
                            last = Some(e);
                            step = machine.failed(now());
                        }
                    }
                }
            }
        }
    }

    fn endpoint_count(&self) -> usize {
        match &self.target {
            Target::Url(BrokerUrl::Failover { endpoints, .. }) => endpoints.len().max(1),
            _ => 1,
        }
    }

    fn endpoint_name(&self, i: usize) -> String {
        match &self.target {
            Target::Url(BrokerUrl::Tcp(ep)) => ep.to_string(),
            Target::Url(BrokerUrl::Failover { endpoints, .. }) => {
                endpoints.get(i).map(|e| e.to_string()).unwrap_or_default()
            }
            Target::InProcess(_) => "in-process".to_string(),
        }
    }

    /// One attempt: transport to endpoint `i` plus handshake, bounded by the connect timeout.
    async fn dial(&self, i: usize) -> Result<Link> {
        let opts = &self.options;
        let setup = async {
            let (rx, tx) = match &self.target {
                Target::Url(url) => {
                    let ep = match url {
                        BrokerUrl::Tcp(ep) => ep,
                        BrokerUrl::Failover { endpoints, .. } => endpoints
                            .get(i)
                            .ok_or(Error::InvalidArgument("a failover url without endpoints"))?,
                    };
                    let stream =
                        tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)).await?;
                    stream.set_nodelay(true)?;
                    if ep.tls {
                        let tls = crate::tls::connect(opts.tls.as_ref(), &ep.host, stream).await?;
                        let (r, w) = tokio::io::split(tls);
                        transport::stream(Box::new(r), Box::new(w), opts.max_frame_size)
                    } else {
                        let (r, w) = stream.into_split();
                        transport::stream(Box::new(r), Box::new(w), opts.max_frame_size)
                    }
                }
                Target::InProcess(connector) => {
                    let link = connector().map_err(|reason| Error::ConnectionLost {
                        code: None,
                        reason: format!("the in-process broker refused a link: {reason}"),
                    })?;
                    transport::local(link)
                }
            };
            handshake_link(rx, tx, opts, self.endpoint_name(i)).await
        };
        match tokio::time::timeout(opts.connect_timeout, setup).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout("connect")),
        }
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// A transport with the handshake done.
pub(crate) struct Link {
    rx: FrameRx,
    tx: FrameTx,
    connected: wire::Connected,
    max_frame_size: usize,
    heartbeat: Option<Duration>,
    endpoint: String,
}

/// Connect, wait for Connected, then start the two tasks (a connection without failover over a
/// transport made by the caller).
#[cfg(test)]
pub(crate) async fn handshake(
    rx: FrameRx,
    tx: FrameTx,
    opts: &ConnectionOptions,
) -> Result<Connection> {
    let link = handshake_link(rx, tx, opts, "test".into()).await?;
    Ok(Connection::launch(link, opts, None))
}

/// Connect, wait for Connected.
async fn handshake_link(
    mut rx: FrameRx,
    mut tx: FrameTx,
    opts: &ConnectionOptions,
    endpoint: String,
) -> Result<Link> {
    let connect = Frame::Connect(wire::Connect {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client_id: opts.client_id.clone().unwrap_or_default(),
        username: opts.username.clone(),
        password: opts.password.clone(),
        heartbeat_ms: u32::try_from(opts.heartbeat.as_millis()).unwrap_or(u32::MAX),
        client_name: CLIENT_NAME.to_string(),
    });
    tx.write_batch(&mut vec![connect]).await?;
    let connected = match rx.recv().await {
        Some(Ok(Frame::Connected(c))) => c,
        Some(Ok(Frame::Error(e))) => return Err(Error::broker(e.code, e.message)),
        Some(Ok(Frame::Close(c))) => {
            return Err(Error::ConnectionLost {
                code: tandem_protocol::ErrorCode::from_code(c.code),
                reason: format!(
                    "the broker closed the connection during the handshake: {}",
                    c.message
                ),
            });
        }
        Some(Ok(other)) => {
            return Err(Error::Protocol(format!(
                "expected Connected, got {:?}",
                other.frame_type()
            )));
        }
        Some(Err(e)) => return Err(transport::codec_error(e)),
        None => {
            return Err(Error::ConnectionLost {
                code: None,
                reason: "closed during the handshake".into(),
            });
        }
    };
    if connected.version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "the broker chose protocol version {}",
            connected.version
        )));
    }
    let mut max_frame_size = opts.max_frame_size;
    if connected.max_frame_size != 0 {
        max_frame_size = max_frame_size.min(connected.max_frame_size as usize);
    }
    tx.set_max_frame_size(max_frame_size);
    let heartbeat =
        (connected.heartbeat_ms != 0).then(|| Duration::from_millis(connected.heartbeat_ms.into()));
    Ok(Link {
        rx,
        tx,
        connected,
        max_frame_size,
        heartbeat,
        endpoint,
    })
}

/// The failover supervisor: hears of each lost link, drives the [`Reconnect`] machine, and carries
/// out its steps (sleep until the attempt's time, dial, replay); gives up by closing the
/// connection with [`Error::ReconnectFailed`].
async fn supervise(
    shared: Arc<Shared>,
    factory: ConnectionFactory,
    mut machine: Reconnect,
    mut lost: tokio::sync::mpsc::UnboundedReceiver<(u64, Error)>,
) {
    // The generation of the live link: reports about older ones are stale.
    let mut live = 0u64;
    while let Some((generation, error)) = lost.recv().await {
        if generation < live {
            continue;
        }
        if shared.lock().closed.is_some() {
            return;
        }
        let mut last = error;
        let mut step = machine.lost(now());
        loop {
            match step {
                Step::GiveUp { attempts, elapsed } => {
                    tracing::warn!(attempts, ?elapsed, error = %last, "reconnect budget spent; closing");
                    shared.fail(Error::ReconnectFailed {
                        attempts,
                        elapsed,
                        last: Box::new(last),
                    });
                    return;
                }
                Step::Connect {
                    endpoint,
                    at,
                    attempt,
                } => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                    if shared.lock().closed.is_some() {
                        return;
                    }
                    match resume(&shared, &factory, endpoint).await {
                        Ok(generation) => {
                            live = generation;
                            machine.connected();
                            let endpoint = factory.endpoint_name(endpoint);
                            tracing::info!(%endpoint, attempt, "reconnected");
                            shared.emit(ConnectionEvent::Reconnected {
                                endpoint,
                                attempts: attempt,
                            });
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(endpoint, attempt, error = %e, "reconnect attempt failed");
                            if shared.lock().closed.is_some() {
                                return;
                            }
                            last = e;
                            step = machine.failed(now());
                        }
                    }
                }
            }
        }
    }
}

/// One reconnect attempt: dial, put the link in place, replay, wait for the replay's answers.
async fn resume(shared: &Arc<Shared>, factory: &ConnectionFactory, endpoint: usize) -> Result<u64> {
    let link = factory.dial(endpoint).await?;
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let (generation, waits) =
        shared.resume(out_tx, link.endpoint.clone(), link.connected.connection_id)?;
    let reader = tokio::spawn(shared::reader(
        shared.clone(),
        generation,
        link.rx,
        link.heartbeat,
    ));
    let writer = tokio::spawn(shared::writer(
        shared.clone(),
        generation,
        link.tx,
        out_rx,
        link.heartbeat,
    ));
    {
        let mut io = shared.io();
        // The lost link's tasks may still wait on a half-open socket (a read that never ends, a
        // write into a full send buffer); nothing they hold matters any more.
        if let Some(old) = io.reader.replace(reader) {
            old.abort();
        }
        if let Some(old) = io.writer.replace(writer) {
            old.abort();
        }
    }
    let replay = async {
        for (_, rx) in waits {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::ConnectionClosed),
            }
        }
        Ok(())
    };
    let outcome = match tokio::time::timeout(shared.settings.request_timeout, replay).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout("no answer to the replay after reconnecting")),
    };
    if let Err(e) = &outcome {
        // Refused or silent: this link is no good; the next attempt follows the schedule.
        shared.lost(generation, e.clone(), None);
    }
    outcome.map(|()| generation)
}

impl Connection {
    /// Starts the reader and writer on a fresh link (and the supervisor for failover).
    fn launch(
        link: Link,
        opts: &ConnectionOptions,
        failover: Option<(ConnectionFactory, Reconnect)>,
    ) -> Connection {
        let (shared, out_rx) = Shared::new(
            Settings {
                max_frame_size: link.max_frame_size,
                default_prefetch: opts.prefetch,
                request_timeout: opts.request_timeout,
            },
            link.endpoint.clone(),
        );
        shared.connection_id.store(
            link.connected.connection_id,
            std::sync::atomic::Ordering::Relaxed,
        );
        // Before the tasks run: a loss they report must already go to the supervisor.
        let supervisor = failover.map(|(factory, machine)| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            shared.enable_failover(tx);
            tokio::spawn(supervise(shared.clone(), factory, machine, rx))
        });
        let reader = tokio::spawn(shared::reader(shared.clone(), 0, link.rx, link.heartbeat));
        let writer = tokio::spawn(shared::writer(
            shared.clone(),
            0,
            link.tx,
            out_rx,
            link.heartbeat,
        ));
        *shared.io() = Io {
            reader: Some(reader),
            writer: Some(writer),
        };
        Connection {
            shared,
            client_id: opts.client_id.clone(),
            connected: link.connected,
            heartbeat: link.heartbeat,
            supervisor,
        }
    }
}

/// A connection to the broker (JMS `Connection`): one reader task, one writer task, any number of
/// sessions.
///
/// Dropping it closes it without waiting for the last frames to be written; prefer
/// [`Connection::close`].
pub struct Connection {
    shared: Arc<Shared>,
    client_id: Option<String>,
    /// The first link's answer.
    connected: wire::Connected,
    heartbeat: Option<Duration>,
    supervisor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("connection_id", &self.connection_id())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The JMS client id this connection was opened with.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The broker's id for this connection (for its logs and metrics); after a failover, the
    /// current link's.
    pub fn connection_id(&self) -> u64 {
        self.shared
            .connection_id
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a link is up right now (false while a failover connection reconnects, and once
    /// closed).
    pub fn is_connected(&self) -> bool {
        let st = self.shared.lock();
        st.up && st.closed.is_none()
    }

    /// The broker's name and version, as the first link's broker reported them.
    pub fn server(&self) -> &str {
        &self.connected.server
    }

    /// The agreed heartbeat interval (`None`: off).
    pub fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// The largest frame either side sends.
    pub fn max_frame_size(&self) -> usize {
        self.shared.settings.max_frame_size
    }

    /// Starts (or resumes) deliveries to the application.
    pub fn start(&self) {
        let wakers = {
            let mut st = self.shared.lock();
            st.started = true;
            self.shared.wake_all(&mut st)
        };
        wakers.into_iter().for_each(|w| w.wake());
    }

    /// Pauses deliveries to the application: consumers keep what the broker sends in their buffers
    /// (up to their prefetch) and hand nothing out until [`Connection::start`].
    pub fn stop(&self) {
        self.shared.lock().started = false;
    }

    /// Whether the connection has ended (closed or lost).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.lock().closed.clone()
    }

    /// Errors that arrive outside any call (the JMS `ExceptionListener`): failed pipelined sends,
    /// broker errors, failover ([`ConnectionEvent::Disconnected`],
    /// [`ConnectionEvent::Reconnected`]), the end of the connection.
    pub fn events(&self) -> Events {
        let (rx, closed) = self.shared.subscribe();
        Events::new(rx, closed)
    }

    /// Opens a session. [`AckMode::Transacted`] is refused with [`Error::Unsupported`] until
    /// transactions are implemented.
    pub async fn create_session(&self, ack_mode: AckMode) -> Result<Session> {
        Session::open(self.shared.clone(), ack_mode).await
    }

    /// A temporary queue owned by this connection (see [`crate::TemporaryDestination`]).
    pub async fn create_temporary_queue(&self) -> Result<crate::TemporaryDestination> {
        crate::TemporaryDestination::create(
            self.shared.clone(),
            tandem_protocol::model::DestinationKind::TempQueue,
        )
        .await
    }

    /// A temporary topic owned by this connection (see [`crate::TemporaryDestination`]).
    pub async fn create_temporary_topic(&self) -> Result<crate::TemporaryDestination> {
        crate::TemporaryDestination::create(
            self.shared.clone(),
            tandem_protocol::model::DestinationKind::TempTopic,
        )
        .await
    }

    /// Closes the connection: closes its sessions (their consumers' unacknowledged deliveries go
    /// back to the broker), sends `Close`, and waits until the writer has flushed it. Pending sends
    /// and requests fail with [`Error::ConnectionClosed`]. Idempotent.
    pub async fn close(&self) -> Result<()> {
        if let Some(s) = &self.supervisor {
            // No reconnect may race the close.
            s.abort();
        }
        let sessions: Vec<(u64, oneshot::Receiver<Result<()>>)> = {
            let mut st = self.shared.lock();
            if st.closed.is_some() {
                drop(st);
                self.abort_reader();
                return Ok(());
            }
            let ids: Vec<u64> = st.sessions.keys().copied().collect();
            ids.into_iter()
                .filter_map(|sid| crate::session::close_session_locked(&self.shared, &mut st, sid))
                .collect()
        };
        let shared = self.shared.clone();
        let wait_sessions = async move {
            for (id, rx) in sessions {
                let _ = shared.wait(id, rx).await;
            }
        };
        let _ = tokio::time::timeout(self.shared.settings.request_timeout, wait_sessions).await;
        let (done_tx, done_rx) = oneshot::channel();
        if self.shared.close_by_application(done_tx) {
            let _ = tokio::time::timeout(self.shared.settings.request_timeout, done_rx).await;
        }
        let writer = self.shared.io().writer.take();
        if let Some(w) = writer {
            let _ = tokio::time::timeout(self.shared.settings.request_timeout, w).await;
        }
        self.abort_reader();
        Ok(())
    }

    fn abort_reader(&self) {
        if let Some(r) = self.shared.io().reader.take() {
            r.abort();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(s) = &self.supervisor {
            s.abort();
        }
        let (done_tx, _) = oneshot::channel();
        self.shared.close_by_application(done_tx);
        self.abort_reader();
    }
}
