//! The coordinator: which partitions this process owns, on which worker, under which
//! generation and ledger; assignment and revocation (called from the consumer's
//! rebalance callback on the poll thread).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::Tp;
use super::context::ConsumerCtx;
use super::history::PlanHistory;
use super::ledger::Ledger;
use super::plans::{PlanStore, PlanStoreError};
use super::producer::OutputProducer;
use super::worker::{Resume, WorkerMsg};
use crate::config::Config;
use crate::kafka::commits::{self, Resend};
use crate::kafka::fetch_start::FetchStart;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::replay::Plan;
use crate::state::StateStore;

pub(super) struct Assignment {
    pub(super) generation: u64,
    pub(super) worker: usize,
    pub(super) ledger: Arc<Ledger>,
    pub(super) resumed: ResumedFrom,
}

/// What a run resumed from: the group's committed offset and the plan it was rebuilt
/// from. A rebuild of the run before any newer plan is acknowledged starts there again.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResumedFrom {
    pub(super) committed: Option<i64>,
    pub(super) plan: Option<Plan>,
}

/// State shared between the poll loop and the consumer's rebalance callbacks.
pub(super) struct Coordinator {
    pub(super) workers: Vec<SyncSender<WorkerMsg>>,
    pub(super) assignments: Mutex<HashMap<Tp, Assignment>>,
    /// Bumped by every rebalance so the poll loop re-resolves its batches' targets.
    pub(super) epoch: AtomicU64,
    pub(super) next_generation: AtomicU64,
    pub(super) producer: Arc<OutputProducer>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) drain_timeout: Duration,
    pub(super) spec: PipelineSpec,
    pub(super) plans: PlanStore,
    /// Earlier plans, for operator replays that reach back past the current plan.
    pub(super) history: Arc<PlanHistory>,
    pub(super) state: Option<Arc<StateStore>>,
    /// Partitions whose replay has not yet returned a record, though records are known
    /// to exist from the seek offset on.
    pub(super) stalls: Mutex<HashMap<Tp, FetchStart>>,
    pub(super) watching_stalls: AtomicBool,
    /// For reading coarse windows' rows back from the rollups topic.
    pub(super) config: Config,
    /// The committer thread's queue, while it runs (see [`super::poll`]).
    pub(super) committer: Mutex<Option<SyncSender<TopicPartitionList>>>,
    /// Set when the app stops: ends retries that would otherwise wait for the broker.
    pub(super) stop: Arc<AtomicBool>,
    /// Set once the final commit was sent, before the consumer leaves the group.
    pub(super) closing: AtomicBool,
}

/// Clears a flag when dropped, however the scope ends.
struct Flag<'a>(&'a AtomicBool);

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Locks a mutex whose data stays valid if a holder panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Coordinator {
    pub(super) fn assignments(&self) -> std::sync::MutexGuard<'_, HashMap<Tp, Assignment>> {
        lock(&self.assignments)
    }

    /// Decides how each new partition resumes (plan, checkpoint, or nothing), writes the
    /// start offsets into `tpl` for the assign call, and hands prepared pipelines to
    /// workers.
    pub(super) fn assign(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &mut TopicPartitionList) {
        let new: Vec<Tp> = {
            let map = self.assignments();
            tpl.elements()
                .iter()
                .map(|el| Tp {
                    topic: el.topic().into(),
                    partition: el.partition(),
                })
                .filter(|tp| !map.contains_key(tp))
                .collect()
        };
        let started = std::time::Instant::now();
        // Not ready while the state the partitions resume from is read (it may take retries).
        self.metrics.restoring.store(true, Ordering::Relaxed);
        let _restored = Flag(&self.metrics.restoring);
        let Some(committed) = self.committed(consumer, &new) else {
            return;
        };
        let committed_read = started.elapsed();
        let topic_plans = match &self.plans {
            PlanStore::Topic(store) if !new.is_empty() => {
                let read = || -> Result<_, PlanStoreError> {
                    let plans = store.read_all(Duration::from_secs(30))?;
                    let mut usable = HashMap::new();
                    for ((topic, partition), plan) in plans {
                        match plan {
                            Ok(plan) => {
                                usable.insert((topic, partition), plan);
                            }
                            Err(version)
                                if new
                                    .iter()
                                    .any(|tp| *tp.topic == topic && tp.partition == partition) =>
                            {
                                let key = format!("{topic}/{partition}");
                                return Err(PlanStoreError::NewerFormat { key, version });
                            }
                            Err(_) => {}
                        }
                    }
                    Ok(usable)
                };
                match self.retrying("replay plans", read) {
                    Some(plans) => plans,
                    None => return,
                }
            }
            _ => Default::default(),
        };
        let plans_read = started.elapsed() - committed_read;
        let mut prepared = Vec::new();
        for tp in new {
            let (offset, metadata_plan) = committed.get(&tp).copied().unwrap_or((None, None));
            let topic_plan = topic_plans.get(&(tp.topic.to_string(), tp.partition)).copied();
            // The newer of the two copies: a plan is valid on its own, see replay::decide.
            let plan = metadata_plan
                .into_iter()
                .chain(topic_plan)
                .max_by_key(|p| p.next_offset);
            if let Some(plan) = &plan {
                self.history.add(&tp.topic, tp.partition, plan);
            }
            let resumed = ResumedFrom {
                committed: offset,
                plan,
            };
            let (start, pipeline, rollups_end) = self.restore(&tp, offset, plan);
            if let Some(seek) = start.seek
                && let Some(mut el) = tpl.find_partition(&tp.topic, tp.partition)
                && let Err(e) = el.set_offset(Offset::Offset(seek))
            {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot set start offset");
            }
            prepared.push((tp, start, pipeline, resumed, rollups_end));
        }
        // Where an assignment's time goes: the broker's answers, or the local restore.
        tracing::info!(
            partitions = prepared.len(),
            committed_ms = committed_read.as_millis() as u64,
            plan_topic_ms = plans_read.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "assignment prepared"
        );
        let mut map = self.assignments();
        let mut load = vec![0usize; self.workers.len()];
        for a in map.values() {
            load[a.worker] += 1;
        }
        for (tp, start, pipeline, resumed, rollups_end) in prepared {
            let worker = (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0);
            load[worker] += 1;
            tracing::info!(topic = %tp.topic, partition = tp.partition, worker, "partition assigned");
            if let Some(target) = start.guarded_from() {
                self.watch_for_stall(&tp, target);
            }
            let resume = Resume::at(&start, rollups_end);
            self.start_run(&mut map, tp, worker, pipeline, resume, resumed);
        }
        self.metrics.assigned_partitions.set(map.len() as i64);
        self.metrics.rebalances.inc_by(1);
        self.metrics.group.joined.store(true, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Hands `tp` to `worker` with a prepared pipeline under a new generation (queued
    /// batches of an earlier one are dropped) and a ledger that never commits at or below
    /// the offset it resumed from.
    pub(super) fn start_run(
        &self,
        map: &mut HashMap<Tp, Assignment>,
        tp: Tp,
        worker: usize,
        pipeline: Box<Pipeline>,
        resume: Resume,
        resumed: ResumedFrom,
    ) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let ledger = Arc::new(Ledger::resuming_at(resumed.committed).with_rollups_end(resume.rollups_end));
        let _ = self.workers[worker].send(WorkerMsg::Assign {
            tp: tp.clone(),
            generation,
            ledger: ledger.clone(),
            pipeline,
            resume,
        });
        map.insert(
            tp,
            Assignment {
                generation,
                worker,
                ledger,
                resumed,
            },
        );
    }

    /// Finishes queued work of `tpl`'s partitions, waits for their outputs, commits them
    /// (unless the assignment was lost to a session timeout) and drops their state.
    pub(super) fn revoke(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|el| Tp {
                topic: el.topic().into(),
                partition: el.partition(),
            })
            .collect();
        self.epoch.fetch_add(1, Ordering::Release);
        let mut per_worker: HashMap<usize, Vec<Tp>> = HashMap::new();
        {
            let map = self.assignments();
            for tp in &tps {
                if let Some(a) = map.get(tp) {
                    per_worker.entry(a.worker).or_default().push(tp.clone());
                }
            }
        }
        let mut waits = Vec::new();
        for (worker, tps) in per_worker {
            let (done, wait) = mpsc::channel();
            if self.workers[worker].send(WorkerMsg::Revoke { tps, done }).is_ok() {
                waits.push(wait);
            }
        }
        let deadline = Instant::now() + self.drain_timeout;
        for wait in waits {
            let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        if let Err(e) = self
            .producer
            .flush(deadline.saturating_duration_since(Instant::now()))
        {
            tracing::warn!(error = %e, "outputs still in flight at revoke; their offsets stay uncommitted");
        }
        self.stalls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tp, _| !tps.contains(tp));
        let lost = consumer.assignment_lost();
        let closing = self.closing.load(Ordering::Acquire);
        let resend = Resend::at_revoke(closing);
        let mut commit = Vec::new();
        let mut map = self.assignments();
        for tp in &tps {
            if let Some(a) = map.remove(tp)
                && let Some(plan) = a.ledger.take_commit(resend)
            {
                commit.push((tp.clone(), plan));
            }
            tracing::info!(topic = %tp.topic, partition = tp.partition, "partition revoked");
        }
        self.metrics.assigned_partitions.set(map.len() as i64);
        drop(map);
        self.metrics.rebalances.inc_by(1);
        if commits::commit_at_revoke(lost, closing, commit.len()) {
            self.commit(consumer, &commit, CommitMode::Sync);
        }
    }

    pub(super) fn delivery_failure(&self) -> Option<String> {
        self.assignments().values().find_map(|a| a.ledger.failure())
    }
}

pub(super) fn seek(consumer: &BaseConsumer<ConsumerCtx>, tp: &Tp, offset: i64) {
    if let Err(e) = consumer.seek(
        &tp.topic,
        tp.partition,
        Offset::Offset(offset),
        Duration::from_secs(10),
    ) {
        tracing::warn!(topic = %tp.topic, partition = tp.partition, offset, error = %e, "seek failed");
    }
}
