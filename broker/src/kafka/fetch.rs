//! Fetch and ListOffsets. Fetch reads committed data only (below the high
//! watermark): from the log cache when it holds the offset, otherwise from
//! objects through the reader. It long-polls on the partitions' high
//! watermark signals for `max_wait_ms` / `min_bytes`, never by spinning.
//!
//! Fetch sessions (KIP-227) are refused the way Apache Kafka does when its
//! session cache is full: every response carries session id 0, so clients
//! keep sending full requests.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::select_all;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use proto::StreamId;
use tracing::warn;

use crate::broker::Broker;
use crate::errors::ErrorCode;
use crate::storage::batch;
use crate::storage::reader::{self, ObjectLocation};
use crate::storage::txn_index::AbortedTxn;

/// Longest long-poll we honour, whatever the client asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

struct PartitionRead {
    code: ErrorCode,
    high_watermark: i64,
    last_stable: i64,
    log_start: i64,
    records: Vec<Bytes>,
    bytes: usize,
    /// read_committed: the aborted transactions the records overlap.
    aborted: Option<Vec<AbortedTxn>>,
}

impl PartitionRead {
    fn error(code: ErrorCode) -> Self {
        PartitionRead {
            code,
            high_watermark: -1,
            last_stable: -1,
            log_start: -1,
            records: Vec::new(),
            bytes: 0,
            aborted: None,
        }
    }
}

/// Keeps the batches that start below `upper` (the LSO is always a batch
/// boundary, so no batch straddles it).
fn clip(read: &mut PartitionRead, upper: u64) {
    let keep = read
        .records
        .iter()
        .take_while(|b| batch::parse_header(b).is_ok_and(|h| (h.base_offset as u64) < upper))
        .count();
    read.records.truncate(keep);
    read.bytes = read.records.iter().map(|b| b.len()).sum();
}

/// Kafka's FetchRequest `isolation_level` 1.
const READ_COMMITTED: i8 = 1;

/// Reads committed batches of one partition from `offset`, up to
/// `max_bytes`; with read_committed, only below the last stable offset.
async fn read_partition(
    broker: &Broker,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    isolation: i8,
) -> PartitionRead {
    let Some(stream_id) = broker
        .metadata
        .read(|img| img.stream_of(topic, partition).map(|s| s.id))
    else {
        return PartitionRead::error(ErrorCode::UnknownTopicOrPartition);
    };
    let Some(open) = broker.partition(stream_id) else {
        return PartitionRead::error(ErrorCode::NotLeaderOrFollower);
    };
    let lso = open.state.last_stable_offset();
    let hw = open.state.high_watermark().max(lso);
    let log_start = open.state.log_start();
    let mut read = PartitionRead {
        code: ErrorCode::None,
        high_watermark: hw as i64,
        last_stable: lso as i64,
        log_start: log_start as i64,
        records: Vec::new(),
        bytes: 0,
        aborted: None,
    };
    if offset < 0 || (offset as u64) < log_start || (offset as u64) > hw {
        read.code = ErrorCode::OffsetOutOfRange;
        return read;
    }
    let offset = offset as u64;
    let committed = isolation == READ_COMMITTED
        && !proto::planted::active(proto::planted::Bug::LsoIsHighWatermark);
    let upper = if committed { lso } else { hw };
    if committed {
        read.aborted = Some(Vec::new());
    }
    if offset >= upper || max_bytes == 0 {
        return read;
    }
    read_records(broker, stream_id, offset, upper, max_bytes, &mut read).await;
    if committed {
        clip(&mut read, upper);
        if !read.records.is_empty() {
            read.aborted = Some(open.state.aborted_between(offset, upper));
        }
    }
    read
}

/// Fills `read` with batches of `stream_id` from `offset`, below `hw`.
async fn read_records(
    broker: &Broker,
    stream_id: StreamId,
    offset: u64,
    hw: u64,
    max_bytes: usize,
    read: &mut PartitionRead,
) {
    // The log cache holds batches as written; once key compaction has
    // cleaned the offset's slice, readers get the cleaned object instead.
    let cleaned = broker.metadata.read(|img| {
        let compacted_topic = img
            .streams
            .get(&stream_id)
            .and_then(|s| img.topic_by_id(s.topic))
            .is_some_and(|t| crate::compaction::is_compacted_topic(img, t));
        compacted_topic
            && reader::locate(img, stream_id, offset)
                .is_some_and(|(o, _)| crate::compaction::is_compacted_key(&o.key))
    });
    let cached = if cleaned {
        None
    } else {
        broker.log_cache.read(stream_id, offset, max_bytes)
    };
    if let Some(cached) = cached {
        read.bytes = cached.bytes;
        read.records = cached.batches;
        return;
    }
    match reader::read_committed(
        &broker.metadata,
        &broker.reader,
        stream_id,
        offset,
        hw,
        max_bytes,
    )
    .await
    {
        // Committed (below the high watermark) but neither cached nor in
        // the metadata view yet: the view lags the commit by a moment.
        Ok(None) => {}
        Ok(Some(r)) => {
            read.bytes = r.bytes;
            read.records = r.batches;
        }
        Err(e) => {
            warn!(stream_id = stream_id.0, offset, error = %e, "reading object failed");
            read.code = ErrorCode::KafkaStorageError;
        }
    }
}

fn concat(parts: &[Bytes]) -> Bytes {
    match parts {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => {
            let mut b = BytesMut::with_capacity(many.iter().map(|p| p.len()).sum());
            for p in many {
                b.extend_from_slice(p);
            }
            b.freeze()
        }
    }
}

pub async fn handle(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> FetchResponse {
    let mut resp = FetchResponse::default();
    resp.session_id = 0;
    if req.session_id != 0 {
        // An incremental fetch on a session we never created.
        resp.error_code = ErrorCode::FetchSessionIdNotFound.code();
        return resp;
    }
    let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(req.max_bytes).unwrap_or(0);
    let max_bytes = if version >= 3 { max_bytes } else { usize::MAX };
    let isolation = if version >= 4 { req.isolation_level } else { 0 };

    // (topic name, partition, fetch offset, partition max bytes); v13+
    // names topics by id only.
    let mut wanted: Vec<(TopicName, i32, i64, usize)> = Vec::new();
    let mut ids: Vec<uuid::Uuid> = Vec::new();
    for t in &req.topics {
        let name = if version >= 13 {
            broker
                .metadata
                .read(|img| img.topic_by_id(t.topic_id).map(|t| t.name.clone()))
                .map(|n| TopicName(StrBytes::from_string(n)))
                .unwrap_or_default()
        } else {
            t.topic.clone()
        };
        for p in &t.partitions {
            ids.push(t.topic_id);
            wanted.push((
                name.clone(),
                p.partition,
                p.fetch_offset,
                usize::try_from(p.partition_max_bytes).unwrap_or(0),
            ));
        }
    }
    loop {
        let mut total = 0usize;
        let mut reads = Vec::with_capacity(wanted.len());
        for (topic, partition, offset, pmax) in &wanted {
            let budget = (*pmax).min(max_bytes.saturating_sub(total));
            // The first batch of the response is returned whatever its size
            // (KIP-74), so a client can always make progress.
            let budget = if total == 0 { budget.max(1) } else { budget };
            let r = if budget == 0 {
                PartitionRead::error(ErrorCode::None)
            } else {
                read_partition(
                    broker,
                    topic.0.as_str(),
                    *partition,
                    *offset,
                    budget,
                    isolation,
                )
                .await
            };
            total += r.bytes;
            reads.push(r);
        }
        let now = tokio::time::Instant::now();
        let has_error = reads.iter().any(|r| r.code != ErrorCode::None);
        if total >= min_bytes.max(1) || now >= deadline || has_error || wanted.is_empty() {
            let mut by_topic: Vec<FetchableTopicResponse> = Vec::new();
            for (((topic, partition, _, _), r), id) in wanted.iter().zip(reads).zip(&ids) {
                let mut pd = PartitionData::default();
                pd.partition_index = *partition;
                pd.error_code = if version >= 13 && r.code == ErrorCode::UnknownTopicOrPartition {
                    ErrorCode::UnknownTopicId.code()
                } else {
                    r.code.code()
                };
                pd.high_watermark = r.high_watermark;
                pd.last_stable_offset = r.last_stable;
                pd.log_start_offset = r.log_start;
                pd.aborted_transactions = r.aborted.map(|list| {
                    list.into_iter()
                        .map(|a| {
                            let mut t = AbortedTransaction::default();
                            t.producer_id = ProducerId(a.producer_id);
                            t.first_offset = a.first_offset as i64;
                            t
                        })
                        .collect()
                });
                pd.preferred_read_replica = kafka_protocol::messages::BrokerId(-1);
                metrics::counter!("oxbow_bytes_out_total").increment(r.bytes as u64);
                pd.records = Some(concat(&r.records));
                match by_topic.last_mut() {
                    Some(t) if &t.topic == topic && t.topic_id == *id => t.partitions.push(pd),
                    _ => {
                        let mut t = FetchableTopicResponse::default();
                        t.topic = topic.clone();
                        t.topic_id = *id;
                        t.partitions.push(pd);
                        by_topic.push(t);
                    }
                }
            }
            resp.responses = by_topic;
            return resp;
        }
        // Wait for any partition's high watermark to move, or the deadline.
        let mut receivers: Vec<_> = wanted
            .iter()
            .filter_map(|(topic, partition, _, _)| {
                let sid = broker
                    .metadata
                    .read(|img| img.stream_of(topic.0.as_str(), *partition).map(|s| s.id))?;
                broker.partition(sid).map(|p| p.state.subscribe())
            })
            .collect();
        if receivers.is_empty() {
            tokio::time::sleep_until(deadline).await;
            continue;
        }
        for r in receivers.iter_mut() {
            r.borrow_and_update();
        }
        let changed = select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
        let _ = tokio::time::timeout_at(deadline, changed).await;
    }
}

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub async fn list_offsets(
    broker: &Arc<Broker>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    for t in req.topics {
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for p in t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            pr.leader_epoch = -1;
            let found = broker.metadata.read(|img| {
                img.stream_of(t.name.0.as_str(), p.partition_index)
                    .map(|s| (s.id, s.leader_epoch))
            });
            match found {
                None => pr.error_code = ErrorCode::UnknownTopicOrPartition.code(),
                Some((sid, leader_epoch)) => match broker.partition(sid) {
                    None => pr.error_code = ErrorCode::NotLeaderOrFollower.code(),
                    Some(open) => {
                        // v4+ carry it; older versions cannot encode one.
                        if version >= 4 {
                            pr.leader_epoch = leader_epoch;
                        }
                        // read_committed (v2+) sees up to the last stable offset.
                        let hw = if version >= 2 && req.isolation_level == READ_COMMITTED {
                            open.state.last_stable_offset()
                        } else {
                            open.state.high_watermark()
                        };
                        let start = open.state.log_start();
                        match p.timestamp {
                            LATEST => pr.offset = hw as i64,
                            EARLIEST => pr.offset = start as i64,
                            ts => match offset_for_timestamp(broker, sid, ts, start, hw).await {
                                Ok(Some((offset, timestamp))) if offset < hw as i64 => {
                                    pr.offset = offset;
                                    pr.timestamp = timestamp;
                                }
                                Ok(_) => {}
                                Err(code) => pr.error_code = code.code(),
                            },
                        }
                    }
                },
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}

/// Longest a timestamp lookup waits for the metadata view to reach the
/// partition's high watermark.
const VIEW_CATCH_UP: Duration = Duration::from_secs(2);

/// The first record whose timestamp reaches `ts` (or, for -3, the record
/// holding the largest timestamp). Records are read in uncompressed batches;
/// in a compressed batch the answer is batch-granular (its base offset, or
/// its last offset for -3) since we never decompress. The slices' max
/// timestamps in the metadata pick the object, so only one object is read.
async fn offset_for_timestamp(
    broker: &Broker,
    stream: StreamId,
    ts: i64,
    start: u64,
    hw: u64,
) -> Result<Option<(i64, i64)>, ErrorCode> {
    // The owner acknowledges a batch once its object is committed, which
    // can be a moment before this broker's view of the metadata has the
    // slice: wait for the view to reach the high watermark (bounded).
    broker
        .metadata
        .wait_until(
            |img| img.streams.get(&stream).is_some_and(|s| s.end_offset >= hw),
            VIEW_CATCH_UP,
        )
        .await;
    let slice = broker.metadata.read(|img| {
        let s = img.streams.get(&stream)?;
        let candidates = s.slices.iter().filter(|(_, sl)| sl.end_offset > start);
        let chosen = if ts == MAX_TIMESTAMP {
            candidates.max_by_key(|(_, sl)| sl.max_timestamp)
        } else if ts < 0 {
            None
        } else {
            candidates
                .into_iter()
                .find(|(_, sl)| sl.max_timestamp >= ts)
        }?;
        let obj = img.objects.get(&chosen.1.object)?;
        Some((
            (*chosen.0).max(start),
            chosen.1.end_offset,
            ObjectLocation::from(obj),
        ))
    });
    let Some((from, end, obj)) = slice else {
        return Ok(None);
    };
    let read = broker
        .reader
        .read(&obj, stream, from, end.min(hw), usize::MAX)
        .await
        .map_err(|_| ErrorCode::KafkaStorageError)?;
    let mut best: Option<(i64, i64)> = None;
    for b in &read.batches {
        let Ok(h) = batch::parse_header(b) else {
            continue;
        };
        let records = batch::record_timestamps(b);
        if ts == MAX_TIMESTAMP {
            if best.is_none_or(|(_, t)| h.max_timestamp > t) {
                // The first record carrying the max timestamp, if readable.
                let exact = records
                    .as_ref()
                    .and_then(|r| r.iter().find(|(_, t)| *t == h.max_timestamp).copied());
                best = Some(exact.unwrap_or((h.last_offset(), h.max_timestamp)));
            }
        } else if h.max_timestamp >= ts {
            let exact =
                records.and_then(|r| r.into_iter().find(|(o, t)| *t >= ts && *o >= start as i64));
            return Ok(Some(
                exact.unwrap_or((h.base_offset.max(start as i64), h.max_timestamp)),
            ));
        }
    }
    Ok(best)
}
