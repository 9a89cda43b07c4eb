//! One member's durable raft state in a redb file in its own local directory: the vote, the log, the last purged
//! log id, the committed log id and the latest snapshot (the whole lease table).
//!
//! ```text
//! <dir>/raft.redb   table "log":  index (u64) -> JSON Entry
//!                   table "meta": "vote" | "committed" | "purged" | "snapshot" -> JSON
//! ```
//!
//! Invariants:
//! - `save_vote` and `append` return (and `append` calls back) only after a redb commit with immediate durability
//!   (fsync): a member that restarts never votes twice in one term and never forgets an entry it acknowledged.
//! - The state machine lives in memory. On open it is the stored snapshot; openraft re-applies the log after it.
//!   A snapshot is written durably before it becomes current, so purging the log behind it loses nothing.
//! - `committed` is written without fsync: it only saves re-application work after a restart, and redb keeps a
//!   non-durable commit ordered before the next durable one.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use parking_lot::Mutex;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::table::{LeaseReply, LeaseTable};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Why a member's storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    /// redb failed (I/O, corruption, the file is open elsewhere).
    #[error("raft storage {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::Error,
    },
    /// A stored record does not parse.
    #[error("raft storage {path}: corrupt record {key}: {source}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record.
        key: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The blocking task running the call died.
    #[error("raft storage: blocking task failed: {0}")]
    Task(String),
}

type NodeId = u64;
type Result<T, E = StorageFailure> = std::result::Result<T, E>;

/// The database, shared by the log store, its readers and the state machine.
#[derive(Debug)]
struct Db {
    // Fields drop in order: the database (closing the file and releasing its locks) before the signal.
    db: Database,
    path: PathBuf,
    closed: CloseSignal,
}

/// Set when the [`Db`] holding it is dropped, i.e. after its database closed.
#[derive(Debug)]
struct CloseSignal(Arc<AtomicBool>);

impl Drop for CloseSignal {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Db {
    fn err(&self) -> impl Fn(redb::Error) -> StorageFailure + '_ {
        |source| StorageFailure::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|source| StorageFailure::Corrupt {
            path: self.path.clone(),
            key: key.to_string(),
            source,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let read = || -> std::result::Result<Option<Vec<u8>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(META)?;
            Ok(table.get(key)?.map(|v| v.value().to_vec()))
        };
        match read().map_err(self.err())? {
            Some(bytes) => self.decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T, durability: Durability) -> Result<()> {
        let bytes = serde_json::to_vec(value).expect("raft records always serialize");
        let write = || -> std::result::Result<(), redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability)?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        };
        write().map_err(self.err())
    }
}

/// Run a redb call on the blocking pool (a commit fsyncs) and turn its failure into openraft's error.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
    kind: fn(AnyError) -> StorageIOError<NodeId>,
) -> std::result::Result<T, StorageError<NodeId>> {
    let r = tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(StorageFailure::Task(e.to_string())));
    r.map_err(|e| kind(AnyError::new(&e)).into())
}

/// Open (or create) `<dir>/raft.redb` and return the log store and the state machine.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachine)> {
    let path = dir.join("raft.redb");
    let db = Database::create(&path).map_err(|e| StorageFailure::Db {
        path: path.clone(),
        source: e.into(),
    })?;
    let db = Arc::new(Db {
        db,
        path,
        closed: CloseSignal(Arc::default()),
    });
    // Both tables exist from the start, so reads never meet "table does not exist".
    let create = || -> std::result::Result<(), redb::Error> {
        let txn = db.db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(())
    };
    create().map_err(db.err())?;
    let mut state = SmState::default();
    if let Some(stored) = db.get_meta::<StoredSnapshot>("snapshot")? {
        state.last_applied = stored.meta.last_log_id;
        state.membership = stored.meta.last_membership.clone();
        state.table = stored.table.clone();
        state.snapshot = Some(stored);
    }
    Ok((
        LogStore {
            db: Arc::clone(&db),
        },
        StateMachine {
            db,
            state: Arc::new(Mutex::new(state)),
        },
    ))
}

/// The raft log and vote.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
}

/// Tells whether the database is still open somewhere (openraft's workers may outlive its shutdown briefly).
#[derive(Debug, Clone)]
pub struct OpenProbe(Arc<AtomicBool>);

impl OpenProbe {
    /// True until every handle on the database is dropped and the file is closed.
    pub fn is_open(&self) -> bool {
        !self.0.load(Ordering::Acquire)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> std::result::Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let db = Arc::clone(&self.db);
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        blocking(
            move || {
                let read = || -> std::result::Result<Vec<(u64, Vec<u8>)>, redb::Error> {
                    let txn = db.db.begin_read()?;
                    let table = txn.open_table(LOG)?;
                    let mut out = Vec::new();
                    for item in table.range::<u64>(bounds)? {
                        let (k, v) = item?;
                        out.push((k.value(), v.value().to_vec()));
                    }
                    Ok(out)
                };
                read()
                    .map_err(db.err())?
                    .into_iter()
                    .map(|(k, v)| db.decode(&format!("log {k}"), &v))
                    .collect()
            },
            StorageIOError::read_logs,
        )
        .await
    }
}

impl LogStore {
    /// A probe that turns false once every handle (log, readers, state machine) is dropped.
    pub fn probe(&self) -> OpenProbe {
        OpenProbe(Arc::clone(&self.db.closed.0))
    }

    /// Write `entries` in one durable transaction.
    async fn write_entries(
        &self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| {
                let bytes = serde_json::to_vec(e).expect("raft entries always serialize");
                (e.log_id.index, bytes)
            })
            .collect();
        let db = Arc::clone(&self.db);
        blocking(
            move || {
                let write = || -> std::result::Result<(), redb::Error> {
                    let txn = db.db.begin_write()?;
                    {
                        let mut table = txn.open_table(LOG)?;
                        for (index, bytes) in &rows {
                            table.insert(index, bytes.as_slice())?;
                        }
                    }
                    txn.commit()?;
                    Ok(())
                };
                write().map_err(db.err())
            },
            StorageIOError::write_logs,
        )
        .await
    }

    /// `append` without openraft's completion callback (which only openraft can make).
    #[cfg(test)]
    pub async fn append_for_test(&self, entries: Vec<Entry<TypeConfig>>) {
        self.write_entries(entries).await.unwrap();
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(
        &mut self,
    ) -> std::result::Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let db = Arc::clone(&self.db);
        blocking(
            move || {
                let purged: Option<LogId<NodeId>> = db.get_meta("purged")?;
                let read = || -> std::result::Result<Option<(u64, Vec<u8>)>, redb::Error> {
                    let txn = db.db.begin_read()?;
                    let table = txn.open_table(LOG)?;
                    Ok(table.last()?.map(|(k, v)| (k.value(), v.value().to_vec())))
                };
                let last = match read().map_err(db.err())? {
                    Some((k, v)) => Some(
                        db.decode::<Entry<TypeConfig>>(&format!("log {k}"), &v)?
                            .log_id,
                    ),
                    None => purged,
                };
                Ok(LogState {
                    last_purged_log_id: purged,
                    last_log_id: last,
                })
            },
            StorageIOError::read_logs,
        )
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(
        &mut self,
        vote: &Vote<NodeId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let (db, vote) = (Arc::clone(&self.db), *vote);
        blocking(
            move || db.put_meta("vote", &vote, Durability::Immediate),
            StorageIOError::write_vote,
        )
        .await
    }

    async fn read_vote(
        &mut self,
    ) -> std::result::Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let db = Arc::clone(&self.db);
        blocking(move || db.get_meta("vote"), StorageIOError::read_vote).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let db = Arc::clone(&self.db);
        blocking(
            move || db.put_meta("committed", &committed, Durability::None),
            StorageIOError::write,
        )
        .await
    }

    async fn read_committed(
        &mut self,
    ) -> std::result::Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let db = Arc::clone(&self.db);
        blocking(
            move || Ok(db.get_meta::<Option<LogId<NodeId>>>("committed")?.flatten()),
            StorageIOError::read,
        )
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> std::result::Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries.into_iter().collect()).await?;
        // Only now is the entry durable: openraft may count this member towards a quorum for it.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(
        &mut self,
        log_id: LogId<NodeId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let db = Arc::clone(&self.db);
        blocking(
            move || {
                let write = || -> std::result::Result<(), redb::Error> {
                    let txn = db.db.begin_write()?;
                    txn.open_table(LOG)?
                        .retain_in(log_id.index.., |_, _| false)?;
                    txn.commit()?;
                    Ok(())
                };
                write().map_err(db.err())
            },
            StorageIOError::write_logs,
        )
        .await
    }

    async fn purge(
        &mut self,
        log_id: LogId<NodeId>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let db = Arc::clone(&self.db);
        let purged = serde_json::to_vec(&Some(log_id)).expect("log ids serialize");
        blocking(
            move || {
                // One transaction: the purged marker and the removal land together.
                let write = || -> std::result::Result<(), redb::Error> {
                    let txn = db.db.begin_write()?;
                    txn.open_table(META)?.insert("purged", purged.as_slice())?;
                    txn.open_table(LOG)?
                        .retain_in(..=log_id.index, |_, _| false)?;
                    txn.commit()?;
                    Ok(())
                };
                write().map_err(db.err())
            },
            StorageIOError::write_logs,
        )
        .await
    }
}

/// A snapshot as stored: openraft's metadata plus the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    table: LeaseTable,
}

/// The applied state, shared with the member for linearizable reads.
#[derive(Debug, Default)]
pub struct SmState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    /// The lease table.
    pub table: LeaseTable,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The replicated lease table.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<Db>,
    state: Arc<Mutex<SmState>>,
}

impl StateMachine {
    /// The applied state, for reads after `ensure_linearizable`.
    pub fn shared(&self) -> Arc<Mutex<SmState>> {
        Arc::clone(&self.state)
    }

    /// Make `stored` current, durably first.
    async fn store_snapshot(
        &self,
        stored: StoredSnapshot,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let (db, copy) = (Arc::clone(&self.db), stored.clone());
        blocking(
            move || db.put_meta("snapshot", &copy, Durability::Immediate),
            |e| StorageIOError::write_snapshot(None, e),
        )
        .await?;
        self.state.lock().snapshot = Some(stored);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(
        &mut self,
    ) -> std::result::Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let stored = {
            let mut s = self.state.lock();
            s.snapshots_built += 1;
            let snapshot_id = match s.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, s.snapshots_built),
                None => format!("none-{}", s.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: s.last_applied,
                    last_membership: s.membership.clone(),
                    snapshot_id,
                },
                table: s.table.clone(),
            }
        };
        self.store_snapshot(stored.clone()).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(stored.table),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> std::result::Result<
        (Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>),
        StorageError<NodeId>,
    > {
        let s = self.state.lock();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> std::result::Result<Vec<LeaseReply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut s = self.state.lock();
        let mut replies = Vec::new();
        for entry in entries {
            s.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => LeaseReply::Done,
                EntryPayload::Normal(command) => s.table.apply(&command),
                EntryPayload::Membership(m) => {
                    s.membership = StoredMembership::new(Some(entry.log_id), m);
                    LeaseReply::Done
                }
            });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> std::result::Result<Box<LeaseTable>, StorageError<NodeId>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<LeaseTable>,
    ) -> std::result::Result<(), StorageError<NodeId>> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            table: *snapshot,
        };
        self.store_snapshot(stored.clone()).await?;
        let mut s = self.state.lock();
        s.last_applied = stored.meta.last_log_id;
        s.membership = stored.meta.last_membership;
        s.table = stored.table;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> std::result::Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.state.lock().snapshot.clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(s.table),
        }))
    }
}
