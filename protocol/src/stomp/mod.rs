//! A pure STOMP 1.2 codec (with 1.0/1.1 compatibility): bytes in, frames out, no I/O.
//!
//! The listener wraps a socket in `Framed<_, StompCodec>`, reads [`Item`]s, turns any
//! [`StompError`] into [`StompError::to_error_frame`] followed by a close, and uses
//! [`negotiate_version`] / [`negotiate_heart_beat`] on the CONNECT frame.
//!
//! All commands share one generic [`StompFrame`] (a command, ordered headers, a body): STOMP's
//! framing does not depend on the command, so the per-command meaning (required headers, ack
//! modes) belongs to the session that maps frames to broker requests.
//!
//! ```
//! use bytes::BytesMut;
//! use tandem_protocol::stomp::*;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = StompCodec::new(StompLimits::default());
//! let mut buf = BytesMut::from(&b"CONNECT\naccept-version:1.1,1.2\nheart-beat:1000,0\n\n\0\n"[..]);
//! let Some(Item::Frame(connect)) = codec.decode(&mut buf)? else { unreachable!() };
//! let version = negotiate_version(connect.header("accept-version"), &SUPPORTED_VERSIONS)?;
//! codec.set_version(version);
//! let client = HeartBeat::from_header(connect.header("heart-beat"))?;
//! let server = HeartBeat { send_ms: 5000, recv_ms: 2000 };
//! let beats = negotiate_heart_beat(client, server);
//! assert_eq!(beats.client_to_server_ms, 2000);
//! assert_eq!(beats.server_to_client(), None); // the client wants none
//! assert_eq!(codec.decode(&mut buf)?, Some(Item::HeartBeat)); // the trailing EOL
//!
//! let connected = StompFrame::new(Command::Connected)
//!     .with_header("version", version.as_str())
//!     .with_header("heart-beat", server.to_string());
//! let mut out = BytesMut::new();
//! codec.encode(&connected, &mut out)?;
//! assert_eq!(&out[..], b"CONNECTED\nversion:1.2\nheart-beat:5000,2000\n\n\0");
//! # Ok::<(), StompError>(())
//! ```
//!
//! # Frame layout
//!
//! ```text
//!   *( EOL )                      heart-beats / trailing EOLs  → one Item::HeartBeat per EOL
//!  ┌──────────────────────────────────────────────┐
//!  │ COMMAND EOL                                  │  exact, case-sensitive, e.g. "SEND"
//!  │ *( name ":" value EOL )                      │  ≤ max_headers lines, each ≤ max_header_line
//!  │ EOL                                          │  blank line ends the head
//!  │ body                                         │  content-length octets (NULs allowed), or
//!  │                                              │  everything up to the first NUL
//!  │ NUL                                          │
//!  └──────────────────────────────────────────────┘  ≤ max_frame_size bytes, COMMAND..NUL
//!   *( EOL )
//!
//!   EOL = [CR] LF
//! ```
//!
//! Header escaping (1.1+, all commands except CONNECT, STOMP and CONNECTED):
//! `\r` → CR, `\n` → LF, `\c` → `:`, `\\` → `\`; any other escape is a fatal error.
//!
//! # Limits ([`StompLimits`])
//!
//! | limit             | default | counts                                                  |
//! |-------------------|---------|---------------------------------------------------------|
//! | `max_frame_size`  | 16 MiB  | command's first byte to the NUL, both included          |
//! | `max_headers`     | 1000    | header entries, repeats included                        |
//! | `max_header_line` | 64 KiB  | one header line before unescaping, EOL excluded         |
//!
//! Limits are checked as early as the bytes allow: a line over its limit fails before its EOL
//! arrives, a first line longer than any command fails at once, and a `content-length` that would
//! put the frame over `max_frame_size` fails as soon as the blank line is read, before a single
//! body byte is buffered. The decoder never reserves buffer space on a peer's say-so.
//!
//! # Where the spec is silent (or we chose leniency or strictness)
//!
//! - **CRLF in every version.** 1.2 allows `CR LF` as EOL; 1.0/1.1 only `LF`. We accept both
//!   always (a 1.0 header value cannot meaningfully end in CR anyway). A CR not followed by LF,
//!   in a header line or between frames, is an error ([`StompError::BareCarriageReturn`]): the
//!   1.2 grammar excludes CR from names and values.
//! - **Heart-beats vs trailing EOLs.** The EOLs after a frame's NUL cannot be told apart from
//!   heart-beats, so each one is reported as [`Item::HeartBeat`]. This is also what keeps the
//!   output independent of how the bytes were split into reads.
//! - **Colons in values** are accepted (the name ends at the first colon), as 1.0 peers send
//!   them unescaped and major brokers accept them. Colons in names must be escaped (`\c`).
//! - **Empty header names, NUL in a header line, invalid UTF-8** in command or headers are errors.
//!   Empty values are fine.
//! - **Header values are never trimmed** (1.2 says so); commands must match exactly.
//! - **`content-length`**: the first entry wins, like any repeated header. Its value must be
//!   ASCII digits only (no sign, no spaces); it delimits the frame, and tolerance here is how two
//!   parsers end up disagreeing on frame boundaries. The octet after that many body bytes must
//!   be NUL ([`StompError::MissingNul`]).
//! - **Bodies on frames that must not have one** (anything but SEND, MESSAGE, ERROR) are decoded
//!   anyway; [`Command::allows_body`] lets the session reject them.
//! - **STOMP is unescaped like CONNECT** (see [`Command::escapes_headers`]).
//! - **1.0**: no escaping. The codec starts in 1.2 mode, which decodes the CONNECT frame the same
//!   way (CONNECT is never escaped); the connection calls [`StompCodec::set_version`] after
//!   negotiation, before polling the next frame.
//! - **Encoding** always uses LF, always writes a correct `content-length` for a non-empty body
//!   and replaces any the frame carried; `content-type` is never touched. See [`encode_frame`].
//! - **Zero copy**: a decoded body is a slice of the connection's read buffer, so keeping many
//!   small bodies alive keeps their read buffers alive; a store that keeps bodies for long may
//!   prefer to copy small ones.
//! - **After a decode error** the decoder is reset, but the stream position is lost: close.

mod codec;
mod error;
mod escape;
mod frame;
mod negotiate;

pub use codec::{StompCodec, StompLimits, encode_frame};
pub use error::StompError;
pub use frame::{Command, Item, StompFrame};
pub use negotiate::{
    HeartBeat, HeartBeatIntervals, SUPPORTED_VERSIONS, StompVersion, negotiate_heart_beat,
    negotiate_version,
};

#[cfg(test)]
mod tests;
