//! The store seam: where the send and ack paths hand persistent work to durable storage.
//!
//! The broker calls [`MessageStore::store`] for every persistent message before it routes it and
//! before the producer's receipt (invariant 1), and [`MessageStore::acknowledge`] when a delivery of
//! a persistent message is acknowledged. [`MemoryStore`] keeps nothing: with it a restart loses every
//! message, which `/health` reports as `"store":"memory"`. The journal implements this trait.

use std::future::Future;
use std::pin::Pin;

use crate::message::BrokerMessage;

/// A failure to make something durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// Resolves once the store has made the work durable.
pub type StoreFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

/// Durable storage for persistent messages.
pub trait MessageStore: Send + Sync + std::fmt::Debug + 'static {
    /// Makes `msg` and its placement on `queues` durable.
    fn store(&self, msg: &BrokerMessage, queues: &[&str]) -> StoreFuture;
    /// Records that `msg_id` left `queue` (acknowledged).
    fn acknowledge(&self, msg_id: u64, queue: &str);
    /// A short name for `/health`.
    fn kind(&self) -> &'static str;
}

/// Keeps nothing; every future is ready at once.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl MessageStore for MemoryStore {
    fn store(&self, _msg: &BrokerMessage, _queues: &[&str]) -> StoreFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    fn acknowledge(&self, _msg_id: u64, _queue: &str) {}

    fn kind(&self) -> &'static str {
        "memory"
    }
}
