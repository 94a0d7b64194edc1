//! The writer's readiness (`/health/ready`): whether a rolling update may count it as up.

use std::sync::{Arc, OnceLock};

use scylla::client::session::Session;
use tributary::kafka::readiness::GroupReadiness;

#[derive(Debug, Default)]
pub struct Health {
    session: OnceLock<Arc<Session>>,
    /// Joined its group, brokers reachable, not stopping.
    pub group: GroupReadiness,
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
        self.group.readiness(cluster_reason(reachable))
    }
}

/// `reachable`: None before the first session, else whether any node is connected.
fn cluster_reason(reachable: Option<bool>) -> Option<String> {
    match reachable {
        None => Some("connecting to the Cassandra/ScyllaDB cluster".to_owned()),
        Some(false) => Some(
            "no open connection to any node of the Cassandra/ScyllaDB cluster (the driver reconnects)"
                .to_owned(),
        ),
        Some(true) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn ready_once_connected_and_joined_until_the_cluster_is_lost() {
        let group = GroupReadiness::default();
        let reasons = |reachable| {
            group
                .readiness(cluster_reason(reachable))
                .err()
                .unwrap_or_default()
        };
        assert_eq!(reasons(None).len(), 2);
        assert_eq!(
            reasons(Some(true)),
            vec!["not yet assigned partitions by its group".to_owned()]
        );
        group.joined.store(true, Ordering::Relaxed);
        assert!(reasons(Some(true)).is_empty());
        let lost = reasons(Some(false));
        assert!(lost[0].starts_with("no open connection"), "{lost:?}");
    }

    #[test]
    fn unready_without_a_session_without_brokers_and_while_stopping() {
        let health = Health::default();
        health.group.joined.store(true, Ordering::Relaxed);
        assert_eq!(health.readiness().map_err(|r| r.len()), Err(1), "no session yet");
        health.group.brokers_unreachable.store(true, Ordering::Relaxed);
        health.group.stopping.store(true, Ordering::Relaxed);
        let r = health.readiness().expect_err("no session, no brokers, stopping");
        assert!(
            r.iter()
                .any(|r| r.starts_with("no connection to any Kafka broker")),
            "{r:?}"
        );
        assert_eq!(r.last().map(String::as_str), Some("stopping"));
    }
}
