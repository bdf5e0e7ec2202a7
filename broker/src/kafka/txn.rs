//! The transaction APIs on the wire: InitProducerId with a transactional
//! id, AddPartitionsToTxn (v0-3 from clients, v4-5 `verify_only` from
//! brokers), AddOffsetsToTxn, EndTxn, TxnOffsetCommit, WriteTxnMarkers,
//! DescribeTransactions, ListTransactions and DescribeProducers. Each turns
//! a request into calls on `txn::TxnCoordinator`, the group coordinator or
//! a partition actor, and answers in its version's shape; no transaction
//! decision is made here.

use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeProducersRequest, DescribeProducersResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest,
    TxnOffsetCommitResponse, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::Broker;
use crate::errors::ErrorCode;
use crate::group::records::OffsetValue;
use crate::group::OFFSETS_TOPIC;
use crate::partition::{BeginVerification, DescribeProducers};
use crate::txn::{coordinator, TxnState, MAX_TIMEOUT_MS};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

pub async fn init_producer_id(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    let Some(id) = req
        .transactional_id
        .as_ref()
        .map(|t| t.0.as_str().to_string())
    else {
        return super::admin::init_idempotent(broker, req).await;
    };
    let code = if id.is_empty() {
        ErrorCode::InvalidRequest
    } else if req.transaction_timeout_ms <= 0 || req.transaction_timeout_ms > MAX_TIMEOUT_MS {
        ErrorCode::InvalidTransactionTimeout
    } else if (req.producer_id.0 < 0) != (req.producer_epoch < 0) {
        ErrorCode::InvalidRequest
    } else {
        let (code, pid, epoch) = broker
            .txns
            .init_producer_id(
                broker,
                &id,
                req.transaction_timeout_ms,
                (req.producer_id.0, req.producer_epoch),
                version,
            )
            .await;
        resp.producer_id = ProducerId(pid);
        resp.producer_epoch = epoch;
        code
    };
    resp.error_code = code.code();
    resp
}

/// The partitions of a request that exist; the others answer
/// UNKNOWN_TOPIC_OR_PARTITION and the rest OPERATION_NOT_ATTEMPTED, as Kafka.
fn unknown_partitions(broker: &Broker, wanted: &[(String, i32)]) -> Vec<(String, i32)> {
    broker.metadata.read(|img| {
        wanted
            .iter()
            .filter(|(t, p)| img.stream_of(t, *p).is_none())
            .cloned()
            .collect()
    })
}

fn topic_results(
    wanted: &[(String, i32)],
    code_of: impl Fn(&(String, i32)) -> ErrorCode,
) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut out: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for tp in wanted {
        let mut r = AddPartitionsToTxnPartitionResult::default();
        r.partition_index = tp.1;
        r.partition_error_code = code_of(tp).code();
        match out.last_mut() {
            Some(t) if t.name.0.as_str() == tp.0 => t.results_by_partition.push(r),
            _ => {
                let mut t = AddPartitionsToTxnTopicResult::default();
                t.name = TopicName(s(&tp.0));
                t.results_by_partition.push(r);
                out.push(t);
            }
        }
    }
    out
}

pub async fn add_partitions(
    broker: &Arc<Broker>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let mut resp = AddPartitionsToTxnResponse::default();
    if version >= 4 {
        // From a broker: one result per transaction; only verification.
        for tx in req.transactions {
            let id = tx.transactional_id.0.as_str().to_string();
            let wanted: Vec<(String, i32)> = tx
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (t.name.0.as_str().to_string(), *p))
                })
                .collect();
            let mut codes = Vec::with_capacity(wanted.len());
            for (topic, p) in &wanted {
                let code = if tx.verify_only {
                    broker
                        .txns
                        .verify(broker, &id, tx.producer_id.0, tx.producer_epoch, topic, *p)
                        .await
                } else {
                    // Adding partitions for a client goes through v0-3.
                    ErrorCode::InvalidRequest
                };
                codes.push(code);
            }
            let mut r = AddPartitionsToTxnResult::default();
            r.transactional_id = tx.transactional_id.clone();
            r.topic_results = topic_results(&wanted, |tp| {
                wanted
                    .iter()
                    .position(|w| w == tp)
                    .map_or(ErrorCode::UnknownServerError, |i| codes[i])
            });
            resp.results_by_transaction.push(r);
        }
        return resp;
    }
    let id = req.v3_and_below_transactional_id.0.as_str().to_string();
    let mut wanted: Vec<(String, i32)> = req
        .v3_and_below_topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.as_str().to_string(), *p))
        })
        .collect();
    wanted.sort();
    wanted.dedup();
    let unknown = unknown_partitions(broker, &wanted);
    let code = if unknown.is_empty() {
        broker
            .txns
            .add_partitions(
                broker,
                &id,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                &wanted,
                version,
            )
            .await
    } else {
        ErrorCode::OperationNotAttempted
    };
    resp.results_by_topic_v3_and_below = topic_results(&wanted, |tp| {
        if unknown.contains(tp) {
            ErrorCode::UnknownTopicOrPartition
        } else {
            code
        }
    });
    resp
}

pub async fn add_offsets(
    broker: &Arc<Broker>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let mut resp = AddOffsetsToTxnResponse::default();
    super::group::ensure_offsets_topic(broker).await;
    let Some(tp) = coordinator::offsets_partition(broker, req.group_id.0.as_str()) else {
        resp.error_code = ErrorCode::CoordinatorNotAvailable.code();
        return resp;
    };
    let code = broker
        .txns
        .add_partitions(
            broker,
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            &[tp],
            version,
        )
        .await;
    resp.error_code = code.code();
    resp
}

pub async fn end_txn(broker: &Arc<Broker>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let mut resp = EndTxnResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    let code = broker
        .txns
        .end_txn(
            broker,
            req.transactional_id.0.as_str(),
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
            version,
        )
        .await;
    resp.error_code = code.code();
    resp
}

pub async fn txn_offset_commit(
    broker: &Arc<Broker>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    let now_wall = broker.seams.clock.now_ms();
    let max_metadata = broker.groups.config().offset_metadata_max_bytes;
    let mut offsets = Vec::new();
    let mut too_large = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            let key = (t.name.0.as_str().to_string(), p.partition_index);
            if metadata.len() > max_metadata {
                too_large.push(key);
                continue;
            }
            offsets.push((
                key.0,
                key.1,
                OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: if version >= 2 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata,
                    commit_timestamp: now_wall,
                    expire_timestamp: -1,
                },
            ));
        }
    }
    let (generation, member, instance) = if version >= 3 {
        (
            req.generation_id,
            req.member_id.as_str().to_string(),
            req.group_instance_id
                .as_ref()
                .map(|i| i.as_str().to_string()),
        )
    } else {
        (-1, String::new(), None)
    };
    let group = req.group_id.0.as_str();
    let (pid, epoch) = (req.producer_id.0, req.producer_epoch);
    let code =
        match verify_offsets(broker, req.transactional_id.0.as_str(), group, pid, epoch).await {
            Ok(guard) => {
                broker
                    .groups
                    .txn_commit_offsets(
                        group,
                        pid,
                        epoch,
                        guard,
                        &member,
                        instance.as_deref(),
                        generation,
                        offsets,
                    )
                    .await
            }
            Err(code) => code,
        };
    // Kafka's maybeConvertOffsetCommitError for old versions.
    let code = match code {
        ErrorCode::CoordinatorLoadInProgress if version < 2 => ErrorCode::CoordinatorNotAvailable,
        c => c,
    };
    let mut resp = TxnOffsetCommitResponse::default();
    for t in &req.topics {
        let mut rt = TxnOffsetCommitResponseTopic::default();
        rt.name = t.name.clone();
        for p in &t.partitions {
            let mut rp = TxnOffsetCommitResponsePartition::default();
            rp.partition_index = p.partition_index;
            let key = (t.name.0.as_str().to_string(), p.partition_index);
            rp.error_code = if too_large.contains(&key) {
                ErrorCode::OffsetMetadataTooLarge.code()
            } else {
                code.code()
            };
            rt.partitions.push(rp);
        }
        resp.topics.push(rt);
    }
    resp
}

/// KIP-890 for offsets: a producer's first TxnOffsetCommit on the group's
/// partition is taken only if its coordinator says that partition is in the
/// producer's open transaction (AddOffsetsToTxn added it), so a late commit
/// cannot open a transaction there that no marker will end. The guard to
/// append under, if one is needed.
async fn verify_offsets(
    broker: &Arc<Broker>,
    txn_id: &str,
    group: &str,
    producer_id: i64,
    epoch: i16,
) -> Result<Option<u64>, ErrorCode> {
    let open = broker.groups.group_partition(group)?;
    if open.state.txns().open_first(producer_id).is_some() {
        return Ok(None);
    }
    let guard = open
        .actor
        .ask(BeginVerification { producer_id })
        .await
        .map_err(|_| ErrorCode::NotCoordinator)?;
    let (code, _) = coordinator::verify_in_txn(
        broker,
        txn_id,
        producer_id,
        epoch,
        (OFFSETS_TOPIC, open.state.partition),
        false,
    )
    .await;
    match code {
        ErrorCode::None => Ok(Some(guard.0)),
        ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch => {
            Err(ErrorCode::ProducerFenced)
        }
        ErrorCode::TransactionAbortable | ErrorCode::InvalidProducerIdMapping => {
            Err(ErrorCode::InvalidTxnState)
        }
        // The transaction coordinator is moving, loading or busy: retriable.
        _ => Err(ErrorCode::CoordinatorNotAvailable),
    }
}

pub async fn write_txn_markers(
    broker: &Arc<Broker>,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut resp = WriteTxnMarkersResponse::default();
    for m in req.markers {
        let mut mr = WritableTxnMarkerResult::default();
        mr.producer_id = m.producer_id;
        for t in &m.topics {
            let topic = t.name.0.as_str();
            let mut tr = WritableTxnMarkerTopicResult::default();
            tr.name = t.name.clone();
            for p in &t.partition_indexes {
                let stream = broker.metadata.read(|img| {
                    img.stream_of(topic, *p)
                        .map(|s| (s.id, s.owner == Some(broker.id)))
                });
                let code = match stream {
                    None => ErrorCode::UnknownTopicOrPartition,
                    Some((_, false)) => ErrorCode::NotLeaderOrFollower,
                    Some((sid, true)) => {
                        coordinator::write_marker(
                            broker,
                            sid,
                            topic,
                            m.producer_id.0,
                            m.producer_epoch,
                            m.transaction_result,
                            m.coordinator_epoch,
                        )
                        .await
                    }
                };
                let mut pr = WritableTxnMarkerPartitionResult::default();
                pr.partition_index = *p;
                pr.error_code = code.code();
                tr.partitions.push(pr);
            }
            mr.topics.push(tr);
        }
        resp.markers.push(mr);
    }
    resp
}

pub async fn describe_transactions(
    broker: &Arc<Broker>,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut resp = DescribeTransactionsResponse::default();
    for id in req.transactional_ids {
        let mut st = TransactionState::default();
        st.transactional_id = id.clone();
        st.producer_id = ProducerId(-1);
        st.producer_epoch = -1;
        st.transaction_start_time_ms = -1;
        match broker.txns.describe(broker, id.0.as_str()).await {
            Ok(m) => {
                st.transaction_state = s(m.state.name());
                st.transaction_timeout_ms = m.timeout_ms;
                st.transaction_start_time_ms = m.start_ms;
                st.producer_id = ProducerId(m.producer_id);
                st.producer_epoch = m.epoch;
                let mut topics: Vec<TopicData> = Vec::new();
                for (t, p) in &m.partitions {
                    match topics.last_mut() {
                        Some(td) if td.topic.0.as_str() == t => td.partitions.push(*p),
                        _ => {
                            let mut td = TopicData::default();
                            td.topic = TopicName(s(t));
                            td.partitions.push(*p);
                            topics.push(td);
                        }
                    }
                }
                st.topics = topics;
            }
            Err(code) => st.error_code = code.code(),
        }
        resp.transaction_states.push(st);
    }
    resp
}

pub async fn list_transactions(
    broker: &Arc<Broker>,
    req: ListTransactionsRequest,
    version: i16,
) -> ListTransactionsResponse {
    let mut resp = ListTransactionsResponse::default();
    let mut states = Vec::new();
    for f in &req.state_filters {
        let known = (0..8)
            .filter_map(TxnState::from_id)
            .find(|st| st.name() == f.as_str());
        match known {
            Some(st) => states.push(st),
            None => resp.unknown_state_filters.push(f.clone()),
        }
    }
    let now = broker.seams.clock.now_ms();
    match broker.txns.list().await {
        Ok(list) => {
            for t in list {
                if !states.is_empty() && !states.contains(&t.state) {
                    continue;
                }
                if !req.producer_id_filters.is_empty()
                    && !req.producer_id_filters.contains(&ProducerId(t.producer_id))
                {
                    continue;
                }
                if version >= 1
                    && req.duration_filter >= 0
                    && (t.state != TxnState::Ongoing
                        || now.saturating_sub(t.start_ms) < req.duration_filter)
                {
                    continue;
                }
                let mut l = ListedState::default();
                l.transactional_id = TransactionalId(s(&t.transactional_id));
                l.producer_id = ProducerId(t.producer_id);
                l.transaction_state = s(t.state.name());
                resp.transaction_states.push(l);
            }
        }
        Err(code) => resp.error_code = code.code(),
    }
    resp
}

pub async fn describe_producers(
    broker: &Arc<Broker>,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let mut resp = DescribeProducersResponse::default();
    for t in req.topics {
        let mut tr = TopicResponse::default();
        tr.name = t.name.clone();
        for p in t.partition_indexes {
            let mut pr = PartitionResponse::default();
            pr.partition_index = p;
            let sid = broker
                .metadata
                .read(|img| img.stream_of(t.name.0.as_str(), p).map(|s| s.id));
            match sid.map(|sid| broker.partition(sid)) {
                None => pr.error_code = ErrorCode::UnknownTopicOrPartition.code(),
                Some(None) => pr.error_code = ErrorCode::NotLeaderOrFollower.code(),
                Some(Some(open)) => match open.actor.ask(DescribeProducers).await {
                    Ok(list) => {
                        for info in list.0 {
                            let mut ps = ProducerState::default();
                            ps.producer_id = ProducerId(info.producer_id);
                            ps.producer_epoch = i32::from(info.epoch);
                            ps.last_sequence = info.last_sequence;
                            ps.last_timestamp = info.last_timestamp;
                            ps.coordinator_epoch = info.coordinator_epoch;
                            ps.current_txn_start_offset = info.current_txn_start_offset;
                            pr.active_producers.push(ps);
                        }
                    }
                    Err(_) => pr.error_code = ErrorCode::NotLeaderOrFollower.code(),
                },
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}
