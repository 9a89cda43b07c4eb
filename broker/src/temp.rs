//! Temporary queues and topics (Jakarta Messaging 3.1 §6.2.11): created by a connection, consumed
//! only by it, gone when it deletes them or closes.
//!
//! The client names them (so that a failover can create them again under the same name). This
//! registry records the owning connection of each; the destinations themselves live in the broker's
//! queue and topic maps like any other, so sends find them the usual way. They are never
//! auto-created (a send to one that is gone fails with `DestinationNotFound`) and never journaled
//! (their queues are not durable).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tandem_protocol::ErrorCode;
use tandem_protocol::model::Destination;

use crate::broker::{BrokerInner, DestinationKey};
use crate::message::Refusal;
use crate::topic::Topic;

/// Most temporary destinations one connection may hold at once (invariant 10: a client cannot
/// grow the broker's maps without bound).
pub const MAX_PER_CONNECTION: usize = 1024;

/// Owner connection per temporary destination.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    owners: Mutex<Owners>,
}

#[derive(Debug, Default)]
struct Owners {
    by_destination: HashMap<DestinationKey, u64>,
    /// How many each connection holds (for the limit).
    per_connection: HashMap<u64, usize>,
}

impl Owners {
    fn get(&self, k: &DestinationKey) -> Option<&u64> {
        self.by_destination.get(k)
    }

    fn insert(&mut self, k: DestinationKey, connection: u64) {
        self.by_destination.insert(k, connection);
        *self.per_connection.entry(connection).or_default() += 1;
    }

    fn remove(&mut self, k: &DestinationKey) {
        if let Some(connection) = self.by_destination.remove(k)
            && let Some(n) = self.per_connection.get_mut(&connection)
        {
            *n -= 1;
            if *n == 0 {
                self.per_connection.remove(&connection);
            }
        }
    }
}

fn key(d: &Destination) -> DestinationKey {
    (d.kind(), Arc::from(d.name()))
}

fn not_temporary(d: &Destination) -> Refusal {
    Refusal::new(
        ErrorCode::InvalidDestination,
        format!("{d} is not a temporary destination"),
    )
}

fn gone(d: &Destination) -> Refusal {
    Refusal::new(
        ErrorCode::DestinationNotFound,
        format!("{d} does not exist (deleted, or the connection that created it closed)"),
    )
}

impl Registry {
    /// Creates `d` for `connection`; creating it again on the same connection is a no-op.
    pub(crate) fn create(
        &self,
        inner: &BrokerInner,
        d: &Destination,
        connection: u64,
    ) -> Result<(), Refusal> {
        if !d.kind().is_temporary() {
            return Err(not_temporary(d));
        }
        let mut owners = self.owners.lock();
        match owners.get(&key(d)) {
            Some(owner) if *owner == connection => return Ok(()),
            Some(_) => {
                return Err(Refusal::new(
                    ErrorCode::IllegalState,
                    format!("{d} belongs to another connection"),
                ));
            }
            None => {}
        }
        if owners.per_connection.get(&connection).copied().unwrap_or(0) >= MAX_PER_CONNECTION {
            return Err(Refusal::new(
                ErrorCode::IllegalState,
                format!(
                    "this connection already holds {MAX_PER_CONNECTION} temporary destinations: \
                     delete some first"
                ),
            ));
        }
        // Under the owners lock: a create racing a delete of the same name sees one order.
        if d.kind().is_queue() {
            inner.queue_forced(d);
        } else {
            inner
                .topics
                .write()
                .entry(key(d))
                .or_insert_with(|| Topic::new(Arc::from(d.name())));
        }
        owners.insert(key(d), connection);
        Ok(())
    }

    /// Whether `connection` may consume from the temporary destination `d`.
    pub(crate) fn check_consumer(&self, d: &Destination, connection: u64) -> Result<(), Refusal> {
        match self.owners.lock().get(&key(d)) {
            None => Err(gone(d)),
            Some(owner) if *owner == connection => Ok(()),
            Some(_) => Err(Refusal::new(
                ErrorCode::IllegalState,
                format!("{d} is temporary: only the connection that created it may consume it"),
            )),
        }
    }

    /// Deletes `d`. The caller has checked that none of its consumers is open on it.
    pub(crate) fn delete(
        &self,
        inner: &BrokerInner,
        d: &Destination,
        connection: u64,
    ) -> Result<(), Refusal> {
        if !d.kind().is_temporary() {
            return Err(not_temporary(d));
        }
        self.check_consumer(d, connection).map_err(|r| {
            if r.code == ErrorCode::IllegalState {
                Refusal::new(
                    ErrorCode::IllegalState,
                    format!("{d} belongs to another connection"),
                )
            } else {
                r
            }
        })?;
        let mut owners = self.owners.lock();
        owners.remove(&key(d));
        drop_destination(inner, d);
        Ok(())
    }

    /// Deletes every temporary destination of a connection that ended.
    pub(crate) fn connection_closed(&self, inner: &BrokerInner, connection: u64) {
        let mut owners = self.owners.lock();
        if !owners.per_connection.contains_key(&connection) {
            return;
        }
        let mine: Vec<DestinationKey> = owners
            .by_destination
            .iter()
            .filter(|(_, owner)| **owner == connection)
            .map(|(k, _)| k.clone())
            .collect();
        for k in mine {
            owners.remove(&k);
            if let Ok(d) = Destination::new(k.0, &k.1) {
                drop_destination(inner, &d);
            }
        }
    }

    /// How many temporary destinations exist (metrics, tests).
    pub(crate) fn count(&self) -> usize {
        self.owners.lock().by_destination.len()
    }
}

fn drop_destination(inner: &BrokerInner, d: &Destination) {
    if d.kind().is_queue() {
        if let Some(q) = inner.queues.write().remove(&key(d)) {
            q.remove();
        }
    } else {
        // Only its owner's consumers subscribe to it, and they are closed by now: their
        // subscriptions went with them.
        inner.topics.write().remove(&key(d));
    }
}
