//! Stream storage: Kafka record batches in stream-set objects.
//!
//! `batch` reads and patches Kafka record batch headers without decompressing;
//! `object_format` is the byte layout of a stream-set object. Both are pure:
//! no I/O, no clocks.

pub mod batch;
pub mod log_cache;
pub mod object_format;
pub mod producer_state;
pub mod reader;
pub mod retention;
pub mod stream;
pub mod txn_index;
pub mod writer;
