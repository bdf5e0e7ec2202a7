//! The byte layout of a stream-set object (SSO): this module owns writing an
//! object from batches sorted by (stream, offset) and parsing its footer and
//! index back. It never does I/O or reads a clock, never looks inside the
//! Kafka batches it stores (they are copied unchanged), and never panics or
//! allocates beyond the input's size on bytes read back from the object store.
//!
//! Layout, all integers big-endian:
//!
//! ```text
//! [data block 0][data block 1]...[index][footer]
//!
//! data block : Kafka record batches of ONE stream, contiguous offsets
//! index      : one 36-byte entry per block, sorted by (stream, start_offset)
//!                0 stream_id u64 | 8 start_offset u64 | 16 end_offset_delta u32
//!               20 record_count u32 | 24 position u64 | 32 size u32
//! footer     : 48 bytes
//!                0 index_position u64 | 8 index_len u32 | 12 index_crc32c u32
//!               16 format_version u16 (= 1) | 18..40 zero | 40 magic u64 "OXBOWSS1"
//! ```
//!
//! A reader fetches the footer (the last 48 bytes), then the index, then only
//! the blocks it needs; the index CRC guards the block map, and each Kafka
//! batch carries its own CRC.

use bytes::Bytes;
use proto::StreamId;

/// Size of the footer at the end of every object.
pub const FOOTER_LEN: usize = 48;
/// Size of one index entry.
pub const INDEX_ENTRY_LEN: usize = 36;

/// "OXBOWSS1", the last 8 bytes of every object.
const MAGIC: u64 = 0x4f58_424f_5753_5331;
const FORMAT_VERSION: u16 = 1;

const FOOTER_VERSION_AT: usize = 16;
const FOOTER_RESERVED: std::ops::Range<usize> = 18..40;
const FOOTER_MAGIC_AT: usize = 40;

/// Most blocks an object may hold: the index length is a `u32`.
const MAX_ENTRIES: usize = u32::MAX as usize / INDEX_ENTRY_LEN;

/// One block of one stream: offsets `[start_offset, end_offset)`, stored at
/// `position..position + size` in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub stream: StreamId,
    pub start_offset: u64,
    /// Exclusive; stored as a `u32` delta from `start_offset`.
    pub end_offset: u64,
    pub record_count: u32,
    pub position: u64,
    pub size: u32,
}

impl IndexEntry {
    /// The block's byte range in the object.
    pub fn byte_range(&self) -> std::ops::Range<u64> {
        self.position..self.position.saturating_add(u64::from(self.size))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        // The writer keeps every block's offset span within u32.
        let delta = u32::try_from(self.end_offset - self.start_offset)
            .expect("writer bounds a block's offset span to u32");
        out.extend_from_slice(&self.stream.0.to_be_bytes());
        out.extend_from_slice(&self.start_offset.to_be_bytes());
        out.extend_from_slice(&delta.to_be_bytes());
        out.extend_from_slice(&self.record_count.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
    }
}

/// Why an object could not be written or read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error(
        "out of order push: stream {stream} offset {start_offset} after stream {last_stream} \
         ending at offset {last_end}"
    )]
    OutOfOrder {
        stream: StreamId,
        start_offset: u64,
        last_stream: StreamId,
        last_end: u64,
    },
    #[error(
        "invalid offset range [{start_offset}, {end_offset}): must be non-empty and span \
         at most 2^32-1 offsets"
    )]
    InvalidRange { start_offset: u64, end_offset: u64 },
    #[error("record count {record_count} exceeds the {offsets} offsets the batch covers")]
    InvalidRecordCount { record_count: u32, offsets: u64 },
    #[error("batch of {0} bytes cannot be stored: must be 1..=4294967295 bytes")]
    InvalidBatchSize(usize),
    #[error("object would hold more than {MAX_ENTRIES} blocks")]
    TooManyBlocks,
    #[error("truncated object: {0} bytes")]
    TruncatedObject(u64),
    #[error("footer must be {FOOTER_LEN} bytes, got {0}")]
    FooterLength(usize),
    #[error("footer magic mismatch: found {0:#018x}")]
    FooterMagic(u64),
    #[error("unsupported object format version {0}")]
    UnsupportedVersion(u16),
    #[error("footer reserved bytes are not zero")]
    FooterReserved,
    #[error(
        "index at {index_position} of {index_len} bytes lies outside the {object_size}-byte \
         object's data area"
    )]
    IndexOutOfBounds {
        index_position: u64,
        index_len: u32,
        object_size: u64,
    },
    #[error("index length {0} is not a multiple of {INDEX_ENTRY_LEN}")]
    IndexLength(u32),
    #[error("index is {actual} bytes but the footer says {expected}")]
    IndexLengthMismatch { expected: u32, actual: usize },
    #[error("index CRC mismatch: footer says {expected:#010x}, computed {actual:#010x}")]
    IndexCrc { expected: u32, actual: u32 },
    #[error("index entry {entry}: {reason}")]
    InvalidEntry { entry: usize, reason: &'static str },
}

/// Builds one object from batches pushed in (stream, offset) order.
///
/// The object is assembled in one buffer; `finish` appends index and footer
/// and hands the buffer over without copying.
#[derive(Debug)]
pub struct ObjectWriter {
    target_block_size: usize,
    data: Vec<u8>,
    entries: Vec<IndexEntry>,
}

impl ObjectWriter {
    /// A writer that starts a new block once the current one would exceed
    /// `target_block_size` bytes.
    pub fn new(target_block_size: usize) -> Self {
        ObjectWriter {
            target_block_size,
            data: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// Appends one batch covering `[start_offset, end_offset)` of `stream`.
    ///
    /// Streams must come in ascending order and, within a stream, each batch
    /// must start where the previous one ended; otherwise
    /// [`FormatError::OutOfOrder`] and the writer is unchanged. A new block
    /// starts when the stream changes or the current block would grow past
    /// the target size (a batch larger than the target gets a block of its
    /// own), or when a block's `u32` fields would overflow.
    pub fn push(
        &mut self,
        stream: StreamId,
        start_offset: u64,
        end_offset: u64,
        record_count: u32,
        batch: &[u8],
    ) -> Result<(), FormatError> {
        let span = end_offset.saturating_sub(start_offset);
        if span == 0 || span > u64::from(u32::MAX) {
            return Err(FormatError::InvalidRange {
                start_offset,
                end_offset,
            });
        }
        if u64::from(record_count) > span {
            return Err(FormatError::InvalidRecordCount {
                record_count,
                offsets: span,
            });
        }
        let size = match u32::try_from(batch.len()) {
            Ok(size) if size > 0 => size,
            _ => return Err(FormatError::InvalidBatchSize(batch.len())),
        };

        let extend_current = match self.entries.last() {
            None => false,
            Some(last) => {
                if stream < last.stream
                    || (stream == last.stream && start_offset != last.end_offset)
                {
                    return Err(FormatError::OutOfOrder {
                        stream,
                        start_offset,
                        last_stream: last.stream,
                        last_end: last.end_offset,
                    });
                }
                stream == last.stream
                    && (last.size as usize).saturating_add(batch.len()) <= self.target_block_size
                    && last.size.checked_add(size).is_some()
                    && end_offset - last.start_offset <= u64::from(u32::MAX)
                    && last.record_count.checked_add(record_count).is_some()
            }
        };

        if extend_current {
            let last = self
                .entries
                .last_mut()
                .expect("extend_current implies a current block");
            last.end_offset = end_offset;
            last.size += size;
            last.record_count += record_count;
        } else {
            if self.entries.len() >= MAX_ENTRIES {
                return Err(FormatError::TooManyBlocks);
            }
            self.entries.push(IndexEntry {
                stream,
                start_offset,
                end_offset,
                record_count,
                position: self.data.len() as u64,
                size,
            });
        }
        self.data.extend_from_slice(batch);
        Ok(())
    }

    /// Whether no batch has been pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the object `finish` would produce now: data, index and footer.
    pub fn len_bytes(&self) -> usize {
        self.data.len() + self.entries.len() * INDEX_ENTRY_LEN + FOOTER_LEN
    }

    /// Appends index and footer and returns the whole object with its index
    /// entries (in the order they are stored).
    pub fn finish(self) -> (Bytes, Vec<IndexEntry>) {
        let ObjectWriter {
            mut data, entries, ..
        } = self;
        let index_position = data.len() as u64;
        let index_len = entries.len() * INDEX_ENTRY_LEN;
        data.reserve_exact(index_len + FOOTER_LEN);
        for entry in &entries {
            entry.encode(&mut data);
        }
        let index_crc = crc32c::crc32c(&data[data.len() - index_len..]);
        let index_len = u32::try_from(index_len).expect("push bounds the block count");

        data.extend_from_slice(&index_position.to_be_bytes());
        data.extend_from_slice(&index_len.to_be_bytes());
        data.extend_from_slice(&index_crc.to_be_bytes());
        data.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        data.extend_from_slice(&[0u8; FOOTER_RESERVED.end - FOOTER_RESERVED.start]);
        data.extend_from_slice(&MAGIC.to_be_bytes());
        (Bytes::from(data), entries)
    }
}

/// Where an object's index is and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    pub index_position: u64,
    pub index_len: u32,
    pub index_crc: u32,
}

impl Footer {
    /// The index's byte range in the object.
    pub fn index_range(&self) -> std::ops::Range<u64> {
        self.index_position
            ..self
                .index_position
                .saturating_add(u64::from(self.index_len))
    }
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

/// Parses the footer from `tail`, the last [`FOOTER_LEN`] bytes of an object
/// of `object_size` bytes.
///
/// Checks the magic, the version, that reserved bytes are zero, that the
/// index lies inside `[0, object_size - FOOTER_LEN)` and that its length is a
/// whole number of entries.
pub fn parse_footer(tail: &[u8], object_size: u64) -> Result<Footer, FormatError> {
    if object_size < FOOTER_LEN as u64 {
        return Err(FormatError::TruncatedObject(object_size));
    }
    if tail.len() != FOOTER_LEN {
        return Err(FormatError::FooterLength(tail.len()));
    }
    let magic = be_u64(tail, FOOTER_MAGIC_AT);
    if magic != MAGIC {
        return Err(FormatError::FooterMagic(magic));
    }
    let version = u16::from_be_bytes([tail[FOOTER_VERSION_AT], tail[FOOTER_VERSION_AT + 1]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    if tail[FOOTER_RESERVED].iter().any(|&b| b != 0) {
        return Err(FormatError::FooterReserved);
    }
    let footer = Footer {
        index_position: be_u64(tail, 0),
        index_len: be_u32(tail, 8),
        index_crc: be_u32(tail, 12),
    };
    let data_end = object_size - FOOTER_LEN as u64;
    let fits = footer
        .index_position
        .checked_add(u64::from(footer.index_len))
        .is_some_and(|end| end <= data_end);
    if !fits {
        return Err(FormatError::IndexOutOfBounds {
            index_position: footer.index_position,
            index_len: footer.index_len,
            object_size,
        });
    }
    if !(footer.index_len as usize).is_multiple_of(INDEX_ENTRY_LEN) {
        return Err(FormatError::IndexLength(footer.index_len));
    }
    Ok(footer)
}

/// Parses and checks the index `bytes` described by `footer`.
///
/// Checks the CRC, then every entry: a non-empty offset range, a record count
/// within it, a non-empty block lying before the index, and entries sorted by
/// (stream, start_offset) without overlapping offsets within a stream.
pub fn parse_index(bytes: &[u8], footer: &Footer) -> Result<ObjectIndex, FormatError> {
    if bytes.len() != footer.index_len as usize {
        return Err(FormatError::IndexLengthMismatch {
            expected: footer.index_len,
            actual: bytes.len(),
        });
    }
    if !bytes.len().is_multiple_of(INDEX_ENTRY_LEN) {
        return Err(FormatError::IndexLength(footer.index_len));
    }
    let actual = crc32c::crc32c(bytes);
    if actual != footer.index_crc {
        return Err(FormatError::IndexCrc {
            expected: footer.index_crc,
            actual,
        });
    }
    // Bounded by the input: one entry per 36 bytes actually present.
    let mut entries: Vec<IndexEntry> = Vec::with_capacity(bytes.len() / INDEX_ENTRY_LEN);
    for (i, raw) in bytes.chunks_exact(INDEX_ENTRY_LEN).enumerate() {
        let invalid = |reason| FormatError::InvalidEntry { entry: i, reason };
        let start_offset = be_u64(raw, 8);
        let delta = be_u32(raw, 16);
        let entry = IndexEntry {
            stream: StreamId(be_u64(raw, 0)),
            start_offset,
            end_offset: start_offset
                .checked_add(u64::from(delta))
                .ok_or_else(|| invalid("end offset overflows u64"))?,
            record_count: be_u32(raw, 20),
            position: be_u64(raw, 24),
            size: be_u32(raw, 32),
        };
        if delta == 0 {
            return Err(invalid("empty offset range"));
        }
        if entry.record_count > delta {
            return Err(invalid("more records than offsets"));
        }
        if entry.size == 0 {
            return Err(invalid("empty block"));
        }
        let within_data = entry
            .position
            .checked_add(u64::from(entry.size))
            .is_some_and(|end| end <= footer.index_position);
        if !within_data {
            return Err(invalid("block lies outside the data area"));
        }
        if let Some(prev) = entries.last() {
            if (entry.stream, entry.start_offset) <= (prev.stream, prev.start_offset) {
                return Err(invalid("not sorted by (stream, start offset)"));
            }
            if entry.stream == prev.stream && entry.start_offset < prev.end_offset {
                return Err(invalid("overlaps the previous block of its stream"));
            }
        }
        entries.push(entry);
    }
    Ok(ObjectIndex { entries })
}

/// The parsed, checked block map of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectIndex {
    entries: Vec<IndexEntry>,
}

impl ObjectIndex {
    /// All blocks, sorted by (stream, start_offset).
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// Position in [`Self::entries`] of the block of `stream` containing
    /// `offset`, if any.
    pub fn find(&self, stream: StreamId, offset: u64) -> Option<usize> {
        // First entry sorting after (stream, offset); the candidate precedes it.
        let after = self
            .entries
            .partition_point(|e| (e.stream, e.start_offset) <= (stream, offset));
        let i = after.checked_sub(1)?;
        let e = &self.entries[i];
        (e.stream == stream && offset < e.end_offset).then_some(i)
    }

    /// The blocks of `stream`, in offset order (empty if it has none).
    pub fn stream_blocks(&self, stream: StreamId) -> &[IndexEntry] {
        let from = self.entries.partition_point(|e| e.stream < stream);
        let to = self.entries.partition_point(|e| e.stream <= stream);
        &self.entries[from..to]
    }

    /// Size of the encoded index in bytes.
    pub fn encoded_len(&self) -> usize {
        self.entries.len() * INDEX_ENTRY_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{self, build_test_batch};
    use proptest::prelude::*;

    /// One pushed batch: stream, offset range, record count, bytes.
    type Pushed = (StreamId, u64, u64, u32, Vec<u8>);

    /// Real Kafka batches: for each (stream, records per batch...), batches
    /// with contiguous offsets starting at `first_offset`.
    fn real_batches(streams: &[(u64, u64, &[usize])]) -> Vec<Pushed> {
        let mut out = Vec::new();
        for &(stream, first_offset, sizes) in streams {
            let mut offset = first_offset;
            for &n in sizes {
                let values: Vec<Vec<u8>> = (0..n)
                    .map(|i| format!("s{stream}-o{}", offset + i as u64).into_bytes())
                    .collect();
                let records: Vec<batch::TestRecord<'_>> =
                    values.iter().map(|v| (None, Some(v.as_slice()))).collect();
                let bytes = build_test_batch(offset as i64, -1, -1, -1, &records);
                let end = offset + n as u64;
                out.push((StreamId(stream), offset, end, n as u32, bytes));
                offset = end;
            }
        }
        out
    }

    fn write(target: usize, pushed: &[Pushed]) -> (Bytes, Vec<IndexEntry>) {
        let mut w = ObjectWriter::new(target);
        for (s, start, end, count, bytes) in pushed {
            w.push(*s, *start, *end, *count, bytes).unwrap();
        }
        let expected_len = w.len_bytes();
        let (object, entries) = w.finish();
        assert_eq!(object.len(), expected_len);
        (object, entries)
    }

    /// Reads an object the way the reader does: footer, then index.
    fn read_back(object: &[u8]) -> Result<ObjectIndex, FormatError> {
        let size = object.len() as u64;
        if object.len() < FOOTER_LEN {
            return Err(FormatError::TruncatedObject(size));
        }
        let footer = parse_footer(&object[object.len() - FOOTER_LEN..], size)?;
        let r = footer.index_range();
        parse_index(&object[r.start as usize..r.end as usize], &footer)
    }

    fn block<'a>(object: &'a [u8], e: &IndexEntry) -> &'a [u8] {
        let r = e.byte_range();
        &object[r.start as usize..r.end as usize]
    }

    #[test]
    fn many_streams_round_trip() {
        let pushed = real_batches(&[
            (1, 0, &[3, 1, 4]),
            (2, 100, &[5]),
            (7, 1_000_000, &[2, 2, 2, 2, 2, 2]),
            (9, 5, &[1]),
        ]);
        let (object, entries) = write(300, &pushed);
        let index = read_back(&object).unwrap();
        assert_eq!(index.entries(), entries.as_slice());
        assert_eq!(index.encoded_len(), entries.len() * INDEX_ENTRY_LEN);

        for stream in [1u64, 2, 7, 9] {
            let stream = StreamId(stream);
            let blocks = index.stream_blocks(stream);
            assert!(!blocks.is_empty());
            // A stream's blocks hold exactly its batches, in order, unchanged.
            let stored: Vec<u8> = blocks
                .iter()
                .flat_map(|e| block(&object, e).to_vec())
                .collect();
            let expected: Vec<u8> = pushed
                .iter()
                .filter(|p| p.0 == stream)
                .flat_map(|p| p.4.clone())
                .collect();
            assert_eq!(stored, expected);
            for w in blocks.windows(2) {
                assert_eq!(w[0].end_offset, w[1].start_offset, "contiguous blocks");
            }
            // Every block holds whole, valid batches covering its range.
            for e in blocks {
                let mut next = e.start_offset;
                let mut records = 0;
                for item in batch::batches(block(&object, e)) {
                    let (pos, h) = item.unwrap();
                    let bytes = &block(&object, e)[pos..pos + h.total_len()];
                    batch::validate(bytes).unwrap();
                    assert_eq!(h.base_offset as u64, next);
                    next = h.last_offset() as u64 + 1;
                    records += h.record_count();
                }
                assert_eq!(next, e.end_offset);
                assert_eq!(records, e.record_count);
            }
        }
        assert!(index.stream_blocks(StreamId(3)).is_empty());
        assert!(index.stream_blocks(StreamId(0)).is_empty());
        assert!(index.stream_blocks(StreamId(100)).is_empty());
    }

    #[test]
    fn blocks_split_on_stream_change_and_target_size() {
        let pushed = real_batches(&[(1, 0, &[1, 1, 1, 1]), (2, 0, &[1])]);
        let one = pushed[0].4.len();
        // Room for two batches per block.
        let (_, entries) = write(2 * one, &pushed);
        let shape: Vec<_> = entries
            .iter()
            .map(|e| (e.stream.0, e.start_offset, e.end_offset, e.record_count))
            .collect();
        assert_eq!(shape, vec![(1, 0, 2, 2), (1, 2, 4, 2), (2, 0, 1, 1)]);

        // A batch larger than the target gets a block of its own.
        let (_, entries) = write(1, &pushed);
        assert_eq!(entries.len(), 5);
        assert!(entries.iter().all(|e| e.size as usize == one));

        // One block per stream when the target is large.
        let (_, entries) = write(usize::MAX, &pushed);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].size as usize, 4 * one);
    }

    #[test]
    fn big_batch_between_small_ones() {
        let mut pushed = real_batches(&[(4, 0, &[1, 50, 1])]);
        pushed.truncate(3);
        let small = pushed[0].4.len();
        let (object, entries) = write(small + 10, &pushed);
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].size as usize, pushed[1].4.len());
        assert_eq!(block(&object, &entries[1]), pushed[1].4.as_slice());
    }

    #[test]
    fn find_at_block_boundaries() {
        let pushed = real_batches(&[(1, 10, &[2, 3]), (2, 0, &[4]), (3, 50, &[1, 1])]);
        let one_batch = 1; // every batch in its own block
        let (object, _) = write(one_batch, &pushed);
        let index = read_back(&object).unwrap();
        // Blocks: s1 [10,12) [12,15); s2 [0,4); s3 [50,51) [51,52).
        let s = StreamId;
        assert_eq!(index.find(s(1), 9), None);
        assert_eq!(index.find(s(1), 10), Some(0));
        assert_eq!(index.find(s(1), 11), Some(0));
        assert_eq!(index.find(s(1), 12), Some(1));
        assert_eq!(index.find(s(1), 14), Some(1));
        assert_eq!(index.find(s(1), 15), None);
        assert_eq!(index.find(s(2), 0), Some(2));
        assert_eq!(index.find(s(2), 3), Some(2));
        assert_eq!(index.find(s(2), 4), None);
        assert_eq!(index.find(s(3), 49), None);
        assert_eq!(index.find(s(3), 50), Some(3));
        assert_eq!(index.find(s(3), 51), Some(4));
        assert_eq!(index.find(s(3), 52), None);
        assert_eq!(index.find(s(0), 0), None);
        assert_eq!(index.find(s(4), 0), None);
        assert_eq!(index.find(s(3), u64::MAX), None);
    }

    #[test]
    fn empty_object_round_trips() {
        let w = ObjectWriter::new(1024);
        assert!(w.is_empty());
        assert_eq!(w.len_bytes(), FOOTER_LEN);
        let (object, entries) = w.finish();
        assert!(entries.is_empty());
        assert_eq!(object.len(), FOOTER_LEN);
        assert_eq!(&object[40..], b"OXBOWSS1");
        let index = read_back(&object).unwrap();
        assert!(index.entries().is_empty());
        assert_eq!(index.find(StreamId(1), 0), None);
    }

    #[test]
    fn footer_layout_is_as_documented() {
        let pushed = real_batches(&[(5, 0, &[2])]);
        let (object, entries) = write(1 << 20, &pushed);
        let data_len = pushed[0].4.len();
        let footer = &object[object.len() - FOOTER_LEN..];
        assert_eq!(be_u64(footer, 0), data_len as u64);
        assert_eq!(be_u32(footer, 8), INDEX_ENTRY_LEN as u32);
        assert_eq!(
            be_u32(footer, 12),
            crc32c::crc32c(&object[data_len..data_len + INDEX_ENTRY_LEN])
        );
        assert_eq!(&footer[16..18], &[0, 1]);
        assert!(footer[18..40].iter().all(|&b| b == 0));
        assert_eq!(&footer[40..], b"OXBOWSS1");
        let raw = &object[data_len..data_len + INDEX_ENTRY_LEN];
        assert_eq!(be_u64(raw, 0), 5);
        assert_eq!(be_u64(raw, 8), 0);
        assert_eq!(be_u32(raw, 16), 2);
        assert_eq!(be_u32(raw, 20), 2);
        assert_eq!(be_u64(raw, 24), 0);
        assert_eq!(be_u32(raw, 32), data_len as u32);
        assert_eq!(entries[0].byte_range(), 0..data_len as u64);
    }

    #[test]
    fn out_of_order_pushes_are_refused_and_leave_writer_unchanged() {
        let b = build_test_batch(0, -1, -1, -1, &[(None, Some(b"x"))]);
        let mut w = ObjectWriter::new(1 << 20);
        w.push(StreamId(2), 10, 11, 1, &b).unwrap();
        let before = w.len_bytes();
        for (stream, start) in [(2, 12), (2, 10), (2, 9), (1, 11)] {
            let err = w
                .push(StreamId(stream), start, start + 1, 1, &b)
                .unwrap_err();
            assert!(matches!(err, FormatError::OutOfOrder { .. }), "{err}");
            assert!(err.to_string().contains("out of order"));
            assert_eq!(w.len_bytes(), before);
        }
        w.push(StreamId(2), 11, 12, 1, &b).unwrap();
        w.push(StreamId(3), 0, 1, 1, &b).unwrap();
        // A later stream may start at any offset.
        w.push(StreamId(4), 77, 78, 1, &b).unwrap();
        let (object, entries) = w.finish();
        assert_eq!(entries.len(), 3);
        assert_eq!(read_back(&object).unwrap().entries(), entries.as_slice());
    }

    #[test]
    fn invalid_pushes_are_refused() {
        let b = build_test_batch(0, -1, -1, -1, &[(None, Some(b"x"))]);
        let mut w = ObjectWriter::new(1 << 20);
        let s = StreamId(1);
        assert!(matches!(
            w.push(s, 5, 5, 0, &b),
            Err(FormatError::InvalidRange { .. })
        ));
        assert!(matches!(
            w.push(s, 5, 4, 0, &b),
            Err(FormatError::InvalidRange { .. })
        ));
        assert!(matches!(
            w.push(s, 0, 1 << 33, 1, &b),
            Err(FormatError::InvalidRange { .. })
        ));
        assert!(matches!(
            w.push(s, 0, 2, 3, &b),
            Err(FormatError::InvalidRecordCount { .. })
        ));
        assert_eq!(
            w.push(s, 0, 1, 1, &[]),
            Err(FormatError::InvalidBatchSize(0))
        );
        assert!(w.is_empty());
    }

    #[test]
    fn block_offset_span_stays_within_u32() {
        // Two batches whose combined span exceeds u32 go into two blocks.
        let b = vec![1u8; 10];
        let mut w = ObjectWriter::new(usize::MAX);
        let s = StreamId(1);
        let half = u64::from(u32::MAX) / 2 + 1;
        w.push(s, 0, half, 1, &b).unwrap();
        w.push(s, half, 2 * half, 1, &b).unwrap();
        w.push(s, 2 * half, 2 * half + 1, 1, &b).unwrap();
        let (object, entries) = w.finish();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].end_offset, half);
        assert_eq!(entries[1].end_offset, 2 * half + 1);
        assert_eq!(read_back(&object).unwrap().entries(), entries.as_slice());
    }

    fn sample_object() -> Bytes {
        let pushed = real_batches(&[(1, 0, &[2, 2]), (2, 7, &[3]), (3, 0, &[1])]);
        write(1, &pushed).0
    }

    #[test]
    fn flipping_any_index_byte_is_a_crc_error() {
        let object = sample_object();
        let footer =
            parse_footer(&object[object.len() - FOOTER_LEN..], object.len() as u64).unwrap();
        for i in footer.index_range() {
            let mut bad = object.to_vec();
            bad[i as usize] ^= 0x04;
            let err = read_back(&bad).unwrap_err();
            assert!(
                matches!(err, FormatError::IndexCrc { .. }),
                "byte {i}: {err}"
            );
            assert!(err.to_string().contains("index CRC mismatch"));
        }
    }

    #[test]
    fn corrupt_footers_are_rejected() {
        let object = sample_object();
        let n = object.len();
        let mut bad = object.to_vec();
        bad[n - 1] ^= 1;
        let err = read_back(&bad).unwrap_err();
        assert!(matches!(err, FormatError::FooterMagic(_)));
        assert!(err.to_string().contains("footer magic mismatch"));

        let mut bad = object.to_vec();
        bad[n - FOOTER_LEN + 17] = 2;
        assert_eq!(read_back(&bad), Err(FormatError::UnsupportedVersion(2)));

        let mut bad = object.to_vec();
        bad[n - FOOTER_LEN + 20] = 1;
        assert_eq!(read_back(&bad), Err(FormatError::FooterReserved));

        // Index position pushed past the data area.
        let mut bad = object.to_vec();
        bad[n - FOOTER_LEN..n - FOOTER_LEN + 8].copy_from_slice(&(n as u64).to_be_bytes());
        assert!(matches!(
            read_back(&bad),
            Err(FormatError::IndexOutOfBounds { .. })
        ));
        let mut bad = object.to_vec();
        bad[n - FOOTER_LEN..n - FOOTER_LEN + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            read_back(&bad),
            Err(FormatError::IndexOutOfBounds { .. })
        ));

        // Index length not a whole number of entries.
        let mut bad = object.to_vec();
        bad[n - FOOTER_LEN + 8..n - FOOTER_LEN + 12].copy_from_slice(&35u32.to_be_bytes());
        assert_eq!(read_back(&bad), Err(FormatError::IndexLength(35)));

        let tail = &object[n - FOOTER_LEN..];
        assert_eq!(
            parse_footer(&tail[1..], n as u64),
            Err(FormatError::FooterLength(FOOTER_LEN - 1))
        );
        let err = parse_footer(tail, 47).unwrap_err();
        assert_eq!(err, FormatError::TruncatedObject(47));
        assert_eq!(err.to_string(), "truncated object: 47 bytes");
    }

    #[test]
    fn every_truncation_is_rejected() {
        let object = sample_object();
        for len in 0..object.len() {
            assert!(read_back(&object[..len]).is_err(), "len {len}");
        }
        // The true footer checked against a shorter object size.
        let tail = &object[object.len() - FOOTER_LEN..];
        for size in 0..object.len() as u64 {
            if let Ok(footer) = parse_footer(tail, size) {
                assert!(footer.index_range().end <= size - FOOTER_LEN as u64);
            }
        }
    }

    #[test]
    fn index_length_must_match_footer() {
        let object = sample_object();
        let footer =
            parse_footer(&object[object.len() - FOOTER_LEN..], object.len() as u64).unwrap();
        let r = footer.index_range();
        let index = &object[r.start as usize..r.end as usize];
        assert!(matches!(
            parse_index(&index[..index.len() - 1], &footer),
            Err(FormatError::IndexLengthMismatch { .. })
        ));
    }

    /// Encodes `entries` as an index with a correct CRC, so entry checks run.
    fn forged(entries: &[IndexEntry], index_position: u64) -> (Vec<u8>, Footer) {
        let mut raw = Vec::new();
        for e in entries {
            raw.extend_from_slice(&e.stream.0.to_be_bytes());
            raw.extend_from_slice(&e.start_offset.to_be_bytes());
            raw.extend_from_slice(&((e.end_offset - e.start_offset) as u32).to_be_bytes());
            raw.extend_from_slice(&e.record_count.to_be_bytes());
            raw.extend_from_slice(&e.position.to_be_bytes());
            raw.extend_from_slice(&e.size.to_be_bytes());
        }
        let footer = Footer {
            index_position,
            index_len: raw.len() as u32,
            index_crc: crc32c::crc32c(&raw),
        };
        (raw, footer)
    }

    #[test]
    fn insane_entries_are_rejected() {
        let e = |stream, start, end, count, position, size| IndexEntry {
            stream: StreamId(stream),
            start_offset: start,
            end_offset: end,
            record_count: count,
            position,
            size,
        };
        let good = e(1, 0, 10, 10, 0, 100);
        let cases: &[(&[IndexEntry], &str)] = &[
            (&[e(1, 5, 5, 0, 0, 10)], "empty offset range"),
            (&[e(1, 0, 2, 3, 0, 10)], "more records than offsets"),
            (&[e(1, 0, 2, 2, 0, 0)], "empty block"),
            (&[e(1, 0, 2, 2, 950, 100)], "outside the data area"),
            (&[e(1, 0, 2, 2, u64::MAX, 100)], "outside the data area"),
            (&[good, e(1, 0, 10, 1, 100, 10)], "not sorted"),
            (&[e(2, 0, 1, 1, 0, 1), e(1, 0, 1, 1, 1, 1)], "not sorted"),
            (&[good, e(1, 9, 20, 1, 100, 10)], "overlaps"),
            (&[e(1, u64::MAX - 1, u64::MAX, 1, 0, 1)], "unused"),
        ];
        for (entries, reason) in cases {
            let (raw, footer) = forged(entries, 1000);
            match parse_index(&raw, &footer) {
                Err(FormatError::InvalidEntry { reason: r, .. }) => {
                    assert!(r.contains(reason), "{r} vs {reason}")
                }
                // The last case is valid: ends exactly at u64::MAX.
                Ok(_) if *reason == "unused" => {}
                other => panic!("{reason}: {other:?}"),
            }
        }
        // End offset overflow needs a hand-made delta.
        let (mut raw, _) = forged(&[e(1, 0, 2, 1, 0, 1)], 1000);
        raw[8..16].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        let footer = Footer {
            index_position: 1000,
            index_len: raw.len() as u32,
            index_crc: crc32c::crc32c(&raw),
        };
        assert!(matches!(
            parse_index(&raw, &footer),
            Err(FormatError::InvalidEntry {
                reason: "end offset overflows u64",
                ..
            })
        ));
        // A gap between blocks of one stream is allowed.
        let (raw, footer) = forged(&[good, e(1, 20, 30, 10, 100, 10)], 1000);
        let index = parse_index(&raw, &footer).unwrap();
        assert_eq!(index.find(StreamId(1), 15), None);
        assert_eq!(index.find(StreamId(1), 20), Some(1));
    }

    proptest! {
        #[test]
        fn round_trip(
            streams in proptest::collection::btree_map(
                any::<u64>(),
                (0u64..(1 << 40), proptest::collection::vec(1usize..8, 1..6)),
                1..8),
            target in 1usize..2000,
        ) {
            let spec: Vec<(u64, u64, Vec<usize>)> =
                streams.into_iter().map(|(s, (o, sizes))| (s, o, sizes)).collect();
            let spec_refs: Vec<(u64, u64, &[usize])> =
                spec.iter().map(|(s, o, v)| (*s, *o, v.as_slice())).collect();
            let pushed = real_batches(&spec_refs);
            let (object, entries) = write(target, &pushed);
            let index = read_back(&object).unwrap();
            prop_assert_eq!(index.entries(), entries.as_slice());
            for (s, start, end, _, bytes) in &pushed {
                // The batch lies inside the block `find` returns for its offsets.
                for off in [*start, *end - 1] {
                    let i = index.find(*s, off).unwrap();
                    let e = index.entries()[i];
                    let blk = block(&object, &e);
                    let found = batch::batches(blk)
                        .map(|r| r.unwrap())
                        .find(|(_, h)| h.base_offset as u64 == *start)
                        .map(|(pos, h)| blk[pos..pos + h.total_len()].to_vec());
                    prop_assert_eq!(found.as_ref(), Some(bytes));
                }
                prop_assert_eq!(index.find(*s, *end).is_some(), pushed.iter().any(|p| p.0 == *s && p.1 == *end));
            }
            for e in index.entries() {
                // Only a block holding a single batch may exceed the target.
                if e.size as usize > target {
                    prop_assert_eq!(batch::batches(block(&object, e)).count(), 1);
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
            size in any::<u64>(),
            index in proptest::collection::vec(any::<u8>(), 0..400),
            position in any::<u64>(),
        ) {
            let _ = parse_footer(&tail, size);
            let footer = Footer {
                index_position: position,
                index_len: index.len() as u32,
                index_crc: crc32c::crc32c(&index),
            };
            // With a matching CRC the entry checks see arbitrary entries.
            if let Ok(ix) = parse_index(&index, &footer) {
                for e in ix.entries() {
                    let _ = ix.find(e.stream, e.start_offset);
                    let _ = ix.stream_blocks(e.stream);
                }
            }
            let _ = parse_index(&index, &Footer { index_crc: 0, ..footer });
        }

        #[test]
        fn mutated_objects_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut object = sample_object().to_vec();
            for (at, byte) in edits {
                let i = at.index(object.len());
                object[i] = byte;
            }
            object.truncate(cut.index(object.len() + 1));
            if let Ok(ix) = read_back(&object) {
                for e in ix.entries() {
                    prop_assert!(e.byte_range().end <= object.len() as u64);
                }
            }
        }
    }
}
