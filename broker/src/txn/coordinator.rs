//! The async shell around `txn::decide_*`: one shard per
//! `__transaction_state` partition this broker owns, loaded from the log
//! when the partition opens; every transition appended through the
//! partition actor and applied once committed (InitProducerId, tombstones)
//! or once queued (AddPartitions, Prepare*, Complete*: whatever relies on
//! them is queued to commit only if they do, and a shard whose such record
//! fails reloads); markers queued right behind Prepare* on partitions this
//! broker owns, sent elsewhere once it commits; a ticker that aborts
//! timed-out transactions and finishes any Prepare* left unfinished.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use tokio::sync::{oneshot, Mutex, MutexGuard, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::records;
use super::{decide_add, decide_end, decide_init, Step, TxnMeta, TxnState, TXN_TOPIC};
use crate::broker::{Broker, OpenPartition};
use crate::errors::ErrorCode;
use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::partition::{
    Append, AppendMarker, AppendStatus, IncomingBatch, PlacedMarker, ReopenIfFailed,
};
use crate::storage::batch;
use crate::storage::writer::{AckOutcome, Fate};

/// How often open transactions are checked against their timeouts (Kafka's
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms` is 10 s).
const TICK: Duration = Duration::from_secs(1);
/// Bound on the bytes read in one step when loading a partition.
const LOAD_READ_BYTES: usize = 4 * 1024 * 1024;
/// How long a request for a busy transactional id (a transition being
/// written, or the previous transaction's markers) waits for it to settle.
/// Kafka answers CONCURRENT_TRANSACTIONS at once and its clients retry 20 ms
/// or more later; waiting here answers as soon as the id is free, which is
/// what lets one producer run transactions back to back.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

struct ShardInner {
    loaded: bool,
    txns: HashMap<String, TxnMeta>,
    /// Ids with a transition being written.
    pending: HashSet<String>,
    /// Ids whose markers are being written.
    completing: HashSet<String>,
    /// Ids whose newest record was applied when queued (AddPartitions) and
    /// has not committed yet.
    unconfirmed: HashMap<String, Queued>,
}

struct Shard {
    partition: i32,
    open: Arc<OpenPartition>,
    /// The coordinator epoch markers carry: the stream's leader epoch.
    coordinator_epoch: i32,
    inner: Mutex<ShardInner>,
    closed: AtomicBool,
    /// Woken whenever an id stops being busy (see `busy`) or the shard
    /// closes.
    settled: Notify,
}

/// Whether `id` has a transition being written or a transaction still
/// being completed.
fn busy(inner: &ShardInner, id: &str) -> bool {
    inner.pending.contains(id)
        || inner.completing.contains(id)
        || inner.txns.get(id).is_some_and(TxnMeta::needs_markers)
}

struct Shared {
    broker: OnceLock<Weak<Broker>>,
    shards: RwLock<HashMap<i32, Arc<Shard>>>,
}

pub struct TxnCoordinator {
    shared: Arc<Shared>,
    ticker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// One row of ListTransactions.
pub struct ListedTxn {
    pub transactional_id: String,
    pub producer_id: i64,
    pub state: TxnState,
    pub start_ms: i64,
}

fn serving(shard: &Shard, inner: &ShardInner) -> Result<(), ErrorCode> {
    if shard.closed.load(Ordering::Acquire) {
        Err(ErrorCode::NotCoordinator)
    } else if !inner.loaded {
        Err(ErrorCode::CoordinatorLoadInProgress)
    } else {
        Ok(())
    }
}

/// Kafka's `appendTransactionToLog` error mapping.
fn map_append_error(code: ErrorCode) -> ErrorCode {
    match code {
        ErrorCode::UnknownTopicOrPartition | ErrorCode::RequestTimedOut => {
            ErrorCode::CoordinatorNotAvailable
        }
        ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => ErrorCode::UnknownServerError,
        _ => ErrorCode::NotCoordinator,
    }
}

async fn wait_acks(acks: Vec<oneshot::Receiver<AckOutcome>>) -> Result<(), ErrorCode> {
    for rx in acks {
        match rx.await {
            Ok(AckOutcome::Committed) => {}
            Ok(AckOutcome::Fenced) | Ok(AckOutcome::Failed) | Err(_) => {
                return Err(ErrorCode::NotCoordinator)
            }
        }
    }
    Ok(())
}

impl Shard {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The shard's lock, for a request about `id`: once the shard serves
    /// and `id` is not busy, waiting up to `SETTLE_WAIT` for that. At the
    /// deadline an id with a transition still being written gets
    /// CONCURRENT_TRANSACTIONS; one still completing is left to the
    /// caller's decision (which answers as Kafka does for Prepare*).
    async fn lock_settled(&self, id: &str) -> Result<MutexGuard<'_, ShardInner>, ErrorCode> {
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let inner = self.inner.lock().await;
            serving(self, &inner)?;
            if !busy(&inner, id) {
                return Ok(inner);
            }
            drop(inner);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let inner = self.inner.lock().await;
                serving(self, &inner)?;
                if inner.pending.contains(id) {
                    return Err(ErrorCode::ConcurrentTransactions);
                }
                return Ok(inner);
            }
        }
    }

    /// Hands `id`'s record (its state, or a tombstone for `None`) to the
    /// partition; the receivers say when it commits.
    async fn append(
        &self,
        id: &str,
        meta: Option<&TxnMeta>,
        wall_ms: i64,
        after: Vec<Arc<Fate>>,
    ) -> Result<(Vec<oneshot::Receiver<AckOutcome>>, Arc<Fate>), ErrorCode> {
        if self.is_closed() {
            return Err(ErrorCode::NotCoordinator);
        }
        let rec: (Bytes, Option<Bytes>) = (
            records::encode_key(id),
            meta.map(|m| records::encode_value(&m.value())),
        );
        let bytes = crate::group::records::encode_batch(wall_ms, &[rec]);
        let header = batch::parse_header(&bytes).map_err(|_| ErrorCode::UnknownServerError)?;
        let reply = self
            .open
            .actor
            .ask(Append {
                batches: vec![IncomingBatch { header, bytes }],
                coordinator: false,
                guard: None,
                after,
            })
            .await
            .map_err(|_| ErrorCode::NotCoordinator)?;
        match reply.status {
            AppendStatus::Queued { acks, fate, .. } => Ok((acks, fate)),
            AppendStatus::Duplicate { .. } => Err(ErrorCode::UnknownServerError),
            AppendStatus::Refused(code) => Err(map_append_error(code)),
        }
    }

    /// Writes `meta` for `id` and applies it once committed. The lock is
    /// held while the record is handed to the partition (so records reach
    /// the log in decision order) and released while it commits; the id
    /// is marked pending meanwhile.
    async fn write(
        &self,
        inner: MutexGuard<'_, ShardInner>,
        id: &str,
        meta: TxnMeta,
        wall_ms: i64,
    ) -> Result<(), ErrorCode> {
        self.put(inner, id, Some(meta), wall_ms).await
    }

    /// Writes a tombstone for `id` and forgets it once committed.
    async fn forget(
        &self,
        inner: MutexGuard<'_, ShardInner>,
        id: &str,
        wall_ms: i64,
    ) -> Result<(), ErrorCode> {
        self.put(inner, id, None, wall_ms).await
    }

    async fn put(
        &self,
        mut inner: MutexGuard<'_, ShardInner>,
        id: &str,
        meta: Option<TxnMeta>,
        wall_ms: i64,
    ) -> Result<(), ErrorCode> {
        inner.pending.insert(id.to_string());
        let appended = self.append(id, meta.as_ref(), wall_ms, Vec::new()).await;
        drop(inner);
        let result = match appended {
            Ok((acks, _)) => wait_acks(acks).await,
            Err(code) => Err(code),
        };
        let mut inner = self.inner.lock().await;
        inner.pending.remove(id);
        let result = match result {
            Ok(()) if self.is_closed() || !inner.loaded => Err(ErrorCode::NotCoordinator),
            Ok(()) => {
                match meta {
                    Some(m) => inner.txns.insert(id.to_string(), m),
                    None => inner.txns.remove(id),
                };
                Ok(())
            }
            Err(code) => Err(code),
        };
        drop(inner);
        self.settled.notify_waiters();
        result
    }

    /// Writes `id`'s Prepare* (`meta`) and starts its completion at once:
    /// the markers of partitions this broker owns, and then Complete*, are
    /// queued right behind the record and commit only if it does. Returns
    /// once the record commits (the id stays pending until then). The
    /// record is applied when queued; if it does not commit, the shard is
    /// failed and reloaded from the log.
    async fn prepare(
        self: &Arc<Self>,
        broker: &Arc<Broker>,
        mut inner: MutexGuard<'_, ShardInner>,
        id: &str,
        meta: TxnMeta,
        wall_ms: i64,
    ) -> Result<(), ErrorCode> {
        let queued = self.apply_queued(&mut inner, id, meta, wall_ms).await?;
        inner.pending.insert(id.to_string());
        let completes = inner.completing.insert(id.to_string());
        drop(inner);
        let committed = queued.committed.clone();
        if completes {
            start_completion(broker.clone(), self.clone(), id.to_string(), Some(queued));
        }
        let result = committed.await;
        if result.is_err() {
            self.fail().await;
        }
        self.inner.lock().await.pending.remove(id);
        self.settled.notify_waiters();
        result
    }

    /// Writes `meta` (an AddPartitions) for `id` and applies it at once,
    /// returning once it is queued: whatever relies on it before it commits
    /// must follow it (a produce verified against it is queued to commit
    /// only if it does; a verification for another broker waits for the
    /// commit). If it does not commit, the shard fails and reloads.
    async fn write_queued(
        self: &Arc<Self>,
        mut inner: MutexGuard<'_, ShardInner>,
        id: &str,
        meta: TxnMeta,
        wall_ms: i64,
    ) -> Result<(), ErrorCode> {
        let queued = self.apply_queued(&mut inner, id, meta, wall_ms).await?;
        let (fate, committed) = (queued.fate.clone(), queued.committed.clone());
        inner.unconfirmed.insert(id.to_string(), queued);
        drop(inner);
        let (shard, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            if committed.await.is_err() {
                shard.fail().await;
            }
            let mut inner = shard.inner.lock().await;
            if inner
                .unconfirmed
                .get(&id)
                .is_some_and(|q| Arc::ptr_eq(&q.fate, &fate))
            {
                inner.unconfirmed.remove(&id);
            }
        });
        Ok(())
    }

    /// Hands `meta` for `id` to the partition and applies it at once.
    async fn apply_queued(
        &self,
        inner: &mut ShardInner,
        id: &str,
        meta: TxnMeta,
        wall_ms: i64,
    ) -> Result<Queued, ErrorCode> {
        let (acks, fate) = self.append(id, Some(&meta), wall_ms, Vec::new()).await?;
        inner.txns.insert(id.to_string(), meta);
        Ok(Queued {
            fate,
            committed: wait_acks(acks).boxed().shared(),
        })
    }

    /// A record applied when queued did not commit: what this shard holds
    /// may be ahead of the log, so it stops serving and its partition
    /// reopens (now, not at its next write) and loads it again.
    async fn fail(self: &Arc<Self>) {
        self.close();
        let _ = self.open.actor.tell(ReopenIfFailed).await;
    }

    fn close(self: &Arc<Self>) {
        self.closed.store(true, Ordering::Release);
        let shard = self.clone();
        tokio::spawn(async move {
            let mut inner = shard.inner.lock().await;
            inner.loaded = false;
            inner.txns.clear();
            drop(inner);
            shard.settled.notify_waiters();
        });
    }
}

impl Default for TxnCoordinator {
    fn default() -> Self {
        Self::new()
    }
}

impl TxnCoordinator {
    pub fn new() -> Self {
        TxnCoordinator {
            shared: Arc::new(Shared {
                broker: OnceLock::new(),
                shards: RwLock::new(HashMap::new()),
            }),
            ticker: std::sync::Mutex::new(None),
        }
    }

    /// Gives the coordinator its broker (set once, right after the broker
    /// is built).
    pub fn attach(&self, broker: &Arc<Broker>) {
        let _ = self.shared.broker.set(Arc::downgrade(broker));
    }

    fn shards(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i32, Arc<Shard>>> {
        self.shared.shards.read().unwrap_or_else(|e| e.into_inner())
    }

    fn shard_for(&self, broker: &Broker, id: &str) -> Result<Arc<Shard>, ErrorCode> {
        let partition = txn_partition(broker, id).ok_or(ErrorCode::NotCoordinator)?;
        match self.shards().get(&partition) {
            Some(s) if !s.is_closed() => Ok(s.clone()),
            _ => Err(ErrorCode::NotCoordinator),
        }
    }

    // ------------------------------------------------------ partition hooks

    pub fn partition_opened(&self, broker: &Broker, open: &Arc<OpenPartition>) {
        if open.state.topic != TXN_TOPIC {
            return;
        }
        let partition = open.state.partition;
        let coordinator_epoch = broker
            .metadata
            .read(|img| img.streams.get(&open.state.stream).map(|s| s.leader_epoch))
            .unwrap_or(0);
        let shard = Arc::new(Shard {
            partition,
            open: open.clone(),
            coordinator_epoch,
            inner: Mutex::new(ShardInner {
                loaded: false,
                txns: HashMap::new(),
                pending: HashSet::new(),
                completing: HashSet::new(),
                unconfirmed: HashMap::new(),
            }),
            closed: AtomicBool::new(false),
            settled: Notify::new(),
        });
        let previous = self
            .shared
            .shards
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, shard.clone());
        if let Some(old) = previous {
            old.close();
        }
        self.ensure_ticker();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Some(broker) = shared.broker.get().and_then(Weak::upgrade) {
                load(broker, shard).await;
            }
        });
    }

    pub fn partition_closed(&self, open: &Arc<OpenPartition>) {
        if open.state.topic != TXN_TOPIC {
            return;
        }
        let mut shards = self
            .shared
            .shards
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shards.get(&open.state.partition) {
            if Arc::ptr_eq(&s.open, open) {
                let s = shards.remove(&open.state.partition).expect("present");
                info!(
                    partition = s.partition,
                    "transaction coordinator partition closed"
                );
                s.close();
            }
        }
    }

    pub fn shutdown(&self) {
        if let Some(t) = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        let shards: Vec<_> = self
            .shared
            .shards
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in shards {
            s.close();
        }
    }

    fn ensure_ticker(&self) {
        let mut t = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_some() {
            return;
        }
        let shared = self.shared.clone();
        *t = Some(tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(broker) = shared.broker.get().and_then(Weak::upgrade) else {
                    continue;
                };
                let shards: Vec<Arc<Shard>> = shared
                    .shards
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for shard in shards {
                    tick(&broker, &shard).await;
                }
            }
        }));
    }

    // ------------------------------------------------------------ requests

    /// InitProducerId with a transactional id: (error, producer id, epoch).
    pub async fn init_producer_id(
        &self,
        broker: &Arc<Broker>,
        id: &str,
        timeout_ms: i32,
        expected: (i64, i16),
        version: i16,
    ) -> (ErrorCode, i64, i16) {
        let fail = |code| (code, -1, -1);
        let shard = match self.shard_for(broker, id) {
            Ok(s) => s,
            Err(code) => return fail(code),
        };
        let inner = match shard.lock_settled(id).await {
            Ok(g) => g,
            Err(code) => return fail(code),
        };
        if inner.pending.contains(id) || inner.completing.contains(id) {
            return fail(ErrorCode::ConcurrentTransactions);
        }
        let now = broker.seams.clock.now_ms();
        let step = match inner.txns.get(id) {
            None => {
                let pid = match broker.next_producer_id().await {
                    Ok(p) => p,
                    Err(_) => return fail(ErrorCode::CoordinatorNotAvailable),
                };
                Step::Write(TxnMeta {
                    producer_id: pid,
                    epoch: 0,
                    last_epoch: -1,
                    timeout_ms,
                    state: TxnState::Empty,
                    partitions: Default::default(),
                    start_ms: -1,
                    last_update_ms: now,
                })
            }
            Some(m) => decide_init(m, expected, timeout_ms, now, version),
        };
        let m = match step {
            Step::Reply(code) => return fail(code),
            Step::FenceAndAbort(m) => {
                info!(
                    transactional_id = id,
                    producer_id = m.producer_id,
                    epoch = m.epoch,
                    "a new producer fences the open transaction; aborting it"
                );
                let _ = shard.prepare(broker, inner, id, m, now).await;
                return fail(ErrorCode::ConcurrentTransactions);
            }
            Step::NewProducerId(mut m) => {
                m.producer_id = match broker.next_producer_id().await {
                    Ok(p) => p,
                    Err(_) => return fail(ErrorCode::CoordinatorNotAvailable),
                };
                m
            }
            Step::Write(m) => m,
        };
        let (pid, epoch) = (m.producer_id, m.epoch);
        match shard.write(inner, id, m, now).await {
            Ok(()) => (ErrorCode::None, pid, epoch),
            Err(code) => fail(code),
        }
    }

    /// AddPartitionsToTxn (v0-3) and AddOffsetsToTxn: adds `partitions` to
    /// the producer's transaction.
    pub async fn add_partitions(
        &self,
        broker: &Arc<Broker>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, i32)],
        version: i16,
    ) -> ErrorCode {
        let shard = match self.shard_for(broker, id) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let inner = match shard.lock_settled(id).await {
            Ok(g) => g,
            Err(code) => return code,
        };
        let now = broker.seams.clock.now_ms();
        match decide_add(
            inner.txns.get(id),
            producer_id,
            epoch,
            partitions,
            now,
            version,
        ) {
            Step::Reply(code) => code,
            Step::Write(m) => match shard.write_queued(inner, id, m, now).await {
                Ok(()) => ErrorCode::None,
                Err(code) => code,
            },
            _ => ErrorCode::UnknownServerError,
        }
    }

    /// Whether `topic`/`partition` is in the open transaction of
    /// `producer_id` at `epoch` (KIP-890's verification), once the record
    /// that added it has committed: NONE, or the error the produce should
    /// get.
    pub async fn verify(
        &self,
        broker: &Arc<Broker>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> ErrorCode {
        let (code, queued) = self
            .verify_queued(broker, id, producer_id, epoch, topic, partition)
            .await;
        if let Some(q) = queued {
            if q.committed.await.is_err() {
                return ErrorCode::NotCoordinator;
            }
        }
        code
    }

    /// `verify`, answered at once: with NONE, the record that added the
    /// partition if it has not committed yet (what the produce must
    /// follow).
    async fn verify_queued(
        &self,
        broker: &Arc<Broker>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> (ErrorCode, Option<Queued>) {
        let shard = match self.shard_for(broker, id) {
            Ok(s) => s,
            Err(code) => return (code, None),
        };
        let inner = shard.inner.lock().await;
        if let Err(code) = serving(&shard, &inner) {
            return (code, None);
        }
        let code = match inner.txns.get(id) {
            Some(m) if m.producer_id == producer_id => {
                if m.epoch > epoch {
                    ErrorCode::ProducerFenced
                } else if m.state == TxnState::Ongoing
                    && m.partitions.contains(&(topic.to_string(), partition))
                {
                    ErrorCode::None
                } else {
                    ErrorCode::TransactionAbortable
                }
            }
            _ => ErrorCode::InvalidProducerIdMapping,
        };
        let queued = if code == ErrorCode::None {
            inner.unconfirmed.get(id).cloned()
        } else {
            None
        };
        (code, queued)
    }

    /// EndTxn: answered once the Prepare* record is committed; the markers
    /// and the Complete* record follow.
    pub async fn end_txn(
        &self,
        broker: &Arc<Broker>,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        version: i16,
    ) -> ErrorCode {
        let shard = match self.shard_for(broker, id) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let inner = match shard.lock_settled(id).await {
            Ok(g) => g,
            Err(code) => return code,
        };
        let now = broker.seams.clock.now_ms();
        match decide_end(inner.txns.get(id), producer_id, epoch, commit, now, version) {
            Step::Reply(code) => code,
            Step::Write(m) => match shard.prepare(broker, inner, id, m, now).await {
                Ok(()) => ErrorCode::None,
                Err(code) => code,
            },
            _ => ErrorCode::UnknownServerError,
        }
    }

    /// DescribeTransactions for one id.
    pub async fn describe(&self, broker: &Arc<Broker>, id: &str) -> Result<TxnMeta, ErrorCode> {
        let shard = self.shard_for(broker, id)?;
        let inner = shard.inner.lock().await;
        serving(&shard, &inner)?;
        match inner.txns.get(id) {
            Some(m) if m.state != TxnState::Dead => Ok(m.clone()),
            _ => Err(ErrorCode::TransactionalIdNotFound),
        }
    }

    /// Every transaction this broker coordinates.
    pub async fn list(&self) -> Result<Vec<ListedTxn>, ErrorCode> {
        let shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        let mut out = Vec::new();
        for shard in shards {
            let inner = shard.inner.lock().await;
            if shard.is_closed() {
                continue;
            }
            if !inner.loaded {
                return Err(ErrorCode::CoordinatorLoadInProgress);
            }
            out.extend(
                inner
                    .txns
                    .iter()
                    .filter(|(_, m)| m.state != TxnState::Dead)
                    .map(|(id, m)| ListedTxn {
                        transactional_id: id.clone(),
                        producer_id: m.producer_id,
                        state: m.state,
                        start_ms: m.start_ms,
                    }),
            );
        }
        Ok(out)
    }
}

/// The `__transaction_state` partition that holds `id`, once the topic
/// exists.
fn txn_partition(broker: &Broker, id: &str) -> Option<i32> {
    let count = broker
        .metadata
        .read(|img| img.topics.get(TXN_TOPIC).map(|t| t.partitions.len()))?;
    Some(partition_for(id, u32::try_from(count).unwrap_or(u32::MAX)))
}

/// The `__consumer_offsets` partition that holds `group`'s offsets, as
/// AddOffsetsToTxn adds it to a transaction.
pub fn offsets_partition(broker: &Broker, group: &str) -> Option<(String, i32)> {
    let count = broker
        .metadata
        .read(|img| img.topics.get(OFFSETS_TOPIC).map(|t| t.partitions.len()))?;
    Some((
        OFFSETS_TOPIC.to_string(),
        partition_for(group, u32::try_from(count).unwrap_or(u32::MAX)),
    ))
}

/// Aborts timed-out transactions, finishes Prepare* left unfinished and
/// forgets expired ids.
async fn tick(broker: &Arc<Broker>, shard: &Arc<Shard>) {
    let now = broker.seams.clock.now_ms();
    let (timed_out, unfinished, expired) = {
        let inner = shard.inner.lock().await;
        if serving(shard, &inner).is_err() {
            return;
        }
        let timed_out: Vec<(String, TxnMeta)> = inner
            .txns
            .iter()
            .filter(|(id, _)| !inner.pending.contains(*id))
            .filter_map(|(id, m)| super::timed_out(m, now).map(|n| (id.clone(), n)))
            .collect();
        let unfinished: Vec<String> = inner
            .txns
            .iter()
            .filter(|(id, m)| {
                m.needs_markers() && !inner.pending.contains(*id) && !inner.completing.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let expiration = broker.config.transactional_id_expiration_ms;
        let expired: Vec<(String, TxnMeta)> = inner
            .txns
            .iter()
            .filter(|(id, m)| !busy(&inner, id) && super::expired(m, now, expiration))
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        (timed_out, unfinished, expired)
    };
    for (id, m) in timed_out {
        let inner = shard.inner.lock().await;
        if inner.pending.contains(&id)
            || inner
                .txns
                .get(&id)
                .is_none_or(|cur| cur.state != TxnState::Ongoing)
        {
            continue;
        }
        info!(
            transactional_id = %id,
            producer_id = m.producer_id,
            "transaction timed out; aborting it"
        );
        metrics::counter!("oxbow_txn_timed_out_total").increment(1);
        let _ = shard.prepare(broker, inner, &id, m, now).await;
    }
    for id in unfinished {
        spawn_completion(broker.clone(), shard.clone(), id).await;
    }
    for (id, m) in expired {
        let inner = shard.inner.lock().await;
        if busy(&inner, &id) || inner.txns.get(&id) != Some(&m) {
            continue;
        }
        info!(
            transactional_id = %id,
            producer_id = m.producer_id,
            "transactional id expired; forgetting it"
        );
        metrics::counter!("oxbow_txn_ids_expired_total").increment(1);
        if let Err(code) = shard.forget(inner, &id, now).await {
            debug!(transactional_id = %id, ?code, "the expired id's tombstone did not commit");
        }
    }
}

/// Starts writing the markers of `id`'s committed Prepare* and then its
/// Complete*, unless that is already under way.
async fn spawn_completion(broker: Arc<Broker>, shard: Arc<Shard>, id: String) {
    {
        let mut inner = shard.inner.lock().await;
        if !inner.completing.insert(id.clone()) {
            return;
        }
    }
    start_completion(broker, shard, id, None);
}

/// Runs `complete` for an id just marked completing; clears the mark if
/// it did not release the id.
fn start_completion(broker: Arc<Broker>, shard: Arc<Shard>, id: String, prepared: Option<Queued>) {
    tokio::spawn(async move {
        if !complete(&broker, &shard, &id, prepared).await {
            shard.inner.lock().await.completing.remove(&id);
            shard.settled.notify_waiters();
        }
    });
}

/// A record queued but perhaps not committed yet.
#[derive(Clone)]
struct Queued {
    fate: Arc<Fate>,
    committed: futures::future::Shared<BoxFuture<'static, Result<(), ErrorCode>>>,
}

/// A marker queued on a partition this broker owns.
struct QueuedMarker {
    topic: String,
    open: Arc<OpenPartition>,
    placed: PlacedMarker,
}

/// Writes the markers, then Complete*. Markers of partitions this broker
/// owns are queued at once (behind `prepared` when it is not committed
/// yet) and Complete* right behind them, committing only if they do; the
/// others are sent once Prepare* has committed and Complete* waits for
/// them. `true` once it has released the id (after which the id may be
/// completing a later transaction, whose flag must not be touched).
async fn complete(
    broker: &Arc<Broker>,
    shard: &Arc<Shard>,
    id: &str,
    prepared: Option<Queued>,
) -> bool {
    let meta = {
        let inner = shard.inner.lock().await;
        match inner.txns.get(id) {
            Some(m) if m.needs_markers() => m.clone(),
            _ => return false,
        }
    };
    let commit = meta.state == TxnState::PrepareCommit;
    let started = tokio::time::Instant::now();
    let after: Vec<Arc<Fate>> = prepared.iter().map(|p| p.fate.clone()).collect();
    let mut queued = Vec::new();
    let mut rest = Vec::new();
    for (topic, partition) in &meta.partitions {
        match queue_local_marker(broker, shard, topic, *partition, &meta, &after).await {
            LocalMarker::Queued(q) => queued.push(q),
            LocalMarker::Done => {}
            LocalMarker::NotHere => rest.push((topic.clone(), *partition)),
        }
    }
    if !rest.is_empty() {
        if let Some(p) = &prepared {
            if p.committed.clone().await.is_err() {
                return false; // the shard is failed and reloads
            }
        }
        let writes = rest.iter().map(|(topic, partition)| {
            write_marker_until_done(
                broker,
                shard,
                topic,
                *partition,
                meta.producer_id,
                meta.epoch,
                commit,
            )
        });
        let done = futures::future::join_all(writes).await;
        if done.iter().any(|ok| !ok) {
            return false; // the shard closed; its new owner finishes the transaction
        }
    }
    let mut inner = shard.inner.lock().await;
    if serving(shard, &inner).is_err() || inner.txns.get(id) != Some(&meta) {
        return false;
    }
    let now = broker.seams.clock.now_ms();
    let next = super::completed(&meta, now);
    // Complete* only records that the markers are written, so the id is
    // free once the record is in the partition's queue, before it commits:
    // any later record of the id follows it in the same stream and cannot
    // commit without it, and it cannot commit without the markers. If it
    // is lost, the shard reloads, the log still ends at Prepare* and the
    // same markers are written again, which changes nothing.
    let after = queued.iter().map(|q| q.placed.fate.clone()).collect();
    let acks = match shard.append(id, Some(&next), now, after).await {
        Ok((acks, _)) => acks,
        Err(code) => {
            debug!(transactional_id = id, ?code, "writing Complete* failed");
            return false; // still Prepare*: the ticker finishes it again
        }
    };
    inner.txns.insert(id.to_string(), next);
    inner.completing.remove(id);
    drop(inner);
    shard.settled.notify_waiters();
    for q in queued {
        let _ = marker_committed(
            broker,
            &q.open,
            &q.topic,
            meta.producer_id,
            commit,
            q.placed,
        )
        .await;
    }
    metrics::histogram!("oxbow_txn_markers_seconds").record(started.elapsed().as_secs_f64());
    match wait_acks(acks).await {
        Ok(()) => metrics::counter!(
            "oxbow_txn_completed_total",
            "result" => if commit { "commit" } else { "abort" }
        )
        .increment(1),
        Err(code) => {
            debug!(transactional_id = id, ?code, "Complete* did not commit");
            shard.fail().await;
        }
    }
    true
}

/// A marker refused because a newer epoch or coordinator already wrote
/// past this one: nothing left to write.
fn written_past(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidProducerEpoch | ErrorCode::TransactionCoordinatorFenced
    )
}

enum LocalMarker {
    Queued(QueuedMarker),
    /// Nothing to write: a newer epoch or coordinator already wrote past
    /// this one.
    Done,
    /// Owned elsewhere, or not writable here now: sent the slow way.
    NotHere,
}

/// Queues `meta`'s marker on `topic`/`partition` when this broker owns it.
async fn queue_local_marker(
    broker: &Arc<Broker>,
    shard: &Shard,
    topic: &str,
    partition: i32,
    meta: &TxnMeta,
    after: &[Arc<Fate>],
) -> LocalMarker {
    // Owned elsewhere, unowned or deleted: `write_marker_until_done` decides.
    let Some((owner, stream, _)) = broker.owner_address(topic, partition) else {
        return LocalMarker::NotHere;
    };
    if owner != broker.id {
        return LocalMarker::NotHere;
    }
    let commit = meta.state == TxnState::PrepareCommit;
    match queue_marker(
        broker,
        stream,
        meta.producer_id,
        meta.epoch,
        commit,
        shard.coordinator_epoch,
        after,
    )
    .await
    {
        Ok((open, placed)) => LocalMarker::Queued(QueuedMarker {
            topic: topic.to_string(),
            open,
            placed,
        }),
        Err(code) if written_past(code) => LocalMarker::Done,
        Err(_) => LocalMarker::NotHere,
    }
}

/// Writes one marker, retrying while the partition is unavailable. `false`
/// if the coordinator shard closed first.
async fn write_marker_until_done(
    broker: &Arc<Broker>,
    shard: &Arc<Shard>,
    topic: &str,
    partition: i32,
    producer_id: i64,
    epoch: i16,
    commit: bool,
) -> bool {
    let mut backoff = Duration::from_millis(20);
    let mut attempts = 0u32;
    loop {
        if shard.is_closed() {
            return false;
        }
        let exists = broker
            .metadata
            .read(|img| img.stream_of(topic, partition).is_some());
        if !exists {
            // The topic was deleted: nothing to mark.
            return true;
        }
        let code = send_marker(
            broker,
            topic,
            partition,
            producer_id,
            epoch,
            commit,
            shard.coordinator_epoch,
        )
        .await;
        match code {
            ErrorCode::None => return true,
            code if written_past(code) => return true,
            code => {
                attempts += 1;
                if attempts.is_multiple_of(50) {
                    warn!(
                        topic,
                        partition,
                        producer_id,
                        ?code,
                        attempts,
                        "writing a transaction marker keeps failing; retrying"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Sends one marker to the partition's owner: a local append when it is
/// this broker, else WriteTxnMarkers to the owner.
async fn send_marker(
    broker: &Arc<Broker>,
    topic: &str,
    partition: i32,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> ErrorCode {
    let owner = broker.owner_address(topic, partition);
    let Some((owner, stream, addr)) = owner else {
        return ErrorCode::NotLeaderOrFollower;
    };
    if owner == broker.id {
        return write_marker(
            broker,
            stream,
            topic,
            producer_id,
            epoch,
            commit,
            coordinator_epoch,
        )
        .await;
    }
    broker
        .peers
        .write_txn_marker(
            &addr,
            topic,
            partition,
            producer_id,
            epoch,
            commit,
            coordinator_epoch,
        )
        .await
}

/// KIP-890: asks `txn_id`'s coordinator (here, or through `peer`) whether
/// `topic`/`partition` is in the open transaction of `producer_id` at
/// `epoch`. NONE, or the coordinator's answer (NOT_COORDINATOR and the
/// like when it cannot be asked). With `may_follow`, a coordinator here
/// answers before the record that added the partition commits, giving
/// that record's fate, which the caller's write must then follow;
/// otherwise the answer waits for the commit.
pub async fn verify_in_txn(
    broker: &Arc<Broker>,
    txn_id: &str,
    producer_id: i64,
    epoch: i16,
    (topic, partition): (&str, i32),
    may_follow: bool,
) -> (ErrorCode, Option<Arc<Fate>>) {
    let Some(p) = txn_partition(broker, txn_id) else {
        return (ErrorCode::CoordinatorNotAvailable, None);
    };
    match broker.owner_address(TXN_TOPIC, p) {
        None => (ErrorCode::CoordinatorNotAvailable, None),
        Some((owner, _, _)) if owner == broker.id && may_follow => {
            let (code, queued) = broker
                .txns
                .verify_queued(broker, txn_id, producer_id, epoch, topic, partition)
                .await;
            let fate = queued
                .map(|q| q.fate)
                .filter(|f| f.outcome() != Some(AckOutcome::Committed));
            (code, fate)
        }
        Some((owner, _, _)) if owner == broker.id => {
            let code = broker
                .txns
                .verify(broker, txn_id, producer_id, epoch, topic, partition)
                .await;
            (code, None)
        }
        Some((_, _, addr)) => {
            let code = broker
                .peers
                .verify_txn_partition(&addr, txn_id, producer_id, epoch, topic, partition)
                .await;
            (code, None)
        }
    }
}

/// Appends a marker to a partition this broker owns and waits for its
/// commit; a committed marker on `__consumer_offsets` completes the
/// producer's pending offset commits there.
pub async fn write_marker(
    broker: &Arc<Broker>,
    stream: proto::StreamId,
    topic: &str,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
) -> ErrorCode {
    match queue_marker(
        broker,
        stream,
        producer_id,
        epoch,
        commit,
        coordinator_epoch,
        &[],
    )
    .await
    {
        Ok((open, placed)) => {
            marker_committed(broker, &open, topic, producer_id, commit, placed).await
        }
        Err(code) => code,
    }
}

/// Queues a marker on a partition this broker owns, to commit only after
/// `after`.
async fn queue_marker(
    broker: &Arc<Broker>,
    stream: proto::StreamId,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    after: &[Arc<Fate>],
) -> Result<(Arc<OpenPartition>, PlacedMarker), ErrorCode> {
    let Some(open) = broker.partition(stream) else {
        return Err(ErrorCode::NotLeaderOrFollower);
    };
    let reply = open
        .actor
        .ask(AppendMarker {
            producer_id,
            producer_epoch: epoch,
            commit,
            coordinator_epoch,
            timestamp_ms: broker.seams.clock.now_ms(),
            after: after.to_vec(),
        })
        .await;
    match reply {
        Ok(r) => r.0.map(|placed| (open, placed)),
        Err(_) => Err(ErrorCode::NotLeaderOrFollower),
    }
}

/// Waits for a queued marker's commit; on `__consumer_offsets` it then
/// completes the producer's pending offset commits.
async fn marker_committed(
    broker: &Arc<Broker>,
    open: &Arc<OpenPartition>,
    topic: &str,
    producer_id: i64,
    commit: bool,
    placed: PlacedMarker,
) -> ErrorCode {
    match placed.ack.await {
        Ok(AckOutcome::Committed) => {}
        Ok(AckOutcome::Fenced) => return ErrorCode::NotLeaderOrFollower,
        Ok(AckOutcome::Failed) | Err(_) => return ErrorCode::KafkaStorageError,
    }
    metrics::counter!("oxbow_txn_markers_total").increment(1);
    if topic == OFFSETS_TOPIC {
        broker
            .groups
            .txn_completed(open, producer_id, commit, placed.offset)
            .await;
    }
    ErrorCode::None
}

// ----------------------------------------------------------------- loading

fn replay(txns: &mut HashMap<String, TxnMeta>, rec: crate::group::records::LogRecord) {
    let Some(key) = rec.key else {
        return;
    };
    let id = match records::decode_key(&key) {
        Ok(Some(id)) => id,
        Ok(None) => return,
        Err(e) => {
            warn!(offset = rec.offset, error = %e, "skipping __transaction_state record");
            return;
        }
    };
    match rec.value.as_deref().map(records::decode_value) {
        None => {
            txns.remove(&id);
        }
        Some(Ok(Some(v))) => {
            txns.insert(id, TxnMeta::from_value(v));
        }
        Some(Ok(None)) => {}
        Some(Err(e)) => {
            warn!(offset = rec.offset, error = %e, "skipping __transaction_state value");
        }
    }
}

/// Replays the shard's partition from its log start to its high watermark,
/// then serves it and finishes any Prepare* it found.
async fn load(broker: Arc<Broker>, shard: Arc<Shard>) {
    let started = tokio::time::Instant::now();
    let state = shard.open.state.clone();
    let mut txns = HashMap::new();
    let mut offset = state.log_start();
    loop {
        if shard.is_closed() {
            return;
        }
        let end = state.high_watermark();
        if offset >= end {
            let mut inner = shard.inner.lock().await;
            if offset < state.high_watermark() {
                continue;
            }
            let unfinished: Vec<String> = txns
                .iter()
                .filter(|(_, m): &(&String, &TxnMeta)| m.needs_markers())
                .map(|(id, _)| id.clone())
                .collect();
            info!(
                partition = shard.partition,
                transactions = txns.len(),
                unfinished = unfinished.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "transaction coordinator partition loaded"
            );
            inner.txns = txns;
            inner.loaded = true;
            drop(inner);
            for id in unfinished {
                spawn_completion(broker.clone(), shard.clone(), id).await;
            }
            return;
        }
        let read = crate::group::coordinator::read_batches(
            &broker.metadata,
            &broker.log_cache,
            &broker.reader,
            state.stream,
            offset,
            end,
            LOAD_READ_BYTES,
        )
        .await;
        let batches = match read {
            Ok((b, _)) if !b.is_empty() => b,
            Ok((_, skip_to)) if skip_to > offset => {
                offset = skip_to;
                continue;
            }
            Ok(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                warn!(partition = shard.partition, offset, error = %e, "loading __transaction_state failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let before = offset;
        for b in batches {
            let Ok(h) = batch::parse_header(&b) else {
                continue;
            };
            let last = u64::try_from(h.last_offset()).unwrap_or(0);
            if last < offset {
                continue;
            }
            match crate::group::records::batch_records(&b) {
                Ok(recs) => {
                    for r in recs {
                        if u64::try_from(r.offset).unwrap_or(0) >= offset {
                            replay(&mut txns, r);
                        }
                    }
                }
                Err(e) => {
                    warn!(partition = shard.partition, base_offset = h.base_offset, error = %e, "skipping __transaction_state batch")
                }
            }
            offset = last + 1;
        }
        if offset == before {
            warn!(
                partition = shard.partition,
                offset, "no readable batch at this offset of __transaction_state"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
