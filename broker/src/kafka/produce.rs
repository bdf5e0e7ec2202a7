//! Produce: validate each partition's batches (CRC, magic, sizes; no
//! decompression), hand them to the partition actors in request order, and
//! answer once the writer reports them committed (acks 1 and -1) or at once
//! with no answer at all (acks 0).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::ResponseFuture;
use crate::broker::Broker;
use crate::errors::ErrorCode;
use crate::partition::{Append, AppendStatus, BeginVerification, IncomingBatch};
use crate::storage::batch;
use crate::storage::writer::{AckOutcome, Fate};

enum Pending {
    Done(PartitionProduceResponse),
    Queued {
        index: i32,
        base_offset: u64,
        log_start: u64,
        acks: Vec<tokio::sync::oneshot::Receiver<AckOutcome>>,
        /// The broker's timestamp for a LogAppendTime topic, else -1.
        append_time: i64,
    },
    Duplicate {
        index: i32,
        base_offset: u64,
        last_offset: u64,
        log_start: u64,
        state: Arc<crate::storage::stream::StreamState>,
    },
}

fn partition_response(index: i32, code: ErrorCode) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = index;
    p.error_code = code.code();
    p.base_offset = -1;
    p.log_append_time_ms = -1;
    p.log_start_offset = -1;
    p.current_leader = LeaderIdAndEpoch::default();
    p
}

fn success(index: i32, base_offset: u64, log_start: u64) -> PartitionProduceResponse {
    let mut p = partition_response(index, ErrorCode::None);
    p.base_offset = base_offset as i64;
    p.log_start_offset = log_start as i64;
    p
}

/// The same refusal for every partition of the request.
fn refuse_all(
    req: &ProduceRequest,
    code: ErrorCode,
    message: Option<&'static str>,
) -> ResponseFuture {
    let mut resp = ProduceResponse::default();
    resp.responses = req
        .topic_data
        .iter()
        .map(|t| {
            let mut r = TopicProduceResponse::default();
            r.name = t.name.clone();
            r.partition_responses = t
                .partition_data
                .iter()
                .map(|p| {
                    let mut pr = partition_response(p.index, code);
                    pr.error_message = message.map(StrBytes::from_static_str);
                    pr
                })
                .collect();
            r
        })
        .collect();
    Box::pin(async move { Some(ResponseKind::Produce(resp)) })
}

pub async fn handle(broker: Arc<Broker>, req: ProduceRequest, version: i16) -> ResponseFuture {
    let acks = req.acks;
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0).max(1));
    if !(-1..=1).contains(&acks) {
        return refuse_all(&req, ErrorCode::InvalidRequiredAcks, None);
    }
    let transactional_id = req
        .transactional_id
        .as_ref()
        .map(|t| t.0.as_str().to_string());
    let mut topics: Vec<(TopicName, Vec<Pending>)> = Vec::with_capacity(req.topic_data.len());
    for t in req.topic_data {
        let name = t.name.0.as_str().to_string();
        if broker.config.auto_create_topics {
            super::admin::ensure_topic(&broker, &name).await;
        }
        let mut parts = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            parts.push(
                append_partition(
                    &broker,
                    &name,
                    p.index,
                    p.records,
                    transactional_id.as_deref(),
                    version,
                )
                .await,
            );
        }
        topics.push((t.name, parts));
    }

    Box::pin(async move {
        let mut responses = Vec::with_capacity(topics.len());
        for (name, parts) in topics {
            let mut r = TopicProduceResponse::default();
            r.name = name;
            for p in parts {
                r.partition_responses.push(finish(p, timeout).await);
            }
            responses.push(r);
        }
        if acks == 0 {
            return None;
        }
        let mut resp = ProduceResponse::default();
        resp.responses = responses;
        Some(ResponseKind::Produce(resp))
    })
}

async fn append_partition(
    broker: &Arc<Broker>,
    topic: &str,
    index: i32,
    records: Option<bytes::Bytes>,
    transactional_id: Option<&str>,
    version: i16,
) -> Pending {
    let refuse = |code| Pending::Done(partition_response(index, code));
    let Some((stream, max_batch, log_append_time)) = broker.metadata.read(|img| {
        let s = img.stream_of(topic, index)?;
        let configs = img.topics.get(topic).map(|t| &t.configs);
        let max = crate::config::topic_config_origin(img, configs, "max.message.bytes")
            .and_then(|(v, _)| v.parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        let append_time =
            crate::config::topic_config_origin(img, configs, "message.timestamp.type")
                .is_some_and(|(v, _)| v == "LogAppendTime");
        Some((s.id, max, append_time))
    }) else {
        return refuse(ErrorCode::UnknownTopicOrPartition);
    };
    let Some(open) = broker.partition(stream) else {
        return refuse(ErrorCode::NotLeaderOrFollower);
    };
    let records = records.unwrap_or_default();
    let batches = match batch::split_batches(&records) {
        // Produce v3+ carries exactly one batch per partition (Kafka's
        // ProduceRequest.validateRecords).
        Ok(b) if b.len() == 1 => b,
        Ok(_) => return refuse(ErrorCode::InvalidRecord),
        Err(e) => {
            metrics::counter!("oxbow_produce_invalid_batches_total").increment(1);
            return refuse(ErrorCode::from_batch_code(e.kafka_error_code()));
        }
    };
    // message.timestamp.type=LogAppendTime: the broker's clock stamps the
    // batch (attribute bit and maxTimestamp, CRC recomputed), as Kafka does.
    let append_time = log_append_time.then(|| broker.seams.clock.now_ms());
    let mut incoming = Vec::with_capacity(batches.len());
    let mut guard = None;
    let mut after = Vec::new();
    for bytes in batches {
        let bytes = match append_time {
            Some(now) if batch::validate(&bytes).is_ok() => {
                let mut v = bytes.to_vec();
                batch::stamp_log_append_time(&mut v, now);
                bytes::Bytes::from(v)
            }
            _ => bytes,
        };
        let header = match batch::parse_header(&bytes) {
            Ok(h) => h,
            Err(e) => return refuse(ErrorCode::from_batch_code(e.kafka_error_code())),
        };
        if header.is_control() {
            // Only coordinators write markers (Kafka's LogValidator).
            return refuse(ErrorCode::InvalidRecord);
        }
        if header.is_transactional() {
            let Some(txn_id) = transactional_id else {
                // Kafka refuses transactional records without a
                // transactional id as unauthorized.
                return refuse(ErrorCode::TransactionalIdAuthorizationFailed);
            };
            if header.producer_id < 0 {
                return refuse(ErrorCode::InvalidRecord);
            }
            if open.state.txns().open_first(header.producer_id).is_none() {
                let Ok(g) = open
                    .actor
                    .ask(BeginVerification {
                        producer_id: header.producer_id,
                    })
                    .await
                else {
                    return refuse(ErrorCode::NotLeaderOrFollower);
                };
                let (code, follows) = verify(broker, txn_id, &header, topic, index, version).await;
                if code != ErrorCode::None {
                    return refuse(code);
                }
                guard = Some(g.0);
                after.extend(follows);
            }
        }
        if header.producer_id >= 0 && header.base_sequence < 0 {
            // An idempotent batch without a sequence.
            return refuse(ErrorCode::InvalidRecord);
        }
        if bytes.len() > max_batch {
            // Kafka's max.message.bytes bounds a whole batch.
            return refuse(ErrorCode::MessageTooLarge);
        }
        metrics::counter!("oxbow_bytes_in_total").increment(bytes.len() as u64);
        incoming.push(IncomingBatch { header, bytes });
    }
    let reply = match open
        .actor
        .ask(Append {
            batches: incoming,
            coordinator: false,
            guard,
            after,
        })
        .await
    {
        Ok(r) => r,
        Err(_) => return refuse(ErrorCode::NotLeaderOrFollower),
    };
    match reply.status {
        AppendStatus::Queued {
            base_offset, acks, ..
        } => Pending::Queued {
            index,
            base_offset,
            log_start: reply.log_start,
            acks,
            append_time: append_time.unwrap_or(-1),
        },
        AppendStatus::Duplicate {
            base_offset,
            last_offset,
        } => Pending::Duplicate {
            index,
            base_offset,
            last_offset,
            log_start: reply.log_start,
            state: open.state.clone(),
        },
        AppendStatus::Refused(code) => refuse(code),
    }
}

/// KIP-890: the first transactional batch of a producer on a partition is
/// taken only if its coordinator says the partition is in the producer's
/// open transaction, so a late or zombie write cannot open a transaction
/// that no marker will ever end. Errors map as Kafka's `ReplicaManager`.
/// With NONE, the coordinator's record the batch must follow, when it has
/// not committed yet.
async fn verify(
    broker: &Arc<Broker>,
    txn_id: &str,
    header: &batch::BatchHeader,
    topic: &str,
    partition: i32,
    version: i16,
) -> (ErrorCode, Option<Arc<Fate>>) {
    let (code, after) = crate::txn::coordinator::verify_in_txn(
        broker,
        txn_id,
        header.producer_id,
        header.producer_epoch,
        (topic, partition),
        true,
    )
    .await;
    let code = match code {
        ErrorCode::None => return (ErrorCode::None, after),
        ErrorCode::ProducerFenced | ErrorCode::InvalidProducerEpoch => {
            ErrorCode::InvalidProducerEpoch
        }
        ErrorCode::TransactionAbortable | ErrorCode::InvalidProducerIdMapping => {
            if version > 10 {
                ErrorCode::TransactionAbortable
            } else {
                ErrorCode::InvalidTxnState
            }
        }
        // Coordinator moving, loading or busy: retriable for the client.
        _ => ErrorCode::NotEnoughReplicas,
    };
    (code, None)
}

async fn finish(p: Pending, timeout: Duration) -> PartitionProduceResponse {
    match p {
        Pending::Done(r) => r,
        Pending::Queued {
            index,
            base_offset,
            log_start,
            acks,
            append_time,
        } => {
            if proto::planted::active(proto::planted::Bug::AckBeforeCommit) {
                return success(index, base_offset, log_start);
            }
            if proto::planted::active(proto::planted::Bug::OffsetTwice) && base_offset > 0 {
                let answer = success(index, base_offset - 1, log_start);
                for rx in acks {
                    let _ = rx.await;
                }
                return answer;
            }
            let mut outcome = ErrorCode::None;
            for rx in acks {
                // No timeout here: the writer bounds its own retries, and
                // answering early would leave the outcome unknown.
                let code = match rx.await {
                    Ok(AckOutcome::Committed) => ErrorCode::None,
                    Ok(AckOutcome::Fenced) => ErrorCode::NotLeaderOrFollower,
                    Ok(AckOutcome::Failed) | Err(_) => ErrorCode::KafkaStorageError,
                };
                if outcome == ErrorCode::None {
                    outcome = code;
                }
            }
            if outcome == ErrorCode::None {
                let mut r = success(index, base_offset, log_start);
                r.log_append_time_ms = append_time;
                r
            } else {
                partition_response(index, outcome)
            }
        }
        Pending::Duplicate {
            index,
            base_offset,
            last_offset,
            log_start,
            state,
        } => {
            let mut rx = state.subscribe();
            let committed =
                tokio::time::timeout(timeout, rx.wait_for(|hw| *hw > last_offset)).await;
            match committed {
                Ok(Ok(_)) => success(index, base_offset, log_start),
                _ => partition_response(index, ErrorCode::RequestTimedOut),
            }
        }
    }
}
