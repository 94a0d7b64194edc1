//! The poll thread: prepares topics and clients, starts the workers, then polls the
//! consumer, copies records into per-partition batches for the workers, ticks them, serves
//! operator requests and commits; at the end it drains, commits and leaves the group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;

use super::batch::Batch;
use super::context::ConsumerCtx;
use super::control::ControlRequest;
use super::coordinator::{Coordinator, lock};
use super::producer::OutputProducer;
use super::recovery::{Admit, open_state, plan_history, plan_store};
use super::worker::{self, Outputs, WorkerMsg, WorkerShared};
use super::{RunSummary, RuntimeError, Tp, topics};
use crate::config::Config;
use crate::kafka::Backoff;
use crate::kafka::commits::Resend;
use crate::metrics::Metrics;
use crate::pipeline::PipelineSpec;

pub(super) fn poll_thread(
    config: Config,
    spec: PipelineSpec,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    control: Receiver<ControlRequest>,
) -> Result<RunSummary, RuntimeError> {
    let topics = &config.topics;
    let mut wanted = Vec::new();
    if spec.rollup.is_some() {
        wanted.push(topics::OutputTopic {
            name: topics.rollups.clone(),
            copartitioned: true,
        });
    }
    if spec.cusum.is_some() {
        wanted.push(topics::OutputTopic {
            name: topics.anomalies.clone(),
            copartitioned: true,
        });
    }
    wanted.push(topics::OutputTopic {
        name: topics.dead_letter.clone(),
        copartitioned: false,
    });
    if !topics.late.is_empty() {
        wanted.push(topics::OutputTopic {
            name: topics.late.clone(),
            copartitioned: false,
        });
    }
    let layout = topics::prepare_topics(&config, &topics.input, &wanted, &stop)?;
    tracing::info!(input = %topics.input, partitions = layout.input_partitions, outputs = ?layout.outputs, "topics ready");
    let plans = plan_store(&config, &stop)?;
    let history = Arc::new(plan_history(&config, &stop)?);
    let state = open_state(&config)?;

    let producer = Arc::new(
        OutputProducer::new(
            crate::kafka::client::producer_config(&config.kafka),
            metrics.clone(),
        )
        .map_err(RuntimeError::kafka("create the producer"))?,
    );
    let outputs = Outputs {
        rollups: topics.rollups.clone(),
        anomalies: topics.anomalies.clone(),
        dead_letter: topics.dead_letter.clone(),
        dead_letter_partitions: layout.outputs.get(&topics.dead_letter).copied().unwrap_or(1),
        dead_letter_max_bytes: config.input.max_record_bytes,
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
        history: history.clone(),
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
            .map_err(RuntimeError::start(format!("worker {i}")))?;
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
        history,
        state,
        stalls: Mutex::new(HashMap::new()),
        watching_stalls: AtomicBool::new(false),
        config: config.clone(),
        committer: Mutex::new(None),
        stop: stop.clone(),
        closing: AtomicBool::new(false),
    });
    let consumer: BaseConsumer<ConsumerCtx> = crate::kafka::client::consumer_config(&config.kafka)
        .create_with_context(ConsumerCtx {
            coordinator: coordinator.clone(),
        })
        .map_err(RuntimeError::kafka("create the consumer"))?;
    consumer
        .subscribe(&[&topics.input])
        .map_err(RuntimeError::kafka(format!("subscribe to {}", topics.input)))?;
    tracing::info!(group = %config.kafka.group, topic = %topics.input, workers = worker_count, "consuming");

    // Periodic commits wait for the broker's answer on a thread of their own, so a slow
    // coordinator never stalls polling (see kafka::commits::commit_and_settle).
    let (commit_tx, commit_rx) = mpsc::sync_channel::<TopicPartitionList>(1);
    *lock(&coordinator.committer) = Some(commit_tx);
    let result = std::thread::scope(|scope| {
        let committer = std::thread::Builder::new()
            .name("tributary-commit".into())
            .spawn_scoped(scope, || {
                for tpl in commit_rx {
                    coordinator.commit_now(&consumer, &tpl);
                }
            });
        if let Err(e) = &committer {
            tracing::warn!(error = %e, "cannot start the committer thread; committing on the poll thread");
            lock(&coordinator.committer).take();
        }
        let result = poll_loop(&consumer, &coordinator, &config, &stop, &recycle_rx, &control);
        // Ends the committer once its queue is empty.
        lock(&coordinator.committer).take();
        result
    });

    // Finish in order: work already read, outputs, final commit, leave the group (the
    // revoke callback finds nothing left), then stop the workers.
    drain_workers(&coordinator);
    if let Err(e) = producer.flush(config.runtime.drain_timeout.0) {
        tracing::warn!(error = %e, "outputs still in flight at shutdown; their offsets stay uncommitted");
    }
    let final_commit = coordinator.committable(Resend::Always);
    // From here a revoke (librdkafka can serve one inside the final commit) commits
    // nothing itself: a synchronous commit in that callback can wait forever.
    coordinator.closing.store(true, Ordering::Release);
    coordinator.commit_final(&consumer, &final_commit);
    let left = leave_group(consumer, config.runtime.drain_timeout.0);
    let failure = coordinator.delivery_failure();
    drop(coordinator);
    drop(shared);
    if left {
        for h in handles {
            let _ = h.join();
        }
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

/// Leaves the group and closes the consumer, waiting at most `within`: librdkafka's close
/// can wait for a group that does not settle (seen on the mock broker mid-rebalance), and
/// the app must stop all the same; the group then drops this member after its session
/// timeout. Returns whether the consumer closed (its context, and with it the workers'
/// queues, are released only then).
fn leave_group(consumer: BaseConsumer<ConsumerCtx>, within: Duration) -> bool {
    let (left, wait) = mpsc::channel();
    let closing = std::thread::Builder::new()
        .name("tributary-close".into())
        .spawn(move || {
            consumer.unsubscribe();
            drop(consumer);
            let _ = left.send(());
        });
    match closing {
        // The consumer went with the closure and was closed on this thread.
        Err(_) => true,
        Ok(_) => {
            let closed = wait.recv_timeout(within).is_ok();
            if !closed {
                tracing::warn!(waited = ?within, "the consumer did not leave the group in time; stopping without it (the group drops this member after its session timeout)");
            }
            closed
        }
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

/// The longest pause between rebuilds of partitions whose outputs keep failing.
const MAX_REBUILD_PAUSE: Duration = Duration::from_secs(30);
/// After this long without a rebuild the pauses start short again.
const REBUILD_BACKOFF_RESET: Duration = Duration::from_secs(300);

struct QueuedBatch {
    batch: Batch,
    worker: usize,
}

fn poll_loop(
    consumer: &BaseConsumer<ConsumerCtx>,
    coordinator: &Coordinator,
    config: &Config,
    stop: &AtomicBool,
    recycle: &Receiver<Batch>,
    control: &Receiver<ControlRequest>,
) -> Result<(), RuntimeError> {
    let batch_size = config.runtime.batch_size;
    let commit_interval = config.kafka.commit_interval.0;
    let mut pending: HashMap<i32, QueuedBatch> = HashMap::new();
    let mut seen_epoch = coordinator.epoch.load(Ordering::Acquire);
    let mut last_flush = Instant::now();
    let mut last_commit = Instant::now();
    let mut last_full_commit = Instant::now();
    let mut last_tick = Instant::now();
    let mut last_error_log: Option<Instant> = None;
    let mut since_clock = 0u32;
    let mut rebuild_backoff = Backoff::new().with_max(MAX_REBUILD_PAUSE);
    let mut last_rebuild = Instant::now();
    let mut next_rebuild = Instant::now();

    let send = |p: QueuedBatch| {
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
                let mut missing_from = None;
                if coordinator.watching_stalls.load(Ordering::Relaxed) {
                    match coordinator.arrived(consumer, msg.topic(), partition, msg.offset()) {
                        Admit::Pass => {}
                        Admit::Drop => continue,
                        Admit::AfterGap { missing_from: from } => missing_from = Some(from),
                    }
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
                        pending.entry(partition).or_insert(QueuedBatch { batch, worker })
                    }
                };
                if missing_from.is_some() {
                    entry.batch.missing_from = missing_from;
                }
                entry.batch.push(
                    msg.offset(),
                    msg.timestamp().to_millis(),
                    msg.key(),
                    msg.payload(),
                );
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
                coordinator.metrics.consumer_errors.inc_by(1);
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
        while let Ok(ControlRequest::Replay { request, reply }) = control.try_recv() {
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
            // Partitions with an undelivered output are rebuilt, at growing intervals
            // while deliveries keep failing (a permanent refusal costs a replay each time).
            if now >= next_rebuild && coordinator.delivery_failure().is_some() {
                if last_rebuild.elapsed() > REBUILD_BACKOFF_RESET {
                    rebuild_backoff = Backoff::new().with_max(MAX_REBUILD_PAUSE);
                }
                pending.drain().for_each(|(_, p)| send(p));
                coordinator.rebuild_undelivered(consumer);
                last_rebuild = Instant::now();
                next_rebuild = last_rebuild + rebuild_backoff.next_delay();
            }
            // Async commits can be lost unseen (e.g. in a rebalance): every few seconds
            // offsets the broker has not confirmed are sent again.
            let resend = if last_full_commit.elapsed() >= Duration::from_secs(5) {
                last_full_commit = now;
                Resend::Unconfirmed
            } else {
                Resend::New
            };
            let plans = coordinator.committable(resend);
            coordinator.commit(consumer, &plans, CommitMode::Async);
        }
    }
    pending.drain().for_each(|(_, p)| send(p));
    Ok(())
}
