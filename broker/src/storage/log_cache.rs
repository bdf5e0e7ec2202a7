//! The log cache: recently committed record batches of every stream this
//! broker hosts, kept in memory so that tail reads never touch the object
//! store.
//!
//! Bounded by bytes across all streams; the oldest insertions are evicted
//! first. Holds only committed data (the writer inserts after the controller
//! commit), so whatever it returns is below the high watermark.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use proto::StreamId;

#[derive(Debug, Clone)]
struct CachedBatch {
    end_offset: u64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct Inner {
    streams: HashMap<StreamId, BTreeMap<u64, CachedBatch>>,
    /// Insertion order, for eviction: (stream, base offset, size).
    order: VecDeque<(StreamId, u64, usize)>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
pub struct LogCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// Batches read from the cache, in offset order.
#[derive(Debug, Default)]
pub struct CachedRead {
    pub batches: Vec<Bytes>,
    pub bytes: usize,
    /// End offset of the last batch returned.
    pub end_offset: u64,
}

impl LogCache {
    pub fn new(capacity_bytes: usize) -> Self {
        LogCache {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only cache contents behind:
        // they are still valid batches, so keep using them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a committed batch covering `[base_offset, end_offset)`.
    pub fn insert(&self, stream: StreamId, base_offset: u64, end_offset: u64, bytes: Bytes) {
        let size = bytes.len();
        if size > self.capacity {
            return;
        }
        let mut inner = self.lock();
        inner
            .streams
            .entry(stream)
            .or_default()
            .insert(base_offset, CachedBatch { end_offset, bytes });
        inner.order.push_back((stream, base_offset, size));
        inner.bytes += size;
        while inner.bytes > self.capacity {
            let Some((s, off, sz)) = inner.order.pop_front() else {
                break;
            };
            inner.bytes -= sz;
            if let Some(map) = inner.streams.get_mut(&s) {
                map.remove(&off);
                if map.is_empty() {
                    inner.streams.remove(&s);
                }
            }
        }
        metrics::gauge!("oxbow_log_cache_bytes").set(inner.bytes as f64);
    }

    /// Batches from the one containing `offset` onwards, up to `max_bytes`
    /// (at least one batch). `None` if the cache does not hold `offset`.
    pub fn read(&self, stream: StreamId, offset: u64, max_bytes: usize) -> Option<CachedRead> {
        let mut inner = self.lock();
        let result = inner.streams.get(&stream).and_then(|map| {
            let (&start, first) = map.range(..=offset).next_back()?;
            if first.end_offset <= offset {
                return None;
            }
            let mut read = CachedRead::default();
            let mut expected = start;
            for (&base, b) in map.range(start..) {
                if base != expected {
                    break; // a hole (evicted batch): stop at it
                }
                if !read.batches.is_empty() && read.bytes + b.bytes.len() > max_bytes {
                    break;
                }
                read.bytes += b.bytes.len();
                read.batches.push(b.bytes.clone());
                read.end_offset = b.end_offset;
                expected = b.end_offset;
            }
            Some(read)
        });
        if result.is_some() {
            inner.hits += 1;
            metrics::counter!("oxbow_log_cache_hits_total").increment(1);
        } else {
            inner.misses += 1;
            metrics::counter!("oxbow_log_cache_misses_total").increment(1);
        }
        result
    }

    /// Drops a stream's batches (partition closed or deleted).
    pub fn remove_stream(&self, stream: StreamId) {
        let mut inner = self.lock();
        if let Some(map) = inner.streams.remove(&stream) {
            let freed: usize = map.values().map(|b| b.bytes.len()).sum();
            inner.bytes -= freed;
            inner.order.retain(|(s, _, _)| *s != stream);
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_from_containing_batch_and_respects_limits() {
        let c = LogCache::new(1000);
        let s = StreamId(1);
        c.insert(s, 0, 10, Bytes::from(vec![0; 100]));
        c.insert(s, 10, 20, Bytes::from(vec![1; 100]));
        c.insert(s, 20, 25, Bytes::from(vec![2; 100]));
        let r = c.read(s, 15, 150).unwrap();
        assert_eq!(r.batches.len(), 1);
        assert_eq!(r.end_offset, 20);
        let r = c.read(s, 0, 1000).unwrap();
        assert_eq!(r.batches.len(), 3);
        assert_eq!(r.end_offset, 25);
        assert!(c.read(s, 25, 100).is_none());
        assert!(c.read(StreamId(2), 0, 100).is_none());
    }

    #[test]
    fn evicts_oldest_to_stay_bounded() {
        let c = LogCache::new(250);
        let s = StreamId(1);
        for i in 0..5u64 {
            c.insert(s, i * 10, i * 10 + 10, Bytes::from(vec![0; 100]));
        }
        assert!(c.size_bytes() <= 250);
        assert!(c.read(s, 0, 100).is_none());
        assert_eq!(c.read(s, 40, 100).unwrap().end_offset, 50);
    }
}
