//! Native frames: one variant per frame type, each carrying its generated protobuf body.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +---------------------------------------------------------------+
//! |              length (u32, big-endian) = 1 + body              |
//! +---------------+-----------------------------------------------+
//! |  frame type   |  body: protobuf encoding of the frame's       |
//! |     (u8)      |  message (length - 1 bytes, may be empty)     |
//! +---------------+-----------------------------------------------+
//! ```
//!
//! The length counts the type byte, so the smallest frame is `00 00 00 01 TT`. Type numbers are
//! grouped by area (0x0_ connection, 0x1_ sessions, 0x2_ producers, 0x3_ consumers, 0x4_
//! transactions, 0x5_ temporary destinations) and never reused.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::wire;

/// Bytes before the body: the length (4) and the type (1).
pub const HEADER_LEN: usize = 5;

macro_rules! frames {
    ($($variant:ident = $num:literal),* $(,)?) => {
        /// The frame type byte.
        #[repr(u8)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum FrameType {
            $(
                #[doc = concat!("A `", stringify!($variant), "` frame.")]
                $variant = $num,
            )*
        }

        impl FrameType {
            /// Every frame type, in declaration order.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$variant),*];

            /// The type for a type byte; `None` for a byte no frame uses.
            pub fn from_u8(b: u8) -> Option<FrameType> {
                match b {
                    $($num => Some(FrameType::$variant),)*
                    _ => None,
                }
            }
        }

        /// A decoded native frame.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Frame {
            $(
                #[doc = concat!("See `wire::", stringify!($variant), "`.")]
                $variant(wire::$variant),
            )*
        }

        impl Frame {
            /// This frame's type.
            pub fn frame_type(&self) -> FrameType {
                match self {
                    $(Frame::$variant(_) => FrameType::$variant,)*
                }
            }

            /// The length of the protobuf body alone.
            pub fn body_len(&self) -> usize {
                match self {
                    $(Frame::$variant(m) => m.encoded_len(),)*
                }
            }

            fn encode_body(&self, dst: &mut BytesMut) {
                // Cannot fail: the caller reserved `body_len()` bytes.
                let r = match self {
                    $(Frame::$variant(m) => m.encode(dst),)*
                };
                debug_assert!(r.is_ok());
            }

            /// Decodes a body of the given type. `body` is a slice of the read buffer: `bytes` fields
            /// of the result share its memory instead of copying it.
            pub fn decode_body(ty: FrameType, body: Bytes) -> Result<Frame, prost::DecodeError> {
                Ok(match ty {
                    $(FrameType::$variant => Frame::$variant(wire::$variant::decode(body)?),)*
                })
            }
        }

        $(
            impl From<wire::$variant> for Frame {
                fn from(m: wire::$variant) -> Frame {
                    Frame::$variant(m)
                }
            }
        )*
    };
}

frames! {
    Connect = 0x01,
    Connected = 0x02,
    Close = 0x03,
    Error = 0x04,
    Ok = 0x05,
    Ping = 0x06,
    Pong = 0x07,
    SessionOpen = 0x10,
    SessionClose = 0x11,
    ProducerOpen = 0x20,
    ProducerClose = 0x21,
    Send = 0x22,
    SendReceipt = 0x23,
    SendFailure = 0x24,
    ConsumerOpen = 0x30,
    ConsumerClose = 0x31,
    Deliver = 0x32,
    Ack = 0x33,
    Nack = 0x34,
    Flow = 0x35,
    Unsubscribe = 0x36,
    BrowseDone = 0x37,
    TxBegin = 0x40,
    TxCommit = 0x41,
    TxRollback = 0x42,
    TempDestinationCreate = 0x50,
    TempDestinationDelete = 0x51,
}

impl Frame {
    /// The whole frame's length on the wire, header included.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends the frame (header and body) to `dst`. The caller checks the size limit.
    pub fn encode(&self, dst: &mut BytesMut) {
        let body = self.body_len();
        dst.reserve(HEADER_LEN + body);
        dst.put_u32((body + 1) as u32);
        dst.put_u8(self.frame_type() as u8);
        self.encode_body(dst);
    }

    /// The frame as one contiguous buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.wire_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// A connection-level or request-level error frame.
    pub fn error(request_id: u64, code: crate::ErrorCode, message: impl Into<String>) -> Frame {
        Frame::Error(wire::Error {
            request_id,
            code: code.code(),
            message: message.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_bytes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for t in FrameType::ALL {
            assert!(seen.insert(*t as u8), "{t:?} reuses a type byte");
            assert_eq!(FrameType::from_u8(*t as u8), Some(*t));
        }
        assert_eq!(FrameType::from_u8(0), None);
        assert_eq!(FrameType::from_u8(0xff), None);
    }

    #[test]
    fn empty_body_frame_layout() {
        let f = Frame::Ping(wire::Ping { nonce: 0 });
        assert_eq!(&f.to_bytes()[..], &[0, 0, 0, 1, 0x06]);
    }

    #[test]
    fn error_frame_layout() {
        let f = Frame::error(7, crate::ErrorCode::InvalidDestination, "x");
        // body: field 1 varint 7, field 2 varint 5, field 3 len 1 'x'
        let body = [0x08, 7, 0x10, 5, 0x1a, 1, b'x'];
        let mut expect = vec![0, 0, 0, body.len() as u8 + 1, 0x04];
        expect.extend_from_slice(&body);
        assert_eq!(&f.to_bytes()[..], &expect[..]);
    }

    #[test]
    fn subscription_and_temp_destination_frame_layouts() {
        let f = Frame::Unsubscribe(wire::Unsubscribe {
            request_id: 2,
            subscription_name: "s".into(),
        });
        assert_eq!(
            &f.to_bytes()[..],
            &[0, 0, 0, 6, 0x36, 0x08, 2, 0x12, 1, b's']
        );
        let dest = wire::Destination {
            kind: wire::DestinationKind::TempQueue as i32,
            name: "t".into(),
        };
        // destination: field 2, len 5 = (field 1 varint 2) (field 2 len 1 't')
        let body = [0x08, 3, 0x12, 5, 0x08, 2, 0x12, 1, b't'];
        for (f, ty) in [
            (
                Frame::TempDestinationCreate(wire::TempDestinationCreate {
                    request_id: 3,
                    destination: Some(dest.clone()),
                }),
                0x50,
            ),
            (
                Frame::TempDestinationDelete(wire::TempDestinationDelete {
                    request_id: 3,
                    destination: Some(dest.clone()),
                }),
                0x51,
            ),
        ] {
            let mut expect = vec![0, 0, 0, body.len() as u8 + 1, ty];
            expect.extend_from_slice(&body);
            assert_eq!(&f.to_bytes()[..], &expect[..]);
        }
    }
}
