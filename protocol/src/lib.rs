//! tandem-protocol.

pub mod stomp;
