//! Authorization: which roles may do what on which destinations. Pure: no I/O, no clock.
//!
//! Modelled on ActiveMQ Artemis' security settings. A *grant* names a destination pattern
//! (optionally restricted to one destination kind) and, per permission, the roles that hold it:
//!
//! ```toml
//! [[security.grants]]
//! match = "orders.#"
//! send = ["shop"]
//! consume = ["billing"]
//! ```
//!
//! Matching rules (docs/SECURITY.md repeats them):
//! - A destination name is split into words at `.`. In a pattern, `*` matches exactly one word and
//!   `#` matches zero or more words; any other word matches itself only (case-sensitive).
//!   `orders.#` matches `orders`, `orders.eu` and `orders.eu.paid`; `orders.*` matches `orders.eu`
//!   only; `#` matches everything.
//! - Of all the grants whose pattern (and kind, if set) match a destination, only the **most
//!   specific** one decides, as in Artemis: settings do not add up. Specificity compares the
//!   patterns word by word from the left, a literal word beating `*` beating `#`; at the first
//!   difference the stronger word wins; if one pattern is a prefix of the other the longer one
//!   wins. On a tie a grant restricted to a kind beats one that is not, then the grant declared
//!   first wins.
//! - No matching grant, or a matching grant that does not list one of the user's roles for the
//!   permission: denied. There is no implicit allow once security is configured.

use std::cmp::Ordering;
use std::fmt;

use serde::Deserialize;
use tandem_protocol::model::{Destination, DestinationKind};

/// What a user may do on a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Send messages to it (producer open with the destination, or each message of an anonymous
    /// producer).
    Send,
    /// Consume from it (a queue consumer, or a topic subscription).
    Consume,
    /// Browse it (a queue browser).
    Browse,
    /// Create it on first use (auto-create).
    Create,
    /// Delete it (reserved: no delete operation exists yet).
    Delete,
    /// Management operations on it (reserved: none exist yet).
    Manage,
}

impl Permission {
    /// Every permission, in the config's order.
    pub const ALL: [Permission; 6] = [
        Permission::Send,
        Permission::Consume,
        Permission::Browse,
        Permission::Create,
        Permission::Delete,
        Permission::Manage,
    ];

    /// The config key and the word used in denials.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Send => "send",
            Permission::Consume => "consume",
            Permission::Browse => "browse",
            Permission::Create => "create",
            Permission::Delete => "delete",
            Permission::Manage => "manage",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One word of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Literal(String),
    /// `*`: exactly one word.
    One,
    /// `#`: zero or more words.
    Any,
}

impl Word {
    /// Strength for specificity: literal > `*` > `#`.
    fn strength(&self) -> u8 {
        match self {
            Word::Literal(_) => 2,
            Word::One => 1,
            Word::Any => 0,
        }
    }
}

/// A destination-name pattern (`orders.#`, `prices.*.eu`, `#`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    words: Vec<Word>,
}

/// Why a pattern is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// An empty pattern or an empty word (`a..b`, `.a`).
    #[error("pattern {0:?} has an empty word (words are separated by single dots)")]
    EmptyWord(String),
    /// A wildcard mixed into a word (`ord*`).
    #[error("pattern {0:?}: `*` and `#` must be whole words (`orders.*`, not `orders*`)")]
    PartialWildcard(String),
}

impl Pattern {
    /// Parses a pattern.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let mut words = Vec::new();
        for w in text.split('.') {
            words.push(match w {
                "" => return Err(PatternError::EmptyWord(text.into())),
                "*" => Word::One,
                "#" => Word::Any,
                w if w.contains(['*', '#']) => {
                    return Err(PatternError::PartialWildcard(text.into()));
                }
                w => Word::Literal(w.into()),
            });
        }
        Ok(Pattern {
            text: text.into(),
            words,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let words: Vec<&str> = name.split('.').collect();
        match_words(&self.words, &words)
    }

    /// Specificity order: `Greater` means `self` is more specific than `other`.
    fn specificity(&self, other: &Pattern) -> Ordering {
        for (a, b) in self.words.iter().zip(&other.words) {
            match a.strength().cmp(&b.strength()) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        self.words.len().cmp(&other.words.len())
    }
}

/// Matches pattern words against name words: dynamic programming over (pattern position, name
/// position), so a pattern with several `#` costs O(pattern words × name words), never the
/// exponential backtracking a naive matcher would do on a long client-chosen name.
fn match_words(pattern: &[Word], name: &[&str]) -> bool {
    let (p, n) = (pattern.len(), name.len());
    // row[j]: pattern[i..] matches name[j..], for the row i being computed (from the end).
    let mut next = vec![false; n + 1];
    next[n] = true; // the empty pattern matches only the empty rest
    let mut row = vec![false; n + 1];
    for i in (0..p).rev() {
        for j in (0..=n).rev() {
            row[j] = match &pattern[i] {
                // `#` takes no word (next row, same j) or one more word (this row, j + 1).
                Word::Any => next[j] || (j < n && row[j + 1]),
                Word::One => j < n && next[j + 1],
                Word::Literal(l) => j < n && name[j] == l && next[j + 1],
            };
        }
        std::mem::swap(&mut row, &mut next);
    }
    next[0]
}

/// A destination kind restriction in a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KindFilter {
    /// Queues only.
    Queue,
    /// Topics only.
    Topic,
    /// Temporary queues only.
    TempQueue,
    /// Temporary topics only.
    TempTopic,
}

impl KindFilter {
    fn admits(self, k: DestinationKind) -> bool {
        matches!(
            (self, k),
            (KindFilter::Queue, DestinationKind::Queue)
                | (KindFilter::Topic, DestinationKind::Topic)
                | (KindFilter::TempQueue, DestinationKind::TempQueue)
                | (KindFilter::TempTopic, DestinationKind::TempTopic)
        )
    }
}

/// One `[[security.grants]]` entry as written in the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// The destination-name pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Only destinations of this kind; absent: every kind.
    #[serde(default)]
    pub kind: Option<KindFilter>,
    /// Roles that may send.
    #[serde(default)]
    pub send: Vec<String>,
    /// Roles that may consume.
    #[serde(default)]
    pub consume: Vec<String>,
    /// Roles that may browse.
    #[serde(default)]
    pub browse: Vec<String>,
    /// Roles that may create (auto-create).
    #[serde(default)]
    pub create: Vec<String>,
    /// Roles that may delete.
    #[serde(default)]
    pub delete: Vec<String>,
    /// Roles that may manage.
    #[serde(default)]
    pub manage: Vec<String>,
}

#[derive(Debug, Clone)]
struct Grant {
    pattern: Pattern,
    kind: Option<KindFilter>,
    roles: [Vec<String>; 6],
}

/// The compiled grants.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    grants: Vec<Grant>,
}

/// The answer to an authorization question, with what decided it (for the denial message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the grant with this pattern.
    Allowed,
    /// No grant matches the destination.
    NoGrant,
    /// The deciding grant (its pattern) does not give the permission to any of the user's roles.
    NotGranted(String),
}

impl Acl {
    /// Compiles the configured grants; every bad pattern is reported.
    pub fn new(grants: &[GrantConfig]) -> Result<Acl, Vec<String>> {
        let mut errs = Vec::new();
        let mut out = Vec::new();
        for (i, g) in grants.iter().enumerate() {
            match Pattern::parse(&g.pattern) {
                Ok(pattern) => {
                    if out
                        .iter()
                        .any(|o: &Grant| o.pattern == pattern && o.kind == g.kind)
                    {
                        errs.push(format!(
                            "grant {i}: pattern {:?} (kind {:?}) is granted twice; merge the two",
                            g.pattern, g.kind
                        ));
                    }
                    out.push(Grant {
                        pattern,
                        kind: g.kind,
                        roles: [
                            g.send.clone(),
                            g.consume.clone(),
                            g.browse.clone(),
                            g.create.clone(),
                            g.delete.clone(),
                            g.manage.clone(),
                        ],
                    });
                }
                Err(e) => errs.push(format!("grant {i}: {e}")),
            }
        }
        if errs.is_empty() {
            Ok(Acl { grants: out })
        } else {
            Err(errs)
        }
    }

    /// The grant that decides for `dest`: the most specific matching one.
    fn deciding(&self, dest: &Destination) -> Option<&Grant> {
        let mut best: Option<&Grant> = None;
        for g in &self.grants {
            if !g.pattern.matches(dest.name()) || g.kind.is_some_and(|k| !k.admits(dest.kind())) {
                continue;
            }
            best = match best {
                None => Some(g),
                Some(b) => {
                    let order = g
                        .pattern
                        .specificity(&b.pattern)
                        .then(g.kind.is_some().cmp(&b.kind.is_some()));
                    // Strictly greater only: on a full tie the earlier grant stays.
                    if order == Ordering::Greater {
                        Some(g)
                    } else {
                        Some(b)
                    }
                }
            };
        }
        best
    }

    /// Whether a user holding `roles` may do `perm` on `dest`.
    pub fn decide(&self, roles: &[String], perm: Permission, dest: &Destination) -> Decision {
        match self.deciding(dest) {
            None => Decision::NoGrant,
            Some(g) if g.roles[perm.index()].iter().any(|r| roles.contains(r)) => Decision::Allowed,
            Some(g) => Decision::NotGranted(g.pattern.as_str().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn wildcards_match_words() {
        assert!(p("orders").matches("orders"));
        assert!(!p("orders").matches("orders.eu"));
        assert!(!p("orders").matches("Orders"));
        assert!(p("orders.#").matches("orders"));
        assert!(p("orders.#").matches("orders.eu"));
        assert!(p("orders.#").matches("orders.eu.paid"));
        assert!(!p("orders.#").matches("ordersx"));
        assert!(!p("orders.#").matches("x.orders"));
        assert!(p("orders.*").matches("orders.eu"));
        assert!(!p("orders.*").matches("orders"));
        assert!(!p("orders.*").matches("orders.eu.paid"));
        assert!(p("*.eu").matches("orders.eu"));
        assert!(p("#").matches("a"));
        assert!(p("#").matches("a.b.c"));
        assert!(p("a.#.z").matches("a.z"));
        assert!(p("a.#.z").matches("a.b.c.z"));
        assert!(!p("a.#.z").matches("a.b.c"));
        assert!(p("#.z").matches("z"));
        assert!(p("a.*.#").matches("a.b"));
        assert!(!p("a.*.#").matches("a"));
        // Names may hold ':' and '-'; they are ordinary characters inside a word.
        assert!(p("svc:a.*").matches("svc:a.x-1"));
        assert!(p("#.x.#").matches("x"));
        assert!(p("#.x.#").matches("a.b.x.c"));
        assert!(!p("#.x.#").matches("a.b.c"));
        assert!(p("*.#.*").matches("a.b"));
        assert!(!p("*.#.*").matches("a"));
    }

    #[test]
    fn many_hashes_against_a_long_name_stay_cheap() {
        let name = vec!["w"; 127].join(".");
        let pat = p("#.#.#.#.#.#.#.#.z");
        let start = std::time::Instant::now();
        assert!(!pat.matches(&name));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            Pattern::parse(""),
            Err(PatternError::EmptyWord(_))
        ));
        assert!(matches!(
            Pattern::parse("a..b"),
            Err(PatternError::EmptyWord(_))
        ));
        assert!(matches!(
            Pattern::parse("ord*"),
            Err(PatternError::PartialWildcard(_))
        ));
        assert!(matches!(
            Pattern::parse("a.#x"),
            Err(PatternError::PartialWildcard(_))
        ));
    }

    #[test]
    fn specificity_orders_literal_star_hash() {
        use Ordering::*;
        assert_eq!(p("orders.eu").specificity(&p("orders.*")), Greater);
        assert_eq!(p("orders.*").specificity(&p("orders.#")), Greater);
        assert_eq!(p("orders.#").specificity(&p("#")), Greater);
        assert_eq!(p("#").specificity(&p("orders.#")), Less);
        assert_eq!(p("a.b.#").specificity(&p("a.b")), Greater);
        assert_eq!(p("a.*").specificity(&p("*.b")), Greater);
    }

    fn grant(pattern: &str, kind: Option<KindFilter>, perm: Permission, role: &str) -> GrantConfig {
        let mut g = GrantConfig {
            pattern: pattern.into(),
            kind,
            ..GrantConfig::default()
        };
        let v = match perm {
            Permission::Send => &mut g.send,
            Permission::Consume => &mut g.consume,
            Permission::Browse => &mut g.browse,
            Permission::Create => &mut g.create,
            Permission::Delete => &mut g.delete,
            Permission::Manage => &mut g.manage,
        };
        v.push(role.into());
        g
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_most_specific_grant_decides_alone() {
        let acl = Acl::new(&[
            grant("#", None, Permission::Send, "everyone"),
            grant("orders.#", None, Permission::Send, "shop"),
            grant("orders.audit", None, Permission::Consume, "auditor"),
        ])
        .unwrap();
        let q = |n: &str| Destination::queue(n).unwrap();
        let everyone = roles(&["everyone"]);
        assert_eq!(
            acl.decide(&everyone, Permission::Send, &q("prices")),
            Decision::Allowed
        );
        // `orders.#` is more specific than `#` and does not name "everyone": denied.
        assert_eq!(
            acl.decide(&everyone, Permission::Send, &q("orders.eu")),
            Decision::NotGranted("orders.#".into())
        );
        assert_eq!(
            acl.decide(&roles(&["shop"]), Permission::Send, &q("orders.eu")),
            Decision::Allowed
        );
        // The exact grant gives no send at all, even to the shop.
        assert_eq!(
            acl.decide(&roles(&["shop"]), Permission::Send, &q("orders.audit")),
            Decision::NotGranted("orders.audit".into())
        );
        assert_eq!(
            acl.decide(
                &roles(&["auditor"]),
                Permission::Consume,
                &q("orders.audit")
            ),
            Decision::Allowed
        );
    }

    #[test]
    fn no_grant_denies_and_kinds_restrict() {
        let acl = Acl::new(&[grant(
            "prices.#",
            Some(KindFilter::Topic),
            Permission::Consume,
            "reader",
        )])
        .unwrap();
        let reader = roles(&["reader"]);
        assert_eq!(
            acl.decide(
                &reader,
                Permission::Consume,
                &Destination::topic("prices.eu").unwrap()
            ),
            Decision::Allowed
        );
        assert_eq!(
            acl.decide(
                &reader,
                Permission::Consume,
                &Destination::queue("prices.eu").unwrap()
            ),
            Decision::NoGrant
        );
        assert_eq!(
            acl.decide(
                &reader,
                Permission::Send,
                &Destination::topic("other").unwrap()
            ),
            Decision::NoGrant
        );
    }

    #[test]
    fn a_kind_restricted_grant_beats_an_equal_unrestricted_one() {
        let acl = Acl::new(&[
            grant("a.#", None, Permission::Send, "x"),
            grant("a.#", Some(KindFilter::Queue), Permission::Send, "y"),
        ])
        .unwrap();
        let q = Destination::queue("a.b").unwrap();
        let t = Destination::topic("a.b").unwrap();
        assert_eq!(
            acl.decide(&roles(&["y"]), Permission::Send, &q),
            Decision::Allowed
        );
        assert_ne!(
            acl.decide(&roles(&["x"]), Permission::Send, &q),
            Decision::Allowed
        );
        assert_eq!(
            acl.decide(&roles(&["x"]), Permission::Send, &t),
            Decision::Allowed
        );
    }

    #[test]
    fn duplicate_and_bad_grants_are_config_errors() {
        let errs = Acl::new(&[
            grant("a.#", None, Permission::Send, "x"),
            grant("a.#", None, Permission::Consume, "x"),
            grant("a*", None, Permission::Consume, "x"),
        ])
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
