//! Connection events: what JMS reports through an `ExceptionListener`, as a stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::ReusableBoxFuture;

use crate::error::Error;

/// Something that happened to a connection outside any call the application made.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// A send made without a receipt (a non-persistent send) was refused by the broker.
    SendFailed {
        /// The producer's connection-local id ([`crate::Producer::id`]).
        producer_id: u64,
        /// The send's sequence number.
        sequence: u64,
        /// The broker's error.
        error: Error,
    },
    /// The broker reported an error on the connection as a whole (usually followed by its close).
    BrokerError(Error),
    /// The connection ended: [`Error::ConnectionClosed`] when the application closed it,
    /// [`Error::ConnectionLost`] (or a protocol error) otherwise. Always the last event.
    Closed(Error),
    /// The listener fell behind and this many events were dropped.
    Lagged(u64),
    /// A failover connection lost its link to `endpoint` and is reconnecting. Meanwhile sends and
    /// requests wait (up to the request timeout); deliveries buffered from the lost link are
    /// dropped (the broker gives them back flagged redelivered).
    Disconnected {
        /// The endpoint whose link was lost (`tcp://host:port`, or `in-process`).
        endpoint: String,
        /// Why.
        error: Error,
    },
    /// A failover connection is connected again, to `endpoint`, after `attempts` attempts; its
    /// sessions, producers and consumers are open again and unconfirmed persistent sends were
    /// resent.
    Reconnected {
        /// The endpoint now connected.
        endpoint: String,
        /// Attempts this reconnect took.
        attempts: u32,
    },
}

struct Listener {
    rx: broadcast::Receiver<ConnectionEvent>,
    already_closed: Option<Error>,
    done: bool,
}

impl Listener {
    async fn recv(&mut self) -> Option<ConnectionEvent> {
        if self.done {
            return None;
        }
        if let Some(e) = self.already_closed.take() {
            self.done = true;
            return Some(ConnectionEvent::Closed(e));
        }
        match self.rx.recv().await {
            Ok(ev) => {
                if matches!(ev, ConnectionEvent::Closed(_)) {
                    self.done = true;
                }
                Some(ev)
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Some(ConnectionEvent::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => {
                self.done = true;
                None
            }
        }
    }
}

async fn next(mut l: Listener) -> (Option<ConnectionEvent>, Listener) {
    let ev = l.recv().await;
    (ev, l)
}

/// A listener's view of a connection's events (see [`crate::Connection::events`]): a [`Stream`]
/// that ends after [`ConnectionEvent::Closed`], or [`Events::recv`].
///
/// Each listener has its own bounded backlog (256 events); one that falls behind gets
/// [`ConnectionEvent::Lagged`] instead of the events it missed.
pub struct Events {
    fut: ReusableBoxFuture<'static, (Option<ConnectionEvent>, Listener)>,
    ended: bool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("ended", &self.ended)
            .finish()
    }
}

impl Events {
    pub(crate) fn new(
        rx: broadcast::Receiver<ConnectionEvent>,
        already_closed: Option<Error>,
    ) -> Events {
        let l = Listener {
            rx,
            already_closed,
            done: false,
        };
        Events {
            fut: ReusableBoxFuture::new(next(l)),
            ended: false,
        }
    }

    /// The next event; `None` after [`ConnectionEvent::Closed`] has been returned.
    pub async fn recv(&mut self) -> Option<ConnectionEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Events {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConnectionEvent>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let (ev, l) = std::task::ready!(self.fut.poll(cx));
        if ev.is_none() {
            self.ended = true;
        } else {
            self.fut.set(next(l));
        }
        Poll::Ready(ev)
    }
}
