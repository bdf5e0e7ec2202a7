//! The object write-ahead path: one writer per broker gathers the batches of
//! every partition it hosts, seals them into stream-set objects by size or
//! linger, PUTs several objects at once, and commits them to the controller
//! strictly in order. Only after the commit does a batch become visible (log
//! cache, high watermark) and its producer get an acknowledgement.
//!
//! So an acknowledged batch is always both in the object store and in the
//! metadata. This module never decides offsets (the partition actors do) and
//! never retries a batch on its own after giving up: a failed batch is
//! reported to its partition, which resets to the committed end.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use proto::image::{
    CommandReply, CommitRange, MetadataCommand, ObjectCommit, RangeVerdict, TxnEvent,
};
use proto::rpc::{ControllerApi, RpcError};
use proto::{BrokerId, StreamId};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::StorageConfig;
use crate::storage::log_cache::LogCache;
use crate::storage::object_format::ObjectWriter;
use crate::storage::stream::StreamState;

/// How a batch handed to the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// In an object and committed: visible and durable.
    Committed,
    /// The controller refused the range (ownership or epoch moved on).
    Fenced,
    /// The PUT or the commit failed for good, or the broker is stopping.
    Failed,
}

pub struct PendingBatch {
    pub stream: Arc<StreamState>,
    pub stream_epoch: u64,
    pub base_offset: u64,
    pub end_offset: u64,
    pub record_count: u32,
    pub max_timestamp: i64,
    pub bytes: Bytes,
    pub ack: oneshot::Sender<AckOutcome>,
    pub permit: OwnedSemaphorePermit,
    /// The transaction this batch begins or ends, recorded in the stream's
    /// metadata with the commit.
    pub txn: Option<TxnEvent>,
    /// This batch's fate, for batches that must not commit without it.
    pub fate: Arc<Fate>,
    /// Batches (of any stream) this one must not commit without: it goes
    /// into a later object than theirs, is committed after them, and is
    /// failed if any of them did not commit.
    pub after: Vec<Arc<Fate>>,
}

/// A batch as batches queued after it see it: whether it is sealed into an
/// object yet, and how it ended. Lets a transaction's records and markers
/// be in flight together while committing only in order (see
/// `PendingBatch::after`).
#[derive(Debug, Default)]
pub struct Fate {
    sealed: std::sync::atomic::AtomicBool,
    outcome: std::sync::OnceLock<AckOutcome>,
}

impl Fate {
    /// How the batch ended; `None` while it is in flight.
    pub fn outcome(&self) -> Option<AckOutcome> {
        self.outcome.get().copied()
    }

    fn is_sealed(&self) -> bool {
        self.sealed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Where partitions send batches. Cloneable; the writer stops when every
/// handle is dropped, after flushing what it holds.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<PendingBatch>,
    budget: Arc<Semaphore>,
    max_unflushed: usize,
}

impl WriterHandle {
    /// Reserves room for `bytes` of unflushed data, waiting while the
    /// broker-wide budget is used up.
    pub async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = bytes.min(self.max_unflushed).max(1);
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.budget.clone().acquire_many_owned(n).await.ok()
    }

    /// Queues a batch; its outcome arrives on the batch's `ack`.
    pub async fn submit(&self, batch: PendingBatch) -> Result<(), PendingBatch> {
        self.tx.send(batch).await.map_err(|e| e.0)
    }
}

struct SealedObject {
    key: String,
    /// The broker epoch named in the key, and the only one the object may
    /// be committed under: the orphan collector deletes unreferenced
    /// objects of epochs that have ended, which must then never commit.
    broker_epoch: u64,
    size: u64,
    ranges: Vec<CommitRange>,
    /// For each range, the batches it covers.
    batches: Vec<Vec<PendingBatch>>,
    /// Every batch its batches must not commit without (in earlier objects).
    after: Vec<Arc<Fate>>,
    upload: Upload,
}

/// An object's upload: still running, or finished (and whether it stored
/// the object). A task's result can be taken only once; this keeps it for
/// an object looked at again after waiting in the commit queue.
enum Upload {
    Running(JoinHandle<bool>),
    Done(bool),
}

impl Upload {
    fn is_finished(&self) -> bool {
        match self {
            Upload::Running(task) => task.is_finished(),
            Upload::Done(_) => true,
        }
    }

    /// Waits for the upload; `true` if the object is in the store.
    async fn succeeded(&mut self) -> bool {
        match self {
            Upload::Running(task) => {
                let stored = task.await.unwrap_or(false);
                *self = Upload::Done(stored);
                stored
            }
            Upload::Done(stored) => *stored,
        }
    }
}

pub struct WriterIdentity {
    pub broker: BrokerId,
    /// The broker's current registration epoch; a re-registered broker's
    /// writer carries on with the new one.
    pub broker_epoch: Arc<std::sync::atomic::AtomicU64>,
    /// Prefix of every object key this broker writes, e.g. "" or "oxbow/".
    pub key_prefix: String,
}

pub fn spawn_writer(
    cfg: StorageConfig,
    store: Arc<dyn ObjectStore>,
    controller: Arc<dyn ControllerApi>,
    identity: WriterIdentity,
    cache: Arc<LogCache>,
) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let budget = Arc::new(Semaphore::new(cfg.max_unflushed_bytes));
    let handle = WriterHandle {
        tx,
        budget,
        max_unflushed: cfg.max_unflushed_bytes,
    };
    let (sealed_tx, sealed_rx) = mpsc::channel(cfg.max_inflight_puts.max(1));
    let pipeline = Arc::new(Pipeline::default());
    let committer = tokio::spawn(commit_loop(
        sealed_rx,
        pipeline.clone(),
        controller,
        identity.broker,
        cache,
        cfg.max_attempts,
    ));
    let task = tokio::spawn(async move {
        gather_loop(cfg, store, identity, rx, sealed_tx, pipeline).await;
        let _ = committer.await;
    });
    (handle, task)
}

/// Objects sealed but not yet through the commit stage, and a signal when
/// that count drops, so the gatherer can seal early when the pipeline is idle
/// (group commit: at low load an object goes out at once, under load batches
/// gather while the previous objects are in flight, up to `linger`).
#[derive(Default)]
struct Pipeline {
    in_flight: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Pipeline {
    fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    fn sealed(&self) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn resolved(&self) {
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.drained.notify_one();
    }
}

/// With fewer objects than this in flight, the pipeline has room: seal after
/// `IDLE_LINGER` instead of `linger`. Two lets the next object's PUT overlap
/// the previous object's commit.
const EARLY_SEAL_BELOW: usize = 2;
/// How long to wait for the rest of a burst (the other partitions of the same
/// produce request) before sealing early.
const IDLE_LINGER: Duration = Duration::from_millis(1);

async fn gather_loop(
    cfg: StorageConfig,
    store: Arc<dyn ObjectStore>,
    identity: WriterIdentity,
    mut rx: mpsc::Receiver<PendingBatch>,
    sealed_tx: mpsc::Sender<SealedObject>,
    pipeline: Arc<Pipeline>,
) {
    let mut g = Gathered {
        buffer: Vec::new(),
        bytes: 0,
        deadline: None,
        seq: 0,
    };
    loop {
        let deadline = g.deadline;
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let seal_now = tokio::select! {
            msg = rx.recv() => match msg {
                Some(b) => {
                    if b.after.iter().any(|f| !f.is_sealed()) {
                        // What it must follow is still here: that goes first.
                        if let Some(obj) = g.seal(&cfg, &store, &identity, &pipeline) {
                            if sealed_tx.send(obj).await.is_err() {
                                return;
                            }
                        }
                    }
                    if g.deadline.is_none() {
                        let idle = cfg.seal_when_idle && pipeline.in_flight() < EARLY_SEAL_BELOW;
                        let wait = if idle { IDLE_LINGER.min(cfg.linger) } else { cfg.linger };
                        g.deadline = Some(tokio::time::Instant::now() + wait);
                    }
                    g.bytes += b.bytes.len();
                    g.buffer.push(b);
                    g.bytes >= cfg.flush_bytes
                }
                None => {
                    if let Some(obj) = g.seal(&cfg, &store, &identity, &pipeline) {
                        let _ = sealed_tx.send(obj).await;
                    }
                    return;
                }
            },
            _ = sleep => true,
            _ = pipeline.drained.notified(), if cfg.seal_when_idle && !g.buffer.is_empty() => pipeline.in_flight() < EARLY_SEAL_BELOW,
        };
        if seal_now {
            if let Some(obj) = g.seal(&cfg, &store, &identity, &pipeline) {
                if sealed_tx.send(obj).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The batches gathered for the next object.
struct Gathered {
    buffer: Vec<PendingBatch>,
    bytes: usize,
    deadline: Option<Instant>,
    seq: u64,
}

impl Gathered {
    /// Seals what is gathered into an object (none when nothing is).
    fn seal(
        &mut self,
        cfg: &StorageConfig,
        store: &Arc<dyn ObjectStore>,
        identity: &WriterIdentity,
        pipeline: &Pipeline,
    ) -> Option<SealedObject> {
        if self.buffer.is_empty() {
            return None;
        }
        pipeline.sealed();
        let obj = seal(
            cfg,
            store,
            identity,
            self.seq,
            std::mem::take(&mut self.buffer),
        );
        self.seq += 1;
        self.bytes = 0;
        self.deadline = None;
        Some(obj)
    }
}

/// Packs the buffered batches into one object and starts its upload.
fn seal(
    cfg: &StorageConfig,
    store: &Arc<dyn ObjectStore>,
    identity: &WriterIdentity,
    seq: u64,
    mut batches: Vec<PendingBatch>,
) -> SealedObject {
    // Stable: each stream's batches arrive in offset order already.
    batches.sort_by_key(|b| b.stream.stream.0);
    let mut writer = ObjectWriter::new(cfg.block_bytes);
    let mut ranges: Vec<CommitRange> = Vec::new();
    let mut groups: Vec<Vec<PendingBatch>> = Vec::new();
    let mut after = Vec::new();
    for b in batches {
        b.fate
            .sealed
            .store(true, std::sync::atomic::Ordering::Release);
        after.extend(b.after.iter().cloned());
        if let Err(e) = writer.push(
            b.stream.stream,
            b.base_offset,
            b.end_offset,
            b.record_count,
            &b.bytes,
        ) {
            // Offsets not contiguous within a stream: a partition bug. Refuse
            // the batch rather than write an object that breaks the format.
            warn!(stream_id = b.stream.stream.0, error = %e, "batch refused by object writer");
            resolve(b, AckOutcome::Failed);
            continue;
        }
        match ranges.last_mut() {
            Some(r)
                if r.stream == b.stream.stream
                    && r.stream_epoch == b.stream_epoch
                    && r.end_offset == b.base_offset =>
            {
                r.end_offset = b.end_offset;
                r.max_timestamp = r.max_timestamp.max(b.max_timestamp);
                r.bytes += b.bytes.len() as u64;
                r.txn_events.extend(b.txn);
                groups.last_mut().expect("a group per range").push(b);
            }
            _ => {
                ranges.push(CommitRange {
                    stream: b.stream.stream,
                    stream_epoch: b.stream_epoch,
                    start_offset: b.base_offset,
                    end_offset: b.end_offset,
                    max_timestamp: b.max_timestamp,
                    bytes: b.bytes.len() as u64,
                    txn_events: b.txn.into_iter().collect(),
                });
                groups.push(vec![b]);
            }
        }
    }
    let (bytes, _index) = writer.finish();
    let broker_epoch = identity
        .broker_epoch
        .load(std::sync::atomic::Ordering::Acquire);
    let key = object_key(&identity.key_prefix, identity.broker, broker_epoch, seq);
    let size = bytes.len() as u64;
    let upload = tokio::spawn(put_with_retries(
        store.clone(),
        Path::from(key.clone()),
        bytes,
        cfg.max_attempts,
    ));
    SealedObject {
        key,
        broker_epoch,
        size,
        ranges,
        batches: groups,
        after,
        upload: Upload::Running(upload),
    }
}

/// The key of a stream-set object: `{prefix}sso/{broker}/{broker epoch}/{seq}`.
pub fn object_key(prefix: &str, broker: BrokerId, broker_epoch: u64, seq: u64) -> String {
    format!("{prefix}sso/{broker}/{broker_epoch}/{seq:016}")
}

/// The broker and broker epoch named by a stream-set (`sso/`) or compacted
/// (`cso/`) object's key (the part
/// after the cluster's key prefix), or `None` for another kind of key.
pub fn parse_object_key(key_after_prefix: &str) -> Option<(BrokerId, u64)> {
    let rest = key_after_prefix
        .strip_prefix("sso/")
        .or_else(|| key_after_prefix.strip_prefix("cso/"))?;
    let mut parts = rest.split('/');
    let broker = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    parts.next().is_none().then_some((broker, epoch))
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(7)).min(2_000))
}

async fn put_with_retries(
    store: Arc<dyn ObjectStore>,
    path: Path,
    bytes: Bytes,
    max_attempts: u32,
) -> bool {
    let payload = PutPayload::from(bytes.clone());
    for attempt in 0..max_attempts {
        let started = Instant::now();
        match store.put(&path, payload.clone()).await {
            Ok(_) => {
                metrics::counter!("oxbow_object_puts_total").increment(1);
                metrics::counter!("oxbow_object_put_bytes_total").increment(bytes.len() as u64);
                metrics::histogram!("oxbow_object_put_seconds")
                    .record(started.elapsed().as_secs_f64());
                return true;
            }
            Err(e) => {
                metrics::counter!("oxbow_object_put_errors_total").increment(1);
                warn!(key = %path, attempt, error = %e, "object PUT failed");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    false
}

/// Most objects committed in one controller write.
const MAX_OBJECTS_PER_COMMIT: usize = 16;

/// Commits sealed objects in seal order. Whenever several consecutive objects
/// have finished uploading, they go to the controller in one write.
async fn commit_loop(
    mut sealed_rx: mpsc::Receiver<SealedObject>,
    pipeline: Arc<Pipeline>,
    controller: Arc<dyn ControllerApi>,
    broker: BrokerId,
    cache: Arc<LogCache>,
    max_attempts: u32,
) {
    let mut queue: std::collections::VecDeque<SealedObject> = std::collections::VecDeque::new();
    loop {
        if queue.is_empty() {
            match sealed_rx.recv().await {
                Some(o) => queue.push_back(o),
                None => return,
            }
        }
        while queue.len() < MAX_OBJECTS_PER_COMMIT {
            match sealed_rx.try_recv() {
                Ok(o) => queue.push_back(o),
                Err(_) => break,
            }
        }
        let mut head = queue.pop_front().expect("queue holds an object");
        let mut group = Vec::new();
        if !head.upload.succeeded().await {
            fail_all(head.batches, AckOutcome::Failed);
            pipeline.resolved();
            continue;
        }
        let epoch = head.broker_epoch;
        group.push(head);
        // Followers whose upload already succeeded join this commit; the
        // first one still uploading (or failed, or sealed under another
        // broker epoch) waits for the next round.
        // An object with batches that must follow batches of this group
        // waits for the group's verdicts.
        while group.len() < MAX_OBJECTS_PER_COMMIT
            && queue.front().is_some_and(|o| {
                o.upload.is_finished()
                    && o.broker_epoch == epoch
                    && o.after.iter().all(|f| f.outcome().is_some())
            })
        {
            let mut next = queue.pop_front().expect("front checked above");
            if !next.upload.succeeded().await {
                queue.push_front(next);
                break;
            }
            group.push(next);
        }
        let n = group.len();
        commit_group(group, &*controller, broker, epoch, &cache, max_attempts).await;
        for _ in 0..n {
            pipeline.resolved();
        }
    }
}

async fn commit_group(
    group: Vec<SealedObject>,
    controller: &dyn ControllerApi,
    broker: BrokerId,
    broker_epoch: u64,
    cache: &LogCache,
    max_attempts: u32,
) {
    let group: Vec<SealedObject> = group.into_iter().filter_map(drop_orphaned).collect();
    if group.is_empty() {
        return;
    }
    let cmd = MetadataCommand::CommitObjects {
        broker,
        broker_epoch,
        objects: group
            .iter()
            .map(|o| ObjectCommit {
                key: o.key.clone(),
                size: o.size,
                ranges: o.ranges.clone(),
            })
            .collect(),
    };
    let shape: Vec<usize> = group.iter().map(|o| o.ranges.len()).collect();
    let Some(verdicts) = commit_with_retries(controller, cmd, &shape, max_attempts).await else {
        for obj in group {
            fail_all(obj.batches, AckOutcome::Failed);
        }
        return;
    };
    for (obj, verdicts) in group.into_iter().zip(verdicts) {
        debug!(key = %obj.key, ranges = obj.ranges.len(), "object committed");
        for ((range, batches), verdict) in obj.ranges.iter().zip(obj.batches).zip(verdicts) {
            let outcome = match verdict {
                RangeVerdict::Accepted => AckOutcome::Committed,
                RangeVerdict::Fenced | RangeVerdict::UnknownStream => AckOutcome::Fenced,
                RangeVerdict::NotContiguous { .. } => AckOutcome::Failed,
            };
            if outcome != AckOutcome::Committed {
                warn!(stream_id = range.stream.0, ?verdict, "commit range refused");
            }
            publish(cache, range.stream, batches, outcome);
        }
    }
}

/// Fails the ranges of `obj` holding a batch that must not commit without
/// one that did not commit (every batch it follows is resolved by now: it
/// is in an earlier object, committed in an earlier round). The object is
/// committed without them, their blocks unreferenced; `None` when no range
/// is left.
fn drop_orphaned(mut obj: SealedObject) -> Option<SealedObject> {
    if obj.after.is_empty() {
        return Some(obj);
    }
    let mut ranges = Vec::with_capacity(obj.ranges.len());
    let mut batches = Vec::with_capacity(obj.batches.len());
    for (range, group) in obj.ranges.into_iter().zip(obj.batches) {
        let orphaned = group.iter().any(|b| {
            b.after
                .iter()
                .any(|f| f.outcome() != Some(AckOutcome::Committed))
        });
        if orphaned {
            warn!(
                stream_id = range.stream.0,
                "a batch it must follow did not commit; failing the range"
            );
            fail_all(vec![group], AckOutcome::Failed);
        } else {
            ranges.push(range);
            batches.push(group);
        }
    }
    if ranges.is_empty() {
        return None;
    }
    obj.ranges = ranges;
    obj.batches = batches;
    Some(obj)
}

/// Makes committed batches visible, then acknowledges them.
fn publish(cache: &LogCache, stream: StreamId, batches: Vec<PendingBatch>, outcome: AckOutcome) {
    let Some(state) = batches.first().map(|b| b.stream.clone()) else {
        return;
    };
    if outcome == AckOutcome::Committed {
        let mut end = 0;
        for b in &batches {
            cache.insert(stream, b.base_offset, b.end_offset, b.bytes.clone());
            end = b.end_offset;
        }
        state.advance_high_watermark(end);
    }
    for b in batches {
        resolve(b, outcome);
    }
}

/// Tells the batch's partition and its producer how the batch ended.
fn resolve(b: PendingBatch, outcome: AckOutcome) {
    match outcome {
        AckOutcome::Committed => {}
        AckOutcome::Fenced => b.stream.set_fenced(),
        AckOutcome::Failed => b.stream.set_failed(),
    }
    b.stream.batch_resolved();
    let _ = b.fate.outcome.set(outcome);
    let _ = b.ack.send(outcome);
}

fn fail_all(groups: Vec<Vec<PendingBatch>>, outcome: AckOutcome) {
    for b in groups.into_iter().flatten() {
        resolve(b, outcome);
    }
}

/// Commits with retries on retriable controller errors. `None` when it gave
/// up; the object then stays unreferenced for the garbage collector.
async fn commit_with_retries(
    controller: &dyn ControllerApi,
    cmd: MetadataCommand,
    shape: &[usize],
    max_attempts: u32,
) -> Option<Vec<Vec<RangeVerdict>>> {
    let fenced = || {
        shape
            .iter()
            .map(|&n| vec![RangeVerdict::Fenced; n])
            .collect()
    };
    for attempt in 0..max_attempts {
        let started = Instant::now();
        match controller.write(cmd.clone()).await {
            Ok(outcome) => {
                metrics::histogram!("oxbow_controller_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                let CommandReply::ObjectsCommitted(replies) = outcome.reply else {
                    warn!(reply = ?outcome.reply, "unexpected reply to an object commit");
                    return None;
                };
                let mut out = Vec::with_capacity(shape.len());
                for (reply, &n) in replies.into_iter().zip(shape) {
                    out.push(match reply {
                        CommandReply::ObjectCommitted { verdicts, .. } if verdicts.len() == n => {
                            verdicts
                        }
                        CommandReply::StaleBrokerEpoch => vec![RangeVerdict::Fenced; n],
                        other => {
                            warn!(?other, "unexpected reply to an object commit");
                            return None;
                        }
                    });
                }
                if out.len() != shape.len() {
                    return Some(fenced());
                }
                return Some(out);
            }
            Err(RpcError::ShuttingDown) => return None,
            Err(e) => {
                metrics::counter!("oxbow_controller_commit_errors_total").increment(1);
                warn!(attempt, error = %e, "object commit failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use object_store::memory::InMemory;
    use proto::rpc::{MetadataDeltas, WriteOutcome};
    use std::sync::Mutex;

    // The simulation (seed 183) found the commit loop panicking with
    // "JoinHandle polled after completion": a queued object whose upload
    // had failed was awaited once as a follower, put back, then awaited
    // again as the head.
    #[tokio::test]
    async fn an_upload_outcome_can_be_asked_for_again() {
        let mut failed = Upload::Running(tokio::spawn(async { false }));
        assert!(!failed.succeeded().await);
        assert!(failed.is_finished());
        assert!(!failed.succeeded().await);
        let mut stored = Upload::Running(tokio::spawn(async { true }));
        assert!(stored.succeeded().await);
        assert!(stored.succeeded().await);
    }

    /// Refuses every range of `fenced` as fenced, accepts the others, and
    /// keeps the streams of each object of each commit.
    struct Controller {
        fenced: StreamId,
        commits: Mutex<Vec<Vec<Vec<StreamId>>>>,
    }

    impl ControllerApi for Controller {
        fn write(&self, cmd: MetadataCommand) -> BoxFuture<'_, Result<WriteOutcome, RpcError>> {
            let MetadataCommand::CommitObjects { objects, .. } = cmd else {
                panic!("the writer only commits objects");
            };
            let streams = objects
                .iter()
                .map(|o| o.ranges.iter().map(|r| r.stream).collect())
                .collect();
            self.commits.lock().unwrap().push(streams);
            let replies = objects
                .iter()
                .map(|o| CommandReply::ObjectCommitted {
                    object: None,
                    verdicts: o
                        .ranges
                        .iter()
                        .map(|r| {
                            if r.stream == self.fenced {
                                RangeVerdict::Fenced
                            } else {
                                RangeVerdict::Accepted
                            }
                        })
                        .collect(),
                })
                .collect();
            Box::pin(async move {
                Ok(WriteOutcome {
                    version: 1,
                    reply: CommandReply::ObjectsCommitted(replies),
                })
            })
        }

        fn deltas_since(
            &self,
            _version: u64,
            _wait: Duration,
        ) -> BoxFuture<'_, Result<MetadataDeltas, RpcError>> {
            Box::pin(std::future::pending())
        }
    }

    async fn batch(
        handle: &WriterHandle,
        stream: u64,
        after: Vec<Arc<Fate>>,
    ) -> (oneshot::Receiver<AckOutcome>, Arc<Fate>) {
        let state = Arc::new(StreamState::new(StreamId(stream), "t".into(), 0, 0, 0));
        state.batch_submitted();
        let (ack, rx) = oneshot::channel();
        let fate = Arc::new(Fate::default());
        let b = PendingBatch {
            stream: state,
            stream_epoch: 0,
            base_offset: 0,
            end_offset: 1,
            record_count: 1,
            max_timestamp: 0,
            bytes: Bytes::from_static(b"x"),
            ack,
            permit: handle.reserve(1).await.unwrap(),
            txn: None,
            fate: fate.clone(),
            after,
        };
        assert!(handle.submit(b).await.is_ok());
        (rx, fate)
    }

    /// Runs: A on `first`, then B on stream 2 that must follow A, then C on
    /// stream 3 that follows nothing. Returns the three outcomes and the
    /// streams of each committed object, commit by commit.
    async fn run(first: u64, fenced: u64) -> (Vec<AckOutcome>, Vec<Vec<Vec<StreamId>>>) {
        let controller = Arc::new(Controller {
            fenced: StreamId(fenced),
            commits: Mutex::new(Vec::new()),
        });
        let cfg = StorageConfig {
            linger: Duration::from_millis(50),
            ..StorageConfig::default()
        };
        let (handle, task) = spawn_writer(
            cfg,
            Arc::new(InMemory::new()),
            controller.clone(),
            WriterIdentity {
                broker: 1,
                broker_epoch: Arc::new(std::sync::atomic::AtomicU64::new(1)),
                key_prefix: String::new(),
            },
            Arc::new(LogCache::new(1 << 20)),
        );
        let (a, fate_a) = batch(&handle, first, Vec::new()).await;
        let (b, _) = batch(&handle, 2, vec![fate_a]).await;
        let (c, _) = batch(&handle, 3, Vec::new()).await;
        let mut outcomes = Vec::new();
        for rx in [a, b, c] {
            outcomes.push(rx.await.unwrap());
        }
        drop(handle);
        task.await.unwrap();
        let commits = controller.commits.lock().unwrap().clone();
        (outcomes, commits)
    }

    #[tokio::test]
    async fn a_batch_commits_after_the_batch_it_follows_and_only_if_that_did() {
        use AckOutcome::*;
        // A commits: B commits too, in a later object and a later commit
        // than A's (never beside A, whose verdict it must wait for).
        let (outcomes, commits) = run(1, 99).await;
        assert_eq!(outcomes, vec![Committed, Committed, Committed]);
        assert_eq!(commits[0], vec![vec![StreamId(1)]]);
        assert_eq!(commits[1], vec![vec![StreamId(2), StreamId(3)]]);
        // A is refused: B fails without being committed; C, in the same
        // object as B, commits.
        let (outcomes, commits) = run(1, 1).await;
        assert_eq!(outcomes, vec![Fenced, Failed, Committed]);
        assert_eq!(commits.len(), 2);
        assert_eq!(commits[1], vec![vec![StreamId(3)]]);
    }
}
