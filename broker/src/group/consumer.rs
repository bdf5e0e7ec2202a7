//! Kafka's consumer group protocol (KIP-848, `group.protocol=consumer`):
//! the coordinator decides every member's partitions and hands them out
//! through `ConsumerGroupHeartbeat`; there is no JoinGroup/SyncGroup round.
//!
//! Pure, like `classic`: the clock and the topics' metadata are passed in.
//! The rules follow Kafka's `GroupMetadataManager.consumerGroupHeartbeat`
//! and `CurrentAssignmentBuilder`:
//!
//! - The **group epoch** goes up whenever what the assignment depends on
//!   changes: a member joins or leaves or changes its subscription or
//!   assignor, or a subscribed topic appears, disappears or gains
//!   partitions. The **target assignment** is recomputed (by the `uniform`
//!   or `range` assignor) when the group epoch is ahead of it.
//! - Each member moves towards its target on its own heartbeats. A member
//!   first gives up (revokes) what it owns and should not, keeping its
//!   epoch, until a heartbeat reports it no longer owns them; then it takes
//!   the target epoch and the partitions of its target that no other member
//!   still holds; those still held come on a later heartbeat, once freed.
//!   So no partition is ever owned by two members at once.
//! - A member that does not heartbeat within the session timeout, or does
//!   not finish revoking within its rebalance timeout, is removed.
//! - Static members (`group.instance.id`) leaving with epoch -2 keep their
//!   assignment for the session timeout, and a new incarnation with the
//!   same instance id takes it over without a rebalance.
//!
//! Every change of what must survive (members, epochs, subscriptions,
//! assignments; not timers) is written to `__consumer_offsets` as one record
//! per group holding its whole state (`snapshot`), under a key of Oxbow's own
//! (compaction keeps the latest); a heartbeat is answered once its record is
//! committed. The new owner of the partition replays the latest record of
//! each group, so members keep their epochs and partitions through a
//! coordinator move and only have to heartbeat within a fresh session.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::classic::Now;
use crate::errors::ErrorCode;

/// Topic id → partitions.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// Every topic the caller knows: name → (id, partition count).
pub type Topics = BTreeMap<String, (Uuid, u32)>;
pub type TopicLookup<'a> = &'a Topics;

/// Epoch a member sends to leave for good.
pub const LEAVE_EPOCH: i32 = -1;
/// Epoch a static member sends to leave for now (it may come back).
pub const STATIC_LEAVE_EPOCH: i32 = -2;
/// Server-side assignors, the first the default (Kafka's order).
pub const ASSIGNORS: &[&str] = &["uniform", "range"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Owns exactly its target (or has nothing left to do).
    Stable,
    /// Must first stop consuming some partitions it owns.
    UnrevokedPartitions,
    /// Has the target epoch; waits for partitions others still hold.
    UnreleasedPartitions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    pub subscribed: BTreeSet<String>,
    /// A regular-expression subscription (whole names must match), and the
    /// topics it matched when last resolved.
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub regex_matches: BTreeSet<String>,
    pub assignor: Option<String>,
    pub rebalance_timeout_ms: i32,
    /// What it may consume now.
    pub assigned: Assignment,
    /// What it must give up before it moves on.
    pub revoking: Assignment,
    /// Timers are this coordinator's own: not persisted, restarted on load.
    #[serde(skip)]
    session_deadline: u64,
    #[serde(skip)]
    revocation_deadline: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub id: String,
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    /// Member id → its target partitions at `assignment_epoch`.
    pub target: BTreeMap<String, Assignment>,
    /// The subscribed topics as last seen: name → (id, partitions).
    topics: BTreeMap<String, (Uuid, u32)>,
    pub assignor: String,
}

/// A heartbeat, with what the wire layer knows about the caller.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatRequest {
    pub version: i16,
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// The member's whole assignment, when it has news or asked.
    pub assignment: Option<Assignment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatError {
    pub code: ErrorCode,
    pub message: Option<String>,
}

impl HeartbeatError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HeartbeatError {
            code,
            message: Some(message.into()),
        }
    }
}

/// Timeouts and bounds of consumer groups (Kafka's `group.consumer.*`).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub session_timeout_ms: i32,
    pub heartbeat_interval_ms: i32,
    pub max_size: usize,
}

impl ConsumerGroup {
    pub fn new(id: &str) -> Self {
        ConsumerGroup {
            id: id.to_string(),
            epoch: 0,
            assignment_epoch: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            topics: BTreeMap::new(),
            assignor: ASSIGNORS[0].to_string(),
        }
    }

    /// Kafka's names: Empty, Assigning, Reconciling, Stable.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.epoch > self.assignment_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn subscribed_topics(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.subscribed.iter().chain(&m.regex_matches).cloned())
            .collect()
    }

    fn member_by_instance(&self, instance: &str) -> Option<&ConsumerMember> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance))
    }

    /// Whether some member other than `except` owns or is giving up `p`.
    fn held_by_other(&self, topic: &Uuid, p: i32, except: &str) -> bool {
        self.members.iter().any(|(id, m)| {
            id != except
                && (m.assigned.get(topic).is_some_and(|s| s.contains(&p))
                    || m.revoking.get(topic).is_some_and(|s| s.contains(&p)))
        })
    }

    /// What is written to `__consumer_offsets`: the whole group, timers
    /// left out.
    pub fn snapshot(&self) -> Bytes {
        // Plain data: encoding it cannot fail.
        Bytes::from(rmp_serde::to_vec_named(self).unwrap_or_default())
    }

    /// A group read back from its record; its members' timers start at
    /// `now` (a fresh session each, and a fresh rebalance timeout for those
    /// still revoking), as after a coordinator move in Kafka.
    pub fn from_snapshot(bytes: &[u8], cfg: &ConsumerConfig, now: Now) -> Result<Self, String> {
        let mut g: ConsumerGroup = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
        g.start_sessions(cfg, now);
        Ok(g)
    }

    pub fn start_sessions(&mut self, cfg: &ConsumerConfig, now: Now) {
        let session = u64::try_from(cfg.session_timeout_ms.max(0)).unwrap_or(0);
        for m in self.members.values_mut() {
            m.session_deadline = now.mono_ms + session;
            m.revocation_deadline = (!m.revoking.is_empty())
                .then(|| now.mono_ms + u64::try_from(m.rebalance_timeout_ms.max(0)).unwrap_or(0));
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.members
            .values()
            .flat_map(|m| [Some(m.session_deadline), m.revocation_deadline])
            .flatten()
            .min()
    }

    /// Removes members whose session or revocation ran out; `true` if any.
    pub fn expire(&mut self, now: Now) -> bool {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.session_deadline <= now.mono_ms
                    || m.revocation_deadline.is_some_and(|d| d <= now.mono_ms)
            })
            .map(|m| m.id.clone())
            .collect();
        for id in &gone {
            tracing::info!(group = %self.id, member = %id, "consumer group member expired");
            self.remove_member(id);
        }
        !gone.is_empty()
    }

    fn remove_member(&mut self, id: &str) {
        if self.members.remove(id).is_some() {
            self.target.remove(id);
            self.epoch += 1;
        }
    }

    /// Every subscribed topic that exists, as the caller sees it now.
    fn topics_now(&self, lookup: TopicLookup) -> BTreeMap<String, (Uuid, u32)> {
        self.subscribed_topics()
            .into_iter()
            .filter_map(|t| lookup.get(&t).map(|v| (t, *v)))
            .collect()
    }

    /// Re-resolves every member's regular expression against the topics
    /// (internal ones never match, as in Kafka); whether any match changed.
    fn resolve_regexes(&mut self, lookup: TopicLookup) -> bool {
        let mut changed = false;
        for m in self.members.values_mut() {
            let matches: BTreeSet<String> = match m.regex.as_deref().map(compile_regex) {
                Some(Ok(re)) => lookup
                    .keys()
                    .filter(|t| !t.starts_with("__") && re.is_match(t))
                    .cloned()
                    .collect(),
                _ => BTreeSet::new(),
            };
            if matches != m.regex_matches {
                m.regex_matches = matches;
                changed = true;
            }
        }
        changed
    }

    /// The assignor most members ask for (ties: Kafka's order), else the
    /// default.
    fn chosen_assignor(&self) -> String {
        let mut votes: BTreeMap<usize, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(i) = m
                .assignor
                .as_deref()
                .and_then(|a| ASSIGNORS.iter().position(|x| *x == a))
            {
                *votes.entry(i).or_default() += 1;
            }
        }
        let best = votes
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map_or(0, |(i, _)| *i);
        ASSIGNORS[best].to_string()
    }

    fn compute_target(&mut self) {
        let subscriptions: BTreeMap<String, BTreeSet<Uuid>> = self
            .members
            .values()
            .map(|m| {
                let ids = m
                    .subscribed
                    .iter()
                    .chain(&m.regex_matches)
                    .filter_map(|t| self.topics.get(t).map(|(id, _)| *id))
                    .collect();
                (m.id.clone(), ids)
            })
            .collect();
        let partitions: BTreeMap<Uuid, u32> = self.topics.values().copied().collect();
        self.target = if self.assignor == "range" {
            assign_range(&subscriptions, &partitions)
        } else {
            assign_uniform(&subscriptions, &partitions, &self.target)
        };
        self.assignment_epoch = self.epoch;
    }

    /// Moves `member` towards its target (Kafka's `CurrentAssignmentBuilder`).
    /// `owned`: what the member's heartbeat says it still owns, if it said.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: Now) {
        let Some(m) = self.members.get(member_id) else {
            return;
        };
        if m.epoch < 0 {
            return;
        }
        let advance = match m.state {
            MemberState::Stable => m.epoch != self.assignment_epoch,
            // Done revoking once a heartbeat shows none of them owned.
            MemberState::UnrevokedPartitions => owned.is_some_and(|o| !intersects(o, &m.revoking)),
            MemberState::UnreleasedPartitions => true,
        };
        if !advance {
            return;
        }
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let m = self.members.get(member_id).expect("looked up above");
        let mut revoking = Assignment::new();
        for (topic, parts) in &m.assigned {
            for p in parts {
                if !target.get(topic).is_some_and(|t| t.contains(p)) {
                    revoking.entry(*topic).or_default().insert(*p);
                }
            }
        }
        let mut next = Assignment::new();
        let mut unreleased = false;
        for (topic, parts) in &target {
            for p in parts {
                let owns = m.assigned.get(topic).is_some_and(|s| s.contains(p));
                if owns || !self.held_by_other(topic, *p, member_id) {
                    next.entry(*topic).or_default().insert(*p);
                } else {
                    unreleased = true;
                }
            }
        }
        let target_epoch = self.assignment_epoch;
        let m = self.members.get_mut(member_id).expect("looked up above");
        if !revoking.is_empty() {
            m.assigned = subtract(&m.assigned, &revoking);
            m.revoking = revoking;
            m.state = MemberState::UnrevokedPartitions;
            m.revocation_deadline =
                Some(now.mono_ms + u64::try_from(m.rebalance_timeout_ms.max(0)).unwrap_or(0));
        } else {
            m.revoking.clear();
            m.revocation_deadline = None;
            m.assigned = next;
            if m.epoch != target_epoch {
                m.previous_epoch = m.epoch;
                m.epoch = target_epoch;
            }
            m.state = if unreleased {
                MemberState::UnreleasedPartitions
            } else {
                MemberState::Stable
            };
        }
    }

    /// One `ConsumerGroupHeartbeat` of a member of this group (the caller
    /// checked the request's shape and the group's existence).
    pub fn heartbeat(
        &mut self,
        cfg: &ConsumerConfig,
        now: Now,
        req: &HeartbeatRequest,
        new_member_id: String,
        lookup: TopicLookup,
    ) -> Result<HeartbeatReply, HeartbeatError> {
        let session = u64::try_from(cfg.session_timeout_ms.max(0)).unwrap_or(0);
        let leaving = req.member_epoch == LEAVE_EPOCH || req.member_epoch == STATIC_LEAVE_EPOCH;
        if leaving {
            return self.leave(now, req, session);
        }
        let mut bump = false;
        let member_id = if req.member_epoch == 0 {
            self.join(cfg, now, req, new_member_id)?
        } else {
            let m = self.members.get(&req.member_id).ok_or_else(|| {
                HeartbeatError::new(
                    ErrorCode::UnknownMemberId,
                    format!("member {} is not in group {}", req.member_id, self.id),
                )
            })?;
            if let Some(instance) = &req.instance_id {
                if m.instance_id.as_deref() != Some(instance.as_str()) {
                    return Err(HeartbeatError::new(
                        ErrorCode::FencedInstanceId,
                        format!("instance {instance} is not member {}", req.member_id),
                    ));
                }
            }
            check_epoch(m, req.member_epoch, req.owned.as_ref())?;
            req.member_id.clone()
        };
        let before = self.members[&member_id].assigned.clone();
        let new_member = self.members[&member_id].epoch == 0
            && self.members[&member_id].subscribed.is_empty()
            && self.members[&member_id].regex.is_none();
        {
            let m = self
                .members
                .get_mut(&member_id)
                .expect("joined or found above");
            m.session_deadline = now.mono_ms + session;
            if let Some(names) = &req.subscribed_topic_names {
                let names: BTreeSet<String> = names.iter().cloned().collect();
                if names != m.subscribed {
                    m.subscribed = names;
                    bump = true;
                }
            }
            if let Some(r) = &req.subscribed_topic_regex {
                // An empty one clears it (librdkafka sends one with names).
                let r = (!r.is_empty()).then(|| r.clone());
                if r != m.regex {
                    m.regex = r;
                    bump = true;
                }
            }
            if req.server_assignor.is_some() && req.server_assignor != m.assignor {
                m.assignor = req.server_assignor.clone();
                bump = true;
            }
            if req.rebalance_timeout_ms > 0 {
                m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            }
            if req.rack_id.is_some() {
                m.rack_id = req.rack_id.clone();
            }
            m.client_id = req.client_id.clone();
            m.client_host = req.client_host.clone();
        }
        if self.resolve_regexes(lookup) {
            bump = true;
        }
        let topics = self.topics_now(lookup);
        if topics != self.topics {
            self.topics = topics;
            bump = true;
        }
        if bump || new_member {
            self.epoch += 1;
        }
        if self.epoch > self.assignment_epoch {
            self.assignor = self.chosen_assignor();
            self.compute_target();
        }
        let owned = if req.member_epoch == 0 {
            Some(Assignment::new())
        } else {
            req.owned.clone()
        };
        self.reconcile(&member_id, owned.as_ref(), now);
        let m = &self.members[&member_id];
        let send_assignment = req.member_epoch == 0
            || m.assigned != before
            || owned.as_ref().is_some_and(|o| *o != m.assigned);
        Ok(HeartbeatReply {
            member_id: member_id.clone(),
            member_epoch: m.epoch,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            assignment: send_assignment.then(|| m.assigned.clone()),
        })
    }

    /// Epoch 0: a new member, a member starting over, or a static member's
    /// new incarnation taking over its assignment. Returns its id.
    fn join(
        &mut self,
        cfg: &ConsumerConfig,
        now: Now,
        req: &HeartbeatRequest,
        new_member_id: String,
    ) -> Result<String, HeartbeatError> {
        let id = if req.version >= 1 || !req.member_id.is_empty() {
            req.member_id.clone()
        } else {
            new_member_id
        };
        if let Some(instance) = &req.instance_id {
            if let Some(old) = self.member_by_instance(instance).cloned() {
                if old.id != id {
                    if old.epoch != STATIC_LEAVE_EPOCH {
                        return Err(HeartbeatError::new(
                            ErrorCode::UnreleasedInstanceId,
                            format!("instance {instance} is still held by member {}", old.id),
                        ));
                    }
                    // Takes over: same partitions, same epoch, no rebalance.
                    self.members.remove(&old.id);
                    let target = self.target.remove(&old.id);
                    let mut m = old;
                    m.id = id.clone();
                    m.epoch = m.previous_epoch;
                    self.members.insert(id.clone(), m);
                    if let Some(t) = target {
                        self.target.insert(id.clone(), t);
                    }
                    return Ok(id);
                }
            }
        }
        match self.members.get_mut(&id) {
            Some(m) => {
                // Starting over: it owns nothing now.
                m.assigned.clear();
                m.revoking.clear();
                m.revocation_deadline = None;
                m.state = MemberState::Stable;
                m.previous_epoch = m.epoch;
                m.epoch = 0;
            }
            None => {
                if self.members.len() >= cfg.max_size {
                    return Err(HeartbeatError::new(
                        ErrorCode::GroupMaxSizeReached,
                        format!("group {} has reached its maximum size", self.id),
                    ));
                }
                self.members.insert(
                    id.clone(),
                    ConsumerMember {
                        id: id.clone(),
                        instance_id: req.instance_id.clone(),
                        rack_id: req.rack_id.clone(),
                        client_id: req.client_id.clone(),
                        client_host: req.client_host.clone(),
                        epoch: 0,
                        previous_epoch: 0,
                        state: MemberState::Stable,
                        subscribed: BTreeSet::new(),
                        regex: None,
                        regex_matches: BTreeSet::new(),
                        assignor: None,
                        rebalance_timeout_ms: req.rebalance_timeout_ms,
                        assigned: Assignment::new(),
                        revoking: Assignment::new(),
                        session_deadline: now.mono_ms,
                        revocation_deadline: None,
                    },
                );
            }
        }
        Ok(id)
    }

    fn leave(
        &mut self,
        now: Now,
        req: &HeartbeatRequest,
        session: u64,
    ) -> Result<HeartbeatReply, HeartbeatError> {
        let Some(m) = self.members.get_mut(&req.member_id) else {
            return Err(HeartbeatError::new(
                ErrorCode::UnknownMemberId,
                format!("member {} is not in group {}", req.member_id, self.id),
            ));
        };
        if req.member_epoch == STATIC_LEAVE_EPOCH && m.instance_id.is_some() {
            // Keeps its partitions for a new incarnation, for one session.
            if m.epoch != STATIC_LEAVE_EPOCH {
                m.previous_epoch = m.epoch;
                m.epoch = STATIC_LEAVE_EPOCH;
            }
            m.session_deadline = now.mono_ms + session;
            m.revocation_deadline = None;
        } else {
            self.remove_member(&req.member_id);
        }
        Ok(HeartbeatReply {
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    /// Kafka's OffsetCommit check for a consumer group.
    pub fn validate_commit(&self, member_id: &str, member_epoch: i32) -> Result<(), ErrorCode> {
        if member_epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        let m = self
            .members
            .get(member_id)
            .ok_or(ErrorCode::UnknownMemberId)?;
        match member_epoch.cmp(&m.epoch) {
            std::cmp::Ordering::Greater => Err(ErrorCode::FencedMemberEpoch),
            std::cmp::Ordering::Less => Err(ErrorCode::StaleMemberEpoch),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }

    /// Kafka's OffsetFetch check: an admin (no member) may always read.
    pub fn validate_fetch(
        &self,
        member_id: Option<&str>,
        member_epoch: i32,
    ) -> Result<(), ErrorCode> {
        match member_id {
            None => Ok(()),
            Some(_) if member_epoch < 0 => Ok(()),
            Some(id) => {
                let m = self.members.get(id).ok_or(ErrorCode::UnknownMemberId)?;
                if m.epoch == member_epoch {
                    Ok(())
                } else {
                    Err(ErrorCode::StaleMemberEpoch)
                }
            }
        }
    }
}

/// Kafka's `throwIfMemberEpochIsInvalid`: an epoch ahead of ours is fenced;
/// one behind is accepted only if it is the previous one and the member
/// owns no more than we gave it (the answer to its last heartbeat was lost).
fn check_epoch(
    m: &ConsumerMember,
    epoch: i32,
    owned: Option<&Assignment>,
) -> Result<(), HeartbeatError> {
    let fenced = || {
        HeartbeatError::new(
            ErrorCode::FencedMemberEpoch,
            format!("member {} has epoch {}, not {epoch}", m.id, m.epoch),
        )
    };
    if epoch > m.epoch {
        return Err(fenced());
    }
    if epoch < m.epoch {
        let subset = owned.is_some_and(|o| {
            o.iter().all(|(t, ps)| {
                ps.iter()
                    .all(|p| m.assigned.get(t).is_some_and(|s| s.contains(p)))
            })
        });
        if epoch != m.previous_epoch || !subset {
            return Err(fenced());
        }
    }
    Ok(())
}

/// Kafka's request checks (`throwIfConsumerGroupHeartbeatRequestIsInvalid`).
pub fn validate_request(req: &HeartbeatRequest) -> Result<(), HeartbeatError> {
    let invalid = |m: &str| Err(HeartbeatError::new(ErrorCode::InvalidRequest, m));
    if req.group_id.is_empty() {
        return invalid("GroupId can't be empty.");
    }
    if req.instance_id.as_deref() == Some("") {
        return invalid("InstanceId can't be empty.");
    }
    if req.rack_id.as_deref() == Some("") {
        return invalid("RackId can't be empty.");
    }
    if req.version >= 1 && req.member_id.is_empty() {
        return invalid("MemberId can't be empty.");
    }
    if let Some(r) = req
        .subscribed_topic_regex
        .as_deref()
        .filter(|r| !r.is_empty())
    {
        if let Err(e) = compile_regex(r) {
            return Err(HeartbeatError::new(
                ErrorCode::InvalidRegularExpression,
                format!("SubscribedTopicRegex `{r}` is not a valid regular expression: {e}"),
            ));
        }
    }
    match req.member_epoch {
        0 => {
            if req.rebalance_timeout_ms == -1 {
                return invalid("RebalanceTimeoutMs must be provided in first request.");
            }
            if req.owned.as_ref().is_none_or(|o| !o.is_empty()) {
                return invalid("TopicPartitions must be empty when (re-)joining.");
            }
            let has_regex = req
                .subscribed_topic_regex
                .as_deref()
                .is_some_and(|r| !r.is_empty());
            if req.subscribed_topic_names.is_none() && !has_regex {
                return invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                );
            }
        }
        e if e > 0 || e == LEAVE_EPOCH || e == STATIC_LEAVE_EPOCH => {
            if req.member_id.is_empty() {
                return invalid("MemberId can't be empty.");
            }
            if e == STATIC_LEAVE_EPOCH && req.instance_id.is_none() {
                return invalid("InstanceId can't be null when leaving temporarily.");
            }
        }
        _ => return invalid("MemberEpoch is invalid."),
    }
    if let Some(a) = &req.server_assignor {
        if !ASSIGNORS.contains(&a.as_str()) {
            return Err(HeartbeatError::new(
                ErrorCode::UnsupportedAssignor,
                format!(
                    "ServerAssignor {a} is not supported. Supported assignors: uniform, range."
                ),
            ));
        }
    }
    Ok(())
}

/// A subscription regex, anchored: Kafka matches whole topic names.
/// Compilation is bounded by the regex crate's size limits.
fn compile_regex(r: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{r})$"))
        .size_limit(1 << 20)
        .build()
}

fn intersects(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .any(|(t, ps)| b.get(t).is_some_and(|q| ps.iter().any(|p| q.contains(p))))
}

fn subtract(a: &Assignment, b: &Assignment) -> Assignment {
    a.iter()
        .filter_map(|(t, ps)| {
            let left: BTreeSet<i32> = ps
                .iter()
                .filter(|p| !b.get(t).is_some_and(|q| q.contains(p)))
                .copied()
                .collect();
            (!left.is_empty()).then_some((*t, left))
        })
        .collect()
}

/// Balanced and sticky: each member keeps what it had that is still valid,
/// unassigned partitions go to the least loaded eligible member, and
/// partitions move from the most to the least loaded eligible member until
/// no move narrows the gap. Deterministic (ordered maps, ids break ties).
pub fn assign_uniform(
    subscriptions: &BTreeMap<String, BTreeSet<Uuid>>,
    partitions: &BTreeMap<Uuid, u32>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut owner: BTreeMap<(Uuid, i32), String> = BTreeMap::new();
    let mut load: BTreeMap<String, usize> = subscriptions.keys().map(|m| (m.clone(), 0)).collect();
    for (member, assignment) in previous {
        let Some(subscribed) = subscriptions.get(member) else {
            continue;
        };
        for (topic, ps) in assignment {
            let Some(&count) = partitions.get(topic) else {
                continue;
            };
            if !subscribed.contains(topic) {
                continue;
            }
            for p in ps {
                if u32::try_from(*p).is_ok_and(|p| p < count) && !owner.contains_key(&(*topic, *p))
                {
                    owner.insert((*topic, *p), member.clone());
                    *load.entry(member.clone()).or_default() += 1;
                }
            }
        }
    }
    let eligible = |topic: &Uuid| -> Vec<&String> {
        subscriptions
            .iter()
            .filter(|(_, s)| s.contains(topic))
            .map(|(m, _)| m)
            .collect()
    };
    for (topic, count) in partitions {
        let members = eligible(topic);
        if members.is_empty() {
            continue;
        }
        for p in 0..i32::try_from(*count).unwrap_or(i32::MAX) {
            if owner.contains_key(&(*topic, p)) {
                continue;
            }
            let least = members
                .iter()
                .min_by_key(|m| (load[**m], (**m).clone()))
                .expect("non-empty");
            owner.insert((*topic, p), (*least).clone());
            *load.get_mut(*least).expect("every member has a load") += 1;
        }
    }
    // Narrow the gaps: at most one pass per partition, each move strictly
    // reduces the spread between two members, so this ends.
    let keys: Vec<(Uuid, i32)> = owner.keys().copied().collect();
    for _round in 0..keys.len() {
        let mut moved = false;
        for key in &keys {
            let from = owner[key].clone();
            let to = eligible(&key.0)
                .into_iter()
                .min_by_key(|m| (load[*m], (*m).clone()))
                .expect("the owner is eligible")
                .clone();
            if load[&to] + 1 < load[&from] {
                *load.get_mut(&from).expect("owner has a load") -= 1;
                *load.get_mut(&to).expect("eligible has a load") += 1;
                owner.insert(*key, to);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let mut out: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    for ((topic, p), member) in owner {
        out.entry(member)
            .or_default()
            .entry(topic)
            .or_default()
            .insert(p);
    }
    out
}

/// Kafka's range assignor per topic: the subscribed members in id order
/// each take a contiguous range, the first ones one more.
pub fn assign_range(
    subscriptions: &BTreeMap<String, BTreeSet<Uuid>>,
    partitions: &BTreeMap<Uuid, u32>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect();
    for (topic, count) in partitions {
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, s)| s.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() {
            continue;
        }
        let count = i32::try_from(*count).unwrap_or(i32::MAX);
        let n = i32::try_from(members.len()).unwrap_or(i32::MAX);
        let (each, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, m) in members.into_iter().enumerate() {
            let i = i32::try_from(i).unwrap_or(i32::MAX);
            let take = each + i32::from(i < extra);
            if take > 0 {
                let set = out.entry(m.clone()).or_default().entry(*topic).or_default();
                set.extend(next..next + take);
            }
            next += take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ConsumerConfig {
        ConsumerConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            max_size: 3,
        }
    }

    fn at(ms: u64) -> Now {
        Now {
            mono_ms: ms,
            wall_ms: ms as i64,
        }
    }

    const T: Uuid = Uuid::from_u128(7);

    fn topics() -> Topics {
        Topics::from([("t".to_string(), (T, 6))])
    }

    fn join(id: &str) -> HeartbeatRequest {
        HeartbeatRequest {
            version: 1,
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 10_000,
            subscribed_topic_names: Some(vec!["t".into()]),
            owned: Some(Assignment::new()),
            ..Default::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Assignment) -> HeartbeatRequest {
        HeartbeatRequest {
            version: 1,
            group_id: "g".into(),
            member_id: id.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Default::default()
        }
    }

    fn parts(a: &Assignment) -> BTreeSet<i32> {
        a.get(&T).cloned().unwrap_or_default()
    }

    fn hb(g: &mut ConsumerGroup, now: u64, req: HeartbeatRequest) -> HeartbeatReply {
        validate_request(&req).expect("valid request");
        g.heartbeat(&cfg(), at(now), &req, "server-id".into(), &topics())
            .expect("heartbeat accepted")
    }

    /// Every partition is owned by at most one member at every step.
    fn assert_exclusive(g: &ConsumerGroup) {
        let mut seen = BTreeSet::new();
        for m in g.members.values() {
            for p in parts(&m.assigned).into_iter().chain(parts(&m.revoking)) {
                assert!(seen.insert(p), "partition {p} held twice: {g:#?}");
            }
        }
    }

    #[test]
    fn a_second_member_gets_half_only_after_the_first_revokes() {
        let mut g = ConsumerGroup::new("g");
        let a = hb(&mut g, 0, join("a"));
        assert_eq!(a.member_epoch, 1);
        let a_owned = a.assignment.expect("first answer carries the assignment");
        assert_eq!(parts(&a_owned).len(), 6);

        let b = hb(&mut g, 10, join("b"));
        assert_eq!(b.member_epoch, 2);
        // All of b's target is still held by a: nothing yet.
        assert!(parts(&b.assignment.expect("joining answer")).is_empty());
        assert_exclusive(&g);

        // a learns it must give three up, keeping its epoch.
        let a2 = hb(&mut g, 20, beat("a", 1, &a_owned));
        assert_eq!(a2.member_epoch, 1);
        let a_kept = a2.assignment.expect("a's assignment shrank");
        assert_eq!(parts(&a_kept).len(), 3);
        assert_exclusive(&g);
        // Still reporting the old set: still revoking.
        let again = hb(&mut g, 25, beat("a", 1, &a_owned));
        assert_eq!(again.member_epoch, 1);
        // Revoked: a moves to epoch 2.
        let a3 = hb(&mut g, 30, beat("a", 1, &a_kept));
        assert_eq!(a3.member_epoch, 2);
        // b now gets the freed three.
        let b2 = hb(&mut g, 40, beat("b", 2, &Assignment::new()));
        let b_owned = b2.assignment.expect("b's assignment grew");
        assert_eq!(parts(&b_owned).len(), 3);
        assert!(parts(&b_owned).is_disjoint(&parts(&a_kept)));
        assert_exclusive(&g);
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn epochs_are_checked_like_kafka() {
        let mut g = ConsumerGroup::new("g");
        let a = hb(&mut g, 0, join("a"));
        let owned = a.assignment.unwrap();
        let err = |g: &mut ConsumerGroup, req: HeartbeatRequest| {
            g.heartbeat(&cfg(), at(1), &req, "x".into(), &topics())
                .unwrap_err()
                .code
        };
        assert_eq!(
            err(&mut g, beat("a", 5, &owned)),
            ErrorCode::FencedMemberEpoch
        );
        assert_eq!(
            err(&mut g, beat("zz", 1, &owned)),
            ErrorCode::UnknownMemberId
        );
        hb(&mut g, 2, join("b"));
        hb(&mut g, 3, join("c"));
        assert_eq!(err(&mut g, join("d")), ErrorCode::GroupMaxSizeReached);
        assert_eq!(g.validate_commit("a", 1), Ok(()));
        assert_eq!(g.validate_commit("a", 0), Err(ErrorCode::StaleMemberEpoch));
        assert_eq!(g.validate_commit("a", 9), Err(ErrorCode::FencedMemberEpoch));
        assert_eq!(
            g.validate_commit("nobody", 1),
            Err(ErrorCode::UnknownMemberId)
        );
        assert_eq!(g.validate_fetch(None, -1), Ok(()));
        assert_eq!(
            g.validate_fetch(Some("a"), 0),
            Err(ErrorCode::StaleMemberEpoch)
        );
    }

    #[test]
    fn bad_requests_get_kafkas_errors() {
        let code = |req: HeartbeatRequest| validate_request(&req).unwrap_err().code;
        let mut r = join("a");
        r.group_id.clear();
        assert_eq!(code(r), ErrorCode::InvalidRequest);
        let mut r = join("a");
        r.rebalance_timeout_ms = -1;
        assert_eq!(code(r), ErrorCode::InvalidRequest);
        let mut r = join("a");
        r.subscribed_topic_names = None;
        assert_eq!(code(r), ErrorCode::InvalidRequest);
        let mut r = join("a");
        r.member_epoch = -3;
        assert_eq!(code(r), ErrorCode::InvalidRequest);
        let mut r = join("a");
        r.server_assignor = Some("sticky-magic".into());
        assert_eq!(code(r), ErrorCode::UnsupportedAssignor);
        let mut r = join("");
        r.version = 1;
        assert_eq!(code(r), ErrorCode::InvalidRequest);
    }

    #[test]
    fn leaving_and_expiry_free_partitions_for_the_rest() {
        let mut g = ConsumerGroup::new("g");
        let a = hb(&mut g, 0, join("a")).assignment.unwrap();
        hb(&mut g, 1, join("b"));
        let kept = hb(&mut g, 2, beat("a", 1, &a)).assignment.unwrap();
        hb(&mut g, 3, beat("a", 1, &kept));
        hb(&mut g, 4, beat("b", 2, &Assignment::new()));
        // b leaves; a gets everything on its next heartbeat.
        let left = hb(&mut g, 5, beat("b", LEAVE_EPOCH, &Assignment::new()));
        assert_eq!(left.member_epoch, LEAVE_EPOCH);
        let all = hb(&mut g, 6, beat("a", 2, &kept));
        assert_eq!(parts(&all.assignment.unwrap()).len(), 6);
        // a stops heartbeating: removed after its session.
        assert!(!g.expire(at(40_000)));
        assert!(g.expire(at(60_000)));
        assert_eq!(g.state_name(), "Empty");
    }

    #[test]
    fn a_member_that_does_not_revoke_in_time_is_removed() {
        let mut g = ConsumerGroup::new("g");
        let a = hb(&mut g, 0, join("a")).assignment.unwrap();
        hb(&mut g, 1, join("b"));
        hb(&mut g, 2, beat("a", 1, &a));
        // a keeps heartbeating but never gives up its partitions.
        hb(&mut g, 9_000, beat("a", 1, &a));
        assert!(g.expire(at(10_003)));
        assert!(!g.members.contains_key("a"));
        let b = hb(&mut g, 10_010, beat("b", 2, &Assignment::new()));
        assert_eq!(parts(&b.assignment.unwrap()).len(), 6);
    }

    #[test]
    fn a_static_member_comes_back_without_a_rebalance() {
        let mut g = ConsumerGroup::new("g");
        let mut j = join("a");
        j.instance_id = Some("i1".into());
        let a = hb(&mut g, 0, j).assignment.unwrap();
        let epoch = g.epoch;
        let mut leave = beat("a", STATIC_LEAVE_EPOCH, &a);
        leave.instance_id = Some("i1".into());
        assert_eq!(hb(&mut g, 1, leave).member_epoch, STATIC_LEAVE_EPOCH);
        // Another member may not take the instance id while it is held.
        let mut other = join("b");
        other.instance_id = Some("i1".into());
        let back = hb(&mut g, 2, other);
        assert_eq!(back.member_id, "b");
        assert_eq!(parts(back.assignment.as_ref().unwrap()), parts(&a));
        assert_eq!(g.epoch, epoch, "no rebalance");
        let mut thief = join("c");
        thief.instance_id = Some("i1".into());
        let err = g
            .heartbeat(&cfg(), at(3), &thief, "x".into(), &topics())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnreleasedInstanceId);
    }

    #[test]
    fn a_regex_subscription_follows_the_topics() {
        let t2 = Uuid::from_u128(11);
        let mut all = topics();
        all.insert("other".into(), (t2, 2));
        all.insert("__consumer_offsets".into(), (Uuid::from_u128(12), 50));
        let mut g = ConsumerGroup::new("g");
        let mut req = join("a");
        req.subscribed_topic_names = None;
        req.subscribed_topic_regex = Some("t|t2|__.*".into());
        validate_request(&req).unwrap();
        let reply = g.heartbeat(&cfg(), at(0), &req, "x".into(), &all).unwrap();
        assert_eq!(
            parts(reply.assignment.as_ref().unwrap()).len(),
            6,
            "only t matches"
        );
        // A new topic that matches joins the subscription on the next heartbeat.
        all.insert("t2".into(), (t2, 2));
        let mut beat_req = beat("a", reply.member_epoch, reply.assignment.as_ref().unwrap());
        beat_req.subscribed_topic_regex = None;
        let next = g
            .heartbeat(&cfg(), at(1), &beat_req, "x".into(), &all)
            .unwrap();
        assert!(next.member_epoch > reply.member_epoch);
        assert_eq!(next.assignment.unwrap()[&t2].len(), 2);
        let mut bad = join("b");
        bad.subscribed_topic_regex = Some("(unclosed".into());
        assert_eq!(
            validate_request(&bad).unwrap_err().code,
            ErrorCode::InvalidRegularExpression
        );
    }

    #[test]
    fn a_group_survives_its_snapshot() {
        let mut g = ConsumerGroup::new("g");
        let a = hb(&mut g, 0, join("a")).assignment.unwrap();
        hb(&mut g, 1, join("b"));
        hb(&mut g, 2, beat("a", 1, &a));
        let bytes = g.snapshot();
        let back = ConsumerGroup::from_snapshot(&bytes, &cfg(), at(100)).unwrap();
        assert_eq!(back.members.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(
            (back.epoch, back.assignment_epoch),
            (g.epoch, g.assignment_epoch)
        );
        assert_eq!(back.members["a"].revoking, g.members["a"].revoking);
        assert_eq!(back.snapshot(), bytes, "timers are not part of it");
        // Fresh timers: a session from the load, a revocation deadline for a.
        assert_eq!(back.next_deadline(), Some(100 + 10_000));
        assert!(ConsumerGroup::from_snapshot(b"\xff\x00garbage", &cfg(), at(0)).is_err());
    }

    #[test]
    fn uniform_is_balanced_and_sticky_range_is_contiguous() {
        let t2 = Uuid::from_u128(9);
        let subs: BTreeMap<String, BTreeSet<Uuid>> = ["a", "b", "c"]
            .iter()
            .map(|m| (m.to_string(), BTreeSet::from([T, t2])))
            .collect();
        let parts_of = BTreeMap::from([(T, 7u32), (t2, 5u32)]);
        let first = assign_uniform(&subs, &parts_of, &BTreeMap::new());
        let sizes: Vec<usize> = first
            .values()
            .map(|a| a.values().map(|s| s.len()).sum())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 12);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        // c leaves: a and b keep everything they had.
        let mut fewer = subs.clone();
        fewer.remove("c");
        let second = assign_uniform(&fewer, &parts_of, &first);
        for m in ["a", "b"] {
            for (t, ps) in &first[m] {
                assert!(ps.is_subset(&second[m][t]), "{m} lost partitions");
            }
        }
        let range = assign_range(&subs, &BTreeMap::from([(T, 7u32)]));
        assert_eq!(range["a"][&T], BTreeSet::from([0, 1, 2]));
        assert_eq!(range["b"][&T], BTreeSet::from([3, 4]));
        assert_eq!(range["c"][&T], BTreeSet::from([5, 6]));
    }
}
