//! The reconnect schedule: a pure state machine (no I/O, no clock, no sleeping).
//!
//! The connection's supervisor task feeds it events with the current time — the link was lost, an
//! attempt failed, an attempt succeeded — and gets back a [`Step`]: connect to endpoint `i` at
//! instant `at`, or give up. The task only carries the steps out, so the whole policy (backoff,
//! jitter, round-robin, budgets) is tested here by driving time directly.
//!
//! The schedule of one round (from a loss until a connection succeeds):
//!
//! - attempt 1 goes at once, to the endpoint after the one that was lost (round-robin: with two
//!   brokers, the other one is tried first);
//! - attempt `k ≥ 2` goes `delay(k - 1)` after attempt `k - 1` failed, where
//!   `delay(j) = min(initial · multiplier^(j-1), max)`, then jittered down by up to
//!   `jitter · delay` (a uniform draw from an injectable, seedable generator), so clients that
//!   lost the same broker at the same moment spread out instead of stampeding;
//! - the round gives up when the next attempt would exceed `max_attempts`, or would start later
//!   than `max_reconnect_time` after the loss.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How a failover connection reconnects. Set from the `failover:(...)?options` URL (names as in
/// ActiveMQ's failover transport) or with [`crate::ConnectionFactory::with_reconnect`].
///
/// | URL option | field | default |
/// |---|---|---|
/// | `initialReconnectDelay` (ms) | [`initial_delay`](Self::initial_delay) | 10 ms |
/// | `maxReconnectDelay` (ms) | [`max_delay`](Self::max_delay) | 1000 ms |
/// | `useExponentialBackOff` | [`exponential`](Self::exponential) | `true` |
/// | `backOffMultiplier` | [`multiplier`](Self::multiplier) | 2.0 |
/// | `reconnectJitter` (0.0-1.0) | [`jitter`](Self::jitter) | 0.5 |
/// | `maxReconnectAttempts` (-1: no limit) | [`max_attempts`](Self::max_attempts) | no limit |
/// | `maxReconnectTime` (ms, -1: no limit) | [`max_reconnect_time`](Self::max_reconnect_time) | 60000 ms |
/// | `randomize` | [`randomize`](Self::randomize) | `true` |
/// | `seed` | [`seed`](Self::seed) | from the OS |
///
/// With both limits off the client retries forever (bounded waits still apply to every call that
/// waits for the connection: sends and requests give up after the request timeout).
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// The delay before the second attempt of a round (the first goes at once).
    pub initial_delay: Duration,
    /// The largest delay between two attempts.
    pub max_delay: Duration,
    /// Whether delays grow by [`multiplier`](Self::multiplier) after each failed attempt.
    pub exponential: bool,
    /// The growth factor of the delay (at least 1).
    pub multiplier: f64,
    /// Up to this fraction of each delay is taken off at random (0: the exact schedule).
    pub jitter: f64,
    /// Attempts per round before giving up (`None`: no limit; `Some(0)`: a lost connection is not
    /// reconnected at all).
    pub max_attempts: Option<u32>,
    /// No attempt starts later than this after the loss (`None`: no limit).
    pub max_reconnect_time: Option<Duration>,
    /// Shuffle the endpoints once (seeded) instead of trying them in the order given.
    pub randomize: bool,
    /// Seed of the jitter and shuffle generator (`None`: random per connection).
    pub seed: Option<u64>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(1000),
            exponential: true,
            multiplier: 2.0,
            jitter: 0.5,
            max_attempts: None,
            max_reconnect_time: Some(Duration::from_secs(60)),
            randomize: true,
            seed: None,
        }
    }
}

impl ReconnectPolicy {
    /// The policy a `failover:` URL's options describe; an unknown option or a bad value is an
    /// [`Error::InvalidUrl`].
    pub fn from_options(url: &str, options: &[(String, String)]) -> Result<ReconnectPolicy> {
        let bad = |reason| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let ms = |v: &str| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| bad("a delay option is a whole number of milliseconds"))
        };
        let flag = |v: &str| match v {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(bad("a boolean option is true or false")),
        };
        let limit = |v: &str| match v.parse::<i64>() {
            Ok(-1) => Ok(None),
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(bad("a limit is -1 (none) or a whole number")),
        };
        let mut p = ReconnectPolicy::default();
        for (k, v) in options {
            match k.as_str() {
                "initialReconnectDelay" => p.initial_delay = ms(v)?,
                "maxReconnectDelay" => p.max_delay = ms(v)?,
                "useExponentialBackOff" => p.exponential = flag(v)?,
                "backOffMultiplier" => {
                    p.multiplier = v
                        .parse::<f64>()
                        .ok()
                        .filter(|m| m.is_finite() && *m >= 1.0)
                        .ok_or_else(|| bad("backOffMultiplier is a number of at least 1"))?;
                }
                "reconnectJitter" => {
                    p.jitter = v
                        .parse::<f64>()
                        .ok()
                        .filter(|j| (0.0..=1.0).contains(j))
                        .ok_or_else(|| bad("reconnectJitter is a number from 0 to 1"))?;
                }
                "maxReconnectAttempts" => {
                    p.max_attempts = limit(v)?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
                }
                "maxReconnectTime" => {
                    p.max_reconnect_time =
                        limit(v)?.map(|n| Duration::from_millis(n.unsigned_abs()));
                }
                "randomize" => p.randomize = flag(v)?,
                "seed" => {
                    p.seed = Some(v.parse().map_err(|_| bad("seed is a whole number"))?);
                }
                _ => return Err(bad("unknown failover option")),
            }
        }
        if p.max_delay < p.initial_delay {
            p.max_delay = p.initial_delay;
        }
        Ok(p)
    }

    /// The un-jittered delay after the `failures`-th failed attempt of a round (1-based).
    pub fn base_delay(&self, failures: u32) -> Duration {
        if !self.exponential || failures <= 1 {
            return self.initial_delay.min(self.max_delay);
        }
        let factor = self
            .multiplier
            .powi(i32::try_from(failures - 1).unwrap_or(i32::MAX));
        let secs = self.initial_delay.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// What the supervisor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Try endpoint `endpoint` (an index into the URL's list) once `at` has come; this is the
    /// round's attempt number `attempt` (1-based).
    Connect {
        /// Index of the endpoint.
        endpoint: usize,
        /// When to start the attempt.
        at: Instant,
        /// 1 for the first attempt of the round.
        attempt: u32,
    },
    /// The budget is spent: fail everything and close.
    GiveUp {
        /// Attempts made in this round.
        attempts: u32,
        /// Time since the round began.
        elapsed: Duration,
    },
}

/// A small, seedable generator (SplitMix64): enough for jitter and a shuffle, no dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with this seed: the same seed gives the same sequence.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// A generator seeded from the OS's per-process randomness and a counter.
    pub fn from_entropy() -> SplitMix64 {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        SplitMix64(h.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The reconnect state machine of one connection.
#[derive(Debug, Clone)]
pub struct Reconnect {
    policy: ReconnectPolicy,
    /// Endpoint indices in the order they are tried (shuffled once when randomizing).
    order: Vec<usize>,
    /// Position in `order` of the endpoint last tried (or connected).
    cursor: usize,
    /// Attempts made in the current round.
    attempts: u32,
    /// When the current round began (`None`: connected, no round under way).
    since: Option<Instant>,
    rng: SplitMix64,
}

impl Reconnect {
    /// A machine for `endpoints` endpoints (at least one).
    pub fn new(policy: ReconnectPolicy, endpoints: usize) -> Reconnect {
        let rng = match policy.seed {
            Some(s) => SplitMix64::new(s),
            None => SplitMix64::from_entropy(),
        };
        Reconnect::with_rng(policy, endpoints, rng)
    }

    /// As [`Reconnect::new`] with an explicit generator.
    pub fn with_rng(policy: ReconnectPolicy, endpoints: usize, mut rng: SplitMix64) -> Reconnect {
        let mut order: Vec<usize> = (0..endpoints.max(1)).collect();
        if policy.randomize {
            for i in (1..order.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        // "Before the first": the first attempt of the first round goes to order[0].
        let cursor = order.len() - 1;
        Reconnect {
            policy,
            order,
            cursor,
            attempts: 0,
            since: None,
            rng,
        }
    }

    /// The endpoints in the order they are tried.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Attempts made in the current round.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The initial connect: a round whose first attempt goes to the first endpoint. At least one
    /// attempt is made whatever the limits.
    pub fn connect(&mut self, now: Instant) -> Step {
        self.begin(now);
        self.attempt(now)
    }

    /// The link was lost at `now`: begin a round (its first attempt goes at once, to the next
    /// endpoint).
    pub fn lost(&mut self, now: Instant) -> Step {
        self.begin(now);
        if self.policy.max_attempts == Some(0) {
            return self.give_up(now);
        }
        self.attempt(now)
    }

    /// The attempt made last failed at `now`.
    pub fn failed(&mut self, now: Instant) -> Step {
        let Some(since) = self.since else {
            // Not in a round (a bug in the caller): start one rather than stall.
            return self.lost(now);
        };
        if self.policy.max_attempts.is_some_and(|m| self.attempts >= m) {
            return self.give_up(now);
        }
        let base = self.policy.base_delay(self.attempts);
        let cut = base.mul_f64(self.policy.jitter * self.rng.next_f64());
        let at = now + base.saturating_sub(cut);
        if self
            .policy
            .max_reconnect_time
            .is_some_and(|max| at.saturating_duration_since(since) > max)
        {
            return self.give_up(now);
        }
        self.attempt(at)
    }

    /// The attempt made last succeeded: the round is over.
    pub fn connected(&mut self) {
        self.since = None;
        self.attempts = 0;
    }

    fn begin(&mut self, now: Instant) {
        self.since = Some(now);
        self.attempts = 0;
    }

    fn attempt(&mut self, at: Instant) -> Step {
        self.cursor = (self.cursor + 1) % self.order.len();
        self.attempts += 1;
        Step::Connect {
            endpoint: self.order[self.cursor],
            at,
            attempt: self.attempts,
        }
    }

    fn give_up(&mut self, now: Instant) -> Step {
        let since = self.since.take().unwrap_or(now);
        let attempts = std::mem::take(&mut self.attempts);
        Step::GiveUp {
            attempts,
            elapsed: now.saturating_duration_since(since),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn exact(initial: u64, max: u64) -> ReconnectPolicy {
        ReconnectPolicy {
            initial_delay: ms(initial),
            max_delay: ms(max),
            jitter: 0.0,
            randomize: false,
            max_reconnect_time: None,
            ..ReconnectPolicy::default()
        }
    }

    /// Drives a round in which every attempt fails at once; returns (endpoint, offset from t0).
    fn schedule(m: &mut Reconnect, t0: Instant, n: usize) -> (Vec<(usize, Duration)>, Step) {
        let mut out = Vec::new();
        let mut step = m.lost(t0);
        while let Step::Connect { endpoint, at, .. } = step {
            if out.len() == n {
                break;
            }
            out.push((endpoint, at - t0));
            step = m.failed(at);
        }
        (out, step)
    }

    #[test]
    fn exponential_backoff_capped_round_robin_from_the_next_endpoint() {
        let mut m = Reconnect::new(exact(100, 1000), 3);
        let t0 = Instant::now();
        // Connected to endpoint 0 first.
        assert!(matches!(m.connect(t0), Step::Connect { endpoint: 0, attempt: 1, at } if at == t0));
        m.connected();
        let (s, _) = schedule(&mut m, t0, 7);
        let cumulative = [0, 100, 300, 700, 1500, 2500, 3500];
        let expect: Vec<(usize, Duration)> =
            (0..7).map(|i| ((1 + i) % 3, ms(cumulative[i]))).collect();
        assert_eq!(s, expect);
    }

    #[test]
    fn without_exponential_backoff_every_delay_is_the_initial_one() {
        let p = ReconnectPolicy {
            exponential: false,
            ..exact(50, 1000)
        };
        let mut m = Reconnect::new(p, 1);
        let (s, _) = schedule(&mut m, Instant::now(), 4);
        let d: Vec<_> = s.iter().map(|(e, d)| (*e, d.as_millis())).collect();
        assert_eq!(d, vec![(0, 0), (0, 50), (0, 100), (0, 150)]);
    }

    #[test]
    fn max_attempts_gives_up_after_that_many() {
        let p = ReconnectPolicy {
            max_attempts: Some(3),
            ..exact(10, 1000)
        };
        let mut m = Reconnect::new(p, 2);
        let t0 = Instant::now();
        let (s, end) = schedule(&mut m, t0, 10);
        assert_eq!(s.len(), 3);
        assert_eq!(
            end,
            Step::GiveUp {
                attempts: 3,
                elapsed: ms(30)
            }
        );
        // A zero budget means no reconnect at all.
        let p = ReconnectPolicy {
            max_attempts: Some(0),
            ..exact(10, 1000)
        };
        let mut m = Reconnect::new(p, 2);
        assert!(matches!(m.lost(t0), Step::GiveUp { attempts: 0, .. }));
        // ...but the initial connect still makes one attempt.
        assert!(matches!(m.connect(t0), Step::Connect { attempt: 1, .. }));
        assert!(matches!(m.failed(t0), Step::GiveUp { attempts: 1, .. }));
    }

    #[test]
    fn max_reconnect_time_stops_before_an_attempt_past_it() {
        let p = ReconnectPolicy {
            max_reconnect_time: Some(ms(1000)),
            ..exact(100, 400)
        };
        let mut m = Reconnect::new(p, 1);
        let t0 = Instant::now();
        let (s, end) = schedule(&mut m, t0, 100);
        let at: Vec<u128> = s.iter().map(|(_, d)| d.as_millis()).collect();
        // 0, +100, +200, +400, +400 (=1100 > 1000: not made).
        assert_eq!(at, vec![0, 100, 300, 700]);
        assert_eq!(
            end,
            Step::GiveUp {
                attempts: 4,
                elapsed: ms(700)
            }
        );
    }

    #[test]
    fn a_success_resets_the_round() {
        let mut m = Reconnect::new(exact(100, 1000), 2);
        let t0 = Instant::now();
        let (s, _) = schedule(&mut m, t0, 3);
        assert_eq!(s.len(), 3);
        m.connected();
        assert_eq!(m.attempts(), 0);
        let t1 = t0 + ms(10_000);
        // Attempt 1 again at once; the delay starts from the initial one again.
        let Step::Connect { at, attempt, .. } = m.lost(t1) else {
            panic!()
        };
        assert_eq!((at, attempt), (t1, 1));
        let Step::Connect { at, attempt, .. } = m.failed(t1) else {
            panic!()
        };
        assert_eq!((at - t1, attempt), (ms(100), 2));
    }

    #[test]
    fn jitter_stays_within_bounds_and_a_seed_replays_the_schedule() {
        let p = ReconnectPolicy {
            jitter: 0.5,
            seed: Some(42),
            ..exact(100, 800)
        };
        let run = || {
            let mut m = Reconnect::new(p.clone(), 1);
            let t0 = Instant::now();
            let mut step = m.lost(t0);
            let mut prev = t0;
            let mut gaps = Vec::new();
            for _ in 0..8 {
                let Step::Connect { at, .. } = step else {
                    panic!()
                };
                gaps.push(at - prev);
                prev = at;
                step = m.failed(at);
            }
            gaps
        };
        let a = run();
        assert_eq!(a, run(), "same seed, same schedule");
        assert_eq!(a[0], Duration::ZERO);
        for (i, gap) in a.iter().enumerate().skip(1) {
            let base = p.base_delay(i as u32);
            assert!(
                *gap <= base && *gap >= base / 2,
                "gap {i}: {gap:?} vs {base:?}"
            );
        }
        assert!(
            a.iter()
                .skip(1)
                .any(|g| *g != p.base_delay(1) && *g != p.base_delay(2))
        );
        let other = ReconnectPolicy {
            seed: Some(7),
            ..p.clone()
        };
        let mut m = Reconnect::new(other, 1);
        let t0 = Instant::now();
        m.lost(t0);
        let Step::Connect { at, .. } = m.failed(t0) else {
            panic!()
        };
        assert_ne!(at - t0, a[1], "another seed, another draw");
    }

    #[test]
    fn randomize_shuffles_once_and_keeps_round_robin() {
        let p = ReconnectPolicy {
            randomize: true,
            seed: Some(3),
            ..exact(1, 1)
        };
        let m = Reconnect::new(p.clone(), 5);
        let mut sorted = m.order().to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        let orders: std::collections::HashSet<Vec<usize>> = (0..20)
            .map(|s| {
                Reconnect::new(
                    ReconnectPolicy {
                        seed: Some(s),
                        ..p.clone()
                    },
                    5,
                )
                .order()
                .to_vec()
            })
            .collect();
        assert!(orders.len() > 1, "seeds give different orders");
        let mut m = Reconnect::new(p, 5);
        let order = m.order().to_vec();
        let (s, _) = schedule(&mut m, Instant::now(), 10);
        let tried: Vec<usize> = s.iter().map(|(e, _)| *e).collect();
        let expect: Vec<usize> = (0..10).map(|i| order[i % 5]).collect();
        assert_eq!(tried, expect);
    }

    #[test]
    fn url_options_in_the_activemq_manner() {
        let opts = |s: &str| -> Vec<(String, String)> {
            s.split('&')
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.into(), v.into())
                })
                .collect()
        };
        let p = ReconnectPolicy::from_options(
            "u",
            &opts("initialReconnectDelay=5&maxReconnectDelay=200&maxReconnectAttempts=4&randomize=false&maxReconnectTime=-1&backOffMultiplier=1.5&reconnectJitter=0&seed=9&useExponentialBackOff=true"),
        )
        .unwrap();
        assert_eq!(
            p,
            ReconnectPolicy {
                initial_delay: ms(5),
                max_delay: ms(200),
                exponential: true,
                multiplier: 1.5,
                jitter: 0.0,
                max_attempts: Some(4),
                max_reconnect_time: None,
                randomize: false,
                seed: Some(9),
            }
        );
        assert_eq!(
            ReconnectPolicy::from_options("u", &opts("maxReconnectAttempts=-1"))
                .unwrap()
                .max_attempts,
            None
        );
        for bad in [
            "nope=1",
            "initialReconnectDelay=x",
            "randomize=yes",
            "maxReconnectAttempts=-2",
            "backOffMultiplier=0.5",
            "reconnectJitter=2",
        ] {
            let e = ReconnectPolicy::from_options("u", &opts(bad)).unwrap_err();
            assert!(matches!(e, Error::InvalidUrl { .. }), "{bad}: {e:?}");
        }
    }
}
