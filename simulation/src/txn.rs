//! The transactional workload: a producer with a transactional id writes
//! one record to each partition of its own topic per transaction, then
//! commits or aborts at random; faults make some transactions fail midway,
//! and a restarted producer (a new epoch) fences its predecessor. A final
//! `read_committed` reader reads every partition once the last stable
//! offsets have caught up with the ends.
//!
//! Checked ([`check`]): no aborted transaction's record is read; every
//! committed transaction's records are read, each exactly once; a
//! transaction whose outcome the producer could not learn is read whole or
//! not at all (never torn across partitions); nothing is read that no
//! transaction wrote; and the last stable offset never passes the high
//! watermark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::client::{ClientError, ClusterClient, ProducerIds, EARLIEST_TIMESTAMP};
use crate::net::TurmoilNet;
use crate::seams::{splitmix64, SimClock, SIM_EPOCH_MS};
use crate::workload::{SharedHistory, Workload};

/// The topic of the transactional workload, and its partitions.
pub const TXN_TOPIC: &str = "sim-txn";
pub const TXN_PARTITIONS: i32 = 2;
/// The producer's `transaction.timeout.ms`: a transaction abandoned by a
/// fault is aborted by the coordinator after this.
const TXN_TIMEOUT_MS: i32 = 10_000;

/// What the producer knows of one transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed,
    Aborted,
    /// The commit was asked for but its answer was lost.
    Unknown,
}

/// One transaction: its number and outcome. Its records are the values
/// `value(n, p)` on each partition `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRecord {
    pub n: u64,
    pub outcome: TxnOutcome,
}

/// What the transactional workload leaves for the checker.
#[derive(Debug, Default)]
pub struct TxnLog {
    pub txns: Vec<TxnRecord>,
    /// Per partition, (offset, value) as the final read_committed reader
    /// got them; `None` if it could not finish.
    pub reads: BTreeMap<i32, Vec<(i64, u64)>>,
    /// LSO above HW in some fetch answer, or a final read that never ended.
    pub errors: Vec<String>,
}

/// The value of transaction `n`'s record on partition `p`.
pub fn value(n: u64, p: i32) -> u64 {
    (n << 8) | u64::from(p as u8)
}

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

async fn backoff() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Error codes a transactional client retries the same step on.
fn retry_step(e: &ClientError) -> bool {
    e.retriable() || matches!(e.code(), Some(51))
}

/// Runs transactions until `w.produce_until`.
pub async fn produce(w: Workload, history: SharedHistory) {
    let tid = "sim-txn-producer";
    let mut c = client(&w, "txn-producer");
    while now() < w.produce_until {
        match c.create_topic(TXN_TOPIC, TXN_PARTITIONS, &[]).await {
            Ok(()) => break,
            Err(_) => backoff().await,
        }
    }
    let mut rng = splitmix64(w.seed ^ 0x7478_6e00);
    let mut ids: Option<(i64, i16)> = None;
    let mut sequences = [0i32; TXN_PARTITIONS as usize];
    let mut n = 0u64;
    let partitions: Vec<i32> = (0..TXN_PARTITIONS).collect();
    while now() < w.produce_until {
        let producer = match ids {
            Some(p) => p,
            None => match c.init_transactions(tid, TXN_TIMEOUT_MS).await {
                Ok(p) => {
                    sequences = [0; TXN_PARTITIONS as usize];
                    ids = Some(p);
                    p
                }
                Err(_) => {
                    backoff().await;
                    continue;
                }
            },
        };
        n += 1;
        let deadline = now() + Duration::from_secs(10);
        // Add both partitions, then write one record to each.
        let mut failed = loop {
            match c
                .add_partitions_to_txn(tid, producer, TXN_TOPIC, &partitions)
                .await
            {
                Ok(()) => break false,
                Err(e) if retry_step(&e) && now() < deadline => backoff().await,
                Err(_) => break true,
            }
        };
        for p in &partitions {
            if failed {
                break;
            }
            let seq = sequences[*p as usize];
            let payload = [Bytes::copy_from_slice(&value(n, *p).to_be_bytes())];
            failed = loop {
                let r = c
                    .produce_in(
                        TXN_TOPIC,
                        *p,
                        Some(ProducerIds {
                            id: producer.0,
                            epoch: producer.1,
                            base_sequence: seq,
                        }),
                        &payload,
                        -1,
                        Some(tid),
                    )
                    .await;
                match r {
                    Ok(_) => {
                        sequences[*p as usize] = seq.wrapping_add(1);
                        break false;
                    }
                    Err(e) if e.retriable() && now() < deadline => backoff().await,
                    Err(_) => break true,
                }
            };
        }
        rng = splitmix64(rng);
        let commit = !failed && !rng.is_multiple_of(4);
        let outcome = loop {
            match c.end_txn(tid, producer, commit).await {
                Ok(()) if commit => break TxnOutcome::Committed,
                Ok(()) => break TxnOutcome::Aborted,
                Err(e) if retry_step(&e) && now() < deadline => backoff().await,
                Err(_) => {
                    // Start over at a new epoch: that aborts the transaction
                    // unless its commit was already prepared.
                    ids = None;
                    break if commit {
                        TxnOutcome::Unknown
                    } else {
                        TxnOutcome::Aborted
                    };
                }
            }
        };
        if failed {
            // A write whose outcome is unknown leaves its sequence unknown:
            // start the next transaction at a new epoch, as Kafka's clients
            // do after aborting one with failed batches.
            ids = None;
        }
        history.borrow_mut().txn.txns.push(TxnRecord { n, outcome });
        rng = splitmix64(rng);
        let ms = w.think.as_millis() as u64;
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(rng % (2 * ms))).await;
        }
    }
}

/// Reads every partition read_committed once its last stable offset has
/// reached its high watermark (open transactions end by commit, abort or
/// timeout after the faults stop).
pub async fn final_read(w: Workload, history: SharedHistory) {
    let start_at = w.produce_until + Duration::from_secs(2);
    while now() < start_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = client(&w, "txn-final-reader");
    for p in 0..TXN_PARTITIONS {
        match read_committed(&w, &mut c, p, &history).await {
            Ok(records) => {
                history.borrow_mut().txn.reads.insert(p, records);
            }
            Err(e) => history.borrow_mut().txn.errors.push(format!(
                "read_committed of {TXN_TOPIC}-{p} incomplete by {:?}: {e}",
                w.final_read_by
            )),
        }
    }
}

async fn read_committed(
    w: &Workload,
    c: &mut ClusterClient,
    p: i32,
    history: &SharedHistory,
) -> Result<Vec<(i64, u64)>, String> {
    let mut last_error = String::from("no attempt");
    let mut position = loop {
        if now() > w.final_read_by {
            return Err(last_error);
        }
        match c.list_offsets(TXN_TOPIC, p, EARLIEST_TIMESTAMP).await {
            Ok(start) => break start,
            Err(e) => {
                last_error = e.to_string();
                backoff().await;
            }
        }
    };
    let mut out = Vec::new();
    loop {
        if now() > w.final_read_by {
            return Err(format!("stopped at offset {position}: {last_error}"));
        }
        match c
            .fetch_isolated(TXN_TOPIC, p, position, 1024 * 1024, true)
            .await
        {
            Ok(r) => {
                if r.last_stable_offset > r.high_watermark {
                    history.borrow_mut().txn.errors.push(format!(
                        "{TXN_TOPIC}-{p}: last stable offset {} above the high watermark {}",
                        r.last_stable_offset, r.high_watermark
                    ));
                }
                for (offset, v) in &r.records {
                    let mut b = [0u8; 8];
                    let k = v.len().min(8);
                    b[8 - k..].copy_from_slice(&v[..k]);
                    out.push((*offset, u64::from_be_bytes(b)));
                    position = offset + 1;
                }
                if r.records.is_empty() {
                    // Only markers or aborted records (go on after them),
                    // or nothing stable yet.
                    if r.next_offset > position {
                        position = r.next_offset;
                    } else if position >= r.high_watermark {
                        return Ok(out);
                    } else {
                        last_error = format!(
                            "last stable offset {} below the high watermark {}",
                            r.last_stable_offset, r.high_watermark
                        );
                        backoff().await;
                    }
                }
            }
            Err(e) => {
                last_error = e.to_string();
                backoff().await;
            }
        }
    }
}

/// The transactional workload's violations.
pub fn check(log: &TxnLog) -> Vec<String> {
    let mut out = log.errors.clone();
    if log.reads.len() != TXN_PARTITIONS as usize {
        return out; // an incomplete read is reported above
    }
    let outcome: BTreeMap<u64, TxnOutcome> = log.txns.iter().map(|t| (t.n, t.outcome)).collect();
    // value -> offsets it was read at, per partition
    let mut seen: BTreeMap<(i32, u64), Vec<i64>> = BTreeMap::new();
    for (p, records) in &log.reads {
        for (offset, v) in records {
            seen.entry((*p, *v)).or_default().push(*offset);
        }
    }
    for ((p, v), offsets) in &seen {
        let n = v >> 8;
        if v & 0xff != *p as u64 {
            out.push(format!(
                "txn: value {v:#x} read on partition {p}, written to another"
            ));
            continue;
        }
        if offsets.len() > 1 {
            out.push(format!(
                "txn: duplicate: transaction {n} read at offsets {offsets:?} of partition {p}"
            ));
        }
        match outcome.get(&n) {
            None => {
                // A transaction the producer had not recorded when the run
                // ended may be read only if it is whole (checked below).
            }
            Some(TxnOutcome::Aborted) => out.push(format!(
                "txn: aborted read: transaction {n} (aborted) read on partition {p} at {offsets:?}"
            )),
            _ => {}
        }
    }
    for t in &log.txns {
        let read: Vec<bool> = (0..TXN_PARTITIONS)
            .map(|p| seen.contains_key(&(p, value(t.n, p))))
            .collect();
        let all = read.iter().all(|r| *r);
        let none = read.iter().all(|r| !*r);
        match t.outcome {
            TxnOutcome::Committed if !all => out.push(format!(
                "txn: lost write: committed transaction {} read on partitions {read:?}",
                t.n
            )),
            TxnOutcome::Unknown if !(all || none) => out.push(format!(
                "txn: torn transaction {} read on partitions {read:?}",
                t.n
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_sees_each_kind_of_violation() {
        let txns = vec![
            TxnRecord {
                n: 1,
                outcome: TxnOutcome::Committed,
            },
            TxnRecord {
                n: 2,
                outcome: TxnOutcome::Aborted,
            },
            TxnRecord {
                n: 3,
                outcome: TxnOutcome::Unknown,
            },
        ];
        let good = TxnLog {
            txns: txns.clone(),
            reads: BTreeMap::from([
                (0, vec![(0, value(1, 0)), (5, value(3, 0))]),
                (1, vec![(0, value(1, 1)), (5, value(3, 1))]),
            ]),
            errors: vec![],
        };
        assert_eq!(check(&good), Vec::<String>::new());
        let bad = TxnLog {
            txns,
            reads: BTreeMap::from([
                (
                    0,
                    vec![(0, value(1, 0)), (2, value(2, 0)), (5, value(3, 0))],
                ),
                (1, vec![(0, value(1, 1)), (1, value(1, 1))]),
            ]),
            errors: vec![],
        };
        let v = check(&bad).join("\n");
        assert!(v.contains("aborted read"), "{v}");
        assert!(v.contains("torn"), "{v}");
        assert!(v.contains("duplicate"), "{v}");
        let lost = TxnLog {
            txns: vec![TxnRecord {
                n: 1,
                outcome: TxnOutcome::Committed,
            }],
            reads: BTreeMap::from([(0, vec![(0, value(1, 0))]), (1, vec![])]),
            errors: vec![],
        };
        assert!(check(&lost).join("").contains("lost write"));
    }
}
