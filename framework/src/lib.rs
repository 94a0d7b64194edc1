//! # Tributary
//!
//! A Kafka rollup and anomaly-detection framework with replayable state.
//!
//! ```text
//!   rdkafka consumer (one group member, many partitions, auto-commit off)
//!        │  poll thread: copy records into per-partition batches
//!        ▼
//!   worker threads (partition → worker), one Pipeline per partition:
//!        decode → intern → RollupStage (5m → 1h → 1d cascade) ─┬─► rollups
//!                        └→ CusumStage (raw or a rollup level) ◄┘─► anomalies
//!        bad records ─► dead-letter topic, late records ─► counted (+ late topic)
//!        ▼
//!   idempotent producer, same partition number as the source
//!        │  delivery reports advance a per-partition ack ledger
//!        ▼
//!   offsets committed only for the prefix whose outputs are all acknowledged
//! ```
//!
//! The synchronous core ([`window`], [`cusum`], [`pipeline`], [`replay`]) needs no broker
//! and is tested without one; [`runtime`] is the shell around Kafka for the rollup and
//! detector apps, and [`kafka`] the Kafka layer every app (the writer too) is built on.
//! `ARCHITECTURE.md` at the repository root has one line per module.

pub mod admin;
pub mod app;
pub mod codec;
pub mod config;
pub mod cusum;
pub mod duration;
pub mod intern;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod reference;
pub mod replay;
pub mod runtime;
pub mod secret;
mod snapshot;
pub mod stage;
pub mod state;
pub mod window;
