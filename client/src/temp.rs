//! Temporary queues and topics ([`TemporaryDestination`]) and the other connection-level requests
//! that are not about one session's entities (`unsubscribe`).
//!
//! The client names a temporary destination itself (`tmp-<random>-<n>`), so that after a failover
//! it can create the same destination again on the new broker: replies addressed to it (its name
//! travels in `JMSReplyTo`) keep reaching this connection. The broker deletes it when the
//! connection ends; [`TemporaryDestination::delete`] deletes it earlier. Dropping the handle does
//! not delete it (JMS: it lives as long as its connection).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tandem_protocol::model::{Destination, DestinationKind};
use tandem_protocol::{Frame, wire};

use crate::error::{Error, Result};
use crate::shared::{AfterAnswer, OnLoss, Shared};

/// A fresh temporary destination name: a random per-process prefix (two processes, or two broker
/// lanes, never hand out the same name) and a counter.
fn fresh_name() -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| crate::reconnect::SplitMix64::from_entropy().next_u64());
    format!("tmp-{prefix:016x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sends one request (with the state lock held while it is queued, via `prepare`) and waits for
/// the answer.
async fn request(
    shared: &Arc<Shared>,
    build: impl FnOnce(u64) -> Frame,
    on_loss: OnLoss,
    prepare: impl FnOnce(&mut crate::shared::State),
) -> Result<()> {
    shared.ready().await?;
    let (id, rx) = {
        let mut st = shared.lock();
        let r = shared.request_locked_on_loss(&mut st, build, AfterAnswer::None, on_loss)?;
        prepare(&mut st);
        r
    };
    shared.wait(id, rx).await
}

/// A temporary queue or topic (JMS `TemporaryQueue` / `TemporaryTopic`): only its connection may
/// consume from it; anyone may send to it (put [`TemporaryDestination::destination`] in
/// `JMSReplyTo`). Deleted when its connection closes, or by [`TemporaryDestination::delete`].
#[derive(Clone)]
pub struct TemporaryDestination {
    shared: Arc<Shared>,
    destination: Destination,
}

impl std::fmt::Debug for TemporaryDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TemporaryDestination")
            .field(&self.destination)
            .finish()
    }
}

impl TemporaryDestination {
    pub(crate) async fn create(
        shared: Arc<Shared>,
        kind: DestinationKind,
    ) -> Result<TemporaryDestination> {
        debug_assert!(kind.is_temporary());
        let destination = Destination::new(kind, &fresh_name())?;
        let wire_dest = destination.to_wire();
        let registered = destination.clone();
        // Registered with the request: a failover from now on creates it again on the new link
        // (so a create lost with the old link still completes).
        let r = request(
            &shared,
            |request_id| {
                Frame::TempDestinationCreate(wire::TempDestinationCreate {
                    request_id,
                    destination: Some(wire_dest),
                })
            },
            OnLoss::Succeed,
            |st| {
                st.temps.insert(registered);
            },
        )
        .await;
        if let Err(e) = r {
            shared.lock().temps.remove(&destination);
            return Err(e);
        }
        Ok(TemporaryDestination {
            shared,
            destination,
        })
    }

    /// The destination, to consume from, send to or put in `JMSReplyTo`.
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    /// Deletes it: its messages are dropped and sends to it fail from now on. Refused
    /// ([`tandem_protocol::ErrorCode::IllegalState`]) while a consumer of this connection is open
    /// on it; [`tandem_protocol::ErrorCode::DestinationNotFound`] if it is already gone.
    pub async fn delete(&self) -> Result<()> {
        let dest = self.destination.clone();
        let wire_dest = dest.to_wire();
        let removed = dest.clone();
        let r = request(
            &self.shared,
            |request_id| {
                Frame::TempDestinationDelete(wire::TempDestinationDelete {
                    request_id,
                    destination: Some(wire_dest),
                })
            },
            // The lost link's connection took it with it; it is not created again.
            OnLoss::Succeed,
            |st| {
                st.temps.remove(&removed);
            },
        )
        .await;
        if let Err(Error::Broker { code, .. }) = &r
            && *code == tandem_protocol::ErrorCode::IllegalState
        {
            // Still in use, so still there: keep recreating it on failover.
            self.shared.lock().temps.insert(dest);
        }
        r
    }
}

/// JMS `Session.unsubscribe(name)`: deletes the durable subscription `name` of the connection's
/// client id.
pub(crate) async fn unsubscribe(shared: &Arc<Shared>, name: &str) -> Result<()> {
    let subscription_name = name.to_string();
    request(
        shared,
        |request_id| {
            Frame::Unsubscribe(wire::Unsubscribe {
                request_id,
                subscription_name,
            })
        },
        OnLoss::Fail,
        |_| {},
    )
    .await
}
