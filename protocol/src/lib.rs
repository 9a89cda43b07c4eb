//! tandem-protocol.

pub mod selector;
