//! tandem-provisioning.
