//! A small Kafka client for the simulation's workload: create topics, get an
//! idempotent producer id, produce one record batch, fetch, list offsets.
//!
//! It owns one connection per broker address and a metadata cache (topic →
//! partition → leader), and nothing else. All I/O goes through
//! [`proto::seams::Net`] and all waiting through `tokio::time`, so the same
//! client runs on real TCP and on the simulator's network and clock.
//!
//! What it guarantees, and what it must never do:
//! - It never retries on its own. Each call sends a request at most once, so
//!   a history of calls is a history of what the brokers were asked.
//! - Every request is bounded by [`ClientConfig::request_timeout`] (connect,
//!   send and answer together) and every answer by
//!   [`ClientConfig::max_response_bytes`]. A connection that timed out, broke
//!   or carried a bad answer is dropped and reopened on next use.
//! - Every error says whether the request's effect is known
//!   ([`ClientError::outcome`]): definite (it did not happen) or
//!   indeterminate (it may have happened). A checker relies on this, so when
//!   in doubt an error is indeterminate.
//! - Bytes from the network are never trusted: a bad frame or answer is an
//!   error, never a panic. (One gap remains, outside this module: the
//!   `kafka-protocol` decoder reserves arrays from their wire counts before
//!   reading them, as `oxbow/src/alloc.rs` explains; responses here come from
//!   Oxbow brokers, not from an adversary.)

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ConsumerGroupHeartbeatRequest, CreateTopicsRequest, FetchRequest,
    FindCoordinatorRequest, GroupId, InitProducerIdRequest, ListOffsetsRequest, MetadataRequest,
    MetadataResponse, OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, ProducerId,
    RequestHeader, ResponseHeader, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proto::seams::{BoxConn, Clock, Net, SystemClock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

/// A KIP-848 member's partitions: topic id → partition numbers.
pub type GroupAssignment = std::collections::BTreeMap<uuid::Uuid, std::collections::BTreeSet<i32>>;

// Request versions, all within what `broker/src/kafka/versions.rs` serves.
// Fetch stays at 12, the last version that names topics (13+ use topic ids).
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 7;
const INIT_PRODUCER_ID_VERSION: i16 = 4;
const LIST_OFFSETS_VERSION: i16 = 7;
const FIND_COORDINATOR_VERSION: i16 = 3;
const OFFSET_COMMIT_VERSION: i16 = 8;
const OFFSET_FETCH_VERSION: i16 = 7;
const CONSUMER_GROUP_HEARTBEAT_VERSION: i16 = 1;

/// Kafka's "earliest" for [`ClusterClient::list_offsets`].
pub const EARLIEST_TIMESTAMP: i64 = -2;
/// Kafka's "latest" (the high watermark) for [`ClusterClient::list_offsets`].
pub const LATEST_TIMESTAMP: i64 = -1;

/// Most records [`ClusterClient::produce`] puts in one batch.
pub const MAX_RECORDS_PER_BATCH: usize = 1 << 16;

/// The transaction timeout an idempotent producer announces (Kafka's default).
const PRODUCER_TRANSACTION_TIMEOUT_MS: i32 = 60_000;

// Record batch v2 layout (Kafka's DefaultRecordBatch).
const LOG_OVERHEAD: usize = 12;
const BATCH_HEADER_LEN: usize = 61;
const OFF_BATCH_LENGTH: usize = 8;
const OFF_MAGIC: usize = 16;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_RECORDS_COUNT: usize = 57;
const MAGIC_V2: i8 = 2;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_CONTROL: i16 = 0x20;
/// The smallest encoded record: length, attributes, three deltas/lengths and
/// a header count, one byte each, plus a one-byte value length.
const MIN_RECORD_LEN: usize = 7;

/// Kafka error codes the client (and the workloads) react to.
const UNKNOWN_SERVER_ERROR: i16 = -1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub(crate) const REQUEST_TIMED_OUT: i16 = 7;
const NETWORK_EXCEPTION: i16 = 13;
pub(crate) const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub(crate) const NOT_COORDINATOR: i16 = 16;
pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
pub(crate) const FENCED_MEMBER_EPOCH: i16 = 110;
const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const KAFKA_STORAGE_ERROR: i16 = 56;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const UNKNOWN_TOPIC_ID: i16 = 100;

/// Bounds of a [`ClusterClient`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Bound on one request: connecting, sending and waiting for the answer.
    pub request_timeout: Duration,
    /// Largest response frame accepted; a larger one is an error and closes
    /// the connection.
    pub max_response_bytes: usize,
    /// How long a fetch lets the broker wait for data (`max_wait_ms`).
    pub fetch_max_wait: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(5),
            max_response_bytes: 64 * 1024 * 1024,
            fetch_max_wait: Duration::from_millis(100),
        }
    }
}

/// The idempotent-producer fields of a produce batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIds {
    /// The producer id from [`ClusterClient::init_producer_id`].
    pub id: i64,
    /// Its epoch, from the same answer.
    pub epoch: i16,
    /// Sequence of the batch's first record; the others follow it.
    pub base_sequence: i32,
}

/// What one fetch of one partition returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchResult {
    /// (offset, value) of every record at or above the fetch offset, in the
    /// order the broker sent them. A null value reads as empty.
    pub records: Vec<(i64, Bytes)>,
    /// The partition's high watermark when the broker answered.
    pub high_watermark: i64,
    /// The partition's first offset when the broker answered.
    pub log_start_offset: i64,
    /// The partition's last stable offset when the broker answered.
    pub last_stable_offset: i64,
    /// One past the last offset of the last whole batch in the answer
    /// (records, markers and skipped aborted records alike); -1 if none.
    pub next_offset: i64,
}

/// Whether a failed request may still have taken effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did not take effect.
    Definite,
    /// It may or may not have taken effect; only a later read can tell.
    Indeterminate,
}

/// Why a request failed. [`ClientError::outcome`] says whether it may still
/// have taken effect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with an error code.
    #[error("{api:?}: broker error {} ({code}){}", code_name(*code), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Broker {
        api: ApiKey,
        code: i16,
        message: Option<String>,
    },
    /// The metadata names no live leader for the partition; nothing was sent.
    #[error("no known leader for {topic}-{partition}")]
    NoLeader { topic: String, partition: i32 },
    /// The metadata needed to route the request could not be fetched; the
    /// request itself was not sent.
    #[error("metadata unavailable: {0}")]
    MetadataUnavailable(Box<ClientError>),
    /// Connecting or sending failed (or ran out of time) before the whole
    /// request was written. The connection is dropped, so the broker sees at
    /// most a truncated frame, which it cannot act on.
    #[error("{api:?} to {addr}: not sent: {source}")]
    NotSent {
        api: ApiKey,
        addr: String,
        source: io::Error,
    },
    /// The request was sent but no answer came within the request timeout.
    #[error("{api:?} to {addr}: no answer within {after:?}")]
    Timeout {
        api: ApiKey,
        addr: String,
        after: Duration,
    },
    /// The connection broke after the request was sent.
    #[error("{api:?} to {addr}: connection lost after sending: {source}")]
    ConnectionLost {
        api: ApiKey,
        addr: String,
        source: io::Error,
    },
    /// The answer was too large, did not decode, or did not answer the
    /// request (wrong correlation id, missing partition).
    #[error("{api:?} from {addr}: bad response: {reason}")]
    BadResponse {
        api: ApiKey,
        addr: String,
        reason: String,
    },
    /// The request could not be built or encoded; nothing was sent.
    #[error("{api:?}: invalid request: {reason}")]
    InvalidRequest { api: ApiKey, reason: String },
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

fn code_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => e.to_string(),
        None => "NONE".to_string(),
    }
}

/// Codes that do not prove a write failed. Kafka documents
/// `REQUEST_TIMED_OUT` and `NOT_ENOUGH_REPLICAS_AFTER_APPEND` as "may have
/// been written"; Oxbow answers `REQUEST_TIMED_OUT` to a retried batch whose
/// original is still being committed, and `KAFKA_STORAGE_ERROR` when its
/// object commit gave up, which the controller may have applied anyway.
fn code_is_ambiguous(code: i16) -> bool {
    matches!(
        code,
        UNKNOWN_SERVER_ERROR
            | REQUEST_TIMED_OUT
            | NETWORK_EXCEPTION
            | NOT_ENOUGH_REPLICAS_AFTER_APPEND
            | KAFKA_STORAGE_ERROR
    )
}

/// Codes after which the cached leader is probably wrong.
fn code_invalidates_metadata(code: i16) -> bool {
    matches!(
        code,
        UNKNOWN_TOPIC_OR_PARTITION
            | LEADER_NOT_AVAILABLE
            | NOT_LEADER_OR_FOLLOWER
            | FENCED_LEADER_EPOCH
            | UNKNOWN_LEADER_EPOCH
            | UNKNOWN_TOPIC_ID
    )
}

impl ClientError {
    /// Whether the request may still have taken effect. A broker error code
    /// is definite (the broker refused the request) except for the few codes
    /// that do not prove it (see `code_is_ambiguous`); so is every failure
    /// before the request was fully sent. A timeout, a connection lost after
    /// sending, or an unreadable answer is indeterminate.
    pub fn outcome(&self) -> Outcome {
        match self {
            ClientError::Broker { code, .. } if code_is_ambiguous(*code) => Outcome::Indeterminate,
            ClientError::Broker { .. }
            | ClientError::NoLeader { .. }
            | ClientError::MetadataUnavailable(_)
            | ClientError::NotSent { .. }
            | ClientError::InvalidRequest { .. } => Outcome::Definite,
            ClientError::Timeout { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::BadResponse { .. } => Outcome::Indeterminate,
        }
    }

    /// `outcome() == Outcome::Definite`.
    pub fn is_definite(&self) -> bool {
        self.outcome() == Outcome::Definite
    }

    /// Whether trying again may succeed: Kafka's retriable error codes, and
    /// every transport failure. A malformed answer or request is not.
    pub fn retriable(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => {
                ResponseError::try_from_code(*code).is_some_and(|e| e.is_retriable())
            }
            ClientError::MetadataUnavailable(cause) => cause.retriable(),
            ClientError::NoLeader { .. }
            | ClientError::NotSent { .. }
            | ClientError::Timeout { .. }
            | ClientError::ConnectionLost { .. } => true,
            ClientError::BadResponse { .. } | ClientError::InvalidRequest { .. } => false,
        }
    }

    /// The broker's error code, if the broker answered with one.
    pub fn code(&self) -> Option<i16> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the cached routing for the request's partition is suspect.
    fn invalidates_metadata(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => code_invalidates_metadata(*code),
            ClientError::NoLeader { .. }
            | ClientError::NotSent { .. }
            | ClientError::Timeout { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::BadResponse { .. } => true,
            ClientError::MetadataUnavailable(_) | ClientError::InvalidRequest { .. } => false,
        }
    }

    fn broker(api: ApiKey, code: i16, message: Option<&StrBytes>) -> Self {
        ClientError::Broker {
            api,
            code,
            message: message.map(|m| m.as_str().to_string()),
        }
    }
}

/// A Kafka client for a cluster of Oxbow brokers. Methods take `&mut self`:
/// one request at a time, in call order.
pub struct ClusterClient {
    net: Arc<dyn Net>,
    clock: Arc<dyn Clock>,
    bootstrap: Vec<String>,
    client_id: String,
    config: ClientConfig,
    /// Open connections by `host:port`; at most one per broker.
    connections: BTreeMap<String, BoxConn>,
    /// Broker node id → `host:port`, from the last metadata.
    brokers: BTreeMap<i32, String>,
    /// Topic → partition → leader node id, from the last metadata.
    leaders: BTreeMap<String, BTreeMap<i32, i32>>,
    /// Set when a request failed in a way that suggests the routing moved;
    /// the next routed request refreshes the metadata first.
    metadata_stale: bool,
    /// Which address the next request that any broker can answer goes to;
    /// moved on after a failure.
    any_cursor: usize,
    next_correlation_id: i32,
    /// Group id → its coordinator's address, until a failure.
    coordinators: BTreeMap<String, String>,
}

impl ClusterClient {
    /// A client that finds the cluster through `bootstrap` (`host:port`
    /// addresses) with the default [`ClientConfig`] and the system clock for
    /// record timestamps. Connects lazily: nothing happens until a request.
    pub fn new(net: Arc<dyn Net>, bootstrap: Vec<String>, client_id: &str) -> Self {
        ClusterClient {
            net,
            clock: Arc::new(SystemClock),
            bootstrap,
            client_id: client_id.to_string(),
            config: ClientConfig::default(),
            connections: BTreeMap::new(),
            brokers: BTreeMap::new(),
            leaders: BTreeMap::new(),
            metadata_stale: true,
            any_cursor: 0,
            next_correlation_id: 1,
            coordinators: BTreeMap::new(),
        }
    }

    /// Replaces the bounds.
    pub fn with_config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the clock that stamps produced records (the simulation passes
    /// its own, so that runs replay).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The bounds in force.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The leader of a partition according to the cached metadata.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        self.leaders.get(topic)?.get(&partition).copied()
    }

    /// Broker node id → `host:port`, according to the cached metadata.
    pub fn brokers(&self) -> &BTreeMap<i32, String> {
        &self.brokers
    }

    /// Closes every connection (they reopen on next use) and marks the
    /// metadata stale.
    pub fn disconnect_all(&mut self) {
        self.connections.clear();
        self.metadata_stale = true;
    }

    /// Refreshes the broker list and every topic's partition leaders from one
    /// broker (the known brokers and the bootstrap addresses in turn, moving
    /// on after a failure). On success the cache is replaced whole.
    pub async fn metadata(&mut self) -> Result<()> {
        let request = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false)
            .with_include_cluster_authorized_operations(false)
            .with_include_topic_authorized_operations(false);
        let resp = self
            .call_any(ApiKey::Metadata, METADATA_VERSION, &request)
            .await?;
        self.apply_metadata(resp);
        Ok(())
    }

    fn apply_metadata(&mut self, resp: MetadataResponse) {
        self.brokers = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        self.leaders = resp
            .topics
            .iter()
            .filter(|t| t.error_code == 0)
            .filter_map(|t| {
                let name = t.name.as_ref()?.0.as_str().to_string();
                let partitions = t
                    .partitions
                    .iter()
                    .filter(|p| p.error_code == 0 && p.leader_id.0 >= 0)
                    .map(|p| (p.partition_index, p.leader_id.0))
                    .collect();
                Some((name, partitions))
            })
            .collect();
        self.metadata_stale = false;
    }

    /// Creates `name` with `partitions` partitions. A topic that already
    /// exists is success (whatever its partition count).
    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        configs: &[(&str, String)],
    ) -> Result<()> {
        let configs = configs
            .iter()
            .map(|(k, v)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string(k.to_string()))
                    .with_value(Some(StrBytes::from_string(v.clone())))
            })
            .collect();
        let topic = CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_assignments(Vec::new())
            .with_configs(configs);
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(self.broker_side_timeout_ms())
            .with_validate_only(false);
        let resp = self
            .call_any(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request)
            .await?;
        // A new topic changes the routing.
        self.metadata_stale = true;
        let Some(result) = resp.topics.iter().find(|t| t.name.0.as_str() == name) else {
            return Err(self.bad_any_response(ApiKey::CreateTopics, "no result for the topic"));
        };
        match result.error_code {
            0 | TOPIC_ALREADY_EXISTS => Ok(()),
            code => Err(ClientError::broker(
                ApiKey::CreateTopics,
                code,
                result.error_message.as_ref(),
            )),
        }
    }

    /// A new idempotent producer id and epoch (no transactional id).
    pub async fn init_producer_id(&mut self) -> Result<(i64, i16)> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(PRODUCER_TRANSACTION_TIMEOUT_MS)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let resp = self
            .call_any(ApiKey::InitProducerId, INIT_PRODUCER_ID_VERSION, &request)
            .await?;
        if resp.error_code != 0 {
            return Err(ClientError::broker(
                ApiKey::InitProducerId,
                resp.error_code,
                None,
            ));
        }
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// Appends `values` to `topic`-`partition` as one uncompressed v2 record
    /// batch (null keys, timestamps from the client's clock), carrying the
    /// producer's id, epoch and base sequence when given. Returns the base
    /// offset the leader assigned, which for a retried idempotent batch is
    /// the original's.
    ///
    /// With `acks` 0 the broker sends no answer: `Ok(-1)` then only means
    /// the request was written to the connection, and the outcome is unknown.
    pub async fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        producer: Option<ProducerIds>,
        values: &[Bytes],
        acks: i16,
    ) -> Result<i64> {
        self.produce_in(topic, partition, producer, values, acks, None)
            .await
    }

    /// [`Self::produce`], as part of transaction `transactional_id` when
    /// given (a transactional batch).
    pub async fn produce_in(
        &mut self,
        topic: &str,
        partition: i32,
        producer: Option<ProducerIds>,
        values: &[Bytes],
        acks: i16,
        transactional_id: Option<&str>,
    ) -> Result<i64> {
        let timestamp_ms = self.clock.now_ms();
        let request = build_produce_request_in(
            topic,
            partition,
            producer,
            values,
            acks,
            self.broker_side_timeout_ms(),
            timestamp_ms,
            transactional_id,
        )?;
        let addr = self.leader_addr(topic, partition).await?;
        if acks == 0 {
            let sent = self
                .send_only(&addr, ApiKey::Produce, PRODUCE_VERSION, &request)
                .await;
            return self.routed(sent).map(|()| -1);
        }
        let resp = self
            .call(&addr, ApiKey::Produce, PRODUCE_VERSION, &request)
            .await;
        let resp = self.routed(resp)?;
        let found = resp
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == partition);
        let result = match found {
            None => Err(ClientError::BadResponse {
                api: ApiKey::Produce,
                addr,
                reason: format!("no result for {topic}-{partition}"),
            }),
            Some(p) if p.error_code != 0 => Err(ClientError::broker(
                ApiKey::Produce,
                p.error_code,
                p.error_message.as_ref(),
            )),
            Some(p) => Ok(p.base_offset),
        };
        self.routed(result)
    }

    /// Reads `topic`-`partition` from `offset`, up to about `max_bytes`
    /// (the broker returns at least one whole batch when there is one),
    /// waiting at most [`ClientConfig::fetch_max_wait`] on the broker for
    /// data. Reads uncommitted isolation. Records below `offset` (the start
    /// of the batch holding it) are skipped, and a partial batch at the end
    /// of the answer is ignored.
    pub async fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
    ) -> Result<FetchResult> {
        self.fetch_isolated(topic, partition, offset, max_bytes, false)
            .await
    }

    /// [`Self::fetch`]; with `read_committed`, at isolation level 1: up to
    /// the last stable offset, without the records of aborted transactions
    /// (dropped as Kafka's consumer does, from the answer's aborted list).
    pub async fn fetch_isolated(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        read_committed: bool,
    ) -> Result<FetchResult> {
        let addr = self.leader_addr(topic, partition).await?;
        let wait_ms = i32::try_from(self.config.fetch_max_wait.as_millis()).unwrap_or(i32::MAX);
        let request = FetchRequest::default()
            .with_cluster_id(None)
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(i8::from(read_committed))
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(max_bytes)])])
            .with_forgotten_topics_data(Vec::new())
            .with_rack_id(StrBytes::from_static_str(""));
        let resp = self
            .call(&addr, ApiKey::Fetch, FETCH_VERSION, &request)
            .await;
        let resp = self.routed(resp)?;
        let result = if resp.error_code != 0 {
            Err(ClientError::broker(ApiKey::Fetch, resp.error_code, None))
        } else {
            let found = resp
                .responses
                .iter()
                .filter(|t| t.topic.0.as_str() == topic)
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.partition_index == partition);
            match found {
                None => Err(ClientError::BadResponse {
                    api: ApiKey::Fetch,
                    addr: addr.clone(),
                    reason: format!("no data for {topic}-{partition}"),
                }),
                Some(p) if p.error_code != 0 => {
                    Err(ClientError::broker(ApiKey::Fetch, p.error_code, None))
                }
                Some(p) => {
                    let records = p.records.clone().unwrap_or_default();
                    let aborted: Option<Vec<(i64, i64)>> = read_committed.then(|| {
                        p.aborted_transactions
                            .iter()
                            .flatten()
                            .map(|a| (a.producer_id.0, a.first_offset))
                            .collect()
                    });
                    match decode_records_in(&records, offset, aborted.as_deref()) {
                        Ok(records) => Ok(FetchResult {
                            next_offset: next_offset_after(&p.records.clone().unwrap_or_default()),
                            records,
                            high_watermark: p.high_watermark,
                            log_start_offset: p.log_start_offset,
                            last_stable_offset: p.last_stable_offset,
                        }),
                        Err(reason) => Err(ClientError::BadResponse {
                            api: ApiKey::Fetch,
                            addr: addr.clone(),
                            reason,
                        }),
                    }
                }
            }
        };
        self.routed(result)
    }

    /// The offset for `timestamp` in `topic`-`partition`:
    /// [`EARLIEST_TIMESTAMP`] gives the log start, [`LATEST_TIMESTAMP`] the
    /// high watermark, any other the first record at or after that time
    /// (-1 if none).
    pub async fn list_offsets(
        &mut self,
        topic: &str,
        partition: i32,
        timestamp: i64,
    ) -> Result<i64> {
        let addr = self.leader_addr(topic, partition).await?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(0)
            .with_timeout_ms(self.broker_side_timeout_ms())
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(timestamp)])]);
        let resp = self
            .call(&addr, ApiKey::ListOffsets, LIST_OFFSETS_VERSION, &request)
            .await;
        let resp = self.routed(resp)?;
        let found = resp
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition);
        let result = match found {
            None => Err(ClientError::BadResponse {
                api: ApiKey::ListOffsets,
                addr,
                reason: format!("no offset for {topic}-{partition}"),
            }),
            Some(p) if p.error_code != 0 => {
                Err(ClientError::broker(ApiKey::ListOffsets, p.error_code, None))
            }
            Some(p) => Ok(p.offset),
        };
        self.routed(result)
    }

    // ------------------------------------------------------ group offsets

    /// The address of `group`'s coordinator (FindCoordinator v3).
    async fn coordinator(&mut self, group: &str) -> Result<String> {
        if let Some(addr) = self.coordinators.get(group) {
            return Ok(addr.clone());
        }
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(0);
        let resp = self
            .call_any(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION, &request)
            .await?;
        if resp.error_code != 0 {
            return Err(ClientError::broker(
                ApiKey::FindCoordinator,
                resp.error_code,
                resp.error_message.as_ref(),
            ));
        }
        let addr = format!("{}:{}", resp.host.as_str(), resp.port);
        self.coordinators.insert(group.to_string(), addr.clone());
        Ok(addr)
    }

    /// Forgets the group's coordinator after a failure that suggests it moved.
    fn coordinated<T>(&mut self, group: &str, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.coordinators.remove(group);
        }
        result
    }

    /// Commits `offset` for `topic`-`partition` in `group` as a simple
    /// (memberless) consumer does: OffsetCommit v8 with generation -1.
    pub async fn commit_offset(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<()> {
        let addr = self.coordinator(group).await?;
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)])]);
        let resp = self
            .call(&addr, ApiKey::OffsetCommit, OFFSET_COMMIT_VERSION, &request)
            .await;
        let result = resp.and_then(|resp| {
            let code = resp
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.partition_index == partition)
                .map(|p| p.error_code)
                .ok_or_else(|| ClientError::BadResponse {
                    api: ApiKey::OffsetCommit,
                    addr: addr.clone(),
                    reason: "no result for the partition".into(),
                })?;
            if code == 0 {
                Ok(())
            } else {
                Err(ClientError::broker(ApiKey::OffsetCommit, code, None))
            }
        });
        self.coordinated(group, result)
    }

    // -------------------------------------------------------- transactions

    /// The address of `transactional_id`'s coordinator (FindCoordinator v3,
    /// key type 1).
    async fn txn_coordinator(&mut self, transactional_id: &str) -> Result<String> {
        let key = format!("txn:{transactional_id}");
        if let Some(addr) = self.coordinators.get(&key) {
            return Ok(addr.clone());
        }
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(transactional_id.to_string()))
            .with_key_type(1);
        let resp = self
            .call_any(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION, &request)
            .await?;
        if resp.error_code != 0 {
            return Err(ClientError::broker(
                ApiKey::FindCoordinator,
                resp.error_code,
                resp.error_message.as_ref(),
            ));
        }
        let addr = format!("{}:{}", resp.host.as_str(), resp.port);
        self.coordinators.insert(key, addr.clone());
        Ok(addr)
    }

    /// Sends a request to `transactional_id`'s coordinator and checks its
    /// top-level error code; the coordinator is looked up again after any
    /// failure.
    async fn txn_call<R: Request>(
        &mut self,
        transactional_id: &str,
        api: ApiKey,
        version: i16,
        request: &R,
        code: impl Fn(&R::Response) -> i16,
    ) -> Result<R::Response> {
        let addr = self.txn_coordinator(transactional_id).await;
        let result = match addr {
            Ok(addr) => self.call(&addr, api, version, request).await,
            Err(e) => Err(e),
        };
        let result = result.and_then(|resp| match code(&resp) {
            0 => Ok(resp),
            c => Err(ClientError::broker(api, c, None)),
        });
        self.coordinated(&format!("txn:{transactional_id}"), result)
    }

    /// InitProducerId v4 with a transactional id: the producer id and a
    /// new epoch (which fences older producers of the id).
    pub async fn init_transactions(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
    ) -> Result<(i64, i16)> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            ))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let resp = self
            .txn_call(
                transactional_id,
                ApiKey::InitProducerId,
                INIT_PRODUCER_ID_VERSION,
                &request,
                |r| r.error_code,
            )
            .await?;
        Ok((resp.producer_id.0, resp.producer_epoch))
    }

    /// AddPartitionsToTxn v3 for `partitions` of `topic`.
    pub async fn add_partitions_to_txn(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        topic: &str,
        partitions: &[i32],
    ) -> Result<()> {
        use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
        let request = kafka_protocol::messages::AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_v3_and_below_producer_id(ProducerId(producer.0))
            .with_v3_and_below_producer_epoch(producer.1)
            .with_v3_and_below_topics(vec![AddPartitionsToTxnTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(partitions.to_vec())]);
        self.txn_call(
            transactional_id,
            ApiKey::AddPartitionsToTxn,
            3,
            &request,
            |r| {
                r.results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|t| t.results_by_partition.iter())
                    .map(|p| p.partition_error_code)
                    .find(|c| *c != 0)
                    .unwrap_or(0)
            },
        )
        .await
        .map(|_| ())
    }

    /// EndTxn v3: commits or aborts the producer's transaction.
    pub async fn end_txn(
        &mut self,
        transactional_id: &str,
        producer: (i64, i16),
        commit: bool,
    ) -> Result<()> {
        let request = kafka_protocol::messages::EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(
                transactional_id.to_string(),
            )))
            .with_producer_id(ProducerId(producer.0))
            .with_producer_epoch(producer.1)
            .with_committed(commit);
        self.txn_call(transactional_id, ApiKey::EndTxn, 3, &request, |r| {
            r.error_code
        })
        .await
        .map(|_| ())
    }

    /// The offset `group` has committed for `topic`-`partition` (-1 if
    /// none), from OffsetFetch v7.
    pub async fn fetch_offset(&mut self, group: &str, topic: &str, partition: i32) -> Result<i64> {
        let addr = self.coordinator(group).await?;
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partition_indexes(vec![partition])]))
            .with_require_stable(true);
        let resp = self
            .call(&addr, ApiKey::OffsetFetch, OFFSET_FETCH_VERSION, &request)
            .await;
        let result = resp.and_then(|resp| {
            if resp.error_code != 0 {
                return Err(ClientError::broker(
                    ApiKey::OffsetFetch,
                    resp.error_code,
                    None,
                ));
            }
            let p = resp
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.partition_index == partition)
                .ok_or_else(|| ClientError::BadResponse {
                    api: ApiKey::OffsetFetch,
                    addr: addr.clone(),
                    reason: "no result for the partition".into(),
                })?;
            if p.error_code != 0 {
                return Err(ClientError::broker(ApiKey::OffsetFetch, p.error_code, None));
            }
            Ok(p.committed_offset)
        });
        self.coordinated(group, result)
    }

    /// One KIP-848 `ConsumerGroupHeartbeat` (v1) of member `member_id` at
    /// `epoch` (0 joins with `topics`), reporting `owned`. Answers the
    /// member epoch and the new assignment, if the coordinator sent one.
    pub async fn consumer_heartbeat(
        &mut self,
        group: &str,
        member_id: &str,
        epoch: i32,
        topics: Option<Vec<String>>,
        owned: &GroupAssignment,
    ) -> Result<(i32, Option<GroupAssignment>)> {
        use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
        let addr = self.coordinator(group).await?;
        let request = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_member_id(StrBytes::from_string(member_id.to_string()))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(if epoch == 0 { 10_000 } else { -1 })
            .with_subscribed_topic_names(
                topics.map(|ts| ts.into_iter().map(|t| topic_name(&t)).collect()),
            )
            .with_topic_partitions(Some(
                owned
                    .iter()
                    .map(|(id, ps)| {
                        TopicPartitions::default()
                            .with_topic_id(*id)
                            .with_partitions(ps.iter().copied().collect())
                    })
                    .collect(),
            ));
        let resp = self
            .call(
                &addr,
                ApiKey::ConsumerGroupHeartbeat,
                CONSUMER_GROUP_HEARTBEAT_VERSION,
                &request,
            )
            .await;
        let result = resp.and_then(|resp| {
            if resp.error_code != 0 {
                return Err(ClientError::broker(
                    ApiKey::ConsumerGroupHeartbeat,
                    resp.error_code,
                    resp.error_message.as_ref(),
                ));
            }
            let assignment = resp.assignment.map(|a| {
                let mut out = GroupAssignment::new();
                for t in a.topic_partitions {
                    out.entry(t.topic_id).or_default().extend(t.partitions);
                }
                out
            });
            Ok((resp.member_epoch, assignment))
        });
        self.coordinated(group, result)
    }

    // ------------------------------------------------------------- routing

    /// The broker-side wait a request announces (`timeout_ms`): below the
    /// client's own bound, so the broker's answer arrives before the client
    /// gives up.
    fn broker_side_timeout_ms(&self) -> i32 {
        i32::try_from(self.config.request_timeout.as_millis() * 4 / 5).unwrap_or(i32::MAX)
    }

    /// Marks the metadata stale when a routed request's failure suggests the
    /// leader moved.
    fn routed<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            if e.invalidates_metadata() {
                self.metadata_stale = true;
            }
        }
        result
    }

    /// The address of the partition's leader, refreshing the metadata first
    /// when it is stale or does not know the partition.
    async fn leader_addr(&mut self, topic: &str, partition: i32) -> Result<String> {
        if self.metadata_stale || self.leader(topic, partition).is_none() {
            if let Err(e) = self.metadata().await {
                return Err(ClientError::MetadataUnavailable(Box::new(e)));
            }
        }
        self.leader(topic, partition)
            .and_then(|id| self.brokers.get(&id))
            .cloned()
            .ok_or_else(|| ClientError::NoLeader {
                topic: topic.to_string(),
                partition,
            })
    }

    /// Every address a request for any broker may go to: the known brokers
    /// by node id, then the bootstrap addresses not among them.
    fn any_addresses(&self) -> Vec<String> {
        let mut out: Vec<String> = self.brokers.values().cloned().collect();
        for b in &self.bootstrap {
            if !out.contains(b) {
                out.push(b.clone());
            }
        }
        out
    }

    fn bad_any_response(&self, api: ApiKey, reason: &str) -> ClientError {
        let addrs = self.any_addresses();
        let addr = addrs
            .get(self.any_cursor % addrs.len().max(1))
            .cloned()
            .unwrap_or_default();
        ClientError::BadResponse {
            api,
            addr,
            reason: reason.to_string(),
        }
    }

    /// Sends a request any broker can answer, to the address under the
    /// cursor; after a failure the cursor moves on to the next address.
    async fn call_any<R: Request>(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<R::Response> {
        let addrs = self.any_addresses();
        let Some(addr) = addrs.get(self.any_cursor % addrs.len().max(1)).cloned() else {
            return Err(ClientError::InvalidRequest {
                api,
                reason: "no broker address known (empty bootstrap list)".to_string(),
            });
        };
        let result = self.call(&addr, api, version, request).await;
        if result.is_err() {
            self.any_cursor = self.any_cursor.wrapping_add(1);
        }
        result
    }

    // ------------------------------------------------------------ transport

    fn take_correlation_id(&mut self) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        id
    }

    /// One request and its answer on the connection to `addr`. The
    /// connection goes back to the pool only after a good answer; on any
    /// error it is dropped.
    async fn call<R: Request>(
        &mut self,
        addr: &str,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<R::Response> {
        let deadline = Instant::now() + self.config.request_timeout;
        let correlation_id = self.take_correlation_id();
        let frame = encode_request(api, version, correlation_id, &self.client_id, request)
            .map_err(|reason| ClientError::InvalidRequest { api, reason })?;
        let mut conn = self.send(addr, api, &frame, deadline).await?;
        let max = self.config.max_response_bytes;
        let body = match tokio::time::timeout_at(deadline, read_frame(&mut conn, max)).await {
            Err(_) => {
                debug!(
                    addr,
                    ?api,
                    correlation_id,
                    "request timed out; dropping connection"
                );
                return Err(ClientError::Timeout {
                    api,
                    addr: addr.to_string(),
                    after: self.config.request_timeout,
                });
            }
            Ok(Err(FrameError::Io(source))) => {
                debug!(addr, ?api, error = %source, "connection lost; dropping it");
                return Err(ClientError::ConnectionLost {
                    api,
                    addr: addr.to_string(),
                    source,
                });
            }
            Ok(Err(FrameError::Size(size))) => {
                return Err(ClientError::BadResponse {
                    api,
                    addr: addr.to_string(),
                    reason: format!("response frame of {size} bytes is outside 4..={max}"),
                });
            }
            Ok(Ok(body)) => body,
        };
        let response =
            decode_response::<R::Response>(body, correlation_id, version).map_err(|reason| {
                debug!(addr, ?api, %reason, "undecodable response; dropping connection");
                ClientError::BadResponse {
                    api,
                    addr: addr.to_string(),
                    reason,
                }
            })?;
        self.connections.insert(addr.to_string(), conn);
        Ok(response)
    }

    /// A request that gets no answer (produce with acks 0).
    async fn send_only<R: Request>(
        &mut self,
        addr: &str,
        api: ApiKey,
        version: i16,
        request: &R,
    ) -> Result<()> {
        let deadline = Instant::now() + self.config.request_timeout;
        let correlation_id = self.take_correlation_id();
        let frame = encode_request(api, version, correlation_id, &self.client_id, request)
            .map_err(|reason| ClientError::InvalidRequest { api, reason })?;
        let conn = self.send(addr, api, &frame, deadline).await?;
        self.connections.insert(addr.to_string(), conn);
        Ok(())
    }

    /// Writes a whole frame to `addr`, connecting first if needed, and
    /// returns the connection (out of the pool) for the answer.
    async fn send(
        &mut self,
        addr: &str,
        api: ApiKey,
        frame: &[u8],
        deadline: Instant,
    ) -> Result<BoxConn> {
        let not_sent = |source: io::Error| ClientError::NotSent {
            api,
            addr: addr.to_string(),
            source,
        };
        let mut conn = match self.connections.remove(addr) {
            Some(conn) => conn,
            None => match tokio::time::timeout_at(deadline, self.net.connect(addr)).await {
                Err(_) => {
                    return Err(not_sent(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect timed out",
                    )))
                }
                Ok(Err(e)) => return Err(not_sent(e)),
                Ok(Ok(conn)) => conn,
            },
        };
        let write = async {
            conn.write_all(frame).await?;
            conn.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Err(_) => Err(not_sent(io::Error::new(
                io::ErrorKind::TimedOut,
                "write timed out",
            ))),
            Ok(Err(e)) => Err(not_sent(e)),
            Ok(Ok(())) => Ok(conn),
        }
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

// ------------------------------------------------------------------ codecs
//
// Pure functions over bytes, tested without a server.

/// The produce request for one batch of `values`.
#[cfg(test)]
fn build_produce_request(
    topic: &str,
    partition: i32,
    producer: Option<ProducerIds>,
    values: &[Bytes],
    acks: i16,
    timeout_ms: i32,
    timestamp_ms: i64,
) -> Result<ProduceRequest> {
    build_produce_request_in(
        topic,
        partition,
        producer,
        values,
        acks,
        timeout_ms,
        timestamp_ms,
        None,
    )
}

/// [`build_produce_request`], in transaction `transactional_id` when given.
#[allow(clippy::too_many_arguments)]
fn build_produce_request_in(
    topic: &str,
    partition: i32,
    producer: Option<ProducerIds>,
    values: &[Bytes],
    acks: i16,
    timeout_ms: i32,
    timestamp_ms: i64,
    transactional_id: Option<&str>,
) -> Result<ProduceRequest> {
    let invalid = |reason: String| ClientError::InvalidRequest {
        api: ApiKey::Produce,
        reason,
    };
    if values.is_empty() || values.len() > MAX_RECORDS_PER_BATCH {
        return Err(invalid(format!(
            "a batch holds 1..={MAX_RECORDS_PER_BATCH} records, not {}",
            values.len()
        )));
    }
    let (producer_id, producer_epoch) = producer.map_or((-1, -1), |p| (p.id, p.epoch));
    let records: Vec<Record> = values
        .iter()
        .zip(0i32..)
        .map(|(value, i)| Record {
            transactional: transactional_id.is_some(),
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i64::from(i),
            // The encoder keeps records in one batch while (offset -
            // sequence) agrees, and writes the first record's sequence as
            // the batch's base sequence (-1 without a producer).
            sequence: match producer {
                Some(p) => p.base_sequence.wrapping_add(i),
                None => i - 1,
            },
            timestamp: timestamp_ms,
            key: None,
            value: Some(value.clone()),
            headers: IndexMap::new(),
        })
        .collect();
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| invalid(format!("encoding the batch: {e}")))?;
    Ok(ProduceRequest::default()
        .with_transactional_id(
            transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_string()))),
        )
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch.freeze()))])]))
}

/// A whole request frame: length, header, body.
fn encode_request<R: Request>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    request: &R,
) -> Result<Bytes, String> {
    debug_assert_eq!(api as i16, R::KEY, "api key and request type agree");
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let mut buf = BytesMut::new();
    buf.put_i32(0); // length, patched below
    header
        .encode(&mut buf, R::header_version(version))
        .map_err(|e| format!("request header: {e}"))?;
    request
        .encode(&mut buf, version)
        .map_err(|e| format!("{api:?} v{version}: {e}"))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| "request over 2 GiB".to_string())?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Decodes a response frame's body (after the length) as `T`, checking that
/// it answers `correlation_id` and that nothing is left over.
fn decode_response<T: Decodable + HeaderVersion>(
    frame: Bytes,
    correlation_id: i32,
    version: i16,
) -> Result<T, String> {
    let mut buf = frame;
    let header = ResponseHeader::decode(&mut buf, T::header_version(version))
        .map_err(|e| format!("response header: {e}"))?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "answers correlation id {}, expected {correlation_id}",
            header.correlation_id
        ));
    }
    let body = T::decode(&mut buf, version).map_err(|e| format!("v{version} body: {e}"))?;
    if buf.has_remaining() {
        return Err(format!(
            "{} bytes left over after the v{version} body",
            buf.remaining()
        ));
    }
    Ok(body)
}

/// Why a frame could not be read.
#[derive(Debug)]
enum FrameError {
    /// The connection failed or closed mid-frame.
    Io(io::Error),
    /// The length prefix is outside `4..=max` (a response holds at least its
    /// correlation id).
    Size(i64),
}

/// Reads one length-prefixed frame. The buffer grows as bytes arrive, so a
/// peer that announces a large frame and sends nothing costs nothing.
async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    rd: &mut R,
    max: usize,
) -> Result<Bytes, FrameError> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await.map_err(FrameError::Io)?;
    let announced = i32::from_be_bytes(len);
    let size = match usize::try_from(announced) {
        Ok(size) if (4..=max).contains(&size) => size,
        _ => return Err(FrameError::Size(i64::from(announced))),
    };
    let mut buf = BytesMut::with_capacity(size.min(64 * 1024));
    while buf.len() < size {
        let want = (size - buf.len()).min(1024 * 1024);
        buf.reserve(want);
        let n = (&mut *rd)
            .take(want as u64)
            .read_buf(&mut buf)
            .await
            .map_err(FrameError::Io)?;
        if n == 0 {
            return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
    }
    Ok(buf.freeze())
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The records of a fetched partition's concatenated batches, at or above
/// `from_offset`. A partial batch at the end (the broker cut the answer at
/// its byte limit) is ignored; control batches are skipped. Anything else
/// that is not a whole, valid, uncompressed v2 batch is an error. Each
/// batch's record count is checked against its size before decoding, so a
/// bad header cannot make the decoder reserve memory it does not need.
/// One past the last offset of the last whole batch of `records` (-1 if
/// there is none), from the batch headers alone.
fn next_offset_after(records: &Bytes) -> i64 {
    let mut next = -1;
    let mut rest = &records[..];
    while rest.len() >= BATCH_HEADER_LEN {
        let Ok(len) = usize::try_from(be_i32(rest, OFF_BATCH_LENGTH)) else {
            break;
        };
        let total = LOG_OVERHEAD.saturating_add(len);
        if total > rest.len() || total < BATCH_HEADER_LEN {
            break;
        }
        let base = i64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let delta = i64::from(be_i32(rest, OFF_LAST_OFFSET_DELTA));
        next = base.saturating_add(delta).saturating_add(1);
        rest = &rest[total..];
    }
    next
}

#[cfg(test)]
fn decode_records(records: &Bytes, from_offset: i64) -> Result<Vec<(i64, Bytes)>, String> {
    decode_records_in(records, from_offset, None)
}

/// [`decode_records`]; with `aborted` (producer id, first offset), the
/// records of aborted transactions are dropped: from its first offset, a
/// producer's transactional records are skipped until its abort marker.
fn decode_records_in(
    records: &Bytes,
    from_offset: i64,
    aborted: Option<&[(i64, i64)]>,
) -> Result<Vec<(i64, Bytes)>, String> {
    let mut pending: Vec<(i64, i64)> = aborted.unwrap_or_default().to_vec();
    pending.sort_by_key(|(_, first)| *first);
    let mut pending = pending.into_iter().peekable();
    let mut aborting = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut rest = records.clone();
    while rest.len() >= LOG_OVERHEAD {
        let batch_length = be_i32(&rest, OFF_BATCH_LENGTH);
        let Ok(batch_length) = usize::try_from(batch_length) else {
            return Err(format!("negative batch length {batch_length}"));
        };
        let total = LOG_OVERHEAD.saturating_add(batch_length);
        if total > rest.len() {
            break; // a partial trailing batch
        }
        if total < BATCH_HEADER_LEN {
            return Err(format!("batch of {total} bytes is shorter than its header"));
        }
        let batch = rest.split_to(total);
        let magic = batch[OFF_MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(format!("batch with magic {magic}, expected 2"));
        }
        let attributes = i16::from_be_bytes([batch[OFF_ATTRIBUTES], batch[OFF_ATTRIBUTES + 1]]);
        let codec = attributes & ATTR_COMPRESSION_MASK;
        if codec != 0 {
            return Err(format!("compressed batch (codec {codec}) is not supported"));
        }
        let count = be_i32(&batch, OFF_RECORDS_COUNT);
        let fits = usize::try_from(count)
            .is_ok_and(|c| c.saturating_mul(MIN_RECORD_LEN) <= total - BATCH_HEADER_LEN);
        if !fits {
            return Err(format!(
                "batch of {total} bytes cannot hold {count} records"
            ));
        }
        let set = RecordBatchDecoder::decode(&mut batch.clone())
            .map_err(|e| format!("record batch: {e}"))?;
        for r in set.records {
            while let Some((pid, _)) = pending.next_if(|(_, first)| *first <= r.offset) {
                aborting.insert(pid);
            }
            if attributes & ATTR_CONTROL != 0 {
                // A marker ends the producer's transaction: an abort marker
                // ends the skipping (Kafka's consumer drops the producer
                // from its aborted set on any abort marker).
                let key = r.key.as_deref().unwrap_or_default();
                if key.len() >= 4 && i16::from_be_bytes([key[2], key[3]]) == 0 {
                    aborting.remove(&r.producer_id);
                }
                continue;
            }
            if r.transactional && aborting.contains(&r.producer_id) {
                continue;
            }
            if r.offset >= from_offset {
                out.push((r.offset, r.value.unwrap_or_default()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use broker::storage::batch;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{FetchResponse, ProduceResponse, RequestKind, ResponseKind};
    use proto::rpc::BoxFuture;
    use proto::seams::BoxListener;
    use tokio::io::DuplexStream;

    fn values(vs: &[&str]) -> Vec<Bytes> {
        vs.iter()
            .map(|v| Bytes::copy_from_slice(v.as_bytes()))
            .collect()
    }

    /// Decodes a request frame the way `broker::kafka` does.
    fn broker_decode(frame: &Bytes) -> (RequestHeader, RequestKind) {
        let mut body = frame.slice(4..);
        assert_eq!(
            be_i32(frame, 0) as usize,
            body.len(),
            "length prefix covers the rest"
        );
        let api = ApiKey::try_from(i16::from_be_bytes([body[0], body[1]])).expect("api key");
        let version = i16::from_be_bytes([body[2], body[3]]);
        let header =
            RequestHeader::decode(&mut body, api.request_header_version(version)).expect("header");
        let request = RequestKind::decode(api, &mut body, version).expect("body");
        assert!(!body.has_remaining(), "nothing left over");
        (header, request)
    }

    fn produce_frame(producer: Option<ProducerIds>, vs: &[Bytes]) -> Bytes {
        let req = build_produce_request("orders", 3, producer, vs, -1, 4000, 1_700_000_000_123)
            .expect("request");
        encode_request(ApiKey::Produce, PRODUCE_VERSION, 42, "sim-1", &req).expect("frame")
    }

    fn only_batch(request: RequestKind) -> (ProduceRequest, Bytes) {
        let RequestKind::Produce(req) = request else {
            panic!("not a produce request");
        };
        let records = req.topic_data[0].partition_data[0]
            .records
            .clone()
            .expect("records");
        (req, records)
    }

    #[test]
    fn idempotent_produce_request_is_one_batch_the_broker_accepts() {
        let vs = values(&["a", "bb", "ccc"]);
        let producer = ProducerIds {
            id: 7000,
            epoch: 3,
            base_sequence: 41,
        };
        let (header, request) = broker_decode(&produce_frame(Some(producer), &vs));
        assert_eq!(header.request_api_key, ApiKey::Produce as i16);
        assert_eq!(header.request_api_version, PRODUCE_VERSION);
        assert_eq!(header.correlation_id, 42);
        assert_eq!(header.client_id.as_ref().map(|c| c.as_str()), Some("sim-1"));
        let (req, records) = only_batch(request);
        assert_eq!(req.acks, -1);
        assert_eq!(req.timeout_ms, 4000);
        assert_eq!(req.transactional_id, None);
        assert_eq!(req.topic_data[0].name.0.as_str(), "orders");
        assert_eq!(req.topic_data[0].partition_data[0].index, 3);

        // The broker's own validator: one whole v2 batch, CRC, counts.
        let batches = batch::split_batches(&records).expect("broker accepts the batch");
        assert_eq!(batches.len(), 1);
        let h = batch::validate(&batches[0]).expect("valid");
        assert_eq!(h.magic, 2);
        assert_eq!(h.compression(), 0);
        assert!(!h.is_transactional() && !h.is_control());
        assert_eq!(h.producer_id, 7000);
        assert_eq!(h.producer_epoch, 3);
        assert_eq!(h.base_sequence, 41);
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.base_timestamp, 1_700_000_000_123);

        let set = RecordBatchDecoder::decode(&mut records.clone()).expect("decodes");
        let got: Vec<_> = set.records.iter().map(|r| r.value.clone()).collect();
        assert_eq!(got, vs.into_iter().map(Some).collect::<Vec<_>>());
        assert!(set.records.iter().all(|r| r.key.is_none()));
    }

    #[test]
    fn plain_produce_request_has_no_producer_fields() {
        let (_, request) = broker_decode(&produce_frame(None, &values(&["x", "y"])));
        let (_, records) = only_batch(request);
        let batches = batch::split_batches(&records).expect("broker accepts the batch");
        let h = batch::validate(&batches[0]).expect("valid");
        assert_eq!(h.producer_id, -1);
        assert_eq!(h.producer_epoch, -1);
        assert_eq!(h.base_sequence, -1);
        assert_eq!(h.records_count, 2);
    }

    #[test]
    fn empty_or_oversized_batch_is_refused_before_sending() {
        let err = build_produce_request("t", 0, None, &[], 1, 1000, 0).expect_err("empty");
        assert!(matches!(err, ClientError::InvalidRequest { .. }));
        assert!(err.is_definite());
        let many = vec![Bytes::new(); MAX_RECORDS_PER_BATCH + 1];
        assert!(build_produce_request("t", 0, None, &many, 1, 1000, 0).is_err());
    }

    #[test]
    fn every_request_encodes_with_the_header_the_broker_expects() {
        let metadata = MetadataRequest::default().with_topics(None);
        let frame = encode_request(ApiKey::Metadata, METADATA_VERSION, 1, "c", &metadata)
            .expect("metadata");
        assert!(matches!(broker_decode(&frame).1, RequestKind::Metadata(_)));
        let init = InitProducerIdRequest::default().with_transactional_id(None);
        let frame = encode_request(
            ApiKey::InitProducerId,
            INIT_PRODUCER_ID_VERSION,
            2,
            "c",
            &init,
        )
        .expect("init");
        let RequestKind::InitProducerId(init) = broker_decode(&frame).1 else {
            panic!("not InitProducerId");
        };
        assert_eq!(init.transactional_id, None);
        let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
            .with_name(topic_name("t"))
            .with_num_partitions(2)
            .with_replication_factor(-1)]);
        let frame = encode_request(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, 3, "c", &create)
            .expect("create");
        assert!(matches!(
            broker_decode(&frame).1,
            RequestKind::CreateTopics(_)
        ));
        let list = ListOffsetsRequest::default().with_replica_id(BrokerId(-1));
        let frame =
            encode_request(ApiKey::ListOffsets, LIST_OFFSETS_VERSION, 4, "c", &list).expect("list");
        assert!(matches!(
            broker_decode(&frame).1,
            RequestKind::ListOffsets(_)
        ));
        let fetch = FetchRequest::default().with_topics(vec![FetchTopic::default()
            .with_topic(topic_name("t"))
            .with_partitions(vec![FetchPartition::default().with_fetch_offset(9)])]);
        let frame = encode_request(ApiKey::Fetch, FETCH_VERSION, 5, "c", &fetch).expect("fetch");
        let RequestKind::Fetch(fetch) = broker_decode(&frame).1 else {
            panic!("not Fetch");
        };
        assert_eq!(fetch.topics[0].topic.0.as_str(), "t");
        assert_eq!(fetch.topics[0].partitions[0].fetch_offset, 9);
    }

    /// A response frame's body (no length prefix) as the broker writes it.
    fn response_body(correlation_id: i32, api: ApiKey, version: i16, body: &ResponseKind) -> Bytes {
        let mut out = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut out, api.response_header_version(version))
            .expect("header");
        body.encode(&mut out, version).expect("body");
        out.freeze()
    }

    fn test_batch(base: i64, vs: &[&str]) -> Vec<u8> {
        let recs: Vec<batch::TestRecord<'_>> =
            vs.iter().map(|v| (None, Some(v.as_bytes()))).collect();
        batch::build_test_batch(base, -1, -1, -1, &recs)
    }

    fn fetch_response(records: Bytes) -> FetchResponse {
        let partition = PartitionData::default()
            .with_partition_index(0)
            .with_high_watermark(17)
            .with_last_stable_offset(17)
            .with_log_start_offset(4)
            .with_records(Some(records));
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(topic_name("t"))
            .with_partitions(vec![partition])])
    }

    #[test]
    fn fetch_response_decodes_to_records_from_the_offset_without_the_partial_tail() {
        let mut records = Vec::new();
        records.extend(test_batch(10, &["v10", "v11", "v12"]));
        records.extend(test_batch(13, &["v13", "v14"]));
        let third = test_batch(15, &["v15", "v16"]);
        records.extend(&third[..third.len() - 5]); // cut at the broker's byte limit
        let body = response_body(
            9,
            ApiKey::Fetch,
            FETCH_VERSION,
            &ResponseKind::Fetch(fetch_response(Bytes::from(records))),
        );
        let resp: FetchResponse = decode_response(body, 9, FETCH_VERSION).expect("decodes");
        let p = &resp.responses[0].partitions[0];
        assert_eq!((p.high_watermark, p.log_start_offset), (17, 4));
        let got = decode_records(p.records.as_ref().expect("records"), 11).expect("records decode");
        let want: Vec<(i64, Bytes)> = [(11, "v11"), (12, "v12"), (13, "v13"), (14, "v14")]
            .iter()
            .map(|(o, v)| (*o, Bytes::from_static(v.as_bytes())))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn fetched_records_of_a_tiny_partial_tail_or_nothing_are_empty() {
        assert_eq!(decode_records(&Bytes::new(), 0), Ok(vec![]));
        let b = test_batch(0, &["a"]);
        assert_eq!(
            decode_records(&Bytes::copy_from_slice(&b[..7]), 0),
            Ok(vec![])
        );
        assert_eq!(decode_records(&Bytes::copy_from_slice(&b), 1), Ok(vec![]));
    }

    #[test]
    fn corrupt_fetched_batches_are_errors() {
        let good = test_batch(0, &["a", "b"]);
        let mut crc = good.clone();
        let last = crc.len() - 1;
        crc[last] ^= 0xff;
        assert!(decode_records(&Bytes::from(crc), 0).is_err(), "bad CRC");
        let mut magic = good.clone();
        magic[OFF_MAGIC] = 1;
        assert!(decode_records(&Bytes::from(magic), 0).is_err(), "magic 1");
        let mut compressed = good.clone();
        compressed[OFF_ATTRIBUTES + 1] |= 2;
        assert!(
            decode_records(&Bytes::from(compressed), 0).is_err(),
            "snappy"
        );
        let mut count = good.clone();
        count[OFF_RECORDS_COUNT..OFF_RECORDS_COUNT + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(
            decode_records(&Bytes::from(count), 0).is_err(),
            "huge count"
        );
        let mut negative = good.clone();
        negative[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(
            decode_records(&Bytes::from(negative), 0).is_err(),
            "negative length"
        );
        let mut short = good;
        short[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&10i32.to_be_bytes());
        assert!(
            decode_records(&Bytes::from(short), 0).is_err(),
            "shorter than a header"
        );
    }

    #[tokio::test]
    async fn oversized_short_or_truncated_frames_are_errors() {
        async fn read(bytes: Vec<u8>, max: usize) -> Result<Bytes, FrameError> {
            read_frame(&mut &bytes[..], max).await
        }
        let mut big = 65i32.to_be_bytes().to_vec();
        big.extend([0; 65]);
        assert!(matches!(read(big, 64).await, Err(FrameError::Size(65))));
        assert!(matches!(
            read((-1i32).to_be_bytes().to_vec(), 64).await,
            Err(FrameError::Size(-1))
        ));
        assert!(matches!(
            read(3i32.to_be_bytes().to_vec(), 64).await,
            Err(FrameError::Size(3))
        ));
        let mut cut = 10i32.to_be_bytes().to_vec();
        cut.extend([1, 2, 3]);
        assert!(matches!(read(cut, 64).await, Err(FrameError::Io(_))));
        assert!(matches!(read(vec![0, 0], 64).await, Err(FrameError::Io(_))));
        let mut ok = 4i32.to_be_bytes().to_vec();
        ok.extend([0, 0, 0, 7]);
        assert_eq!(
            read(ok, 64).await.expect("frame"),
            Bytes::from_static(&[0, 0, 0, 7])
        );
    }

    #[test]
    fn garbage_or_mismatched_responses_are_errors() {
        let body = response_body(
            5,
            ApiKey::Fetch,
            FETCH_VERSION,
            &ResponseKind::Fetch(fetch_response(Bytes::new())),
        );
        assert!(decode_response::<FetchResponse>(body.clone(), 6, FETCH_VERSION).is_err());
        let mut extra = BytesMut::from(&body[..]);
        extra.put_u8(0);
        assert!(decode_response::<FetchResponse>(extra.freeze(), 5, FETCH_VERSION).is_err());
        let cut = body.slice(..body.len() - 3);
        assert!(decode_response::<FetchResponse>(cut, 5, FETCH_VERSION).is_err());
        let garbage = Bytes::from_static(&[0, 0, 0, 5, 0xff, 0x13, 0x00, 0x80, 0x81]);
        assert!(decode_response::<ProduceResponse>(garbage, 5, PRODUCE_VERSION).is_err());
    }

    // ------------------------------------------------- a scripted broker

    /// What the scripted broker does with a produce request.
    #[derive(Debug, Clone)]
    enum Reply {
        Offset(i64),
        Code(i16),
        /// Read the request and never answer.
        Silence,
        /// Read the request and close the connection.
        Close,
        /// Answer with a frame that does not decode.
        Garbage,
    }

    #[derive(Default)]
    struct Script {
        refuse_connections: bool,
        produce: VecDeque<Reply>,
        connects: usize,
        metadata_requests: usize,
        produce_requests: usize,
    }

    /// A `Net` whose every connection reaches one scripted broker, node 1 at
    /// `broker:9092`, leader of `t`-0.
    #[derive(Clone, Default)]
    struct ScriptedNet(Arc<Mutex<Script>>);

    impl ScriptedNet {
        fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
            f(&mut self.0.lock().expect("script lock"))
        }
    }

    impl Net for ScriptedNet {
        fn connect<'a>(&'a self, _addr: &'a str) -> BoxFuture<'a, io::Result<BoxConn>> {
            Box::pin(async move {
                let refuse = self.with(|s| {
                    s.connects += 1;
                    s.refuse_connections
                });
                if refuse {
                    return Err(io::ErrorKind::ConnectionRefused.into());
                }
                let (client, server) = tokio::io::duplex(1 << 20);
                tokio::spawn(scripted_broker(server, self.clone()));
                Ok(Box::new(client) as BoxConn)
            })
        }

        fn bind<'a>(&'a self, _addr: &'a str) -> BoxFuture<'a, io::Result<BoxListener>> {
            Box::pin(async { Err(io::ErrorKind::Unsupported.into()) })
        }
    }

    async fn scripted_broker(mut conn: DuplexStream, net: ScriptedNet) {
        while let Ok(frame) = read_frame(&mut conn, 1 << 20).await {
            let mut buf = frame;
            let api = ApiKey::try_from(i16::from_be_bytes([buf[0], buf[1]])).expect("api");
            let version = i16::from_be_bytes([buf[2], buf[3]]);
            let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
                .expect("header");
            let request = RequestKind::decode(api, &mut buf, version).expect("request");
            let response = match request {
                RequestKind::Metadata(_) => {
                    net.with(|s| s.metadata_requests += 1);
                    ResponseKind::Metadata(scripted_metadata())
                }
                RequestKind::Produce(req) => {
                    let reply = net.with(|s| {
                        s.produce_requests += 1;
                        s.produce.pop_front().unwrap_or(Reply::Offset(0))
                    });
                    let mut p = PartitionProduceResponse::default()
                        .with_index(req.topic_data[0].partition_data[0].index);
                    match reply {
                        Reply::Offset(o) => p.base_offset = o,
                        Reply::Code(c) => p.error_code = c,
                        Reply::Silence => {
                            std::future::pending::<()>().await;
                        }
                        Reply::Close => return,
                        Reply::Garbage => {
                            let _ = conn.write_all(&[0, 0, 0, 6, 0, 0, 0, 0, 0xff, 0xff]).await;
                            continue;
                        }
                    }
                    ResponseKind::Produce(ProduceResponse::default().with_responses(vec![
                        TopicProduceResponse::default()
                            .with_name(req.topic_data[0].name.clone())
                            .with_partition_responses(vec![p]),
                    ]))
                }
                other => panic!("scripted broker got {other:?}"),
            };
            let body = response_body(header.correlation_id, api, version, &response);
            let mut out = BytesMut::new();
            out.put_i32(body.len() as i32);
            out.extend_from_slice(&body);
            if conn.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    fn scripted_metadata() -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(vec![MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("broker"))
                .with_port(9092)])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(topic_name("t")))
                .with_partitions(vec![MetadataResponsePartition::default()
                    .with_partition_index(0)
                    .with_leader_id(BrokerId(1))])])
    }

    fn scripted_client(net: &ScriptedNet) -> ClusterClient {
        ClusterClient::new(Arc::new(net.clone()), vec!["boot:1".into()], "test").with_config(
            ClientConfig {
                request_timeout: Duration::from_secs(2),
                ..ClientConfig::default()
            },
        )
    }

    async fn produce_one(client: &mut ClusterClient) -> Result<i64> {
        client.produce("t", 0, None, &values(&["v"]), -1).await
    }

    #[tokio::test]
    async fn produce_routes_through_metadata_to_the_leader() {
        let net = ScriptedNet::default();
        net.with(|s| s.produce.extend([Reply::Offset(5), Reply::Offset(6)]));
        let mut client = scripted_client(&net);
        assert_eq!(produce_one(&mut client).await.expect("produce"), 5);
        assert_eq!(produce_one(&mut client).await.expect("produce"), 6);
        assert_eq!(client.leader("t", 0), Some(1));
        assert_eq!(
            client.brokers().get(&1).map(String::as_str),
            Some("broker:9092")
        );
        // One metadata request; one connection to the bootstrap address and
        // one to the leader, reused.
        net.with(|s| {
            assert_eq!(s.metadata_requests, 1);
            assert_eq!(s.connects, 2);
        });
    }

    #[tokio::test]
    async fn not_leader_is_definite_retriable_and_refreshes_metadata() {
        let net = ScriptedNet::default();
        net.with(|s| {
            s.produce
                .extend([Reply::Code(NOT_LEADER_OR_FOLLOWER), Reply::Offset(1)])
        });
        let mut client = scripted_client(&net);
        let err = produce_one(&mut client).await.expect_err("not leader");
        assert_eq!(err.code(), Some(NOT_LEADER_OR_FOLLOWER));
        assert_eq!(err.outcome(), Outcome::Definite);
        assert!(err.retriable());
        assert!(err.to_string().contains("NotLeaderOrFollower"), "{err}");
        assert_eq!(produce_one(&mut client).await.expect("produce"), 1);
        net.with(|s| assert_eq!(s.metadata_requests, 2));
    }

    #[tokio::test]
    async fn codes_that_do_not_prove_failure_are_indeterminate() {
        let net = ScriptedNet::default();
        net.with(|s| {
            s.produce.extend([
                Reply::Code(REQUEST_TIMED_OUT),
                Reply::Code(KAFKA_STORAGE_ERROR),
            ])
        });
        let mut client = scripted_client(&net);
        for _ in 0..2 {
            let err = produce_one(&mut client).await.expect_err("error code");
            assert_eq!(err.outcome(), Outcome::Indeterminate, "{err}");
            assert!(err.retriable());
        }
        net.with(|s| s.produce.push_back(Reply::Code(45)));
        let err = produce_one(&mut client).await.expect_err("out of order");
        assert_eq!(err.outcome(), Outcome::Definite);
        assert!(!err.retriable());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_an_indeterminate_timeout_and_the_connection_is_replaced() {
        let net = ScriptedNet::default();
        net.with(|s| s.produce.extend([Reply::Silence, Reply::Offset(3)]));
        let mut client = scripted_client(&net);
        let started = Instant::now();
        let err = produce_one(&mut client).await.expect_err("timeout");
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert_eq!(err.outcome(), Outcome::Indeterminate);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(produce_one(&mut client).await.expect("produce"), 3);
        // The bootstrap address, the leader, and the leader again after the
        // timeout (the metadata refresh that follows goes to it first).
        net.with(|s| assert_eq!(s.connects, 3));
    }

    #[tokio::test]
    async fn a_connection_closed_after_sending_is_indeterminate() {
        let net = ScriptedNet::default();
        net.with(|s| s.produce.extend([Reply::Close, Reply::Offset(8)]));
        let mut client = scripted_client(&net);
        let err = produce_one(&mut client).await.expect_err("closed");
        assert!(matches!(err, ClientError::ConnectionLost { .. }), "{err}");
        assert_eq!(err.outcome(), Outcome::Indeterminate);
        assert_eq!(produce_one(&mut client).await.expect("produce"), 8);
    }

    #[tokio::test]
    async fn a_garbage_answer_is_indeterminate_and_drops_the_connection() {
        let net = ScriptedNet::default();
        net.with(|s| s.produce.extend([Reply::Garbage, Reply::Offset(4)]));
        let mut client = scripted_client(&net);
        let err = produce_one(&mut client).await.expect_err("garbage");
        assert!(matches!(err, ClientError::BadResponse { .. }), "{err}");
        assert_eq!(err.outcome(), Outcome::Indeterminate);
        assert!(!err.retriable());
        let connects = net.with(|s| s.connects);
        assert_eq!(produce_one(&mut client).await.expect("produce"), 4);
        net.with(|s| assert_eq!(s.connects, connects + 1));
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_definite_and_nothing_is_sent() {
        let net = ScriptedNet::default();
        net.with(|s| s.refuse_connections = true);
        let mut client = scripted_client(&net);
        let err = produce_one(&mut client).await.expect_err("refused");
        assert!(matches!(err, ClientError::MetadataUnavailable(_)), "{err}");
        assert_eq!(err.outcome(), Outcome::Definite);
        assert!(err.retriable());
        let err = client.metadata().await.expect_err("refused");
        assert!(matches!(err, ClientError::NotSent { .. }), "{err}");
        assert!(err.is_definite());
        net.with(|s| assert_eq!(s.produce_requests, 0));
    }

    #[tokio::test]
    async fn a_partition_without_a_leader_is_definite() {
        let net = ScriptedNet::default();
        let mut client = scripted_client(&net);
        let err = client
            .produce("t", 9, None, &values(&["v"]), 1)
            .await
            .expect_err("no such partition");
        assert!(matches!(err, ClientError::NoLeader { .. }), "{err}");
        assert!(err.is_definite() && err.retriable());
    }
}
