//! `oxbow metadata-quorum`: the admin tool for the controller quorum, over
//! the controller RPC (like Kafka's `kafka-metadata-quorum.sh`). `describe`
//! asks every controller given for its own view; `add-controller` and
//! `remove-controller` ask any of them for a membership change, which the
//! leader applies.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use broker::controller_client::{RemoteController, RemoteControllerConfig};
use proto::rpc::{MembershipChange, QuorumStatus, Voters};
use proto::seams::TokioNet;

use crate::config::QuorumAction;

/// Bound on asking one controller for its view: `describe` must not hang on
/// a controller that is down or paused.
const DESCRIBE_BUDGET: Duration = Duration::from_secs(3);

pub async fn run(controllers: Vec<String>, action: QuorumAction) -> Result<()> {
    match action {
        QuorumAction::Describe => describe(&controllers).await,
        QuorumAction::AddController { id, addr } => {
            let voters = change(&controllers, MembershipChange::AddVoter { id, addr }).await?;
            println!("voters: {}", list(&voters));
            Ok(())
        }
        QuorumAction::RemoveController { id } => {
            let voters = change(&controllers, MembershipChange::RemoveVoter { id }).await?;
            println!("voters: {}", list(&voters));
            Ok(())
        }
    }
}

fn client(addrs: Vec<String>, config: RemoteControllerConfig) -> Result<RemoteController> {
    RemoteController::new(addrs, config, Arc::new(TokioNet)).map_err(|e| anyhow!("{e}"))
}

async fn change(controllers: &[String], change: MembershipChange) -> Result<Voters> {
    let remote = client(controllers.to_vec(), RemoteControllerConfig::default())?;
    remote
        .change_membership(change.clone())
        .await
        .map_err(|e| anyhow!("{change:?}: {e}"))
}

async fn describe(controllers: &[String]) -> Result<()> {
    let config = RemoteControllerConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: DESCRIBE_BUDGET,
        retry_for: DESCRIBE_BUDGET,
        ..RemoteControllerConfig::default()
    };
    let mut known: Option<QuorumStatus> = None;
    for addr in controllers {
        let answer = client(vec![addr.clone()], config.clone())?
            .describe_quorum()
            .await;
        match answer {
            Ok(status) => {
                println!("{addr}: {}", describe_one(&status));
                // The voters as the most advanced controller knows them.
                if known
                    .as_ref()
                    .is_none_or(|k| k.last_applied < status.last_applied)
                {
                    known = Some(status);
                }
            }
            Err(e) => println!("{addr}: unreachable: {e}"),
        }
    }
    let Some(status) = known else {
        bail!("no controller answered: {controllers:?}");
    };
    println!("voters: {}", list(&status.voters));
    println!("learners: {}", list(&status.learners));
    Ok(())
}

/// One controller's line: its id, role, leader, term and log positions.
fn describe_one(s: &QuorumStatus) -> String {
    let role = if s.voters.contains_key(&s.node_id) {
        match s.leader {
            Some(l) if l == s.node_id => "leader".to_string(),
            Some(l) => format!("follower of {l}"),
            None => "voter, no leader known".to_string(),
        }
    } else if s.learners.contains_key(&s.node_id) {
        "learner".to_string()
    } else if s.voters.is_empty() {
        "not yet part of a quorum".to_string()
    } else {
        "removed from the quorum".to_string()
    };
    let mut line = format!("controller {} {role}, term {}", s.node_id, s.term);
    let position = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let _ = write!(
        line,
        ", applied {}, snapshot {}, purged {}",
        position(s.last_applied),
        position(s.snapshot),
        position(s.purged)
    );
    line
}

fn list(nodes: &Voters) -> String {
    if nodes.is_empty() {
        return "(none)".to_string();
    }
    nodes
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(node_id: u64, leader: Option<u64>, voters: &[u64], learners: &[u64]) -> QuorumStatus {
        let nodes = |ids: &[u64]| ids.iter().map(|id| (*id, format!("h:{id}"))).collect();
        QuorumStatus {
            node_id,
            leader,
            term: 3,
            voters: nodes(voters),
            learners: nodes(learners),
            last_applied: Some(10),
            snapshot: None,
            purged: None,
        }
    }

    #[test]
    fn roles_are_named_from_the_nodes_own_view() {
        let line = |s: QuorumStatus| describe_one(&s);
        assert_eq!(
            line(status(1, Some(1), &[1, 2, 3], &[])),
            "controller 1 leader, term 3, applied 10, snapshot -, purged -"
        );
        assert!(
            line(status(2, Some(1), &[1, 2, 3], &[])).starts_with("controller 2 follower of 1,")
        );
        assert!(line(status(2, None, &[1, 2, 3], &[])).contains("no leader known"));
        assert!(line(status(4, Some(1), &[1, 2, 3], &[4])).contains("learner"));
        assert!(line(status(1, Some(1), &[2, 3], &[])).contains("removed from the quorum"));
        assert!(line(status(5, None, &[], &[])).contains("not yet part of a quorum"));
        assert_eq!(list(&Voters::new()), "(none)");
        assert_eq!(list(&status(1, None, &[1, 2], &[]).voters), "1=h:1,2=h:2");
    }
}
