//! Metadata and admin requests: Metadata (with auto-creation), CreateTopics,
//! DeleteTopics, CreatePartitions, InitProducerId, DescribeConfigs,
//! DescribeCluster. Every change goes to the controller as a command; the
//! answer waits until this broker's metadata view has applied it, so a client
//! that creates a topic and then asks for metadata sees it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    InitProducerIdRequest, InitProducerIdResponse, MetadataRequest, MetadataResponse, ProducerId,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use proto::image::{
    validate_topic_name, CommandReply, MetadataCommand, MetadataImage, TopicRecord,
};
use uuid::Uuid;

use crate::broker::Broker;
use crate::config::TOPIC_CONFIG_DEFAULTS;
use crate::errors::ErrorCode;

/// Kafka's "authorized operations not requested" marker.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;
/// How long an admin answer waits for the metadata view to catch up.
const VIEW_WAIT: Duration = Duration::from_secs(10);

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Waits until the view includes a controller write's effect.
async fn sync_view(broker: &Broker, version: u64) {
    broker.metadata.wait_for(version, VIEW_WAIT).await;
}

/// Creates `name` with the default partition count if it does not exist
/// (auto-creation on Metadata and Produce). Failures surface to the client
/// as an unknown topic on the next lookup.
pub async fn ensure_topic(broker: &Broker, name: &str) {
    if broker.metadata.read(|img| img.topics.contains_key(name))
        || validate_topic_name(name).is_err()
    {
        return;
    }
    let cmd = MetadataCommand::CreateTopic {
        id: broker.seams.entropy.uuid(),
        name: name.to_string(),
        partitions: broker.config.default_partitions,
        configs: BTreeMap::new(),
        internal: false,
    };
    if let Ok(out) = broker.controller.write(cmd).await {
        sync_view(broker, out.version).await;
    }
}

fn topic_metadata(img: &MetadataImage, t: &TopicRecord, version: i16) -> MetadataResponseTopic {
    let mut mt = MetadataResponseTopic::default();
    mt.name = Some(TopicName(s(&t.name)));
    mt.topic_id = t.id;
    mt.is_internal = t.internal;
    mt.topic_authorized_operations = OPERATIONS_NOT_REQUESTED;
    for (i, sid) in t.partitions.iter().enumerate() {
        let mut p = MetadataResponsePartition::default();
        p.partition_index = i as i32;
        match img
            .streams
            .get(sid)
            .and_then(|st| st.owner.map(|o| (o, st.leader_epoch)))
        {
            Some((owner, epoch)) if img.brokers.get(&owner).is_some_and(|b| !b.fenced) => {
                p.leader_id = BrokerId(owner);
                p.leader_epoch = epoch;
                p.replica_nodes = vec![BrokerId(owner)];
                p.isr_nodes = vec![BrokerId(owner)];
            }
            _ => {
                p.error_code = ErrorCode::LeaderNotAvailable.code();
                p.leader_id = BrokerId(-1);
                p.leader_epoch = -1;
            }
        }
        let _ = version;
        mt.partitions.push(p);
    }
    mt
}

pub async fn metadata(
    broker: &Arc<Broker>,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    // v0: an empty list means all topics; v1+: null means all.
    let requested: Option<Vec<(Option<String>, Uuid)>> = match req.topics {
        None => None,
        Some(ref v) if v.is_empty() && version == 0 => None,
        Some(v) => Some(
            v.into_iter()
                .map(|t| (t.name.map(|n| n.0.as_str().to_string()), t.topic_id))
                .collect(),
        ),
    };
    let auto_create =
        broker.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    if let (Some(list), true) = (&requested, auto_create) {
        for (name, _) in list {
            if let Some(name) = name {
                ensure_topic(broker, name).await;
            }
        }
    }
    let mut resp = MetadataResponse::default();
    resp.cluster_authorized_operations = OPERATIONS_NOT_REQUESTED;
    resp.controller_id = BrokerId(broker.id);
    broker.metadata.read(|img| {
        resp.cluster_id = img.cluster_id.as_deref().map(s);
        resp.brokers = img
            .live_brokers()
            .map(|b| {
                let mut mb = MetadataResponseBroker::default();
                mb.node_id = BrokerId(b.id);
                mb.host = s(&b.endpoint.host);
                mb.port = i32::from(b.endpoint.port);
                mb.rack = b.rack.as_deref().map(s);
                mb
            })
            .collect();
        match &requested {
            None => {
                resp.topics = img
                    .topics
                    .values()
                    .map(|t| topic_metadata(img, t, version))
                    .collect();
            }
            Some(list) => {
                for (name, id) in list {
                    let found = match name {
                        Some(n) => img.topics.get(n),
                        None => img.topic_by_id(*id),
                    };
                    match found {
                        Some(t) => resp.topics.push(topic_metadata(img, t, version)),
                        None => {
                            let mut mt = MetadataResponseTopic::default();
                            mt.name = name.as_deref().map(|n| TopicName(s(n)));
                            mt.topic_id = *id;
                            mt.topic_authorized_operations = OPERATIONS_NOT_REQUESTED;
                            mt.error_code = match name {
                                Some(n) if validate_topic_name(n).is_err() => {
                                    ErrorCode::InvalidTopicException
                                }
                                Some(_) => ErrorCode::UnknownTopicOrPartition,
                                None => ErrorCode::UnknownTopicId,
                            }
                            .code();
                            resp.topics.push(mt);
                        }
                    }
                }
            }
        }
    });
    resp
}

fn config_error(configs: &[(String, Option<String>)]) -> Option<String> {
    for (k, v) in configs {
        if !TOPIC_CONFIG_DEFAULTS.iter().any(|(name, _)| name == k) {
            return Some(format!("Unknown topic config name: {k}"));
        }
        let Some(v) = v else {
            return Some(format!("Null value not supported for topic config {k}"));
        };
        if let Err(e) = super::configs::validate_topic_config(k, v) {
            return Some(e);
        }
    }
    None
}

pub async fn create_topics(broker: &Arc<Broker>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let mut seen = std::collections::HashMap::new();
    for t in &req.topics {
        *seen.entry(t.name.0.as_str().to_string()).or_insert(0) += 1;
    }
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        r.num_partitions = -1;
        r.replication_factor = -1;
        let fail = |r: &mut CreatableTopicResult, code: ErrorCode, msg: String| {
            r.error_code = code.code();
            r.error_message = Some(s(&msg));
        };
        let partitions = if t.num_partitions == -1 {
            broker.config.default_partitions as i32
        } else {
            t.num_partitions
        };
        let configs: Vec<(String, Option<String>)> = t
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.as_str().to_string(),
                    c.value.as_ref().map(|v| v.as_str().to_string()),
                )
            })
            .collect();
        if seen.get(&name).copied().unwrap_or(0) > 1 {
            fail(
                &mut r,
                ErrorCode::InvalidRequest,
                format!(
                    "Create topics request from client contains multiple entries for topic {name}"
                ),
            );
        } else if let Err(e) = validate_topic_name(&name) {
            fail(&mut r, ErrorCode::InvalidTopicException, e);
        } else if broker.metadata.read(|img| img.topics.contains_key(&name)) {
            fail(
                &mut r,
                ErrorCode::TopicAlreadyExists,
                format!("Topic '{name}' already exists."),
            );
        } else if partitions <= 0 && t.assignments.is_empty() {
            fail(
                &mut r,
                ErrorCode::InvalidPartitions,
                "Number of partitions must be larger than 0.".into(),
            );
        } else if t.replication_factor == 0 || t.replication_factor < -1 {
            fail(
                &mut r,
                ErrorCode::InvalidReplicationFactor,
                "Replication factor must be larger than 0.".into(),
            );
        } else if let Some(e) = config_error(&configs) {
            fail(&mut r, ErrorCode::InvalidConfig, e);
        } else {
            let partitions = if t.assignments.is_empty() {
                partitions as u32
            } else {
                t.assignments.len() as u32
            };
            r.num_partitions = partitions as i32;
            r.replication_factor = 1;
            r.configs = Some(
                TOPIC_CONFIG_DEFAULTS
                    .iter()
                    .map(|(k, default)| {
                        let set = configs.iter().find(|(n, _)| n == k);
                        let mut c = CreatableTopicConfigs::default();
                        c.name = s(k);
                        c.value = Some(s(set.and_then(|(_, v)| v.as_deref()).unwrap_or(default)));
                        c.config_source = if set.is_some() { 1 } else { 5 };
                        c
                    })
                    .collect(),
            );
            if !req.validate_only {
                let id = broker.seams.entropy.uuid();
                let cmd = MetadataCommand::CreateTopic {
                    id,
                    name: name.clone(),
                    partitions,
                    configs: configs
                        .into_iter()
                        .filter_map(|(k, v)| v.map(|v| (k, v)))
                        .collect(),
                    internal: false,
                };
                match broker.controller.write(cmd).await {
                    Ok(out) => {
                        sync_view(broker, out.version).await;
                        match out.reply {
                            CommandReply::TopicCreated { id } => r.topic_id = id,
                            CommandReply::TopicExists => fail(
                                &mut r,
                                ErrorCode::TopicAlreadyExists,
                                format!("Topic '{name}' already exists."),
                            ),
                            CommandReply::InvalidTopic(e) => {
                                fail(&mut r, ErrorCode::InvalidTopicException, e)
                            }
                            CommandReply::InvalidPartitions(e) => {
                                fail(&mut r, ErrorCode::InvalidPartitions, e)
                            }
                            other => {
                                fail(&mut r, ErrorCode::UnknownServerError, format!("{other:?}"))
                            }
                        }
                    }
                    Err(e) => fail(&mut r, ErrorCode::RequestTimedOut, e.to_string()),
                }
            }
        }
        if r.error_code != 0 {
            r.configs = None;
            r.num_partitions = -1;
            r.replication_factor = -1;
        }
        resp.topics.push(r);
    }
    resp
}

pub async fn delete_topics(broker: &Arc<Broker>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // v0-5 name topics in `topic_names`; v6 in `topics` (by name or id).
    let mut targets: Vec<(Option<String>, Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.as_str().to_string()), Uuid::nil()))
        .collect();
    targets.extend(req.topics.iter().map(|t| {
        (
            t.name.as_ref().map(|n| n.0.as_str().to_string()),
            t.topic_id,
        )
    }));
    let mut resp = DeleteTopicsResponse::default();
    for (name, id) in targets {
        let mut r = DeletableTopicResult::default();
        r.topic_id = id;
        r.name = name.as_deref().map(|n| TopicName(s(n)));
        let resolved = broker.metadata.read(|img| match &name {
            Some(n) => img.topics.get(n).map(|t| (t.name.clone(), t.id)),
            None => img.topic_by_id(id).map(|t| (t.name.clone(), t.id)),
        });
        match resolved {
            None => {
                r.error_code = if name.is_some() {
                    ErrorCode::UnknownTopicOrPartition
                } else {
                    ErrorCode::UnknownTopicId
                }
                .code();
            }
            Some((n, tid)) => {
                r.name = Some(TopicName(s(&n)));
                r.topic_id = tid;
                match broker
                    .controller
                    .write(MetadataCommand::DeleteTopic {
                        name: n,
                        now_ms: broker.seams.clock.now_ms(),
                    })
                    .await
                {
                    Ok(out) => {
                        sync_view(broker, out.version).await;
                        if out.reply == CommandReply::UnknownTopic {
                            r.error_code = ErrorCode::UnknownTopicOrPartition.code();
                        }
                    }
                    Err(e) => {
                        r.error_code = ErrorCode::RequestTimedOut.code();
                        r.error_message = Some(s(&e.to_string()));
                    }
                }
            }
        }
        resp.responses.push(r);
    }
    resp
}

pub async fn create_partitions(
    broker: &Arc<Broker>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let mut r = CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        let current = broker
            .metadata
            .read(|img| img.topics.get(&name).map(|t| t.partitions.len() as i32));
        let result: Result<(), (ErrorCode, String)> = match current {
            None => Err((
                ErrorCode::UnknownTopicOrPartition,
                format!("The topic '{name}' does not exist."),
            )),
            Some(n) if t.count <= n => Err((
                ErrorCode::InvalidPartitions,
                format!(
                    "Topic currently has {n} partitions, which is higher than the requested {}.",
                    t.count
                ),
            )),
            Some(_) if req.validate_only => Ok(()),
            Some(_) => match broker
                .controller
                .write(MetadataCommand::CreatePartitions {
                    name: name.clone(),
                    total: t.count as u32,
                })
                .await
            {
                Ok(out) => {
                    sync_view(broker, out.version).await;
                    match out.reply {
                        CommandReply::Ok => Ok(()),
                        CommandReply::InvalidPartitions(e) => {
                            Err((ErrorCode::InvalidPartitions, e))
                        }
                        CommandReply::UnknownTopic => {
                            Err((ErrorCode::UnknownTopicOrPartition, name.clone()))
                        }
                        other => Err((ErrorCode::UnknownServerError, format!("{other:?}"))),
                    }
                }
                Err(e) => Err((ErrorCode::RequestTimedOut, e.to_string())),
            },
        };
        if let Err((code, msg)) = result {
            r.error_code = code.code();
            r.error_message = Some(s(&msg));
        }
        resp.results.push(r);
    }
    resp
}

/// InitProducerId without a transactional id: an idempotent producer.
pub async fn init_idempotent(
    broker: &Arc<Broker>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    // KIP-360: a producer that already has an id may ask for an epoch bump.
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch + 1;
        return resp;
    }
    match broker.next_producer_id().await {
        Ok(id) => {
            resp.producer_id = ProducerId(id);
            resp.producer_epoch = 0;
        }
        Err(_) => resp.error_code = ErrorCode::RequestTimedOut.code(),
    }
    resp
}

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
// DescribeConfigsResponse.ConfigSource.
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn synonym(name: &str, value: &str, source: i8) -> DescribeConfigsSynonym {
    let mut y = DescribeConfigsSynonym::default();
    y.name = s(name);
    y.value = Some(s(value));
    y.source = source;
    y
}

/// One topic config as DescribeConfigs reports it: the value in effect, its
/// source, and (when asked) every level that sets it, most specific first,
/// under Kafka's names (the topic key, then its broker synonym).
fn topic_entry(
    img: &proto::MetadataImage,
    configs: &std::collections::BTreeMap<String, String>,
    key: &str,
    synonyms: bool,
) -> Option<DescribeConfigsResourceResult> {
    use crate::config::{broker_synonym, topic_config_origin, ConfigOrigin};
    let (value, origin) = topic_config_origin(img, Some(configs), key)?;
    let mut c = DescribeConfigsResourceResult::default();
    c.name = s(key);
    c.value = Some(s(&value));
    c.config_source = match origin {
        ConfigOrigin::Topic => SOURCE_DYNAMIC_TOPIC,
        ConfigOrigin::ClusterDefault => SOURCE_DYNAMIC_DEFAULT_BROKER,
        ConfigOrigin::Default => SOURCE_DEFAULT,
    };
    if synonyms {
        if let Some(v) = configs.get(key) {
            c.synonyms.push(synonym(key, v, SOURCE_DYNAMIC_TOPIC));
        }
        if let Some(b) = broker_synonym(key) {
            if let Some(v) = img.cluster_configs.get(b) {
                c.synonyms
                    .push(synonym(b, v, SOURCE_DYNAMIC_DEFAULT_BROKER));
            }
            if let Some((_, d)) = TOPIC_CONFIG_DEFAULTS.iter().find(|(k, _)| *k == key) {
                c.synonyms.push(synonym(b, d, SOURCE_DEFAULT));
            }
        }
    }
    Some(c)
}

pub fn describe_configs(
    broker: &Arc<Broker>,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let wanted = |k: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
        };
        let entry = |k: &str, v: &str, source: i8, read_only: bool| {
            let mut c = DescribeConfigsResourceResult::default();
            c.name = s(k);
            c.value = Some(s(v));
            c.config_source = source;
            c.read_only = read_only;
            c
        };
        match res.resource_type {
            RESOURCE_TOPIC => {
                broker
                    .metadata
                    .read(|img| match img.topics.get(res.resource_name.as_str()) {
                        None => {
                            r.error_code = ErrorCode::UnknownTopicOrPartition.code();
                            r.error_message = Some(s("unknown topic"));
                        }
                        Some(t) => {
                            for (k, _) in TOPIC_CONFIG_DEFAULTS {
                                if wanted(k) {
                                    r.configs.extend(topic_entry(
                                        img,
                                        &t.configs,
                                        k,
                                        req.include_synonyms,
                                    ));
                                }
                            }
                        }
                    })
            }
            RESOURCE_BROKER if res.resource_name.is_empty() => {
                // The cluster-wide dynamic defaults: only what is set.
                let set = broker.metadata.read(|img| img.cluster_configs.clone());
                for (k, v) in set {
                    if wanted(&k) {
                        let mut c = entry(&k, &v, SOURCE_DYNAMIC_DEFAULT_BROKER, false);
                        if req.include_synonyms {
                            c.synonyms
                                .push(synonym(&k, &v, SOURCE_DYNAMIC_DEFAULT_BROKER));
                        }
                        r.configs.push(c);
                    }
                }
            }
            RESOURCE_BROKER => {
                let id = broker.id.to_string();
                if res.resource_name.as_str() != id {
                    r.error_code = ErrorCode::InvalidRequest.code();
                    r.error_message = Some(s("unknown broker"));
                } else {
                    let values = [
                        ("broker.id", id.clone()),
                        ("node.id", id.clone()),
                        (
                            "auto.create.topics.enable",
                            broker.config.auto_create_topics.to_string(),
                        ),
                        (
                            "num.partitions",
                            broker.config.default_partitions.to_string(),
                        ),
                        (
                            "socket.request.max.bytes",
                            broker.config.max_request_bytes.to_string(),
                        ),
                        ("default.replication.factor", "1".to_string()),
                    ];
                    for (k, v) in values {
                        if wanted(k) {
                            r.configs.push(entry(k, &v, SOURCE_STATIC_BROKER, true));
                        }
                    }
                    // The topic defaults under their broker names.
                    let cluster = broker.metadata.read(|img| img.cluster_configs.clone());
                    for (topic_key, b) in crate::config::TOPIC_CONFIG_SYNONYMS {
                        if !wanted(b) || r.configs.iter().any(|c| c.name.as_str() == *b) {
                            continue;
                        }
                        let default = TOPIC_CONFIG_DEFAULTS
                            .iter()
                            .find(|(k, _)| k == topic_key)
                            .map_or("", |(_, v)| *v);
                        let mut c = match cluster.get(*b) {
                            Some(v) => entry(b, v, SOURCE_DYNAMIC_DEFAULT_BROKER, false),
                            None => entry(b, default, SOURCE_DEFAULT, false),
                        };
                        if req.include_synonyms {
                            if let Some(v) = cluster.get(*b) {
                                c.synonyms
                                    .push(synonym(b, v, SOURCE_DYNAMIC_DEFAULT_BROKER));
                            }
                            c.synonyms.push(synonym(b, default, SOURCE_DEFAULT));
                        }
                        r.configs.push(c);
                    }
                }
            }
            _ => {
                r.error_code = ErrorCode::InvalidRequest.code();
                r.error_message = Some(s("unsupported resource type"));
            }
        }
        resp.results.push(r);
    }
    resp
}

pub fn describe_cluster(
    broker: &Arc<Broker>,
    _req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut resp = DescribeClusterResponse::default();
    resp.controller_id = BrokerId(broker.id);
    resp.cluster_authorized_operations = OPERATIONS_NOT_REQUESTED;
    resp.endpoint_type = 1;
    broker.metadata.read(|img| {
        resp.cluster_id = s(img.cluster_id.as_deref().unwrap_or(""));
        resp.brokers = img
            .live_brokers()
            .map(|b| {
                let mut d = DescribeClusterBroker::default();
                d.broker_id = BrokerId(b.id);
                d.host = s(&b.endpoint.host);
                d.port = i32::from(b.endpoint.port);
                d.rack = b.rack.as_deref().map(s);
                d
            })
            .collect();
    });
    resp
}
