//! Operator requests to a running runtime (replay from an offset or a time), handed from
//! the admin endpoint to the poll loop, which owns the consumer.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode};

use super::Tp;
use super::context::ConsumerCtx;
use super::coordinator::{Coordinator, ResumedFrom, seek};
use super::operator::ReplayError;
use super::worker::Resume;
use crate::replay::{self, Plan};

impl Coordinator {
    /// An operator's replay of partitions this instance owns: commits the replay's plan
    /// (see [`replay::replay_from`]; a crash mid-replay resumes it), drops the local
    /// checkpoint, rebuilds the partition's pipeline from the plan and seeks the consumer.
    pub(super) fn replay(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        input: &str,
        request: &replay::ReplayRequest,
    ) -> Result<Vec<(i32, i64)>, ReplayError> {
        let mut owned: Vec<i32> = self
            .assignments()
            .keys()
            .filter(|tp| &*tp.topic == input)
            .map(|tp| tp.partition)
            .collect();
        owned.sort_unstable();
        // The newest acknowledged plan of each owned partition: how far it was read, and
        // one of the plans to rebuild from (with the earlier ones the history keeps).
        let acked: HashMap<i32, Plan> = self
            .assignments()
            .iter()
            .filter(|(tp, _)| &*tp.topic == input)
            .filter_map(|(tp, a)| Some((tp.partition, a.ledger.safe_plan()?)))
            .collect();
        let offsets = super::operator::resolve(consumer, input, request, Some(&owned), &|p| {
            acked.get(&p).map(|plan| plan.next_offset)
        })?;
        let mut known = self.history.read(input, Duration::from_secs(30))?;
        for (partition, plan) in acked {
            known.entry(partition).or_default().push(plan);
        }
        let plans: Vec<(Tp, Plan)> =
            super::operator::plan_replays(&offsets, |p| known.get(&p).cloned().unwrap_or_default())?
                .into_iter()
                .map(|(partition, plan)| {
                    let tp = Tp {
                        topic: input.into(),
                        partition,
                    };
                    (tp, plan)
                })
                .collect();
        // Committed first, so a crash mid-replay resumes the same rebuild.
        self.commit(consumer, &plans, CommitMode::Sync);
        let mut map = self.assignments();
        for (tp, plan) in plans {
            let Some(worker) = map.get(&tp).map(|a| a.worker) else {
                continue;
            };
            if let Some(store) = &self.state
                && let Err(e) = store.remove(&tp.topic, tp.partition)
            {
                tracing::warn!(error = %e, "cannot drop the local checkpoint of a replayed partition");
            }
            let (start, pipeline, rollups_end) = self.restore(&tp, Some(plan.next_offset), Some(plan));
            let resume = Resume::at(&start, rollups_end);
            if let Some(from) = start.seek {
                seek(consumer, &tp, from);
            }
            if let Some(target) = start.guarded_from() {
                self.watch_for_stall(&tp, target);
            }
            tracing::info!(topic = %tp.topic, partition = tp.partition, offset = plan.next_offset, rebuild_from = plan.replay_start,
                "operator replay started: state at the replay point is rebuilt, then every window closing after it is emitted again");
            let resumed = ResumedFrom {
                committed: Some(plan.next_offset),
                plan: Some(plan),
            };
            self.start_run(&mut map, tp, worker, pipeline, resume, resumed);
        }
        drop(map);
        self.epoch.fetch_add(1, Ordering::Release);
        Ok(offsets)
    }
}

/// Requests from the admin endpoint to the poll loop.
#[derive(Debug)]
pub enum ControlRequest {
    Replay {
        request: replay::ReplayRequest,
        reply: mpsc::Sender<Result<Vec<(i32, i64)>, ReplayError>>,
    },
}

/// A handle for operator requests to a running runtime.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    pub(super) tx: SyncSender<ControlRequest>,
}

impl ControlHandle {
    /// Replays partitions this instance owns; returns the offset each starts from.
    pub fn replay(&self, request: replay::ReplayRequest) -> Result<Vec<(i32, i64)>, ReplayError> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .try_send(ControlRequest::Replay { request, reply })
            .map_err(|_| ReplayError::Busy)?;
        answer
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| ReplayError::NoAnswer)?
    }
}
