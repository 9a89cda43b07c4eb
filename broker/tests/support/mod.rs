//! A raw-frame client for broker tests: drives the protocol directly, so broker behaviour is tested
//! without the client library in between.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tandem_broker::{Broker, BrokerConfig};
use tandem_protocol::link::LocalLink;
use tandem_protocol::model::{Destination, Message};
use tandem_protocol::wire::{self, AckKind, AckMode};
use tandem_protocol::{ErrorCode, Frame, FrameCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Failure guard for waits that should succeed quickly; generous for a loaded 2-core machine.
pub const GUARD: Duration = Duration::from_secs(20);

pub enum Transport {
    Local(LocalLink),
    Tcp(Framed<TcpStream, FrameCodec>),
}

pub struct Raw {
    t: Transport,
    next_request: u64,
    /// Frames received while waiting for something else.
    pub stash: Vec<Frame>,
}

impl Raw {
    pub async fn local(broker: &Broker) -> Raw {
        Raw::handshake(Transport::Local(broker.connect_local().unwrap()), "").await
    }

    pub async fn tcp(broker: &Broker) -> Raw {
        let sock = TcpStream::connect(broker.local_addr().unwrap())
            .await
            .unwrap();
        Raw::handshake(Transport::Tcp(Framed::new(sock, FrameCodec::default())), "").await
    }

    pub fn unconnected(t: Transport) -> Raw {
        Raw {
            t,
            next_request: 0,
            stash: Vec::new(),
        }
    }

    pub async fn handshake(t: Transport, client_id: &str) -> Raw {
        let mut r = Raw::unconnected(t);
        r.send(connect(client_id, 0)).await;
        match r.recv().await {
            Some(Frame::Connected(_)) => {}
            other => panic!("expected Connected, got {other:?}"),
        }
        r
    }

    pub async fn send(&mut self, f: Frame) {
        match &mut self.t {
            Transport::Local(l) => l.tx.send(f).await.expect("link open"),
            Transport::Tcp(t) => t.send(f).await.expect("tcp open"),
        }
    }

    /// The next frame, or None when the connection ends. Panics after the guard time.
    pub async fn recv(&mut self) -> Option<Frame> {
        if !self.stash.is_empty() {
            return Some(self.stash.remove(0));
        }
        self.recv_fresh().await
    }

    async fn recv_fresh(&mut self) -> Option<Frame> {
        let fut = async {
            match &mut self.t {
                Transport::Local(l) => l.rx.recv().await,
                Transport::Tcp(t) => t.next().await.map(|r| r.expect("decodable frame")),
            }
        };
        tokio::time::timeout(GUARD, fut)
            .await
            .expect("a frame within the guard time")
    }

    /// The next frame within `d`, None if none came (or the connection ended).
    pub async fn recv_within(&mut self, d: Duration) -> Option<Frame> {
        if !self.stash.is_empty() {
            return Some(self.stash.remove(0));
        }
        let fut = async {
            match &mut self.t {
                Transport::Local(l) => l.rx.recv().await,
                Transport::Tcp(t) => t.next().await.map(|r| r.expect("decodable frame")),
            }
        };
        tokio::time::timeout(d, fut).await.ok().flatten()
    }

    /// Waits for the answer to a request, stashing other frames.
    pub async fn answer(&mut self, request_id: u64) -> Result<(), (ErrorCode, String)> {
        loop {
            let f = self.recv_fresh().await.expect("connection open");
            match f {
                Frame::Ok(o) if o.request_id == request_id => return Ok(()),
                Frame::Error(e) if e.request_id == request_id => {
                    return Err((ErrorCode::from_code(e.code).expect("known code"), e.message));
                }
                other => self.stash.push(other),
            }
        }
    }

    pub async fn request(
        &mut self,
        f: impl FnOnce(u64) -> Frame,
    ) -> Result<(), (ErrorCode, String)> {
        self.next_request += 1;
        let id = self.next_request;
        self.send(f(id)).await;
        self.answer(id).await
    }

    pub async fn session(&mut self, session_id: u64, mode: AckMode) {
        self.request(|request_id| {
            wire::SessionOpen {
                request_id,
                session_id,
                ack_mode: mode as i32,
            }
            .into()
        })
        .await
        .expect("session opens");
    }

    pub async fn producer(
        &mut self,
        session_id: u64,
        producer_id: u64,
        dest: Option<&Destination>,
    ) {
        self.request(|request_id| {
            wire::ProducerOpen {
                request_id,
                session_id,
                producer_id,
                producer_name: format!("p-{producer_id}"),
                destination: dest.map(Destination::to_wire),
            }
            .into()
        })
        .await
        .expect("producer opens");
    }

    pub async fn consumer(
        &mut self,
        session_id: u64,
        consumer_id: u64,
        dest: &Destination,
        prefetch: u32,
    ) -> Result<(), (ErrorCode, String)> {
        self.request(|request_id| {
            wire::ConsumerOpen {
                request_id,
                session_id,
                consumer_id,
                destination: Some(dest.to_wire()),
                prefetch,
                ..Default::default()
            }
            .into()
        })
        .await
    }

    /// Sends and waits for the receipt or failure.
    pub async fn send_msg(
        &mut self,
        producer_id: u64,
        sequence: u64,
        msg: Bytes,
    ) -> Result<(), (ErrorCode, String)> {
        self.send(
            wire::Send {
                producer_id,
                sequence,
                receipt: true,
                message: msg,
            }
            .into(),
        )
        .await;
        loop {
            match self.recv_fresh().await.expect("connection open") {
                Frame::SendReceipt(r) if r.producer_id == producer_id && r.sequence == sequence => {
                    return Ok(());
                }
                Frame::SendFailure(f) if f.producer_id == producer_id && f.sequence == sequence => {
                    return Err((ErrorCode::from_code(f.code).expect("known"), f.message));
                }
                other => self.stash.push(other),
            }
        }
    }

    /// The next Deliver frame (other frames are stashed).
    pub async fn deliver(&mut self) -> wire::Deliver {
        if let Some(i) = self
            .stash
            .iter()
            .position(|f| matches!(f, Frame::Deliver(_)))
        {
            let Frame::Deliver(d) = self.stash.remove(i) else {
                unreachable!()
            };
            return d;
        }
        loop {
            match self.recv_fresh().await.expect("connection open") {
                Frame::Deliver(d) => return d,
                other => self.stash.push(other),
            }
        }
    }

    pub async fn deliver_within(&mut self, d: Duration) -> Option<wire::Deliver> {
        if let Some(i) = self
            .stash
            .iter()
            .position(|f| matches!(f, Frame::Deliver(_)))
        {
            let Frame::Deliver(d) = self.stash.remove(i) else {
                unreachable!()
            };
            return Some(d);
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(Frame::Deliver(d)) => return Some(d),
                Some(other) => self.stash.push(other),
                None => return None,
            }
        }
    }

    pub async fn ack(
        &mut self,
        session_id: u64,
        consumer_id: u64,
        delivery_id: u64,
        kind: AckKind,
    ) {
        self.send(
            wire::Ack {
                session_id,
                consumer_id,
                delivery_id,
                kind: kind as i32,
                request_id: 0,
            }
            .into(),
        )
        .await;
    }
}

pub fn connect(client_id: &str, heartbeat_ms: u32) -> Frame {
    wire::Connect {
        min_version: 1,
        max_version: 1,
        client_id: client_id.into(),
        heartbeat_ms,
        client_name: "raw-test".into(),
        ..Default::default()
    }
    .into()
}

pub fn queue(name: &str) -> Destination {
    Destination::queue(name).unwrap()
}

pub fn topic(name: &str) -> Destination {
    Destination::topic(name).unwrap()
}

/// A text message to `dest` with an `n` property, encoded.
pub fn text(dest: &Destination, n: u64, persistent: bool) -> Bytes {
    let mut m = Message::text(format!("m{n}"))
        .with_property("n", n as i64)
        .unwrap();
    m.destination = Some(dest.clone());
    m.message_id = Some(format!("ID:{n}"));
    if !persistent {
        m.delivery_mode = tandem_protocol::model::DeliveryMode::NonPersistent;
    }
    m.encode()
}

pub fn n_of(d: &wire::Deliver) -> i64 {
    let m = Message::decode(d.message.clone()).unwrap();
    m.property("n").unwrap().to_long().unwrap()
}

pub async fn broker_tcp() -> Broker {
    let config = BrokerConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..BrokerConfig::embedded()
    };
    Broker::start(config).await.unwrap()
}
