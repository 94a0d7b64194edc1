//! The runtime: a plain rdkafka consumer in a consumer group, a poll thread that copies
//! records into per-partition batches, worker threads that run the pipelines, an
//! idempotent producer, and commits of acknowledged prefixes only.
//!
//! Rebalances are handled in the consumer's callbacks on the poll thread: on revoke the
//! partitions' queued batches are processed, their outputs flushed and their offsets
//! committed before the partitions are released; on assign fresh pipelines are created.

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

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use ledger::Ledger;
use producer::OutputContext;
use worker::{Batch, Outputs, WorkerMsg, WorkerShared};

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
}

impl Coordinator {
    fn assignments(&self) -> std::sync::MutexGuard<'_, HashMap<Tp, Assignment>> {
        self.assignments.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        let mut map = self.assignments();
        let mut load = vec![0usize; self.workers.len()];
        for a in map.values() {
            load[a.worker] += 1;
        }
        for el in tpl.elements() {
            let tp = Tp {
                topic: el.topic().into(),
                partition: el.partition(),
            };
            if map.contains_key(&tp) {
                continue;
            }
            let worker = (0..load.len()).min_by_key(|&w| load[w]).unwrap_or(0);
            load[worker] += 1;
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            let ledger = Arc::new(Ledger::new());
            tracing::info!(topic = %tp.topic, partition = tp.partition, worker, "partition assigned");
            let _ = self.workers[worker].send(WorkerMsg::Assign {
                tp: tp.clone(),
                generation,
                ledger: ledger.clone(),
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
        self.metrics.assigned_partitions.set(map.len() as i64);
        self.metrics.rebalances.add(1);
        self.epoch.fetch_add(1, Ordering::Release);
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
        let lost = consumer.assignment_lost();
        let mut commit = TopicPartitionList::new();
        let mut map = self.assignments();
        for tp in &tps {
            if let Some(a) = map.remove(tp)
                && let Some(offset) = a.ledger.take_commit()
            {
                let _ = commit.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset));
            }
            tracing::info!(topic = %tp.topic, partition = tp.partition, "partition revoked");
        }
        self.metrics.assigned_partitions.set(map.len() as i64);
        drop(map);
        self.metrics.rebalances.add(1);
        if lost {
            tracing::warn!("assignment lost (session timeout?); not committing revoked partitions");
        } else if commit.count() > 0 {
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => self.metrics.commits.add(1),
                Err(e) => {
                    self.metrics.commit_errors.add(1);
                    tracing::warn!(error = %e, "commit at revoke failed");
                }
            }
        }
    }

    /// Offsets whose outputs are all acknowledged and that moved since the last commit.
    fn committable(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, a) in self.assignments().iter() {
            if let Some(offset) = a.ledger.take_commit() {
                let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset));
            }
        }
        tpl
    }

    fn delivery_failure(&self) -> Option<String> {
        self.assignments().values().find_map(|a| a.ledger.failure())
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.coordinator.revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.coordinator.assign(tpl),
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
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
        let thread = {
            let stop = stop.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("tributary-poll".into())
                .spawn(move || poll_thread(config, spec, stop, metrics))
                .map_err(|e| RuntimeError::Kafka(format!("cannot spawn poll thread: {e}")))?
        };
        Ok(Self {
            stop,
            metrics,
            thread,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
    spec: crate::pipeline::PipelineSpec,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
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

    let result = poll_loop(&consumer, &coordinator, &config, &stop, &recycle_rx);

    // Finish in order: work already read, outputs, final commit, leave the group (the
    // revoke callback finds nothing left), then stop the workers.
    drain_workers(&coordinator);
    if let Err(e) = producer.flush(config.runtime.drain_timeout.0) {
        tracing::warn!(error = %e, "outputs still in flight at shutdown; their offsets stay uncommitted");
    }
    let final_commit = coordinator.committable();
    if final_commit.count() > 0 {
        match consumer.commit(&final_commit, CommitMode::Sync) {
            Ok(()) => metrics.commits.add(1),
            Err(e) => tracing::warn!(error = %e, "final commit failed"),
        }
    }
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
) -> Result<(), RuntimeError> {
    let batch_size = config.runtime.batch_size;
    let commit_interval = config.kafka.commit_interval.0;
    let mut pending: HashMap<i32, Pending> = HashMap::new();
    let mut seen_epoch = coordinator.epoch.load(Ordering::Acquire);
    let mut last_flush = Instant::now();
    let mut last_commit = Instant::now();
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
        let now = Instant::now();
        if now.duration_since(last_flush) >= Duration::from_millis(20) {
            pending.drain().for_each(|(_, p)| send(p));
            last_flush = now;
        }
        if now.duration_since(last_tick) >= Duration::from_secs(1) {
            for w in &coordinator.workers {
                let _ = w.try_send(WorkerMsg::Tick);
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
            let tpl = coordinator.committable();
            if tpl.count() > 0
                && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
            {
                tracing::warn!(error = %e, "cannot request commit");
            }
        }
    }
    pending.drain().for_each(|(_, p)| send(p));
    Ok(())
}
