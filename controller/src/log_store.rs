//! The Raft log in redb: entries keyed by log index, plus the vote, the
//! committed log id and the last purged log id. Everything is encoded with
//! `rmp_serde::to_vec_named`.
//!
//! Every write is one redb transaction committed with redb's default
//! (immediate, fsynced) durability before the call returns, so an append's
//! IO callback fires only once its entries are on disk, and the vote is on
//! disk before `save_vote` returns. redb calls block, so they run on tokio's
//! blocking pool. This module stores what openraft tells it to; it must never
//! decide what is committed or reorder entries.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Entry, LogId, TypeConfig, Vote};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const RAFT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// Creates the log's tables so that read transactions find them.
pub(crate) fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(RAFT_STATE)?;
    txn.commit()?;
    Ok(())
}

pub(crate) fn db_err(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(io::Error::other)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Runs blocking redb work off the async worker threads. A current-thread
/// runtime (tests, the simulation) has no workers to protect and runs it
/// inline, which keeps a simulated run on one thread and deterministic.
pub(crate) async fn blocking<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("redb task failed: {e}")))?
}

/// The Raft log store. Cloning shares the database; a clone is also the log
/// reader handed to replication tasks, and sees every committed write.
#[derive(Clone)]
pub struct RedbLogStore {
    db: Arc<Database>,
}

impl RedbLogStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    async fn read_state<T>(&self, key: &'static str) -> io::Result<Option<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(RAFT_STATE).map_err(db_err)?;
            match table.get(key).map_err(db_err)? {
                Some(bytes) => Ok(Some(decode(bytes.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn write_state<T: Serialize>(&self, key: &'static str, value: &T) -> io::Result<()> {
        self.write_state_with(key, value, redb::Durability::Immediate)
            .await
    }

    async fn write_state_with<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: redb::Durability,
    ) -> io::Result<()> {
        let bytes = encode(value)?;
        let db = self.db.clone();
        blocking(move || {
            let mut txn = db.begin_write().map_err(db_err)?;
            txn.set_durability(durability).map_err(db_err)?;
            {
                let mut table = txn.open_table(RAFT_STATE).map_err(db_err)?;
                table.insert(key, bytes.as_slice()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }
}

/// `range` as a half-open `start..end`, or `None` when it is empty.
fn half_open(range: &impl RangeBounds<u64>) -> Option<std::ops::Range<u64>> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        // Index u64::MAX is never reached; treating it as exclusive is harmless.
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start < end).then_some(start..end)
}

impl RaftLogReader<TypeConfig> for RedbLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let Some(range) = half_open(&range) else {
            return Ok(Vec::new());
        };
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(LOG).map_err(db_err)?;
            let mut entries = Vec::new();
            for row in table.range(range).map_err(db_err)? {
                let (_, bytes) = row.map_err(db_err)?;
                entries.push(decode::<Entry>(bytes.value())?);
            }
            Ok(entries)
        })
        .await
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.read_state(KEY_VOTE).await
    }
}

impl RaftLogStorage<TypeConfig> for RedbLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(db_err)?;
            let state = txn.open_table(RAFT_STATE).map_err(db_err)?;
            let last_purged_log_id: Option<LogId> =
                match state.get(KEY_LAST_PURGED).map_err(db_err)? {
                    Some(bytes) => Some(decode(bytes.value())?),
                    None => None,
                };
            let log = txn.open_table(LOG).map_err(db_err)?;
            let last_log_id = match log.last().map_err(db_err)? {
                Some((_, bytes)) => Some(decode::<Entry>(bytes.value())?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.write_state(KEY_VOTE, vote).await
    }

    /// Not fsynced: it becomes durable with the next log append or vote.
    /// Losing it in a crash is safe (openraft re-learns the committed index;
    /// `Controller::start` waits on a read barrier before serving), and it
    /// saves one fsync on every metadata write.
    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        self.write_state_with(KEY_COMMITTED, &committed, redb::Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self
            .read_state::<Option<LogId>>(KEY_COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let rows = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
            .collect::<io::Result<Vec<(u64, Vec<u8>)>>>()?;
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut log = txn.open_table(LOG).map_err(db_err)?;
                for (index, bytes) in &rows {
                    log.insert(*index, bytes.as_slice()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await?;
        // Committed with immediate durability: the entries are on disk.
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut log = txn.open_table(LOG).map_err(db_err)?;
                let doomed = log
                    .range(first_removed..)
                    .map_err(db_err)?
                    .map(|row| row.map(|(index, _)| index.value()))
                    .collect::<Result<Vec<u64>, _>>()
                    .map_err(db_err)?;
                for index in doomed {
                    log.remove(index).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let last_purged = encode(&log_id)?;
        let upto = log_id.index;
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut state = txn.open_table(RAFT_STATE).map_err(db_err)?;
                state
                    .insert(KEY_LAST_PURGED, last_purged.as_slice())
                    .map_err(db_err)?;
                let mut log = txn.open_table(LOG).map_err(db_err)?;
                let doomed = log
                    .range(..=upto)
                    .map_err(db_err)?
                    .map(|row| row.map(|(index, _)| index.value()))
                    .collect::<Result<Vec<u64>, _>>()
                    .map_err(db_err)?;
                for index in doomed {
                    log.remove(index).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::*;
    use crate::state_machine::MetadataStateMachine;

    struct RedbStoreBuilder;

    impl StoreBuilder<TypeConfig, RedbLogStore, MetadataStateMachine, tempfile::TempDir>
        for RedbStoreBuilder
    {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, RedbLogStore, MetadataStateMachine), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().expect("creating a temp dir for a store under test");
            let db = crate::open_database(dir.path()).expect("opening a fresh redb database");
            let db = Arc::new(db);
            let sm = MetadataStateMachine::open(db.clone(), 16).expect("opening the state machine");
            Ok((dir, RedbLogStore::new(db), sm))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_openraft_storage_suite() {
        Suite::test_all(RedbStoreBuilder)
            .await
            .expect("openraft storage suite");
    }

    #[test]
    fn half_open_ranges() {
        assert_eq!(half_open(&(3..7)), Some(3..7));
        assert_eq!(half_open(&(3..=7)), Some(3..8));
        assert_eq!(half_open(&(..2)), Some(0..2));
        assert_eq!(half_open(&(5..5)), None);
        assert_eq!(
            half_open(&(Bound::Excluded(u64::MAX), Bound::Unbounded)),
            None
        );
    }
}
