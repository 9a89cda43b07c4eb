//! tandem-broker.
