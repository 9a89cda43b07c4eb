//! tandem-broker.

pub mod journal;
