//! Reading message bodies back from the segments (paging).
//!
//! The broker may drop a queued message's body from memory and keep only its [`Location`]: the
//! segment and offset of its `AddMessage` record. It reads the body back with one positional
//! read (`pread`; no mmap, invariant 9) when the message is about to be dispatched.
//!
//! Locations must stay valid while compaction moves records and reclaim deletes segments. The
//! journal keeps a small map `msg_id → Location` ([`Placed`]) of locations the broker does not
//! know yet: the writer puts every appended `AddMessage` there (the broker takes it once the
//! append is durable) and every `AddMessage` that compaction copied forward (the broker's copy of
//! the location is then stale). A read looks in that map first and uses the broker's location
//! otherwise. Ordering makes that safe: the writer records a copy's location before the batch
//! that holds it can let the old segment be reclaimed, so a reader that finds the old segment
//! gone (or reused bytes at the old offset) looks again and finds the new location. Every read
//! checks the record header (type, length, msg_id) so that a stale location can never yield
//! another message's body. Entries of dead messages are dropped when segments are reclaimed.
//!
//! Open segment files are cached (a few descriptors); the cache is emptied whenever the writer
//! deletes a segment, so a cached descriptor never keeps a deleted segment's space alive for long.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::error::JournalError;
use super::format;
use super::record::RECORD_HEADER_LEN;
use super::state::FastBuild;

/// The record type byte of `AddMessage` (see `record.rs`).
const T_ADD_MESSAGE: u8 = 0x01;

/// Where a message's `AddMessage` record sits: enough to read its body with one `pread`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// The segment id.
    pub segment: u64,
    /// Offset of the record (its length field) in the segment file. Segments are at most 4 GiB.
    pub offset: u32,
    /// Length of the body (the encoded message), in bytes.
    pub len: u32,
}

impl Location {
    /// Bytes of record header and msg_id before the body.
    const PREFIX: usize = RECORD_HEADER_LEN + 8;
}

/// Locations the broker does not know yet (fresh appends) or whose records moved (compaction).
#[derive(Debug, Default)]
pub(crate) struct Placed {
    map: Mutex<HashMap<u64, Location, FastBuild>>,
    /// Bumped by every reclaim that deleted a segment: cached descriptors are dropped.
    deleted_gen: AtomicU64,
}

impl Placed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Location, FastBuild>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer wrote (or copied) these records.
    pub(crate) fn insert(&self, placed: &[(u64, Location)]) {
        if placed.is_empty() {
            return;
        }
        let mut m = self.lock();
        m.extend(placed.iter().copied());
    }

    pub(crate) fn take(&self, msg_id: u64) -> Option<Location> {
        self.lock().remove(&msg_id)
    }

    pub(crate) fn get(&self, msg_id: u64) -> Option<Location> {
        self.lock().get(&msg_id).copied()
    }

    /// Segments were deleted: forget entries of messages that are no longer live.
    pub(crate) fn segments_deleted(&self, live: impl Fn(u64) -> bool) {
        self.deleted_gen.fetch_add(1, Ordering::Release);
        let mut m = self.lock();
        if !m.is_empty() {
            m.retain(|id, _| live(*id));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Open segment descriptors by segment id, valid for one reclaim generation.
type OpenFiles = (u64, Vec<(u64, Arc<File>)>);

/// Open segment descriptors, a few at most.
#[derive(Debug, Default)]
pub(crate) struct FileCache {
    files: Mutex<OpenFiles>,
}

const CACHED_FILES: usize = 8;

impl FileCache {
    fn open(&self, dir: &Path, segment: u64, generation: u64) -> Result<Arc<File>, JournalError> {
        {
            let mut c = self.files.lock().unwrap_or_else(PoisonError::into_inner);
            if c.0 != generation {
                c.0 = generation;
                c.1.clear();
            }
            if let Some((_, f)) = c.1.iter().find(|(s, _)| *s == segment) {
                return Ok(f.clone());
            }
        }
        let path: PathBuf = format::segment_path(dir, segment);
        let f = Arc::new(File::open(&path).map_err(|e| JournalError::io("open", &path, e))?);
        let mut c = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if c.0 == generation {
            if c.1.len() >= CACHED_FILES {
                c.1.remove(0);
            }
            c.1.push((segment, f.clone()));
        }
        Ok(f)
    }
}

/// Reads the body of `msg_id`, which the caller last knew at `known`.
pub(crate) fn read_body(
    dir: &Path,
    placed: &Placed,
    files: &FileCache,
    msg_id: u64,
    known: Location,
) -> Result<Bytes, JournalError> {
    let mut last_err = None;
    // Twice at most: a location that went stale between the lookup and the read (compaction
    // copied the record and reclaim deleted the segment) is in `placed` by the second look.
    for _ in 0..2 {
        let generation = placed.deleted_gen.load(Ordering::Acquire);
        let loc = placed.get(msg_id).unwrap_or(known);
        match read_at(dir, files, msg_id, loc, generation) {
            Ok(b) => return Ok(b),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.expect("tried"))
}

fn read_at(
    dir: &Path,
    files: &FileCache,
    msg_id: u64,
    loc: Location,
    generation: u64,
) -> Result<Bytes, JournalError> {
    let file = files.open(dir, loc.segment, generation)?;
    let mut buf = vec![0u8; Location::PREFIX + loc.len as usize];
    let path = || format::segment_path(dir, loc.segment);
    file.read_exact_at(&mut buf, u64::from(loc.offset))
        .map_err(|e| JournalError::io("read", path(), e))?;
    let payload_len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let kind = buf[4];
    let id = u64::from_le_bytes(buf[5..13].try_into().expect("8 bytes"));
    if kind != T_ADD_MESSAGE || payload_len != 8 + loc.len as usize || id != msg_id {
        return Err(JournalError::Corrupt {
            segment: path(),
            offset: u64::from(loc.offset),
            reason: format!(
                "expected the body of message {msg_id} ({} bytes), found record type {kind:#04x} \
                 of message {id} ({payload_len} bytes)",
                loc.len
            ),
        });
    }
    let mut b = Bytes::from(buf);
    Ok(b.split_off(Location::PREFIX))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::{Journal, JournalOptions, Record, segment_file_name};
    use super::*;

    fn body(id: u64) -> Bytes {
        Bytes::from(format!("message {id} ").repeat(60))
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

    fn ack(id: u64) -> Vec<Record> {
        vec![Record::AckRef {
            msg_id: id,
            queue: "q".into(),
        }]
    }

    #[test]
    fn bodies_read_back_by_location_before_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), JournalOptions::new(1)).unwrap();
        let mut locs = Vec::new();
        for id in 1..=20 {
            j.append(add(id)).unwrap().wait().unwrap();
            let loc = j.take_location(id).expect("appended since open");
            assert_eq!(loc.len as usize, body(id).len());
            locs.push((id, loc));
        }
        assert_eq!(j.take_location(1), None, "taken once");
        for (id, loc) in &locs {
            assert_eq!(j.read_body(*id, *loc).unwrap(), body(*id));
        }
        // A location read as another message's is refused, never returns the wrong body.
        let err = j.read_body(2, locs[0].1).unwrap_err();
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
        drop(j);

        let (j, rec) = Journal::open(dir.path(), JournalOptions::new(2)).unwrap();
        assert_eq!(rec.messages.len(), 20);
        for m in &rec.messages {
            let loc = m.location.expect("top-level AddMessage");
            assert_eq!(loc, locs[(m.msg_id - 1) as usize].1, "same record");
            assert_eq!(j.read_body(m.msg_id, loc).unwrap(), m.encoded);
        }
    }

    #[test]
    fn a_location_stays_valid_after_compaction_moved_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = JournalOptions::new(1);
        o.segment_size = 32 << 10;
        let (j, _) = Journal::open(dir.path(), o).unwrap();
        // Message 1 lives in the first data segment; everything after it is acknowledged, so
        // that segment becomes mostly dead and compaction copies message 1 forward.
        j.append(add(1)).unwrap().wait().unwrap();
        let loc = j.take_location(1).unwrap();
        let first = dir.path().join(segment_file_name(loc.segment));
        let mut id = 2;
        while first.exists() {
            assert!(
                id < 5_000,
                "compaction never reclaimed segment {}",
                loc.segment
            );
            j.append(add(id)).unwrap().wait().unwrap();
            j.take_location(id).unwrap();
            j.append(ack(id)).unwrap().wait().unwrap();
            id += 1;
        }
        // Only compaction can have removed the segment: message 1 is live.
        let moved = j.placed().get(1).expect("the copy's location is kept");
        assert_ne!(moved.segment, loc.segment);
        assert_eq!(j.read_body(1, loc).unwrap(), body(1));
        // Once message 1 is acknowledged and more segments go, its entry is dropped.
        j.append(ack(1)).unwrap().wait().unwrap();
        let mut n = 0;
        while j.placed().get(1).is_some() {
            assert!(n < 5_000, "entry of a dead message never dropped");
            j.append(add(id)).unwrap().wait().unwrap();
            j.take_location(id).unwrap();
            j.append(ack(id)).unwrap().wait().unwrap();
            id += 1;
            n += 1;
        }
    }
}
