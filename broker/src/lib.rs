//! tandem's broker: embeddable, JMS-shaped.
//!
//! ```text
//!  listener (TCP) ─┐                       ┌─▶ Queue ──dispatch──▶ consumer's connection writer
//!                  ├─▶ connection task ─▶ route                    (Deliver frames, Bytes handles)
//!  in-process link ┘   (sessions,          └─▶ Topic ─fan-out─▶ subscription Queues
//!                       producers,
//!                       consumers)   ◀── acks, nacks, flow
//! ```
//!
//! - [`Broker::start`] takes a [`BrokerConfig`], binds the native and HTTP listeners (either may be
//!   off) and returns a handle; [`Broker::connect_local`] opens an in-process connection (a pair of
//!   frame channels, no TCP); [`Broker::shutdown`] stops accepting, closes every connection with
//!   `ShuttingDown` and waits for them to flush.
//! - A queue holds ready messages per priority and hands them to competing consumers in round-robin
//!   order, each within its window (prefetch plus one-off credit). Delivered messages stay in their
//!   session until acknowledged; recover, consumer close and connection loss put them back in their
//!   original order, flagged redelivered with their delivery count raised when the application saw
//!   them.
//! - Memory: each destination has a budget of queued bodies, and all of them together a global one.
//!   Beyond it a destination pages persistent messages to the journal (bodies read back at
//!   dispatch), or makes the send wait up to the configured timeout, or refuses it with
//!   `DestinationFull`, by its full policy (docs/PAGING.md).
//! - Persistent messages go through the [`store::MessageStore`] seam before they are routed and
//!   confirmed.

mod broker;
pub mod config;
mod connection;
pub mod http;
pub mod journal;
mod listener;
pub mod message;
mod mover;
pub mod queue;
pub mod security;
pub mod session;
pub mod settings;
mod stomp;
pub mod store;
mod subscription;
mod temp;
pub mod tls;
pub mod topic;

pub use broker::{Broker, BrokerError, BrokerStats, Health};
pub use config::{BrokerConfig, ConfigError};
pub use temp::MAX_PER_CONNECTION as MAX_TEMP_DESTINATIONS_PER_CONNECTION;
