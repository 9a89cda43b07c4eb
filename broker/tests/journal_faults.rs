//! Crashes, corruption and I/O faults: torn tails, flipped bits, full disks, backpressure.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use tandem_broker::journal::{IoFaults, Journal, JournalError, JournalOptions, Record, Recovered};

fn body(id: u64) -> Bytes {
    Bytes::from(format!("message body #{id} ----------------"))
}

fn add(id: u64) -> Vec<Record> {
    vec![
        Record::AddMessage {
            msg_id: id,
            encoded: body(id),
        },
        Record::AddRef {
            msg_id: id,
            queue: "q".into(),
        },
    ]
}

fn put(j: &Journal, id: u64) {
    j.append(add(id)).unwrap().wait().unwrap();
}

fn ids(r: &Recovered) -> Vec<u64> {
    r.messages
        .iter()
        .map(|m| {
            assert_eq!(m.encoded, body(m.msg_id));
            m.msg_id
        })
        .collect()
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

fn newest_segment(dir: &Path) -> PathBuf {
    segment_files(dir).pop().unwrap()
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for p in segment_files(src) {
        std::fs::copy(&p, dst.path().join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn open(dir: &Path) -> Result<(Journal, Recovered), JournalError> {
    Journal::open(dir, JournalOptions::new(1))
}

/// A journal with messages 1..=n, each in its own batch; returns the byte ranges of the
/// batches in the newest segment (message i is `ranges[i - 1]`).
fn journal_with(n: u64) -> (tempfile::TempDir, PathBuf, Vec<(u64, u64)>) {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(dir.path()).unwrap();
    let seg = newest_segment(dir.path());
    let mut ranges = Vec::new();
    for id in 1..=n {
        let before = len(&seg);
        put(&j, id);
        ranges.push((before, len(&seg)));
    }
    drop(j);
    assert_eq!(newest_segment(dir.path()), seg);
    (dir, seg, ranges)
}

#[test]
fn torn_tail_at_every_offset_of_the_last_batch_is_cut_back() {
    let (dir, seg, ranges) = journal_with(3);
    let (start, end) = *ranges.last().unwrap();
    let data = std::fs::read(&seg).unwrap();
    for cut in start..end {
        let copy = copy_dir(dir.path());
        let copied_seg = copy.path().join(seg.file_name().unwrap());
        std::fs::write(&copied_seg, &data[..cut as usize]).unwrap();
        let (j, r) = open(copy.path()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(ids(&r), vec![1, 2], "cut at {cut}");
        if cut > start {
            let torn = r.report.torn_tail.clone().expect("torn tail reported");
            assert_eq!((torn.segment, torn.offset), (copied_seg.clone(), start));
        } else {
            assert!(r.report.torn_tail.is_none());
        }
        // The journal keeps working, and the cut is permanent (the segment was sealed).
        put(&j, 10);
        drop(j);
        let (_j, r) = open(copy.path()).unwrap();
        assert_eq!(ids(&r), vec![1, 2, 10], "cut at {cut}");
        assert!(r.report.torn_tail.is_none());
    }
}

#[test]
fn torn_segment_header_drops_the_segment() {
    let (dir, _seg, _) = journal_with(2);
    // A crash while creating the next segment: only part of its header exists.
    let next = dir.path().join("0000000000000099.seg");
    std::fs::write(&next, b"TANDEM").unwrap();
    let (_j, r) = open(dir.path()).unwrap();
    assert_eq!(ids(&r), vec![1, 2]);
    assert_eq!(r.report.torn_tail.unwrap().segment, next);
    assert!(!next.exists());
}

#[test]
fn flipped_bit_in_the_last_record_is_a_torn_tail() {
    let (dir, seg, ranges) = journal_with(3);
    let (start, end) = *ranges.last().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    data[(end - 2) as usize] ^= 0x10;
    std::fs::write(&seg, &data).unwrap();
    let (_j, r) = open(dir.path()).unwrap();
    assert_eq!(ids(&r), vec![1, 2]);
    assert_eq!(r.report.torn_tail.unwrap().offset, start);
}

#[test]
fn flipped_bit_mid_segment_fails_the_open_with_segment_and_offset() {
    let (dir, seg, ranges) = journal_with(5);
    let (start, end) = ranges[1];
    let mut data = std::fs::read(&seg).unwrap();
    data[((start + end) / 2) as usize] ^= 0x01;
    std::fs::write(&seg, &data).unwrap();

    match open(dir.path()) {
        Err(JournalError::CrcMismatch {
            segment,
            offset,
            expected,
            actual,
        }) => {
            assert_eq!(segment, seg);
            assert_eq!(offset, start);
            assert_ne!(expected, actual);
        }
        other => panic!("expected CrcMismatch, got {other:?}"),
    }
    // Nothing was modified by the failed open.
    assert_eq!(std::fs::read(&seg).unwrap(), data);

    let mut o = JournalOptions::new(1);
    o.skip_corrupt = true;
    let (_j, r) = Journal::open(dir.path(), o).unwrap();
    assert_eq!(ids(&r), vec![1, 3, 4, 5]);
    assert_eq!(r.report.skipped.len(), 1);
    assert_eq!(r.report.skipped[0].segment, seg);
    assert_eq!(r.report.skipped[0].offset, start);
    assert_eq!(r.report.skipped[0].len, end - start);
}

#[test]
fn corruption_at_the_end_of_an_older_segment_is_not_a_torn_tail() {
    let (dir, seg, ranges) = journal_with(3);
    // Reopen once so that `seg` is no longer the newest segment.
    drop(open(dir.path()).unwrap());
    assert_ne!(newest_segment(dir.path()), seg);
    let (_, end) = *ranges.last().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    data[(end - 1) as usize] ^= 0x80;
    std::fs::write(&seg, &data).unwrap();
    match open(dir.path()) {
        Err(JournalError::CrcMismatch { segment, .. }) => assert_eq!(segment, seg),
        other => panic!("expected CrcMismatch, got {other:?}"),
    }
}

/// A disk that can be made full (optionally after a partial write), or fail syncs.
#[derive(Default)]
struct Disk {
    full: AtomicBool,
    partial: AtomicUsize,
    create_fails: AtomicBool,
    sync_fails: AtomicBool,
}

fn enospc() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "injected ENOSPC")
}

impl IoFaults for Disk {
    fn on_write(&self, _: &Path, _: u64, len: usize) -> Option<(usize, io::Error)> {
        self.full
            .load(Ordering::SeqCst)
            .then(|| (self.partial.load(Ordering::SeqCst).min(len), enospc()))
    }
    fn on_sync(&self, _: &Path) -> Option<io::Error> {
        self.sync_fails
            .load(Ordering::SeqCst)
            .then(|| io::Error::other("injected EIO"))
    }
    fn on_create(&self, _: &Path) -> Option<io::Error> {
        self.create_fails.load(Ordering::SeqCst).then(enospc)
    }
}

fn faulty(dir: &Path, disk: &Arc<Disk>, segment_size: u64) -> Journal {
    let mut o = JournalOptions::new(1);
    o.segment_size = segment_size;
    o.faults = Some(disk.clone());
    Journal::open(dir, o).unwrap().0
}

#[test]
fn full_disk_fails_the_batch_and_the_writer_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let j = faulty(dir.path(), &disk, 64 << 20);
    put(&j, 1);
    disk.partial.store(17, Ordering::SeqCst); // leave debris of a partial write behind
    disk.full.store(true, Ordering::SeqCst);
    for id in [2, 3] {
        let err = j.append(add(id)).unwrap().wait().unwrap_err();
        assert!(err.is_storage_full(), "{err}");
    }
    disk.full.store(false, Ordering::SeqCst);
    put(&j, 4);
    put(&j, 5);
    let s = j.stats();
    assert_eq!(s.failed_batches, 2);
    drop(j);
    let (_j, r) = open(dir.path()).unwrap();
    assert_eq!(ids(&r), vec![1, 4, 5]);
    assert!(r.report.torn_tail.is_none() && r.report.skipped.is_empty());
}

#[test]
fn full_disk_while_rolling_to_a_new_segment() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let j = faulty(dir.path(), &disk, 1024);
    disk.create_fails.store(true, Ordering::SeqCst);
    let mut ok = Vec::new();
    let mut id = 1;
    loop {
        match j.append(add(id)).unwrap().wait() {
            Ok(_) => ok.push(id),
            Err(e) => {
                assert!(e.is_storage_full(), "{e}");
                break;
            }
        }
        id += 1;
        assert!(id < 100, "never needed a new segment");
    }
    disk.create_fails.store(false, Ordering::SeqCst);
    put(&j, 1000);
    ok.push(1000);
    drop(j);
    let (_j, r) = open(dir.path()).unwrap();
    assert_eq!(ids(&r), ok);
}

#[test]
fn failed_sync_fails_the_batch_only() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let j = faulty(dir.path(), &disk, 64 << 20);
    put(&j, 1);
    disk.sync_fails.store(true, Ordering::SeqCst);
    assert!(j.append(add(2)).unwrap().wait().is_err());
    disk.sync_fails.store(false, Ordering::SeqCst);
    put(&j, 3);
    drop(j);
    let (_j, r) = open(dir.path()).unwrap();
    // Message 2's bytes were overwritten by message 3's batch.
    assert_eq!(ids(&r), vec![1, 3]);
}

/// Holds every sync until opened, and says when the writer is inside one.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, bool)>, // (open, writer waiting)
    cv: Condvar,
}

impl IoFaults for Gate {
    fn on_sync(&self, _: &Path) -> Option<io::Error> {
        let mut s = self.state.lock().unwrap();
        s.1 = true;
        self.cv.notify_all();
        while !s.0 {
            s = self.cv.wait(s).unwrap();
        }
        None
    }
}

#[test]
fn a_full_queue_pushes_back_and_everything_completes_once_the_disk_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate {
        state: Mutex::new((true, false)),
        cv: Condvar::new(),
    });
    let mut o = JournalOptions::new(1);
    o.max_pending_bytes = 1;
    o.faults = Some(gate.clone());
    let (j, _) = Journal::open(dir.path(), o).unwrap();
    {
        let mut s = gate.state.lock().unwrap();
        *s = (false, false);
    }
    let first = j.append(add(1)).unwrap();
    {
        let mut s = gate.state.lock().unwrap();
        while !s.1 {
            s = gate.cv.wait(s).unwrap();
        }
    }
    // The writer is stuck in the sync of batch 1; the queue holds one append at most.
    let second = j.try_append(add(2)).unwrap();
    assert!(matches!(j.try_append(add(3)), Err(JournalError::QueueFull)));
    {
        let mut s = gate.state.lock().unwrap();
        s.0 = true;
        gate.cv.notify_all();
    }
    first.wait().unwrap();
    second.wait().unwrap();
    put(&j, 3);
    drop(j);
    let (_j, r) = open(dir.path()).unwrap();
    assert_eq!(ids(&r), vec![1, 2, 3]);
}

#[test]
fn fence_fails_appends_queued_behind_a_slow_sync() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    {
        let mut s = gate.state.lock().unwrap();
        *s = (true, false);
    }
    let mut o = JournalOptions::new(1);
    o.faults = Some(gate.clone());
    let (j, _) = Journal::open(dir.path(), o).unwrap();
    *gate.state.lock().unwrap() = (false, false);
    let first = j.append(add(1)).unwrap();
    {
        let mut s = gate.state.lock().unwrap();
        while !s.1 {
            s = gate.cv.wait(s).unwrap();
        }
    }
    let queued = j.append(add(2)).unwrap();
    let j = Arc::new(j);
    let fencer = {
        let j = j.clone();
        std::thread::spawn(move || j.fence())
    };
    // The queued append fails as soon as fence() runs, before the slow sync ends.
    assert!(queued.wait().unwrap_err().is_fenced());
    {
        let mut s = gate.state.lock().unwrap();
        s.0 = true;
        gate.cv.notify_all();
    }
    fencer.join().unwrap();
    // The batch that was already being written completes with its true outcome.
    first.wait().unwrap();
    assert!(j.append(add(3)).unwrap_err().is_fenced());
}

#[test]
fn debris_of_a_failed_write_never_ends_up_mid_journal_when_the_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let j = faulty(dir.path(), &disk, 2048);
    let mut ok = Vec::new();
    let mut id = 1;
    while len(&newest_segment(dir.path())) < 1200 {
        put(&j, id);
        ok.push(id);
        id += 1;
    }
    // A partial write leaves debris after the last good batch...
    disk.partial.store(60, Ordering::SeqCst);
    disk.full.store(true, Ordering::SeqCst);
    assert!(j.append(add(500)).unwrap().wait().is_err());
    disk.full.store(false, Ordering::SeqCst);
    // ...and the next append does not fit, so the writer moves to a new segment.
    let big: Vec<Record> = (600..620).flat_map(add).collect();
    j.append(big).unwrap().wait().unwrap();
    ok.extend(600..620);
    assert!(j.stats().segments_created >= 2);
    drop(j);
    let (_j, r) = open(dir.path()).unwrap();
    assert_eq!(ids(&r), ok);
}

#[test]
fn a_failed_roll_after_cutting_debris_keeps_writing_to_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(Disk::default());
    let j = faulty(dir.path(), &disk, 2048);
    let mut ok = Vec::new();
    let mut id = 1;
    while len(&newest_segment(dir.path())) < 1200 {
        put(&j, id);
        ok.push(id);
        id += 1;
    }
    disk.partial.store(60, Ordering::SeqCst);
    disk.full.store(true, Ordering::SeqCst);
    assert!(j.append(add(500)).unwrap().wait().is_err());
    disk.full.store(false, Ordering::SeqCst);
    // The roll cuts the debris, then cannot create the next segment.
    disk.create_fails.store(true, Ordering::SeqCst);
    let big: Vec<Record> = (600..620).flat_map(add).collect();
    assert!(j.append(big).unwrap().wait().is_err());
    // A small append still fits in the current segment and must really land there.
    put(&j, 700);
    ok.push(700);
    disk.create_fails.store(false, Ordering::SeqCst);
    drop(j);
    let (_j, r) = open(dir.path()).unwrap();
    assert_eq!(ids(&r), ok);
}

/// The failover lease's write gate: once it says no, the journal writes nothing more, ever.
#[test]
fn a_closed_write_gate_fences_the_journal_for_good() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tandem_broker::journal::WriteGate;

    struct Gate(AtomicBool);
    impl WriteGate for Gate {
        fn may_write(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let gate = std::sync::Arc::new(Gate(AtomicBool::new(true)));
    let mut opts = tandem_broker::journal::JournalOptions::new(1);
    opts.write_gate = Some(gate.clone());
    let (j, _) = tandem_broker::journal::Journal::open(dir.path(), opts).unwrap();
    let add = |id: u64| {
        vec![
            tandem_broker::journal::Record::AddMessage {
                msg_id: id,
                encoded: bytes::Bytes::from_static(b"m"),
            },
            tandem_broker::journal::Record::AddRef {
                msg_id: id,
                queue: "q".into(),
            },
        ]
    };
    j.append(add(1)).unwrap().wait().unwrap();
    gate.0.store(false, Ordering::SeqCst);
    let e = j.append(add(2)).unwrap().wait().unwrap_err();
    assert!(e.is_fenced(), "{e}");
    // Even with the gate open again, a fenced journal stays fenced.
    gate.0.store(true, Ordering::SeqCst);
    let r = j.append(add(3)).and_then(|c| c.wait());
    assert!(r.is_err_and(|e| e.is_fenced()));
    drop(j);
    let (_j, rec) = tandem_broker::journal::Journal::open(
        dir.path(),
        tandem_broker::journal::JournalOptions::new(2),
    )
    .unwrap();
    let ids: Vec<u64> = rec.messages.iter().map(|m| m.msg_id).collect();
    assert_eq!(
        ids,
        vec![1],
        "nothing after the gate closed reached the disk"
    );
}

/// A batch whose sync ends after the lease was lost is not confirmed (its bytes may or may not
/// be in the new active's journal: the appender must resend, and duplicate detection decides).
#[test]
fn a_batch_whose_sync_outlives_the_lease_is_not_confirmed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tandem_broker::journal::WriteGate;

    struct Gate(AtomicBool);
    impl WriteGate for Gate {
        fn may_write(&self) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }
    /// Loses the lease exactly while a sync runs (after the pre-write check passed).
    struct LoseLeaseDuringSync(Arc<Gate>, AtomicBool);
    impl IoFaults for LoseLeaseDuringSync {
        fn on_sync(&self, _: &Path) -> Option<io::Error> {
            if self.1.load(Ordering::SeqCst) {
                self.0.0.store(false, Ordering::SeqCst);
            }
            None
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate(AtomicBool::new(true)));
    let faults = Arc::new(LoseLeaseDuringSync(gate.clone(), AtomicBool::new(false)));
    let mut opts = JournalOptions::new(1);
    opts.write_gate = Some(gate.clone());
    opts.faults = Some(faults.clone());
    let (j, _) = Journal::open(dir.path(), opts).unwrap();
    let add = |id: u64| {
        vec![
            Record::AddMessage {
                msg_id: id,
                encoded: Bytes::from_static(b"m"),
            },
            Record::AddRef {
                msg_id: id,
                queue: "q".into(),
            },
        ]
    };
    j.append(add(1)).unwrap().wait().unwrap();
    faults.1.store(true, Ordering::SeqCst);
    let r = j.append(add(2)).unwrap().wait();
    assert!(
        r.as_ref().is_err_and(|e| e.is_fenced()),
        "confirmed after the lease was lost: {r:?}"
    );
}
