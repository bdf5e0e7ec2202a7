//! The APIs and versions this broker implements, and the ApiVersions answer
//! built from them. Only what is really handled is advertised.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// (api, min version, max version) for every API we answer.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 9),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DescribeCluster, 0, 1),
    // Group coordinator (kafka/group.rs).
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    // Transaction coordinator (kafka/txn.rs): protocol v1 (no
    // `transaction.version` feature is advertised, so clients keep to it).
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::DescribeProducers, 0, 0),
];

pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
}

/// A bounded label for metrics.
pub fn name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "produce",
        ApiKey::Fetch => "fetch",
        ApiKey::ListOffsets => "list_offsets",
        ApiKey::Metadata => "metadata",
        ApiKey::ApiVersions => "api_versions",
        ApiKey::CreateTopics => "create_topics",
        ApiKey::DeleteTopics => "delete_topics",
        ApiKey::CreatePartitions => "create_partitions",
        ApiKey::InitProducerId => "init_producer_id",
        ApiKey::DescribeConfigs => "describe_configs",
        ApiKey::DescribeCluster => "describe_cluster",
        ApiKey::AddPartitionsToTxn => "add_partitions_to_txn",
        ApiKey::AddOffsetsToTxn => "add_offsets_to_txn",
        ApiKey::EndTxn => "end_txn",
        ApiKey::TxnOffsetCommit => "txn_offset_commit",
        ApiKey::WriteTxnMarkers => "write_txn_markers",
        ApiKey::DescribeTransactions => "describe_transactions",
        ApiKey::ListTransactions => "list_transactions",
        ApiKey::DescribeProducers => "describe_producers",
        ApiKey::FindCoordinator => "find_coordinator",
        ApiKey::JoinGroup => "join_group",
        ApiKey::SyncGroup => "sync_group",
        ApiKey::Heartbeat => "heartbeat",
        ApiKey::LeaveGroup => "leave_group",
        ApiKey::OffsetCommit => "offset_commit",
        ApiKey::OffsetFetch => "offset_fetch",
        ApiKey::ListGroups => "list_groups",
        ApiKey::DescribeGroups => "describe_groups",
        ApiKey::DeleteGroups => "delete_groups",
        ApiKey::OffsetDelete => "offset_delete",
        ApiKey::ConsumerGroupHeartbeat => "consumer_group_heartbeat",
        ApiKey::ConsumerGroupDescribe => "consumer_group_describe",
        ApiKey::AlterPartitionReassignments => "alter_partition_reassignments",
        ApiKey::DeleteRecords => "delete_records",
        ApiKey::IncrementalAlterConfigs => "incremental_alter_configs",
        ApiKey::ListPartitionReassignments => "list_partition_reassignments",
        _ => "other",
    }
}

pub fn api_versions_response() -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.api_keys = SUPPORTED
        .iter()
        .map(|(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *lo;
            v.max_version = *hi;
            v
        })
        .collect();
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    /// Never advertise a version the codec cannot encode or decode.
    #[test]
    fn advertised_versions_are_within_the_codec() {
        fn range<M: Message>() -> (i16, i16) {
            (M::VERSIONS.min, M::VERSIONS.max)
        }
        for (key, lo, hi) in SUPPORTED {
            let (clo, chi) = match key {
                ApiKey::Produce => range::<ProduceRequest>(),
                ApiKey::Fetch => range::<FetchRequest>(),
                ApiKey::ListOffsets => range::<ListOffsetsRequest>(),
                ApiKey::Metadata => range::<MetadataRequest>(),
                ApiKey::ApiVersions => range::<ApiVersionsRequest>(),
                ApiKey::CreateTopics => range::<CreateTopicsRequest>(),
                ApiKey::DeleteTopics => range::<DeleteTopicsRequest>(),
                ApiKey::CreatePartitions => range::<CreatePartitionsRequest>(),
                ApiKey::InitProducerId => range::<InitProducerIdRequest>(),
                ApiKey::DescribeConfigs => range::<DescribeConfigsRequest>(),
                ApiKey::DescribeCluster => range::<DescribeClusterRequest>(),
                ApiKey::FindCoordinator => range::<FindCoordinatorRequest>(),
                ApiKey::JoinGroup => range::<JoinGroupRequest>(),
                ApiKey::SyncGroup => range::<SyncGroupRequest>(),
                ApiKey::Heartbeat => range::<HeartbeatRequest>(),
                ApiKey::LeaveGroup => range::<LeaveGroupRequest>(),
                ApiKey::OffsetCommit => range::<OffsetCommitRequest>(),
                ApiKey::OffsetFetch => range::<OffsetFetchRequest>(),
                ApiKey::ListGroups => range::<ListGroupsRequest>(),
                ApiKey::DescribeGroups => range::<DescribeGroupsRequest>(),
                ApiKey::DeleteGroups => range::<DeleteGroupsRequest>(),
                ApiKey::OffsetDelete => range::<OffsetDeleteRequest>(),
                ApiKey::ConsumerGroupHeartbeat => range::<ConsumerGroupHeartbeatRequest>(),
                ApiKey::ConsumerGroupDescribe => range::<ConsumerGroupDescribeRequest>(),
                ApiKey::AlterPartitionReassignments => {
                    range::<AlterPartitionReassignmentsRequest>()
                }
                ApiKey::ListPartitionReassignments => range::<ListPartitionReassignmentsRequest>(),
                ApiKey::DeleteRecords => range::<DeleteRecordsRequest>(),
                ApiKey::IncrementalAlterConfigs => range::<IncrementalAlterConfigsRequest>(),
                ApiKey::AddPartitionsToTxn => range::<AddPartitionsToTxnRequest>(),
                ApiKey::AddOffsetsToTxn => range::<AddOffsetsToTxnRequest>(),
                ApiKey::EndTxn => range::<EndTxnRequest>(),
                ApiKey::TxnOffsetCommit => range::<TxnOffsetCommitRequest>(),
                ApiKey::WriteTxnMarkers => range::<WriteTxnMarkersRequest>(),
                ApiKey::DescribeTransactions => range::<DescribeTransactionsRequest>(),
                ApiKey::ListTransactions => range::<ListTransactionsRequest>(),
                ApiKey::DescribeProducers => range::<DescribeProducersRequest>(),
                other => panic!("no codec check for {other:?}"),
            };
            assert!(
                clo <= *lo && *hi <= chi,
                "{key:?} {lo}..{hi} vs codec {clo}..{chi}"
            );
        }
    }
}
