//! One run: open the consumers, open the producers, start them together, pace them, stop them at
//! the deadline or count, wait for the consumers to drain, and build the [`Report`].
//!
//! Time is one monotonic clock ([`Clock`], nanoseconds since the run began) shared by producers
//! and consumers: they live in this process, so a message's send time (a property) and its
//! receive time compare exactly, with no clock skew.
//!
//! Every task is bounded: sending stops at `--duration` or `--count`; draining stops once
//! everything expected arrived or nothing arrived for `--drain-timeout`; a failing task cancels
//! the whole run.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::accounting::{Tracker, summarize_all};
use super::config::PerfConfig;
use super::pacing::Schedule;
use super::stats::{CpuReport, Latency, LatencyPair, ProcSample, Report, round2};

/// Message properties (STOMP headers) that carry the accounting and timing marks. Valid JMS
/// identifiers, so every broker keeps them as they are.
pub const P_RUN: &str = "perf_run";
pub const P_PRODUCER: &str = "perf_p";
pub const P_SEQ: &str = "perf_seq";
pub const P_INTENDED: &str = "perf_ts";
pub const P_SENT: &str = "perf_sent";

/// Nanoseconds since the run began.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn instant(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns)
    }
}

/// What a task hands back to keep its connection open until the run ends.
pub type Keep = Box<dyn Any + Send>;

/// Shared by every task of the run.
pub struct RunCtx {
    pub cfg: Arc<PerfConfig>,
    pub clock: Clock,
    pub run_id: i64,
    pub body: Bytes,
    /// Sending ends (deadline reached).
    pub stop_sending: CancellationToken,
    /// Consumers end (after the drain).
    pub stop_receiving: CancellationToken,
    /// Something failed: everything ends.
    pub abort: CancellationToken,
    errors: Mutex<Vec<String>>,
    /// Offset of the end of warm-up (set when sending starts).
    warm_end_ns: AtomicU64,
}

impl RunCtx {
    pub fn warm_end_ns(&self) -> u64 {
        self.warm_end_ns.load(Ordering::Relaxed)
    }

    pub fn fail(&self, what: String) {
        self.errors.lock().push(what);
        self.abort.cancel();
    }
}

#[derive(Default)]
pub struct ProducerStats {
    pub sent: AtomicU64,
    pub sent_measured: AtomicU64,
    pub confirmed: AtomicU64,
    pub last_send_ns: AtomicU64,
    pub confirm: Mutex<LatencyPair>,
}

/// One producer's view of the run.
pub struct ProducerCtx {
    pub run: Arc<RunCtx>,
    pub index: u32,
    pub limit: u64,
    pub stats: Arc<ProducerStats>,
    schedule: Option<Schedule>,
    pacer: Option<Arc<Semaphore>>,
    ready: mpsc::UnboundedSender<()>,
    start: watch::Receiver<Option<u64>>,
    t0: u64,
}

impl ProducerCtx {
    /// Reports the connection ready and waits for the common start; `None` if the run ended first.
    pub async fn ready_and_wait(&mut self) -> Option<()> {
        let _ = self.ready.send(());
        let mut start = self.start.clone();
        let t0 = tokio::select! {
            biased;
            _ = self.run.abort.cancelled() => return None,
            r = start.wait_for(Option::is_some) => (*r.ok()?)?,
        };
        self.t0 = t0;
        // Everyone starts at t0 (the end of warm-up is measured from it).
        tokio::select! {
            biased;
            _ = self.run.abort.cancelled() => return None,
            _ = tokio::time::sleep_until(self.run.clock.instant(t0).into()) => {}
        }
        Some(())
    }

    /// Waits until message `k` (from 0) may go. `None`: sending is over. `Some(intended)`: the
    /// intended send time when paced, else `None` (the actual send time is the intended one).
    pub async fn next_slot(&self, k: u64) -> Option<Option<u64>> {
        if k >= self.limit || self.run.stop_sending.is_cancelled() {
            return None;
        }
        match (&self.pacer, &self.schedule) {
            (Some(pacer), Some(s)) => {
                let permit = tokio::select! {
                    biased;
                    _ = self.run.stop_sending.cancelled() => return None,
                    p = pacer.acquire() => p.ok()?,
                };
                permit.forget();
                Some(Some(self.t0 + s.intended_ns(self.index, k)))
            }
            _ => Some(None),
        }
    }

    /// Whether the next slot is free now (so a caller can flush before it waits).
    pub fn slot_ready(&self) -> bool {
        self.pacer
            .as_ref()
            .is_none_or(|p| p.available_permits() > 0)
    }

    pub fn on_sent(&self, sent_ns: u64) {
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        if sent_ns >= self.run.warm_end_ns() {
            self.stats.sent_measured.fetch_add(1, Ordering::Relaxed);
        }
        self.stats
            .last_send_ns
            .fetch_max(sent_ns, Ordering::Relaxed);
    }

    /// `n` sends confirmed; `sample`: (intended, sent) of the one the confirm names, if timed.
    pub fn on_confirmed(&self, n: u64, sample: Option<(u64, u64)>) {
        self.stats.confirmed.fetch_add(n, Ordering::Relaxed);
        if let Some((intended, sent)) = sample
            && intended >= self.run.warm_end_ns()
        {
            let now = self.run.clock.now_ns();
            self.stats.confirm.lock().record(intended, sent, now);
        }
    }
}

/// The marks a consumer reads back from a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    pub run: i64,
    pub producer: u32,
    pub seq: u64,
    pub intended: u64,
    pub sent: u64,
}

pub struct Recorder {
    pub tracker: Tracker,
    pub e2e: LatencyPair,
    /// Since the last progress line.
    pub interval: Latency,
}

pub struct ConsumerStats {
    pub received: AtomicU64,
    pub received_measured: AtomicU64,
    pub foreign: AtomicU64,
    pub last_receive_ns: AtomicU64,
    pub rec: Mutex<Recorder>,
}

/// One consumer's view of the run.
pub struct ConsumerCtx {
    pub run: Arc<RunCtx>,
    pub stats: Arc<ConsumerStats>,
    ready: mpsc::UnboundedSender<()>,
}

impl ConsumerCtx {
    /// The subscription is in place.
    pub fn ready(&self) {
        let _ = self.ready.send(());
    }

    /// Records one delivery. Messages without our run's marks (left over from another run, or
    /// from another tool) are counted as foreign and otherwise ignored.
    pub fn on_message(&self, marks: Option<Marks>, redelivered: bool) {
        let now = self.run.clock.now_ns();
        let Some(m) = marks.filter(|m| m.run == self.run.run_id) else {
            self.stats.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let warm_end = self.run.warm_end_ns();
        {
            let mut r = self.stats.rec.lock();
            r.tracker.record(m.producer, m.seq, redelivered);
            if m.intended >= warm_end {
                r.e2e.record(m.intended, m.sent, now);
                r.interval.record_span(m.intended, now);
            }
        }
        if now >= warm_end {
            self.stats.received_measured.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.last_receive_ns.fetch_max(now, Ordering::Relaxed);
        // Last: the drain loop reads this count and must find the tracker already updated.
        self.stats.received.fetch_add(1, Ordering::Release);
    }
}

/// Parses a mark from a property or header value.
pub fn parse_marks(get: impl Fn(&str) -> Option<i64>) -> Option<Marks> {
    Some(Marks {
        run: get(P_RUN)?,
        producer: u32::try_from(get(P_PRODUCER)?).ok()?,
        seq: u64::try_from(get(P_SEQ)?).ok()?,
        intended: u64::try_from(get(P_INTENDED)?).ok()?,
        sent: u64::try_from(get(P_SENT)?).ok()?,
    })
}

/// How the tasks reach the broker.
pub trait Driver: Send + Sync + 'static {
    fn producer(
        &self,
        ctx: ProducerCtx,
    ) -> impl Future<Output = anyhow::Result<Keep>> + Send + 'static;
    fn consumer(
        &self,
        ctx: ConsumerCtx,
    ) -> impl Future<Output = anyhow::Result<Keep>> + Send + 'static;
}

fn run_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() >> 1) as i64
}

/// Runs the load and returns the report (never panics on broker trouble: errors go in the report).
pub async fn execute<D: Driver>(cfg: PerfConfig, driver: D) -> Report {
    let cfg = Arc::new(cfg);
    let clock = Clock {
        base: Instant::now(),
    };
    let run = Arc::new(RunCtx {
        cfg: cfg.clone(),
        clock,
        run_id: run_id(),
        body: Bytes::from(vec![b'x'; cfg.size]),
        stop_sending: CancellationToken::new(),
        stop_receiving: CancellationToken::new(),
        abort: CancellationToken::new(),
        errors: Mutex::new(Vec::new()),
        warm_end_ns: AtomicU64::new(u64::MAX),
    });
    let driver = Arc::new(driver);
    let mut keep: Vec<Keep> = Vec::new();

    // Consumers first, so that nothing sent is missed (unless --late-consumers asks for that).
    let consumer_stats: Vec<Arc<ConsumerStats>> = (0..cfg.consumers)
        .map(|_| {
            Arc::new(ConsumerStats {
                received: AtomicU64::new(0),
                received_measured: AtomicU64::new(0),
                foreign: AtomicU64::new(0),
                last_receive_ns: AtomicU64::new(0),
                rec: Mutex::new(Recorder {
                    tracker: Tracker::new(cfg.producers),
                    e2e: LatencyPair::default(),
                    interval: Latency::default(),
                }),
            })
        })
        .collect();
    let mut consumer_tasks = Vec::new();
    let spawn_consumers = |tasks: &mut Vec<_>| {
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        for stats in &consumer_stats {
            let ctx = ConsumerCtx {
                run: run.clone(),
                stats: stats.clone(),
                ready: ready_tx.clone(),
            };
            let fut = driver.consumer(ctx);
            let run = run.clone();
            tasks.push(tokio::spawn(async move {
                match fut.await {
                    Ok(k) => Some(k),
                    Err(e) => {
                        run.fail(format!("consumer: {e:#}"));
                        None
                    }
                }
            }));
        }
        ready_rx
    };
    if !cfg.late_consumers {
        let ready = spawn_consumers(&mut consumer_tasks);
        wait_ready(&run, ready, cfg.consumers as usize).await;
    }

    // Producers: connect, then start together.
    let producer_stats: Vec<Arc<ProducerStats>> = (0..cfg.producers)
        .map(|_| Arc::new(ProducerStats::default()))
        .collect();
    let schedule = cfg.rate.map(|r| Schedule::new(r, cfg.producers));
    let pacers: Vec<Arc<Semaphore>> = (0..cfg.producers)
        .map(|_| Arc::new(Semaphore::new(0)))
        .collect();
    let (start_tx, start_rx) = watch::channel(None);
    let (ready_tx, ready_rx) = mpsc::unbounded_channel();
    let mut producer_tasks = Vec::new();
    for p in 0..cfg.producers {
        let ctx = ProducerCtx {
            run: run.clone(),
            index: p,
            limit: cfg.producer_limit(p),
            stats: producer_stats[p as usize].clone(),
            schedule,
            pacer: schedule.map(|_| pacers[p as usize].clone()),
            ready: ready_tx.clone(),
            start: start_rx.clone(),
            t0: 0,
        };
        let fut = driver.producer(ctx);
        let run = run.clone();
        producer_tasks.push(tokio::spawn(async move {
            match fut.await {
                Ok(k) => Some(k),
                Err(e) => {
                    run.fail(format!("producer: {e:#}"));
                    None
                }
            }
        }));
    }
    drop(ready_tx);
    wait_ready(&run, ready_rx, cfg.producers as usize).await;

    let t0 = clock.now_ns() + 1_000_000;
    let warm_end = t0 + cfg.warmup.as_nanos() as u64;
    run.warm_end_ns.store(warm_end, Ordering::Relaxed);
    let tool_start = ProcSample::read(None);
    let broker_start = cfg.broker_pid.and_then(|p| ProcSample::read(Some(p)));
    let samples_at_warm_end = Arc::new(Mutex::new(None));
    {
        let s = samples_at_warm_end.clone();
        let pid = cfg.broker_pid;
        let at = clock.instant(warm_end);
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            *s.lock() = Some((
                ProcSample::read(None),
                pid.and_then(|p| ProcSample::read(Some(p))),
            ));
        });
    }
    let _ = start_tx.send(Some(t0));

    // Pacing runs on its own thread: tokio's timer has millisecond resolution, which at 10k msg/s
    // would bunch ten messages together and show up as up to a millisecond of latency.
    let pacer_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pacer_thread = schedule.map(|s| {
        let pacers = pacers.clone();
        let stop = pacer_stop.clone();
        let limits: Vec<u64> = (0..cfg.producers).map(|p| cfg.producer_limit(p)).collect();
        std::thread::spawn(move || pace(s, clock, t0, &pacers, &limits, &stop))
    });

    // Sending ends at the deadline, at the count, or on failure.
    let deadline = cfg.duration.map(|d| clock.instant(t0) + d);
    let progress = (!cfg.quiet).then(|| {
        tokio::spawn(progress_loop(
            run.clone(),
            producer_stats.clone(),
            consumer_stats.clone(),
            t0,
        ))
    });
    let all_sent = async {
        for t in producer_tasks {
            if let Ok(Some(k)) = t.await {
                keep.push(k);
            }
        }
    };
    match deadline {
        Some(d) => {
            tokio::pin!(all_sent);
            tokio::select! {
                _ = &mut all_sent => {}
                _ = tokio::time::sleep_until(d.into()) => {
                    run.stop_sending.cancel();
                    all_sent.await;
                }
            }
        }
        None => all_sent.await,
    }
    run.stop_sending.cancel();
    pacer_stop.store(true, Ordering::Relaxed);
    if let Some(t) = pacer_thread {
        let _ = t.join();
    }
    let sent: Vec<u64> = producer_stats
        .iter()
        .map(|s| s.sent.load(Ordering::Relaxed))
        .collect();
    let sent_total: u64 = sent.iter().sum();

    if cfg.late_consumers && !run.abort.is_cancelled() {
        let ready = spawn_consumers(&mut consumer_tasks);
        wait_ready(&run, ready, cfg.consumers as usize).await;
    }

    // Drain: until everything expected has arrived, or nothing arrived for the drain timeout.
    let expected = if cfg.consumers == 0 {
        0
    } else if cfg.is_topic() {
        sent_total * u64::from(cfg.consumers)
    } else {
        sent_total
    };
    let received_total = || {
        consumer_stats
            .iter()
            .map(|s| s.received.load(Ordering::Acquire))
            .sum::<u64>()
    };
    let mut drained = true;
    if cfg.consumers > 0 {
        let mut last = received_total();
        let mut last_change = Instant::now();
        loop {
            let now = received_total();
            if now >= expected || run.abort.is_cancelled() {
                break;
            }
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= cfg.drain_timeout {
                drained = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let tool_end = ProcSample::read(None);
    let broker_end = cfg.broker_pid.and_then(|p| ProcSample::read(Some(p)));
    run.stop_receiving.cancel();
    if let Some(p) = progress {
        p.abort();
    }
    for t in consumer_tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Some(k))) => keep.push(k),
            Ok(_) => {}
            Err(_) => run.fail("a consumer did not stop within 10s".into()),
        }
    }
    drop(keep);

    // The report.
    let received = received_total();
    let received_measured: u64 = consumer_stats
        .iter()
        .map(|s| s.received_measured.load(Ordering::Relaxed))
        .sum();
    let sent_measured: u64 = producer_stats
        .iter()
        .map(|s| s.sent_measured.load(Ordering::Relaxed))
        .sum();
    let last_send = producer_stats
        .iter()
        .map(|s| s.last_send_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let last_receive = consumer_stats
        .iter()
        .map(|s| s.last_receive_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
    let send_window_s = secs(warm_end, last_send);
    let receive_window_s = secs(warm_end, last_receive);
    let rate = |n: u64, s: f64| if s > 0.0 { (n as f64 / s).round() } else { 0.0 };

    let mut e2e = LatencyPair::default();
    let mut trackers = Vec::new();
    for s in &consumer_stats {
        let r = s.rec.lock();
        e2e.add(&r.e2e);
        trackers.push(r.tracker.clone());
    }
    let mut confirm = LatencyPair::default();
    for s in &producer_stats {
        confirm.add(&s.confirm.lock());
    }
    let confirmed: u64 = producer_stats
        .iter()
        .map(|s| s.confirmed.load(Ordering::Relaxed))
        .sum();
    let confirms_exist = confirms_exist(&cfg);
    let foreign: u64 = consumer_stats
        .iter()
        .map(|s| s.foreign.load(Ordering::Relaxed))
        .sum();
    let accounting = (cfg.consumers > 0).then(|| summarize_all(&trackers, &sent, cfg.is_topic()));

    let (tool_from, broker_from) = samples_at_warm_end
        .lock()
        .take()
        .unwrap_or((tool_start, broker_start));
    let per = if cfg.consumers > 0 {
        received_measured
    } else {
        sent_measured
    };
    let cpu_tool = match (tool_from, tool_end) {
        (Some(a), Some(b)) => Some(CpuReport::between(None, a, b, per)),
        _ => None,
    };
    let cpu_broker = match (broker_from, broker_end) {
        (Some(a), Some(b)) => Some(CpuReport::between(cfg.broker_pid, a, b, per)),
        _ => None,
    };
    let mut errors = run.errors.lock().clone();
    if foreign > 0 {
        errors.push(format!(
            "{foreign} message(s) without this run's marks were received and ignored"
        ));
    }
    let paced = cfg.rate.is_some();
    let failed_run = run.abort.is_cancelled();
    let failed_accounting = accounting.as_ref().is_some_and(|a| a.failed());
    let exit_code = if failed_run {
        1
    } else if failed_accounting {
        3
    } else {
        0
    };
    Report {
        target: cfg.target.describe(),
        protocol: cfg.target.protocol(),
        destination: cfg.destination_label(),
        producers: cfg.producers,
        consumers: cfg.consumers,
        message_size: cfg.size,
        persistent: cfg.persistent,
        ack_mode: cfg.ack.name(),
        tx_batch: cfg.tx_batch,
        rate: cfg.rate,
        duration_s: cfg.duration.map(|d| d.as_secs_f64()),
        count: cfg.count,
        warmup_s: cfg.warmup.as_secs_f64(),
        max_in_flight: cfg.max_in_flight,
        receipt_every: matches!(cfg.target, super::config::Target::Stomp { .. })
            .then_some(cfg.receipt_every),
        late_consumers: cfg.late_consumers,
        sent: sent_total,
        confirmed: confirms_exist.then_some(confirmed),
        received,
        expected,
        send_window_s: round2(send_window_s),
        receive_window_s: round2(receive_window_s),
        send_rate: rate(sent_measured, send_window_s),
        receive_rate: rate(received_measured, receive_window_s),
        drained,
        accounting,
        latency_e2e: e2e.corrected.summary(),
        latency_e2e_uncorrected: if paced {
            e2e.uncorrected.summary()
        } else {
            None
        },
        latency_confirm: confirm.corrected.summary(),
        latency_confirm_uncorrected: if paced {
            confirm.uncorrected.summary()
        } else {
            None
        },
        cpu_tool,
        cpu_broker,
        errors,
        exit_code,
        ok: exit_code == 0,
    }
}

/// Whether the broker confirms sends in this run: persistent native sends (SendReceipt), STOMP
/// sends with receipts, and transactions (their commits).
fn confirms_exist(cfg: &PerfConfig) -> bool {
    match cfg.target {
        super::config::Target::Stomp { .. } => cfg.receipt_every > 0 || cfg.tx_batch > 0,
        _ => cfg.persistent || cfg.tx_batch > 0,
    }
}

/// Waits until `n` tasks said ready (or the run failed).
async fn wait_ready(run: &RunCtx, mut ready: mpsc::UnboundedReceiver<()>, n: usize) {
    for _ in 0..n {
        tokio::select! {
            biased;
            _ = run.abort.cancelled() => return,
            r = ready.recv() => if r.is_none() { return },
        }
    }
}

/// The pacer thread: hands each producer one permit per message as its intended time arrives.
fn pace(
    s: Schedule,
    clock: Clock,
    t0: u64,
    pacers: &[Arc<Semaphore>],
    limits: &[u64],
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut issued = vec![0u64; pacers.len()];
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now_ns();
        if now < t0 {
            // Nothing is due before the start (message 0 would otherwise go early).
            std::thread::sleep(Duration::from_nanos(t0 - now));
            continue;
        }
        let elapsed = now - t0;
        let mut next = u64::MAX;
        for (p, sem) in pacers.iter().enumerate() {
            let due = s.due(p as u32, elapsed).min(limits[p]);
            if due > issued[p] {
                sem.add_permits((due - issued[p]) as usize);
                issued[p] = due;
            }
            if issued[p] < limits[p] {
                next = next.min(s.intended_ns(p as u32, issued[p]));
            }
        }
        if next == u64::MAX {
            return;
        }
        // Sleep to the next due time, waking at least every 10 ms to see `stop`.
        let wait = next.saturating_sub(clock.now_ns().saturating_sub(t0));
        if wait > 0 {
            std::thread::sleep(Duration::from_nanos(wait.min(10_000_000)));
        }
    }
}

/// One line a second on stderr: rates over the last second, what is unconfirmed, p99.
async fn progress_loop(
    run: Arc<RunCtx>,
    producers: Vec<Arc<ProducerStats>>,
    consumers: Vec<Arc<ConsumerStats>>,
    t0: u64,
) {
    let cfg = &run.cfg;
    let confirms = confirms_exist(cfg);
    let fanout = if cfg.is_topic() {
        u64::from(cfg.consumers)
    } else {
        u64::from(cfg.consumers.min(1))
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_sent, mut last_recv) = (0u64, 0u64);
    let mut interval = Latency::default();
    loop {
        tick.tick().await;
        let sent: u64 = producers
            .iter()
            .map(|s| s.sent.load(Ordering::Relaxed))
            .sum();
        let confirmed: u64 = producers
            .iter()
            .map(|s| s.confirmed.load(Ordering::Relaxed))
            .sum();
        let recv: u64 = consumers
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum();
        interval.reset();
        for c in &consumers {
            let mut r = c.rec.lock();
            interval.add(&r.interval);
            r.interval.reset();
        }
        let p99 = if interval.count() > 0 {
            format!("{:.3} ms", interval.quantile_us(0.99) / 1000.0)
        } else {
            "-".into()
        };
        let elapsed = run.clock.now_ns().saturating_sub(t0) as f64 / 1e9;
        let warm = if run.clock.now_ns() < run.warm_end_ns() {
            " (warm-up)"
        } else {
            ""
        };
        // In flight: sent but not yet confirmed when the protocol confirms, else sent but not
        // yet received (deliveries, for a topic).
        let in_flight = if confirms {
            sent.saturating_sub(confirmed)
        } else {
            (sent * fanout).saturating_sub(recv)
        };
        eprintln!(
            "perf {elapsed:>6.1}s  send {:>8} msg/s  recv {:>8} msg/s  in flight {in_flight:>7}  p99 e2e {p99}{warm}",
            sent - last_sent,
            recv - last_recv,
        );
        last_sent = sent;
        last_recv = recv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_parse_and_refuse_garbage() {
        let vals = [
            (P_RUN, 42i64),
            (P_PRODUCER, 3),
            (P_SEQ, 7),
            (P_INTENDED, 1000),
            (P_SENT, 1001),
        ];
        let get = |n: &str| vals.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
        assert_eq!(
            parse_marks(get),
            Some(Marks {
                run: 42,
                producer: 3,
                seq: 7,
                intended: 1000,
                sent: 1001
            })
        );
        assert_eq!(
            parse_marks(|n| if n == P_SEQ { None } else { get(n) }),
            None
        );
        assert_eq!(
            parse_marks(|n| if n == P_SEQ { Some(-1) } else { get(n) }),
            None
        );
    }
}
