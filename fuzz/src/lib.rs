//! Fuzz properties for tandem's codecs, as plain functions.
//!
//! `fuzz_targets/*.rs` hand libFuzzer's input to these functions; the tests below replay a
//! seeded corpus through the same functions on stable Rust, so the property is exercised by
//! `cargo test` even where libFuzzer cannot run.
//!
//! Running the real fuzzer needs a nightly toolchain and `cargo install cargo-fuzz`:
//!
//! ```text
//! cd fuzz
//! cargo +nightly fuzz run stomp_decode -- -max_total_time=300
//! ```
//!
//! Crashes land in `fuzz/artifacts/stomp_decode/`; replay one with
//! `cargo +nightly fuzz run stomp_decode fuzz/artifacts/stomp_decode/<file>`.
#![forbid(unsafe_code)]

use bytes::BytesMut;
use tandem_protocol::stomp::{Item, StompCodec, StompError, StompFrame, StompLimits, StompVersion};
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

    let mut chunks = Vec::new();
    let mut pos = 0;
    for &len in chunk_lens {
        let end = (pos + 1 + usize::from(len)).min(stream.len());
        chunks.push(&stream[pos..end]);
        pos = end;
    }
    chunks.push(&stream[pos..]);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        for seed in 0..20_000u64 {
            let mut rng = Rng(seed);
            let mut data = SEEDS[rng.below(SEEDS.len())].to_vec();
            for _ in 0..rng.below(6) {
                let at = rng.below(data.len() + 1);
                match rng.below(4) {
                    0 if at < data.len() => data[at] = rng.next() as u8,
                    1 if at < data.len() => {
                        data.remove(at);
                    }
                    2 => {
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
                        let t = tokens[rng.below(tokens.len())];
                        data.splice(at..at, t.iter().copied());
                    }
                    _ => data.insert(at, rng.next() as u8),
                }
            }
            let r = std::panic::catch_unwind(|| stomp_decode(&data));
            assert!(r.is_ok(), "seed {seed}: input {data:?}");
        }
    }
}
