//! Embedded broker + client in one process: send a message and receive it.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! The same client code talks to a `tandem run` server: replace the in-process factory with
//! `ConnectionFactory::new("tcp://127.0.0.1:61616")?`.

use std::sync::Arc;
use std::time::Duration;

use tandem_broker::{Broker, BrokerConfig};
use tandem_client::{AckMode, ConnectionFactory, Destination, Message};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // An embedded broker with no network listeners: connections are in process.
    let broker = Broker::start(BrokerConfig::embedded()).await?;
    let factory = ConnectionFactory::in_process(Arc::new(broker.connector()));

    let connection = factory.connect().await?;
    let session = connection.create_session(AckMode::Client).await?;
    let orders = Destination::queue("orders")?;

    let mut producer = session.create_producer(Some(&orders)).await?;
    let id = producer
        .send(Message::text("order #1").with_property("region", "eu")?)
        .await?;
    println!("sent {id}");

    let mut consumer = session
        .create_consumer(&orders, Some("region = 'eu'"))
        .await?;
    connection.start();
    let msg = consumer
        .receive(Duration::from_secs(5))
        .await?
        .expect("the message we sent");
    println!(
        "received {:?} (delivery count {})",
        msg.text_body(),
        msg.delivery_count
    );
    msg.ack().await?;

    connection.close().await?;
    broker.shutdown().await;
    Ok(())
}
