//! tandem's protocol crate: pure data, no I/O, no runtime.
//!
//! - [`model`]: the JMS message model (headers, typed properties, the five body types, destinations)
//!   with the validation rules of Jakarta Messaging 3.1.
//! - [`wire`]: the native protocol's protobuf types, generated from `proto/tandem.proto` by prost.
//! - [`frame`]: the [`Frame`] enum, one variant per frame type, and its byte layout.
//! - [`codec`]: the length-prefixed tokio-util codec with a maximum frame size.
//! - [`ErrorCode`]: the stable numeric error codes every listener reports.
//! - [`selector`]: JMS message selectors: parser and three-valued evaluator.
//! - [`stomp`]: the STOMP 1.2 codec (frames, escaping, limits, version and heart-beat negotiation).
//!
//! Conversions between wire and model types happen at the edges (broker sessions, client), never in
//! the middle of the broker's hot path: the broker routes on [`wire::MessageHeaders`] and forwards the
//! producer's encoded bytes to consumers untouched.

pub mod codec;
pub mod error_code;
pub mod frame;
pub mod link;
pub mod model;
#[doc(hidden)]
pub mod samples;
pub mod selector;
pub mod stomp;

/// Generated protobuf types of the native protocol (package `tandem.v1`).
#[allow(clippy::all, missing_docs)]
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/tandem.v1.rs"));
}

pub use codec::{CodecError, FrameCodec};
pub use error_code::ErrorCode;
pub use frame::{Frame, FrameType};

/// The native protocol version this crate speaks. Connect carries a [min, max] range; the server
/// answers with the highest version both sides support.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default maximum frame size: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;
