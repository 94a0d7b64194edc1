//! Worker threads: each owns the pipelines of the partitions routed to it and runs them on
//! batches handed over by the poll loop. Outputs go straight to the shared producer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use super::batch::Batch;
use super::history::PlanHistory;
use super::output::KafkaSink;
use crate::codec::Format;
use crate::metrics::{Metrics, PartitionGauges};
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::runtime::Tp;
use crate::runtime::ledger::Ledger;
use crate::runtime::producer::OutputProducer;
use crate::state::{Checkpoint, StateStore};

/// Messages from the poll loop (and rebalance callbacks) to a worker.
#[derive(Debug)]
pub enum WorkerMsg {
    /// Start (or restart, for an operator's replay) a partition with a prepared pipeline.
    Assign {
        tp: Tp,
        generation: u64,
        ledger: Arc<Ledger>,
        pipeline: Box<Pipeline>,
        resume: Resume,
    },
    Batch(Batch),
    /// Drop these partitions once everything queued before is processed.
    Revoke {
        tps: Vec<Tp>,
        done: Sender<()>,
    },
    /// Processing-time tick for idle-partition flushes.
    Tick,
    /// Flush every partition and reply once everything queued before is processed (shutdown).
    Drain {
        done: Sender<()>,
    },
}

/// Where outputs go, shared by all workers.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub rollups: String,
    pub anomalies: String,
    pub dead_letter: String,
    pub dead_letter_partitions: i32,
    /// A dead letter's value is cut to this many bytes (its original size in a header),
    /// so no record is too large to dead-letter.
    pub dead_letter_max_bytes: usize,
    pub late: Option<(String, i32)>,
    pub format: Format,
    pub input: String,
    /// Consumer group, stamped on forwarded records so operators know which app sent them.
    pub group: String,
}

/// How a partition's pipeline resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// First offset read (for progress reports); `None` when left to `auto.offset.reset`.
    pub from: Option<i64>,
    /// The first offset whose record the state needs (`from`, or the one after it when
    /// that record is read only to see where the broker serves from).
    pub needed_from: Option<i64>,
    /// Outputs of records before this offset are suppressed: state is being rebuilt.
    pub replay_until: i64,
    /// Where the rollups topic ended for the state resumed from, if known.
    pub rollups_end: Option<i64>,
}

impl Resume {
    pub fn at(start: &crate::replay::StartPoint, rollups_end: Option<i64>) -> Self {
        Self {
            from: start.seek,
            needed_from: start.needed_from(),
            replay_until: start.replay_until,
            rollups_end,
        }
    }
}

pub struct WorkerShared {
    pub spec: PipelineSpec,
    pub producer: Arc<OutputProducer>,
    pub outputs: Outputs,
    pub metrics: Arc<Metrics>,
    pub idle_timeout: Duration,
    pub recycle: Sender<Batch>,
    /// Earlier plans, for operator replays (see [`PlanHistory`]).
    pub history: Arc<PlanHistory>,
    /// Local checkpoints, if configured.
    pub state: Option<Arc<StateStore>>,
    pub checkpoint_interval: Duration,
}

/// A replay in progress, for progress reports.
struct ReplayProgress {
    from: i64,
    until: i64,
    started: Instant,
    last_report: Instant,
}

struct PartitionRun {
    tp: Tp,
    pipeline: Pipeline,
    ledger: Arc<Ledger>,
    generation: u64,
    produced: u64,
    /// Next offset to process; records below it are duplicates and skipped.
    next_offset: Option<i64>,
    /// The first offset whose record the resumed state needs.
    needed_from: Option<i64>,
    last_record: Instant,
    reported: crate::pipeline::PipelineStats,
    replay: Option<ReplayProgress>,
    last_checkpoint: Instant,
    /// A snapshot waiting for its outputs to be acknowledged before it is written, and
    /// where its coarse windows' rows are (located once those outputs are delivered).
    pending_checkpoint: Option<(Checkpoint, Option<crate::pipeline::CoarseDraft>)>,
    /// Flushed idle since the last record (see [`process_batch`]).
    flushed_idle: bool,
}

impl PartitionRun {
    /// The partition's pipeline and a sink that produces its outputs, borrowed together.
    fn split<'a>(
        &'a mut self,
        shared: &'a WorkerShared,
        buf: &'a mut Vec<u8>,
        trigger: i64,
    ) -> (&'a mut Pipeline, KafkaSink<'a>) {
        let sink = KafkaSink {
            shared,
            partition: self.tp.partition,
            ledger: &self.ledger,
            produced: &mut self.produced,
            buf,
            trigger,
        };
        (&mut self.pipeline, sink)
    }

    /// Everything before `next` is processed: hand the ledger the plan for that point.
    fn progress(&self, next: i64) {
        self.ledger.checkpoint(
            self.produced,
            self.pipeline.plan(next),
            self.pipeline.coarse_draft(next),
        );
    }
}

pub fn run(shared: Arc<WorkerShared>, inbox: Receiver<WorkerMsg>) {
    let mut parts: HashMap<i32, PartitionRun> = HashMap::new();
    let mut buf = Vec::with_capacity(512);
    for msg in inbox {
        match msg {
            WorkerMsg::Assign {
                tp,
                generation,
                ledger,
                pipeline,
                resume,
            } => {
                let replay = resume.from.filter(|&from| from < resume.replay_until).map(|from| {
                    tracing::info!(topic = %tp.topic, partition = tp.partition, from, until = resume.replay_until,
                        records = resume.replay_until - from, "replay started: rebuilding state, outputs suppressed");
                    ReplayProgress {
                        from,
                        until: resume.replay_until,
                        started: Instant::now(),
                        last_report: Instant::now(),
                    }
                });
                let run = PartitionRun {
                    pipeline: *pipeline,
                    tp,
                    ledger,
                    generation,
                    produced: 0,
                    // Records below the start (a broker may return the whole batch that
                    // holds it) are skipped like duplicates.
                    next_offset: resume.from,
                    needed_from: resume.needed_from,
                    last_record: Instant::now(),
                    reported: Default::default(),
                    replay,
                    last_checkpoint: Instant::now(),
                    pending_checkpoint: None,
                    flushed_idle: false,
                };
                let run = parts.entry(run.tp.partition).insert_entry(run).into_mut();
                // /status shows where the partition resumes before its first record.
                report(&shared, run);
            }
            WorkerMsg::Batch(batch) => {
                if let Some(run) = parts.get_mut(&batch.partition)
                    && run.generation == batch.generation
                {
                    process_batch(&shared, run, &batch, &mut buf);
                }
                let _ = shared.recycle.send(batch);
            }
            WorkerMsg::Revoke { tps, done } => {
                for tp in tps {
                    if let Some(mut run) = parts.remove(&tp.partition) {
                        flush(&shared, &mut run, &mut buf);
                        shared.metrics.remove_partition(&tp.topic, tp.partition);
                    }
                }
                let _ = done.send(());
            }
            WorkerMsg::Tick => {
                for run in parts.values_mut() {
                    idle_flush(&shared, run, &mut buf);
                    checkpoint(&shared, run);
                }
            }
            WorkerMsg::Drain { done } => {
                for run in parts.values_mut() {
                    flush(&shared, run, &mut buf);
                }
                let _ = done.send(());
            }
        }
    }
}

fn process_batch(shared: &WorkerShared, run: &mut PartitionRun, batch: &Batch, buf: &mut Vec<u8>) {
    if run.flushed_idle
        && let Some(next) = run.next_offset
    {
        // The quiet spell is over: keep the plan that records its last idle flush, so a
        // replay rebuilding from an earlier plan applies that flush again.
        run.flushed_idle = false;
        shared
            .history
            .add(&run.tp.topic, run.tp.partition, &run.pipeline.plan(next));
    }
    if let Some(missing_from) = batch.missing_from {
        records_lost(shared, run, batch, missing_from);
    }
    let mut next = run.next_offset.unwrap_or(i64::MIN);
    let (pipeline, mut sink) = run.split(shared, buf, next);
    for span in &batch.records {
        if span.offset < next {
            continue;
        }
        sink.trigger = span.offset;
        pipeline.process(
            batch.get(span.key),
            batch.get(span.payload),
            span.offset,
            span.timestamp,
            &mut sink,
        );
        next = span.offset + 1;
    }
    if next != i64::MIN {
        run.next_offset = Some(next);
        run.progress(next);
        track_replay(shared, run, next);
        checkpoint(shared, run);
    }
    run.last_record = Instant::now();
    report(shared, run);
}

/// Where the partition resumed, the broker no longer holds the records from
/// `missing_from` up to the batch's first record past it: the state they belonged to
/// cannot be rebuilt, so the windows they may be in are never emitted (see
/// [`crate::pipeline::Pipeline::records_lost`]). Reported as an error and counted.
fn records_lost(shared: &WorkerShared, run: &mut PartitionRun, batch: &Batch, missing_from: i64) {
    let Some(first) = batch.records.iter().find(|r| r.offset > missing_from) else {
        return;
    };
    // The missing offsets the state needs (a probe record before them costs nothing).
    let missing_from = missing_from.max(run.needed_from.unwrap_or(missing_from));
    if first.offset <= missing_from {
        tracing::info!(topic = %run.tp.topic, partition = run.tp.partition, first = first.offset,
            "the record read before the resume point is gone from the broker; nothing the state needs is");
        return;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let emitted_from = run.pipeline.records_lost(now_ms, first.timestamp);
    let missing = first.offset - missing_from;
    shared.metrics.retention_gaps.inc_by(1);
    shared.metrics.records_not_retained.inc_by(missing as u64);
    let replay_until = run.replay.as_ref().map(|r| r.until);
    tracing::error!(topic = %run.tp.topic, partition = run.tp.partition, missing_from, missing_until = first.offset,
        missing, ?replay_until, windows_emitted_from = emitted_from,
        "records this partition needs are no longer on the broker (retention deleted them): its state cannot be rebuilt completely, so no window that may hold them is emitted (none starting before windows_emitted_from, event time in ms); later windows are complete");
}

/// Reports replay progress every few seconds and finishes the replay once the partition
/// is past the offset its outputs were suppressed up to.
fn track_replay(shared: &WorkerShared, run: &mut PartitionRun, next: i64) {
    let Some(replay) = run.replay.as_mut() else { return };
    let tp = &run.tp;
    let done = next - replay.from;
    let secs = replay.started.elapsed().as_secs_f64().max(1e-3);
    let rate = done as f64 / secs;
    if next >= replay.until {
        tracing::info!(topic = %tp.topic, partition = tp.partition, records = done, secs = format!("{secs:.2}"),
            rate = rate as u64, "replay finished; emitting from here on");
        run.replay = None;
        shared.metrics.replays_finished.inc_by(1);
    } else if replay.last_report.elapsed() >= Duration::from_secs(5) {
        let remaining = replay.until - next;
        let eta = remaining as f64 / rate.max(1.0);
        tracing::info!(topic = %tp.topic, partition = tp.partition, offset = next, until = replay.until,
            remaining, rate = rate as u64, eta_secs = eta as u64, "replay progress");
        replay.last_report = Instant::now();
    }
}

/// Writes a pending snapshot once every output up to its offset is acknowledged, and takes
/// a new one every `checkpoint_interval` (never mid-replay: that state is not yet whole).
fn checkpoint(shared: &WorkerShared, run: &mut PartitionRun) {
    let Some(store) = shared.state.as_deref() else {
        return;
    };
    if let Some((pending, _)) = &run.pending_checkpoint
        && run
            .ledger
            .safe_offset()
            .is_some_and(|safe| safe >= pending.next_offset)
        && let Some((mut pending, draft)) = run.pending_checkpoint.take()
    {
        pending.rollups_end = run.ledger.rollups_end();
        pending.rollups_from =
            draft.and_then(|d| run.ledger.locate(d.trigger, d.topic).map(|(from, _)| from));
        match store.save(&run.tp.topic, run.tp.partition, pending) {
            Ok(()) => {
                shared.metrics.checkpoints_written.inc();
            }
            Err(e) => {
                shared.metrics.checkpoint_errors.inc_by(1);
                tracing::warn!(topic = %run.tp.topic, partition = run.tp.partition, error = %e, "cannot write checkpoint");
            }
        }
    }
    if run.pending_checkpoint.is_none()
        && run.replay.is_none()
        && run.last_checkpoint.elapsed() >= shared.checkpoint_interval
        && let Some(next) = run.next_offset
    {
        run.pending_checkpoint = Some((
            Checkpoint {
                next_offset: next,
                pipeline: run.pipeline.snapshot(),
                rollups_from: None,
                rollups_end: None,
                format: crate::state::CHECKPOINT_FORMAT,
            },
            run.pipeline.coarse_draft(next),
        ));
        run.last_checkpoint = Instant::now();
    }
}

/// Runs the stages' flush hooks before a partition is released or the process stops.
fn flush(shared: &WorkerShared, run: &mut PartitionRun, buf: &mut Vec<u8>) {
    let Some(next) = run.next_offset else { return };
    let (pipeline, mut sink) = run.split(shared, buf, next);
    pipeline.flush(next, &mut sink);
    run.progress(next);
}

fn idle_flush(shared: &WorkerShared, run: &mut PartitionRun, buf: &mut Vec<u8>) {
    let Some(next) = run.next_offset else { return };
    // Never during replay: processing time says nothing about replayed event time.
    if run.replay.is_some() || run.last_record.elapsed() < shared.idle_timeout {
        return;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let target = now_ms - shared.spec.grace_ms;
    if target <= run.pipeline.watermark() {
        return;
    }
    let (pipeline, mut sink) = run.split(shared, buf, next);
    pipeline.advance_watermark(target, next, &mut sink);
    run.flushed_idle = true;
    run.progress(next);
    shared.metrics.idle_flushes.inc_by(1);
    tracing::debug!(topic = %run.tp.topic, partition = run.tp.partition, watermark = target, "idle partition flushed");
    report(shared, run);
}

fn report(shared: &WorkerShared, run: &mut PartitionRun) {
    let now = run.pipeline.stats();
    let before = std::mem::replace(&mut run.reported, now);
    let m = &shared.metrics;
    m.records_consumed.inc_by(now.records - before.records);
    m.records_dead_lettered
        .inc_by(now.dead_lettered - before.dead_lettered);
    m.records_late.inc_by(now.late - before.late);
    if now.idle_unrecorded > before.idle_unrecorded {
        m.idle_flushes_unrecorded
            .inc_by(now.idle_unrecorded - before.idle_unrecorded);
        tracing::warn!(topic = %run.tp.topic, partition = run.tp.partition,
            "more idle flushes within the oldest open window than a replay plan keeps (64): a rebuild may accept records this run found late");
    }
    m.rollups_emitted.inc_by(now.rollups - before.rollups);
    m.anomalies_emitted.inc_by(now.anomalies - before.anomalies);
    m.records_replayed.inc_by(now.replayed - before.replayed);
    let watermark = run.pipeline.watermark();
    let series = run.pipeline.series() as i64;
    let processed = run.next_offset.unwrap_or(-1);
    let replaying = run.replay.is_some();
    m.update_partition(&run.tp.topic, run.tp.partition, |g: &mut PartitionGauges| {
        g.watermark_ms = watermark;
        g.series = series;
        g.processed_offset = processed;
        g.replaying = replaying;
    });
}
