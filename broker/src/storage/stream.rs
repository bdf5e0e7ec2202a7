//! What the partition actor, the writer and readers share about one stream:
//! its high watermark (the committed end offset, with a signal that fetches
//! long-poll on) and its log start offset.
//!
//! Only the writer moves the high watermark, and only forward: a fetch never
//! sees an offset that is not committed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use proto::StreamId;
use tokio::sync::{watch, Notify};

use super::txn_index::{AbortedTxn, TxnIndex};

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
    /// Open and aborted transactions (the partition actor records them as
    /// it assigns offsets; fetches read the LSO and aborted lists).
    txns: Mutex<TxnIndex>,
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
            txns: Mutex::new(TxnIndex::default()),
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
        self.txns().trim(self.log_start());
    }

    pub fn txns(&self) -> std::sync::MutexGuard<'_, TxnIndex> {
        self.txns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last stable offset: the high watermark, or the first offset of
    /// the earliest transaction not yet decided below it.
    pub fn last_stable_offset(&self) -> u64 {
        let hw = self.high_watermark();
        self.txns().last_stable_offset(hw)
    }

    /// Aborted transactions a read_committed read of `[from, upper)` needs.
    pub fn aborted_between(&self, from: u64, upper: u64) -> Vec<AbortedTxn> {
        self.txns().aborted_between(from, upper)
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
