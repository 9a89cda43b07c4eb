//! The STOMP 1.2 listener (1.0 and 1.1 too): STOMP clients mapped onto the JMS model.
//!
//! Translate, don't duplicate: each STOMP connection runs the broker's own native connection
//! handler over an in-process link, and a translating task ([`session`]) turns STOMP frames into
//! native frames and back. Routing, dispatch, acknowledgement, flow control and limits are the
//! native connection's, so STOMP and native clients see the same broker. [`mapping`] holds the
//! pure header, property, body and destination rules; `docs/STOMP.md` has the full table.
//!
//! A STOMP connection counts once against `max_connections`: the permit taken at accept moves
//! into its native connection.

mod mapping;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::SinkExt;
use tandem_protocol::stomp::{Item, StompCodec, StompFrame};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedWrite;
use tracing::Instrument;

use crate::broker::{BrokerError, BrokerInner};

/// Binds the STOMP listener and starts accepting; returns the bound address.
pub(crate) async fn start(
    inner: Arc<BrokerInner>,
    addr: SocketAddr,
) -> Result<SocketAddr, BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        what: "STOMP listener",
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let tasks = inner.tasks.clone();
    tasks.spawn(crate::listener::accept_loop(
        inner, listener, "stomp", serve_one, refuse,
    ));
    Ok(bound)
}

/// One admitted STOMP socket: TLS per the listener's mode, then the translating session.
async fn serve_one(
    inner: Arc<BrokerInner>,
    sock: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    // `instrument`, not `span.enter()`: the task suspends, the span must not stay entered on the
    // thread.
    let span = tracing::debug_span!("stomp", %peer);
    let serve = async move {
        let listener = crate::tls::Listener::Stomp;
        if let Some((io, who)) = crate::tls::accept(&inner, sock, peer, listener).await {
            session::serve(inner, io, who, permit).await;
        }
    };
    serve.instrument(span).await;
}

async fn refuse(sock: TcpStream, limit: usize) {
    let frame = StompFrame::error(
        "connection limit reached",
        format!("connection limit of {limit} reached"),
    )
    .with_header(
        "error-code",
        tandem_protocol::ErrorCode::ConnectionLimit
            .code()
            .to_string(),
    )
    .with_header(
        "error-name",
        tandem_protocol::ErrorCode::ConnectionLimit.name(),
    );
    let mut w = FramedWrite::new(sock, StompCodec::default());
    let wait = std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(wait, w.send(Item::Frame(frame))).await;
    let _ = tokio::time::timeout(wait, w.get_mut().shutdown()).await;
}
