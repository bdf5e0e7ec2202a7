//! The Oxbow broker: the Kafka protocol server, partition actors, and the
//! stream storage layer that keeps every byte in object storage.
//!
//! The broker holds no durable state of its own: what it has acknowledged is
//! in an object and in the controller's metadata. It never decides metadata;
//! it proposes commands through `proto::rpc::ControllerApi` and follows the
//! committed ones.

pub mod broker;
pub mod compaction;
pub mod config;
pub mod controller_client;
pub mod errors;
pub mod group;
pub mod kafka;
pub mod lifecycle;
pub mod metadata;
pub mod partition;
pub mod peer;
pub mod storage;
pub mod txn;

pub use broker::Broker;
pub use config::{BrokerConfig, StorageConfig};
