//! The part of readiness every app shares: its group has assigned it partitions, a Kafka
//! broker connection is up, and it is not stopping. Each app adds its own reasons (state
//! being rebuilt, the Cassandra cluster) between the first and the others.

use std::sync::atomic::{AtomicBool, Ordering};

use super::stats::ClientStats;

#[derive(Debug, Default)]
pub struct GroupReadiness {
    /// Its group has assigned it partitions (set at the first assignment).
    pub joined: AtomicBool,
    /// librdkafka's statistics last showed no broker connection up.
    pub brokers_unreachable: AtomicBool,
    pub stopping: AtomicBool,
}

impl GroupReadiness {
    /// Takes the brokers' part from librdkafka's statistics.
    pub fn apply_stats(&self, stats: &ClientStats) {
        self.brokers_unreachable
            .store(!stats.broker_up, Ordering::Relaxed);
    }

    /// `Ok` when there is no reason not to be ready: the group's, then the app's `own`,
    /// then the brokers' and stopping.
    pub fn readiness(&self, own: impl IntoIterator<Item = String>) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if !self.joined.load(Ordering::Relaxed) {
            reasons.push("not yet assigned partitions by its group".to_owned());
        }
        reasons.extend(own);
        if self.brokers_unreachable.load(Ordering::Relaxed) {
            reasons.push("no connection to any Kafka broker (librdkafka reconnects)".to_owned());
        }
        if self.stopping.load(Ordering::Relaxed) {
            reasons.push("stopping".to_owned());
        }
        if reasons.is_empty() { Ok(()) } else { Err(reasons) }
    }
}
