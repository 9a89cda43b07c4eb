//! Fuzz properties for tandem's decoders, as plain functions: one per target in `fuzz_targets/`.
//!
//! | target            | decoder                                                      |
//! |-------------------|--------------------------------------------------------------|
//! | `stomp_decode`    | [`StompCodec`]                                               |
//! | `frame_decode`    | the native length-prefixed [`FrameCodec`]                    |
//! | `message_decode`  | [`Message::decode`] and [`wire::MessageHeaders`]             |
//! | `selector_parse`  | [`Selector::parse`] and evaluation of what it accepts        |
//!
//! `fuzz_targets/*.rs` hand libFuzzer's input to these functions; the tests below replay a
//! seeded, mutated corpus through the same functions on stable Rust, so every property is
//! exercised by `cargo test` even where libFuzzer cannot run.
//!
//! Running the real fuzzer needs a nightly toolchain and `cargo install cargo-fuzz`:
//!
//! ```text
//! cd fuzz
//! cargo +nightly fuzz run frame_decode -- -max_total_time=300
//! ```
//!
//! Crashes land in `fuzz/artifacts/<target>/`; replay one with
//! `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
#![forbid(unsafe_code)]

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use tandem_protocol::frame::HEADER_LEN;
use tandem_protocol::model::Message;
use tandem_protocol::selector::{
    Selector, SelectorErrorKind, SelectorSource, SelectorValue, Truth,
};
use tandem_protocol::stomp::{Item, StompCodec, StompError, StompFrame, StompLimits, StompVersion};
use tandem_protocol::{CodecError, Frame, FrameCodec, wire};
use tokio_util::codec::{Decoder, Encoder};

/// Small limits so the fuzzer reaches every limit check with short inputs.
const LIMITS: StompLimits = StompLimits {
    max_frame_size: 4096,
    max_headers: 16,
    max_header_line: 256,
};

/// The STOMP decoder property.
///
/// Input layout: byte 0 is a control byte (bit 7: decode in 1.0 mode, i.e. without header
/// escaping; bits 0–2: how many explicit chunk lengths follow), then that many bytes each giving
/// a chunk length (1 + value), then the stream itself. Bytes of the stream not covered by the
/// chunk lengths arrive as one last chunk.
///
/// Checked:
/// 1. decoding never panics, and every item consumes input;
/// 2. feeding the stream in chunks yields exactly the items of a one-shot decode, and an error
///    in one case iff in the other (which limit trips first may legitimately differ);
/// 3. every decoded frame encodes, and decoding that encoding gives back the same command,
///    body and headers (modulo the `content-length` the encoder computes), and re-encoding is a
///    fixpoint.
pub fn stomp_decode(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let version = if control & 0x80 != 0 {
        StompVersion::V1_0
    } else {
        StompVersion::V1_2
    };
    let n_chunks = usize::from(control & 0x07).min(rest.len());
    let (chunk_lens, stream) = rest.split_at(n_chunks);

    let codec = || {
        let mut c = StompCodec::new(LIMITS);
        c.set_version(version);
        c
    };

    let (whole, whole_err) = decode_chunks(&mut codec(), [stream].into_iter());

    let chunks = split_chunks(chunk_lens, stream);
    let (chunked, chunked_err) = decode_chunks(&mut codec(), chunks.into_iter());

    assert_eq!(chunked, whole, "chunking changed the decoded items");
    assert_eq!(
        chunked_err.is_some(),
        whole_err.is_some(),
        "chunking changed the outcome: {chunked_err:?} vs {whole_err:?}"
    );

    for item in whole {
        if let Item::Frame(frame) = item {
            check_round_trip(&frame, version);
        }
    }
}

fn decode_chunks<'a>(
    codec: &mut StompCodec,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Item>, Option<StompError>) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(item)) => {
                    assert!(buf.len() < before, "an item must consume input");
                    items.push(item);
                }
                Ok(None) => break,
                Err(e) => return (items, Some(e)),
            }
        }
    }
    (items, None)
}

fn check_round_trip(frame: &StompFrame, version: StompVersion) {
    let mut codec = StompCodec::new(StompLimits::default());
    codec.set_version(version);
    let mut wire = BytesMut::new();
    codec
        .encode(frame, &mut wire)
        .expect("a decoded frame must be encodable");
    let encoded = wire.clone();
    let again = match codec.decode(&mut wire) {
        Ok(Some(Item::Frame(f))) => f,
        other => panic!("re-decoding {frame:?} gave {other:?}"),
    };
    assert!(wire.is_empty(), "the encoding is exactly one frame");
    assert_eq!(again.command, frame.command);
    assert_eq!(again.body, frame.body);
    let without_length = |f: &StompFrame| -> Vec<(String, String)> {
        f.headers
            .iter()
            .filter(|(n, _)| n != "content-length")
            .cloned()
            .collect()
    };
    assert_eq!(without_length(&again), without_length(frame));
    if !again.body.is_empty() || frame.header("content-length").is_some() {
        assert_eq!(again.content_length().unwrap(), Some(again.body.len()));
    }
    let mut re_encoded = BytesMut::new();
    codec.encode(&again, &mut re_encoded).unwrap();
    assert_eq!(re_encoded, encoded, "encoding is a fixpoint");
}

/// Splits `stream` after each explicit chunk length (1 + value); the rest is one last chunk.
/// Shared by the targets that compare chunked with one-shot decoding.
fn split_chunks<'a>(chunk_lens: &[u8], stream: &'a [u8]) -> Vec<&'a [u8]> {
    let mut chunks = Vec::with_capacity(chunk_lens.len() + 1);
    let mut pos = 0;
    for &len in chunk_lens {
        let end = (pos + 1 + usize::from(len)).min(stream.len());
        chunks.push(&stream[pos..end]);
        pos = end;
    }
    chunks.push(&stream[pos..]);
    chunks
}

// ------------------------------------------------------------------------------ frame_decode

/// Maximum frame sizes `frame_decode` picks from: small, so the fuzzer reaches the limit with
/// short inputs. 16 is the smallest the codec accepts.
const FRAME_MAX: [usize; 4] = [4096, 1024, 256, 16];

/// The native frame decoder property.
///
/// Input layout: byte 0 is a control byte (bits 3–4: index into [`FRAME_MAX`], the codec's
/// maximum frame size; bits 0–2: how many explicit chunk lengths follow), then that many bytes
/// each giving a chunk length (1 + value), then the stream itself, as for `stomp_decode`.
///
/// Checked:
/// 1. decoding never panics; `Ok(None)` consumes nothing and a frame consumes exactly its
///    length prefix plus 4 bytes;
/// 2. a frame-too-large error names a length over the limit and leaves the buffer's capacity
///    untouched (the claimed size is never reserved), and no decode call grows the buffer beyond
///    a bound set by the limit and the input, whatever length the stream claims;
/// 3. feeding the stream in chunks yields exactly the frames and the error of a one-shot decode
///    (framing depends only on the bytes, not on how they arrive);
/// 4. every decoded frame encodes, and decoding that encoding gives back an equal frame, exactly
///    one frame long; re-encoding is a fixpoint.
pub fn frame_decode(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let max = FRAME_MAX[usize::from((control >> 3) & 0x03)];
    let n_chunks = usize::from(control & 0x07).min(rest.len());
    let (chunk_lens, stream) = rest.split_at(n_chunks);

    let (whole, whole_err) = decode_frames(max, stream.len(), [stream].into_iter());
    let chunks = split_chunks(chunk_lens, stream);
    let (chunked, chunked_err) = decode_frames(max, stream.len(), chunks.into_iter());

    assert_eq!(chunked, whole, "chunking changed the decoded frames");
    assert_eq!(chunked_err, whole_err, "chunking changed the outcome");

    for frame in &whole {
        check_frame_round_trip(frame);
    }
}

/// Decodes every frame of `chunks` with a `max`-byte codec; the error, if any, as its message
/// (`CodecError` is not `PartialEq`, and its message carries every field).
fn decode_frames<'a>(
    max: usize,
    total: usize,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> (Vec<Frame>, Option<String>) {
    let mut codec = FrameCodec::new(max);
    assert_eq!(codec.max_frame_size(), max);
    // Generous on purpose: allocator growth policy may double, but a reservation of a claimed
    // length (up to 4 GiB) rather than a bounded one is far beyond this.
    let capacity_bound = 4 * (total + HEADER_LEN + max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let (len_before, cap_before) = (buf.len(), buf.capacity());
            let claimed = buf
                .first_chunk::<4>()
                .map(|l| u32::from_be_bytes(*l) as usize);
            let r = codec.decode(&mut buf);
            assert!(
                buf.capacity() <= capacity_bound.max(cap_before),
                "decode grew the buffer from {cap_before} to {} bytes (claimed {claimed:?})",
                buf.capacity()
            );
            match r {
                Ok(Some(frame)) => {
                    let claimed = claimed.expect("a frame needs a length prefix");
                    assert_eq!(
                        buf.len(),
                        len_before - 4 - claimed,
                        "a frame consumes exactly its length prefix and its length"
                    );
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(
                        buf.len(),
                        len_before,
                        "a partial frame must not be consumed"
                    );
                    break;
                }
                Err(e) => {
                    if let CodecError::FrameTooLarge { len, max: m } = e {
                        assert_eq!(m, max);
                        assert!(len > max, "{len} is not over the limit {max}");
                        assert_eq!(Some(len), claimed);
                        assert_eq!(
                            buf.capacity(),
                            cap_before,
                            "a frame-too-large error must not reserve anything"
                        );
                    }
                    return (frames, Some(e.to_string()));
                }
            }
        }
    }
    (frames, None)
}

fn check_frame_round_trip(frame: &Frame) {
    // Default limits: a re-encoding may legitimately be longer than the input (prost writes a
    // negative int32 as 10 bytes even when the input used 5), so it may not fit a small limit.
    let mut codec = FrameCodec::default();
    let mut wire = BytesMut::new();
    codec
        .encode(frame, &mut wire)
        .expect("a decoded frame must be encodable");
    assert_eq!(wire.len(), frame.wire_len());
    let encoded = wire.clone();
    let again = match codec.decode(&mut wire) {
        Ok(Some(f)) => f,
        other => panic!("re-decoding {frame:?} gave {other:?}"),
    };
    assert!(wire.is_empty(), "the encoding is exactly one frame");
    assert_eq!(&again, frame);
    assert_eq!(again.to_bytes(), encoded, "encoding is a fixpoint");
}

// ---------------------------------------------------------------------------- message_decode

/// The message decoder property. The input is the encoded message itself.
///
/// Checked:
/// 1. neither `Message::decode` nor a `MessageHeaders` decode panics;
/// 2. whenever the full protobuf `wire::Message` decodes, `wire::MessageHeaders` (what the broker
///    routes on) decodes too and agrees with it on every header field: the two share field
///    numbers, and a disagreement would route a message by headers its consumers never see;
/// 3. a message that decodes re-encodes, and that encoding decodes to an equal message (equal
///    as printed, so a NaN property equals itself) and is a fixpoint of encoding, bit for bit.
pub fn message_decode(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    let headers = wire::MessageHeaders::decode(bytes.clone());
    if let Ok(full) = wire::Message::decode(bytes.clone()) {
        let headers = headers
            .unwrap_or_else(|e| panic!("the full message decodes but its headers do not: {e}"));
        check_headers_agree(&headers, &full);
    }

    let Ok(msg) = Message::decode(bytes) else {
        return;
    };
    let encoded = msg.encode();
    let again = Message::decode(encoded.clone())
        .unwrap_or_else(|e| panic!("{msg:?} re-encodes to an invalid message: {e}"));
    assert_eq!(
        format!("{again:?}"),
        format!("{msg:?}"),
        "a decoded message must survive encode and decode"
    );
    assert_eq!(again.encode(), encoded, "encoding is a fixpoint");
    let headers = wire::MessageHeaders::decode(encoded).expect("headers of a valid encoding");
    check_headers_agree(&headers, &msg.to_wire());
}

fn check_headers_agree(h: &wire::MessageHeaders, m: &wire::Message) {
    assert_eq!(h.message_id, m.message_id);
    assert_eq!(h.destination, m.destination);
    assert_eq!(h.persistent, m.persistent);
    assert_eq!(h.priority, m.priority);
    assert_eq!(h.timestamp, m.timestamp);
    assert_eq!(h.expiration, m.expiration);
    assert_eq!(h.delivery_time, m.delivery_time);
    assert_eq!(h.correlation_id, m.correlation_id);
    assert_eq!(h.reply_to, m.reply_to);
    assert_eq!(h.r#type, m.r#type);
    assert_eq!(h.group_id, m.group_id);
    assert_eq!(h.group_seq, m.group_seq);
    assert_eq!(h.user_id, m.user_id);
}

// ---------------------------------------------------------------------------- selector_parse

/// A fixed message for selector evaluation: one value of every selector type, the edge values
/// of `long` and `double`, and the headers a broker supplies. Anything else is NULL.
struct FixedProps;

impl SelectorSource for FixedProps {
    fn value(&self, identifier: &str) -> Option<SelectorValue<'_>> {
        use SelectorValue::{Bool, Double, Long, Str};
        Some(match identifier {
            "color" => Str(Cow::Borrowed("red")),
            "name" => Str(Cow::Borrowed("O'Brien é😀")),
            "empty" => Str(Cow::Borrowed("")),
            "pct" => Str(Cow::Borrowed("50%_off\\")),
            "weight" => Long(3000),
            "zero" => Long(0),
            "max" => Long(i64::MAX),
            "min" => Long(i64::MIN),
            "price" => Double(9.99),
            "nan" => Double(f64::NAN),
            "inf" => Double(f64::INFINITY),
            "negz" => Double(-0.0),
            "flag" => Bool(true),
            "off" => Bool(false),
            "JMSDeliveryMode" => Str(Cow::Borrowed("PERSISTENT")),
            "JMSPriority" => Long(4),
            "JMSMessageID" => Str(Cow::Borrowed("ID:1")),
            "JMSTimestamp" => Long(1_700_000_000_000),
            "JMSXDeliveryCount" => Long(1),
            _ => return None,
        })
    }
}

/// A message without a single property or header: every identifier is NULL.
struct NoProps;

impl SelectorSource for NoProps {
    fn value(&self, _: &str) -> Option<SelectorValue<'_>> {
        None
    }
}

fn kleene_not(t: Truth) -> Truth {
    match t {
        Truth::True => Truth::False,
        Truth::False => Truth::True,
        Truth::Unknown => Truth::Unknown,
    }
}

/// The selector parser property. The input is the selector text, decoded as lossy UTF-8.
///
/// Checked:
/// 1. parsing never panics or overflows the stack, and ends within the parser's own bounds
///    (length and nesting limits; libFuzzer's timeout catches a hang);
/// 2. a parsed selector evaluates against a fixed message and an empty one without panicking,
///    and `matches` is exactly "evaluates to TRUE"; the empty selector matches both;
/// 3. `text()` and `Display` give back the input, and `Selector::parse(sel.text())` parses to a
///    selector with the same identifiers and the same truth values (the AST is not printable,
///    so this is the round trip the API offers);
/// 4. the identifiers are sorted, distinct, and each occurs in the text;
/// 5. `NOT (text)` parses unless that crosses a limit, and evaluates to the Kleene negation:
///    parenthesizing and negating a valid selector never changes how its inside parses.
pub fn selector_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(sel) = Selector::parse(&text) else {
        return;
    };
    let truths = [sel.evaluate(&FixedProps), sel.evaluate(&NoProps)];
    assert_eq!(sel.matches(&FixedProps), truths[0] == Truth::True);
    assert_eq!(sel.matches(&NoProps), truths[1] == Truth::True);
    if sel.is_empty() {
        assert_eq!(
            truths,
            [Truth::True; 2],
            "the empty selector matches everything"
        );
    }

    assert_eq!(sel.text(), text);
    assert_eq!(sel.to_string(), text);
    let again = Selector::parse(sel.text()).expect("a selector's own text parses");
    assert_eq!(again.is_empty(), sel.is_empty());
    assert!(again.identifiers().eq(sel.identifiers()));
    assert_eq!(
        [again.evaluate(&FixedProps), again.evaluate(&NoProps)],
        truths
    );

    let ids: Vec<&str> = sel.identifiers().collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "identifiers {ids:?}");
    for id in &ids {
        assert!(text.contains(id), "identifier {id:?} is not in the text");
    }

    if sel.is_empty() {
        return;
    }
    // A newline before ')' so nothing in the text can run into the parenthesis.
    match Selector::parse(&format!("NOT ({text}\n)")) {
        Ok(negated) => {
            assert_eq!(
                [negated.evaluate(&FixedProps), negated.evaluate(&NoProps)],
                truths.map(kleene_not)
            );
        }
        Err(e) => assert!(
            matches!(
                e.kind,
                SelectorErrorKind::TooDeep { .. } | SelectorErrorKind::TooLong { .. }
            ),
            "{text:?} parses but NOT (it) does not: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_protocol::model::{Body, DeliveryMode, Destination, DestinationKind, Value};
    use tandem_protocol::samples::sample_frames;
    use tandem_protocol::selector::MAX_SELECTOR_LEN;

    /// SplitMix64, so a failing seed replays exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Up to five random edits: overwrite, delete or insert a byte, or splice in a token.
    fn mutate(rng: &mut Rng, data: &mut Vec<u8>, tokens: &[&[u8]]) {
        for _ in 0..rng.below(6) {
            let at = rng.below(data.len() + 1);
            match rng.below(4) {
                0 if at < data.len() => data[at] = rng.next() as u8,
                1 if at < data.len() => {
                    data.remove(at);
                }
                2 => {
                    let t = tokens[rng.below(tokens.len())];
                    data.splice(at..at, t.iter().copied());
                }
                _ => data.insert(at, rng.next() as u8),
            }
        }
    }

    /// Replays `runs` mutations of `seeds` through `property`, naming the seed and input of a
    /// failure so it can be replayed (or written to a file for `cargo fuzz run`).
    fn replay_mutations(runs: u64, seeds: &[Vec<u8>], tokens: &[&[u8]], property: fn(&[u8])) {
        for seed in 0..runs {
            let mut rng = Rng(seed);
            let mut data = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &mut data, tokens);
            let r = std::panic::catch_unwind(|| property(&data));
            assert!(r.is_ok(), "seed {seed}: input {data:02x?}");
        }
    }

    // -------------------------------------------------------------------------- stomp_decode

    /// Valid streams the seeded corpus mutates, each prefixed by a control byte.
    const SEEDS: [&[u8]; 8] = [
        b"\x00SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello\0",
        b"\x03\x02\x05\x01MESSAGE\r\nsubscription:0\r\nmessage-id:007\r\n\r\nbody\0\n\n",
        b"\x01\x07SEND\ncontent-length:5\n\na\0b\0c\0",
        b"\x00CONNECT\naccept-version:1.0,1.2\nhost:h\npasscode:a\\b:c\n\n\0",
        b"\x00MESSAGE\na\\cb:c\\\\d\\ne\\rf\\cg\nfoo:1\nfoo:2\n\n\0",
        b"\x80SEND\nk:a\\tb:c\n\nx\0\r\n\nDISCONNECT\nreceipt:77\n\n\0",
        b"\x00\n\r\nRECEIPT\nreceipt-id:1\n\n\0ERROR\nmessage:bad\n\n\0",
        b"\x00SEND\ncontent-length:3\n\nabcd\0",
    ];

    #[test]
    fn seeds_pass() {
        for seed in SEEDS {
            stomp_decode(seed);
        }
        stomp_decode(b"");
        stomp_decode(b"\x07");
    }

    #[test]
    fn seeded_corpus() {
        let seeds: Vec<Vec<u8>> = SEEDS.iter().map(|s| s.to_vec()).collect();
        let tokens: [&[u8]; 8] = [
            b"\0",
            b"\n",
            b"\r\n",
            b"\\",
            b":",
            b"content-length:",
            b"9",
            b"SEND\n",
        ];
        replay_mutations(20_000, &seeds, &tokens, stomp_decode);
    }

    // -------------------------------------------------------------------------- frame_decode

    /// `frame_decode` inputs: every sample frame alone (under each limit), all of them back to
    /// back in chunks, and the edge cases of the length field.
    fn frame_seeds() -> Vec<Vec<u8>> {
        let frames = sample_frames();
        let mut seeds = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let limit = (i % FRAME_MAX.len()) as u8;
            let mut s = vec![limit << 3];
            s.extend_from_slice(&f.to_bytes());
            seeds.push(s);
        }
        let mut all = vec![0x05, 0, 3, 17, 200, 1];
        for f in &frames {
            all.extend_from_slice(&f.to_bytes());
        }
        seeds.push(all);
        seeds.extend([
            vec![0, 0, 0, 0, 1, 0x06],
            vec![0, 0, 0, 0, 0],
            vec![0, 0xff, 0xff, 0xff, 0xff, 0x22],
            vec![0x18, 0, 0, 0, 17, 0x22],
            vec![0, 0, 0, 0, 3, 0xee, 0x08, 0x01],
            vec![0, 0, 0, 0, 4, 0x22, 0x08, 0xff, 0xff],
        ]);
        seeds
    }

    const FRAME_TOKENS: [&[u8]; 10] = [
        &[0, 0, 0, 1],
        &[0xff, 0xff, 0xff, 0xff],
        &[0, 0, 0x10, 0x01],
        &[0x22],
        &[0x32],
        &[0x08],
        &[0x0a],
        &[0x22, 0x02],
        &[0xff],
        &[0x80],
    ];

    #[test]
    fn frame_seeds_pass() {
        for seed in frame_seeds() {
            frame_decode(&seed);
        }
        frame_decode(b"");
        frame_decode(b"\x07");
    }

    #[test]
    fn frame_seeded_corpus() {
        replay_mutations(20_000, &frame_seeds(), &FRAME_TOKENS, frame_decode);
    }

    #[test]
    fn every_frame_cut_anywhere_in_two() {
        for f in sample_frames() {
            let wire = f.to_bytes();
            for cut in 0..wire.len().min(256) {
                let mut data = vec![1, cut as u8];
                data.extend_from_slice(&wire);
                frame_decode(&data);
            }
        }
    }

    // ------------------------------------------------------------------------ message_decode

    /// Messages covering every header, every body type and every value type, NaN and the integer
    /// edges included, plus the message the sample frames carry.
    fn message_seeds() -> Vec<Vec<u8>> {
        let mut full = Message::new(Body::Map(vec![
            ("c".into(), Value::Char(0xffff)),
            ("b".into(), Value::Bytes(Bytes::from_static(b"\0\xff"))),
            ("f".into(), Value::Float(f32::NAN)),
            ("y".into(), Value::Byte(i8::MIN)),
        ]));
        full.message_id = Some("ID:1".into());
        full.destination = Some(Destination::topic("a.b").unwrap());
        full.delivery_mode = DeliveryMode::NonPersistent;
        full.set_priority(9).unwrap();
        full.timestamp = -1;
        full.expiration = i64::MAX;
        full.delivery_time = 3;
        full.correlation_id = Some(String::new());
        full.reply_to = Some(Destination::new(DestinationKind::TempQueue, "tmp").unwrap());
        full.jms_type = Some("t".into());
        full.set_property("JMSXGroupID", "g").unwrap();
        full.set_property("JMSXGroupSeq", -3).unwrap();
        full.set_property("JMSXUserID", "u").unwrap();
        full.set_property("i", i32::MIN).unwrap();
        full.set_property("l", i64::MIN).unwrap();
        full.set_property("s", i16::MAX).unwrap();
        full.set_property("d", f64::NAN).unwrap();
        full.set_property("f", -0.0f32).unwrap();
        full.set_property("t", true).unwrap();
        full.set_property("Größe", "é😀").unwrap();

        let bodies = [
            Body::Empty,
            Body::Text("héllo".into()),
            Body::Bytes(Bytes::from_static(b"\0\x01")),
            Body::Object(Bytes::from_static(b"\xac\xed\0\x05")),
            Body::Stream(vec![
                Value::Bool(false),
                Value::Short(-1),
                Value::Long(7),
                Value::Double(f64::INFINITY),
                Value::String(String::new()),
            ]),
        ];
        let mut seeds = vec![full.encode().to_vec()];
        for body in bodies {
            let mut m = full.clone();
            m.body = body;
            seeds.push(m.encode().to_vec());
        }
        seeds.push(Message::text("").encode().to_vec());
        for f in sample_frames() {
            if let Frame::Send(s) = f {
                seeds.push(s.message.to_vec());
            }
        }
        seeds.push(Vec::new());
        seeds
    }

    const MESSAGE_TOKENS: [&[u8]; 10] = [
        &[0x0a, 0x00],
        &[0x12, 0x02, 0x08, 0x07],
        &[0x20, 0x0a],
        &[0x72, 0x00],
        &[0xa2, 0x01, 0x01, b'x'],
        &[0xb2, 0x01, 0x00],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0x80],
        &[0x0b],
        &[0x00],
    ];

    #[test]
    fn message_seeds_pass() {
        let seeds = message_seeds();
        for seed in &seeds {
            message_decode(seed);
        }
        // The seeds must reach the round trip, not stop at a decode error.
        for seed in &seeds {
            Message::decode(Bytes::copy_from_slice(seed)).expect("seeds are valid messages");
        }
    }

    #[test]
    fn message_seeded_corpus() {
        replay_mutations(20_000, &message_seeds(), &MESSAGE_TOKENS, message_decode);
    }

    // ------------------------------------------------------------------------ selector_parse

    /// One selector of each grammar shape, several of them matching the fixed message.
    const SELECTOR_SEEDS: [&str; 16] = [
        "",
        "  \t",
        "color = 'red' AND weight > 2500",
        "color IN ('red', 'blue') OR name LIKE 'O''B%'",
        "pct LIKE '50!%!_%' ESCAPE '!'",
        "name NOT LIKE '_''%😀'",
        "weight BETWEEN 1000 AND 0x10000 AND price NOT BETWEEN 1.5e0 AND 2.5F",
        "nan <> nan OR nan NOT BETWEEN 0 AND 1",
        "max + 1 IS NULL AND -min > 0",
        "weight / zero IS NULL AND price / 0 > 0.",
        "NOT (flag AND off) OR absent",
        "JMSDeliveryMode = 'PERSISTENT' AND JMSPriority >= 4 AND JMSXDeliveryCount = 1",
        "(((a = 1 OR b = 2) AND c <> 3) OR d IS NOT NULL)",
        "x = -9223372036854775808 OR y = 077L OR z = .5e-3d",
        "negz = 0 AND inf > 1e308 AND 2 * -weight < -5999",
        "color",
    ];

    const SELECTOR_TOKENS: [&[u8]; 16] = [
        b" AND ",
        b" OR ",
        b"NOT ",
        b"(",
        b")",
        b"'",
        b"%",
        b" LIKE '",
        b" BETWEEN 1 AND ",
        b" IN ('a', ",
        b" IS NULL",
        b" ESCAPE '\\'",
        b"9223372036854775808",
        b"0x",
        b"1e308",
        b"\xf0\x9f\x98",
    ];

    #[test]
    fn selector_seeds_pass() {
        for seed in SELECTOR_SEEDS {
            assert!(Selector::parse(seed).is_ok(), "seed {seed:?} must parse");
            selector_parse(seed.as_bytes());
        }
        let sel = Selector::parse(SELECTOR_SEEDS[2]).unwrap();
        assert!(sel.matches(&FixedProps), "the fixed message is selectable");
    }

    #[test]
    fn selector_seeded_corpus() {
        let seeds: Vec<Vec<u8>> = SELECTOR_SEEDS
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        replay_mutations(20_000, &seeds, &SELECTOR_TOKENS, selector_parse);
    }

    #[test]
    fn selector_limits() {
        selector_parse(format!("{}a{}", "(".repeat(70), ")".repeat(70)).as_bytes());
        selector_parse(format!("{}a", "NOT ".repeat(63)).as_bytes());
        selector_parse(format!("a{}", " + a".repeat(70)).as_bytes());
        selector_parse(format!("a = '{}'", "x".repeat(MAX_SELECTOR_LEN)).as_bytes());
        selector_parse(format!("a = '{}'", "x".repeat(MAX_SELECTOR_LEN - 6)).as_bytes());
        selector_parse(format!("name LIKE '{}'", "%_".repeat(2000)).as_bytes());
    }

    // ----------------------------------------------------------------------------- corpus

    /// Writes every target's seeds to `fuzz/corpus/<target>/` (git-ignored) so that
    /// `cargo fuzz run` starts from valid inputs:
    /// `cargo test --manifest-path fuzz/Cargo.toml -- --ignored write_seed_corpus`.
    #[test]
    #[ignore = "writes files; run by hand before fuzzing"]
    fn write_seed_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let targets: [(&str, Vec<Vec<u8>>); 4] = [
            ("stomp_decode", SEEDS.iter().map(|s| s.to_vec()).collect()),
            ("frame_decode", frame_seeds()),
            ("message_decode", message_seeds()),
            (
                "selector_parse",
                SELECTOR_SEEDS
                    .iter()
                    .map(|s| s.as_bytes().to_vec())
                    .collect(),
            ),
        ];
        for (target, seeds) in targets {
            let dir = dir.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:02}")), seed).unwrap();
            }
        }
    }
}
