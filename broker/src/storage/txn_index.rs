//! Transactions of one partition, as its readers need them: which
//! transactions are still open (so `read_committed` stops before them, at
//! the last stable offset) and which were aborted (so `read_committed`
//! consumers drop their records).
//!
//! Pure: the partition actor records a transaction's first batch and its
//! marker as it assigns their offsets; fetches ask for the LSO and the
//! aborted list given the high watermark. A transaction counts as decided
//! only once the high watermark has passed its marker, so the LSO never
//! passes data whose outcome is not committed, and it only moves forward
//! (entries are added at offsets at or above the high watermark).

use std::collections::{BTreeMap, HashMap, VecDeque};

/// Aborted transactions remembered per partition; the oldest is forgotten
/// past it (Kafka keeps them in per-segment index files).
pub const MAX_ABORTED_PER_PARTITION: usize = 100_000;

/// An aborted transaction, as Fetch lists it: its producer, its first
/// offset, and the offset of its abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenTxn {
    producer_id: i64,
    /// The offset of its marker, once appended (not yet under the HW).
    marker: Option<u64>,
}

#[derive(Debug, Default)]
pub struct TxnIndex {
    /// First offset -> transaction, for every transaction whose marker is
    /// not yet known to be below the high watermark.
    open: BTreeMap<u64, OpenTxn>,
    /// Producer -> first offset of its transaction without a marker.
    by_producer: HashMap<i64, u64>,
    /// Ordered by marker offset.
    aborted: VecDeque<AbortedTxn>,
}

impl TxnIndex {
    /// The first offset of `producer_id`'s transaction on this partition,
    /// if one is open (no marker yet).
    pub fn open_first(&self, producer_id: i64) -> Option<u64> {
        self.by_producer.get(&producer_id).copied()
    }

    /// Records a transactional batch of `producer_id` at `base_offset`: it
    /// opens the producer's transaction unless one is open already.
    pub fn record_data(&mut self, producer_id: i64, base_offset: u64) {
        if self.by_producer.contains_key(&producer_id) {
            return;
        }
        self.by_producer.insert(producer_id, base_offset);
        self.open.insert(
            base_offset,
            OpenTxn {
                producer_id,
                marker: None,
            },
        );
    }

    /// Records a marker of `producer_id` at `offset`. Returns whether it
    /// ended an open transaction (a marker may also come for a producer
    /// that wrote nothing here, or be a coordinator's retry).
    pub fn record_marker(&mut self, producer_id: i64, offset: u64, commit: bool) -> bool {
        let Some(first) = self.by_producer.remove(&producer_id) else {
            return false;
        };
        if let Some(t) = self.open.get_mut(&first) {
            t.marker = Some(offset);
        }
        if !commit {
            if self.aborted.len() >= MAX_ABORTED_PER_PARTITION {
                self.aborted.pop_front();
            }
            self.aborted.push_back(AbortedTxn {
                producer_id,
                first_offset: first,
                last_offset: offset,
            });
        }
        true
    }

    /// The last stable offset for high watermark `hw`: the first offset of
    /// the earliest transaction not yet decided below `hw`, or `hw`.
    /// Forgets transactions decided below `hw`.
    pub fn last_stable_offset(&mut self, hw: u64) -> u64 {
        while let Some((&first, t)) = self.open.first_key_value() {
            match t.marker {
                Some(m) if m < hw => {
                    self.open.remove(&first);
                }
                _ => return first.min(hw),
            }
        }
        // Entries decided out of order (an older transaction still open
        // keeps later decided ones) are pruned once they reach the front.
        hw
    }

    /// Aborted transactions that a read of `[from, upper)` must know about:
    /// those ending at or after `from` and starting before `upper`, oldest
    /// first (Kafka's `collectAbortedTxns`).
    pub fn aborted_between(&self, from: u64, upper: u64) -> Vec<AbortedTxn> {
        let start = self.aborted.partition_point(|a| a.last_offset < from);
        self.aborted
            .range(start..)
            .filter(|a| a.first_offset < upper)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below the log start.
    pub fn trim(&mut self, log_start: u64) {
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
    }

    /// Starts from what the metadata records for the stream: its open
    /// transactions (producer -> first offset) and aborted ones.
    pub fn seed(
        &mut self,
        open: &std::collections::BTreeMap<i64, u64>,
        aborted: impl IntoIterator<Item = AbortedTxn>,
    ) {
        for (&pid, &first) in open {
            self.record_data(pid, first);
        }
        self.aborted = aborted.into_iter().collect();
    }

    /// Transactions without a marker, as (producer id, first offset).
    pub fn open_transactions(&self) -> Vec<(i64, u64)> {
        let mut v: Vec<(i64, u64)> = self.by_producer.iter().map(|(p, f)| (*p, *f)).collect();
        v.sort_by_key(|(_, f)| *f);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lso_stops_at_the_first_undecided_transaction() {
        let mut t = TxnIndex::default();
        assert_eq!(t.last_stable_offset(10), 10);
        t.record_data(1, 10);
        t.record_data(1, 12); // same transaction
        t.record_data(2, 15);
        assert_eq!(t.open_first(1), Some(10));
        assert_eq!(t.last_stable_offset(20), 10);
        assert!(t.record_marker(1, 20, false));
        // The marker is appended but not yet under the HW.
        assert_eq!(t.last_stable_offset(20), 10);
        assert_eq!(t.last_stable_offset(21), 15);
        assert!(t.record_marker(2, 21, true));
        assert_eq!(t.last_stable_offset(22), 22);
        assert!(!t.record_marker(2, 22, true), "no open transaction left");
        assert_eq!(
            t.aborted_between(0, 22),
            vec![AbortedTxn {
                producer_id: 1,
                first_offset: 10,
                last_offset: 20
            }]
        );
        assert!(t.aborted_between(21, 22).is_empty());
        assert!(t.aborted_between(0, 10).is_empty());
        t.trim(21);
        assert!(t.aborted_between(0, 22).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Data(i64),
        Marker(i64, bool),
        Commit(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..4).prop_map(Op::Data),
            (0i64..4, any::<bool>()).prop_map(|(p, c)| Op::Marker(p, c)),
            (1u64..4).prop_map(Op::Commit),
        ]
    }

    proptest! {
        /// Against a model that keeps every transaction: the LSO is the
        /// earliest first offset of a transaction whose marker is not below
        /// the HW (or the HW), it never goes back, and the aborted list is
        /// exactly the aborted transactions decided (marker below the HW)
        /// that start below the LSO.
        #[test]
        fn matches_model(ops in proptest::collection::vec(op(), 1..80)) {
            let mut t = TxnIndex::default();
            // (pid, first, marker, commit)
            let mut model: Vec<(i64, u64, Option<u64>, bool)> = Vec::new();
            let mut next = 0u64;
            let mut hw = 0u64;
            let mut last_lso = 0u64;
            for op in ops {
                match op {
                    Op::Data(p) => {
                        t.record_data(p, next);
                        if !model.iter().any(|m| m.0 == p && m.2.is_none()) {
                            model.push((p, next, None, false));
                        }
                        next += 2;
                    }
                    Op::Marker(p, c) => {
                        t.record_marker(p, next, c);
                        if let Some(m) = model.iter_mut().find(|m| m.0 == p && m.2.is_none()) {
                            m.2 = Some(next);
                            m.3 = c;
                        }
                        next += 1;
                    }
                    Op::Commit(n) => hw = (hw + n).min(next),
                }
                let want = model
                    .iter()
                    .filter(|m| m.2.is_none_or(|x| x >= hw))
                    .map(|m| m.1)
                    .min()
                    .unwrap_or(hw)
                    .min(hw);
                let lso = t.last_stable_offset(hw);
                prop_assert_eq!(lso, want);
                prop_assert!(lso >= last_lso);
                last_lso = lso;
                let want_aborted: Vec<AbortedTxn> = {
                    let mut v: Vec<_> = model
                        .iter()
                        .filter(|m| !m.3 && m.2.is_some_and(|x| x < hw) && m.1 < lso)
                        .map(|m| AbortedTxn { producer_id: m.0, first_offset: m.1, last_offset: m.2.unwrap() })
                        .collect();
                    v.sort_by_key(|a| a.last_offset);
                    v
                };
                prop_assert_eq!(t.aborted_between(0, lso), want_aborted);
            }
        }
    }
}
