//! Latency histograms (HDR, nanoseconds, 3 significant digits), the coordinated-omission rule,
//! process CPU readings, and the report (table or JSON).
//!
//! **Coordinated omission.** A closed-loop load tool that waits for a slow broker sends less, and
//! a latency measured from the moment it finally sent hides that wait. When a rate is set, every
//! message has an intended send time ([`super::pacing::Schedule`]); the corrected latency runs from
//! it, the uncorrected one from the actual send. Both are kept; without a rate they are the same
//! thing and only one is reported.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::accounting::Summary;

/// Highest latency recorded exactly: an hour, in nanoseconds (larger values saturate).
const MAX_NS: u64 = 3_600_000_000_000;

/// One latency distribution.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_NS, 3).expect("static bounds are valid"),
        }
    }
}

impl Latency {
    /// Records `end - start` (nanoseconds on the run's clock); a negative span (clock skew between
    /// processes, impossible on one monotonic clock) is recorded as the smallest value.
    pub fn record_span(&mut self, start_ns: u64, end_ns: u64) {
        self.hist
            .saturating_record(end_ns.saturating_sub(start_ns).max(1));
    }

    pub fn add(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn reset(&mut self) {
        self.hist.reset();
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// A quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let us = |v: u64| (v as f64 / 1000.0 * 10.0).round() / 10.0;
        Some(LatencySummary {
            count: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: us(self.hist.mean() as u64),
            p50_us: us(self.hist.value_at_quantile(0.50)),
            p90_us: us(self.hist.value_at_quantile(0.90)),
            p99_us: us(self.hist.value_at_quantile(0.99)),
            p999_us: us(self.hist.value_at_quantile(0.999)),
            max_us: us(self.hist.max()),
        })
    }
}

/// Percentiles of one histogram, in microseconds (0.1 µs resolution).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// The two views of one latency: from the intended send time (coordinated omission corrected) and
/// from the actual one. Unpaced runs have no intended time: both record from the actual send.
#[derive(Debug, Clone, Default)]
pub struct LatencyPair {
    pub corrected: Latency,
    pub uncorrected: Latency,
}

impl LatencyPair {
    pub fn record(&mut self, intended_ns: u64, sent_ns: u64, end_ns: u64) {
        self.corrected.record_span(intended_ns, end_ns);
        self.uncorrected.record_span(sent_ns, end_ns);
    }

    pub fn add(&mut self, other: &LatencyPair) {
        self.corrected.add(&other.corrected);
        self.uncorrected.add(&other.uncorrected);
    }
}

/// CPU time and disk writes of one process, from `/proc/PID/stat` and `/proc/PID/io`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    /// Bytes this process caused to be written to storage (`write_bytes`), if readable.
    pub write_bytes: Option<u64>,
}

/// Linux reports CPU time in USER_HZ ticks, which is 100 on every architecture's user ABI.
pub const TICKS_PER_SEC: f64 = 100.0;

impl ProcSample {
    /// `pid` `None`: this process.
    pub fn read(pid: Option<u32>) -> Option<ProcSample> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_string(),
        };
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        let cpu_ticks = parse_stat_cpu(&stat)?;
        let write_bytes = std::fs::read_to_string(format!("{dir}/io"))
            .ok()
            .and_then(|io| parse_io_write_bytes(&io));
        Some(ProcSample {
            cpu_ticks,
            write_bytes,
        })
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state): utime is the 12th field from here, stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub fn parse_io_write_bytes(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU used by one process over the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuReport {
    pub pid: Option<u32>,
    pub cpu_s: f64,
    /// CPU microseconds per message received (per message sent when nothing consumes).
    pub us_per_msg: Option<f64>,
    /// Bytes written to storage over the window (`/proc/PID/io`), when readable.
    pub disk_write_bytes: Option<u64>,
}

impl CpuReport {
    pub fn between(
        pid: Option<u32>,
        before: ProcSample,
        after: ProcSample,
        messages: u64,
    ) -> CpuReport {
        let cpu_s = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / TICKS_PER_SEC;
        CpuReport {
            pid,
            cpu_s,
            us_per_msg: (messages > 0).then(|| round2(cpu_s * 1e6 / messages as f64)),
            disk_write_bytes: match (before.write_bytes, after.write_bytes) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b)),
                _ => None,
            },
        }
    }
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// What `tandem perf` prints (`--json`: exactly this object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub protocol: &'static str,
    pub destination: String,
    pub producers: u32,
    pub consumers: u32,
    pub message_size: usize,
    pub persistent: bool,
    pub ack_mode: &'static str,
    pub tx_batch: u32,
    /// Target rate in msg/s over all producers; `null`: unpaced.
    pub rate: Option<u64>,
    pub duration_s: Option<f64>,
    pub count: Option<u64>,
    pub warmup_s: f64,
    pub max_in_flight: u32,
    /// STOMP only: a RECEIPT is asked for on every Nth SEND.
    pub receipt_every: Option<u32>,
    pub late_consumers: bool,
    /// Messages sent (all of them, warm-up included).
    pub sent: u64,
    /// Sends the broker confirmed (persistent native sends; STOMP receipts cover the sends before
    /// them). `null` when nothing is confirmed (non-persistent native sends, STOMP without receipts).
    pub confirmed: Option<u64>,
    /// Deliveries the consumers received (all, warm-up included; on a topic, each subscriber's).
    pub received: u64,
    /// Deliveries that should have arrived: sent (queue) or sent × consumers (topic).
    pub expected: u64,
    /// The measured window: from the end of warm-up to the end of sending (send rate) and to the
    /// last delivery (receive rate).
    pub send_window_s: f64,
    pub receive_window_s: f64,
    pub send_rate: f64,
    pub receive_rate: f64,
    /// Whether consumers kept up: received within the drain timeout after sending ended.
    pub drained: bool,
    pub accounting: Option<Summary>,
    /// End-to-end latency (send → receive), from the intended send time when paced.
    pub latency_e2e: Option<LatencySummary>,
    /// The same from the actual send time (only when paced).
    pub latency_e2e_uncorrected: Option<LatencySummary>,
    /// Send → confirm (receipt), from the intended send time when paced.
    pub latency_confirm: Option<LatencySummary>,
    pub latency_confirm_uncorrected: Option<LatencySummary>,
    /// This process (the load tool; with --embedded also the broker).
    pub cpu_tool: Option<CpuReport>,
    /// The process named by --broker-pid.
    pub cpu_broker: Option<CpuReport>,
    pub errors: Vec<String>,
    /// 0 ok, 1 run failed, 3 accounting failed (see --help).
    pub exit_code: i32,
    pub ok: bool,
}

impl Report {
    /// The human form: one block of `key  value` lines.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            out.push_str(&format!("{k:<26} {v}\n"));
        };
        row("target", format!("{} ({})", self.target, self.protocol));
        row(
            "load",
            format!(
                "{} producer(s) → {} → {} consumer(s), {} B, {}, ack {}{}",
                self.producers,
                self.destination,
                self.consumers,
                self.message_size,
                if self.persistent {
                    "persistent"
                } else {
                    "non-persistent"
                },
                self.ack_mode,
                if self.tx_batch > 0 {
                    format!(", tx batch {}", self.tx_batch)
                } else {
                    String::new()
                }
            ),
        );
        row(
            "target rate",
            self.rate.map_or("unpaced".into(), |r| format!("{r} msg/s")),
        );
        row(
            "sent / confirmed",
            format!(
                "{} / {}",
                self.sent,
                self.confirmed.map_or("-".into(), |c| c.to_string())
            ),
        );
        row(
            "received / expected",
            format!("{} / {}", self.received, self.expected),
        );
        row(
            "send rate",
            format!(
                "{:.0} msg/s over {:.2}s",
                self.send_rate, self.send_window_s
            ),
        );
        row(
            "receive rate",
            format!(
                "{:.0} msg/s over {:.2}s",
                self.receive_rate, self.receive_window_s
            ),
        );
        let lat = |l: &Option<LatencySummary>| match l {
            None => "-".to_string(),
            Some(l) => format!(
                "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1} µs  (n={})",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
            ),
        };
        let paced = self.rate.is_some();
        row(
            if paced {
                "end-to-end (from intended)"
            } else {
                "end-to-end"
            },
            lat(&self.latency_e2e),
        );
        if paced {
            row(
                "end-to-end (from actual)",
                lat(&self.latency_e2e_uncorrected),
            );
        }
        row(
            if paced {
                "confirm (from intended)"
            } else {
                "send → confirm"
            },
            lat(&self.latency_confirm),
        );
        if paced {
            row(
                "confirm (from actual)",
                lat(&self.latency_confirm_uncorrected),
            );
        }
        let cpu = |c: &Option<CpuReport>| match c {
            None => "-".to_string(),
            Some(c) => format!(
                "{:.2}s, {} µs/msg{}",
                c.cpu_s,
                c.us_per_msg.map_or("-".into(), |u| format!("{u:.2}")),
                c.disk_write_bytes
                    .map_or(String::new(), |b| format!(", {b} B written"))
            ),
        };
        row("cpu (this process)", cpu(&self.cpu_tool));
        if self.cpu_broker.is_some() {
            row("cpu (broker)", cpu(&self.cpu_broker));
        }
        match &self.accounting {
            None => row("accounting", "not checked (no consumers)".into()),
            Some(a) => {
                row(
                    "accounting",
                    format!(
                        "missing {}  duplicates {}  redelivered dups {}  out of order {}  unexpected {}",
                        a.missing,
                        a.duplicates,
                        a.redelivered_duplicates,
                        a.out_of_order,
                        a.unexpected
                    ),
                );
                for p in a
                    .per_producer
                    .iter()
                    .filter(|p| p.missing > 0 || p.duplicates > 0)
                {
                    row(
                        &format!("  producer {}", p.producer),
                        format!(
                            "sent {} received {} missing {} (first: {:?}) duplicates {}",
                            p.sent, p.received, p.missing, p.first_missing, p.duplicates
                        ),
                    );
                }
            }
        }
        for e in &self.errors {
            row("error", e.clone());
        }
        row(
            "result",
            if self.ok {
                "OK".into()
            } else {
                format!("FAILED (exit {})", self.exit_code)
            },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrected_latency_includes_the_wait_a_stall_caused() {
        // Paced at 1 msg/ms; the broker stalls 100 ms at t=0. A closed-loop tool sends message 0
        // at 0 and, blocked, the other 99 only at 100 ms, each answered 0.1 ms later.
        let mut pair = LatencyPair::default();
        let ms = 1_000_000u64;
        pair.record(0, 0, 100 * ms);
        for k in 1..100u64 {
            let intended = k * ms;
            let sent = 100 * ms;
            pair.record(intended, sent, sent + ms / 10);
        }
        let c = pair.corrected.summary().unwrap();
        let u = pair.uncorrected.summary().unwrap();
        // Uncorrected: one slow message, the rest 0.1 ms: the stall is invisible below p99.
        assert!(u.p90_us < 200.0, "{u:?}");
        // Corrected: message k waited 100-k ms; half of them waited 50 ms or more.
        assert!(c.p50_us > 45_000.0 && c.p50_us < 55_000.0, "{c:?}");
        assert!(c.p90_us > 85_000.0, "{c:?}");
        assert_eq!(c.count, 100);
    }

    #[test]
    fn percentiles_in_microseconds() {
        let mut l = Latency::default();
        for us in 1..=1000u64 {
            l.record_span(0, us * 1000);
        }
        let s = l.summary().unwrap();
        assert!((s.p50_us - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() <= 1.0, "{s:?}");
        assert_eq!(Latency::default().summary(), None);
        // Negative spans and huge ones neither panic nor vanish.
        l.record_span(10, 5);
        l.record_span(0, u64::MAX);
        assert_eq!(l.count(), 1002);
    }

    #[test]
    fn proc_stat_fields() {
        // A command name with spaces and parentheses must not shift the fields.
        let line = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 1234 567 0 0 20 0 1 0 100 200 300";
        assert_eq!(parse_stat_cpu(line), Some(1234 + 567));
        assert_eq!(parse_stat_cpu("garbage"), None);
        let io = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 4096\n";
        assert_eq!(parse_io_write_bytes(io), Some(4096));
        let me = ProcSample::read(None).expect("/proc/self/stat is readable on Linux");
        let r = CpuReport::between(None, ProcSample::default(), me, 1000);
        assert!(r.cpu_s >= 0.0);
    }

    #[test]
    fn cpu_per_message() {
        let before = ProcSample {
            cpu_ticks: 100,
            write_bytes: Some(10),
        };
        let after = ProcSample {
            cpu_ticks: 350,
            write_bytes: Some(1010),
        };
        let r = CpuReport::between(Some(7), before, after, 100_000);
        assert_eq!(r.cpu_s, 2.5);
        assert_eq!(r.us_per_msg, Some(25.0));
        assert_eq!(r.disk_write_bytes, Some(1000));
        assert_eq!(CpuReport::between(None, before, after, 0).us_per_msg, None);
    }
}
