//! One partition's pipeline: decode → intern → stages (with in-process fan-out from the
//! rollup stage to stages that consume a rollup level) → typed outputs handed to a sink.
//! Pure and synchronous: the runtime supplies records and a sink that produces to Kafka;
//! tests supply a sink that collects.

mod resume;

pub use resume::{CoarseDraft, ReadRollup};

use crate::codec::{self, DecodeError, Format};
use crate::cusum::{CusumParams, CusumStage};
use crate::intern::Interner;
use crate::limits::InputLimits;
use crate::record::{Anomaly, Point, RollupRow};
use crate::replay::IdleLog;
use crate::stage::{Collector, Context, Input, Output, Stage, Subscription};
use crate::window::{Resolution, RollupStage};

/// Where a pipeline's outputs go.
pub trait OutputSink {
    fn rollup(&mut self, series: &str, resolution: &str, row: &RollupRow);
    fn anomaly(&mut self, series: &str, anomaly: &Anomaly);
    /// An undecodable or invalid record, with the reason.
    fn dead_letter(&mut self, error: &DecodeError, key: Option<&[u8]>, payload: Option<&[u8]>, offset: i64);
    /// A record that arrived after its window closed.
    fn late(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>, offset: i64);
}

/// What a pipeline runs: built once from configuration, instantiated per partition.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub input_format: Format,
    /// Rollup levels, finest first; `None` disables the rollup stage.
    pub rollup: Option<Vec<Resolution>>,
    /// CUSUM parameters and what it consumes; `None` disables it.
    pub cusum: Option<(CusumParams, Subscription)>,
    /// Allowed lateness: the watermark is the max event time seen minus this.
    pub grace_ms: i64,
    /// What a record may hold; outside it a record is dead-lettered.
    pub limits: InputLimits,
}

/// Counters kept per partition, read by the runtime for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    pub records: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub rollups: u64,
    pub anomalies: u64,
    /// Records processed again to rebuild state, their outputs suppressed.
    pub replayed: u64,
    /// Idle flushes the plan could not keep (its log was full).
    pub idle_unrecorded: u64,
}

/// Windows that begin before this event time would be partial, so they are not emitted:
/// cut by the point of a replay an older build ran, or missing records the broker no
/// longer holds (see [`Pipeline::records_lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    None,
    /// Set from the first record processed.
    Pending,
    At(i64),
}

pub struct Pipeline {
    format: Format,
    interner: Interner,
    stages: Vec<Box<dyn Stage>>,
    subscriptions: Vec<Subscription>,
    labels: Vec<String>,
    grace_ms: i64,
    limits: InputLimits,
    max_ts: i64,
    watermark: i64,
    collector: Collector,
    stats: PipelineStats,
    /// Outputs of records before this offset were emitted before a restart: suppressed.
    replay_until: i64,
    /// Whether the stages were last told outputs are suppressed.
    stages_replaying: bool,
    cut: Cut,
    /// Idle flushes since the oldest open window began, for plans and rebuilds.
    idle: IdleLog,
    shape: String,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("series", &self.interner.len())
            .field("watermark", &self.watermark)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Pipeline {
    pub fn new(spec: &PipelineSpec) -> Self {
        let mut stages: Vec<Box<dyn Stage>> = Vec::new();
        let mut labels = Vec::new();
        if let Some(levels) = &spec.rollup {
            labels = levels.iter().map(|r| r.label.clone()).collect();
            stages.push(Box::new(RollupStage::new(levels.clone())));
        }
        if let Some((params, subscription)) = spec.cusum {
            stages.push(Box::new(CusumStage::new(params, subscription)));
        }
        let subscriptions = stages.iter().map(|s| s.subscription()).collect();
        let shape = format!(
            "stages={:?} levels={:?} format={:?}",
            stages.iter().map(|s| s.name()).collect::<Vec<_>>(),
            spec.rollup
                .as_ref()
                .map(|l| l.iter().map(|r| r.width_ms).collect::<Vec<_>>()),
            spec.input_format
        );
        Self {
            format: spec.input_format,
            interner: Interner::new(),
            stages,
            subscriptions,
            labels,
            grace_ms: spec.grace_ms,
            limits: spec.limits,
            max_ts: i64::MIN,
            watermark: i64::MIN,
            collector: Collector::new(),
            stats: PipelineStats::default(),
            replay_until: i64::MIN,
            stages_replaying: false,
            cut: Cut::None,
            idle: IdleLog::default(),
            shape,
        }
    }

    pub fn stats(&self) -> PipelineStats {
        self.stats
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn series(&self) -> usize {
        self.interner.len()
    }

    /// Processes one source record; `broker_ts` is its broker timestamp (milliseconds),
    /// if it has one, which bounds how far in the future its event time may be.
    #[inline]
    pub fn process(
        &mut self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        offset: i64,
        broker_ts: Option<i64>,
        sink: &mut impl OutputSink,
    ) {
        self.stats.records += 1;
        let replaying = offset < self.replay_until;
        if replaying != self.stages_replaying {
            self.stages_replaying = replaying;
            for stage in &mut self.stages {
                stage.set_replaying(replaying);
            }
        }
        // O(1) per record when live: every recorded flush is behind the current offset.
        if self.idle.newest().is_some_and(|newest| newest >= offset)
            && let Some(watermark) = self.idle.at(offset)
            && watermark > self.watermark
        {
            // A rebuild passing the point where the first run was flushed idle.
            let ctx = Context {
                offset,
                watermark: self.watermark,
            };
            self.advance_to(watermark, ctx);
            if replaying {
                self.collector.clear();
            } else {
                self.deliver(None, None, sink);
            }
        }
        let limits = self.limits;
        let raw = match limits.check_size(key, payload).and_then(|()| {
            let raw = codec::decode_point(self.format, key, payload)?;
            limits.check_point(raw.ts, raw.value, broker_ts)?;
            Ok(raw)
        }) {
            Ok(raw) => raw,
            Err(_) if replaying => return,
            Err(error) => {
                self.stats.dead_lettered += 1;
                sink.dead_letter(&error, key, payload, offset);
                return;
            }
        };
        if self.cut == Cut::Pending {
            // Records before the replay point may be up to `grace` newer than this one.
            self.cut = Cut::At(raw.ts.saturating_add(self.grace_ms));
        }
        let point = Point {
            series: self.interner.intern(&raw.series),
            ts: raw.ts,
            value: raw.value,
        };
        let ctx = Context {
            offset,
            watermark: self.watermark,
        };
        for (stage, sub) in self.stages.iter_mut().zip(&self.subscriptions) {
            if *sub == Subscription::Points {
                stage.process(Input::Point(&point), ctx, &mut self.collector);
            }
        }
        self.fan_out(0, ctx);
        if point.ts > self.max_ts {
            self.max_ts = point.ts;
            let wm = point.ts.saturating_sub(self.grace_ms);
            if wm > self.watermark {
                self.advance_to(wm, ctx);
            }
        }
        if replaying {
            self.stats.replayed += 1;
            self.collector.clear();
        } else if !self.collector.is_empty() {
            self.deliver(key, payload, sink);
        }
    }

    /// Calls every stage's flush hook and delivers what they emit.
    pub fn flush(&mut self, offset: i64, sink: &mut impl OutputSink) {
        let start = self.collector.len();
        for stage in &mut self.stages {
            stage.flush(&mut self.collector);
        }
        self.fan_out(
            start,
            Context {
                offset,
                watermark: self.watermark,
            },
        );
        self.deliver(None, None, sink);
    }

    /// Moves the watermark forward without a record (idle-partition flush) before the
    /// record at `offset`; recorded, so that a rebuild does the same.
    pub fn advance_watermark(&mut self, watermark: i64, offset: i64, sink: &mut impl OutputSink) {
        if watermark > self.watermark {
            // Flushes before the oldest open window are no longer needed by any plan.
            let oldest = self.replay_start().map_or(offset, |r| r.offset);
            self.idle = self.idle.after(oldest - 1);
            if self.idle.record(offset, watermark) {
                self.stats.idle_unrecorded += 1;
            }
            let ctx = Context {
                offset,
                watermark: self.watermark,
            };
            self.advance_to(watermark, ctx);
            self.deliver(None, None, sink);
        }
    }

    fn advance_to(&mut self, watermark: i64, ctx: Context) {
        self.watermark = watermark;
        let start = self.collector.len();
        for stage in &mut self.stages {
            stage.on_watermark(
                Context {
                    offset: ctx.offset,
                    watermark,
                },
                &mut self.collector,
            );
        }
        self.fan_out(start, Context { watermark, ..ctx });
    }

    /// Feeds rollups emitted at or after `from` to the stages that consume their level.
    /// Outputs those stages emit are appended and examined in turn.
    fn fan_out(&mut self, from: usize, ctx: Context) {
        if self.stages.len() < 2 {
            return;
        }
        let mut i = from;
        while let Some(output) = self.collector.get(i).copied() {
            if let Output::Rollup(row) = output {
                for (stage, sub) in self.stages.iter_mut().zip(&self.subscriptions) {
                    if *sub == Subscription::RollupLevel(row.level) {
                        stage.process(Input::Rollup(&row), ctx, &mut self.collector);
                    }
                }
            }
            i += 1;
        }
    }

    fn deliver(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>, sink: &mut impl OutputSink) {
        for output in self.collector.drain() {
            match output {
                Output::Rollup(row) => {
                    if let Cut::At(cut) = self.cut
                        && row.window_start < cut
                    {
                        continue;
                    }
                    self.stats.rollups += 1;
                    sink.rollup(
                        self.interner.name(row.series),
                        &self.labels[row.level as usize],
                        &row,
                    );
                }
                Output::Anomaly(a) => {
                    self.stats.anomalies += 1;
                    sink.anomaly(self.interner.name(a.series), &a);
                }
                Output::Late { offset, .. } => {
                    self.stats.late += 1;
                    sink.late(key, payload, offset);
                }
            }
        }
    }
}

/// A sink that keeps everything in memory, for tests and offline tools.
#[derive(Debug, Default)]
pub struct VecSink {
    pub rollups: Vec<(String, String, RollupRow)>,
    pub anomalies: Vec<(String, Anomaly)>,
    pub dead_letters: Vec<(String, i64)>,
    pub late: Vec<i64>,
}

impl OutputSink for VecSink {
    fn rollup(&mut self, series: &str, resolution: &str, row: &RollupRow) {
        self.rollups
            .push((series.to_owned(), resolution.to_owned(), *row));
    }

    fn anomaly(&mut self, series: &str, anomaly: &Anomaly) {
        self.anomalies.push((series.to_owned(), *anomaly));
    }

    fn dead_letter(
        &mut self,
        error: &DecodeError,
        _key: Option<&[u8]>,
        _payload: Option<&[u8]>,
        offset: i64,
    ) {
        self.dead_letters.push((error.to_string(), offset));
    }

    fn late(&mut self, _key: Option<&[u8]>, _payload: Option<&[u8]>, offset: i64) {
        self.late.push(offset);
    }
}

#[cfg(test)]
mod tests;
