//! Known bugs the simulation plants in the production code, one at a time,
//! to show that its checkers catch each of them (see `simulation/tests`).
//!
//! Only builds with the `planted-bugs` feature, which only the simulation
//! turns on, can plant anything; in every other build [`active`] is a
//! constant `false` and the checks that call it fold away. A planted bug is
//! per thread: a simulation runs every host on its own thread, so runs of
//! other seeds in the same process are unaffected.

/// A bug that can be planted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The broker answers a produce before the controller committed the
    /// batch (`broker::kafka::produce`).
    AckBeforeCommit,
    /// The metadata image accepts a commit whatever the stream's epoch and
    /// owner (`MetadataImage::commit_object`).
    SkipStreamEpochCheck,
    /// The broker reports the offset before the one it wrote a batch at, so
    /// two records are handed out one offset (`broker::kafka::produce`).
    OffsetTwice,
    /// The orphan collector deletes objects the metadata still references
    /// (`broker::lifecycle::collect_orphans`).
    DeleteReferencedObject,
    /// read_committed fetches read up to the high watermark with no aborted
    /// list, as if there were no transactions (`broker::kafka::fetch`).
    LsoIsHighWatermark,
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Plants `bug` (or none) on this thread.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    PLANTED.with(|p| p.set(bug));
}

/// Whether `bug` is planted on this thread.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|p| p.get()) == Some(bug)
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}
