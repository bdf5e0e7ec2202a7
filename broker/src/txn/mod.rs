//! The transaction coordinator: Kafka's transactional producers (KIP-98),
//! their state kept the way Kafka keeps it, in the internal compacted topic
//! `__transaction_state`.
//!
//! A transactional id belongs to partition `abs(hashCode(id)) % partitions`
//! of that topic, and the broker owning the partition coordinates it, so
//! coordinators move and fail over like partitions (as groups do).
//! InitProducerId takes effect once its record is committed (meanwhile other
//! requests for the id wait for it, up to 1 s, then
//! CONCURRENT_TRANSACTIONS); AddPartitionsToTxn, Prepare* and Complete*
//! take effect once queued, and what relies on them is queued to commit
//! only if they do (the writer's ordered commit). EndTxn is answered once
//! its Prepare* record commits; the markers of partitions this broker owns
//! and then Complete* are queued right behind it, markers for other
//! brokers' partitions go through `peer` once it commits, and the id is
//! free once Complete* is queued. A new owner finishes any Prepare* it
//! loads. Ids idle past
//! `transactional.id.expiration.ms` are tombstoned.
//!
//! `decide` is pure (unit-tested against Kafka's rules); `coordinator` is
//! the async shell; `records` is the byte format of the topic.

pub mod coordinator;
pub mod records;

use std::collections::BTreeSet;

pub use coordinator::TxnCoordinator;

use crate::errors::ErrorCode;

/// The internal topic that holds transaction state.
pub const TXN_TOPIC: &str = "__transaction_state";
/// Kafka's `transaction.max.timeout.ms` default.
pub const MAX_TIMEOUT_MS: i32 = 900_000;

/// Kafka's `TransactionState`, with its persisted ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub epoch: i16,
    /// The epoch before the last bump (-1 if none), so a retried
    /// InitProducerId is answered with the bump it already got.
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, i32)>,
    pub start_ms: i64,
    pub last_update_ms: i64,
}

impl TxnMeta {
    pub fn value(&self) -> records::TxnValue {
        records::TxnValue {
            producer_id: self.producer_id,
            producer_epoch: self.epoch,
            timeout_ms: self.timeout_ms,
            state: self.state,
            partitions: self.partitions.iter().cloned().collect(),
            last_update_ms: self.last_update_ms,
            start_ms: self.start_ms,
        }
    }

    pub fn from_value(v: records::TxnValue) -> TxnMeta {
        TxnMeta {
            producer_id: v.producer_id,
            epoch: v.producer_epoch,
            last_epoch: -1,
            timeout_ms: v.timeout_ms,
            state: v.state,
            partitions: v.partitions.into_iter().collect(),
            start_ms: v.start_ms,
            last_update_ms: v.last_update_ms,
        }
    }

    /// Whether a marker is owed: a Prepare* not yet completed.
    pub fn needs_markers(&self) -> bool {
        self.state.is_prepare()
    }
}

/// What the coordinator does with a request, decided on the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Answer at once.
    Reply(ErrorCode),
    /// Write this state, then answer NONE (or the bumped id and epoch).
    Write(TxnMeta),
    /// InitProducerId on an open transaction: write this (an abort at a
    /// bumped epoch, which fences the old producer), finish it, and answer
    /// CONCURRENT_TRANSACTIONS so the client retries.
    FenceAndAbort(TxnMeta),
    /// InitProducerId whose epoch is exhausted: a new producer id is needed.
    NewProducerId(TxnMeta),
}

/// Kafka answers a producer fenced by a newer epoch with PRODUCER_FENCED,
/// or INVALID_PRODUCER_EPOCH for request versions that predate it.
fn fenced(version: i16, first_version_with_fenced: i16) -> ErrorCode {
    if version >= first_version_with_fenced {
        ErrorCode::ProducerFenced
    } else {
        ErrorCode::InvalidProducerEpoch
    }
}

/// InitProducerId for an id that has state. `expected` is the producer id
/// and epoch the client already has (KIP-360), or (-1, -1).
pub fn decide_init(
    m: &TxnMeta,
    expected: (i64, i16),
    timeout_ms: i32,
    now_ms: i64,
    version: i16,
) -> Step {
    if m.state.is_prepare() {
        return Step::Reply(ErrorCode::ConcurrentTransactions);
    }
    if expected.0 >= 0 {
        if expected.0 != m.producer_id {
            return Step::Reply(fenced(version, 4));
        }
        if expected.1 != m.epoch && expected.1 != m.last_epoch {
            return Step::Reply(fenced(version, 4));
        }
        if expected.1 == m.last_epoch && m.last_epoch != m.epoch && m.state == TxnState::Empty {
            // A retry of the bump already made: answer with it.
            return Step::Write(m.clone());
        }
    }
    let bumped = |state: TxnState| {
        let mut n = m.clone();
        n.last_epoch = m.epoch;
        n.epoch = m.epoch.saturating_add(1);
        n.state = state;
        n.last_update_ms = now_ms;
        n
    };
    match m.state {
        TxnState::Ongoing => {
            let mut n = bumped(TxnState::PrepareAbort);
            if m.epoch >= i16::MAX - 1 {
                n.epoch = m.epoch;
            }
            Step::FenceAndAbort(n)
        }
        _ => {
            let mut n = bumped(TxnState::Empty);
            n.timeout_ms = timeout_ms;
            n.partitions.clear();
            n.start_ms = -1;
            if m.epoch >= i16::MAX - 1 {
                n.last_epoch = -1;
                n.epoch = 0;
                Step::NewProducerId(n)
            } else {
                Step::Write(n)
            }
        }
    }
}

/// Common checks of AddPartitionsToTxn, AddOffsetsToTxn and EndTxn.
fn check_producer(
    m: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    version: i16,
) -> Result<&TxnMeta, ErrorCode> {
    let m = match m {
        Some(m) if m.producer_id == producer_id => m,
        _ => return Err(ErrorCode::InvalidProducerIdMapping),
    };
    if epoch != m.epoch {
        return Err(fenced(version, 2));
    }
    Ok(m)
}

/// AddPartitionsToTxn (v0-3) and AddOffsetsToTxn.
pub fn decide_add(
    m: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    now_ms: i64,
    version: i16,
) -> Step {
    let m = match check_producer(m, producer_id, epoch, version) {
        Ok(m) => m,
        Err(code) => return Step::Reply(code),
    };
    if m.state.is_prepare() {
        return Step::Reply(ErrorCode::ConcurrentTransactions);
    }
    if m.state == TxnState::Ongoing && partitions.iter().all(|p| m.partitions.contains(p)) {
        return Step::Reply(ErrorCode::None);
    }
    let mut n = m.clone();
    if m.state != TxnState::Ongoing {
        n.partitions.clear();
        n.start_ms = now_ms;
    }
    n.state = TxnState::Ongoing;
    n.partitions.extend(partitions.iter().cloned());
    n.last_update_ms = now_ms;
    Step::Write(n)
}

/// EndTxn.
pub fn decide_end(
    m: Option<&TxnMeta>,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
    version: i16,
) -> Step {
    let m = match check_producer(m, producer_id, epoch, version) {
        Ok(m) => m,
        Err(code) => return Step::Reply(code),
    };
    match (m.state, commit) {
        (TxnState::Ongoing, _) => {
            let mut n = m.clone();
            n.state = if commit {
                TxnState::PrepareCommit
            } else {
                TxnState::PrepareAbort
            };
            n.last_update_ms = now_ms;
            Step::Write(n)
        }
        (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
            Step::Reply(ErrorCode::None)
        }
        (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
            Step::Reply(ErrorCode::ConcurrentTransactions)
        }
        _ => Step::Reply(ErrorCode::InvalidTxnState),
    }
}

/// The Complete* state after every marker of a Prepare* is written.
pub fn completed(m: &TxnMeta, now_ms: i64) -> TxnMeta {
    let mut n = m.clone();
    n.state = if m.state == TxnState::PrepareCommit {
        TxnState::CompleteCommit
    } else {
        TxnState::CompleteAbort
    };
    n.partitions.clear();
    n.last_update_ms = now_ms;
    n
}

/// Whether an id is forgotten (Kafka's `transactional.id.expiration.ms`):
/// no transaction open or ending, and nothing happened to it for
/// `expiration_ms`.
pub fn expired(m: &TxnMeta, now_ms: i64, expiration_ms: i64) -> bool {
    matches!(
        m.state,
        TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
    ) && m.last_update_ms.saturating_add(expiration_ms) <= now_ms
}

/// An open transaction past its timeout is aborted at a bumped epoch
/// (which fences its producer), as Kafka's `abortTimedOutTransactions`.
pub fn timed_out(m: &TxnMeta, now_ms: i64) -> Option<TxnMeta> {
    if m.state != TxnState::Ongoing || now_ms <= m.start_ms.saturating_add(i64::from(m.timeout_ms))
    {
        return None;
    }
    let mut n = m.clone();
    if m.epoch < i16::MAX - 1 {
        n.last_epoch = m.epoch;
        n.epoch = m.epoch + 1;
    }
    n.state = TxnState::PrepareAbort;
    n.last_update_ms = now_ms;
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: TxnState) -> TxnMeta {
        TxnMeta {
            producer_id: 7,
            epoch: 3,
            last_epoch: 2,
            timeout_ms: 60_000,
            state,
            partitions: [("t".to_string(), 0)].into_iter().collect(),
            start_ms: 100,
            last_update_ms: 100,
        }
    }

    #[test]
    fn only_an_idle_id_expires_and_only_after_the_expiration() {
        for state in [
            TxnState::Empty,
            TxnState::CompleteCommit,
            TxnState::CompleteAbort,
        ] {
            let m = meta(state);
            assert!(!expired(&m, 100 + 999, 1000), "{state:?} expired early");
            assert!(expired(&m, 100 + 1000, 1000), "{state:?} kept");
        }
        for state in [
            TxnState::Ongoing,
            TxnState::PrepareCommit,
            TxnState::PrepareAbort,
            TxnState::Dead,
            TxnState::PrepareEpochFence,
        ] {
            assert!(!expired(&meta(state), i64::MAX, 1000), "{state:?} expired");
        }
        // The default (7 days) from a last update near the end of time.
        let mut m = meta(TxnState::Empty);
        m.last_update_ms = i64::MAX - 5;
        assert!(!expired(&m, i64::MAX - 1, 7 * 24 * 3600 * 1000));
    }

    #[test]
    fn init_bumps_the_epoch_or_fences_an_open_transaction() {
        let m = meta(TxnState::CompleteCommit);
        match decide_init(&m, (-1, -1), 5000, 200, 4) {
            Step::Write(n) => {
                assert_eq!((n.producer_id, n.epoch, n.last_epoch), (7, 4, 3));
                assert_eq!(n.state, TxnState::Empty);
                assert!(n.partitions.is_empty());
                assert_eq!(n.timeout_ms, 5000);
            }
            other => panic!("{other:?}"),
        }
        match decide_init(&meta(TxnState::Ongoing), (-1, -1), 5000, 200, 4) {
            Step::FenceAndAbort(n) => {
                assert_eq!((n.epoch, n.state), (4, TxnState::PrepareAbort));
                assert_eq!(n.partitions.len(), 1, "the abort covers its partitions");
            }
            other => panic!("{other:?}"),
        }
        for s in [TxnState::PrepareCommit, TxnState::PrepareAbort] {
            assert_eq!(
                decide_init(&meta(s), (-1, -1), 5000, 200, 4),
                Step::Reply(ErrorCode::ConcurrentTransactions)
            );
        }
        let mut exhausted = meta(TxnState::Empty);
        exhausted.epoch = i16::MAX - 1;
        assert!(matches!(
            decide_init(&exhausted, (-1, -1), 5000, 200, 4),
            Step::NewProducerId(n) if n.epoch == 0
        ));
    }

    #[test]
    fn init_with_an_expected_epoch_kip_360() {
        let m = meta(TxnState::Empty);
        assert_eq!(
            decide_init(&m, (8, 3), 5000, 0, 4),
            Step::Reply(ErrorCode::ProducerFenced)
        );
        assert_eq!(
            decide_init(&m, (8, 3), 5000, 0, 3),
            Step::Reply(ErrorCode::InvalidProducerEpoch)
        );
        assert_eq!(
            decide_init(&m, (7, 1), 5000, 0, 4),
            Step::Reply(ErrorCode::ProducerFenced)
        );
        // The retry of the bump from 2 to 3 gets 3 again.
        assert_eq!(decide_init(&m, (7, 2), 5000, 0, 4), Step::Write(m.clone()));
        assert!(matches!(decide_init(&m, (7, 3), 5000, 0, 4), Step::Write(n) if n.epoch == 4));
    }

    #[test]
    fn add_partitions_rules() {
        let m = meta(TxnState::Ongoing);
        let t0 = vec![("t".to_string(), 0)];
        let t1 = vec![("t".to_string(), 1)];
        assert_eq!(
            decide_add(None, 7, 3, &t0, 0, 3),
            Step::Reply(ErrorCode::InvalidProducerIdMapping)
        );
        assert_eq!(
            decide_add(Some(&m), 8, 3, &t0, 0, 3),
            Step::Reply(ErrorCode::InvalidProducerIdMapping)
        );
        assert_eq!(
            decide_add(Some(&m), 7, 2, &t0, 0, 3),
            Step::Reply(ErrorCode::ProducerFenced)
        );
        assert_eq!(
            decide_add(Some(&m), 7, 2, &t0, 0, 1),
            Step::Reply(ErrorCode::InvalidProducerEpoch)
        );
        assert_eq!(
            decide_add(Some(&m), 7, 3, &t0, 0, 3),
            Step::Reply(ErrorCode::None)
        );
        match decide_add(Some(&m), 7, 3, &t1, 500, 3) {
            Step::Write(n) => {
                assert_eq!(n.partitions.len(), 2);
                assert_eq!(n.start_ms, 100, "still the same transaction");
            }
            other => panic!("{other:?}"),
        }
        match decide_add(Some(&meta(TxnState::CompleteAbort)), 7, 3, &t1, 500, 3) {
            Step::Write(n) => {
                assert_eq!(n.state, TxnState::Ongoing);
                assert_eq!(n.partitions.len(), 1, "a new transaction starts empty");
                assert_eq!(n.start_ms, 500);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide_add(Some(&meta(TxnState::PrepareCommit)), 7, 3, &t1, 0, 3),
            Step::Reply(ErrorCode::ConcurrentTransactions)
        );
    }

    #[test]
    fn end_txn_rules() {
        let on = meta(TxnState::Ongoing);
        assert!(matches!(
            decide_end(Some(&on), 7, 3, true, 0, 3),
            Step::Write(n) if n.state == TxnState::PrepareCommit
        ));
        assert!(matches!(
            decide_end(Some(&on), 7, 3, false, 0, 3),
            Step::Write(n) if n.state == TxnState::PrepareAbort
        ));
        assert_eq!(
            decide_end(None, 7, 3, true, 0, 3),
            Step::Reply(ErrorCode::InvalidProducerIdMapping)
        );
        assert_eq!(
            decide_end(Some(&on), 7, 4, true, 0, 3),
            Step::Reply(ErrorCode::ProducerFenced)
        );
        let cases = [
            (TxnState::CompleteCommit, true, ErrorCode::None),
            (TxnState::CompleteAbort, false, ErrorCode::None),
            (TxnState::CompleteCommit, false, ErrorCode::InvalidTxnState),
            (
                TxnState::PrepareCommit,
                true,
                ErrorCode::ConcurrentTransactions,
            ),
            (TxnState::PrepareCommit, false, ErrorCode::InvalidTxnState),
            (TxnState::Empty, true, ErrorCode::InvalidTxnState),
        ];
        for (s, commit, want) in cases {
            assert_eq!(
                decide_end(Some(&meta(s)), 7, 3, commit, 0, 3),
                Step::Reply(want),
                "{s:?} commit={commit}"
            );
        }
    }

    #[test]
    fn timeouts_abort_at_a_new_epoch_and_complete_clears_partitions() {
        let on = meta(TxnState::Ongoing);
        assert_eq!(timed_out(&on, 60_100), None);
        let n = timed_out(&on, 60_101).expect("timed out");
        assert_eq!((n.state, n.epoch), (TxnState::PrepareAbort, 4));
        assert_eq!(timed_out(&meta(TxnState::Empty), i64::MAX), None);
        let c = completed(&n, 70_000);
        assert_eq!(c.state, TxnState::CompleteAbort);
        assert!(c.partitions.is_empty());
    }
}
