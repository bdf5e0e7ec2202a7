//! Retention: how far a stream's start offset may move for its topic's
//! `retention.ms` and `retention.bytes`, decided from the object map alone
//! (each slice's max timestamp and byte count). Pure; the broker's lifecycle
//! task proposes the answer as a `TrimStream`.
//!
//! Granularity is a slice (the part of a stream in one object), as Kafka's is
//! a segment: a slice goes when all of it is past retention.

use std::collections::BTreeMap;

use proto::image::StreamRecord;

/// A topic's retention settings; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// From topic configs over broker defaults. Only `cleanup.policy`s that
    /// include `delete` have time/size retention.
    pub fn from_configs(configs: &BTreeMap<String, String>, defaults: &[(&str, &str)]) -> Self {
        let get = |k: &str| {
            configs
                .get(k)
                .map(String::as_str)
                .or_else(|| defaults.iter().find(|(n, _)| *n == k).map(|(_, v)| *v))
        };
        let deletes =
            get("cleanup.policy").is_none_or(|p| p.split(',').any(|x| x.trim() == "delete"));
        if !deletes {
            return RetentionPolicy {
                retention_ms: None,
                retention_bytes: None,
            };
        }
        let ms = get("retention.ms")
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v >= 0);
        let bytes = get("retention.bytes")
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| *v >= 0);
        RetentionPolicy {
            retention_ms: ms,
            retention_bytes: bytes.map(|b| b as u64),
        }
    }
}

/// The start offset retention allows at `now_ms`, if it is past the current one.
pub fn retention_start(stream: &StreamRecord, policy: RetentionPolicy, now_ms: i64) -> Option<u64> {
    let live: Vec<_> = stream
        .slices
        .values()
        .filter(|sl| sl.end_offset > stream.start_offset)
        .collect();
    let mut target = stream.start_offset;
    if let Some(ms) = policy.retention_ms {
        let cutoff = now_ms.saturating_sub(ms);
        for sl in &live {
            if sl.max_timestamp < cutoff {
                target = target.max(sl.end_offset);
            } else {
                break;
            }
        }
    }
    if let Some(limit) = policy.retention_bytes {
        let mut total: u64 = live.iter().map(|sl| sl.bytes).sum();
        for sl in &live {
            // Kafka keeps at least `retention.bytes`: a segment goes only if
            // what remains without it is still that much.
            if total.saturating_sub(sl.bytes) >= limit && total > limit {
                total -= sl.bytes;
                target = target.max(sl.end_offset);
            } else {
                break;
            }
        }
    }
    (target > stream.start_offset).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::image::StreamSlice;
    use proto::{ObjectId, StreamId};

    fn stream(slices: &[(u64, u64, i64, u64)]) -> StreamRecord {
        StreamRecord {
            open_txns: Default::default(),
            aborted_txns: Default::default(),
            id: StreamId(0),
            topic: uuid::Uuid::nil(),
            partition: 0,
            epoch: 1,
            leader_epoch: 0,
            owner: Some(1),
            start_offset: slices.first().map_or(0, |s| s.0),
            end_offset: slices.last().map_or(0, |s| s.1),
            slices: slices
                .iter()
                .map(|&(start, end, ts, bytes)| {
                    (
                        start,
                        StreamSlice {
                            end_offset: end,
                            object: ObjectId(start),
                            max_timestamp: ts,
                            bytes,
                        },
                    )
                })
                .collect(),
        }
    }

    const NONE: RetentionPolicy = RetentionPolicy {
        retention_ms: None,
        retention_bytes: None,
    };

    #[test]
    fn time_retention_drops_whole_expired_slices_in_order() {
        let s = stream(&[(0, 10, 100, 10), (10, 20, 500, 10), (20, 30, 200, 10)]);
        let p = RetentionPolicy {
            retention_ms: Some(100),
            ..NONE
        };
        // Cutoff 300: the first slice expired, the second did not, so the
        // third (older timestamp) stays too: retention moves only a prefix.
        assert_eq!(retention_start(&s, p, 400), Some(10));
        assert_eq!(retention_start(&s, p, 150), None);
        assert_eq!(retention_start(&s, p, 10_000), Some(30));
    }

    #[test]
    fn size_retention_keeps_at_least_the_limit() {
        let s = stream(&[(0, 10, 0, 100), (10, 20, 0, 100), (20, 30, 0, 100)]);
        let p = RetentionPolicy {
            retention_bytes: Some(150),
            ..NONE
        };
        assert_eq!(retention_start(&s, p, 0), Some(10));
        let p = RetentionPolicy {
            retention_bytes: Some(100),
            ..NONE
        };
        assert_eq!(retention_start(&s, p, 0), Some(20));
        let p = RetentionPolicy {
            retention_bytes: Some(1000),
            ..NONE
        };
        assert_eq!(retention_start(&s, p, 0), None);
    }

    #[test]
    fn policy_from_configs() {
        let defaults = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "604800000"),
            ("retention.bytes", "-1"),
        ];
        let mut c = BTreeMap::new();
        let p = RetentionPolicy::from_configs(&c, &defaults);
        assert_eq!(p.retention_ms, Some(604_800_000));
        assert_eq!(p.retention_bytes, None);
        c.insert("cleanup.policy".to_string(), "compact".to_string());
        assert_eq!(RetentionPolicy::from_configs(&c, &defaults), NONE);
        c.insert("cleanup.policy".to_string(), "compact,delete".to_string());
        c.insert("retention.bytes".to_string(), "5".to_string());
        assert_eq!(
            RetentionPolicy::from_configs(&c, &defaults).retention_bytes,
            Some(5)
        );
    }
}
