//! Settings of the group coordinator, with Apache Kafka's defaults and names.

use std::time::Duration;

/// The internal topic that holds group metadata and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`
    /// when this broker creates it.
    pub offsets_topic_partitions: u32,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an
    /// empty group waits for more members (extended per joining member, up
    /// to the rebalance timeout).
    pub initial_rebalance_delay_ms: i32,
    /// `group.max.size`: members per group (Kafka: unbounded).
    pub max_size: usize,
    /// Kafka's `group.classic.new.member.join.timeout.ms` (5 minutes): how
    /// long a new member's JoinGroup may stay parked.
    pub new_member_join_timeout_ms: i32,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: usize,
    /// How often timers (session, rebalance, sync, initial delay) are checked.
    pub tick: Duration,
    /// Bound on groups per coordinator partition; JoinGroup and commits that
    /// would create more answer COORDINATOR_NOT_AVAILABLE.
    pub max_groups_per_partition: usize,
    /// Bound on the bytes read in one step when loading a partition.
    pub load_read_bytes: usize,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups).
    pub consumer_session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups).
    pub consumer_heartbeat_interval_ms: i32,
    /// `offsets.retention.minutes`, in ms: the committed offsets of a group
    /// that has been empty this long (and not committed to since) are
    /// deleted, and the group with them.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_partitions: 50,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: usize::MAX,
            new_member_join_timeout_ms: 5 * 60 * 1000,
            offset_metadata_max_bytes: 4096,
            tick: Duration::from_millis(50),
            max_groups_per_partition: 100_000,
            load_read_bytes: 4 * 1024 * 1024,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            offsets_retention_check_ms: 600_000,
        }
    }
}
