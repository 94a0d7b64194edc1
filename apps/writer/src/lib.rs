//! # tributary-writer
//!
//! Kafka (`metrics`, `rollups`, `anomalies`) → Cassandra/ScyllaDB, without hurting the
//! cluster:
//!
//! ```text
//!  consumer ─► rows (table mapping, TTLs) ─► replica set per row (driver's ring view)
//!     ▲            │ bad record ─► dead-letter            │
//!     │            ▼                                      ▼
//!  pause/resume  batcher: group by exact replica set, flush at rows/bytes/linger
//!  per partition   │
//!     │            ▼
//!  commit ◄── acked prefix per partition ◄── write tasks: governor rate limit,
//!                                              in-flight cap per node, retries
//! ```

pub mod app;
pub mod batcher;
pub mod budget;
pub mod config;
pub mod dead_letter;
pub mod group_limit;
pub mod health;
pub mod limiter;
pub mod metrics;
pub mod partitions;
pub mod rows;
pub mod runtime;
pub mod schema;
pub mod sink;
pub mod token;
pub mod write;
