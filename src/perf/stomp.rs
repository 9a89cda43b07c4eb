//! The STOMP 1.2 driver: `protocol::stomp`'s codec over tokio TCP, one connection per producer
//! and per consumer. The same code drives tandem, ActiveMQ Classic and RabbitMQ, so their figures
//! compare like for like.
//!
//! - **Sends** carry the perf marks as headers. `persistent:true` is written only for persistent
//!   sends: RabbitMQ closes the connection on `persistent:false` to a `/queue/` (the header also
//!   declares the queue's durability), and non-persistent is every broker's default.
//! - **Confirms**: a `receipt` on every `--receipt-every`th SEND (or on each COMMIT with
//!   `--tx-batch`). A RECEIPT confirms its SEND and, since a connection's frames are handled in
//!   order, every SEND before it; one latency sample is taken per receipt. What a RECEIPT means
//!   differs: ActiveMQ answers once the broker accepted the frame, RabbitMQ after its publisher
//!   confirm, tandem after its SendReceipt (durable, for a persistent message).
//! - **Writes are batched**: frames are fed to the socket buffer and flushed whenever the
//!   producer is about to wait (for its rate, or for in-flight room), so pacing costs no latency
//!   and an unpaced producer fills segments.
//! - **Subscriptions** ask for a RECEIPT, so a consumer counts as ready only once the broker has
//!   it; prefetch goes in `activemq.prefetchSize` (ActiveMQ, tandem) and `prefetch-count`
//!   (RabbitMQ).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{FutureExt, SinkExt, StreamExt};
use parking_lot::Mutex;
use tandem_protocol::stomp::{Command, Item, StompCodec, StompFrame, StompVersion};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;

use super::config::{Ack, PerfConfig};
use super::run::{
    ConsumerCtx, Driver, Keep, P_INTENDED, P_PRODUCER, P_RUN, P_SENT, P_SEQ, ProducerCtx,
    parse_marks,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SUBSCRIPTION_RECEIPT: &str = "perf-subscribed";
const BYE_RECEIPT: &str = "perf-bye";

type Conn = Framed<TcpStream, StompCodec>;

pub struct Stomp {
    pub addr: SocketAddr,
}

impl Driver for Stomp {
    fn producer(
        &self,
        ctx: ProducerCtx,
    ) -> impl Future<Output = anyhow::Result<Keep>> + Send + 'static {
        producer(self.addr, ctx)
    }

    fn consumer(
        &self,
        ctx: ConsumerCtx,
    ) -> impl Future<Output = anyhow::Result<Keep>> + Send + 'static {
        consumer(self.addr, ctx)
    }
}

/// The text of an ERROR frame: its `message` header and body.
fn error_text(f: &StompFrame) -> String {
    format!(
        "ERROR {}: {}",
        f.header("message").unwrap_or("(no message)"),
        String::from_utf8_lossy(&f.body).trim()
    )
}

async fn connect(addr: SocketAddr, cfg: &PerfConfig) -> anyhow::Result<Conn> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let mut conn = Framed::new(tcp, StompCodec::default());
    conn.send(
        StompFrame::new(Command::Connect)
            .with_header("accept-version", "1.2")
            .with_header("host", cfg.vhost.as_str())
            .with_header("login", cfg.user.as_str())
            .with_header("passcode", cfg.password.as_str())
            .with_header("heart-beat", "0,0"),
    )
    .await?;
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match conn.next().await {
                Some(Ok(Item::HeartBeat)) => continue,
                Some(Ok(Item::Frame(f))) => return Ok(f),
                Some(Err(e)) => return Err(anyhow!(e)),
                None => bail!("{addr} closed the connection during CONNECT"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("{addr}: no CONNECTED within {CONNECT_TIMEOUT:?}"))??;
    match answer.command {
        Command::Connected => {
            let version = answer
                .header("version")
                .and_then(StompVersion::parse)
                .unwrap_or(StompVersion::V1_0);
            conn.codec_mut().set_version(version);
            Ok(conn)
        }
        Command::Error => bail!("{addr}: {}", error_text(&answer)),
        other => bail!("{addr}: expected CONNECTED, got {other}"),
    }
}

/// A SEND (or COMMIT) that asked for a receipt.
struct Awaited {
    receipt: u64,
    /// Sends this receipt confirms (those since the previous receipt).
    covers: u64,
    intended: u64,
    sent: u64,
}

async fn producer(addr: SocketAddr, mut ctx: ProducerCtx) -> anyhow::Result<Keep> {
    let cfg = ctx.run.cfg.clone();
    let conn = connect(addr, &cfg).await?;
    let (mut sink, mut stream) = conn.split();
    if ctx.ready_and_wait().await.is_none() {
        return Ok(Box::new(sink));
    }
    let ctx = Arc::new(ctx);
    let confirms = cfg.receipt_every > 0 || cfg.tx_batch > 0;
    let in_flight = Arc::new(Semaphore::new(cfg.max_in_flight as usize));
    let awaited: Arc<Mutex<VecDeque<Awaited>>> = Arc::default();
    let bye = Arc::new(tokio::sync::Notify::new());

    // The reader: receipts release in-flight room and time the confirm; ERROR ends the run.
    let reader = {
        let (ctx, in_flight, awaited) = (ctx.clone(), in_flight.clone(), awaited.clone());
        let bye = bye.clone();
        let run = ctx.run.clone();
        let read = async move {
            loop {
                let item = tokio::select! {
                    biased;
                    _ = ctx.run.stop_receiving.cancelled() => return Ok(()),
                    _ = ctx.run.abort.cancelled() => return Ok(()),
                    i = stream.next() => i,
                };
                let f = match item {
                    None => bail!("the broker closed the producer's connection"),
                    Some(Err(e)) => return Err(anyhow!(e)),
                    Some(Ok(Item::HeartBeat)) => continue,
                    Some(Ok(Item::Frame(f))) => f,
                };
                match f.command {
                    Command::Receipt if f.header("receipt-id") == Some(BYE_RECEIPT) => {
                        bye.notify_one();
                        return Ok(());
                    }
                    Command::Receipt => {
                        let id: u64 = f
                            .header("receipt-id")
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| anyhow!("RECEIPT with an unknown receipt-id"))?;
                        let mut q = awaited.lock();
                        while q.front().is_some_and(|a| a.receipt <= id) {
                            let a = q.pop_front().expect("front exists");
                            let sample = (a.receipt == id).then_some((a.intended, a.sent));
                            ctx.on_confirmed(a.covers, sample);
                            in_flight.add_permits(a.covers as usize);
                        }
                    }
                    Command::Error => bail!("{}", error_text(&f)),
                    _ => {}
                }
            }
        };
        // A failure ends the run at once (an ERROR may come while the writer waits).
        tokio::spawn(async move {
            if let Err(e) = read.await {
                run.fail(format!("producer: {e:#}"));
            }
        })
    };

    let destination = cfg.stomp_destination();
    let run_id = ctx.run.run_id.to_string();
    let mut unconfirmed = 0u64;
    let mut in_tx = 0u32;
    let mut tx_number = 0u64;
    let mut k = 0u64;
    let mut last = (0u64, 0u64);
    loop {
        // Flush before any wait, so nothing sits in the buffer while we sleep.
        if !ctx.slot_ready() {
            sink.flush().await?;
        }
        let Some(intended) = ctx.next_slot(k).await else {
            break;
        };
        if confirms {
            if in_flight.available_permits() == 0 {
                sink.flush().await?;
            }
            tokio::select! {
                biased;
                _ = ctx.run.abort.cancelled() => break,
                _ = ctx.run.stop_sending.cancelled() => break,
                p = in_flight.acquire() => p?.forget(),
            }
        }
        let sent = ctx.run.clock.now_ns();
        let intended = intended.unwrap_or(sent);
        k += 1;
        let tx_name = if cfg.tx_batch > 0 {
            format!("perf-tx-{tx_number}")
        } else {
            String::new()
        };
        if cfg.tx_batch > 0 && in_tx == 0 {
            sink.feed(StompFrame::new(Command::Begin).with_header("transaction", tx_name.clone()))
                .await?;
        }
        let mut frame = StompFrame::new(Command::Send)
            .with_header("destination", destination.as_str())
            .with_header(P_RUN, run_id.as_str())
            .with_header(P_PRODUCER, ctx.index.to_string())
            .with_header(P_SEQ, k.to_string())
            .with_header(P_INTENDED, intended.to_string())
            .with_header(P_SENT, sent.to_string());
        if cfg.persistent {
            frame = frame.with_header("persistent", "true");
        }
        unconfirmed += 1;
        if cfg.tx_batch > 0 {
            frame = frame.with_header("transaction", tx_name.clone());
        } else if cfg.receipt_every > 0 && k.is_multiple_of(u64::from(cfg.receipt_every)) {
            frame = frame.with_header("receipt", k.to_string());
            awaited.lock().push_back(Awaited {
                receipt: k,
                covers: std::mem::take(&mut unconfirmed),
                intended,
                sent,
            });
        }
        sink.feed(frame.with_body(ctx.run.body.clone())).await?;
        ctx.on_sent(sent);
        last = (intended, sent);
        if cfg.tx_batch > 0 {
            in_tx += 1;
            if in_tx == cfg.tx_batch {
                commit(&mut sink, &awaited, &tx_name, k, &mut unconfirmed, last).await?;
                in_tx = 0;
                tx_number += 1;
            }
        }
    }
    if in_tx > 0 {
        let tx_name = format!("perf-tx-{tx_number}");
        commit(&mut sink, &awaited, &tx_name, k, &mut unconfirmed, last).await?;
    }
    sink.flush().await?;
    // Wait for the receipts asked for (bounded by the drain timeout).
    let wait_until = tokio::time::Instant::now() + cfg.drain_timeout;
    while !awaited.lock().is_empty()
        && !ctx.run.abort.is_cancelled()
        && tokio::time::Instant::now() < wait_until
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if !awaited.lock().is_empty() && !ctx.run.abort.is_cancelled() {
        bail!(
            "{} receipt(s) did not arrive within {:?} after the last send",
            awaited.lock().len(),
            cfg.drain_timeout
        );
    }
    // DISCONNECT with a receipt: once it is answered, the broker has handled every frame before
    // it, so a late subscriber cannot overtake the last sends (and nothing is left in a buffer).
    sink.send(StompFrame::new(Command::Disconnect).with_header("receipt", BYE_RECEIPT))
        .await?;
    tokio::select! {
        _ = ctx.run.abort.cancelled() => {}
        _ = bye.notified() => {}
        _ = tokio::time::sleep(cfg.drain_timeout) => bail!(
            "no RECEIPT for DISCONNECT within {:?}", cfg.drain_timeout
        ),
    }
    Ok(Box::new((sink, WatchOnDrop(reader))))
}

/// Aborts the reader when the run drops its connections.
struct WatchOnDrop(tokio::task::JoinHandle<()>);

impl Drop for WatchOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn commit(
    sink: &mut futures::stream::SplitSink<Conn, StompFrame>,
    awaited: &Mutex<VecDeque<Awaited>>,
    tx_name: &str,
    k: u64,
    unconfirmed: &mut u64,
    (intended, sent): (u64, u64),
) -> anyhow::Result<()> {
    awaited.lock().push_back(Awaited {
        receipt: k,
        covers: std::mem::take(unconfirmed),
        intended,
        sent,
    });
    sink.feed(
        StompFrame::new(Command::Commit)
            .with_header("transaction", tx_name)
            .with_header("receipt", k.to_string()),
    )
    .await?;
    Ok(())
}

async fn consumer(addr: SocketAddr, ctx: ConsumerCtx) -> anyhow::Result<Keep> {
    let cfg = ctx.run.cfg.clone();
    let mut conn = connect(addr, &cfg).await?;
    let ack = match cfg.ack {
        Ack::Auto => "auto",
        Ack::Client => "client",
        Ack::Individual => "client-individual",
        Ack::DupsOk => bail!("dups-ok has no STOMP equivalent"),
    };
    let prefetch = cfg.prefetch.to_string();
    conn.send(
        StompFrame::new(Command::Subscribe)
            .with_header("id", "0")
            .with_header("destination", cfg.stomp_destination())
            .with_header("ack", ack)
            .with_header("activemq.prefetchSize", prefetch.as_str())
            .with_header("prefetch-count", prefetch.as_str())
            .with_header("receipt", SUBSCRIPTION_RECEIPT),
    )
    .await?;
    let mut subscribed = false;
    let mut since_ack = 0u32;
    let mut unflushed = false;
    let header_long = |f: &StompFrame, n: &str| f.header(n).and_then(|v| v.parse::<i64>().ok());
    loop {
        if ctx.run.stop_receiving.is_cancelled() || ctx.run.abort.is_cancelled() {
            break;
        }
        // Take what is already decoded first; flush our acks only before waiting for more.
        let item = match conn.next().now_or_never() {
            Some(i) => i,
            None => {
                if unflushed {
                    SinkExt::<StompFrame>::flush(&mut conn).await?;
                    unflushed = false;
                }
                tokio::select! {
                    biased;
                    _ = ctx.run.stop_receiving.cancelled() => break,
                    _ = ctx.run.abort.cancelled() => break,
                    i = conn.next() => i,
                }
            }
        };
        let f = match item {
            None => bail!("the broker closed the consumer's connection"),
            Some(Err(e)) => return Err(anyhow!(e)),
            Some(Ok(Item::HeartBeat)) => continue,
            Some(Ok(Item::Frame(f))) => f,
        };
        match f.command {
            Command::Message => {
                let redelivered = f.header("redelivered") == Some("true");
                ctx.on_message(parse_marks(|n| header_long(&f, n)), redelivered);
                let ack_now = match cfg.ack {
                    Ack::Client => {
                        since_ack += 1;
                        since_ack >= cfg.ack_every
                    }
                    Ack::Individual => true,
                    _ => false,
                };
                if ack_now {
                    since_ack = 0;
                    let id = f
                        .header("ack")
                        .ok_or_else(|| anyhow!("MESSAGE without an ack header"))?;
                    conn.feed(StompFrame::new(Command::Ack).with_header("id", id))
                        .await?;
                    unflushed = true;
                }
            }
            Command::Receipt
                if !subscribed && f.header("receipt-id") == Some(SUBSCRIPTION_RECEIPT) =>
            {
                subscribed = true;
                ctx.ready();
            }
            Command::Error => bail!("{}", error_text(&f)),
            _ => {}
        }
    }
    Ok(Box::new(conn))
}
