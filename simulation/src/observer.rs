//! The metadata observer: a client that follows every command the controller
//! quorum commits, from the first, replays them into its own image, and
//! checks the ownership invariants as each commit is applied. It also carries
//! out the schedule's reassignments (a `MoveStream`, as
//! AlterPartitionReassignments proposes), and at the end compares the final
//! metadata with what the object store holds.
//!
//! Invariants:
//! - a range is accepted only from the stream's owner, at the stream's
//!   current epoch, starting at its committed end;
//! - at most one broker gets ranges accepted at one stream epoch;
//! - a stream's epoch and committed end never go backwards;
//! - every object the metadata references is in the store;
//! - once faults have stopped long enough, no object in the store is left
//!   unreferenced past the orphan collector's age, and no object marked for
//!   deletion outlives its grace period by much.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use broker::controller_client::{RemoteController, RemoteControllerConfig};
use broker::lifecycle::epoch_ended;
use broker::storage::writer::parse_object_key;
use proto::image::{CommandReply, MetadataCommand, ObjectState, RangeVerdict};
use proto::rpc::{ControllerApi, MetadataDeltas};
use proto::seams::Clock;
use proto::{BrokerId, MetadataImage, StreamId};

use crate::net::TurmoilNet;
use crate::seams::{SimClock, SIM_EPOCH_MS};
use crate::store::SharedStore;

/// What the observer found, and the reassignments asked of it.
#[derive(Debug, Default)]
pub struct ObserverLog {
    pub violations: Vec<String>,
    /// Commands replayed one by one (each checked).
    pub commands: u64,
    /// Times the observer fell behind and got a whole image instead.
    pub snapshots: u64,
    /// Compacted objects committed (`CompactObject` accepted).
    pub compactions: u64,
    /// Trims (retention) that moved a stream's start offset.
    pub trims: u64,
    /// Reassignments waiting: (partition of the workload topic, target broker).
    pub moves: VecDeque<(u32, u32)>,
    pub moves_done: u64,
    /// Objects in the store at the final check, and how many were referenced.
    pub final_objects: usize,
    pub final_referenced: usize,
    /// Unreferenced uploads of live broker incarnations at the end, kept
    /// because their commit may still come.
    pub kept_live_uploads: usize,
}

pub type SharedObserver = Rc<RefCell<ObserverLog>>;

/// When the store may be compared with the metadata, and how old an object
/// must be before it counts as left behind.
#[derive(Debug, Clone)]
pub struct ObserverPlan {
    pub controllers: Vec<String>,
    pub topic: String,
    /// The brokers' object key prefix.
    pub key_prefix: String,
    /// The final check runs at this simulated time.
    pub check_at: Duration,
    /// An unreferenced object older than this at the check is a leak.
    pub orphan_bound: Duration,
    /// A marked object whose mark is older than this at the check should
    /// be gone from the store.
    pub marked_bound: Duration,
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Follows the metadata until `plan.check_at`, then checks the store.
pub async fn observe(plan: ObserverPlan, store: Arc<SharedStore>, log: SharedObserver) {
    let remote = match RemoteController::new(
        plan.controllers.clone(),
        RemoteControllerConfig::default(),
        Arc::new(TurmoilNet),
    ) {
        Ok(r) => r,
        Err(e) => {
            log.borrow_mut()
                .violations
                .push(format!("observer: cannot reach the controllers: {e}"));
            return;
        }
    };
    let mut replay = Replay::default();
    while now() < plan.check_at {
        let next_move = log.borrow_mut().moves.pop_front();
        if let Some((partition, to)) = next_move {
            reassign(&remote, &replay.image, &plan.topic, partition, to, &log).await;
        }
        pull(&remote, &mut replay, &log, Duration::from_millis(500)).await;
    }
    // Catch up with everything committed, then compare with the store.
    let deadline = now() + Duration::from_secs(20);
    loop {
        match remote.deltas_since(replay.version, Duration::ZERO).await {
            Ok(MetadataDeltas::Deltas(d)) if d.is_empty() => break,
            Ok(update) => replay.apply_update(update, &log),
            Err(_) if now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => {
                log.borrow_mut().violations.push(format!(
                    "observer: the controllers did not answer after faults stopped: {e}"
                ));
                return;
            }
        }
    }
    check_store(&plan, &replay.image, &store, &log);
}

async fn pull(
    remote: &RemoteController,
    replay: &mut Replay,
    log: &SharedObserver,
    wait: Duration,
) {
    match remote.deltas_since(replay.version, wait).await {
        Ok(update) => replay.apply_update(update, log),
        Err(e) => {
            tracing::debug!(error = %e, "observer: deltas failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn reassign(
    remote: &RemoteController,
    image: &MetadataImage,
    topic: &str,
    partition: u32,
    to: u32,
    log: &SharedObserver,
) {
    let Some(stream) = image.stream_of(topic, partition as i32).map(|s| s.id) else {
        return;
    };
    let to: BrokerId = to as i32;
    if image.brokers.get(&to).is_none_or(|b| b.fenced) {
        return;
    }
    match remote
        .write(MetadataCommand::MoveStream { stream, to })
        .await
    {
        Ok(_) => log.borrow_mut().moves_done += 1,
        Err(e) => tracing::debug!(error = %e, "observer: reassignment failed"),
    }
}

/// The observer's image and what it remembers about accepted commits.
#[derive(Default)]
struct Replay {
    image: MetadataImage,
    version: u64,
    /// The broker whose ranges were accepted at each stream epoch.
    accepted_at: BTreeMap<(StreamId, u64), BrokerId>,
}

impl Replay {
    fn apply_update(&mut self, update: MetadataDeltas, log: &SharedObserver) {
        match update {
            MetadataDeltas::Deltas(deltas) => {
                let mut log = log.borrow_mut();
                for (version, cmd) in deltas {
                    if version <= self.version {
                        continue;
                    }
                    self.version = version;
                    log.commands += 1;
                    let objects_before = self.image.next_object_id;
                    let starts_before = self.starts();
                    let found = self.apply(&cmd);
                    log.trims += self
                        .starts()
                        .iter()
                        .filter(|(id, start)| starts_before.get(id).is_some_and(|b| b < start))
                        .count() as u64;
                    if matches!(cmd, MetadataCommand::CompactObject { .. })
                        && self.image.next_object_id > objects_before
                    {
                        log.compactions += 1;
                    }
                    log.violations.extend(
                        found
                            .into_iter()
                            .map(|v| format!("at version {version}: {v}")),
                    );
                }
            }
            MetadataDeltas::Snapshot { version, image } => {
                if version > self.version {
                    self.version = version;
                    self.image = *image;
                    log.borrow_mut().snapshots += 1;
                }
            }
        }
    }

    /// Applies one command, checking it; returns what it violated.
    fn apply(&mut self, cmd: &MetadataCommand) -> Vec<String> {
        match cmd {
            MetadataCommand::CommitObject {
                broker,
                broker_epoch,
                key,
                size,
                ranges,
            } => self.commit(*broker, *broker_epoch, key, *size, ranges),
            // Judged exactly as that many CommitObjects.
            MetadataCommand::CommitObjects {
                broker,
                broker_epoch,
                objects,
            } => objects
                .iter()
                .flat_map(|o| self.commit(*broker, *broker_epoch, &o.key, o.size, &o.ranges))
                .collect(),
            other => {
                let before = self.stream_marks();
                self.image.apply(other);
                let mut found = self.monotonic(&before);
                if matches!(
                    other,
                    MetadataCommand::CompactObject { .. }
                        | MetadataCommand::TrimStream { .. }
                        | MetadataCommand::TrimStreams { .. }
                ) {
                    found.extend(self.covered());
                }
                found
            }
        }
    }

    /// Every offset from a stream's start to its end is in exactly one
    /// slice, and every slice's object is committed: what a compaction or
    /// trim leaves must still be readable.
    fn covered(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.image.streams.values() {
            if s.start_offset >= s.end_offset {
                continue;
            }
            let mut next: Option<u64> = None;
            for (&start, sl) in &s.slices {
                let ok = match next {
                    None => start <= s.start_offset,
                    Some(n) => start == n,
                };
                if !ok || sl.end_offset <= start {
                    out.push(format!(
                        "stream {}: slice [{start}, {}) breaks the map (expected {next:?}, start {})",
                        s.id.0, sl.end_offset, s.start_offset
                    ));
                }
                if self
                    .image
                    .objects
                    .get(&sl.object)
                    .is_none_or(|o| o.state != proto::image::ObjectState::Committed)
                {
                    out.push(format!(
                        "stream {}: slice at {start} names object {} that is not committed",
                        s.id.0, sl.object.0
                    ));
                }
                next = Some(sl.end_offset);
            }
            if next != Some(s.end_offset) {
                out.push(format!(
                    "stream {}: slices end at {next:?}, the stream at {}",
                    s.id.0, s.end_offset
                ));
            }
        }
        out
    }

    fn starts(&self) -> BTreeMap<StreamId, u64> {
        self.image
            .streams
            .values()
            .map(|s| (s.id, s.start_offset))
            .collect()
    }

    fn stream_marks(&self) -> BTreeMap<StreamId, (u64, u64)> {
        self.image
            .streams
            .values()
            .map(|s| (s.id, (s.epoch, s.end_offset)))
            .collect()
    }

    /// Epochs and committed ends never go backwards.
    fn monotonic(&self, before: &BTreeMap<StreamId, (u64, u64)>) -> Vec<String> {
        let mut out = Vec::new();
        for (id, (epoch, end)) in before {
            if let Some(s) = self.image.streams.get(id) {
                if s.epoch < *epoch || s.end_offset < *end {
                    out.push(format!(
                        "stream {}: epoch/end went back from {epoch}/{end} to {}/{}",
                        id.0, s.epoch, s.end_offset
                    ));
                }
            }
        }
        out
    }

    fn commit(
        &mut self,
        broker: BrokerId,
        broker_epoch: u64,
        key: &str,
        size: u64,
        ranges: &[proto::image::CommitRange],
    ) -> Vec<String> {
        let retry = self.image.object_keys.contains_key(key);
        // Each stream as the ranges find it: (owner, epoch, end).
        let mut running: BTreeMap<StreamId, (Option<BrokerId>, u64, u64)> = BTreeMap::new();
        let mut expected = Vec::with_capacity(ranges.len());
        for r in ranges {
            let state = running.get(&r.stream).copied().or_else(|| {
                self.image
                    .streams
                    .get(&r.stream)
                    .map(|s| (s.owner, s.epoch, s.end_offset))
            });
            let ok = state.is_some_and(|(owner, epoch, end)| {
                owner == Some(broker)
                    && epoch == r.stream_epoch
                    && end == r.start_offset
                    && r.end_offset > r.start_offset
            });
            if ok {
                if let Some((owner, epoch, _)) = state {
                    running.insert(r.stream, (owner, epoch, r.end_offset));
                }
            }
            expected.push((state, ok));
        }
        let reply = self.image.apply(&MetadataCommand::CommitObject {
            broker,
            broker_epoch,
            key: key.to_string(),
            size,
            ranges: ranges.to_vec(),
        });
        let mut out = Vec::new();
        if retry {
            return out;
        }
        let CommandReply::ObjectCommitted { verdicts, .. } = reply else {
            return out;
        };
        for ((r, verdict), (state, ok)) in ranges.iter().zip(&verdicts).zip(&expected) {
            if *verdict != RangeVerdict::Accepted {
                continue;
            }
            if !ok {
                out.push(format!(
                    "stream {}: range [{}, {}) from broker {} at stream epoch {} was accepted \
                     while the stream stood at (owner, epoch, end) = {state:?}",
                    r.stream.0, r.start_offset, r.end_offset, broker, r.stream_epoch
                ));
            }
            match self.accepted_at.insert((r.stream, r.stream_epoch), broker) {
                Some(other) if other != broker => out.push(format!(
                    "stream {}: two owners accepted at stream epoch {}: brokers {} and {}",
                    r.stream.0, r.stream_epoch, other, broker
                )),
                _ => {}
            }
        }
        out
    }
}

fn check_store(
    plan: &ObserverPlan,
    image: &MetadataImage,
    store: &SharedStore,
    log: &SharedObserver,
) {
    let now_ms = SimClock {
        epoch_ms: SIM_EPOCH_MS,
    }
    .now_ms();
    let in_store: BTreeMap<String, i64> = store.objects().into_iter().collect();
    let mut violations = Vec::new();
    let mut referenced = BTreeSet::new();
    for o in image.objects.values() {
        match o.state {
            ObjectState::Committed => {
                referenced.insert(o.key.clone());
                if !in_store.contains_key(&o.key) {
                    violations.push(format!(
                        "object {} ({}) is referenced by the metadata but missing from the store",
                        o.id.0, o.key
                    ));
                }
            }
            ObjectState::MarkDestroyed => {
                referenced.insert(o.key.clone());
                let overdue = o.marked_at_ms.is_some_and(|t| {
                    t.saturating_add(plan.marked_bound.as_millis() as i64) < now_ms
                });
                if overdue && in_store.contains_key(&o.key) {
                    violations.push(format!(
                        "object {} ({}) was marked for deletion at {:?} ms and is still in the \
                         store {} ms later",
                        o.id.0,
                        o.key,
                        o.marked_at_ms,
                        now_ms - o.marked_at_ms.unwrap_or(now_ms)
                    ));
                }
            }
        }
    }
    let bound = plan.orphan_bound.as_millis() as i64;
    let mut kept_live = 0;
    for (key, put_ms) in &in_store {
        if referenced.contains(key) || now_ms - put_ms <= bound {
            continue;
        }
        // An upload of a live incarnation may still commit: it is kept
        // (see broker::lifecycle) and only counted.
        let ended = key
            .strip_prefix(&plan.key_prefix)
            .and_then(parse_object_key)
            .is_none_or(|(broker, epoch)| epoch_ended(image, broker, epoch));
        if !ended {
            kept_live += 1;
            continue;
        }
        {
            violations.push(format!(
                "object {key} is in the store {} ms after its PUT and no metadata references it \
                 (the orphan collector should have deleted it)",
                now_ms - put_ms
            ));
        }
    }
    let mut log = log.borrow_mut();
    log.final_objects = in_store.len();
    log.final_referenced = referenced.len();
    log.kept_live_uploads = kept_live;
    log.violations.extend(violations);
}
