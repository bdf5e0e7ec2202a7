//! Partition reassignment (KIP-455): AlterPartitionReassignments moves a
//! partition's ownership to the first broker of the requested replica list;
//! ListPartitionReassignments reports none in progress, because a move is
//! one metadata command (no data is copied) and is complete once applied.

use std::sync::Arc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use kafka_protocol::protocol::StrBytes;
use proto::image::{CommandReply, MetadataCommand};

use crate::broker::Broker;
use crate::errors::ErrorCode;

pub async fn alter(
    broker: &Arc<Broker>,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
) -> AlterPartitionReassignmentsResponse {
    let mut resp = AlterPartitionReassignmentsResponse::default();
    resp.allow_replication_factor_change = req.allow_replication_factor_change;
    for t in req.topics {
        let mut tr = ReassignableTopicResponse::default();
        tr.name = t.name.clone();
        for p in t.partitions {
            let mut pr = ReassignablePartitionResponse::default();
            pr.partition_index = p.partition_index;
            let result = move_partition(
                broker,
                t.name.0.as_str(),
                p.partition_index,
                p.replicas,
                version,
                req.allow_replication_factor_change,
            )
            .await;
            if let Err((code, msg)) = result {
                pr.error_code = code.code();
                pr.error_message = Some(StrBytes::from_string(msg));
            }
            tr.partitions.push(pr);
        }
        resp.responses.push(tr);
    }
    resp
}

async fn move_partition(
    broker: &Arc<Broker>,
    topic: &str,
    partition: i32,
    replicas: Option<Vec<kafka_protocol::messages::BrokerId>>,
    version: i16,
    allow_rf_change: bool,
) -> Result<(), (ErrorCode, String)> {
    let stream = broker
        .metadata
        .read(|img| img.stream_of(topic, partition).map(|s| s.id))
        .ok_or((
            ErrorCode::UnknownTopicOrPartition,
            format!("{topic}-{partition} does not exist"),
        ))?;
    let Some(replicas) = replicas else {
        // A cancellation: moves are never in progress.
        return Err((
            ErrorCode::NoReassignmentInProgress,
            "no reassignment in progress".into(),
        ));
    };
    let Some(target) = replicas.first().map(|b| b.0) else {
        return Err((
            ErrorCode::InvalidReplicaAssignment,
            "empty replica list".into(),
        ));
    };
    if version >= 1 && !allow_rf_change && replicas.len() != 1 {
        return Err((
            ErrorCode::InvalidReplicationFactor,
            "partitions have one replica (their owner); the requested list changes that".into(),
        ));
    }
    if !broker
        .metadata
        .read(|img| img.brokers.get(&target).is_some_and(|b| !b.fenced))
    {
        return Err((
            ErrorCode::InvalidReplicaAssignment,
            format!("broker {target} is not live"),
        ));
    }
    let reply = broker
        .propose(MetadataCommand::MoveStream { stream, to: target })
        .await
        .map_err(|e| (ErrorCode::RequestTimedOut, e.to_string()))?;
    match reply {
        CommandReply::Ok => Ok(()),
        CommandReply::NoLiveBrokers => Err((
            ErrorCode::InvalidReplicaAssignment,
            format!("broker {target} is not live"),
        )),
        other => Err((ErrorCode::UnknownServerError, format!("{other:?}"))),
    }
}

pub fn list(
    _broker: &Arc<Broker>,
    _req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    ListPartitionReassignmentsResponse::default()
}
