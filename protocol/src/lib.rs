//! tandem-protocol.
