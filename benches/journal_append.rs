//! Journal append throughput (group commit) and recovery time.
//!
//! Each message is an `AddMessage` with a 1 KiB body plus an `AddRef`. Producers submit appends
//! of `batch` messages and keep `window` appends in flight (pipelined sends); `p4` = 4 producer
//! threads. After each case a line reports messages per batch, fsyncs/s, msg/s and where the
//! writer thread spent its time. The recovery group writes 1M messages (override with
//! `TANDEM_BENCH_RECOVERY_MSGS`) and times `Journal::open` on them.
//!
//! ```text
//! cargo bench --bench journal_append                    # everything (about 3 minutes)
//! cargo bench --bench journal_append -- journal_append  # appends only
//! ```
//!
//! Figures from 2026-11-21 on the shared 2-vCPU VM (local ext4 disk, other engineers compiling
//! and fuzzing at the same time, so they vary by 2x between runs; two runs shown, load average
//! about 2.5 and about 5):
//!
//! | case                     | msg/s (calm / loaded) | msgs per batch | fsyncs/s    |
//! |--------------------------|-----------------------|----------------|-------------|
//! | p1, 1 msg/append, no pipelining | 3.3k / 0.2k    | 1              | 3346 / 219  |
//! | p1, b100, w8, sync 0     | 253k / 109k           | 621 / 692      | 408 / 158   |
//! | p4, b100, w8, sync 0     | 211k / 134k           | 2740 / 2621    | 77 / 51     |
//! | p1, b100, w8, sync +3 ms | 127k / 48k            | 717 / 562      | 178 / 85    |
//! | p4, b100, w8, sync +3 ms | 193k / 137k           | 2711 / 2152    | 71 / 64     |
//! | recovery, 1M live msgs   | open 2.0 s / 2.5 s wall, 2.1 s / 2.0 s CPU, 1015 MiB in 17 segments |
//!
//! With one producer the batch size is bounded by what it has in flight (8 × 100 messages), so
//! its rate is that over the sync latency; with four, the writer thread's `write` (copying into
//! the page cache) and the sync take about equal time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tandem_broker::journal::{Journal, JournalOptions, Record};

const BODY: usize = 1024;

fn message(id: u64, body: &Bytes) -> [Record; 2] {
    [
        Record::AddMessage {
            msg_id: id,
            encoded: body.clone(),
        },
        Record::AddRef {
            msg_id: id,
            queue: "bench.queue".into(),
        },
    ]
}

struct Case {
    producers: u64,
    batch: u64,
    window: usize,
    sync_delay: Duration,
}

/// Runs `appends` appends per producer; returns the wall time.
fn run(j: &Journal, case: &Case, appends: u64, next_id: &mut u64, body: &Bytes) -> Duration {
    let base = *next_id;
    *next_id += case.producers * appends * case.batch;
    let start = Instant::now();
    std::thread::scope(|s| {
        for p in 0..case.producers {
            s.spawn(move || {
                let mut id = base + p * appends * case.batch;
                let mut inflight = VecDeque::with_capacity(case.window);
                for _ in 0..appends {
                    let mut records = Vec::with_capacity(2 * case.batch as usize);
                    for _ in 0..case.batch {
                        id += 1;
                        records.extend(message(id, body));
                    }
                    if inflight.len() == case.window {
                        let c: tandem_broker::journal::Completion = inflight.pop_front().unwrap();
                        c.wait().unwrap();
                    }
                    inflight.push_back(j.append(records).unwrap());
                }
                for c in inflight {
                    c.wait().unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn append(c: &mut Criterion) {
    let body = Bytes::from(vec![0x5a; BODY]);
    let cases = [
        Case {
            producers: 1,
            batch: 1,
            window: 1,
            sync_delay: Duration::ZERO,
        },
        Case {
            producers: 1,
            batch: 100,
            window: 8,
            sync_delay: Duration::ZERO,
        },
        Case {
            producers: 4,
            batch: 100,
            window: 8,
            sync_delay: Duration::ZERO,
        },
        Case {
            producers: 1,
            batch: 100,
            window: 8,
            sync_delay: Duration::from_millis(3),
        },
        Case {
            producers: 4,
            batch: 100,
            window: 8,
            sync_delay: Duration::from_millis(3),
        },
    ];
    let mut g = c.benchmark_group("journal_append");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for case in &cases {
        let name = format!(
            "p{}_b{}_w{}/sync{}ms",
            case.producers,
            case.batch,
            case.window,
            case.sync_delay.as_millis()
        );
        let dir = tempfile::tempdir().unwrap();
        let mut o = JournalOptions::new(1);
        o.sync_delay = case.sync_delay;
        let (j, _) = Journal::open(dir.path(), o).unwrap();
        let before = j.stats();
        let mut busy = Duration::ZERO;
        let mut next_id = 0;
        g.throughput(Throughput::Elements(case.producers * case.batch));
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter_custom(|iters| {
                let t = run(&j, case, iters, &mut next_id, &body);
                busy += t;
                t
            })
        });
        let s = j.stats();
        let batches = s.batches - before.batches;
        let fsyncs = s.fsyncs - before.fsyncs;
        let msgs = (s.records - before.records) / 2;
        eprintln!(
            "journal_append/{name}: {msgs} msgs in {batches} batches, avg {:.1} msgs/batch, \
             {:.0} fsyncs/s, {:.0} msg/s, {:.0} MiB/s, writer: {:?} in write, {:?} in sync, \
             over {:?} measured",
            msgs as f64 / batches.max(1) as f64,
            fsyncs as f64 / busy.as_secs_f64(),
            msgs as f64 / busy.as_secs_f64(),
            (s.bytes - before.bytes) as f64 / busy.as_secs_f64() / (1 << 20) as f64,
            s.write_time - before.write_time,
            s.sync_time - before.sync_time,
            busy,
        );
        drop(j);
    }
    g.finish();
}

fn recovery(c: &mut Criterion) {
    let n: u64 = std::env::var("TANDEM_BENCH_RECOVERY_MSGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let body = Bytes::from(vec![0x5a; BODY]);
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = Journal::open(dir.path(), JournalOptions::new(1)).unwrap();
        let case = Case {
            producers: 4,
            batch: 1000,
            window: 4,
            sync_delay: Duration::ZERO,
        };
        let mut next_id = 0;
        let t = run(&j, &case, n / 4000, &mut next_id, &body);
        eprintln!("journal_recovery: wrote {n} msgs in {t:?}");
    }
    let mut g = c.benchmark_group("journal_recovery");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(n));
    g.bench_function(BenchmarkId::from_parameter(format!("{n}_msgs_1KiB")), |b| {
        b.iter(|| {
            let (j, r) = Journal::open(dir.path(), JournalOptions::new(1)).unwrap();
            assert_eq!(r.messages.len() as u64, n);
            let scan = r.report.elapsed;
            drop(j);
            (r, scan)
        })
    });
    g.finish();
    let cpu = process_cpu_time();
    let t = Instant::now();
    let (_j, r) = Journal::open(dir.path(), JournalOptions::new(1)).unwrap();
    eprintln!(
        "journal_recovery: open {:?} wall, {:?} CPU (all threads), scan {:?}, {} segments, \
         {} MiB, {} messages",
        t.elapsed(),
        process_cpu_time() - cpu,
        r.report.elapsed,
        r.report.segments,
        r.report.bytes >> 20,
        r.messages.len()
    );
}

/// User + system CPU time of this process so far (Linux `/proc/self/stat`, 100 Hz ticks): on a
/// shared, loaded machine it says more than wall time.
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that closes the command name: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

criterion_group!(benches, append, recovery);
criterion_main!(benches);
