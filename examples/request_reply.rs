//! Request/reply over a temporary queue, against an embedded broker.
//!
//! ```text
//! cargo run --example request_reply
//! ```
//!
//! The requester creates a temporary queue (only its connection may consume from it; it goes away
//! with the connection), puts it in each request's JMSReplyTo with a JMSCorrelationID, and matches
//! each reply to its request by that id. The responder, on its own connection, answers every
//! request to the queue it names in JMSReplyTo, copying the correlation id. The program ends after
//! three round trips.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{AckMode, ConnectionFactory, Destination, Message};

const REQUESTS: usize = 3;

// `pub`: tests/t34_temp_destinations.rs compiles this file in and runs it.
#[tokio::main]
pub async fn main() -> anyhow::Result<()> {
    let broker = Broker::start(BrokerConfig::embedded()).await?;
    let factory = ConnectionFactory::in_process(Arc::new(broker.connector()));
    let requests = Destination::queue("service.uppercase")?;

    // The responder: answers `REQUESTS` requests, then stops.
    let responder_conn = factory.connect().await?;
    let responder_session = responder_conn.create_session(AckMode::Auto).await?;
    let mut inbox = responder_session.create_consumer(&requests, None).await?;
    // Anonymous: each reply goes where its request's JMSReplyTo says.
    let mut replier = responder_session.create_producer(None).await?;
    responder_conn.start();
    let responder = tokio::spawn(async move {
        for _ in 0..REQUESTS {
            let request = inbox
                .receive(Duration::from_secs(10))
                .await?
                .context("no request came")?;
            let reply_to = request
                .reply_to
                .clone()
                .context("a request without JMSReplyTo")?;
            let mut reply = Message::text(request.text_body().unwrap_or("").to_uppercase());
            reply.destination = Some(reply_to);
            reply.correlation_id = request.correlation_id.clone();
            replier.send(reply).await?;
        }
        responder_conn.close().await?;
        anyhow::Ok(())
    });

    // The requester: a temporary reply queue, a correlation id per request.
    let conn = factory.connect().await?;
    let session = conn.create_session(AckMode::Auto).await?;
    let reply_queue = session.create_temporary_queue().await?;
    let mut replies = session
        .create_consumer(reply_queue.destination(), None)
        .await?;
    let mut producer = session.create_producer(Some(&requests)).await?;
    conn.start();
    let mut outstanding = HashMap::new();
    for (i, word) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        let correlation = format!("req-{i}");
        let mut request = Message::text(word);
        request.reply_to = Some(reply_queue.destination().clone());
        request.correlation_id = Some(correlation.clone());
        producer.send(request).await?;
        outstanding.insert(correlation, word);
    }
    while !outstanding.is_empty() {
        let reply = replies
            .receive(Duration::from_secs(10))
            .await?
            .context("a reply did not come")?;
        let correlation = reply.correlation_id.clone().unwrap_or_default();
        let Some(word) = outstanding.remove(&correlation) else {
            bail!("a reply with an unknown correlation id {correlation:?}");
        };
        let body = reply.text_body().unwrap_or("");
        if body != word.to_uppercase() {
            bail!(
                "{correlation}: expected {:?}, got {body:?}",
                word.to_uppercase()
            );
        }
        println!("reply {correlation}: {word} -> {body}");
    }
    println!("all {REQUESTS} replies matched their requests");
    responder.await??;

    // Closing the connection deletes its temporary queue.
    conn.close().await?;
    broker.shutdown().await;
    Ok(())
}
