//! Idempotent-producer state of one partition: for each producer id, its
//! epoch and the sequence ranges of its last five batches, and the rules that
//! decide whether a new batch is in sequence, a duplicate, or refused.
//!
//! Pure: the partition actor calls `check` before assigning offsets and
//! `record` after; nothing here does I/O. The rules are Kafka's
//! (`ProducerAppendInfo.checkSequence` / `ProducerStateEntry`).

use std::collections::{HashMap, VecDeque};

/// Kafka keeps the last five batches per producer for duplicate detection;
/// it is also the most in-flight requests an idempotent producer may have.
pub const BATCHES_KEPT_PER_PRODUCER: usize = 5;
/// Bound on producers tracked per partition; the least recently written is
/// forgotten past it (Kafka expires them by `producer.id.expiration.ms`).
pub const MAX_PRODUCERS_PER_PARTITION: usize = 10_000;

const NO_PRODUCER_ID: i64 = -1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSeq {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSeq>,
    last_touch: u64,
    /// A transaction of this producer is open on the partition: the entry
    /// is never evicted (Kafka never expires such producers).
    in_txn: bool,
    /// Max timestamp of its last batch or marker (-1 unknown).
    last_timestamp: i64,
    /// Coordinator epoch of its last marker here (-1 before any).
    coordinator_epoch: i32,
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceVerdict {
    /// Not idempotent, or in sequence: append it.
    Append,
    /// Already appended: answer with the original offsets, append nothing.
    Duplicate(BatchSeq),
    /// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    OutOfOrder,
    /// Kafka's INVALID_PRODUCER_EPOCH (47): an older epoch than we know.
    StaleEpoch,
}

/// What to do with a transaction marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerVerdict {
    Append,
    /// INVALID_PRODUCER_EPOCH.
    StaleEpoch,
    /// TRANSACTION_COORDINATOR_FENCED.
    StaleCoordinator,
}

/// One producer's state on a partition, as DescribeProducers reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub epoch: i16,
    /// -1 when no batch of the current epoch is remembered.
    pub last_sequence: i32,
    /// First offset of its open transaction here, or -1.
    pub current_txn_start_offset: i64,
    pub last_timestamp: i64,
    pub coordinator_epoch: i32,
}

#[derive(Debug, Default)]
pub struct ProducerStateTable {
    producers: HashMap<i64, ProducerEntry>,
    clock: u64,
}

/// Sequence numbers wrap from i32::MAX to 0.
fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// The last sequence of a batch of `count` records starting at `first`.
pub fn last_seq_of(first: i32, count: u32) -> i32 {
    let span = i64::from(count.max(1)) - 1;
    ((i64::from(first) + span) % (i64::from(i32::MAX) + 1)) as i32
}

impl ProducerStateTable {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Judges a batch with producer id `pid`, epoch, first sequence and record count.
    pub fn check(&self, pid: i64, epoch: i16, first_seq: i32, count: u32) -> SequenceVerdict {
        if pid == NO_PRODUCER_ID {
            return SequenceVerdict::Append;
        }
        let Some(entry) = self.producers.get(&pid) else {
            // Unknown producer (new, or its state expired): any sequence goes.
            return SequenceVerdict::Append;
        };
        if epoch < entry.epoch {
            return SequenceVerdict::StaleEpoch;
        }
        if epoch > entry.epoch {
            // A new epoch must start at sequence 0.
            return if first_seq == 0 {
                SequenceVerdict::Append
            } else {
                SequenceVerdict::OutOfOrder
            };
        }
        let last_seq = last_seq_of(first_seq, count);
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return SequenceVerdict::Duplicate(*dup);
        }
        match entry.batches.back() {
            Some(last) if next_seq(last.last_seq) != first_seq => SequenceVerdict::OutOfOrder,
            _ => SequenceVerdict::Append,
        }
    }

    /// Records an appended batch (after `check` said `Append`).
    pub fn record(&mut self, pid: i64, epoch: i16, batch: BatchSeq) {
        if pid == NO_PRODUCER_ID {
            return;
        }
        let (entry, clock) = self.touch(pid, epoch);
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_KEPT_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
        entry.last_touch = clock;
    }

    /// The entry of `pid` (made at `epoch` if new, evicting the least
    /// recently written producer past the bound) and the clock tick of
    /// this write.
    fn touch(&mut self, pid: i64, epoch: i16) -> (&mut ProducerEntry, u64) {
        self.clock += 1;
        let clock = self.clock;
        if !self.producers.contains_key(&pid) && self.producers.len() >= MAX_PRODUCERS_PER_PARTITION
        {
            self.evict_one();
        }
        let entry = self.producers.entry(pid).or_insert_with(|| ProducerEntry {
            epoch,
            batches: VecDeque::with_capacity(BATCHES_KEPT_PER_PRODUCER),
            last_touch: clock,
            in_txn: false,
            last_timestamp: -1,
            coordinator_epoch: -1,
        });
        (entry, clock)
    }

    /// Forgets the least recently written producer without an open
    /// transaction.
    fn evict_one(&mut self) {
        if let Some((&oldest, _)) = self
            .producers
            .iter()
            .filter(|(_, e)| !e.in_txn)
            .min_by_key(|(_, e)| e.last_touch)
        {
            self.producers.remove(&oldest);
        }
    }

    /// Marks that `pid` has (or no longer has) a transaction open here.
    pub fn set_in_txn(&mut self, pid: i64, open: bool) {
        if let Some(e) = self.producers.get_mut(&pid) {
            e.in_txn = open;
        }
    }

    /// The epoch known for `pid`, if any.
    pub fn epoch_of(&self, pid: i64) -> Option<i16> {
        self.producers.get(&pid).map(|e| e.epoch)
    }

    /// Judges a transaction marker of `pid` at `epoch` from a coordinator
    /// at `coordinator_epoch`: Kafka refuses an older producer epoch
    /// (INVALID_PRODUCER_EPOCH) and an older coordinator
    /// (TRANSACTION_COORDINATOR_FENCED).
    pub fn check_marker(&self, pid: i64, epoch: i16, coordinator_epoch: i32) -> MarkerVerdict {
        match self.producers.get(&pid) {
            Some(e) if epoch < e.epoch => MarkerVerdict::StaleEpoch,
            Some(e) if coordinator_epoch < e.coordinator_epoch => MarkerVerdict::StaleCoordinator,
            _ => MarkerVerdict::Append,
        }
    }

    /// Notes the max timestamp of the producer's latest batch.
    pub fn set_timestamp(&mut self, pid: i64, timestamp: i64) {
        if let Some(e) = self.producers.get_mut(&pid) {
            e.last_timestamp = timestamp;
        }
    }

    /// Records a transaction marker: the producer takes the marker's epoch
    /// (a newer one clears its sequence window), its coordinator's epoch
    /// and timestamp, and its transaction ends.
    pub fn record_marker(&mut self, pid: i64, epoch: i16, coordinator_epoch: i32, timestamp: i64) {
        if pid == NO_PRODUCER_ID {
            return;
        }
        let (entry, clock) = self.touch(pid, epoch);
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.in_txn = false;
        entry.last_touch = clock;
        entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
        entry.last_timestamp = timestamp;
    }

    /// Every producer, by id; `open_txn` gives a producer's open
    /// transaction's first offset.
    pub fn describe(&self, open_txn: impl Fn(i64) -> Option<u64>) -> Vec<ProducerInfo> {
        let mut v: Vec<ProducerInfo> = self
            .producers
            .iter()
            .map(|(pid, e)| ProducerInfo {
                producer_id: *pid,
                epoch: e.epoch,
                last_sequence: e.batches.back().map_or(-1, |b| b.last_seq),
                current_txn_start_offset: open_txn(*pid)
                    .and_then(|o| i64::try_from(o).ok())
                    .unwrap_or(-1),
                last_timestamp: e.last_timestamp,
                coordinator_epoch: e.coordinator_epoch,
            })
            .collect();
        v.sort_by_key(|p| p.producer_id);
        v
    }

    pub fn clear(&mut self) {
        self.producers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(first: i32, count: u32, base: u64) -> BatchSeq {
        BatchSeq {
            first_seq: first,
            last_seq: last_seq_of(first, count),
            base_offset: base,
            last_offset: base + u64::from(count) - 1,
        }
    }

    #[test]
    fn in_sequence_duplicate_and_gap() {
        let mut t = ProducerStateTable::default();
        assert_eq!(t.check(7, 0, 0, 5), SequenceVerdict::Append);
        t.record(7, 0, seq(0, 5, 100));
        assert_eq!(t.check(7, 0, 5, 5), SequenceVerdict::Append);
        t.record(7, 0, seq(5, 5, 105));
        assert_eq!(
            t.check(7, 0, 0, 5),
            SequenceVerdict::Duplicate(seq(0, 5, 100))
        );
        assert_eq!(t.check(7, 0, 11, 1), SequenceVerdict::OutOfOrder);
        assert_eq!(t.check(7, 0, 9, 1), SequenceVerdict::OutOfOrder);
    }

    #[test]
    fn epochs() {
        let mut t = ProducerStateTable::default();
        t.record(7, 3, seq(0, 1, 0));
        assert_eq!(t.check(7, 2, 1, 1), SequenceVerdict::StaleEpoch);
        assert_eq!(t.check(7, 4, 1, 1), SequenceVerdict::OutOfOrder);
        assert_eq!(t.check(7, 4, 0, 1), SequenceVerdict::Append);
        t.record(7, 4, seq(0, 1, 1));
        // The old epoch's batches are gone: seq 0 at epoch 4 is now a duplicate of the new one.
        assert_eq!(
            t.check(7, 4, 0, 1),
            SequenceVerdict::Duplicate(seq(0, 1, 1))
        );
    }

    #[test]
    fn markers_move_the_epoch_and_fence_older_coordinators() {
        let mut t = ProducerStateTable::default();
        t.record(7, 2, seq(0, 1, 0));
        assert_eq!(t.check_marker(7, 1, 0), MarkerVerdict::StaleEpoch);
        assert_eq!(t.check_marker(7, 2, 0), MarkerVerdict::Append);
        t.record_marker(7, 3, 5, 1_000);
        assert_eq!(t.check_marker(7, 3, 4), MarkerVerdict::StaleCoordinator);
        assert_eq!(t.check_marker(7, 3, 5), MarkerVerdict::Append);
        // The newer epoch cleared the sequence window: sequence 0 starts it.
        assert_eq!(t.check(7, 3, 0, 1), SequenceVerdict::Append);
        let info = &t.describe(|_| None)[0];
        assert_eq!(
            (info.epoch, info.coordinator_epoch, info.last_timestamp),
            (3, 5, 1_000)
        );
        assert_eq!(info.last_sequence, -1);
    }

    #[test]
    fn only_five_batches_are_remembered() {
        let mut t = ProducerStateTable::default();
        for i in 0..6 {
            t.record(1, 0, seq(i, 1, i as u64));
        }
        assert_eq!(t.check(1, 0, 0, 1), SequenceVerdict::OutOfOrder);
        assert!(matches!(t.check(1, 0, 1, 1), SequenceVerdict::Duplicate(_)));
    }

    #[test]
    fn sequence_wraps() {
        let mut t = ProducerStateTable::default();
        t.record(1, 0, seq(i32::MAX - 1, 2, 0));
        assert_eq!(seq(i32::MAX - 1, 2, 0).last_seq, i32::MAX);
        assert_eq!(t.check(1, 0, 0, 3), SequenceVerdict::Append);
        assert_eq!(last_seq_of(i32::MAX, 2), 0);
    }

    #[test]
    fn non_idempotent_batches_are_never_checked() {
        let t = ProducerStateTable::default();
        assert_eq!(t.check(-1, -1, -1, 3), SequenceVerdict::Append);
    }

    /// A reference model of Kafka's idempotent-producer rules
    /// (`ProducerStateManager` / `ProducerAppendInfo.checkSequence`), written
    /// over the whole log of appended batches rather than a bounded table.
    mod model {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        pub enum Op {
            Append {
                pid: i64,
                epoch: i16,
                first: i32,
                count: u32,
            },
            /// The partition moves: the new owner rebuilds its table from
            /// the committed log, batch by batch, as `rebuild_producer_state`.
            Move,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                10 => (prop_oneof![Just(-1i64), Just(1), Just(2)], 0i16..3, 0i32..14, 1u32..4)
                    .prop_map(|(pid, epoch, first, count)| Op::Append { pid, epoch, first, count }),
                1 => Just(Op::Move),
            ]
        }

        #[derive(Debug, Clone, Copy)]
        struct Logged {
            pid: i64,
            epoch: i16,
            seq: BatchSeq,
        }

        fn model_verdict(
            log: &[Logged],
            pid: i64,
            epoch: i16,
            first: i32,
            count: u32,
        ) -> SequenceVerdict {
            if pid == -1 {
                return SequenceVerdict::Append;
            }
            let mine: Vec<&Logged> = log.iter().filter(|l| l.pid == pid).collect();
            let Some(last) = mine.last() else {
                return SequenceVerdict::Append; // a producer we know nothing about
            };
            if epoch < last.epoch {
                return SequenceVerdict::StaleEpoch;
            }
            if epoch > last.epoch {
                return if first == 0 {
                    SequenceVerdict::Append
                } else {
                    SequenceVerdict::OutOfOrder
                };
            }
            let last_seq = last_seq_of(first, count);
            let same_epoch: Vec<&&Logged> = mine.iter().filter(|l| l.epoch == epoch).collect();
            let recent = &same_epoch[same_epoch.len().saturating_sub(BATCHES_KEPT_PER_PRODUCER)..];
            if let Some(d) = recent
                .iter()
                .find(|l| l.seq.first_seq == first && l.seq.last_seq == last_seq)
            {
                return SequenceVerdict::Duplicate(d.seq);
            }
            let expected = if last.seq.last_seq == i32::MAX {
                0
            } else {
                last.seq.last_seq + 1
            };
            if first == expected {
                SequenceVerdict::Append
            } else {
                SequenceVerdict::OutOfOrder
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn the_table_agrees_with_kafkas_rules_across_moves(ops in proptest::collection::vec(op(), 1..80)) {
                let mut table = ProducerStateTable::default();
                let mut log: Vec<Logged> = Vec::new();
                let mut next_offset = 0u64;
                for op in ops {
                    match op {
                        Op::Move => {
                            table = ProducerStateTable::default();
                            for l in &log {
                                table.record(l.pid, l.epoch, l.seq);
                            }
                        }
                        Op::Append { pid, epoch, first, count } => {
                            let got = table.check(pid, epoch, first, count);
                            let want = model_verdict(&log, pid, epoch, first, count);
                            prop_assert_eq!(got, want, "pid {} epoch {} first {} count {}", pid, epoch, first, count);
                            if got == SequenceVerdict::Append {
                                let seq = BatchSeq {
                                    first_seq: first,
                                    last_seq: last_seq_of(first, count),
                                    base_offset: next_offset,
                                    last_offset: next_offset + u64::from(count) - 1,
                                };
                                next_offset += u64::from(count);
                                table.record(pid, epoch, seq);
                                log.push(Logged { pid, epoch, seq });
                            }
                        }
                    }
                }
            }
        }
    }
}
