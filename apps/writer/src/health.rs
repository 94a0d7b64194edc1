//! The writer's readiness (`/health/ready`): whether a rolling update may count it as up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use scylla::client::session::Session;

#[derive(Debug, Default)]
pub struct Health {
    session: OnceLock<Arc<Session>>,
    /// Its group has assigned it partitions (set at the first assignment).
    pub joined: AtomicBool,
    /// librdkafka's statistics last showed no broker connection up.
    pub brokers_unreachable: AtomicBool,
    pub stopping: AtomicBool,
}

impl Health {
    /// The session with the cluster exists: from now on the driver's connections tell
    /// whether the cluster is reachable.
    pub fn connected(&self, session: Arc<Session>) {
        let _ = self.session.set(session);
    }

    /// `Err` with the reasons while it has no session with the cluster or the driver has
    /// no open connection to any node, has not joined its group, has no connection to
    /// any Kafka broker, or stops.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let reachable = self.session.get().map(|s| {
            s.get_cluster_state()
                .get_nodes_info()
                .iter()
                .any(|n| n.is_connected())
        });
        let mut reasons = reasons(reachable, self.joined.load(Ordering::Relaxed));
        if self.brokers_unreachable.load(Ordering::Relaxed) {
            reasons.push("no connection to any Kafka broker (librdkafka reconnects)".to_owned());
        }
        if self.stopping.load(Ordering::Relaxed) {
            reasons.push("stopping".to_owned());
        }
        if reasons.is_empty() { Ok(()) } else { Err(reasons) }
    }
}

/// The cluster's and the group's part. `reachable`: None before the first session, else
/// whether any node is connected.
fn reasons(reachable: Option<bool>, joined: bool) -> Vec<String> {
    let mut reasons = Vec::new();
    match reachable {
        None => reasons.push("connecting to the Cassandra/ScyllaDB cluster".to_owned()),
        Some(false) => reasons.push(
            "no open connection to any node of the Cassandra/ScyllaDB cluster (the driver reconnects)"
                .to_owned(),
        ),
        Some(true) => {}
    }
    if !joined {
        reasons.push("not yet assigned partitions by its group".to_owned());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_connected_and_joined_until_the_cluster_is_lost() {
        assert_eq!(reasons(None, false).len(), 2);
        assert_eq!(
            reasons(Some(true), false),
            vec!["not yet assigned partitions by its group".to_owned()]
        );
        assert!(reasons(Some(true), true).is_empty());
        let lost = reasons(Some(false), true);
        assert!(lost[0].starts_with("no open connection"), "{lost:?}");
    }

    #[test]
    fn unready_without_a_session_without_brokers_and_while_stopping() {
        let health = Health::default();
        health.joined.store(true, Ordering::Relaxed);
        assert_eq!(health.readiness().map_err(|r| r.len()), Err(1), "no session yet");
        health.brokers_unreachable.store(true, Ordering::Relaxed);
        health.stopping.store(true, Ordering::Relaxed);
        let r = health.readiness().expect_err("no session, no brokers, stopping");
        assert!(
            r.iter()
                .any(|r| r.starts_with("no connection to any Kafka broker")),
            "{r:?}"
        );
        assert_eq!(r.last().map(String::as_str), Some("stopping"));
    }
}
