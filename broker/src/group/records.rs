//! The records of `__consumer_offsets`, in Apache Kafka's own schemas, so a
//! partition of it reads the same as Kafka's:
//!
//! | key (version prefix)                         | value (version prefix)                 |
//! |----------------------------------------------|----------------------------------------|
//! | `OffsetCommitKey` v1: group, topic, partition | `OffsetCommitValue` v3 (v1 with expiry) |
//! | `GroupMetadataKey` v2: group                 | `GroupMetadataValue` v3                 |
//!
//! A null value is a tombstone. Keys and values are written in the
//! non-flexible versions Kafka writes; values up to v4 (flexible) are read.
//! Record batches are encoded with `kafka-protocol`'s batch encoder and read
//! back with a bounded parser of our own (uncompressed batches only: the
//! coordinator never compresses). Pure: no I/O, no clocks; never panics on
//! input bytes.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::storage::batch;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __consumer_offsets record: {0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// What a record of `__consumer_offsets` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
    /// Oxbow's record of a KIP-848 consumer group: its whole state
    /// (`consumer::ConsumerGroup::snapshot`), not Kafka's per-part records.
    ConsumerGroup {
        group: String,
    },
    /// A key version this coordinator does not handle (Kafka's own KIP-848
    /// and share group records): skipped on load.
    Other(i16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    /// -1 when unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// -1 unless the commit carried a retention time (OffsetCommit v2-v4).
    pub expire_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadata {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout: i32,
    pub session_timeout: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp: i64,
    pub members: Vec<MemberMetadata>,
}

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
/// Far above Kafka's key versions (0-11 so far), so the two never meet.
const CONSUMER_GROUP_KEY_VERSION: i16 = 0x4f58;
const OFFSET_VALUE_VERSION: i16 = 3;
const OFFSET_VALUE_VERSION_WITH_EXPIRY: i16 = 1;
const GROUP_VALUE_VERSION: i16 = 3;

// ------------------------------------------------------------------ writing

fn put_string(out: &mut BytesMut, s: &str) {
    // Group ids, topics and member ids come from requests whose strings are
    // at most i16::MAX bytes long, so the length always fits.
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    out.put_i16(len);
    out.put_slice(&s.as_bytes()[..len as usize]);
}

fn put_nullable_string(out: &mut BytesMut, s: Option<&str>) {
    match s {
        None => out.put_i16(-1),
        Some(s) => put_string(out, s),
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
    out.put_slice(b);
}

pub fn encode_key(key: &RecordKey) -> Bytes {
    let mut out = BytesMut::new();
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            out.put_i16(OFFSET_KEY_VERSION);
            put_string(&mut out, group);
            put_string(&mut out, topic);
            out.put_i32(*partition);
        }
        RecordKey::Group { group } => {
            out.put_i16(GROUP_KEY_VERSION);
            put_string(&mut out, group);
        }
        RecordKey::ConsumerGroup { group } => {
            out.put_i16(CONSUMER_GROUP_KEY_VERSION);
            put_string(&mut out, group);
        }
        RecordKey::Other(v) => out.put_i16(*v),
    }
    out.freeze()
}

/// `OffsetCommitValue` v3, or v1 when the commit expires (as Kafka writes).
pub fn encode_offset_value(v: &OffsetValue) -> Bytes {
    let mut out = BytesMut::new();
    if v.expire_timestamp >= 0 {
        out.put_i16(OFFSET_VALUE_VERSION_WITH_EXPIRY);
        out.put_i64(v.offset);
        put_string(&mut out, &v.metadata);
        out.put_i64(v.commit_timestamp);
        out.put_i64(v.expire_timestamp);
    } else {
        out.put_i16(OFFSET_VALUE_VERSION);
        out.put_i64(v.offset);
        out.put_i32(v.leader_epoch);
        put_string(&mut out, &v.metadata);
        out.put_i64(v.commit_timestamp);
    }
    out.freeze()
}

/// `GroupMetadataValue` v3.
pub fn encode_group_value(v: &GroupMetadataValue) -> Bytes {
    let mut out = BytesMut::new();
    out.put_i16(GROUP_VALUE_VERSION);
    put_string(&mut out, &v.protocol_type);
    out.put_i32(v.generation);
    put_nullable_string(&mut out, v.protocol.as_deref());
    put_nullable_string(&mut out, v.leader.as_deref());
    out.put_i64(v.current_state_timestamp);
    out.put_i32(i32::try_from(v.members.len()).unwrap_or(i32::MAX));
    for m in &v.members {
        put_string(&mut out, &m.member_id);
        put_nullable_string(&mut out, m.group_instance_id.as_deref());
        put_string(&mut out, &m.client_id);
        put_string(&mut out, &m.client_host);
        out.put_i32(m.rebalance_timeout);
        out.put_i32(m.session_timeout);
        put_bytes(&mut out, &m.subscription);
        put_bytes(&mut out, &m.assignment);
    }
    out.freeze()
}

/// One uncompressed v2 batch holding `records` (key, value or tombstone),
/// without producer id, timestamped `timestamp_ms`.
pub fn encode_batch(timestamp_ms: i64, records: &[(Bytes, Option<Bytes>)]) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder batches records whose (offset - sequence) agree and
            // writes the first record's sequence as the base: -1, no producer.
            sequence: i as i32 - 1,
            timestamp: timestamp_ms,
            key: Some(k.clone()),
            value: v.clone(),
            headers: IndexMap::new(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encoding an uncompressed v2 batch into memory cannot fail");
    out.freeze()
}

// ------------------------------------------------------------------ reading

/// A cursor over untrusted bytes: every read checks the remaining length.
struct Reader<'a> {
    buf: &'a [u8],
    flexible: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return err(format!("needs {n} bytes, has {}", self.buf.len()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        err("varint longer than 10 bytes")
    }

    /// Length of a string/bytes field: `None` for null.
    fn len(&mut self, wide: bool) -> Result<Option<usize>, DecodeError> {
        let n: i64 = if self.flexible {
            self.uvarint()? as i64 - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(n as usize))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.len(false)? {
            None => Ok(None),
            Some(n) => {
                let b = self.take(n)?;
                String::from_utf8(b.to_vec())
                    .map(Some)
                    .map_err(|_| DecodeError("string is not UTF-8".into()))
            }
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        self.nullable_string()?
            .ok_or_else(|| DecodeError("null in a non-nullable string".into()))
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        match self.len(true)? {
            None => err("null in a non-nullable bytes field"),
            Some(n) => Ok(Bytes::copy_from_slice(self.take(n)?)),
        }
    }

    fn array_len(&mut self) -> Result<usize, DecodeError> {
        let n = match self.len(true)? {
            None => return err("null array"),
            Some(n) => n,
        };
        // Each element takes at least one byte: a count beyond the
        // remaining bytes is a lie, refuse it before allocating anything.
        if n > self.buf.len() {
            return err(format!("array of {n} in {} bytes", self.buf.len()));
        }
        Ok(n)
    }

    fn tagged_fields(&mut self) -> Result<(), DecodeError> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.uvarint()?;
        for _ in 0..n.min(self.buf.len() as u64 + 1) {
            let _tag = self.uvarint()?;
            let size = usize::try_from(self.uvarint()?).unwrap_or(usize::MAX);
            self.take(size)?;
        }
        Ok(())
    }
}

pub fn decode_key(b: &[u8]) -> Result<RecordKey, DecodeError> {
    let mut r = Reader {
        buf: b,
        flexible: false,
    };
    let version = r.i16()?;
    match version {
        0 | 1 => Ok(RecordKey::Offset {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
        }),
        2 => Ok(RecordKey::Group { group: r.string()? }),
        CONSUMER_GROUP_KEY_VERSION => Ok(RecordKey::ConsumerGroup { group: r.string()? }),
        v => Ok(RecordKey::Other(v)),
    }
}

pub fn decode_offset_value(b: &[u8]) -> Result<OffsetValue, DecodeError> {
    let mut r = Reader {
        buf: b,
        flexible: false,
    };
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return err(format!("OffsetCommitValue version {version}"));
    }
    r.flexible = version >= 4;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp = r.i64()?;
    let expire_timestamp = if version == 1 { r.i64()? } else { -1 };
    r.tagged_fields()?;
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
        expire_timestamp,
    })
}

pub fn decode_group_value(b: &[u8]) -> Result<GroupMetadataValue, DecodeError> {
    let mut r = Reader {
        buf: b,
        flexible: false,
    };
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return err(format!("GroupMetadataValue version {version}"));
    }
    r.flexible = version >= 4;
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp = if version >= 2 { r.i64()? } else { -1 };
    let count = r.array_len()?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 {
            r.nullable_string()?
        } else {
            None
        };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout = if version >= 1 { r.i32()? } else { -1 };
        let session_timeout = r.i32()?;
        let subscription = r.bytes()?;
        let assignment = r.bytes()?;
        r.tagged_fields()?;
        members.push(MemberMetadata {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout,
            session_timeout,
            subscription,
            assignment,
        });
    }
    r.tagged_fields()?;
    Ok(GroupMetadataValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp,
        members,
    })
}

/// One record read back from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

fn varint(r: &mut Reader<'_>) -> Result<i64, DecodeError> {
    let raw = r.uvarint()?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn varint_field(r: &mut Reader<'_>, whole: &Bytes) -> Result<Option<Bytes>, DecodeError> {
    let n = varint(r)?;
    if n < 0 {
        return Ok(None);
    }
    let start = whole.len() - r.buf.len();
    let n = usize::try_from(n).map_err(|_| DecodeError("field length".into()))?;
    r.take(n)?;
    Ok(Some(whole.slice(start..start + n)))
}

/// The records of one v2 batch. Control and compressed batches are refused
/// (the coordinator writes neither).
pub fn batch_records(bytes: &Bytes) -> Result<Vec<LogRecord>, DecodeError> {
    let h = batch::parse_header(bytes).map_err(|e| DecodeError(e.to_string()))?;
    if h.is_control() {
        return Ok(Vec::new());
    }
    if h.compression() != 0 {
        return err(format!("compressed batch (codec {})", h.compression()));
    }
    let end = h.total_len().min(bytes.len());
    let body = bytes.slice(batch::BATCH_HEADER_LEN.min(end)..end);
    let mut r = Reader {
        buf: &body,
        flexible: false,
    };
    let count = usize::try_from(h.records_count).unwrap_or(0);
    let mut out = Vec::with_capacity(count.min(body.len()));
    for _ in 0..count {
        let len =
            usize::try_from(varint(&mut r)?).map_err(|_| DecodeError("record length".into()))?;
        let rec = r.take(len)?;
        let rec_start = body.len() - r.buf.len() - len;
        let whole = body.slice(rec_start..rec_start + len);
        let mut rr = Reader {
            buf: rec,
            flexible: false,
        };
        rr.take(1)?; // attributes
        let _timestamp_delta = varint(&mut rr)?;
        let offset_delta = varint(&mut rr)?;
        let key = varint_field(&mut rr, &whole)?;
        let value = varint_field(&mut rr, &whole)?;
        out.push(LogRecord {
            offset: h.base_offset.saturating_add(offset_delta),
            key,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> MemberMetadata {
        MemberMetadata {
            member_id: id.into(),
            group_instance_id: Some("instance-1".into()),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            rebalance_timeout: 300_000,
            session_timeout: 45_000,
            subscription: Bytes::from_static(b"\x00\x01sub"),
            assignment: Bytes::from_static(b"assign"),
        }
    }

    #[test]
    fn keys_round_trip() {
        for k in [
            RecordKey::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 7,
            },
            RecordKey::Group {
                group: "group-ü".into(),
            },
        ] {
            assert_eq!(decode_key(&encode_key(&k)).unwrap(), k);
        }
        // Kafka's key layout: version 1, then group, topic, partition.
        let k = encode_key(&RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
        });
        assert_eq!(&k[..], b"\x00\x01\x00\x01g\x00\x01t\x00\x00\x00\x01");
        assert_eq!(decode_key(b"\x00\x05").unwrap(), RecordKey::Other(5));
    }

    #[test]
    fn values_round_trip() {
        let v = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp: 1_700_000_000_000,
            expire_timestamp: -1,
        };
        assert_eq!(decode_offset_value(&encode_offset_value(&v)).unwrap(), v);
        let with_expiry = OffsetValue {
            leader_epoch: -1,
            expire_timestamp: 1_800_000_000_000,
            ..v
        };
        assert_eq!(
            decode_offset_value(&encode_offset_value(&with_expiry)).unwrap(),
            with_expiry
        );
        let g = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp: 1_700_000_000_000,
            members: vec![member("m1"), member("m2")],
        };
        assert_eq!(decode_group_value(&encode_group_value(&g)).unwrap(), g);
        let empty = GroupMetadataValue {
            protocol: None,
            leader: None,
            members: vec![],
            ..g
        };
        assert_eq!(
            decode_group_value(&encode_group_value(&empty)).unwrap(),
            empty
        );
    }

    #[test]
    fn truncated_or_lying_input_is_an_error_not_a_panic() {
        let g = encode_group_value(&GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp: 0,
            members: vec![member("m1")],
        });
        for n in 0..g.len() {
            assert!(decode_group_value(&g[..n]).is_err(), "prefix {n}");
        }
        // A member count far beyond the bytes present.
        let mut lying = BytesMut::new();
        lying.put_i16(3);
        put_string(&mut lying, "consumer");
        lying.put_i32(1);
        lying.put_i16(-1);
        lying.put_i16(-1);
        lying.put_i64(0);
        lying.put_i32(i32::MAX);
        assert!(decode_group_value(&lying).is_err());
        assert!(decode_offset_value(b"\x00\x09").is_err());
    }

    #[test]
    fn batches_round_trip_through_the_batch_validator() {
        let recs = vec![
            (
                encode_key(&RecordKey::Group { group: "g".into() }),
                Some(Bytes::from_static(b"value")),
            ),
            (
                encode_key(&RecordKey::Offset {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 0,
                }),
                None,
            ),
        ];
        let b = encode_batch(1_700_000_000_000, &recs);
        let h = batch::validate(&b).expect("a valid batch");
        assert_eq!(h.producer_id, -1);
        assert_eq!(h.record_count(), 2);
        let back = batch_records(&b).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].key.as_ref(), Some(&recs[0].0));
        assert_eq!(back[0].value.as_deref(), Some(&b"value"[..]));
        assert_eq!(back[1].offset, 1);
        assert_eq!(back[1].value, None);
        for n in 0..b.len() {
            let _ = batch_records(&b.slice(..n)); // never panics
        }
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_key(&data);
            let _ = decode_offset_value(&data);
            let _ = decode_group_value(&data);
            let _ = batch_records(&Bytes::from(data));
        }

        #[test]
        fn offset_values_round_trip(offset in any::<i64>(), epoch in any::<i32>(), meta in "\\PC{0,40}",
                                    ts in any::<i64>(), expire in prop_oneof![Just(-1i64), 0..i64::MAX]) {
            let v = OffsetValue {
                offset,
                leader_epoch: if expire >= 0 { -1 } else { epoch },
                metadata: meta,
                commit_timestamp: ts,
                expire_timestamp: expire,
            };
            prop_assert_eq!(decode_offset_value(&encode_offset_value(&v)).unwrap(), v);
        }
    }
}
