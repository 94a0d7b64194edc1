//! The plan history: earlier replay plans of every partition, kept in a topic for
//! `state.plan_history_retention`, so an operator's replay from an offset before the
//! current plan's reach rebuilds from the newest kept plan at or before it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::plans::{PlanStoreError, PlanTopic};
use crate::config::Config;
use crate::replay::Plan;

/// Per partition: the replay start last added to the history, and when.
type HistoryMarks = HashMap<(String, i32), (i64, Instant)>;

/// Earlier plans of every partition, in a topic that keeps them for
/// `state.plan_history_retention`: an operator's replay from an offset before the current
/// plan's reach rebuilds from the newest of them at or before it. A plan is added at each
/// assignment, after each idle flush (so every flush is in some kept plan), and when a
/// partition's replay start moves, at most once a minute.
pub struct PlanHistory {
    log: PlanTopic,
    added: std::sync::Mutex<HistoryMarks>,
}

impl std::fmt::Debug for PlanHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanHistory")
            .field("topic", &self.log.topic)
            .finish()
    }
}

/// How often a partition's history may grow.
const HISTORY_INTERVAL: Duration = Duration::from_secs(60);

impl PlanHistory {
    pub fn new(config: &Config, topic: String) -> Result<Self, PlanStoreError> {
        Ok(Self {
            log: PlanTopic::new(config, topic)?,
            added: Default::default(),
        })
    }

    /// Adds `plan` whatever was added before: the plan a partition resumes from at
    /// assignment (replays can then reach back to any offset this run processed), and the
    /// plan that records an idle flush (so every flush is in some kept plan).
    pub fn add(&self, topic: &str, partition: i32, plan: &Plan) {
        if !plan.requested {
            self.log.write(topic, partition, plan);
            let mut added = self.added.lock().unwrap_or_else(|p| p.into_inner());
            added.insert((topic.to_owned(), partition), (plan.replay_start, Instant::now()));
        }
    }

    /// Adds `plan` if the partition's replay start moved and none was added in the last
    /// minute.
    pub fn offer(&self, topic: &str, partition: i32, plan: &Plan) {
        let mut added = self.added.lock().unwrap_or_else(|p| p.into_inner());
        let key = (topic.to_owned(), partition);
        let due = added
            .get(&key)
            .is_none_or(|(start, at)| *start != plan.replay_start && at.elapsed() >= HISTORY_INTERVAL);
        if due && !plan.requested {
            self.log.write(topic, partition, plan);
            added.insert(key, (plan.replay_start, Instant::now()));
        }
    }

    /// Every kept plan of `topic`'s partitions.
    pub fn read(&self, topic: &str, timeout: Duration) -> Result<HashMap<i32, Vec<Plan>>, PlanStoreError> {
        let mut out: HashMap<i32, Vec<Plan>> = HashMap::new();
        // Plans of a newer build are left out: a replay cannot rebuild from them.
        for (t, partition, plan) in self.log.read_log(timeout)? {
            if t == topic
                && let Ok(plan) = plan
            {
                out.entry(partition).or_default().push(plan);
            }
        }
        Ok(out)
    }

    pub fn flush(&self, timeout: Duration) {
        self.log.flush(timeout);
    }
}
