//! The TCP listener: accept under the connection limit, one reader (the connection task) and one
//! writer task per connection.
//!
//! The writer coalesces: it takes every frame already waiting in the connection's channel, encodes
//! them into one buffer and writes them with one `write_all`, so a burst of deliveries or receipts
//! costs one syscall, not one per frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::session::{Outbound, OutboundRx};
use bytes::BytesMut;
use tandem_protocol::{ErrorCode, Frame, FrameCodec, wire};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedRead;

use crate::broker::{BrokerError, BrokerInner};

/// Stop adding frames to one write beyond this many bytes.
const MAX_WRITE_BATCH: usize = 1 << 20;

pub(crate) async fn start(
    inner: Arc<BrokerInner>,
    addr: SocketAddr,
) -> Result<SocketAddr, BrokerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BrokerError::Bind {
            what: "native listener",
            addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| BrokerError::Bind {
        what: "native listener",
        addr,
        source,
    })?;
    let tasks = inner.tasks.clone();
    tasks.spawn(accept_loop(inner, listener, "native", serve, refuse));
    Ok(bound)
}

/// Accepts until shutdown under the broker-wide connection limit: `serve` runs each admitted
/// socket (on its own task), `refuse` answers one over the limit in the listener's protocol.
/// Shared by the native and STOMP listeners.
pub(crate) async fn accept_loop<S, SF, R, RF>(
    inner: Arc<BrokerInner>,
    listener: TcpListener,
    what: &'static str,
    serve: S,
    refuse: R,
) where
    S: Fn(Arc<BrokerInner>, TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit) -> SF,
    SF: std::future::Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream, usize) -> RF,
    RF: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                match inner.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        inner.tasks.spawn(serve(inner.clone(), sock, peer, permit));
                    }
                    Err(_) => {
                        inner
                            .stats
                            .connections_refused
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, listener = what, "connection limit reached; refusing");
                        inner
                            .tasks
                            .spawn(refuse(sock, inner.config.max_connections));
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection: TLS (per the listener's mode, on this task, not the accept loop),
/// then a writer task and the connection task.
async fn serve(
    inner: Arc<BrokerInner>,
    sock: TcpStream,
    addr: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let listener = crate::tls::Listener::Native;
    let Some((io, peer)) = crate::tls::accept(&inner, sock, addr, listener).await else {
        return;
    };
    let (rd, wr) = tokio::io::split(io);
    let (tx, rx) = Outbound::channel();
    inner.tasks.spawn(write_loop(wr, rx));
    let inbound = FramedRead::new(rd, FrameCodec::new(inner.config.max_frame_size));
    crate::connection::run(inner.clone(), inbound, tx, peer, permit).await;
}

async fn refuse(mut sock: TcpStream, limit: usize) {
    let msg = format!("connection limit of {limit} reached");
    let mut buf = BytesMut::new();
    Frame::error(0, ErrorCode::ConnectionLimit, msg.clone()).encode(&mut buf);
    Frame::Close(wire::Close {
        code: ErrorCode::ConnectionLimit.code(),
        message: msg,
    })
    .encode(&mut buf);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sock.write_all(&buf)).await;
    let _ = sock.shutdown().await;
}

pub(crate) async fn write_loop(mut wr: impl tokio::io::AsyncWrite + Unpin, mut rx: OutboundRx) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'outer: while let Some(first) = rx.recv().await {
        let mut closing = matches!(first, Frame::Close(_));
        first.encode(&mut buf);
        while !closing && buf.len() < MAX_WRITE_BATCH {
            match rx.try_recv() {
                Some(f) => {
                    closing = matches!(f, Frame::Close(_));
                    f.encode(&mut buf);
                }
                None => break,
            }
        }
        // flush: a no-op on TCP, but TLS may hold records back until flushed when the socket
        // was busy during the write.
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break 'outer;
        }
        buf.clear();
        if buf.capacity() > 4 * MAX_WRITE_BATCH {
            buf = BytesMut::with_capacity(64 * 1024);
        }
        if closing {
            break;
        }
    }
    let _ = wr.shutdown().await;
}
