//! Identifiers. Kafka-facing ids keep Kafka's widths (a broker id is an i32);
//! storage ids are ours and never reused.

use serde::{Deserialize, Serialize};

/// A broker's node id as Kafka clients see it.
pub type BrokerId = i32;

/// One stream per partition; stream offsets are the partition's Kafka offsets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct StreamId(pub u64);

/// A committed object in the object store. Allocated by the controller at commit.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ObjectId(pub u64);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
