//! HTTP: `/health` (JSON; 200 while serving, 503 otherwise) and `/metrics` (Prometheus text).
//!
//! The load balancer's health check reaches `/health`, so it answers 200 only while this broker
//! serves (later: only on the active lane).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{BrokerError, BrokerInner, health};

/// What the HTTP endpoints report: a standalone broker, or a failover lane (whose role decides).
pub trait HttpSource: Send + Sync + 'static {
    /// `/health`: whether to answer 200 (serving) or 503, and the JSON body.
    fn health(&self) -> (bool, String);
    /// `/metrics`: Prometheus text.
    fn metrics(&self) -> String;
}

struct BrokerHttp(Arc<BrokerInner>);

impl HttpSource for BrokerHttp {
    fn health(&self) -> (bool, String) {
        let h = health(&self.0);
        let body = format!(
            "{{\"state\":\"{}\",\"role\":\"single\",\"version\":\"{}\",\"uptime_secs\":{},\"connections\":{},\"store\":\"{}\"}}\n",
            h.state, h.version, h.uptime_secs, h.connections, h.store
        );
        (h.state == "active", body)
    }

    fn metrics(&self) -> String {
        metrics_text(&self.0)
    }
}

pub(crate) fn broker_source(inner: Arc<BrokerInner>) -> Arc<dyn HttpSource> {
    Arc::new(BrokerHttp(inner))
}

pub(crate) async fn start(
    inner: Arc<BrokerInner>,
    addr: SocketAddr,
) -> Result<SocketAddr, BrokerError> {
    let (shutdown, tasks) = (inner.shutdown.clone(), inner.tasks.clone());
    let source = Arc::new(BrokerHttp(inner.clone()));
    serve_with(addr, source, shutdown, tasks, Some(inner)).await
}

/// Serves `/health` and `/metrics` from `source` on `addr` until `shutdown`; tasks go on `tasks`.
/// Plaintext: a failover lane's own endpoint (TLS on it is not wired yet; see docs/SECURITY.md).
pub async fn serve(
    addr: SocketAddr,
    source: Arc<dyn HttpSource>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<SocketAddr, BrokerError> {
    serve_with(addr, source, shutdown, tasks, None).await
}

/// [`serve`], with TLS per the broker's HTTP listener mode when `tls` is given.
async fn serve_with(
    addr: SocketAddr,
    source: Arc<dyn HttpSource>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    tls: Option<Arc<BrokerInner>>,
) -> Result<SocketAddr, BrokerError> {
    let bind = |source| BrokerError::Bind {
        what: "http",
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    let spawner = tasks.clone();
    spawner.spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "http accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let source = source.clone();
            let shutdown = shutdown.clone();
            let tls = tls.clone();
            tasks.spawn(async move {
                // Security hook: TLS per the HTTP listener's mode, on this task.
                let sock = match &tls {
                    Some(inner) => {
                        let http = crate::tls::Listener::Http;
                        match crate::tls::accept(inner, sock, peer, http).await {
                            Some((io, _)) => io,
                            None => return,
                        }
                    }
                    None => crate::tls::Transport::Plain(sock),
                };
                let svc = service_fn(move |req| {
                    let source = source.clone();
                    async move { Ok::<_, Infallible>(route(&*source, req)) }
                });
                let conn = http1::Builder::new()
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(sock), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            });
        }
    });
    Ok(bound)
}

fn route(source: &dyn HttpSource, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/health" => {
            let (ok, body) = source.health();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            source.metrics(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /health or /metrics\n".into(),
        ),
    }
}

/// Prometheus exposition text.
pub(crate) fn metrics_text(inner: &BrokerInner) -> String {
    let mut s = String::with_capacity(4096);
    let s_ = &mut s;
    let mut gauge = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(s_, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    gauge(
        "tandem_connections",
        "Open connections.",
        "gauge",
        inner.active_connections() as u64,
    );
    gauge(
        "tandem_connections_total",
        "Connections accepted since start.",
        "counter",
        inner.stats.connections_total.load(Ordering::Relaxed),
    );
    gauge(
        "tandem_connections_refused_total",
        "Connections refused at the limit.",
        "counter",
        inner.stats.connections_refused.load(Ordering::Relaxed),
    );
    gauge(
        "tandem_messages_in_total",
        "Messages accepted from producers.",
        "counter",
        inner.stats.messages_in.load(Ordering::Relaxed),
    );
    gauge(
        "tandem_sends_refused_total",
        "Sends refused.",
        "counter",
        inner.stats.sends_refused.load(Ordering::Relaxed),
    );
    gauge(
        "tandem_protocol_errors_total",
        "Connections closed for a protocol error.",
        "counter",
        inner.stats.protocol_errors.load(Ordering::Relaxed),
    );
    gauge(
        "tandem_uptime_seconds",
        "Seconds since start.",
        "gauge",
        inner.started.elapsed().as_secs(),
    );
    // Security hook: login and authorization counters.
    inner.security.write_metrics(&mut s);
    inner.store.write_metrics(&mut s);

    let queues: Vec<_> = inner
        .queues
        .read()
        .iter()
        .map(|(k, q)| (k.clone(), q.clone()))
        .collect();
    let topics: Vec<_> = inner
        .topics
        .read()
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    {
        let b = &inner.paging.budget;
        for (name, help, v) in [
            (
                "tandem_memory_used_bytes",
                "Bytes of queued message bodies in memory, all destinations.",
                b.used(),
            ),
            (
                "tandem_memory_limit_bytes",
                "The global budget of queued message bodies (global_memory_limit).",
                b.limit(),
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
    }
    let families: [(&str, &str, &str); 10] = [
        (
            "tandem_destination_depth",
            "Messages on the destination (ready and in flight).",
            "gauge",
        ),
        (
            "tandem_destination_inflight",
            "Messages delivered and not yet acknowledged.",
            "gauge",
        ),
        (
            "tandem_destination_enqueued_total",
            "Messages added.",
            "counter",
        ),
        (
            "tandem_destination_dequeued_total",
            "Messages acknowledged.",
            "counter",
        ),
        (
            "tandem_destination_consumers",
            "Attached consumers or subscriptions.",
            "gauge",
        ),
        (
            "tandem_destination_memory_bytes",
            "Bytes of message bodies held in memory (ready and in flight).",
            "gauge",
        ),
        (
            "tandem_destination_paged",
            "Ready messages whose bodies are paged out to the journal.",
            "gauge",
        ),
        (
            "tandem_destination_paged_bytes",
            "Body bytes of the paged messages.",
            "gauge",
        ),
        (
            "tandem_destination_page_reads_total",
            "Paged bodies read back from the journal.",
            "counter",
        ),
        (
            "tandem_destination_page_read_errors_total",
            "Read-backs that failed (the message stays paged).",
            "counter",
        ),
    ];
    for (i, (name, help, kind)) in families.iter().enumerate() {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for ((k, n), q) in &queues {
            let snap = q.snapshot();
            let v = match i {
                0 => (snap.ready + snap.inflight) as u64,
                1 => snap.inflight as u64,
                2 => q.stats.enqueued.load(Ordering::Relaxed),
                3 => q.stats.dequeued.load(Ordering::Relaxed),
                4 => snap.consumers as u64,
                5 => snap.memory as u64,
                6 => snap.paged as u64,
                7 => snap.paged_bytes as u64,
                8 => q.stats.page_reads.load(Ordering::Relaxed),
                _ => q.stats.page_read_errors.load(Ordering::Relaxed),
            };
            let _ = writeln!(
                s,
                "{name}{{kind=\"{}\",name=\"{}\"}} {v}",
                k.scheme(),
                escape(n)
            );
        }
        for ((k, n), t) in &topics {
            let v = match i {
                2 => t.published.load(Ordering::Relaxed),
                4 => t.subscription_count() as u64,
                _ => continue,
            };
            let _ = writeln!(
                s,
                "{name}{{kind=\"{}\",name=\"{}\"}} {v}",
                k.scheme(),
                escape(n)
            );
        }
    }
    s
}

/// Label values: destination names cannot hold `"` or `\` (see the naming rules), but be safe.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
