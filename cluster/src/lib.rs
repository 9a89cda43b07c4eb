//! tandem-cluster (docs written below).

mod config;
pub mod driver;
pub mod machine;
pub mod store;
mod types;

pub use config::{Config, ConfigError, Timing};
pub use driver::{DriverHandle, LeaseDriver, NotHolding, RecoveryReporter, WriteGuard};
pub use machine::{Action, ClaimOutcome, Event, FenceReason, RenewOutcome, Role, RoleMachine};
pub use store::{FileLeaseStore, LeaseError, LeaseStore, MemoryLeaseStore};
pub use types::{Epoch, LaneId, LeaseView};
