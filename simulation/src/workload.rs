//! The client workloads of a run, in the style of Jepsen's Kafka workload:
//! idempotent producers sending unique values, assign-mode consumers polling
//! every partition, and a final reader. Every operation lands in the shared
//! [`History`]; liveness failures are recorded next to it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::checker::{History, SendOutcome, TopicPartition};
use crate::client::{
    ClientError, ClusterClient, GroupAssignment, Outcome, ProducerIds,
    COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, EARLIEST_TIMESTAMP,
    FENCED_MEMBER_EPOCH, GROUP_ID_NOT_FOUND, NOT_COORDINATOR, OFFSET_OUT_OF_RANGE,
    REQUEST_TIMED_OUT, UNKNOWN_MEMBER_ID,
};
use crate::net::TurmoilNet;
use crate::seams::{splitmix64, SimClock, SIM_EPOCH_MS};

/// Shared parameters of the workload clients.
#[derive(Debug, Clone)]
pub struct Workload {
    pub seed: u64,
    pub bootstrap: Vec<String>,
    pub topic: String,
    pub partitions: u32,
    /// Producers stop sending at this simulated time.
    pub produce_until: Duration,
    /// The final read must be complete by then.
    pub final_read_by: Duration,
    /// Faults are healed at this time; from then on the cluster must serve.
    pub heal_at: Duration,
    /// A producer waits between 0 and twice this after each send, and a
    /// consumer this long after each round over the partitions: a client
    /// load that exercises the cluster without drowning the simulation.
    pub think: Duration,
    /// The topic's `retention.ms`, if it has one: retention then trims the
    /// partitions while the run goes on, and the readers follow the start.
    pub retention_ms: Option<u64>,
}

/// Sleeps a seeded time in `[0, 2 * mean)`.
async fn think(rng: &mut u64, mean: Duration) {
    *rng = splitmix64(*rng);
    let ms = mean.as_millis() as u64;
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(*rng % (2 * ms))).await;
    }
}

/// The history, plus what the clients found about liveness.
#[derive(Debug, Default)]
pub struct RunLog {
    pub history: History,
    /// Progress the cluster failed to make once faults stopped.
    pub liveness: Vec<String>,
    /// Committed offsets that went backwards or were never committed.
    pub offsets: Vec<String>,
    /// Offset commits acknowledged, and committed offsets read back.
    pub commits_acked: usize,
    pub commits_read: usize,
    /// KIP-848 members: what each ended with, and answers no member of a
    /// correct coordinator gets.
    pub members: BTreeMap<u32, MemberEnd>,
    pub group_errors: Vec<String>,
    /// The transactional workload's transactions and final read.
    pub txn: crate::txn::TxnLog,
}

/// A KIP-848 member's last successful heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberEnd {
    pub at: Duration,
    pub epoch: i32,
    pub owned: GroupAssignment,
}

impl RunLog {
    fn liveness(&mut self, failure: String) {
        self.liveness.push(failure);
    }
}

pub type SharedHistory = Rc<RefCell<RunLog>>;

/// After faults stop, a producer must get an acknowledgement within this.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(15);

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

fn client(w: &Workload, name: &str) -> ClusterClient {
    ClusterClient::new(Arc::new(TurmoilNet), w.bootstrap.clone(), name).with_clock(Arc::new(
        SimClock {
            epoch_ms: SIM_EPOCH_MS,
        },
    ))
}

/// The consumer group whose committed offsets the consumer keeps.
pub const GROUP: &str = "sim-group";

/// How often the consumer commits its positions and reads them back.
const COMMIT_EVERY: Duration = Duration::from_millis(500);

async fn backoff() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The KIP-848 group of the `member` workload.
pub const MEMBER_GROUP: &str = "sim-members";
/// How often a member heartbeats (the brokers' interval in the simulation).
pub const MEMBER_HEARTBEAT: Duration = Duration::from_millis(500);

/// One member of a KIP-848 consumer group over the workload's topic: it
/// heartbeats, takes what it is given and gives up what it is told to,
/// starts over when fenced, and keeps its last successful answer. It does
/// not read records: the checks are about the assignment (see
/// `check_members`).
pub async fn member(w: Workload, index: u32, stop_at: Duration, history: SharedHistory) {
    let mut c = client(&w, &format!("member{index}"));
    let member_id = format!("sim-member-{index}");
    let mut epoch = 0;
    let mut owned = GroupAssignment::new();
    while now() < stop_at {
        let topics = (epoch == 0).then(|| vec![w.topic.clone()]);
        let sent = if epoch == 0 {
            GroupAssignment::new()
        } else {
            owned.clone()
        };
        match c
            .consumer_heartbeat(MEMBER_GROUP, &member_id, epoch, topics, &sent)
            .await
        {
            Ok((new_epoch, assignment)) => {
                epoch = new_epoch;
                if let Some(a) = assignment {
                    owned = a;
                }
                history.borrow_mut().members.insert(
                    index,
                    MemberEnd {
                        at: now(),
                        epoch,
                        owned: owned.clone(),
                    },
                );
            }
            // Fenced or forgotten: give everything up and join again.
            Err(ClientError::Broker {
                code: FENCED_MEMBER_EPOCH | UNKNOWN_MEMBER_ID | GROUP_ID_NOT_FOUND,
                ..
            }) => {
                epoch = 0;
                owned.clear();
            }
            // The coordinator is moving or busy: ask again.
            Err(ClientError::Broker {
                code:
                    COORDINATOR_LOAD_IN_PROGRESS
                    | COORDINATOR_NOT_AVAILABLE
                    | NOT_COORDINATOR
                    | REQUEST_TIMED_OUT,
                ..
            }) => {}
            Err(e @ ClientError::Broker { .. }) => {
                history
                    .borrow_mut()
                    .group_errors
                    .push(format!("member{index} at {:?}: {e}", now()));
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
        tokio::time::sleep(MEMBER_HEARTBEAT).await;
    }
}

/// After the quiet period the members must agree: each heard from the
/// coordinator lately, all at one epoch, owning disjoint partitions that
/// cover the topic.
pub fn check_members(
    log: &RunLog,
    members: u32,
    partitions: u32,
    fresh_after: Duration,
) -> Vec<String> {
    let mut out: Vec<String> = log
        .group_errors
        .iter()
        .map(|e| format!("unexpected group answer: {e}"))
        .collect();
    if members == 0 {
        return out;
    }
    let mut seen: BTreeMap<(uuid::Uuid, i32), u32> = BTreeMap::new();
    let mut epochs = std::collections::BTreeSet::new();
    for i in 0..members {
        let Some(end) = log.members.get(&i) else {
            out.push(format!("group: member{i} never got an answer"));
            continue;
        };
        if end.at < fresh_after {
            out.push(format!(
                "group liveness: member{i}'s last answer was at {:?}, before {fresh_after:?}",
                end.at
            ));
        }
        epochs.insert(end.epoch);
        for (topic, ps) in &end.owned {
            for p in ps {
                if let Some(other) = seen.insert((*topic, *p), i) {
                    out.push(format!(
                        "group: partition {p} owned by member{other} and member{i} at the end"
                    ));
                }
            }
        }
    }
    if epochs.len() > 1 {
        out.push(format!(
            "group: members ended at different epochs {epochs:?}"
        ));
    }
    if seen.len() != partitions as usize {
        out.push(format!(
            "group: the members own {} of {partitions} partitions at the end",
            seen.len()
        ));
    }
    out
}

/// Creates the workload's topic, retrying until it exists.
async fn ensure_topic(w: &Workload, c: &mut ClusterClient) {
    loop {
        let configs: Vec<(&str, String)> = w
            .retention_ms
            .map(|ms| ("retention.ms", ms.to_string()))
            .into_iter()
            .collect();
        match c
            .create_topic(&w.topic, w.partitions as i32, &configs)
            .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(error = %e, "create topic failed; retrying");
                backoff().await;
            }
        }
    }
}

/// One idempotent producer: sends unique values one per batch, retrying a
/// batch with the same sequence until it gets a definite answer, and
/// starting over with a new producer id when it gives up on a batch.
pub async fn produce(w: Workload, process: u32, history: SharedHistory) {
    let mut c = client(&w, &format!("producer{process}"));
    ensure_topic(&w, &mut c).await;
    let mut rng = splitmix64(w.seed ^ u64::from(process) << 32);
    let mut counter = 0u64;
    let mut ids: Option<(i64, i16)> = None;
    let mut sequences: BTreeMap<i32, i32> = BTreeMap::new();
    let mut last_ack_after_heal: Option<Duration> = None;
    while now() < w.produce_until {
        let (pid, epoch) = match ids {
            Some(ids) => ids,
            None => match c.init_producer_id().await {
                Ok(got) => {
                    sequences.clear();
                    ids = Some(got);
                    got
                }
                Err(_) => {
                    backoff().await;
                    continue;
                }
            },
        };
        rng = splitmix64(rng);
        let partition = (rng % u64::from(w.partitions)) as i32;
        counter += 1;
        let value = (u64::from(process) << 40) | counter;
        let sequence = *sequences.get(&partition).unwrap_or(&0);
        let payload = [Bytes::copy_from_slice(&value.to_be_bytes())];
        let deadline = now() + Duration::from_secs(10);
        let mut indeterminate = false;
        let outcome = loop {
            let result = c
                .produce(
                    &w.topic,
                    partition,
                    Some(ProducerIds {
                        id: pid,
                        epoch,
                        base_sequence: sequence,
                    }),
                    &payload,
                    -1,
                )
                .await;
            match result {
                Ok(offset) => break SendOutcome::Ok(offset),
                Err(e) => {
                    indeterminate |= e.outcome() == Outcome::Indeterminate;
                    if !e.retriable() || now() >= deadline {
                        tracing::debug!(error = %e, value, "giving up on a batch");
                        break if indeterminate {
                            SendOutcome::Info
                        } else {
                            SendOutcome::Fail
                        };
                    }
                    backoff().await;
                }
            }
        };
        let tp = TopicPartition::new(w.topic.clone(), partition);
        match outcome {
            SendOutcome::Ok(_) => {
                sequences.insert(partition, sequence.wrapping_add(1));
                if now() >= w.heal_at && last_ack_after_heal.is_none() {
                    last_ack_after_heal = Some(now());
                }
            }
            // The producer's state for this partition is unknown: start over
            // with a new producer id, as a Kafka producer does.
            SendOutcome::Info | SendOutcome::Fail => ids = None,
        }
        {
            let mut log = history.borrow_mut();
            let h = &mut log.history;
            h.send(process, tp.clone(), value, outcome);
        }
        think(&mut rng, w.think).await;
    }
    if now() >= w.heal_at + LIVENESS_BOUND && last_ack_after_heal.is_none() {
        history.borrow_mut().liveness(format!(
            "producer{process}: no acknowledgement within {LIVENESS_BOUND:?} after faults stopped"
        ));
    }
}

fn decode(records: &[(i64, Bytes)]) -> Vec<(i64, u64)> {
    records
        .iter()
        .map(|(offset, v)| {
            let mut b = [0u8; 8];
            let n = v.len().min(8);
            b[8 - n..].copy_from_slice(&v[..n]);
            (*offset, u64::from_be_bytes(b))
        })
        .collect()
}

/// What the consumer committed for one partition.
#[derive(Debug, Default, Clone, Copy)]
struct Committed {
    /// Highest offset whose commit was acknowledged.
    acked: Option<i64>,
    /// Highest offset ever sent in a commit (acknowledged or not).
    invoked: Option<i64>,
}

/// An assign-mode consumer: polls every partition in turn from the start,
/// recording each non-empty poll. Every [`COMMIT_EVERY`] it commits its
/// positions in [`GROUP`] and reads them back: a committed offset must never
/// read lower than one acknowledged before, nor higher than any sent.
pub async fn consume(w: Workload, process: u32, history: SharedHistory) {
    let mut c = client(&w, &format!("consumer{process}"));
    let mut positions: BTreeMap<i32, (i64, bool)> =
        (0..w.partitions as i32).map(|p| (p, (0, true))).collect();
    let mut committed: BTreeMap<i32, Committed> = BTreeMap::new();
    let mut next_commit = now() + COMMIT_EVERY;
    while now() < w.produce_until {
        tokio::time::sleep(w.think).await;
        for p in 0..w.partitions as i32 {
            let (position, seek) = positions[&p];
            match c.fetch(&w.topic, p, position, 64 * 1024).await {
                Ok(r) if !r.records.is_empty() => {
                    let records = decode(&r.records);
                    let next = records.last().map(|(o, _)| o + 1).unwrap_or(position);
                    history.borrow_mut().history.poll(
                        process,
                        TopicPartition::new(w.topic.clone(), p),
                        seek,
                        records,
                    );
                    positions.insert(p, (next, false));
                }
                Ok(r) if position < r.log_start_offset => {
                    positions.insert(p, (r.log_start_offset, true));
                }
                Ok(_) => {}
                // Retention moved the start past the position: start again
                // from the new log start, as `auto.offset.reset=earliest`.
                Err(ClientError::Broker {
                    code: OFFSET_OUT_OF_RANGE,
                    ..
                }) => {
                    if let Ok(start) = c.list_offsets(&w.topic, p, EARLIEST_TIMESTAMP).await {
                        positions.insert(p, (start.max(position), true));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, partition = p, "poll failed");
                    backoff().await;
                }
            }
        }
        if now() >= next_commit {
            next_commit = now() + COMMIT_EVERY;
            commit_and_verify(&w, &mut c, &positions, &mut committed, &history).await;
        }
    }
    // Once faults have stopped, every acknowledged commit must read back.
    while now() < w.final_read_by {
        let mut all = true;
        for (&p, done) in &committed {
            if done.acked.is_none() {
                continue;
            }
            match c.fetch_offset(GROUP, &w.topic, p).await {
                Ok(read) => check_read(p, read, *done, &history, "after the faults"),
                Err(_) => all = false,
            }
        }
        if all {
            return;
        }
        backoff().await;
    }
    history.borrow_mut().liveness(format!(
        "consumer{process}: committed offsets could not be read back by {:?}",
        w.final_read_by
    ));
}

fn check_read(partition: i32, read: i64, done: Committed, history: &SharedHistory, when: &str) {
    let mut log = history.borrow_mut();
    log.commits_read += 1;
    if let Some(acked) = done.acked {
        if read < acked {
            log.offsets.push(format!(
                "committed offset of partition {partition} went backwards: {acked} was \
                 acknowledged, then OffsetFetch read {read} ({when})"
            ));
        }
    }
    if read > done.invoked.unwrap_or(-1) {
        log.offsets.push(format!(
            "committed offset of partition {partition} read as {read}, above every offset \
             ever committed ({:?}) ({when})",
            done.invoked
        ));
    }
}

async fn commit_and_verify(
    w: &Workload,
    c: &mut ClusterClient,
    positions: &BTreeMap<i32, (i64, bool)>,
    committed: &mut BTreeMap<i32, Committed>,
    history: &SharedHistory,
) {
    for (&p, &(position, _)) in positions {
        let done = committed.entry(p).or_default();
        if position == 0 || done.acked == Some(position) {
            continue;
        }
        done.invoked = Some(done.invoked.map_or(position, |i| i.max(position)));
        match c.commit_offset(GROUP, &w.topic, p, position).await {
            Ok(()) => {
                done.acked = Some(done.acked.map_or(position, |a| a.max(position)));
                history.borrow_mut().commits_acked += 1;
            }
            Err(e) => tracing::debug!(error = %e, partition = p, "offset commit failed"),
        }
    }
    for (&p, &done) in committed.iter() {
        if done.invoked.is_none() {
            continue;
        }
        if let Ok(read) = c.fetch_offset(GROUP, &w.topic, p).await {
            check_read(p, read, done, history, "during the run");
        }
    }
}

/// Reads every partition from the log start to its end once producers have
/// stopped, retrying until `final_read_by`.
pub async fn final_read(w: Workload, process: u32, history: SharedHistory) {
    let _ = process;
    while now() < w.produce_until + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = client(&w, "final-reader");
    for p in 0..w.partitions as i32 {
        let tp = TopicPartition::new(w.topic.clone(), p);
        match read_all(&w, &mut c, p).await {
            Ok((log_start, records)) => {
                history
                    .borrow_mut()
                    .history
                    .final_read(tp, log_start, records);
            }
            Err(e) => history.borrow_mut().liveness(format!(
                "final read of {tp} incomplete by {:?}: {e}",
                w.final_read_by
            )),
        }
    }
}

/// Reads a partition from its log start to its end: the log start (the
/// last one, if retention moved it while reading) and the records.
async fn read_all(
    w: &Workload,
    c: &mut ClusterClient,
    p: i32,
) -> Result<(i64, Vec<(i64, u64)>), String> {
    let mut last_error = String::from("no attempt");
    let mut log_start = earliest(w, c, p, &mut last_error).await?;
    let mut position = log_start;
    let mut out = Vec::new();
    loop {
        if now() > w.final_read_by {
            return Err(format!("stopped at offset {position}: {last_error}"));
        }
        match c.fetch(&w.topic, p, position, 1024 * 1024).await {
            Ok(r) => {
                let records = decode(&r.records);
                if let Some((last, _)) = records.last() {
                    position = last + 1;
                }
                out.extend(records);
                if position >= r.high_watermark {
                    return Ok((log_start, out));
                }
            }
            Err(ClientError::Broker {
                code: OFFSET_OUT_OF_RANGE,
                ..
            }) => {
                log_start = earliest(w, c, p, &mut last_error).await?;
                position = position.max(log_start);
            }
            Err(e) => {
                last_error = describe(&e);
                backoff().await;
            }
        }
    }
}

/// The partition's log start, retried until `final_read_by`.
async fn earliest(
    w: &Workload,
    c: &mut ClusterClient,
    p: i32,
    last_error: &mut String,
) -> Result<i64, String> {
    loop {
        if now() > w.final_read_by {
            return Err(last_error.clone());
        }
        match c.list_offsets(&w.topic, p, EARLIEST_TIMESTAMP).await {
            Ok(start) => return Ok(start),
            Err(e) => {
                *last_error = e.to_string();
                backoff().await;
            }
        }
    }
}

fn describe(e: &ClientError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(acked: Option<i64>, invoked: Option<i64>, got: i64) -> Vec<String> {
        let h: SharedHistory = Rc::default();
        check_read(3, got, Committed { acked, invoked }, &h, "test");
        let log = h.borrow();
        assert_eq!(log.commits_read, 1);
        log.offsets.clone()
    }

    #[test]
    fn committed_offsets_must_not_go_back_or_appear_from_nowhere() {
        assert_eq!(read(Some(10), Some(12), 10), Vec::<String>::new());
        assert_eq!(read(Some(10), Some(12), 12), Vec::<String>::new());
        assert_eq!(read(None, Some(5), -1), Vec::<String>::new());
        let back = read(Some(10), Some(12), 9);
        assert!(back[0].contains("went backwards"), "{back:?}");
        let invented = read(Some(10), Some(12), 13);
        assert!(invented[0].contains("above every offset"), "{invented:?}");
    }
}
