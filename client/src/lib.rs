//! tandem-client.
