use std::fmt;
use std::sync::Arc;

use super::ModelError;
use crate::wire;

/// Longest destination name, in bytes.
pub const MAX_DESTINATION_NAME_LEN: usize = 255;

/// The four JMS destination kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DestinationKind {
    /// Point-to-point: each message goes to one consumer.
    Queue,
    /// Publish/subscribe: each message goes to every subscription.
    Topic,
    /// A queue that lives as long as the connection that created it.
    TempQueue,
    /// A topic that lives as long as the connection that created it.
    TempTopic,
}

impl DestinationKind {
    /// The prefix used in [`Destination`]'s display form (`queue://orders`).
    pub fn scheme(self) -> &'static str {
        match self {
            DestinationKind::Queue => "queue",
            DestinationKind::Topic => "topic",
            DestinationKind::TempQueue => "temp-queue",
            DestinationKind::TempTopic => "temp-topic",
        }
    }

    /// Queues and temporary queues: one consumer per message.
    pub fn is_queue(self) -> bool {
        matches!(self, DestinationKind::Queue | DestinationKind::TempQueue)
    }

    /// Temporary destinations.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            DestinationKind::TempQueue | DestinationKind::TempTopic
        )
    }
}

/// A validated destination. Cheap to clone (the name is shared).
///
/// Name rules: 1 to 255 bytes; letters and digits (any script), `.`, `_`, `-`, `:`; no leading or
/// trailing `.`, no `..`. The characters `*`, `>` and `#` are kept for the wildcard patterns of the
/// per-destination settings, and whitespace, `/` and control characters are refused so that names
/// survive STOMP headers, metrics labels and file names unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    kind: DestinationKind,
    name: Arc<str>,
}

impl Destination {
    /// A destination of the given kind, if the name is valid.
    pub fn new(kind: DestinationKind, name: &str) -> Result<Destination, ModelError> {
        validate_name(name)?;
        Ok(Destination {
            kind,
            name: Arc::from(name),
        })
    }

    /// A queue.
    pub fn queue(name: &str) -> Result<Destination, ModelError> {
        Destination::new(DestinationKind::Queue, name)
    }

    /// A topic.
    pub fn topic(name: &str) -> Result<Destination, ModelError> {
        Destination::new(DestinationKind::Topic, name)
    }

    /// The kind.
    pub fn kind(&self) -> DestinationKind {
        self.kind
    }

    /// The name, without the kind.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The protobuf form.
    pub fn to_wire(&self) -> wire::Destination {
        let kind = match self.kind {
            DestinationKind::Queue => wire::DestinationKind::Queue,
            DestinationKind::Topic => wire::DestinationKind::Topic,
            DestinationKind::TempQueue => wire::DestinationKind::TempQueue,
            DestinationKind::TempTopic => wire::DestinationKind::TempTopic,
        };
        wire::Destination {
            kind: kind as i32,
            name: self.name.to_string(),
        }
    }

    /// From the protobuf form, validating it.
    pub fn from_wire(w: &wire::Destination) -> Result<Destination, ModelError> {
        let kind = match wire::DestinationKind::try_from(w.kind) {
            Ok(wire::DestinationKind::Queue) => DestinationKind::Queue,
            Ok(wire::DestinationKind::Topic) => DestinationKind::Topic,
            Ok(wire::DestinationKind::TempQueue) => DestinationKind::TempQueue,
            Ok(wire::DestinationKind::TempTopic) => DestinationKind::TempTopic,
            Err(_) => {
                return Err(ModelError::InvalidDestination {
                    name: w.name.clone(),
                    reason: "unknown destination kind",
                });
            }
        };
        Destination::new(kind, &w.name)
    }

    /// Parses the display form, `queue://name`, `topic://name`, `temp-queue://name`,
    /// `temp-topic://name`.
    pub fn parse(s: &str) -> Result<Destination, ModelError> {
        let (scheme, name) = s.split_once("://").ok_or_else(|| ModelError::InvalidDestination {
            name: s.to_string(),
            reason: "expected queue://NAME, topic://NAME, temp-queue://NAME or temp-topic://NAME",
        })?;
        let kind = match scheme {
            "queue" => DestinationKind::Queue,
            "topic" => DestinationKind::Topic,
            "temp-queue" => DestinationKind::TempQueue,
            "temp-topic" => DestinationKind::TempTopic,
            _ => {
                return Err(ModelError::InvalidDestination {
                    name: s.to_string(),
                    reason: "unknown scheme: use queue://, topic://, temp-queue:// or temp-topic://",
                });
            }
        };
        Destination::new(kind, name)
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.scheme(), self.name)
    }
}

fn validate_name(name: &str) -> Result<(), ModelError> {
    let bad = |reason| {
        Err(ModelError::InvalidDestination {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_DESTINATION_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return bad("empty segment between dots");
    }
    for c in name.chars() {
        if c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | ':') {
            continue;
        }
        return match c {
            '*' | '>' | '#' => bad("'*', '>' and '#' are reserved for wildcard patterns"),
            c if c.is_whitespace() => bad("whitespace is not allowed"),
            c if c.is_control() => bad("control characters are not allowed"),
            _ => bad("only letters, digits, '.', '_', '-' and ':' are allowed"),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for n in [
            "orders",
            "orders.eu",
            "a-b_c:d",
            "Zählung",
            "x1",
            &"q".repeat(255),
        ] {
            assert!(Destination::queue(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn invalid_names_say_why() {
        for (n, why) in [
            ("", "empty"),
            (".a", "dots"),
            ("a.", "dots"),
            ("a..b", "dots"),
            ("a b", "whitespace"),
            ("a*", "wildcard"),
            ("a>", "wildcard"),
            ("a#b", "wildcard"),
            ("a/b", "only letters"),
            ("a\u{0}b", "control"),
            (&"q".repeat(256), "255"),
        ] {
            let e = Destination::topic(n).unwrap_err().to_string();
            assert!(e.contains(why), "{n:?}: {e}");
        }
    }

    #[test]
    fn display_parse_and_wire_round_trip() {
        for d in [
            Destination::queue("a.b").unwrap(),
            Destination::topic("t").unwrap(),
            Destination::new(DestinationKind::TempQueue, "tmp:1").unwrap(),
            Destination::new(DestinationKind::TempTopic, "tmp:2").unwrap(),
        ] {
            assert_eq!(Destination::parse(&d.to_string()).unwrap(), d);
            assert_eq!(Destination::from_wire(&d.to_wire()).unwrap(), d);
        }
        assert!(Destination::parse("orders").is_err());
        assert!(Destination::parse("mailbox://x").is_err());
        let w = wire::Destination {
            kind: 99,
            name: "x".into(),
        };
        assert!(Destination::from_wire(&w).is_err());
    }
}
