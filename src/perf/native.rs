//! The native driver: tandem-client over TCP, or over in-process links to an embedded broker.
//!
//! Each producer and consumer has its own connection. Persistent sends are pipelined with
//! `send_async`: up to `--max-in-flight` receipts outstanding per producer, awaited in order by a
//! confirm task that records send→confirm latency. Non-persistent sends are not confirmed by the
//! protocol (the client bounds them by its send budget), so they have no confirm latency.

use std::sync::Arc;

use anyhow::Context;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tandem_client::{AckMode, ConnectionFactory, DeliveryMode, Message, PropertyValue, Receipt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::config::Ack;
use super::run::{
    ConsumerCtx, Driver, Keep, P_INTENDED, P_PRODUCER, P_RUN, P_SENT, P_SEQ, ProducerCtx,
    parse_marks,
};

/// Most client acks (client and individual modes) awaited at once per consumer.
const MAX_PENDING_ACKS: usize = 64;

pub struct Native {
    pub factory: ConnectionFactory,
}

impl Driver for Native {
    fn producer(
        &self,
        ctx: ProducerCtx,
    ) -> impl Future<Output = anyhow::Result<Keep>> + Send + 'static {
        producer(self.factory.clone(), ctx)
    }

    fn consumer(
        &self,
        ctx: ConsumerCtx,
    ) -> impl Future<Output = anyhow::Result<Keep>> + Send + 'static {
        consumer(self.factory.clone(), ctx)
    }
}

type Pending = (Receipt, u64, u64, OwnedSemaphorePermit);

async fn producer(factory: ConnectionFactory, mut ctx: ProducerCtx) -> anyhow::Result<Keep> {
    let cfg = ctx.run.cfg.clone();
    let conn = factory.connect().await.context("connect")?;
    if cfg.tx_batch > 0 {
        return tx_producer(conn, ctx).await;
    }
    let session = conn.create_session(AckMode::Auto).await?;
    let mut producer = session.create_producer(Some(&cfg.destination)).await?;
    producer.set_delivery_mode(if cfg.persistent {
        DeliveryMode::Persistent
    } else {
        DeliveryMode::NonPersistent
    });
    if ctx.ready_and_wait().await.is_none() {
        return Ok(Box::new((conn, session, producer)));
    }
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight as usize));
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    let ctx = Arc::new(ctx);
    let confirmer = cfg.persistent.then(|| {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            // Receipts come back in send order on one connection, so awaiting them in order
            // costs nothing and times each one when it completes.
            while let Some((receipt, intended, sent, _permit)) = rx.recv().await {
                receipt.await.context("persistent send refused")?;
                ctx.on_confirmed(1, Some((intended, sent)));
            }
            anyhow::Ok(())
        })
    });
    let run_id = ctx.run.run_id;
    let mut k = 0u64;
    while let Some(intended) = ctx.next_slot(k).await {
        let permit = if cfg.persistent {
            tokio::select! {
                biased;
                _ = ctx.run.abort.cancelled() => break,
                _ = ctx.run.stop_sending.cancelled() => break,
                p = in_flight.clone().acquire_owned() => Some(p?),
            }
        } else {
            None
        };
        let sent = ctx.run.clock.now_ns();
        let intended = intended.unwrap_or(sent);
        k += 1;
        let msg = Message::bytes(ctx.run.body.clone())
            .with_property(P_RUN, run_id)?
            .with_property(P_PRODUCER, ctx.index as i32)?
            .with_property(P_SEQ, k as i64)?
            .with_property(P_INTENDED, intended as i64)?
            .with_property(P_SENT, sent as i64)?;
        let receipt = producer.send_async(msg).await.context("send")?;
        ctx.on_sent(sent);
        if let Some(permit) = permit {
            let _ = tx.send((receipt, intended, sent, permit));
        }
    }
    drop(tx);
    if let Some(c) = confirmer {
        tokio::select! {
            _ = ctx.run.abort.cancelled() => {}
            r = c => r??,
        }
    }
    // Closing the producer is a request the broker answers after every frame before it on this
    // connection: once answered, every send has been routed (so a late subscriber cannot
    // overtake them, and non-persistent sends are out of the client's buffers).
    if !ctx.run.abort.is_cancelled() {
        producer.close().await.context("closing the producer")?;
    }
    Ok(Box::new((conn, session, producer)))
}

/// Sends in transactions of `tx_batch` messages: a batch is confirmed by its commit, and the
/// send-to-confirm latency of its last message is the commit's.
async fn tx_producer(
    conn: tandem_client::Connection,
    mut ctx: ProducerCtx,
) -> anyhow::Result<Keep> {
    let cfg = ctx.run.cfg.clone();
    let session = conn.create_session(AckMode::Transacted).await?;
    let mut producer = session.create_producer(Some(&cfg.destination)).await?;
    producer.set_delivery_mode(if cfg.persistent {
        DeliveryMode::Persistent
    } else {
        DeliveryMode::NonPersistent
    });
    if ctx.ready_and_wait().await.is_none() {
        return Ok(Box::new((conn, session, producer)));
    }
    let run_id = ctx.run.run_id;
    let mut k = 0u64;
    let mut in_tx = 0u64;
    let mut last = (0, 0);
    while let Some(intended) = ctx.next_slot(k).await {
        if ctx.run.abort.is_cancelled() || ctx.run.stop_sending.is_cancelled() {
            break;
        }
        let sent = ctx.run.clock.now_ns();
        let intended = intended.unwrap_or(sent);
        k += 1;
        let msg = Message::bytes(ctx.run.body.clone())
            .with_property(P_RUN, run_id)?
            .with_property(P_PRODUCER, ctx.index as i32)?
            .with_property(P_SEQ, k as i64)?
            .with_property(P_INTENDED, intended as i64)?
            .with_property(P_SENT, sent as i64)?;
        // The broker answers a transaction's send at once (it holds it until the commit), so the
        // receipt is not awaited: the commit reports a refused send.
        drop(producer.send_async(msg).await.context("send")?);
        ctx.on_sent(sent);
        last = (intended, sent);
        in_tx += 1;
        if in_tx == u64::from(cfg.tx_batch) {
            session.commit().await.context("commit")?;
            ctx.on_confirmed(in_tx, Some(last));
            in_tx = 0;
        }
    }
    if in_tx > 0 && !ctx.run.abort.is_cancelled() {
        session.commit().await.context("commit")?;
        ctx.on_confirmed(in_tx, Some(last));
    }
    if !ctx.run.abort.is_cancelled() {
        producer.close().await.context("closing the producer")?;
    }
    Ok(Box::new((conn, session, producer)))
}

fn long_property(m: &Message, name: &str) -> Option<i64> {
    match m.property(name)? {
        PropertyValue::Long(v) => Some(v),
        PropertyValue::Int(v) => Some(i64::from(v)),
        // A STOMP producer's marks arrive as Strings.
        PropertyValue::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn consumer(factory: ConnectionFactory, ctx: ConsumerCtx) -> anyhow::Result<Keep> {
    let cfg = ctx.run.cfg.clone();
    let conn = factory.connect().await.context("connect")?;
    let mode = match cfg.ack {
        Ack::Auto => AckMode::Auto,
        Ack::Client => AckMode::Client,
        Ack::DupsOk => AckMode::DupsOk,
        Ack::Individual => AckMode::Individual,
    };
    let session = conn.create_session(mode).await?;
    let mut consumer = session
        .consumer(&cfg.destination)
        .prefetch(cfg.prefetch)
        .build()
        .await
        .context("subscribe")?;
    conn.start();
    ctx.ready();
    let mut acks = FuturesUnordered::new();
    let mut since_ack = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            _ = ctx.run.stop_receiving.cancelled() => break,
            _ = ctx.run.abort.cancelled() => break,
            m = consumer.next() => m,
        };
        let m = match next {
            None => anyhow::bail!("the consumer's stream ended before the run did"),
            Some(Err(e)) => return Err(e).context("receive"),
            Some(Ok(m)) => m,
        };
        ctx.on_message(parse_marks(|n| long_property(&m, n)), m.redelivered);
        let ack_now = match cfg.ack {
            Ack::Client => {
                since_ack += 1;
                since_ack >= cfg.ack_every
            }
            Ack::Individual => true,
            Ack::Auto | Ack::DupsOk => false,
        };
        if ack_now {
            since_ack = 0;
            let h = m.ack_handle();
            acks.push(async move { h.ack().await });
            while acks.len() >= MAX_PENDING_ACKS {
                if let Some(r) = acks.next().await {
                    r.context("ack")?;
                }
            }
        }
        while let Some(Some(r)) = acks.next().now_or_never() {
            r.context("ack")?;
        }
    }
    Ok(Box::new((conn, session, consumer)))
}
