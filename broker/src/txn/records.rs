//! The byte format of `__transaction_state`, Kafka's: key
//! `TransactionLogKey` v0 (`{transactional_id}`) and value
//! `TransactionLogValue` v0 (producer id and epoch, timeout, state,
//! partitions, timestamps). A null value is a tombstone. Oxbow writes v0
//! (Kafka writes v1 only with `transaction.version` ≥ 1, which Oxbow never
//! advertises) and skips records of other versions.
//!
//! Decoding bounds every length by the bytes present.

use bytes::{BufMut, Bytes, BytesMut};

use super::TxnState;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad __transaction_state record: {0}")]
pub struct DecodeError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(m.into()))
}

/// What a transactional id's record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnValue {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// (topic, partition), sorted.
    pub partitions: Vec<(String, i32)>,
    pub last_update_ms: i64,
    pub start_ms: i64,
}

fn put_str(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    out.put_i16(i16::try_from(b.len()).unwrap_or(i16::MAX));
    out.put_slice(&b[..b.len().min(i16::MAX as usize)]);
}

pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + transactional_id.len());
    out.put_i16(0);
    put_str(&mut out, transactional_id);
    out.freeze()
}

pub fn encode_value(v: &TxnValue) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(0);
    out.put_i64(v.producer_id);
    out.put_i16(v.producer_epoch);
    out.put_i32(v.timeout_ms);
    out.put_i8(v.state.id());
    if v.state == TxnState::Empty {
        out.put_i32(-1);
    } else {
        // Grouped by topic, as Kafka writes them.
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for (t, p) in &v.partitions {
            match topics.last_mut() {
                Some((name, ps)) if *name == t.as_str() => ps.push(*p),
                _ => topics.push((t.as_str(), vec![*p])),
            }
        }
        out.put_i32(topics.len() as i32);
        for (t, ps) in topics {
            put_str(&mut out, t);
            out.put_i32(ps.len() as i32);
            for p in ps {
                out.put_i32(p);
            }
        }
    }
    out.put_i64(v.last_update_ms);
    out.put_i64(v.start_ms);
    out.freeze()
}

struct Reader<'a> {
    buf: &'a [u8],
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
    fn i8(&mut self) -> Result<i8, DecodeError> {
        Ok(self.take(1)?[0] as i8)
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
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| DecodeError("null string".into()))?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError("not UTF-8".into()))
    }
    /// An array count, bounded by the bytes left (each element takes at
    /// least `min_len`).
    fn count(&mut self, min_len: usize) -> Result<Option<usize>, DecodeError> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(None);
        }
        let n = n as usize;
        if n.saturating_mul(min_len) > self.buf.len() {
            return err(format!("array of {n} does not fit"));
        }
        Ok(Some(n))
    }
}

/// The transactional id of a key; `Ok(None)` for a key of another version.
pub fn decode_key(b: &[u8]) -> Result<Option<String>, DecodeError> {
    let mut r = Reader { buf: b };
    if r.i16()? != 0 {
        return Ok(None);
    }
    r.string().map(Some)
}

/// A v0 value; `Ok(None)` for another version.
pub fn decode_value(b: &[u8]) -> Result<Option<TxnValue>, DecodeError> {
    let mut r = Reader { buf: b };
    if r.i16()? != 0 {
        return Ok(None);
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let state = TxnState::from_id(r.i8()?).ok_or_else(|| DecodeError("unknown state".into()))?;
    let mut partitions = Vec::new();
    if let Some(topics) = r.count(6)? {
        for _ in 0..topics {
            let topic = r.string()?;
            let n = r.count(4)?.unwrap_or(0);
            for _ in 0..n {
                partitions.push((topic.clone(), r.i32()?));
            }
        }
    }
    partitions.sort();
    partitions.dedup();
    Ok(Some(TxnValue {
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        last_update_ms: r.i64()?,
        start_ms: r.i64()?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_kafka_layout() {
        let v = TxnValue {
            producer_id: 1000,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::Ongoing,
            partitions: vec![("a".into(), 0), ("a".into(), 2), ("b".into(), 1)],
            last_update_ms: 5,
            start_ms: 4,
        };
        let b = encode_value(&v);
        assert_eq!(decode_value(&b), Ok(Some(v.clone())));
        // version, pid, epoch, timeout, state, 2 topics, "a" [0, 2], ...
        assert_eq!(&b[..2], &[0, 0]);
        assert_eq!(b[16], 1, "Ongoing is state 1");
        assert_eq!(&b[17..21], &2i32.to_be_bytes());
        let k = encode_key("tx-1");
        assert_eq!(&k[..], &[0, 0, 0, 4, b't', b'x', b'-', b'1']);
        assert_eq!(decode_key(&k), Ok(Some("tx-1".into())));
        let empty = TxnValue {
            state: TxnState::Empty,
            partitions: vec![],
            ..v
        };
        assert_eq!(decode_value(&encode_value(&empty)), Ok(Some(empty)));
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let b = encode_value(&TxnValue {
            producer_id: 1,
            producer_epoch: 0,
            timeout_ms: 1,
            state: TxnState::PrepareCommit,
            partitions: vec![("t".into(), 0)],
            last_update_ms: 0,
            start_ms: 0,
        });
        for n in 0..b.len() {
            assert!(decode_value(&b[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut huge = b.to_vec();
        huge[17..21].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_value(&huge).is_err());
        assert_eq!(decode_key(&[0, 1, 0, 0]), Ok(None));
    }
}
