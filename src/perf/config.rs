//! `tandem perf` arguments and their validation: clap parses, [`PerfConfig::from_args`] checks
//! every bound and every combination that could not work (pure: no I/O, no DNS), so a bad run is
//! refused before a single connection is made.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tandem_client::{BrokerUrl, Destination, DestinationKind};

/// Most producers or consumers in one run (each is a connection).
pub const MAX_CLIENTS: u32 = 1000;
/// Largest message body.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;
/// Longest run (warm-up plus measured time).
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Duration when neither `--duration` nor `--count` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "Load generator: producers and consumers against a broker, with rates, HDR latency \
             histograms and exact-once accounting",
    long_about = "Load generator in the manner of Artemis' `perf client` and RabbitMQ's PerfTest.\n\n\
        Targets: --url tcp://HOST:PORT (native protocol), --stomp HOST:PORT (STOMP 1.2: also drives \
        ActiveMQ Classic and RabbitMQ), --embedded (an in-process tandem broker and link).\n\n\
        Every message carries its producer, sequence number and send times as properties, so the \
        consumers count missing, duplicate and out-of-order messages per producer. End-to-end \
        latency is measured from the intended send time when --rate is set (corrected for \
        coordinated omission).\n\n\
        Exit status: 0 ok; 1 the run failed (connection, broker error); 2 invalid arguments; \
        3 messages were missing, or duplicated without being marked redelivered.\n\n\
        Only loopback addresses are accepted unless --allow-remote is given."
)]
pub struct PerfArgs {
    /// Native protocol broker URL, tcp://HOST:PORT.
    #[arg(long, value_name = "URL", group = "target")]
    pub url: Option<String>,
    /// STOMP 1.2 broker address, HOST:PORT (tandem, ActiveMQ Classic, RabbitMQ).
    #[arg(long, value_name = "HOST:PORT", group = "target")]
    pub stomp: Option<String>,
    /// Start a tandem broker in this process and connect through in-process links.
    #[arg(long, group = "target")]
    pub embedded: bool,
    /// Accept non-loopback broker addresses.
    #[arg(long)]
    pub allow_remote: bool,
    /// queue:NAME or topic:NAME.
    #[arg(short, long, default_value = "queue:perf", value_name = "DEST")]
    pub destination: String,
    /// Producers, each on its own connection.
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    pub producers: u32,
    /// Consumers, each on its own connection (0: send only, nothing is checked).
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    pub consumers: u32,
    /// Message body size in bytes.
    #[arg(short, long, default_value_t = 1024, value_name = "BYTES")]
    pub size: usize,
    /// Send persistent messages (default: non-persistent).
    #[arg(long)]
    pub persistent: bool,
    /// Consumer acknowledgement: auto, client, dups-ok (native only), individual.
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub ack: String,
    /// client mode: one cumulative ack every N messages.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub ack_every: u32,
    /// Send in transactions of N messages (STOMP BEGIN/COMMIT; 0: none).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub tx_batch: u32,
    /// Target send rate, messages per second over all producers (default: as fast as possible).
    #[arg(short, long, value_name = "MSG_PER_S")]
    pub rate: Option<u64>,
    /// How long to send, warm-up included (e.g. 10s, 500ms, 2m) [default: 10s unless --count].
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Messages to send over all producers (the run also stops at --duration if given).
    #[arg(short = 'n', long, value_name = "N")]
    pub count: Option<u64>,
    /// Most unconfirmed sends per producer (persistent native sends; STOMP sends with receipts).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub max_in_flight: u32,
    /// STOMP: ask for a RECEIPT on every Nth SEND (0: never).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub receipt_every: u32,
    /// Leave the first part of the run out of rates and histograms (e.g. 2s).
    #[arg(long, default_value = "0s", value_name = "TIME", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Consumer prefetch (credit window).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub prefetch: u32,
    /// After sending ends, wait for the rest while messages keep arriving; give up after this
    /// long without any.
    #[arg(long, default_value = "5s", value_name = "TIME", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Start the consumers only after every producer has finished (a topic then loses
    /// everything: a way to see the accounting fail).
    #[arg(long)]
    pub late_consumers: bool,
    /// Print the result as one JSON object on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also report this process's CPU time (and disk bytes written) over the measured window:
    /// the broker's PID when it runs apart.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// STOMP login.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// STOMP passcode.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// STOMP virtual host (CONNECT `host` header).
    #[arg(long, default_value = "/")]
    pub vhost: String,
}

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `tcp://host:port` through tandem-client.
    Native { url: String, hosts: Vec<String> },
    /// STOMP 1.2 over TCP.
    Stomp { host: String, port: u16 },
    /// An in-process broker.
    Embedded,
}

impl Target {
    /// The host names to check for loopback.
    pub fn hosts(&self) -> Vec<String> {
        match self {
            Target::Native { hosts, .. } => hosts.clone(),
            Target::Stomp { host, .. } => vec![host.clone()],
            Target::Embedded => Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Native { url, .. } => url.clone(),
            Target::Stomp { host, port } => format!("stomp://{host}:{port}"),
            Target::Embedded => "embedded".into(),
        }
    }

    pub fn protocol(&self) -> &'static str {
        match self {
            Target::Stomp { .. } => "stomp",
            _ => "native",
        }
    }
}

/// Consumer acknowledgement mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    Auto,
    Client,
    DupsOk,
    Individual,
}

impl Ack {
    pub fn name(self) -> &'static str {
        match self {
            Ack::Auto => "auto",
            Ack::Client => "client",
            Ack::DupsOk => "dups-ok",
            Ack::Individual => "individual",
        }
    }
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct PerfConfig {
    pub target: Target,
    pub allow_remote: bool,
    pub destination: Destination,
    pub producers: u32,
    pub consumers: u32,
    pub size: usize,
    pub persistent: bool,
    pub ack: Ack,
    pub ack_every: u32,
    pub tx_batch: u32,
    pub rate: Option<u64>,
    /// Sending stops after this long (warm-up included) ...
    pub duration: Option<Duration>,
    /// ... or after this many messages, whichever comes first (at least one of the two is set).
    pub count: Option<u64>,
    pub max_in_flight: u32,
    pub receipt_every: u32,
    pub warmup: Duration,
    pub prefetch: u32,
    pub drain_timeout: Duration,
    pub late_consumers: bool,
    pub json: bool,
    pub quiet: bool,
    pub broker_pid: Option<u32>,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

impl PerfConfig {
    /// Checks the arguments; returns every problem found, one sentence each.
    pub fn from_args(a: &PerfArgs) -> Result<PerfConfig, Vec<String>> {
        let mut errs = Vec::new();
        let target = match (&a.url, &a.stomp, a.embedded) {
            (Some(url), None, false) => match BrokerUrl::parse(url) {
                Ok(BrokerUrl::Tcp(e)) => Some(Target::Native {
                    url: url.clone(),
                    hosts: vec![e.host],
                }),
                Ok(BrokerUrl::Failover { .. }) => {
                    errs.push(format!(
                        "--url {url:?}: failover URLs are not supported by perf; give one tcp://HOST:PORT"
                    ));
                    None
                }
                Err(e) => {
                    errs.push(format!("--url: {e}"));
                    None
                }
            },
            (None, Some(addr), false) => match split_host_port(addr) {
                Some((host, port)) => Some(Target::Stomp { host, port }),
                None => {
                    errs.push(format!(
                        "--stomp {addr:?}: expected HOST:PORT such as 127.0.0.1:61613"
                    ));
                    None
                }
            },
            (None, None, true) => Some(Target::Embedded),
            _ => {
                errs.push("give exactly one of --url, --stomp, --embedded".into());
                None
            }
        };
        let destination = match parse_destination(&a.destination) {
            Ok(d) => Some(d),
            Err(e) => {
                errs.push(e);
                None
            }
        };
        let stomp = matches!(target, Some(Target::Stomp { .. }));
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errs.push(msg);
            }
        };
        check(
            (1..=MAX_CLIENTS).contains(&a.producers),
            format!("--producers must be 1 to {MAX_CLIENTS}"),
        );
        check(
            a.consumers <= MAX_CLIENTS,
            format!("--consumers must be 0 to {MAX_CLIENTS}"),
        );
        check(
            a.size <= MAX_SIZE,
            format!("--size must be at most {MAX_SIZE} bytes"),
        );
        let ack = match a.ack.as_str() {
            "auto" => Some(Ack::Auto),
            "client" => Some(Ack::Client),
            "dups-ok" | "dups_ok" => Some(Ack::DupsOk),
            "individual" | "client-individual" => Some(Ack::Individual),
            other => {
                errs.push(format!(
                    "--ack {other:?}: expected auto, client, dups-ok or individual"
                ));
                None
            }
        };
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errs.push(msg);
            }
        };
        if stomp && ack == Some(Ack::DupsOk) {
            check(false, "--ack dups-ok has no STOMP equivalent".into());
        }
        check(a.ack_every >= 1, "--ack-every must be at least 1".into());
        if ack == Some(Ack::Individual) {
            check(
                a.ack_every == 1,
                "--ack-every applies to client mode; individual acks every message".into(),
            );
        }
        if ack == Some(Ack::Client) {
            check(
                a.ack_every <= a.prefetch.max(1),
                format!(
                    "--ack-every {} exceeds --prefetch {}: the consumer would stall waiting for \
                     messages the broker will not send before an ack",
                    a.ack_every, a.prefetch
                ),
            );
        }
        check(
            (1..=65535).contains(&a.prefetch),
            "--prefetch must be 1 to 65535".into(),
        );
        if let Some(r) = a.rate {
            check(
                r >= 1,
                "--rate must be at least 1 message per second".into(),
            );
            check(
                r <= 10_000_000,
                "--rate must be at most 10,000,000 messages per second".into(),
            );
        }
        if let Some(d) = a.duration {
            check(!d.is_zero(), "--duration must be positive".into());
            check(
                d <= MAX_DURATION,
                format!("--duration must be at most {}s", MAX_DURATION.as_secs()),
            );
        }
        if let Some(n) = a.count {
            check(n >= 1, "--count must be at least 1".into());
            check(
                n >= u64::from(a.producers),
                "--count must give every producer at least one message".into(),
            );
        }
        let duration = match (a.duration, a.count) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        };
        if let Some(d) = duration {
            check(
                a.warmup < d,
                "--warmup must be shorter than --duration (warm-up is part of it)".into(),
            );
        }
        check(
            a.warmup <= MAX_DURATION,
            "--warmup must be at most an hour".into(),
        );
        check(
            (1..=1_000_000).contains(&a.max_in_flight),
            "--max-in-flight must be 1 to 1,000,000".into(),
        );
        if stomp && a.receipt_every > 0 && a.tx_batch == 0 {
            check(
                a.max_in_flight >= a.receipt_every,
                format!(
                    "--max-in-flight {} is below --receipt-every {}: the producer would wait for \
                     a receipt it never asked for",
                    a.max_in_flight, a.receipt_every
                ),
            );
        }
        if stomp && a.tx_batch > 0 {
            check(
                a.max_in_flight >= a.tx_batch,
                "--max-in-flight must be at least --tx-batch (a COMMIT confirms a batch)".into(),
            );
        }
        check(
            a.drain_timeout >= Duration::from_millis(10) && a.drain_timeout <= MAX_DURATION,
            "--drain-timeout must be 10ms to an hour".into(),
        );
        if a.late_consumers {
            check(
                a.consumers > 0,
                "--late-consumers needs at least one consumer".into(),
            );
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(PerfConfig {
            target: target.expect("checked"),
            allow_remote: a.allow_remote,
            destination: destination.expect("checked"),
            producers: a.producers,
            consumers: a.consumers,
            size: a.size,
            persistent: a.persistent,
            ack: ack.expect("checked"),
            ack_every: a.ack_every,
            tx_batch: a.tx_batch,
            rate: a.rate,
            duration,
            count: a.count,
            max_in_flight: a.max_in_flight,
            receipt_every: a.receipt_every,
            warmup: a.warmup,
            prefetch: a.prefetch,
            drain_timeout: a.drain_timeout,
            late_consumers: a.late_consumers,
            json: a.json,
            quiet: a.quiet,
            broker_pid: a.broker_pid,
            user: a.user.clone(),
            password: a.password.clone(),
            vhost: a.vhost.clone(),
        })
    }

    /// Messages producer `p` may send under `--count` (the remainder goes to the first ones).
    pub fn producer_limit(&self, p: u32) -> u64 {
        match self.count {
            None => u64::MAX,
            Some(n) => {
                let per = n / u64::from(self.producers);
                per + u64::from(u64::from(p) < n % u64::from(self.producers))
            }
        }
    }

    pub fn is_topic(&self) -> bool {
        !self.destination.kind().is_queue()
    }

    /// `queue:NAME` / `topic:NAME`.
    pub fn destination_label(&self) -> String {
        let kind = if self.is_topic() { "topic" } else { "queue" };
        format!("{kind}:{}", self.destination.name())
    }

    /// The STOMP destination header.
    pub fn stomp_destination(&self) -> String {
        let kind = if self.is_topic() { "topic" } else { "queue" };
        format!("/{kind}/{}", self.destination.name())
    }
}

/// `queue:NAME` or `topic:NAME` (the name follows the model's rules).
pub fn parse_destination(s: &str) -> Result<Destination, String> {
    let (kind, name) = s
        .split_once(':')
        .ok_or_else(|| format!("--destination {s:?}: expected queue:NAME or topic:NAME"))?;
    let kind = match kind {
        "queue" => DestinationKind::Queue,
        "topic" => DestinationKind::Topic,
        _ => {
            return Err(format!(
                "--destination {s:?}: expected queue:NAME or topic:NAME"
            ));
        }
    };
    Destination::new(kind, name).map_err(|e| format!("--destination {s:?}: {e}"))
}

/// `HOST:PORT`, `[V6]:PORT`.
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// `10s`, `500ms`, `2m`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    if !secs.is_finite() || !(0.0..=1e7).contains(&secs) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Refuses any resolved address that is not loopback unless remote targets are allowed: a load
/// generator pointed at the wrong host is a denial of service.
pub fn check_loopback(host: &str, addrs: &[SocketAddr], allow_remote: bool) -> Result<(), String> {
    if allow_remote {
        return Ok(());
    }
    if addrs.is_empty() {
        return Err(format!("{host}: resolves to no address"));
    }
    match addrs.iter().find(|a| !is_loopback(a.ip())) {
        Some(a) => Err(format!(
            "{host} resolves to {}, which is not a loopback address: perf only loads this \
             machine unless --allow-remote is given",
            a.ip()
        )),
        None => Ok(()),
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PerfArgs,
    }

    fn parse(args: &[&str]) -> Result<PerfConfig, Vec<String>> {
        let mut v = vec!["perf"];
        v.extend_from_slice(args);
        let cli = Cli::try_parse_from(v).expect("clap accepts");
        PerfConfig::from_args(&cli.args)
    }

    fn errors(args: &[&str]) -> String {
        parse(args).expect_err("refused").join("\n")
    }

    #[test]
    fn defaults_are_bounded() {
        let c = parse(&["--embedded"]).unwrap();
        assert_eq!(c.duration, Some(DEFAULT_DURATION));
        assert_eq!(c.count, None);
        assert_eq!(c.size, 1024);
        assert_eq!(c.destination_label(), "queue:perf");
        assert!(!c.persistent);
        assert_eq!(c.target, Target::Embedded);
    }

    #[test]
    fn count_alone_has_no_duration() {
        let c = parse(&["--embedded", "-n", "10", "-p", "3"]).unwrap();
        assert_eq!(c.duration, None);
        let limits: Vec<u64> = (0..3).map(|p| c.producer_limit(p)).collect();
        assert_eq!(limits, [4, 3, 3]);
        assert_eq!(limits.iter().sum::<u64>(), 10);
    }

    #[test]
    fn exactly_one_target() {
        let cli = Cli::try_parse_from(["perf", "-n", "1"]).unwrap();
        let e = PerfConfig::from_args(&cli.args).unwrap_err().join(" ");
        assert!(e.contains("exactly one"), "{e}");
        // clap's group refuses two targets.
        assert!(Cli::try_parse_from(["perf", "--embedded", "--stomp", "127.0.0.1:1"]).is_err());
    }

    #[test]
    fn targets_parse() {
        let c = parse(&["--url", "tcp://127.0.0.1:61616"]).unwrap();
        assert_eq!(c.target.hosts(), ["127.0.0.1"]);
        assert_eq!(c.target.protocol(), "native");
        let c = parse(&["--stomp", "[::1]:61613", "-d", "topic:t"]).unwrap();
        assert_eq!(
            c.target,
            Target::Stomp {
                host: "::1".into(),
                port: 61613
            }
        );
        assert_eq!(c.stomp_destination(), "/topic/t");
        assert!(errors(&["--stomp", "localhost"]).contains("HOST:PORT"));
        assert!(errors(&["--url", "http://x"]).contains("--url"));
        assert!(errors(&["--url", "failover:(tcp://a:1,tcp://b:2)"]).contains("failover"));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(errors(&["--embedded", "-d", "perf"]).contains("queue:NAME"));
        assert!(errors(&["--embedded", "-d", "queue:a/b"]).contains("--destination"));
        assert!(errors(&["--embedded", "-p", "0"]).contains("--producers"));
        assert!(errors(&["--embedded", "--ack", "sometimes"]).contains("--ack"));
        assert!(errors(&["--embedded", "--rate", "0"]).contains("--rate"));
        assert!(errors(&["--embedded", "--warmup", "10s"]).contains("--warmup"));
        assert!(errors(&["--embedded", "--duration", "120m"]).contains("--duration"));
        assert!(errors(&["--embedded", "-n", "2", "-p", "3"]).contains("every producer"));
        assert!(errors(&["--embedded", "--size", "100000000"]).contains("--size"));
        assert!(errors(&["--embedded", "--prefetch", "0"]).contains("--prefetch"));
        assert!(errors(&["--embedded", "-c", "0", "--late-consumers"]).contains("late"));
    }

    #[test]
    fn combinations_that_would_stall_are_refused() {
        let e = errors(&[
            "--embedded",
            "--ack",
            "client",
            "--ack-every",
            "50",
            "--prefetch",
            "10",
        ]);
        assert!(e.contains("stall"), "{e}");
        let e = errors(&[
            "--stomp",
            "127.0.0.1:1",
            "--max-in-flight",
            "10",
            "--receipt-every",
            "100",
        ]);
        assert!(e.contains("--receipt-every"), "{e}");
        assert!(
            errors(&["--embedded", "--ack", "individual", "--ack-every", "2"])
                .contains("individual")
        );
    }

    #[test]
    fn modes_that_exist_parse_and_unsupported_ones_say_so() {
        assert!(parse(&["--embedded", "--tx-batch", "10"]).is_ok());
        assert!(errors(&["--stomp", "127.0.0.1:1", "--ack", "dups-ok"]).contains("STOMP"));
        assert!(parse(&["--stomp", "127.0.0.1:1", "--tx-batch", "10"]).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn loopback_only_unless_allowed() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let lo6: SocketAddr = "[::1]:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        let far: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert!(check_loopback("h", &[lo, lo6, mapped], false).is_ok());
        let e = check_loopback("h", &[lo, far], false).unwrap_err();
        assert!(
            e.contains("10.0.0.1") && e.contains("--allow-remote"),
            "{e}"
        );
        assert!(check_loopback("h", &[far], true).is_ok());
        assert!(check_loopback("h", &[], false).is_err());
    }
}
