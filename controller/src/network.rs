//! The Raft transport between controllers over TCP, and the pool of peer
//! connections it shares with the forwarding of broker requests.
//!
//! [`Peers`] keeps at most one [`PeerConnection`] per peer, opened on first
//! use, reused by every call (Raft replication, heartbeats, votes, snapshots
//! and forwarded requests multiplex on it) and reopened on the next call
//! after it breaks. [`TcpNetwork`] is openraft's network factory over that
//! pool. Every call has a timeout; failures map to openraft's errors so that
//! it retries: a peer that cannot be reached is `Unreachable` (openraft backs
//! off), a call that got no answer in time is `Timeout`, a connection that
//! broke mid-call is `Network` (retried at once, on a new connection).
//!
//! It must never pretend a peer answered: every `Ok` carries the peer's own
//! response.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::RPCTypes;

use proto::seams::Net;

use crate::types::{ControllerNode, Snapshot, TypeConfig, Vote};
use crate::wire::{ConnectLimits, PeerConnection, PeerRequest, PeerResponse, WireError};

/// One slot per peer; its async lock serialises (re)connecting.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<PeerConnection>>>>;

/// Connections from this controller to its peers, one per peer.
pub(crate) struct Peers {
    self_id: u64,
    net: Arc<dyn Net>,
    limits: ConnectLimits,
    slots: Mutex<HashMap<u64, Slot>>,
}

impl Peers {
    pub(crate) fn new(self_id: u64, net: Arc<dyn Net>, limits: ConnectLimits) -> Self {
        Self {
            self_id,
            net,
            limits,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, target: u64) -> Slot {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target)
            .or_default()
            .clone()
    }

    /// The open connection to `target` at `addr`, connecting if there is
    /// none, it broke, or the peer's address changed.
    async fn connection(&self, target: u64, addr: &str) -> Result<Arc<PeerConnection>, WireError> {
        if addr.is_empty() {
            return Err(WireError::Connect {
                addr: String::new(),
                message: format!("controller {target} has no RPC address"),
            });
        }
        let slot = self.slot(target);
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.is_closed() && conn.addr() == addr {
                return Ok(conn.clone());
            }
        }
        *guard = None;
        let conn = Arc::new(
            PeerConnection::connect(&*self.net, addr, self.self_id, target, self.limits).await?,
        );
        tracing::debug!(target, addr, "connected to peer controller");
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// One call to `target`, bounded by `timeout` (connecting included).
    pub(crate) async fn call(
        &self,
        target: u64,
        addr: &str,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, WireError> {
        let started = tokio::time::Instant::now();
        let conn = tokio::time::timeout(timeout, self.connection(target, addr))
            .await
            .map_err(|_| WireError::Timeout(timeout))??;
        let left = timeout.saturating_sub(started.elapsed());
        conn.call(request, left).await
    }
}

/// openraft's network factory: clients for peers, over [`Peers`].
#[derive(Clone)]
pub struct TcpNetwork {
    peers: Arc<Peers>,
}

impl TcpNetwork {
    pub(crate) fn new(peers: Arc<Peers>) -> Self {
        Self { peers }
    }
}

/// openraft's client for one peer. Cheap: all clients for a peer share its
/// one connection.
pub struct PeerClient {
    peers: Arc<Peers>,
    target: u64,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for TcpNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &ControllerNode) -> Self::Network {
        PeerClient {
            peers: self.peers.clone(),
            target,
            addr: node.rpc_addr.clone(),
        }
    }
}

impl PeerClient {
    async fn call(
        &self,
        action: RPCTypes,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, RPCError<TypeConfig>> {
        self.peers
            .call(self.target, &self.addr, &request, timeout)
            .await
            .map_err(|e| self.rpc_error(action, timeout, e))
    }

    fn rpc_error(&self, action: RPCTypes, timeout: Duration, e: WireError) -> RPCError<TypeConfig> {
        match e {
            WireError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.peers.self_id,
                target: self.target,
                timeout,
            }),
            WireError::Closed(_) | WireError::Io(_) | WireError::Truncated => {
                RPCError::Network(NetworkError::from_string(format!(
                    "controller {} at {}: {e}",
                    self.target, self.addr
                )))
            }
            other => self.unreachable(other.to_string()),
        }
    }

    fn unreachable(&self, why: String) -> RPCError<TypeConfig> {
        RPCError::Unreachable(Unreachable::from_string(format!(
            "controller {} at {}: {why}",
            self.target, self.addr
        )))
    }

    fn unexpected(&self, got: &PeerResponse) -> RPCError<TypeConfig> {
        RPCError::Network(NetworkError::from_string(format!(
            "controller {} answered with the wrong message kind: {got:?}",
            self.target
        )))
    }

    async fn vote_call(
        &self,
        request: PeerRequest,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(RPCTypes::Vote, request, option.soft_ttl())
            .await?
        {
            PeerResponse::Vote(Ok(resp)) => Ok(resp),
            // The peer's Raft is stopping or failed: treat it as away.
            PeerResponse::Vote(Err(remote)) => Err(self.unreachable(remote)),
            other => Err(self.unexpected(&other)),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = PeerRequest::AppendEntries(rpc);
        match self
            .call(RPCTypes::AppendEntries, request, option.soft_ttl())
            .await?
        {
            PeerResponse::AppendEntries(Ok(resp)) => Ok(resp),
            PeerResponse::AppendEntries(Err(remote)) => Err(self.unreachable(remote)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_call(PeerRequest::Vote(rpc), option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_call(PeerRequest::PreVote(rpc), option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = PeerRequest::TransferLeader(req);
        match self
            .call(RPCTypes::TransferLeader, request, option.soft_ttl())
            .await?
        {
            PeerResponse::TransferLeader(Ok(resp)) => Ok(resp),
            PeerResponse::TransferLeader(Err(remote)) => Err(self.unreachable(remote)),
            other => Err(self.unexpected(&other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let timeout = option.soft_ttl();
        let request = PeerRequest::FullSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot.into(),
        };
        let sent = self.call(RPCTypes::InstallSnapshot, request, timeout);
        let response = tokio::select! {
            response = sent => response,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let to_streaming = |e: RPCError<TypeConfig>| match e {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::RemoteError(r) => {
                StreamingError::Unreachable(Unreachable::from_string(r.to_string()))
            }
        };
        match response.map_err(to_streaming)? {
            PeerResponse::FullSnapshot(Ok(resp)) => Ok(resp),
            PeerResponse::FullSnapshot(Err(remote)) => Err(StreamingError::Unreachable(
                Unreachable::from_string(format!("controller {}: {remote}", self.target)),
            )),
            other => Err(to_streaming(self.unexpected(&other))),
        }
    }
}
