//! What a controller does with a request, wherever it came from (the RPC
//! server, a peer's forward, or an in-process caller): reads are answered
//! from this node's applied state; writes, heartbeats and membership changes
//! are leader-only and are forwarded to the leader when this node is a
//! follower that knows one. A request forwarded here is never forwarded
//! again, so a request makes at most one hop per attempt.
//!
//! This module decides routing and maps Raft's errors to `RpcError`; it
//! never changes the image except through a Raft write.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError};
use openraft::ChangeMembers;
use proto::rpc::{
    ControllerRequest, ControllerResponse, HeartbeatReply, MembershipChange, MetadataDeltas,
    QuorumStatus, RpcError, Voters, WriteOutcome,
};
use proto::{BrokerId, MetadataCommand};

use crate::liveness::{heartbeat_fenced, BrokerSessions, Clock};
use crate::network::Peers;
use crate::state_machine::AppliedState;
use crate::types::{ControllerNode, Proposal, Raft, Snapshot, TypeConfig};
use crate::wire::{PeerRequest, PeerResponse};
use crate::MAX_DELTAS_PER_ANSWER;

/// Forward attempts for one request when leadership moves under it.
const MAX_FORWARD_HOPS: usize = 3;
/// Pause before trying again after a leader said it no longer leads.
const FORWARD_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Where a leader-only request goes.
enum Route {
    Local,
    Leader {
        id: u64,
        addr: String,
    },
    Unknown,
    /// This node is out of the quorum (see `Service::removed`).
    Removed,
}

/// A controller node's request handling, shared by its server tasks, its
/// leader duties and the `Controller` handle.
pub(crate) struct Service {
    pub node_id: u64,
    pub raft: Raft,
    pub state: AppliedState,
    pub peers: Arc<Peers>,
    pub sessions: Mutex<BrokerSessions>,
    pub clock: Arc<dyn Clock>,
    /// Bound on a forwarded call and on a membership change.
    pub request_timeout: Duration,
    /// Longest long-poll a `DeltasSince` may ask for.
    pub max_deltas_wait: Duration,
}

impl Service {
    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, BrokerSessions> {
        // Sessions are a cache of recent heartbeats: a panic while holding
        // the lock cannot leave them in a state worth refusing.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this node was removed from the quorum: it holds a
    /// membership and is neither a voter nor a learner of it. openraft steps
    /// a removed leader down to a learner but leaves its vote (for itself)
    /// in place, so `as_leader()` alone would still say it leads; and no
    /// member replicates to it any more, so its image only grows stale.
    pub(crate) fn removed(&self) -> bool {
        use openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        membership.nodes().next().is_some() && membership.get_node(&self.node_id).is_none()
    }

    fn route(&self) -> Route {
        if self.removed() {
            return Route::Removed;
        }
        match self.raft.as_leader() {
            Ok(_) => Route::Local,
            Err(forward) => match forward.leader_id {
                Some(id) => Route::Leader {
                    id,
                    addr: forward
                        .leader_node
                        .map(|node| node.rpc_addr)
                        .unwrap_or_default(),
                },
                None => Route::Unknown,
            },
        }
    }

    /// Answers a broker's (or admin's) request. With `may_forward`, a
    /// follower passes leader-only requests to the leader.
    pub(crate) async fn handle_client(
        &self,
        request: ControllerRequest,
        may_forward: bool,
    ) -> ControllerResponse {
        match request {
            ControllerRequest::DescribeQuorum => ControllerResponse::Quorum(Ok(self.status())),
            ControllerRequest::DeltasSince { .. } if self.removed() => {
                ControllerResponse::Deltas(Err(RpcError::Removed))
            }
            ControllerRequest::DeltasSince { version, wait_ms } => {
                let wait = Duration::from_millis(wait_ms).min(self.max_deltas_wait);
                ControllerResponse::Deltas(Ok(self.deltas(version, wait).await))
            }
            leader_only => self.leader_only(leader_only, may_forward).await,
        }
    }

    async fn leader_only(
        &self,
        request: ControllerRequest,
        may_forward: bool,
    ) -> ControllerResponse {
        let mut last = None;
        for hop in 0..MAX_FORWARD_HOPS {
            let may_retry = may_forward && hop + 1 < MAX_FORWARD_HOPS;
            let response = match self.route() {
                Route::Local => self.local(&request).await,
                Route::Leader { id, addr } if may_forward => {
                    let forward = PeerRequest::Forward(request.clone());
                    match self
                        .peers
                        .call(id, &addr, &forward, self.request_timeout)
                        .await
                    {
                        Ok(PeerResponse::Forwarded(response)) => response,
                        Ok(other) => {
                            return error_response(
                                &request,
                                RpcError::Unavailable(format!(
                                    "leader {id} answered a forward with {other:?}"
                                )),
                            )
                        }
                        // It may or may not have been done: say so, and let
                        // the caller retry (commands are idempotent or
                        // recognised).
                        Err(e) => {
                            return error_response(
                                &request,
                                RpcError::Unavailable(format!(
                                    "forwarding to leader {id} at {addr}: {e}"
                                )),
                            )
                        }
                    }
                }
                Route::Leader { addr, .. } => {
                    return error_response(
                        &request,
                        RpcError::NotLeader(Some(addr).filter(|a| !a.is_empty())),
                    )
                }
                Route::Unknown => {
                    return last
                        .unwrap_or_else(|| error_response(&request, RpcError::NotLeader(None)))
                }
                Route::Removed => return error_response(&request, RpcError::Removed),
            };
            if !(may_retry && is_not_leader(&response)) {
                return response;
            }
            // Leadership moved between routing and handling; nothing was
            // proposed, so asking the new leader is safe.
            last = Some(response);
            tokio::time::sleep(FORWARD_RETRY_PAUSE).await;
        }
        last.unwrap_or_else(|| error_response(&request, RpcError::NotLeader(None)))
    }

    /// Handles a leader-only request here, answering `NotLeader` if this
    /// node does not lead.
    async fn local(&self, request: &ControllerRequest) -> ControllerResponse {
        match request {
            ControllerRequest::Write(cmd) => {
                ControllerResponse::Written(self.write_local(cmd.clone()).await)
            }
            ControllerRequest::Heartbeat {
                broker,
                broker_epoch,
            } => ControllerResponse::Heartbeat(self.heartbeat_local(*broker, *broker_epoch)),
            ControllerRequest::ChangeMembership(change) => {
                let changed = tokio::time::timeout(
                    self.request_timeout,
                    self.change_membership_local(change.clone()),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(RpcError::Unavailable(format!(
                        "membership change not done within {:?}; it may still complete",
                        self.request_timeout
                    )))
                });
                ControllerResponse::MembershipChanged(changed)
            }
            ControllerRequest::DeltasSince { version, wait_ms } => {
                let wait = Duration::from_millis(*wait_ms).min(self.max_deltas_wait);
                ControllerResponse::Deltas(Ok(self.deltas(*version, wait).await))
            }
            ControllerRequest::DescribeQuorum => ControllerResponse::Quorum(Ok(self.status())),
        }
    }

    pub(crate) async fn write_local(&self, cmd: MetadataCommand) -> Result<WriteOutcome, RpcError> {
        match self.raft.client_write(Proposal(cmd)).await {
            Ok(response) => Ok(WriteOutcome {
                version: response.log_id.index,
                reply: response.data,
            }),
            Err(e) => Err(write_error(e)),
        }
    }

    fn heartbeat_local(&self, broker: BrokerId, epoch: u64) -> Result<HeartbeatReply, RpcError> {
        if self.removed() {
            return Err(RpcError::Removed);
        }
        if let Err(forward) = self.raft.as_leader() {
            return Err(RpcError::NotLeader(
                forward
                    .leader_node
                    .map(|n| n.rpc_addr)
                    .filter(|a| !a.is_empty()),
            ));
        }
        let now = self.clock.now();
        self.sessions().heartbeat(broker, epoch, now);
        let fenced = self
            .state
            .read_image(|_, image| heartbeat_fenced(image, broker, epoch));
        Ok(HeartbeatReply { fenced })
    }

    async fn change_membership_local(&self, change: MembershipChange) -> Result<Voters, RpcError> {
        let response = match change {
            MembershipChange::AddVoter { id, addr } => {
                if addr.is_empty() {
                    return Err(RpcError::Rejected(format!(
                        "controller {id} needs an RPC address"
                    )));
                }
                // As a learner first: it catches up (log or snapshot) before
                // it counts towards any quorum.
                self.raft
                    .add_learner(id, ControllerNode { rpc_addr: addr }, true)
                    .await
                    .map_err(membership_error)?;
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(membership_error)?
            }
            MembershipChange::RemoveVoter { id } => {
                let voters = self.voters();
                if !voters.contains_key(&id) {
                    return Err(RpcError::Rejected(format!(
                        "controller {id} is not a voter (voters: {voters:?})"
                    )));
                }
                if voters.len() == 1 {
                    return Err(RpcError::Rejected(format!(
                        "controller {id} is the last voter"
                    )));
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
                    .map_err(membership_error)?
            }
        };
        Ok(match response.membership {
            Some(membership) => membership
                .voter_ids()
                .map(|id| {
                    let addr = membership
                        .get_node(&id)
                        .map(|n| n.rpc_addr.clone())
                        .unwrap_or_default();
                    (id, addr)
                })
                .collect(),
            None => self.voters(),
        })
    }

    /// The voters of the membership this node knows, with their addresses.
    pub(crate) fn voters(&self) -> Voters {
        self.status().voters
    }

    /// What this node knows of the quorum right now.
    pub(crate) fn status(&self) -> QuorumStatus {
        use openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let addr = |id: &u64| {
            membership
                .get_node(id)
                .map(|n| n.rpc_addr.clone())
                .unwrap_or_default()
        };
        QuorumStatus {
            node_id: self.node_id,
            leader: m.current_leader,
            term: m.current_term,
            voters: membership.voter_ids().map(|id| (id, addr(&id))).collect(),
            learners: membership.learner_ids().map(|id| (id, addr(&id))).collect(),
            last_applied: m.last_applied.map(|id| id.index),
            snapshot: m.snapshot.map(|id| id.index),
            purged: m.purged.map(|id| id.index),
        }
    }

    /// Commands applied after `version`, waiting up to `wait` for one.
    pub(crate) async fn deltas(&self, version: u64, wait: Duration) -> MetadataDeltas {
        let deadline = tokio::time::Instant::now() + wait;
        let mut applied = self.state.subscribe();
        loop {
            // Mark the current version seen before reading, so an apply that
            // lands after the read wakes the wait below.
            applied.borrow_and_update();
            let answer = self.state.deltas_after(version, MAX_DELTAS_PER_ANSWER);
            match &answer {
                MetadataDeltas::Deltas(commands) if commands.is_empty() => {}
                _ => return answer,
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the state machine is gone: nothing new.
                Ok(Err(_)) | Err(_) => return answer,
            }
        }
    }

    /// Answers another controller.
    pub(crate) async fn handle_peer(&self, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::AppendEntries(rpc) => PeerResponse::AppendEntries(
                self.raft
                    .append_entries(rpc)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            PeerRequest::Vote(rpc) => {
                PeerResponse::Vote(self.raft.vote(rpc).await.map_err(|e| e.to_string()))
            }
            PeerRequest::PreVote(rpc) => {
                PeerResponse::Vote(self.raft.pre_vote(rpc).await.map_err(|e| e.to_string()))
            }
            PeerRequest::FullSnapshot { vote, meta, data } => {
                let snapshot = Snapshot {
                    meta,
                    snapshot: Vec::from(data),
                };
                PeerResponse::FullSnapshot(
                    self.raft
                        .install_full_snapshot(vote, snapshot)
                        .await
                        .map_err(|e| e.to_string()),
                )
            }
            PeerRequest::TransferLeader(rpc) => PeerResponse::TransferLeader(
                self.raft
                    .handle_transfer_leader(rpc)
                    .await
                    .map_err(|e| e.to_string()),
            ),
            PeerRequest::Forward(request) => {
                PeerResponse::Forwarded(self.handle_client(request, false).await)
            }
        }
    }
}

fn is_not_leader(response: &ControllerResponse) -> bool {
    matches!(response_error(response), Some(RpcError::NotLeader(_)))
}

fn response_error(response: &ControllerResponse) -> Option<&RpcError> {
    match response {
        ControllerResponse::Written(Err(e))
        | ControllerResponse::Deltas(Err(e))
        | ControllerResponse::Heartbeat(Err(e))
        | ControllerResponse::MembershipChanged(Err(e))
        | ControllerResponse::Quorum(Err(e)) => Some(e),
        _ => None,
    }
}

/// `error` as the response `request` expects.
pub(crate) fn error_response(request: &ControllerRequest, error: RpcError) -> ControllerResponse {
    match request {
        ControllerRequest::Write(_) => ControllerResponse::Written(Err(error)),
        ControllerRequest::DeltasSince { .. } => ControllerResponse::Deltas(Err(error)),
        ControllerRequest::Heartbeat { .. } => ControllerResponse::Heartbeat(Err(error)),
        ControllerRequest::ChangeMembership(_) => ControllerResponse::MembershipChanged(Err(error)),
        ControllerRequest::DescribeQuorum => ControllerResponse::Quorum(Err(error)),
    }
}

pub(crate) fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> RpcError {
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

fn membership_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> RpcError {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(change)) => match change {
            // Another change is still going on: try again later.
            ChangeMembershipError::InProgress(_)
            | ChangeMembershipError::UncommittedLeaderLog(_) => {
                RpcError::Unavailable(change.to_string())
            }
            other => RpcError::Rejected(other.to_string()),
        },
        other => write_error(other),
    }
}
