//! What the partition actor, the writer and readers share about one stream:
//! its high watermark (the committed end offset, with a signal that fetches
//! long-poll on) and its log start offset.
//!
//! Only the writer moves the high watermark, and only forward: a fetch never
//! sees an offset that is not committed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use proto::StreamId;
use tokio::sync::{watch, Notify};

#[derive(Debug)]
pub struct StreamState {
    pub stream: StreamId,
    pub topic: String,
    pub partition: i32,
    high_watermark: watch::Sender<u64>,
    log_start: AtomicU64,
    /// Batches handed to the writer without an outcome yet.
    pending: AtomicU64,
    drained: Notify,
    /// A flush of this stream failed: the partition must reset before the
    /// next append.
    failed: AtomicBool,
    /// The controller refused this broker's ranges: it no longer owns the
    /// stream at this epoch.
    fenced: AtomicBool,
}

impl StreamState {
    pub fn new(
        stream: StreamId,
        topic: String,
        partition: i32,
        log_start: u64,
        high_watermark: u64,
    ) -> Self {
        StreamState {
            stream,
            topic,
            partition,
            high_watermark: watch::Sender::new(high_watermark),
            log_start: AtomicU64::new(log_start),
            pending: AtomicU64::new(0),
            drained: Notify::new(),
            failed: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
        }
    }

    pub fn high_watermark(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    pub fn log_start(&self) -> u64 {
        self.log_start.load(Ordering::Acquire)
    }

    pub fn set_log_start(&self, offset: u64) {
        self.log_start.fetch_max(offset, Ordering::AcqRel);
    }

    /// Moves the high watermark forward; never back.
    pub fn advance_high_watermark(&self, end: u64) {
        self.high_watermark.send_if_modified(|hw| {
            if end > *hw {
                *hw = end;
                true
            } else {
                false
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    pub fn batch_submitted(&self) {
        self.pending.fetch_add(1, Ordering::AcqRel);
    }

    pub fn batch_resolved(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Returns once no batch of this stream is with the writer.
    pub async fn wait_until_drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub fn set_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn clear_failed(&self) {
        self.failed.store(false, Ordering::Release);
    }

    pub fn set_fenced(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }
}
