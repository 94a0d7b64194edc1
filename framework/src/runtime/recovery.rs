//! The broker-facing half of recovery: where each assigned partition resumes (committed
//! offsets and plans, local checkpoints, coarse windows read back from the rollups topic),
//! replays watched for brokers that skip records at their start, and where plans and
//! checkpoints are kept. The pure decision is [`crate::replay::decide`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::context::ConsumerCtx;
use super::coordinator::{Coordinator, seek};
use super::plans::{self, PlanStore};
use super::{RuntimeError, Tp};
use crate::config::Config;
use crate::kafka::Backoff;
use crate::kafka::fetch_start::{Arrival, FetchStart};
use crate::pipeline::Pipeline;
use crate::replay::{self, CheckpointPosition, CoarsePlan, Plan, StartPoint, StateSource};
use crate::stage::ReplayPoint;
use crate::state::StateStore;

/// Per partition: the committed offset and the plan in its metadata, if any.
pub(super) type Committed = HashMap<Tp, (Option<i64>, Option<Plan>)>;

/// What the poll loop does with a record of a partition whose resume is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Pass,
    /// The broker skipped records before it: the partition is sought back.
    Drop,
    /// The first record the broker still holds; offsets from `missing_from` up to it are
    /// gone (retention).
    AfterGap {
        missing_from: i64,
    },
}

impl Coordinator {
    pub(super) fn watch_for_stall(&self, tp: &Tp, target: i64) {
        self.stalls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tp.clone(), FetchStart::at(target));
        self.watching_stalls.store(true, Ordering::Relaxed);
    }

    /// A record arrived for a partition whose replay may be watched: dropped when the
    /// broker skipped records before it (the partition is sought further back). Records
    /// before the replay's start pass: the worker skips them.
    pub(super) fn arrived(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Admit {
        let mut stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tp, stall)) = stalls
            .iter_mut()
            .find(|(tp, _)| tp.partition == partition && &*tp.topic == topic)
        else {
            return Admit::Pass;
        };
        let admit = match stall.arrived(offset) {
            Arrival::Resumed | Arrival::Before => Admit::Pass,
            Arrival::Gap { missing_from } => Admit::AfterGap { missing_from },
            Arrival::Skipped(None) => return Admit::Drop,
            Arrival::Skipped(Some(to)) => {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, target = stall.offset(), got = offset, seek = to,
                    "the broker skipped records after the replay's first offset (a fetch inside a record batch); seeking back");
                seek(consumer, tp, to);
                return Admit::Drop;
            }
        };
        let tp = tp.clone();
        stalls.remove(&tp);
        if stalls.is_empty() {
            self.watching_stalls.store(false, Ordering::Relaxed);
        }
        admit
    }

    /// Replays that read nothing for a while although their records exist: seek further
    /// back each time (see [`FetchStart`]); the worker skips records before the real start.
    pub(super) fn unstick(&self, consumer: &BaseConsumer<ConsumerCtx>) {
        let mut stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, stall) in stalls.iter_mut() {
            if let Some(offset) = stall.silent() {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, target = stall.offset(), offset,
                    "replay read nothing; the broker may not serve fetches that start inside a record batch, seeking back");
                seek(consumer, tp, offset);
            }
        }
    }

    /// Committed offsets and the plans in their metadata, retried with backoff for as long
    /// as the coordinator cannot answer: resuming without them would start from the wrong
    /// offset with empty state. `None` when the app stops first.
    pub(super) fn committed(&self, consumer: &BaseConsumer<ConsumerCtx>, tps: &[Tp]) -> Option<Committed> {
        let mut out = HashMap::new();
        if tps.is_empty() {
            return Some(out);
        }
        let mut query = TopicPartitionList::new();
        for tp in tps {
            query.add_partition(&tp.topic, tp.partition);
        }
        let result = self.retrying("committed offsets", || {
            let result = consumer
                .committed_offsets(query.clone(), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            // A plan a newer build committed: wait (and say why) rather than resume
            // without the state it describes.
            for el in result.elements() {
                if let Some(version) = Plan::newer_format(el.metadata()) {
                    let key = format!("{}/{}", el.topic(), el.partition());
                    return Err(plans::PlanStoreError::NewerFormat { key, version }.to_string());
                }
            }
            Ok(result)
        })?;
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
        Some(out)
    }

    /// Runs `read` until it succeeds, with backoff, logging and counting each failure, or
    /// until the app stops (`None`). State the partitions resume from is read this way:
    /// while it cannot be read they wait (and the app is not ready), since a resume
    /// without it would emit partial windows.
    pub(super) fn retrying<T, E: std::fmt::Display>(
        &self,
        what: &str,
        mut read: impl FnMut() -> Result<T, E>,
    ) -> Option<T> {
        let mut backoff = Backoff::new();
        for attempt in 1u64.. {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            match read() {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!(what, attempt, "read after retries; partitions resume");
                    }
                    return Some(v);
                }
                Err(e) => {
                    self.metrics.state_read_retries.inc_by(1);
                    tracing::warn!(what, attempt, error = %e,
                        "cannot read the state assigned partitions resume from; they wait and the read is retried");
                    backoff.wait(&self.stop).ok()?;
                }
            }
        }
        None
    }

    /// Builds the pipeline a partition resumes with and where it starts reading, and
    /// where the rollups topic ended for the state it resumes from (if known).
    pub(super) fn restore(
        &self,
        tp: &Tp,
        committed: Option<i64>,
        plan: Option<Plan>,
    ) -> (StartPoint, Box<Pipeline>, Option<i64>) {
        let mut pipeline = Box::new(Pipeline::new(&self.spec));
        let checkpoint = self.state.as_ref().and_then(|store| match store.load(&tp.topic, tp.partition) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.checkpoint_errors.inc_by(1);
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
            && let Err(e) = pipeline.restore_format(&c.pipeline, c.format)
        {
            self.metrics.checkpoint_errors.inc_by(1);
            tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "local checkpoint unusable; replaying from the plan");
            pipeline = Box::new(Pipeline::new(&self.spec));
            start = replay::decide(committed, plan, None);
        }
        let mut rollups_end = None;
        match start.source {
            StateSource::Plan(p) if p.requested => pipeline.reemit_from_next_record(),
            StateSource::Plan(p) => {
                pipeline.restore_cut(p.cut);
                pipeline.restore_idle(p.idle);
                match p.coarse.filter(|c| self.seed_coarse(tp, &mut pipeline, &p, c)) {
                    Some(c) => {
                        pipeline.restore_watermark(c.fine_watermark);
                        start.seek = Some(replay::first_read(c.fine_start, start.replay_until));
                        start.probe = replay::is_probe(c.fine_start, start.replay_until);
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
    pub(super) fn seed_coarse(
        &self,
        tp: &Tp,
        pipeline: &mut Pipeline,
        plan: &Plan,
        coarse: &CoarsePlan,
    ) -> bool {
        let topic = &self.config.topics.rollups;
        let started = Instant::now();
        match plans::read_rollups(
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
                self.metrics.coarse_rows_read.inc_by(rows.len() as u64);
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
}

/// The topic of earlier plans that an operator's replay reaches back to (see
/// [`super::history::PlanHistory`]), created if missing.
pub(super) fn plan_history(
    config: &Config,
    stop: &AtomicBool,
) -> Result<super::history::PlanHistory, RuntimeError> {
    let topic = config.plan_history_topic();
    super::topics::ensure_plan_history_topic(config, &topic, stop)?;
    Ok(super::history::PlanHistory::new(config, topic)?)
}

/// Chooses where replay plans go: commit metadata when the broker keeps it, otherwise
/// (or when configured) the plan topic as well.
pub(super) fn plan_store(config: &Config, stop: &AtomicBool) -> Result<PlanStore, RuntimeError> {
    let use_topic = match config.state.plan_store.as_str() {
        "metadata" => false,
        "topic" => true,
        _ => match plans::probe(config, &config.topics.input) {
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
    super::topics::ensure_plan_topic(config, &topic, stop)?;
    tracing::info!(topic, "replay plans are also kept in the plan topic");
    plans::PlanTopic::new(config, topic)
        .map(|t| PlanStore::Topic(Box::new(t)))
        .map_err(RuntimeError::from)
}

pub(super) fn open_state(config: &Config) -> Result<Option<Arc<StateStore>>, RuntimeError> {
    let dir = config.state.dir.trim();
    if dir.is_empty() {
        return Ok(None);
    }
    let mib = 1usize << 20;
    let store = StateStore::open(
        std::path::Path::new(dir),
        config.state.block_cache_mb as usize * mib,
        config.state.write_buffer_mb as usize * mib,
    )?;
    tracing::info!(dir, "local checkpoints enabled");
    Ok(Some(Arc::new(store)))
}
