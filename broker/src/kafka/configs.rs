//! IncrementalAlterConfigs: topic configs change through one controller
//! command and take effect without a restart (retention, max.message.bytes
//! and the rest are read from the metadata image when used).
//!
//! Broker resources accept only the replication throttles that Kafka's tools
//! set and clear around reassignments; Oxbow never copies partition data
//! between brokers, so there is nothing for them to throttle. Other dynamic
//! broker configs are refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use proto::image::{CommandReply, MetadataCommand};

use crate::broker::Broker;
use crate::config::TOPIC_CONFIG_DEFAULTS;
use crate::errors::ErrorCode;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

/// Broker configs that only throttle replication.
const REPLICATION_THROTTLES: &[&str] = &[
    "leader.replication.throttled.rate",
    "follower.replication.throttled.rate",
    "replica.alter.log.dirs.io.max.bytes.per.second",
];

type Outcome = Result<(), (ErrorCode, String)>;

pub async fn incremental_alter(
    broker: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut resp = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let mut r = AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let ops: Vec<(String, i8, Option<String>)> = res
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.as_str().to_string(),
                    c.config_operation,
                    c.value.as_ref().map(|v| v.as_str().to_string()),
                )
            })
            .collect();
        let outcome = match res.resource_type {
            RESOURCE_TOPIC => {
                alter_topic(broker, res.resource_name.as_str(), &ops, req.validate_only).await
            }
            RESOURCE_BROKER => alter_broker(&ops),
            _ => Err((
                ErrorCode::InvalidRequest,
                "unsupported resource type".into(),
            )),
        };
        if let Err((code, msg)) = outcome {
            r.error_code = code.code();
            r.error_message = Some(StrBytes::from_string(msg));
        }
        resp.responses.push(r);
    }
    resp
}

fn alter_broker(ops: &[(String, i8, Option<String>)]) -> Outcome {
    for (name, _, _) in ops {
        if !REPLICATION_THROTTLES.contains(&name.as_str()) {
            return Err((
                ErrorCode::InvalidConfig,
                format!("dynamic broker config {name} is not supported"),
            ));
        }
    }
    Ok(())
}

async fn alter_topic(
    broker: &Arc<Broker>,
    name: &str,
    ops: &[(String, i8, Option<String>)],
    validate_only: bool,
) -> Outcome {
    let Some(current) = broker
        .metadata
        .read(|img| img.topics.get(name).map(|t| t.configs.clone()))
    else {
        return Err((
            ErrorCode::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        ));
    };
    let mut set = BTreeMap::new();
    let mut delete = Vec::new();
    for (key, op, value) in ops {
        if !TOPIC_CONFIG_DEFAULTS.iter().any(|(k, _)| k == key) {
            return Err((
                ErrorCode::InvalidConfig,
                format!("Unknown topic config name: {key}"),
            ));
        }
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        match (*op, value) {
            (OP_SET, Some(v)) => {
                set.insert(key.clone(), v.clone());
            }
            (OP_DELETE, _) => delete.push(key.clone()),
            (OP_APPEND | OP_SUBTRACT, Some(v)) => {
                let mut items = current.get(key).map(|c| list(c)).unwrap_or_default();
                for item in list(v) {
                    if *op == OP_APPEND {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    } else {
                        items.retain(|x| *x != item);
                    }
                }
                set.insert(key.clone(), items.join(","));
            }
            _ => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("invalid operation {op} on {key}"),
                ))
            }
        }
    }
    if validate_only {
        return Ok(());
    }
    let reply = broker
        .propose(MetadataCommand::AlterTopicConfigs {
            name: name.to_string(),
            set,
            delete,
        })
        .await
        .map_err(|e| (ErrorCode::RequestTimedOut, e.to_string()))?;
    match reply {
        CommandReply::Ok => Ok(()),
        CommandReply::UnknownTopic => Err((
            ErrorCode::UnknownTopicOrPartition,
            format!("topic {name} does not exist"),
        )),
        other => Err((ErrorCode::UnknownServerError, format!("{other:?}"))),
    }
}
