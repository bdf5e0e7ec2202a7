//! Object compaction: rewrites the stream data a broker owns out of the
//! small stream-set objects the writer produced into larger compacted
//! objects (`cso/...`), where each stream's data is contiguous, so that
//! metadata and the object count stay bounded by live data and cold reads
//! of one partition are few sequential GETs. For topics whose
//! `cleanup.policy` includes `compact`, the rewrite also keeps only the
//! latest record of each key (Kafka's log cleaner) and drops tombstones
//! older than `delete.retention.ms`.
//!
//! Each output object is committed as one `CompactObject`: its ranges
//! replace exactly the slices they were read from, or are refused if those
//! changed meanwhile (a trim, another compaction); objects left without a
//! slice are marked and deleted after the grace period like any other.
//! Offsets never move: a rewritten batch keeps its base and last offset.
//!
//! Which slices: never a stream's last slice (the tail, which producer
//! state is rebuilt from). Others are "dirty" while they are in a
//! stream-set object (`sso/`). A plain topic has its dirty slices rewritten
//! on every pass, and runs of many small compacted slices merged again. A
//! compacted topic is cleaned from its first slice up to the first slice
//! newer than `min.compaction.lag.ms` once dirty bytes reach
//! `min.cleanable.dirty.ratio` of that range (or its oldest dirty slice is
//! older than `max.compaction.lag.ms`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt, PutPayload};
use proto::image::{CommandReply, CompactRange, MetadataCommand};
use proto::{BrokerId, MetadataImage, StreamId};
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::{effective_topic_configs, topic_config, topic_config_origin};
use crate::storage::batch;
use crate::storage::object_format::ObjectIndex;
use crate::storage::object_format::ObjectWriter;
use crate::storage::reader::{stream_batches_in, ObjectLocation};
use crate::storage::retention::RetentionPolicy;
use futures::StreamExt;

/// A run of a stream's small compacted slices longer than this is merged.
const MAX_SMALL_CLEAN_SLICES: usize = 16;
/// Plain-topic data that retention drops within this long (or a quarter of
/// `retention.ms`, if less) is not rewritten.
const EXPIRY_MARGIN_MS: i64 = 60_000;

/// Key-based compaction rules of a compacted topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRules {
    /// Tombstones with a timestamp below this are dropped.
    pub drop_tombstones_before_ms: i64,
}

/// One slice to rewrite.
#[derive(Debug, Clone)]
pub struct PlannedSlice {
    pub start: u64,
    pub end: u64,
    pub object: ObjectLocation,
    pub bytes: u64,
}

/// Consecutive slices of one stream that become one slice.
#[derive(Debug, Clone)]
pub struct Run {
    pub stream: StreamId,
    /// The stream's log start: batches wholly below it are dropped.
    pub log_start: u64,
    pub slices: Vec<PlannedSlice>,
    pub keys: Option<KeyRules>,
    /// Key compaction: producer id -> (first offset, marker offset) of its
    /// aborted transactions. Their records never win a key and are dropped.
    pub aborted: HashMap<i64, Vec<(u64, u64)>>,
}

impl Run {
    /// Whether `h` is a data batch of an aborted transaction.
    fn is_aborted(&self, h: &batch::BatchHeader) -> bool {
        if !h.is_transactional() || h.is_control() {
            return false;
        }
        let base = u64::try_from(h.base_offset).unwrap_or(0);
        self.aborted
            .get(&h.producer_id)
            .is_some_and(|v| v.iter().any(|&(first, last)| base >= first && base < last))
    }

    fn start(&self) -> u64 {
        self.slices.first().map_or(0, |s| s.start)
    }
    fn end(&self) -> u64 {
        self.slices.last().map_or(0, |s| s.end)
    }
    fn bytes(&self) -> u64 {
        self.slices.iter().map(|s| s.bytes).sum()
    }
}

/// Budgets of one compaction pass.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Stop planning once this many input bytes are planned.
    pub max_bytes_per_pass: u64,
    /// A compacted object smaller than this counts as small.
    pub target_object_bytes: u64,
}

fn is_dirty_location(o: &ObjectLocation) -> bool {
    !is_compacted_key(&o.key)
}

/// Whether an object key (with or without the cluster's prefix) names an
/// object compaction wrote.
pub fn is_compacted_key(key: &str) -> bool {
    key.starts_with("cso/") || key.contains("/cso/")
}

/// Whether a topic's `cleanup.policy` (its own, or the cluster default)
/// includes `compact`.
pub fn is_compacted_topic(img: &MetadataImage, topic: &proto::image::TopicRecord) -> bool {
    topic_config_origin(img, Some(&topic.configs), "cleanup.policy")
        .is_some_and(|(p, _)| p.split(',').any(|x| x.trim() == "compact"))
}

fn config_i64(configs: &std::collections::BTreeMap<String, String>, key: &str) -> Option<i64> {
    topic_config(Some(configs), key).and_then(|v| v.parse().ok())
}

/// The runs this broker should rewrite now, for the streams it owns.
///
/// A pass reads each input object once, whole: it takes the oldest dirty
/// objects holding this broker's plain streams up to
/// `max_bytes_per_pass` of object size (at least one), and rewrites the
/// runs of slices in them. Compacted topics are planned within the same
/// budget, whole cleanable range by whole cleanable range.
pub fn plan(img: &MetadataImage, me: BrokerId, now_ms: i64, limits: Limits) -> Vec<Run> {
    /// A stream, whether it is key-compacted, the timestamp below which
    /// its data expires too soon to rewrite, and its slices but the last.
    type Planned<'a> = (
        &'a proto::image::StreamRecord,
        bool,
        Option<i64>,
        Vec<(PlannedSlice, bool, i64)>,
    );
    let mut streams: Vec<Planned<'_>> = Vec::new();
    let mut dirty_objects: std::collections::BTreeMap<proto::ObjectId, u64> =
        std::collections::BTreeMap::new();
    for s in img.streams.values().filter(|s| s.owner == Some(me)) {
        let Some(topic) = img.topic_by_id(s.topic) else {
            continue;
        };
        // Every slice but the last, with its object.
        let n = s.slices.len().saturating_sub(1);
        let slices: Vec<(PlannedSlice, bool, i64)> = s
            .slices
            .iter()
            .take(n)
            .filter_map(|(&start, sl)| {
                let o = img.objects.get(&sl.object)?;
                let dirty = !is_compacted_key(&o.key);
                Some((
                    PlannedSlice {
                        start,
                        end: sl.end_offset,
                        object: ObjectLocation::from(o),
                        bytes: sl.bytes,
                    },
                    dirty,
                    sl.max_timestamp,
                ))
            })
            .collect();
        if slices.len() != n || n == 0 {
            continue; // nothing to do, or the view is inconsistent for a moment
        }
        let keyed = is_compacted_topic(img, topic);
        // Data retention drops within the next minute (a quarter of the
        // retention, if less) is not worth a rewrite, and would be gone
        // before a long pass reads it.
        let expires_by = RetentionPolicy::from_configs(
            &effective_topic_configs(img, topic),
            crate::config::TOPIC_CONFIG_DEFAULTS,
        )
        .retention_ms
        .map(|ms| {
            now_ms
                .saturating_sub(ms)
                .saturating_add(EXPIRY_MARGIN_MS.min(ms / 4))
        });
        if !keyed {
            for (sl, dirty, max_ts) in &slices {
                if *dirty && expires_by.is_none_or(|t| *max_ts >= t) {
                    dirty_objects.insert(sl.object.id, sl.object.size);
                }
            }
        }
        streams.push((s, keyed, expires_by, slices));
    }
    let mut chosen = std::collections::BTreeSet::new();
    let mut total = 0u64;
    for (id, size) in dirty_objects {
        if !chosen.is_empty() && total + size > limits.max_bytes_per_pass {
            break;
        }
        total += size;
        chosen.insert(id);
    }
    let mut runs = Vec::new();
    let mut keyed_bytes = 0u64;
    for (s, keyed, expires_by, slices) in streams {
        if keyed {
            if keyed_bytes >= limits.max_bytes_per_pass {
                continue;
            }
            let Some(topic) = img.topic_by_id(s.topic) else {
                continue;
            };
            let configs = effective_topic_configs(img, topic);
            // Never past the last stable offset: an open transaction's
            // outcome decides which of its records survive.
            let uncleanable = s.open_txns.values().min().copied().unwrap_or(u64::MAX);
            let cleanable: Vec<_> = slices
                .iter()
                .take_while(|(sl, _, _)| sl.end <= uncleanable)
                .cloned()
                .collect();
            let mut aborted: HashMap<i64, Vec<(u64, u64)>> = HashMap::new();
            for a in &s.aborted_txns {
                aborted
                    .entry(a.producer_id)
                    .or_default()
                    .push((a.first_offset, a.last_offset));
            }
            for mut r in plan_keyed(s.id, s.start_offset, &cleanable, &configs, now_ms) {
                r.aborted = aborted.clone();
                keyed_bytes += r.bytes();
                runs.push(r);
            }
        } else {
            runs.extend(plan_plain(
                s.id,
                s.start_offset,
                &slices,
                limits,
                &chosen,
                expires_by,
            ));
        }
    }
    runs
}

fn plan_keyed(
    stream: StreamId,
    log_start: u64,
    slices: &[(PlannedSlice, bool, i64)],
    configs: &std::collections::BTreeMap<String, String>,
    now_ms: i64,
) -> Vec<Run> {
    let min_lag = config_i64(configs, "min.compaction.lag.ms").unwrap_or(0);
    let max_lag = config_i64(configs, "max.compaction.lag.ms").unwrap_or(i64::MAX);
    let ratio: f64 = topic_config(Some(configs), "min.cleanable.dirty.ratio")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.5);
    let delete_retention = config_i64(configs, "delete.retention.ms").unwrap_or(86_400_000);
    let cleanable: Vec<&(PlannedSlice, bool, i64)> = slices
        .iter()
        .take_while(|(_, _, max_ts)| *max_ts <= now_ms.saturating_sub(min_lag))
        .collect();
    let total: u64 = cleanable.iter().map(|(s, _, _)| s.bytes).sum();
    let dirty: u64 = cleanable
        .iter()
        .filter(|(_, d, _)| *d)
        .map(|(s, _, _)| s.bytes)
        .sum();
    let oldest_dirty = cleanable
        .iter()
        .filter(|(_, d, _)| *d)
        .map(|(_, _, t)| *t)
        .min();
    let Some(oldest_dirty) = oldest_dirty else {
        return Vec::new();
    };
    let overdue = oldest_dirty < now_ms.saturating_sub(max_lag);
    let ratio_met = total == 0 || dirty as f64 >= ratio * total as f64;
    if !(ratio_met || overdue) {
        return Vec::new();
    }
    vec![Run {
        stream,
        log_start,
        slices: cleanable.iter().map(|(s, _, _)| s.clone()).collect(),
        keys: Some(KeyRules {
            drop_tombstones_before_ms: now_ms.saturating_sub(delete_retention),
        }),
        aborted: HashMap::new(),
    }]
}

fn plan_plain(
    stream: StreamId,
    log_start: u64,
    slices: &[(PlannedSlice, bool, i64)],
    limits: Limits,
    chosen: &std::collections::BTreeSet<proto::ObjectId>,
    expires_by: Option<i64>,
) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut current: Vec<PlannedSlice> = Vec::new();
    let mut current_dirty = false;
    let flush = |current: &mut Vec<PlannedSlice>, dirty: bool, runs: &mut Vec<Run>| {
        let worth = if dirty {
            !current.is_empty()
        } else {
            current.len() > MAX_SMALL_CLEAN_SLICES
        };
        if worth {
            runs.push(Run {
                stream,
                log_start,
                slices: std::mem::take(current),
                keys: None,
                aborted: HashMap::new(),
            });
        }
        current.clear();
    };
    for (slice, dirty, max_ts) in slices {
        if expires_by.is_some_and(|t| *max_ts < t) {
            // Retention drops it soon: left as it is, and it ends a run.
            flush(&mut current, current_dirty, &mut runs);
            continue;
        }
        // A dirty slice in an object this pass does not read is left.
        let dirty = &(*dirty && chosen.contains(&slice.object.id));
        let small_clean = !*dirty
            && !is_dirty_location(&slice.object)
            && slice.object.size < limits.target_object_bytes / 4;
        let kind_matches = current.is_empty() || current_dirty == *dirty;
        if (*dirty || small_clean) && kind_matches {
            current_dirty = *dirty;
            current.push(slice.clone());
        } else {
            flush(&mut current, current_dirty, &mut runs);
            if *dirty || small_clean {
                current_dirty = *dirty;
                current.push(slice.clone());
            }
        }
    }
    flush(&mut current, current_dirty, &mut runs);
    runs
}

/// A 128-bit digest of a record key (two differently seeded SipHashes), so
/// the latest-offset map holds a fixed 24 bytes per key whatever its length.
fn key_digest(key: &[u8]) -> u128 {
    let mut a = std::hash::DefaultHasher::new();
    0u8.hash(&mut a);
    key.hash(&mut a);
    let mut b = std::hash::DefaultHasher::new();
    1u8.hash(&mut b);
    key.hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub objects_committed: u64,
    pub ranges_refused: u64,
    /// Runs left because they changed since the plan or an object of
    /// theirs could not be read.
    pub runs_skipped: u64,
}

/// A compaction output being assembled.
struct Output {
    writer: ObjectWriter,
    ranges: Vec<CompactRange>,
    /// Last stream pushed and the end offset declared for it.
    cursor: Option<(StreamId, u64)>,
}

impl Output {
    fn new(block_bytes: usize) -> Self {
        Output {
            writer: ObjectWriter::new(block_bytes),
            ranges: Vec::new(),
            cursor: None,
        }
    }

    /// Appends one batch of `stream`; returns its size.
    fn push(&mut self, stream: StreamId, run_start: u64, b: &[u8]) -> Result<u64, String> {
        let h = batch::parse_header(b).map_err(|e| e.to_string())?;
        let base = u64::try_from(h.base_offset).map_err(|_| "negative offset".to_string())?;
        let end = u64::try_from(h.last_offset()).map_err(|_| "negative offset".to_string())? + 1;
        // A block must start where the stream's previous one ended: gaps
        // (records dropped by key compaction, or a run after an untouched
        // slice) are covered by the next batch's block.
        let start = match self.cursor {
            Some((s, e)) if s == stream => e,
            _ => run_start.min(base),
        };
        let count = u32::try_from(h.records_count.max(0)).unwrap_or(0);
        self.writer
            .push(stream, start, end, count, b)
            .map_err(|e| e.to_string())?;
        self.cursor = Some((stream, end));
        Ok(b.len() as u64)
    }
}

/// Runs one compaction pass for this broker's streams.
pub async fn compact_once(broker: &Broker, store: &dyn ObjectStore, seq: &AtomicU64) -> PassStats {
    let cfg = &broker.config.storage;
    let limits = Limits {
        max_bytes_per_pass: cfg.compaction_max_bytes_per_pass,
        target_object_bytes: cfg.compaction_target_bytes as u64,
    };
    let now = broker.seams.clock.now_ms();
    let runs = broker
        .metadata
        .read(|img| plan(img, broker.id, now, limits));
    let mut stats = PassStats::default();
    let mut out = Output::new(cfg.block_bytes);
    let mut pacer = Pacer::new(cfg.compaction_read_bytes_per_sec);
    let loaded = load_objects(broker, &runs, limits.max_bytes_per_pass, &mut pacer).await;
    for run in runs {
        // A long pass outlives its plan: a run a trim or another
        // compaction changed since would be refused, and its objects may
        // be deleted already. Nor is one whose object could not be read
        // worth a slice-by-slice retry now.
        let current = broker.metadata.read(|img| run_is_current(img, &run));
        if !current
            || run
                .slices
                .iter()
                .any(|sl| loaded.failed.contains(&sl.object.id))
        {
            stats.runs_skipped += 1;
            continue;
        }
        if let Err(e) = rewrite_run(broker, &run, &mut out, &mut stats, &mut pacer, &loaded).await {
            // Batches of the run already appended stay in the object
            // unreferenced (no range names them); the run is retried on
            // the next pass.
            warn!(stream_id = run.stream.0, error = %e, "compacting a stream failed; retried next pass");
        }
        if out.writer.len_bytes() >= cfg.compaction_target_bytes {
            let full = std::mem::replace(&mut out, Output::new(cfg.block_bytes));
            commit_output(broker, store, seq, full, &mut stats).await;
        }
    }
    if !out.ranges.is_empty() {
        commit_output(broker, store, seq, out, &mut stats).await;
    }
    if stats.objects_committed > 0 {
        metrics::counter!("oxbow_compaction_bytes_read_total").increment(stats.bytes_read);
        metrics::counter!("oxbow_compaction_bytes_written_total").increment(stats.bytes_written);
        metrics::counter!("oxbow_compaction_objects_total").increment(stats.objects_committed);
        info!(
            objects = stats.objects_committed,
            read = stats.bytes_read,
            written = stats.bytes_written,
            refused = stats.ranges_refused,
            skipped = stats.runs_skipped,
            "compacted"
        );
    }
    stats
}

/// Keeps a pass's reads under `compaction_read_bytes_per_sec`, so that
/// compaction does not take the store bandwidth producers and readers need.
struct Pacer {
    started: tokio::time::Instant,
    bytes: u64,
    per_sec: u64,
}

impl Pacer {
    fn new(per_sec: u64) -> Self {
        Pacer {
            started: tokio::time::Instant::now(),
            bytes: 0,
            per_sec,
        }
    }

    /// Counts `n` bytes read and waits until the pass is within its rate.
    async fn read(&mut self, n: u64) {
        self.bytes += n;
        if self.per_sec == 0 {
            return;
        }
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / self.per_sec as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Objects a pass read whole, by id, with their indexes, and those it
/// could not read.
#[derive(Default)]
struct Loaded {
    objects: HashMap<proto::ObjectId, (Bytes, std::sync::Arc<ObjectIndex>)>,
    failed: std::collections::HashSet<proto::ObjectId>,
}

/// Whether the object is committed and not marked for deletion.
fn is_committed(img: &MetadataImage, id: proto::ObjectId) -> bool {
    img.objects
        .get(&id)
        .is_some_and(|o| o.state == proto::image::ObjectState::Committed)
}

/// Whether each slice of `run` is still in its stream's map as planned.
fn run_is_current(img: &MetadataImage, run: &Run) -> bool {
    let Some(s) = img.streams.get(&run.stream) else {
        return false;
    };
    run.slices.iter().all(|p| {
        s.slices
            .get(&p.start)
            .is_some_and(|sl| sl.end_offset == p.end && sl.object == p.object.id)
    })
}

/// Reads every dirty object the runs use, whole, once (a few at a time),
/// up to twice the pass budget; slices in other objects are read alone.
async fn load_objects(broker: &Broker, runs: &[Run], budget: u64, pacer: &mut Pacer) -> Loaded {
    let mut wanted: std::collections::BTreeMap<proto::ObjectId, ObjectLocation> =
        std::collections::BTreeMap::new();
    for s in runs.iter().flat_map(|r| &r.slices) {
        if is_dirty_location(&s.object) {
            wanted
                .entry(s.object.id)
                .or_insert_with(|| s.object.clone());
        }
    }
    // Objects marked since the plan are about to go.
    broker
        .metadata
        .read(|img| wanted.retain(|id, _| is_committed(img, *id)));
    let mut total = 0u64;
    let chosen: Vec<ObjectLocation> = wanted
        .into_values()
        .take_while(|o| {
            total += o.size;
            total <= budget.saturating_mul(2)
        })
        .collect();
    let reader = &broker.reader;
    // Consumed one by one, so the pacer's waits hold back further reads.
    let mut results = futures::stream::iter(chosen)
        .map(|o| async move {
            let r = reader.read_whole_uncached(&o).await;
            (o, r)
        })
        .buffer_unordered(4);
    let mut loaded = Loaded::default();
    while let Some((o, r)) = results.next().await {
        match r {
            Ok((bytes, index)) => {
                pacer.read(bytes.len() as u64).await;
                loaded.objects.insert(o.id, (bytes, index));
            }
            Err(e) => {
                // An object trimmed and deleted since the plan is no news.
                if broker.metadata.read(|img| is_committed(img, o.id)) {
                    warn!(key = o.key, error = %e, "compaction could not read an object");
                }
                loaded.failed.insert(o.id);
            }
        }
    }
    loaded
}

/// The batches of one planned slice: from its object if the pass loaded
/// it, else with one ranged GET (not cached).
async fn read_slice(
    broker: &Broker,
    run: &Run,
    slice: &PlannedSlice,
    pacer: &mut Pacer,
    loaded: &Loaded,
) -> Result<Vec<Bytes>, String> {
    if let Some((bytes, index)) = loaded.objects.get(&slice.object.id) {
        return stream_batches_in(bytes, 0, index, run.stream, slice.start, slice.end);
    }
    let batches = broker
        .reader
        .read_range_uncached(&slice.object, run.stream, slice.start, slice.end)
        .await
        .map_err(|e| e.to_string())?;
    pacer
        .read(batches.iter().map(|b| b.len() as u64).sum())
        .await;
    Ok(batches)
}

/// Reads a run and appends what survives to `out`.
async fn rewrite_run(
    broker: &Broker,
    run: &Run,
    out: &mut Output,
    stats: &mut PassStats,
    pacer: &mut Pacer,
    loaded: &Loaded,
) -> Result<(), String> {
    let latest = match run.keys {
        Some(_) => Some(latest_offsets(broker, run, stats, pacer, loaded).await?),
        None => None,
    };
    let mut written = 0u64;
    for slice in &run.slices {
        let batches = read_slice(broker, run, slice, pacer, loaded).await?;
        if latest.is_none() {
            stats.bytes_read += batches.iter().map(|b| b.len() as u64).sum::<u64>();
        }
        for b in batches {
            let h = batch::parse_header(&b).map_err(|e| e.to_string())?;
            if u64::try_from(h.last_offset()).unwrap_or(0) < run.log_start {
                continue;
            }
            let kept = match (&latest, run.keys) {
                (Some(latest), Some(rules)) => {
                    match filter_batch(&b, &latest.keys, rules, run.is_aborted(&h)) {
                        Filtered::Whole => b,
                        // A producer's last batch stays, empty, so that its
                        // sequence survives (Kafka's cleaner does the same).
                        Filtered::Empty
                            if h.producer_id >= 0
                                && latest.producers.get(&h.producer_id) == Some(&h.base_offset) =>
                        {
                            Bytes::from(batch::retain_records(&b, &[]))
                        }
                        Filtered::Empty => continue,
                        Filtered::Rebuilt(v) => Bytes::from(v),
                    }
                }
                _ => b,
            };
            written += out.push(run.stream, run.start(), &kept)?;
        }
    }
    out.ranges.push(CompactRange {
        stream: run.stream,
        start_offset: run.start(),
        end_offset: run.end(),
        bytes: written,
    });
    Ok(())
}

/// What the first pass over a run learns.
struct Latest {
    /// Key digest → offset of its last record.
    keys: HashMap<u128, i64>,
    /// Producer id → base offset of its last batch.
    producers: HashMap<i64, i64>,
}

/// The last offset of every key in a run, and each producer's last batch.
/// Bounded: a run with more keys than `compaction_max_keys` is not
/// key-compacted this pass.
async fn latest_offsets(
    broker: &Broker,
    run: &Run,
    stats: &mut PassStats,
    pacer: &mut Pacer,
    loaded: &Loaded,
) -> Result<Latest, String> {
    let max_keys = broker.config.storage.compaction_max_keys;
    let mut latest: HashMap<u128, i64> = HashMap::new();
    let mut producers: HashMap<i64, i64> = HashMap::new();
    for slice in &run.slices {
        let batches = read_slice(broker, run, slice, pacer, loaded).await?;
        for b in batches {
            stats.bytes_read += b.len() as u64;
            if let Ok(h) = batch::parse_header(&b) {
                if h.producer_id >= 0 {
                    producers.insert(h.producer_id, h.base_offset);
                }
                if run.is_aborted(&h) {
                    continue; // its records never count as a key's latest
                }
            }
            let Some(records) = batch::record_spans(&b) else {
                continue;
            };
            for r in records {
                if let Some(k) = r.key {
                    latest.insert(key_digest(&b[k]), r.offset);
                }
            }
            if latest.len() > max_keys || producers.len() > max_keys {
                return Err(format!(
                    "more than {max_keys} keys (storage.compaction_max_keys)"
                ));
            }
        }
    }
    Ok(Latest {
        keys: latest,
        producers,
    })
}

enum Filtered {
    Whole,
    Empty,
    Rebuilt(Vec<u8>),
}

/// Keeps the records of `b` that are the latest of their key and not an
/// expired tombstone. Compressed and control batches, and records without
/// a key, are kept; nothing of an aborted transaction's batch is.
fn filter_batch(b: &[u8], latest: &HashMap<u128, i64>, rules: KeyRules, aborted: bool) -> Filtered {
    if aborted {
        return Filtered::Empty;
    }
    let Some(records) = batch::record_spans(b) else {
        return Filtered::Whole;
    };
    let keep: Vec<std::ops::Range<usize>> = records
        .iter()
        .filter(|r| match &r.key {
            None => true,
            Some(k) => {
                latest.get(&key_digest(&b[k.clone()])) == Some(&r.offset)
                    && !(r.tombstone && r.timestamp < rules.drop_tombstones_before_ms)
            }
        })
        .map(|r| r.range.clone())
        .collect();
    if keep.len() == records.len() {
        Filtered::Whole
    } else if keep.is_empty() {
        Filtered::Empty
    } else {
        Filtered::Rebuilt(batch::retain_records(b, &keep))
    }
}

/// Uploads and commits one output. A refused object is deleted again; an
/// object whose commit failed is left (it may have been applied), for the
/// orphan collector once this incarnation ends.
async fn commit_output(
    broker: &Broker,
    store: &dyn ObjectStore,
    seq: &AtomicU64,
    out: Output,
    stats: &mut PassStats,
) {
    let epoch = broker.current_epoch();
    let n = seq.fetch_add(1, Ordering::Relaxed);
    let key = format!("{}cso/{}/{}/{n:016}", broker.key_prefix, broker.id, epoch);
    let ranges = out.ranges;
    let (bytes, _) = out.writer.finish();
    let size = bytes.len() as u64;
    let path = Path::from(key.clone());
    if let Err(e) = store.put(&path, PutPayload::from_bytes(bytes)).await {
        warn!(key, error = %e, "uploading a compacted object failed");
        return;
    }
    metrics::counter!("oxbow_object_puts_total").increment(1);
    let reply = broker
        .controller
        .write(MetadataCommand::CompactObject {
            broker: broker.id,
            broker_epoch: epoch,
            key: key.clone(),
            size,
            ranges: ranges.clone(),
            now_ms: broker.seams.clock.now_ms(),
        })
        .await;
    match reply.map(|r| r.reply) {
        Ok(CommandReply::Compacted {
            object: Some(_),
            accepted,
        }) => {
            stats.objects_committed += 1;
            stats.bytes_written += size;
            stats.ranges_refused += accepted.iter().filter(|a| !**a).count() as u64;
        }
        Ok(CommandReply::Compacted { object: None, .. } | CommandReply::StaleBrokerEpoch) => {
            stats.ranges_refused += ranges.len() as u64;
            match store.delete(&path).await {
                Ok(()) => metrics::counter!("oxbow_object_deletes_total").increment(1),
                Err(e) => warn!(key, error = %e, "deleting a refused compacted object failed"),
            }
        }
        Ok(other) => warn!(key, reply = ?other, "unexpected reply to a compaction commit"),
        Err(e) => warn!(key, error = %e, "committing a compacted object failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::image::{CommitRange, MetadataCommand};
    use proto::ObjectId;
    use std::collections::BTreeMap;

    fn image(configs: &[(&str, &str)], objects: &[(&str, u64, u64, i64)]) -> MetadataImage {
        let mut img = MetadataImage::default();
        img.apply(&MetadataCommand::Bootstrap {
            cluster_id: "c".into(),
        });
        img.apply(&MetadataCommand::RegisterBroker {
            id: 1,
            endpoint: proto::image::BrokerEndpoint {
                host: "h".into(),
                port: 1,
            },
            rack: None,
        });
        img.apply(&MetadataCommand::CreateTopic {
            id: uuid::Uuid::from_u128(1),
            name: "t".into(),
            partitions: 1,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            internal: false,
        });
        for (key, start, end, ts) in objects {
            img.apply(&MetadataCommand::CommitObject {
                broker: 1,
                broker_epoch: 1,
                key: key.to_string(),
                size: 1000,
                ranges: vec![CommitRange {
                    stream: StreamId(0),
                    stream_epoch: 1,
                    start_offset: *start,
                    end_offset: *end,
                    max_timestamp: *ts,
                    bytes: 100,
                    txn_events: Vec::new(),
                }],
            });
        }
        img
    }

    const LIMITS: Limits = Limits {
        max_bytes_per_pass: 1 << 30,
        target_object_bytes: 64 << 20,
    };

    fn spans(runs: &[Run]) -> Vec<(u64, u64)> {
        runs.iter().map(|r| (r.start(), r.end())).collect()
    }

    #[test]
    fn plain_topics_rewrite_dirty_slices_but_never_the_tail() {
        let img = image(
            &[],
            &[
                ("sso/1/1/1", 0, 10, 0),
                ("sso/1/1/2", 10, 20, 0),
                ("cso/1/1/3", 20, 30, 0),
                ("sso/1/1/4", 30, 40, 0),
                ("sso/1/1/5", 40, 50, 0),
            ],
        );
        let runs = plan(&img, 1, 0, LIMITS);
        // [40, 50) is the tail; the small compacted slice alone is no run.
        assert_eq!(spans(&runs), vec![(0, 20), (30, 40)]);
        assert!(runs.iter().all(|r| r.keys.is_none()));
        // Another broker plans nothing for streams it does not own.
        assert!(plan(&img, 2, 0, LIMITS).is_empty());
        // The budget takes the oldest objects (at least one): a pass reads
        // each object it uses once, whole.
        let tight = Limits {
            max_bytes_per_pass: 1,
            ..LIMITS
        };
        assert_eq!(spans(&plan(&img, 1, 0, tight)), vec![(0, 10)]);
        let two = Limits {
            max_bytes_per_pass: 2000,
            ..LIMITS
        };
        assert_eq!(spans(&plan(&img, 1, 0, two)), vec![(0, 20)]);
    }

    #[test]
    fn data_retention_drops_soon_is_not_rewritten() {
        let now = 1_000_000;
        // Expires once older than 120 s: at 880,000; within a quarter of
        // that (30 s) of now, anything older than 910,000.
        let img = image(
            &[("retention.ms", "120000")],
            &[
                ("sso/1/1/1", 0, 10, 900_000),
                ("sso/1/1/2", 10, 20, 909_999),
                ("sso/1/1/3", 20, 30, 910_000),
                ("sso/1/1/4", 30, 40, 960_000),
                ("sso/1/1/5", 40, 50, 970_000),
            ],
        );
        assert_eq!(spans(&plan(&img, 1, now, LIMITS)), vec![(20, 40)]);
        // A long retention: a minute of margin.
        let img = image(
            &[("retention.ms", "3600000")],
            &[
                ("sso/1/1/1", 0, 10, now - 3_600_000 + 59_999),
                ("sso/1/1/2", 10, 20, now - 3_600_000 + 60_000),
                ("sso/1/1/3", 20, 30, now),
            ],
        );
        assert_eq!(spans(&plan(&img, 1, now, LIMITS)), vec![(10, 20)]);
        // Without retention everything but the tail is rewritten.
        let img = image(
            &[("retention.ms", "-1")],
            &[
                ("sso/1/1/1", 0, 10, 900_000),
                ("sso/1/1/2", 10, 20, 939_999),
                ("sso/1/1/3", 20, 30, 950_000),
            ],
        );
        assert_eq!(spans(&plan(&img, 1, now, LIMITS)), vec![(0, 20)]);
    }

    #[test]
    fn many_small_compacted_slices_are_merged() {
        let objects: Vec<(String, u64, u64, i64)> = (0..=MAX_SMALL_CLEAN_SLICES as u64 + 1)
            .map(|i| (format!("cso/1/1/{i}"), i * 10, i * 10 + 10, 0))
            .collect();
        let refs: Vec<(&str, u64, u64, i64)> = objects
            .iter()
            .map(|(k, a, b, t)| (k.as_str(), *a, *b, *t))
            .collect();
        let img = image(&[], &refs);
        let runs = plan(&img, 1, 0, LIMITS);
        assert_eq!(
            spans(&runs),
            vec![(0, (MAX_SMALL_CLEAN_SLICES as u64 + 1) * 10)]
        );
        // Fewer of them are left alone.
        let img = image(&[], &refs[..MAX_SMALL_CLEAN_SLICES]);
        assert!(plan(&img, 1, 0, LIMITS).is_empty());
    }

    #[test]
    fn compacted_topics_follow_lag_and_dirty_ratio() {
        let compact = [
            ("cleanup.policy", "compact"),
            ("min.compaction.lag.ms", "100"),
            ("delete.retention.ms", "50"),
        ];
        let img = image(
            &compact,
            &[
                ("cso/1/1/1", 0, 10, 10),
                ("sso/1/1/2", 10, 20, 20),
                ("sso/1/1/3", 20, 30, 500),
                ("sso/1/1/4", 30, 40, 30),
            ],
        );
        // At 1000 all but the tail are past the lag: clean [0, 30).
        let runs = plan(&img, 1, 1000, LIMITS);
        assert_eq!(spans(&runs), vec![(0, 30)]);
        assert_eq!(
            runs[0].keys,
            Some(KeyRules {
                drop_tombstones_before_ms: 950
            })
        );
        // An open transaction from offset 25 stops cleaning at the slice
        // before it (the last stable offset); its aborted ones are passed on.
        let mut open = img.clone();
        let s = open.streams.get_mut(&StreamId(0)).expect("stream");
        s.open_txns.insert(9, 25);
        s.aborted_txns.push_back(proto::image::AbortedTxnRecord {
            producer_id: 4,
            first_offset: 2,
            last_offset: 5,
        });
        let runs = plan(&open, 1, 1000, LIMITS);
        assert_eq!(spans(&runs), vec![(0, 20)]);
        assert_eq!(runs[0].aborted.get(&4), Some(&vec![(2, 5)]));
        // At 550 the slice with timestamp 500 is too new: [0, 20) is half
        // dirty, which meets the default ratio.
        assert_eq!(spans(&plan(&img, 1, 550, LIMITS)), vec![(0, 20)]);
        // A ratio of 0.9 is not met; an overdue dirty slice forces it.
        let mut strict = compact.to_vec();
        strict.push(("min.cleanable.dirty.ratio", "0.9"));
        let one_third_dirty = [
            ("cso/1/1/1", 0, 10, 10),
            ("sso/1/1/2", 10, 20, 20),
            ("sso/1/1/4", 20, 30, 30),
        ];
        assert!(plan(&image(&strict, &one_third_dirty), 1, 550, LIMITS).is_empty());
        strict.push(("max.compaction.lag.ms", "200"));
        assert_eq!(
            spans(&plan(&image(&strict, &one_third_dirty), 1, 550, LIMITS)),
            vec![(0, 20)]
        );
        // Nothing dirty: nothing to do.
        let clean = image(
            &compact,
            &[("cso/1/1/1", 0, 10, 10), ("sso/1/1/2", 10, 20, 20)],
        );
        assert!(plan(&clean, 1, 1000, LIMITS).is_empty());
        let _ = ObjectId(0);
    }

    #[tokio::test]
    async fn the_pacer_holds_reads_to_their_rate() {
        let mut unlimited = Pacer::new(0);
        unlimited.read(u64::MAX / 2).await; // returns at once
        let mut p = Pacer::new(1_000_000);
        p.read(50_000).await;
        p.read(50_000).await;
        // 100 KB at 1 MB/s: at least 100 ms (a sleep never ends early).
        assert!(p.started.elapsed() >= std::time::Duration::from_millis(100));
    }

    #[test]
    fn key_filter_keeps_the_latest_value_and_fresh_tombstones() {
        let b = batch::build_test_batch(
            0,
            -1,
            -1,
            -1,
            &[
                (Some(b"a"), Some(b"1")),
                (Some(b"b"), Some(b"2")),
                (Some(b"a"), Some(b"3")),
                (Some(b"c"), None),
                (None, Some(b"no key")),
            ],
        );
        let mut latest = HashMap::new();
        for (k, o) in [(&b"a"[..], 2), (b"b", 9), (b"c", 3)] {
            latest.insert(key_digest(k), o);
        }
        let ts = batch::parse_header(&b).unwrap().base_timestamp;
        let offsets = |f: Filtered| match f {
            Filtered::Rebuilt(v) => batch::record_spans(&v)
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect::<Vec<_>>(),
            Filtered::Whole => vec![-1],
            Filtered::Empty => vec![],
        };
        // The tombstone (offset 3, timestamp ts + 3) is fresh at ts.
        let fresh = KeyRules {
            drop_tombstones_before_ms: ts,
        };
        assert_eq!(
            offsets(filter_batch(&b, &latest, fresh, false)),
            vec![2, 3, 4]
        );
        assert!(
            offsets(filter_batch(&b, &latest, fresh, true)).is_empty(),
            "an aborted transaction's batch keeps nothing"
        );
        let expired = KeyRules {
            drop_tombstones_before_ms: ts + 100,
        };
        assert_eq!(
            offsets(filter_batch(&b, &latest, expired, false)),
            vec![2, 4]
        );
        assert_ne!(key_digest(b"a"), key_digest(b"b"));
    }
}
