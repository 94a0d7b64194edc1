//! Development and test tooling for Tributary: embedded Kafka (librdkafka's mock cluster),
//! a deterministic load generator, and the one-command demo. Not part of the production
//! path.

pub mod bench;
pub mod cli;
pub mod cql;
pub mod demo;
pub mod figures;
pub mod kafka;
pub mod loadgen;
