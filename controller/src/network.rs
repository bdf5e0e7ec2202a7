//! Raft messages between controllers. PLACEHOLDER: with a single voter
//! openraft never sends an RPC, so every method here answers `Unreachable`
//! with "multi-node raft network not built yet". This is the one deliberate
//! gap in the crate; a later phase replaces it with a TCP network using
//! `proto`'s length-prefixed rmp-serde framing. It must never pretend a peer
//! answered.

use std::future::Future;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};

use crate::types::{ControllerNode, Snapshot, TypeConfig, Vote};

const NOT_BUILT: &str = "multi-node raft network not built yet";

/// Hands out [`UnbuiltPeer`] clients.
#[derive(Debug, Clone, Default)]
pub struct UnbuiltNetwork;

/// A peer that cannot be reached because the network does not exist yet.
#[derive(Debug, Clone)]
pub struct UnbuiltPeer {
    target: u64,
}

impl UnbuiltPeer {
    fn unreachable(&self) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!("controller {}: {NOT_BUILT}", self.target))
    }
}

impl RaftNetworkFactory<TypeConfig> for UnbuiltNetwork {
    type Network = UnbuiltPeer;

    async fn new_client(&mut self, target: u64, _node: &ControllerNode) -> Self::Network {
        UnbuiltPeer { target }
    }
}

impl RaftNetworkV2<TypeConfig> for UnbuiltPeer {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn pre_vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
