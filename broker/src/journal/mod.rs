//! The persistent journal: segmented append-only files on a (possibly shared, NFS) directory,
//! one writer thread with group commit, recovery to the live state, segment reclaim and
//! compaction.
//!
//! Threads: one writer per journal (all writes, syncs, unlinks; owns the live-state accounting),
//! one compactor (reads sparse segments only), and during open one reader that prefetches the
//! next segment. Appenders only touch a mutex-protected submission queue.
//!
//! The journal speaks bytes and ids only: message bodies are opaque `Bytes`, queues are names,
//! transactions are `u64`s. The broker owns the meaning.
//!
//! # Invariants this module keeps
//!
//! - (1) An append's [`Completion`] resolves `Ok` only after the batch holding it was written and
//!   `fdatasync`ed ([`std::fs::File::sync_data`]).
//! - (2)/(3) Recovery returns every message with a ref that was not acked, its last delivery
//!   count, and the duplicate-detection cache ([`Record::DupId`]).
//! - (6) Every batch carries the writer's epoch; recovery ignores a batch whose epoch is older than
//!   one already seen before it. Opening with an epoch older than one on disk fails with
//!   [`JournalError::Fenced`].
//! - (9) Only `create_new` (O_CREAT|O_EXCL), positional write, rename, `fdatasync`, read, unlink
//!   and directory fsync. No mmap, no O_DIRECT, no locks, no fallocate, no ftruncate.
//!
//! # Layout
//!
//! A journal is a directory of segments `0000000000000001.seg`, `…0002.seg`, … (16 decimal
//! digits, ascending = write order). A segment is at most `segment_size` bytes (default 64 MiB)
//! unless a single batch is larger than that limit allows, which `append` refuses.
//!
//! ```text
//! segment:
//! +--------------------------- segment header (64 bytes) ---------------------------+
//! | 0 magic "TANDEMJ\0" (8) | 8 version u32 = 1 | 12 flags u32 = 0 | 16 segment id u64 |
//! | 24 writer epoch u64 | 32 max msg_id in earlier segments u64 | 40 max tx_id ... u64 |
//! | 48 reserved (12, zero) | 60 crc32c(bytes 0..60) u32                               |
//! +----------------------------------------------------------------------------------+
//! | batch | batch | batch | ...                                                      |
//!
//! batch (the unit of atomicity: all of its records or none):
//! +---------+--------+-------------+-----------+-----------+--------------+---------------+
//! | "TJB1"  | len u32| crc32c u32  | epoch u64 | seq u64   | count u32    | records ...   |
//! +---------+--------+-------------+-----------+-----------+--------------+---------------+
//!   0         4        8             12          20          28             32
//!   len = bytes after the crc field (20 + records); crc covers exactly those bytes.
//!
//! record:
//! +------------------+----------+--------------------+
//! | payload len u32  | type u8  | payload (len bytes)|      see `record.rs` for the payloads
//! +------------------+----------+--------------------+
//! ```
//!
//! All integers are little endian. Records carry no CRC of their own: the batch CRC covers them
//! and a batch is accepted or rejected whole.
//!
//! # Writing
//!
//! [`Journal::append`] queues a list of records (one append = one atomic unit, never split
//! across batches or segments) on a bounded queue. A single writer thread takes everything
//! queued (up to `max_batch_bytes`), frames it as one batch, writes it at the end of the active
//! segment, calls `fdatasync`, then resolves every completion of that batch. Whatever arrives
//! while a sync is in flight forms the next batch: that is group commit. Each open starts a new
//! segment (never appends to an existing file) whose first batch is an
//! [`Record::EpochMarker`]. A failed write or sync (e.g. ENOSPC) fails that batch's completions;
//! the next batch is written at the same offset, overwriting whatever partial bytes the failed
//! one left, so the writer keeps going once space returns. If the writer must move to a new
//! segment while such debris is still there, it first seals the segment (valid prefix to
//! `.tmp`, rename), so debris never sits in the middle of the journal.
//!
//! # Recovery rules (at open)
//!
//! 1. Segments are read in id order, each in one large read; every batch's magic, length and
//!    CRC are checked.
//! 2. A batch whose epoch is lower than the highest epoch seen before it (in a batch or in a
//!    segment header) is ignored: a fenced writer's late write.
//! 3. A bad batch in the newest segment with no valid batch after it is a **torn tail**: the
//!    segment is cut back to its last complete batch (logged, reported in
//!    [`RecoveryReport::torn_tail`]). Nothing in it had been confirmed.
//! 4. A bad batch anywhere else (in an older segment, or followed by a valid batch) is
//!    **corruption**: the open fails with the segment path and offset, unless
//!    [`JournalOptions::skip_corrupt`] is set, in which case the region up to the next valid
//!    batch is skipped and reported in [`RecoveryReport::skipped`] (acks in it are lost, so
//!    messages may come back: at-least-once).
//! 5. A CRC-valid batch holding a record this build cannot decode (a newer format) fails the open.
//! 6. Transactions: `Tx` ops take effect at their `TxCommit`; a rolled-back transaction is
//!    discarded; a prepared, undecided one is returned in [`Recovered::prepared_txs`] without being
//!    applied; an unprepared, undecided one is discarded and a `TxRollback` for it is written.
//! 7. A message with no live ref is dropped. Delivery count and scheduled time are the last ones
//!    written per (message, queue).
//! 8. The newest segment is then **sealed**: its valid prefix is written to `<name>.seg.tmp`,
//!    synced and renamed over it. This truncates a torn tail without ftruncate, and it detaches a
//!    fenced old writer that may still hold the file open: its late writes go to the replaced
//!    inode (or fail with ESTALE on NFS), never into the journal. The new writer's segment is
//!    created with `create_new`, so two writers can never share one.
//! 9. Live bodies are returned in memory, as zero-copy slices of the segment reads; bodies
//!    from segments that are mostly dead are copied so those segment buffers are freed.
//!    Memory at open is therefore about the size of the live bodies. Each recovered message
//!    also carries its [`Location`] (unless it was added inside a transaction), so the broker
//!    can drop bodies beyond its memory budget right after open and read them back with
//!    [`Journal::read_body`] (see `page.rs`). The peak during open is still the live size.
//!
//! # Reclaim rule
//!
//! Each segment has a live count: records in it that still matter — an `AddMessage` whose
//! message has a live ref, a live `AddRef`, the latest `DeliveryCount`/`ScheduledDelivery` of a
//! live ref, the latest non-deleted `Destination`/`Subscription` per name, a `DupId` still in the
//! cache, the newest `EpochMarker`, and ops/prepares of undecided transactions. Each segment
//! also has a set of segments it *needs*: a record that cancels, completes or copies a record in
//! another segment (an `AckRef` for an `AddRef`, a deleting or replacing `Destination` or
//! `Subscription`, a `TxCommit`/`TxRollback` for the tx's ops and prepare, a compaction copy for
//! its original) makes its segment need that other one. **A segment other than the active one
//! is deleted when its live count is zero and every segment it needs is already deleted.** So an
//! `AckRef` outlives the `AddRef` it cancels (no resurrection at recovery), and a `TxCommit`
//! outlives its ops. Deleting is an unlink plus a directory fsync on the writer thread after a
//! batch (one extra sync; a few ms on EFS). The newest segment is never deleted, and its header
//! carries the highest message and transaction ids of all earlier segments, so ids are never
//! reused even when every segment that held them is gone.
//!
//! # Compaction
//!
//! A single long-lived message would otherwise pin its whole segment. Every few batches the
//! writer looks for a sealed segment where fewer than 1/[`JournalOptions::compaction_ratio`] of
//! the records written are still live, that holds nothing compaction does not move
//! (destinations, subscriptions, dup ids, undecided transactions) and whose needed segments are
//! gone. A compactor thread reads that segment (off the writer thread) and lists its bodies and
//! refs. The writer then re-appends, in chunks of at most 512 KiB interleaved with ordinary
//! batches, each message whose `AddMessage` is in that segment with all its live refs, counts
//! and schedules, plus refs/counts of other messages that live there, and the epoch marker if it
//! is there. Each chunk is filtered against the live state just before it is written, so an ack
//! that raced with the read is never undone. Recovery treats a second `AddMessage`/`AddRef` for
//! a live message/ref as "it moved here"; the old segment then has nothing live and is reclaimed
//! (the copy needs it, so the copy can never be deleted first). Appends wait for at most one
//! chunk (one write and sync of ≤ 512 KiB). Space stays within about `compaction_ratio` times
//! the live records; records are counted, not bytes, so a segment of live large bodies and dead
//! small acks is compacted later than its bytes would suggest.
//!
//! # Using it
//!
//! ```
//! use bytes::Bytes;
//! use tandem_broker::journal::{Journal, JournalOptions, Record};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let (journal, recovered) = Journal::open(dir.path(), JournalOptions::new(1)).unwrap();
//! assert!(recovered.messages.is_empty());
//! let id = recovered.max_msg_id + 1;
//! let done = journal
//!     .append(vec![
//!         Record::AddMessage { msg_id: id, encoded: Bytes::from_static(b"hello") },
//!         Record::AddRef { msg_id: id, queue: "orders".into() },
//!     ])
//!     .unwrap();
//! done.wait().unwrap(); // durable now: confirm to the producer (or `.await` it)
//! drop(journal);
//!
//! let (_journal, recovered) = Journal::open(dir.path(), JournalOptions::new(1)).unwrap();
//! assert_eq!(recovered.messages[0].encoded, Bytes::from_static(b"hello"));
//! assert_eq!(&*recovered.messages[0].refs[0].queue, "orders");
//! ```
//!
//! What the broker must know:
//! - One `append` is atomic (all its records survive a crash or none do) and is never split.
//!   A local JMS transaction can therefore be written as one append without `Tx` records;
//!   `Tx`/`TxPrepare`/`TxCommit` are for transactions whose records are written over time (XA).
//! - Completions resolve in batch order; `Ok(seq)` carries the batch sequence number.
//! - Ids are the broker's: allocate `msg_id`s above [`Recovered::max_msg_id`] and `tx_id`s above
//!   [`Recovered::max_tx_id`], never reuse them.
//! - Acks that the journal cannot match (unknown message or queue) are ignored, not errors.
//! - After [`Journal::fence`] or a failed open with [`JournalError::Fenced`], the lane must stop
//!   serving: nothing it appends becomes durable.
//!
//! # Tests without a disk?
//!
//! There is no in-memory variant: the journal's API is the same whatever the medium, and a
//! tempdir journal opens in about a millisecond and syncs in about one, so tests use the real
//! thing. The broker's in-memory `MessageStore` implementation is the place for a no-I/O store.

mod error;
mod format;
mod page;
mod record;
mod recovery;
mod state;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{DecodeError, JournalError};
pub use format::{BATCH_HEADER_LEN, FORMAT_VERSION, SEGMENT_HEADER_LEN, segment_file_name};
pub use page::Location;
pub use record::{RECORD_HEADER_LEN, Record, SubscriptionRecord};
pub use state::{PreparedTx, Recovered, RecoveredDestination, RecoveredMessage, RecoveredRef};
pub use writer::{Completion, Journal, JournalStats};

/// Fault injection for tests: called by the writer before it touches segment files.
pub trait IoFaults: Send + Sync + 'static {
    /// Before writing `len` bytes at `offset` of `path`. `Some((n, err))` makes the writer
    /// write only the first `n` bytes and then fail with `err` (a partial write).
    fn on_write(&self, _path: &Path, _offset: u64, _len: usize) -> Option<(usize, std::io::Error)> {
        None
    }
    /// Before `fdatasync` of `path`.
    fn on_sync(&self, _path: &Path) -> Option<std::io::Error> {
        None
    }
    /// Before creating segment `path`.
    fn on_create(&self, _path: &Path) -> Option<std::io::Error> {
        None
    }
}

/// Options of [`Journal::open`].
#[derive(Clone)]
pub struct JournalOptions {
    /// This writer's epoch (from the lease). Written in every batch.
    pub epoch: u64,
    /// Maximum segment size in bytes (default 64 MiB).
    pub segment_size: u64,
    /// Maximum bytes of one batch, hence of one append (default 8 MiB).
    pub max_batch_bytes: usize,
    /// Bytes of queued, not yet written appends before `append` blocks (default 64 MiB).
    pub max_pending_bytes: usize,
    /// Extra latency added to every sync, to emulate EFS in benchmarks (default zero).
    pub sync_delay: Duration,
    /// Skip corrupt regions in the middle of the journal instead of failing the open.
    pub skip_corrupt: bool,
    /// Duplicate-detection entries kept per producer (default 1024).
    pub dup_ids_per_producer: usize,
    /// Producers the duplicate-detection cache remembers (default 65,536; least recently written
    /// forgotten first).
    pub dup_producers: usize,
    /// Copy the live records of mostly-dead segments forward so that those segments can be
    /// deleted (default true). See "Compaction" in the module docs.
    pub compaction: bool,
    /// A segment is compacted when fewer than 1/`compaction_ratio` of the records written in it
    /// are still live (default 4, at least 2). Higher: less rewriting, more disk.
    pub compaction_ratio: u32,
    /// Test hook to inject I/O errors.
    pub faults: Option<Arc<dyn IoFaults>>,
    /// Asked before every batch is written: a lane writes only while it holds the lease. When it
    /// says no, the journal fences itself (the batch and everything queued fail with `Fenced`).
    pub write_gate: Option<Arc<dyn WriteGate>>,
}

/// Whether this writer may write now (the failover lease's deadline, checked on the real clock).
pub trait WriteGate: Send + Sync + 'static {
    /// `false` once the lease's write deadline has passed or a newer epoch exists.
    fn may_write(&self) -> bool;
}

impl JournalOptions {
    pub fn new(epoch: u64) -> Self {
        JournalOptions {
            epoch,
            segment_size: 64 << 20,
            max_batch_bytes: 8 << 20,
            max_pending_bytes: 64 << 20,
            sync_delay: Duration::ZERO,
            skip_corrupt: false,
            dup_ids_per_producer: 1024,
            dup_producers: 65_536,
            compaction: true,
            compaction_ratio: 4,
            faults: None,
            write_gate: None,
        }
    }

    /// The largest batch that can actually be written (also bounded by the segment size).
    pub(crate) fn batch_limit(&self) -> usize {
        let seg = usize::try_from(self.segment_size).unwrap_or(usize::MAX);
        self.max_batch_bytes
            .min(seg.saturating_sub(SEGMENT_HEADER_LEN))
    }
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self::new(1)
    }
}

impl fmt::Debug for JournalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalOptions")
            .field("epoch", &self.epoch)
            .field("segment_size", &self.segment_size)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("sync_delay", &self.sync_delay)
            .field("skip_corrupt", &self.skip_corrupt)
            .field("dup_ids_per_producer", &self.dup_ids_per_producer)
            .field("dup_producers", &self.dup_producers)
            .field("compaction", &self.compaction)
            .field("compaction_ratio", &self.compaction_ratio)
            .field("faults", &self.faults.is_some())
            .field("write_gate", &self.write_gate.is_some())
            .finish()
    }
}

/// A torn tail found (and cut) at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub discarded_bytes: u64,
}

/// A corrupt region skipped because of [`JournalOptions::skip_corrupt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptRegion {
    pub segment: PathBuf,
    pub offset: u64,
    pub len: u64,
    pub reason: String,
}

/// What recovery saw.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub bytes: u64,
    pub batches: u64,
    pub records: u64,
    /// Batches ignored because a newer epoch had been seen before them (invariant 6).
    pub stale_batches_ignored: u64,
    pub torn_tail: Option<TornTail>,
    pub skipped: Vec<CorruptRegion>,
    /// Transactions that were neither prepared nor decided; rolled back.
    pub discarded_txs: Vec<u64>,
    /// Refs, acks or counts naming an unknown message or queue, ignored. Normal in small
    /// numbers: an ack outlives the segment of the message it acked (see the reclaim rule).
    pub anomalies: u64,
    /// Segments deleted by the reclaim sweep at open.
    pub segments_reclaimed: usize,
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests;
