//! A Jepsen-style history of a Kafka workload and the checker that judges it.
//!
//! The workload records what it did ([`History`]): each send of a value to a
//! partition with its outcome, each poll with the records it returned, and a
//! final full read of every partition. [`check`] then looks for the ways a
//! log can betray its clients (lost, moved, duplicated, invented or
//! resurrected records; consumers going backwards or skipping) and returns
//! one [`Violation`] per finding.
//!
//! Pure code: no I/O, no clocks, no randomness. Its cost is O(n log n) in
//! the number of operations and records, so a history of 10^5 operations is
//! checked in well under a second.
//!
//! What the history must promise: values are unique per application send
//! (a retried idempotent send of the same value is the same operation and
//! may appear several times), and a value is only ever sent to one
//! partition.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::client::{ClientError, Outcome};

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`-`partition`.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// How one attempt to send a value ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Acknowledged at this offset.
    Ok(i64),
    /// Definitely not written (the broker refused it, or it was never sent).
    Fail,
    /// Unknown: it may or may not have been written.
    Info,
}

impl SendOutcome {
    /// The outcome of a [`crate::client::ClusterClient::produce`] of one
    /// value: an offset is `Ok` (a negative one, as acks 0 returns, is
    /// `Info`), a definite error is `Fail`, any other error is `Info`.
    pub fn from_produce(result: &Result<i64, ClientError>) -> Self {
        match result {
            Ok(offset) if *offset >= 0 => SendOutcome::Ok(*offset),
            Ok(_) => SendOutcome::Info,
            Err(e) if e.outcome() == Outcome::Definite => SendOutcome::Fail,
            Err(_) => SendOutcome::Info,
        }
    }
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// One attempt to send `value` to `topic_partition`. Retries of the same
    /// value are further `Send`s of the same value.
    Send {
        process: u32,
        topic_partition: TopicPartition,
        value: u64,
        outcome: SendOutcome,
    },
    /// One poll of a partition by a consumer process: the (offset, value)
    /// records it returned, in order. `seek` marks the first poll after the
    /// process moved its position (a seek, a restart, a reset), which
    /// excuses it from following on from the process's previous poll.
    Poll {
        process: u32,
        topic_partition: TopicPartition,
        seek: bool,
        records: Vec<(i64, u64)>,
    },
    /// A read of the whole partition after the workload stopped, from the
    /// log start to the end. Retention may have moved the start: values
    /// acknowledged below `log_start` are gone by design, not lost.
    FinalRead {
        topic_partition: TopicPartition,
        log_start: i64,
        records: Vec<(i64, u64)>,
    },
}

/// The operations of one run, in the order they completed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        History::default()
    }

    /// Appends an operation (in completion order).
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Records one attempt to send `value`.
    pub fn send(
        &mut self,
        process: u32,
        topic_partition: TopicPartition,
        value: u64,
        outcome: SendOutcome,
    ) {
        self.push(Op::Send {
            process,
            topic_partition,
            value,
            outcome,
        });
    }

    /// Records one poll.
    pub fn poll(
        &mut self,
        process: u32,
        topic_partition: TopicPartition,
        seek: bool,
        records: Vec<(i64, u64)>,
    ) {
        self.push(Op::Poll {
            process,
            topic_partition,
            seek,
            records,
        });
    }

    /// Records the final full read of a partition, which started at (or,
    /// retention having moved on while it read, finished at) `log_start`.
    pub fn final_read(
        &mut self,
        topic_partition: TopicPartition,
        log_start: i64,
        records: Vec<(i64, u64)>,
    ) {
        self.push(Op::FinalRead {
            topic_partition,
            log_start,
            records,
        });
    }

    /// The operations, in the order they were recorded.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What the checker may assume about the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Offsets are dense (no transactions, no compaction): a consumer that
    /// reads offset n and then anything but n + 1 skipped a record.
    pub dense_offsets: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            dense_offsets: true,
        }
    }
}

/// One way the history breaks the log's promises. Each carries what is needed
/// to find the evidence; `Display` explains it in one line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Violation {
    /// A value acknowledged at `acked_offset` that the final read lacks.
    LostWrite {
        topic_partition: TopicPartition,
        value: u64,
        acked_offset: i64,
    },
    /// A value acknowledged at one offset but read only at others.
    WrongOffset {
        topic_partition: TopicPartition,
        value: u64,
        acked_offset: i64,
        read_offset: i64,
    },
    /// Sends of one value acknowledged at different offsets.
    ConflictingAcks {
        topic_partition: TopicPartition,
        value: u64,
        offsets: Vec<i64>,
    },
    /// A value read at more than one offset of its partition.
    Duplicate {
        topic_partition: TopicPartition,
        value: u64,
        offsets: Vec<i64>,
    },
    /// Different values read at the same offset.
    InconsistentOffset {
        topic_partition: TopicPartition,
        offset: i64,
        values: Vec<u64>,
    },
    /// A process read `next` after `previous` (within a poll or from one poll
    /// to its next) without seeking: its position went back or repeated.
    NonMonotonicPoll {
        process: u32,
        topic_partition: TopicPartition,
        previous: i64,
        next: i64,
    },
    /// A process read `next` right after `previous`, skipping the offsets in
    /// between, although offsets are dense.
    SkippedOffset {
        process: u32,
        topic_partition: TopicPartition,
        previous: i64,
        next: i64,
    },
    /// A value read that no send to this partition ever attempted.
    UnexpectedValue {
        topic_partition: TopicPartition,
        offset: i64,
        value: u64,
    },
    /// A value whose every send failed definitely, read anyway.
    FailedButPresent {
        topic_partition: TopicPartition,
        value: u64,
        offset: i64,
    },
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::LostWrite {
                topic_partition,
                value,
                acked_offset,
            } => write!(
                f,
                "lost write: value {value} acknowledged at {topic_partition}@{acked_offset} is missing from the final read"
            ),
            Violation::WrongOffset {
                topic_partition,
                value,
                acked_offset,
                read_offset,
            } => write!(
                f,
                "wrong offset: value {value} acknowledged at {topic_partition}@{acked_offset} was read at offset {read_offset} instead"
            ),
            Violation::ConflictingAcks {
                topic_partition,
                value,
                offsets,
            } => write!(
                f,
                "conflicting acks: value {value} on {topic_partition} was acknowledged at offsets {}",
                list(offsets)
            ),
            Violation::Duplicate {
                topic_partition,
                value,
                offsets,
            } => write!(
                f,
                "duplicate: value {value} was read at offsets {} of {topic_partition}",
                list(offsets)
            ),
            Violation::InconsistentOffset {
                topic_partition,
                offset,
                values,
            } => write!(
                f,
                "inconsistent offset: {topic_partition}@{offset} was read as values {}",
                list(values)
            ),
            Violation::NonMonotonicPoll {
                process,
                topic_partition,
                previous,
                next,
            } => write!(
                f,
                "non-monotonic poll: process {process} read {topic_partition}@{next} after @{previous} without seeking"
            ),
            Violation::SkippedOffset {
                process,
                topic_partition,
                previous,
                next,
            } => write!(
                f,
                "skipped offset: process {process} read {topic_partition}@{next} right after @{previous}, missing {} offset(s)",
                next.saturating_sub(*previous).saturating_sub(1)
            ),
            Violation::UnexpectedValue {
                topic_partition,
                offset,
                value,
            } => write!(
                f,
                "unexpected value: {topic_partition}@{offset} holds value {value}, which was never sent there"
            ),
            Violation::FailedButPresent {
                topic_partition,
                value,
                offset,
            } => write!(
                f,
                "failed but present: value {value} failed definitely on every send yet was read at {topic_partition}@{offset}"
            ),
        }
    }
}

/// A cheap hasher for the checker's integer keys (values, offsets, interned
/// partitions). Histories come from our own workload, not an adversary, so
/// SipHash's protection against chosen keys buys nothing here and costs
/// most of the running time.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing folded into the running state; high bits mixed
        // down because hashbrown uses the top seven bits as a tag.
        let h = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u64(u64::from(n as u32));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;

/// A partition's index among those the history names.
type PartitionIx = u32;

/// What the sends of one value, and the reads of it, add up to.
struct Value {
    partition: PartitionIx,
    /// Offsets of the acknowledged attempts.
    acked: Offsets,
    /// Some attempt may have written it (acknowledged or indeterminate).
    maybe_written: bool,
    /// Offsets it was read at in its own partition (polls and final read).
    read_at: Offsets,
    /// Its partition's final read holds it.
    in_final_read: bool,
}

/// A set of offsets that is almost always empty or a single one: the first
/// is kept inline, so the common case allocates nothing.
#[derive(Default)]
struct Offsets {
    first: Option<i64>,
    others: BTreeSet<i64>,
}

impl Offsets {
    fn insert(&mut self, offset: i64) {
        match self.first {
            None => self.first = Some(offset),
            Some(first) if first == offset => {}
            Some(_) => {
                self.others.insert(offset);
            }
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.others.len()
    }

    fn contains(&self, offset: i64) -> bool {
        self.first == Some(offset) || self.others.contains(&offset)
    }

    /// All of them, ascending.
    fn sorted(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self
            .first
            .into_iter()
            .chain(self.others.iter().copied())
            .collect();
        all.sort_unstable();
        all
    }

    fn min(&self) -> Option<i64> {
        let first = self.first?;
        Some(self.others.first().map_or(first, |&o| o.min(first)))
    }
}

/// The values read at one offset: the first, then any others.
struct AtOffset {
    first: u64,
    others: BTreeSet<u64>,
}

struct Checker<'h> {
    options: CheckOptions,
    /// Every partition the history names, by index.
    partitions: Vec<&'h TopicPartition>,
    index: HashMap<&'h TopicPartition, PartitionIx>,
    /// The log start of each partition's final read (none: no final read).
    final_start: Vec<Option<i64>>,
    values: IntMap<u64, Value>,
    /// Values read at each offset, per partition.
    by_offset: Vec<IntMap<i64, AtOffset>>,
    /// The last offset each (process, partition) read.
    last_read: IntMap<(u32, PartitionIx), i64>,
    found: Vec<Violation>,
}

/// Checks a history; returns every violation found, sorted and without
/// repeats (an empty list means the history is consistent).
///
/// A value's attempts are judged together: it is acknowledged if any attempt
/// was, and "failed" only if every attempt failed definitely. Judgements that
/// need the final read (lost writes) are made only for partitions that have
/// one.
pub fn check(history: &History, options: &CheckOptions) -> Vec<Violation> {
    let mut c = Checker {
        options: *options,
        partitions: Vec::new(),
        index: HashMap::new(),
        final_start: Vec::new(),
        values: IntMap::default(),
        by_offset: Vec::new(),
        last_read: IntMap::default(),
        found: Vec::new(),
    };
    // Sends first, so that a read may precede its send's completion.
    for op in history.ops() {
        if let Op::Send {
            topic_partition,
            value,
            outcome,
            ..
        } = op
        {
            let p = c.intern(topic_partition);
            c.record_send(p, *value, *outcome);
        }
    }
    for op in history.ops() {
        match op {
            Op::Send { .. } => {}
            Op::Poll {
                process,
                topic_partition,
                seek,
                records,
            } => {
                let p = c.intern(topic_partition);
                c.follow_poll(*process, p, *seek, records);
                for &(offset, value) in records {
                    c.observe(p, offset, value, false);
                }
            }
            Op::FinalRead {
                topic_partition,
                log_start,
                records,
            } => {
                let p = c.intern(topic_partition);
                c.final_start[p as usize] = Some(*log_start);
                for &(offset, value) in records {
                    c.observe(p, offset, value, true);
                }
            }
        }
    }
    c.judge_values();
    c.judge_offsets();
    let mut found = c.found;
    found.sort();
    found.dedup();
    found
}

impl<'h> Checker<'h> {
    fn intern(&mut self, tp: &'h TopicPartition) -> PartitionIx {
        if let Some(&p) = self.index.get(tp) {
            return p;
        }
        let p = PartitionIx::try_from(self.partitions.len())
            .expect("fewer than 2^32 partitions in a history");
        self.partitions.push(tp);
        self.index.insert(tp, p);
        self.final_start.push(None);
        self.by_offset.push(IntMap::default());
        p
    }

    fn tp(&self, p: PartitionIx) -> TopicPartition {
        self.partitions[p as usize].clone()
    }

    fn record_send(&mut self, partition: PartitionIx, value: u64, outcome: SendOutcome) {
        let v = self.values.entry(value).or_insert(Value {
            partition,
            acked: Offsets::default(),
            maybe_written: false,
            read_at: Offsets::default(),
            in_final_read: false,
        });
        match outcome {
            SendOutcome::Ok(offset) => {
                v.acked.insert(offset);
                v.maybe_written = true;
            }
            SendOutcome::Info => v.maybe_written = true,
            SendOutcome::Fail => {}
        }
    }

    /// Checks that a process's reads of a partition move forward, one offset
    /// at a time when offsets are dense.
    fn follow_poll(
        &mut self,
        process: u32,
        partition: PartitionIx,
        seek: bool,
        records: &[(i64, u64)],
    ) {
        let cursor = (process, partition);
        let mut previous = if seek {
            None
        } else {
            self.last_read.get(&cursor).copied()
        };
        for &(next, _) in records {
            if let Some(previous) = previous {
                if next <= previous {
                    self.found.push(Violation::NonMonotonicPoll {
                        process,
                        topic_partition: self.tp(partition),
                        previous,
                        next,
                    });
                } else if self.options.dense_offsets && next != previous + 1 {
                    self.found.push(Violation::SkippedOffset {
                        process,
                        topic_partition: self.tp(partition),
                        previous,
                        next,
                    });
                }
            }
            previous = Some(next);
        }
        match previous {
            Some(last) => {
                self.last_read.insert(cursor, last);
            }
            // An empty poll after a seek forgets the old position.
            None if seek => {
                self.last_read.remove(&cursor);
            }
            None => {}
        }
    }

    /// Notes that `value` was read at `partition`@`offset`.
    fn observe(&mut self, partition: PartitionIx, offset: i64, value: u64, final_read: bool) {
        let at_offset = &mut self.by_offset[partition as usize];
        match at_offset.get_mut(&offset) {
            Some(at) if at.first != value => {
                at.others.insert(value);
            }
            Some(_) => {}
            None => {
                at_offset.insert(
                    offset,
                    AtOffset {
                        first: value,
                        others: BTreeSet::new(),
                    },
                );
            }
        }
        match self.values.get_mut(&value) {
            Some(v) if v.partition == partition => {
                v.read_at.insert(offset);
                v.in_final_read |= final_read;
            }
            _ => self.found.push(Violation::UnexpectedValue {
                topic_partition: self.tp(partition),
                offset,
                value,
            }),
        }
    }

    fn judge_values(&mut self) {
        for (&value, v) in &self.values {
            let tp = || self.partitions[v.partition as usize].clone();
            if v.acked.len() > 1 {
                self.found.push(Violation::ConflictingAcks {
                    topic_partition: tp(),
                    value,
                    offsets: v.acked.sorted(),
                });
            }
            if v.read_at.len() > 1 {
                self.found.push(Violation::Duplicate {
                    topic_partition: tp(),
                    value,
                    offsets: v.read_at.sorted(),
                });
            }
            if let (1, Some(acked), Some(read)) = (v.acked.len(), v.acked.min(), v.read_at.min()) {
                if !v.read_at.contains(acked) {
                    self.found.push(Violation::WrongOffset {
                        topic_partition: tp(),
                        value,
                        acked_offset: acked,
                        read_offset: read,
                    });
                }
            }
            if let Some(acked) = v.acked.min() {
                let kept = self.final_start[v.partition as usize].is_some_and(|s| acked >= s);
                if kept && !v.in_final_read {
                    self.found.push(Violation::LostWrite {
                        topic_partition: tp(),
                        value,
                        acked_offset: acked,
                    });
                }
            }
            if let (false, Some(offset)) = (v.maybe_written, v.read_at.min()) {
                self.found.push(Violation::FailedButPresent {
                    topic_partition: tp(),
                    value,
                    offset,
                });
            }
        }
    }

    fn judge_offsets(&mut self) {
        for (p, at_offset) in self.by_offset.iter().enumerate() {
            for (&offset, at) in at_offset {
                if at.others.is_empty() {
                    continue;
                }
                let mut values: Vec<u64> = at.others.iter().copied().collect();
                values.push(at.first);
                values.sort_unstable();
                self.found.push(Violation::InconsistentOffset {
                    topic_partition: self.partitions[p].clone(),
                    offset,
                    values,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    /// A clean run on `partitions` partitions: `per_partition` values each,
    /// acknowledged in order; value v of partition p is p * 1_000_000 + i. A
    /// few more sends per partition failed definitely (never written) or
    /// ended unknown (some written, at the end). Two consumers per partition
    /// poll it all in chunks of `chunk`, the second one seeking back to the
    /// start half way; then each partition is read in full.
    fn clean(partitions: i32, per_partition: i64, chunk: usize) -> History {
        let mut h = History::new();
        for p in 0..partitions {
            let base = p as u64 * 1_000_000;
            let mut log: Vec<(i64, u64)> = Vec::new();
            for i in 0..per_partition {
                let value = base + i as u64;
                if i % 10 == 3 {
                    // A timed-out attempt, retried and acknowledged.
                    h.send(p as u32, tp(p), value, SendOutcome::Info);
                }
                h.send(p as u32, tp(p), value, SendOutcome::Ok(i));
                log.push((i, value));
            }
            // Failed for good: never in the log.
            h.send(7, tp(p), base + 900_000, SendOutcome::Fail);
            // Unknown, and in fact written.
            let n = per_partition;
            h.send(7, tp(p), base + 900_001, SendOutcome::Info);
            log.push((n, base + 900_001));
            // Unknown, and in fact not written.
            h.send(7, tp(p), base + 900_002, SendOutcome::Info);

            for (k, records) in log.chunks(chunk).enumerate() {
                h.poll(100, tp(p), k == 0, records.to_vec());
                if k == 1 {
                    h.poll(101, tp(p), false, Vec::new());
                }
            }
            let half = log.len() / 2;
            for (k, records) in log[..half].chunks(chunk).enumerate() {
                h.poll(101, tp(p), k == 0, records.to_vec());
            }
            for (k, records) in log.chunks(chunk).enumerate() {
                h.poll(101, tp(p), k == 0, records.to_vec());
            }
            h.final_read(tp(p), 0, log);
        }
        h
    }

    fn dense() -> CheckOptions {
        CheckOptions::default()
    }

    /// The kinds of violation found, by name.
    fn kinds(found: &[Violation]) -> BTreeSet<&'static str> {
        found
            .iter()
            .map(|v| match v {
                Violation::LostWrite { .. } => "LostWrite",
                Violation::WrongOffset { .. } => "WrongOffset",
                Violation::ConflictingAcks { .. } => "ConflictingAcks",
                Violation::Duplicate { .. } => "Duplicate",
                Violation::InconsistentOffset { .. } => "InconsistentOffset",
                Violation::NonMonotonicPoll { .. } => "NonMonotonicPoll",
                Violation::SkippedOffset { .. } => "SkippedOffset",
                Violation::UnexpectedValue { .. } => "UnexpectedValue",
                Violation::FailedButPresent { .. } => "FailedButPresent",
            })
            .collect()
    }

    /// Applies `plant` to a clean history and returns what the checker finds.
    fn planted(plant: impl FnOnce(&mut Vec<Op>)) -> Vec<Violation> {
        let mut h = clean(2, 40, 7);
        plant(&mut h.ops);
        check(&h, &dense())
    }

    fn only(found: &[Violation], kind: &str) {
        assert_eq!(
            kinds(found),
            BTreeSet::from([kind]),
            "found: {}",
            found
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    /// The final read of `p`.
    fn final_read_of(ops: &mut [Op], p: i32) -> &mut Vec<(i64, u64)> {
        ops.iter_mut()
            .find_map(|op| match op {
                Op::FinalRead {
                    topic_partition,
                    records,
                    ..
                } if *topic_partition == tp(p) => Some(records),
                _ => None,
            })
            .expect("clean histories read every partition")
    }

    /// Every record list (polls and final read) of `p`.
    fn reads_of(ops: &mut [Op], p: i32) -> impl Iterator<Item = &mut Vec<(i64, u64)>> {
        ops.iter_mut().filter_map(move |op| match op {
            Op::Poll {
                topic_partition,
                records,
                ..
            }
            | Op::FinalRead {
                topic_partition,
                records,
                ..
            } if *topic_partition == tp(p) => Some(records),
            _ => None,
        })
    }

    #[test]
    fn a_clean_history_passes() {
        let h = clean(3, 100, 9);
        assert_eq!(check(&h, &dense()), vec![]);
        assert_eq!(
            check(
                &h,
                &CheckOptions {
                    dense_offsets: false
                }
            ),
            vec![]
        );
        assert_eq!(check(&History::new(), &dense()), vec![]);
    }

    #[test]
    fn lost_write_is_found() {
        let found = planted(|ops| {
            final_read_of(ops, 1).retain(|&(o, _)| o != 12);
        });
        only(&found, "LostWrite");
        assert_eq!(
            found,
            vec![Violation::LostWrite {
                topic_partition: tp(1),
                value: 1_000_012,
                acked_offset: 12,
            }]
        );
    }

    #[test]
    fn wrong_offset_is_found() {
        // Value 5 of partition 0 is acknowledged at 6, but read at 5.
        let found = planted(|ops| {
            for op in ops.iter_mut() {
                if let Op::Send {
                    value: 5,
                    outcome: outcome @ SendOutcome::Ok(_),
                    ..
                } = op
                {
                    *outcome = SendOutcome::Ok(6);
                }
            }
        });
        only(&found, "WrongOffset");
        assert_eq!(
            found[0].to_string(),
            "wrong offset: value 5 acknowledged at t-0@6 was read at offset 5 instead"
        );
    }

    #[test]
    fn conflicting_acks_are_found() {
        let found = planted(|ops| {
            ops.push(Op::Send {
                process: 0,
                topic_partition: tp(0),
                value: 5,
                outcome: SendOutcome::Ok(9),
            })
        });
        only(&found, "ConflictingAcks");
    }

    #[test]
    fn duplicate_is_found() {
        // The written unknown send of partition 0 (at offset 40) appears
        // again at 41.
        let found = planted(|ops| {
            for records in reads_of(ops, 0) {
                if records.last() == Some(&(40, 900_001)) {
                    records.push((41, 900_001));
                }
            }
        });
        only(&found, "Duplicate");
        assert_eq!(
            found,
            vec![Violation::Duplicate {
                topic_partition: tp(0),
                value: 900_001,
                offsets: vec![40, 41],
            }]
        );
    }

    #[test]
    fn inconsistent_offset_is_found() {
        // One poll sees the unknown, unwritten send at offset 20, where
        // everything else sees value 20.
        let found = planted(|ops| {
            let poll = reads_of(ops, 0)
                .find(|r| r.contains(&(20, 20)))
                .expect("a poll of offset 20");
            for record in poll.iter_mut() {
                if record.0 == 20 {
                    record.1 = 900_002;
                }
            }
        });
        only(&found, "InconsistentOffset");
        assert_eq!(
            found[0].to_string(),
            "inconsistent offset: t-0@20 was read as values 20, 900002"
        );
    }

    #[test]
    fn non_monotonic_poll_is_found() {
        // Process 100 re-reads offsets 12 and 13 without seeking.
        let found = planted(|ops| {
            let at = ops
                .iter()
                .position(|op| matches!(op, Op::Poll { process: 100, records, .. } if records.first() == Some(&(14, 14))))
                .expect("process 100's third poll");
            ops.insert(
                at,
                Op::Poll {
                    process: 100,
                    topic_partition: tp(0),
                    seek: false,
                    records: vec![(12, 12), (13, 13)],
                },
            );
        });
        only(&found, "NonMonotonicPoll");
        assert!(found.contains(&Violation::NonMonotonicPoll {
            process: 100,
            topic_partition: tp(0),
            previous: 13,
            next: 12,
        }));
    }

    #[test]
    fn a_seek_excuses_going_back() {
        let mut h = clean(1, 20, 5);
        h.poll(100, tp(0), true, vec![(3, 3), (4, 4)]);
        assert_eq!(check(&h, &dense()), vec![]);
        h.poll(100, tp(0), false, vec![(4, 4)]);
        only(&check(&h, &dense()), "NonMonotonicPoll");
    }

    #[test]
    fn skipped_offset_is_found_and_only_when_dense() {
        let mut h = clean(2, 40, 7);
        for op in h.ops.iter_mut() {
            if let Op::Poll {
                process: 101,
                topic_partition,
                records,
                ..
            } = op
            {
                if *topic_partition == tp(1) {
                    records.retain(|&(o, _)| o != 30);
                }
            }
        }
        let found = check(&h, &dense());
        only(&found, "SkippedOffset");
        assert!(found.contains(&Violation::SkippedOffset {
            process: 101,
            topic_partition: tp(1),
            previous: 29,
            next: 31,
        }));
        assert_eq!(
            check(
                &h,
                &CheckOptions {
                    dense_offsets: false
                }
            ),
            vec![]
        );
    }

    #[test]
    fn skipping_between_polls_is_found() {
        let mut h = History::new();
        for i in 0..6 {
            h.send(0, tp(0), i, SendOutcome::Ok(i as i64));
        }
        h.poll(1, tp(0), true, vec![(0, 0), (1, 1)]);
        h.poll(1, tp(0), false, vec![(3, 3)]);
        let found = check(&h, &dense());
        assert_eq!(
            found,
            vec![Violation::SkippedOffset {
                process: 1,
                topic_partition: tp(0),
                previous: 1,
                next: 3,
            }]
        );
    }

    #[test]
    fn unexpected_value_is_found() {
        let found = planted(|ops| final_read_of(ops, 1).push((41, 555)));
        only(&found, "UnexpectedValue");
        assert_eq!(
            found[0].to_string(),
            "unexpected value: t-1@41 holds value 555, which was never sent there"
        );
    }

    #[test]
    fn a_value_read_in_another_partition_is_unexpected() {
        let found = planted(|ops| final_read_of(ops, 1).push((41, 900_001)));
        only(&found, "UnexpectedValue");
    }

    #[test]
    fn failed_but_present_is_found() {
        let found = planted(|ops| final_read_of(ops, 0).push((41, 900_000)));
        only(&found, "FailedButPresent");
        assert_eq!(
            found,
            vec![Violation::FailedButPresent {
                topic_partition: tp(0),
                value: 900_000,
                offset: 41,
            }]
        );
    }

    #[test]
    fn values_below_the_final_reads_log_start_are_trimmed_not_lost() {
        let mut h = History::new();
        for v in 0..4 {
            h.send(0, tp(0), v, SendOutcome::Ok(v as i64));
        }
        h.poll(7, tp(0), true, vec![(0, 0), (1, 1)]);
        // Retention moved the start to 2: 0 and 1 are gone by design.
        h.final_read(tp(0), 2, vec![(2, 2), (3, 3)]);
        assert_eq!(check(&h, &dense()), vec![]);
        // But not 2: acknowledged at the start, missing from the read.
        let mut h2 = History::new();
        for v in 0..4 {
            h2.send(0, tp(0), v, SendOutcome::Ok(v as i64));
        }
        h2.final_read(tp(0), 2, vec![(3, 3)]);
        assert_eq!(
            check(&h2, &dense()),
            vec![Violation::LostWrite {
                topic_partition: tp(0),
                value: 2,
                acked_offset: 2,
            }]
        );
    }

    #[test]
    fn a_failed_attempt_followed_by_an_acknowledged_retry_is_not_failed() {
        let mut h = History::new();
        h.send(0, tp(0), 1, SendOutcome::Fail);
        h.send(0, tp(0), 1, SendOutcome::Ok(0));
        h.final_read(tp(0), 0, vec![(0, 1)]);
        assert_eq!(check(&h, &dense()), vec![]);
    }

    #[test]
    fn every_violation_explains_itself_in_one_line() {
        let all = [
            planted(|ops| final_read_of(ops, 1).retain(|&(o, _)| o != 12)),
            planted(|ops| final_read_of(ops, 1).push((41, 555))),
            planted(|ops| final_read_of(ops, 0).push((41, 900_000))),
        ];
        for v in all.iter().flatten() {
            let line = v.to_string();
            assert!(!line.contains('\n') && line.len() < 200, "{line}");
        }
    }

    #[test]
    fn outcomes_from_the_client() {
        use crate::client::ClientError;
        use kafka_protocol::messages::ApiKey;
        assert_eq!(SendOutcome::from_produce(&Ok(4)), SendOutcome::Ok(4));
        assert_eq!(SendOutcome::from_produce(&Ok(-1)), SendOutcome::Info);
        let refused = ClientError::Broker {
            api: ApiKey::Produce,
            code: 6,
            message: None,
        };
        assert_eq!(SendOutcome::from_produce(&Err(refused)), SendOutcome::Fail);
        let timed_out = ClientError::Timeout {
            api: ApiKey::Produce,
            addr: "b:1".into(),
            after: std::time::Duration::from_secs(5),
        };
        assert_eq!(
            SendOutcome::from_produce(&Err(timed_out)),
            SendOutcome::Info
        );
    }

    /// The time a 10^5-operation check may take. Optimized it takes tens
    /// of milliseconds; an unoptimized test build on a busy machine is many
    /// times slower, so there the bound only catches quadratic behaviour
    /// (which would take minutes).
    /// Checks a large history (the time it took is printed, not asserted).
    #[test]
    #[allow(clippy::disallowed_methods)]
    fn a_large_history_checks_quickly() {
        // 8 partitions × 12_500 values: 10^5 acknowledged sends (1.1 × 10^5
        // with retries and failures), and 3.5 × 10^5 records read by polls
        // and final reads.
        let h = clean(8, 12_500, 50);
        assert!(h.len() > 100_000);
        let started = std::time::Instant::now();
        let found = check(&h, &dense());
        let took = started.elapsed();
        eprintln!("clean: {} ops checked in {took:?}", h.len());
        assert_eq!(found, vec![]);

        // And a history with a violation per value is no slower to report.
        let mut h = clean(8, 12_500, 50);
        for op in h.ops.iter_mut() {
            if let Op::Send {
                outcome: SendOutcome::Ok(offset),
                ..
            } = op
            {
                *offset += 1_000_000;
            }
        }
        let started = std::time::Instant::now();
        let found = check(&h, &dense());
        let took = started.elapsed();
        eprintln!("10^5 violations: {} ops checked in {took:?}", h.len());
        assert_eq!(found.len(), 100_000);
    }
}
