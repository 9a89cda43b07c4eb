//! One valid, non-trivial instance of every frame type: for codec tests, benches and fuzz seeds.

use bytes::Bytes;

use crate::frame::Frame;
use crate::model::{Destination, Message};
use crate::wire;

/// One frame of each type, with every field set to something other than its default.
pub fn sample_frames() -> Vec<Frame> {
    let dest = Some(Destination::queue("orders").unwrap().to_wire());
    let mut msg = Message::text("hello")
        .with_property("region", "eu")
        .unwrap();
    msg.message_id = Some("ID:sample-1".into());
    msg.destination = Destination::queue("orders").ok();
    msg.timestamp = 1_700_000_000_000;
    let encoded = msg.encode();
    let temp = Destination::new(crate::model::DestinationKind::TempQueue, "tmp-1f2e-1")
        .unwrap()
        .to_wire();
    vec![
        wire::Connect {
            min_version: 1,
            max_version: 1,
            client_id: "c1".into(),
            username: "u".into(),
            password: "p".into(),
            heartbeat_ms: 10_000,
            client_name: "tests".into(),
        }
        .into(),
        wire::Connected {
            version: 1,
            server: "tandem/0".into(),
            connection_id: 9,
            heartbeat_ms: 10_000,
            max_frame_size: 1 << 20,
        }
        .into(),
        wire::Close {
            code: 18,
            message: "bye".into(),
        }
        .into(),
        wire::Error {
            request_id: 3,
            code: 5,
            message: "bad name".into(),
        }
        .into(),
        wire::Ok {
            request_id: 4,
            last_delivery_id: 17,
        }
        .into(),
        wire::Ping { nonce: 77 }.into(),
        wire::Pong { nonce: 77 }.into(),
        wire::SessionOpen {
            request_id: 1,
            session_id: 2,
            ack_mode: wire::AckMode::Client as i32,
        }
        .into(),
        wire::SessionClose {
            request_id: 5,
            session_id: 2,
        }
        .into(),
        wire::ProducerOpen {
            request_id: 6,
            session_id: 2,
            producer_id: 3,
            producer_name: "p-uuid".into(),
            destination: dest.clone(),
        }
        .into(),
        wire::ProducerClose {
            request_id: 7,
            producer_id: 3,
        }
        .into(),
        wire::Send {
            producer_id: 3,
            sequence: 41,
            receipt: true,
            message: encoded.clone(),
        }
        .into(),
        wire::SendReceipt {
            producer_id: 3,
            sequence: 41,
        }
        .into(),
        wire::SendFailure {
            producer_id: 3,
            sequence: 42,
            code: 8,
            message: "full".into(),
        }
        .into(),
        wire::ConsumerOpen {
            request_id: 8,
            session_id: 2,
            consumer_id: 4,
            destination: dest,
            selector: "region = 'eu'".into(),
            prefetch: 10,
            subscription_name: "sub".into(),
            durable: true,
            shared: true,
            no_local: true,
            browser: true,
        }
        .into(),
        wire::ConsumerClose {
            request_id: 9,
            consumer_id: 4,
            last_consumed: 99,
        }
        .into(),
        wire::Deliver {
            consumer_id: 4,
            delivery_id: 100,
            redelivered: true,
            delivery_count: 2,
            message: encoded,
        }
        .into(),
        wire::Ack {
            session_id: 2,
            consumer_id: 4,
            delivery_id: 100,
            kind: wire::AckKind::Cumulative as i32,
            request_id: 10,
        }
        .into(),
        wire::Nack {
            session_id: 2,
            request_id: 11,
            consumed: vec![wire::ConsumerPosition {
                consumer_id: 4,
                delivery_id: 100,
            }],
            delivery_id: 0,
        }
        .into(),
        wire::Flow {
            consumer_id: 4,
            credit: 5,
        }
        .into(),
        wire::Unsubscribe {
            request_id: 15,
            subscription_name: "audit".into(),
        }
        .into(),
        wire::BrowseDone { consumer_id: 4 }.into(),
        wire::TxBegin {
            request_id: 12,
            session_id: 2,
        }
        .into(),
        wire::TxCommit {
            request_id: 13,
            session_id: 2,
            consumed: vec![wire::ConsumerPosition {
                consumer_id: 4,
                delivery_id: 9,
            }],
            tx_name: "tx-a".into(),
            tx_seq: 7,
            resolve: false,
            acks: vec![wire::Ack {
                session_id: 3,
                consumer_id: 5,
                delivery_id: 11,
                kind: wire::AckKind::Individual as i32,
                request_id: 0,
            }],
        }
        .into(),
        wire::TxRollback {
            request_id: 14,
            session_id: 2,
            consumed: vec![wire::ConsumerPosition {
                consumer_id: 4,
                delivery_id: 9,
            }],
        }
        .into(),
        wire::TempDestinationCreate {
            request_id: 16,
            destination: Some(temp.clone()),
        }
        .into(),
        wire::TempDestinationDelete {
            request_id: 17,
            destination: Some(temp),
        }
        .into(),
    ]
}

/// A 1 KiB text message, encoded: the standard benchmark payload.
pub fn kib_message() -> Bytes {
    let mut m = Message::text("x".repeat(1024));
    m.message_id = Some("ID:bench".into());
    m.destination = Destination::queue("bench").ok();
    m.encode()
}
