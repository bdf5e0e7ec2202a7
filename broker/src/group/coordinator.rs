//! The async shell around `classic::GroupSet`: one shard per
//! `__consumer_offsets` partition this broker owns, loaded from the log when
//! the partition opens, its state behind one lock, its writes appended
//! through the partition actor in the order they were decided, its timers
//! fired by one ticker task.
//!
//! A shard answers COORDINATOR_LOAD_IN_PROGRESS until loaded; a group whose
//! partition is not open here gets NOT_COORDINATOR. A write takes effect
//! (and its request is answered) only once the writer reports it committed;
//! if the shard closes meanwhile (the partition moved), parked requests are
//! answered NOT_COORDINATOR and the new owner replays the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use proto::seams::Entropy;
use tokio::sync::{oneshot, Mutex, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::classic::{
    CommittedOffset, DescribedGroup, FetchedOffsets, GroupSet, JoinRequest, JoinResponse,
    ListedGroup, Now, Outcome, Persist, Reply, SyncRequest, SyncResponse, WaiterId,
};
use super::config::{GroupConfig, OFFSETS_TOPIC};
use super::consumer::{
    ConsumerGroup, HeartbeatError, HeartbeatReply, HeartbeatRequest as ConsumerHeartbeat,
};
use super::records::{self, OffsetValue, RecordKey};
use super::{partition_for, GroupClock};
use crate::broker::OpenPartition;
use crate::errors::ErrorCode;
use crate::metadata::MetadataView;
use crate::partition::{Append, AppendStatus, IncomingBatch};
use crate::storage::batch;
use crate::storage::log_cache::LogCache;
use crate::storage::reader::ObjectReader;
use crate::storage::writer::AckOutcome;

/// Longest a `require_stable` OffsetFetch waits for commits in flight.
const STABLE_WAIT: Duration = Duration::from_secs(5);

/// One offset to commit: (topic, partition, value).
pub type OffsetCommit = (String, i32, OffsetValue);

struct ShardInner {
    loaded: bool,
    groups: GroupSet,
    joins: HashMap<WaiterId, oneshot::Sender<JoinResponse>>,
    syncs: HashMap<WaiterId, oneshot::Sender<SyncResponse>>,
    /// Offset commits appended but not yet committed, per group.
    pending_commits: HashMap<String, usize>,
    /// Transactional offset commits waiting for their producer's marker:
    /// producer id -> (group, record) in log order.
    pending_txn: HashMap<i64, Vec<(String, records::LogRecord)>>,
}

struct Shard {
    partition: i32,
    open: Arc<OpenPartition>,
    clock: GroupClock,
    entropy: Arc<dyn Entropy>,
    inner: Mutex<ShardInner>,
    closed: AtomicBool,
    commit_resolved: Notify,
}

/// Shared between the coordinator, its ticker and its loaders.
struct Shared {
    config: GroupConfig,
    clock: GroupClock,
    entropy: Arc<dyn Entropy>,
    metadata: Arc<MetadataView>,
    log_cache: Arc<LogCache>,
    reader: Arc<ObjectReader>,
    shards: RwLock<HashMap<i32, Arc<Shard>>>,
}

pub struct GroupCoordinator {
    shared: Arc<Shared>,
    next_waiter: AtomicU64,
    ticker: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Whether a shard may answer for its groups: open and loaded.
fn serving(shard: &Shard, inner: &ShardInner) -> Result<(), ErrorCode> {
    if shard.closed.load(Ordering::Acquire) {
        Err(ErrorCode::NotCoordinator)
    } else if !inner.loaded {
        Err(ErrorCode::CoordinatorLoadInProgress)
    } else {
        Ok(())
    }
}

fn map_append_error(code: ErrorCode) -> ErrorCode {
    // Kafka's appendGroupMetadataErrorToResponseError.
    match code {
        ErrorCode::UnknownTopicOrPartition | ErrorCode::RequestTimedOut => {
            ErrorCode::CoordinatorNotAvailable
        }
        ErrorCode::MessageTooLarge | ErrorCode::RecordListTooLarge => ErrorCode::UnknownServerError,
        _ => ErrorCode::NotCoordinator,
    }
}

impl Shard {
    fn now(&self) -> Now {
        self.clock.now()
    }

    /// Appends one batch of records through the partition actor; returns
    /// the offset of the first record and the writer's acks. Called with the
    /// shard lock held, so batches reach the log in decision order.
    async fn append(
        &self,
        records: Vec<(Bytes, Option<Bytes>)>,
        wall_ms: i64,
    ) -> Result<(u64, Vec<oneshot::Receiver<AckOutcome>>), ErrorCode> {
        self.append_as(records, wall_ms, None, None).await
    }

    /// [`Self::append`], as a transactional batch of `producer` (id, epoch)
    /// when given: TxnOffsetCommit's writes, which take effect with the
    /// producer's commit marker. `guard` is the KIP-890 verification guard
    /// of the producer's first such batch here.
    async fn append_as(
        &self,
        records: Vec<(Bytes, Option<Bytes>)>,
        wall_ms: i64,
        producer: Option<(i64, i16)>,
        guard: Option<u64>,
    ) -> Result<(u64, Vec<oneshot::Receiver<AckOutcome>>), ErrorCode> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ErrorCode::NotCoordinator);
        }
        let mut bytes = records::encode_batch(wall_ms, &records);
        if let Some((pid, epoch)) = producer {
            let mut b = bytes.to_vec();
            batch::make_transactional(&mut b, pid, epoch);
            bytes = Bytes::from(b);
        }
        let header = batch::parse_header(&bytes).map_err(|_| ErrorCode::UnknownServerError)?;
        let reply = self
            .open
            .actor
            .ask(Append {
                batches: vec![IncomingBatch { header, bytes }],
                coordinator: producer.is_some(),
                guard,
                after: Vec::new(),
            })
            .await
            .map_err(|_| ErrorCode::NotCoordinator)?;
        match reply.status {
            AppendStatus::Queued {
                base_offset, acks, ..
            } => Ok((base_offset, acks)),
            AppendStatus::Duplicate { .. } => Err(ErrorCode::UnknownServerError),
            AppendStatus::Refused(ErrorCode::InvalidProducerEpoch) if producer.is_some() => {
                Err(ErrorCode::ProducerFenced)
            }
            AppendStatus::Refused(code) => Err(map_append_error(code)),
        }
    }

    /// Handles what a decision produced: answers parked requests and starts
    /// the writes it asked for.
    async fn apply(self: &Arc<Self>, inner: &mut ShardInner, outcome: Outcome) {
        let mut queue = vec![outcome];
        while let Some(outcome) = queue.pop() {
            for reply in outcome.replies {
                match reply {
                    Reply::Join(w, r) => {
                        if let Some(tx) = inner.joins.remove(&w) {
                            let _ = tx.send(r);
                        }
                    }
                    Reply::Sync(w, r) => {
                        if let Some(tx) = inner.syncs.remove(&w) {
                            let _ = tx.send(r);
                        }
                    }
                }
            }
            if !outcome.consumer_writes.is_empty() {
                let records: Vec<(Bytes, Option<Bytes>)> = outcome
                    .consumer_writes
                    .into_iter()
                    .map(|(group, value)| {
                        (
                            records::encode_key(&RecordKey::ConsumerGroup { group }),
                            value,
                        )
                    })
                    .collect();
                // Timer-driven changes: nobody waits; a lost write is
                // repaired by the group's next record (a whole snapshot).
                if let Err(code) = self.append(records, self.now().wall_ms).await {
                    debug!(?code, "writing consumer group records failed");
                }
            }
            for p in outcome.persist {
                let now = self.now();
                match self.append(persist_records(&p), now.wall_ms).await {
                    Ok((_, acks)) => spawn_persist_completion(self.clone(), p, acks),
                    Err(code) => {
                        let o = inner
                            .groups
                            .after_persist(now, &p.group_id, p.then, Err(code));
                        queue.push(o);
                    }
                }
            }
        }
    }

    /// Stops serving: parked requests are answered NOT_COORDINATOR (their
    /// senders are dropped) and no further write is started.
    fn close(self: &Arc<Self>) {
        self.closed.store(true, Ordering::Release);
        let shard = self.clone();
        tokio::spawn(async move {
            let mut inner = shard.inner.lock().await;
            inner.loaded = false;
            inner.joins.clear();
            inner.syncs.clear();
            inner.pending_txn.clear();
            inner.groups = GroupSet::new(GroupConfig::default());
            shard.commit_resolved.notify_waiters();
        });
    }
}

async fn wait_acks(acks: Vec<oneshot::Receiver<AckOutcome>>) -> Result<(), ErrorCode> {
    for rx in acks {
        match rx.await {
            Ok(AckOutcome::Committed) => {}
            Ok(AckOutcome::Fenced) => return Err(ErrorCode::NotCoordinator),
            Ok(AckOutcome::Failed) | Err(_) => return Err(ErrorCode::NotCoordinator),
        }
    }
    Ok(())
}

/// Waits for a group write outside the lock, then lets the state machine
/// act on it. A plain function, so that `apply` and this do not form an
/// infinitely sized future.
fn spawn_persist_completion(
    shard: Arc<Shard>,
    p: Persist,
    acks: Vec<oneshot::Receiver<AckOutcome>>,
) {
    tokio::spawn(async move {
        let result = wait_acks(acks).await;
        if let Err(code) = result {
            warn!(group = %p.group_id, ?code, "writing group metadata failed");
        }
        let mut inner = shard.inner.lock().await;
        if shard.closed.load(Ordering::Acquire) || !inner.loaded {
            return;
        }
        let now = shard.now();
        let outcome = inner.groups.after_persist(now, &p.group_id, p.then, result);
        shard.apply(&mut inner, outcome).await;
    });
}

/// The `__consumer_offsets` records of a commit of `offsets` by `group_id`.
fn offset_records(group_id: &str, offsets: &[OffsetCommit]) -> Vec<(Bytes, Option<Bytes>)> {
    offsets
        .iter()
        .map(|(topic, partition, v)| {
            (
                records::encode_key(&RecordKey::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                }),
                Some(records::encode_offset_value(v)),
            )
        })
        .collect()
}

fn persist_records(p: &Persist) -> Vec<(Bytes, Option<Bytes>)> {
    let mut out: Vec<(Bytes, Option<Bytes>)> = p
        .offset_tombstones
        .iter()
        .map(|(topic, partition)| {
            (
                records::encode_key(&RecordKey::Offset {
                    group: p.group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                }),
                None,
            )
        })
        .collect();
    if p.value.is_none() {
        // The group is gone whatever protocol it spoke.
        out.push((
            records::encode_key(&RecordKey::ConsumerGroup {
                group: p.group_id.clone(),
            }),
            None,
        ));
    }
    out.push((
        records::encode_key(&RecordKey::Group {
            group: p.group_id.clone(),
        }),
        p.value.as_ref().map(records::encode_group_value),
    ));
    out
}

impl GroupCoordinator {
    pub fn new(
        config: GroupConfig,
        clock: GroupClock,
        entropy: Arc<dyn Entropy>,
        metadata: Arc<MetadataView>,
        log_cache: Arc<LogCache>,
        reader: Arc<ObjectReader>,
    ) -> Self {
        GroupCoordinator {
            shared: Arc::new(Shared {
                config,
                clock,
                entropy,
                metadata,
                log_cache,
                reader,
                shards: RwLock::new(HashMap::new()),
            }),
            next_waiter: AtomicU64::new(1),
            ticker: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.shared.config
    }

    fn shards(&self) -> std::sync::RwLockReadGuard<'_, HashMap<i32, Arc<Shard>>> {
        self.shared.shards.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The partition of `__consumer_offsets` that holds `group_id`, if the
    /// topic exists.
    pub fn partition_of(&self, group_id: &str) -> Option<i32> {
        let count = self
            .shared
            .metadata
            .read(|img| img.topics.get(OFFSETS_TOPIC).map(|t| t.partitions.len()))?;
        Some(partition_for(
            group_id,
            u32::try_from(count).unwrap_or(u32::MAX),
        ))
    }

    /// The `__consumer_offsets` partition holding `group_id`, if this
    /// broker coordinates it.
    pub fn group_partition(&self, group_id: &str) -> Result<Arc<OpenPartition>, ErrorCode> {
        self.shard_for(group_id).map(|s| s.open.clone())
    }

    fn shard_for(&self, group_id: &str) -> Result<Arc<Shard>, ErrorCode> {
        let partition = self
            .partition_of(group_id)
            .ok_or(ErrorCode::NotCoordinator)?;
        if let Some(s) = self.shards().get(&partition) {
            if !s.closed.load(Ordering::Acquire) {
                return Ok(s.clone());
            }
        }
        Err(ErrorCode::NotCoordinator)
    }

    fn waiter(&self) -> WaiterId {
        self.next_waiter.fetch_add(1, Ordering::Relaxed)
    }

    // ------------------------------------------------------ partition hooks

    /// Called when this broker opens a partition actor: a partition of
    /// `__consumer_offsets` becomes a shard, loaded in the background.
    pub fn partition_opened(&self, open: &Arc<OpenPartition>) {
        if open.state.topic != OFFSETS_TOPIC {
            return;
        }
        let partition = open.state.partition;
        let shard = Arc::new(Shard {
            partition,
            open: open.clone(),
            clock: self.shared.clock.clone(),
            entropy: self.shared.entropy.clone(),
            inner: Mutex::new(ShardInner {
                loaded: false,
                groups: GroupSet::new(self.shared.config.clone()),
                joins: HashMap::new(),
                syncs: HashMap::new(),
                pending_commits: HashMap::new(),
                pending_txn: HashMap::new(),
            }),
            closed: AtomicBool::new(false),
            commit_resolved: Notify::new(),
        });
        let previous = {
            let mut shards = self
                .shared
                .shards
                .write()
                .unwrap_or_else(|e| e.into_inner());
            let previous = shards.insert(partition, shard.clone());
            metrics::gauge!("oxbow_group_coordinator_partitions").set(shards.len() as f64);
            previous
        };
        if let Some(old) = previous {
            old.close();
        }
        self.ensure_ticker();
        tokio::spawn(load(self.shared.clone(), shard));
    }

    /// Called before this broker closes a partition actor.
    pub fn partition_closed(&self, open: &Arc<OpenPartition>) {
        if open.state.topic != OFFSETS_TOPIC {
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
                metrics::gauge!("oxbow_group_coordinator_partitions").set(shards.len() as f64);
                info!(
                    partition = s.partition,
                    "group coordinator partition closed"
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
            let mut interval = tokio::time::interval(shared.config.tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let retention_every = Duration::from_millis(shared.config.offsets_retention_check_ms);
            let mut next_retention = tokio::time::Instant::now() + retention_every;
            loop {
                interval.tick().await;
                let check_retention = tokio::time::Instant::now() >= next_retention;
                if check_retention {
                    next_retention = tokio::time::Instant::now() + retention_every;
                }
                let shards: Vec<Arc<Shard>> = shared
                    .shards
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for shard in shards {
                    let mut inner = shard.inner.lock().await;
                    let now = shard.now();
                    if serving(&shard, &inner).is_err() {
                        continue;
                    }
                    if check_retention {
                        let outcome = inner.groups.expire_offsets(now);
                        shard.apply(&mut inner, outcome).await;
                    }
                    if inner.groups.next_deadline().is_none_or(|d| d > now.mono_ms) {
                        continue;
                    }
                    let outcome = inner.groups.tick(now);
                    shard.apply(&mut inner, outcome).await;
                }
            }
        }));
    }

    // ------------------------------------------------------------ requests

    pub async fn join(&self, req: JoinRequest) -> JoinResponse {
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err(code) => return JoinResponse::error(code, &req.member_id),
        };
        let member_id = req.member_id.clone();
        let waiter = self.waiter();
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = shard.inner.lock().await;
            if let Err(code) = serving(&shard, &inner) {
                return JoinResponse::error(code, &member_id);
            }
            inner.joins.insert(waiter, tx);
            let prefix = req
                .instance_id
                .clone()
                .unwrap_or_else(|| req.client_id.clone());
            let new_member_id = format!("{prefix}-{}", shard.entropy.uuid());
            let now = shard.now();
            let outcome = inner.groups.join(now, req, new_member_id, waiter);
            shard.apply(&mut inner, outcome).await;
        }
        rx.await
            .unwrap_or_else(|_| JoinResponse::error(ErrorCode::NotCoordinator, &member_id))
    }

    pub async fn sync(&self, req: SyncRequest) -> SyncResponse {
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err(code) => return SyncResponse::error(code),
        };
        let waiter = self.waiter();
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = shard.inner.lock().await;
            if let Err(code) = serving(&shard, &inner) {
                return SyncResponse::error(code);
            }
            inner.syncs.insert(waiter, tx);
            let now = shard.now();
            let outcome = inner.groups.sync(now, req, waiter);
            shard.apply(&mut inner, outcome).await;
        }
        rx.await
            .unwrap_or_else(|_| SyncResponse::error(ErrorCode::NotCoordinator))
    }

    pub async fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> ErrorCode {
        if group_id.is_empty() {
            return ErrorCode::InvalidGroupId;
        }
        let shard = match self.shard_for(group_id) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let mut inner = shard.inner.lock().await;
        match serving(&shard, &inner) {
            Ok(()) => {}
            // Kafka answers a heartbeat to a loading coordinator blindly.
            Err(ErrorCode::CoordinatorLoadInProgress) => return ErrorCode::None,
            Err(code) => return code,
        }
        let now = shard.now();
        inner
            .groups
            .heartbeat(now, group_id, generation, member_id, instance_id)
    }

    /// ConsumerGroupHeartbeat (KIP-848). Topics are looked up in this
    /// broker's metadata as of the heartbeat.
    pub async fn consumer_heartbeat(
        &self,
        req: ConsumerHeartbeat,
    ) -> Result<HeartbeatReply, HeartbeatError> {
        let plain = |code| HeartbeatError {
            code,
            message: None,
        };
        // Kafka's request checks come before the coordinator's.
        super::consumer::validate_request(&req)?;
        let shard = self.shard_for(&req.group_id).map_err(plain)?;
        let mut inner = shard.inner.lock().await;
        serving(&shard, &inner).map_err(plain)?;
        let now = shard.now();
        let new_member_id = shard.entropy.uuid().to_string();
        let topics: super::consumer::Topics = self.shared.metadata.read(|img| {
            img.topics
                .values()
                .map(|t| {
                    let n = u32::try_from(t.partitions.len()).unwrap_or(u32::MAX);
                    (t.name.clone(), (t.id, n))
                })
                .collect()
        });
        let (reply, record) = inner
            .groups
            .consumer_heartbeat(now, &req, new_member_id, &topics)?;
        let Some(snapshot) = record else {
            return Ok(reply);
        };
        // Answered once the group's new state is committed, as Kafka does.
        let key = records::encode_key(&RecordKey::ConsumerGroup {
            group: req.group_id.clone(),
        });
        let (_, acks) = shard
            .append(vec![(key, Some(snapshot))], now.wall_ms)
            .await
            .map_err(|code| plain(map_append_error(code)))?;
        drop(inner);
        wait_acks(acks).await.map_err(plain)?;
        Ok(reply)
    }

    /// ConsumerGroupDescribe for one group: `Ok(None)` if there is no
    /// consumer-protocol group of that id.
    pub async fn describe_consumer_group(
        &self,
        group_id: &str,
    ) -> Result<Option<ConsumerGroup>, ErrorCode> {
        let shard = self.shard_for(group_id)?;
        let inner = shard.inner.lock().await;
        serving(&shard, &inner)?;
        Ok(inner.groups.consumer_group(group_id).cloned())
    }

    /// OffsetFetch's member check for consumer-protocol groups (v9+).
    pub async fn validate_fetch(
        &self,
        group_id: &str,
        member_id: Option<&str>,
        member_epoch: i32,
    ) -> Result<(), ErrorCode> {
        let shard = self.shard_for(group_id)?;
        let inner = shard.inner.lock().await;
        serving(&shard, &inner)?;
        inner
            .groups
            .validate_fetch(group_id, member_id, member_epoch)
    }

    /// Returns the top-level error and one error per member.
    pub async fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> (ErrorCode, Vec<ErrorCode>) {
        if group_id.is_empty() {
            return (ErrorCode::InvalidGroupId, Vec::new());
        }
        let shard = match self.shard_for(group_id) {
            Ok(s) => s,
            Err(code) => return (code, Vec::new()),
        };
        let mut inner = shard.inner.lock().await;
        if let Err(code) = serving(&shard, &inner) {
            return (code, Vec::new());
        }
        let now = shard.now();
        let (top, errors, outcome) = inner.groups.leave(now, group_id, members);
        shard.apply(&mut inner, outcome).await;
        (top, errors)
    }

    /// Waits for an offset commit's write outside the lock, counted as in
    /// flight for `require_stable` fetches meanwhile; returns its outcome
    /// and the lock again.
    async fn wait_commit<'a>(
        shard: &'a Shard,
        mut inner: tokio::sync::MutexGuard<'a, ShardInner>,
        group_id: &str,
        acks: Vec<oneshot::Receiver<AckOutcome>>,
    ) -> (
        Result<(), ErrorCode>,
        tokio::sync::MutexGuard<'a, ShardInner>,
    ) {
        *inner
            .pending_commits
            .entry(group_id.to_string())
            .or_default() += 1;
        drop(inner);
        let result = wait_acks(acks).await;
        let mut inner = shard.inner.lock().await;
        if let Some(n) = inner.pending_commits.get_mut(group_id) {
            *n -= 1;
            if *n == 0 {
                inner.pending_commits.remove(group_id);
            }
        }
        (result, inner)
    }

    /// Commits offsets for a group once they are in the log. The error is
    /// for every partition of the request.
    #[allow(clippy::too_many_arguments)]
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        version: i16,
        offsets: Vec<OffsetCommit>,
    ) -> ErrorCode {
        let shard = match self.shard_for(group_id) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let mut inner = shard.inner.lock().await;
        if let Err(code) = serving(&shard, &inner) {
            return code;
        }
        let now = shard.now();
        if let Err(code) =
            inner
                .groups
                .validate_commit(now, group_id, member_id, instance_id, generation, version)
        {
            return code;
        }
        if offsets.is_empty() {
            return ErrorCode::None;
        }
        let records = offset_records(group_id, &offsets);
        let (base, acks) = match shard.append(records, now.wall_ms).await {
            Ok(a) => a,
            Err(code) => return code,
        };
        let (result, mut inner) = Self::wait_commit(&shard, inner, group_id, acks).await;
        let outcome = match result {
            Ok(()) if inner.loaded && !shard.closed.load(Ordering::Acquire) => {
                metrics::counter!("oxbow_group_offset_commits_total")
                    .increment(offsets.len() as u64);
                for (i, (topic, partition, v)) in offsets.into_iter().enumerate() {
                    let committed = CommittedOffset {
                        offset: v.offset,
                        leader_epoch: v.leader_epoch,
                        metadata: v.metadata,
                        commit_timestamp: v.commit_timestamp,
                        expire_timestamp: v.expire_timestamp,
                        log_offset: base + i as u64,
                    };
                    inner
                        .groups
                        .apply_offset(now, group_id, &topic, partition, Some(committed));
                }
                ErrorCode::None
            }
            Ok(()) => ErrorCode::NotCoordinator,
            Err(code) => code,
        };
        shard.commit_resolved.notify_waiters();
        outcome
    }

    /// Committed offsets of a group (`wanted: None` for all of them). With
    /// `require_stable`, waits until no commit of the group is in flight.
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        wanted: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> Result<FetchedOffsets, ErrorCode> {
        let shard = self.shard_for(group_id)?;
        let deadline = tokio::time::Instant::now() + STABLE_WAIT;
        loop {
            let inner = shard.inner.lock().await;
            serving(&shard, &inner)?;
            let txn_pending = inner
                .pending_txn
                .values()
                .any(|v| v.iter().any(|(g, _)| g == group_id));
            if !require_stable || (!inner.pending_commits.contains_key(group_id) && !txn_pending) {
                return Ok(inner.groups.fetch_offsets(group_id, wanted.as_deref()));
            }
            let notified = shard.commit_resolved.notified();
            drop(inner);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ErrorCode::UnstableOffsetCommit);
            }
        }
    }

    /// TxnOffsetCommit: appends the offsets in a transactional batch of the
    /// producer; they take effect when its commit marker does. `guard`: as
    /// for a produce, the verification guard when the producer has no
    /// transaction open on the group's partition yet.
    #[allow(clippy::too_many_arguments)]
    pub async fn txn_commit_offsets(
        &self,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        guard: Option<u64>,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        offsets: Vec<OffsetCommit>,
    ) -> ErrorCode {
        let shard = match self.shard_for(group_id) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let mut inner = shard.inner.lock().await;
        if let Err(code) = serving(&shard, &inner) {
            return code;
        }
        let now = shard.now();
        // Kafka checks membership only when the request names a member.
        if generation >= 0 || !member_id.is_empty() {
            if let Err(code) =
                inner
                    .groups
                    .validate_commit(now, group_id, member_id, instance_id, generation, 8)
            {
                return code;
            }
        }
        if offsets.is_empty() {
            return ErrorCode::None;
        }
        let records = offset_records(group_id, &offsets);
        let (base, acks) = match shard
            .append_as(
                records.clone(),
                now.wall_ms,
                Some((producer_id, producer_epoch)),
                guard,
            )
            .await
        {
            Ok(a) => a,
            Err(code) => return code,
        };
        let (result, mut inner) = Self::wait_commit(&shard, inner, group_id, acks).await;
        let code = match result {
            Ok(()) if inner.loaded && !shard.closed.load(Ordering::Acquire) => {
                let pending = inner.pending_txn.entry(producer_id).or_default();
                for (i, (key, value)) in records.into_iter().enumerate() {
                    pending.push((
                        group_id.to_string(),
                        records::LogRecord {
                            offset: (base + i as u64) as i64,
                            key: Some(key),
                            value,
                        },
                    ));
                }
                ErrorCode::None
            }
            Ok(()) => ErrorCode::NotCoordinator,
            Err(code) => code,
        };
        shard.commit_resolved.notify_waiters();
        code
    }

    /// A transaction marker of `producer_id` committed on a partition of
    /// `__consumer_offsets`: its pending offsets there take effect (commit)
    /// or are dropped (abort). Only offsets written before the marker
    /// (below `marker_offset`) are its transaction's: the producer's next
    /// transaction may already have written some, as its transactional id
    /// is free once the marker is queued.
    pub async fn txn_completed(
        &self,
        open: &Arc<OpenPartition>,
        producer_id: i64,
        commit: bool,
        marker_offset: u64,
    ) {
        let shard = match self.shards().get(&open.state.partition) {
            Some(s) if Arc::ptr_eq(&s.open, open) => s.clone(),
            _ => return,
        };
        let mut inner = shard.inner.lock().await;
        if let Some(recs) = inner.pending_txn.remove(&producer_id) {
            let (recs, later): (Vec<_>, Vec<_>) = recs
                .into_iter()
                .partition(|(_, r)| u64::try_from(r.offset).unwrap_or(0) < marker_offset);
            if !later.is_empty() {
                inner.pending_txn.insert(producer_id, later);
            }
            if commit {
                let now = shard.now();
                for (_, r) in recs {
                    replay(&mut inner.groups, now, r);
                }
            }
        }
        drop(inner);
        shard.commit_resolved.notify_waiters();
    }

    /// Groups of every partition this broker coordinates.
    pub async fn list_groups(&self) -> Result<Vec<ListedGroup>, ErrorCode> {
        let shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        let mut out = Vec::new();
        for shard in shards {
            let inner = shard.inner.lock().await;
            if shard.closed.load(Ordering::Acquire) {
                continue;
            }
            if !inner.loaded {
                return Err(ErrorCode::CoordinatorLoadInProgress);
            }
            out.extend(inner.groups.list());
        }
        Ok(out)
    }

    /// `Ok(None)`: no such group.
    pub async fn describe(&self, group_id: &str) -> Result<Option<DescribedGroup>, ErrorCode> {
        let shard = self.shard_for(group_id)?;
        let inner = shard.inner.lock().await;
        serving(&shard, &inner)?;
        inner.groups.describe(group_id)
    }

    /// Writes a persist and waits for it; the state machine learns the
    /// outcome either way.
    async fn persist_and_wait(
        shard: &Arc<Shard>,
        mut inner: tokio::sync::MutexGuard<'_, ShardInner>,
        p: Persist,
    ) -> Result<(), ErrorCode> {
        let now = shard.now();
        let appended = shard.append(persist_records(&p), now.wall_ms).await;
        let result = match appended {
            Ok((_, acks)) => {
                drop(inner);
                let r = wait_acks(acks).await;
                inner = shard.inner.lock().await;
                r
            }
            Err(code) => Err(code),
        };
        if inner.loaded && !shard.closed.load(Ordering::Acquire) {
            let outcome = inner.groups.after_persist(now, &p.group_id, p.then, result);
            shard.apply(&mut inner, outcome).await;
        }
        result
    }

    /// DeleteGroups for one group.
    pub async fn delete_group(&self, group_id: &str) -> ErrorCode {
        let shard = match self.shard_for(group_id) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let mut inner = shard.inner.lock().await;
        if let Err(code) = serving(&shard, &inner) {
            return code;
        }
        let now = shard.now();
        let p = match inner.groups.delete_group(now, group_id) {
            Ok(p) => p,
            Err(code) => return code,
        };
        match Self::persist_and_wait(&shard, inner, p).await {
            Ok(()) => ErrorCode::None,
            Err(code) => code,
        }
    }

    /// OffsetDelete: the group-level error, or per topic and partition.
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        topics: Vec<(String, Vec<i32>)>,
    ) -> Result<Vec<(String, Vec<(i32, ErrorCode)>)>, ErrorCode> {
        let shard = self.shard_for(group_id)?;
        let inner = shard.inner.lock().await;
        serving(&shard, &inner)?;
        let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
        let verdicts = inner.groups.check_offset_delete(group_id, &names)?;
        let mut tombstones = Vec::new();
        let mut answer = Vec::with_capacity(topics.len());
        for ((topic, parts), verdict) in topics.into_iter().zip(verdicts) {
            let code = match verdict {
                Ok(()) => ErrorCode::None,
                Err(code) => code,
            };
            if code == ErrorCode::None {
                for p in &parts {
                    if inner.groups.has_offset(group_id, &topic, *p) {
                        tombstones.push((topic.clone(), *p));
                    }
                }
            }
            answer.push((topic, parts.into_iter().map(|p| (p, code)).collect()));
        }
        if tombstones.is_empty() {
            return Ok(answer);
        }
        let now = shard.now();
        let records: Vec<(Bytes, Option<Bytes>)> = tombstones
            .iter()
            .map(|(topic, partition)| {
                (
                    records::encode_key(&RecordKey::Offset {
                        group: group_id.to_string(),
                        topic: topic.clone(),
                        partition: *partition,
                    }),
                    None,
                )
            })
            .collect();
        let (_, acks) = shard.append(records, now.wall_ms).await?;
        drop(inner);
        wait_acks(acks).await?;
        let mut inner = shard.inner.lock().await;
        if inner.loaded && !shard.closed.load(Ordering::Acquire) {
            for (topic, partition) in tombstones {
                inner
                    .groups
                    .apply_offset(now, group_id, &topic, partition, None);
            }
        }
        Ok(answer)
    }
}

// ----------------------------------------------------------------- loading

/// Reads committed batches of the shard's stream from `offset`, from the
/// log cache or from objects, and the offset to go on from when there are
/// none because compaction emptied the rest up to `end`.
pub async fn read_batches(
    metadata: &MetadataView,
    log_cache: &LogCache,
    reader: &ObjectReader,
    stream: proto::StreamId,
    offset: u64,
    end: u64,
    max: usize,
) -> Result<(Vec<Bytes>, u64), String> {
    if let Some(c) = log_cache.read(stream, offset, max) {
        return Ok((c.batches, offset));
    }
    crate::storage::reader::read_committed(metadata, reader, stream, offset, end, max)
        .await
        .map(|r| match r {
            Some(r) if r.batches.is_empty() => (Vec::new(), r.end_offset.max(offset)),
            Some(r) => (r.batches, offset),
            None => (Vec::new(), offset), // the view lags; retry
        })
        .map_err(|e| e.to_string())
}

fn replay(groups: &mut GroupSet, now: Now, rec: records::LogRecord) {
    let Some(key) = rec.key else {
        return;
    };
    let key = match records::decode_key(&key) {
        Ok(k) => k,
        Err(e) => {
            warn!(offset = rec.offset, error = %e, "skipping __consumer_offsets record");
            return;
        }
    };
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            let value = match rec.value.as_deref().map(records::decode_offset_value) {
                None => None,
                Some(Ok(v)) => Some(CommittedOffset {
                    offset: v.offset,
                    leader_epoch: v.leader_epoch,
                    metadata: v.metadata,
                    commit_timestamp: v.commit_timestamp,
                    expire_timestamp: v.expire_timestamp,
                    log_offset: u64::try_from(rec.offset).unwrap_or(0),
                }),
                Some(Err(e)) => {
                    warn!(offset = rec.offset, error = %e, "skipping offset commit record");
                    return;
                }
            };
            groups.apply_offset(now, &group, &topic, partition, value);
        }
        RecordKey::Group { group } => match rec.value.as_deref().map(records::decode_group_value) {
            None => groups.replay_group(now, &group, None),
            Some(Ok(v)) => groups.replay_group(now, &group, Some(v)),
            Some(Err(e)) => {
                warn!(offset = rec.offset, error = %e, "skipping group metadata record");
            }
        },
        RecordKey::ConsumerGroup { group } => {
            groups.replay_consumer(now, &group, rec.value.as_deref());
        }
        RecordKey::Other(version) => {
            debug!(
                offset = rec.offset,
                version, "skipping record of another group type"
            );
        }
    }
}

/// Replays the shard's partition from its log start to its high watermark,
/// then starts serving it.
async fn load(shared: Arc<Shared>, shard: Arc<Shard>) {
    let started = tokio::time::Instant::now();
    let state = shard.open.state.clone();
    let mut groups = GroupSet::new(shared.config.clone());
    let mut offset = state.log_start();
    let mut records_read = 0u64;
    let mut idle_retries = 0u32;
    let mut txn_pending: HashMap<i64, Vec<(String, records::LogRecord)>> = HashMap::new();
    loop {
        if shard.closed.load(Ordering::Acquire) {
            return;
        }
        let end = state.high_watermark();
        if offset >= end {
            // Nothing is appended to an unloaded shard, so the high
            // watermark only moves for writes from elsewhere (a client
            // producing to the topic); re-check under the lock.
            let mut inner = shard.inner.lock().await;
            if offset < state.high_watermark() {
                continue;
            }
            let now = shard.now();
            groups.start_sessions(now);
            let count = groups.group_count();
            inner.groups = groups;
            inner.pending_txn = std::mem::take(&mut txn_pending);
            inner.loaded = true;
            metrics::histogram!("oxbow_group_load_seconds").record(started.elapsed().as_secs_f64());
            info!(
                partition = shard.partition,
                groups = count,
                records = records_read,
                end_offset = offset,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "group coordinator partition loaded"
            );
            return;
        }
        let read = read_batches(
            &shared.metadata,
            &shared.log_cache,
            &shared.reader,
            state.stream,
            offset,
            end,
            shared.config.load_read_bytes,
        )
        .await;
        let batches = match read {
            Ok((b, _)) if !b.is_empty() => b,
            Ok((_, skip_to)) if skip_to > offset => {
                offset = skip_to; // compacted away
                continue;
            }
            Ok(_) => Vec::new(),
            Err(e) => {
                warn!(partition = shard.partition, offset, error = %e, "loading __consumer_offsets failed; retrying");
                Vec::new()
            }
        };
        if batches.is_empty() {
            idle_retries += 1;
            if idle_retries.is_multiple_of(50) {
                warn!(
                    partition = shard.partition,
                    offset, end, "loading __consumer_offsets makes no progress"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let before = offset;
        let now = shard.now();
        for b in batches {
            let Ok(h) = batch::parse_header(&b) else {
                continue;
            };
            let last = u64::try_from(h.last_offset()).unwrap_or(0);
            if last < offset {
                continue;
            }
            if h.is_control() {
                // A transaction marker: the producer's pending offsets
                // take effect or are dropped.
                if let Some(recs) = txn_pending.remove(&h.producer_id) {
                    if batch::control_type(&b) == Some(batch::CONTROL_COMMIT) {
                        for (_, r) in recs {
                            replay(&mut groups, now, r);
                        }
                    }
                }
                offset = last + 1;
                continue;
            }
            match records::batch_records(&b) {
                Ok(recs) if h.is_transactional() => {
                    let pending = txn_pending.entry(h.producer_id).or_default();
                    for r in recs {
                        if u64::try_from(r.offset).unwrap_or(0) >= offset {
                            records_read += 1;
                            let group = match r.key.as_deref().map(records::decode_key) {
                                Some(Ok(RecordKey::Offset { group, .. })) => group,
                                _ => String::new(),
                            };
                            pending.push((group, r));
                        }
                    }
                }
                Ok(recs) => {
                    for r in recs {
                        if u64::try_from(r.offset).unwrap_or(0) >= offset {
                            records_read += 1;
                            replay(&mut groups, now, r);
                        }
                    }
                }
                Err(e) => {
                    warn!(partition = shard.partition, base_offset = h.base_offset, error = %e, "skipping __consumer_offsets batch")
                }
            }
            offset = last + 1;
        }
        if offset == before {
            // Unreadable batches only: keep trying (and saying so) rather
            // than serve the groups without their state.
            idle_retries += 1;
            warn!(
                partition = shard.partition,
                offset, "no readable batch at this offset of __consumer_offsets"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            idle_retries = 0;
        }
    }
}
