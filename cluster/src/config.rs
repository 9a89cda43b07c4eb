//! Lease timing and its validation: the inequalities the timing argument in the crate docs needs.

use std::time::Duration;

use crate::LaneId;

/// Errors in lease configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A lane id that is empty, too long, or has characters other than `[A-Za-z0-9._-]`.
    #[error("invalid lane id {id:?}: 1-64 characters from [A-Za-z0-9._-]")]
    InvalidLaneId {
        /// The rejected id.
        id: String,
    },
    /// A timing parameter outside its allowed range.
    #[error("invalid lease timing: {reason}")]
    InvalidTiming {
        /// Which inequality failed.
        reason: &'static str,
    },
}

/// Lease timing. All durations are measured on each lane's own monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How long the holder's heartbeat must stay unchanged, as seen by a dormant lane, before it may claim.
    pub ttl: Duration,
    /// How often the active renews (default `ttl / 4`).
    pub renew_interval: Duration,
    /// How often a dormant lane reads the lease (default `ttl / 8`).
    pub poll_interval: Duration,
    /// The active stops writing `ttl - safety_margin` after the start of its last successful renewal (default
    /// `ttl / 5`). Must exceed the clock-drift allowance; the rest covers scheduling jitter.
    pub safety_margin: Duration,
    /// Bound on how far the two lanes' monotonic clock *rates* may differ from real time, in parts per million
    /// (default 1000 ppm = 0.1%; NTP slews at most 500 ppm). Offsets and jumps of wall clocks do not matter.
    pub max_clock_drift_ppm: u32,
    /// How long a fenced lane stays fenced before it watches the lease again as a dormant (default `ttl`).
    pub rejoin_after: Duration,
}

impl Timing {
    /// The default timing for a given TTL: renew every TTL/4, poll every TTL/8, margin TTL/5, 1000 ppm drift.
    pub fn from_ttl(ttl: Duration) -> Timing {
        Timing {
            ttl,
            renew_interval: ttl / 4,
            poll_interval: ttl / 8,
            safety_margin: ttl / 5,
            max_clock_drift_ppm: 1000,
            rejoin_after: ttl,
        }
    }

    /// How long after the start of a successful claim or renewal the holder may still write.
    pub fn write_window(&self) -> Duration {
        self.ttl - self.safety_margin
    }

    /// Check the inequalities the safety argument relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |reason| Err(ConfigError::InvalidTiming { reason });
        if self.ttl.is_zero() || self.renew_interval.is_zero() || self.poll_interval.is_zero() {
            return bad("ttl, renew_interval and poll_interval must be positive");
        }
        if self.safety_margin >= self.ttl {
            return bad("safety_margin must be less than ttl");
        }
        if self.max_clock_drift_ppm >= 100_000 {
            return bad("max_clock_drift_ppm must be below 100000 (10%)");
        }
        // The holder must get at least two renewal attempts inside one write window, or a single slow renewal
        // fences it.
        if self.renew_interval.saturating_mul(2) > self.write_window() {
            return bad("renew_interval must be at most (ttl - safety_margin) / 2");
        }
        if self.poll_interval > self.ttl / 2 {
            return bad("poll_interval must be at most ttl / 2");
        }
        // Safety: (ttl - margin) measured on a clock running slow by rho must end, in real time, before ttl
        // measured on a clock running fast by rho: (ttl - m) / (1 - rho) < ttl / (1 + rho), which is
        // m * (1 + rho) > 2 * rho * ttl. In integers with rho = ppm / 1e6: m * (1e6 + ppm) > 2 * ppm * ttl.
        let ppm = u128::from(self.max_clock_drift_ppm);
        let lhs = self.safety_margin.as_nanos() * (1_000_000 + ppm);
        let rhs = 2 * ppm * self.ttl.as_nanos();
        if lhs <= rhs {
            return bad("safety_margin must exceed 2 * drift * ttl / (1 + drift)");
        }
        Ok(())
    }
}

/// Configuration of one lane's role machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This lane's id, written into the lease when it claims.
    pub lane: LaneId,
    /// Timing.
    pub timing: Timing,
}

impl Config {
    /// A validated configuration.
    pub fn new(lane: LaneId, timing: Timing) -> Result<Config, ConfigError> {
        timing.validate()?;
        Ok(Config { lane, timing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_across_ttls() {
        for ms in [50, 200, 1000, 5000, 30_000] {
            Timing::from_ttl(Duration::from_millis(ms))
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn margin_must_cover_drift() {
        let mut t = Timing::from_ttl(Duration::from_secs(1));
        t.max_clock_drift_ppm = 1000; // 2 * 0.001 * 1 s = 2 ms (divided by 1.001)
        t.safety_margin = Duration::from_micros(1998);
        assert!(t.validate().is_err());
        t.safety_margin = Duration::from_micros(1999);
        t.validate().unwrap();
    }

    #[test]
    fn renew_interval_must_fit_twice_in_the_write_window() {
        let mut t = Timing::from_ttl(Duration::from_secs(1));
        t.renew_interval = Duration::from_millis(401);
        assert!(t.validate().is_err());
        t.renew_interval = Duration::from_millis(400);
        t.validate().unwrap();
    }
}
