//! STOMP codec and negotiation errors.
//!
//! Every decode error is fatal for the connection: the stream position after a malformed frame
//! is unknown, so the listener answers with an `ERROR` frame (see [`StompError::to_error_frame`])
//! and closes. Values echoed from the peer are truncated so an error never carries a large copy
//! of attacker-controlled input.

use super::frame::StompFrame;

/// Longest snippet of peer input kept in an error.
const SNIPPET_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum StompError {
    /// The frame (command line through the NUL) is, or would be, over `max_frame_size`.
    #[error("frame larger than the limit of {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("more than {limit} headers in one frame")]
    TooManyHeaders { limit: usize },
    #[error("header line longer than {limit} bytes")]
    HeaderLineTooLong { limit: usize },
    #[error("unknown command {command:?}")]
    UnknownCommand { command: String },
    /// A backslash followed by anything but `r`, `n`, `c` or `\` (or by nothing).
    #[error("undefined escape sequence {sequence:?} in a header")]
    InvalidEscape { sequence: String },
    #[error("malformed header line: {reason}")]
    MalformedHeader { reason: &'static str },
    /// A CR not followed by LF where an EOL is expected.
    #[error("carriage return not followed by line feed")]
    BareCarriageReturn,
    #[error("command or header is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid content-length {value:?}")]
    InvalidContentLength { value: String },
    /// The octet after a `content-length` body must be the frame's NUL.
    #[error("no NUL octet after the content-length body")]
    MissingNul,
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame")]
    UnexpectedEof,
    #[error("invalid heart-beat header {value:?}")]
    InvalidHeartBeat { value: String },
    /// `accept-version` shares no version with us; `supported` is ready for the ERROR frame's
    /// `version` header.
    #[error("no common protocol version: client accepts {offered:?}, server supports {supported}")]
    NoCommonVersion { offered: String, supported: String },
    /// The encoder cannot write this frame without changing its meaning (e.g. a line feed in a
    /// CONNECTED header, which is never escaped, or a NUL in any header).
    #[error("frame cannot be encoded: {reason}")]
    Unencodable { reason: &'static str },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl StompError {
    /// The `ERROR` frame a server sends before closing the connection for this error.
    pub fn to_error_frame(&self) -> StompFrame {
        let message = match self {
            StompError::NoCommonVersion { .. } => "unsupported protocol version",
            StompError::FrameTooLarge { .. }
            | StompError::TooManyHeaders { .. }
            | StompError::HeaderLineTooLong { .. } => "frame over limits",
            StompError::UnexpectedEof | StompError::Io(_) => "connection error",
            StompError::Unencodable { .. } => "internal error",
            _ => "malformed frame received",
        };
        let mut frame = StompFrame::error(message, self.to_string());
        if let StompError::NoCommonVersion { supported, .. } = self {
            frame
                .headers
                .insert(1, ("version".into(), supported.clone()));
        }
        frame
    }
}

/// A bounded, lossy rendering of peer bytes for error messages.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(SNIPPET_MAX)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > SNIPPET_MAX {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stomp::Command;

    #[test]
    fn snippets_are_bounded() {
        assert_eq!(snippet(b"abc"), "abc");
        let long = vec![b'x'; 1000];
        assert_eq!(snippet(&long).chars().count(), SNIPPET_MAX + 1);
        assert_eq!(snippet(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn error_frames() {
        let f = StompError::MissingNul.to_error_frame();
        assert_eq!(f.command, Command::Error);
        assert_eq!(f.header("message"), Some("malformed frame received"));
        assert_eq!(&f.body[..], b"no NUL octet after the content-length body");
        let f = StompError::NoCommonVersion {
            offered: "2.0".into(),
            supported: "1.0,1.1,1.2".into(),
        }
        .to_error_frame();
        assert_eq!(f.header("version"), Some("1.0,1.1,1.2"));
        assert_eq!(f.headers[0].0, "message");
    }
}
