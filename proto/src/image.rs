//! The metadata image and the commands that change it.
//!
//! The controller's Raft state machine is `MetadataImage::apply` over the
//! committed log; brokers follow the same committed commands as deltas and
//! apply them to their own copy. `apply` is therefore pure and deterministic:
//! no clocks, no randomness, no I/O, ordered maps only. Anything random (topic
//! ids) or time-based (timestamps) is chosen by the proposer and carried in
//! the command. Retried commands are recognised (a commit of an object key
//! already committed answers with the first answer).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{BrokerId, ObjectId, StreamId};

/// Kafka's limit on partitions per topic creation request is the int32 range;
/// ours is a bound that keeps one command's effect on the image bounded.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 10_000;
/// Topic names follow Kafka's rule: at most 249 characters of [a-zA-Z0-9._-].
pub const MAX_TOPIC_NAME_LEN: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    pub id: BrokerId,
    /// Bumped on every registration: a restarted broker is a new incarnation.
    pub epoch: u64,
    pub endpoint: BrokerEndpoint,
    pub rack: Option<String>,
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: Uuid,
    pub name: String,
    /// Index = partition number.
    pub partitions: Vec<StreamId>,
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
}

/// One contiguous piece of a stream held by one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSlice {
    /// Exclusive.
    pub end_offset: u64,
    pub object: ObjectId,
    /// Largest record timestamp in the slice, for ListOffsets by time.
    pub max_timestamp: i64,
    /// Bytes of record batches in the slice, for size-based retention.
    #[serde(default)]
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub id: StreamId,
    pub topic: Uuid,
    pub partition: u32,
    /// Bumped whenever ownership changes; commits must carry the current one.
    pub epoch: u64,
    /// Kafka's leader epoch for the partition (i32 on the wire).
    pub leader_epoch: i32,
    pub owner: Option<BrokerId>,
    /// Log start offset: offsets below it are gone.
    pub start_offset: u64,
    /// Committed end offset (Kafka's high watermark): the next offset to commit.
    pub end_offset: u64,
    /// Object map keyed by the slice's first offset. Slices are contiguous
    /// from `start_offset` (the first may begin below it) to `end_offset`.
    pub slices: BTreeMap<u64, StreamSlice>,
    /// Transactions without a committed marker: producer id -> offset of
    /// its first batch. With `aborted_txns`, what a new owner needs for the
    /// last stable offset and read_committed fetches, whatever the age of
    /// the data (its own replay reads only the newest bytes).
    #[serde(default)]
    pub open_txns: BTreeMap<i64, u64>,
    /// Aborted transactions, ordered by marker offset, the oldest dropped
    /// past [`MAX_ABORTED_TXNS_PER_STREAM`] and below the log start.
    #[serde(default)]
    pub aborted_txns: std::collections::VecDeque<AbortedTxnRecord>,
}

/// Aborted transactions kept per stream in the metadata.
pub const MAX_ABORTED_TXNS_PER_STREAM: usize = 10_000;

/// An aborted transaction of a stream: its producer, its first offset and
/// the offset of its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxnRecord {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

/// A transaction event in a committed range, applied to the stream's
/// `open_txns` / `aborted_txns` in the same command as the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnEvent {
    /// The first batch of `producer_id`'s transaction, at `offset`.
    Begin { producer_id: i64, offset: u64 },
    /// Its marker, at `offset`.
    End {
        producer_id: i64,
        offset: u64,
        commit: bool,
    },
}

impl StreamRecord {
    fn apply_txn_event(&mut self, e: &TxnEvent) {
        match *e {
            TxnEvent::Begin {
                producer_id,
                offset,
            } => {
                self.open_txns.entry(producer_id).or_insert(offset);
            }
            TxnEvent::End {
                producer_id,
                offset,
                commit,
            } => {
                let Some(first) = self.open_txns.remove(&producer_id) else {
                    return;
                };
                if !commit {
                    if self.aborted_txns.len() >= MAX_ABORTED_TXNS_PER_STREAM {
                        self.aborted_txns.pop_front();
                    }
                    self.aborted_txns.push_back(AbortedTxnRecord {
                        producer_id,
                        first_offset: first,
                        last_offset: offset,
                    });
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectState {
    Committed,
    /// No stream references it any more; the store copy goes after a grace period.
    MarkDestroyed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub id: ObjectId,
    pub key: String,
    pub size: u64,
    pub state: ObjectState,
    /// Streams with at least one slice in this object. When the last one
    /// goes, the object is marked for deletion.
    pub streams: Vec<StreamId>,
    /// When it was marked for deletion (the proposer's clock, milliseconds).
    #[serde(default)]
    pub marked_at_ms: Option<i64>,
}

/// A range a broker asks to commit: offsets `[start_offset, end_offset)` of
/// `stream` written at `stream_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRange {
    pub stream: StreamId,
    pub stream_epoch: u64,
    pub start_offset: u64,
    pub end_offset: u64,
    pub max_timestamp: i64,
    #[serde(default)]
    pub bytes: u64,
    /// Transactions the range begins or ends, in offset order.
    #[serde(default)]
    pub txn_events: Vec<TxnEvent>,
}

/// A range a compactor rewrote: the slices of `stream` covering exactly
/// `[start_offset, end_offset)` become one slice holding `bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRange {
    pub stream: StreamId,
    pub start_offset: u64,
    pub end_offset: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RangeVerdict {
    Accepted,
    /// The stream's epoch moved on or another broker owns it.
    Fenced,
    /// The range does not start at the committed end offset.
    NotContiguous {
        expected_start: u64,
    },
    UnknownStream,
}

/// One object of a `CommitObjects`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCommit {
    pub key: String,
    pub size: u64,
    pub ranges: Vec<CommitRange>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// First command of a new cluster.
    Bootstrap {
        cluster_id: String,
    },
    RegisterBroker {
        id: BrokerId,
        endpoint: BrokerEndpoint,
        rack: Option<String>,
    },
    CreateTopic {
        id: Uuid,
        name: String,
        partitions: u32,
        configs: BTreeMap<String, String>,
        internal: bool,
    },
    DeleteTopic {
        name: String,
        /// The proposer's clock, stamped on the objects this releases.
        #[serde(default)]
        now_ms: i64,
    },
    CreatePartitions {
        name: String,
        total: u32,
    },
    /// Registers an object already PUT to the store and the stream ranges it
    /// holds. Ranges are judged one by one; the object is recorded if any is
    /// accepted.
    CommitObject {
        broker: BrokerId,
        broker_epoch: u64,
        key: String,
        size: u64,
        ranges: Vec<CommitRange>,
    },
    /// Several objects of one broker committed in one Raft write, judged in
    /// order exactly as that many `CommitObject`s would be.
    CommitObjects {
        broker: BrokerId,
        broker_epoch: u64,
        objects: Vec<ObjectCommit>,
    },
    /// Hands out `count` producer ids.
    AllocateProducerIds {
        count: u32,
    },
    /// The broker missed its session (or shut down): it is fenced and every
    /// stream it owns moves to a live broker at a new epoch. Ignored if the
    /// broker has re-registered since (`epoch` is not its current one).
    FenceBroker {
        id: BrokerId,
        epoch: u64,
    },
    /// Moves a stream to `to` (a reassignment) at a new epoch.
    MoveStream {
        stream: StreamId,
        to: BrokerId,
    },
    /// The owner reopens its stream at a new epoch after a failed flush, so
    /// that a commit of the failed incarnation still on its way is refused
    /// and the reopened partition starts from a final committed end. Ignored
    /// unless `owner` owns the stream at `epoch` (so a retry bumps once).
    ReopenStream {
        stream: StreamId,
        owner: BrokerId,
        epoch: u64,
    },
    /// Moves a stream's start offset forward (retention, DeleteRecords):
    /// slices wholly below it leave the object map, and objects left with no
    /// slice are marked for deletion at `now_ms`.
    TrimStream {
        stream: StreamId,
        start_offset: u64,
        now_ms: i64,
    },
    /// Many `TrimStream`s in one command (retention moves every stream a
    /// broker owns each pass: one Raft entry instead of one per stream).
    TrimStreams {
        trims: Vec<(StreamId, u64)>,
        now_ms: i64,
    },
    /// Forgets objects already deleted from the store (only marked ones).
    DestroyObjects {
        ids: Vec<ObjectId>,
    },
    /// Registers an object written by compaction: each range replaces the
    /// slices of its stream that cover exactly `[start_offset, end_offset)`
    /// with one slice in the new object. Judged range by range (a range
    /// whose slices changed since the compactor read them, by a trim or
    /// another compaction, is refused); the object is recorded if any range
    /// is accepted, and objects left with no slice are marked for deletion
    /// at `now_ms`. Like `CommitObject`, only from a live incarnation whose
    /// epoch the object's key names; ownership of the streams does not
    /// matter (committed data never changes).
    CompactObject {
        broker: BrokerId,
        broker_epoch: u64,
        key: String,
        size: u64,
        ranges: Vec<CompactRange>,
        now_ms: i64,
    },
    /// Sets and removes cluster-wide dynamic broker configs (Kafka's
    /// `--entity-type brokers --entity-default`), e.g. `log.retention.ms`:
    /// the defaults of every topic that does not set its own.
    AlterClusterConfigs {
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
    /// Sets and removes topic configs (IncrementalAlterConfigs, AlterConfigs).
    AlterTopicConfigs {
        name: String,
        set: BTreeMap<String, String>,
        delete: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandReply {
    Ok,
    BrokerRegistered {
        epoch: u64,
    },
    TopicCreated {
        id: Uuid,
    },
    TopicExists,
    InvalidTopic(String),
    InvalidPartitions(String),
    UnknownTopic,
    NoLiveBrokers,
    ObjectCommitted {
        object: Option<ObjectId>,
        verdicts: Vec<RangeVerdict>,
    },
    StaleBrokerEpoch,
    ProducerIds {
        first: i64,
        count: u32,
    },
    AlreadyBootstrapped,
    /// One reply per object of a `CommitObjects`.
    ObjectsCommitted(Vec<CommandReply>),
    /// The stream's start offset after a trim.
    Trimmed {
        start_offset: u64,
    },
    /// One reply per stream of a `TrimStreams`, in its order.
    TrimmedMany(Vec<CommandReply>),
    /// A `CompactObject`: the object recorded (none if no range was
    /// accepted) and, per range, whether it was.
    Compacted {
        object: Option<ObjectId>,
        accepted: Vec<bool>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetadataImage {
    pub cluster_id: Option<String>,
    pub brokers: BTreeMap<BrokerId, BrokerRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    pub streams: BTreeMap<StreamId, StreamRecord>,
    pub objects: BTreeMap<ObjectId, ObjectRecord>,
    /// Object key → id, to recognise a retried commit.
    pub object_keys: BTreeMap<String, ObjectId>,
    pub next_stream_id: u64,
    pub next_object_id: u64,
    pub next_producer_id: i64,
    /// Cluster-wide dynamic broker configs (`AlterClusterConfigs`).
    #[serde(default)]
    pub cluster_configs: BTreeMap<String, String>,
}

/// Kafka's legal topic name check (`Topic.validate`).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("topic name cannot be '{name}'"));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!(
            "topic name is longer than {MAX_TOPIC_NAME_LEN} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name '{name}' contains '{c}'; legal characters are ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl MetadataCommand {
    /// The variant's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            MetadataCommand::Bootstrap { .. } => "Bootstrap",
            MetadataCommand::RegisterBroker { .. } => "RegisterBroker",
            MetadataCommand::CreateTopic { .. } => "CreateTopic",
            MetadataCommand::DeleteTopic { .. } => "DeleteTopic",
            MetadataCommand::CreatePartitions { .. } => "CreatePartitions",
            MetadataCommand::CommitObject { .. } => "CommitObject",
            MetadataCommand::CommitObjects { .. } => "CommitObjects",
            MetadataCommand::AllocateProducerIds { .. } => "AllocateProducerIds",
            MetadataCommand::FenceBroker { .. } => "FenceBroker",
            MetadataCommand::MoveStream { .. } => "MoveStream",
            MetadataCommand::ReopenStream { .. } => "ReopenStream",
            MetadataCommand::TrimStream { .. } => "TrimStream",
            MetadataCommand::TrimStreams { .. } => "TrimStreams",
            MetadataCommand::DestroyObjects { .. } => "DestroyObjects",
            MetadataCommand::AlterTopicConfigs { .. } => "AlterTopicConfigs",
            MetadataCommand::CompactObject { .. } => "CompactObject",
            MetadataCommand::AlterClusterConfigs { .. } => "AlterClusterConfigs",
        }
    }
}

impl std::fmt::Display for MetadataCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl MetadataImage {
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicRecord> {
        self.topics.values().find(|t| t.id == id)
    }

    pub fn live_brokers(&self) -> impl Iterator<Item = &BrokerRecord> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    /// The stream behind a topic partition.
    pub fn stream_of(&self, topic: &str, partition: i32) -> Option<&StreamRecord> {
        let t = self.topics.get(topic)?;
        let sid = t.partitions.get(usize::try_from(partition).ok()?)?;
        self.streams.get(sid)
    }

    /// Applies one committed command. Deterministic: the same image and
    /// command always give the same image and reply.
    pub fn apply(&mut self, cmd: &MetadataCommand) -> CommandReply {
        match cmd {
            MetadataCommand::Bootstrap { cluster_id } => {
                if self.cluster_id.is_some() {
                    return CommandReply::AlreadyBootstrapped;
                }
                self.cluster_id = Some(cluster_id.clone());
                if self.next_producer_id == 0 {
                    self.next_producer_id = 1000;
                }
                CommandReply::Ok
            }
            MetadataCommand::RegisterBroker { id, endpoint, rack } => {
                let epoch = self.brokers.get(id).map_or(1, |b| b.epoch + 1);
                self.brokers.insert(
                    *id,
                    BrokerRecord {
                        id: *id,
                        epoch,
                        endpoint: endpoint.clone(),
                        rack: rack.clone(),
                        fenced: false,
                    },
                );
                // A new incarnation fences whatever its previous one still has
                // in flight: every stream it owns moves to a new epoch.
                for s in self.streams.values_mut() {
                    if s.owner == Some(*id) || s.owner.is_none() {
                        s.owner = Some(*id);
                        s.epoch += 1;
                        s.leader_epoch += 1;
                    }
                }
                CommandReply::BrokerRegistered { epoch }
            }
            MetadataCommand::CreateTopic {
                id,
                name,
                partitions,
                configs,
                internal,
            } => {
                if let Err(e) = validate_topic_name(name) {
                    return CommandReply::InvalidTopic(e);
                }
                if self.topics.contains_key(name) {
                    return CommandReply::TopicExists;
                }
                if *partitions == 0 || *partitions > MAX_PARTITIONS_PER_TOPIC {
                    return CommandReply::InvalidPartitions(format!(
                        "number of partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}"
                    ));
                }
                let owners: Vec<BrokerId> = self.live_brokers().map(|b| b.id).collect();
                if owners.is_empty() {
                    return CommandReply::NoLiveBrokers;
                }
                let streams = self.add_streams(*id, 0, *partitions, &owners);
                self.topics.insert(
                    name.clone(),
                    TopicRecord {
                        id: *id,
                        name: name.clone(),
                        partitions: streams,
                        configs: configs.clone(),
                        internal: *internal,
                    },
                );
                CommandReply::TopicCreated { id: *id }
            }
            MetadataCommand::DeleteTopic { name, now_ms } => {
                let Some(topic) = self.topics.remove(name) else {
                    return CommandReply::UnknownTopic;
                };
                for sid in &topic.partitions {
                    if let Some(stream) = self.streams.remove(sid) {
                        let objects: Vec<ObjectId> =
                            stream.slices.values().map(|sl| sl.object).collect();
                        for o in objects {
                            self.unreference(*sid, o, *now_ms);
                        }
                    }
                }
                CommandReply::Ok
            }
            MetadataCommand::TrimStream {
                stream,
                start_offset,
                now_ms,
            } => {
                let Some(s) = self.streams.get_mut(stream) else {
                    return CommandReply::UnknownTopic;
                };
                let new_start = (*start_offset).min(s.end_offset).max(s.start_offset);
                s.start_offset = new_start;
                while s
                    .aborted_txns
                    .front()
                    .is_some_and(|a| a.last_offset < new_start)
                {
                    s.aborted_txns.pop_front();
                }
                let gone: Vec<u64> = s
                    .slices
                    .iter()
                    .filter(|(_, sl)| sl.end_offset <= new_start)
                    .map(|(&start, _)| start)
                    .collect();
                let mut released = Vec::new();
                for start in gone {
                    if let Some(sl) = s.slices.remove(&start) {
                        released.push(sl.object);
                    }
                }
                let still: Vec<ObjectId> = s.slices.values().map(|sl| sl.object).collect();
                for o in released {
                    if !still.contains(&o) {
                        self.unreference(*stream, o, *now_ms);
                    }
                }
                CommandReply::Trimmed {
                    start_offset: new_start,
                }
            }
            MetadataCommand::TrimStreams { trims, now_ms } => CommandReply::TrimmedMany(
                trims
                    .iter()
                    .map(|&(stream, start_offset)| {
                        self.apply(&MetadataCommand::TrimStream {
                            stream,
                            start_offset,
                            now_ms: *now_ms,
                        })
                    })
                    .collect(),
            ),
            MetadataCommand::AlterClusterConfigs { set, delete } => {
                for k in delete {
                    self.cluster_configs.remove(k);
                }
                for (k, v) in set {
                    self.cluster_configs.insert(k.clone(), v.clone());
                }
                CommandReply::Ok
            }
            MetadataCommand::AlterTopicConfigs { name, set, delete } => {
                let Some(t) = self.topics.get_mut(name) else {
                    return CommandReply::UnknownTopic;
                };
                for k in delete {
                    t.configs.remove(k);
                }
                for (k, v) in set {
                    t.configs.insert(k.clone(), v.clone());
                }
                CommandReply::Ok
            }
            MetadataCommand::DestroyObjects { ids } => {
                for id in ids {
                    if self
                        .objects
                        .get(id)
                        .is_some_and(|o| o.state == ObjectState::MarkDestroyed)
                    {
                        if let Some(o) = self.objects.remove(id) {
                            self.object_keys.remove(&o.key);
                        }
                    }
                }
                CommandReply::Ok
            }
            MetadataCommand::CreatePartitions { name, total } => {
                let owners: Vec<BrokerId> = self.live_brokers().map(|b| b.id).collect();
                let Some(topic) = self.topics.get(name) else {
                    return CommandReply::UnknownTopic;
                };
                let current = topic.partitions.len() as u32;
                if *total <= current {
                    return CommandReply::InvalidPartitions(format!(
                        "topic currently has {current} partitions, which is higher than the requested {total}"
                    ));
                }
                if *total > MAX_PARTITIONS_PER_TOPIC {
                    return CommandReply::InvalidPartitions(format!(
                        "number of partitions must be at most {MAX_PARTITIONS_PER_TOPIC}"
                    ));
                }
                if owners.is_empty() {
                    return CommandReply::NoLiveBrokers;
                }
                let topic_id = topic.id;
                let added = self.add_streams(topic_id, current, *total - current, &owners);
                self.topics
                    .get_mut(name)
                    .expect("topic looked up above")
                    .partitions
                    .extend(added);
                CommandReply::Ok
            }
            MetadataCommand::CommitObject {
                broker,
                broker_epoch,
                key,
                size,
                ranges,
            } => self.commit_object(*broker, *broker_epoch, key, *size, ranges),
            MetadataCommand::CommitObjects {
                broker,
                broker_epoch,
                objects,
            } => CommandReply::ObjectsCommitted(
                objects
                    .iter()
                    .map(|o| self.commit_object(*broker, *broker_epoch, &o.key, o.size, &o.ranges))
                    .collect(),
            ),
            MetadataCommand::CompactObject {
                broker,
                broker_epoch,
                key,
                size,
                ranges,
                now_ms,
            } => self.compact_object(*broker, *broker_epoch, key, *size, ranges, *now_ms),
            MetadataCommand::FenceBroker { id, epoch } => {
                match self.brokers.get_mut(id) {
                    Some(b) if b.epoch == *epoch && !b.fenced => b.fenced = true,
                    _ => return CommandReply::StaleBrokerEpoch,
                }
                let live: Vec<BrokerId> = self.live_brokers().map(|b| b.id).collect();
                for s in self.streams.values_mut() {
                    if s.owner == Some(*id) {
                        // With no live broker the stream waits, ownerless,
                        // for the next registration.
                        s.owner = if live.is_empty() {
                            None
                        } else {
                            Some(live[(s.id.0 % live.len() as u64) as usize])
                        };
                        s.epoch += 1;
                        s.leader_epoch += 1;
                    }
                }
                CommandReply::Ok
            }
            MetadataCommand::MoveStream { stream, to } => {
                if self.brokers.get(to).is_none_or(|b| b.fenced) {
                    return CommandReply::NoLiveBrokers;
                }
                let Some(s) = self.streams.get_mut(stream) else {
                    return CommandReply::UnknownTopic;
                };
                if s.owner != Some(*to) {
                    s.owner = Some(*to);
                    s.epoch += 1;
                    s.leader_epoch += 1;
                }
                CommandReply::Ok
            }
            MetadataCommand::ReopenStream {
                stream,
                owner,
                epoch,
            } => {
                let Some(s) = self.streams.get_mut(stream) else {
                    return CommandReply::UnknownTopic;
                };
                if s.owner == Some(*owner) && s.epoch == *epoch {
                    s.epoch += 1;
                    s.leader_epoch += 1;
                }
                CommandReply::Ok
            }
            MetadataCommand::AllocateProducerIds { count } => {
                let first = self.next_producer_id.max(1000);
                self.next_producer_id = first + i64::from(*count);
                CommandReply::ProducerIds {
                    first,
                    count: *count,
                }
            }
        }
    }

    fn add_streams(
        &mut self,
        topic: Uuid,
        first_partition: u32,
        count: u32,
        owners: &[BrokerId],
    ) -> Vec<StreamId> {
        let mut ids = Vec::with_capacity(count as usize);
        for i in 0..count {
            let partition = first_partition + i;
            let id = StreamId(self.next_stream_id);
            self.next_stream_id += 1;
            let owner = owners[(id.0 % owners.len() as u64) as usize];
            self.streams.insert(
                id,
                StreamRecord {
                    id,
                    topic,
                    partition,
                    epoch: 1,
                    leader_epoch: 0,
                    owner: Some(owner),
                    start_offset: 0,
                    end_offset: 0,
                    slices: BTreeMap::new(),
                    open_txns: BTreeMap::new(),
                    aborted_txns: Default::default(),
                },
            );
            ids.push(id);
        }
        ids
    }

    fn commit_object(
        &mut self,
        broker: BrokerId,
        broker_epoch: u64,
        key: &str,
        size: u64,
        ranges: &[CommitRange],
    ) -> CommandReply {
        if let Some(&id) = self.object_keys.get(key) {
            // A retried write: the first apply already judged it. Ranges that
            // were accepted then are now behind the end offset, so answer from
            // what the object records.
            let streams = &self.objects.get(&id).map(|o| o.streams.clone());
            let verdicts = ranges
                .iter()
                .map(|r| match streams {
                    Some(s) if s.contains(&r.stream) => RangeVerdict::Accepted,
                    _ => RangeVerdict::Fenced,
                })
                .collect();
            return CommandReply::ObjectCommitted {
                object: Some(id),
                verdicts,
            };
        }
        match self.brokers.get(&broker) {
            Some(b) if b.epoch == broker_epoch && !b.fenced => {}
            _ => return CommandReply::StaleBrokerEpoch,
        }
        let id = ObjectId(self.next_object_id);
        let mut verdicts = Vec::with_capacity(ranges.len());
        let mut accepted = Vec::new();
        for r in ranges {
            let verdict = match self.streams.get_mut(&r.stream) {
                None => RangeVerdict::UnknownStream,
                Some(s)
                    if (s.owner != Some(broker) || s.epoch != r.stream_epoch)
                        && !crate::planted::active(crate::planted::Bug::SkipStreamEpochCheck) =>
                {
                    RangeVerdict::Fenced
                }
                Some(s) if s.end_offset != r.start_offset || r.end_offset <= r.start_offset => {
                    RangeVerdict::NotContiguous {
                        expected_start: s.end_offset,
                    }
                }
                Some(s) => {
                    s.slices.insert(
                        r.start_offset,
                        StreamSlice {
                            end_offset: r.end_offset,
                            object: id,
                            max_timestamp: r.max_timestamp,
                            bytes: r.bytes,
                        },
                    );
                    s.end_offset = r.end_offset;
                    for e in &r.txn_events {
                        s.apply_txn_event(e);
                    }
                    if !accepted.contains(&r.stream) {
                        accepted.push(r.stream);
                    }
                    RangeVerdict::Accepted
                }
            };
            verdicts.push(verdict);
        }
        if accepted.is_empty() {
            return CommandReply::ObjectCommitted {
                object: None,
                verdicts,
            };
        }
        self.record_object(id, key, size, accepted);
        CommandReply::ObjectCommitted {
            object: Some(id),
            verdicts,
        }
    }

    fn compact_object(
        &mut self,
        broker: BrokerId,
        broker_epoch: u64,
        key: &str,
        size: u64,
        ranges: &[CompactRange],
        now_ms: i64,
    ) -> CommandReply {
        if let Some(&id) = self.object_keys.get(key) {
            // A retried write: answer from what the object records.
            let streams = self.objects.get(&id).map(|o| o.streams.clone());
            let accepted = ranges
                .iter()
                .map(|r| streams.as_ref().is_some_and(|s| s.contains(&r.stream)))
                .collect();
            return CommandReply::Compacted {
                object: Some(id),
                accepted,
            };
        }
        match self.brokers.get(&broker) {
            Some(b) if b.epoch == broker_epoch && !b.fenced => {}
            _ => return CommandReply::StaleBrokerEpoch,
        }
        let id = ObjectId(self.next_object_id);
        let mut accepted = Vec::with_capacity(ranges.len());
        let mut streams = Vec::new();
        let mut released = Vec::new();
        for r in ranges {
            let ok = !streams.contains(&r.stream)
                && self
                    .streams
                    .get_mut(&r.stream)
                    .is_some_and(|s| replace_slices(s, r, id, &mut released));
            if ok {
                streams.push(r.stream);
            }
            accepted.push(ok);
        }
        if streams.is_empty() {
            return CommandReply::Compacted {
                object: None,
                accepted,
            };
        }
        self.record_object(id, key, size, streams);
        for (stream, object) in released {
            let still = self
                .streams
                .get(&stream)
                .is_some_and(|s| s.slices.values().any(|sl| sl.object == object));
            if !still {
                self.unreference(stream, object, now_ms);
            }
        }
        CommandReply::Compacted {
            object: Some(id),
            accepted,
        }
    }

    /// Records a new committed object holding slices of `streams`.
    fn record_object(&mut self, id: ObjectId, key: &str, size: u64, streams: Vec<StreamId>) {
        self.next_object_id += 1;
        self.object_keys.insert(key.to_string(), id);
        self.objects.insert(
            id,
            ObjectRecord {
                id,
                key: key.to_string(),
                size,
                state: ObjectState::Committed,
                streams,
                marked_at_ms: None,
            },
        );
    }

    /// `stream` no longer has a slice in `object`; the object is marked for
    /// deletion once no stream has.
    fn unreference(&mut self, stream: StreamId, object: ObjectId, now_ms: i64) {
        if let Some(o) = self.objects.get_mut(&object) {
            o.streams.retain(|s| *s != stream);
            if o.streams.is_empty() && o.state == ObjectState::Committed {
                o.state = ObjectState::MarkDestroyed;
                o.marked_at_ms = Some(now_ms);
            }
        }
    }
}

/// Replaces the slices of `s` covering exactly `[r.start_offset,
/// r.end_offset)` by one slice in `object`, noting the objects they were in.
/// False (and `s` unchanged) unless such slices exist, contiguous.
fn replace_slices(
    s: &mut StreamRecord,
    r: &CompactRange,
    object: ObjectId,
    released: &mut Vec<(StreamId, ObjectId)>,
) -> bool {
    if r.end_offset <= r.start_offset || r.end_offset > s.end_offset {
        return false;
    }
    let mut next = r.start_offset;
    let mut max_timestamp = i64::MIN;
    for (&start, sl) in s.slices.range(r.start_offset..r.end_offset) {
        if start != next {
            return false;
        }
        next = sl.end_offset;
        max_timestamp = max_timestamp.max(sl.max_timestamp);
    }
    if next != r.end_offset {
        return false;
    }
    let old: Vec<u64> = s
        .slices
        .range(r.start_offset..r.end_offset)
        .map(|(&k, _)| k)
        .collect();
    for k in old {
        if let Some(sl) = s.slices.remove(&k) {
            released.push((s.id, sl.object));
        }
    }
    s.slices.insert(
        r.start_offset,
        StreamSlice {
            end_offset: r.end_offset,
            object,
            max_timestamp,
            bytes: r.bytes,
        },
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(img: &mut MetadataImage, id: BrokerId) -> CommandReply {
        img.apply(&MetadataCommand::RegisterBroker {
            id,
            endpoint: BrokerEndpoint {
                host: "h".into(),
                port: 9092,
            },
            rack: None,
        })
    }

    fn image_with_topic(partitions: u32) -> MetadataImage {
        let mut img = MetadataImage::default();
        img.apply(&MetadataCommand::Bootstrap {
            cluster_id: "c".into(),
        });
        register(&mut img, 1);
        let reply = img.apply(&MetadataCommand::CreateTopic {
            id: Uuid::from_u128(7),
            name: "t".into(),
            partitions,
            configs: BTreeMap::new(),
            internal: false,
        });
        assert_eq!(
            reply,
            CommandReply::TopicCreated {
                id: Uuid::from_u128(7)
            }
        );
        img
    }

    fn commit(
        img: &mut MetadataImage,
        key: &str,
        epoch: u64,
        start: u64,
        end: u64,
    ) -> CommandReply {
        img.apply(&MetadataCommand::CommitObject {
            broker: 1,
            broker_epoch: 1,
            key: key.into(),
            size: 100,
            ranges: vec![CommitRange {
                stream: StreamId(0),
                stream_epoch: epoch,
                start_offset: start,
                end_offset: end,
                max_timestamp: 0,
                bytes: 100,
                txn_events: Vec::new(),
            }],
        })
    }

    #[test]
    fn commits_must_be_contiguous_and_current() {
        let mut img = image_with_topic(2);
        assert!(matches!(
            commit(&mut img, "a", 1, 0, 10),
            CommandReply::ObjectCommitted { object: Some(_), ref verdicts } if verdicts == &[RangeVerdict::Accepted]
        ));
        assert_eq!(img.streams[&StreamId(0)].end_offset, 10);
        // A gap is refused.
        assert!(matches!(
            commit(&mut img, "b", 1, 11, 20),
            CommandReply::ObjectCommitted { object: None, ref verdicts }
                if verdicts == &[RangeVerdict::NotContiguous { expected_start: 10 }]
        ));
        // A stale epoch is refused.
        assert!(matches!(
            commit(&mut img, "c", 0, 10, 20),
            CommandReply::ObjectCommitted { object: None, ref verdicts } if verdicts == &[RangeVerdict::Fenced]
        ));
        assert_eq!(img.streams[&StreamId(0)].end_offset, 10);
        assert_eq!(img.objects.len(), 1);
    }

    #[test]
    fn batched_commits_are_judged_in_order() {
        let mut img = image_with_topic(1);
        let range = |start, end| CommitRange {
            stream: StreamId(0),
            stream_epoch: 1,
            start_offset: start,
            end_offset: end,
            max_timestamp: 0,
            bytes: 0,
            txn_events: Vec::new(),
        };
        let reply = img.apply(&MetadataCommand::CommitObjects {
            broker: 1,
            broker_epoch: 1,
            objects: vec![
                ObjectCommit {
                    key: "a".into(),
                    size: 1,
                    ranges: vec![range(0, 5)],
                },
                ObjectCommit {
                    key: "b".into(),
                    size: 1,
                    ranges: vec![range(5, 9)],
                },
                ObjectCommit {
                    key: "c".into(),
                    size: 1,
                    ranges: vec![range(10, 12)],
                },
            ],
        });
        let CommandReply::ObjectsCommitted(replies) = reply else {
            panic!("unexpected reply {reply:?}");
        };
        assert_eq!(replies.len(), 3);
        assert!(matches!(
            &replies[1],
            CommandReply::ObjectCommitted {
                object: Some(_),
                ..
            }
        ));
        assert!(matches!(
            &replies[2],
            CommandReply::ObjectCommitted { object: None, .. }
        ));
        assert_eq!(img.streams[&StreamId(0)].end_offset, 9);
    }

    #[test]
    fn transactions_follow_committed_ranges_and_trims() {
        let mut img = image_with_topic(1);
        let commit = |img: &mut MetadataImage, key: &str, epoch, start, end, events| {
            img.apply(&MetadataCommand::CommitObjects {
                broker: 1,
                broker_epoch: 1,
                objects: vec![ObjectCommit {
                    key: key.into(),
                    size: 1,
                    ranges: vec![CommitRange {
                        stream: StreamId(0),
                        stream_epoch: epoch,
                        start_offset: start,
                        end_offset: end,
                        max_timestamp: 0,
                        bytes: 1,
                        txn_events: events,
                    }],
                }],
            })
        };
        let begin = |p, o| TxnEvent::Begin {
            producer_id: p,
            offset: o,
        };
        let end = |p, o, commit| TxnEvent::End {
            producer_id: p,
            offset: o,
            commit,
        };
        commit(&mut img, "a", 1, 0, 5, vec![begin(7, 0), begin(8, 2)]);
        // A refused range changes nothing.
        commit(&mut img, "x", 0, 5, 6, vec![end(7, 5, false)]);
        let s = &img.streams[&StreamId(0)];
        assert_eq!(s.open_txns, BTreeMap::from([(7, 0), (8, 2)]));
        commit(
            &mut img,
            "b",
            1,
            5,
            8,
            vec![end(7, 5, false), end(8, 6, true), end(9, 7, false)],
        );
        let s = &img.streams[&StreamId(0)];
        assert!(s.open_txns.is_empty());
        assert_eq!(
            s.aborted_txns.iter().copied().collect::<Vec<_>>(),
            vec![AbortedTxnRecord {
                producer_id: 7,
                first_offset: 0,
                last_offset: 5
            }],
            "only the aborted transaction that was open is kept"
        );
        img.apply(&MetadataCommand::TrimStream {
            stream: StreamId(0),
            start_offset: 6,
            now_ms: 0,
        });
        assert!(img.streams[&StreamId(0)].aborted_txns.is_empty());
    }

    fn compact(img: &mut MetadataImage, key: &str, ranges: &[(u64, u64)]) -> CommandReply {
        img.apply(&MetadataCommand::CompactObject {
            broker: 1,
            broker_epoch: 1,
            key: key.into(),
            size: 50,
            ranges: ranges
                .iter()
                .map(|&(start, end)| CompactRange {
                    stream: StreamId(0),
                    start_offset: start,
                    end_offset: end,
                    bytes: 7,
                })
                .collect(),
            now_ms: 99,
        })
    }

    #[test]
    fn compaction_replaces_exactly_the_slices_it_read() {
        let mut img = image_with_topic(1);
        for (i, (start, end)) in [(0, 10), (10, 20), (20, 30), (30, 40)].iter().enumerate() {
            commit(&mut img, &format!("o{i}"), 1, *start, *end);
        }
        // Not starting at a slice boundary, not ending at one, past the end:
        // refused, nothing recorded.
        for bad in [(5, 20), (0, 15), (30, 50), (10, 10)] {
            assert_eq!(
                compact(&mut img, "bad", &[bad]),
                CommandReply::Compacted {
                    object: None,
                    accepted: vec![false]
                },
                "{bad:?}"
            );
        }
        assert!(!img.object_keys.contains_key("bad"));
        let reply = compact(&mut img, "c1", &[(0, 30)]);
        let CommandReply::Compacted {
            object: Some(id),
            accepted,
        } = reply.clone()
        else {
            panic!("unexpected {reply:?}");
        };
        assert_eq!(accepted, vec![true]);
        let s = &img.streams[&StreamId(0)];
        assert_eq!(s.slices.len(), 2);
        assert_eq!(s.slices[&0].object, id);
        assert_eq!(s.slices[&0].end_offset, 30);
        assert_eq!(s.slices[&0].bytes, 7);
        assert_eq!(s.end_offset, 40, "compaction never moves the end");
        // The three replaced objects are marked, the fourth is not.
        let marked: Vec<&str> = img
            .objects
            .values()
            .filter(|o| o.state == ObjectState::MarkDestroyed)
            .map(|o| o.key.as_str())
            .collect();
        assert_eq!(marked, vec!["o0", "o1", "o2"]);
        assert!(img
            .objects
            .values()
            .filter(|o| o.state == ObjectState::MarkDestroyed)
            .all(|o| o.marked_at_ms == Some(99)));
        // A retry answers the same; the old slices are gone so a second
        // compaction of them under another key is refused.
        assert_eq!(compact(&mut img, "c1", &[(0, 30)]), reply);
        assert_eq!(
            compact(&mut img, "c2", &[(0, 10)]),
            CommandReply::Compacted {
                object: None,
                accepted: vec![false]
            }
        );
        // A trim that moved past a slice start makes the plan stale.
        img.apply(&MetadataCommand::TrimStream {
            stream: StreamId(0),
            start_offset: 35,
            now_ms: 100,
        });
        assert_eq!(
            compact(&mut img, "c3", &[(30, 40)]),
            CommandReply::Compacted {
                object: Some(ObjectId(img.next_object_id - 1)),
                accepted: vec![true]
            }
        );
        // A stale incarnation cannot compact.
        register(&mut img, 1);
        assert_eq!(
            compact(&mut img, "c4", &[(30, 40)]),
            CommandReply::StaleBrokerEpoch
        );
    }

    #[test]
    fn compaction_keeps_objects_other_slices_still_use() {
        let mut img = image_with_topic(1);
        commit(&mut img, "a", 1, 0, 10);
        commit(&mut img, "b", 1, 10, 20);
        // Stream 0 refers to "a" once; after replacing [10, 20) "a" stays.
        compact(&mut img, "c", &[(10, 20)]);
        let state = |img: &MetadataImage, k: &str| img.objects[&img.object_keys[k]].state;
        assert_eq!(state(&img, "a"), ObjectState::Committed);
        assert_eq!(state(&img, "b"), ObjectState::MarkDestroyed);
        assert_eq!(state(&img, "c"), ObjectState::Committed);
    }

    #[test]
    fn retried_commit_is_recognised() {
        let mut img = image_with_topic(1);
        let first = commit(&mut img, "a", 1, 0, 10);
        let again = commit(&mut img, "a", 1, 0, 10);
        assert_eq!(first, again);
        assert_eq!(img.streams[&StreamId(0)].end_offset, 10);
        assert_eq!(img.objects.len(), 1);
    }

    #[test]
    fn reregistration_fences_the_previous_incarnation() {
        let mut img = image_with_topic(1);
        register(&mut img, 1);
        assert_eq!(img.streams[&StreamId(0)].epoch, 2);
        // The old incarnation's broker epoch is stale.
        assert_eq!(
            commit(&mut img, "a", 1, 0, 10),
            CommandReply::StaleBrokerEpoch
        );
    }

    #[test]
    fn delete_topic_releases_objects() {
        let mut img = image_with_topic(1);
        commit(&mut img, "a", 1, 0, 10);
        img.apply(&MetadataCommand::DeleteTopic {
            name: "t".into(),
            now_ms: 5,
        });
        assert!(img.streams.is_empty());
        assert_eq!(
            img.objects.values().next().map(|o| o.state),
            Some(ObjectState::MarkDestroyed)
        );
    }

    #[test]
    fn fencing_moves_streams_to_live_brokers() {
        let mut img = image_with_topic(4);
        register(&mut img, 2);
        let before: Vec<u64> = img.streams.values().map(|s| s.epoch).collect();
        // A stale epoch is ignored.
        assert_eq!(
            img.apply(&MetadataCommand::FenceBroker { id: 1, epoch: 7 }),
            CommandReply::StaleBrokerEpoch
        );
        assert_eq!(
            img.apply(&MetadataCommand::FenceBroker { id: 1, epoch: 1 }),
            CommandReply::Ok
        );
        assert!(img.streams.values().all(|s| s.owner == Some(2)));
        let after: Vec<u64> = img.streams.values().map(|s| s.epoch).collect();
        assert!(before.iter().zip(&after).all(|(b, a)| a > b));
        // The fenced broker can no longer commit.
        assert_eq!(
            commit(&mut img, "a", 2, 0, 10),
            CommandReply::StaleBrokerEpoch
        );
    }

    #[test]
    fn move_stream_bumps_the_epoch_once() {
        let mut img = image_with_topic(1);
        register(&mut img, 2);
        let e = img.streams[&StreamId(0)].epoch;
        img.apply(&MetadataCommand::MoveStream {
            stream: StreamId(0),
            to: 2,
        });
        img.apply(&MetadataCommand::MoveStream {
            stream: StreamId(0),
            to: 2,
        });
        assert_eq!(img.streams[&StreamId(0)].epoch, e + 1);
        assert_eq!(img.streams[&StreamId(0)].owner, Some(2));
    }

    #[test]
    fn reopen_stream_bumps_the_owners_epoch_once() {
        let mut img = image_with_topic(1);
        register(&mut img, 2);
        let s = &img.streams[&StreamId(0)];
        let (owner, e) = (s.owner.expect("owned"), s.epoch);
        let reopen = |img: &mut MetadataImage, owner, epoch| {
            img.apply(&MetadataCommand::ReopenStream {
                stream: StreamId(0),
                owner,
                epoch,
            })
        };
        // Another broker, or a stale epoch: nothing changes.
        let other = if owner == 1 { 2 } else { 1 };
        reopen(&mut img, other, e);
        reopen(&mut img, owner, e + 7);
        assert_eq!(img.streams[&StreamId(0)].epoch, e);
        // The owner at its epoch: one bump, and a retry does nothing more.
        reopen(&mut img, owner, e);
        reopen(&mut img, owner, e);
        assert_eq!(img.streams[&StreamId(0)].epoch, e + 1);
        assert_eq!(img.streams[&StreamId(0)].owner, Some(owner));
        // A commit of the failed incarnation is now refused.
        let reply = img.apply(&MetadataCommand::CommitObject {
            broker: owner,
            broker_epoch: img.brokers[&owner].epoch,
            key: "late".into(),
            size: 1,
            ranges: vec![CommitRange {
                stream: StreamId(0),
                stream_epoch: e,
                start_offset: img.streams[&StreamId(0)].end_offset,
                end_offset: img.streams[&StreamId(0)].end_offset + 1,
                max_timestamp: 0,
                bytes: 1,
                txn_events: Vec::new(),
            }],
        });
        assert_eq!(
            reply,
            CommandReply::ObjectCommitted {
                object: None,
                verdicts: vec![RangeVerdict::Fenced]
            }
        );
    }

    #[test]
    fn trim_drops_whole_slices_and_marks_their_objects() {
        let mut img = image_with_topic(1);
        commit(&mut img, "a", 1, 0, 10);
        commit(&mut img, "b", 1, 10, 20);
        // Inside the first slice: nothing is released yet.
        assert_eq!(
            img.apply(&MetadataCommand::TrimStream {
                stream: StreamId(0),
                start_offset: 5,
                now_ms: 1
            }),
            CommandReply::Trimmed { start_offset: 5 }
        );
        assert_eq!(img.streams[&StreamId(0)].slices.len(), 2);
        assert!(img
            .objects
            .values()
            .all(|o| o.state == ObjectState::Committed));
        // Past it: the first object is marked, at the proposer's time.
        img.apply(&MetadataCommand::TrimStream {
            stream: StreamId(0),
            start_offset: 12,
            now_ms: 7,
        });
        let first = &img.objects[&ObjectId(0)];
        assert_eq!(first.state, ObjectState::MarkDestroyed);
        assert_eq!(first.marked_at_ms, Some(7));
        assert_eq!(img.objects[&ObjectId(1)].state, ObjectState::Committed);
        // Never beyond the end, never backwards.
        img.apply(&MetadataCommand::TrimStream {
            stream: StreamId(0),
            start_offset: 99,
            now_ms: 8,
        });
        assert_eq!(img.streams[&StreamId(0)].start_offset, 20);
        img.apply(&MetadataCommand::TrimStream {
            stream: StreamId(0),
            start_offset: 3,
            now_ms: 9,
        });
        assert_eq!(img.streams[&StreamId(0)].start_offset, 20);
        // Destroy forgets only marked objects, and their keys.
        img.apply(&MetadataCommand::DestroyObjects {
            ids: vec![ObjectId(0), ObjectId(1)],
        });
        assert!(img.objects.is_empty());
        assert!(img.object_keys.is_empty());
    }

    #[test]
    fn trim_streams_trims_each_and_marks_a_shared_object_once_both_let_go() {
        let mut img = image_with_topic(2);
        let range = |stream, start, end| CommitRange {
            stream: StreamId(stream),
            stream_epoch: 1,
            start_offset: start,
            end_offset: end,
            max_timestamp: 0,
            bytes: 10,
            txn_events: Vec::new(),
        };
        for (key, start, end) in [("a", 0, 10), ("b", 10, 20)] {
            img.apply(&MetadataCommand::CommitObject {
                broker: 1,
                broker_epoch: 1,
                key: key.into(),
                size: 20,
                ranges: vec![range(0, start, end), range(1, start, end)],
            });
        }
        // Only stream 0 lets go of "a": it stays.
        let reply = img.apply(&MetadataCommand::TrimStreams {
            trims: vec![(StreamId(0), 10), (StreamId(9), 3)],
            now_ms: 5,
        });
        assert_eq!(
            reply,
            CommandReply::TrimmedMany(vec![
                CommandReply::Trimmed { start_offset: 10 },
                CommandReply::UnknownTopic
            ])
        );
        assert_eq!(img.objects[&ObjectId(0)].state, ObjectState::Committed);
        // Both streams in one command: stream 1 lets go too, "a" is marked;
        // stream 0 cannot pass its end.
        let reply = img.apply(&MetadataCommand::TrimStreams {
            trims: vec![(StreamId(1), 12), (StreamId(0), 99)],
            now_ms: 6,
        });
        assert_eq!(
            reply,
            CommandReply::TrimmedMany(vec![
                CommandReply::Trimmed { start_offset: 12 },
                CommandReply::Trimmed { start_offset: 20 }
            ])
        );
        assert_eq!(img.objects[&ObjectId(0)].state, ObjectState::MarkDestroyed);
        assert_eq!(img.objects[&ObjectId(0)].marked_at_ms, Some(6));
        // Stream 0 holds no slice of "b" any more, stream 1 still does.
        assert_eq!(img.objects[&ObjectId(1)].state, ObjectState::Committed);
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("a.b_c-1").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("a/b").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }

    #[test]
    fn create_partitions_only_grows() {
        let mut img = image_with_topic(2);
        assert!(matches!(
            img.apply(&MetadataCommand::CreatePartitions {
                name: "t".into(),
                total: 2
            }),
            CommandReply::InvalidPartitions(_)
        ));
        assert_eq!(
            img.apply(&MetadataCommand::CreatePartitions {
                name: "t".into(),
                total: 5
            }),
            CommandReply::Ok
        );
        assert_eq!(img.topics["t"].partitions.len(), 5);
    }
}
