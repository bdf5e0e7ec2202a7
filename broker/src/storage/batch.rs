//! Kafka record batch headers (message format v2, "magic 2"): this module owns
//! reading, validating and patching the 61-byte batch header and framing a
//! produce request's concatenated batches into zero-copy slices. It never
//! decompresses, never parses or re-encodes records on the hot path, never does
//! I/O or reads a clock, and never panics on input bytes: every length read
//! from a buffer is checked against the buffer before it is used.
//!
//! Header layout (big-endian), after Kafka's `DefaultRecordBatch`:
//!
//! ```text
//! offset  size  field
//!      0     8  baseOffset
//!      8     4  batchLength            (bytes after this field)
//!     12     4  partitionLeaderEpoch
//!     16     1  magic                  (2)
//!     17     4  crc                    (CRC-32C of bytes 21..end)
//!     21     2  attributes
//!     23     4  lastOffsetDelta
//!     27     8  baseTimestamp
//!     35     8  maxTimestamp
//!     43     8  producerId
//!     51     2  producerEpoch
//!     53     4  baseSequence
//!     57     4  recordsCount
//!     61        records...
//! ```
//!
//! `baseOffset` and `partitionLeaderEpoch` lie outside the CRC, which is why
//! the broker can assign offsets by patching them in place.

use bytes::Bytes;

/// Size of a v2 batch header; also the smallest possible v2 batch.
pub const BATCH_HEADER_LEN: usize = 61;

/// `baseOffset` + `batchLength`: the bytes not counted by `batchLength`.
const LOG_OVERHEAD: usize = 12;
/// Bytes up to and including the magic byte, common to every message format.
const HEADER_UP_TO_MAGIC: usize = 17;
/// Smallest `batchLength` of any message format (Kafka's
/// `LegacyRecord.RECORD_OVERHEAD_V0`); below this the framing itself is broken.
const MIN_BATCH_LENGTH_ANY_MAGIC: i32 = 14;
/// Smallest `batchLength` of a v2 batch.
const MIN_BATCH_LENGTH_V2: i32 = (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32;
/// Where the CRC-covered region starts (the attributes field).
const CRC_COVERED_FROM: usize = 21;
/// The smallest encoding of one v2 record: a one-byte varint for each of
/// length, timestampDelta, offsetDelta, keyLength, valueLength, headerCount,
/// plus the attributes byte.
const MIN_RECORD_LEN: usize = 7;

const MAGIC_V2: i8 = 2;

const OFF_BASE_OFFSET: usize = 0;
const OFF_BATCH_LENGTH: usize = 8;
const OFF_PARTITION_LEADER_EPOCH: usize = 12;
const OFF_MAGIC: usize = 16;
const OFF_CRC: usize = 17;
const OFF_ATTRIBUTES: usize = 21;
const OFF_LAST_OFFSET_DELTA: usize = 23;
const OFF_BASE_TIMESTAMP: usize = 27;
const OFF_MAX_TIMESTAMP: usize = 35;
const OFF_PRODUCER_ID: usize = 43;
const OFF_PRODUCER_EPOCH: usize = 51;
const OFF_BASE_SEQUENCE: usize = 53;
const OFF_RECORDS_COUNT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
/// Highest codec id Kafka defines (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
const MAX_COMPRESSION_CODEC: u8 = 4;

// Kafka error codes (org.apache.kafka.common.protocol.Errors).
const CORRUPT_MESSAGE: i16 = 2;
const INVALID_RECORD: i16 = 87;

/// The decoded header of one v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Size of the whole batch in bytes, length prefix included
    /// (`12 + batch_length`; a negative `batch_length` counts as 0).
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + usize::try_from(self.batch_length).unwrap_or(0)
    }

    /// Compression codec id: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        // Masked to three bits, so the narrowing is lossless.
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Timestamp type bit: the broker stamps LogAppendTime instead of the
    /// producer's CreateTime.
    pub fn has_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    /// Offset of the batch's last record (saturating: a hostile header near
    /// `i64::MAX` cannot overflow).
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    /// Offsets the batch covers, `last_offset_delta + 1`; 0 if the delta is
    /// negative (which `validate` rejects).
    pub fn record_count(&self) -> u32 {
        u32::try_from(i64::from(self.last_offset_delta) + 1).unwrap_or(0)
    }
}

/// Why a batch, or a run of batches, was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("truncated record batch: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported record batch magic {0}: only magic 2 is accepted")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    CorruptCrc { expected: u32, actual: u32 },
    #[error("invalid record batch length {0}")]
    InvalidLength(i32),
    #[error("record batch declares {declared} bytes but {actual} bytes were given")]
    LengthMismatch { declared: usize, actual: usize },
    #[error(
        "invalid record count {records_count} for last offset delta {last_offset_delta} \
         in a {total_len}-byte batch"
    )]
    InvalidRecordCount {
        records_count: i32,
        last_offset_delta: i32,
        total_len: usize,
    },
    #[error("invalid compression codec {0} in record batch attributes")]
    InvalidCompression(u8),
}

impl BatchError {
    /// The Kafka error code a produce response carries for this refusal.
    ///
    /// Follows Kafka: framing, size and CRC failures are `CORRUPT_MESSAGE`
    /// (`ByteBufferLogInputStream.nextBatchSize`, `DefaultRecordBatch.ensureValid`),
    /// as is a magic outside 0..=2. A v0/v1 batch in a produce v3+ request is
    /// `INVALID_RECORD` (`ProduceRequest.validateRecords` throws
    /// `org.apache.kafka.common.InvalidRecordException`), and so are
    /// inconsistent offset deltas and counts (`LogValidator.validateBatch`).
    /// Kafka fails an unknown codec id with an unchecked exception
    /// (`UNKNOWN_SERVER_ERROR`); we answer `INVALID_RECORD`, which is not
    /// retriable, because the CRC has already vouched for the bytes.
    pub fn kafka_error_code(&self) -> i16 {
        match self {
            BatchError::Truncated { .. }
            | BatchError::CorruptCrc { .. }
            | BatchError::InvalidLength(_)
            | BatchError::LengthMismatch { .. } => CORRUPT_MESSAGE,
            BatchError::UnsupportedMagic(0 | 1) => INVALID_RECORD,
            BatchError::UnsupportedMagic(_) => CORRUPT_MESSAGE,
            BatchError::InvalidRecordCount { .. } | BatchError::InvalidCompression(_) => {
                INVALID_RECORD
            }
        }
    }
}

fn read_i64(buf: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    i64::from_be_bytes(b)
}

fn read_i32(buf: &[u8], at: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    i32::from_be_bytes(b)
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Checks the framing that every message format shares (length prefix and
/// magic) and returns the batch's declared total size, which may exceed
/// `buf.len()`.
///
/// The order mirrors Kafka's `ByteBufferLogInputStream`: a length below any
/// format's minimum or a magic outside 0..=2 is corruption; a legacy magic is
/// reported before v2 size rules are applied to it.
fn check_framing(buf: &[u8]) -> Result<usize, BatchError> {
    if buf.len() < HEADER_UP_TO_MAGIC {
        return Err(BatchError::Truncated {
            needed: HEADER_UP_TO_MAGIC,
            available: buf.len(),
        });
    }
    let batch_length = read_i32(buf, OFF_BATCH_LENGTH);
    if batch_length < MIN_BATCH_LENGTH_ANY_MAGIC {
        return Err(BatchError::InvalidLength(batch_length));
    }
    let magic = buf[OFF_MAGIC] as i8;
    if magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    if batch_length < MIN_BATCH_LENGTH_V2 {
        return Err(BatchError::InvalidLength(batch_length));
    }
    // batch_length is positive here, so the conversion cannot fail on any
    // platform Rust supports with usize >= 32 bits.
    let body =
        usize::try_from(batch_length).map_err(|_| BatchError::InvalidLength(batch_length))?;
    Ok(LOG_OVERHEAD + body)
}

/// Decodes the header at the start of `buf` without checking the CRC or that
/// `buf` holds the whole batch.
///
/// It does check what makes the header meaningful: at least 61 bytes, magic 2,
/// and a `batch_length` of at least 49 (a whole header).
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    check_framing(buf)?;
    if buf.len() < BATCH_HEADER_LEN {
        return Err(BatchError::Truncated {
            needed: BATCH_HEADER_LEN,
            available: buf.len(),
        });
    }
    Ok(BatchHeader {
        base_offset: read_i64(buf, OFF_BASE_OFFSET),
        batch_length: read_i32(buf, OFF_BATCH_LENGTH),
        partition_leader_epoch: read_i32(buf, OFF_PARTITION_LEADER_EPOCH),
        magic: buf[OFF_MAGIC] as i8,
        crc: u32::from_be_bytes([
            buf[OFF_CRC],
            buf[OFF_CRC + 1],
            buf[OFF_CRC + 2],
            buf[OFF_CRC + 3],
        ]),
        attributes: read_i16(buf, OFF_ATTRIBUTES),
        last_offset_delta: read_i32(buf, OFF_LAST_OFFSET_DELTA),
        base_timestamp: read_i64(buf, OFF_BASE_TIMESTAMP),
        max_timestamp: read_i64(buf, OFF_MAX_TIMESTAMP),
        producer_id: read_i64(buf, OFF_PRODUCER_ID),
        producer_epoch: read_i16(buf, OFF_PRODUCER_EPOCH),
        base_sequence: read_i32(buf, OFF_BASE_SEQUENCE),
        records_count: read_i32(buf, OFF_RECORDS_COUNT),
    })
}

/// Validates that `batch` is exactly one whole v2 batch, as a produce request
/// must carry it, without decompressing anything.
///
/// Checks, in Kafka's order: framing and magic; `batch_length` agrees with
/// `batch.len()`; CRC-32C over attributes..end; codec id 0..=4;
/// `last_offset_delta >= 0` and `records_count == last_offset_delta + 1`
/// (Kafka's `LogValidator.validateBatch` for client appends). For an
/// uncompressed batch it also checks that `records_count` records of at least
/// 7 bytes each fit in the payload, so a tiny batch cannot claim billions of
/// offsets.
///
/// Rules that depend on who appends or on the request version stay with the
/// caller: Kafka refuses control batches from clients and a producer id with a
/// negative base sequence (`LogValidator.validateBatch`, `INVALID_RECORD`), and
/// allows exactly one batch per partition in produce v3+
/// (`ProduceRequest.validateRecords`, `INVALID_RECORD`).
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let declared = check_framing(batch)?;
    if declared > batch.len() {
        return Err(BatchError::Truncated {
            needed: declared,
            available: batch.len(),
        });
    }
    if declared < batch.len() {
        return Err(BatchError::LengthMismatch {
            declared,
            actual: batch.len(),
        });
    }
    let header = parse_header(batch)?;
    let actual = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    if actual != header.crc {
        return Err(BatchError::CorruptCrc {
            expected: header.crc,
            actual,
        });
    }
    let codec = header.compression();
    if codec > MAX_COMPRESSION_CODEC {
        return Err(BatchError::InvalidCompression(codec));
    }
    let count_error = BatchError::InvalidRecordCount {
        records_count: header.records_count,
        last_offset_delta: header.last_offset_delta,
        total_len: batch.len(),
    };
    if header.last_offset_delta < 0
        || header.records_count < 0
        || i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1
    {
        return Err(count_error);
    }
    if codec == 0 {
        let payload = batch.len() - BATCH_HEADER_LEN;
        let count = usize::try_from(header.records_count).map_err(|_| count_error.clone())?;
        if count.saturating_mul(MIN_RECORD_LEN) > payload {
            return Err(count_error);
        }
    }
    Ok(header)
}

/// Splits a produce request's concatenated batches into zero-copy slices of
/// `records`, each one `validate`d.
///
/// Any trailing partial batch is an error (Kafka silently trims one; we refuse
/// it). An empty input yields no batches: Kafka answers `INVALID_RECORD` for a
/// produce v3+ partition without a batch, and that check is the caller's, as
/// is Kafka's "exactly one batch per partition". Each batch consumes at least
/// [`BATCH_HEADER_LEN`] bytes, so the result holds at most
/// `records.len() / 61` slices.
pub fn split_batches(records: &Bytes) -> Result<Vec<Bytes>, BatchError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < records.len() {
        let rest = &records[pos..];
        let total = check_framing(rest)?;
        if total > rest.len() {
            return Err(BatchError::Truncated {
                needed: total,
                available: rest.len(),
            });
        }
        validate(&rest[..total])?;
        out.push(records.slice(pos..pos + total));
        pos += total;
    }
    Ok(out)
}

fn assert_header_present(batch: &[u8], what: &str) {
    assert!(
        batch.len() >= BATCH_HEADER_LEN,
        "{what}: buffer of {} bytes is shorter than a record batch header ({BATCH_HEADER_LEN}); \
         callers must validate the batch first",
        batch.len()
    );
}

/// Writes `baseOffset`, which the CRC does not cover, so the batch stays valid.
///
/// # Panics
/// If `batch` is shorter than a batch header: callers hold a batch that
/// [`validate`] accepted, so a short buffer is a bug, not bad input.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    assert_header_present(batch, "set_base_offset");
    batch[OFF_BASE_OFFSET..OFF_BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes `partitionLeaderEpoch`, which the CRC does not cover.
///
/// # Panics
/// If `batch` is shorter than a batch header, as for [`set_base_offset`].
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    assert_header_present(batch, "set_partition_leader_epoch");
    batch[OFF_PARTITION_LEADER_EPOCH..OFF_PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&epoch.to_be_bytes());
}

/// Iterates over the headers of concatenated batches, yielding each batch's
/// position in `buf` with its header. Header-only (no CRC): readers use it to
/// find batch boundaries for offsets and byte limits in data already checked.
pub fn batches(buf: &[u8]) -> BatchIter<'_> {
    BatchIter {
        buf,
        pos: 0,
        failed: false,
    }
}

/// Iterator returned by [`batches`]. Yields `Err` for a malformed or
/// incomplete batch (including one that runs past the end of the buffer) and
/// then stops.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl Iterator for BatchIter<'_> {
    type Item = Result<(usize, BatchHeader), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let rest = &self.buf[self.pos..];
        let header = match parse_header(rest) {
            Ok(header) => header,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let total = header.total_len();
        if total > rest.len() {
            self.failed = true;
            return Some(Err(BatchError::Truncated {
                needed: total,
                available: rest.len(),
            }));
        }
        let position = self.pos;
        self.pos += total;
        Some(Ok((position, header)))
    }
}

impl std::iter::FusedIterator for BatchIter<'_> {}
/// Reads a zigzag varint (Kafka's record encoding) at `*pos`, at most 10 bytes.
fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        raw |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

/// Offset and timestamp of each record of an uncompressed batch, in order.
/// `None` for a compressed batch (reading it would mean decompressing) or
/// one whose records do not parse; callers then use batch-level figures.
pub fn record_timestamps(batch: &[u8]) -> Option<Vec<(i64, i64)>> {
    if parse_header(batch).ok()?.has_log_append_time() {
        return None;
    }
    let spans = record_spans(batch)?;
    Some(spans.iter().map(|r| (r.offset, r.timestamp)).collect())
}

/// Marks a batch as LogAppendTime with `now_ms` as its max timestamp (what
/// consumers then report for every record) and recomputes the CRC. The
/// caller has validated the batch.
pub fn stamp_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attrs = i16::from_be_bytes([batch[OFF_ATTRIBUTES], batch[OFF_ATTRIBUTES + 1]])
        | ATTR_LOG_APPEND_TIME;
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
    batch[OFF_MAX_TIMESTAMP..OFF_MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One record of an uncompressed batch, as key-based compaction sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: i64,
    pub timestamp: i64,
    /// The record's bytes in the batch, length prefix included.
    pub range: std::ops::Range<usize>,
    /// The key's bytes in the batch; `None` for a null key.
    pub key: Option<std::ops::Range<usize>>,
    /// A null value: a tombstone.
    pub tombstone: bool,
}

/// The records of an uncompressed, non-control batch. `None` for a
/// compressed or control batch, or one whose records do not parse (the
/// caller keeps such a batch whole).
pub fn record_spans(batch: &[u8]) -> Option<Vec<RecordSpan>> {
    let h = parse_header(batch).ok()?;
    if h.compression() != 0 || h.is_control() {
        return None;
    }
    let end = h.total_len().min(batch.len());
    let count = usize::try_from(h.records_count).ok()?;
    let mut out = Vec::with_capacity(count.min(end / MIN_RECORD_LEN));
    let mut pos = BATCH_HEADER_LEN;
    for _ in 0..count {
        let start = pos;
        let len = usize::try_from(read_varint(batch, &mut pos)?).ok()?;
        let record_end = pos.checked_add(len)?;
        if record_end > end {
            return None;
        }
        let rec = &batch[..record_end];
        let mut p = pos + 1; // attributes
        let ts_delta = read_varint(rec, &mut p)?;
        let offset_delta = read_varint(rec, &mut p)?;
        let key_len = read_varint(rec, &mut p)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = p..p.checked_add(usize::try_from(key_len).ok()?)?;
            p = k.end;
            Some(k)
        };
        let value_len = read_varint(rec, &mut p)?;
        if p > record_end {
            return None;
        }
        out.push(RecordSpan {
            offset: h.base_offset.checked_add(offset_delta)?,
            timestamp: h.base_timestamp.checked_add(ts_delta)?,
            range: start..record_end,
            key,
            tombstone: value_len < 0,
        });
        pos = record_end;
    }
    (pos == end).then_some(out)
}

/// `batch` with only the records at `keep` (ranges from [`record_spans`],
/// in order): the header is kept, so the batch still starts at its base
/// offset and ends at its last offset (`lastOffsetDelta` is kept, as
/// Kafka's cleaner does, so producer sequences stay valid), with the record
/// count, length and CRC rewritten.
pub fn retain_records(batch: &[u8], keep: &[std::ops::Range<usize>]) -> Vec<u8> {
    let kept: usize = keep.iter().map(|r| r.len()).sum();
    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + kept);
    out.extend_from_slice(&batch[..BATCH_HEADER_LEN]);
    for r in keep {
        out.extend_from_slice(&batch[r.clone()]);
    }
    let length = i32::try_from(out.len() - LOG_OVERHEAD).unwrap_or(i32::MAX);
    out[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
    let count = i32::try_from(keep.len()).unwrap_or(i32::MAX);
    out[OFF_RECORDS_COUNT..OFF_RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_COVERED_FROM..]);
    out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

// Test support
//
// Builds real v2 batches for this crate's tests, other modules' tests and the
// simulator. Not used on the produce or fetch path.

/// One test record: (key, value), `None` for a null field.
pub type TestRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Fixed base timestamp of test batches, so built batches are deterministic.
const TEST_BASE_TIMESTAMP: i64 = 1_700_000_000_000;

fn put_varint(out: &mut Vec<u8>, value: i64) {
    // Kafka's varints are zigzag-encoded, seven bits per byte, low bits first.
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Builds a valid, uncompressed v2 batch holding `records` as (key, value)
/// pairs, with CreateTime timestamps `TEST_BASE_TIMESTAMP + i`, no headers,
/// `partitionLeaderEpoch` -1 (as producers send it) and a correct CRC-32C.
///
/// For tests and the simulator only. With no records the batch has
/// `lastOffsetDelta` -1, which [`validate`] refuses, as Kafka does.
///
/// # Panics
/// If the batch would exceed 2 GiB or 2^31 records (test inputs only).
pub fn build_test_batch(
    base_offset: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: &[TestRecord<'_>],
) -> Vec<u8> {
    build_batch(
        &BatchSpec {
            base_offset,
            attributes: 0,
            base_timestamp: TEST_BASE_TIMESTAMP,
            producer_id,
            producer_epoch,
            base_sequence,
        },
        records,
    )
}

/// The header fields of a batch to build.
struct BatchSpec {
    base_offset: i64,
    attributes: i16,
    base_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

/// One uncompressed v2 batch of `records`, timestamped `base_timestamp + i`,
/// no headers, `partitionLeaderEpoch` -1, with a correct CRC-32C.
fn build_batch(spec: &BatchSpec, records: &[TestRecord<'_>]) -> Vec<u8> {
    let count = i32::try_from(records.len()).expect("test batch holds fewer than 2^31 records");
    let mut body = Vec::new();
    let mut record = Vec::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let delta = i as i64;
        record.clear();
        record.push(0); // record attributes, unused
        put_varint(&mut record, delta); // timestampDelta
        put_varint(&mut record, delta); // offsetDelta
        put_bytes_field(&mut record, *key);
        put_bytes_field(&mut record, *value);
        put_varint(&mut record, 0); // header count
        put_varint(&mut body, record.len() as i64);
        body.extend_from_slice(&record);
    }

    let last_offset_delta = count - 1;
    let max_timestamp = spec.base_timestamp + i64::from(last_offset_delta.max(0));
    let batch_length = i32::try_from(BATCH_HEADER_LEN - LOG_OVERHEAD + body.len())
        .expect("test batch is smaller than 2 GiB");

    let mut out = Vec::with_capacity(BATCH_HEADER_LEN + body.len());
    out.extend_from_slice(&spec.base_offset.to_be_bytes());
    out.extend_from_slice(&batch_length.to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.extend_from_slice(&spec.attributes.to_be_bytes());
    out.extend_from_slice(&last_offset_delta.to_be_bytes());
    out.extend_from_slice(&spec.base_timestamp.to_be_bytes());
    out.extend_from_slice(&max_timestamp.to_be_bytes());
    out.extend_from_slice(&spec.producer_id.to_be_bytes());
    out.extend_from_slice(&spec.producer_epoch.to_be_bytes());
    out.extend_from_slice(&spec.base_sequence.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    debug_assert_eq!(out.len(), BATCH_HEADER_LEN);
    out.extend_from_slice(&body);

    let crc = crc32c::crc32c(&out[CRC_COVERED_FROM..]);
    out[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Control record types (Kafka's `ControlRecordType`).
pub const CONTROL_ABORT: i16 = 0;
pub const CONTROL_COMMIT: i16 = 1;

/// A transaction marker as Kafka writes it (`EndTransactionMarker`): one
/// control record in a transactional control batch of the producer, with
/// key (version 0, type) and value (version 0, coordinator epoch), base
/// sequence -1, stamped `timestamp_ms`.
pub fn build_end_txn_marker(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Vec<u8> {
    let kind = if commit {
        CONTROL_COMMIT
    } else {
        CONTROL_ABORT
    };
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&kind.to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    build_batch(
        &BatchSpec {
            base_offset: 0,
            attributes: ATTR_TRANSACTIONAL | ATTR_CONTROL,
            base_timestamp: timestamp_ms,
            producer_id,
            producer_epoch,
            base_sequence: -1,
        },
        &[(Some(&key), Some(&value))],
    )
}

/// The type of a control batch's record (commit or abort marker), if the
/// batch is an uncompressed control batch whose first record reads as one.
pub fn control_type(batch: &[u8]) -> Option<i16> {
    end_txn_marker(batch).map(|(kind, _)| kind)
}

/// The type and coordinator epoch of a transaction marker batch (the
/// epoch is -1 when the value does not hold one).
pub fn end_txn_marker(batch: &[u8]) -> Option<(i16, i32)> {
    let h = parse_header(batch).ok()?;
    if h.compression() != 0 || !h.is_control() || h.records_count < 1 {
        return None;
    }
    let end = h.total_len().min(batch.len());
    let rec = &batch[..end];
    let mut p = BATCH_HEADER_LEN;
    let _len = read_varint(rec, &mut p)?;
    p += 1; // attributes
    let _ts_delta = read_varint(rec, &mut p)?;
    let _offset_delta = read_varint(rec, &mut p)?;
    let key_len = usize::try_from(read_varint(rec, &mut p)?).ok()?;
    if key_len < 4 {
        return None;
    }
    let key = rec.get(p..p.checked_add(key_len)?)?;
    let kind = i16::from_be_bytes([key[2], key[3]]);
    p += key_len;
    let value_len = read_varint(rec, &mut p)?;
    let epoch = usize::try_from(value_len)
        .ok()
        .filter(|n| *n >= 6)
        .and_then(|_| rec.get(p + 2..p + 6))
        .map_or(-1, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    Some((kind, epoch))
}

/// Makes an uncompressed batch without a producer transactional for
/// `producer_id`/`producer_epoch` (sequence 0), as the coordinators write
/// transactional offset commits; the CRC is recomputed.
pub fn make_transactional(batch: &mut [u8], producer_id: i64, producer_epoch: i16) {
    if batch.len() < BATCH_HEADER_LEN {
        return;
    }
    let attrs = i16::from_be_bytes([batch[OFF_ATTRIBUTES], batch[OFF_ATTRIBUTES + 1]]);
    batch[OFF_ATTRIBUTES..OFF_ATTRIBUTES + 2]
        .copy_from_slice(&(attrs | ATTR_TRANSACTIONAL).to_be_bytes());
    batch[OFF_PRODUCER_ID..OFF_PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[OFF_PRODUCER_EPOCH..OFF_PRODUCER_EPOCH + 2]
        .copy_from_slice(&producer_epoch.to_be_bytes());
    batch[OFF_BASE_SEQUENCE..OFF_BASE_SEQUENCE + 4].copy_from_slice(&0i32.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
    batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn simple_batch(base_offset: i64, n: usize) -> Vec<u8> {
        let values: Vec<Vec<u8>> = (0..n).map(|i| format!("value-{i}").into_bytes()).collect();
        let records: Vec<TestRecord<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key: Option<&[u8]> = if i % 2 == 0 { Some(b"key") } else { None };
                (key, Some(v.as_slice()))
            })
            .collect();
        build_test_batch(base_offset, 7, 3, 11, &records)
    }

    #[test]
    fn end_txn_marker_is_a_valid_control_batch() {
        for commit in [false, true] {
            let mut m = build_end_txn_marker(42, 3, commit, 7, 1_000);
            let h = validate(&m).expect("valid");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (42, 3, -1)
            );
            assert_eq!(h.record_count(), 1);
            assert_eq!(h.max_timestamp, 1_000);
            let want = if commit {
                CONTROL_COMMIT
            } else {
                CONTROL_ABORT
            };
            assert_eq!(control_type(&m), Some(want));
            assert_eq!(end_txn_marker(&m), Some((want, 7)));
            set_base_offset(&mut m, 99);
            assert_eq!(
                validate(&m).expect("offset is outside the CRC").base_offset,
                99
            );
        }
        assert_eq!(control_type(&simple_batch(0, 2)), None);
    }

    #[test]
    fn make_transactional_keeps_the_batch_valid() {
        let mut b = build_test_batch(0, -1, -1, -1, &[(Some(b"k"), Some(b"v"))]);
        make_transactional(&mut b, 9, 2);
        let h = validate(&b).expect("valid");
        assert!(h.is_transactional() && !h.is_control());
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (9, 2, 0)
        );
    }

    /// Recomputes the CRC after a test edits a covered field.
    fn refresh_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[CRC_COVERED_FROM..]);
        batch[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }

    /// Decodes the records of an uncompressed batch, independently of the
    /// builder, to check the builder writes Kafka's record encoding.
    /// (timestampDelta, offsetDelta, key, value) of one decoded record.
    type Decoded = (i64, i64, Option<Vec<u8>>, Option<Vec<u8>>);

    fn decode_records(batch: &[u8]) -> Vec<Decoded> {
        fn varint(buf: &[u8], pos: &mut usize) -> i64 {
            let mut raw: u64 = 0;
            let mut shift = 0;
            loop {
                let b = buf[*pos];
                *pos += 1;
                raw |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
            }
            ((raw >> 1) as i64) ^ -((raw & 1) as i64)
        }
        fn field(buf: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
            let len = varint(buf, pos);
            if len < 0 {
                return None;
            }
            let len = len as usize;
            let out = buf[*pos..*pos + len].to_vec();
            *pos += len;
            Some(out)
        }
        let header = parse_header(batch).unwrap();
        let mut pos = BATCH_HEADER_LEN;
        let mut out = Vec::new();
        for _ in 0..header.records_count {
            let len = varint(batch, &mut pos) as usize;
            let end = pos + len;
            assert_eq!(batch[pos], 0, "record attributes");
            pos += 1;
            let ts = varint(batch, &mut pos);
            let od = varint(batch, &mut pos);
            let k = field(batch, &mut pos);
            let v = field(batch, &mut pos);
            assert_eq!(varint(batch, &mut pos), 0, "header count");
            assert_eq!(pos, end, "record length prefix matches its body");
            out.push((ts, od, k, v));
        }
        assert_eq!(pos, batch.len(), "records fill the batch exactly");
        out
    }

    #[test]
    fn built_batch_validates_and_round_trips_header() {
        let batch = simple_batch(0, 5);
        let h = validate(&batch).unwrap();
        assert_eq!(h.base_offset, 0);
        assert_eq!(h.magic, 2);
        assert_eq!(h.partition_leader_epoch, -1);
        assert_eq!(h.last_offset_delta, 4);
        assert_eq!(h.records_count, 5);
        assert_eq!(h.record_count(), 5);
        assert_eq!(h.last_offset(), 4);
        assert_eq!(h.producer_id, 7);
        assert_eq!(h.producer_epoch, 3);
        assert_eq!(h.base_sequence, 11);
        assert_eq!(h.base_timestamp, TEST_BASE_TIMESTAMP);
        assert_eq!(h.max_timestamp, TEST_BASE_TIMESTAMP + 4);
        assert_eq!(h.total_len(), batch.len());
        assert_eq!(h.compression(), 0);
        assert!(!h.is_transactional() && !h.is_control() && !h.has_log_append_time());
        assert_eq!(parse_header(&batch).unwrap(), h);
    }

    #[test]
    fn built_records_use_kafka_encoding() {
        let big = vec![0xabu8; 300]; // length needs a two-byte varint
        let batch = build_test_batch(
            0,
            -1,
            -1,
            -1,
            &[
                (Some(b"k"), Some(b"v")),
                (None, None),
                (None, Some(&big)),
                (Some(b""), Some(b"")),
            ],
        );
        validate(&batch).unwrap();
        let records = decode_records(&batch);
        assert_eq!(
            records,
            vec![
                (0, 0, Some(b"k".to_vec()), Some(b"v".to_vec())),
                (1, 1, None, None),
                (2, 2, None, Some(big.clone())),
                (3, 3, Some(vec![]), Some(vec![])),
            ]
        );
        // A null-key, null-value record is exactly the minimum record size.
        let minimal = build_test_batch(0, -1, -1, -1, &[(None, None)]);
        assert_eq!(minimal.len(), BATCH_HEADER_LEN + MIN_RECORD_LEN);
        validate(&minimal).unwrap();
    }

    #[test]
    fn record_timestamps_of_uncompressed_batch() {
        let b = build_test_batch(
            40,
            -1,
            -1,
            -1,
            &[(None, Some(b"a")), (Some(b"k"), None), (None, None)],
        );
        let ts = record_timestamps(&b).expect("uncompressed batch parses");
        let h = parse_header(&b).unwrap();
        assert_eq!(ts.len(), 3);
        assert_eq!(ts.iter().map(|t| t.0).collect::<Vec<_>>(), vec![40, 41, 42]);
        assert!(ts
            .iter()
            .all(|t| t.1 >= h.base_timestamp && t.1 <= h.max_timestamp));
        // Garbage never panics.
        for cut in 0..b.len() {
            let _ = record_timestamps(&b[..cut]);
        }
    }

    #[test]
    fn log_append_time_stamps_the_batch() {
        let mut b = simple_batch(0, 3);
        stamp_log_append_time(&mut b, 1_800_000_000_000);
        let h = validate(&b).expect("still valid, CRC recomputed");
        assert!(h.has_log_append_time());
        assert_eq!(h.max_timestamp, 1_800_000_000_000);
        assert_eq!(h.compression(), 0);
    }

    #[test]
    fn records_can_be_dropped_from_a_batch() {
        let b = build_test_batch(
            100,
            5,
            1,
            0,
            &[
                (Some(b"a"), Some(b"1")),
                (Some(b"bb"), None),
                (None, Some(b"3")),
                (Some(b"a"), Some(b"4")),
            ],
        );
        let spans = record_spans(&b).expect("uncompressed");
        assert_eq!(spans.len(), 4);
        assert_eq!(
            spans.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![100, 101, 102, 103]
        );
        assert_eq!(&b[spans[1].key.clone().unwrap()], b"bb");
        assert!(spans[1].tombstone && !spans[0].tombstone);
        assert_eq!(spans[2].key, None);
        let kept = retain_records(&b, &[spans[1].range.clone(), spans[3].range.clone()]);
        // Produce validation would refuse a count below the offset span;
        // a compacted batch has one by design. Its CRC must hold.
        let h = parse_header(&kept).expect("a parsable batch");
        assert_eq!(h.total_len(), kept.len());
        assert_eq!(crc32c::crc32c(&kept[CRC_COVERED_FROM..]), h.crc);
        assert_eq!(h.records_count, 2);
        assert_eq!(h.base_offset, 100);
        assert_eq!(h.last_offset(), 103, "the batch still spans its offsets");
        assert_eq!(h.producer_id, 5);
        let again = record_spans(&kept).unwrap();
        assert_eq!(
            again.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![101, 103]
        );
        // A compressed or cut batch is not read record by record.
        let mut compressed = b.clone();
        compressed[OFF_ATTRIBUTES + 1] |= 1;
        assert_eq!(record_spans(&compressed), None);
        for cut in 0..b.len() {
            let _ = record_spans(&b[..cut]);
        }
    }

    #[test]
    fn varint_matches_kafka_zigzag() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
        ];
        for (value, encoded) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, *value);
            assert_eq!(&out, encoded, "varint of {value}");
        }
    }

    #[test]
    fn attribute_bits() {
        let mut h = parse_header(&simple_batch(0, 1)).unwrap();
        h.attributes = 0b0011_1100 | 4;
        assert_eq!(h.compression(), 4);
        assert!(h.has_log_append_time());
        assert!(h.is_transactional());
        assert!(h.is_control());
    }

    #[test]
    fn patching_base_offset_and_epoch_keeps_crc_valid() {
        let mut batch = simple_batch(0, 3);
        set_base_offset(&mut batch, 1_234_567);
        set_partition_leader_epoch(&mut batch, 42);
        let h = validate(&batch).unwrap();
        assert_eq!(h.base_offset, 1_234_567);
        assert_eq!(h.last_offset(), 1_234_569);
        assert_eq!(h.partition_leader_epoch, 42);
    }

    #[test]
    #[should_panic(expected = "shorter than a record batch header")]
    fn patching_a_short_buffer_is_a_bug() {
        let mut short = vec![0u8; 20];
        set_base_offset(&mut short, 1);
    }

    #[test]
    fn every_byte_flip_in_crc_region_is_detected() {
        let batch = simple_batch(100, 4);
        for i in CRC_COVERED_FROM..batch.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = batch.clone();
                bad[i] ^= flip;
                let err = validate(&bad).unwrap_err();
                assert!(
                    matches!(err, BatchError::CorruptCrc { .. }),
                    "byte {i} flip {flip:#x}: {err:?}"
                );
                assert_eq!(err.kafka_error_code(), 2);
            }
        }
        // The stored CRC itself.
        for i in OFF_CRC..OFF_CRC + 4 {
            let mut bad = batch.clone();
            bad[i] ^= 0x10;
            assert!(matches!(validate(&bad), Err(BatchError::CorruptCrc { .. })));
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let batch = simple_batch(0, 6);
        for len in 0..batch.len() {
            let err = validate(&batch[..len]).unwrap_err();
            assert!(
                matches!(err, BatchError::Truncated { .. }),
                "len {len}: {err:?}"
            );
            assert_eq!(err.kafka_error_code(), 2);
            let bytes = Bytes::copy_from_slice(&batch[..len]);
            assert!(split_batches(&bytes).is_err() || len == 0);
            let items: Vec<_> = batches(&batch[..len]).collect();
            if len == 0 {
                assert!(items.is_empty());
            } else {
                assert_eq!(items.len(), 1);
                assert!(items[0].is_err());
            }
        }
    }

    #[test]
    fn extra_bytes_after_one_batch_are_a_length_mismatch() {
        let mut batch = simple_batch(0, 2);
        let len = batch.len();
        batch.push(0);
        assert_eq!(
            validate(&batch),
            Err(BatchError::LengthMismatch {
                declared: len,
                actual: len + 1
            })
        );
    }

    #[test]
    fn legacy_and_unknown_magic() {
        for (magic, code) in [(0i8, 87), (1, 87), (3, 2), (-1, 2)] {
            let mut batch = simple_batch(0, 2);
            batch[OFF_MAGIC] = magic as u8;
            let err = validate(&batch).unwrap_err();
            assert_eq!(err, BatchError::UnsupportedMagic(magic));
            assert_eq!(err.kafka_error_code(), code, "magic {magic}");
            assert_eq!(
                parse_header(&batch),
                Err(BatchError::UnsupportedMagic(magic))
            );
        }
        // A legacy v0 message is shorter than a v2 header: still reported as
        // the wrong magic, not as truncation.
        let mut v0 = vec![0u8; 26];
        v0[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&14i32.to_be_bytes());
        assert_eq!(validate(&v0), Err(BatchError::UnsupportedMagic(0)));
    }

    #[test]
    fn lengths_below_minimum_are_invalid() {
        for bad_len in [i32::MIN, -1, 0, 13, 14, 48] {
            let mut batch = simple_batch(0, 1);
            batch[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&bad_len.to_be_bytes());
            let err = validate(&batch).unwrap_err();
            assert_eq!(err, BatchError::InvalidLength(bad_len));
            assert_eq!(err.kafka_error_code(), 2);
            assert!(parse_header(&batch).is_err());
        }
    }

    #[test]
    fn huge_declared_length_is_truncation_not_allocation() {
        let mut batch = simple_batch(0, 1);
        batch[OFF_BATCH_LENGTH..OFF_BATCH_LENGTH + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            validate(&batch),
            Err(BatchError::Truncated { .. })
        ));
        let bytes = Bytes::from(batch.clone());
        assert!(matches!(
            split_batches(&bytes),
            Err(BatchError::Truncated { .. })
        ));
        let items: Vec<_> = batches(&batch).collect();
        assert!(matches!(items[..], [Err(BatchError::Truncated { .. })]));
    }

    #[test]
    fn inconsistent_counts_are_invalid_record() {
        let cases: &[(i32, i32)] = &[(-1, 0), (2, 2), (2, 4), (0, 0), (-5, -4), (2, -1)];
        for &(last_offset_delta, records_count) in cases {
            let mut batch = simple_batch(0, 3);
            batch[OFF_LAST_OFFSET_DELTA..OFF_LAST_OFFSET_DELTA + 4]
                .copy_from_slice(&last_offset_delta.to_be_bytes());
            batch[OFF_RECORDS_COUNT..OFF_RECORDS_COUNT + 4]
                .copy_from_slice(&records_count.to_be_bytes());
            refresh_crc(&mut batch);
            let err = validate(&batch).unwrap_err();
            assert!(
                matches!(err, BatchError::InvalidRecordCount { .. }),
                "({last_offset_delta}, {records_count}): {err:?}"
            );
            assert_eq!(err.kafka_error_code(), 87);
        }
        // An empty batch from the builder is refused too.
        assert!(matches!(
            validate(&build_test_batch(0, -1, -1, -1, &[])),
            Err(BatchError::InvalidRecordCount { .. })
        ));
    }

    #[test]
    fn uncompressed_count_must_fit_payload() {
        // Claims 1000 records in a one-record payload.
        let mut batch = simple_batch(0, 1);
        batch[OFF_LAST_OFFSET_DELTA..OFF_LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&999i32.to_be_bytes());
        batch[OFF_RECORDS_COUNT..OFF_RECORDS_COUNT + 4].copy_from_slice(&1000i32.to_be_bytes());
        refresh_crc(&mut batch);
        assert!(matches!(
            validate(&batch),
            Err(BatchError::InvalidRecordCount { .. })
        ));
        // The same header with a compression codec is not checked against the
        // payload: its records cannot be counted without decompressing.
        batch[OFF_ATTRIBUTES + 1] |= 1; // gzip
        refresh_crc(&mut batch);
        assert_eq!(validate(&batch).unwrap().record_count(), 1000);
    }

    #[test]
    fn compression_codecs() {
        for codec in 0u8..=7 {
            let mut batch = simple_batch(0, 2);
            batch[OFF_ATTRIBUTES + 1] = (batch[OFF_ATTRIBUTES + 1] & !7) | codec;
            refresh_crc(&mut batch);
            let result = validate(&batch);
            if codec <= 4 {
                assert_eq!(result.unwrap().compression(), codec);
            } else {
                let err = result.unwrap_err();
                assert_eq!(err, BatchError::InvalidCompression(codec));
                assert_eq!(err.kafka_error_code(), 87);
            }
        }
    }

    #[test]
    fn split_concatenated_batches_zero_copy() {
        let a = simple_batch(0, 2);
        let b = simple_batch(2, 5);
        let c = simple_batch(7, 1);
        let all = Bytes::from([a.clone(), b.clone(), c.clone()].concat());
        let parts = split_batches(&all).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], a);
        assert_eq!(parts[1], b);
        assert_eq!(parts[2], c);
        // Zero-copy: the slices point into the original buffer.
        assert_eq!(parts[1].as_ptr(), all[a.len()..].as_ptr());
        assert!(split_batches(&Bytes::new()).unwrap().is_empty());

        let positions: Vec<_> = batches(&all)
            .map(|r| r.map(|(pos, h)| (pos, h.base_offset, h.record_count())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            positions,
            vec![(0, 0, 2), (a.len(), 2, 5), (a.len() + b.len(), 7, 1)]
        );
    }

    #[test]
    fn split_rejects_trailing_partial_and_corrupt_middle() {
        let a = simple_batch(0, 2);
        let b = simple_batch(2, 2);
        for cut in 1..b.len() {
            let all = Bytes::from([a.as_slice(), &b[..cut]].concat());
            assert!(split_batches(&all).is_err(), "cut {cut}");
            let items: Vec<_> = batches(&all).collect();
            assert_eq!(items.len(), 2);
            assert!(items[0].is_ok() && items[1].is_err());
        }
        let mut bad_b = b.clone();
        bad_b[b.len() - 1] ^= 1;
        let all = Bytes::from([a.clone(), bad_b, a.clone()].concat());
        assert!(matches!(
            split_batches(&all),
            Err(BatchError::CorruptCrc { .. })
        ));
    }

    #[test]
    fn batch_iter_stops_after_error() {
        let a = simple_batch(0, 1);
        let mut garbage = a.clone();
        garbage.extend_from_slice(&[0xff; 70]);
        garbage.extend_from_slice(&a);
        let mut it = batches(&garbage);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        assert!(it.next().is_none());
    }

    #[test]
    fn error_messages_say_what_is_wrong() {
        let msg = BatchError::CorruptCrc {
            expected: 1,
            actual: 2,
        }
        .to_string();
        assert!(msg.contains("CRC mismatch"), "{msg}");
        let msg = BatchError::Truncated {
            needed: 61,
            available: 3,
        }
        .to_string();
        assert!(msg.contains("truncated") && msg.contains("61"), "{msg}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_header(&data);
            let _ = validate(&data);
            let bytes = Bytes::from(data.clone());
            if let Ok(parts) = split_batches(&bytes) {
                prop_assert!(parts.len() <= data.len() / BATCH_HEADER_LEN);
            }
            let mut end = 0;
            for item in batches(&data) {
                match item {
                    Ok((pos, h)) => {
                        prop_assert_eq!(pos, end);
                        end = pos + h.total_len();
                        prop_assert!(end <= data.len());
                    }
                    Err(_) => break,
                }
            }
        }

        #[test]
        fn mutated_valid_batches_never_panic(
            n in 1usize..6,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut data = [simple_batch(0, n), simple_batch(n as i64, 2)].concat();
            for (at, byte) in edits {
                let i = at.index(data.len());
                data[i] = byte;
            }
            data.truncate(cut.index(data.len() + 1));
            let _ = validate(&data);
            let _ = split_batches(&Bytes::from(data.clone()));
            let _ = batches(&data).count();
        }

        #[test]
        fn built_batches_round_trip(
            base in 0i64..(1 << 40),
            pid in any::<i64>(),
            epoch in any::<i16>(),
            seq in any::<i32>(),
            records in proptest::collection::vec(
                (proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))),
                1..20),
        ) {
            let refs: Vec<TestRecord<'_>> = records
                .iter()
                .map(|(k, v)| (k.as_deref(), v.as_deref()))
                .collect();
            let batch = build_test_batch(base, pid, epoch, seq, &refs);
            let h = validate(&batch).unwrap();
            prop_assert_eq!(h.base_offset, base);
            prop_assert_eq!(h.producer_id, pid);
            prop_assert_eq!(h.producer_epoch, epoch);
            prop_assert_eq!(h.base_sequence, seq);
            prop_assert_eq!(h.record_count() as usize, records.len());
            let decoded = decode_records(&batch);
            for (i, ((k, v), (ts, od, dk, dv))) in records.iter().zip(decoded).enumerate() {
                prop_assert_eq!(ts, i as i64);
                prop_assert_eq!(od, i as i64);
                prop_assert_eq!(k, &dk);
                prop_assert_eq!(v, &dv);
            }
        }
    }
}
