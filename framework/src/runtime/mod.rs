//! The runtime: a plain rdkafka consumer in a consumer group, a poll thread that copies
//! records into per-partition batches, worker threads that run the pipelines, an
//! idempotent producer, and commits of acknowledged prefixes only.
//!
//! Rebalances are handled in the consumer's callbacks on the poll thread: on revoke the
//! partitions' queued batches are processed, their outputs flushed and their offsets
//! committed before the partitions are released; on assign fresh pipelines are created.

pub mod fetch_start;
pub mod kafka;
pub mod ledger;
pub mod producer;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::replay::{self, CheckpointPosition, CoarsePlan, Plan, PlanStore, StartPoint, StateSource};
use crate::stage::ReplayPoint;
use crate::state::StateStore;
use fetch_start::{Arrival, FetchStart};
use ledger::Ledger;
use producer::OutputContext;
use worker::{Batch, Outputs, Resume, WorkerMsg, WorkerShared};

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: Arc<str>,
    pub partition: i32,
}

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("topic layout: {0}")]
    Topology(String),
    #[error("outputs were not delivered, stopped without committing past them: {0}")]
    Delivery(String),
    #[error("state store: {0}")]
    State(String),
    #[error("stopped before start-up finished")]
    Stopped,
    #[error("a runtime thread panicked")]
    Panicked,
}

impl RuntimeError {
    /// Whether a restart can be expected to help (Kafka trouble) or not (bad setup).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RuntimeError::Kafka(_) | RuntimeError::Delivery(_))
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub records: u64,
    pub rollups: u64,
    pub anomalies: u64,
    pub dead_lettered: u64,
    pub late: u64,
}

struct Assignment {
    generation: u64,
    worker: usize,
    ledger: Arc<Ledger>,
}

/// State shared between the poll loop and the consumer's rebalance callbacks.
struct Coordinator {
    workers: Vec<SyncSender<WorkerMsg>>,
    assignments: Mutex<HashMap<Tp, Assignment>>,
    /// Bumped by every rebalance so the poll loop re-resolves its batches' targets.
    epoch: AtomicU64,
    next_generation: AtomicU64,
    producer: Arc<ThreadedProducer<OutputContext>>,
    metrics: Arc<Metrics>,
    drain_timeout: Duration,
    spec: PipelineSpec,
    plans: PlanStore,
    state: Option<Arc<StateStore>>,
    /// Partitions whose replay has not yet returned a record, though records are known
    /// to exist from the seek offset on.
    stalls: Mutex<HashMap<Tp, FetchStart>>,
    watching_stalls: AtomicBool,
    /// For reading coarse windows' rows back from the rollups topic.
    config: Config,
}

impl Coordinator {
    fn assignments(&self) -> std::sync::MutexGuard<'_, HashMap<Tp, Assignment>> {
        self.assignments.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides how each new partition resumes (plan, checkpoint, or nothing), writes the
    /// start offsets into `tpl` for the assign call, and hands prepared pipelines to
    /// workers.
    fn assign(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &mut TopicPartitionList) {
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
        let committed = self.committed(consumer, &new);
        let topic_plans = match &self.plans {
            PlanStore::Topic(store) if !new.is_empty() => match store.read_all(Duration::from_secs(30)) {
                Ok(plans) => plans,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read replay plans; partitions resume from commits only");
                    Default::default()
                }
            },
            _ => Default::default(),
        };
        let mut prepared = Vec::new();
        for tp in new {
            let (offset, metadata_plan) = committed.get(&tp).copied().unwrap_or((None, None));
            let topic_plan = topic_plans.get(&(tp.topic.to_string(), tp.partition)).copied();
            // The newer of the two copies: a plan is valid on its own, see replay::decide.
            let plan = metadata_plan
                .into_iter()
                .chain(topic_plan)
                .max_by_key(|p| p.next_offset);
            let (start, pipeline, rollups_end) = self.restore(&tp, offset, plan);
            if let Some(seek) = start.seek
                && let Some(mut el) = tpl.find_partition(&tp.topic, tp.partition)
                && let Err(e) = el.set_offset(Offset::Offset(seek))
            {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot set start offset");
            }
            prepared.push((tp, start, pipeline, offset, rollups_end));
        }
        let mut map = self.assignments();
        let mut load = vec![0usize; self.workers.len()];
        for a in map.values() {
            load[a.worker] += 1;
        }
        for (tp, start, pipeline, committed, rollups_end) in prepared {
            let worker = (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0);
            load[worker] += 1;
            tracing::info!(topic = %tp.topic, partition = tp.partition, worker, "partition assigned");
            if let Some(target) = start.seek.filter(|&s| s < start.replay_until) {
                self.watch_for_stall(&tp, target);
            }
            let resume = Resume {
                from: start.seek,
                replay_until: start.replay_until,
                rollups_end,
            };
            self.start_run(&mut map, tp, worker, pipeline, resume, committed);
        }
        self.metrics.assigned_partitions.set(map.len() as i64);
        self.metrics.rebalances.add(1);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Hands `tp` to `worker` with a prepared pipeline under a new generation (queued
    /// batches of an earlier one are dropped) and a ledger that never commits at or below
    /// `committed`.
    fn start_run(
        &self,
        map: &mut HashMap<Tp, Assignment>,
        tp: Tp,
        worker: usize,
        pipeline: Box<Pipeline>,
        resume: Resume,
        committed: Option<i64>,
    ) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let ledger = Arc::new(Ledger::resuming_at(committed).with_rollups_end(resume.rollups_end));
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
            },
        );
    }

    fn watch_for_stall(&self, tp: &Tp, target: i64) {
        self.stalls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.clone(), FetchStart::at(target));
        self.watching_stalls.store(true, Ordering::Relaxed);
    }

    /// A record arrived for a partition whose replay may be watched: `false` drops it (the
    /// broker skipped records before it; the partition is sought further back). Records
    /// before the replay's start pass: the worker skips them.
    fn arrived(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> bool {
        let mut stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tp, stall)) = stalls
            .iter_mut()
            .find(|(tp, _)| tp.partition == partition && &*tp.topic == topic)
        else {
            return true;
        };
        match stall.arrived(offset) {
            Arrival::Resumed | Arrival::Before => {
                let tp = tp.clone();
                stalls.remove(&tp);
                if stalls.is_empty() {
                    self.watching_stalls.store(false, Ordering::Relaxed);
                }
                true
            }
            Arrival::Skipped(None) => false,
            Arrival::Skipped(Some(to)) => {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, target = stall.offset(), got = offset, seek = to,
                    "the broker skipped records after the replay's first offset (a fetch inside a record batch); seeking back");
                seek(consumer, tp, to);
                false
            }
        }
    }

    /// Replays that read nothing for a while although their records exist: seek further
    /// back each time (see [`FetchStart`]); the worker skips records before the real start.
    fn unstick(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        let mut stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, stall) in stalls.iter_mut() {
            if let Some(offset) = stall.silent() {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, target = stall.offset(), offset,
                    "replay read nothing; the broker may not serve fetches that start inside a record batch, seeking back");
                seek(consumer, tp, offset);
            }
        }
    }

    /// Committed offsets and the plans in their metadata, retried while the coordinator
    /// is unreachable. After the retries the partitions resume from what librdkafka
    /// fetches itself, with empty state (logged).
    fn committed(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        tps: &[Tp],
    ) -> HashMap<Tp, (Option<i64>, Option<Plan>)> {
        let mut out = HashMap::new();
        if tps.is_empty() {
            return out;
        }
        let mut query = TopicPartitionList::new();
        for tp in tps {
            query.add_partition(&tp.topic, tp.partition);
        }
        let mut backoff = kafka::Backoff::new();
        for attempt in 1..=5 {
            match consumer.committed_offsets(query.clone(), Duration::from_secs(10)) {
                Ok(result) => {
                    for el in result.elements() {
                        let offset = match el.offset() {
                            Offset::Offset(o) if o >= 0 => Some(o),
                            _ => None,
                        };
                        let plan = Plan::decode(el.metadata());
                        let tp = Tp {
                            topic: el.topic().into(),
                            partition: el.partition(),
                        };
                        out.insert(tp, (offset, plan));
                    }
                    return out;
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "cannot read committed offsets; retrying");
                    std::thread::sleep(backoff.next_delay());
                }
            }
        }
        tracing::error!(
            "committed offsets unreadable; partitions resume from the broker's committed offsets with empty state"
        );
        out
    }

    /// Builds the pipeline a partition resumes with and where it starts reading, and
    /// where the rollups topic ended for the state it resumes from (if known).
    fn restore(
        &self,
        tp: &Tp,
        committed: Option<i64>,
        plan: Option<Plan>,
    ) -> (StartPoint, Box<Pipeline>, Option<i64>) {
        let mut pipeline = Box::new(Pipeline::new(&self.spec));
        let checkpoint = self.state.as_ref().and_then(|store| match store.load(&tp.topic, tp.partition) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.checkpoint_errors.add(1);
                tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "local checkpoint unusable; replaying from the plan");
                None
            }
        });
        let position = checkpoint.as_ref().map(|c| CheckpointPosition {
            next_offset: c.next_offset,
        });
        let mut start = replay::decide(committed, plan, position);
        if start.source == StateSource::Checkpoint
            && let Some(c) = &checkpoint
            && let Err(e) = pipeline.restore(&c.pipeline)
        {
            self.metrics.checkpoint_errors.add(1);
            tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "local checkpoint unusable; replaying from the plan");
            pipeline = Box::new(Pipeline::new(&self.spec));
            start = replay::decide(committed, plan, None);
        }
        let mut rollups_end = None;
        match start.source {
            StateSource::Plan(p) if p.requested => pipeline.reemit_from_next_record(),
            StateSource::Plan(p) => {
                pipeline.restore_cut(p.cut);
                match p.coarse.filter(|c| self.seed_coarse(tp, &mut pipeline, &p, c)) {
                    Some(c) => {
                        pipeline.restore_watermark(c.fine_watermark);
                        start.seek = Some(replay::first_read(c.fine_start, start.replay_until));
                        rollups_end = Some(c.rollups_end);
                    }
                    None => pipeline.restore_watermark(p.watermark),
                }
            }
            StateSource::Checkpoint => {
                if let Some(c) = &checkpoint {
                    pipeline.locate_restored_rows(c.rollups_from);
                    rollups_end = c.rollups_end;
                }
            }
            StateSource::Empty | StateSource::CommittedOnly => {}
        }
        pipeline.set_replay_until(start.replay_until);
        tracing::info!(topic = %tp.topic, partition = tp.partition, source = ?start.source, seek = ?start.seek,
            replay_until = start.replay_until, committed = ?committed, "resuming partition");
        (start, pipeline, rollups_end)
    }

    /// Rebuilds a plan's open coarse windows from the rollups topic. On failure the
    /// pipeline is left untouched and the plan's full raw replay is used instead.
    fn seed_coarse(&self, tp: &Tp, pipeline: &mut Pipeline, plan: &Plan, coarse: &CoarsePlan) -> bool {
        let topic = &self.config.topics.rollups;
        let started = Instant::now();
        match replay::read_rollups(
            &self.config,
            topic,
            tp.partition,
            coarse.rollups_from,
            coarse.rollups_end,
            Duration::from_secs(60),
        ) {
            Ok(rows) => {
                let raw = ReplayPoint {
                    offset: plan.replay_start,
                    watermark: plan.watermark,
                };
                let merged = pipeline.seed_coarse(&rows, coarse, raw);
                self.metrics.coarse_rows_read.add(rows.len() as u64);
                tracing::info!(topic = %tp.topic, partition = tp.partition, rollups = %topic,
                    from = coarse.rollups_from, end = coarse.rollups_end, rows = rows.len(), merged,
                    secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                    raw_from = coarse.fine_start, instead_of = plan.replay_start,
                    "coarse windows rebuilt from the rollups topic");
                true
            }
            Err(e) => {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, rollups = %topic, error = %e,
                    "cannot read coarse windows back from the rollups topic; replaying raw records for them");
                false
            }
        }
    }

    /// Commits offsets with their plans in the metadata (and in the plan topic when the
    /// broker drops metadata).
    fn commit(&self, consumer: &BaseConsumer<ConsumerCtx>, plans: &[(Tp, Plan)], mode: CommitMode) {
        if plans.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, plan) in plans {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(plan.next_offset));
            if let Some(mut el) = tpl.find_partition(&tp.topic, tp.partition) {
                el.set_metadata(plan.encode());
            }
            if let PlanStore::Topic(store) = &self.plans {
                store.write(&tp.topic, tp.partition, plan);
            }
        }
        match mode {
            CommitMode::Async => {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, "cannot request commit");
                }
            }
            CommitMode::Sync => {
                if let PlanStore::Topic(store) = &self.plans {
                    store.flush(self.drain_timeout);
                }
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => self.metrics.commits.add(1),
                    Err(e) => {
                        self.metrics.commit_errors.add(1);
                        tracing::warn!(error = %e, "commit failed");
                    }
                }
            }
        }
    }

    /// Finishes queued work of `tpl`'s partitions, waits for their outputs, commits them
    /// (unless the assignment was lost to a session timeout) and drops their state.
    fn revoke(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
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
        let mut commit = Vec::new();
        let mut map = self.assignments();
        for tp in &tps {
            if let Some(a) = map.remove(tp)
                && let Some(plan) = a.ledger.take_commit(true)
            {
                commit.push((tp.clone(), plan));
            }
            tracing::info!(topic = %tp.topic, partition = tp.partition, "partition revoked");
        }
        self.metrics.assigned_partitions.set(map.len() as i64);
        drop(map);
        self.metrics.rebalances.add(1);
        if lost {
            tracing::warn!("assignment lost (session timeout?); not committing revoked partitions");
        } else {
            self.commit(consumer, &commit, CommitMode::Sync);
        }
    }

    /// Offsets (with their plans) whose outputs are all acknowledged and that moved since
    /// the last commit, or all of them with `again`.
    fn committable(&self, again: bool) -> Vec<(Tp, Plan)> {
        self.assignments()
            .iter()
            .filter_map(|(tp, a)| a.ledger.take_commit(again).map(|plan| (tp.clone(), plan)))
            .collect()
    }

    fn delivery_failure(&self) -> Option<String> {
        self.assignments().values().find_map(|a| a.ledger.failure())
    }
}

impl Coordinator {
    /// An operator's replay of partitions this instance owns: commits the requested plan
    /// (so a crash mid-replay resumes it), drops the local checkpoint, restarts the
    /// partition's pipeline in re-emit mode and seeks the consumer.
    fn replay(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        input: &str,
        request: &replay::ReplayRequest,
    ) -> Result<Vec<(i32, i64)>, String> {
        let mut owned: Vec<i32> = self
            .assignments()
            .keys()
            .filter(|tp| &*tp.topic == input)
            .map(|tp| tp.partition)
            .collect();
        owned.sort_unstable();
        let offsets = replay::request::resolve(consumer, input, request, Some(&owned))?;
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

fn seek(consumer: &BaseConsumer<ConsumerCtx>, tp: &Tp, offset: i64) {
    if let Err(e) = consumer.seek(
        &tp.topic,
        tp.partition,
        Offset::Offset(offset),
        Duration::from_secs(10),
    ) {
        tracing::warn!(topic = %tp.topic, partition = tp.partition, offset, error = %e, "seek failed");
    }
}

/// Requests from the admin endpoint to the poll loop.
#[derive(Debug)]
pub enum Control {
    Replay {
        request: replay::ReplayRequest,
        reply: mpsc::Sender<Result<Vec<(i32, i64)>, String>>,
    },
}

/// A handle for operator requests to a running runtime.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    tx: SyncSender<Control>,
}

impl ControlHandle {
    /// Replays partitions this instance owns; returns the offset each starts from.
    pub fn replay(&self, request: replay::ReplayRequest) -> Result<Vec<(i32, i64)>, String> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .try_send(Control::Replay { request, reply })
            .map_err(|_| "the runtime is busy or stopping; try again".to_string())?;
        answer
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the runtime did not answer within 60 s".to_string())?
    }
}

/// The consumer's context: rebalance callbacks and commit results.
struct ConsumerCtx {
    coordinator: Arc<Coordinator>,
}

impl ClientContext for ConsumerCtx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.coordinator.metrics.consumer_errors.add(1);
        tracing::warn!(error = %error, reason, "consumer error");
    }
}

impl ConsumerContext for ConsumerCtx {
    /// Replaces rdkafka's default so the start offset of each assigned partition is the
    /// one its replay plan (or checkpoint) calls for, set before fetching begins.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.coordinator.assign(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.coordinator.revoke(consumer, tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying the rebalance failed");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Error(e) = rebalance {
            tracing::warn!(error = %e, "rebalance error");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let map = self.coordinator.assignments();
        match result {
            Ok(()) => {
                self.coordinator.metrics.commits.add(1);
                for el in offsets.elements() {
                    if let Offset::Offset(o) = el.offset() {
                        self.coordinator
                            .metrics
                            .update_partition(el.topic(), el.partition(), |g| g.committed_offset = o);
                    }
                }
            }
            Err(e) => {
                self.coordinator.metrics.commit_errors.add(1);
                tracing::warn!(error = %e, "offset commit failed; will retry");
                for el in offsets.elements() {
                    let tp = Tp {
                        topic: el.topic().into(),
                        partition: el.partition(),
                    };
                    if let (Some(a), Offset::Offset(o)) = (map.get(&tp), el.offset()) {
                        a.ledger.commit_failed(o);
                    }
                }
            }
        }
    }
}

/// A running pipeline. Dropping it does not stop it: call [`Runtime::stop`] and
/// [`Runtime::join`].
pub struct Runtime {
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    control: ControlHandle,
    thread: JoinHandle<Result<RunSummary, RuntimeError>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Validates `config` and starts consuming on a background thread.
    pub fn start(config: Config) -> Result<Self, RuntimeError> {
        config.validate()?;
        let spec = config.pipeline_spec()?;
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new());
        let (control_tx, control_rx) = mpsc::sync_channel(4);
        let thread = {
            let stop = stop.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("tributary-poll".into())
                .spawn(move || poll_thread(config, spec, stop, metrics, control_rx))
                .map_err(|e| RuntimeError::Kafka(format!("cannot spawn poll thread: {e}")))?
        };
        Ok(Self {
            stop,
            metrics,
            control: ControlHandle { tx: control_tx },
            thread,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Operator requests (replay) to this runtime.
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Asks the runtime to finish: process what was read, flush outputs, commit, leave the
    /// group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) -> Result<RunSummary, RuntimeError> {
        self.thread.join().map_err(|_| RuntimeError::Panicked)?
    }
}

fn poll_thread(
    config: Config,
    spec: PipelineSpec,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    control: Receiver<Control>,
) -> Result<RunSummary, RuntimeError> {
    let topics = &config.topics;
    let mut wanted = Vec::new();
    if spec.rollup.is_some() {
        wanted.push(kafka::OutputTopic {
            name: topics.rollups.clone(),
            copartitioned: true,
        });
    }
    if spec.cusum.is_some() {
        wanted.push(kafka::OutputTopic {
            name: topics.anomalies.clone(),
            copartitioned: true,
        });
    }
    wanted.push(kafka::OutputTopic {
        name: topics.dead_letter.clone(),
        copartitioned: false,
    });
    if !topics.late.is_empty() {
        wanted.push(kafka::OutputTopic {
            name: topics.late.clone(),
            copartitioned: false,
        });
    }
    let layout = kafka::prepare_topics(&config, &topics.input, &wanted, &stop)?;
    tracing::info!(input = %topics.input, partitions = layout.input_partitions, outputs = ?layout.outputs, "topics ready");
    let plans = plan_store(&config, &stop)?;
    let state = open_state(&config)?;

    let producer: Arc<ThreadedProducer<OutputContext>> = Arc::new(
        kafka::producer_config(&config)
            .create_with_context(OutputContext {
                metrics: metrics.clone(),
            })
            .map_err(|e| RuntimeError::Kafka(format!("cannot create producer: {e}")))?,
    );
    let outputs = Outputs {
        rollups: topics.rollups.clone(),
        anomalies: topics.anomalies.clone(),
        dead_letter: topics.dead_letter.clone(),
        dead_letter_partitions: layout.outputs.get(&topics.dead_letter).copied().unwrap_or(1),
        late: (!topics.late.is_empty()).then(|| {
            (
                topics.late.clone(),
                layout.outputs.get(&topics.late).copied().unwrap_or(1),
            )
        }),
        format: topics.output_format,
        input: topics.input.clone(),
        group: config.kafka.group.clone(),
    };
    let (recycle_tx, recycle_rx) = mpsc::channel::<Batch>();
    let shared = Arc::new(WorkerShared {
        spec,
        producer: producer.clone(),
        outputs,
        metrics: metrics.clone(),
        idle_timeout: config.rollup.idle_timeout.0,
        recycle: recycle_tx,
        state: state.clone(),
        checkpoint_interval: config.state.checkpoint_interval.0,
    });
    let worker_count = match config.runtime.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for i in 0..worker_count {
        let (tx, rx) = mpsc::sync_channel(config.runtime.queue_depth);
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tributary-worker-{i}"))
            .spawn(move || worker::run(shared, rx))
            .map_err(|e| RuntimeError::Kafka(format!("cannot spawn worker: {e}")))?;
        senders.push(tx);
        handles.push(handle);
    }
    let coordinator = Arc::new(Coordinator {
        workers: senders,
        assignments: Mutex::new(HashMap::new()),
        epoch: AtomicU64::new(0),
        next_generation: AtomicU64::new(1),
        producer: producer.clone(),
        metrics: metrics.clone(),
        drain_timeout: config.runtime.drain_timeout.0,
        spec: shared.spec.clone(),
        plans,
        state,
        stalls: Mutex::new(HashMap::new()),
        watching_stalls: AtomicBool::new(false),
        config: config.clone(),
    });
    let consumer: BaseConsumer<ConsumerCtx> = kafka::consumer_config(&config)
        .create_with_context(ConsumerCtx {
            coordinator: coordinator.clone(),
        })
        .map_err(|e| RuntimeError::Kafka(format!("cannot create consumer: {e}")))?;
    consumer
        .subscribe(&[&topics.input])
        .map_err(|e| RuntimeError::Kafka(format!("cannot subscribe to {}: {e}", topics.input)))?;
    tracing::info!(group = %config.kafka.group, topic = %topics.input, workers = worker_count, "consuming");

    let result = poll_loop(&consumer, &coordinator, &config, &stop, &recycle_rx, &control);

    // Finish in order: work already read, outputs, final commit, leave the group (the
    // revoke callback finds nothing left), then stop the workers.
    drain_workers(&coordinator);
    if let Err(e) = producer.flush(config.runtime.drain_timeout.0) {
        tracing::warn!(error = %e, "outputs still in flight at shutdown; their offsets stay uncommitted");
    }
    let final_commit = coordinator.committable(true);
    coordinator.commit(&consumer, &final_commit, CommitMode::Sync);
    consumer.unsubscribe();
    drop(consumer);
    let failure = coordinator.delivery_failure();
    drop(coordinator);
    drop(shared);
    for h in handles {
        let _ = h.join();
    }
    let summary = RunSummary {
        records: metrics.records_consumed.get(),
        rollups: metrics.rollups_emitted.get(),
        anomalies: metrics.anomalies_emitted.get(),
        dead_lettered: metrics.records_dead_lettered.get(),
        late: metrics.records_late.get(),
    };
    tracing::info!(
        records = summary.records,
        rollups = summary.rollups,
        anomalies = summary.anomalies,
        dead_lettered = summary.dead_lettered,
        late = summary.late,
        "stopped"
    );
    result?;
    match failure {
        Some(e) => Err(RuntimeError::Delivery(e)),
        None => Ok(summary),
    }
}

/// Chooses where replay plans go: commit metadata when the broker keeps it, otherwise
/// (or when configured) the plan topic as well.
fn plan_store(config: &Config, stop: &AtomicBool) -> Result<PlanStore, RuntimeError> {
    let use_topic = match config.state.plan_store.as_str() {
        "metadata" => false,
        "topic" => true,
        _ => match replay::probe(config, &config.topics.input) {
            Ok(keeps) => {
                tracing::info!(
                    keeps_metadata = keeps,
                    "probed the broker's offset-commit metadata"
                );
                !keeps
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot probe commit metadata; keeping plans in the plan topic too");
                true
            }
        },
    };
    if !use_topic {
        return Ok(PlanStore::Metadata);
    }
    let topic = config.plan_topic();
    kafka::ensure_plan_topic(config, &topic, stop)?;
    tracing::info!(topic, "replay plans are also kept in the plan topic");
    replay::PlanTopic::new(config, topic)
        .map(PlanStore::Topic)
        .map_err(RuntimeError::Kafka)
}

fn open_state(config: &Config) -> Result<Option<Arc<StateStore>>, RuntimeError> {
    let dir = config.state.dir.trim();
    if dir.is_empty() {
        return Ok(None);
    }
    let mib = 1usize << 20;
    let store = StateStore::open(
        std::path::Path::new(dir),
        config.state.block_cache_mb as usize * mib,
        config.state.write_buffer_mb as usize * mib,
    )
    .map_err(|e| RuntimeError::State(e.to_string()))?;
    tracing::info!(dir, "local checkpoints enabled");
    Ok(Some(Arc::new(store)))
}

fn drain_workers(coordinator: &Coordinator) {
    let deadline = Instant::now() + coordinator.drain_timeout;
    let waits: Vec<_> = coordinator
        .workers
        .iter()
        .filter_map(|w| {
            let (done, wait) = mpsc::channel();
            w.send(WorkerMsg::Drain { done }).ok().map(|_| wait)
        })
        .collect();
    for wait in waits {
        let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

struct Pending {
    batch: Batch,
    worker: usize,
}

fn poll_loop(
    consumer: &BaseConsumer<ConsumerCtx>,
    coordinator: &Coordinator,
    config: &Config,
    stop: &AtomicBool,
    recycle: &Receiver<Batch>,
    control: &Receiver<Control>,
) -> Result<(), RuntimeError> {
    let batch_size = config.runtime.batch_size;
    let commit_interval = config.kafka.commit_interval.0;
    let mut pending: HashMap<i32, Pending> = HashMap::new();
    let mut seen_epoch = coordinator.epoch.load(Ordering::Acquire);
    let mut last_flush = Instant::now();
    let mut last_commit = Instant::now();
    let mut last_full_commit = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_error_log: Option<Instant> = None;
    let mut since_clock = 0u32;

    let send = |p: Pending| {
        // Blocks when the worker is behind: the bounded queue is the backpressure.
        let _ = coordinator.workers[p.worker].send(WorkerMsg::Batch(p.batch));
    };

    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(Duration::from_millis(50));
        let epoch = coordinator.epoch.load(Ordering::Acquire);
        if epoch != seen_epoch {
            // Batches of revoked partitions carry an old generation and are dropped by
            // their worker; the rest are delivered as usual.
            seen_epoch = epoch;
            pending.drain().for_each(|(_, p)| send(p));
        }
        match polled {
            Some(Ok(msg)) => {
                let partition = msg.partition();
                if coordinator.watching_stalls.load(Ordering::Relaxed)
                    && !coordinator.arrived(consumer, msg.topic(), partition, msg.offset())
                {
                    continue;
                }
                let entry = match pending.get_mut(&partition) {
                    Some(p) => p,
                    None => {
                        let tp = Tp {
                            topic: msg.topic().into(),
                            partition,
                        };
                        let target = coordinator
                            .assignments()
                            .get(&tp)
                            .map(|a| (a.generation, a.worker));
                        let Some((generation, worker)) = target else {
                            continue;
                        };
                        let mut batch = recycle.try_recv().unwrap_or_default();
                        batch.reset(partition, generation);
                        pending.entry(partition).or_insert(Pending { batch, worker })
                    }
                };
                entry.batch.push(msg.offset(), msg.key(), msg.payload());
                if entry.batch.len() >= batch_size
                    && let Some(p) = pending.remove(&partition)
                {
                    send(p);
                }
                since_clock += 1;
                if since_clock < 256 {
                    continue;
                }
            }
            Some(Err(e)) => {
                coordinator.metrics.consumer_errors.add(1);
                if last_error_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "consumer error; librdkafka keeps retrying");
                    last_error_log = Some(Instant::now());
                }
            }
            None => {
                pending.drain().for_each(|(_, p)| send(p));
                last_flush = Instant::now();
            }
        }
        since_clock = 0;
        while let Ok(Control::Replay { request, reply }) = control.try_recv() {
            // Batches already read for these partitions belong to the old generation and
            // are dropped by their worker.
            pending.drain().for_each(|(_, p)| send(p));
            let _ = reply.send(coordinator.replay(consumer, &config.topics.input, &request));
        }
        let now = Instant::now();
        if now.duration_since(last_flush) >= Duration::from_millis(20) {
            pending.drain().for_each(|(_, p)| send(p));
            last_flush = now;
        }
        if now.duration_since(last_tick) >= Duration::from_secs(1) {
            for w in &coordinator.workers {
                let _ = w.try_send(WorkerMsg::Tick);
            }
            if let Some(store) = &coordinator.state {
                coordinator
                    .metrics
                    .state_memory_bytes
                    .set(store.memory_bytes() as i64);
            }
            if coordinator.watching_stalls.load(Ordering::Relaxed) {
                coordinator.unstick(consumer);
            }
            last_tick = now;
        }
        if now.duration_since(last_commit) >= commit_interval {
            last_commit = now;
            if let Some(e) = coordinator.delivery_failure() {
                tracing::error!(error = %e, "stopping: an output could not be delivered");
                pending.drain().for_each(|(_, p)| send(p));
                return Err(RuntimeError::Delivery(e));
            }
            // Async commits can fail unseen (e.g. during a rebalance): every few seconds
            // the current offsets are committed again even if they did not move.
            let again = last_full_commit.elapsed() >= Duration::from_secs(5);
            if again {
                last_full_commit = now;
            }
            let plans = coordinator.committable(again);
            coordinator.commit(consumer, &plans, CommitMode::Async);
        }
    }
    pending.drain().for_each(|(_, p)| send(p));
    Ok(())
}
