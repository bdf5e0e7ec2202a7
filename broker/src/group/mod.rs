//! The group coordinator: Kafka's classic consumer-group protocol and
//! committed offsets, kept the way Kafka keeps them, in the internal
//! compacted topic `__consumer_offsets`.
//!
//! A group belongs to partition `abs(hashCode(group id)) % partitions` of
//! that topic, and the broker that owns the partition is its coordinator, so
//! coordinators move and fail over exactly like partitions. When this broker
//! opens such a partition it replays it from its log start to its high
//! watermark before answering for its groups (COORDINATOR_LOAD_IN_PROGRESS
//! until then); every change that must survive (offset commits, a group's
//! assignment after SyncGroup, deletions) is appended through the
//! partition's actor and takes effect only once committed, like a produce.
//!
//! `classic` decides (pure, clock passed in, unit-tested); `coordinator` is
//! the async shell around it (locks, timers, appends, loading); `records`
//! is the byte format of the topic. This module never talks Kafka wire
//! types: `kafka::group` does.

pub mod classic;
pub mod config;
pub mod consumer;
pub mod coordinator;
pub mod records;

use std::sync::Arc;

use proto::seams::Clock;

pub use classic::Now;
pub use config::{GroupConfig, OFFSETS_TOPIC};
pub use coordinator::GroupCoordinator;

/// Kafka's `Utils.abs(groupId.hashCode()) % partitions`, with Java's
/// `String.hashCode` over UTF-16 code units and `Utils.abs(MIN_VALUE) = 0`.
pub fn partition_for(group_id: &str, partitions: u32) -> i32 {
    let mut h: i32 = 0;
    for unit in group_id.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    let partitions = i32::try_from(partitions.max(1)).unwrap_or(i32::MAX);
    abs % partitions
}

/// The coordinator's time: monotonic milliseconds since it started (tokio's
/// clock, which the simulation drives) for deadlines, and the wall clock of
/// the broker's seams for timestamps.
#[derive(Clone)]
pub struct GroupClock {
    origin: tokio::time::Instant,
    wall: Arc<dyn Clock>,
}

impl GroupClock {
    pub fn new(wall: Arc<dyn Clock>) -> Self {
        GroupClock {
            origin: tokio::time::Instant::now(),
            wall,
        }
    }

    pub fn now(&self) -> Now {
        Now {
            mono_ms: u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX),
            wall_ms: self.wall.now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_matches_kafka() {
        // Java: "test-group".hashCode() = 627841412 -> 12 of 50.
        assert_eq!(partition_for("test-group", 50), 12);
        assert_eq!(partition_for("", 50), 0);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Utils.abs -> 0.
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for g in ["a", "group-1", "my-consumer-group", "ü-group"] {
            let p = partition_for(g, 50);
            assert!((0..50).contains(&p));
        }
    }
}
