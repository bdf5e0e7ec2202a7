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
use crate::config::{TOPIC_CONFIG_DEFAULTS, TOPIC_CONFIG_SYNONYMS};
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
            RESOURCE_BROKER if res.resource_name.is_empty() => {
                alter_cluster_defaults(broker, &ops, req.validate_only).await
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
            let hint = if TOPIC_CONFIG_SYNONYMS.iter().any(|(_, b)| b == name) {
                " per broker; set it for the whole cluster (--entity-default)"
            } else {
                ""
            };
            return Err((
                ErrorCode::InvalidConfig,
                format!("dynamic broker config {name} is not supported{hint}"),
            ));
        }
    }
    Ok(())
}

/// Cluster-wide dynamic defaults (`--entity-type brokers --entity-default`):
/// the broker synonyms of topic configs, which apply at once to every topic
/// that does not set its own.
async fn alter_cluster_defaults(
    broker: &Arc<Broker>,
    ops: &[(String, i8, Option<String>)],
    validate_only: bool,
) -> Outcome {
    let mut set = BTreeMap::new();
    let mut delete = Vec::new();
    for (key, op, value) in ops {
        if REPLICATION_THROTTLES.contains(&key.as_str()) {
            continue;
        }
        let Some((topic_key, _)) = TOPIC_CONFIG_SYNONYMS.iter().find(|(_, b)| b == key) else {
            return Err((
                ErrorCode::InvalidConfig,
                format!("dynamic broker config {key} is not supported"),
            ));
        };
        match (*op, value) {
            (OP_SET, Some(v)) => {
                validate_topic_config(topic_key, v).map_err(|_| {
                    (
                        ErrorCode::InvalidConfig,
                        format!("Invalid value {v} for configuration {key}"),
                    )
                })?;
                set.insert(key.clone(), v.clone());
            }
            (OP_DELETE, _) => delete.push(key.clone()),
            _ => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("invalid operation {op} on {key}"),
                ))
            }
        }
    }
    if validate_only || (set.is_empty() && delete.is_empty()) {
        return Ok(());
    }
    match broker
        .propose(MetadataCommand::AlterClusterConfigs { set, delete })
        .await
        .map_err(|e| (ErrorCode::RequestTimedOut, e.to_string()))?
    {
        CommandReply::Ok => Ok(()),
        other => Err((ErrorCode::UnknownServerError, format!("{other:?}"))),
    }
}

/// Checks a topic config's value the way Kafka's `LogConfig` would refuse it.
pub fn validate_topic_config(key: &str, value: &str) -> Result<(), String> {
    let bad = || format!("Invalid value {value} for configuration {key}");
    match key {
        "cleanup.policy" => {
            let ok = !value.trim().is_empty()
                && value
                    .split(',')
                    .all(|p| matches!(p.trim(), "delete" | "compact"));
            ok.then_some(()).ok_or_else(bad)
        }
        "message.timestamp.type" => matches!(value, "CreateTime" | "LogAppendTime")
            .then_some(())
            .ok_or_else(bad),
        "min.cleanable.dirty.ratio" => value
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .map(|_| ())
            .ok_or_else(bad),
        "retention.ms" | "retention.bytes" => value
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= -1)
            .map(|_| ())
            .ok_or_else(bad),
        "delete.retention.ms"
        | "min.compaction.lag.ms"
        | "max.compaction.lag.ms"
        | "file.delete.delay.ms"
        | "flush.messages"
        | "flush.ms"
        | "segment.ms"
        | "segment.jitter.ms"
        | "message.timestamp.after.max.ms"
        | "message.timestamp.before.max.ms" => value
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .map(|_| ())
            .ok_or_else(bad),
        "max.message.bytes"
        | "segment.bytes"
        | "segment.index.bytes"
        | "index.interval.bytes"
        | "min.insync.replicas" => value
            .parse::<i32>()
            .ok()
            .filter(|v| *v >= 0)
            .map(|_| ())
            .ok_or_else(bad),
        "preallocate" | "unclean.leader.election.enable" => matches!(value, "true" | "false")
            .then_some(())
            .ok_or_else(bad),
        _ => Ok(()),
    }
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
                validate_topic_config(key, v).map_err(|e| (ErrorCode::InvalidConfig, e))?;
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
                let joined = items.join(",");
                validate_topic_config(key, &joined).map_err(|e| (ErrorCode::InvalidConfig, e))?;
                set.insert(key.clone(), joined);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_config_values_are_checked_like_kafka() {
        for (k, v) in [
            ("cleanup.policy", "compact,delete"),
            ("cleanup.policy", "delete"),
            ("retention.ms", "-1"),
            ("retention.bytes", "1000"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("message.timestamp.type", "LogAppendTime"),
            ("delete.retention.ms", "0"),
            ("max.message.bytes", "2000"),
        ] {
            assert_eq!(validate_topic_config(k, v), Ok(()), "{k}={v}");
        }
        for (k, v) in [
            ("cleanup.policy", "compress"),
            ("cleanup.policy", ""),
            ("retention.ms", "-2"),
            ("retention.ms", "soon"),
            ("min.cleanable.dirty.ratio", "1.5"),
            ("message.timestamp.type", "Now"),
            ("delete.retention.ms", "-1"),
            ("max.message.bytes", "99999999999"),
            ("preallocate", "yes"),
        ] {
            let e = validate_topic_config(k, v).expect_err(k);
            assert_eq!(e, format!("Invalid value {v} for configuration {k}"));
        }
    }

    #[test]
    fn every_topic_config_with_a_synonym_is_known() {
        for (topic_key, _) in TOPIC_CONFIG_SYNONYMS {
            assert!(
                TOPIC_CONFIG_DEFAULTS.iter().any(|(k, _)| k == topic_key),
                "{topic_key}"
            );
        }
    }
}
