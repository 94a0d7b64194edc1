//! An emulated multi-node Cassandra ring speaking CQL native protocol v4, for tests and
//! the demo (never the production path).

mod batch;
mod control;
mod execute;
mod faults;
pub mod frame;
mod handlers;
mod lexer;
pub mod parser;
mod prepare;
mod results;
mod select;
pub mod server;
pub mod storage;
mod system_tables;
pub mod token;
mod topology;
pub mod types;

pub use server::{Faults, NodeCounters, Ring, RingConfig};
