//! Recovery: scan every segment in order, check every batch, apply the epoch rule, rebuild the
//! live state. Rules are in the module docs of `journal`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use bytes::Bytes;

use super::error::JournalError;
use super::format::{
    self, BATCH_HEADER_LEN, BatchError, HeaderError, SEGMENT_HEADER_LEN, check_batch,
    check_segment_header, find_next_valid_batch,
};
use super::record::RecordView;
use super::state::{Recovered, SegId, State};
use super::{CorruptRegion, JournalOptions, TornTail};

/// What the open needs to carry on after the scan.
pub(crate) struct Scan {
    pub state: State,
    pub recovered: Recovered,
    /// Segment ids that exist and were accepted, ascending.
    pub segments: Vec<SegId>,
    /// The newest segment: its id, its bytes and the length of its valid prefix; `None` if
    /// there were no segments. `valid_len == 0` means its header itself was torn.
    pub last: Option<(SegId, Bytes, usize)>,
    pub max_seq: u64,
    pub discarded_txs: Vec<u64>,
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> JournalError {
    JournalError::Corrupt {
        segment: path.to_owned(),
        offset,
        reason: reason.into(),
    }
}

fn batch_error(path: &Path, offset: u64, e: &BatchError) -> JournalError {
    match e {
        BatchError::BadCrc { expected, actual } => JournalError::CrcMismatch {
            segment: path.to_owned(),
            offset,
            expected: *expected,
            actual: *actual,
        },
        BatchError::Incomplete => corrupt(path, offset, "incomplete batch before valid data"),
        BatchError::BadMagic => corrupt(path, offset, "bad batch magic"),
        BatchError::BadLength(n) => corrupt(path, offset, format!("impossible batch length {n}")),
    }
}

/// Lists segment ids in `dir` (ascending) and removes leftover temporary files of an
/// interrupted seal.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<SegId>, JournalError> {
    let mut ids = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| JournalError::io("read_dir", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| JournalError::io("read_dir", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = format::parse_segment_file_name(name) {
            ids.push(id);
        } else if name.ends_with(".seg.tmp") {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| JournalError::io("remove", p, e))?;
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

pub(crate) fn scan(dir: &Path, opts: &JournalOptions) -> Result<Scan, JournalError> {
    let started = Instant::now();
    let ids = list_segments(dir)?;
    // A reader thread reads segment i+1 (one large read) while segment i is being applied.
    let (tx, rx) = mpsc::sync_channel::<(SegId, PathBuf, io::Result<Vec<u8>>)>(1);
    thread::scope(|s| {
        let to_read = ids.clone();
        s.spawn(move || {
            for id in to_read {
                let path = format::segment_path(dir, id);
                let data = fs::read(&path);
                if tx.send((id, path, data)).is_err() {
                    break; // the scan stopped early
                }
            }
        });
        apply_segments(ids.len(), rx, opts, started)
    })
}

fn apply_segments(
    count: usize,
    segments_read: mpsc::Receiver<(SegId, PathBuf, io::Result<Vec<u8>>)>,
    opts: &JournalOptions,
    started: Instant,
) -> Result<Scan, JournalError> {
    let mut state =
        State::new(opts.dup_ids_per_producer, true).with_dup_producers(opts.dup_producers);
    let mut rec = Recovered::default();
    let mut seg_sizes: HashMap<SegId, usize> = HashMap::new();
    let mut segments = Vec::with_capacity(count);
    let mut last = None;
    let mut max_epoch = 0u64;
    let mut max_seq = 0u64;

    for (idx, (id, path, read)) in segments_read.into_iter().enumerate() {
        let is_last = idx + 1 == count;
        // One large read per segment; bodies are then zero-copy slices of it.
        let data = Bytes::from(read.map_err(|e| JournalError::io("read", &path, e))?);
        rec.report.segments += 1;
        rec.report.bytes += data.len() as u64;

        match check_segment_header(&data, id) {
            Ok(meta) => {
                max_epoch = max_epoch.max(meta.epoch);
                state.max_msg_id = state.max_msg_id.max(meta.max_msg_id);
                state.max_tx_id = state.max_tx_id.max(meta.max_tx_id);
            }
            Err(HeaderError::Short) if is_last => {
                // Crashed while creating the segment: nothing in it was ever confirmed.
                tracing::warn!(segment = %path.display(), "torn segment header, segment dropped");
                rec.report.torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset: 0,
                    discarded_bytes: data.len() as u64,
                });
                last = Some((id, data, 0));
                continue;
            }
            Err(HeaderError::Version(v)) => {
                return Err(JournalError::UnsupportedVersion {
                    segment: path,
                    found: v,
                    supported: format::FORMAT_VERSION,
                });
            }
            Err(e) => {
                let err = corrupt(&path, 0, format!("bad segment header: {e:?}"));
                if !opts.skip_corrupt {
                    return Err(err);
                }
                tracing::error!(%err, "skipping whole segment");
                rec.report.skipped.push(CorruptRegion {
                    segment: path.clone(),
                    offset: 0,
                    len: data.len() as u64,
                    reason: err.to_string(),
                });
                // Nothing in it counts as live, so reclaim deletes it once the open succeeded:
                // the recovered state already reflects its loss.
                state.add_segment(id);
                segments.push(id);
                if is_last {
                    last = Some((id, data.clone(), data.len()));
                }
                continue;
            }
        }
        state.add_segment(id);
        segments.push(id);
        seg_sizes.insert(id, data.len());

        let mut pos = SEGMENT_HEADER_LEN;
        while pos < data.len() {
            let h = match check_batch(&data[pos..], data.len()) {
                Ok(h) => h,
                Err(e) => {
                    let next = find_next_valid_batch(&data, pos + 1, data.len());
                    if is_last && next.is_none() {
                        tracing::warn!(
                            segment = %path.display(), offset = pos, error = ?e,
                            "torn tail: truncating the journal to its last complete batch"
                        );
                        rec.report.torn_tail = Some(TornTail {
                            segment: path.clone(),
                            offset: pos as u64,
                            discarded_bytes: (data.len() - pos) as u64,
                        });
                        break;
                    }
                    let err = batch_error(&path, pos as u64, &e);
                    if !opts.skip_corrupt {
                        return Err(err);
                    }
                    let resume = next.unwrap_or(data.len());
                    tracing::error!(%err, skipped = resume - pos, "skipping corrupt region");
                    rec.report.skipped.push(CorruptRegion {
                        segment: path.clone(),
                        offset: pos as u64,
                        len: (resume - pos) as u64,
                        reason: err.to_string(),
                    });
                    pos = resume;
                    continue;
                }
            };
            let body = &data[pos + BATCH_HEADER_LEN..pos + h.total_len];
            if h.epoch < max_epoch {
                // Invariant 6: a fenced writer's late batch. Never applied.
                rec.report.stale_batches_ignored += 1;
                tracing::warn!(
                    segment = %path.display(), offset = pos, epoch = h.epoch, newer = max_epoch,
                    "ignoring batch from a fenced writer"
                );
            } else {
                max_epoch = h.epoch;
                max_seq = max_seq.max(h.seq);
                let mut at = 0;
                let mut n = 0u32;
                while at < body.len() {
                    let (view, used) =
                        RecordView::decode(&body[at..]).map_err(|source| JournalError::Record {
                            segment: path.clone(),
                            offset: (pos + BATCH_HEADER_LEN + at) as u64,
                            source,
                        })?;
                    state.apply(id, &view, Some(&data));
                    at += used;
                    n += 1;
                }
                state.note_written(id, u64::from(n));
                if n != h.count {
                    return Err(corrupt(
                        &path,
                        pos as u64,
                        format!("batch claims {} records, holds {n}", h.count),
                    ));
                }
                rec.report.batches += 1;
                rec.report.records += u64::from(n);
            }
            pos += h.total_len;
        }
        if idx == 0 && count > 2 {
            // Segments are alike in practice: size the message map for all of them at once.
            let per_segment = state.message_count();
            state.reserve_messages(per_segment.saturating_mul(count - 1).min(1 << 21));
        }
        if is_last {
            last = Some((id, data.clone(), pos.min(data.len())));
        }
    }

    let discarded_txs = state.finish_recovery(&seg_sizes, &mut rec);
    rec.max_epoch = max_epoch;
    rec.report.discarded_txs = discarded_txs.clone();
    rec.report.anomalies = state.anomalies;
    rec.report.elapsed = started.elapsed();
    Ok(Scan {
        state,
        recovered: rec,
        segments,
        last,
        max_seq,
        discarded_txs,
    })
}
