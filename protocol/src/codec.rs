//! The length-prefixed frame codec (layout in [`crate::frame`]).
//!
//! Limits come first: the length field is checked against the maximum frame size before anything
//! is reserved, so a header claiming 4 GiB costs nothing and is an error. `Ok(None)` means "need more
//! bytes"; every error is fatal for the connection (the listener answers with an Error frame carrying
//! [`CodecError::error_code`] and closes), because after a bad frame the byte stream cannot be trusted.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{Frame, FrameType, HEADER_LEN};
use crate::{DEFAULT_MAX_FRAME_SIZE, ErrorCode};

/// A decoding or encoding failure.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The length field exceeds the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length the frame claims (type byte + body).
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A length of zero: not even a type byte.
    #[error("frame with length 0 (no type byte)")]
    EmptyFrame,
    /// A well-framed frame whose type byte no frame uses.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// The body does not decode as the frame type's message.
    #[error("malformed {frame_type:?} frame: {source}")]
    Malformed {
        /// The type the frame claimed.
        frame_type: FrameType,
        /// What prost found wrong.
        source: prost::DecodeError,
    },
}

impl CodecError {
    /// The wire error code to report to the peer.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            CodecError::Io(_) | CodecError::EmptyFrame | CodecError::Malformed { .. } => {
                ErrorCode::MalformedFrame
            }
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
        }
    }
}

/// Encodes and decodes [`Frame`]s with a maximum frame size (the length field's value: type byte
/// plus body).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> FrameCodec {
        FrameCodec {
            max_frame_size: max_frame_size.clamp(16, u32::MAX as usize),
        }
    }

    /// The configured maximum.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len == 0 {
            return Err(CodecError::EmptyFrame);
        }
        if len > self.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        if src.len() < 4 + len {
            // Bounded by the check above: at most max_frame_size.
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        let ty_byte = src[4];
        src.advance(HEADER_LEN);
        let body = src.split_to(len - 1).freeze();
        let ty = FrameType::from_u8(ty_byte).ok_or(CodecError::UnknownFrameType(ty_byte))?;
        Frame::decode_body(ty, body)
            .map(Some)
            .map_err(|source| CodecError::Malformed {
                frame_type: ty,
                source,
            })
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = frame.body_len() + 1;
        if len > self.max_frame_size {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        frame.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::sample_frames;
    use bytes::{BufMut, Bytes};

    fn encode(f: &Frame) -> BytesMut {
        let mut b = BytesMut::new();
        FrameCodec::default().encode(f, &mut b).unwrap();
        b
    }

    #[test]
    fn samples_cover_every_frame_type() {
        let types: std::collections::HashSet<_> =
            sample_frames().iter().map(|f| f.frame_type()).collect();
        for t in FrameType::ALL {
            assert!(types.contains(t), "no sample for {t:?}");
        }
    }

    #[test]
    fn round_trip_every_frame() {
        for f in sample_frames() {
            let mut buf = encode(&f);
            let got = FrameCodec::default()
                .decode(&mut buf)
                .unwrap()
                .expect("whole frame");
            assert_eq!(got, f);
            assert!(buf.is_empty(), "{:?} left bytes behind", f.frame_type());
        }
    }

    #[test]
    fn header_bytes_of_every_frame() {
        for f in sample_frames() {
            let buf = encode(&f);
            let body = f.body_len();
            let len = (body + 1) as u32;
            assert_eq!(&buf[..4], &len.to_be_bytes(), "{:?} length", f.frame_type());
            assert_eq!(
                buf[4],
                f.frame_type() as u8,
                "{:?} type byte",
                f.frame_type()
            );
            assert_eq!(buf.len(), HEADER_LEN + body);
        }
    }

    #[test]
    fn every_truncation_needs_more_bytes() {
        for f in sample_frames() {
            let full = encode(&f);
            for cut in 0..full.len() {
                let mut part = BytesMut::from(&full[..cut]);
                let r = FrameCodec::default().decode(&mut part);
                assert!(
                    matches!(r, Ok(None)),
                    "{:?} cut at {cut}/{}: {r:?}",
                    f.frame_type(),
                    full.len()
                );
                assert_eq!(part.len(), cut, "a partial frame must not be consumed");
            }
        }
    }

    #[test]
    fn truncated_body_inside_a_whole_frame_is_a_clean_error() {
        // A frame whose length is right but whose protobuf body is cut short: re-frame a prefix of the
        // body with a correct length header. Each must decode or fail cleanly, never panic.
        for f in sample_frames() {
            let full = encode(&f);
            let body = &full[HEADER_LEN..];
            for cut in 0..body.len() {
                let mut b = BytesMut::new();
                b.put_u32(cut as u32 + 1);
                b.put_u8(f.frame_type() as u8);
                b.extend_from_slice(&body[..cut]);
                match FrameCodec::default().decode(&mut b) {
                    Ok(Some(_)) | Err(CodecError::Malformed { .. }) => {}
                    other => panic!("{:?} body cut at {cut}: {other:?}", f.frame_type()),
                }
            }
        }
    }

    #[test]
    fn frames_back_to_back_and_split_anywhere() {
        let frames = sample_frames();
        let mut all = BytesMut::new();
        for f in &frames {
            all.extend_from_slice(&encode(f));
        }
        for split in [1usize, 3, 7, 64] {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in all.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Some(f) = codec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, frames, "split {split}");
        }
    }

    #[test]
    fn a_four_gib_claim_is_refused_without_allocating() {
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x06][..]);
        let cap_before = b.capacity();
        let r = FrameCodec::default().decode(&mut b);
        assert!(
            matches!(
                r,
                Err(CodecError::FrameTooLarge {
                    len: 0xffff_ffff,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(b.capacity(), cap_before);
        assert_eq!(r.unwrap_err().error_code(), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn zero_length_and_unknown_type_and_garbage() {
        let mut b = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut b),
            Err(CodecError::EmptyFrame)
        ));

        let mut b = BytesMut::from(&[0, 0, 0, 3, 0xee, 0x08, 0x01][..]);
        let e = FrameCodec::default().decode(&mut b).unwrap_err();
        assert!(matches!(e, CodecError::UnknownFrameType(0xee)));
        assert_eq!(e.error_code(), ErrorCode::UnknownFrameType);

        // A Send whose body is a varint field that never ends.
        let mut b = BytesMut::from(&[0, 0, 0, 4, FrameType::Send as u8, 0x08, 0xff, 0xff][..]);
        let e = FrameCodec::default().decode(&mut b).unwrap_err();
        assert!(
            matches!(
                e,
                CodecError::Malformed {
                    frame_type: FrameType::Send,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn frame_limit_applies_both_ways() {
        let big = Frame::Send(crate::wire::Send {
            producer_id: 1,
            sequence: 1,
            receipt: true,
            message: Bytes::from(vec![0u8; 100]),
        });
        let mut small = FrameCodec::new(64);
        let mut out = BytesMut::new();
        assert!(matches!(
            small.encode(&big, &mut out),
            Err(CodecError::FrameTooLarge { .. })
        ));
        assert!(out.is_empty());
        let mut wire = encode(&big);
        assert!(matches!(
            small.decode(&mut wire),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn decoded_bytes_share_the_read_buffer() {
        let payload = Bytes::from(vec![7u8; 4096]);
        let f = Frame::Send(crate::wire::Send {
            producer_id: 1,
            sequence: 2,
            receipt: false,
            message: payload,
        });
        let mut buf = encode(&f);
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let Some(Frame::Send(s)) = FrameCodec::default().decode(&mut buf).unwrap() else {
            panic!("not a send")
        };
        let p = s.message.as_ptr() as usize;
        assert!(
            p >= start && p < end,
            "the body was copied out of the read buffer"
        );
    }

    #[test]
    fn seeded_random_bytes_never_panic() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let n = (next() % 64) as usize;
            let mut b = BytesMut::with_capacity(n + 5);
            // Half of the inputs get a plausible small length so bodies are exercised too.
            if next() % 2 == 0 {
                b.put_u32(n as u32 + 1);
                b.put_u8(FrameType::ALL[(next() as usize) % FrameType::ALL.len()] as u8);
            }
            for _ in 0..n {
                b.put_u8(next() as u8);
            }
            let mut codec = FrameCodec::new(1024);
            while let Ok(Some(_)) = codec.decode(&mut b) {}
        }
    }
}
