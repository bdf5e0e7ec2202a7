//! Oxbow's metadata quorum: openraft nodes whose log lives in redb and whose
//! state machine is `proto::MetadataImage`, served to brokers through
//! `proto::rpc::ControllerApi` in process or over TCP.
//!
//! [`Controller`] is the entry point. [`Controller::start`] opens the data
//! directory, starts Raft and the RPC server, and returns once the node is
//! part of a working quorum: with a single voter (`voters` empty or only
//! this node) it forms the cluster on first start, writes `Bootstrap`, and
//! waits until it leads with its state caught up; with several voters it
//! waits until it knows a leader and has applied `Bootstrap`. It must never
//! change the image except by a Raft write.
//!
//! - [`types`] names the openraft types (entries carry
//!   `proto::MetadataCommand`); it holds no state.
//! - [`log_store`] is the durable Raft log, vote and commit pointers in redb;
//!   it never interprets entries.
//! - [`state_machine`] applies committed commands with
//!   `MetadataImage::apply`, keeps a bounded ring of recent commands for
//!   deltas and persists snapshots in the same redb file; it never consults
//!   clocks, randomness or the network while applying.
//! - `wire` is what travels on a connection (frames, peer messages) and the
//!   multiplexed peer connection; [`network`] is the Raft transport over it,
//!   one reused connection per peer; `server` is the one TCP listener for
//!   peers and brokers; `service` routes a request (answer here, or forward
//!   to the leader).
//! - [`liveness`] decides which broker sessions expired (pure); `duties` is
//!   the leader's own work: bootstrap, and fencing expired brokers.
//!
//! # Forming a cluster
//!
//! Every controller gets the same static voter list (`ControllerConfig::
//! voters`, id → `host:port`). On a fresh store the node with the smallest
//! id initializes Raft with all voters; the others wait to be contacted.
//! The first leader writes `Bootstrap`. A restart rejoins with its stored
//! state; the voter list is then only used by a fresh store.
//!
//! # Adding and removing a controller (admin operation)
//!
//! Membership changes go through the leader (a follower forwards them), one
//! at a time, as [`Controller::add_voter`] / [`Controller::remove_voter`] in
//! process or `ControllerRequest::ChangeMembership` over TCP:
//!
//! 1. Start the new controller with a fresh data directory, its own
//!    `node_id` and `rpc_addr`, and `voters` set to the *current* voters
//!    (in process it may leave itself out; the `oxbow controller` binary
//!    wants itself included, with an id above the smallest voter's). It
//!    never initializes a cluster; it waits (up to `join_wait`) to be
//!    contacted.
//! 2. Ask any controller for `AddVoter { id, addr }`. The leader adds it as
//!    a learner, waits until it has caught up (by log or by snapshot), then
//!    promotes it to voter through joint consensus. The answer lists the
//!    voters after the change.
//! 3. To remove one, ask for `RemoveVoter { id }`; once the answer comes,
//!    stop that controller and delete its data directory. Removing the
//!    leader is allowed: it steps down after the change commits (openraft's
//!    `removed_leader_step_down`), and from the moment it is out of the
//!    membership it answers every client request with `RpcError::Removed`
//!    so that brokers go to another controller (its vote still names
//!    itself, so `Raft::as_leader` alone would not tell).
//!
//! Change one voter at a time and keep an odd number of voters; a change
//! that times out may still complete (ask again: the answer is the same).
//! Update every controller's `voters` list for the next fresh start.

pub mod liveness;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

mod duties;
mod server;
mod service;
mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{Fatal, InitializeError, RaftError};
use openraft::{ReadPolicy, SnapshotPolicy};
use proto::rpc::{
    BoxFuture, ControllerApi, ControllerRequest, ControllerResponse, HeartbeatReply,
    MembershipChange, MetadataDeltas, RpcError, Voters, WriteOutcome, MAX_RPC_FRAME,
};
use proto::seams::{Entropy, Seams};
use proto::{BrokerId, MetadataCommand, MetadataImage};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::liveness::{BrokerSessions, Clock, TokioClock};
use crate::log_store::RedbLogStore;
use crate::network::{Peers, TcpNetwork};
use crate::service::Service;
use crate::state_machine::{AppliedState, MetadataStateMachine};
use crate::types::{ControllerNode, Raft, TypeConfig};
use crate::wire::ConnectLimits;

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
    /// `host:port` where peers and brokers reach this node; recorded in the
    /// Raft membership. When set, the node serves RPC there (or on
    /// `listen_addr`); empty means in-process only, which only a single
    /// voter may be (as in `oxbow server`).
    pub rpc_addr: String,
    /// Where the RPC server binds when that differs from `rpc_addr` (e.g.
    /// `0.0.0.0:9093` behind an advertised address). `None`: `rpc_addr`.
    pub listen_addr: Option<String>,
    /// The quorum's voters, id → `rpc_addr`, the same on every controller.
    /// Empty, or only this node, runs a single-voter cluster. Used only to
    /// form the cluster on a fresh store (see the crate docs).
    pub voters: BTreeMap<u64, String>,
    /// Cluster id written by `Bootstrap` on first start; `None` draws a
    /// random one. Fixed ids are for tests and simulation.
    pub cluster_id: Option<String>,
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_min, election_timeout_max)` starts an election.
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long a single-voter `start` waits for this node to become leader.
    pub leader_wait: Duration,
    /// How long a multi-voter `start` waits to know a leader and to have
    /// applied `Bootstrap` (the other voters may still be starting).
    pub join_wait: Duration,
    /// A snapshot is built every this many log entries.
    pub snapshot_every_entries: u64,
    /// Entries already in a snapshot kept in the log (for slow followers)
    /// before they are purged.
    pub entries_kept_after_snapshot: u64,
    /// Recent commands kept in memory for `deltas_since`; a broker further
    /// behind gets the whole image.
    pub deltas_ring_capacity: usize,
    /// A registered, unfenced broker not heard from for this long is fenced
    /// by the leader. Enforced only by a controller that serves RPC (brokers
    /// heartbeat over it); an in-process controller never fences for silence.
    pub broker_session_timeout: Duration,
    /// How often the leader checks broker sessions (and its own leadership).
    pub liveness_tick: Duration,
    /// Bound on answering one request: a forward to the leader, a membership
    /// change, a request served for a broker.
    pub request_timeout: Duration,
    /// Bound on opening a connection to a peer, handshake included.
    pub connect_timeout: Duration,
    /// Bound on sending and installing a whole snapshot on a follower.
    pub install_snapshot_timeout: Duration,
    /// RPC connections served at once; more are refused.
    pub max_connections: usize,
    /// Requests in flight on one connection (either direction); the server
    /// stops reading a connection that has this many.
    pub max_in_flight_per_connection: usize,
    /// Largest frame accepted from a broker or admin client. Peer frames
    /// (snapshots) are bounded by `proto::rpc::MAX_RPC_FRAME`.
    pub max_client_frame_bytes: usize,
    /// Longest long-poll a `DeltasSince` over RPC may ask for.
    pub max_deltas_wait: Duration,
    /// Network and randomness (see `proto::seams`).
    pub seams: Seams,
    /// Where the redb database lives.
    pub store: StoreLocation,
}

/// Where a controller keeps its redb database (Raft log, vote, snapshots).
#[derive(Debug, Clone, Default)]
pub enum StoreLocation {
    /// [`DATABASE_FILE`] in `data_dir`.
    #[default]
    DataDir,
    /// A storage backend the caller owns, which outlives the controller
    /// (the simulation's crash-consistent disk).
    Backend(Arc<dyn redb::StorageBackend>),
}

/// Lends a shared backend to redb, which wants one by value.
#[derive(Debug)]
struct SharedBackend(Arc<dyn redb::StorageBackend>);

impl redb::StorageBackend for SharedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
}

impl ControllerConfig {
    pub fn new(node_id: u64, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            rpc_addr: String::new(),
            listen_addr: None,
            voters: BTreeMap::new(),
            cluster_id: None,
            heartbeat_interval: Duration::from_millis(100),
            // openraft's followers refuse votes for `election_timeout_max`
            // after they last heard the leader, so a leader loss costs about
            // max + (a random timeout): 0.6-1.2 s with these.
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            leader_wait: Duration::from_secs(10),
            join_wait: Duration::from_secs(60),
            snapshot_every_entries: 20_000,
            entries_kept_after_snapshot: 1_000,
            deltas_ring_capacity: 50_000,
            broker_session_timeout: Duration::from_secs(6),
            liveness_tick: Duration::from_millis(250),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            install_snapshot_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_in_flight_per_connection: 64,
            max_client_frame_bytes: 16 * 1024 * 1024,
            max_deltas_wait: Duration::from_secs(30),
            seams: Seams::production(),
            store: StoreLocation::DataDir,
        }
    }

    /// Whether other voters exist besides this node.
    fn multi_voter(&self) -> bool {
        self.voters.keys().any(|id| *id != self.node_id)
    }

    fn validate(&self) -> Result<(), ControllerError> {
        let invalid = |m: String| Err(ControllerError::InvalidConfig(m));
        if self.deltas_ring_capacity == 0 {
            return invalid("deltas_ring_capacity must be at least 1".into());
        }
        if self.multi_voter() && self.rpc_addr.is_empty() {
            return invalid(format!(
                "controller {} has no rpc_addr, but a cluster of several voters ({:?}) needs one",
                self.node_id, self.voters
            ));
        }
        if let Some(addr) = self.voters.get(&self.node_id) {
            if *addr != self.rpc_addr {
                return invalid(format!(
                    "voters lists controller {} at {addr} but its rpc_addr is {:?}",
                    self.node_id, self.rpc_addr
                ));
            }
        }
        if let Some((id, _)) = self.voters.iter().find(|(_, addr)| addr.is_empty()) {
            return invalid(format!("voter {id} has no address"));
        }
        if self.max_connections == 0 || self.max_in_flight_per_connection == 0 {
            return invalid(
                "max_connections and max_in_flight_per_connection must be at least 1".into(),
            );
        }
        if self.max_client_frame_bytes > MAX_RPC_FRAME {
            return invalid(format!(
                "max_client_frame_bytes {} exceeds MAX_RPC_FRAME {MAX_RPC_FRAME}",
                self.max_client_frame_bytes
            ));
        }
        Ok(())
    }

    fn raft_config(&self) -> Result<openraft::Config, ControllerError> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: "oxbow-controller".to_string(),
            heartbeat_interval: millis(self.heartbeat_interval),
            election_timeout_min: millis(self.election_timeout_min),
            election_timeout_max: millis(self.election_timeout_max),
            install_snapshot_timeout: millis(self.install_snapshot_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.entries_kept_after_snapshot,
            // A node that cannot win (cut off, restarted behind) asks first
            // instead of bumping the term and unseating a healthy leader.
            enable_pre_vote: Some(true),
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
    #[error("binding the controller RPC listener on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting raft node {node_id}: {source}")]
    RaftStart {
        node_id: u64,
        #[source]
        source: Fatal<TypeConfig>,
    },
    #[error("forming the cluster with node {node_id}: {message}")]
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
    #[error(
        "node {node_id} did not join the quorum within {waited:?} (voters {voters:?}, data dir {data_dir}): {message}"
    )]
    JoinTimeout {
        node_id: u64,
        waited: Duration,
        voters: BTreeMap<u64, String>,
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

/// A node's view of the quorum, for status pages, admin tools and tests.
pub type ControllerStatus = proto::rpc::QuorumStatus;

/// One controller node of the metadata quorum.
pub struct Controller {
    service: Arc<Service>,
    db: Arc<redb::Database>,
    /// Where the RPC server is listening, if it is.
    local_rpc_addr: Option<SocketAddr>,
    /// The RPC server and the leader duties; aborted on shutdown.
    tasks: Vec<JoinHandle<()>>,
    /// How long a stepping-down leader waits for a successor.
    handoff_wait: Duration,
}

impl Controller {
    /// Opens (or creates) the node's data directory, starts Raft and the RPC
    /// server and returns once the node is part of a working quorum (see the
    /// crate docs). Uses tokio's clock for broker sessions.
    pub async fn start(config: ControllerConfig) -> Result<Controller, ControllerError> {
        Self::start_with_clock(config, Arc::new(TokioClock::new())).await
    }

    /// [`Controller::start`] with the clock broker sessions are judged by.
    pub async fn start_with_clock(
        config: ControllerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Controller, ControllerError> {
        config.validate()?;
        let mut config = config;
        if config.cluster_id.is_none() {
            config.cluster_id = Some(random_cluster_id(&*config.seams.entropy));
        }
        let raft_config = Arc::new(config.raft_config()?);
        let node_id = config.node_id;

        let (db, state_machine) = {
            let data_dir = config.data_dir.clone();
            let ring = config.deltas_ring_capacity;
            let store = config.store.clone();
            log_store::blocking(move || Ok(open_store(&data_dir, &store, ring)))
                .await
                .map_err(|e| ControllerError::Task(format!("opening the store: {e}")))??
        };
        let state = state_machine.state();

        // Bound before Raft starts, so a port in use fails the start at once.
        let listener = if config.rpc_addr.is_empty() {
            None
        } else {
            let addr = config
                .listen_addr
                .clone()
                .unwrap_or_else(|| config.rpc_addr.clone());
            let listener = config
                .seams
                .net
                .bind(&addr)
                .await
                .map_err(|source| ControllerError::Bind { addr, source })?;
            Some(listener)
        };
        let local_rpc_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        let peers = Arc::new(Peers::new(
            node_id,
            config.seams.net.clone(),
            ConnectLimits {
                connect_timeout: config.connect_timeout,
                max_in_flight: config.max_in_flight_per_connection,
            },
        ));
        let raft = Raft::new(
            node_id,
            raft_config,
            TcpNetwork::new(peers.clone()),
            RedbLogStore::new(db.clone()),
            state_machine,
        )
        .await
        .map_err(|source| ControllerError::RaftStart { node_id, source })?;
        let service = Arc::new(Service {
            node_id,
            raft,
            state,
            peers,
            sessions: Mutex::new(BrokerSessions::default()),
            clock,
            request_timeout: config.request_timeout,
            max_deltas_wait: config.max_deltas_wait,
        });
        let mut controller = Controller {
            service,
            db,
            local_rpc_addr,
            tasks: Vec::new(),
            handoff_wait: config.election_timeout_max * 2,
        };
        if let Some(listener) = listener {
            let limits = server::ServerLimits {
                max_connections: config.max_connections,
                max_in_flight_per_connection: config.max_in_flight_per_connection,
                max_client_frame_bytes: config.max_client_frame_bytes,
                hello_timeout: config.connect_timeout.max(Duration::from_secs(1)),
                request_timeout: config.request_timeout,
                max_deltas_wait: config.max_deltas_wait,
            };
            let service = controller.service.clone();
            controller
                .tasks
                .push(tokio::spawn(server::serve(listener, service, limits)));
            tracing::info!(node_id, addr = ?local_rpc_addr, "controller RPC server listening");
        }
        let came_up = match controller.stored_membership().await {
            Err(e) => Err(e),
            Ok((initialized, stored_others)) => {
                // A stored membership with other voters outranks the config:
                // a cluster grown from one voter restarts as the quorum it
                // became. A node configured with other voters always joins:
                // its store may count as initialized only because a peer
                // already contacted it (a vote request or the first entries
                // arriving between our RPC server starting and this check),
                // and such a node must never wait to lead alone.
                let quorum = config.multi_voter() || (initialized && stored_others);
                if quorum {
                    controller.join(&config, initialized).await
                } else {
                    let came_up = controller.come_up(&config, initialized).await;
                    if came_up.is_ok() {
                        controller.start_duties(&config);
                    }
                    came_up
                }
            }
        };
        match came_up {
            Ok(()) => Ok(controller),
            Err(e) => {
                controller.stop().await;
                Err(e)
            }
        }
    }

    /// Whether the store holds a cluster (openraft's `is_initialized`) and
    /// whether its effective membership names voters other than this node,
    /// read from Raft's own state rather than from the metrics, which may
    /// lag behind entries that just arrived.
    async fn stored_membership(&self) -> Result<(bool, bool), ControllerError> {
        let node_id = self.service.node_id;
        let initialized = self.raft().is_initialized().await;
        let others = self
            .raft()
            .with_raft_state(move |st| {
                st.membership_state
                    .effective()
                    .membership()
                    .voter_ids()
                    .any(|id| id != node_id)
            })
            .await;
        match (initialized, others) {
            (Ok(initialized), Ok(others)) => Ok((initialized, others)),
            (Err(e), _) | (_, Err(e)) => Err(ControllerError::Initialize {
                node_id,
                message: e.to_string(),
            }),
        }
    }

    fn start_duties(&mut self, config: &ControllerConfig) {
        let duties = duties::DutyConfig {
            tick: config.liveness_tick,
            session_timeout: (!config.rpc_addr.is_empty()).then_some(config.broker_session_timeout),
            bootstrap: config.cluster_id.clone(),
        };
        self.tasks
            .push(tokio::spawn(duties::run(self.service.clone(), duties)));
    }

    fn raft(&self) -> &Raft {
        &self.service.raft
    }

    fn state(&self) -> &AppliedState {
        &self.service.state
    }

    /// Single voter: form the cluster if new, lead, catch up, bootstrap.
    async fn come_up(
        &self,
        config: &ControllerConfig,
        initialized: bool,
    ) -> Result<(), ControllerError> {
        let node_id = self.service.node_id;
        if !initialized {
            let members = BTreeMap::from([(
                node_id,
                ControllerNode {
                    rpc_addr: config.rpc_addr.clone(),
                },
            )]);
            self.raft()
                .initialize(members)
                .await
                .map_err(|e| ControllerError::Initialize {
                    node_id,
                    message: e.to_string(),
                })?;
            tracing::info!(node_id, "formed a new single-voter metadata cluster");
        }

        self.raft()
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
        self.raft()
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| ControllerError::CatchUp {
                node_id,
                message: e.to_string(),
            })?;

        // Decided from the image rather than from "the store was fresh", so a
        // crash between forming the cluster and bootstrapping is repaired.
        if self.state().image().1.cluster_id.is_none() {
            let cluster_id = match &config.cluster_id {
                Some(id) => id.clone(),
                None => random_cluster_id(&*config.seams.entropy),
            };
            let outcome = self
                .service
                .write_local(MetadataCommand::Bootstrap {
                    cluster_id: cluster_id.clone(),
                })
                .await
                .map_err(ControllerError::Bootstrap)?;
            tracing::info!(node_id, %cluster_id, version = outcome.version, reply = ?outcome.reply, "bootstrapped metadata");
        }
        let (version, image) = self.state().image();
        tracing::info!(node_id, version, cluster_id = ?image.cluster_id, "controller leading");
        Ok(())
    }

    /// Several voters: the smallest id forms the cluster on a fresh store;
    /// everyone waits until it knows a leader and has applied `Bootstrap`.
    /// A node not in `voters` (being added) never forms one.
    async fn join(
        &mut self,
        config: &ControllerConfig,
        initialized: bool,
    ) -> Result<(), ControllerError> {
        let node_id = self.service.node_id;
        let first = config.voters.keys().next() == Some(&node_id);
        if !initialized && first {
            let members: BTreeMap<u64, ControllerNode> = config
                .voters
                .iter()
                .map(|(id, addr)| {
                    (
                        *id,
                        ControllerNode {
                            rpc_addr: addr.clone(),
                        },
                    )
                })
                .collect();
            match self.raft().initialize(members).await {
                Ok(()) => {
                    tracing::info!(node_id, voters = ?config.voters, "formed a new metadata cluster")
                }
                // Contacted by a leader first (only if the store was wiped
                // and others remember us): already part of a cluster.
                Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                    tracing::info!(node_id, reason = %e, "cluster already formed; joining it");
                }
                Err(e) => {
                    return Err(ControllerError::Initialize {
                        node_id,
                        message: e.to_string(),
                    })
                }
            }
        } else if !initialized {
            tracing::info!(node_id, voters = ?config.voters, "fresh store: waiting to be contacted by the cluster");
        }
        self.start_duties(config);

        let timeout_error = |message: String| ControllerError::JoinTimeout {
            node_id,
            waited: config.join_wait,
            voters: config.voters.clone(),
            data_dir: config.data_dir.clone(),
            message,
        };
        let deadline = tokio::time::Instant::now() + config.join_wait;
        self.raft()
            .wait(Some(config.join_wait))
            .metrics(
                |m| m.current_leader.is_some(),
                "controller start: waiting for a leader",
            )
            .await
            .map_err(|e| timeout_error(e.to_string()))?;
        let mut applied = self.state().subscribe();
        loop {
            applied.borrow_and_update();
            if self
                .state()
                .read_image(|_, image| image.cluster_id.is_some())
            {
                break;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(timeout_error("the state machine stopped".into())),
                Err(_) => {
                    return Err(timeout_error(
                        "a leader is known but Bootstrap was not applied in time".into(),
                    ))
                }
            }
        }
        let status = self.status();
        tracing::info!(node_id, leader = ?status.leader, term = status.term, applied = ?status.last_applied, "controller joined the quorum");
        Ok(())
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> u64 {
        self.service.node_id
    }

    /// The address the RPC server is bound to (useful with port 0), if it
    /// serves RPC.
    pub fn local_rpc_addr(&self) -> Option<SocketAddr> {
        self.local_rpc_addr
    }

    /// The log index of the last applied entry; changes on every apply.
    pub fn applied_version(&self) -> watch::Receiver<u64> {
        self.state().subscribe()
    }

    /// A copy of the current image and the version it reflects.
    pub async fn image(&self) -> (u64, MetadataImage) {
        self.state().image()
    }

    /// What this node knows of the quorum right now.
    pub fn status(&self) -> ControllerStatus {
        self.service.status()
    }

    /// Answers `request` as the RPC server would (a follower forwards
    /// leader-only requests), for in-process admin tools.
    pub async fn handle(&self, request: ControllerRequest) -> ControllerResponse {
        self.service.handle_client(request, true).await
    }

    /// A broker heartbeat (see `ControllerRequest::Heartbeat`).
    pub async fn heartbeat(
        &self,
        broker: BrokerId,
        broker_epoch: u64,
    ) -> Result<HeartbeatReply, RpcError> {
        match self
            .handle(ControllerRequest::Heartbeat {
                broker,
                broker_epoch,
            })
            .await
        {
            ControllerResponse::Heartbeat(reply) => reply,
            other => Err(unexpected(other)),
        }
    }

    /// Adds controller `id` at `addr` to the voters (as a learner that
    /// catches up, then promoted); answers the voters after the change.
    /// See the crate docs for the whole procedure.
    pub async fn add_voter(&self, id: u64, addr: impl Into<String>) -> Result<Voters, RpcError> {
        self.change_membership(MembershipChange::AddVoter {
            id,
            addr: addr.into(),
        })
        .await
    }

    /// Removes controller `id` from the voters; answers the voters after.
    pub async fn remove_voter(&self, id: u64) -> Result<Voters, RpcError> {
        self.change_membership(MembershipChange::RemoveVoter { id })
            .await
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<Voters, RpcError> {
        match self
            .handle(ControllerRequest::ChangeMembership(change))
            .await
        {
            ControllerResponse::MembershipChanged(voters) => voters,
            other => Err(unexpected(other)),
        }
    }

    /// Stops the node cleanly: a leader first hands its leadership to the
    /// most caught-up voter (bounded by twice the maximum election timeout),
    /// so a rolling restart pauses writes for milliseconds rather than an
    /// election; then the RPC server and Raft stop and the database closes,
    /// so the data directory can be opened again (also by this process).
    pub async fn shutdown(self) {
        self.hand_off_leadership().await;
        self.stop().await;
    }

    /// Stops without handing off leadership: to its peers this looks like a
    /// crash (connections drop, a new leader is elected). For tests and
    /// failure drills.
    pub async fn shutdown_without_handoff(self) {
        self.stop().await;
    }

    async fn hand_off_leadership(&self) {
        use openraft::async_runtime::watch::WatchReceiver;
        let node_id = self.service.node_id;
        let target = {
            let metrics = self.raft().metrics();
            let m = metrics.borrow_watched();
            if m.current_leader != Some(node_id) {
                return;
            }
            let matched = |id: &u64| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|log_id| log_id.index)
            };
            m.membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != node_id)
                .max_by_key(|id| (matched(id), std::cmp::Reverse(*id)))
        };
        let Some(target) = target else {
            return;
        };
        if let Err(e) = self.raft().trigger().transfer_leader(target).await {
            tracing::warn!(node_id, target, error = %e, "could not hand off leadership");
            return;
        }
        let handed_off = self
            .raft()
            .wait(Some(self.handoff_wait))
            .metrics(
                |m| m.current_leader.is_some_and(|leader| leader != node_id),
                "leadership handed off",
            )
            .await;
        match handed_off {
            Ok(m) => {
                tracing::info!(node_id, new_leader = ?m.current_leader, "handed off leadership")
            }
            Err(e) => {
                tracing::warn!(node_id, target, error = %e, "leadership hand-off not confirmed; stopping anyway")
            }
        }
    }

    async fn stop(self) {
        let Controller {
            service, db, tasks, ..
        } = self;
        let node_id = service.node_id;
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Err(e) = service.raft.shutdown().await {
            tracing::warn!(node_id, error = %e, "raft did not shut down cleanly");
        }
        drop(service);
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
}

fn unexpected(response: ControllerResponse) -> RpcError {
    RpcError::Unavailable(format!("unexpected response {response:?}"))
}

impl ControllerApi for Controller {
    fn write(&self, cmd: MetadataCommand) -> BoxFuture<'_, Result<WriteOutcome, RpcError>> {
        Box::pin(async move {
            match self.handle(ControllerRequest::Write(cmd)).await {
                ControllerResponse::Written(outcome) => outcome,
                other => Err(unexpected(other)),
            }
        })
    }

    fn deltas_since(
        &self,
        version: u64,
        wait: Duration,
    ) -> BoxFuture<'_, Result<MetadataDeltas, RpcError>> {
        Box::pin(async move { Ok(self.service.deltas(version, wait).await) })
    }
}

/// Opens the redb database in `data_dir` (creating both if needed) and loads
/// the state machine from its snapshot.
fn open_store(
    data_dir: &Path,
    store: &StoreLocation,
    ring_capacity: usize,
) -> Result<(Arc<redb::Database>, MetadataStateMachine), ControllerError> {
    let db = match store {
        StoreLocation::DataDir => {
            std::fs::create_dir_all(data_dir).map_err(|source| ControllerError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
            Arc::new(open_database(data_dir)?)
        }
        StoreLocation::Backend(backend) => {
            let open_error = |source: redb::Error| ControllerError::OpenDatabase {
                path: PathBuf::from("(caller's backend)"),
                source,
            };
            let db = redb::Builder::new()
                .create_with_backend(SharedBackend(backend.clone()))
                .map_err(|e| open_error(e.into()))?;
            log_store::create_tables(&db).map_err(open_error)?;
            state_machine::create_tables(&db).map_err(open_error)?;
            Arc::new(db)
        }
    };
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

/// A new cluster id as Kafka makes one: a random (v4) UUID in URL-safe
/// base64 without padding (22 characters), redrawn if it would start with
/// '-' (Kafka avoids ids that look like command-line flags).
pub fn random_cluster_id(entropy: &dyn Entropy) -> String {
    loop {
        let id = kafka_uuid_string(entropy.uuid());
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
            .raft()
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
        use openraft::error::{ClientWriteError, ForwardToLeader};

        use crate::service::write_error;

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
            let id = random_cluster_id(&proto::seams::OsEntropy);
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'));
            assert!(id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
    }
}
