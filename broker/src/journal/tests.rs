//! Recovery over hand-built segments (things the writer never produces by itself).

use bytes::Bytes;

use super::format::{self, SegmentMeta};
use super::{Journal, JournalError, JournalOptions, Record};

fn batch(out: &mut Vec<u8>, epoch: u64, seq: u64, records: &[Record]) {
    let start = format::begin_batch(out);
    for r in records {
        r.encode(out);
    }
    format::finish_batch(out, start, epoch, seq, records.len() as u32);
}

fn add(id: u64) -> Vec<Record> {
    vec![
        Record::AddMessage {
            msg_id: id,
            encoded: Bytes::from_static(b"body"),
        },
        Record::AddRef {
            msg_id: id,
            queue: "q".into(),
        },
    ]
}

fn segment(id: u64, epoch: u64) -> Vec<u8> {
    format::encode_segment_header(
        id,
        SegmentMeta {
            epoch,
            ..SegmentMeta::default()
        },
    )
    .to_vec()
}

fn write(dir: &std::path::Path, id: u64, bytes: &[u8]) {
    std::fs::write(format::segment_path(dir, id), bytes).unwrap();
}

fn ids(r: &super::Recovered) -> Vec<u64> {
    r.messages.iter().map(|m| m.msg_id).collect()
}

#[test]
fn a_batch_from_an_older_epoch_after_a_newer_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut s1 = segment(1, 1);
    batch(&mut s1, 1, 1, &[Record::EpochMarker { epoch: 1 }]);
    batch(&mut s1, 1, 2, &add(1));
    batch(&mut s1, 2, 3, &[Record::EpochMarker { epoch: 2 }]);
    batch(&mut s1, 2, 4, &add(2));
    // Lane 1's late write after lane 2 took over: ignored, including its ack of message 2.
    let mut late = add(3);
    late.push(Record::AckRef {
        msg_id: 2,
        queue: "q".into(),
    });
    batch(&mut s1, 1, 3, &late);
    batch(&mut s1, 2, 5, &add(4));
    write(dir.path(), 1, &s1);
    // And a whole later segment written by epoch 1.
    let mut s2 = segment(2, 1);
    batch(&mut s2, 1, 4, &add(5));
    write(dir.path(), 2, &s2);

    let (_j, r) = Journal::open(dir.path(), JournalOptions::new(2)).unwrap();
    assert_eq!(ids(&r), vec![1, 2, 4]);
    assert_eq!(r.report.stale_batches_ignored, 2);
    assert_eq!(r.max_epoch, 2);
}

#[test]
fn an_unknown_record_type_in_a_valid_batch_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s1 = segment(1, 1);
    batch(&mut s1, 1, 1, &add(1));
    let start = format::begin_batch(&mut s1);
    s1.extend_from_slice(&[1, 0, 0, 0, 0x7f, 0]);
    format::finish_batch(&mut s1, start, 1, 2, 1);
    write(dir.path(), 1, &s1);
    match Journal::open(dir.path(), JournalOptions::new(1)) {
        Err(JournalError::Record { offset, source, .. }) => {
            assert_eq!(offset as usize, start + format::BATCH_HEADER_LEN);
            assert_eq!(source, super::DecodeError::UnknownType(0x7f));
        }
        other => panic!("expected Record error, got {other:?}"),
    }
}

#[test]
fn a_segment_from_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s1 = segment(1, 1);
    s1[8] = 9;
    let crc = crc32c::crc32c(&s1[0..60]);
    s1[60..64].copy_from_slice(&crc.to_le_bytes());
    write(dir.path(), 1, &s1);
    assert!(matches!(
        Journal::open(dir.path(), JournalOptions::new(1)),
        Err(JournalError::UnsupportedVersion { found: 9, .. })
    ));
}

#[test]
fn garbage_after_a_torn_tail_that_contains_no_batch_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut s1 = segment(1, 1);
    batch(&mut s1, 1, 1, &add(1));
    let torn_at = s1.len();
    s1.extend_from_slice(&[0xAB; 300]);
    write(dir.path(), 1, &s1);
    let (_j, r) = Journal::open(dir.path(), JournalOptions::new(1)).unwrap();
    assert_eq!(ids(&r), vec![1]);
    assert_eq!(r.report.torn_tail.unwrap().offset as usize, torn_at);
}

#[test]
fn a_bad_batch_followed_by_a_valid_one_in_the_newest_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut s1 = segment(1, 1);
    batch(&mut s1, 1, 1, &add(1));
    let bad_at = s1.len();
    batch(&mut s1, 1, 2, &add(2));
    s1[bad_at + 40] ^= 4;
    batch(&mut s1, 1, 3, &add(3));
    write(dir.path(), 1, &s1);
    match Journal::open(dir.path(), JournalOptions::new(1)) {
        Err(JournalError::CrcMismatch { offset, .. }) => assert_eq!(offset as usize, bad_at),
        other => panic!("expected CrcMismatch, got {other:?}"),
    }
}
