//! An emulated multi-node Cassandra ring speaking CQL native protocol v4, for tests and
//! the demo (never the production path).

pub mod frame;
pub mod parser;
pub mod server;
pub mod storage;
pub mod token;
pub mod types;

pub use server::{Faults, NodeCounters, Ring, RingConfig};
