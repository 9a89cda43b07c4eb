//! tandem's Rust client: JMS-shaped, idiomatic async.
//!
//! [`ConnectionFactory`] → [`Connection`] → [`Session`] → [`Producer`] / [`Consumer`], as in JMS;
//! a consumer is a [`futures::Stream`] and every failure is an [`Error`] variant. The same API
//! runs over TCP (`tcp://host:port`), TLS (`tls://host:port` with [`TlsOptions`]: the CA bundle,
//! an optional server-name override and client certificate) or in process against an embedded
//! broker ([`ConnectionFactory::in_process`]), where frames move without being encoded.
//!
//! ```no_run
//! use std::time::Duration;
//! use tandem_client::{AckMode, ConnectionFactory, Destination, Message};
//!
//! # async fn run() -> Result<(), tandem_client::Error> {
//! let connection = ConnectionFactory::new("tcp://localhost:61616")?
//!     .with_client_id("orders-service")
//!     .connect()
//!     .await?;
//! let session = connection.create_session(AckMode::Client).await?;
//! let orders = Destination::queue("orders")?;
//!
//! // A persistent send returns once the broker has made the message durable.
//! let mut producer = session.create_producer(Some(&orders)).await?;
//! let id = producer.send(Message::text("order #1")).await?;
//! println!("sent {id}");
//!
//! // Connections start stopped, as in JMS.
//! let mut consumer = session.create_consumer(&orders, Some("JMSPriority > 2")).await?;
//! connection.start();
//! if let Some(msg) = consumer.receive(Duration::from_secs(5)).await? {
//!     println!("got {:?} (delivery {})", msg.text_body(), msg.delivery_count);
//!     msg.ack().await?; // client mode: acknowledges everything the session handed out
//! }
//! connection.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! Each connection runs one reader task and one writer task. The writer coalesces every frame that
//! is ready into a single write; the reader answers requests (by request id), receipts (by producer
//! and sequence) and routes deliveries to per-consumer buffers, bounded by the consumer's prefetch
//! (the broker's credit). Heartbeats follow the protocol: a `Ping` after one idle interval, a close
//! with `IdleTimeout` after three silent ones. No lock is held across an `.await`; a lost connection
//! fails every pending request and receipt with [`Error::ConnectionLost`] (unless it fails over).
//!
//! # Failover
//!
//! A `failover:(tcp://a:61616,tcp://b:61616)?options` URL (or one address behind a load balancer,
//! `failover:(tcp://lb:61616)`) makes a connection that survives its broker: a supervisor task
//! drives the pure [`Reconnect`] schedule (backoff with jitter, round-robin, an attempt and time
//! budget, see [`ReconnectPolicy`]), opens the sessions, producers and consumers again under the
//! same ids (producers keep their stable name), and resends every unconfirmed persistent send with
//! its producer name and sequence, which the broker's journaled duplicate detection drops if it had
//! stored it. The application's handles keep working; [`Connection::events`] reports
//! [`ConnectionEvent::Disconnected`] and [`ConnectionEvent::Reconnected`]; an ack of a message from
//! the lost link is [`Error::AckAfterFailover`]; a spent budget closes the connection with
//! [`Error::ReconnectFailed`]. Guarantees and limits: `docs/CLIENT-FAILOVER.md`.
//!
//! # Acknowledgement, credit and recover
//!
//! A consumer hands out [`Received`] messages: the [`Message`] (through `Deref`) plus an
//! [`AckHandle`]. What is acknowledged, and when, follows the session's [`AckMode`]
//! (`docs/PROTOCOL.md`, "Consuming"):
//!
//! | mode | acks sent |
//! |---|---|
//! | `Auto` | an individual ack as each message is handed to the application |
//! | `DupsOk` | a cumulative ack every `prefetch / 2` messages, and when the application has caught up or the consumer closes |
//! | `Client` | on [`Received::ack`]: one cumulative ack per consumer of the session, up to the last message it handed out |
//! | `Individual` | on [`Received::ack`]: that message only |
//!
//! The broker delivers while a consumer has fewer than `prefetch` unacknowledged deliveries. A
//! consumer with prefetch 0 pulls: a receive that finds nothing buffered sends `Flow(1)`, at most
//! one at a time. [`Session::recover`] drops the session's buffers, sends a `Nack` listing each
//! consumer's last handed-out delivery, and ignores deliveries that arrive before the broker's
//! answer (they are taken back by that `Nack`); what follows is the redelivery.

mod connection;
mod consumer;
mod error;
mod event;
mod producer;
mod reconnect;
mod session;
mod shared;
mod temp;
mod tls;
mod transport;
mod url;

#[cfg(test)]
mod tests;

/// The README's client example is compiled as a doctest, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;

pub use connection::{Connection, ConnectionFactory, ConnectionOptions, Connector};
pub use consumer::{AckHandle, Consumer, ConsumerBuilder, Received};
pub use error::{Error, Result};
pub use event::{ConnectionEvent, Events};
pub use producer::{Producer, Receipt};
pub use reconnect::{Reconnect, ReconnectPolicy, SplitMix64, Step};
pub use session::{AckMode, Session};
pub use temp::TemporaryDestination;
pub use tls::TlsOptions;
pub use url::{BrokerUrl, Endpoint};

pub use tandem_protocol::ErrorCode;
pub use tandem_protocol::model::{
    Body, DeliveryMode, Destination, DestinationKind, Message, ModelError, PropertyValue, Value,
};
