//! Hostile and broken input over TCP: each gets an error frame with its code, or a close; never a
//! panic; and a well-behaved client connected at the same time keeps working throughout.

mod support;

use bytes::{BufMut, BytesMut};
use support::*;
use tandem_broker::Broker;
use tandem_protocol::wire::{self, AckKind, AckMode};
use tandem_protocol::{ErrorCode, Frame, FrameCodec, FrameType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// Writes raw bytes and ends the stream, then reads until the server closes; returns the frames
/// it sent. The end of stream matters: a partial frame followed by EOF must close too.
async fn raw_exchange(b: &Broker, bytes: &[u8]) -> Vec<Frame> {
    exchange(b, bytes, true).await
}

async fn exchange(b: &Broker, bytes: &[u8], end_stream: bool) -> Vec<Frame> {
    let mut s = TcpStream::connect(b.local_addr().unwrap()).await.unwrap();
    // The server may close before taking every byte; that is fine.
    let _ = s.write_all(bytes).await;
    if end_stream {
        let _ = s.shutdown().await;
    }
    let mut buf = BytesMut::new();
    let read_all = async {
        loop {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(GUARD, read_all)
        .await
        .expect("the server closes the connection");
    let mut codec = FrameCodec::default();
    let mut frames = Vec::new();
    while let Ok(Some(f)) = codec.decode(&mut buf) {
        frames.push(f);
    }
    frames
}

fn connect_bytes() -> BytesMut {
    let mut b = BytesMut::new();
    connect("", 0).encode(&mut b);
    b
}

fn error_code(frames: &[Frame]) -> Option<ErrorCode> {
    frames.iter().find_map(|f| match f {
        Frame::Error(e) => ErrorCode::from_code(e.code),
        _ => None,
    })
}

/// A client that sends and receives one message; proves the broker still serves.
async fn healthy_round_trip(good: &mut Raw, seq: u64) {
    let q = queue("healthy");
    good.send_msg(1, seq, text(&q, seq, true)).await.unwrap();
    let d = good.deliver().await;
    assert_eq!(n_of(&d), seq as i64);
    good.ack(1, 1, d.delivery_id, AckKind::Individual).await;
}

async fn good_client(b: &Broker) -> Raw {
    let mut good = Raw::tcp(b).await;
    good.session(1, AckMode::Auto).await;
    good.producer(1, 1, Some(&queue("healthy"))).await;
    good.consumer(1, 1, &queue("healthy"), 10).await.unwrap();
    good
}

#[tokio::test]
async fn four_gib_frame_header_is_refused_with_frame_too_large() {
    let b = broker_tcp().await;
    let mut good = good_client(&b).await;
    let mut bytes = connect_bytes();
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x22]);
    let frames = raw_exchange(&b, &bytes).await;
    assert!(
        matches!(frames.first(), Some(Frame::Connected(_))),
        "{frames:?}"
    );
    assert_eq!(error_code(&frames), Some(ErrorCode::FrameTooLarge));
    healthy_round_trip(&mut good, 1).await;
    // Before the handshake too.
    let frames = raw_exchange(&b, &[0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(error_code(&frames), Some(ErrorCode::FrameTooLarge));
    healthy_round_trip(&mut good, 2).await;
    b.shutdown().await;
}

#[tokio::test]
async fn unknown_frame_type_gets_its_code() {
    let b = broker_tcp().await;
    let mut good = good_client(&b).await;
    let mut bytes = connect_bytes();
    bytes.extend_from_slice(&[0, 0, 0, 3, 0xee, 0x08, 0x01]);
    let frames = raw_exchange(&b, &bytes).await;
    assert_eq!(error_code(&frames), Some(ErrorCode::UnknownFrameType));
    healthy_round_trip(&mut good, 1).await;
    b.shutdown().await;
}

#[tokio::test]
async fn malformed_body_gets_malformed_frame() {
    let b = broker_tcp().await;
    let mut good = good_client(&b).await;
    let mut bytes = connect_bytes();
    bytes.extend_from_slice(&[0, 0, 0, 4, FrameType::Send as u8, 0x08, 0xff, 0xff]);
    let frames = raw_exchange(&b, &bytes).await;
    assert_eq!(error_code(&frames), Some(ErrorCode::MalformedFrame));
    healthy_round_trip(&mut good, 1).await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_frame_other_than_connect_first_is_refused() {
    let b = broker_tcp().await;
    let mut bytes = BytesMut::new();
    Frame::Ping(wire::Ping { nonce: 1 }).encode(&mut bytes);
    let frames = raw_exchange(&b, &bytes).await;
    assert_eq!(error_code(&frames), Some(ErrorCode::IllegalState));
    let mut bytes = BytesMut::new();
    wire::Connect {
        min_version: 7,
        max_version: 9,
        ..Default::default()
    }
    .encode_frame(&mut bytes);
    let frames = raw_exchange(&b, &bytes).await;
    assert_eq!(error_code(&frames), Some(ErrorCode::UnsupportedVersion));
    b.shutdown().await;
}

trait EncodeFrame {
    fn encode_frame(self, b: &mut BytesMut);
}

impl EncodeFrame for wire::Connect {
    fn encode_frame(self, b: &mut BytesMut) {
        Frame::Connect(self).encode(b);
    }
}

#[tokio::test]
async fn random_bytes_never_take_the_broker_down() {
    let b = broker_tcp().await;
    let mut good = good_client(&b).await;
    // Seeded xorshift: the same inputs every run.
    let mut x: u64 = 0xdead_beef_cafe_f00d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..40u64 {
        let mut bytes = if round % 2 == 0 {
            connect_bytes()
        } else {
            BytesMut::new()
        };
        let n = 1 + (next() % 300) as usize;
        for _ in 0..n {
            bytes.put_u8(next() as u8);
        }
        let frames = raw_exchange(&b, &bytes).await;
        // Whatever came back must be decodable frames (checked in raw_exchange) and must end with
        // the connection closed; the broker itself keeps serving.
        let _ = frames;
        if round % 8 == 0 {
            healthy_round_trip(&mut good, round + 1).await;
        }
    }
    healthy_round_trip(&mut good, 1000).await;
    assert!(
        b.stats()
            .protocol_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    b.shutdown().await;
}

#[tokio::test]
async fn invalid_destination_name_gets_invalid_destination_and_the_connection_stays() {
    let b = broker_tcp().await;
    let mut c = Raw::tcp(&b).await;
    c.session(1, AckMode::Auto).await;
    // ProducerOpen with a bad name: a request error, the connection stays usable.
    let e = c
        .request(|request_id| {
            wire::ProducerOpen {
                request_id,
                session_id: 1,
                producer_id: 1,
                producer_name: "p".into(),
                destination: Some(wire::Destination {
                    kind: 0,
                    name: "bad name*".into(),
                }),
            }
            .into()
        })
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::InvalidDestination);
    assert!(e.1.contains("bad name*"), "{}", e.1);
    // A send through an anonymous producer to a bad name: a SendFailure with the code.
    c.producer(1, 2, None).await;
    let mut w = tandem_protocol::model::Message::text("x").to_wire();
    w.destination = Some(wire::Destination {
        kind: 0,
        name: "a..b".into(),
    });
    let bytes = bytes::Bytes::from(prost::Message::encode_to_vec(&w));
    let e = c.send_msg(2, 1, bytes).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::InvalidDestination);
    // Priority out of range: InvalidMessage.
    let mut w = tandem_protocol::model::Message::text("x").to_wire();
    w.destination = Some(queue("ok").to_wire());
    w.priority = 12;
    let bytes = bytes::Bytes::from(prost::Message::encode_to_vec(&w));
    let e = c.send_msg(2, 2, bytes).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::InvalidMessage);
    // Garbage as the message bytes.
    let e = c
        .send_msg(2, 3, bytes::Bytes::from_static(&[0x12, 0xff]))
        .await
        .unwrap_err();
    assert_eq!(e.0, ErrorCode::InvalidMessage);
    // And the same connection still works.
    c.producer(1, 3, Some(&queue("ok"))).await;
    c.send_msg(3, 1, text(&queue("ok"), 1, true)).await.unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn oversized_message_is_refused_with_message_too_large() {
    let config = tandem_broker::BrokerConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        max_message_size: 2048,
        ..tandem_broker::BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let mut c = Raw::tcp(&b).await;
    c.session(1, AckMode::Auto).await;
    c.producer(1, 1, Some(&queue("big"))).await;
    let mut m = tandem_protocol::model::Message::text("x".repeat(4096));
    m.destination = Some(queue("big"));
    let e = c.send_msg(1, 1, m.encode()).await.unwrap_err();
    assert_eq!(e.0, ErrorCode::MessageTooLarge);
    assert!(e.1.contains("2048"), "{}", e.1);
    c.send_msg(1, 2, text(&queue("big"), 2, true))
        .await
        .unwrap();
    b.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let config = tandem_broker::BrokerConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        handshake_timeout_ms: 200,
        ..tandem_broker::BrokerConfig::embedded()
    };
    let b = Broker::start(config).await.unwrap();
    let frames = exchange(&b, &[], false).await;
    assert_eq!(error_code(&frames), Some(ErrorCode::IllegalState));
    b.shutdown().await;
}

/// A peer that sends without ever reading (a ping flood) is pushed back through TCP: the broker
/// stops reading it once its answers pile up, instead of queueing them in memory without bound
/// (invariant 10). Other clients keep being served.
#[tokio::test]
async fn a_peer_that_never_reads_is_pushed_back_not_buffered() {
    let b = broker_tcp().await;
    let mut good = good_client(&b).await;
    let mut s = TcpStream::connect(b.local_addr().unwrap()).await.unwrap();
    s.write_all(&connect_bytes()).await.unwrap();
    // 1,000 pings per write, up to 3M pings (~30 MB): far more than socket buffers hold.
    let mut chunk = BytesMut::new();
    for nonce in 0..1000 {
        Frame::Ping(wire::Ping { nonce }).encode(&mut chunk);
    }
    let mut stalled = None;
    for i in 0..3000 {
        if tokio::time::timeout(std::time::Duration::from_secs(2), s.write_all(&chunk))
            .await
            .is_err()
        {
            stalled = Some(i);
            break;
        }
    }
    let stalled = stalled.expect("the broker kept reading a peer that never reads");
    eprintln!("pushed back after {} pings", stalled * 1000);
    healthy_round_trip(&mut good, 1).await;
    drop(s);
    healthy_round_trip(&mut good, 2).await;
    b.shutdown().await;
}
