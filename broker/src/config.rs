//! Broker configuration: every limit has a default, every default is bounded (invariant 10).
//!
//! The same struct is read from `tandem.toml` (serde, unknown keys refused) and built in code by
//! embedders. [`BrokerConfig::validate`] names the key and the fix for every problem.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Producers whose last stored sequence duplicate detection remembers (least recently used
/// forgotten first): a resend from a producer idle for longer than this many others sent is not
/// recognised.
pub const DUP_PRODUCERS: usize = 65_536;

/// Everything the broker needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Native protocol listener; `None`: in-process connections only.
    pub listen: Option<SocketAddr>,
    /// HTTP listener for `/health` and `/metrics`; `None`: off.
    pub http: Option<SocketAddr>,
    /// STOMP listener (docs/STOMP.md); `None`: off.
    pub stomp: Option<SocketAddr>,
    /// Where the journal and metadata live.
    pub data_dir: PathBuf,
    /// Name reported in `/health` and the Connected frame.
    pub name: String,
    /// Most simultaneous connections (TCP and in-process together).
    pub max_connections: usize,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame_size: usize,
    /// Largest encoded message accepted, in bytes.
    pub max_message_size: usize,
    /// The heartbeat interval the server asks for, in ms; 0: none.
    pub heartbeat_ms: u64,
    /// Close a connection that sent nothing for this long, in ms, even without heartbeats; 0: never.
    pub idle_timeout_ms: u64,
    /// Time a new connection has to send Connect, in ms.
    pub handshake_timeout_ms: u64,
    /// Create queues and topics on first use.
    pub auto_create: bool,
    /// Memory budget of one destination's queued messages, in bytes (each subscription of a topic
    /// counts as its own destination).
    pub destination_memory_limit: usize,
    /// Memory budget of every destination's queued message bodies together, in bytes. Beyond it,
    /// destinations page, block or fail by their `full_policy` (docs/PAGING.md).
    pub global_memory_limit: usize,
    /// How long a send to a full destination waits for room before failing with DestinationFull, in
    /// ms; 0: fail at once.
    pub producer_block_timeout_ms: u64,
    /// Most bytes of messages one open transaction may hold (they wait in memory for the commit);
    /// a send beyond it is refused and the transaction can only roll back.
    pub max_transaction_bytes: usize,
    /// How long shutdown waits for connections to flush and close, in ms.
    pub shutdown_timeout_ms: u64,
    /// Journal persistent messages in `data_dir/journal` (off: memory only, nothing survives).
    pub persistence: bool,
    /// Fencing epoch written into every journal batch (the lease provides it once failover runs).
    pub journal_epoch: u64,
    /// Journal segment size in bytes.
    pub journal_segment_size: u64,
    /// Delay added to every journal sync, in ms: EFS-latency emulation for benchmarks only.
    pub journal_sync_delay_ms: u64,
    /// At start, skip (and report) corrupt regions in the middle of the journal instead of refusing
    /// to start. Messages in a skipped region are lost; acks in it are lost (messages may return).
    pub journal_skip_corrupt: bool,
    /// Per-destination settings by pattern (dead-letter queue, maximum delivery attempts, expiry
    /// queue): `[[address_settings]]` tables, see `settings.rs` for the matching rules.
    pub address_settings: Vec<crate::settings::DestinationSettings>,
    /// Queues that exist from the start (with auto_create off, the only ones).
    pub queues: Vec<String>,
    /// Topics that exist from the start.
    pub topics: Vec<String>,
    /// TLS for the listeners (docs/SECURITY.md); `None`: every listener is plaintext.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Authentication, authorization and per-user limits (docs/SECURITY.md); `None`: the broker
    /// is open to every client.
    pub security: Option<crate::security::SecurityConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 61616))),
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8161))),
            stomp: Some(SocketAddr::from(([127, 0, 0, 1], 61613))),
            data_dir: PathBuf::from("data"),
            name: "tandem".into(),
            max_connections: 1024,
            max_frame_size: tandem_protocol::DEFAULT_MAX_FRAME_SIZE,
            max_message_size: tandem_protocol::DEFAULT_MAX_FRAME_SIZE - 1024,
            heartbeat_ms: 10_000,
            idle_timeout_ms: 0,
            handshake_timeout_ms: 10_000,
            auto_create: true,
            destination_memory_limit: 256 * 1024 * 1024,
            global_memory_limit: 1024 * 1024 * 1024,
            producer_block_timeout_ms: 5_000,
            max_transaction_bytes: 64 * 1024 * 1024,
            shutdown_timeout_ms: 5_000,
            persistence: true,
            journal_epoch: 1,
            journal_segment_size: 64 * 1024 * 1024,
            journal_sync_delay_ms: 0,
            journal_skip_corrupt: false,
            address_settings: Vec::new(),
            queues: Vec::new(),
            topics: Vec::new(),
            tls: None,
            security: None,
        }
    }
}

/// A configuration problem: the key, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    /// The offending key.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl BrokerConfig {
    /// A configuration for tests and embedding: no TCP, no HTTP, no STOMP, small timeouts.
    pub fn embedded() -> BrokerConfig {
        BrokerConfig {
            listen: None,
            http: None,
            stomp: None,
            persistence: false,
            ..BrokerConfig::default()
        }
    }

    /// The journal options these settings describe (the write gate is the caller's).
    pub fn journal_options(&self) -> crate::journal::JournalOptions {
        let mut o = crate::journal::JournalOptions::new(self.journal_epoch);
        o.segment_size = self.journal_segment_size;
        o.sync_delay = Duration::from_millis(self.journal_sync_delay_ms);
        o.skip_corrupt = self.journal_skip_corrupt;
        // Producers send strictly increasing sequences: the last one stored is all the broker
        // needs, and fewer live DupId records pin fewer segments.
        o.dup_ids_per_producer = 1;
        o.dup_producers = DUP_PRODUCERS;
        o
    }

    /// Checks every bound; returns all problems at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut check = |ok: bool, key: &'static str, problem: String| {
            if !ok {
                errs.push(ConfigError { key, problem });
            }
        };
        check(
            self.max_connections >= 1,
            "max_connections",
            "must be at least 1".into(),
        );
        check(
            (1024..=u32::MAX as usize).contains(&self.max_frame_size),
            "max_frame_size",
            format!(
                "must be between 1024 and {} bytes (got {})",
                u32::MAX,
                self.max_frame_size
            ),
        );
        check(
            self.max_message_size >= 1 && self.max_message_size < self.max_frame_size,
            "max_message_size",
            format!(
                "must be at least 1 and below max_frame_size ({}) to leave room for the frame \
                 header (got {})",
                self.max_frame_size, self.max_message_size
            ),
        );
        check(
            self.destination_memory_limit >= self.max_message_size.min(1 << 20),
            "destination_memory_limit",
            "must hold at least one message of max_message_size (or 1 MiB)".into(),
        );
        check(
            self.max_transaction_bytes >= self.max_message_size.min(1 << 20),
            "max_transaction_bytes",
            "must hold at least one message of max_message_size (or 1 MiB)".into(),
        );
        check(
            self.global_memory_limit >= self.max_message_size.min(1 << 20),
            "global_memory_limit",
            "must hold at least one message of max_message_size (or 1 MiB)".into(),
        );
        check(
            self.handshake_timeout_ms >= 100,
            "handshake_timeout_ms",
            "must be at least 100 ms".into(),
        );
        check(
            self.heartbeat_ms == 0 || self.heartbeat_ms >= 100,
            "heartbeat_ms",
            "must be 0 (off) or at least 100 ms".into(),
        );
        check(!self.name.is_empty(), "name", "must not be empty".into());
        check(
            (1 << 20..=1 << 32).contains(&self.journal_segment_size),
            "journal_segment_size",
            format!(
                "must be between 1 MiB and 4 GiB (got {})",
                self.journal_segment_size
            ),
        );
        check(
            self.journal_epoch >= 1,
            "journal_epoch",
            "must be at least 1".into(),
        );
        check(
            self.journal_sync_delay_ms <= 1000,
            "journal_sync_delay_ms",
            "must be at most 1000 ms (it emulates slow storage for benchmarks)".into(),
        );
        for a in &self.address_settings {
            if let Err(e) = crate::settings::validate_pattern(&a.pattern) {
                errs.push(ConfigError {
                    key: "address_settings.match",
                    problem: e,
                });
            }
            if a.memory_limit != 0 && a.memory_limit < self.max_message_size.min(1 << 20) {
                errs.push(ConfigError {
                    key: "address_settings.memory_limit",
                    problem: format!(
                        "{:?}: must be 0 (the broker default) or hold at least one message of \
                         max_message_size (or 1 MiB) (got {})",
                        a.pattern, a.memory_limit
                    ),
                });
            }
            for (key, q) in [
                ("address_settings.dead_letter_queue", &a.dead_letter_queue),
                ("address_settings.expiry_queue", &a.expiry_queue),
            ] {
                if !q.is_empty()
                    && let Err(e) = tandem_protocol::model::Destination::queue(q)
                {
                    errs.push(ConfigError {
                        key,
                        problem: e.to_string(),
                    });
                }
            }
        }
        for q in &self.queues {
            if let Err(e) = tandem_protocol::model::Destination::queue(q) {
                errs.push(ConfigError {
                    key: "queues",
                    problem: e.to_string(),
                });
            }
        }
        for t in &self.topics {
            if let Err(e) = tandem_protocol::model::Destination::topic(t) {
                errs.push(ConfigError {
                    key: "topics",
                    problem: e.to_string(),
                });
            }
        }
        // Security hooks (docs/SECURITY.md): their own checks, reported with everything else.
        if let Some(t) = &self.tls {
            errs.extend(t.validate());
        }
        if let Some(s) = &self.security {
            errs.extend(s.validate());
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    pub(crate) fn producer_block_timeout(&self) -> Duration {
        Duration::from_millis(self.producer_block_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BrokerConfig::default().validate().unwrap();
        BrokerConfig::embedded().validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let c = BrokerConfig {
            max_connections: 0,
            max_frame_size: 10,
            heartbeat_ms: 5,
            ..BrokerConfig::default()
        };
        let errs = c.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key).collect();
        assert!(keys.contains(&"max_connections"));
        assert!(keys.contains(&"max_frame_size"));
        assert!(keys.contains(&"max_message_size"));
        assert!(keys.contains(&"heartbeat_ms"));
    }

    #[test]
    fn memory_limits_are_checked() {
        let c: BrokerConfig = toml::from_str(
            "global_memory_limit = 10\n[[address_settings]]\nmatch = \"a\"\nmemory_limit = 5\n",
        )
        .unwrap();
        let errs = c.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            ["global_memory_limit", "address_settings.memory_limit"],
            "{errs:?}"
        );
        let c: BrokerConfig = toml::from_str(
            "global_memory_limit = 2097152\n[[address_settings]]\nmatch = \"a.#\"\n\
             memory_limit = 1048576\nfull_policy = \"block\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert!(toml::from_str::<BrokerConfig>("global_memory_limit = \"big\"").is_err());
    }
}
