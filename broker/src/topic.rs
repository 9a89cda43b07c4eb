//! A topic: fan-out to subscriptions, each of which is a [`Queue`] of its own.
//!
//! Publishing clones the message's `Arc` into every subscription whose filter accepts it; the body
//! is shared, never copied.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use tandem_protocol::selector::Selector;

use crate::message::{BrokerMessage, SelectorView};
use crate::queue::Queue;

/// One subscription: its queue and the filter applied at fan-out.
#[derive(Debug)]
pub struct Subscription {
    /// The consumer id (non-durable subscriptions belong to one consumer).
    pub consumer_key: (u64, u64),
    /// Where its messages wait.
    pub queue: Arc<Queue>,
    /// Skip messages from this connection (noLocal).
    pub no_local_connection: Option<u64>,
    /// Only messages this selects enter the subscription.
    pub selector: Option<Selector>,
}

impl Subscription {
    fn accepts(&self, msg: &BrokerMessage) -> bool {
        self.no_local_connection != Some(msg.origin_connection)
            && self.selector.as_ref().is_none_or(|s| {
                s.matches(&SelectorView {
                    msg,
                    delivery_count: 1,
                })
            })
    }
}

/// A topic.
#[derive(Debug)]
pub struct Topic {
    name: Arc<str>,
    subscriptions: RwLock<Vec<Arc<Subscription>>>,
    /// Messages published.
    pub published: AtomicU64,
}

impl Topic {
    /// A topic with no subscriptions.
    pub fn new(name: Arc<str>) -> Arc<Topic> {
        Arc::new(Topic {
            name,
            subscriptions: RwLock::new(Vec::new()),
            published: AtomicU64::new(0),
        })
    }

    /// The name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Adds a subscription.
    pub fn subscribe(&self, sub: Arc<Subscription>) {
        self.subscriptions.write().push(sub);
    }

    /// Removes the subscription of a consumer and drops its messages.
    pub fn unsubscribe(&self, consumer_key: (u64, u64)) {
        let mut subs = self.subscriptions.write();
        if let Some(i) = subs.iter().position(|s| s.consumer_key == consumer_key) {
            let s = subs.swap_remove(i);
            s.queue.remove();
        }
    }

    /// Replaces the subscription with the same consumer key (a durable subscription's noLocal
    /// connection changes with its consumer); keeps its place, so nothing routed is lost.
    pub fn replace(&self, sub: Arc<Subscription>) {
        let mut subs = self.subscriptions.write();
        match subs.iter_mut().find(|s| s.consumer_key == sub.consumer_key) {
            Some(s) => *s = sub,
            None => subs.push(sub),
        }
    }

    /// Takes a subscription off the topic without touching its queue.
    pub fn remove_subscription(&self, consumer_key: (u64, u64)) -> Option<Arc<Subscription>> {
        let mut subs = self.subscriptions.write();
        let i = subs.iter().position(|s| s.consumer_key == consumer_key)?;
        Some(subs.swap_remove(i))
    }

    /// The queues a message goes to.
    pub fn route(&self, msg: &BrokerMessage) -> Vec<Arc<Queue>> {
        self.subscriptions
            .read()
            .iter()
            .filter(|s| s.accepts(msg))
            .map(|s| s.queue.clone())
            .collect()
    }

    /// Number of subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.read().len()
    }

    /// Counted after a publish.
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }
}
