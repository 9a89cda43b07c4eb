//! The lease on a shared directory (local disk, NFS 4.1, AWS EFS), using only exclusive create, write, fsync,
//! rename, read and readdir: no advisory locks, no mmap (invariant 9).
//!
//! ```text
//! <root>/lease/epoch-00000000000000000007       created with O_CREAT|O_EXCL by the claimant; never deleted
//!                                                "tandem-lease-epoch\nepoch=7\nholder=a\n"
//! <root>/lease/heartbeat-00000000000000000007   replaced by rename on each renewal by epoch 7's holder
//!                                                "tandem-lease-heartbeat\nepoch=7\nholder=a\ncounter=42\n"
//! <root>/lease/.heartbeat-00000000000000000007.tmp   the renewal being written
//! ```
//!
//! - Claim `n`: check `epoch-(n-1)` exists (epochs stay dense), then exclusive-create `epoch-n`; `EEXIST` means
//!   another lane won. Write the holder, fsync the file and the directory.
//! - Renew: check `epoch-n` names us and `epoch-(n+1)` does not exist; write the temp file, fsync, rename it
//!   over `heartbeat-n`, fsync the directory; check `epoch-(n+1)` again. Rename makes the new content appear
//!   whole; a reader never sees a torn heartbeat.
//! - Read: start at the hint (or the largest epoch a directory listing shows), then probe `epoch-(k+1)` by exact
//!   name until it is absent; read that epoch's claim record and heartbeat. Only the probes are trusted for
//!   freshness, never the listing (NFS caches directory contents).
//! - Garbage: heartbeats and temp files of older epochs are removed. Epoch files are kept: exclusive create of
//!   `epoch-n` can only refuse a second claimant while the file exists, and with no consensus store there is no
//!   way to shrink the namespace that stays safe against an arbitrarily stale lane. That costs one ~40-byte file
//!   per takeover, and reads do not list the directory once they have a hint.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{LeaseError, LeaseStore};
use crate::{Epoch, LaneId, LeaseView};

/// Largest lease file we read; anything bigger is corrupt (bounded reads, invariant 10).
const MAX_FILE: u64 = 4096;

/// The lease in `<root>/lease/`. Cheap to share across threads (holds only the path).
#[derive(Debug, Clone)]
pub struct FileLeaseStore {
    dir: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LeaseError {
    let path = path.to_path_buf();
    move |source| LeaseError::Io { op, path, source }
}

fn epoch_name(epoch: Epoch) -> String {
    format!("epoch-{:020}", epoch.0)
}

fn heartbeat_name(epoch: Epoch) -> String {
    format!("heartbeat-{:020}", epoch.0)
}

fn temp_name(epoch: Epoch) -> String {
    format!(".heartbeat-{:020}.tmp", epoch.0)
}

fn parse_suffix(name: &str, prefix: &str, suffix: &str) -> Option<Epoch> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Epoch))
        .flatten()
}

/// `key=value` lines after a magic first line.
fn parse_record<'a>(text: &'a str, magic: &str) -> Option<Vec<(&'a str, &'a str)>> {
    let mut lines = text.lines();
    if lines.next()? != magic {
        return None;
    }
    lines.map(|l| l.split_once('=')).collect()
}

fn field<'a>(fields: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

impl FileLeaseStore {
    /// The lease under `<root>/lease`, created if missing.
    pub fn open(root: impl AsRef<Path>) -> Result<FileLeaseStore, LeaseError> {
        let dir = root.as_ref().join("lease");
        fs::create_dir_all(&dir).map_err(io_err("create dir", &dir))?;
        Ok(FileLeaseStore { dir })
    }

    /// The lease directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `epoch-n` exists, by opening it by exact name. On NFSv4 an open goes to the server (close-to-open
    /// consistency); a negative answer is fresh only without negative lookup caching (`lookupcache=positive`).
    fn epoch_exists(&self, epoch: Epoch) -> Result<bool, LeaseError> {
        let path = self.dir.join(epoch_name(epoch));
        match File::open(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    /// Read a whole small file, `None` if it does not exist.
    fn read_small(&self, path: &Path) -> Result<Option<String>, LeaseError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        let mut buf = Vec::new();
        file.take(MAX_FILE + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("read", path))?;
        if buf.len() as u64 > MAX_FILE {
            return Err(LeaseError::Corrupt {
                path: path.to_path_buf(),
                detail: "file too large",
            });
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| LeaseError::Corrupt {
                path: path.to_path_buf(),
                detail: "not UTF-8",
            })
    }

    /// The holder recorded in `epoch-n`: `Ok(None)` if the file is missing, `Ok(Some(None))` if it exists but its
    /// record is not (yet) complete.
    fn claim_record(&self, epoch: Epoch) -> Result<Option<Option<LaneId>>, LeaseError> {
        let path = self.dir.join(epoch_name(epoch));
        let Some(text) = self.read_small(&path)? else {
            return Ok(None);
        };
        let holder = parse_record(&text, "tandem-lease-epoch").and_then(|f| {
            (field(&f, "epoch")?.parse().ok() == Some(epoch.0))
                .then(|| LaneId::new(field(&f, "holder")?).ok())
                .flatten()
        });
        Ok(Some(holder))
    }

    fn heartbeat(&self, epoch: Epoch) -> Result<u64, LeaseError> {
        let path = self.dir.join(heartbeat_name(epoch));
        let Some(text) = self.read_small(&path)? else {
            return Ok(0);
        };
        parse_record(&text, "tandem-lease-heartbeat")
            .and_then(|f| {
                (field(&f, "epoch")?.parse().ok() == Some(epoch.0))
                    .then(|| field(&f, "counter")?.parse().ok())
                    .flatten()
            })
            .ok_or(LeaseError::Corrupt {
                path,
                detail: "bad heartbeat record",
            })
    }

    /// The largest epoch a directory listing shows (possibly stale on NFS; only a starting point).
    fn listed_max(&self) -> Result<Option<Epoch>, LeaseError> {
        let mut max = None;
        for entry in fs::read_dir(&self.dir).map_err(io_err("read dir", &self.dir))? {
            let entry = entry.map_err(io_err("read dir", &self.dir))?;
            if let Some(e) = entry
                .file_name()
                .to_str()
                .and_then(|n| parse_suffix(n, "epoch-", ""))
            {
                max = max.max(Some(e));
            }
        }
        Ok(max)
    }

    /// The newest epoch at or after `start`, which must exist: probe by exact name.
    fn probe_from(&self, mut epoch: Epoch) -> Result<Epoch, LeaseError> {
        while self.epoch_exists(epoch.next())? {
            epoch = epoch.next();
        }
        Ok(epoch)
    }

    fn superseded(&self, epoch: Epoch) -> Result<Option<Epoch>, LeaseError> {
        if self.epoch_exists(epoch.next())? {
            Ok(Some(self.probe_from(epoch.next())?))
        } else {
            Ok(None)
        }
    }

    fn sync_dir(&self) -> Result<(), LeaseError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync dir", &self.dir))
    }
}

impl LeaseStore for FileLeaseStore {
    fn read(&self, hint: Option<Epoch>) -> Result<Option<LeaseView>, LeaseError> {
        let start = match hint {
            Some(h) if self.epoch_exists(h)? => Some(h),
            _ => match self.listed_max()? {
                Some(m) => Some(m),
                // The listing may lag a first claim on NFS; the probe does not.
                None => self.epoch_exists(Epoch::FIRST)?.then_some(Epoch::FIRST),
            },
        };
        let Some(start) = start else {
            return Ok(None);
        };
        let epoch = self.probe_from(start)?;
        let holder = self.claim_record(epoch)?.flatten();
        let heartbeat = self.heartbeat(epoch)?;
        Ok(Some(LeaseView {
            epoch,
            holder,
            heartbeat,
        }))
    }

    fn claim(&self, epoch: Epoch, holder: &LaneId) -> Result<(), LeaseError> {
        if epoch.0 == 0 || (epoch.0 > 1 && !self.epoch_exists(Epoch(epoch.0 - 1))?) {
            return Err(LeaseError::NotNext { epoch });
        }
        let path = self.dir.join(epoch_name(epoch));
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(LeaseError::Lost { epoch });
            }
            Err(e) => return Err(io_err("create", &path)(e)),
        };
        // The claim is the create; the record only tells readers who holds it. A reader that sees the file
        // before this write lands reports the holder as unknown, which is a value like any other.
        write!(
            file,
            "tandem-lease-epoch\nepoch={}\nholder={}\n",
            epoch.0, holder
        )
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &path))?;
        drop(file);
        self.sync_dir()
    }

    fn renew(&self, epoch: Epoch, holder: &LaneId, counter: u64) -> Result<(), LeaseError> {
        match self.claim_record(epoch)? {
            Some(Some(h)) if h == *holder => {}
            _ => {
                return Err(LeaseError::NotHolder {
                    epoch,
                    holder: holder.clone(),
                });
            }
        }
        if let Some(newer) = self.superseded(epoch)? {
            return Err(LeaseError::Superseded { epoch, newer });
        }
        let temp = self.dir.join(temp_name(epoch));
        let mut file = File::create(&temp).map_err(io_err("create", &temp))?;
        write!(
            file,
            "tandem-lease-heartbeat\nepoch={}\nholder={}\ncounter={}\n",
            epoch.0, holder, counter
        )
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &temp))?;
        // Closed before the rename: on NFS close flushes and the rename is then a single server operation.
        drop(file);
        let path = self.dir.join(heartbeat_name(epoch));
        fs::rename(&temp, &path).map_err(io_err("rename", &path))?;
        self.sync_dir()?;
        // Checked again after the write so a successor that claimed meanwhile fences us now rather than at the
        // next renewal. Safety does not rest on this check but on the holder's deadline (crate docs).
        if let Some(newer) = self.superseded(epoch)? {
            return Err(LeaseError::Superseded { epoch, newer });
        }
        Ok(())
    }

    fn collect_garbage(&self, current: Epoch) -> Result<(), LeaseError> {
        for entry in fs::read_dir(&self.dir).map_err(io_err("read dir", &self.dir))? {
            let entry = entry.map_err(io_err("read dir", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let old = parse_suffix(&name, "heartbeat-", "")
                .or_else(|| parse_suffix(&name, ".heartbeat-", ".tmp"))
                .is_some_and(|e| e < current);
            if old {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &path)(e)),
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_numerically_and_parse_back() {
        assert_eq!(epoch_name(Epoch(7)), "epoch-00000000000000000007");
        assert!(epoch_name(Epoch(9)) < epoch_name(Epoch(10)));
        assert_eq!(
            parse_suffix(&epoch_name(Epoch(u64::MAX)), "epoch-", ""),
            Some(Epoch(u64::MAX))
        );
        assert_eq!(
            parse_suffix(&temp_name(Epoch(3)), ".heartbeat-", ".tmp"),
            Some(Epoch(3))
        );
        assert_eq!(parse_suffix("epoch-12", "epoch-", ""), None);
        assert_eq!(
            parse_suffix("epoch-0000000000000000000x", "epoch-", ""),
            None
        );
    }

    #[test]
    fn partial_claim_record_reads_as_unknown_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLeaseStore::open(dir.path()).unwrap();
        fs::write(store.dir().join(epoch_name(Epoch(1))), "tandem-lease-ep").unwrap();
        let view = store.read(None).unwrap().unwrap();
        assert_eq!(view.epoch, Epoch(1));
        assert_eq!(view.holder, None);
        assert_eq!(view.heartbeat, 0);
    }

    #[test]
    fn corrupt_heartbeat_is_an_error_not_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileLeaseStore::open(dir.path()).unwrap();
        let a = LaneId::new("a").unwrap();
        store.claim(Epoch(1), &a).unwrap();
        fs::write(store.dir().join(heartbeat_name(Epoch(1))), "garbage").unwrap();
        assert!(matches!(store.read(None), Err(LeaseError::Corrupt { .. })));
    }

    #[test]
    fn stale_listing_is_corrected_by_probing() {
        // A hint below the newest epoch (as after a stale NFS listing) still finds the newest.
        let dir = tempfile::tempdir().unwrap();
        let store = FileLeaseStore::open(dir.path()).unwrap();
        let a = LaneId::new("a").unwrap();
        for e in 1..=5 {
            store.claim(Epoch(e), &a).unwrap();
        }
        assert_eq!(store.read(Some(Epoch(2))).unwrap().unwrap().epoch, Epoch(5));
    }
}
