//! The data lifecycle task: applies time/size retention to the streams this
//! broker owns (proposing `TrimStream`), and deletes objects the metadata has
//! marked for deletion once their grace period is over (then proposes
//! `DestroyObjects`). Store first, metadata second: a crash in between leaves
//! a marked object whose store copy is gone, and the next pass finishes it.
//! Less often it lists the store for objects no metadata references at all
//! (uploads whose commit never happened, writes of fenced brokers) and
//! deletes those of broker incarnations that have ended, once older than
//! `orphan_min_age`.
//!
//! Why only ended incarnations: an object's key names the broker epoch it
//! was written under and it can only be committed under that epoch, so once
//! the epoch has ended (the broker re-registered or was fenced) nothing can
//! reference the object any more. A live incarnation's upload may still be
//! on its way to a commit however old it is (a broker cut off from the
//! controllers keeps retrying), and a view of the metadata that knows an
//! epoch ended knows every commit made under it, because those came first
//! in the log. The simulation found the age-only rule deleting an object
//! whose commit landed after the collector, with a stale view, judged it
//! orphaned.

use std::sync::Arc;

use futures::StreamExt;
use object_store::{path::Path, ObjectStore};
use proto::image::{CommandReply, MetadataCommand, ObjectState};
use proto::{BrokerId, MetadataImage, ObjectId, StreamId};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::TOPIC_CONFIG_DEFAULTS;
use crate::storage::retention::{retention_start, RetentionPolicy};
use crate::storage::writer::parse_object_key;

/// Most objects deleted in one pass.
const MAX_DELETES_PER_PASS: usize = 10_000;
/// How often the encoded size of the metadata image is measured.
const IMAGE_SIZE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Streams trimmed by one metadata command.
const TRIMS_PER_COMMAND: usize = 512;

pub async fn run(
    broker: Arc<Broker>,
    store: Arc<dyn ObjectStore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(broker.config.storage.retention_check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Compaction and the orphan scan (a listing of the whole store) run
    // beside retention and deletion, so a long pass never holds them up.
    let compactor = tokio::spawn(compact_loop(broker.clone(), store.clone(), stop.clone()));
    let orphans = tokio::spawn(orphan_loop(broker.clone(), store.clone(), stop.clone()));
    let mut last_image_size: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {
                compactor.abort();
                orphans.abort();
                return;
            }
        }
        apply_retention(&broker).await;
        collect_garbage(&broker, &*store).await;
        // Encoding the image to measure it is costly once it is large.
        let measure = last_image_size.is_none_or(|t| t.elapsed() >= IMAGE_SIZE_INTERVAL);
        if measure {
            last_image_size = Some(tokio::time::Instant::now());
        }
        report_metadata(&broker, measure);
    }
}

async fn orphan_loop(
    broker: Arc<Broker>,
    store: Arc<dyn ObjectStore>,
    stop: watch::Receiver<bool>,
) {
    let period = broker.config.storage.orphan_scan_interval;
    every(period, false, stop, || collect_orphans(&broker, &*store)).await;
}

async fn compact_loop(
    broker: Arc<Broker>,
    store: Arc<dyn ObjectStore>,
    stop: watch::Receiver<bool>,
) {
    let period = broker.config.storage.compaction_interval;
    let seq = std::sync::atomic::AtomicU64::new(0);
    every(period, true, stop, || async {
        crate::compaction::compact_once(&broker, &*store, &seq).await;
    })
    .await;
}

/// Runs `pass` every `period` (a long pass delays the next one) until
/// `stop`; the first right away unless `wait_first`.
async fn every<'a, F, Fut>(
    period: std::time::Duration,
    wait_first: bool,
    mut stop: watch::Receiver<bool>,
    mut pass: F,
) where
    F: FnMut() -> Fut + 'a,
    Fut: std::future::Future<Output = ()> + 'a,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if wait_first {
        tick.tick().await; // the first tick is immediate
    }
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        pass().await;
    }
}

/// Publishes the size of the metadata this broker follows: objects (live
/// and marked for deletion), their bytes, stream slices, and the image's
/// encoded size (what a snapshot of it holds).
fn report_metadata(broker: &Broker, measure_image: bool) {
    let (live, marked, bytes, slices, encoded) = broker.metadata.read(|img| {
        let marked = img
            .objects
            .values()
            .filter(|o| o.state == ObjectState::MarkDestroyed)
            .count();
        let bytes: u64 = img.objects.values().map(|o| o.size).sum();
        let slices: usize = img.streams.values().map(|s| s.slices.len()).sum();
        let encoded = measure_image.then(|| rmp_serde::to_vec_named(img).map_or(0, |v| v.len()));
        (img.objects.len() - marked, marked, bytes, slices, encoded)
    });
    metrics::gauge!("oxbow_metadata_objects").set(live as f64);
    metrics::gauge!("oxbow_metadata_objects_marked").set(marked as f64);
    metrics::gauge!("oxbow_metadata_object_bytes").set(bytes as f64);
    metrics::gauge!("oxbow_metadata_slices").set(slices as f64);
    if let Some(encoded) = encoded {
        metrics::gauge!("oxbow_metadata_image_bytes").set(encoded as f64);
    }
}

/// Deletes objects in the store that the metadata does not know, once older
/// than `orphan_min_age`. Only the garbage-collecting broker does it, and
/// only under the `sso/` (writer) and `cso/` (compaction) prefixes this
/// cluster writes.
pub async fn collect_orphans(broker: &Broker, store: &dyn ObjectStore) {
    if broker
        .metadata
        .read(|img| img.live_brokers().next().map(|b| b.id))
        != Some(broker.id)
    {
        return;
    }
    let min_age = duration_ms(broker.config.storage.orphan_min_age);
    let now = broker.seams.clock.now_ms();
    let mut orphans = Vec::new();
    for kind in ["sso", "cso"] {
        let prefix = Path::from(format!("{}{kind}", broker.key_prefix));
        let mut listing = store.list(Some(&prefix));
        while let Some(item) = listing.next().await {
            let meta = match item {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "listing the object store failed");
                    return;
                }
            };
            let age = now - meta.last_modified.timestamp_millis();
            if age < min_age {
                continue;
            }
            let key = meta.location.to_string();
            let incarnation = key
                .strip_prefix(&broker.key_prefix)
                .and_then(parse_object_key);
            let collectable = incarnation.is_some_and(|(owner, epoch)| {
                broker.metadata.read(|img| {
                    epoch_ended(img, owner, epoch) && !img.object_keys.contains_key(&key)
                })
            });
            if collectable || proto::planted::active(proto::planted::Bug::DeleteReferencedObject) {
                orphans.push(meta.location);
            }
            if orphans.len() >= MAX_DELETES_PER_PASS {
                break;
            }
        }
    }
    // Re-check: a commit may have landed since the listing.
    let orphans: Vec<String> = orphans
        .into_iter()
        .map(|path| path.to_string())
        .filter(|key| {
            !broker
                .metadata
                .read(|img| img.object_keys.contains_key(key))
                || proto::planted::active(proto::planted::Bug::DeleteReferencedObject)
        })
        .collect();
    let deleted = delete_keys(store, orphans).await.len() as u64;
    if deleted > 0 {
        metrics::counter!("oxbow_orphan_objects_deleted_total").increment(deleted);
        info!(objects = deleted, "deleted objects no metadata referenced");
    }
}

/// Whether `broker`'s incarnation `epoch` has ended: the broker registered
/// again since, or was fenced at that epoch. Unknown brokers and epochs are
/// taken as live (the view may be behind).
pub fn epoch_ended(img: &MetadataImage, broker: BrokerId, epoch: u64) -> bool {
    img.brokers
        .get(&broker)
        .is_some_and(|b| epoch < b.epoch || (epoch == b.epoch && b.fenced))
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Trims every owned stream that retention allows to move.
pub async fn apply_retention(broker: &Broker) {
    let now = broker.seams.clock.now_ms();
    let trims: Vec<(StreamId, u64)> = broker.metadata.read(|img| {
        img.streams
            .values()
            .filter(|s| s.owner == Some(broker.id))
            .filter_map(|s| {
                let topic = img.topic_by_id(s.topic)?;
                let policy = RetentionPolicy::from_configs(
                    &crate::config::effective_topic_configs(img, topic),
                    TOPIC_CONFIG_DEFAULTS,
                );
                retention_start(s, policy, now).map(|o| (s.id, o))
            })
            .collect()
    });
    // One command per chunk, not one per stream: at 1,000 partitions a pass
    // was 1,000 serial Raft writes and fell minutes behind.
    for chunk in trims.chunks(TRIMS_PER_COMMAND) {
        let reply = broker
            .propose(MetadataCommand::TrimStreams {
                trims: chunk.to_vec(),
                now_ms: broker.seams.clock.now_ms(),
            })
            .await;
        match reply {
            Ok(CommandReply::TrimmedMany(replies)) => {
                for (&(stream, _), reply) in chunk.iter().zip(replies) {
                    if let CommandReply::Trimmed { start_offset } = reply {
                        trimmed(broker, stream, start_offset);
                    }
                }
            }
            Ok(other) => warn!(reply = ?other, "retention trim: unexpected reply"),
            Err(e) => warn!(streams = chunk.len(), error = %e, "retention trim failed"),
        }
    }
}

/// Moves a stream's start offset forward and makes it visible at once.
pub async fn trim(broker: &Broker, stream: StreamId, offset: u64) -> Result<u64, String> {
    let reply = broker
        .propose(MetadataCommand::TrimStream {
            stream,
            start_offset: offset,
            now_ms: broker.seams.clock.now_ms(),
        })
        .await
        .map_err(|e| e.to_string())?;
    match reply {
        CommandReply::Trimmed { start_offset } => {
            trimmed(broker, stream, start_offset);
            Ok(start_offset)
        }
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// A committed trim: the hosted partition serves from its new start at once.
fn trimmed(broker: &Broker, stream: StreamId, start_offset: u64) {
    if let Some(p) = broker.partition(stream) {
        p.state.set_log_start(start_offset);
    }
    metrics::counter!("oxbow_stream_trims_total").increment(1);
}

/// Deletes marked objects past their grace period. One broker does it for
/// the cluster: the live broker with the smallest id.
pub async fn collect_garbage(broker: &Broker, store: &dyn ObjectStore) {
    let now = broker.seams.clock.now_ms();
    let grace =
        i64::try_from(broker.config.storage.object_delete_grace.as_millis()).unwrap_or(i64::MAX);
    let due: Vec<(ObjectId, String)> = broker.metadata.read(|img| {
        if img.live_brokers().next().map(|b| b.id) != Some(broker.id) {
            return Vec::new();
        }
        img.objects
            .values()
            .filter(|o| {
                o.state == ObjectState::MarkDestroyed
                    && o.marked_at_ms
                        .is_some_and(|t| t.saturating_add(grace) <= now)
            })
            .take(MAX_DELETES_PER_PASS)
            .map(|o| (o.id, o.key.clone()))
            .collect()
    });
    let ids: std::collections::HashMap<String, ObjectId> =
        due.iter().map(|(id, key)| (key.clone(), *id)).collect();
    let keys = due.into_iter().map(|(_, key)| key).collect();
    let deleted: Vec<ObjectId> = delete_keys(store, keys)
        .await
        .iter()
        .filter_map(|key| ids.get(key).copied())
        .collect();
    if deleted.is_empty() {
        return;
    }
    let n = deleted.len();
    match broker
        .controller
        .write(MetadataCommand::DestroyObjects { ids: deleted })
        .await
    {
        Ok(_) => {
            metrics::counter!("oxbow_objects_deleted_total").increment(n as u64);
            info!(objects = n, "deleted objects past their grace period");
        }
        Err(e) => warn!(error = %e, "recording deleted objects failed; retrying next pass"),
    }
}

/// Deletes objects from the store and answers the keys now gone (deleted,
/// or already missing); the others are retried by the next pass. S3 stores
/// delete in bulk (one DeleteObjects request per 1,000 keys), the local file
/// store 10 at a time.
async fn delete_keys(store: &dyn ObjectStore, keys: Vec<String>) -> Vec<String> {
    let paths = futures::stream::iter(keys.into_iter().map(|key| Ok(Path::from(key))));
    let mut results = store.delete_stream(paths.boxed());
    let mut gone = Vec::new();
    let mut failed = 0usize;
    while let Some(result) = results.next().await {
        match result {
            Ok(path) => gone.push(path.to_string()),
            Err(object_store::Error::NotFound { path, .. }) => gone.push(path),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    warn!(error = %e, "deleting an object failed; retrying next pass");
                }
            }
        }
    }
    if failed > 3 {
        warn!(
            objects = failed,
            "deleting objects failed; retrying next pass"
        );
    }
    metrics::counter!("oxbow_object_deletes_total").increment(gone.len() as u64);
    gone
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::writer::object_key;
    use proto::image::BrokerEndpoint;

    fn image_with(broker: BrokerId, epoch: u64, fenced: bool) -> MetadataImage {
        let mut img = MetadataImage::default();
        img.apply(&MetadataCommand::RegisterBroker {
            id: broker,
            endpoint: BrokerEndpoint {
                host: "h".into(),
                port: 1,
            },
            rack: None,
        });
        let b = img.brokers.get_mut(&broker).expect("registered");
        b.epoch = epoch;
        b.fenced = fenced;
        img
    }

    #[test]
    fn object_keys_name_their_incarnation() {
        let key = object_key("pre/", 3, 7, 42);
        assert_eq!(key, "pre/sso/3/7/0000000000000042");
        assert_eq!(parse_object_key(&key["pre/".len()..]), Some((3, 7)));
        for other in [
            "so/3/7/1",
            "sso/3/7",
            "sso/x/7/1",
            "sso/3/7/1/extra",
            "sso/3/-1/1",
            "sso/3/7/x",
        ] {
            assert_eq!(parse_object_key(other), None, "{other}");
        }
    }

    #[test]
    fn only_ended_incarnations_count_as_ended() {
        let live = image_with(3, 5, false);
        assert!(epoch_ended(&live, 3, 4), "an older epoch has ended");
        assert!(!epoch_ended(&live, 3, 5), "the current epoch lives");
        assert!(
            !epoch_ended(&live, 3, 6),
            "a newer epoch the view has not seen"
        );
        assert!(!epoch_ended(&live, 9, 1), "an unknown broker");
        let fenced = image_with(3, 5, true);
        assert!(epoch_ended(&fenced, 3, 5), "fenced at its epoch");
    }
}
