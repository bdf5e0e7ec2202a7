//! Deterministic simulation of a whole Oxbow cluster: 3 controllers and N
//! brokers running the production code as turmoil hosts, a shared faulty
//! object store, client workloads recording a Jepsen-style history, a seeded
//! fault schedule, and checkers. The same seed gives the same run.
//!
//! - [`net`], [`seams`]: the simulation's implementations of
//!   `proto::seams` (network, wall clock, randomness) and the controller's
//!   crash-consistent disk; [`determinism`] seeds the OS randomness std and
//!   tokio draw from; [`store`]: the faulty object store.
//! - [`client`]: a small Kafka client; [`workload`]: the producers,
//!   consumers and final reader; [`checker`]: the history and its checks.
//! - [`txn`]: the transactional workload and its checks.
//! - [`cluster`]: one run: hosts, schedule, report.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod determinism;
pub mod net;
pub mod observer;
pub mod seams;
pub mod store;
pub mod txn;
pub mod workload;

pub use cluster::{run, Fault, PlantedBug, Report, SimConfig};
