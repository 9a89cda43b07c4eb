//! Journal errors. Cloneable (I/O errors are behind `Arc`) because one failed batch fails the
//! completions of every append that was grouped into it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong while decoding one record (no I/O context; [`JournalError`] adds it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the record did.
    #[error("truncated record: need {needed} more bytes")]
    Truncated { needed: usize },
    /// A record type byte this build does not know (written by a newer format).
    #[error("unknown record type {0:#04x} (written by a newer journal format?)")]
    UnknownType(u8),
    /// A record nested in a transaction that cannot be transactional.
    #[error("record type {0:#04x} cannot be part of a transaction")]
    NotTransactional(u8),
    /// The payload was longer than its fields.
    #[error("record type {record_type:#04x} has {extra} trailing bytes")]
    TrailingBytes { record_type: u8, extra: usize },
    /// A string field is not UTF-8.
    #[error("string field is not valid UTF-8")]
    BadUtf8,
    /// A bool field was neither 0 nor 1.
    #[error("bad boolean byte {0:#04x}")]
    BadBool(u8),
}

/// Errors of the journal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// An I/O operation failed (a full disk shows up here with `ErrorKind::StorageFull`).
    #[error("journal I/O error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// A batch failed its checksum in the middle of the journal (not a torn tail).
    #[error(
        "corrupt journal batch in {segment} at offset {offset}: crc expected {expected:#010x}, actual {actual:#010x}"
    )]
    CrcMismatch {
        segment: PathBuf,
        offset: u64,
        expected: u32,
        actual: u32,
    },
    /// Structural corruption (bad magic, impossible length, bad record) in the middle of the journal.
    #[error("corrupt journal in {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A record inside a checksummed batch did not decode (typically a newer format).
    #[error("undecodable record in {segment} at offset {offset}: {source}")]
    Record {
        segment: PathBuf,
        offset: u64,
        #[source]
        source: DecodeError,
    },
    /// The segment was written by a newer, incompatible journal format.
    #[error("segment {segment} has format version {found}, this build supports up to {supported}")]
    UnsupportedVersion {
        segment: PathBuf,
        found: u32,
        supported: u32,
    },
    /// This writer is fenced: either `fence()` was called, or at open a newer epoch was found
    /// on disk (`newer` is then that epoch). No further writes happen.
    #[error("journal fenced (our epoch {ours}{})", match .newer { Some(n) => format!(", newer epoch {n} on disk"), None => String::new() })]
    Fenced { ours: u64, newer: Option<u64> },
    /// Another writer created the segment we wanted: someone else is writing this journal.
    #[error("segment {segment} already exists: another writer is active on this journal")]
    Conflict { segment: PathBuf },
    /// The submission queue is full (only from `try_append`).
    #[error("journal submission queue is full")]
    QueueFull,
    /// An append is larger than a batch may be.
    #[error("append of {size} bytes exceeds the maximum batch size {max}")]
    TooLarge { size: usize, max: usize },
    /// A record that is not valid to append (e.g. a nested transaction).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// `JournalOptions` that cannot work (e.g. a segment too small for one batch).
    #[error("invalid journal options: {0}")]
    InvalidOptions(String),
    /// The journal was closed (or its writer thread is gone).
    #[error("journal closed")]
    Closed,
}

impl JournalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        JournalError::Io {
            op,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    /// True when this is an out-of-space error (ENOSPC / EDQUOT).
    pub fn is_storage_full(&self) -> bool {
        match self {
            JournalError::Io { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                )
            }
            _ => false,
        }
    }

    /// True when this writer has been fenced.
    pub fn is_fenced(&self) -> bool {
        matches!(self, JournalError::Fenced { .. })
    }
}
