//! One partition's pipeline: decode → intern → stages (with in-process fan-out from the
//! rollup stage to stages that consume a rollup level) → typed outputs handed to a sink.
//! Pure and synchronous: the runtime supplies records and a sink that produces to Kafka;
//! tests supply a sink that collects.

use crate::codec::{self, DecodeError, Format};
use crate::cusum::{CusumParams, CusumStage};
use crate::intern::Interner;
use crate::record::{Anomaly, Point, RollupRow};
use crate::stage::{Collector, Context, Input, Output, Stage, Subscription};
use crate::window::{Resolution, RollupStage};

/// Where a pipeline's outputs go.
pub trait Sink {
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
}

/// Counters kept per partition, read by the runtime for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStats {
    pub records: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub rollups: u64,
    pub anomalies: u64,
}

pub struct Pipeline {
    format: Format,
    interner: Interner,
    stages: Vec<Box<dyn Stage>>,
    subscriptions: Vec<Subscription>,
    labels: Vec<String>,
    grace_ms: i64,
    max_ts: i64,
    watermark: i64,
    collector: Collector,
    stats: PipelineStats,
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
        Self {
            format: spec.input_format,
            interner: Interner::new(),
            stages,
            subscriptions,
            labels,
            grace_ms: spec.grace_ms,
            max_ts: i64::MIN,
            watermark: i64::MIN,
            collector: Collector::new(),
            stats: PipelineStats::default(),
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

    /// The earliest source offset that still affects held state, over all stages.
    pub fn replay_start(&self) -> Option<i64> {
        self.stages.iter().filter_map(|s| s.replay_start()).min()
    }

    /// Processes one source record.
    #[inline]
    pub fn process(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>, offset: i64, sink: &mut impl Sink) {
        self.stats.records += 1;
        let raw = match codec::decode_point(self.format, key, payload) {
            Ok(raw) => raw,
            Err(error) => {
                self.stats.dead_lettered += 1;
                sink.dead_letter(&error, key, payload, offset);
                return;
            }
        };
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
        if !self.collector.is_empty() {
            self.deliver(key, payload, sink);
        }
    }

    /// Moves the watermark forward without a record (idle-partition flush).
    pub fn advance_watermark(&mut self, watermark: i64, offset: i64, sink: &mut impl Sink) {
        if watermark > self.watermark {
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
            stage.on_watermark(watermark, &mut self.collector);
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

    fn deliver(&mut self, key: Option<&[u8]>, payload: Option<&[u8]>, sink: &mut impl Sink) {
        for output in self.collector.drain() {
            match output {
                Output::Rollup(row) => {
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

impl Sink for VecSink {
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
