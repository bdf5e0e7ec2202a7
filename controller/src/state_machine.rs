//! The Raft state machine: the `proto::MetadataImage` that committed
//! commands are applied to, the last applied log id and membership, a bounded
//! ring of recent commands for brokers following deltas, and the snapshot of
//! all of it persisted in the controller's redb database.
//!
//! Applying a command is exactly `MetadataImage::apply`; this module adds no
//! decisions of its own and must never consult clocks, randomness or the
//! network while applying. Disk I/O happens only when a snapshot is built or
//! installed, on tokio's blocking pool. The image lives in memory; after a
//! restart it is rebuilt from the persisted snapshot plus the committed log
//! entries openraft re-applies.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use proto::rpc::MetadataDeltas;
use proto::{CommandReply, MetadataCommand, MetadataImage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log_store::{blocking, db_err, decode, encode};
use crate::types::{LogId, Proposal, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// The persisted snapshot: its metadata and its encoded contents, written in
/// one transaction so that they always match.
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

/// Creates the state machine's tables so that read transactions find them.
pub(crate) fn create_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(())
}

/// What a snapshot's bytes hold (rmp-serde, named fields).
#[derive(Deserialize)]
struct SnapshotContents {
    image: MetadataImage,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Borrowing twin of [`SnapshotContents`], so that building a snapshot
/// encodes the live image without cloning it first.
#[derive(Serialize)]
struct SnapshotContentsRef<'a> {
    image: &'a MetadataImage,
    last_applied: &'a Option<LogId>,
    membership: &'a StoredMembership,
}

/// Everything applied so far, shared between openraft's state-machine worker
/// (the only writer) and the controller's readers.
struct Applied {
    image: MetadataImage,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Recent normal entries, oldest first, log indexes strictly increasing.
    ring: VecDeque<(u64, MetadataCommand)>,
    ring_capacity: usize,
    /// Every normal entry with a log index above this one is in `ring`.
    ring_floor: u64,
}

impl Applied {
    fn applied_index(&self) -> u64 {
        self.last_applied.as_ref().map_or(0, |id| id.index)
    }

    fn push_delta(&mut self, index: u64, cmd: MetadataCommand) {
        if let Some((last, _)) = self.ring.back() {
            assert!(
                index > *last,
                "deltas ring must grow in log order: {index} after {last}"
            );
        }
        if self.ring.len() == self.ring_capacity {
            let (evicted, _) = self
                .ring
                .pop_front()
                .expect("a full ring of capacity >= 1 is not empty");
            self.ring_floor = evicted;
        }
        self.ring.push_back((index, cmd));
    }
}

/// The applied state as the rest of the controller reads it.
#[derive(Clone)]
pub struct AppliedState {
    inner: Arc<RwLock<Applied>>,
    applied_tx: Arc<watch::Sender<u64>>,
}

impl AppliedState {
    fn new(applied: Applied) -> Self {
        let (applied_tx, _) = watch::channel(applied.applied_index());
        Self {
            inner: Arc::new(RwLock::new(applied)),
            applied_tx: Arc::new(applied_tx),
        }
    }

    // A panic while holding the lock leaves the image possibly half-applied;
    // carrying on from it would diverge from the other replicas, so poisoning
    // is treated as fatal rather than recovered from.
    fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.inner
            .read()
            .expect("applied state lock poisoned by a panic during apply")
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.inner
            .write()
            .expect("applied state lock poisoned by a panic during apply")
    }

    /// The log index of the last applied entry (0 before any).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// A copy of the image and the log index it reflects.
    pub fn image(&self) -> (u64, MetadataImage) {
        let applied = self.read();
        (applied.applied_index(), applied.image.clone())
    }

    /// Runs `f` on the image and the log index it reflects, without copying
    /// the image. Keep `f` short: applies wait for it.
    pub fn read_image<R>(&self, f: impl FnOnce(u64, &MetadataImage) -> R) -> R {
        let applied = self.read();
        f(applied.applied_index(), &applied.image)
    }

    /// Normal commands applied after `version`, at most `max` of them, or the
    /// whole image when the ring no longer reaches back to `version`.
    pub fn deltas_after(&self, version: u64, max: usize) -> MetadataDeltas {
        let applied = self.read();
        if version < applied.ring_floor {
            return MetadataDeltas::Snapshot {
                version: applied.applied_index(),
                image: Box::new(applied.image.clone()),
            };
        }
        let start = applied.ring.partition_point(|(index, _)| *index <= version);
        MetadataDeltas::Deltas(applied.ring.range(start..).take(max).cloned().collect())
    }
}

/// openraft's view of the metadata state machine.
pub struct MetadataStateMachine {
    db: Arc<Database>,
    state: AppliedState,
}

impl MetadataStateMachine {
    /// Loads the persisted snapshot, if any, and keeps up to `ring_capacity`
    /// recent commands for deltas. Blocking: call before the runtime is busy
    /// or from the blocking pool.
    pub fn open(db: Arc<Database>, ring_capacity: usize) -> io::Result<Self> {
        assert!(
            ring_capacity >= 1,
            "deltas ring capacity must be at least 1"
        );
        let contents = match read_snapshot(&db)? {
            Some((meta, data)) => {
                let contents: SnapshotContents = decode(&data)?;
                check_contents(&meta, &contents)?;
                contents
            }
            None => SnapshotContents {
                image: MetadataImage::default(),
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        let ring_floor = contents.last_applied.as_ref().map_or(0, |id| id.index);
        let applied = Applied {
            image: contents.image,
            last_applied: contents.last_applied,
            membership: contents.membership,
            ring: VecDeque::new(),
            ring_capacity,
            ring_floor,
        };
        Ok(Self {
            db,
            state: AppliedState::new(applied),
        })
    }

    /// A handle on the applied state that outlives moving `self` into Raft.
    pub fn state(&self) -> AppliedState {
        self.state.clone()
    }
}

impl RaftStateMachine<TypeConfig> for MetadataStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = MetadataSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let applied = self.state.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id;
            let index = log_id.index;
            let reply = {
                let mut applied = self.state.write();
                if let Some(last) = &applied.last_applied {
                    assert!(
                        index > last.index,
                        "entries are applied in log order: {index} after {}",
                        last.index
                    );
                }
                let reply = match entry.payload {
                    EntryPayload::Blank => CommandReply::Ok,
                    EntryPayload::Normal(Proposal(cmd)) => {
                        let reply = applied.image.apply(&cmd);
                        applied.push_delta(index, cmd);
                        reply
                    }
                    EntryPayload::Membership(membership) => {
                        applied.membership = StoredMembership::new(Some(log_id), membership);
                        CommandReply::Ok
                    }
                };
                applied.last_applied = Some(log_id);
                reply
            };
            // Readers see the new version only once the image holds it.
            self.state.applied_tx.send_replace(index);
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MetadataSnapshotBuilder {
            db: self.db.clone(),
            state: self.state.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> io::Result<()> {
        let contents: SnapshotContents = decode(&snapshot)?;
        check_contents(meta, &contents)?;
        persist_snapshot(self.db.clone(), meta.clone(), snapshot).await?;

        let index = {
            let mut applied = self.state.write();
            applied.image = contents.image;
            applied.last_applied = contents.last_applied;
            applied.membership = contents.membership;
            applied.ring.clear();
            applied.ring_floor = applied.applied_index();
            applied.applied_index()
        };
        self.state.applied_tx.send_replace(index);
        tracing::info!(last_log_id = ?meta.last_log_id, "installed metadata snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let db = self.db.clone();
        let stored = blocking(move || read_snapshot(&db)).await?;
        Ok(stored.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Builds a snapshot of the applied state at the moment it runs and stores it
/// as the current one.
pub struct MetadataSnapshotBuilder {
    db: Arc<Database>,
    state: AppliedState,
}

impl RaftSnapshotBuilder<TypeConfig> for MetadataSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // Encoding holds the read lock (applies wait for it); it is one pass
        // over the image and avoids holding a second copy in memory.
        let (meta, data) = {
            let applied = self.state.read();
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            let data = encode(&SnapshotContentsRef {
                image: &applied.image,
                last_applied: &applied.last_applied,
                membership: &applied.membership,
            })?;
            (meta, data)
        };
        let data = persist_snapshot(self.db.clone(), meta.clone(), data).await?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built metadata snapshot");
        metrics::gauge!("oxbow_controller_snapshot_bytes").set(data.len() as f64);
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

fn check_contents(meta: &SnapshotMeta, contents: &SnapshotContents) -> io::Result<()> {
    if meta.last_log_id != contents.last_applied || meta.last_membership != contents.membership {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot contents (last applied {:?}) do not match its metadata (last log id {:?})",
                contents.last_applied, meta.last_log_id
            ),
        ));
    }
    Ok(())
}

fn read_snapshot(db: &Database) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = txn.open_table(SNAPSHOT).map_err(db_err)?;
    let Some(meta) = table.get(KEY_META).map_err(db_err)? else {
        return Ok(None);
    };
    let meta: SnapshotMeta = decode(meta.value())?;
    let data = table
        .get(KEY_DATA)
        .map_err(db_err)?
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot metadata is stored but its data is missing",
            )
        })?
        .value()
        .to_vec();
    Ok(Some((meta, data)))
}

/// Writes `meta` and `data` as the current snapshot unless a newer one is
/// already stored (a slow build must not replace a newer install), and hands
/// `data` back. Durable when it returns.
async fn persist_snapshot(
    db: Arc<Database>,
    meta: SnapshotMeta,
    data: Vec<u8>,
) -> io::Result<Vec<u8>> {
    blocking(move || {
        let meta_bytes = encode(&meta)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(db_err)?;
            let stored: Option<SnapshotMeta> = match table.get(KEY_META).map_err(db_err)? {
                Some(bytes) => Some(decode(bytes.value())?),
                None => None,
            };
            let newer = stored.is_none_or(|stored| meta.last_log_id >= stored.last_log_id);
            if newer {
                table
                    .insert(KEY_META, meta_bytes.as_slice())
                    .map_err(db_err)?;
                table.insert(KEY_DATA, data.as_slice()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(data)
    })
    .await
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::types::Entry;

    fn log_id(index: u64) -> LogId {
        let leader = <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(1, 1);
        LogId::new(leader, index)
    }

    fn register(id: i32) -> MetadataCommand {
        MetadataCommand::RegisterBroker {
            id,
            endpoint: proto::image::BrokerEndpoint {
                host: "localhost".into(),
                port: 9092,
            },
            rack: None,
        }
    }

    fn open(dir: &tempfile::TempDir, ring: usize) -> MetadataStateMachine {
        let db = Arc::new(crate::open_database(dir.path()).expect("opening a fresh database"));
        MetadataStateMachine::open(db, ring).expect("opening the state machine")
    }

    /// Applies a blank entry at 1, then `RegisterBroker { id: i }` at 2 + i.
    async fn apply_brokers(sm: &mut MetadataStateMachine, count: i32) {
        let mut entries = vec![Entry::new_blank(log_id(1))];
        for i in 0..count {
            entries.push(Entry::new_normal(
                log_id(2 + i as u64),
                Proposal(register(i)),
            ));
        }
        let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(stream).await.expect("apply");
    }

    fn deltas(answer: MetadataDeltas) -> Vec<(u64, MetadataCommand)> {
        match answer {
            MetadataDeltas::Deltas(d) => d,
            MetadataDeltas::Snapshot { version, .. } => {
                panic!("expected deltas, got a snapshot at {version}")
            }
        }
    }

    #[tokio::test]
    async fn deltas_are_normal_entries_in_order_and_capped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sm = open(&dir, 100);
        apply_brokers(&mut sm, 5).await;
        let state = sm.state();
        assert_eq!(*state.subscribe().borrow(), 6);

        let all = deltas(state.deltas_after(0, 100));
        let expected: Vec<_> = (0..5).map(|i| (2 + i as u64, register(i))).collect();
        assert_eq!(all, expected, "the blank entry at 1 is not a delta");
        assert_eq!(deltas(state.deltas_after(0, 2)), expected[..2].to_vec());
        assert_eq!(deltas(state.deltas_after(3, 100)), expected[2..].to_vec());
        assert!(deltas(state.deltas_after(6, 100)).is_empty());
        assert!(deltas(state.deltas_after(60, 100)).is_empty());
    }

    #[tokio::test]
    async fn a_version_older_than_the_ring_gets_the_image() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sm = open(&dir, 3);
        apply_brokers(&mut sm, 5).await;
        let state = sm.state();
        // Ring holds indexes 4, 5, 6; index 3 was evicted, so 3 is the floor.
        assert_eq!(
            deltas(state.deltas_after(3, 100)),
            (2..5)
                .map(|i| (2 + i as u64, register(i)))
                .collect::<Vec<_>>()
        );
        match state.deltas_after(2, 100) {
            MetadataDeltas::Snapshot { version, image } => {
                assert_eq!(version, 6);
                assert_eq!(*image, state.image().1);
                assert_eq!(image.brokers.len(), 5);
            }
            MetadataDeltas::Deltas(d) => panic!("expected the image, got {} deltas", d.len()),
        }
    }

    #[tokio::test]
    async fn snapshots_persist_and_reload() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (image, built) = {
            let mut sm = open(&dir, 100);
            apply_brokers(&mut sm, 4).await;
            let mut builder = sm.get_snapshot_builder().await;
            let built = builder.build_snapshot().await.expect("build snapshot");
            assert_eq!(built.meta.last_log_id, Some(log_id(5)));
            (sm.state().image().1, built)
        };

        let mut reopened = open(&dir, 100);
        let (last, _) = reopened.applied_state().await.expect("applied state");
        assert_eq!(last, Some(log_id(5)));
        let state = reopened.state();
        assert_eq!(state.image(), (5, image.clone()));
        // Nothing before the snapshot is in the fresh ring.
        assert!(matches!(
            state.deltas_after(4, 100),
            MetadataDeltas::Snapshot { version: 5, .. }
        ));
        assert!(deltas(state.deltas_after(5, 100)).is_empty());

        let current = reopened
            .get_current_snapshot()
            .await
            .expect("read snapshot")
            .expect("a snapshot is stored");
        assert_eq!(current.meta, built.meta);

        // Installing it on a fresh state machine gives the same image.
        let other = tempfile::tempdir().expect("temp dir");
        let mut follower = open(&other, 100);
        follower
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .expect("install snapshot");
        assert_eq!(follower.state().image(), (5, image));
        assert_eq!(*follower.state().subscribe().borrow(), 5);
    }
}
