//! The journal handle and its writer thread (group commit).
//!
//! Lock order: there is one lock, `Shared::queue`; nothing is called while holding it except
//! condvar/notify signalling and oneshot sends.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

use super::error::JournalError;
use super::format::{self, BATCH_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::page::{FileCache, Location};
use super::record::{Record, RecordView};
use super::recovery;
use super::state::{Recovered, SegId, State};
use super::{IoFaults, JournalOptions};

type Reply = Result<u64, JournalError>;

struct Submission {
    records: Vec<Record>,
    bytes: usize,
    done: oneshot::Sender<Reply>,
}

enum Mode {
    Running,
    /// Flush what is queued, then stop.
    Closing,
    /// No more writes; appends fail with this error.
    Stopped(JournalError),
}

struct Queue {
    pending: VecDeque<Submission>,
    pending_bytes: usize,
    mode: Mode,
    /// What the compactor thread found in the segment it was asked to read.
    compaction: Option<CompactionInput>,
}

/// Bodies (`msg_id`, body) and refs (`msg_id`, queue) found in a segment file.
type Candidates = (Vec<(u64, Bytes)>, Vec<(u64, String)>);

/// The live-candidate records of one segment, read by the compactor thread.
struct CompactionInput {
    seg: SegId,
    /// `None` if the segment could not be read (it is then left alone).
    found: Option<Candidates>,
}

enum Work {
    Appends(Vec<Submission>),
    Compact(CompactionInput),
    /// Nothing queued, but a compaction job has chunks left.
    Background,
}

/// A compaction in progress: the candidates of one segment, copied forward a chunk at a time
/// (each chunk filtered against the live state just before it is written, so an ack that
/// arrives between two chunks is never undone).
struct CompactionJob {
    seg: SegId,
    bodies: Vec<(u64, Bytes)>,
    refs: Vec<(u64, String)>,
    next_body: usize,
    next_ref: usize,
    written: u64,
}

/// Body bytes per compaction chunk: one chunk is one batch, so appends wait at most one
/// such write and sync.
const COMPACTION_CHUNK_BYTES: usize = 512 << 10;
/// Refs (without bodies) per compaction chunk.
const COMPACTION_CHUNK_REFS: usize = 4096;

/// Batches between two looks for a segment worth compacting.
const COMPACTION_CHECK_EVERY: u32 = 32;

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    batches: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    failed_batches: AtomicU64,
    segments_created: AtomicU64,
    segments_deleted: AtomicU64,
    live_segments: AtomicU64,
    compactions: AtomicU64,
    compacted_records: AtomicU64,
    write_nanos: AtomicU64,
    sync_nanos: AtomicU64,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for work.
    work: Condvar,
    /// Blocking appenders wait here for queue space.
    space: Condvar,
    /// Async appenders wait here for queue space.
    space_async: Notify,
    counters: Counters,
    epoch: u64,
    max_pending: usize,
    batch_limit: usize,
    /// Locations of bodies the broker does not know yet (see `page.rs`).
    placed: super::page::Placed,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_appenders(&self) {
        self.space.notify_all();
        self.space_async.notify_waiters();
    }

    /// Stops the journal with `err` (unless already stopped) and fails everything queued.
    fn stop(&self, err: JournalError) {
        let mut q = self.lock();
        if !matches!(q.mode, Mode::Stopped(_)) {
            q.mode = Mode::Stopped(err.clone());
        }
        let err = match &q.mode {
            Mode::Stopped(e) => e.clone(),
            _ => err,
        };
        q.pending_bytes = 0;
        for s in q.pending.drain(..) {
            let _ = s.done.send(Err(err.clone()));
        }
        drop(q);
        self.work.notify_all();
        self.wake_appenders();
    }
}

/// Counters since open. `fsyncs` counts segment data syncs (directory syncs are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Successful `append` calls (submissions accepted into the queue).
    pub appends: u64,
    /// Batches written and synced.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Bytes written in those batches (framing included).
    pub bytes: u64,
    pub fsyncs: u64,
    /// Batches whose write or sync failed (their appends got the error).
    pub failed_batches: u64,
    pub segments_created: u64,
    pub segments_deleted: u64,
    /// Segments currently on disk (as the writer accounts them).
    pub live_segments: u64,
    /// Segments whose live records were copied forward by compaction.
    pub compactions: u64,
    /// Records written by compaction.
    pub compacted_records: u64,
    /// Time the writer spent in `write` calls (encoding excluded).
    pub write_time: Duration,
    /// Time the writer spent in `fdatasync` (plus `sync_delay`).
    pub sync_time: Duration,
}

impl JournalStats {
    /// Average records per durable batch.
    pub fn avg_batch_records(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.records as f64 / self.batches as f64
        }
    }
}

/// Resolves once the batch holding an append is durable: `Ok(batch_seq)`, or the error that
/// failed that batch (I/O, [`JournalError::Fenced`], [`JournalError::Closed`]).
///
/// `.await` it, or call [`Completion::wait`] from a thread that may block.
#[derive(Debug)]
#[must_use = "an append is only known durable once its completion resolves Ok"]
pub struct Completion {
    rx: oneshot::Receiver<Reply>,
}

impl Completion {
    /// Blocks the calling thread until the batch is durable (or failed). Usable anywhere, but
    /// blocking inside an async task stalls that runtime worker: await the completion there.
    pub fn wait(self) -> Reply {
        block_on(self)
    }
}

impl Future for Completion {
    type Output = Reply;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        Pin::new(&mut self.get_mut().rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(JournalError::Closed)))
    }
}

struct ThreadWaker(thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future + Unpin>(mut f: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = Pin::new(&mut f).poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// A journal open for writing. Dropping it flushes what is queued and stops the writer.
pub struct Journal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    files: FileCache,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("epoch", &self.shared.epoch)
            .finish()
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("fsync dir", dir, e))
}

/// Rewrites the valid prefix of the newest segment through `<name>.tmp` + rename (see
/// "Recovery rules" 8 in the module docs).
fn seal(dir: &Path, id: SegId, valid: &[u8]) -> Result<(), JournalError> {
    let path = format::segment_path(dir, id);
    let tmp = dir.join(format!("{}.tmp", format::segment_file_name(id)));
    // A leftover of an earlier failed seal (e.g. the disk was full) is ours to replace.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(JournalError::io("remove", &tmp, e)),
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| JournalError::io("create", &tmp, e))?;
    f.write_all_at(valid, 0)
        .and_then(|()| f.sync_data())
        .map_err(|e| JournalError::io("write", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(|e| JournalError::io("rename", &path, e))?;
    sync_dir(dir)
}

struct Segment {
    id: SegId,
    path: PathBuf,
    file: File,
    offset: u64,
}

struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
    opts: JournalOptions,
    state: State,
    active: Segment,
    /// End of bytes a failed write or sync may have left after `active.offset` (0: none).
    /// They are overwritten by the next batches; if the segment is left first, it is sealed.
    debris_end: u64,
    next_seq: u64,
    buf: Vec<u8>,
    /// Asks the compactor thread to read a segment (`None`: compaction disabled).
    compactor: Option<mpsc::Sender<SegId>>,
    compactor_thread: Option<JoinHandle<()>>,
    /// The segment being read by the compactor, if any (one at a time).
    compacting: Option<SegId>,
    job: Option<CompactionJob>,
    batches_since_compaction_check: u32,
    /// Where the last batch put its top-level `AddMessage` records (msg_id, location).
    placed: Vec<(u64, Location)>,
}

impl Writer {
    fn faults(&self) -> Option<&dyn IoFaults> {
        self.opts.faults.as_deref()
    }

    fn create_segment(
        dir: &Path,
        id: SegId,
        meta: format::SegmentMeta,
        faults: Option<&dyn IoFaults>,
    ) -> Result<Segment, JournalError> {
        let path = format::segment_path(dir, id);
        if let Some(e) = faults.and_then(|f| f.on_create(&path)) {
            return Err(JournalError::io("create", &path, e));
        }
        let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(JournalError::Conflict { segment: path });
            }
            Err(e) => return Err(JournalError::io("create", &path, e)),
        };
        if let Err(e) = file.write_all_at(&format::encode_segment_header(id, meta), 0) {
            // Leave no half-made segment behind: the next attempt must be able to create it.
            let _ = fs::remove_file(&path);
            return Err(JournalError::io("write", &path, e));
        }
        // The new name must be durable before anything in the file is confirmed.
        sync_dir(dir)?;
        Ok(Segment {
            id,
            path,
            file,
            offset: SEGMENT_HEADER_LEN as u64,
        })
    }

    fn meta(&self) -> format::SegmentMeta {
        format::SegmentMeta {
            epoch: self.shared.epoch,
            max_msg_id: self.state.max_msg_id,
            max_tx_id: self.state.max_tx_id,
        }
    }

    fn roll(&mut self) -> Result<(), JournalError> {
        if self.debris_end > self.active.offset {
            // Debris after the last good batch would become corruption in the middle of the
            // journal once a newer segment exists: cut it off first.
            let path = &self.active.path;
            let data = fs::read(path).map_err(|e| JournalError::io("read", path, e))?;
            let keep = (self.active.offset as usize).min(data.len());
            seal(&self.dir, self.active.id, &data[..keep])?;
            // The rename replaced the file: our descriptor points at the old inode now. If
            // creating the next segment fails we stay here, so write through the new file.
            self.active.file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| JournalError::io("open", path, e))?;
            tracing::warn!(segment = %path.display(), offset = keep, "cut debris of a failed write");
            self.debris_end = 0;
        }
        let next = Self::create_segment(&self.dir, self.active.id + 1, self.meta(), self.faults())?;
        self.active = next;
        self.state.add_segment(self.active.id);
        // The sealed segment may already be dead (e.g. it held only acks).
        self.state.dirty = true;
        let c = &self.shared.counters;
        c.segments_created.fetch_add(1, Relaxed);
        c.live_segments
            .store(self.state.segment_ids().len() as u64, Relaxed);
        Ok(())
    }

    /// Fails with `Fenced`, and stops the writer for good, once the write gate says no.
    fn check_gate(&self, why: &'static str) -> Result<(), JournalError> {
        match &self.opts.write_gate {
            Some(gate) if !gate.may_write() => {
                let err = JournalError::Fenced {
                    ours: self.shared.epoch,
                    newer: None,
                };
                self.shared.stop(err.clone());
                tracing::warn!(epoch = self.shared.epoch, "{why}");
                Err(err)
            }
            _ => Ok(()),
        }
    }

    /// Writes `self.buf` (one framed batch) at the end of the active segment and syncs it.
    fn write_durable(&mut self) -> Result<(), JournalError> {
        // The lease is gone (or about to be): not one more byte (invariant 8).
        self.check_gate("journal fenced by the write gate")?;
        let len = self.buf.len() as u64;
        if self.active.offset + len > self.opts.segment_size
            && self.active.offset > SEGMENT_HEADER_LEN as u64
        {
            self.roll()?;
        }
        let seg = &self.active;
        let t0 = Instant::now();
        // Positional write at our own offset: after a failed (partial) write the next batch
        // lands on the same offset and overwrites the debris.
        let fault = self
            .opts
            .faults
            .as_deref()
            .and_then(|f| f.on_write(&seg.path, seg.offset, self.buf.len()));
        let end = seg.offset + len;
        let written = match fault {
            Some((n, e)) => {
                let n = n.min(self.buf.len());
                let _ = seg.file.write_all_at(&self.buf[..n], seg.offset);
                Err(JournalError::io("write", &seg.path, e))
            }
            None => seg
                .file
                .write_all_at(&self.buf, seg.offset)
                .map_err(|e| JournalError::io("write", &seg.path, e)),
        };
        let t1 = Instant::now();
        let synced = written.and_then(|()| {
            if let Some(e) = self.faults().and_then(|f| f.on_sync(&seg.path)) {
                return Err(JournalError::io("fdatasync", &seg.path, e));
            }
            seg.file
                .sync_data()
                .map_err(|e| JournalError::io("fdatasync", &seg.path, e))
        });
        if let Err(e) = synced {
            // Some of the batch may be in the file (or in the page cache, after a failed sync).
            self.debris_end = self.debris_end.max(end);
            return Err(e);
        }
        self.shared.counters.fsyncs.fetch_add(1, Relaxed);
        if !self.opts.sync_delay.is_zero() {
            // EFS-latency emulation for benchmarks only.
            thread::sleep(self.opts.sync_delay);
        }
        // Asked again after the sync: a lane paused (or starved) between its write and the end of
        // its sync may have lost the lease meanwhile, and the new active may already have
        // recovered and sealed this segment without these bytes (an NFS client flushing late).
        // Such a batch must not be confirmed: its appenders get Fenced and resend to the new
        // active, whose duplicate detection drops it if it did become durable.
        self.check_gate("lease lost during a sync: batch not confirmed")?;
        let c = &self.shared.counters;
        c.write_nanos
            .fetch_add((t1 - t0).as_nanos() as u64, Relaxed);
        c.sync_nanos
            .fetch_add(t1.elapsed().as_nanos() as u64, Relaxed);
        self.active.offset = end;
        if end >= self.debris_end {
            self.debris_end = 0;
        }
        Ok(())
    }

    /// Frames, writes and syncs `records`; on success applies them to the live state.
    fn write_records<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Record> + Clone,
    ) -> Result<u64, JournalError> {
        self.buf.clear();
        self.placed.clear();
        let start = format::begin_batch(&mut self.buf);
        let mut count = 0u32;
        for r in records.clone() {
            if let Record::AddMessage { msg_id, encoded } = r {
                // Offset within the batch for now; made absolute once the batch is written.
                let at = self.buf.len() as u32;
                self.placed.push((
                    *msg_id,
                    Location {
                        segment: 0,
                        offset: at,
                        len: encoded.len() as u32,
                    },
                ));
            }
            r.encode(&mut self.buf);
            count += 1;
        }
        let seq = self.next_seq;
        format::finish_batch(&mut self.buf, start, self.shared.epoch, seq, count);
        self.write_durable()?;
        self.next_seq += 1;
        let c = &self.shared.counters;
        c.batches.fetch_add(1, Relaxed);
        c.records.fetch_add(u64::from(count), Relaxed);
        c.bytes.fetch_add(self.buf.len() as u64, Relaxed);
        let id = self.active.id;
        // The batch ends at the segment's new offset; segments are at most 4 GiB (validated).
        let base = (self.active.offset - self.buf.len() as u64) as u32;
        for (_, loc) in &mut self.placed {
            loc.segment = id;
            loc.offset += base;
        }
        // Before any completion resolves and before reclaim can delete a compacted original.
        self.shared.placed.insert(&self.placed);
        self.state.note_written(id, u64::from(count));
        for r in records {
            self.state.apply(id, &r.view(), None);
        }
        Ok(seq)
    }

    /// Deletes every segment the reclaim rule allows; returns how many.
    fn reclaim(&mut self) -> usize {
        if !self.state.dirty {
            return 0;
        }
        self.state.dirty = false;
        let mut deleted = 0;
        while let Some(id) = self.state.next_reclaimable(self.active.id) {
            let path = format::segment_path(&self.dir, id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "cannot delete dead segment");
                    self.state.dirty = true;
                    break;
                }
            }
            tracing::debug!(segment = %path.display(), "reclaimed segment");
            self.state.remove_segment(id);
            deleted += 1;
        }
        if deleted > 0 {
            let state = &self.state;
            self.shared
                .placed
                .segments_deleted(|id| state.has_message(id));
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!(error = %e, "directory fsync after reclaim failed");
            }
            let c = &self.shared.counters;
            c.segments_deleted.fetch_add(deleted as u64, Relaxed);
            c.live_segments
                .store(self.state.segment_ids().len() as u64, Relaxed);
        }
        deleted
    }

    /// Takes the next work: a compactor result, or a batch of submissions (everything queued,
    /// up to the batch limit).
    fn take(&self) -> Option<Work> {
        let mut q = self.shared.lock();
        loop {
            match q.mode {
                Mode::Stopped(_) => return None,
                Mode::Running if q.compaction.is_some() && self.job.is_none() => {
                    return q.compaction.take().map(Work::Compact);
                }
                _ if !q.pending.is_empty() => break,
                Mode::Closing => return None,
                Mode::Running if self.job.is_some() => return Some(Work::Background),
                Mode::Running => {
                    q = self
                        .shared
                        .work
                        .wait(q)
                        .unwrap_or_else(PoisonError::into_inner)
                }
            }
        }
        let mut total = BATCH_HEADER_LEN;
        let mut subs = Vec::new();
        while let Some(s) = q.pending.front() {
            if !subs.is_empty() && total + s.bytes > self.shared.batch_limit {
                break;
            }
            total += s.bytes;
            q.pending_bytes -= s.bytes;
            subs.push(q.pending.pop_front().unwrap());
        }
        drop(q);
        self.shared.wake_appenders();
        Some(Work::Appends(subs))
    }

    /// Every few batches, hands a sparse segment to the compactor thread.
    fn maybe_start_compaction(&mut self) {
        self.batches_since_compaction_check = self.batches_since_compaction_check.saturating_add(1);
        if self.compacting.is_some()
            || self.job.is_some()
            || self.batches_since_compaction_check <= COMPACTION_CHECK_EVERY
        {
            return;
        }
        self.batches_since_compaction_check = 0;
        let Some(tx) = &self.compactor else { return };
        if let Some(seg) = self
            .state
            .compaction_candidate(self.active.id, u64::from(self.opts.compaction_ratio.max(2)))
            && tx.send(seg).is_ok()
        {
            self.compacting = Some(seg);
        }
    }

    /// Starts copying what is still live in a sparse segment forward (as ordinary batches of
    /// this writer), so that the segment dies and reclaim deletes it.
    fn start_compaction(&mut self, input: CompactionInput) {
        self.compacting = None;
        if let Some((bodies, refs)) = input.found {
            self.job = Some(CompactionJob {
                seg: input.seg,
                bodies,
                refs,
                next_body: 0,
                next_ref: 0,
                written: 0,
            });
            self.compaction_step();
        }
    }

    /// Writes the next chunk of the compaction job.
    fn compaction_step(&mut self) {
        if self.job.is_none() || matches!(self.shared.lock().mode, Mode::Stopped(_)) {
            return; // fenced or closing for good: not one more write
        }
        let Some(mut job) = self.job.take() else {
            return;
        };
        let chunk_bytes = COMPACTION_CHUNK_BYTES.min(self.shared.batch_limit / 2);
        let (bodies, refs) = if job.next_body < job.bodies.len() {
            let mut end = job.next_body;
            let mut bytes = 0;
            while end < job.bodies.len()
                && (end == job.next_body || bytes + job.bodies[end].1.len() <= chunk_bytes)
            {
                bytes += job.bodies[end].1.len();
                end += 1;
            }
            let range = job.next_body..end;
            job.next_body = end;
            (&job.bodies[range], &job.refs[..0])
        } else {
            let end = (job.next_ref + COMPACTION_CHUNK_REFS).min(job.refs.len());
            let range = job.next_ref..end;
            job.next_ref = end;
            (&job.bodies[..0], &job.refs[range])
        };
        let records = self.state.compaction_records(job.seg, bodies, refs);
        // Usually one batch; more if refs and counts overflow the batch limit. The pieces are
        // written back to back (no append in between), so the filter above still holds.
        let limit = self.shared.batch_limit - BATCH_HEADER_LEN;
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len() {
                let r = &records[end];
                // Cut only before an AddMessage or AddRef: a ref keeps its count and schedule.
                let cut_ok = matches!(r, Record::AddMessage { .. } | Record::AddRef { .. });
                if end > start && cut_ok && bytes + r.encoded_len() > limit {
                    break;
                }
                bytes += r.encoded_len();
                end += 1;
            }
            if let Err(e) = self.write_records(records[start..end].iter()) {
                // What was written is consistent (copies are idempotent); the segment stays
                // and is picked again later.
                tracing::warn!(error = %e, segment = job.seg, "compaction batch failed");
                return;
            }
            job.written += (end - start) as u64;
            start = end;
        }
        if job.next_body < job.bodies.len() || job.next_ref < job.refs.len() {
            self.job = Some(job);
            return;
        }
        let c = &self.shared.counters;
        c.compactions.fetch_add(1, Relaxed);
        c.compacted_records.fetch_add(job.written, Relaxed);
        tracing::debug!(
            segment = job.seg,
            records = job.written,
            "compacted segment"
        );
        self.reclaim();
        // Deleting this segment may have made the next one eligible: look again right away.
        self.batches_since_compaction_check = COMPACTION_CHECK_EVERY;
        self.maybe_start_compaction();
    }

    fn run(mut self) {
        while let Some(work) = self.take() {
            let subs = match work {
                Work::Appends(subs) => subs,
                Work::Compact(input) => {
                    self.start_compaction(input);
                    continue;
                }
                Work::Background => {
                    self.compaction_step();
                    continue;
                }
            };
            match self.write_records(subs.iter().flat_map(|s| s.records.iter())) {
                Ok(seq) => {
                    for s in subs {
                        let _ = s.done.send(Ok(seq));
                    }
                    self.reclaim();
                    // Appends and compaction chunks alternate.
                    self.compaction_step();
                    self.maybe_start_compaction();
                }
                Err(e) => {
                    self.shared.counters.failed_batches.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "journal batch failed");
                    for s in subs {
                        let _ = s.done.send(Err(e.clone()));
                    }
                    if matches!(e, JournalError::Conflict { .. }) {
                        // Someone else writes this journal: never write again.
                        self.shared.stop(e);
                    }
                }
            }
        }
        self.compactor = None;
        if let Some(h) = self.compactor_thread.take() {
            let _ = h.join();
        }
    }
}

/// The compactor thread: reads a segment (one large read, off the writer thread) and lists the
/// message bodies and refs in it; the writer decides what is still live.
fn compactor(dir: PathBuf, shared: Arc<Shared>, requests: mpsc::Receiver<SegId>) {
    for seg in requests {
        let found = read_candidates(&dir, seg);
        let mut q = shared.lock();
        q.compaction = Some(CompactionInput { seg, found });
        drop(q);
        shared.work.notify_one();
    }
}

fn read_candidates(dir: &Path, seg: SegId) -> Option<Candidates> {
    let data = Bytes::from(fs::read(format::segment_path(dir, seg)).ok()?);
    let meta = format::check_segment_header(&data, seg).ok()?;
    let mut epoch = meta.epoch;
    let (mut bodies, mut refs) = (Vec::new(), Vec::new());
    let mut pos = SEGMENT_HEADER_LEN;
    while let Ok(h) = format::check_batch(&data[pos..], data.len()) {
        let body = &data[pos + BATCH_HEADER_LEN..pos + h.total_len];
        pos += h.total_len;
        if h.epoch < epoch {
            continue; // never applied by recovery, never copied
        }
        epoch = h.epoch;
        let mut at = 0;
        while at < body.len() {
            let (view, used) = RecordView::decode(&body[at..]).ok()?;
            at += used;
            let view = match view {
                RecordView::Tx { op, .. } => *op,
                v => v,
            };
            match view {
                RecordView::AddMessage { msg_id, encoded } => {
                    bodies.push((msg_id, data.slice_ref(encoded)))
                }
                RecordView::AddRef { msg_id, queue }
                | RecordView::DeliveryCount { msg_id, queue, .. }
                | RecordView::ScheduledDelivery { msg_id, queue, .. } => {
                    refs.push((msg_id, queue.to_owned()))
                }
                _ => {}
            }
        }
    }
    Some((bodies, refs))
}

/// Marks the journal stopped when the writer thread ends, however it ends (a panic included),
/// so that appenders never wait for a writer that is gone.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.stop(JournalError::Closed);
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`: recovers the live state, refuses with
    /// [`JournalError::Fenced`] if the journal holds a newer epoch than `options.epoch`, seals
    /// the newest segment, starts a new segment whose first batch is this writer's
    /// `EpochMarker`, deletes dead segments and starts the writer thread.
    pub fn open(
        dir: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<(Journal, Recovered), JournalError> {
        let dir = dir.as_ref().to_path_buf();
        let min_segment = (SEGMENT_HEADER_LEN + BATCH_HEADER_LEN + 64) as u64;
        if options.segment_size < min_segment {
            return Err(JournalError::InvalidOptions(format!(
                "segment_size must be at least {min_segment}"
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| JournalError::io("create_dir", &dir, e))?;
        let scan = recovery::scan(&dir, &options)?;
        if scan.recovered.max_epoch > options.epoch {
            return Err(JournalError::Fenced {
                ours: options.epoch,
                newer: Some(scan.recovered.max_epoch),
            });
        }
        let recovery::Scan {
            state,
            mut recovered,
            segments,
            last,
            max_seq,
            discarded_txs,
        } = scan;

        let mut next_id = 1;
        if let Some((id, data, valid)) = last {
            next_id = id + 1;
            if valid < SEGMENT_HEADER_LEN {
                let p = format::segment_path(&dir, id);
                fs::remove_file(&p).map_err(|e| JournalError::io("remove", &p, e))?;
                sync_dir(&dir)?;
            } else {
                seal(&dir, id, &data[..valid])?;
            }
        }
        debug_assert!(segments.iter().all(|s| *s < next_id));

        let batch_limit = options.batch_limit();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                pending_bytes: 0,
                mode: Mode::Running,
                compaction: None,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            space_async: Notify::new(),
            counters: Counters::default(),
            epoch: options.epoch,
            max_pending: options.max_pending_bytes,
            batch_limit,
            placed: super::page::Placed::default(),
        });
        let meta = format::SegmentMeta {
            epoch: options.epoch,
            max_msg_id: state.max_msg_id,
            max_tx_id: state.max_tx_id,
        };
        let active = Writer::create_segment(&dir, next_id, meta, options.faults.as_deref())?;
        let mut writer = Writer {
            shared: shared.clone(),
            dir: dir.clone(),
            opts: options.clone(),
            state,
            active,
            debris_end: 0,
            next_seq: max_seq + 1,
            buf: Vec::with_capacity(batch_limit.min(1 << 20)),
            compactor: None,
            compactor_thread: None,
            compacting: None,
            job: None,
            batches_since_compaction_check: 0,
            placed: Vec::new(),
        };
        writer.state.add_segment(next_id);
        shared.counters.segments_created.fetch_add(1, Relaxed);

        let mut first = vec![Record::EpochMarker {
            epoch: options.epoch,
        }];
        first.extend(
            discarded_txs
                .iter()
                .map(|&tx_id| Record::TxRollback { tx_id }),
        );
        writer.write_records(first.iter())?;
        writer.state.dirty = true;
        recovered.report.segments_reclaimed = writer.reclaim();
        shared
            .counters
            .live_segments
            .store(writer.state.segment_ids().len() as u64, Relaxed);
        recovered.max_epoch = recovered.max_epoch.max(options.epoch);

        if options.compaction {
            let (tx, rx) = mpsc::channel();
            let (d, sh) = (dir.clone(), shared.clone());
            let h = thread::Builder::new()
                .name("tandem-journal-compactor".into())
                .spawn(move || compactor(d, sh, rx))
                .map_err(|e| JournalError::io("spawn compactor", &dir, e))?;
            writer.compactor = Some(tx);
            writer.compactor_thread = Some(h);
        }

        let guard_shared = shared.clone();
        let handle = thread::Builder::new()
            .name("tandem-journal".into())
            .spawn(move || {
                let _guard = ExitGuard(guard_shared);
                writer.run();
            })
            .map_err(|e| JournalError::io("spawn writer", &dir, e))?;
        tracing::info!(
            dir = %dir.display(),
            epoch = options.epoch,
            messages = recovered.messages.len(),
            elapsed_ms = recovered.report.elapsed.as_millis() as u64,
            "journal open"
        );
        Ok((
            Journal {
                shared,
                writer: Mutex::new(Some(handle)),
                dir,
                files: FileCache::default(),
            },
            recovered,
        ))
    }

    fn prepare(&self, records: Vec<Record>) -> Result<(Submission, Completion), JournalError> {
        let mut bytes = 0;
        for r in &records {
            r.validate()
                .map_err(|e| JournalError::InvalidRecord(e.to_string()))?;
            bytes += r.encoded_len();
        }
        if bytes + BATCH_HEADER_LEN > self.shared.batch_limit {
            return Err(JournalError::TooLarge {
                size: bytes + BATCH_HEADER_LEN,
                max: self.shared.batch_limit,
            });
        }
        let (tx, rx) = oneshot::channel();
        Ok((
            Submission {
                records,
                bytes,
                done: tx,
            },
            Completion { rx },
        ))
    }

    /// Queues `sub` if there is room; gives it back if the queue is full.
    fn try_push(&self, q: &mut Queue, sub: Submission) -> Result<Option<Submission>, JournalError> {
        match &q.mode {
            Mode::Running => {}
            Mode::Closing => return Err(JournalError::Closed),
            Mode::Stopped(e) => return Err(e.clone()),
        }
        // An empty queue always takes one append, so a large append cannot starve.
        if q.pending_bytes > 0 && q.pending_bytes + sub.bytes > self.shared.max_pending {
            return Ok(Some(sub));
        }
        q.pending_bytes += sub.bytes;
        q.pending.push_back(sub);
        self.shared.counters.appends.fetch_add(1, Relaxed);
        self.shared.work.notify_one();
        Ok(None)
    }

    /// Queues `records` as one atomic unit and returns its [`Completion`]. Blocks the calling
    /// thread while the submission queue is full (backpressure); async callers use
    /// [`Journal::append_async`].
    pub fn append(&self, records: Vec<Record>) -> Result<Completion, JournalError> {
        let (mut sub, done) = self.prepare(records)?;
        let mut q = self.shared.lock();
        loop {
            match self.try_push(&mut q, sub)? {
                None => return Ok(done),
                Some(back) => {
                    sub = back;
                    q = self
                        .shared
                        .space
                        .wait(q)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    /// Like [`Journal::append`] but fails with [`JournalError::QueueFull`] instead of blocking.
    pub fn try_append(&self, records: Vec<Record>) -> Result<Completion, JournalError> {
        let (sub, done) = self.prepare(records)?;
        let mut q = self.shared.lock();
        match self.try_push(&mut q, sub)? {
            None => Ok(done),
            Some(_) => Err(JournalError::QueueFull),
        }
    }

    /// Like [`Journal::append`] but waits for queue space asynchronously.
    pub async fn append_async(&self, records: Vec<Record>) -> Result<Completion, JournalError> {
        let (mut sub, done) = self.prepare(records)?;
        loop {
            // Created before the check so that a wake-up between check and await is not lost.
            let space = self.shared.space_async.notified();
            {
                let mut q = self.shared.lock();
                match self.try_push(&mut q, sub)? {
                    None => return Ok(done),
                    Some(back) => sub = back,
                }
            }
            space.await;
        }
    }

    /// Fences this writer: queued appends fail with [`JournalError::Fenced`], new appends are
    /// refused, and once this returns the writer thread has stopped (a batch already being
    /// written when it was called completes first, with its true outcome).
    pub fn fence(&self) {
        self.shared.stop(JournalError::Fenced {
            ours: self.shared.epoch,
            newer: None,
        });
        self.join();
    }

    /// Writes everything queued, then stops the writer. Later appends fail with `Closed`.
    pub fn close(&self) {
        {
            let mut q = self.shared.lock();
            if matches!(q.mode, Mode::Running) {
                q.mode = Mode::Closing;
            }
        }
        self.shared.work.notify_all();
        self.join();
    }

    fn join(&self) {
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("journal writer thread panicked");
        }
    }

    /// This writer's epoch.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the location of a message appended since open, once its append is durable (the
    /// journal forgets it then; the caller keeps it). `None` for a message appended inside a
    /// transaction (`Tx`), which the broker must keep in memory.
    pub fn take_location(&self, msg_id: u64) -> Option<Location> {
        self.shared.placed.take(msg_id)
    }

    /// Reads back the body of live message `msg_id`, last known at `known` (from
    /// [`Journal::take_location`] or recovery). Valid after compaction moved the record; works
    /// after close too (files only). Blocking: one `pread` (see `page.rs`).
    pub fn read_body(&self, msg_id: u64, known: Location) -> Result<Bytes, JournalError> {
        super::page::read_body(&self.dir, &self.shared.placed, &self.files, msg_id, known)
    }

    /// Locations held for the broker (appends not yet taken, records moved by compaction).
    pub fn placed_len(&self) -> usize {
        self.shared.placed.len()
    }

    #[cfg(test)]
    pub(crate) fn placed(&self) -> &super::page::Placed {
        &self.shared.placed
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> JournalStats {
        let c = &self.shared.counters;
        JournalStats {
            appends: c.appends.load(Relaxed),
            batches: c.batches.load(Relaxed),
            records: c.records.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            fsyncs: c.fsyncs.load(Relaxed),
            failed_batches: c.failed_batches.load(Relaxed),
            segments_created: c.segments_created.load(Relaxed),
            segments_deleted: c.segments_deleted.load(Relaxed),
            live_segments: c.live_segments.load(Relaxed),
            compactions: c.compactions.load(Relaxed),
            compacted_records: c.compacted_records.load(Relaxed),
            write_time: Duration::from_nanos(c.write_nanos.load(Relaxed)),
            sync_time: Duration::from_nanos(c.sync_nanos.load(Relaxed)),
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}
