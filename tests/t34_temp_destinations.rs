//! Temporary queues and topics (Jakarta Messaging 3.1 §6.2.11) through the client library: one
//! test per JMS rule, against an embedded broker and, for request/reply, the `request_reply`
//! example program.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_broker::{Broker, BrokerConfig, MAX_TEMP_DESTINATIONS_PER_CONNECTION};
use tandem_client::{
    AckMode, Connection, ConnectionFactory, Destination, DestinationKind, Error, ErrorCode,
    Message, Session,
};

const WAIT: Duration = Duration::from_secs(20);

async fn broker(journal: Option<&Path>) -> Broker {
    let config = match journal {
        Some(dir) => BrokerConfig {
            persistence: true,
            data_dir: dir.to_path_buf(),
            ..BrokerConfig::embedded()
        },
        None => BrokerConfig::embedded(),
    };
    Broker::start(config).await.unwrap()
}

async fn connect(b: &Broker) -> (Connection, Session) {
    let c = ConnectionFactory::in_process(Arc::new(b.connector()))
        .connect()
        .await
        .unwrap();
    let s = c.create_session(AckMode::Auto).await.unwrap();
    c.start();
    (c, s)
}

fn code(r: Result<impl std::fmt::Debug, Error>) -> ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("{e} carries no broker code")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

/// Polls a condition the broker reaches asynchronously (a connection's cleanup), bounded.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_queue_carries_messages_to_its_connection() {
    let b = broker(None).await;
    let (_c, s) = connect(&b).await;
    let tq = s.create_temporary_queue().await.unwrap();
    assert_eq!(tq.destination().kind(), DestinationKind::TempQueue);
    let tt = s.create_temporary_topic().await.unwrap();
    assert_eq!(tt.destination().kind(), DestinationKind::TempTopic);
    assert_ne!(tq.destination().name(), tt.destination().name());
    assert_eq!(b.temporary_destinations(), 2);
    // Another connection may send to both (that is what JMSReplyTo is for).
    let (_oc, os) = connect(&b).await;
    let mut q_consumer = s.create_consumer(tq.destination(), None).await.unwrap();
    let mut t_consumer = s.create_consumer(tt.destination(), None).await.unwrap();
    let mut p = os.create_producer(None).await.unwrap();
    let mut m = Message::text("to the queue");
    m.destination = Some(tq.destination().clone());
    p.send(m).await.unwrap();
    let mut m = Message::text("to the topic");
    m.destination = Some(tt.destination().clone());
    p.send(m).await.unwrap();
    let got = q_consumer.receive(WAIT).await.unwrap().expect("a message");
    assert_eq!(got.text_body(), Some("to the queue"));
    let got = t_consumer.receive(WAIT).await.unwrap().expect("a message");
    assert_eq!(got.text_body(), Some("to the topic"));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_creating_connection_may_consume() {
    let b = broker(None).await;
    let (c, s) = connect(&b).await;
    let tq = s.create_temporary_queue().await.unwrap();
    let tt = s.create_temporary_topic().await.unwrap();
    let (_oc, os) = connect(&b).await;
    assert_eq!(
        code(os.create_consumer(tq.destination(), None).await),
        ErrorCode::IllegalState
    );
    assert_eq!(
        code(os.create_consumer(tt.destination(), None).await),
        ErrorCode::IllegalState
    );
    // Another session of the same connection may.
    let s2 = c.create_session(AckMode::Auto).await.unwrap();
    s2.create_consumer(tq.destination(), None).await.unwrap();
    // A durable subscription on a temporary topic makes no sense.
    assert_eq!(
        code(s.durable_consumer(tt.destination(), "d", None, false).await),
        ErrorCode::InvalidDestination
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_destination_in_use_cannot_be_deleted() {
    let b = broker(None).await;
    let (_c, s) = connect(&b).await;
    let tq = s.create_temporary_queue().await.unwrap();
    let mut consumer = s.create_consumer(tq.destination(), None).await.unwrap();
    assert_eq!(code(tq.delete().await), ErrorCode::IllegalState);
    consumer.close().await.unwrap();
    tq.delete().await.unwrap();
    assert_eq!(b.temporary_destinations(), 0);
    assert_eq!(code(tq.delete().await), ErrorCode::DestinationNotFound);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_delete_messages_are_gone_and_sends_fail() {
    let b = broker(None).await;
    let (_c, s) = connect(&b).await;
    let tq = s.create_temporary_queue().await.unwrap();
    let (_oc, os) = connect(&b).await;
    let mut p = os.create_producer(Some(tq.destination())).await.unwrap();
    p.send(Message::text("dropped")).await.unwrap();
    tq.delete().await.unwrap();
    assert_eq!(
        code(p.send(Message::text("late")).await),
        ErrorCode::DestinationNotFound
    );
    assert_eq!(
        code(os.create_producer(Some(tq.destination())).await),
        ErrorCode::DestinationNotFound
    );
    assert_eq!(
        code(s.create_consumer(tq.destination(), None).await),
        ErrorCode::DestinationNotFound
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_connection_deletes_its_temporary_destinations() {
    let b = broker(None).await;
    let (c, s) = connect(&b).await;
    let tq = s.create_temporary_queue().await.unwrap();
    let tt = s.create_temporary_topic().await.unwrap();
    let _consumer = s.create_consumer(tq.destination(), None).await.unwrap();
    let (_oc, os) = connect(&b).await;
    let mut p = os.create_producer(None).await.unwrap();
    let mut m = Message::text("dropped with the queue");
    m.destination = Some(tq.destination().clone());
    p.send(m).await.unwrap();
    // The broker's other temporary destinations are not touched.
    let other = os.create_temporary_queue().await.unwrap();
    c.close().await.unwrap();
    eventually(
        "the closed connection's temporary destinations are gone",
        || b.temporary_destinations() == 1,
    )
    .await;
    for d in [tq.destination(), tt.destination()] {
        let mut m = Message::text("late");
        m.destination = Some(d.clone());
        assert_eq!(code(p.send(m).await), ErrorCode::DestinationNotFound, "{d}");
    }
    let mut m = Message::text("still there");
    m.destination = Some(other.destination().clone());
    p.send(m).await.unwrap();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_destinations_are_never_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let name;
    {
        let b = broker(Some(dir.path())).await;
        let (c, s) = connect(&b).await;
        let tq = s.create_temporary_queue().await.unwrap();
        name = tq.destination().clone();
        let mut p = s.create_producer(Some(&name)).await.unwrap();
        p.send(Message::text("persistent, but on a temporary queue"))
            .await
            .unwrap();
        c.close().await.unwrap();
        b.shutdown().await;
    }
    let b = broker(Some(dir.path())).await;
    assert_eq!(b.temporary_destinations(), 0);
    assert!(
        b.queue_snapshot(name.name()).is_none(),
        "not recovered as a queue"
    );
    let (_c, s) = connect(&b).await;
    assert_eq!(
        code(s.create_producer(Some(&name)).await),
        ErrorCode::DestinationNotFound
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_destination_name_is_not_auto_created() {
    let b = broker(None).await;
    let (_c, s) = connect(&b).await;
    let made_up = Destination::new(DestinationKind::TempQueue, "tmp-not-created").unwrap();
    assert_eq!(
        code(s.create_producer(Some(&made_up)).await),
        ErrorCode::DestinationNotFound
    );
    assert_eq!(
        code(s.create_consumer(&made_up, None).await),
        ErrorCode::DestinationNotFound
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_a_bounded_number_of_temporary_destinations() {
    let b = broker(None).await;
    let (_c, s) = connect(&b).await;
    let mut held = Vec::new();
    for _ in 0..MAX_TEMP_DESTINATIONS_PER_CONNECTION {
        held.push(s.create_temporary_queue().await.unwrap());
    }
    assert_eq!(
        code(s.create_temporary_topic().await),
        ErrorCode::IllegalState
    );
    // Another connection has its own allowance; a delete frees one.
    let (_oc, os) = connect(&b).await;
    os.create_temporary_queue().await.unwrap();
    held.pop().unwrap().delete().await.unwrap();
    s.create_temporary_topic().await.unwrap();
    b.shutdown().await;
}

/// The `request_reply` example, compiled into this test from its source (so the test never runs a
/// stale binary): it ends by itself, and fails unless every reply matched its request by
/// JMSCorrelationID.
#[path = "../examples/request_reply.rs"]
mod request_reply_example;

#[test]
fn the_request_reply_example_runs() {
    request_reply_example::main().expect("the example succeeds");
}
