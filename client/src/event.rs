//! Connection events: what JMS reports through an `ExceptionListener`, as a channel.

use tokio::sync::broadcast;

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
}

/// A listener's view of a connection's events (see [`crate::Connection::events`]).
///
/// Each listener has its own bounded backlog (256 events); one that falls behind gets
/// [`ConnectionEvent::Lagged`] instead of the events it missed.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<ConnectionEvent>,
    already_closed: Option<Error>,
    done: bool,
}

impl Events {
    pub(crate) fn new(
        rx: broadcast::Receiver<ConnectionEvent>,
        already_closed: Option<Error>,
    ) -> Events {
        Events {
            rx,
            already_closed,
            done: false,
        }
    }

    /// The next event; `None` after [`ConnectionEvent::Closed`] has been returned.
    pub async fn recv(&mut self) -> Option<ConnectionEvent> {
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
