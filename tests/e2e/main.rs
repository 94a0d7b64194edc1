//! End-to-end tests: real broker process (tansu) or librdkafka's mock cluster, the real
//! app binaries as processes, and an independent client (Python confluent-kafka).

mod cli;
mod dataset;
mod deploy;
mod embedded;
mod faults;
mod peers;
mod replay;
mod retention;
mod rollup_bed;
mod security;
mod static_membership;
mod tansu;
mod writer;
mod writer_faults;
mod writer_group;
mod writer_limits;
mod writer_locality;
mod writer_token;
mod writer_topology;
