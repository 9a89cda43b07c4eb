//! The STOMP frame model: a command, ordered headers and an opaque body.
//!
//! Headers are kept exactly as received (order and repeats), already unescaped when the frame's
//! command and the negotiated version call for it. The spec says that of repeated entries only
//! the first one counts; [`StompFrame::header`] applies that rule, while the full list keeps the
//! "history" the spec allows intermediaries to prepend.

use std::fmt;

use bytes::Bytes;

use super::error::{StompError, snippet};

/// Every command of STOMP 1.0–1.2, client and server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Client commands.
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
    // Server commands.
    Connected,
    Message,
    Receipt,
    Error,
}

impl Command {
    /// All commands, client ones first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL). Commands are case-sensitive per spec.
    pub fn from_bytes(line: &[u8]) -> Option<Command> {
        Command::ALL
            .into_iter()
            .find(|c| c.as_str().as_bytes() == line)
    }

    /// Whether `partial` could still grow into a command, so the decoder can reject a bad first
    /// line before its end arrives.
    pub(crate) fn is_prefix(partial: &[u8]) -> bool {
        Command::ALL
            .into_iter()
            .any(|c| c.as_str().as_bytes().starts_with(partial))
    }

    /// Whether header escaping applies to this command (STOMP 1.1 and later).
    ///
    /// The spec exempts `CONNECT` and `CONNECTED` for 1.0 compatibility. It is silent on `STOMP`;
    /// since servers "MUST handle a STOMP frame in the same manner as a CONNECT frame", we exempt
    /// it too, so a passcode containing a backslash means the same in both connect commands.
    pub const fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }

    /// Whether a client sends this command (the others are server frames).
    pub const fn is_client(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// Only `SEND`, `MESSAGE` and `ERROR` may carry a body. The codec does not enforce this
    /// (it decodes whatever body is there); the session decides whether to reject it.
    pub const fn allows_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompFrame {
    pub command: Command,
    /// Unescaped `(name, value)` pairs in wire order, repeats included.
    pub headers: Vec<(String, String)>,
    /// The body; when decoded, a zero-copy slice of the connection's read buffer.
    pub body: Bytes,
}

impl StompFrame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Self {
        StompFrame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body (builder style).
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name` (header names are case-sensitive); later
    /// repeats are history and do not count, per spec.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, first (the effective one) first.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The declared `content-length`, if any, parsed with the decoder's rules.
    pub fn content_length(&self) -> Result<Option<usize>, StompError> {
        self.header(CONTENT_LENGTH)
            .map(|v| parse_content_length(v.as_bytes()))
            .transpose()
    }

    /// An `ERROR` frame with a short `message` header and a plain-text body (may be empty).
    pub fn error(message: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        let mut frame = StompFrame::new(Command::Error).with_header("message", message);
        if !detail.is_empty() {
            frame = frame
                .with_header("content-type", "text/plain")
                .with_body(detail);
        }
        frame
    }
}

/// What the decoder yields: a frame, or one EOL seen between frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One EOL (`LF` or `CRLF`) between frames: a heart-beat, or one of the optional EOLs after a
    /// frame's NUL (the wire cannot tell those apart). Either way it only proves the peer alive.
    HeartBeat,
    Frame(StompFrame),
}

pub(crate) const CONTENT_LENGTH: &str = "content-length";

/// More digits than this cannot be a length we would accept (u64::MAX has 20).
const MAX_CONTENT_LENGTH_DIGITS: usize = 20;

/// `content-length` is an octet count: one or more ASCII digits, nothing else. We do not trim
/// spaces or accept a sign: this header delimits the frame, and leniency here is how two parsers
/// come to disagree about where a frame ends.
pub(crate) fn parse_content_length(value: &[u8]) -> Result<usize, StompError> {
    let bad = || StompError::InvalidContentLength {
        value: snippet(value),
    };
    if value.is_empty()
        || value.len() > MAX_CONTENT_LENGTH_DIGITS
        || !value.iter().all(u8::is_ascii_digit)
    {
        return Err(bad());
    }
    value
        .iter()
        .try_fold(0usize, |acc, &d| {
            acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
        })
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_round_trip() {
        for c in Command::ALL {
            assert_eq!(Command::from_bytes(c.as_str().as_bytes()), Some(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(Command::from_bytes(b"send"), None);
        assert_eq!(Command::from_bytes(b"SEND "), None);
        assert_eq!(Command::from_bytes(b""), None);
        assert!(Command::is_prefix(b""));
        assert!(Command::is_prefix(b"CONNECTE"));
        assert!(Command::is_prefix(b"UNSUBSCRIBE"));
        assert!(!Command::is_prefix(b"UNSUBSCRIBES"));
        assert!(!Command::is_prefix(b"GET"));
        assert!(!Command::is_prefix(b"\0"));
    }

    #[test]
    fn escaping_exemptions() {
        let exempt: Vec<_> = Command::ALL
            .into_iter()
            .filter(|c| !c.escapes_headers())
            .collect();
        assert_eq!(
            exempt,
            [Command::Connect, Command::Stomp, Command::Connected]
        );
    }

    #[test]
    fn first_header_wins() {
        let f = StompFrame::new(Command::Message)
            .with_header("foo", "World")
            .with_header("foo", "Hello");
        assert_eq!(f.header("foo"), Some("World"));
        assert_eq!(f.header_all("foo").collect::<Vec<_>>(), ["World", "Hello"]);
        assert_eq!(f.header("Foo"), None);
    }

    #[test]
    fn content_length_values() {
        assert_eq!(parse_content_length(b"0").unwrap(), 0);
        assert_eq!(parse_content_length(b"0012").unwrap(), 12);
        for bad in [
            &b""[..],
            b" 1",
            b"1 ",
            b"+1",
            b"-1",
            b"1a",
            b"99999999999999999999",
            b"123456789012345678901",
        ] {
            assert!(
                matches!(
                    parse_content_length(bad),
                    Err(StompError::InvalidContentLength { .. })
                ),
                "{bad:?}"
            );
        }
        let f = StompFrame::new(Command::Send)
            .with_header("content-length", "3")
            .with_header("content-length", "x");
        assert_eq!(f.content_length().unwrap(), Some(3));
    }

    #[test]
    fn error_frame_helper() {
        let f = StompFrame::error("bad frame", "details");
        assert_eq!(f.command, Command::Error);
        assert_eq!(f.header("message"), Some("bad frame"));
        assert_eq!(f.header("content-type"), Some("text/plain"));
        assert_eq!(&f.body[..], b"details");
        assert!(StompFrame::error("x", "").body.is_empty());
    }
}
