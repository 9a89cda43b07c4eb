//! Failed-login rate limiting per source address: a token bucket per address. Pure: the caller
//! passes `now`, so tests drive time without sleeping.
//!
//! Every login attempt that must check a password takes a token *before* the (expensive) hash
//! check and gets it back when the login succeeds: only failures consume, yet a burst of parallel
//! guesses cannot overtake the count. An address whose bucket is empty is refused at once, without
//! a hash check, until a token has grown back. The map is bounded: beyond `max_addresses`, buckets
//! that have refilled completely (indistinguishable from a new address) are dropped first, then
//! the least recently refilled.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// One bucket: up to `capacity` tokens, one more every `refill_every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    tokens: u32,
    /// When the partial token now growing started.
    since: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(capacity: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: capacity,
            since: now,
        }
    }

    /// Adds the tokens grown since the last refill, keeping the partial remainder.
    fn refill(&mut self, capacity: u32, every: Duration, now: Instant) {
        if self.tokens >= capacity {
            self.since = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.since);
        let grown = (elapsed.as_nanos() / every.as_nanos().max(1)).min(u128::from(capacity));
        let grown = grown as u32;
        if grown == 0 {
            return;
        }
        self.tokens = (self.tokens + grown).min(capacity);
        self.since = if self.tokens >= capacity {
            now
        } else {
            self.since + every * grown
        };
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, capacity: u32, every: Duration, now: Instant) -> Result<(), Duration> {
        self.refill(capacity, every, now);
        if self.tokens > 0 {
            if self.tokens == capacity {
                // The refill clock starts with the first token taken from a full bucket.
                self.since = now;
            }
            self.tokens -= 1;
            Ok(())
        } else {
            Err((self.since + every).saturating_duration_since(now))
        }
    }

    /// Gives a token back (a login that succeeded).
    pub fn give_back(&mut self, capacity: u32) {
        self.tokens = (self.tokens + 1).min(capacity);
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, capacity: u32, every: Duration, now: Instant) -> u32 {
        self.refill(capacity, every, now);
        self.tokens
    }
}

/// Buckets per source address.
#[derive(Debug)]
pub struct FailedLogins {
    capacity: u32,
    every: Duration,
    max_addresses: usize,
    buckets: HashMap<IpAddr, TokenBucket>,
}

impl FailedLogins {
    /// `capacity` failures at once, then one more per `every`; at most `max_addresses` tracked.
    pub fn new(capacity: u32, every: Duration, max_addresses: usize) -> FailedLogins {
        FailedLogins {
            capacity: capacity.max(1),
            every,
            max_addresses: max_addresses.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for an attempt from `addr`; `Err(wait)` when the address must wait.
    pub fn attempt(&mut self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= self.max_addresses {
            self.evict(now);
        }
        let (cap, every) = (self.capacity, self.every);
        self.buckets
            .entry(addr)
            .or_insert_with(|| TokenBucket::full(cap, now))
            .take(cap, every, now)
    }

    /// The attempt from `addr` succeeded: its token comes back.
    pub fn succeeded(&mut self, addr: IpAddr) {
        if let Some(b) = self.buckets.get_mut(&addr) {
            b.give_back(self.capacity);
        }
    }

    /// Addresses tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    fn evict(&mut self, now: Instant) {
        let (cap, every) = (self.capacity, self.every);
        self.buckets
            .retain(|_, b| b.available(cap, every, now) < cap);
        if self.buckets.len() >= self.max_addresses {
            // Still full of active offenders: drop the one whose refill started longest ago.
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.since)
                .map(|(a, _)| *a)
            {
                self.buckets.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_bucket_allows_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, t0);
        for _ in 0..3 {
            b.take(3, 10 * S, t0).unwrap();
        }
        assert_eq!(b.take(3, 10 * S, t0), Err(10 * S));
        assert_eq!(b.take(3, 10 * S, t0 + 4 * S), Err(6 * S));
        b.take(3, 10 * S, t0 + 10 * S).unwrap();
        assert!(b.take(3, 10 * S, t0 + 11 * S).is_err());
        // Partial growth is kept: the next token is due at t0 + 20 s, not 21 s.
        assert!(b.take(3, 10 * S, t0 + 19 * S).is_err());
        b.take(3, 10 * S, t0 + 20 * S).unwrap();
        // A long pause refills to capacity, never beyond.
        assert_eq!(b.available(3, 10 * S, t0 + 1000 * S), 3);
    }

    #[test]
    fn success_gives_the_token_back() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(2, 60 * S, 100);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            f.attempt(a, t0).unwrap();
            f.succeeded(a);
        }
        f.attempt(a, t0).unwrap();
        f.attempt(a, t0).unwrap();
        assert!(f.attempt(a, t0).is_err());
        // Other addresses are not affected.
        f.attempt("10.0.0.2".parse().unwrap(), t0).unwrap();
    }

    #[test]
    fn the_map_stays_bounded() {
        let t0 = Instant::now();
        let mut f = FailedLogins::new(1, 60 * S, 4);
        for i in 0..100u8 {
            let _ = f.attempt(IpAddr::from([10, 0, 0, i]), t0 + S * u32::from(i));
            assert!(f.tracked() <= 4);
        }
        // The latest offender is still limited.
        assert!(
            f.attempt(IpAddr::from([10, 0, 0, 99]), t0 + 100 * S)
                .is_err()
        );
    }
}
