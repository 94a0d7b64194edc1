//! librdkafka's mock cluster as a process.

use std::time::Duration;

use crate::process::{Process, app_binary, eventually, free_port};

/// librdkafka's mock cluster as its own process (`tributary-dev kafka`): a Kafka-protocol
/// broker whose group coordinator expires dead members on their session timeout, which
/// crash tests need (with tansu 0.6 a member restarted after a SIGKILL waited 45 s to
/// over 80 s for its partitions).
pub struct DevKafka {
    pub brokers: String,
    pub process: Process,
}

impl DevKafka {
    pub fn start(topics: &[&str], partitions: i32) -> Self {
        Self::start_failing_commits(topics, partitions, 0)
    }

    /// The same, with the first `fail_commits` offset commits failing.
    pub fn start_failing_commits(topics: &[&str], partitions: i32, fail_commits: usize) -> Self {
        let port = free_port();
        let process = Process::spawn(
            "tributary-dev-kafka",
            &app_binary("tributary-dev"),
            &[
                "kafka",
                "--port",
                &port.to_string(),
                "--partitions",
                &partitions.to_string(),
                "--topics",
                &topics.join(","),
                "--fail-commits",
                &fail_commits.to_string(),
            ],
            &[],
        );
        let brokers = format!("127.0.0.1:{port}");
        let ready = eventually(Duration::from_secs(30), || {
            process.log_text().contains("bootstrap.servers=").then_some(())
        });
        assert!(ready.is_some(), "{}", process.log_text());
        Self { brokers, process }
    }
}
