//! The client's error type. Every failure an application can see is one of these variants; the broker's
//! wire codes arrive unchanged in [`Error::Broker`] and [`Error::ConnectionLost`].

use std::sync::Arc;

use tandem_protocol::ErrorCode;
use tandem_protocol::model::ModelError;

/// Everything that can go wrong in the client.
///
/// `Clone` so that one failure (a lost connection) can be handed to every pending request, receipt
/// and event listener.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker refused a request, a send or the connection with a code.
    #[error("broker error {code}: {message}")]
    Broker {
        /// The wire code ([`ErrorCode::Internal`] for a number this client does not know; the
        /// message then names the number).
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// The application closed the connection (or the session, producer or consumer used).
    #[error("connection closed")]
    ConnectionClosed,
    /// The connection ended without the application asking: the peer closed it, the transport
    /// failed, or nothing arrived for three heartbeat intervals.
    #[error("connection lost{}: {reason}", code.map(|c| format!(" ({c})")).unwrap_or_default())]
    ConnectionLost {
        /// The code of the broker's `Close`, or [`ErrorCode::IdleTimeout`] for a heartbeat timeout.
        code: Option<ErrorCode>,
        /// What happened.
        reason: String,
    },
    /// The session, producer or consumer was closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// No answer within the configured time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A feature this client does not provide (yet).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A broker URL that does not parse.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A message or destination breaking the JMS model's rules.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A message whose encoded frame exceeds the negotiated maximum frame size.
    #[error("message of {size} bytes exceeds the maximum frame size of {max} bytes")]
    MessageTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An argument the operation cannot use (e.g. an anonymous producer's message without a
    /// destination).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The transport failed while connecting.
    #[error("i/o: {0}")]
    Io(Arc<std::io::Error>),
    /// TLS could not be set up: bad CA bundle or client certificate, or a failed handshake (an
    /// untrusted, expired or misnamed broker certificate).
    #[error("tls: {0}")]
    Tls(String),
    /// The peer broke the protocol (an unexpected frame, undecodable bytes).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A failover connection lost its broker and spent its reconnect budget
    /// ([`crate::ReconnectPolicy`]): the connection is closed, and every pending send, request and
    /// receive fails with this.
    #[error("reconnect failed after {attempts} attempts in {elapsed:?}: {last}")]
    ReconnectFailed {
        /// Attempts made since the link was lost.
        attempts: u32,
        /// Time spent trying.
        elapsed: std::time::Duration,
        /// Why the last attempt (or the link) failed.
        last: Box<Error>,
    },
    /// An acknowledgement of a message delivered over a link that has since been lost (the
    /// connection failed over). The acknowledgement cannot reach the broker; the message is not
    /// acknowledged and comes again, flagged redelivered (JMS: "a message acknowledged after
    /// failover is redelivered"). Process it idempotently when it comes again.
    #[error(
        "acknowledged after failover: the message was delivered over a lost link and will be redelivered"
    )]
    AckAfterFailover,
    /// The session's open transaction was lost with the link (the connection failed over): the
    /// broker rolled it back. Repeat the transaction's work and commit again.
    #[error("transaction rolled back: {0}")]
    TransactionRolledBack(String),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

impl Error {
    /// The broker's error for a wire code and message.
    pub(crate) fn broker(code: u32, message: String) -> Error {
        match ErrorCode::from_code(code) {
            Some(code) => Error::Broker { code, message },
            None => Error::Broker {
                code: ErrorCode::Internal,
                message: format!("unknown error code {code}: {message}"),
            },
        }
    }

    /// The wire code, for errors that carry one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            Error::ConnectionLost { code, .. } => *code,
            _ => None,
        }
    }

    /// True when the connection (or, with failover, the link) is gone: [`Error::ConnectionClosed`],
    /// [`Error::ConnectionLost`] or [`Error::ReconnectFailed`].
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::ConnectionClosed | Error::ConnectionLost { .. } | Error::ReconnectFailed { .. }
        )
    }
}

/// Short for `Result<T, tandem_client::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
