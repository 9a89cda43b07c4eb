//! [`ConnectionFactory`] and [`Connection`]: the handshake, the two tasks, start/stop and close.

use std::sync::Arc;
use std::time::Duration;

use tandem_protocol::link::LocalLink;
use tandem_protocol::{DEFAULT_MAX_FRAME_SIZE, Frame, PROTOCOL_VERSION, wire};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::event::Events;
use crate::session::{AckMode, Session};
use crate::shared::{self, Settings, Shared};
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
    /// A factory for `tcp://host:port` (or a `failover:(...)` URL, which parses but cannot connect
    /// yet: [`Error::Unsupported`]).
    pub fn new(url: &str) -> Result<ConnectionFactory> {
        Ok(ConnectionFactory {
            target: Target::Url(BrokerUrl::parse(url)?),
            options: ConnectionOptions::default(),
        })
    }

    /// A factory for an embedded broker: each connection takes a fresh link from `connector`.
    pub fn in_process(connector: Connector) -> ConnectionFactory {
        ConnectionFactory {
            target: Target::InProcess(connector),
            options: ConnectionOptions::default(),
        }
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
    pub async fn connect(&self) -> Result<Connection> {
        let opts = &self.options;
        let setup = async {
            let (rx, tx) = match &self.target {
                Target::Url(BrokerUrl::Tcp(ep)) => {
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
                Target::Url(BrokerUrl::Failover { .. }) => {
                    return Err(Error::Unsupported(
                        "failover URLs: reconnecting is not implemented yet",
                    ));
                }
                Target::InProcess(connector) => {
                    let link = connector().map_err(|reason| Error::ConnectionLost {
                        code: None,
                        reason: format!("the in-process broker refused a link: {reason}"),
                    })?;
                    transport::local(link)
                }
            };
            handshake(rx, tx, opts).await
        };
        match tokio::time::timeout(opts.connect_timeout, setup).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout("connect")),
        }
    }
}

/// Connect, wait for Connected, then start the two tasks.
pub(crate) async fn handshake(
    mut rx: FrameRx,
    mut tx: FrameTx,
    opts: &ConnectionOptions,
) -> Result<Connection> {
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
    let (shared, out_rx) = Shared::new(Settings {
        max_frame_size,
        default_prefetch: opts.prefetch,
        request_timeout: opts.request_timeout,
    });
    let reader = tokio::spawn(shared::reader(shared.clone(), rx, heartbeat));
    let writer = tokio::spawn(shared::writer(shared.clone(), tx, out_rx, heartbeat));
    Ok(Connection {
        shared,
        client_id: opts.client_id.clone(),
        connected,
        heartbeat,
        reader,
        writer: std::sync::Mutex::new(Some(writer)),
    })
}

/// A connection to the broker (JMS `Connection`): one reader task, one writer task, any number of
/// sessions.
///
/// Dropping it closes it without waiting for the last frames to be written; prefer
/// [`Connection::close`].
pub struct Connection {
    shared: Arc<Shared>,
    client_id: Option<String>,
    connected: wire::Connected,
    heartbeat: Option<Duration>,
    reader: JoinHandle<()>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("connection_id", &self.connected.connection_id)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The JMS client id this connection was opened with.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The broker's id for this connection (for its logs and metrics).
    pub fn connection_id(&self) -> u64 {
        self.connected.connection_id
    }

    /// The broker's name and version, as it reported them.
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
    /// broker errors, the end of the connection.
    pub fn events(&self) -> Events {
        let (rx, closed) = self.shared.subscribe();
        Events::new(rx, closed)
    }

    /// Opens a session. [`AckMode::Transacted`] is refused with [`Error::Unsupported`] until
    /// transactions are implemented.
    pub async fn create_session(&self, ack_mode: AckMode) -> Result<Session> {
        Session::open(self.shared.clone(), ack_mode).await
    }

    /// Closes the connection: closes its sessions (their consumers' unacknowledged deliveries go
    /// back to the broker), sends `Close`, and waits until the writer has flushed it. Pending sends
    /// and requests fail with [`Error::ConnectionClosed`]. Idempotent.
    pub async fn close(&self) -> Result<()> {
        let sessions: Vec<(u64, oneshot::Receiver<Result<()>>)> = {
            let mut st = self.shared.lock();
            if st.closed.is_some() {
                drop(st);
                self.reader.abort();
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
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            let _ = tokio::time::timeout(self.shared.settings.request_timeout, w).await;
        }
        self.reader.abort();
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let (done_tx, _) = oneshot::channel();
        self.shared.close_by_application(done_tx);
        self.reader.abort();
    }
}
