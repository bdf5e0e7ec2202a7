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
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use proto::image::{CommandReply, CommitRange, MetadataCommand, RangeVerdict};
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
    size: u64,
    ranges: Vec<CommitRange>,
    /// For each range, the batches it covers.
    batches: Vec<Vec<PendingBatch>>,
    upload: JoinHandle<bool>,
}

pub struct WriterIdentity {
    pub broker: BrokerId,
    pub broker_epoch: u64,
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
    let committer = tokio::spawn(commit_loop(
        sealed_rx,
        controller,
        identity.broker,
        identity.broker_epoch,
        cache,
        cfg.max_attempts,
    ));
    let task = tokio::spawn(async move {
        gather_loop(cfg, store, identity, rx, sealed_tx).await;
        let _ = committer.await;
    });
    (handle, task)
}

async fn gather_loop(
    cfg: StorageConfig,
    store: Arc<dyn ObjectStore>,
    identity: WriterIdentity,
    mut rx: mpsc::Receiver<PendingBatch>,
    sealed_tx: mpsc::Sender<SealedObject>,
) {
    let mut buffer: Vec<PendingBatch> = Vec::new();
    let mut buffered = 0usize;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut seq: u64 = 0;
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let seal_now = tokio::select! {
            msg = rx.recv() => match msg {
                Some(b) => {
                    buffered += b.bytes.len();
                    buffer.push(b);
                    if deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + cfg.linger);
                    }
                    buffered >= cfg.flush_bytes
                }
                None => {
                    if !buffer.is_empty() {
                        let obj = seal(&cfg, &store, &identity, seq, std::mem::take(&mut buffer));
                        let _ = sealed_tx.send(obj).await;
                    }
                    return;
                }
            },
            _ = sleep => true,
        };
        if seal_now && !buffer.is_empty() {
            let obj = seal(&cfg, &store, &identity, seq, std::mem::take(&mut buffer));
            seq += 1;
            buffered = 0;
            deadline = None;
            if sealed_tx.send(obj).await.is_err() {
                return;
            }
        }
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
    for b in batches {
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
                groups.last_mut().expect("a group per range").push(b);
            }
            _ => {
                ranges.push(CommitRange {
                    stream: b.stream.stream,
                    stream_epoch: b.stream_epoch,
                    start_offset: b.base_offset,
                    end_offset: b.end_offset,
                    max_timestamp: b.max_timestamp,
                });
                groups.push(vec![b]);
            }
        }
    }
    let (bytes, _index) = writer.finish();
    let key = format!(
        "{}sso/{}/{}/{:016}",
        identity.key_prefix, identity.broker, identity.broker_epoch, seq
    );
    let size = bytes.len() as u64;
    let upload = tokio::spawn(put_with_retries(
        store.clone(),
        Path::from(key.clone()),
        bytes,
        cfg.max_attempts,
    ));
    SealedObject {
        key,
        size,
        ranges,
        batches: groups,
        upload,
    }
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

async fn commit_loop(
    mut sealed_rx: mpsc::Receiver<SealedObject>,
    controller: Arc<dyn ControllerApi>,
    broker: BrokerId,
    broker_epoch: u64,
    cache: Arc<LogCache>,
    max_attempts: u32,
) {
    while let Some(obj) = sealed_rx.recv().await {
        let uploaded = obj.upload.await.unwrap_or(false);
        if !uploaded {
            fail_all(obj.batches, AckOutcome::Failed);
            continue;
        }
        let cmd = MetadataCommand::CommitObject {
            broker,
            broker_epoch,
            key: obj.key.clone(),
            size: obj.size,
            ranges: obj.ranges.clone(),
        };
        let verdicts = match commit_with_retries(&*controller, cmd, max_attempts).await {
            Some(v) => v,
            None => {
                fail_all(obj.batches, AckOutcome::Failed);
                continue;
            }
        };
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
            publish(&cache, range.stream, batches, outcome);
        }
    }
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
    max_attempts: u32,
) -> Option<Vec<RangeVerdict>> {
    let n_ranges = match &cmd {
        MetadataCommand::CommitObject { ranges, .. } => ranges.len(),
        _ => 0,
    };
    for attempt in 0..max_attempts {
        let started = Instant::now();
        match controller.write(cmd.clone()).await {
            Ok(outcome) => {
                metrics::histogram!("oxbow_controller_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                return match outcome.reply {
                    CommandReply::ObjectCommitted { verdicts, .. } => Some(verdicts),
                    CommandReply::StaleBrokerEpoch => Some(vec![RangeVerdict::Fenced; n_ranges]),
                    other => {
                        warn!(?other, "unexpected reply to an object commit");
                        None
                    }
                };
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
