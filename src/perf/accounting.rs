//! Exact-once accounting by per-producer sequence numbers.
//!
//! Every message carries its producer's index and a sequence number (1, 2, 3, … per producer).
//! Each consumer keeps a [`Tracker`]: one bitmap of seen sequence numbers per producer, plus the
//! last sequence it saw from each producer for ordering. At the end:
//!
//! - a **queue** delivers each message to one consumer, so the consumers' trackers are merged
//!   ([`Tracker::merge`]: a sequence seen by two consumers is a duplicate) and compared once with
//!   what was sent;
//! - a **topic** delivers each message to every subscriber, so each tracker is compared on its own.
//!
//! A duplicate whose second copy was marked redelivered is the broker keeping its word (JMS allows
//! it after a failure or recover) and is counted apart; any other duplicate, and any missing
//! message, fails the run. Order is checked per consumer and producer (invariant 5: one producer's
//! messages reach a consumer of one queue in order), except for redelivered messages.

/// What one consumer saw.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    producers: Vec<ProducerTrack>,
    /// Messages naming a producer index or sequence outside the run (sequence 0, or producer ≥ P).
    pub unexpected: u64,
}

#[derive(Debug, Clone, Default)]
struct ProducerTrack {
    seen: Bitmap,
    /// Sequences that arrived at least once marked redelivered.
    redelivered: Bitmap,
    distinct: u64,
    duplicates: u64,
    redelivered_duplicates: u64,
    out_of_order: u64,
    last: u64,
}

/// A growable bitmap indexed by sequence number.
#[derive(Debug, Clone, Default)]
struct Bitmap {
    words: Vec<u64>,
}

impl Bitmap {
    /// Sets bit `i`; returns whether it was set already.
    fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.words.len() {
            self.words.resize((w + 1).next_power_of_two(), 0);
        }
        let was = self.words[w] & (1 << b) != 0;
        self.words[w] |= 1 << b;
        was
    }

    fn get(&self, i: u64) -> bool {
        self.words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn count_up_to(&self, max: u64) -> u64 {
        let full = (max / 64) as usize;
        let mut n: u64 = self
            .words
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        if let Some(w) = self.words.get(full) {
            let rest = max % 64;
            let mask = if rest == 0 { 0 } else { (1u64 << rest) - 1 };
            n += u64::from((w & mask).count_ones());
        }
        n
    }
}

/// What one delivery was, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First,
    Duplicate,
    RedeliveredDuplicate,
    Unexpected,
}

/// Per-producer outcome, compared with what the producer sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProducerSummary {
    pub producer: u32,
    pub sent: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub redelivered_duplicates: u64,
    pub out_of_order: u64,
    /// Sequences above what the producer says it sent (should be impossible).
    pub beyond_sent: u64,
    /// The first few missing sequence numbers, to start an investigation.
    pub first_missing: Vec<u64>,
}

/// The whole run's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub missing: u64,
    pub duplicates: u64,
    pub redelivered_duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    pub per_producer: Vec<ProducerSummary>,
}

impl Summary {
    /// Missing messages, or duplicates not excused by a redelivered flag.
    pub fn failed(&self) -> bool {
        self.missing > 0 || self.duplicates > 0 || self.unexpected > 0
    }

    fn add(&mut self, other: Summary) {
        self.missing += other.missing;
        self.duplicates += other.duplicates;
        self.redelivered_duplicates += other.redelivered_duplicates;
        self.out_of_order += other.out_of_order;
        self.unexpected += other.unexpected;
        for p in other.per_producer {
            match self
                .per_producer
                .iter_mut()
                .find(|q| q.producer == p.producer)
            {
                Some(q) => {
                    q.received += p.received;
                    q.missing += p.missing;
                    q.duplicates += p.duplicates;
                    q.redelivered_duplicates += p.redelivered_duplicates;
                    q.out_of_order += p.out_of_order;
                    q.beyond_sent += p.beyond_sent;
                    q.first_missing.extend(p.first_missing);
                    q.first_missing.sort_unstable();
                    q.first_missing.dedup();
                    q.first_missing.truncate(FIRST_MISSING);
                }
                None => self.per_producer.push(p),
            }
        }
    }
}

const FIRST_MISSING: usize = 10;

impl Tracker {
    pub fn new(producers: u32) -> Tracker {
        Tracker {
            producers: vec![ProducerTrack::default(); producers as usize],
            unexpected: 0,
        }
    }

    /// Records one delivery of `producer`'s message `seq` (from 1).
    pub fn record(&mut self, producer: u32, seq: u64, redelivered: bool) -> Seen {
        let Some(t) = self
            .producers
            .get_mut(producer as usize)
            .filter(|_| seq > 0)
        else {
            self.unexpected += 1;
            return Seen::Unexpected;
        };
        if seq <= t.last && !redelivered {
            t.out_of_order += 1;
        }
        t.last = t.last.max(seq);
        if redelivered {
            t.redelivered.set(seq);
        }
        if t.seen.set(seq) {
            if redelivered {
                t.redelivered_duplicates += 1;
                Seen::RedeliveredDuplicate
            } else {
                t.duplicates += 1;
                Seen::Duplicate
            }
        } else {
            t.distinct += 1;
            Seen::First
        }
    }

    /// Folds another consumer's tracker of the same queue into this one: a sequence both saw is a
    /// duplicate (excused when either copy came marked redelivered). Order counts simply add up:
    /// order only means something per consumer.
    pub fn merge(&mut self, other: &Tracker) {
        self.unexpected += other.unexpected;
        for (a, b) in self.producers.iter_mut().zip(&other.producers) {
            a.duplicates += b.duplicates;
            a.redelivered_duplicates += b.redelivered_duplicates;
            a.out_of_order += b.out_of_order;
            if a.seen.words.len() < b.seen.words.len() {
                a.seen.words.resize(b.seen.words.len(), 0);
            }
            if a.redelivered.words.len() < b.redelivered.words.len() {
                a.redelivered.words.resize(b.redelivered.words.len(), 0);
            }
            for (i, (wa, wb)) in a.seen.words.iter_mut().zip(&b.seen.words).enumerate() {
                let both = *wa & *wb;
                if both != 0 {
                    let excused = both
                        & (a.redelivered.words.get(i).copied().unwrap_or(0)
                            | b.redelivered.words.get(i).copied().unwrap_or(0));
                    a.redelivered_duplicates += u64::from(excused.count_ones());
                    a.duplicates += u64::from((both & !excused).count_ones());
                }
                a.distinct += u64::from((*wb & !*wa).count_ones());
                *wa |= *wb;
            }
            for (wa, wb) in a.redelivered.words.iter_mut().zip(&b.redelivered.words) {
                *wa |= *wb;
            }
            a.last = a.last.max(b.last);
        }
    }

    /// Compares with what each producer sent (`sent[p]` messages, sequences 1..=sent[p]).
    pub fn summarize(&self, sent: &[u64]) -> Summary {
        let mut s = Summary {
            unexpected: self.unexpected,
            ..Summary::default()
        };
        for (p, t) in self.producers.iter().enumerate() {
            let sent_p = sent.get(p).copied().unwrap_or(0);
            // Bits 1..=sent_p: count_up_to counts bits below its argument.
            let within = t.seen.count_up_to(sent_p.saturating_add(1)) - u64::from(t.seen.get(0));
            let missing = sent_p - within;
            let mut first_missing = Vec::new();
            if missing > 0 {
                let mut seq = 1;
                while seq <= sent_p && first_missing.len() < FIRST_MISSING {
                    if !t.seen.get(seq) {
                        first_missing.push(seq);
                    }
                    seq += 1;
                }
            }
            let ps = ProducerSummary {
                producer: p as u32,
                sent: sent_p,
                received: t.distinct + t.duplicates + t.redelivered_duplicates,
                missing,
                duplicates: t.duplicates,
                redelivered_duplicates: t.redelivered_duplicates,
                out_of_order: t.out_of_order,
                beyond_sent: t.distinct - within,
                first_missing,
            };
            s.missing += ps.missing;
            s.duplicates += ps.duplicates;
            s.redelivered_duplicates += ps.redelivered_duplicates;
            s.out_of_order += ps.out_of_order;
            s.unexpected += ps.beyond_sent;
            s.per_producer.push(ps);
        }
        s
    }
}

/// The run's verdict from every consumer's tracker: merged for a queue, one by one for a topic.
pub fn summarize_all(trackers: &[Tracker], sent: &[u64], topic: bool) -> Summary {
    if topic {
        let mut total = Summary::default();
        for t in trackers {
            total.add(t.summarize(sent));
        }
        total
    } else {
        let mut merged = Tracker::new(sent.len() as u32);
        for t in trackers {
            merged.merge(t);
        }
        merged.summarize(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_received_in_order() {
        let mut t = Tracker::new(2);
        for seq in 1..=100 {
            assert_eq!(t.record(0, seq, false), Seen::First);
            assert_eq!(t.record(1, seq, false), Seen::First);
        }
        let s = t.summarize(&[100, 100]);
        assert!(!s.failed(), "{s:?}");
        assert_eq!(s.per_producer[0].received, 100);
        assert_eq!(s.out_of_order, 0);
    }

    #[test]
    fn missing_are_counted_and_named() {
        let mut t = Tracker::new(1);
        for seq in (1..=200).filter(|s| s % 50 != 0) {
            t.record(0, seq, false);
        }
        // 50, 100, 150, 200 never came, and neither did 201..=205.
        let s = t.summarize(&[205]);
        assert!(s.failed());
        assert_eq!(s.missing, 9);
        assert_eq!(
            s.per_producer[0].first_missing,
            [50, 100, 150, 200, 201, 202, 203, 204, 205]
        );
    }

    #[test]
    fn duplicates_fail_unless_redelivered() {
        let mut t = Tracker::new(1);
        for seq in 1..=10 {
            t.record(0, seq, false);
        }
        assert_eq!(t.record(0, 3, true), Seen::RedeliveredDuplicate);
        let s = t.summarize(&[10]);
        assert!(!s.failed(), "a redelivered copy is allowed: {s:?}");
        assert_eq!(s.redelivered_duplicates, 1);
        assert_eq!(s.out_of_order, 0, "redelivery is not an order violation");
        assert_eq!(t.record(0, 4, false), Seen::Duplicate);
        let s = t.summarize(&[10]);
        assert!(s.failed());
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.out_of_order, 1);
    }

    #[test]
    fn out_of_order_per_producer() {
        let mut t = Tracker::new(2);
        for seq in [1, 2, 4, 3, 5] {
            t.record(0, seq, false);
        }
        for seq in [1, 2, 3] {
            t.record(1, seq, false);
        }
        let s = t.summarize(&[5, 3]);
        assert!(!s.failed(), "reordering alone loses nothing: {s:?}");
        assert_eq!(s.per_producer[0].out_of_order, 1);
        assert_eq!(s.per_producer[1].out_of_order, 0);
    }

    #[test]
    fn unexpected_sources() {
        let mut t = Tracker::new(1);
        assert_eq!(t.record(5, 1, false), Seen::Unexpected);
        assert_eq!(t.record(0, 0, false), Seen::Unexpected);
        t.record(0, 1, false);
        t.record(0, 2, false);
        // The producer claims one send but two distinct sequences came: 2 is beyond.
        let s = t.summarize(&[1]);
        assert_eq!(s.per_producer[0].beyond_sent, 1);
        assert_eq!(s.unexpected, 3);
        assert!(s.failed());
    }

    #[test]
    fn queue_merges_competing_consumers() {
        // Two consumers split 1..=1000 between them: nothing missing, nothing doubled.
        let mut a = Tracker::new(1);
        let mut b = Tracker::new(1);
        for seq in 1..=1000 {
            if seq % 3 == 0 { &mut a } else { &mut b }.record(0, seq, false);
        }
        let s = summarize_all(&[a.clone(), b.clone()], &[1000], false);
        assert!(!s.failed(), "{s:?}");
        assert_eq!(s.per_producer[0].received, 1000);
        // The same message at both consumers is a duplicate...
        b.record(0, 3, false);
        let s = summarize_all(&[a.clone(), b.clone()], &[1000], false);
        assert_eq!(s.duplicates, 1);
        // ...unless one copy was a redelivery (e.g. after the first consumer's connection died).
        let mut c = Tracker::new(1);
        for seq in (1..=1000).filter(|s| s % 3 != 0) {
            c.record(0, seq, false);
        }
        c.record(0, 6, true);
        let s = summarize_all(&[a, c], &[1000], false);
        assert!(!s.failed(), "{s:?}");
        assert_eq!(s.redelivered_duplicates, 1);
    }

    #[test]
    fn topic_checks_each_subscriber() {
        let mut full = Tracker::new(1);
        let mut late = Tracker::new(1);
        for seq in 1..=100 {
            full.record(0, seq, false);
            if seq > 40 {
                late.record(0, seq, false);
            }
        }
        let s = summarize_all(&[full.clone(), full.clone()], &[100], true);
        assert!(!s.failed());
        assert_eq!(s.per_producer[0].received, 200);
        // Merging would hide the late subscriber's loss; checking each does not.
        let s = summarize_all(&[full, late], &[100], true);
        assert_eq!(s.missing, 40);
        assert_eq!(
            s.per_producer[0].first_missing,
            (1..=10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn nothing_received_is_all_missing() {
        let s = summarize_all(&[Tracker::new(2)], &[7, 3], true);
        assert_eq!(s.missing, 10);
        let s = summarize_all(&[Tracker::new(2), Tracker::new(2)], &[7, 3], false);
        assert_eq!(s.missing, 10);
    }

    #[test]
    fn bitmap_counts() {
        let mut b = Bitmap::default();
        for i in [0u64, 1, 63, 64, 65, 1000] {
            assert!(!b.set(i));
        }
        assert!(b.set(64));
        assert_eq!(b.count_up_to(64), 3);
        assert_eq!(b.count_up_to(65), 4);
        assert_eq!(b.count_up_to(1001), 6);
        assert_eq!(b.count_up_to(10_000), 6);
    }
}
