//! Types shared by Oxbow controllers and brokers: ids and epochs, the metadata
//! commands that go through Raft, the metadata image both sides replay them
//! into, and the broker↔controller RPC messages with their framing.
//!
//! This crate does no I/O beyond encoding frames: everything in it is plain
//! data and pure functions, so that the controller's state machine and a
//! broker's copy of the metadata are the same code and give the same answers.
//! The one exception is [`seams`]: the traits through which everything else
//! reaches the network, the wall clock and randomness, with their production
//! implementations (the simulation brings its own).

pub mod ids;
pub mod image;
pub mod planted;
pub mod rpc;
pub mod seams;

pub use ids::{BrokerId, ObjectId, StreamId};
pub use image::{CommandReply, MetadataCommand, MetadataImage};
