//! Broker settings with the defaults a user would choose. Every queue, cache
//! and in-flight limit of the broker is named here.

use std::time::Duration;

/// Topic-level configs we accept, with the default Apache Kafka reports.
pub const TOPIC_CONFIG_DEFAULTS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("compression.type", "producer"),
    ("delete.retention.ms", "86400000"),
    ("file.delete.delay.ms", "60000"),
    ("flush.messages", "9223372036854775807"),
    ("flush.ms", "9223372036854775807"),
    ("follower.replication.throttled.replicas", ""),
    ("index.interval.bytes", "4096"),
    ("leader.replication.throttled.replicas", ""),
    ("max.compaction.lag.ms", "9223372036854775807"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.after.max.ms", "3600000"),
    ("message.timestamp.before.max.ms", "9223372036854775807"),
    ("message.timestamp.type", "CreateTime"),
    ("min.cleanable.dirty.ratio", "0.5"),
    ("min.compaction.lag.ms", "0"),
    ("min.insync.replicas", "1"),
    ("preallocate", "false"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
    ("segment.index.bytes", "10485760"),
    ("segment.jitter.ms", "0"),
    ("segment.ms", "604800000"),
    ("unclean.leader.election.enable", "false"),
];

/// Each topic config and the broker config that gives its default (Kafka's
/// synonyms; `kafka-configs --entity-type brokers --entity-default` sets
/// these for the whole cluster).
pub const TOPIC_CONFIG_SYNONYMS: &[(&str, &str)] = &[
    ("cleanup.policy", "log.cleanup.policy"),
    ("compression.type", "compression.type"),
    ("delete.retention.ms", "log.cleaner.delete.retention.ms"),
    ("file.delete.delay.ms", "log.segment.delete.delay.ms"),
    ("flush.messages", "log.flush.interval.messages"),
    ("flush.ms", "log.flush.interval.ms"),
    ("index.interval.bytes", "log.index.interval.bytes"),
    ("max.compaction.lag.ms", "log.cleaner.max.compaction.lag.ms"),
    ("max.message.bytes", "message.max.bytes"),
    (
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
    ),
    (
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
    ),
    ("message.timestamp.type", "log.message.timestamp.type"),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
    ),
    ("min.compaction.lag.ms", "log.cleaner.min.compaction.lag.ms"),
    ("min.insync.replicas", "min.insync.replicas"),
    ("preallocate", "log.preallocate"),
    ("retention.bytes", "log.retention.bytes"),
    ("retention.ms", "log.retention.ms"),
    ("segment.bytes", "log.segment.bytes"),
    ("segment.index.bytes", "log.index.size.max.bytes"),
    ("segment.jitter.ms", "log.roll.jitter.ms"),
    ("segment.ms", "log.roll.ms"),
    (
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
    ),
];

/// The broker config that gives `topic_key`'s default, if any.
pub fn broker_synonym(topic_key: &str) -> Option<&'static str> {
    TOPIC_CONFIG_SYNONYMS
        .iter()
        .find(|(t, _)| *t == topic_key)
        .map(|(_, b)| *b)
}

/// Where a topic config's value comes from, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// Set on the topic.
    Topic,
    /// Set as a cluster-wide dynamic broker default.
    ClusterDefault,
    /// Oxbow's (Kafka's) built-in default.
    Default,
}

/// A topic's configs as they apply: its own, then the cluster-wide dynamic
/// defaults, then the built-in ones; every known key present.
pub fn effective_topic_configs(
    img: &proto::MetadataImage,
    topic: &proto::image::TopicRecord,
) -> std::collections::BTreeMap<String, String> {
    TOPIC_CONFIG_DEFAULTS
        .iter()
        .map(|(k, _)| {
            let (v, _) = topic_config_origin(img, Some(&topic.configs), k)
                .expect("every listed key has a default");
            (k.to_string(), v)
        })
        .collect()
}

/// A topic config's value and where it comes from (`None` for a key Oxbow
/// does not know).
pub fn topic_config_origin(
    img: &proto::MetadataImage,
    configs: Option<&std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<(String, ConfigOrigin)> {
    if let Some(v) = configs.and_then(|c| c.get(key)) {
        return Some((v.clone(), ConfigOrigin::Topic));
    }
    if let Some(v) = broker_synonym(key).and_then(|b| img.cluster_configs.get(b)) {
        return Some((v.clone(), ConfigOrigin::ClusterDefault));
    }
    TOPIC_CONFIG_DEFAULTS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| (v.to_string(), ConfigOrigin::Default))
}

/// A topic config's value, or the broker default for it.
pub fn topic_config<'a>(
    configs: Option<&'a std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    configs
        .and_then(|c| c.get(key))
        .map(String::as_str)
        .or_else(|| {
            TOPIC_CONFIG_DEFAULTS
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
        })
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// How long the writer waits for more data before sealing an object.
    pub linger: Duration,
    /// Seal after 1 ms instead of `linger` while the upload pipeline is
    /// idle (fewer than 2 objects in flight): lowest latency, one PUT per
    /// burst. Off, every object gathers for `linger` (or `flush_bytes`):
    /// fewer, larger objects, as cloud S3's per-request price wants.
    pub seal_when_idle: bool,
    /// Seal an object once this many bytes are buffered.
    pub flush_bytes: usize,
    /// Stream-set object PUTs in flight at once.
    pub max_inflight_puts: usize,
    /// Bytes accepted from producers but not yet committed, across all
    /// partitions; producers wait when it is reached.
    pub max_unflushed_bytes: usize,
    /// Target size of a data block inside an object (the unit of ranged GETs).
    pub block_bytes: usize,
    /// Committed bytes kept in memory for tail reads.
    pub log_cache_bytes: usize,
    /// Blocks read from objects kept in memory.
    pub block_cache_bytes: usize,
    /// Object indexes kept in memory.
    pub index_cache_entries: usize,
    /// Attempts at a PUT or a commit before its batches are failed.
    pub max_attempts: u32,
    /// How often retention is applied and marked objects are collected
    /// (Kafka's log.retention.check.interval.ms).
    pub retention_check_interval: Duration,
    /// How long an object marked for deletion stays in the store, so that a
    /// reader that resolved it before still finds it (Kafka's
    /// file.delete.delay.ms).
    pub object_delete_grace: Duration,
    /// An object in the store that no metadata references (an upload whose
    /// commit never happened, a fenced broker's write) is deleted once older
    /// than this; it must exceed the longest a PUT plus its commit can take.
    pub orphan_min_age: Duration,
    /// How often the store is listed for such objects.
    pub orphan_scan_interval: Duration,
    /// How often owned streams are compacted (`compaction::compact_once`).
    pub compaction_interval: Duration,
    /// Size at which a compacted object is sealed.
    pub compaction_target_bytes: usize,
    /// Input object bytes one compaction pass reads at most (its I/O budget;
    /// what it holds in memory is bounded by twice this).
    pub compaction_max_bytes_per_pass: u64,
    /// Bytes per second compaction reads from the store at most (0: no
    /// limit); its writes are bounded by its reads.
    pub compaction_read_bytes_per_sec: u64,
    /// Distinct keys one key-based compaction of a stream may track (24
    /// bytes each); a stream with more is not key-compacted.
    pub compaction_max_keys: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            linger: Duration::from_millis(5),
            seal_when_idle: true,
            flush_bytes: 8 * 1024 * 1024,
            max_inflight_puts: 4,
            max_unflushed_bytes: 128 * 1024 * 1024,
            block_bytes: 512 * 1024,
            log_cache_bytes: 256 * 1024 * 1024,
            block_cache_bytes: 128 * 1024 * 1024,
            index_cache_entries: 4096,
            max_attempts: 8,
            retention_check_interval: Duration::from_secs(30),
            object_delete_grace: Duration::from_secs(60),
            orphan_min_age: Duration::from_secs(15 * 60),
            orphan_scan_interval: Duration::from_secs(10 * 60),
            compaction_interval: Duration::from_secs(60),
            compaction_target_bytes: 64 * 1024 * 1024,
            compaction_max_bytes_per_pass: 128 * 1024 * 1024,
            compaction_max_keys: 4_000_000,
            compaction_read_bytes_per_sec: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// host:port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    pub rack: Option<String>,
    pub auto_create_topics: bool,
    pub default_partitions: u32,
    /// Largest request frame accepted (Kafka's socket.request.max.bytes).
    pub max_request_bytes: usize,
    /// Requests of one connection handled concurrently (responses stay in order).
    pub max_inflight_requests_per_connection: usize,
    pub max_connections: usize,
    pub storage: StorageConfig,
    pub groups: crate::group::GroupConfig,
    /// Kafka's `transactional.id.expiration.ms`: a transactional id whose
    /// last transaction ended (or that never began one) this long ago is
    /// forgotten.
    pub transactional_id_expiration_ms: i64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            rack: None,
            auto_create_topics: true,
            default_partitions: 1,
            max_request_bytes: 100 * 1024 * 1024,
            max_inflight_requests_per_connection: 16,
            max_connections: 10_000,
            storage: StorageConfig::default(),
            groups: crate::group::GroupConfig::default(),
            transactional_id_expiration_ms: 7 * 24 * 3600 * 1000,
        }
    }
}
