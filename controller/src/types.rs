//! The openraft type configuration of the metadata quorum: what a log entry
//! carries (a `proto::MetadataCommand`), what applying it answers (a
//! `proto::CommandReply`), how nodes are named (u64) and reached (an RPC
//! address). It only names types; it must never hold state or do I/O.

use std::fmt;

use proto::{CommandReply, MetadataCommand};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// Oxbow's Raft types. Everything not listed takes openraft's default
    /// (u64 terms, advanced leader ids, tokio runtime).
    pub TypeConfig:
        D = Proposal,
        R = CommandReply,
        NodeId = u64,
        Node = ControllerNode,
);

/// A metadata command as it travels through the Raft log.
///
/// openraft wants its application data to be `Display`; `MetadataCommand`
/// lives in `proto` and is not, so this transparent wrapper adds it without
/// changing the bytes: it serializes exactly as the inner command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Proposal(pub MetadataCommand);

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The variant name is enough for logs; payloads can be large.
        f.write_str(self.0.name())
    }
}

/// A member of the metadata quorum as the membership config records it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ControllerNode {
    /// Where peers (and redirected brokers) reach this controller's RPC
    /// listener, `host:port`. Empty when not yet known.
    pub rpc_addr: String,
}

impl fmt::Display for ControllerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{rpc_addr: {}}}", self.rpc_addr)
    }
}

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot as openraft hands it around: metadata plus the encoded bytes.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::MetadataStateMachine>;
