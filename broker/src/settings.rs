//! Per-destination settings matched by wildcard patterns, in the manner of Artemis' address
//! settings.
//!
//! A pattern is dot-separated words; `*` matches exactly one word and `#` matches zero or more
//! words (`orders.#` matches `orders`, `orders.eu` and `orders.eu.high`). When several patterns
//! match, the **most specific** one wins: more literal words first, then fewer `#`, then fewer `*`,
//! then the later entry in the file. Settings that an entry leaves out fall back to the defaults
//! below, not to a less specific entry (one entry says everything about its destinations).

use serde::Deserialize;

/// What happens to a destination's messages.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DestinationSettings {
    /// The pattern (see the module docs).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Where messages go after `max_delivery_attempts` deliveries; empty: they are dropped (and
    /// logged).
    pub dead_letter_queue: String,
    /// Deliveries before a message is dead-lettered; 0: unlimited.
    pub max_delivery_attempts: u32,
    /// Where expired messages go; empty: they are dropped.
    pub expiry_queue: String,
    /// Memory budget of the destination's queued message bodies, in bytes; 0: the broker's
    /// `destination_memory_limit`. Each subscription of a matching topic has its own.
    pub memory_limit: usize,
    /// What happens to a send once that budget (or the broker's `global_memory_limit`) is used
    /// up. See docs/PAGING.md.
    pub full_policy: FullPolicy,
    /// How long a message given back after being seen (rollback, recover, a consumer's session
    /// closing) waits before it is delivered again, in ms; 0: at once. Held in memory, not
    /// journaled: after a restart the message is due at once.
    pub redelivery_delay_ms: u64,
    /// Whether matching destinations are created on first use; unset: the broker's
    /// `auto_create`.
    pub auto_create: Option<bool>,
}

/// What a destination does when its memory budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FullPolicy {
    /// Persistent messages on durable queues keep only a compact entry in memory; their bodies
    /// are read back from the journal for dispatch. Messages that cannot be paged
    /// (non-persistent, temporary queues, non-durable subscriptions, no journal) are treated as
    /// under `block`.
    #[default]
    Page,
    /// The producer waits up to `producer_block_timeout_ms` for room, then gets DestinationFull.
    Block,
    /// The producer gets DestinationFull at once.
    Fail,
}

impl Default for DestinationSettings {
    fn default() -> Self {
        DestinationSettings {
            pattern: "#".into(),
            dead_letter_queue: "DLQ".into(),
            max_delivery_attempts: 10,
            expiry_queue: String::new(),
            memory_limit: 0,
            full_policy: FullPolicy::Page,
            redelivery_delay_ms: 0,
            auto_create: None,
        }
    }
}

/// Checks a pattern: words of the destination-name alphabet, `*` or `#`.
pub fn validate_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty pattern".into());
    }
    for w in p.split('.') {
        if w.is_empty() {
            return Err(format!("{p:?}: empty word between dots"));
        }
        if (w.contains('*') || w.contains('#')) && w.len() > 1 {
            return Err(format!("{p:?}: '*' and '#' must be whole words"));
        }
    }
    Ok(())
}

/// Whether `pattern` matches `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    match_words(&p, &n)
}

fn match_words(p: &[&str], n: &[&str]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((&"#", rest)) => (0..=n.len()).any(|k| match_words(rest, &n[k..])),
        Some((&"*", rest)) => !n.is_empty() && match_words(rest, &n[1..]),
        Some((w, rest)) => n.first() == Some(w) && match_words(rest, &n[1..]),
    }
}

fn specificity(pattern: &str) -> (usize, isize, isize) {
    let words: Vec<&str> = pattern.split('.').collect();
    let literal = words.iter().filter(|w| **w != "*" && **w != "#").count();
    let hashes = words.iter().filter(|w| **w == "#").count() as isize;
    let stars = words.iter().filter(|w| **w == "*").count() as isize;
    (literal, -hashes, -stars)
}

/// The settings for `name`: the most specific matching entry, or the defaults.
pub fn resolve(all: &[DestinationSettings], name: &str) -> DestinationSettings {
    all.iter()
        .enumerate()
        .filter(|(_, s)| matches(&s.pattern, name))
        .max_by_key(|(i, s)| (specificity(&s.pattern), *i))
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        for (p, n, want) in [
            ("#", "a", true),
            ("#", "a.b.c", true),
            ("orders.#", "orders", true),
            ("orders.#", "orders.eu.high", true),
            ("orders.#", "ordersx", false),
            ("orders.*", "orders", false),
            ("orders.*", "orders.eu", true),
            ("orders.*", "orders.eu.high", false),
            ("*.high", "orders.high", true),
            ("*.high", "high", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(matches(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn most_specific_wins() {
        let s = |p: &str, max: u32| DestinationSettings {
            pattern: p.into(),
            max_delivery_attempts: max,
            ..Default::default()
        };
        let all = vec![
            s("#", 1),
            s("orders.#", 2),
            s("orders.*", 3),
            s("orders.eu", 4),
        ];
        assert_eq!(resolve(&all, "orders.eu").max_delivery_attempts, 4);
        assert_eq!(resolve(&all, "orders.us").max_delivery_attempts, 3);
        assert_eq!(resolve(&all, "orders.us.x").max_delivery_attempts, 2);
        assert_eq!(resolve(&all, "invoices").max_delivery_attempts, 1);
        assert_eq!(resolve(&[], "x"), DestinationSettings::default());
        // Equal specificity: the later entry wins.
        let all = vec![s("a.*", 5), s("*.b", 6)];
        assert_eq!(resolve(&all, "a.b").max_delivery_attempts, 6);
    }

    #[test]
    fn memory_limit_and_full_policy_parse() {
        #[derive(Deserialize)]
        struct F {
            address_settings: Vec<DestinationSettings>,
        }
        let f: F = toml::from_str(
            r#"
            [[address_settings]]
            match = "orders.#"
            memory_limit = 1048576
            full_policy = "fail"
            [[address_settings]]
            match = "events.*"
            full_policy = "block"
            [[address_settings]]
            match = "audit"
            "#,
        )
        .unwrap();
        let all = f.address_settings;
        let o = resolve(&all, "orders.eu");
        assert_eq!((o.memory_limit, o.full_policy), (1 << 20, FullPolicy::Fail));
        assert_eq!(resolve(&all, "events.x").full_policy, FullPolicy::Block);
        let a = resolve(&all, "audit");
        assert_eq!((a.memory_limit, a.full_policy), (0, FullPolicy::Page));
        for bad in [r#"full_policy = "drop""#, r#"memory_limit = -1"#] {
            let text = format!("[[address_settings]]\nmatch = \"x\"\n{bad}\n");
            assert!(toml::from_str::<F>(&text).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn pattern_checks() {
        assert!(validate_pattern("orders.#").is_ok());
        assert!(validate_pattern("").is_err());
        assert!(validate_pattern("a..b").is_err());
        assert!(validate_pattern("a.b*").is_err());
    }
}
