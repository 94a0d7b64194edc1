//! The Kafka layer every app uses (rollup, detector, writer, and the offline tools):
//!
//! - [`client`]: the shared `[kafka]` section and the settings of every client;
//! - [`security`]: `[kafka.security]`, TLS and SASL for every client;
//! - [`logging`]: librdkafka's log lines and errors into `tracing`;
//! - [`acks`]: the acknowledged prefix of a partition's outputs;
//! - [`commits`]: commits marked done only when the broker confirms them;
//! - [`headers`]: provenance and reason headers of dead letters;
//! - [`fetch_start`]: the guard against brokers that skip records at a resume point;
//! - [`stats`]: librdkafka's statistics: broker reachability and consumer lag;
//! - [`polled`]: a producer served by a poll thread of its own (not rdkafka's, which spins);
//! - [`readiness`]: the part of readiness every app shares (group, brokers, stopping);
//! - [`backoff`]: exponential backoff with jitter for every retry loop.

pub mod acks;
pub mod backoff;
pub mod client;
pub mod commits;
pub mod fetch_start;
pub mod headers;
pub mod logging;
pub mod polled;
pub mod readiness;
pub mod security;
pub mod stats;

pub use backoff::Backoff;
pub use client::KafkaConfig;
