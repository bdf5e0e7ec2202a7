//! DeleteRecords: moves partitions' start offsets forward by hand
//! (`kafka-delete-records`), through the same `TrimStream` as retention.

use std::sync::Arc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::broker::Broker;
use crate::errors::ErrorCode;
use crate::lifecycle;

/// Kafka's "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

pub async fn delete_records(
    broker: &Arc<Broker>,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut resp = DeleteRecordsResponse::default();
    for t in req.topics {
        let mut tr = DeleteRecordsTopicResult::default();
        tr.name = t.name.clone();
        for p in t.partitions {
            let mut pr = DeleteRecordsPartitionResult::default();
            pr.partition_index = p.partition_index;
            pr.low_watermark = -1;
            let stream = broker.metadata.read(|img| {
                img.stream_of(t.name.0.as_str(), p.partition_index)
                    .map(|s| s.id)
            });
            let result = match stream.map(|sid| (sid, broker.partition(sid))) {
                None => Err(ErrorCode::UnknownTopicOrPartition),
                Some((_, None)) => Err(ErrorCode::NotLeaderOrFollower),
                Some((sid, Some(open))) => {
                    let hw = open.state.high_watermark();
                    let target = match p.offset {
                        HIGH_WATERMARK => Ok(hw),
                        o if o < 0 || o as u64 > hw => Err(ErrorCode::OffsetOutOfRange),
                        o => Ok(o as u64),
                    };
                    match target {
                        Err(code) => Err(code),
                        Ok(offset) => lifecycle::trim(broker, sid, offset)
                            .await
                            .map_err(|_| ErrorCode::RequestTimedOut),
                    }
                }
            };
            match result {
                Ok(low) => pr.low_watermark = low as i64,
                Err(code) => pr.error_code = code.code(),
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}
