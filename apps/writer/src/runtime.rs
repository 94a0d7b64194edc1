//! The writer's loop: consume → rows → batcher → rate-limited write tasks ([`crate::write`])
//! → acknowledged prefixes ([`crate::partitions`]) → commits confirmed by the broker.
//! Partitions whose unacknowledged rows pile up (slow or unreachable cluster) are paused,
//! never buffered without bound. Everything Kafka-facing comes from the framework's
//! [`tributary::kafka`] layer, shared with the rollup and detector apps.

use foldhash::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tributary::kafka::client::{consumer_config, producer_config};
use tributary::kafka::commits::{self, Resend};
use tributary::kafka::fetch_start::{Arrival, FetchStart};
use tributary::kafka::logging::{self, Logged};
use tributary::kafka::polled::{Confirming, PolledProducer};
use tributary::kafka::stats;
use tributary::kafka::{Backoff, headers};

use crate::batcher::{BatchLimits, Batcher, ReplicaSet};
use crate::budget::{Budget, LimitScope};
use crate::config::WriterConfig;
use crate::dead_letter::DeadLetters;
use crate::group_limit::GroupLimit;
use crate::health::Health;
use crate::limiter::{Limiter, RateLimit};
use crate::metrics::{WriterMetrics, partition_labels};
use crate::partitions::{Partitions, TopicPartition};
use crate::rows::{Source, to_row, write_timestamp};
use crate::sink::Sink;
use crate::write::{QueuedRow, Writers};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where each newly assigned (or resumed) partition must continue: some brokers do not
/// serve a fetch that starts inside a record batch (see [`FetchStart`]).
type Starts = HashMap<TopicPartition, FetchStart>;

/// The consumer's callbacks: assignment, commit at revoke, commit results, librdkafka's
/// log lines.
struct WriterContext {
    partitions: Arc<Partitions>,
    starts: Arc<Mutex<Starts>>,
    metrics: Arc<WriterMetrics>,
    health: Arc<Health>,
    /// The group's rate budget, when `limits.scope = "group"`, and the topics whose
    /// partitions it is shared by.
    budget: Option<(Arc<Budget>, Vec<String>)>,
    limiter: Arc<Limiter>,
}

impl WriterContext {
    fn settle(&self, topic: &str, partition: i32, offset: i64, ok: bool) {
        let counter = if ok {
            &self.metrics.commits
        } else {
            &self.metrics.commit_errors
        };
        counter.inc_by(1);
        self.partitions.settle_commit(topic, partition, offset, ok);
    }
}

impl ClientContext for WriterContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        logging::forward_log("consumer", level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        logging::report_error("consumer", &error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(s) = stats::parse(statistics) {
            self.health.group.apply_stats(&s);
            for (topic, partition, lag) in &s.lags {
                self.metrics
                    .consumer_lag
                    .get_or_create(&partition_labels(topic, *partition))
                    .set(*lag);
            }
        }
    }
}

impl ConsumerContext for WriterContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        self.health.group.joined.store(true, Ordering::Relaxed);
        let committed = match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read committed offsets; partitions resume where the broker says, unchecked");
                None
            }
        };
        let mut starts = lock(&self.starts);
        for el in tpl.elements() {
            let tp: TopicPartition = (el.topic().into(), el.partition());
            let offset = committed
                .as_ref()
                .and_then(|c| c.find_partition(el.topic(), el.partition()))
                .and_then(|c| match c.offset() {
                    Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                });
            tracing::info!(topic = el.topic(), partition = el.partition(), committed = ?offset, "partition assigned");
            if let Some(o) = offset.filter(|&o| o > 0) {
                starts.insert(tp.clone(), FetchStart::at(o));
            }
            self.partitions.assign(tp, offset);
        }
        drop(starts);
        if let Some((budget, topics)) = &self.budget {
            crate::budget::share_by_partitions(consumer, budget, topics);
        }
    }

    /// Commits the acknowledged prefix of revoked partitions before they move. Their rows
    /// not yet written are cancelled; the next owner writes them again from there.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let tps: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|el| (el.topic().into(), el.partition()))
            .collect();
        for tp in &tps {
            tracing::info!(topic = %tp.0, partition = tp.1, "partition revoked");
            lock(&self.starts).remove(tp);
            self.metrics.consumer_lag.remove(&partition_labels(&tp.0, tp.1));
        }
        let closing = self.health.group.stopping.load(Ordering::Relaxed);
        let resend = Resend::at_revoke(closing);
        let commit = self.partitions.revoke(tps, resend);
        // Rows of revoked partitions waiting for the limiter leave without spending it.
        self.limiter.interrupt();
        if commits::commit_at_revoke(consumer.assignment_lost(), closing, commit.count())
            && let Err(e) =
                commits::commit_and_settle(consumer, &commit, |t, p, o, ok| self.settle(t, p, o, ok))
        {
            tracing::warn!(error = %e, "commit at revoke failed; the next owner rewrites from the last committed offset");
        }
    }
}

/// Operator controls shared with the admin endpoint.
#[derive(Debug)]
pub struct Control {
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<WriterMetrics>,
    pub health: Arc<Health>,
    /// `limits.scope = "group"`: this member's part of the group's limit, and where a
    /// change of the group's limit is published.
    pub group: Option<(Arc<Budget>, GroupLimit)>,
}

impl Control {
    /// Limits as configured, metrics at zero, not ready.
    pub fn new(config: &WriterConfig) -> Self {
        let limiter = Arc::new(Limiter::new(config.rate_limit(), config.adaptive()));
        let group = (config.limits.scope == LimitScope::Group).then(|| {
            let budget = Arc::new(Budget::new(limiter.clone(), config.rate_limit(), config.batch.max_rows));
            match GroupLimit::new(&config.kafka) {
                Ok(publisher) => Some((budget, publisher)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot create the producer of the group's rate limit; it cannot be changed at runtime");
                    None
                }
            }
        });
        Self {
            metrics: Arc::new(WriterMetrics::new(limiter.clone())),
            health: Default::default(),
            group: group.flatten(),
            limiter,
        }
    }

    /// Sets the limit: this process's, or in group scope the group's, published so every
    /// member follows.
    pub fn set_limit(&self, limit: RateLimit) -> Result<(), String> {
        match &self.group {
            Some((budget, publisher)) => {
                publisher.publish(limit)?;
                budget.set_group(limit);
            }
            None => self.limiter.set(limit),
        }
        Ok(())
    }
}

/// Why the writer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cassandra: {0}")]
    Cassandra(#[from] Box<crate::sink::SinkError>),
    #[error("stopped before start-up finished")]
    Stopped,
    #[error("the group's rate-limit topic: {0}")]
    LimitTopic(String),
}

/// Runs until `shutdown` completes, then drains in-flight writes and commits.
pub async fn run(
    config: WriterConfig,
    control: Arc<Control>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WriterError> {
    tokio::pin!(shutdown);
    // Connect with backoff: an unreachable cluster is retried and reported, not fatal.
    let mut backoff = Backoff::new();
    let session = loop {
        match crate::sink::connect(&config).await {
            Ok(s) => break Arc::new(s),
            Err(e) => {
                tracing::warn!(contact_points = ?config.cassandra.contact_points, error = %e, "cannot reach the cluster; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Err(WriterError::Stopped),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    };
    let sink = Arc::new(Sink::new(session.clone(), &config).await.map_err(Box::new)?);
    control.health.connected(session);

    // Topic names are kept as shared strings so a record's partition key costs no allocation.
    let mut sources: HashMap<String, (Arc<str>, Source)> = HashMap::default();
    for (topic, source) in [
        (&config.topics.metrics, Source::Metrics),
        (&config.topics.rollups, Source::Rollups),
        (&config.topics.anomalies, Source::Anomalies),
    ] {
        if !topic.is_empty() {
            sources.insert(topic.clone(), (topic.as_str().into(), source));
        }
    }
    let metrics = control.metrics.clone();
    let partitions = Arc::new(Partitions::default());
    let starts = Arc::new(Mutex::new(Starts::default()));
    let consumer: Arc<StreamConsumer<WriterContext>> = Arc::new(
        consumer_config(&config.kafka).create_with_context(WriterContext {
            partitions: partitions.clone(),
            starts: starts.clone(),
            metrics: metrics.clone(),
            health: control.health.clone(),
            budget: control
                .group
                .as_ref()
                .map(|(b, _)| (b.clone(), sources.keys().cloned().collect())),
            limiter: control.limiter.clone(),
        })?,
    );
    let topics: Vec<&str> = sources.keys().map(String::as_str).collect();
    let following = Arc::new(AtomicBool::new(false));
    if let Some((budget, _)) = &control.group {
        crate::group_limit::ensure_and_follow(
            &config.kafka,
            budget.clone(),
            following.clone(),
            &mut shutdown,
        )
        .await
        .map_err(|e| match e {
            Some(e) => WriterError::LimitTopic(e),
            None => WriterError::Stopped,
        })?;
    }
    let _stop_following = crate::group_limit::SetOnDrop(following);
    consumer.subscribe(&topics)?;
    let dlq = PolledProducer::create(
        &producer_config(&config.kafka),
        Confirming(Logged("dead-letter producer")),
    )?;
    let dead_letters = Arc::new(DeadLetters::new(
        dlq,
        config.topics.dead_letter.clone(),
        config.kafka.group.clone(),
        partitions.clone(),
        metrics.clone(),
    ));
    let writers = Arc::new(Writers {
        sink: sink.clone(),
        limiter: control.limiter.clone(),
        metrics: metrics.clone(),
        partitions: partitions.clone(),
        dead_letters: dead_letters.clone(),
        max_backoff: config.flow.max_backoff.0,
    });
    tracing::info!(topics = ?topics, group = %config.kafka.group, keyspace = %config.cassandra.keyspace, "writing");

    let limits = BatchLimits {
        max_rows: config.batch.max_rows,
        max_bytes: config.batch.max_bytes,
        linger: config.batch.linger.0,
    };
    let mut batcher: Batcher<QueuedRow> = Batcher::new(limits);
    let max_pending = config.flow.max_pending_per_partition;
    let by_replica_set = config.batch.by_replica_set;
    let mut commit_tick = tokio::time::interval(config.kafka.commit_interval.0);
    let mut linger_tick = tokio::time::interval(Duration::from_millis(1).max(limits.linger / 2));
    let mut adapt_tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_full_commit = Instant::now();
    let mut committing: Option<tokio::task::JoinHandle<()>> = None;

    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            received = consumer.recv() => match received {
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error; librdkafka keeps retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(msg) => {
                    let (topic, source) = sources
                        .get(msg.topic())
                        .cloned()
                        .unwrap_or_else(|| (msg.topic().into(), Source::Metrics));
                    let tp: TopicPartition = (topic, msg.partition());
                    let offset = msg.offset();
                    if !resumed_soundly(&consumer, &starts, &tp, offset, &metrics) {
                        continue;
                    }
                    let Some(slot) = partitions.read(&tp, offset) else {
                        tracing::debug!(topic = %tp.0, partition = tp.1, offset, "record of a partition no longer owned; skipped");
                        continue;
                    };
                    metrics.records_consumed.inc();
                    let written = write_timestamp(msg.timestamp().to_millis(), now_ms());
                    let format = || headers::format_of(&msg);
                    match to_row(&config, source, msg.key(), msg.payload(), format, written) {
                        Ok(row) => {
                            // Without a token (no metadata yet, or values the driver
                            // cannot hash) rows still go out, grouped together and routed
                            // by the driver.
                            let token = by_replica_set.then(|| sink.token(&row).ok()).flatten();
                            let (replicas, epoch) = match token {
                                Some(t) => sink.replica_set(&row.table, t),
                                None => (ReplicaSet::default(), 0),
                            };
                            let bytes = row.bytes;
                            let queued = QueuedRow { slot, row, token, epoch };
                            if let Some((set, rows)) = batcher.push(replicas, queued, bytes, Instant::now()) {
                                writers.spawn(set, rows);
                            }
                        }
                        Err(e) => dead_letters.record(slot, msg.key(), msg.payload(), e.to_string()),
                    }
                    pause_if_behind(&consumer, &partitions, &tp, max_pending, &metrics);
                }
            },
            _ = linger_tick.tick() => {
                for (set, rows) in batcher.take_due(Instant::now(), false) {
                    writers.spawn(set, rows);
                }
            }
            _ = commit_tick.tick() => {
                unstick(&consumer, &starts);
                // Commits can be lost unseen (e.g. in a rebalance): every few seconds
                // offsets the broker has not confirmed are sent again.
                let resend = if last_full_commit.elapsed() >= Duration::from_secs(5) {
                    last_full_commit = Instant::now();
                    Resend::Unconfirmed
                } else {
                    Resend::New
                };
                // One commit at a time, waiting for the broker off the async threads.
                if committing.as_ref().is_none_or(|c| c.is_finished()) {
                    committing = Some(commit_in_background(&consumer, &partitions, resend));
                }
                resume_drained(&consumer, &partitions, &starts, max_pending);
                show_backlog(&partitions, &metrics);
            }
            _ = adapt_tick.tick() => control.limiter.signal(false),
        }
    }

    // Drain: everything batched goes out, in-flight writes and dead letters finish, then
    // the final commit, always sent.
    tracing::info!("shutdown requested; draining in-flight writes and committing");
    control.health.group.stopping.store(true, Ordering::Relaxed);
    for (set, rows) in batcher.take_due(Instant::now(), true) {
        writers.spawn(set, rows);
    }
    let deadline = Instant::now() + config.flow.drain_timeout.0;
    while (writers.in_flight() > 0 || dead_letters.in_flight() > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if writers.in_flight() > 0 || dead_letters.in_flight() > 0 {
        tracing::warn!(
            rows = writers.in_flight(),
            dead_letters = dead_letters.in_flight(),
            "rows still unacknowledged at shutdown; they stay uncommitted"
        );
    }
    if let Some(c) = committing.take() {
        let _ = c.await;
    }
    let tpl = partitions.committable(Resend::Always);
    let within = config.flow.drain_timeout.0;
    let final_commit = tokio::task::spawn_blocking(move || {
        let context = consumer.context();
        let settle = |t: &str, p, o, ok| context.settle(t, p, o, ok);
        if let Err(e) = commits::commit_final(&*consumer, &tpl, within, settle) {
            tracing::error!(error = %e, "final offset commit failed; the next start rewrites from the last confirmed commit");
        }
        consumer.unsubscribe();
    });
    let _ = final_commit.await;
    Ok(())
}

/// Whether a record continues its partition soundly after an assignment or a resume;
/// false drops it (already written, or the broker skipped records and the partition is
/// sought back).
fn resumed_soundly(
    consumer: &StreamConsumer<WriterContext>,
    starts: &Mutex<Starts>,
    tp: &TopicPartition,
    offset: i64,
    metrics: &WriterMetrics,
) -> bool {
    let arrival = {
        let mut starts = lock(starts);
        let Some(start) = starts.get_mut(tp) else {
            return true;
        };
        let arrival = start.arrived(offset);
        if matches!(arrival, Arrival::Resumed | Arrival::Gap { .. }) {
            starts.remove(tp);
        }
        arrival
    };
    match arrival {
        Arrival::Resumed => true,
        Arrival::Gap { missing_from } => {
            metrics
                .records_not_retained
                .inc_by((offset - missing_from).max(0) as u64);
            tracing::error!(topic = %tp.0, partition = tp.1, missing_from, missing_until = offset,
                "records after the resume point are no longer on the broker (retention deleted them before they were written); writing on from the first one kept");
            true
        }
        // Before the resume point: written already.
        Arrival::Before | Arrival::Skipped(None) => false,
        Arrival::Skipped(Some(to)) => {
            tracing::warn!(topic = %tp.0, partition = tp.1, got = offset, seek = to,
                "the broker skipped records after the resume point (a fetch inside a record batch); seeking back");
            seek(consumer, tp, to);
            false
        }
    }
}

/// Partitions that served nothing where they resume are sought further back.
fn unstick(consumer: &StreamConsumer<WriterContext>, starts: &Mutex<Starts>) {
    let silent: Vec<(TopicPartition, i64)> = lock(starts)
        .iter_mut()
        .filter_map(|(tp, s)| s.silent().map(|to| (tp.clone(), to)))
        .collect();
    for (tp, to) in silent {
        tracing::warn!(topic = %tp.0, partition = tp.1, seek = to,
            "the partition served nothing where it resumes (a fetch inside a record batch?); seeking back");
        seek(consumer, &tp, to);
    }
}

fn seek(consumer: &StreamConsumer<WriterContext>, tp: &TopicPartition, to: i64) {
    if let Err(e) = consumer.seek(&tp.0, tp.1, Offset::Offset(to), Duration::from_secs(5)) {
        tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "seek failed");
    }
}

/// Commits the acknowledged prefixes due now (see [`Resend`]) and waits for the broker's
/// answer on a blocking thread: the answer is what marks them done.
fn commit_in_background(
    consumer: &Arc<StreamConsumer<WriterContext>>,
    partitions: &Partitions,
    resend: Resend,
) -> tokio::task::JoinHandle<()> {
    let tpl = partitions.committable(resend);
    let consumer = consumer.clone();
    tokio::task::spawn_blocking(move || {
        let context = consumer.context();
        if let Err(e) =
            commits::commit_and_settle(&*consumer, &tpl, |t, p, o, ok| context.settle(t, p, o, ok))
        {
            tracing::warn!(error = %e, "offset commit failed; it is sent again");
        }
    })
}

fn pause_if_behind(
    consumer: &StreamConsumer<WriterContext>,
    partitions: &Partitions,
    tp: &TopicPartition,
    max_pending: usize,
    metrics: &WriterMetrics,
) {
    if let Some(pending) = partitions.should_pause(tp, max_pending) {
        // Shown at once: a partition may be resumed again before the next commit tick.
        show_backlog(partitions, metrics);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        match consumer.pause(&tpl) {
            Ok(()) => {
                tracing::info!(topic = %tp.0, partition = tp.1, pending, "partition paused: the cluster is behind")
            }
            Err(e) => tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot pause partition"),
        }
    }
}

fn show_backlog(partitions: &Partitions, metrics: &WriterMetrics) {
    let (pending, paused) = partitions.backlog();
    metrics.pending_rows.set(pending as i64);
    metrics.paused_partitions.set(paused as i64);
}

fn resume_drained(
    consumer: &StreamConsumer<WriterContext>,
    partitions: &Partitions,
    starts: &Mutex<Starts>,
    max_pending: usize,
) {
    for (tp, next) in partitions.to_resume(max_pending) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        match consumer.resume(&tpl) {
            Ok(()) => {
                // Fetching continues at the next offset, which may be inside a batch.
                if let Some(next) = next {
                    lock(starts).insert(tp.clone(), FetchStart::at(next));
                }
                tracing::info!(topic = %tp.0, partition = tp.1, "partition resumed");
            }
            Err(e) => tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot resume partition"),
        }
    }
}
