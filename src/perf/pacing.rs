//! Rate pacing: when each message is *meant* to be sent.
//!
//! With a target rate `R` (messages per second over all `P` producers), producer `p`'s `k`-th
//! message (from 0) is due at `(k·P + p) / R` seconds after the start: the producers' schedules
//! interleave, so together they send one message every `1/R` instead of `P` at once. These
//! intended times are what the latency histograms measure from (coordinated-omission correction):
//! a producer that falls behind keeps its schedule, so the wait it caused shows up in the
//! latencies instead of silently lowering the offered load.
//!
//! Integer arithmetic in nanoseconds (u128 intermediates), so `due` and `intended_ns` are exact
//! inverses of each other; no floating point drift over long runs.

/// The send schedule of a paced run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    rate: u64,
    producers: u64,
}

const NANOS: u128 = 1_000_000_000;

impl Schedule {
    /// `rate` messages per second in total over `producers` producers (both at least 1).
    pub fn new(rate: u64, producers: u32) -> Schedule {
        Schedule {
            rate: rate.max(1),
            producers: u64::from(producers.max(1)),
        }
    }

    /// Nanoseconds after the start at which producer `p`'s `k`-th message (from 0) is due.
    pub fn intended_ns(&self, p: u32, k: u64) -> u64 {
        let slot = u128::from(k) * u128::from(self.producers) + u128::from(p);
        // Rounded up, so that `due(intended_ns(k))` includes k.
        let ns = (slot * NANOS).div_ceil(u128::from(self.rate));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// How many of producer `p`'s messages are due `elapsed_ns` after the start (the number of
    /// `k` with `intended_ns(p, k) <= elapsed_ns`).
    pub fn due(&self, p: u32, elapsed_ns: u64) -> u64 {
        // Slots whose time has come: slot·1e9/R ≤ elapsed  ⇔  slot ≤ elapsed·R/1e9.
        let last_slot = u128::from(elapsed_ns) * u128::from(self.rate) / NANOS;
        let p = u128::from(p);
        if last_slot < p {
            return 0;
        }
        let n = (last_slot - p) / u128::from(self.producers) + 1;
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_producer_evenly_spaced() {
        let s = Schedule::new(10_000, 1);
        assert_eq!(s.intended_ns(0, 0), 0);
        assert_eq!(s.intended_ns(0, 1), 100_000);
        assert_eq!(s.intended_ns(0, 10_000), 1_000_000_000);
        assert_eq!(s.due(0, 0), 1);
        assert_eq!(s.due(0, 99_999), 1);
        assert_eq!(s.due(0, 100_000), 2);
        assert_eq!(s.due(0, 1_000_000_000), 10_001);
    }

    #[test]
    fn producers_interleave() {
        let s = Schedule::new(1000, 4);
        // Slots 0,1,2,3 are producers 0..3's first messages, 1 ms apart.
        let firsts: Vec<u64> = (0..4).map(|p| s.intended_ns(p, 0)).collect();
        assert_eq!(firsts, [0, 1_000_000, 2_000_000, 3_000_000]);
        assert_eq!(s.intended_ns(0, 1), 4_000_000);
        assert_eq!(s.due(3, 2_999_999), 0);
        assert_eq!(s.due(3, 3_000_000), 1);
    }

    #[test]
    fn total_due_matches_rate() {
        // Over one second at R msg/s, the producers together have R messages due (+1 for t=0's).
        for (rate, producers) in [(1u64, 1u32), (7, 3), (10_000, 4), (333_333, 16), (5, 8)] {
            let s = Schedule::new(rate, producers);
            let total: u64 = (0..producers).map(|p| s.due(p, 1_000_000_000)).sum();
            assert_eq!(total, rate + 1, "rate {rate} producers {producers}");
        }
    }

    #[test]
    fn due_and_intended_are_inverse() {
        for (rate, producers) in [(3u64, 1u32), (7, 3), (10_000, 4), (999_983, 7)] {
            let s = Schedule::new(rate, producers);
            for p in 0..producers {
                for k in [0u64, 1, 2, 17, 1000, 123_457] {
                    let t = s.intended_ns(p, k);
                    assert_eq!(s.due(p, t), k + 1, "rate {rate} p {p} k {k}");
                    if t > 0 {
                        assert_eq!(s.due(p, t - 1), k, "rate {rate} p {p} k {k}");
                    }
                }
            }
        }
    }

    #[test]
    fn huge_values_saturate() {
        let s = Schedule::new(1, 1);
        assert_eq!(s.intended_ns(0, u64::MAX), u64::MAX);
        assert!(s.due(0, u64::MAX) > 0);
    }
}
