//! The group APIs on the wire: FindCoordinator, JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups,
//! DescribeGroups, DeleteGroups, OffsetDelete, and the consumer protocol's
//! ConsumerGroupHeartbeat and ConsumerGroupDescribe. Each handler turns a
//! request into calls on `group::GroupCoordinator` and encodes the answer
//! exactly as its version defines (Kafka's `KafkaApis` and request/response
//! classes decide the per-version shapes). No group decision is made here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, DeleteGroupsRequest,
    DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use proto::image::{CommandReply, MetadataCommand};
use tracing::warn;

use crate::broker::Broker;
use crate::errors::ErrorCode;
use crate::group::classic::{JoinRequest, Protocol, SyncRequest};
use crate::group::consumer::{Assignment, HeartbeatRequest as ConsumerHeartbeat};
use crate::group::records::OffsetValue;
use crate::group::{partition_for, OFFSETS_TOPIC};
use crate::txn::TXN_TOPIC;

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// How long FindCoordinator waits for the metadata view after creating
/// `__consumer_offsets`.
const VIEW_WAIT: Duration = Duration::from_secs(10);

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn opt(v: &Option<StrBytes>) -> Option<String> {
    v.as_ref().map(|x| x.as_str().to_string())
}

// --------------------------------------------------------- FindCoordinator

/// Creates `__consumer_offsets` if it does not exist (internal, compacted,
/// `offsets.topic.num.partitions` partitions), whatever auto-creation says,
/// as Kafka does. Returns its partition count.
pub async fn ensure_offsets_topic(broker: &Broker) -> Option<usize> {
    ensure_internal_topic(broker, OFFSETS_TOPIC).await
}

/// Creates the internal compacted topic `name` if it does not exist, with
/// `offsets.topic.num.partitions` partitions; its partition count.
pub async fn ensure_internal_topic(broker: &Broker, name: &str) -> Option<usize> {
    let count = |b: &Broker| {
        b.metadata
            .read(|img| img.topics.get(name).map(|t| t.partitions.len()))
    };
    if let Some(n) = count(broker) {
        return Some(n);
    }
    let cmd = MetadataCommand::CreateTopic {
        id: broker.seams.entropy.uuid(),
        name: name.to_string(),
        partitions: broker.groups.config().offsets_topic_partitions,
        configs: BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]),
        internal: true,
    };
    match broker.controller.write(cmd).await {
        Ok(out) => {
            if !matches!(
                out.reply,
                CommandReply::TopicCreated { .. } | CommandReply::TopicExists
            ) {
                warn!(reply = ?out.reply, "creating {name} refused");
            }
            broker.metadata.wait_for(out.version, VIEW_WAIT).await;
        }
        Err(e) => warn!(error = %e, "creating {name} failed"),
    }
    count(broker)
}

/// (error, node id, host, port) of the coordinator for `key`.
async fn coordinator_for(
    broker: &Broker,
    key_type: i8,
    key: &str,
) -> (ErrorCode, i32, String, i32) {
    let none = |code| (code, -1, String::new(), -1);
    let (topic, partitions) = match key_type {
        KEY_TYPE_GROUP => (OFFSETS_TOPIC, ensure_offsets_topic(broker).await),
        KEY_TYPE_TRANSACTION => {
            if key.is_empty() {
                return none(ErrorCode::InvalidRequest);
            }
            (TXN_TOPIC, ensure_internal_topic(broker, TXN_TOPIC).await)
        }
        _ => return none(ErrorCode::InvalidRequest),
    };
    let Some(partitions) = partitions else {
        return none(ErrorCode::CoordinatorNotAvailable);
    };
    let partition = partition_for(key, u32::try_from(partitions).unwrap_or(u32::MAX));
    let owner = broker.metadata.read(|img| {
        let s = img.stream_of(topic, partition)?;
        let b = img.brokers.get(&s.owner?)?;
        (!b.fenced).then(|| (b.id, b.endpoint.host.clone(), i32::from(b.endpoint.port)))
    });
    match owner {
        Some((id, host, port)) => (ErrorCode::None, id, host, port),
        None => none(ErrorCode::CoordinatorNotAvailable),
    }
}

pub async fn find_coordinator(
    broker: &Arc<Broker>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut resp = FindCoordinatorResponse::default();
    if version < 4 {
        let (code, node, host, port) =
            coordinator_for(broker, req.key_type, req.key.as_str()).await;
        resp.error_code = code.code();
        resp.node_id = BrokerId(node);
        resp.host = s(&host);
        resp.port = port;
        if code != ErrorCode::None && version >= 1 {
            resp.error_message = Some(s(&format!("{code:?}")));
        }
        return resp;
    }
    for key in req.coordinator_keys {
        let (code, node, host, port) = coordinator_for(broker, req.key_type, key.as_str()).await;
        let mut c = Coordinator::default();
        c.key = key;
        c.error_code = code.code();
        c.node_id = BrokerId(node);
        c.host = s(&host);
        c.port = port;
        resp.coordinators.push(c);
    }
    resp
}

// ----------------------------------------------------------- membership

pub async fn join_group(
    broker: &Arc<Broker>,
    req: JoinGroupRequest,
    version: i16,
    client_id: Option<StrBytes>,
) -> JoinGroupResponse {
    let session = req.session_timeout_ms;
    let r = broker
        .groups
        .join(JoinRequest {
            group_id: req.group_id.0.as_str().to_string(),
            member_id: req.member_id.as_str().to_string(),
            instance_id: opt(&req.group_instance_id),
            client_id: opt(&client_id).unwrap_or_default(),
            // The connection's peer address does not reach the handlers.
            client_host: String::new(),
            session_timeout_ms: session,
            // v0 has no rebalance timeout: Kafka uses the session timeout.
            rebalance_timeout_ms: if version == 0 {
                session
            } else {
                req.rebalance_timeout_ms
            },
            protocol_type: req.protocol_type.as_str().to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| Protocol {
                    name: p.name.as_str().to_string(),
                    metadata: p.metadata,
                })
                .collect(),
            version,
        })
        .await;
    let mut resp = JoinGroupResponse::default();
    resp.error_code = r.error.code();
    resp.generation_id = r.generation_id;
    resp.protocol_type = r.protocol_type.as_deref().map(s);
    // Before v7 the protocol name is not nullable: "" stands for none.
    resp.protocol_name = match (version < 7, r.protocol_name) {
        (true, p) => Some(s(p.as_deref().unwrap_or(""))),
        (false, Some(p)) if !p.is_empty() => Some(s(&p)),
        (false, _) => None,
    };
    resp.leader = s(&r.leader);
    resp.skip_assignment = version >= 9 && r.skip_assignment;
    resp.member_id = s(&r.member_id);
    resp.members = r
        .members
        .into_iter()
        .map(|m| {
            let mut jm = JoinGroupResponseMember::default();
            jm.member_id = s(&m.member_id);
            jm.group_instance_id = m.instance_id.as_deref().map(s);
            jm.metadata = m.metadata;
            jm
        })
        .collect();
    resp
}

pub async fn sync_group(
    broker: &Arc<Broker>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let mut resp = SyncGroupResponse::default();
    if version >= 5 && (req.protocol_type.is_none() || req.protocol_name.is_none()) {
        // From v5 the protocol type and name are mandatory.
        resp.error_code = ErrorCode::InconsistentGroupProtocol.code();
        return resp;
    }
    let r = broker
        .groups
        .sync(SyncRequest {
            group_id: req.group_id.0.as_str().to_string(),
            generation_id: req.generation_id,
            member_id: req.member_id.as_str().to_string(),
            instance_id: opt(&req.group_instance_id),
            protocol_type: opt(&req.protocol_type),
            protocol_name: opt(&req.protocol_name),
            assignments: req
                .assignments
                .into_iter()
                .map(|a| (a.member_id.as_str().to_string(), a.assignment))
                .collect(),
        })
        .await;
    resp.error_code = r.error.code();
    resp.protocol_type = r.protocol_type.as_deref().map(s);
    resp.protocol_name = r.protocol_name.as_deref().map(s);
    resp.assignment = r.assignment;
    resp
}

pub async fn heartbeat(broker: &Arc<Broker>, req: HeartbeatRequest) -> HeartbeatResponse {
    let code = broker
        .groups
        .heartbeat(
            req.group_id.0.as_str(),
            req.generation_id,
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|i| i.as_str()),
        )
        .await;
    let mut resp = HeartbeatResponse::default();
    resp.error_code = code.code();
    resp
}

pub async fn leave_group(
    broker: &Arc<Broker>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    // v0-2 name one member at the top level; v3+ a batch.
    let members: Vec<(String, Option<String>)> = if version < 3 {
        vec![(req.member_id.as_str().to_string(), None)]
    } else {
        req.members
            .iter()
            .map(|m| (m.member_id.as_str().to_string(), opt(&m.group_instance_id)))
            .collect()
    };
    let (top, errors) = broker.groups.leave(req.group_id.0.as_str(), &members).await;
    let mut resp = LeaveGroupResponse::default();
    if version < 3 {
        let first = errors.first().copied().unwrap_or(ErrorCode::None);
        resp.error_code = if top != ErrorCode::None { top } else { first }.code();
        return resp;
    }
    resp.error_code = top.code();
    if top == ErrorCode::None {
        resp.members = members
            .into_iter()
            .zip(errors)
            .map(|((member_id, instance_id), code)| {
                let mut m = MemberResponse::default();
                m.member_id = s(&member_id);
                m.group_instance_id = instance_id.as_deref().map(s);
                m.error_code = code.code();
                m
            })
            .collect();
    }
    resp
}

// -------------------------------------------------------------- offsets

fn partition_exists(broker: &Broker, topic: &str, partition: i32) -> bool {
    broker
        .metadata
        .read(|img| img.stream_of(topic, partition).is_some())
}

pub async fn offset_commit(
    broker: &Arc<Broker>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let now_wall = broker.seams.clock.now_ms();
    // retention_time_ms exists in v2-v4 only; -1 means the broker default.
    let expire = if version <= 4 && req.retention_time_ms >= 0 {
        now_wall.saturating_add(req.retention_time_ms)
    } else {
        -1
    };
    let max_metadata = broker.groups.config().offset_metadata_max_bytes;
    // Per topic: (partition, its error, or None when it goes to the coordinator).
    type Verdicts = Vec<(TopicName, Vec<(i32, Option<ErrorCode>)>)>;
    let mut verdicts: Verdicts = Vec::new();
    let mut valid = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.as_str();
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let metadata = p
                .committed_metadata
                .as_ref()
                .map(|m| m.as_str().to_string())
                .unwrap_or_default();
            if !partition_exists(broker, topic, p.partition_index) {
                parts.push((p.partition_index, Some(ErrorCode::UnknownTopicOrPartition)));
            } else if metadata.len() > max_metadata {
                parts.push((p.partition_index, Some(ErrorCode::OffsetMetadataTooLarge)));
            } else {
                parts.push((p.partition_index, None));
                valid.push((
                    topic.to_string(),
                    p.partition_index,
                    OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp: now_wall,
                        expire_timestamp: expire,
                    },
                ));
            }
        }
        verdicts.push((t.name.clone(), parts));
    }
    let code = if valid.is_empty() {
        ErrorCode::None
    } else {
        broker
            .groups
            .commit_offsets(
                req.group_id.0.as_str(),
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|i| i.as_str()),
                req.generation_id_or_member_epoch,
                version,
                valid,
            )
            .await
    };
    let mut resp = OffsetCommitResponse::default();
    resp.topics = verdicts
        .into_iter()
        .map(|(name, parts)| {
            let mut t = OffsetCommitResponseTopic::default();
            t.name = name;
            t.partitions = parts
                .into_iter()
                .map(|(index, err)| {
                    let mut p = OffsetCommitResponsePartition::default();
                    p.partition_index = index;
                    p.error_code = err.unwrap_or(code).code();
                    p
                })
                .collect();
            t
        })
        .collect();
    resp
}

/// One group's answer to OffsetFetch, in the v8+ shape.
async fn fetch_group(
    broker: &Broker,
    group_id: GroupId,
    member: Option<(String, i32)>,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> OffsetFetchResponseGroup {
    let mut g = OffsetFetchResponseGroup::default();
    let checked = match &member {
        Some((id, epoch)) => {
            broker
                .groups
                .validate_fetch(group_id.0.as_str(), Some(id.as_str()), *epoch)
                .await
        }
        None => Ok(()),
    };
    let result = match checked {
        Ok(()) => {
            broker
                .groups
                .fetch_offsets(group_id.0.as_str(), topics.clone(), require_stable)
                .await
        }
        Err(code) => Err(code),
    };
    g.group_id = group_id;
    match result {
        Err(code) => {
            g.error_code = code.code();
            // Kept for v0-1, which have no group-level error.
            g.topics = topics
                .unwrap_or_default()
                .into_iter()
                .map(|(t, parts)| {
                    let mut rt = OffsetFetchResponseTopics::default();
                    rt.name = TopicName(s(&t));
                    rt.partitions = parts
                        .into_iter()
                        .map(|p| {
                            let mut rp = OffsetFetchResponsePartitions::default();
                            rp.partition_index = p;
                            rp.committed_offset = -1;
                            rp.committed_leader_epoch = -1;
                            rp.metadata = Some(s(""));
                            rp.error_code = code.code();
                            rp
                        })
                        .collect();
                    rt
                })
                .collect();
        }
        Ok(found) => {
            g.topics = found
                .into_iter()
                .map(|(t, parts)| {
                    let mut rt = OffsetFetchResponseTopics::default();
                    rt.name = TopicName(s(&t));
                    rt.partitions = parts
                        .into_iter()
                        .map(|(p, c)| {
                            let mut rp = OffsetFetchResponsePartitions::default();
                            rp.partition_index = p;
                            match c {
                                Some(c) => {
                                    rp.committed_offset = c.offset;
                                    rp.committed_leader_epoch = c.leader_epoch;
                                    rp.metadata = Some(s(&c.metadata));
                                }
                                None => {
                                    rp.committed_offset = -1;
                                    rp.committed_leader_epoch = -1;
                                    rp.metadata = Some(s(""));
                                }
                            }
                            rp
                        })
                        .collect();
                    rt
                })
                .collect();
        }
    }
    g
}

pub async fn offset_fetch(
    broker: &Arc<Broker>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let require_stable = version >= 7 && req.require_stable;
    let mut resp = OffsetFetchResponse::default();
    if version >= 8 {
        for g in req.groups {
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                    .collect()
            });
            // v9+: a consumer-protocol member names itself and its epoch.
            let member = g
                .member_id
                .as_ref()
                .map(|m| (m.as_str().to_string(), g.member_epoch));
            resp.groups
                .push(fetch_group(broker, g.group_id, member, topics, require_stable).await);
        }
        return resp;
    }
    let topics = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
            .collect()
    });
    let g = fetch_group(broker, req.group_id, None, topics, require_stable).await;
    let group_error = g.error_code;
    if version >= 2 {
        resp.error_code = group_error;
    }
    if group_error != 0 && version >= 2 {
        return resp;
    }
    resp.topics = g
        .topics
        .into_iter()
        .map(|t| {
            let mut rt = OffsetFetchResponseTopic::default();
            rt.name = t.name;
            rt.partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let mut rp = OffsetFetchResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.committed_offset = p.committed_offset;
                    rp.committed_leader_epoch = p.committed_leader_epoch;
                    rp.metadata = p.metadata;
                    rp.error_code = p.error_code;
                    rp
                })
                .collect();
            rt
        })
        .collect();
    resp
}

pub async fn offset_delete(broker: &Arc<Broker>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let mut resp = OffsetDeleteResponse::default();
    let mut unknown: Vec<(TopicName, Vec<i32>)> = Vec::new();
    let mut known: Vec<(String, Vec<i32>)> = Vec::new();
    for t in &req.topics {
        let parts: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        let name = t.name.0.as_str();
        if broker.metadata.read(|img| img.topics.contains_key(name)) {
            known.push((name.to_string(), parts));
        } else {
            unknown.push((t.name.clone(), parts));
        }
    }
    let answered = if known.is_empty() {
        Ok(Vec::new())
    } else {
        broker
            .groups
            .delete_offsets(req.group_id.0.as_str(), known)
            .await
    };
    let answered = match answered {
        Ok(a) => a,
        Err(code) => {
            resp.error_code = code.code();
            return resp;
        }
    };
    let topic = |name: TopicName, parts: Vec<(i32, ErrorCode)>| {
        let mut t = OffsetDeleteResponseTopic::default();
        t.name = name;
        t.partitions = parts
            .into_iter()
            .map(|(p, code)| {
                let mut rp = OffsetDeleteResponsePartition::default();
                rp.partition_index = p;
                rp.error_code = code.code();
                rp
            })
            .collect();
        t
    };
    for (name, parts) in answered {
        resp.topics.push(topic(TopicName(s(&name)), parts));
    }
    for (name, parts) in unknown {
        let parts = parts
            .into_iter()
            .map(|p| (p, ErrorCode::UnknownTopicOrPartition))
            .collect();
        resp.topics.push(topic(name, parts));
    }
    resp
}

// ------------------------------------------------------- list, describe

pub async fn list_groups(
    broker: &Arc<Broker>,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let mut resp = ListGroupsResponse::default();
    let groups = match broker.groups.list_groups().await {
        Ok(g) => g,
        Err(code) => {
            resp.error_code = code.code();
            return resp;
        }
    };
    let states: Vec<String> = if version >= 4 {
        req.states_filter
            .iter()
            .map(|f| f.as_str().trim().to_lowercase())
            .collect()
    } else {
        Vec::new()
    };
    let types: Vec<String> = if version >= 5 {
        req.types_filter
            .iter()
            .map(|f| f.as_str().trim().to_lowercase())
            .collect()
    } else {
        Vec::new()
    };
    resp.groups = groups
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.to_lowercase()))
        .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type))
        .map(|g| {
            let mut l = ListedGroup::default();
            l.group_id = GroupId(s(&g.group_id));
            l.protocol_type = s(&g.protocol_type);
            l.group_state = s(g.state);
            l.group_type = s(g.group_type);
            l
        })
        .collect();
    resp
}

pub async fn describe_groups(
    broker: &Arc<Broker>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut d = DescribedGroup::default();
        match broker.groups.describe(id.0.as_str()).await {
            Err(code) => {
                d.error_code = code.code();
                if code == ErrorCode::GroupIdNotFound {
                    d.group_state = s("Dead");
                    d.error_message = Some(s(&format!(
                        "Group {} is not a classic group.",
                        id.0.as_str()
                    )));
                }
            }
            Ok(None) => d.group_state = s("Dead"),
            Ok(Some(g)) => {
                d.group_state = s(g.state.name());
                d.protocol_type = s(&g.protocol_type);
                d.protocol_data = s(&g.protocol_data);
                d.members = g
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = s(&m.member_id);
                        dm.group_instance_id = m.instance_id.as_deref().map(s);
                        dm.client_id = s(&m.client_id);
                        dm.client_host = s(&m.client_host);
                        dm.member_metadata = m.metadata;
                        dm.member_assignment = m.assignment;
                        dm
                    })
                    .collect();
            }
        }
        d.group_id = id;
        resp.groups.push(d);
    }
    resp
}

pub async fn delete_groups(broker: &Arc<Broker>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut resp = DeleteGroupsResponse::default();
    let mut seen = std::collections::HashSet::new();
    for id in req.groups_names {
        if !seen.insert(id.0.as_str().to_string()) {
            continue; // Kafka answers each distinct group once
        }
        let mut r = DeletableGroupResult::default();
        r.error_code = broker.groups.delete_group(id.0.as_str()).await.code();
        r.group_id = id;
        resp.results.push(r);
    }
    resp
}

// ------------------------------------------- the consumer protocol (KIP-848)

fn to_assignment(
    topics: Vec<kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions>,
) -> Assignment {
    let mut out = Assignment::new();
    for t in topics {
        out.entry(t.topic_id).or_default().extend(t.partitions);
    }
    out
}

pub async fn consumer_group_heartbeat(
    broker: &Arc<Broker>,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
    client_id: Option<StrBytes>,
) -> ConsumerGroupHeartbeatResponse {
    use kafka_protocol::messages::consumer_group_heartbeat_response::{
        Assignment as WireAssignment, TopicPartitions,
    };
    let request = ConsumerHeartbeat {
        version,
        group_id: req.group_id.0.as_str().to_string(),
        member_id: req.member_id.as_str().to_string(),
        member_epoch: req.member_epoch,
        instance_id: opt(&req.instance_id),
        rack_id: opt(&req.rack_id),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .map(|ts| ts.into_iter().map(|t| t.0.as_str().to_string()).collect()),
        subscribed_topic_regex: opt(&req.subscribed_topic_regex),
        server_assignor: opt(&req.server_assignor),
        owned: req.topic_partitions.map(to_assignment),
        client_id: opt(&client_id).unwrap_or_default(),
        // The connection's peer address does not reach the handlers.
        client_host: String::new(),
    };
    let client_log = request.client_id.clone();
    let mut resp = ConsumerGroupHeartbeatResponse::default();
    match broker.groups.consumer_heartbeat(request).await {
        Ok(reply) => {
            resp.member_id = Some(s(&reply.member_id));
            resp.member_epoch = reply.member_epoch;
            resp.heartbeat_interval_ms = reply.heartbeat_interval_ms;
            resp.assignment = reply.assignment.map(|a| {
                let mut w = WireAssignment::default();
                w.topic_partitions = a
                    .into_iter()
                    .map(|(id, ps)| {
                        let mut tp = TopicPartitions::default();
                        tp.topic_id = id;
                        tp.partitions = ps.into_iter().collect();
                        tp
                    })
                    .collect();
                w
            });
        }
        Err(e) => {
            if e.code == ErrorCode::InvalidRequest {
                warn!(client = ?client_log, message = ?e.message, "ConsumerGroupHeartbeat refused");
            }
            resp.error_code = e.code.code();
            resp.error_message = e.message.as_deref().map(s);
        }
    }
    resp
}

pub async fn consumer_group_describe(
    broker: &Arc<Broker>,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    use kafka_protocol::messages::consumer_group_describe_response::{
        Assignment as WireAssignment, DescribedGroup as Described, Member, TopicPartitions,
    };
    let names: std::collections::HashMap<uuid::Uuid, String> = broker.metadata.read(|img| {
        img.topics
            .values()
            .map(|t| (t.id, t.name.clone()))
            .collect()
    });
    let wire = |a: &Assignment| {
        let mut w = WireAssignment::default();
        w.topic_partitions = a
            .iter()
            .map(|(id, ps)| {
                let mut tp = TopicPartitions::default();
                tp.topic_id = *id;
                tp.topic_name = TopicName(s(names.get(id).map_or("", |n| n.as_str())));
                tp.partitions = ps.iter().copied().collect();
                tp
            })
            .collect();
        w
    };
    let mut resp = ConsumerGroupDescribeResponse::default();
    for id in req.group_ids {
        let mut d = Described::default();
        match broker.groups.describe_consumer_group(id.0.as_str()).await {
            Err(code) => d.error_code = code.code(),
            Ok(None) => {
                d.error_code = ErrorCode::GroupIdNotFound.code();
                d.error_message = Some(s(&format!(
                    "Group {} not found or is not a consumer group.",
                    id.0.as_str()
                )));
                d.group_state = s("Dead");
            }
            Ok(Some(g)) => {
                d.group_state = s(g.state_name());
                d.group_epoch = g.epoch;
                d.assignment_epoch = g.assignment_epoch;
                d.assignor_name = s(&g.assignor);
                // Kafka's AclOperation set is not built: no ACLs here.
                d.authorized_operations = i32::MIN;
                d.members = g
                    .members
                    .values()
                    .map(|m| {
                        let mut dm = Member::default();
                        dm.member_id = s(&m.id);
                        dm.instance_id = m.instance_id.as_deref().map(s);
                        dm.rack_id = m.rack_id.as_deref().map(s);
                        dm.member_epoch = m.epoch;
                        dm.client_id = s(&m.client_id);
                        dm.client_host = s(&m.client_host);
                        dm.subscribed_topic_names =
                            m.subscribed.iter().map(|t| TopicName(s(t))).collect();
                        dm.subscribed_topic_regex = m.regex.as_deref().map(s);
                        dm.assignment = wire(&m.assigned);
                        dm.target_assignment =
                            wire(g.target.get(&m.id).unwrap_or(&Assignment::new()));
                        // 1: the consumer protocol (0 would be classic).
                        dm.member_type = 1;
                        dm
                    })
                    .collect();
            }
        }
        d.group_id = id;
        resp.groups.push(d);
    }
    resp
}
