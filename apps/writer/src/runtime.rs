//! The writer's loop: consume → rows → batcher → rate-limited write tasks → acks →
//! commit of each partition's acknowledged prefix. Partitions whose unacknowledged rows
//! pile up (slow or unreachable cluster) are paused, never buffered without bound.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tributary::runtime::fetch_start::{Arrival, FetchStart};

use crate::batcher::{BatchLimits, Batcher, ReplicaSet};
use crate::config::WriterConfig;
use crate::limiter::Limiter;
use crate::rows::{Row, Source, to_row};
use crate::sink::{Sink, WriteError};

/// Counters of the writer, exported at /metrics.
#[derive(Debug, Default)]
pub struct WriterMetrics {
    pub records_consumed: AtomicU64,
    pub rows_written: AtomicU64,
    pub batches: AtomicU64,
    pub single_statements: AtomicU64,
    pub retries: AtomicU64,
    pub batches_split: AtomicU64,
    pub regrouped: AtomicU64,
    pub overload_signals: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub commits: AtomicU64,
    pub pending_rows: AtomicU64,
    pub paused_partitions: AtomicU64,
}

impl WriterMetrics {
    pub fn render(&self, limiter: &Limiter) -> String {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let counters = [
            (
                "tributary_writer_records_consumed_total",
                "Records read from Kafka.",
                c(&self.records_consumed),
            ),
            (
                "tributary_writer_rows_written_total",
                "Rows the cluster acknowledged.",
                c(&self.rows_written),
            ),
            (
                "tributary_writer_batches_total",
                "UNLOGGED batches written.",
                c(&self.batches),
            ),
            (
                "tributary_writer_single_statements_total",
                "Rows written as a plain statement.",
                c(&self.single_statements),
            ),
            (
                "tributary_writer_retries_total",
                "Retried writes.",
                c(&self.retries),
            ),
            (
                "tributary_writer_batches_split_total",
                "Batches the cluster rejected, split to find the rows it refuses.",
                c(&self.batches_split),
            ),
            (
                "tributary_writer_regrouped_total",
                "Groups split again because the ring changed while they waited.",
                c(&self.regrouped),
            ),
            (
                "tributary_writer_overload_signals_total",
                "Overloaded/timeout answers.",
                c(&self.overload_signals),
            ),
            (
                "tributary_writer_dead_lettered_total",
                "Records sent to the dead-letter topic.",
                c(&self.dead_lettered),
            ),
            (
                "tributary_writer_commits_total",
                "Offset commits.",
                c(&self.commits),
            ),
        ];
        for (name, help, v) in counters {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            ));
        }
        let limit = limiter.current();
        let gauges = [
            (
                "tributary_writer_pending_rows",
                "Rows read and not yet acknowledged.",
                c(&self.pending_rows) as f64,
            ),
            (
                "tributary_writer_paused_partitions",
                "Partitions paused for backpressure.",
                c(&self.paused_partitions) as f64,
            ),
            (
                "tributary_writer_rate_limit_rows_per_sec",
                "Configured rate limit (0 = unlimited).",
                limit.rows_per_sec as f64,
            ),
            (
                "tributary_writer_rate_limit_burst",
                "Configured burst.",
                limit.burst as f64,
            ),
            (
                "tributary_writer_rate_limit_effective_rows_per_sec",
                "Rate in force (adaptive mode may lower it).",
                limiter.effective() as f64,
            ),
            (
                "tributary_writer_rate_limit_wait_seconds_total",
                "Time writes waited for the rate limiter.",
                limiter.waited().as_secs_f64(),
            ),
        ];
        for (name, help, v) in gauges {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        }
        out
    }
}

/// Offsets of one partition read but not yet acknowledged.
#[derive(Debug, Default)]
struct PartitionAcks {
    pending: BTreeSet<i64>,
    next: i64,
    committed: i64,
    paused: bool,
}

impl PartitionAcks {
    fn committable(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

type Tp = (Arc<str>, i32);

type Acks = Arc<Mutex<HashMap<Tp, PartitionAcks>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where each newly assigned (or resumed) partition must continue: some brokers do not
/// serve a fetch that starts inside a record batch (see [`FetchStart`]).
type Starts = HashMap<Tp, FetchStart>;

/// Commits the acknowledged prefix of revoked partitions before they move; rows still in
/// flight for them are simply written again by the next owner (upserts are idempotent).
struct WriterContext {
    acks: Acks,
    starts: Arc<Mutex<Starts>>,
}

impl ClientContext for WriterContext {}

impl ConsumerContext for WriterContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            for el in tpl.elements() {
                tracing::info!(
                    topic = el.topic(),
                    partition = el.partition(),
                    "partition assigned"
                );
            }
            match consumer.committed_offsets((*tpl).clone(), Duration::from_secs(10)) {
                Ok(committed) => {
                    let mut starts = lock(&self.starts);
                    for el in committed.elements() {
                        if let Offset::Offset(o) = el.offset()
                            && o > 0
                        {
                            starts.insert((el.topic().into(), el.partition()), FetchStart::at(o));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read committed offsets to check where fetches resume")
                }
            }
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut commit = TopicPartitionList::new();
            let mut acks = lock(&self.acks);
            for el in tpl.elements() {
                tracing::info!(
                    topic = el.topic(),
                    partition = el.partition(),
                    "partition revoked"
                );
                let key: Tp = (el.topic().into(), el.partition());
                if let Some(a) = acks.remove(&key) {
                    let o = a.committable();
                    if o > a.committed {
                        let _ = commit.add_partition_offset(el.topic(), el.partition(), Offset::Offset(o));
                    }
                }
            }
            drop(acks);
            if commit.count() > 0
                && !consumer.assignment_lost()
                && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
            {
                tracing::warn!(error = %e, "commit at revoke failed");
            }
        }
    }
}

/// A row, where it came from, and where it goes.
#[derive(Debug)]
struct Pending {
    tp: Tp,
    offset: i64,
    row: Row,
    /// None when the driver cannot compute it (the row is then grouped with others
    /// lacking one and routed by the driver; the cluster decides whether it is valid).
    token: Option<scylla::routing::Token>,
    /// The ring view its replica set came from.
    epoch: u64,
}

enum Done {
    Written(Vec<(Tp, i64)>, usize),
    Rejected(Pending, String),
}

/// Operator controls shared with the admin endpoint.
#[derive(Debug)]
pub struct Control {
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<WriterMetrics>,
}

/// Why the writer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("cassandra: {0}")]
    Cassandra(String),
    #[error("stopped before start-up finished")]
    Stopped,
}

/// Runs until `shutdown` completes, then drains in-flight writes and commits.
pub async fn run(
    config: WriterConfig,
    control: Arc<Control>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WriterError> {
    tokio::pin!(shutdown);
    // Connect with backoff: an unreachable cluster is retried and reported, not fatal.
    let mut backoff = tributary::runtime::kafka::Backoff::new();
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
    let sink = Arc::new(
        Sink::new(session, &config)
            .await
            .map_err(WriterError::Cassandra)?,
    );

    // Topic names are kept as shared strings so a record's partition key costs no allocation.
    let mut sources: HashMap<String, (Arc<str>, Source)> = HashMap::new();
    for (topic, source) in [
        (&config.topics.metrics, Source::Metrics),
        (&config.topics.rollups, Source::Rollups),
        (&config.topics.anomalies, Source::Anomalies),
    ] {
        if !topic.is_empty() {
            sources.insert(topic.clone(), (topic.as_str().into(), source));
        }
    }
    let acks: Acks = Arc::new(Mutex::new(HashMap::new()));
    let starts = Arc::new(Mutex::new(Starts::default()));
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in &config.kafka.properties {
        cc.set(k, v);
    }
    let consumer: StreamConsumer<WriterContext> = cc
        .create_with_context(WriterContext {
            acks: acks.clone(),
            starts: starts.clone(),
        })
        .map_err(|e| WriterError::Kafka(e.to_string()))?;
    let topics: Vec<&str> = sources.keys().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| WriterError::Kafka(e.to_string()))?;
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &config.kafka.brokers)
        .set("enable.idempotence", "true");
    for (k, v) in &config.kafka.properties {
        pc.set(k, v);
    }
    let dlq: FutureProducer = pc.create().map_err(|e| WriterError::Kafka(e.to_string()))?;
    tracing::info!(topics = ?topics, group = %config.kafka.group, keyspace = %config.cassandra.keyspace, "writing");

    let limits = BatchLimits {
        max_rows: config.batch.max_rows,
        max_bytes: config.batch.max_bytes,
        linger: config.batch.linger.0,
    };
    let mut batcher: Batcher<Pending> = Batcher::new(limits);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let in_flight = Arc::new(AtomicU64::new(0));
    let max_pending = config.runtime.max_pending_per_partition;
    let max_backoff = config.runtime.max_backoff.0;
    let metrics = control.metrics.clone();
    let mut commit_tick = tokio::time::interval(config.kafka.commit_interval.0);
    let mut linger_tick = tokio::time::interval(Duration::from_millis(1).max(limits.linger / 2));
    let mut adapt_tick = tokio::time::interval(Duration::from_secs(1));

    let dispatch = |replicas: ReplicaSet, rows: Vec<Pending>| {
        in_flight.fetch_add(rows.len() as u64, Ordering::Relaxed);
        tokio::spawn(write_task(
            sink.clone(),
            control.limiter.clone(),
            metrics.clone(),
            replicas,
            rows,
            done_tx.clone(),
            max_backoff,
        ));
    };

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
                    let tp: Tp = (topic, msg.partition());
                    let offset = msg.offset();
                    let arrival = {
                        let mut starts = lock(&starts);
                        let arrival = starts.get_mut(&tp).map(|s| s.arrived(offset));
                        if arrival == Some(Arrival::Resumed) {
                            starts.remove(&tp);
                        }
                        arrival
                    };
                    match arrival {
                        None | Some(Arrival::Resumed) => {}
                        // Before the committed offset: written already.
                        Some(Arrival::Before | Arrival::Skipped(None)) => continue,
                        Some(Arrival::Skipped(Some(to))) => {
                            tracing::warn!(topic = %tp.0, partition = tp.1, got = offset, seek = to,
                                "the broker skipped records after the committed offset (a fetch inside a record batch); seeking back");
                            if let Err(e) = consumer.seek(&tp.0, tp.1, Offset::Offset(to), Duration::from_secs(5)) {
                                tracing::warn!(error = %e, "seek failed");
                            }
                            continue;
                        }
                    }
                    metrics.records_consumed.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut a = lock(&acks);
                        let e = a.entry(tp.clone()).or_default();
                        e.pending.insert(offset);
                        e.next = e.next.max(offset + 1);
                    }
                    match to_row(&config, source, msg.key(), msg.payload()) {
                        Ok(row) => {
                            // Without a token (no metadata yet, or values the driver
                            // cannot hash) rows still go out, grouped together and routed
                            // by the driver.
                            let token = sink.token(&row).ok();
                            let (replicas, epoch) = match token {
                                Some(t) => sink.replica_set(&row.table, t),
                                None => (ReplicaSet::default(), 0),
                            };
                            let pending = Pending { tp: tp.clone(), offset, row, token, epoch };
                            let bytes = pending.row.bytes;
                            if let Some((set, rows)) = batcher.push(replicas, pending, bytes, Instant::now()) {
                                dispatch(set, rows);
                            }
                        }
                        Err(e) => {
                            dead_letter(&dlq, &config, msg.topic(), msg.partition(), offset, msg.key(), msg.payload(), &e.to_string()).await;
                            metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
                            ack(&acks, &tp, offset);
                        }
                    }
                    backpressure(&consumer, &acks, &tp, max_pending, &metrics);
                }
            },
            Some(done) = done_rx.recv() => settle(done, &acks, &in_flight, &dlq, &config, &metrics).await,
            _ = linger_tick.tick() => {
                for (set, rows) in batcher.take_due(Instant::now(), false) {
                    dispatch(set, rows);
                }
            }
            _ = commit_tick.tick() => {
                let silent: Vec<(Tp, i64)> = lock(&starts)
                    .iter_mut()
                    .filter_map(|(tp, s)| s.silent().map(|to| (tp.clone(), to)))
                    .collect();
                for (tp, to) in silent {
                    tracing::warn!(topic = %tp.0, partition = tp.1, seek = to,
                        "the partition served nothing where it resumes (a fetch inside a record batch?); seeking back");
                    if let Err(e) = consumer.seek(&tp.0, tp.1, Offset::Offset(to), Duration::from_secs(5)) {
                        tracing::warn!(error = %e, "seek failed");
                    }
                }
                commit(&consumer, &acks, CommitMode::Async, &metrics);
                resume(&consumer, &acks, &starts, max_pending, &metrics);
            }
            _ = adapt_tick.tick() => control.limiter.signal(false),
        }
    }

    // Drain: everything batched goes out, in-flight writes finish, then commit.
    tracing::info!("shutdown requested; draining in-flight writes and committing");
    for (set, rows) in batcher.take_due(Instant::now(), true) {
        dispatch(set, rows);
    }
    let deadline = Instant::now() + config.runtime.drain_timeout.0;
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        if let Ok(Some(done)) = tokio::time::timeout(Duration::from_millis(100), done_rx.recv()).await {
            settle(done, &acks, &in_flight, &dlq, &config, &metrics).await;
        }
    }
    if in_flight.load(Ordering::Relaxed) > 0 {
        tracing::warn!(
            rows = in_flight.load(Ordering::Relaxed),
            "rows still unacknowledged at shutdown; they stay uncommitted"
        );
    }
    commit(&consumer, &acks, CommitMode::Sync, &metrics);
    consumer.unsubscribe();
    Ok(())
}

/// Records a finished write: acknowledges its rows, or dead-letters a rejected row first.
async fn settle(
    done: Done,
    acks: &Acks,
    in_flight: &AtomicU64,
    dlq: &FutureProducer,
    config: &WriterConfig,
    metrics: &WriterMetrics,
) {
    match done {
        Done::Written(rows, n) => {
            in_flight.fetch_sub(n as u64, Ordering::Relaxed);
            let mut a = lock(acks);
            for (tp, offset) in rows {
                if let Some(p) = a.get_mut(&tp) {
                    p.pending.remove(&offset);
                }
            }
        }
        Done::Rejected(p, reason) => {
            in_flight.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(topic = %p.tp.0, partition = p.tp.1, offset = p.offset, reason, "row rejected by the cluster; dead-lettered");
            let (key, payload) = row_payload(&p.row);
            dead_letter(
                dlq,
                config,
                &p.tp.0,
                p.tp.1,
                p.offset,
                Some(key.as_bytes()),
                Some(payload.as_bytes()),
                &reason,
            )
            .await;
            metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
            ack(acks, &p.tp, p.offset);
        }
    }
}

fn ack(acks: &Acks, tp: &Tp, offset: i64) {
    if let Some(a) = lock(acks).get_mut(tp) {
        a.pending.remove(&offset);
    }
}

fn backpressure(
    consumer: &StreamConsumer<WriterContext>,
    acks: &Acks,
    tp: &Tp,
    max_pending: usize,
    metrics: &WriterMetrics,
) {
    // The pending-rows gauge is refreshed by `commit`, not here: this runs per record.
    let mut a = lock(acks);
    if let Some(p) = a.get_mut(tp)
        && !p.paused
        && p.pending.len() >= max_pending
    {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        if consumer.pause(&tpl).is_ok() {
            p.paused = true;
            metrics.paused_partitions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(topic = %tp.0, partition = tp.1, pending = p.pending.len(), "partition paused: the cluster is behind");
        }
    }
}

fn resume(
    consumer: &StreamConsumer<WriterContext>,
    acks: &Acks,
    starts: &Mutex<Starts>,
    max_pending: usize,
    metrics: &WriterMetrics,
) {
    let mut a = lock(acks);
    for (tp, p) in a.iter_mut() {
        if p.paused && p.pending.len() <= max_pending / 2 {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            if consumer.resume(&tpl).is_ok() {
                // Fetching continues at the next offset, which may be inside a batch.
                lock(starts).insert(tp.clone(), FetchStart::at(p.next));
                p.paused = false;
                metrics.paused_partitions.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(topic = %tp.0, partition = tp.1, "partition resumed");
            }
        }
    }
}

fn commit(consumer: &StreamConsumer<WriterContext>, acks: &Acks, mode: CommitMode, metrics: &WriterMetrics) {
    let mut tpl = TopicPartitionList::new();
    {
        let mut a = lock(acks);
        let total: usize = a.values().map(|p| p.pending.len()).sum();
        metrics.pending_rows.store(total as u64, Ordering::Relaxed);
        for (tp, p) in a.iter_mut() {
            let o = p.committable();
            if o > p.committed {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(o));
                p.committed = o;
            }
        }
    }
    if tpl.count() > 0 {
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                metrics.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; will retry");
                let mut a = lock(acks);
                for el in tpl.elements() {
                    if let Some(p) = a.get_mut(&(el.topic().into(), el.partition())) {
                        p.committed = 0;
                    }
                }
            }
        }
    }
}

/// A group still to write, and whether the rate limiter already admitted its rows.
struct Work {
    replicas: ReplicaSet,
    rows: Vec<Pending>,
    admitted: bool,
}

/// Regroups rows whose replica sets came from an older view of the ring: rows wait in the
/// rate limiter and in retries, and a node may join or leave meanwhile. None when the
/// group is still one replica set under the current view.
fn regroup(sink: &Sink, work: &mut Work) -> Option<Vec<Work>> {
    let epoch = sink.epoch();
    if work.rows.iter().all(|p| p.token.is_none() || p.epoch == epoch) {
        return None;
    }
    let mut groups: HashMap<ReplicaSet, Vec<Pending>> = HashMap::new();
    for mut p in std::mem::take(&mut work.rows) {
        let set = match p.token {
            Some(t) => {
                let (set, e) = sink.replica_set(&p.row.table, t);
                p.epoch = e;
                set
            }
            None => work.replicas.clone(),
        };
        groups.entry(set).or_default().push(p);
    }
    if groups.len() == 1
        && let Some((set, rows)) = groups.drain().next()
    {
        work.replicas = set;
        work.rows = rows;
        return None;
    }
    Some(
        groups
            .into_iter()
            .map(|(replicas, rows)| Work {
                replicas,
                rows,
                admitted: work.admitted,
            })
            .collect(),
    )
}

/// Writes one group until it succeeds: retryable errors back off with jitter; a rejected
/// batch is split so only the offending rows are dead-lettered; a group whose rows no
/// longer share a replica set (the ring changed) is split by replica set first.
async fn write_task(
    sink: Arc<Sink>,
    limiter: Arc<Limiter>,
    metrics: Arc<WriterMetrics>,
    replicas: ReplicaSet,
    rows: Vec<Pending>,
    done: mpsc::UnboundedSender<Done>,
    max_backoff: Duration,
) {
    let mut queue = vec![Work {
        replicas,
        rows,
        admitted: false,
    }];
    'groups: while let Some(mut work) = queue.pop() {
        let mut backoff = tributary::runtime::kafka::Backoff::new();
        loop {
            if !work.admitted {
                limiter.acquire(work.rows.len() as u32).await;
                work.admitted = true;
            }
            if let Some(parts) = regroup(&sink, &mut work) {
                metrics.regrouped.fetch_add(1, Ordering::Relaxed);
                queue.extend(parts);
                continue 'groups;
            }
            let refs: Vec<&Row> = work.rows.iter().map(|p| &p.row).collect();
            match sink.write(&refs, &work.replicas).await {
                Ok(()) => {
                    let n = work.rows.len();
                    metrics.rows_written.fetch_add(n as u64, Ordering::Relaxed);
                    if n > 1 {
                        metrics.batches.fetch_add(1, Ordering::Relaxed);
                    } else {
                        metrics.single_statements.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = done.send(Done::Written(
                        work.rows.into_iter().map(|p| (p.tp, p.offset)).collect(),
                        n,
                    ));
                    break;
                }
                Err(WriteError::Retryable { message, overload }) => {
                    metrics.retries.fetch_add(1, Ordering::Relaxed);
                    if overload {
                        metrics.overload_signals.fetch_add(1, Ordering::Relaxed);
                    }
                    limiter.signal(overload);
                    let delay = backoff.next_delay().min(max_backoff);
                    tracing::debug!(error = %message, ?delay, rows = work.rows.len(), "write failed; retrying");
                    tokio::time::sleep(delay).await;
                    // A retry reaches the cluster again, so it counts against the limit.
                    work.admitted = false;
                }
                Err(WriteError::Rejected(reason)) => {
                    if work.rows.len() > 1 {
                        metrics.batches_split.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            reason,
                            rows = work.rows.len(),
                            "batch rejected; writing its rows one by one"
                        );
                        let replicas = work.replicas.clone();
                        queue.extend(work.rows.into_iter().map(|p| Work {
                            replicas: replicas.clone(),
                            rows: vec![p],
                            admitted: false,
                        }));
                    } else if let Some(p) = work.rows.into_iter().next() {
                        let _ = done.send(Done::Rejected(p, reason));
                    }
                    break;
                }
            }
        }
    }
}

/// A rejected row as JSON, for the dead-letter topic.
fn row_payload(row: &Row) -> (String, String) {
    let key = match row.values.first() {
        Some(scylla::value::CqlValue::Text(s)) => s.clone(),
        _ => String::new(),
    };
    (
        key,
        format!(
            "{{\"table\":\"{}\",\"values\":\"{:?}\"}}",
            row.table.table_name(),
            row.values
        ),
    )
}

#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    producer: &FutureProducer,
    config: &WriterConfig,
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    reason: &str,
) {
    let build = || {
        let headers = tributary::runtime::producer::provenance(topic, &config.kafka.group, partition, offset)
            .insert(Header {
                key: "tributary.error",
                value: Some(reason.as_bytes()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&config.topics.dead_letter).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        record
    };
    // Keep trying: a record is acknowledged only once its dead letter is stored.
    let mut backoff = tributary::runtime::kafka::Backoff::new();
    loop {
        match producer.send(build(), Duration::from_secs(30)).await {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::warn!(error = %e, "cannot write to the dead-letter topic; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}
