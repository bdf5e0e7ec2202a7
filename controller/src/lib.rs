//! Oxbow's metadata quorum: an openraft node whose log lives in redb and whose
//! state machine is `proto::MetadataImage`, served to brokers through
//! `proto::rpc::ControllerApi`.
//!
//! [`Controller`] is the entry point: [`Controller::start`] opens the data
//! directory, starts Raft, forms the cluster on first start (and writes its
//! `Bootstrap` command), and waits until this node leads with its state
//! caught up. It owns the Raft handle; it must never change the image except
//! by a Raft write.
//!
//! - [`types`] names the openraft types (entries carry
//!   `proto::MetadataCommand`); it holds no state.
//! - [`log_store`] is the durable Raft log, vote and commit pointers in redb;
//!   it never interprets entries.
//! - [`state_machine`] applies committed commands with
//!   `MetadataImage::apply`, keeps a bounded ring of recent commands for
//!   deltas and persists snapshots in the same redb file; it never consults
//!   clocks, randomness or the network while applying.
//! - [`network`] is the Raft transport between controllers. With a single
//!   voter it is never used, and for now it is a documented placeholder that
//!   answers `Unreachable`; it must never pretend a peer answered.

pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::{ReadPolicy, SnapshotPolicy};
use proto::rpc::{BoxFuture, ControllerApi, MetadataDeltas, RpcError, WriteOutcome};
use proto::{MetadataCommand, MetadataImage};
use tokio::sync::watch;

use crate::log_store::RedbLogStore;
use crate::network::UnbuiltNetwork;
use crate::state_machine::{AppliedState, MetadataStateMachine};
use crate::types::{ControllerNode, Proposal, Raft, TypeConfig};

/// Name of the redb file (Raft log, vote, snapshot) inside the data directory.
pub const DATABASE_FILE: &str = "controller.redb";

/// Most commands one `deltas_since` answer carries; a broker further behind
/// asks again from the last version it got.
pub const MAX_DELTAS_PER_ANSWER: usize = 10_000;

/// How a controller node runs. [`ControllerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This node's Raft id; stable for the life of its data directory.
    pub node_id: u64,
    /// Holds [`DATABASE_FILE`]; created if missing.
    pub data_dir: PathBuf,
    /// `host:port` where peers and redirected brokers reach this node;
    /// recorded in the Raft membership when the cluster is formed.
    pub rpc_addr: String,
    /// Cluster id written by `Bootstrap` on first start; `None` draws a
    /// random one. Fixed ids are for tests and simulation.
    pub cluster_id: Option<String>,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min, election_timeout_max)` starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long `start` waits for this node to become leader.
    pub leader_wait: Duration,
    /// A snapshot is built every this many log entries.
    pub snapshot_every_entries: u64,
    /// Entries already in a snapshot kept in the log (for slow followers)
    /// before they are purged.
    pub entries_kept_after_snapshot: u64,
    /// Recent commands kept in memory for `deltas_since`; a broker further
    /// behind gets the whole image.
    pub deltas_ring_capacity: usize,
}

impl ControllerConfig {
    pub fn new(node_id: u64, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            rpc_addr: String::new(),
            cluster_id: None,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            leader_wait: Duration::from_secs(10),
            snapshot_every_entries: 20_000,
            entries_kept_after_snapshot: 1_000,
            deltas_ring_capacity: 50_000,
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, ControllerError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "oxbow-controller".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            // openraft's default purge batch (1) is right for us: the purge
            // end only moves when a snapshot is built, so the log is purged
            // once per snapshot, in one redb transaction.
            ..Default::default()
        };
        config.validate().map_err(ControllerError::RaftConfig)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid controller config: {0}")]
    InvalidConfig(String),
    #[error("invalid raft timing config: {0}")]
    RaftConfig(#[source] openraft::ConfigError),
    #[error("creating controller data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening controller database {path}: {source}")]
    OpenDatabase {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("loading the metadata snapshot from {path}: {source}")]
    LoadSnapshot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting raft node {node_id}: {source}")]
    RaftStart {
        node_id: u64,
        #[source]
        source: Fatal<TypeConfig>,
    },
    #[error("forming the single-voter cluster with node {node_id}: {message}")]
    Initialize { node_id: u64, message: String },
    #[error(
        "node {node_id} did not become leader within {waited:?} (data dir {data_dir}): {message}"
    )]
    LeaderTimeout {
        node_id: u64,
        waited: Duration,
        data_dir: PathBuf,
        message: String,
    },
    #[error("node {node_id} became leader but could not catch up its state machine: {message}")]
    CatchUp { node_id: u64, message: String },
    #[error("writing the Bootstrap command: {0}")]
    Bootstrap(#[source] RpcError),
    #[error("controller task failed: {0}")]
    Task(String),
}

/// One controller node of the metadata quorum.
pub struct Controller {
    node_id: u64,
    raft: Raft,
    state: AppliedState,
    db: Arc<redb::Database>,
}

impl Controller {
    /// Opens (or creates) the node's data directory, starts Raft and returns
    /// once this node leads with everything committed applied. A fresh store
    /// forms a one-voter cluster and writes `Bootstrap`; an existing one comes
    /// back with its state and without bootstrapping again.
    pub async fn start(config: ControllerConfig) -> Result<Controller, ControllerError> {
        if config.deltas_ring_capacity == 0 {
            return Err(ControllerError::InvalidConfig(
                "deltas_ring_capacity must be at least 1".into(),
            ));
        }
        let raft_config = Arc::new(config.raft_config()?);
        let node_id = config.node_id;

        let (db, state_machine) = {
            let data_dir = config.data_dir.clone();
            let ring = config.deltas_ring_capacity;
            tokio::task::spawn_blocking(move || open_store(&data_dir, ring))
                .await
                .map_err(|e| ControllerError::Task(format!("opening the store: {e}")))??
        };
        let state = state_machine.state();

        let raft = Raft::new(
            node_id,
            raft_config,
            UnbuiltNetwork,
            RedbLogStore::new(db.clone()),
            state_machine,
        )
        .await
        .map_err(|source| ControllerError::RaftStart { node_id, source })?;
        let controller = Controller {
            node_id,
            raft,
            state,
            db,
        };
        match controller.come_up(&config).await {
            Ok(()) => Ok(controller),
            Err(e) => {
                controller.shutdown().await;
                Err(e)
            }
        }
    }

    async fn come_up(&self, config: &ControllerConfig) -> Result<(), ControllerError> {
        let node_id = self.node_id;
        let initialized =
            self.raft
                .is_initialized()
                .await
                .map_err(|e| ControllerError::Initialize {
                    node_id,
                    message: e.to_string(),
                })?;
        if !initialized {
            let members = BTreeMap::from([(
                node_id,
                ControllerNode {
                    rpc_addr: config.rpc_addr.clone(),
                },
            )]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| ControllerError::Initialize {
                    node_id,
                    message: e.to_string(),
                })?;
            tracing::info!(node_id, "formed a new single-voter metadata cluster");
        }

        self.raft
            .wait(Some(config.leader_wait))
            .current_leader(node_id, "controller start: waiting to lead")
            .await
            .map_err(|e| ControllerError::LeaderTimeout {
                node_id,
                waited: config.leader_wait,
                data_dir: config.data_dir.clone(),
                message: e.to_string(),
            })?;
        // Leading is not enough: everything committed before a restart must
        // be applied before the image is served.
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| ControllerError::CatchUp {
                node_id,
                message: e.to_string(),
            })?;

        // Decided from the image rather than from "the store was fresh", so a
        // crash between forming the cluster and bootstrapping is repaired.
        if self.state.image().1.cluster_id.is_none() {
            let cluster_id = match &config.cluster_id {
                Some(id) => id.clone(),
                None => random_cluster_id(),
            };
            let outcome = self
                .write_command(MetadataCommand::Bootstrap {
                    cluster_id: cluster_id.clone(),
                })
                .await
                .map_err(ControllerError::Bootstrap)?;
            tracing::info!(node_id, %cluster_id, version = outcome.version, reply = ?outcome.reply, "bootstrapped metadata");
        }
        let (version, image) = self.state.image();
        tracing::info!(node_id, version, cluster_id = ?image.cluster_id, "controller leading");
        Ok(())
    }

    /// The log index of the last applied entry; changes on every apply.
    pub fn applied_version(&self) -> watch::Receiver<u64> {
        self.state.subscribe()
    }

    /// A copy of the current image and the version it reflects.
    pub async fn image(&self) -> (u64, MetadataImage) {
        self.state.image()
    }

    /// Stops Raft and closes the database, so the data directory can be
    /// opened again (also by this process).
    pub async fn shutdown(self) {
        let Controller {
            node_id, raft, db, ..
        } = self;
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(node_id, error = %e, "raft did not shut down cleanly");
        }
        drop(raft);
        // openraft's state-machine worker and any snapshot build may still
        // hold the database for a moment after the core stops.
        let mut db = db;
        for _ in 0..500 {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    drop(db);
                    tracing::info!(node_id, "controller shut down");
                    return;
                }
                Err(shared) => db = shared,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!(
            node_id,
            "controller database still in use 5 s after shutdown"
        );
    }

    async fn write_command(&self, cmd: MetadataCommand) -> Result<WriteOutcome, RpcError> {
        match self.raft.client_write(Proposal(cmd)).await {
            Ok(response) => Ok(WriteOutcome {
                version: response.log_id.index,
                reply: response.data,
            }),
            Err(e) => Err(write_error(e)),
        }
    }

    async fn wait_for_deltas(
        &self,
        version: u64,
        wait: Duration,
    ) -> Result<MetadataDeltas, RpcError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.state.subscribe();
        loop {
            // Mark the current version seen before reading, so an apply that
            // lands after the read wakes the wait below.
            applied.borrow_and_update();
            let answer = self.state.deltas_after(version, MAX_DELTAS_PER_ANSWER);
            match &answer {
                MetadataDeltas::Deltas(commands) if commands.is_empty() => {}
                _ => return Ok(answer),
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the state machine is gone: nothing new.
                Ok(Err(_)) | Err(_) => return Ok(answer),
            }
        }
    }
}

impl ControllerApi for Controller {
    fn write(&self, cmd: MetadataCommand) -> BoxFuture<'_, Result<WriteOutcome, RpcError>> {
        Box::pin(self.write_command(cmd))
    }

    fn deltas_since(
        &self,
        version: u64,
        wait: Duration,
    ) -> BoxFuture<'_, Result<MetadataDeltas, RpcError>> {
        Box::pin(self.wait_for_deltas(version, wait))
    }
}

/// Opens the redb database in `data_dir` (creating both if needed) and loads
/// the state machine from its snapshot.
fn open_store(
    data_dir: &Path,
    ring_capacity: usize,
) -> Result<(Arc<redb::Database>, MetadataStateMachine), ControllerError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ControllerError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let db = Arc::new(open_database(data_dir)?);
    let state_machine =
        MetadataStateMachine::open(db.clone(), ring_capacity).map_err(|source| {
            ControllerError::LoadSnapshot {
                path: data_dir.join(DATABASE_FILE),
                source,
            }
        })?;
    Ok((db, state_machine))
}

/// Opens or creates [`DATABASE_FILE`] in `data_dir` with every table present.
pub(crate) fn open_database(data_dir: &Path) -> Result<redb::Database, ControllerError> {
    let path = data_dir.join(DATABASE_FILE);
    let open_error = |source: redb::Error| ControllerError::OpenDatabase {
        path: path.clone(),
        source,
    };
    let db = redb::Database::create(&path).map_err(|e| open_error(e.into()))?;
    log_store::create_tables(&db).map_err(open_error)?;
    state_machine::create_tables(&db).map_err(open_error)?;
    Ok(db)
}

fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> RpcError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => RpcError::NotLeader(
            forward
                .leader_node
                .map(|node| node.rpc_addr)
                .filter(|addr| !addr.is_empty()),
        ),
        // The entry may or may not commit under the new leader; the caller
        // retries and apply recognises the duplicate.
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => {
            RpcError::Unavailable(format!(
                "write lost its leader before committing; it may still commit (leader hint {:?})",
                forward.leader_node.map(|node| node.rpc_addr)
            ))
        }
        RaftError::APIError(other) => RpcError::Unavailable(other.to_string()),
        RaftError::Fatal(Fatal::Stopped) => RpcError::ShuttingDown,
        RaftError::Fatal(fatal) => RpcError::Unavailable(format!("raft failed: {fatal}")),
    }
}

/// A new cluster id as Kafka makes one: a random (v4) UUID in URL-safe
/// base64 without padding (22 characters), redrawn if it would start with
/// '-' (Kafka avoids ids that look like command-line flags).
pub fn random_cluster_id() -> String {
    loop {
        let id = kafka_uuid_string(uuid::Uuid::new_v4());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// Kafka's textual form of a UUID: its 16 bytes in URL-safe base64, no padding.
pub fn kafka_uuid_string(id: uuid::Uuid) -> String {
    base64_url_no_pad(id.as_bytes())
}

fn base64_url_no_pad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // A chunk of k bytes yields k + 1 characters when unpadded.
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_purge_the_log_and_restart_from_them() {
        use openraft::storage::RaftLogStorage;

        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ControllerConfig::new(1, dir.path());
        config.election_timeout_min = Duration::from_millis(150);
        config.election_timeout_max = Duration::from_millis(300);
        config.heartbeat_interval = Duration::from_millis(50);
        config.snapshot_every_entries = 10;
        config.entries_kept_after_snapshot = 2;
        let controller = Controller::start(config.clone()).await.expect("start");
        let mut last = 0;
        for id in 0..40 {
            let cmd = MetadataCommand::AllocateProducerIds { count: id + 1 };
            last = controller.write(cmd).await.expect("write").version;
        }
        let metrics = controller
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.purged.as_ref().is_some_and(|p| p.index + 2 + 10 > last),
                "a recent snapshot and purge",
            )
            .await
            .expect("snapshot built and log purged");
        let snapshot = metrics.snapshot.expect("snapshot built").index;
        let purged = metrics.purged.expect("log purged").index;
        assert_eq!(
            purged + 2,
            snapshot,
            "keeps entries_kept_after_snapshot entries"
        );
        let before = controller.image().await;
        controller.shutdown().await;

        {
            let db = Arc::new(open_database(dir.path()).expect("reopen database"));
            let state = RedbLogStore::new(db)
                .get_log_state()
                .await
                .expect("log state");
            assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(purged));
        }

        let controller = Controller::start(config).await.expect("restart");
        let after = controller.image().await;
        assert_eq!(after.1, before.1);
        assert!(after.0 >= before.0);
        controller.shutdown().await;
    }

    #[test]
    fn write_errors_map_to_rpc_errors() {
        use openraft::error::ForwardToLeader;

        let to = |rpc_addr: &str| {
            RaftError::APIError(ClientWriteError::ForwardToLeader(ForwardToLeader::new(
                2,
                ControllerNode {
                    rpc_addr: rpc_addr.into(),
                },
            )))
        };
        assert_eq!(
            write_error(to("10.0.0.2:9093")),
            RpcError::NotLeader(Some("10.0.0.2:9093".into()))
        );
        assert_eq!(write_error(to("")), RpcError::NotLeader(None));
        assert_eq!(
            write_error(RaftError::APIError(ClientWriteError::ForwardToLeader(
                ForwardToLeader::empty()
            ))),
            RpcError::NotLeader(None)
        );
        assert_eq!(
            write_error(RaftError::Fatal(Fatal::Stopped)),
            RpcError::ShuttingDown
        );
        assert!(matches!(
            write_error(RaftError::Fatal(Fatal::Panicked)),
            RpcError::Unavailable(_)
        ));
    }

    #[test]
    fn base64_matches_rfc4648_url_alphabet() {
        assert_eq!(base64_url_no_pad(b""), "");
        assert_eq!(base64_url_no_pad(b"f"), "Zg");
        assert_eq!(base64_url_no_pad(b"fo"), "Zm8");
        assert_eq!(base64_url_no_pad(b"foo"), "Zm9v");
        assert_eq!(base64_url_no_pad(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_url_no_pad(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn cluster_ids_look_like_kafka_ones() {
        assert_eq!(
            kafka_uuid_string(uuid::Uuid::nil()),
            "AAAAAAAAAAAAAAAAAAAAAA"
        );
        for _ in 0..100 {
            let id = random_cluster_id();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'));
            assert!(id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
    }
}
