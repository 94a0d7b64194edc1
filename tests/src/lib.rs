//! Helpers for the end-to-end tests: a real Kafka-protocol broker process (tansu), the
//! mock cluster and the emulated CQL ring as processes, app processes, an independent
//! client (Python confluent-kafka), unique names, and an oracle for rollups.

pub mod admin;
pub mod cql_ring;
pub mod dev_kafka;
pub mod kafka_client;
pub mod oracle;
pub mod process;
pub mod tansu;
pub mod tls;
pub mod yaml;

pub use admin::{admin_get, metric, wait_readiness};
pub use cql_ring::CqlRing;
pub use dev_kafka::DevKafka;
pub use kafka_client::{
    Incoming, Outgoing, committed_and_end, create_topics, create_topics_configured, end_offsets, py_commit,
    py_committed, py_consume, py_produce, py_produce_headed, py_produce_stamped,
};
pub use oracle::{Expected, Pt, oracle, point_json};
pub use process::{Process, app_binary, eventually, free_port, unique, workspace_root};
pub use serde_json::Value;
pub use tansu::{SecureTansu, Tansu, tansu_binary};
pub use tls::self_signed;
pub use tributary::record::exact_sum;
pub use yaml::yaml_docs;
