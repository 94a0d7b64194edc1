//! Operator requests to a running runtime (replay from an offset or a time), handed from
//! the admin endpoint to the poll loop, which owns the consumer.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode};

use super::Tp;
use super::context::ConsumerCtx;
use super::coordinator::{Coordinator, seek};
use super::operator::ReplayError;
use super::worker::Resume;
use crate::pipeline::Pipeline;
use crate::replay::{self, Plan};

impl Coordinator {
    /// An operator's replay of partitions this instance owns: commits the requested plan
    /// (so a crash mid-replay resumes it), drops the local checkpoint, restarts the
    /// partition's pipeline in re-emit mode and seeks the consumer.
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
        let offsets = super::operator::resolve(consumer, input, request, Some(&owned))?;
        let plans: Vec<(Tp, Plan)> = offsets
            .iter()
            .map(|&(partition, offset)| {
                let tp = Tp {
                    topic: input.into(),
                    partition,
                };
                (tp, Plan::requested(offset))
            })
            .collect();
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
            let offset = plan.next_offset;
            let mut pipeline = Box::new(Pipeline::new(&self.spec));
            pipeline.reemit_from_next_record();
            let resume = Resume {
                from: Some(offset),
                replay_until: offset,
                rollups_end: None,
            };
            seek(consumer, &tp, offset);
            tracing::info!(topic = %tp.topic, partition = tp.partition, offset, "operator replay started; outputs are re-emitted");
            self.watch_for_stall(&tp, offset);
            self.start_run(&mut map, tp, worker, pipeline, resume, Some(offset));
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
