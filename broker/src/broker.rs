//! The broker as a whole: registration with the controller, the metadata
//! follower, the writer, the caches, and the set of partition actors it runs
//! for the streams it owns. The Kafka protocol layer calls into this.
//!
//! Which partitions run here follows the metadata alone: `reconcile` opens an
//! actor for every stream owned by this broker and closes the others.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use kameo::actor::{ActorRef, Spawn};
use object_store::ObjectStore;
use proto::image::{BrokerEndpoint, CommandReply, MetadataCommand};
use proto::rpc::ControllerApi;
use proto::seams::Seams;
use proto::{BrokerId, StreamId};
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::BrokerConfig;
use crate::controller_client::RemoteController;
use crate::group::{GroupClock, GroupCoordinator};
use crate::metadata::{self, MetadataView};
use crate::partition::{Close, Partition, PartitionArgs, ReopenRequests, StreamTail};
use crate::storage::log_cache::LogCache;
use crate::storage::reader::{ObjectLocation, ObjectReader};
use crate::storage::stream::StreamState;
use crate::storage::txn_index::AbortedTxn;
use crate::storage::writer::{self, WriterHandle, WriterIdentity};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("registering with the controller: {0}")]
    Register(String),
    #[error("metadata did not catch up with the controller within {0:?}")]
    MetadataTimeout(Duration),
}

pub struct OpenPartition {
    pub actor: ActorRef<Partition>,
    pub state: Arc<StreamState>,
    pub stream_epoch: u64,
}

/// Producer ids handed out by this broker, taken from the controller in blocks.
#[derive(Default)]
struct ProducerIdBlock {
    next: i64,
    end: i64,
}

const PRODUCER_ID_BLOCK: u32 = 1000;
/// How long a proposer waits for its own write to reach the metadata view.
const VIEW_SYNC_WAIT: Duration = Duration::from_secs(10);
/// How often the broker reconciles its partitions with the metadata even
/// when the metadata has not changed.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

pub struct Broker {
    pub config: BrokerConfig,
    /// Network, wall clock and randomness (see `proto::seams`).
    pub seams: Seams,
    /// Prefix of every object key this cluster writes in the store.
    pub key_prefix: String,
    pub id: BrokerId,
    /// This broker's registration epoch (changes when it re-registers after
    /// being fenced).
    pub epoch: Arc<std::sync::atomic::AtomicU64>,
    pub controller: Arc<dyn ControllerApi>,
    pub metadata: Arc<MetadataView>,
    pub log_cache: Arc<LogCache>,
    pub reader: Arc<ObjectReader>,
    /// The group coordinator for the `__consumer_offsets` partitions owned here.
    pub groups: Arc<GroupCoordinator>,
    /// The transaction coordinator for the `__transaction_state` partitions owned here.
    pub txns: Arc<crate::txn::TxnCoordinator>,
    /// Connections to other brokers (transaction markers, verification).
    pub peers: crate::peer::Peers,
    writer: StdMutex<Option<WriterHandle>>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    partitions: StdMutex<HashMap<StreamId, Arc<OpenPartition>>>,
    reconcile_lock: Mutex<()>,
    /// Where failed partitions ask to be reopened at a new epoch, and the
    /// streams waiting for that (reconcile leaves them closed meanwhile).
    reopen_tx: ReopenRequests,
    reopening: StdMutex<HashSet<StreamId>>,
    producer_ids: Mutex<ProducerIdBlock>,
    stop: watch::Sender<bool>,
    tasks: StdMutex<Vec<JoinHandle<()>>>,
}

/// Reopens, at a new stream epoch, each partition whose flush failed: proposes
/// `ReopenStream` until it is applied (or the stream is no longer this
/// broker's at that epoch), then reconciles, which opens the partition from
/// the committed end with producer state rebuilt from committed data.
async fn reopen_loop(
    broker: Arc<Broker>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<(StreamId, u64)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, epoch) = tokio::select! {
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = stop.changed() => return,
        };
        broker
            .reopening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(stream);
        loop {
            let still_ours = broker.metadata.read(|img| {
                img.streams
                    .get(&stream)
                    .is_some_and(|s| s.owner == Some(broker.id) && s.epoch == epoch)
            });
            if !still_ours || *stop.borrow() {
                break;
            }
            let cmd = MetadataCommand::ReopenStream {
                stream,
                owner: broker.id,
                epoch,
            };
            match broker.propose(cmd).await {
                Ok(_) => {}
                Err(e) => {
                    warn!(stream_id = stream.0, error = %e, "reopening a failed partition; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        info!(
            stream_id = stream.0,
            failed_epoch = epoch,
            "reopening a partition after a failed flush"
        );
        broker
            .reopening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&stream);
        broker.reconcile().await;
    }
}

/// Heartbeats to the controllers every second until `stop` turns true;
/// registers again when the answer says this incarnation was fenced.
pub async fn heartbeat_loop(
    broker: Arc<Broker>,
    remote: Arc<RemoteController>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        match remote.heartbeat(broker.id, broker.current_epoch()).await {
            Ok(reply) if reply.fenced => {
                if let Err(e) = broker.reregister().await {
                    warn!(error = %e, "re-registering failed; retrying");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "heartbeat failed"),
        }
    }
}

impl Broker {
    /// Registers with the controller, catches up on metadata, starts the
    /// writer and opens the partitions this broker owns.
    pub async fn start(
        config: BrokerConfig,
        controller: Arc<dyn ControllerApi>,
        store: Arc<dyn ObjectStore>,
        key_prefix: String,
        seams: Seams,
    ) -> Result<Arc<Broker>, StartError> {
        let reply = controller
            .write(MetadataCommand::RegisterBroker {
                id: config.node_id,
                endpoint: BrokerEndpoint {
                    host: config.advertised_host.clone(),
                    port: config.advertised_port,
                },
                rack: config.rack.clone(),
            })
            .await
            .map_err(|e| StartError::Register(e.to_string()))?;
        let epoch = match reply.reply {
            CommandReply::BrokerRegistered { epoch } => epoch,
            other => return Err(StartError::Register(format!("unexpected reply {other:?}"))),
        };
        let epoch_cell = Arc::new(std::sync::atomic::AtomicU64::new(epoch));
        let view = Arc::new(MetadataView::default());
        let catch_up = Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + catch_up;
        while view.version() < reply.version {
            if tokio::time::Instant::now() > deadline {
                return Err(StartError::MetadataTimeout(catch_up));
            }
            view.pull(&*controller, Duration::from_millis(500)).await;
        }
        let log_cache = Arc::new(LogCache::new(config.storage.log_cache_bytes));
        let (writer, writer_task) = writer::spawn_writer(
            config.storage.clone(),
            store.clone(),
            controller.clone(),
            WriterIdentity {
                broker: config.node_id,
                broker_epoch: epoch_cell.clone(),
                key_prefix: key_prefix.clone(),
            },
            log_cache.clone(),
        );
        let reader = Arc::new(ObjectReader::new(
            store.clone(),
            config.storage.index_cache_entries,
            config.storage.block_cache_bytes,
        ));
        let groups = Arc::new(GroupCoordinator::new(
            config.groups.clone(),
            GroupClock::new(seams.clock.clone()),
            seams.entropy.clone(),
            view.clone(),
            log_cache.clone(),
            reader.clone(),
        ));
        let (reopen_tx, reopen_rx) = tokio::sync::mpsc::unbounded_channel();
        let broker = Arc::new(Broker {
            peers: crate::peer::Peers::new(seams.net.clone(), config.node_id),
            seams,
            key_prefix: key_prefix.clone(),
            id: config.node_id,
            epoch: epoch_cell,
            config,
            controller: controller.clone(),
            metadata: view.clone(),
            log_cache,
            reader,
            groups,
            txns: Arc::new(crate::txn::TxnCoordinator::new()),
            writer: StdMutex::new(Some(writer)),
            writer_task: Mutex::new(Some(writer_task)),
            partitions: StdMutex::new(HashMap::new()),
            reconcile_lock: Mutex::new(()),
            reopen_tx,
            reopening: StdMutex::new(HashSet::new()),
            producer_ids: Mutex::new(ProducerIdBlock::default()),
            stop: watch::Sender::new(false),
            tasks: StdMutex::new(Vec::new()),
        });
        broker.txns.attach(&broker);
        broker.reconcile().await;
        info!(
            broker_id = broker.id,
            broker_epoch = epoch,
            "broker registered"
        );

        let follower = tokio::spawn(metadata::follow(
            view.clone(),
            controller,
            broker.stop.subscribe(),
        ));
        let b = broker.clone();
        let mut versions = view.subscribe();
        let mut stop = broker.stop.subscribe();
        let reconciler = tokio::spawn(async move {
            // Also on a timer: a partition whose actor could not start (its
            // stream tail was unreadable) is opened again without waiting
            // for the next metadata change.
            let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = versions.changed() => if r.is_err() { return },
                    _ = tick.tick() => if !b.has_dead_partition() { continue },
                    _ = stop.changed() => return,
                }
                b.reconcile().await;
            }
        });
        let reopener = tokio::spawn(reopen_loop(
            broker.clone(),
            reopen_rx,
            broker.stop.subscribe(),
        ));
        let lifecycle = tokio::spawn(crate::lifecycle::run(
            broker.clone(),
            store,
            broker.stop.subscribe(),
        ));
        broker
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([follower, reconciler, reopener, lifecycle]);
        Ok(broker)
    }

    /// Writes a command through the controller and waits until this broker's
    /// metadata view includes it, so what follows sees its effect.
    pub async fn propose(
        &self,
        cmd: MetadataCommand,
    ) -> Result<CommandReply, proto::rpc::RpcError> {
        let out = self.controller.write(cmd).await?;
        self.metadata.wait_for(out.version, VIEW_SYNC_WAIT).await;
        Ok(out.reply)
    }

    pub fn current_epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Registers again after the controller fenced this broker (it missed its
    /// session): a new epoch, so anything the old one still has in flight is
    /// refused. Its streams were moved away when it was fenced; reconcile
    /// closes their actors.
    pub async fn reregister(&self) -> Result<u64, String> {
        // A broker shutting down has handed its partitions off by fencing
        // itself; registering again would make it live (and fenceable) anew.
        if *self.stop.borrow() {
            return Err("the broker is shutting down".to_string());
        }
        let out = self
            .controller
            .write(MetadataCommand::RegisterBroker {
                id: self.id,
                endpoint: BrokerEndpoint {
                    host: self.config.advertised_host.clone(),
                    port: self.config.advertised_port,
                },
                rack: self.config.rack.clone(),
            })
            .await
            .map_err(|e| e.to_string())?;
        let CommandReply::BrokerRegistered { epoch } = out.reply else {
            return Err(format!("unexpected reply {:?}", out.reply));
        };
        self.epoch
            .store(epoch, std::sync::atomic::Ordering::Release);
        self.metadata
            .wait_for(out.version, Duration::from_secs(10))
            .await;
        self.reconcile().await;
        warn!(
            broker_id = self.id,
            broker_epoch = epoch,
            "re-registered after being fenced"
        );
        Ok(epoch)
    }

    fn partitions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Arc<OpenPartition>>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker owning `topic`/`partition`, its stream, and the owner's
    /// `host:port`.
    pub fn owner_address(
        &self,
        topic: &str,
        partition: i32,
    ) -> Option<(proto::BrokerId, StreamId, String)> {
        self.metadata.read(|img| {
            let s = img.stream_of(topic, partition)?;
            let owner = s.owner?;
            let b = img.brokers.get(&owner)?;
            Some((
                owner,
                s.id,
                format!("{}:{}", b.endpoint.host, b.endpoint.port),
            ))
        })
    }

    pub fn partition(&self, stream: StreamId) -> Option<Arc<OpenPartition>> {
        self.partitions_lock().get(&stream).cloned()
    }

    pub fn partition_count(&self) -> usize {
        self.partitions_lock().len()
    }

    /// Opens actors for streams this broker owns and closes the rest.
    pub async fn reconcile(&self) {
        let _guard = self.reconcile_lock.lock().await;
        if *self.stop.borrow() {
            return; // shutting down: nothing may open now
        }
        let Some(writer) = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return; // shutting down
        };
        // (stream, epoch, leader epoch, start, end, topic, partition)
        let owned: Vec<_> = self.metadata.read(|img| {
            img.streams
                .values()
                .filter(|s| s.owner == Some(self.id))
                .filter_map(|s| {
                    let topic = img.topic_by_id(s.topic)?;
                    Some((
                        s.id,
                        s.epoch,
                        s.leader_epoch,
                        s.start_offset,
                        s.end_offset,
                        topic.name.clone(),
                        s.partition as i32,
                    ))
                })
                .collect()
        });
        let mut to_close = Vec::new();
        let mut opened = Vec::new();
        {
            let mut parts = self.partitions_lock();
            let wanted: HashMap<StreamId, u64> = owned.iter().map(|o| (o.0, o.1)).collect();
            parts.retain(|sid, p| {
                // A dead actor (it panicked) is closed and opened afresh from
                // metadata: the same path as a move.
                let keep = wanted.get(sid) == Some(&p.stream_epoch)
                    && !p.state.is_fenced()
                    && p.actor.is_alive();
                if !keep {
                    to_close.push(p.clone());
                }
                keep
            });
            let reopening = self
                .reopening
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for (sid, epoch, leader_epoch, start, end, topic, partition) in owned {
                if let Some(p) = parts.get(&sid) {
                    p.state.set_log_start(start);
                    continue;
                }
                if reopening.contains(&sid) {
                    continue;
                }
                let state = Arc::new(StreamState::new(sid, topic, partition, start, end));
                // Open and aborted transactions as of `end`: nothing commits
                // to the stream at this epoch before its actor runs.
                self.metadata.read(|img| {
                    if let Some(s) = img.streams.get(&sid) {
                        state.txns().seed(
                            &s.open_txns,
                            s.aborted_txns.iter().map(|a| AbortedTxn {
                                producer_id: a.producer_id,
                                first_offset: a.first_offset,
                                last_offset: a.last_offset,
                            }),
                        );
                    }
                });
                let actor = Partition::spawn(PartitionArgs {
                    partition: Partition::new(
                        state.clone(),
                        epoch,
                        leader_epoch,
                        writer.clone(),
                        self.reopen_tx.clone(),
                    ),
                    tail: StreamTail {
                        slices: self.tail_slices(sid),
                        reader: self.reader.clone(),
                    },
                });
                parts.insert(
                    sid,
                    Arc::new(OpenPartition {
                        actor,
                        state,
                        stream_epoch: epoch,
                    }),
                );
                if let Some(p) = parts.get(&sid) {
                    self.groups.partition_opened(p);
                    opened.push(p.clone());
                }
            }
            metrics::gauge!("oxbow_partitions_hosted").set(parts.len() as f64);
        }
        for p in opened {
            self.txns.partition_opened(self, &p);
        }
        for p in to_close {
            self.groups.partition_closed(&p);
            self.txns.partition_closed(&p);
            let _ = p.actor.ask(Close).await;
            self.log_cache.remove_stream(p.state.stream);
        }
    }

    /// Whether an actor of a partition this broker hosts has stopped (it
    /// could not start, or it panicked).
    fn has_dead_partition(&self) -> bool {
        self.partitions_lock().values().any(|p| !p.actor.is_alive())
    }

    /// The last committed slices of a stream, newest last, enough to hold
    /// the last few batches of every producer still writing to it.
    fn tail_slices(&self, stream: StreamId) -> Vec<(ObjectLocation, u64, u64)> {
        const TAIL_SLICES: usize = 8;
        const TAIL_BYTES: u64 = 32 * 1024 * 1024;
        self.metadata.read(|img| {
            let Some(s) = img.streams.get(&stream) else {
                return Vec::new();
            };
            let mut out = Vec::new();
            let mut bytes = 0u64;
            for (&start, slice) in s.slices.iter().rev() {
                let Some(obj) = img.objects.get(&slice.object) else {
                    continue;
                };
                if out.len() >= TAIL_SLICES || bytes >= TAIL_BYTES {
                    break;
                }
                bytes += obj.size;
                out.push((
                    ObjectLocation::from(obj),
                    start.max(s.start_offset),
                    slice.end_offset,
                ));
            }
            out.reverse();
            out
        })
    }

    /// A producer id for a non-transactional idempotent producer.
    pub async fn next_producer_id(&self) -> Result<i64, String> {
        let mut block = self.producer_ids.lock().await;
        if block.next >= block.end {
            let out = self
                .controller
                .write(MetadataCommand::AllocateProducerIds {
                    count: PRODUCER_ID_BLOCK,
                })
                .await
                .map_err(|e| e.to_string())?;
            match out.reply {
                CommandReply::ProducerIds { first, count } => {
                    block.next = first;
                    block.end = first + i64::from(count);
                }
                other => return Err(format!("unexpected reply {other:?}")),
            }
        }
        let id = block.next;
        block.next += 1;
        Ok(id)
    }

    /// Stops taking appends, flushes and commits what is buffered, and stops
    /// the writer and the metadata follower.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        // Waits out a reconcile in progress: one that had cloned the writer
        // handle would reopen partitions after the drain below, and the
        // writer (which stops when every handle is gone) would never stop.
        // Every later reconcile sees `stop` and does nothing.
        let reconciling = self.reconcile_lock.lock().await;
        self.groups.shutdown();
        self.txns.shutdown();
        let open: Vec<_> = self.partitions_lock().drain().map(|(_, p)| p).collect();
        for p in open {
            if p.actor.ask(Close).await.is_err() {
                warn!(
                    stream_id = p.state.stream.0,
                    "partition actor gone before close"
                );
            }
        }
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(reconciling);
        if let Some(task) = self.writer_task.lock().await.take() {
            let _ = task.await;
        }
        // Hand the partitions off: everything is committed, so fencing
        // ourselves moves every stream to a live broker at once instead of
        // after a session timeout.
        let handoff = self.controller.write(MetadataCommand::FenceBroker {
            id: self.id,
            epoch: self.current_epoch(),
        });
        match tokio::time::timeout(Duration::from_secs(5), handoff).await {
            Ok(Ok(_)) => info!(broker_id = self.id, "partitions handed off"),
            Ok(Err(e)) => warn!(broker_id = self.id, error = %e, "handing partitions off failed"),
            Err(_) => warn!(broker_id = self.id, "handing partitions off timed out"),
        }
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            t.abort();
        }
    }
}
