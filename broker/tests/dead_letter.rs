//! Per-destination settings: dead-lettering after the maximum delivery attempts, the expiry queue,
//! both journaled.

mod support;

use std::time::Duration;

use support::*;
use tandem_broker::settings::DestinationSettings;
use tandem_broker::{Broker, BrokerConfig};
use tandem_protocol::model::{Message, PropertyValue};
use tandem_protocol::wire::{self, AckKind, AckMode};

fn settings() -> Vec<DestinationSettings> {
    vec![
        DestinationSettings {
            pattern: "orders.#".into(),
            dead_letter_queue: "DLQ.orders".into(),
            max_delivery_attempts: 3,
            expiry_queue: "Expired.orders".into(),
            ..DestinationSettings::default()
        },
        DestinationSettings {
            pattern: "scratch.*".into(),
            dead_letter_queue: String::new(),
            max_delivery_attempts: 2,
            expiry_queue: String::new(),
            ..DestinationSettings::default()
        },
    ]
}

fn config(dir: Option<&std::path::Path>) -> BrokerConfig {
    BrokerConfig {
        address_settings: settings(),
        persistence: dir.is_some(),
        data_dir: dir.map(|d| d.to_path_buf()).unwrap_or_default(),
        ..BrokerConfig::embedded()
    }
}

fn prop(d: &wire::Deliver, name: &str) -> Option<String> {
    Message::decode(d.message.clone())
        .unwrap()
        .property(name)
        .map(|v| v.to_string_value())
}

async fn nack(c: &mut Raw, delivery_id: u64) {
    c.request(|request_id| {
        wire::Nack {
            session_id: 1,
            request_id,
            consumed: vec![],
            delivery_id,
        }
        .into()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_message_returned_max_times_moves_to_the_dead_letter_queue_with_its_story() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(Some(dir.path()))).await.unwrap();
    let q = queue("orders.eu");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    p.send_msg(1, 1, text(&q, 1, true)).await.unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Individual).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    for attempt in 1..=3u32 {
        let d = c.deliver().await;
        assert_eq!(d.delivery_count, attempt);
        nack(&mut c, d.delivery_id).await;
    }
    assert!(
        c.deliver_within(Duration::from_millis(300)).await.is_none(),
        "no fourth delivery"
    );
    let mut dl = Raw::local(&b).await;
    dl.session(1, AckMode::Individual).await;
    dl.consumer(1, 1, &queue("DLQ.orders"), 10).await.unwrap();
    let d = dl.deliver().await;
    assert_eq!(n_of(&d), 1);
    assert_eq!(
        prop(&d, "JMS_TANDEM_ORIG_DESTINATION").as_deref(),
        Some("queue://orders.eu")
    );
    assert_eq!(
        prop(&d, "JMS_TANDEM_DLQ_REASON").as_deref(),
        Some("max-delivery-attempts:3")
    );
    let m = Message::decode(d.message.clone()).unwrap();
    assert_eq!(m.destination, Some(queue("DLQ.orders")));
    b.shutdown().await;

    // The move was journaled as one unit: after a restart it is in the DLQ only.
    let b = Broker::start(config(Some(dir.path()))).await.unwrap();
    assert_eq!(b.queue_snapshot("orders.eu").map_or(0, |s| s.ready), 0);
    assert_eq!(b.queue_snapshot("DLQ.orders").unwrap().ready, 1);
    b.shutdown().await;
}

#[tokio::test]
async fn without_a_dead_letter_queue_the_message_is_dropped() {
    let b = Broker::start(config(None)).await.unwrap();
    let q = queue("scratch.x");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    p.send_msg(1, 1, text(&q, 1, false)).await.unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Individual).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    for _ in 0..2 {
        let d = c.deliver().await;
        nack(&mut c, d.delivery_id).await;
    }
    assert!(c.deliver_within(Duration::from_millis(300)).await.is_none());
    let snap = b.queue_snapshot("scratch.x").unwrap();
    assert_eq!((snap.ready, snap.inflight, snap.memory), (0, 0, 0));
    b.shutdown().await;
}

#[tokio::test]
async fn an_expired_message_goes_to_the_expiry_queue_and_never_expires_there() {
    let b = Broker::start(config(None)).await.unwrap();
    let q = queue("orders.us");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut m = Message::text("soon stale")
        .with_property("n", 1i64)
        .unwrap();
    m.destination = Some(q.clone());
    m.expiration = now + 150;
    p.send_msg(1, 1, m.encode()).await.unwrap();
    // The time-to-live elapsing is the behaviour under test: wait past it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    assert!(
        c.deliver_within(Duration::from_millis(300)).await.is_none(),
        "expired: not delivered"
    );
    c.consumer(1, 2, &queue("Expired.orders"), 10)
        .await
        .unwrap();
    let d = c.deliver().await;
    assert_eq!(
        prop(&d, "JMS_TANDEM_DLQ_REASON").as_deref(),
        Some("expired")
    );
    assert_eq!(
        prop(&d, "JMS_TANDEM_ORIG_EXPIRATION"),
        Some((now + 150).to_string())
    );
    let moved = Message::decode(d.message.clone()).unwrap();
    assert_eq!(
        moved.expiration, 0,
        "the copy in the expiry queue does not expire again"
    );
    assert_eq!(moved.property("n"), Some(PropertyValue::Long(1)));
    c.ack(1, 2, d.delivery_id, AckKind::Individual).await;
    b.shutdown().await;
}

/// A destination's redelivery delay holds back a message given back after it was seen; one never
/// seen (merely prefetched) comes back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_delay_holds_a_seen_message_back() {
    let b = Broker::start(BrokerConfig {
        address_settings: vec![DestinationSettings {
            pattern: "slow.#".into(),
            redelivery_delay_ms: 400,
            ..DestinationSettings::default()
        }],
        ..BrokerConfig::embedded()
    })
    .await
    .unwrap();
    let q = queue("slow.retry");
    let mut p = Raw::local(&b).await;
    p.session(1, AckMode::Auto).await;
    p.producer(1, 1, Some(&q)).await;
    p.send_msg(1, 1, text(&q, 1, false)).await.unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Client).await;
    c.consumer(1, 1, &q, 10).await.unwrap();
    let d = c.deliver().await;
    let given_back = std::time::Instant::now();
    nack(&mut c, d.delivery_id).await;
    assert!(
        c.deliver_within(Duration::from_millis(150)).await.is_none(),
        "held back by the redelivery delay"
    );
    let again = c
        .deliver_within(GUARD)
        .await
        .expect("delivered after the delay");
    assert!(given_back.elapsed() >= Duration::from_millis(400));
    assert!(again.redelivered);
    assert_eq!(again.delivery_count, 2);
    b.shutdown().await;
}

/// `auto_create` per pattern overrides the broker's setting, both ways.
#[tokio::test]
async fn auto_create_follows_the_matching_address_settings() {
    let b = Broker::start(BrokerConfig {
        auto_create: false,
        address_settings: vec![
            DestinationSettings {
                pattern: "dyn.#".into(),
                auto_create: Some(true),
                ..DestinationSettings::default()
            },
            DestinationSettings {
                pattern: "dyn.fixed.*".into(),
                auto_create: Some(false),
                ..DestinationSettings::default()
            },
        ],
        ..BrokerConfig::embedded()
    })
    .await
    .unwrap();
    let mut c = Raw::local(&b).await;
    c.session(1, AckMode::Auto).await;
    open_producer(&mut c, 1, "dyn.orders")
        .await
        .expect("auto-created by its pattern");
    let r = open_producer(&mut c, 2, "other").await;
    assert!(
        matches!(r, Err((tandem_protocol::ErrorCode::DestinationNotFound, _))),
        "{r:?}"
    );
    let r = open_producer(&mut c, 3, "dyn.fixed.a").await;
    assert!(
        matches!(r, Err((tandem_protocol::ErrorCode::DestinationNotFound, _))),
        "{r:?}"
    );
    b.shutdown().await;
}

async fn open_producer(
    c: &mut Raw,
    producer_id: u64,
    name: &str,
) -> Result<(), (tandem_protocol::ErrorCode, String)> {
    let d = queue(name).to_wire();
    c.request(move |request_id| {
        wire::ProducerOpen {
            request_id,
            session_id: 1,
            producer_id,
            producer_name: String::new(),
            destination: Some(d),
        }
        .into()
    })
    .await
}
