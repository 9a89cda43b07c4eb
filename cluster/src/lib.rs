//! tandem-cluster.
