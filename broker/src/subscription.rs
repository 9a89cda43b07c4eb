//! Named topic subscriptions (Jakarta Messaging 3.1 §8.3): durable ones, unshared and shared, and
//! shared non-durable ones. Plain (unnamed) topic consumers do not come here.
//!
//! Identity: a durable subscription is named by (client id, name); an unshared one needs a client
//! id, a shared one may have none. Shared non-durable subscriptions live in a namespace of their
//! own (the same (client id, name) may name one of each). Each subscription is one [`Queue`]
//! subscribed to its topic; the consumers attached to it compete for its messages, which is what
//! "shared" means.
//!
//! Rules kept here:
//! - an unshared durable subscription has at most one consumer at a time; unshared and shared
//!   durable subscriptions with the same identity exclude each other;
//! - asking for an existing subscription with another topic, selector or noLocal replaces it
//!   (its messages are lost) when no consumer is attached, and is refused otherwise;
//! - a durable subscription keeps collecting messages while no consumer is attached; a shared
//!   non-durable one ends with its last consumer;
//! - unsubscribing is refused while a consumer is attached or a delivery is unacknowledged.
//!
//! Persistence: durable subscriptions are journaled as `Subscription` records keyed by their queue
//! name, which is `topic/client-id/name/incarnation` (`/nolocal` appended for noLocal ones, since
//! the record has no field for it). `/` cannot occur in a destination name, so a subscription queue
//! never collides with a queue; every incarnation has a new name, so refs left behind by a deleted
//! subscription (acknowledged at deletion, or dropped at recovery as orphans) never reach its
//! successor.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tandem_protocol::ErrorCode;
use tandem_protocol::selector::Selector;

use crate::broker::BrokerInner;
use crate::journal::{Record, SubscriptionRecord};
use crate::message::Refusal;
use crate::queue::Queue;
use crate::topic::{Subscription, Topic};

/// Suffix of the queue name of a noLocal durable subscription.
const NO_LOCAL_SUFFIX: &str = "/nolocal";

/// A subscription's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SubKey {
    /// Durable and non-durable shared subscriptions have separate namespaces.
    pub durable: bool,
    pub client_id: Option<String>,
    pub name: String,
}

impl std::fmt::Display for SubKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.durable {
            "durable subscription"
        } else {
            "shared subscription"
        };
        match &self.client_id {
            Some(c) => write!(f, "{kind} {:?} of client id {c:?}", self.name),
            None => write!(f, "{kind} {:?} (no client id)", self.name),
        }
    }
}

#[derive(Debug)]
struct NamedSub {
    shared: bool,
    topic: Arc<Topic>,
    /// The selector's text as given (trimmed; `None` for none): compared to tell a change.
    selector: Option<String>,
    no_local: bool,
    queue: Arc<Queue>,
    /// What the topic knows the subscription by.
    topic_key: (u64, u64),
    consumers: usize,
}

impl NamedSub {
    fn record(&self, key: &SubKey, deleted: bool) -> Record {
        Record::Subscription(SubscriptionRecord {
            queue: self.queue.name().to_string(),
            topic: self.topic.name().to_string(),
            client_id: key.client_id.clone(),
            name: key.name.clone(),
            selector: self.selector.clone(),
            durable: key.durable,
            shared: self.shared,
            deleted,
        })
    }
}

/// What a consumer asks for.
pub(crate) struct AttachRequest {
    pub key: SubKey,
    pub shared: bool,
    pub topic: Arc<Topic>,
    pub selector_text: Option<String>,
    pub selector: Option<Selector>,
    pub no_local: bool,
    pub connection_id: u64,
}

/// A consumer's hold on a subscription; give it back with [`Registry::detach`].
pub(crate) struct Attached {
    pub queue: Arc<Queue>,
    /// Journal records (durable creation or replacement) to make durable before answering.
    pub records: Vec<Record>,
}

/// Every named subscription of the broker.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    subs: Mutex<HashMap<SubKey, NamedSub>>,
    next: AtomicU64,
}

impl Registry {
    /// Attaches a consumer to the subscription, creating or replacing it as the rules say.
    pub(crate) fn attach(
        &self,
        inner: &BrokerInner,
        req: AttachRequest,
    ) -> Result<Attached, Refusal> {
        let journal = req.key.durable && inner.store.persistent();
        let mut records = Vec::new();
        let mut subs = self.subs.lock();
        if let Some(existing) = subs.get_mut(&req.key) {
            if existing.shared != req.shared {
                let (have, asked) = if existing.shared {
                    ("a shared", "an unshared")
                } else {
                    ("an unshared", "a shared")
                };
                return Err(illegal(format!(
                    "{} exists as {have} subscription; it cannot be used as {asked} one",
                    req.key
                )));
            }
            if !existing.shared && existing.consumers > 0 {
                return Err(illegal(format!(
                    "{} already has an active consumer (an unshared subscription allows one)",
                    req.key
                )));
            }
            let same = Arc::ptr_eq(&existing.topic, &req.topic)
                && existing.selector == req.selector_text
                && existing.no_local == req.no_local;
            if same {
                existing.consumers += 1;
                if existing.no_local {
                    // noLocal means "not from the connection consuming it": follow the consumer.
                    existing.topic.replace(Arc::new(Subscription {
                        consumer_key: existing.topic_key,
                        queue: existing.queue.clone(),
                        no_local_connection: Some(req.connection_id),
                        selector: req.selector,
                    }));
                }
                return Ok(Attached {
                    queue: existing.queue.clone(),
                    records,
                });
            }
            if existing.consumers > 0 {
                return Err(illegal(format!(
                    "{} has active consumers: its topic, selector or noLocal cannot change now",
                    req.key
                )));
            }
            // JMS: a changed topic or selector is an unsubscribe followed by a new subscription.
            let old = subs.remove(&req.key).expect("present");
            records.extend(delete(&old, &req.key, journal));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let queue_name = format!(
            "{}/{}/{}/{}-{n}{}",
            req.topic.name(),
            req.key.client_id.as_deref().unwrap_or(""),
            req.key.name,
            inner.instance,
            if req.no_local { NO_LOCAL_SUFFIX } else { "" }
        );
        let queue = inner.make_queue(queue_name.into(), req.key.durable, req.topic.name());
        let topic_key = (0, n);
        req.topic.subscribe(Arc::new(Subscription {
            consumer_key: topic_key,
            queue: queue.clone(),
            no_local_connection: req.no_local.then_some(req.connection_id),
            selector: req.selector,
        }));
        let sub = NamedSub {
            shared: req.shared,
            topic: req.topic,
            selector: req.selector_text,
            no_local: req.no_local,
            queue: queue.clone(),
            topic_key,
            consumers: 1,
        };
        if journal {
            records.push(sub.record(&req.key, false));
        }
        subs.insert(req.key, sub);
        Ok(Attached { queue, records })
    }

    /// A consumer left. A shared non-durable subscription ends with its last consumer.
    pub(crate) fn detach(&self, key: &SubKey) {
        let mut subs = self.subs.lock();
        let Some(sub) = subs.get_mut(key) else { return };
        sub.consumers = sub.consumers.saturating_sub(1);
        if !key.durable && sub.consumers == 0 {
            let sub = subs.remove(key).expect("present");
            delete(&sub, key, false);
        }
    }

    /// Deletes a durable subscription (JMS `unsubscribe`); returns the records to journal.
    pub(crate) fn unsubscribe(
        &self,
        inner: &BrokerInner,
        key: &SubKey,
    ) -> Result<Vec<Record>, Refusal> {
        let mut subs = self.subs.lock();
        let Some(sub) = subs.get(key) else {
            return Err(Refusal::new(
                ErrorCode::UnknownSubscription,
                format!("there is no {key}"),
            ));
        };
        if sub.consumers > 0 {
            return Err(illegal(format!(
                "{key} has an active consumer: close it before unsubscribing"
            )));
        }
        let inflight = sub.queue.snapshot().inflight;
        if inflight > 0 {
            return Err(illegal(format!(
                "{key} has {inflight} delivered messages not yet acknowledged: acknowledge or \
                 recover them (or close their session) before unsubscribing"
            )));
        }
        let sub = subs.remove(key).expect("present");
        Ok(delete(&sub, key, inner.store.persistent()))
    }

    /// Puts a recovered durable subscription back (no consumer attached). Returns its queue.
    pub(crate) fn restore(
        &self,
        inner: &BrokerInner,
        topic: Arc<Topic>,
        rec: &SubscriptionRecord,
    ) -> Result<Arc<Queue>, String> {
        let selector = rec
            .selector
            .as_deref()
            .map(Selector::parse)
            .transpose()
            .map_err(|e| format!("selector {:?}: {e}", rec.selector))?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let topic_key = (0, n);
        let queue = inner.make_queue(rec.queue.as_str().into(), true, topic.name());
        topic.subscribe(Arc::new(Subscription {
            consumer_key: topic_key,
            queue: queue.clone(),
            // The connection it excluded is gone; the next consumer's connection will be.
            no_local_connection: None,
            selector,
        }));
        let key = SubKey {
            durable: true,
            client_id: rec.client_id.clone(),
            name: rec.name.clone(),
        };
        let sub = NamedSub {
            shared: rec.shared,
            topic,
            selector: rec.selector.clone(),
            no_local: rec.queue.ends_with(NO_LOCAL_SUFFIX),
            queue: queue.clone(),
            topic_key,
            consumers: 0,
        };
        self.subs.lock().insert(key, sub);
        Ok(queue)
    }

    /// Messages waiting in the durable subscription `(client_id, name)`, if it exists.
    pub(crate) fn pending(&self, client_id: Option<&str>, name: &str) -> Option<usize> {
        let key = SubKey {
            durable: true,
            client_id: client_id.map(str::to_string),
            name: name.to_string(),
        };
        self.subs.lock().get(&key).map(|s| {
            let snap = s.queue.snapshot();
            snap.ready + snap.scheduled + snap.inflight
        })
    }
}

/// Whether a journaled queue name belongs to a subscription (queue names cannot hold `/`).
pub(crate) fn is_subscription_queue(name: &str) -> bool {
    name.contains('/')
}

/// Takes the subscription off its topic and drops its messages; with `journal`, returns the
/// `Subscription{deleted}` record and an `AckRef` per persistent message it still held.
fn delete(sub: &NamedSub, key: &SubKey, journal: bool) -> Vec<Record> {
    sub.topic.remove_subscription(sub.topic_key);
    let held = sub.queue.remove_returning();
    if !journal {
        return Vec::new();
    }
    let queue = sub.queue.name().to_string();
    let mut records: Vec<Record> = held
        .into_iter()
        .filter(|(_, persistent)| *persistent)
        .map(|(msg_id, _)| Record::AckRef {
            msg_id,
            queue: queue.clone(),
        })
        .collect();
    records.push(sub.record(key, true));
    records
}

fn illegal(message: String) -> Refusal {
    Refusal::new(ErrorCode::IllegalState, message)
}
