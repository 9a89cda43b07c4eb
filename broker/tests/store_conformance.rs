//! One contract, two stores: every test here runs against the file journal (`JournalStore`) and
//! the in-memory store (`MemoryStore`) through the `MessageStore` trait, so a third store (or a
//! change to either) is held to the same behaviour. "Restart" is the store's own: reopening the
//! journal directory, or `MemoryStore::reopen` (same process, same live state; see `store.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use tandem_broker::journal::{Journal, JournalOptions, Record, Recovered};
use tandem_broker::store::{JournalStore, MemoryStore, MessageStore};

/// Opens and restarts one kind of store.
trait Harness {
    fn name(&self) -> &'static str;
    /// The store as it is after a restart (or first open), with what it recovered.
    fn restart(&mut self) -> (Arc<dyn MessageStore>, Recovered);
}

struct JournalHarness {
    dir: tempfile::TempDir,
    epoch: u64,
    current: Option<Arc<JournalStore>>,
}

impl Harness for JournalHarness {
    fn name(&self) -> &'static str {
        "journal"
    }
    fn restart(&mut self) -> (Arc<dyn MessageStore>, Recovered) {
        if let Some(old) = self.current.take() {
            old.close();
        }
        self.epoch += 1;
        let (j, rec) = Journal::open(self.dir.path(), JournalOptions::new(self.epoch)).unwrap();
        let s = Arc::new(JournalStore::new(j));
        self.current = Some(s.clone());
        (s, rec)
    }
}

struct MemoryHarness {
    current: MemoryStore,
}

impl Harness for MemoryHarness {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn restart(&mut self) -> (Arc<dyn MessageStore>, Recovered) {
        let (s, rec) = self.current.reopen();
        self.current = s.clone();
        (Arc::new(s), rec)
    }
}

fn harnesses() -> Vec<Box<dyn Harness>> {
    vec![
        Box::new(JournalHarness {
            dir: tempfile::tempdir().unwrap(),
            epoch: 0,
            current: None,
        }),
        Box::new(MemoryHarness {
            current: MemoryStore::new(),
        }),
    ]
}

fn body(id: u64) -> Bytes {
    Bytes::from(format!("body of message {id}"))
}

fn add(id: u64, queues: &[&str]) -> Vec<Record> {
    let mut v = vec![Record::AddMessage {
        msg_id: id,
        encoded: body(id),
    }];
    v.extend(queues.iter().map(|q| Record::AddRef {
        msg_id: id,
        queue: (*q).into(),
    }));
    v
}

async fn put(s: &dyn MessageStore, records: Vec<Record>) {
    s.submit(records).await.unwrap().await.unwrap();
}

/// Live messages as (id, body, {queue: (count, deliver_at)}).
type Live = BTreeMap<u64, (Bytes, BTreeMap<String, (u32, Option<u64>)>)>;

fn live(r: &Recovered) -> Live {
    r.messages
        .iter()
        .map(|m| {
            let refs = m
                .refs
                .iter()
                .map(|r| (r.queue.to_string(), (r.delivery_count, r.deliver_at_ms)))
                .collect();
            (m.msg_id, (m.encoded.clone(), refs))
        })
        .collect()
}

#[tokio::test]
async fn durable_confirmations_resolve_ok_and_in_submission_order() {
    for mut h in harnesses() {
        let (s, _) = h.restart();
        let mut pending = Vec::new();
        for id in 1..=50 {
            pending.push(s.submit(add(id, &["q"])).await.unwrap());
        }
        let last = pending.pop().unwrap();
        last.await.unwrap();
        for (i, d) in pending.into_iter().enumerate() {
            let done = d.now_or_never();
            assert!(
                matches!(done, Some(Ok(()))),
                "{}: unit {} not durable when a later one was: {done:?}",
                h.name(),
                i + 1
            );
        }
    }
}

#[tokio::test]
async fn a_restart_returns_exactly_the_live_state() {
    for mut h in harnesses() {
        let (s, first) = h.restart();
        assert!(first.messages.is_empty(), "{}: starts empty", h.name());
        put(&*s, add(1, &["a", "b"])).await;
        put(&*s, add(2, &["a"])).await;
        put(&*s, add(3, &["a"])).await;
        let mut more = vec![
            Record::AckRef {
                msg_id: 1,
                queue: "a".into(),
            },
            Record::AckRef {
                msg_id: 3,
                queue: "a".into(),
            },
            Record::DeliveryCount {
                msg_id: 2,
                queue: "a".into(),
                count: 4,
            },
            Record::ScheduledDelivery {
                msg_id: 1,
                queue: "b".into(),
                deliver_at_ms: 99,
            },
            Record::DupId {
                producer: "p".into(),
                seq: 7,
            },
            // Acks the store cannot match are ignored, not errors.
            Record::AckRef {
                msg_id: 404,
                queue: "a".into(),
            },
        ];
        more.extend(add(4, &[])); // no ref: dropped at restart
        put(&*s, more).await;

        let (_s, rec) = h.restart();
        let mut want = Live::new();
        want.insert(1, (body(1), [("b".to_string(), (0, Some(99)))].into()));
        want.insert(2, (body(2), [("a".to_string(), (4, None))].into()));
        assert_eq!(live(&rec), want, "{}", h.name());
        assert!(rec.max_msg_id >= 4, "{}: ids are never reused", h.name());
        assert_eq!(rec.dup_ids.get("p"), Some(&vec![7]), "{}", h.name());
        let ids: Vec<u64> = rec.messages.iter().map(|m| m.msg_id).collect();
        assert!(ids.is_sorted(), "{}: by ascending id", h.name());
    }
}

#[tokio::test]
async fn stored_bodies_read_back_by_location_before_and_after_a_restart() {
    for mut h in harnesses() {
        let (s, _) = h.restart();
        let pager = s.pager().expect("both stores read bodies back");
        for id in 1..=5 {
            put(&*s, add(id, &["q"])).await;
        }
        for id in 1..=5 {
            let at = s.take_location(id).expect("a location once durable");
            assert_eq!(at.len as usize, body(id).len(), "{}", h.name());
            assert_eq!(s.take_location(id), None, "{}: taken once", h.name());
            assert_eq!(pager.read_body(id, at).unwrap(), body(id), "{}", h.name());
        }
        assert_eq!(s.take_location(99), None, "{}: never stored", h.name());

        let (s, rec) = h.restart();
        let pager = s.pager().unwrap();
        assert_eq!(rec.messages.len(), 5);
        for m in &rec.messages {
            let at = m.location.expect("recovered with a location");
            assert_eq!(pager.read_body(m.msg_id, at).unwrap(), body(m.msg_id));
        }
    }
}

#[tokio::test]
async fn transactions_apply_at_commit_and_prepared_ones_survive_undecided() {
    for mut h in harnesses() {
        let (s, _) = h.restart();
        put(&*s, add(1, &["q"])).await;
        let tx = |tx_id: u64, op: Record| Record::Tx {
            tx_id,
            op: Box::new(op),
        };
        let mut records = Vec::new();
        for r in add(2, &["q"]) {
            records.push(tx(10, r));
        }
        records.push(tx(
            10,
            Record::AckRef {
                msg_id: 1,
                queue: "q".into(),
            },
        ));
        put(&*s, records).await;
        put(
            &*s,
            vec![
                tx(11, add(3, &["q"]).remove(0)),
                Record::TxPrepare { tx_id: 11 },
            ],
        )
        .await;
        put(&*s, vec![tx(12, add(4, &["q"]).remove(0))]).await; // never decided
        put(
            &*s,
            vec![
                tx(13, add(5, &["q"]).remove(0)),
                Record::TxRollback { tx_id: 13 },
            ],
        )
        .await;
        put(&*s, vec![Record::TxCommit { tx_id: 10 }]).await;
        assert_eq!(
            s.take_location(2),
            None,
            "{}: no location inside a Tx",
            h.name()
        );

        let (_s, rec) = h.restart();
        let ids: BTreeSet<u64> = rec.messages.iter().map(|m| m.msg_id).collect();
        assert_eq!(
            ids,
            [2].into(),
            "{}: 1 acked and 2 added at commit",
            h.name()
        );
        assert_eq!(
            rec.prepared_txs.iter().map(|t| t.tx_id).collect::<Vec<_>>(),
            [11],
            "{}",
            h.name()
        );
        assert!(rec.max_tx_id >= 13, "{}", h.name());
    }
}

#[tokio::test]
async fn an_invalid_unit_is_refused_whole() {
    for mut h in harnesses() {
        let (s, _) = h.restart();
        let mut bad = add(1, &["q"]);
        bad.push(Record::Tx {
            tx_id: 1,
            op: Box::new(Record::EpochMarker { epoch: 1 }),
        });
        assert!(s.submit(bad).await.is_err(), "{}", h.name());
        let (_s, rec) = h.restart();
        assert!(
            rec.messages.is_empty(),
            "{}: nothing of it stored",
            h.name()
        );
    }
}

#[tokio::test]
async fn after_close_or_fence_nothing_more_is_accepted() {
    for mut h in harnesses() {
        let (s, _) = h.restart();
        put(&*s, add(1, &["q"])).await;
        s.close();
        let refused = match s.submit(add(2, &["q"])).await {
            Err(_) => true,
            Ok(d) => d.await.is_err(),
        };
        assert!(refused, "{}: closed", h.name());

        let (s, rec) = h.restart();
        assert_eq!(
            rec.messages.len(),
            1,
            "{}: what was durable stays",
            h.name()
        );
        s.fence();
        let refused = match s.submit(add(3, &["q"])).await {
            Err(_) => true,
            Ok(d) => d.await.is_err(),
        };
        assert!(refused, "{}: fenced", h.name());
        let (_s, rec) = h.restart();
        assert_eq!(
            rec.messages.iter().map(|m| m.msg_id).collect::<Vec<_>>(),
            [1],
            "{}",
            h.name()
        );
    }
}
