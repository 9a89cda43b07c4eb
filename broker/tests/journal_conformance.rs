//! Append → reopen → recover semantics of the journal (the contract the broker relies on).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tandem_broker::journal::{
    Journal, JournalError, JournalOptions, Record, Recovered, SubscriptionRecord,
};

fn opts(epoch: u64) -> JournalOptions {
    JournalOptions::new(epoch)
}

fn body(id: u64) -> Bytes {
    Bytes::from(format!("message body #{id}"))
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

fn ack(id: u64, q: &str) -> Record {
    Record::AckRef {
        msg_id: id,
        queue: q.into(),
    }
}

fn put(j: &Journal, records: Vec<Record>) -> u64 {
    j.append(records).unwrap().wait().unwrap()
}

/// (msg_id, queues) of the live messages.
fn live(r: &Recovered) -> Vec<(u64, Vec<String>)> {
    r.messages
        .iter()
        .map(|m| {
            assert_eq!(m.encoded, body(m.msg_id));
            let mut qs: Vec<String> = m.refs.iter().map(|r| r.queue.to_string()).collect();
            qs.sort();
            (m.msg_id, qs)
        })
        .collect()
}

fn reopen(dir: &Path, epoch: u64) -> (Journal, Recovered) {
    Journal::open(dir, opts(epoch)).unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Copies the journal files as they are right now: what a crash at this instant leaves.
fn crash_copy(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for p in segment_files(src) {
        std::fs::copy(&p, dst.path().join(p.file_name().unwrap())).unwrap();
    }
    dst
}

#[test]
fn new_journal_recovers_nothing_and_starts_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (j, r) = reopen(dir.path(), 3);
    assert!(r.messages.is_empty());
    assert_eq!(r.max_epoch, 3);
    assert_eq!(r.max_msg_id, 0);
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(j.epoch(), 3);
}

#[test]
fn unacked_messages_come_back_with_their_refs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = reopen(dir.path(), 1);
        put(&j, add(1, &["a"]));
        put(&j, add(2, &["a", "b"]));
        put(&j, add(3, &["b"]));
        put(&j, vec![ack(1, "a"), ack(2, "b")]);
    }
    let (_j, r) = reopen(dir.path(), 1);
    assert_eq!(live(&r), vec![(2, vec!["a".into()]), (3, vec!["b".into()])]);
    assert_eq!(r.max_msg_id, 3);
}

#[test]
fn a_message_on_two_queues_lives_until_both_ack() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = reopen(dir.path(), 1);
        put(&j, add(7, &["sub-1", "sub-2"]));
        put(&j, vec![ack(7, "sub-1")]);
    }
    {
        let (j, r) = reopen(dir.path(), 1);
        assert_eq!(live(&r), vec![(7, vec!["sub-2".into()])]);
        put(&j, vec![ack(7, "sub-2")]);
    }
    let (_j, r) = reopen(dir.path(), 1);
    assert!(r.messages.is_empty());
    assert_eq!(
        r.max_msg_id, 7,
        "ids are never reused, even when nothing is live"
    );
}

#[test]
fn last_delivery_count_and_schedule_win() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = reopen(dir.path(), 1);
        put(&j, add(1, &["q", "r"]));
        for count in 1..=3 {
            put(
                &j,
                vec![Record::DeliveryCount {
                    msg_id: 1,
                    queue: "q".into(),
                    count,
                }],
            );
        }
        put(
            &j,
            vec![Record::ScheduledDelivery {
                msg_id: 1,
                queue: "r".into(),
                deliver_at_ms: 99,
            }],
        );
    }
    let (_j, r) = reopen(dir.path(), 1);
    let refs = &r.messages[0].refs;
    let q = refs.iter().find(|x| &*x.queue == "q").unwrap();
    let rr = refs.iter().find(|x| &*x.queue == "r").unwrap();
    assert_eq!((q.delivery_count, q.deliver_at_ms), (3, None));
    assert_eq!((rr.delivery_count, rr.deliver_at_ms), (0, Some(99)));
}

#[test]
fn a_message_without_refs_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = reopen(dir.path(), 1);
        put(
            &j,
            vec![Record::AddMessage {
                msg_id: 5,
                encoded: body(5),
            }],
        );
    }
    let (_j, r) = reopen(dir.path(), 1);
    assert!(r.messages.is_empty());
}

fn sub(queue: &str, deleted: bool, selector: Option<&str>) -> Record {
    Record::Subscription(SubscriptionRecord {
        queue: queue.into(),
        topic: "prices".into(),
        client_id: Some("client".into()),
        name: queue.into(),
        selector: selector.map(Into::into),
        durable: true,
        shared: false,
        deleted,
    })
}

#[test]
fn destinations_and_subscriptions_survive_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = reopen(dir.path(), 1);
        let dest = |name: &str, kind, deleted| Record::Destination {
            name: name.into(),
            kind,
            deleted,
        };
        put(
            &j,
            vec![
                dest("orders", 1, false),
                dest("prices", 2, false),
                dest("tmp", 1, false),
            ],
        );
        put(&j, vec![dest("tmp", 1, true), dest("orders", 3, false)]);
        put(&j, vec![sub("s1", false, None), sub("s2", false, None)]);
        put(
            &j,
            vec![sub("s2", true, None), sub("s1", false, Some("x > 1"))],
        );
    }
    let (_j, r) = reopen(dir.path(), 1);
    let dests: Vec<(String, u8)> = r
        .destinations
        .iter()
        .map(|d| (d.name.clone(), d.kind))
        .collect();
    assert_eq!(dests, vec![("orders".into(), 3), ("prices".into(), 2)]);
    assert_eq!(r.subscriptions.len(), 1);
    assert_eq!(r.subscriptions[0].queue, "s1");
    assert_eq!(r.subscriptions[0].selector.as_deref(), Some("x > 1"));
}

#[test]
fn dup_id_cache_keeps_the_last_n_per_producer() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(1);
    o.dup_ids_per_producer = 3;
    {
        let (j, _) = Journal::open(dir.path(), o.clone()).unwrap();
        for seq in 1..=5 {
            put(
                &j,
                vec![Record::DupId {
                    producer: "p1".into(),
                    seq,
                }],
            );
        }
        put(
            &j,
            vec![Record::DupId {
                producer: "p2".into(),
                seq: 42,
            }],
        );
    }
    let (_j, r) = Journal::open(dir.path(), o).unwrap();
    assert_eq!(r.dup_ids["p1"], vec![3, 4, 5]);
    assert_eq!(r.dup_ids["p2"], vec![42]);
}

fn tx(tx_id: u64, op: Record) -> Record {
    Record::Tx {
        tx_id,
        op: Box::new(op),
    }
}

#[test]
fn committed_tx_applies_rolled_back_and_unfinished_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = reopen(dir.path(), 1);
        put(&j, add(1, &["q"]));
        // tx 10: sends 2 and acks 1, committed in a later batch.
        for r in add(2, &["q"]) {
            put(&j, vec![tx(10, r)]);
        }
        put(&j, vec![tx(10, ack(1, "q"))]);
        put(&j, vec![Record::TxCommit { tx_id: 10 }]);
        // tx 11: rolled back.
        put(&j, add(3, &["q"]).into_iter().map(|r| tx(11, r)).collect());
        put(&j, vec![Record::TxRollback { tx_id: 11 }]);
        // tx 12: never finished (crash before commit): must not be exposed, even partly.
        put(&j, add(4, &["q"]).into_iter().map(|r| tx(12, r)).collect());
        put(&j, vec![tx(12, ack(2, "q"))]);
    }
    {
        let (_j, r) = reopen(dir.path(), 1);
        assert_eq!(live(&r), vec![(2, vec!["q".into()])]);
        assert_eq!(r.report.discarded_txs, vec![12]);
        assert_eq!(r.max_tx_id, 12);
        assert!(r.prepared_txs.is_empty());
    }
    // The rollback of tx 12 was journaled: a late commit of it can no longer resurrect it.
    let (j, _) = reopen(dir.path(), 1);
    put(&j, vec![Record::TxCommit { tx_id: 12 }]);
    drop(j);
    let (_j, r) = reopen(dir.path(), 1);
    assert_eq!(live(&r), vec![(2, vec!["q".into()])]);
}

#[test]
fn prepared_tx_survives_undecided_and_can_be_committed_later() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (j, _) = reopen(dir.path(), 1);
        put(&j, add(1, &["q"]).into_iter().map(|r| tx(20, r)).collect());
        put(&j, vec![Record::TxPrepare { tx_id: 20 }]);
    }
    {
        let (j, r) = reopen(dir.path(), 1);
        assert!(r.messages.is_empty(), "prepared is not committed");
        assert_eq!(r.prepared_txs.len(), 1);
        assert_eq!(r.prepared_txs[0].tx_id, 20);
        assert_eq!(r.prepared_txs[0].ops, add(1, &["q"]));
        put(&j, vec![Record::TxCommit { tx_id: 20 }]);
    }
    let (_j, r) = reopen(dir.path(), 1);
    assert_eq!(live(&r), vec![(1, vec!["q".into()])]);
    assert!(r.prepared_txs.is_empty());
}

#[test]
fn a_confirmed_append_is_on_disk_before_close() {
    // Invariant 1: once the completion resolves, a crash (here: copying the files while the
    // journal is still open) cannot lose it.
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path(), 1);
    put(&j, add(1, &["q"]));
    let copy = crash_copy(dir.path());
    let (_j2, r) = reopen(copy.path(), 2);
    assert_eq!(live(&r), vec![(1, vec!["q".into()])]);
    drop(j);
}

#[test]
fn many_concurrent_appenders_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path(), 1);
    let j = Arc::new(j);
    let before = j.stats();
    let threads = 8;
    let per_thread = 50u64;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                // Pipelined: submit a window of appends, then wait for all of them.
                let done: Vec<_> = (0..per_thread)
                    .map(|i| j.append(add(t * 1000 + i + 1, &["q"])).unwrap())
                    .collect();
                for d in done {
                    d.wait().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = j.stats();
    let appends = s.appends - before.appends;
    let fsyncs = s.fsyncs - before.fsyncs;
    assert_eq!(appends, threads * per_thread);
    assert!(
        fsyncs < appends,
        "group commit: {fsyncs} fsyncs for {appends} appends"
    );
    assert!(s.avg_batch_records() > 2.0, "{s:?}");
    drop(j);
    let (_j, r) = reopen(dir.path(), 1);
    assert_eq!(r.messages.len() as u64, threads * per_thread);
}

#[test]
fn async_append_and_completion() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (j, _) = reopen(dir.path(), 1);
    rt.block_on(async {
        let a = j.append_async(add(1, &["q"])).await.unwrap();
        let b = j.append_async(add(2, &["q"])).await.unwrap();
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert!(a <= b);
    });
    drop(j);
    let (_j, r) = reopen(dir.path(), 1);
    assert_eq!(r.messages.len(), 2);
}

#[test]
fn segments_roll_over_and_dead_ones_are_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(1);
    o.segment_size = 1024;
    let (j, _) = Journal::open(dir.path(), o.clone()).unwrap();
    // Message 1 stays live in the first segment; many others come and go.
    put(&j, add(1, &["q"]));
    for id in 2..200 {
        put(&j, add(id, &["q"]));
        put(&j, vec![ack(id, "q")]);
    }
    let s = j.stats();
    assert!(s.segments_created > 10, "{s:?}");
    assert!(s.segments_deleted > 5, "{s:?}");
    let files = segment_files(dir.path()).len() as u64;
    assert_eq!(files, s.live_segments);
    assert!(files < s.segments_created, "{s:?}");
    drop(j);
    let (j, r) = Journal::open(dir.path(), o.clone()).unwrap();
    // No ack was lost to reclaim (nothing resurrected), and message 1 is still there.
    assert_eq!(live(&r), vec![(1, vec!["q".into()])]);
    put(&j, vec![ack(1, "q")]);
    drop(j);
    let (j, r) = Journal::open(dir.path(), o.clone()).unwrap();
    assert!(r.messages.is_empty());
    drop(j);
    // Everything is dead now: only the segments of the last opens remain.
    assert!(segment_files(dir.path()).len() <= 3);
}

#[test]
fn an_older_epoch_cannot_open_after_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    drop(reopen(dir.path(), 5));
    match Journal::open(dir.path(), opts(4)) {
        Err(JournalError::Fenced { ours: 4, newer }) => assert_eq!(newer, Some(5)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    // The same epoch (a restart of the holder) and newer ones are fine.
    drop(reopen(dir.path(), 5));
    let (_j, r) = reopen(dir.path(), 6);
    assert_eq!(r.max_epoch, 6);
}

#[test]
fn a_fenced_writer_that_keeps_writing_does_not_reach_the_journal() {
    // Lane A (epoch 1) still has the journal open when lane B (epoch 2) takes over. B seals the
    // newest segment, so A's late writes land in a detached file and never in the journal.
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = reopen(dir.path(), 1);
    put(&a, add(1, &["q"]));
    let (b, r) = reopen(dir.path(), 2);
    assert_eq!(live(&r), vec![(1, vec!["q".into()])]);
    // A does not know yet: its append "succeeds" into the detached inode, and its ack too.
    let _ = a.append(add(2, &["q"])).unwrap().wait();
    let _ = a.append(vec![ack(1, "q")]).unwrap().wait();
    put(&b, add(3, &["q"]));
    drop(b);
    drop(a);
    let (_c, r) = reopen(dir.path(), 3);
    assert_eq!(live(&r), vec![(1, vec!["q".into()]), (3, vec!["q".into()])]);
}

#[test]
fn fence_fails_queued_and_later_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path(), 1);
    put(&j, add(1, &["q"]));
    j.fence();
    let err = j.append(add(2, &["q"])).unwrap_err();
    assert!(err.is_fenced(), "{err}");
    drop(j);
    let (_j, r) = reopen(dir.path(), 1);
    assert_eq!(live(&r), vec![(1, vec!["q".into()])]);
}

#[test]
fn oversized_and_invalid_appends_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(1);
    o.max_batch_bytes = 1024;
    let (j, _) = Journal::open(dir.path(), o).unwrap();
    let big = vec![Record::AddMessage {
        msg_id: 1,
        encoded: Bytes::from(vec![0u8; 2000]),
    }];
    assert!(matches!(
        j.append(big),
        Err(JournalError::TooLarge { max: 1024, .. })
    ));
    let nested = vec![tx(1, Record::TxCommit { tx_id: 1 })];
    assert!(matches!(
        j.append(nested),
        Err(JournalError::InvalidRecord(_))
    ));
}

#[test]
fn handles_and_futures_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = reopen(dir.path(), 1);
    send_sync(&j);
    let fut = j.append_async(add(1, &["q"]));
    send(&fut);
    drop(fut);
    let c = j.append(add(2, &["q"])).unwrap();
    send(&c);
    c.wait().unwrap();
}

/// Batches of 10 messages; one message in 50 stays (with a delivery count), the others are
/// acked in the next batch.
fn sparse_workload(j: &Journal, n: u64) -> Vec<(u64, Vec<String>)> {
    let mut kept = Vec::new();
    for first in (1..=n).step_by(10) {
        let ids: Vec<u64> = (first..first + 10).collect();
        put(j, ids.iter().flat_map(|id| add(*id, &["q"])).collect());
        let mut settle = Vec::new();
        for id in ids {
            if id % 50 == 0 {
                settle.push(Record::DeliveryCount {
                    msg_id: id,
                    queue: "q".into(),
                    count: 2,
                });
                kept.push((id, vec!["q".to_string()]));
            } else {
                settle.push(ack(id, "q"));
            }
        }
        put(j, settle);
    }
    kept
}

#[test]
fn compaction_moves_stragglers_forward_so_sparse_segments_are_deleted() {
    let n = 1500;
    let mut o = opts(1);
    o.segment_size = 8192;

    o.compaction = false;
    let plain = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(plain.path(), o.clone()).unwrap();
    sparse_workload(&j, n);
    let without = j.stats();
    drop(j);

    o.compaction = true;
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(dir.path(), o.clone()).unwrap();
    let kept = sparse_workload(&j, n);
    let with = j.stats();
    drop(j);

    eprintln!("with {with:?}\nwithout {without:?}");
    assert_eq!(without.compactions, 0);
    assert!(with.compactions > 0, "{with:?}");
    // Without compaction every segment is pinned by its stragglers; with it only the last few
    // (not yet sparse, or waiting for the compactor) remain.
    assert!(
        with.live_segments * 3 < without.live_segments,
        "with compaction {with:?}, without {without:?}"
    );
    assert_eq!(segment_files(dir.path()).len() as u64, with.live_segments);

    let (_j, r) = Journal::open(dir.path(), o).unwrap();
    assert_eq!(live(&r), kept);
    assert!(r.messages.iter().all(|m| m.refs[0].delivery_count == 2));
    assert_eq!(r.max_msg_id, n);
}
