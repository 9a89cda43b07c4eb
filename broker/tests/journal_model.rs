//! Randomized model check: random appends, acks, delivery counts, transactions, reopens and
//! crash copies on tiny segments (so that reclaim and compaction run all the time); after every
//! reopen and in every crash copy the recovered live state must equal a plain in-memory model.
//! Seeds are fixed (the compactor's timing is not); a failure prints the seed and step.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tandem_broker::journal::{IoFaults, Journal, JournalOptions, Record, Recovered};

/// A disk that can be frozen: every write, sync and create fails, so the files on disk are
/// exactly what a crash at that moment would leave.
#[derive(Default)]
struct Freezer(AtomicBool);

impl Freezer {
    fn err(&self) -> Option<std::io::Error> {
        self.0
            .load(Ordering::SeqCst)
            .then(|| std::io::Error::other("frozen"))
    }
}

impl IoFaults for Freezer {
    fn on_write(&self, _: &Path, _: u64, _: usize) -> Option<(usize, std::io::Error)> {
        self.err().map(|e| (0, e))
    }
    fn on_sync(&self, _: &Path) -> Option<std::io::Error> {
        self.err()
    }
    fn on_create(&self, _: &Path) -> Option<std::io::Error> {
        self.err()
    }
}

/// Freezes the disk, waits until the writer is past any batch it had started, and recovers a
/// copy of the files as they are: what a crash at this point leaves behind.
fn crash_check(j: &Journal, dir: &Path, freezer: &Freezer, o: &JournalOptions) -> Model {
    freezer.0.store(true, Ordering::SeqCst);
    // A barrier: the writer is sequential, so once this fails everything before it is done.
    assert!(j.append(Vec::new()).unwrap().wait().is_err());
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "seg") {
            std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    freezer.0.store(false, Ordering::SeqCst);
    let mut o = o.clone();
    o.faults = None;
    let (_j, r) = Journal::open(copy.path(), o).unwrap();
    live(&r)
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const QUEUES: [&str; 3] = ["a", "b", "c"];

/// msg_id -> queue -> delivery count
type Model = BTreeMap<u64, BTreeMap<String, u32>>;

fn body(id: u64) -> Bytes {
    Bytes::from(format!("body-{id}-{}", "x".repeat((id % 50) as usize)))
}

fn live(r: &Recovered) -> Model {
    r.messages
        .iter()
        .map(|m| {
            assert_eq!(m.encoded, body(m.msg_id));
            let refs = m
                .refs
                .iter()
                .map(|r| (r.queue.to_string(), r.delivery_count))
                .collect();
            (m.msg_id, refs)
        })
        .collect()
}

fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = JournalOptions::new(1);
    o.segment_size = 1500;
    o.compaction_ratio = 2;
    let freezer = Arc::new(Freezer::default());
    o.faults = Some(freezer.clone());
    let mut rng = Rng(seed | 1);
    let mut model = Model::new();
    let mut next_id = 1u64;
    let mut next_tx = 1u64;
    let (mut j, _) = Journal::open(dir.path(), o.clone()).unwrap();
    let mut reclaimed = 0;
    let mut compactions = 0;
    for step in 0..300 {
        let mut records = Vec::new();
        let mut tx_model = Model::new();
        let op = rng.below(100);
        match op {
            // Send to 1..=3 queues.
            0..=34 => {
                let id = next_id;
                next_id += 1;
                records.push(Record::AddMessage {
                    msg_id: id,
                    encoded: body(id),
                });
                let n = 1 + rng.below(3) as usize;
                let mut refs = BTreeMap::new();
                for q in &QUEUES[..n] {
                    records.push(Record::AddRef {
                        msg_id: id,
                        queue: (*q).into(),
                    });
                    refs.insert((*q).to_string(), 0);
                }
                model.insert(id, refs);
            }
            // Ack one live ref.
            35..=69 => {
                if let Some((&id, refs)) = model.iter_mut().nth(rng.below(8) as usize) {
                    let q = refs.keys().next().unwrap().clone();
                    refs.remove(&q);
                    records.push(Record::AckRef {
                        msg_id: id,
                        queue: q,
                    });
                    if refs.is_empty() {
                        model.remove(&id);
                    }
                }
            }
            // Redelivery.
            70..=79 => {
                if let Some((&id, refs)) = model.iter_mut().next() {
                    let (q, count) = refs.iter_mut().next().unwrap();
                    *count += 1;
                    records.push(Record::DeliveryCount {
                        msg_id: id,
                        queue: q.clone(),
                        count: *count,
                    });
                }
            }
            // A transaction over several appends: send one, ack the oldest; commit or not.
            80..=94 => {
                let tx_id = next_tx;
                next_tx += 1;
                let id = next_id;
                next_id += 1;
                let wrap = |op| Record::Tx {
                    tx_id,
                    op: Box::new(op),
                };
                j.append(vec![
                    wrap(Record::AddMessage {
                        msg_id: id,
                        encoded: body(id),
                    }),
                    wrap(Record::AddRef {
                        msg_id: id,
                        queue: "a".into(),
                    }),
                ])
                .unwrap()
                .wait()
                .unwrap();
                tx_model.insert(id, BTreeMap::from([("a".to_string(), 0)]));
                let mut acked = None;
                if let Some((&old, refs)) = model.iter().next() {
                    let q = refs.keys().next().unwrap().clone();
                    j.append(vec![wrap(Record::AckRef {
                        msg_id: old,
                        queue: q.clone(),
                    })])
                    .unwrap()
                    .wait()
                    .unwrap();
                    acked = Some((old, q));
                }
                if rng.below(3) > 0 {
                    records.push(Record::TxCommit { tx_id });
                    model.append(&mut tx_model);
                    if let Some((old, q)) = acked {
                        let refs = model.get_mut(&old).unwrap();
                        refs.remove(&q);
                        if refs.is_empty() {
                            model.remove(&old);
                        }
                    }
                } else if rng.below(2) == 0 {
                    records.push(Record::TxRollback { tx_id });
                }
                // else: left undecided, discarded at the next reopen.
            }
            // Crash (of a copy) at a batch boundary, possibly between compaction chunks.
            95..=97 => {
                let recovered = crash_check(&j, dir.path(), &freezer, &o);
                assert_eq!(recovered, model, "crash copy, seed {seed} step {step}");
                continue;
            }
            // Clean restart.
            _ => {
                reclaimed += j.stats().segments_deleted;
                compactions += j.stats().compactions;
                drop(j);
                let (nj, r) = Journal::open(dir.path(), o.clone()).unwrap();
                reclaimed += r.report.segments_reclaimed as u64;
                assert_eq!(live(&r), model, "seed {seed} step {step}");
                assert_eq!(r.max_msg_id, next_id - 1, "seed {seed} step {step}");
                j = nj;
                continue;
            }
        }
        if !records.is_empty() {
            j.append(records).unwrap().wait().unwrap();
        }
    }
    reclaimed += j.stats().segments_deleted;
    compactions += j.stats().compactions;
    assert!(reclaimed > 0, "reclaim never ran");
    eprintln!("seed {seed}: {reclaimed} segments reclaimed, {compactions} compactions");
    drop(j);
    let (_j, r) = Journal::open(dir.path(), o).unwrap();
    assert_eq!(live(&r), model, "seed {seed} at the end");
}

#[test]
fn recovered_state_matches_the_model_across_reopens_and_reclaim() {
    for seed in [1, 2, 0xdead_beef, 42] {
        run(seed);
    }
}
