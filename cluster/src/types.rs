//! Small value types shared by the machine, the stores and the driver.

use std::fmt;

/// A lease epoch: the fencing token.
///
/// Epochs start at 1 and only grow. Claiming epoch `n` succeeds for exactly one lane, ever; a lane writes the
/// journal only under the epoch it claimed, and every journal batch carries it, so a store or a reader can reject
/// anything stamped with an older epoch than one it has already seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The first epoch ever claimed on an empty store.
    pub const FIRST: Epoch = Epoch(1);

    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The identity of a lane ("a", "b", or a host name). Recorded in the lease for operators and diagnostics;
/// correctness never depends on it, only on epochs and heartbeat changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LaneId(String);

impl LaneId {
    /// Longest accepted lane id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// A lane id: 1 to 64 bytes of ASCII letters, digits, `-`, `_` or `.` (it is written into lease files).
    pub fn new(id: impl Into<String>) -> Result<LaneId, crate::ConfigError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= Self::MAX_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(LaneId(id))
        } else {
            Err(crate::ConfigError::InvalidLaneId { id })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LaneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a reader sees of the lease: the newest epoch, who claimed it, and the holder's heartbeat counter for it
/// (0 until the holder's first renewal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The newest claimed epoch.
    pub epoch: Epoch,
    /// The lane that claimed it; `None` while the claim record is still being written or is unreadable.
    pub holder: Option<LaneId>,
    /// The holder's heartbeat counter for this epoch.
    pub heartbeat: u64,
}
