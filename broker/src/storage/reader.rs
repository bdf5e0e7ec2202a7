//! Cold reads: committed stream data fetched from stream-set objects with
//! ranged GETs, through two bounded caches (object indexes, data blocks).
//!
//! Reads never go through the partition actor and never wait on the writer:
//! they use their own store requests and caches. Which object holds an offset
//! is the caller's question (the metadata image's object map); this module
//! only turns (object, stream, offset) into record batches.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use bytes::Bytes;
use object_store::{path::Path, ObjectStore, ObjectStoreExt};
use proto::{ObjectId, StreamId};

use crate::storage::batch;
use crate::storage::object_format::{self, ObjectIndex, FOOTER_LEN};

/// First GET of an object's tail: footer plus, usually, the whole index.
const TAIL_READ_BYTES: u64 = 64 * 1024;
/// An object up to this size is read whole by its first GET (index and every
/// block at once): small objects would otherwise cost a GET per stream.
const WHOLE_OBJECT_BYTES: u64 = 1024 * 1024;
/// Block-cache position under which a whole object's bytes are kept.
const WHOLE: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object {key} is malformed: {reason}")]
    Malformed { key: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct ObjectLocation {
    pub id: ObjectId,
    pub key: String,
    pub size: u64,
}

impl From<&proto::image::ObjectRecord> for ObjectLocation {
    fn from(o: &proto::image::ObjectRecord) -> Self {
        ObjectLocation {
            id: o.id,
            key: o.key.clone(),
            size: o.size,
        }
    }
}

/// The object holding `stream`'s committed bytes at `offset`, and the end of
/// that slice, per the metadata image.
pub fn locate(
    img: &proto::MetadataImage,
    stream: StreamId,
    offset: u64,
) -> Option<(ObjectLocation, u64)> {
    let s = img.streams.get(&stream)?;
    let (_, slice) = s.slices.range(..=offset).next_back()?;
    if slice.end_offset <= offset {
        return None;
    }
    let obj = img.objects.get(&slice.object)?;
    Some((ObjectLocation::from(obj), slice.end_offset))
}

/// Most slices one read walks past when they hold nothing at or after the
/// offset asked for (key compaction can leave a slice empty).
const MAX_EMPTY_SLICES_PER_READ: usize = 64;

/// Committed batches of `stream` from `offset` (none at or past `end`), up
/// to `max_bytes`, from the objects the metadata view names. A slice that
/// holds no batch from `offset` on (its records were compacted away) is
/// skipped for the next; when every slice up to `end` is empty the answer
/// has no batch and `end_offset` is `end`. `Ok(None)` when the view does not
/// know the offset yet (it trails the commit for a moment).
pub async fn read_committed(
    metadata: &crate::metadata::MetadataView,
    reader: &ObjectReader,
    stream: StreamId,
    mut offset: u64,
    end: u64,
    max_bytes: usize,
) -> Result<Option<ObjectRead>, ReadError> {
    for _ in 0..MAX_EMPTY_SLICES_PER_READ {
        let Some((obj, slice_end)) = metadata.read(|img| locate(img, stream, offset)) else {
            return Ok(None);
        };
        let r = reader
            .read(&obj, stream, offset, slice_end.min(end), max_bytes)
            .await?;
        if !r.batches.is_empty() {
            return Ok(Some(r));
        }
        if slice_end >= end {
            return Ok(Some(ObjectRead {
                end_offset: end,
                ..ObjectRead::default()
            }));
        }
        offset = slice_end;
    }
    Ok(Some(ObjectRead::default()))
}

/// The byte range of the blocks of `stream` that overlap `[start, end)`
/// (a stream's blocks are contiguous in an object).
pub fn stream_span(
    index: &ObjectIndex,
    stream: StreamId,
    start: u64,
    end: u64,
) -> Option<std::ops::Range<u64>> {
    let mut blocks = index
        .stream_blocks(stream)
        .iter()
        .filter(|b| b.end_offset > start && b.start_offset < end);
    let first = blocks.next()?;
    let last = blocks.next_back().unwrap_or(first);
    Some(first.position..last.position + u64::from(last.size))
}

/// The batches of `stream` overlapping `[start, end)` in `data`, which holds
/// the object's bytes from position `data_at` on (at least the blocks
/// [`stream_span`] names).
pub fn stream_batches_in(
    data: &Bytes,
    data_at: u64,
    index: &ObjectIndex,
    stream: StreamId,
    start: u64,
    end: u64,
) -> Result<Vec<Bytes>, String> {
    let Some(span) = stream_span(index, stream, start, end) else {
        return Ok(Vec::new());
    };
    let from = span
        .start
        .checked_sub(data_at)
        .map(|v| v as usize)
        .filter(|&f| f <= data.len())
        .ok_or("blocks outside the data read")?;
    let to = usize::try_from(span.end - data_at)
        .ok()
        .filter(|&t| t <= data.len())
        .ok_or("blocks outside the data read")?;
    let bytes = data.slice(from..to);
    let mut out = Vec::new();
    for item in batch::batches(&bytes) {
        let (pos, header) = item.map_err(|e| format!("blocks at {}: {e}", span.start))?;
        let base = u64::try_from(header.base_offset).unwrap_or(u64::MAX);
        let last = u64::try_from(header.last_offset()).unwrap_or(0);
        if last >= start && base < end {
            out.push(bytes.slice(pos..pos + header.total_len()));
        }
    }
    Ok(out)
}

/// Batches read from one object.
#[derive(Debug, Default)]
pub struct ObjectRead {
    pub batches: Vec<Bytes>,
    pub bytes: usize,
    /// One past the last offset of the last batch returned.
    pub end_offset: u64,
}

/// A map bounded by a weight, evicting in insertion order.
struct BoundedCache<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    weight: usize,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    fn new(capacity: usize) -> Self {
        BoundedCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            weight: 0,
            capacity,
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).map(|(v, _)| v.clone())
    }

    fn insert(&mut self, k: K, v: V, weight: usize) {
        if weight > self.capacity {
            return;
        }
        if let Some((_, w)) = self.map.insert(k.clone(), (v, weight)) {
            self.weight -= w;
        } else {
            self.order.push_back(k);
        }
        self.weight += weight;
        while self.weight > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.weight -= w;
            }
        }
    }
}

pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    indexes: Mutex<BoundedCache<ObjectId, Arc<ObjectIndex>>>,
    blocks: Mutex<BoundedCache<(ObjectId, u64), Bytes>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Cache contents stay valid if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ObjectReader {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        index_entries: usize,
        block_cache_bytes: usize,
    ) -> Self {
        ObjectReader {
            store,
            indexes: Mutex::new(BoundedCache::new(index_entries)),
            blocks: Mutex::new(BoundedCache::new(block_cache_bytes)),
        }
    }

    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Bytes, ReadError> {
        let started = Instant::now();
        let result = self.store.get_range(&Path::from(key), range).await;
        metrics::histogram!("oxbow_object_get_seconds").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(b) => {
                metrics::counter!("oxbow_object_gets_total").increment(1);
                metrics::counter!("oxbow_object_get_bytes_total").increment(b.len() as u64);
            }
            Err(_) => metrics::counter!("oxbow_object_get_errors_total").increment(1),
        }
        Ok(result?)
    }

    /// The object's index, from cache or from its tail.
    pub async fn index(&self, obj: &ObjectLocation) -> Result<Arc<ObjectIndex>, ReadError> {
        if let Some(ix) = lock(&self.indexes).get(&obj.id) {
            return Ok(ix);
        }
        let malformed = |reason: String| ReadError::Malformed {
            key: obj.key.clone(),
            reason,
        };
        if obj.size < FOOTER_LEN as u64 {
            return Err(malformed(format!("only {} bytes", obj.size)));
        }
        let tail_start = if obj.size <= WHOLE_OBJECT_BYTES {
            0
        } else {
            obj.size.saturating_sub(TAIL_READ_BYTES)
        };
        let tail = self.get_range(&obj.key, tail_start..obj.size).await?;
        if tail_start == 0 && tail.len() as u64 == obj.size {
            let mut cache = lock(&self.blocks);
            cache.insert((obj.id, WHOLE), tail.clone(), tail.len());
        }
        if tail.len() as u64 != obj.size - tail_start {
            return Err(malformed(format!("short read of {} bytes", tail.len())));
        }
        let footer = object_format::parse_footer(&tail[tail.len() - FOOTER_LEN..], obj.size)
            .map_err(|e| malformed(e.to_string()))?;
        let index_end = footer.index_position + u64::from(footer.index_len);
        let index_bytes = if footer.index_position >= tail_start {
            let from = (footer.index_position - tail_start) as usize;
            tail.slice(from..from + footer.index_len as usize)
        } else {
            self.get_range(&obj.key, footer.index_position..index_end)
                .await?
        };
        let index = Arc::new(
            object_format::parse_index(&index_bytes, &footer)
                .map_err(|e| malformed(e.to_string()))?,
        );
        lock(&self.indexes).insert(obj.id, index.clone(), 1);
        Ok(index)
    }

    /// Batches of `stream` from the one containing `offset`, up to `max_bytes`
    /// (at least one batch), all from the block holding `offset` and the
    /// blocks after it in this object, none starting at or after `end_limit`
    /// (the end of the committed slice: anything past it was not accepted).
    pub async fn read(
        &self,
        obj: &ObjectLocation,
        stream: StreamId,
        offset: u64,
        end_limit: u64,
        max_bytes: usize,
    ) -> Result<ObjectRead, ReadError> {
        let index = self.index(obj).await?;
        let blocks = index.stream_blocks(stream);
        let mut out = ObjectRead::default();
        let Some(first) = blocks.iter().position(|b| b.end_offset > offset) else {
            return Ok(out);
        };
        for entry in &blocks[first..] {
            let block = self.block(obj, entry.position, entry.size).await?;
            for item in batch::batches(&block) {
                let (pos, header) = item.map_err(|e| ReadError::Malformed {
                    key: obj.key.clone(),
                    reason: format!("block at {}: {e}", entry.position),
                })?;
                let last = u64::try_from(header.last_offset()).unwrap_or(0);
                if last < offset {
                    continue;
                }
                if u64::try_from(header.base_offset).unwrap_or(u64::MAX) >= end_limit {
                    return Ok(out);
                }
                let len = header.total_len();
                if !out.batches.is_empty() && out.bytes + len > max_bytes {
                    return Ok(out);
                }
                out.batches.push(block.slice(pos..pos + len));
                out.bytes += len;
                out.end_offset = last + 1;
            }
            if out.bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Where the newest part of `stream`'s `[start, end)` in this object
    /// that fits in `budget` bytes of blocks begins (at least the last
    /// block): the offset a reader that wants only the tail reads from.
    pub async fn tail_start(
        &self,
        obj: &ObjectLocation,
        stream: StreamId,
        start: u64,
        end: u64,
        budget: u64,
    ) -> Result<u64, ReadError> {
        let index = self.index(obj).await?;
        let mut from = start;
        let mut bytes = 0u64;
        for block in index.stream_blocks(stream).iter().rev() {
            if block.start_offset >= end {
                continue;
            }
            if block.end_offset <= start {
                break;
            }
            from = block.start_offset.max(start);
            bytes += u64::from(block.size);
            if bytes >= budget {
                break;
            }
        }
        Ok(from)
    }

    /// Every batch of `stream` in this object that overlaps `[start, end)`,
    /// read with one ranged GET and without going through the block cache
    /// (compaction reads data once; it must not evict what fetches use).
    pub async fn read_range_uncached(
        &self,
        obj: &ObjectLocation,
        stream: StreamId,
        start: u64,
        end: u64,
    ) -> Result<Vec<Bytes>, ReadError> {
        let index = self.index(obj).await?;
        let Some(span) = stream_span(&index, stream, start, end) else {
            return Ok(Vec::new());
        };
        let bytes = self.get_range(&obj.key, span.clone()).await?;
        if bytes.len() as u64 != span.end - span.start {
            return Err(ReadError::Malformed {
                key: obj.key.clone(),
                reason: format!("blocks at {}: got {} bytes", span.start, bytes.len()),
            });
        }
        stream_batches_in(&bytes, span.start, &index, stream, start, end).map_err(|reason| {
            ReadError::Malformed {
                key: obj.key.clone(),
                reason,
            }
        })
    }

    /// A whole object read with one GET (not cached) and its parsed index,
    /// for compaction, which takes many streams' data out of each object.
    pub async fn read_whole_uncached(
        &self,
        obj: &ObjectLocation,
    ) -> Result<(Bytes, Arc<ObjectIndex>), ReadError> {
        let malformed = |reason: String| ReadError::Malformed {
            key: obj.key.clone(),
            reason,
        };
        let bytes = self.get_range(&obj.key, 0..obj.size).await?;
        if (bytes.len() as u64) != obj.size || bytes.len() < FOOTER_LEN {
            return Err(malformed(format!("short read of {} bytes", bytes.len())));
        }
        let footer = object_format::parse_footer(&bytes[bytes.len() - FOOTER_LEN..], obj.size)
            .map_err(|e| malformed(e.to_string()))?;
        let from = usize::try_from(footer.index_position).unwrap_or(usize::MAX);
        let index_bytes = from
            .checked_add(footer.index_len as usize)
            .and_then(|to| bytes.get(from..to))
            .ok_or_else(|| malformed("index outside the object".into()))?;
        let index = object_format::parse_index(index_bytes, &footer)
            .map_err(|e| malformed(e.to_string()))?;
        Ok((bytes, Arc::new(index)))
    }

    async fn block(
        &self,
        obj: &ObjectLocation,
        position: u64,
        size: u32,
    ) -> Result<Bytes, ReadError> {
        let whole = lock(&self.blocks).get(&(obj.id, WHOLE));
        if let Some(body) = whole {
            let end = position.saturating_add(u64::from(size));
            if end <= body.len() as u64 {
                metrics::counter!("oxbow_block_cache_hits_total").increment(1);
                return Ok(body.slice(position as usize..end as usize));
            }
        }
        let key = (obj.id, position);
        if let Some(b) = lock(&self.blocks).get(&key) {
            metrics::counter!("oxbow_block_cache_hits_total").increment(1);
            return Ok(b);
        }
        metrics::counter!("oxbow_block_cache_misses_total").increment(1);
        let bytes = self
            .get_range(&obj.key, position..position + u64::from(size))
            .await?;
        if bytes.len() != size as usize {
            return Err(ReadError::Malformed {
                key: obj.key.clone(),
                reason: format!("block at {position}: got {} of {size} bytes", bytes.len()),
            });
        }
        let mut cache = lock(&self.blocks);
        cache.insert(key, bytes.clone(), bytes.len());
        metrics::gauge!("oxbow_block_cache_bytes").set(cache.weight as f64);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::build_test_batch;
    use crate::storage::object_format::ObjectWriter;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    fn batch(base: i64, n: usize) -> Vec<u8> {
        let value = [7u8; 100];
        let records: Vec<_> = (0..n).map(|_| (None, Some(&value[..]))).collect();
        build_test_batch(base, -1, -1, -1, &records)
    }

    #[tokio::test]
    async fn reads_each_stream_of_an_object_and_respects_limits() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut w = ObjectWriter::new(4096);
        for s in 0..3u64 {
            for i in 0..4u64 {
                w.push(StreamId(s), i * 5, i * 5 + 5, 5, &batch((i * 5) as i64, 5))
                    .unwrap();
            }
        }
        let (bytes, _) = w.finish();
        let size = bytes.len() as u64;
        store
            .put(&Path::from("o1"), PutPayload::from(bytes))
            .await
            .unwrap();
        let reader = ObjectReader::new(store, 16, 1 << 20);
        let obj = ObjectLocation {
            id: ObjectId(1),
            key: "o1".into(),
            size,
        };
        for s in 0..3u64 {
            let all = reader
                .read(&obj, StreamId(s), 0, 20, usize::MAX)
                .await
                .unwrap();
            assert_eq!(all.batches.len(), 4);
            assert_eq!(all.end_offset, 20);
            // From the middle of a batch: that batch first.
            let mid = reader.read(&obj, StreamId(s), 7, 20, 1).await.unwrap();
            assert_eq!(mid.batches.len(), 1);
            assert_eq!(mid.end_offset, 10);
            // Nothing at or past the committed end of the slice.
            let capped = reader
                .read(&obj, StreamId(s), 0, 10, usize::MAX)
                .await
                .unwrap();
            assert_eq!(capped.end_offset, 10);
        }
        assert!(reader
            .read(&obj, StreamId(9), 0, 20, usize::MAX)
            .await
            .unwrap()
            .batches
            .is_empty());
    }

    #[tokio::test]
    async fn tail_start_keeps_the_newest_blocks_within_the_budget() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // One batch per block: each is about 600 bytes.
        let mut w = ObjectWriter::new(100);
        for i in 0..6u64 {
            w.push(StreamId(1), i * 5, i * 5 + 5, 5, &batch((i * 5) as i64, 5))
                .unwrap();
        }
        let (bytes, _) = w.finish();
        let size = bytes.len() as u64;
        store
            .put(&Path::from("o"), PutPayload::from(bytes))
            .await
            .unwrap();
        let reader = ObjectReader::new(store, 16, 1 << 20);
        let obj = ObjectLocation {
            id: ObjectId(1),
            key: "o".into(),
            size,
        };
        let block = reader.index(&obj).await.unwrap().stream_blocks(StreamId(1))[0].size as u64;
        let at = |budget| reader.tail_start(&obj, StreamId(1), 0, 30, budget);
        // At least the last block, however small the budget.
        assert_eq!(at(1).await.unwrap(), 25);
        assert_eq!(at(block).await.unwrap(), 25);
        assert_eq!(at(2 * block).await.unwrap(), 20);
        assert_eq!(at(2 * block + 1).await.unwrap(), 15);
        // Never before the slice's start, nor counting blocks past its end.
        assert_eq!(at(u64::MAX).await.unwrap(), 0);
        assert_eq!(
            reader
                .tail_start(&obj, StreamId(1), 7, 30, u64::MAX)
                .await
                .unwrap(),
            7
        );
        assert_eq!(
            reader
                .tail_start(&obj, StreamId(1), 0, 10, block)
                .await
                .unwrap(),
            5
        );
    }

    #[tokio::test]
    async fn a_corrupt_object_is_an_error_not_a_panic() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&Path::from("bad"), PutPayload::from(vec![0u8; 500]))
            .await
            .unwrap();
        let reader = ObjectReader::new(store, 16, 1 << 20);
        let obj = ObjectLocation {
            id: ObjectId(2),
            key: "bad".into(),
            size: 500,
        };
        assert!(matches!(
            reader.read(&obj, StreamId(0), 0, 10, 100).await,
            Err(ReadError::Malformed { .. })
        ));
    }
}
