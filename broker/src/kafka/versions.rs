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
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
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
        ApiKey::AlterPartitionReassignments => "alter_partition_reassignments",
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
                ApiKey::AlterPartitionReassignments => {
                    range::<AlterPartitionReassignmentsRequest>()
                }
                ApiKey::ListPartitionReassignments => range::<ListPartitionReassignmentsRequest>(),
                other => panic!("no codec check for {other:?}"),
            };
            assert!(
                clo <= *lo && *hi <= chi,
                "{key:?} {lo}..{hi} vs codec {clo}..{chi}"
            );
        }
    }
}
