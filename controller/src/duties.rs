//! What a controller does on its own while it leads: on taking over, wait for
//! its state machine to catch up with everything committed, write
//! `Bootstrap` if the cluster has none yet, and start every broker's session
//! afresh; then, every tick, propose `FenceBroker` for each broker whose
//! session expired.
//!
//! Each node runs this task; it does nothing while the node follows or
//! after it was removed from the quorum. It reads the clock passed in, and
//! changes metadata only through Raft writes.
//! Fencing proposals go one at a time, so the same one is never in flight
//! twice; one that lands after the broker re-registered is a no-op
//! (`FenceBroker` names the epoch it fences).

use std::sync::Arc;
use std::time::Duration;

use openraft::type_config::alias::CommittedLeaderIdOf;
use openraft::ReadPolicy;
use proto::MetadataCommand;

use crate::service::Service;
use crate::types::TypeConfig;

pub(crate) struct DutyConfig {
    /// How often leadership and sessions are checked.
    pub tick: Duration,
    /// `None`: brokers are never fenced for silence.
    pub session_timeout: Option<Duration>,
    /// Write `Bootstrap` (with this id, or a random one) when leading a
    /// cluster that has none.
    pub bootstrap: Option<String>,
}

pub(crate) async fn run(service: Arc<Service>, config: DutyConfig) {
    let mut ticks = tokio::time::interval(config.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The leadership (term and leader) we have caught up and set up under.
    let mut ready_under: Option<CommittedLeaderIdOf<TypeConfig>> = None;
    loop {
        ticks.tick().await;
        let leader = match service.raft.as_leader() {
            // A removed leader keeps its vote: it must not fence anyone.
            Ok(leader) if !service.removed() => leader.to_committed_leader_id(),
            _ => {
                if ready_under.take().is_some() {
                    tracing::info!(node_id = service.node_id, "no longer leading");
                    service.sessions().reset();
                }
                continue;
            }
        };
        if ready_under.as_ref() != Some(&leader) {
            // Everything committed before this term must be applied before
            // the image can be trusted for bootstrapping or fencing.
            let barrier = tokio::time::timeout(
                service.request_timeout,
                service.raft.ensure_linearizable(ReadPolicy::ReadIndex),
            )
            .await;
            if !matches!(barrier, Ok(Ok(_))) {
                continue;
            }
            if let Some(cluster_id) = &config.bootstrap {
                if !bootstrap(&service, cluster_id).await {
                    continue;
                }
            }
            service.sessions().reset();
            tracing::info!(
                node_id = service.node_id,
                ?leader,
                "leading: broker sessions start now"
            );
            ready_under = Some(leader);
        }
        if let Some(timeout) = config.session_timeout {
            fence_expired(&service, timeout).await;
        }
    }
}

/// Writes `Bootstrap` unless the image has a cluster id. `false` if it
/// could not (tried again next tick).
async fn bootstrap(service: &Service, cluster_id: &str) -> bool {
    if service
        .state
        .read_image(|_, image| image.cluster_id.is_some())
    {
        return true;
    }
    let cluster_id = cluster_id.to_string();
    match service
        .write_local(MetadataCommand::Bootstrap {
            cluster_id: cluster_id.clone(),
        })
        .await
    {
        Ok(outcome) => {
            tracing::info!(node_id = service.node_id, %cluster_id, version = outcome.version, reply = ?outcome.reply, "bootstrapped metadata");
            true
        }
        Err(e) => {
            tracing::warn!(node_id = service.node_id, error = %e, "writing Bootstrap failed; will retry");
            false
        }
    }
}

async fn fence_expired(service: &Service, timeout: Duration) {
    let now = service.clock.now();
    let expired = service
        .state
        .read_image(|_, image| service.sessions().expired(image, now, timeout));
    for (id, epoch) in expired {
        tracing::warn!(
            broker = id,
            epoch,
            ?timeout,
            "broker session expired; fencing it"
        );
        match service
            .write_local(MetadataCommand::FenceBroker { id, epoch })
            .await
        {
            Ok(outcome) => {
                tracing::info!(broker = id, epoch, version = outcome.version, reply = ?outcome.reply, "fenced broker")
            }
            // Still unfenced in the image: the next tick proposes it again.
            Err(e) => tracing::warn!(broker = id, epoch, error = %e, "fencing broker failed"),
        }
    }
}
