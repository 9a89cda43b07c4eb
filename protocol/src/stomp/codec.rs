//! The STOMP `Decoder`/`Encoder`: bytes in, [`Item`]s out, and back.
//!
//! The decoder is incremental. It never consumes bytes from the read buffer until a whole frame
//! (or one EOL between frames) is there, but it remembers how far it has scanned and the command
//! and headers it has already parsed, so a large frame arriving in many reads costs O(frame)
//! work, not O(frame²). After an error its state is reset, but the stream position is unknown:
//! the connection must send an ERROR frame and close.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::{StompError, snippet};
use super::escape::{escape_into, unescape};
use super::frame::{CONTENT_LENGTH, Command, Item, StompFrame, parse_content_length};
use super::negotiate::StompVersion;

/// Resource limits applied while decoding; exceeding one is a [`StompError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StompLimits {
    /// Bytes from the first octet of the command to the frame's NUL, both included. Leading
    /// and trailing EOLs (heart-beats) are not part of a frame.
    pub max_frame_size: usize,
    /// Header entries in one frame, repeats included.
    pub max_headers: usize,
    /// Bytes of one header line, before unescaping and without its EOL.
    pub max_header_line: usize,
}

impl StompLimits {
    /// 16 MiB, the same frame limit as tandem's native protocol.
    pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;
    pub const DEFAULT_MAX_HEADERS: usize = 1000;
    /// 64 KiB.
    pub const DEFAULT_MAX_HEADER_LINE: usize = 64 * 1024;
}

impl Default for StompLimits {
    fn default() -> Self {
        StompLimits {
            max_frame_size: Self::DEFAULT_MAX_FRAME_SIZE,
            max_headers: Self::DEFAULT_MAX_HEADERS,
            max_header_line: Self::DEFAULT_MAX_HEADER_LINE,
        }
    }
}

/// STOMP codec for one connection. Starts in 1.2 mode (header escaping on); after CONNECT
/// negotiation the connection calls [`StompCodec::set_version`] (before polling for the next
/// frame) if it settled on 1.0.
#[derive(Debug)]
pub struct StompCodec {
    limits: StompLimits,
    escaping: bool,
    state: State,
}

/// Decoder progress inside the read buffer. All offsets are from the start of the buffer, which
/// is also the start of the current frame (heart-beats before it were consumed already).
#[derive(Debug, Default)]
enum State {
    /// Between frames.
    #[default]
    Idle,
    Head(Head),
    Body(Body),
}

#[derive(Debug)]
struct Head {
    /// Escaping in force for this frame, fixed when the frame starts.
    escaping: bool,
    command: Option<Command>,
    headers: Vec<(String, String)>,
    /// Start of the line being read.
    line_start: usize,
    /// Bytes before this offset hold no LF past `line_start`.
    scanned: usize,
}

#[derive(Debug)]
struct Body {
    command: Command,
    headers: Vec<(String, String)>,
    start: usize,
    /// The declared `content-length`, or `None` when the body ends at the first NUL.
    len: Option<usize>,
    /// Without a length: bytes before this offset hold no NUL past `start`.
    scanned: usize,
}

impl Default for StompCodec {
    fn default() -> Self {
        StompCodec::new(StompLimits::default())
    }
}

impl StompCodec {
    pub fn new(limits: StompLimits) -> Self {
        StompCodec {
            limits,
            escaping: true,
            state: State::Idle,
        }
    }

    /// Switches header escaping to what `version` requires (off for 1.0, on for 1.1 and 1.2),
    /// for both directions. It applies from the next frame the decoder starts and the next
    /// frame encoded.
    pub fn set_version(&mut self, version: StompVersion) {
        self.escaping = version.escapes_headers();
    }

    /// Whether header escaping is on (it never applies to CONNECT, STOMP and CONNECTED).
    pub fn escaping(&self) -> bool {
        self.escaping
    }

    pub fn limits(&self) -> &StompLimits {
        &self.limits
    }

    fn decode_step(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, StompError> {
        loop {
            // Taking the state out leaves `Idle` behind on every error path, which is the reset
            // we want; paths that wait for more bytes put their state back.
            self.state = match std::mem::take(&mut self.state) {
                State::Idle => match buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(1);
                        return Ok(Some(Item::HeartBeat));
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(None),
                        Some(b'\n') => {
                            buf.advance(2);
                            return Ok(Some(Item::HeartBeat));
                        }
                        Some(_) => return Err(StompError::BareCarriageReturn),
                    },
                    Some(_) => State::Head(Head {
                        escaping: self.escaping,
                        command: None,
                        headers: Vec::new(),
                        line_start: 0,
                        scanned: 0,
                    }),
                },
                State::Head(mut head) => match head.advance(buf, &self.limits)? {
                    Some(body) => State::Body(body),
                    None => {
                        self.state = State::Head(head);
                        return Ok(None);
                    }
                },
                State::Body(mut body) => {
                    let Some(nul) = body.find_end(buf, &self.limits)? else {
                        self.state = State::Body(body);
                        return Ok(None);
                    };
                    let mut chunk = buf.split_to(nul + 1);
                    chunk.truncate(nul);
                    // Zero-copy: the body shares the read buffer's allocation.
                    let payload = chunk.split_off(body.start).freeze();
                    return Ok(Some(Item::Frame(StompFrame {
                        command: body.command,
                        headers: body.headers,
                        body: payload,
                    })));
                }
            };
        }
    }
}

impl Head {
    /// Consumes complete lines; returns the body state once the blank line is read.
    fn advance(&mut self, buf: &[u8], limits: &StompLimits) -> Result<Option<Body>, StompError> {
        loop {
            let Some(offset) = buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = buf.len();
                self.check_partial_line(&buf[self.line_start..], limits)?;
                // The frame still needs at least this line's LF and a NUL.
                if buf.len() >= limits.max_frame_size {
                    return Err(StompError::FrameTooLarge {
                        limit: limits.max_frame_size,
                    });
                }
                return Ok(None);
            };
            let lf = self.scanned + offset;
            let mut line = &buf[self.line_start..lf];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            self.line_start = lf + 1;
            self.scanned = lf + 1;
            // The frame still needs at least its NUL.
            if lf + 1 >= limits.max_frame_size {
                return Err(StompError::FrameTooLarge {
                    limit: limits.max_frame_size,
                });
            }

            let Some(command) = self.command else {
                let command =
                    Command::from_bytes(line).ok_or_else(|| StompError::UnknownCommand {
                        command: snippet(line),
                    })?;
                self.command = Some(command);
                continue;
            };
            if line.is_empty() {
                let headers = std::mem::take(&mut self.headers);
                return Body::new(command, headers, lf + 1, limits).map(Some);
            }
            if line.len() > limits.max_header_line {
                return Err(StompError::HeaderLineTooLong {
                    limit: limits.max_header_line,
                });
            }
            if self.headers.len() >= limits.max_headers {
                return Err(StompError::TooManyHeaders {
                    limit: limits.max_headers,
                });
            }
            let escaped = self.escaping && command.escapes_headers();
            self.headers.push(parse_header(line, escaped)?);
        }
    }

    /// Rejects a line that is already over its limit before its EOL arrives, so a peer cannot
    /// make us buffer up to `max_frame_size` of one endless line.
    fn check_partial_line(&self, partial: &[u8], limits: &StompLimits) -> Result<(), StompError> {
        // The line may yet end with CR LF; a trailing CR is not counted.
        let counted = match partial {
            [rest @ .., b'\r'] => rest.len(),
            _ => partial.len(),
        };
        if self.command.is_none() {
            // Fail on the first byte that cannot lead to a command (an HTTP request, a TLS
            // hello, a stray NUL) rather than wait for an EOL that may never come.
            if !Command::is_prefix(&partial[..counted]) {
                return Err(StompError::UnknownCommand {
                    command: snippet(partial),
                });
            }
        } else if counted > limits.max_header_line {
            return Err(StompError::HeaderLineTooLong {
                limit: limits.max_header_line,
            });
        }
        Ok(())
    }
}

impl Body {
    fn new(
        command: Command,
        headers: Vec<(String, String)>,
        start: usize,
        limits: &StompLimits,
    ) -> Result<Body, StompError> {
        // First entry wins (spec, "Repeated Header Entries"), for framing as for everything else.
        let len = headers
            .iter()
            .find(|(n, _)| n == CONTENT_LENGTH)
            .map(|(_, v)| parse_content_length(v.as_bytes()))
            .transpose()?;
        if let Some(len) = len {
            // Checked before any body byte is buffered: a huge claim costs nothing.
            let too_large = start
                .checked_add(len)
                .and_then(|n| n.checked_add(1))
                .is_none_or(|frame| frame > limits.max_frame_size);
            if too_large {
                return Err(StompError::FrameTooLarge {
                    limit: limits.max_frame_size,
                });
            }
        }
        Ok(Body {
            command,
            headers,
            start,
            len,
            scanned: start,
        })
    }

    /// The offset of the frame's NUL once it is in `buf`.
    fn find_end(&mut self, buf: &[u8], limits: &StompLimits) -> Result<Option<usize>, StompError> {
        if let Some(len) = self.len {
            let nul = self.start + len;
            return match buf.get(nul) {
                None => Ok(None),
                Some(0) => Ok(Some(nul)),
                Some(_) => Err(StompError::MissingNul),
            };
        }
        match buf[self.scanned..].iter().position(|&b| b == 0) {
            Some(offset) => {
                let nul = self.scanned + offset;
                if nul + 1 > limits.max_frame_size {
                    return Err(StompError::FrameTooLarge {
                        limit: limits.max_frame_size,
                    });
                }
                Ok(Some(nul))
            }
            None => {
                self.scanned = buf.len();
                // Everything buffered belongs to this frame, and its NUL is still to come.
                if buf.len() >= limits.max_frame_size {
                    return Err(StompError::FrameTooLarge {
                        limit: limits.max_frame_size,
                    });
                }
                Ok(None)
            }
        }
    }
}

/// Parses one header line (EOL removed). The name ends at the first colon; further colons belong
/// to the value. The 1.2 grammar forbids them there, but 1.0 peers send them unescaped
/// (URLs, times) and widely deployed brokers accept them, so we do too.
fn parse_header(line: &[u8], escaped: bool) -> Result<(String, String), StompError> {
    if line.contains(&b'\r') {
        return Err(StompError::BareCarriageReturn);
    }
    // A NUL inside the head almost always means the peer forgot the blank line before the body.
    if line.contains(&0) {
        return Err(StompError::MalformedHeader {
            reason: "NUL octet in a header line (missing blank line before the body?)",
        });
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(StompError::MalformedHeader {
            reason: "no colon in header line",
        })?;
    if colon == 0 {
        return Err(StompError::MalformedHeader {
            reason: "empty header name",
        });
    }
    let line = std::str::from_utf8(line).map_err(|_| StompError::InvalidUtf8)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if escaped {
        Ok((unescape(name)?, unescape(value)?))
    } else {
        Ok((name.to_owned(), value.to_owned()))
    }
}

impl Decoder for StompCodec {
    type Item = Item;
    type Error = StompError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, StompError> {
        let result = self.decode_step(buf);
        if result.is_err() {
            self.state = State::Idle;
        }
        result
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, StompError> {
        match self.decode(buf)? {
            Some(item) => Ok(Some(item)),
            None if buf.is_empty() => Ok(None),
            None => {
                self.state = State::Idle;
                Err(StompError::UnexpectedEof)
            }
        }
    }
}

/// Writes `frame` to `dst`.
///
/// - LF line endings; headers in the frame's order.
/// - Headers escaped when `escaping` is on and the command is not CONNECT, STOMP or CONNECTED.
///   Where escaping is off, a header that cannot be written verbatim (CR or LF anywhere, a colon
///   in a name) is [`StompError::Unencodable`]; so is a NUL in any header or an empty name.
/// - `content-length` is computed, never trusted: exactly one `content-length: <body length>` is
///   written, in place of the frame's first `content-length` header (whatever its value), or
///   after the other headers if the frame has none; later repeats are dropped. It is written whenever the body is
///   non-empty (so NULs in it survive) or the frame carried the header. `content-type` and every
///   other header pass through untouched.
///
/// [`StompLimits`] are not applied here: what we send is bounded where messages are accepted.
///
/// On error nothing is written to `dst`.
pub fn encode_frame(
    frame: &StompFrame,
    escaping: bool,
    dst: &mut BytesMut,
) -> Result<(), StompError> {
    let escaped = escaping && frame.command.escapes_headers();
    for (name, value) in &frame.headers {
        check_encodable(name, value, escaped)?;
    }

    let len_digits = frame.body.len().to_string();
    let estimate = frame.command.as_str().len()
        + frame
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 2)
            .sum::<usize>()
        + CONTENT_LENGTH.len()
        + len_digits.len()
        + frame.body.len()
        + 5;
    dst.reserve(estimate);

    dst.put_slice(frame.command.as_str().as_bytes());
    dst.put_u8(b'\n');
    let mut length_written = false;
    let write_length = |dst: &mut BytesMut| {
        dst.put_slice(CONTENT_LENGTH.as_bytes());
        dst.put_u8(b':');
        dst.put_slice(len_digits.as_bytes());
        dst.put_u8(b'\n');
    };
    for (name, value) in &frame.headers {
        if name == CONTENT_LENGTH {
            if !length_written {
                write_length(dst);
                length_written = true;
            }
            continue;
        }
        if escaped {
            escape_into(name, dst);
            dst.put_u8(b':');
            escape_into(value, dst);
        } else {
            dst.put_slice(name.as_bytes());
            dst.put_u8(b':');
            dst.put_slice(value.as_bytes());
        }
        dst.put_u8(b'\n');
    }
    if !length_written && !frame.body.is_empty() {
        write_length(dst);
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
    Ok(())
}

fn check_encodable(name: &str, value: &str, escaped: bool) -> Result<(), StompError> {
    let unencodable = |reason| Err(StompError::Unencodable { reason });
    if name.is_empty() {
        return unencodable("empty header name");
    }
    if name.contains('\0') || value.contains('\0') {
        return unencodable("NUL in a header");
    }
    if !escaped {
        if name.contains(['\r', '\n', ':']) {
            return unencodable("CR, LF or colon in an unescaped header name");
        }
        if value.contains(['\r', '\n']) {
            return unencodable("CR or LF in an unescaped header value");
        }
    }
    Ok(())
}

impl Encoder<&StompFrame> for StompCodec {
    type Error = StompError;

    fn encode(&mut self, frame: &StompFrame, dst: &mut BytesMut) -> Result<(), StompError> {
        encode_frame(frame, self.escaping, dst)
    }
}

impl Encoder<StompFrame> for StompCodec {
    type Error = StompError;

    fn encode(&mut self, frame: StompFrame, dst: &mut BytesMut) -> Result<(), StompError> {
        encode_frame(&frame, self.escaping, dst)
    }
}

impl Encoder<Item> for StompCodec {
    type Error = StompError;

    /// A heart-beat is a single LF.
    fn encode(&mut self, item: Item, dst: &mut BytesMut) -> Result<(), StompError> {
        match item {
            Item::HeartBeat => {
                dst.put_u8(b'\n');
                Ok(())
            }
            Item::Frame(frame) => encode_frame(&frame, self.escaping, dst),
        }
    }
}
