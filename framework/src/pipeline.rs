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

    /// Calls every stage's flush hook and delivers what they emit.
    pub fn flush(&mut self, offset: i64, sink: &mut impl Sink) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cusum::CusumParams;

    fn point(series: &str, ts: i64, value: f64) -> String {
        format!(r#"{{"series":"{series}","ts":{ts},"value":{value}}}"#)
    }

    fn spec(cusum: Option<(CusumParams, Subscription)>) -> PipelineSpec {
        PipelineSpec {
            input_format: Format::Json,
            rollup: Some(vec![
                Resolution::new(60_000, "1m"),
                Resolution::new(600_000, "10m"),
            ]),
            cusum,
            grace_ms: 0,
        }
    }

    #[test]
    fn cusum_can_watch_a_rollup_level_in_the_same_pipeline() {
        let params = CusumParams {
            warmup: 10,
            ..CusumParams::default()
        };
        let mut p = Pipeline::new(&spec(Some((params, Subscription::RollupLevel(0)))));
        let mut sink = VecSink::default();
        // One point per minute: each 1m window average is that point. Level steps at 40.
        for i in 0..60i64 {
            let v = if i < 40 { 10.0 + (i % 3) as f64 * 0.1 } else { 30.0 };
            p.process(
                Some(b"s"),
                Some(point("s", i * 60_000, v).as_bytes()),
                i,
                &mut sink,
            );
        }
        assert_eq!(sink.anomalies.len(), 1, "{:?}", sink.anomalies);
        let (series, a) = &sink.anomalies[0];
        assert_eq!(series, "s");
        // Fed by the closed 1m window that starts at minute 40.
        assert_eq!(a.ts, 40 * 60_000);
        assert_eq!(a.value, 30.0);
        assert_eq!(p.stats().anomalies, 1);
    }

    #[test]
    fn bad_records_are_dead_lettered_and_processing_continues() {
        let mut p = Pipeline::new(&spec(None));
        let mut sink = VecSink::default();
        p.process(Some(b"s"), Some(b"{"), 0, &mut sink);
        p.process(None, Some(point("s", 0, 1.0).as_bytes()), 1, &mut sink);
        p.process(Some(b"s"), Some(point("s", 0, 1.0).as_bytes()), 2, &mut sink);
        p.process(
            Some(b"s"),
            Some(point("s", 120_000, 1.0).as_bytes()),
            3,
            &mut sink,
        );
        assert_eq!(
            sink.dead_letters.iter().map(|d| d.1).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(sink.rollups.len(), 1, "the good records still roll up");
        assert_eq!(p.stats().dead_lettered, 2);
        assert_eq!(p.stats().records, 4);
    }

    #[test]
    fn idle_advance_closes_open_windows() {
        let mut p = Pipeline::new(&spec(None));
        let mut sink = VecSink::default();
        p.process(Some(b"s"), Some(point("s", 1_000, 2.0).as_bytes()), 0, &mut sink);
        assert!(sink.rollups.is_empty());
        p.advance_watermark(600_000, 1, &mut sink);
        let labels: Vec<&str> = sink.rollups.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(labels, vec!["1m", "10m"]);
        assert_eq!(p.replay_start(), None, "nothing left open");
    }
}
