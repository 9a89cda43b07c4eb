//! On-disk framing: segment file names, the segment header and the batch frame.
//! (The drawing is in the module docs of `journal`.)

use std::path::{Path, PathBuf};

/// Segment header magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TANDEMJ\0";
/// The format version this build writes and the highest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Batch frame magic ("TJB1" little endian); lets recovery tell "garbage" from "a valid batch
/// further on" when it meets a bad batch.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"TJB1");
/// Bytes of a batch frame before its records.
pub const BATCH_HEADER_LEN: usize = 32;
/// Bytes of the batch frame covered by `len` but not by the CRC prefix: magic, len, crc.
const BATCH_PREFIX_LEN: usize = 12;

/// `0000000000000042.seg`
pub fn segment_file_name(id: u64) -> String {
    format!("{id:016}.seg")
}

pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(segment_file_name(id))
}

/// Parses a segment file name; anything else in the directory is not ours.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a segment header says beyond its identity: the writer's epoch and the highest ids
/// written in all earlier segments (so that ids are never reused even after every segment that
/// held them was reclaimed: the newest segment always survives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentMeta {
    pub epoch: u64,
    pub max_msg_id: u64,
    pub max_tx_id: u64,
}

pub fn encode_segment_header(id: u64, meta: SegmentMeta) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16 flags, zero
    h[16..24].copy_from_slice(&id.to_le_bytes());
    h[24..32].copy_from_slice(&meta.epoch.to_le_bytes());
    h[32..40].copy_from_slice(&meta.max_msg_id.to_le_bytes());
    h[40..48].copy_from_slice(&meta.max_tx_id.to_le_bytes());
    // 48..60 reserved, zero
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeaderError {
    Short,
    BadMagic,
    BadCrc { expected: u32, actual: u32 },
    Version(u32),
    WrongId(u64),
}

pub fn check_segment_header(buf: &[u8], id: u64) -> Result<SegmentMeta, HeaderError> {
    if buf.len() < SEGMENT_HEADER_LEN {
        return Err(HeaderError::Short);
    }
    if buf[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
    let expected = u32::from_le_bytes(buf[60..64].try_into().unwrap());
    let actual = crc32c::crc32c(&buf[0..60]);
    if expected != actual {
        return Err(HeaderError::BadCrc { expected, actual });
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    if version > FORMAT_VERSION || version == 0 {
        return Err(HeaderError::Version(version));
    }
    let found = u64_at(16);
    if found != id {
        return Err(HeaderError::WrongId(found));
    }
    Ok(SegmentMeta {
        epoch: u64_at(24),
        max_msg_id: u64_at(32),
        max_tx_id: u64_at(40),
    })
}

/// Appends a batch frame holding the already-encoded `records` (`count` of them).
#[cfg(test)]
pub fn encode_batch(out: &mut Vec<u8>, epoch: u64, seq: u64, count: u32, records: &[u8]) {
    let start = begin_batch(out);
    out.extend_from_slice(records);
    finish_batch(out, start, epoch, seq, count);
}

/// Reserves a batch header at the end of `out`; encode records after it, then call
/// [`finish_batch`] with the returned start.
pub fn begin_batch(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; BATCH_HEADER_LEN]);
    start
}

/// Fills in the header of the batch that starts at `start` and runs to the end of `out`.
pub fn finish_batch(out: &mut [u8], start: usize, epoch: u64, seq: u64, count: u32) {
    let len = (out.len() - start - BATCH_PREFIX_LEN) as u32;
    let h = &mut out[start..];
    h[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[12..20].copy_from_slice(&epoch.to_le_bytes());
    h[20..28].copy_from_slice(&seq.to_le_bytes());
    h[28..32].copy_from_slice(&count.to_le_bytes());
    let crc = crc32c::crc32c(&h[BATCH_PREFIX_LEN..]);
    h[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// A batch frame that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub epoch: u64,
    pub seq: u64,
    pub count: u32,
    /// Total bytes of the frame, header included.
    pub total_len: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the frame claims (or than a header): a torn write if at the tail.
    Incomplete,
    BadMagic,
    BadLength(u32),
    BadCrc {
        expected: u32,
        actual: u32,
    },
}

/// Checks the batch frame at the start of `buf` (magic, length, CRC over everything after the
/// CRC field). `max_len` bounds the claimed length so garbage cannot claim gigabytes.
pub fn check_batch(buf: &[u8], max_len: usize) -> Result<BatchHeader, BatchError> {
    if buf.len() < BATCH_HEADER_LEN {
        // A short tail that does not even start with our magic is still just "incomplete":
        // recovery decides whether that is a torn tail.
        return Err(BatchError::Incomplete);
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    if magic != BATCH_MAGIC {
        return Err(BatchError::BadMagic);
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let total = BATCH_PREFIX_LEN + len as usize;
    if total < BATCH_HEADER_LEN || total > max_len {
        return Err(BatchError::BadLength(len));
    }
    if buf.len() < total {
        return Err(BatchError::Incomplete);
    }
    let expected = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    let actual = crc32c::crc32c(&buf[BATCH_PREFIX_LEN..total]);
    if expected != actual {
        return Err(BatchError::BadCrc { expected, actual });
    }
    Ok(BatchHeader {
        epoch: u64::from_le_bytes(buf[12..20].try_into().unwrap()),
        seq: u64::from_le_bytes(buf[20..28].try_into().unwrap()),
        count: u32::from_le_bytes(buf[28..32].try_into().unwrap()),
        total_len: total,
    })
}

/// Offset (relative to `buf`) of the next position at or after `from` where a complete,
/// CRC-valid batch starts, if any. Used to tell mid-journal corruption from a torn tail.
pub fn find_next_valid_batch(buf: &[u8], from: usize, max_len: usize) -> Option<usize> {
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut pos = from;
    while pos + BATCH_HEADER_LEN <= buf.len() {
        let idx = buf[pos..].windows(4).position(|w| w == magic)?;
        let at = pos + idx;
        if check_batch(&buf[at..], max_len).is_ok() {
            return Some(at);
        }
        pos = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name(42), "0000000000000042.seg");
        assert_eq!(parse_segment_file_name("0000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_file_name("0000000000000042.seg.tmp"), None);
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000x2.seg"), None);
    }

    #[test]
    fn segment_header_checks() {
        let meta = SegmentMeta {
            epoch: 2,
            max_msg_id: 77,
            max_tx_id: 5,
        };
        let h = encode_segment_header(3, meta);
        assert_eq!(&h[0..8], b"TANDEMJ\0");
        assert_eq!(&h[8..12], &1u32.to_le_bytes());
        assert_eq!(&h[16..24], &3u64.to_le_bytes());
        assert_eq!(&h[24..32], &2u64.to_le_bytes());
        assert_eq!(&h[32..40], &77u64.to_le_bytes());
        assert_eq!(&h[40..48], &5u64.to_le_bytes());
        assert_eq!(&h[60..64], &crc32c::crc32c(&h[0..60]).to_le_bytes());
        assert_eq!(check_segment_header(&h, 3), Ok(meta));
        assert_eq!(check_segment_header(&h, 4), Err(HeaderError::WrongId(3)));
        for cut in 0..SEGMENT_HEADER_LEN {
            assert_eq!(check_segment_header(&h[..cut], 3), Err(HeaderError::Short));
        }
        let mut bad = h;
        bad[17] ^= 1;
        assert!(matches!(
            check_segment_header(&bad, 3),
            Err(HeaderError::BadCrc { .. })
        ));
        let mut newer = h;
        newer[8] = 2;
        let crc = crc32c::crc32c(&newer[0..60]);
        newer[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            check_segment_header(&newer, 3),
            Err(HeaderError::Version(2))
        );
    }

    #[test]
    fn batch_exact_layout_and_checks() {
        let mut v = Vec::new();
        encode_batch(&mut v, 0x0a, 0x0b, 1, b"rec");
        assert_eq!(v.len(), BATCH_HEADER_LEN + 3);
        assert_eq!(&v[0..4], b"TJB1");
        assert_eq!(&v[4..8], &23u32.to_le_bytes());
        assert_eq!(&v[8..12], &crc32c::crc32c(&v[12..]).to_le_bytes());
        assert_eq!(&v[12..20], &10u64.to_le_bytes());
        assert_eq!(&v[20..28], &11u64.to_le_bytes());
        assert_eq!(&v[28..32], &1u32.to_le_bytes());
        assert_eq!(&v[32..], b"rec");
        let h = check_batch(&v, 1 << 20).unwrap();
        assert_eq!(
            h,
            BatchHeader {
                epoch: 10,
                seq: 11,
                count: 1,
                total_len: 35
            }
        );
        for cut in 0..v.len() {
            assert_eq!(check_batch(&v[..cut], 1 << 20), Err(BatchError::Incomplete));
        }
        for bit in 0..v.len() * 8 {
            let mut f = v.clone();
            f[bit / 8] ^= 1 << (bit % 8);
            assert!(check_batch(&f, 1 << 20).is_err(), "bit {bit}");
        }
        assert_eq!(check_batch(&v, 34), Err(BatchError::BadLength(23)));
    }

    #[test]
    fn next_valid_batch_is_found_after_garbage() {
        let mut v = vec![0xAA; 7];
        encode_batch(&mut v, 1, 1, 0, b"");
        assert_eq!(find_next_valid_batch(&v, 0, 1 << 20), Some(7));
        assert_eq!(find_next_valid_batch(&v, 8, 1 << 20), None);
    }
}
