//! Partition actors. Each partition this broker owns is a kameo actor that
//! serialises appends: it checks idempotent-producer sequences, assigns
//! offsets by patching each batch's `baseOffset` (outside the CRC, so no
//! re-encoding and no decompression), and hands the bytes to the writer in
//! offset order.
//!
//! Reads never go through the actor: they use the shared `StreamState`
//! (high watermark) and the caches. The actor never acknowledges anything
//! itself; acknowledgements come from the writer after the controller commit.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kameo::actor::ActorRef;
use kameo::message::{Context, Message};
use kameo::{Actor, Reply};
use tokio::sync::oneshot;
use tracing::{info, warn};

use proto::image::TxnEvent;
use proto::StreamId;

use crate::errors::ErrorCode;
use crate::storage::batch::{self, BatchHeader};
use crate::storage::producer_state::{
    last_seq_of, BatchSeq, MarkerVerdict, ProducerInfo, ProducerStateTable, SequenceVerdict,
};
use crate::storage::reader::{ObjectLocation, ObjectReader};
use crate::storage::stream::StreamState;
use crate::storage::writer::{AckOutcome, Fate, PendingBatch, WriterHandle};

pub struct Partition {
    state: Arc<StreamState>,
    stream_epoch: u64,
    leader_epoch: i32,
    next_offset: u64,
    producers: ProducerStateTable,
    /// KIP-890 verification guards: producer id -> guard.
    guards: std::collections::HashMap<i64, u64>,
    next_guard: u64,
    writer: WriterHandle,
    /// Where a partition whose flush failed asks to be reopened.
    reopen: ReopenRequests,
}

/// Streams whose partition must be reopened at a new epoch, with the epoch
/// that failed (see [`crate::broker::Broker`]'s recovery).
pub type ReopenRequests = tokio::sync::mpsc::UnboundedSender<(StreamId, u64)>;

impl Partition {
    pub fn new(
        state: Arc<StreamState>,
        stream_epoch: u64,
        leader_epoch: i32,
        writer: WriterHandle,
        reopen: ReopenRequests,
    ) -> Self {
        let next_offset = state.high_watermark();
        Partition {
            state,
            stream_epoch,
            leader_epoch,
            next_offset,
            producers: ProducerStateTable::default(),
            guards: std::collections::HashMap::new(),
            next_guard: 0,
            writer,
            reopen,
        }
    }
}

/// The committed tail of a stream, read when its actor starts to rebuild
/// idempotent-producer state: (object, first offset, end offset) per slice.
pub struct StreamTail {
    pub slices: Vec<(ObjectLocation, u64, u64)>,
    pub reader: Arc<ObjectReader>,
}

pub struct PartitionArgs {
    pub partition: Partition,
    pub tail: StreamTail,
}

/// Attempts at reading each tail slice before the actor gives up starting.
const TAIL_READ_ATTEMPTS: u32 = 5;
/// Bytes of a stream's newest blocks replayed into the producer table.
const TAIL_READ_BUDGET: u64 = 8 * 1024 * 1024;

/// The rebuild could not read the stream tail: the actor does not start, so
/// produce answers NOT_LEADER_OR_FOLLOWER (retriable) and the broker opens
/// the partition afresh at its next reconcile.
#[derive(Debug)]
pub struct TailUnreadable(String);

impl std::fmt::Display for TailUnreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not read the stream tail: {}", self.0)
    }
}

impl Actor for Partition {
    type Args = PartitionArgs;
    type Error = TailUnreadable;

    async fn on_start(
        args: PartitionArgs,
        _actor_ref: ActorRef<Self>,
    ) -> Result<Self, TailUnreadable> {
        let mut p = args.partition;
        p.rebuild_producer_state(&args.tail).await?;
        Ok(p)
    }
}

impl Partition {
    /// Replays the headers of the stream's last committed batches into the
    /// producer table, so a producer retrying a batch committed before a
    /// restart or move is answered as a duplicate. Appends wait until this
    /// is done (the actor starts serving after `on_start`).
    ///
    /// A partial table would accept a retried batch twice, so the rebuild
    /// either reads every tail slice (retrying each a few times) or fails.
    async fn rebuild_producer_state(&mut self, tail: &StreamTail) -> Result<(), TailUnreadable> {
        // Newest first, until the budget is spent, then replayed oldest
        // first: only a producer's last batches matter, and a compacted
        // slice can be tens of MiB.
        let mut reads = Vec::new();
        let mut budget = TAIL_READ_BUDGET;
        for (obj, start, end) in tail.slices.iter().rev() {
            if budget == 0 {
                break;
            }
            let mut attempt = 0;
            let read = loop {
                let read = async {
                    let from = tail
                        .reader
                        .tail_start(obj, self.state.stream, *start, *end, budget)
                        .await?;
                    tail.reader
                        .read(obj, self.state.stream, from, *end, usize::MAX)
                        .await
                };
                match read.await {
                    Ok(read) => break read,
                    Err(e) => {
                        attempt += 1;
                        warn!(
                            stream_id = self.state.stream.0,
                            attempt,
                            error = %e,
                            "could not read the stream tail to rebuild idempotent-producer state"
                        );
                        if attempt >= TAIL_READ_ATTEMPTS {
                            return Err(TailUnreadable(e.to_string()));
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                    }
                }
            };
            budget = budget.saturating_sub(read.bytes as u64);
            reads.push((*start, read));
        }
        for (start, read) in reads.iter().rev() {
            for b in &read.batches {
                let Ok(h) = batch::parse_header(b) else {
                    continue;
                };
                let (Ok(base), Ok(last)) =
                    (u64::try_from(h.base_offset), u64::try_from(h.last_offset()))
                else {
                    continue;
                };
                if base < *start || h.producer_id < 0 {
                    continue;
                }
                if h.is_control() {
                    // Open and aborted transactions come from the metadata
                    // (see `Broker::reconcile`); a marker here only moves
                    // the producer's epoch.
                    if let Some((_, coordinator_epoch)) = batch::end_txn_marker(b) {
                        self.producers.record_marker(
                            h.producer_id,
                            h.producer_epoch,
                            coordinator_epoch,
                            h.max_timestamp,
                        );
                    }
                    continue;
                }
                self.producers.record(
                    h.producer_id,
                    h.producer_epoch,
                    BatchSeq {
                        first_seq: h.base_sequence,
                        last_seq: last_seq_of(h.base_sequence, h.record_count()),
                        base_offset: base,
                        last_offset: last,
                    },
                );
                self.producers.set_timestamp(h.producer_id, h.max_timestamp);
            }
        }
        for (pid, _) in self.state.txns().open_transactions() {
            self.producers.set_in_txn(pid, true);
        }
        if !self.producers.is_empty() {
            info!(
                stream_id = self.state.stream.0,
                producers = self.producers.len(),
                "rebuilt idempotent-producer state from the stream tail"
            );
        }
        Ok(())
    }
}

/// One validated batch of a produce request.
pub struct IncomingBatch {
    pub header: BatchHeader,
    pub bytes: Bytes,
}

pub struct Append {
    pub batches: Vec<IncomingBatch>,
    /// Written by a coordinator (transactional offset commits): no
    /// sequence check, as Kafka's `AppendOrigin.COORDINATOR`.
    pub coordinator: bool,
    /// KIP-890: the guard [`BeginVerification`] gave this producer, which
    /// must still stand for its first transactional batch here.
    pub guard: Option<u64>,
    /// Batches these must not commit without (see `PendingBatch::after`).
    pub after: Vec<Arc<Fate>>,
}

/// KIP-890: a producer's first transactional batch on this partition is
/// about to be verified with its coordinator. The guard returned must still
/// stand when the batch is appended: a marker for the producer in between
/// (its transaction ended meanwhile) removes it, so a verification that
/// raced an abort cannot open a transaction no marker will end.
pub struct BeginVerification {
    pub producer_id: i64,
}

#[derive(Reply)]
pub struct Guard(pub u64);

impl Message<BeginVerification> for Partition {
    type Reply = Guard;

    async fn handle(
        &mut self,
        msg: BeginVerification,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> Guard {
        self.next_guard += 1;
        let id = self.next_guard;
        if self.guards.len() >= MAX_GUARDS {
            self.guards.clear();
        }
        self.guards.insert(msg.producer_id, id);
        Guard(id)
    }
}

/// Bound on verification guards outstanding per partition.
const MAX_GUARDS: usize = 10_000;

/// What became of an append, before durability.
pub enum AppendStatus {
    /// Queued for the writer: the outcomes arrive on the receivers.
    Queued {
        base_offset: u64,
        acks: Vec<oneshot::Receiver<AckOutcome>>,
        /// The last batch's fate, for writes that must follow these.
        fate: Arc<Fate>,
    },
    /// Every batch was a retry of one already appended at these offsets;
    /// answer once the high watermark passes `last_offset`.
    Duplicate {
        base_offset: u64,
        last_offset: u64,
    },
    Refused(ErrorCode),
}

#[derive(Reply)]
pub struct AppendReply {
    pub status: AppendStatus,
    pub log_start: u64,
}

impl Message<Append> for Partition {
    type Reply = AppendReply;

    async fn handle(&mut self, msg: Append, _ctx: &mut Context<Self, Self::Reply>) -> AppendReply {
        let state = self.state.clone();
        let reply = |status| AppendReply {
            status,
            log_start: state.log_start(),
        };
        // After a failed flush, what this incarnation appended above the
        // committed end is void, but a commit of it may still be on its way
        // and the broker's view of the committed end may lag. So the
        // partition stops here and is reopened at a new stream epoch
        // (refusing any late commit of this one), from the committed end
        // and with producer state rebuilt from committed data.
        if let Err(code) = self.writable() {
            return reply(AppendStatus::Refused(code));
        }
        let mut acks = Vec::with_capacity(msg.batches.len());
        let mut last_fate = None;
        let mut first_base: Option<u64> = None;
        let mut duplicate: Option<(u64, u64)> = None;
        for b in msg.batches {
            let h = b.header;
            let count = h.record_count();
            if h.producer_id >= 0
                && !h.is_transactional()
                && self.state.txns().open_first(h.producer_id).is_some()
            {
                // A plain batch of a producer whose transaction is open here.
                return reply(AppendStatus::Refused(ErrorCode::InvalidTxnState));
            }
            let verdict = if msg.coordinator {
                match self.producers.epoch_of(h.producer_id) {
                    Some(e) if h.producer_epoch < e => SequenceVerdict::StaleEpoch,
                    _ => SequenceVerdict::Append,
                }
            } else {
                self.producers
                    .check(h.producer_id, h.producer_epoch, h.base_sequence, count)
            };
            match verdict {
                SequenceVerdict::Append => {}
                SequenceVerdict::Duplicate(seq) => {
                    let (lo, hi) = duplicate.unwrap_or((seq.base_offset, seq.last_offset));
                    duplicate = Some((lo.min(seq.base_offset), hi.max(seq.last_offset)));
                    continue;
                }
                SequenceVerdict::OutOfOrder => {
                    return reply(AppendStatus::Refused(ErrorCode::OutOfOrderSequenceNumber))
                }
                SequenceVerdict::StaleEpoch => {
                    return reply(AppendStatus::Refused(ErrorCode::InvalidProducerEpoch))
                }
            }
            let base = self.next_offset;
            let end = base + u64::from(count);
            let begins =
                h.is_transactional() && self.state.txns().open_first(h.producer_id).is_none();
            // A producer's batch must hold its guard; a coordinator's
            // (TxnOffsetCommit) must when it brings one.
            if begins && (!msg.coordinator || msg.guard.is_some()) {
                if msg.guard.is_none() || self.guards.get(&h.producer_id) != msg.guard.as_ref() {
                    // Its transaction ended since it was verified.
                    return reply(AppendStatus::Refused(ErrorCode::InvalidTxnState));
                }
                self.guards.remove(&h.producer_id);
            }
            let txn = begins.then_some(TxnEvent::Begin {
                producer_id: h.producer_id,
                offset: base,
            });
            let (rx, fate) = match self
                .submit(&b.bytes, base, end, count, h.max_timestamp, txn, &msg.after)
                .await
            {
                Ok(r) => r,
                Err(code) => return reply(AppendStatus::Refused(code)),
            };
            if h.is_transactional() {
                self.state.txns().record_data(h.producer_id, base);
            }
            self.producers.record(
                h.producer_id,
                h.producer_epoch,
                BatchSeq {
                    first_seq: h.base_sequence,
                    last_seq: last_seq_of(h.base_sequence, count),
                    base_offset: base,
                    last_offset: end - 1,
                },
            );
            self.producers.set_timestamp(h.producer_id, h.max_timestamp);
            if h.is_transactional() {
                self.producers.set_in_txn(h.producer_id, true);
            }
            self.next_offset = end;
            first_base.get_or_insert(base);
            acks.push(rx);
            last_fate = Some(fate);
        }
        match (first_base, last_fate, duplicate) {
            (Some(base_offset), Some(fate), _) => reply(AppendStatus::Queued {
                base_offset,
                acks,
                fate,
            }),
            (_, _, Some((base_offset, last_offset))) => reply(AppendStatus::Duplicate {
                base_offset,
                last_offset,
            }),
            _ => reply(AppendStatus::Refused(ErrorCode::CorruptMessage)),
        }
    }
}

impl Partition {
    /// Places one batch at `base` and hands it to the writer, to commit
    /// only after `after`; the receiver gets its outcome.
    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &self,
        bytes: &[u8],
        base: u64,
        end: u64,
        count: u32,
        max_timestamp: i64,
        txn: Option<TxnEvent>,
        after: &[Arc<Fate>],
    ) -> Result<(oneshot::Receiver<AckOutcome>, Arc<Fate>), ErrorCode> {
        let mut bytes = BytesMut::from(bytes);
        batch::set_base_offset(&mut bytes, base as i64);
        batch::set_partition_leader_epoch(&mut bytes, self.leader_epoch);
        let Some(permit) = self.writer.reserve(bytes.len()).await else {
            return Err(ErrorCode::KafkaStorageError);
        };
        let (tx, rx) = oneshot::channel();
        let fate = Arc::new(Fate::default());
        self.state.batch_submitted();
        let pending = PendingBatch {
            stream: self.state.clone(),
            stream_epoch: self.stream_epoch,
            base_offset: base,
            end_offset: end,
            record_count: count,
            max_timestamp,
            bytes: bytes.freeze(),
            ack: tx,
            permit,
            txn,
            fate: fate.clone(),
            after: after.to_vec(),
        };
        if self.writer.submit(pending).await.is_err() {
            warn!(
                stream_id = self.state.stream.0,
                "writer stopped; refusing append"
            );
            self.state.batch_resolved();
            return Err(ErrorCode::KafkaStorageError);
        }
        Ok((rx, fate))
    }

    /// Whether the partition may take a write now; a failed flush fences it
    /// and asks for a reopen.
    fn writable(&self) -> Result<(), ErrorCode> {
        if self.state.is_fenced() {
            return Err(ErrorCode::NotLeaderOrFollower);
        }
        if self.state.has_failed() {
            self.state.set_fenced();
            let _ = self.reopen.send((self.state.stream, self.stream_epoch));
            return Err(ErrorCode::NotLeaderOrFollower);
        }
        Ok(())
    }
}

/// A transaction marker (WriteTxnMarkers) for this partition.
pub struct AppendMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    pub timestamp_ms: i64,
    /// What the marker must not commit without (its Prepare* record).
    pub after: Vec<Arc<Fate>>,
}

/// A marker placed in the partition's queue.
pub struct PlacedMarker {
    pub offset: u64,
    /// Its outcome, once committed or failed.
    pub ack: oneshot::Receiver<AckOutcome>,
    pub fate: Arc<Fate>,
}

#[derive(Reply)]
pub struct MarkerReply(pub Result<PlacedMarker, ErrorCode>);

impl Message<AppendMarker> for Partition {
    type Reply = MarkerReply;

    async fn handle(
        &mut self,
        msg: AppendMarker,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> MarkerReply {
        MarkerReply(self.append_marker(msg).await)
    }
}

impl Partition {
    async fn append_marker(&mut self, msg: AppendMarker) -> Result<PlacedMarker, ErrorCode> {
        self.writable()?;
        match self.producers.check_marker(
            msg.producer_id,
            msg.producer_epoch,
            msg.coordinator_epoch,
        ) {
            MarkerVerdict::Append => {}
            MarkerVerdict::StaleEpoch => return Err(ErrorCode::InvalidProducerEpoch),
            MarkerVerdict::StaleCoordinator => return Err(ErrorCode::TransactionCoordinatorFenced),
        }
        let bytes = batch::build_end_txn_marker(
            msg.producer_id,
            msg.producer_epoch,
            msg.commit,
            msg.coordinator_epoch,
            msg.timestamp_ms,
        );
        let base = self.next_offset;
        let end = TxnEvent::End {
            producer_id: msg.producer_id,
            offset: base,
            commit: msg.commit,
        };
        let (ack, fate) = self
            .submit(
                &bytes,
                base,
                base + 1,
                1,
                msg.timestamp_ms,
                Some(end),
                &msg.after,
            )
            .await?;
        self.producers.record_marker(
            msg.producer_id,
            msg.producer_epoch,
            msg.coordinator_epoch,
            msg.timestamp_ms,
        );
        self.guards.remove(&msg.producer_id);
        self.state
            .txns()
            .record_marker(msg.producer_id, base, msg.commit);
        self.next_offset = base + 1;
        Ok(PlacedMarker {
            offset: base,
            ack,
            fate,
        })
    }
}

/// Asks a partition whose flush failed to reopen now rather than at its
/// next write (a coordinator whose record did not commit).
pub struct ReopenIfFailed;

impl Message<ReopenIfFailed> for Partition {
    type Reply = ();

    async fn handle(&mut self, _msg: ReopenIfFailed, _ctx: &mut Context<Self, Self::Reply>) {
        let _ = self.writable();
    }
}

/// Producers with state on this partition (DescribeProducers).
pub struct DescribeProducers;

#[derive(Reply)]
pub struct ProducersReply(pub Vec<ProducerInfo>);

impl Message<DescribeProducers> for Partition {
    type Reply = ProducersReply;

    async fn handle(
        &mut self,
        _msg: DescribeProducers,
        _ctx: &mut Context<Self, Self::Reply>,
    ) -> ProducersReply {
        let txns = self.state.txns();
        ProducersReply(self.producers.describe(|pid| txns.open_first(pid)))
    }
}

/// Asks the partition to stop taking appends and waits until everything it
/// handed to the writer has an outcome.
pub struct Close;

impl Message<Close> for Partition {
    type Reply = ();

    async fn handle(&mut self, _msg: Close, ctx: &mut Context<Self, Self::Reply>) {
        self.state.set_fenced();
        self.state.wait_until_drained().await;
        ctx.stop();
    }
}
