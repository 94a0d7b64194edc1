//! One partition's pipeline: decode → intern → stages (with in-process fan-out from the
//! rollup stage to stages that consume a rollup level) → typed outputs handed to a sink.
//! Pure and synchronous: the runtime supplies records and a sink that produces to Kafka;
//! tests supply a sink that collects.

use crate::codec::{self, DecodeError, Format};
use crate::cusum::{CusumParams, CusumStage};
use crate::intern::Interner;
use crate::limits::InputLimits;
use crate::record::Agg;
use crate::record::{Anomaly, Point, RollupRow};
use crate::replay::{CoarsePlan, IdleLog, Plan};
use crate::snapshot::PipelineSnapshot;
use crate::stage::{
    CoarseSources, Collector, Context, Input, Output, ReplayPoint, RestoreError, Stage, Subscription,
};
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

/// A plan's coarse part before the runtime has located the rows in the rollups topic: it
/// saw which topic offsets the outputs of each source offset got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoarseDraft {
    pub fine_start: i64,
    pub fine_watermark: i64,
    pub now_watermark: i64,
    /// Rows are at or after the outputs of this source offset…
    pub trigger: Option<i64>,
    /// …and at or after this rollups-topic offset.
    pub topic: Option<i64>,
}

impl CoarseDraft {
    /// The coarse plan, once the rows' first topic offset and the topic's end are known.
    pub fn locate(&self, rollups_from: i64, rollups_end: i64) -> CoarsePlan {
        CoarsePlan {
            fine_start: self.fine_start,
            fine_watermark: self.fine_watermark,
            now_watermark: self.now_watermark,
            rollups_from,
            rollups_end: rollups_end.max(rollups_from),
        }
    }
}

/// A closed window read back from the rollups topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRollup {
    pub series: String,
    pub resolution: String,
    pub window_start: i64,
    pub window_end: i64,
    pub agg: Agg,
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

    /// Suppresses outputs of records before `offset`: they were emitted before a restart.
    pub fn set_replay_until(&mut self, offset: i64) {
        self.replay_until = offset;
    }

    /// Restores the watermark a plan recorded for its replay start, so replayed records
    /// are accepted or found late exactly as they were the first time.
    pub fn restore_watermark(&mut self, watermark: i64) {
        self.watermark = watermark;
        self.max_ts = watermark.saturating_add(self.grace_ms);
        if watermark == i64::MIN {
            self.max_ts = i64::MIN;
        }
    }

    /// Re-emits from the next record on (an operator's replay): windows the replay point
    /// cuts through are left out, since they would hold only part of their records.
    pub fn reemit_from_next_record(&mut self) {
        self.cut = Cut::Pending;
    }

    /// Restores the cut a plan carried from an earlier operator replay.
    pub fn restore_cut(&mut self, cut: Option<i64>) {
        if let Some(cut) = cut {
            self.cut = Cut::At(cut);
        }
    }

    /// Records this partition's state needed are gone from the broker (retention). They
    /// passed the input checks, so each event time is at most its broker timestamp plus
    /// `input.max_future`, and those timestamps are before the first record still kept
    /// (`kept_broker_ts`) or, at the latest, now. Every window starting at or before that
    /// time may miss some of them: none is emitted, at any level. Returns the first window
    /// start that is emitted again.
    pub fn records_lost(&mut self, now_ms: i64, kept_broker_ts: Option<i64>) -> i64 {
        let newest = kept_broker_ts
            .unwrap_or(now_ms)
            .max(now_ms)
            .saturating_add(self.limits.max_future_ms);
        let cut = newest.saturating_add(1);
        let cut = self.cut_at().map_or(cut, |c| c.max(cut));
        self.cut = Cut::At(cut);
        cut
    }

    fn cut_at(&self) -> Option<i64> {
        match self.cut {
            Cut::At(cut) => Some(cut),
            Cut::None | Cut::Pending => None,
        }
    }

    /// The replay plan for the state held after processing everything before `next_offset`.
    pub fn plan(&self, next_offset: i64) -> Plan {
        let (replay_start, watermark) = match self.replay_start() {
            Some(r) if r.offset < next_offset => (r.offset, r.watermark),
            _ => (next_offset, self.watermark),
        };
        Plan {
            replay_start,
            next_offset,
            watermark,
            requested: false,
            cut: self.cut_at(),
            coarse: None,
            // From the replay start on: a rebuild from an earlier plan passes them too.
            idle: self.idle.after(replay_start - 1),
        }
    }

    /// Restores the idle flushes a plan recorded: each is applied again before the record
    /// it preceded the first time.
    pub fn restore_idle(&mut self, idle: IdleLog) {
        self.idle = idle;
    }

    /// The coarse part of the plan at `next_offset`, if coarse state can be rebuilt from
    /// the rollups topic: every open coarse window's rows can be located, and none of
    /// those windows was cut by an operator's replay (its rows were never emitted).
    pub fn coarse_draft(&self, next_offset: i64) -> Option<CoarseDraft> {
        let mut all = CoarseSources::default();
        for s in &self.stages {
            let c = s.coarse().map(|c| c.coarse_sources()).unwrap_or_default();
            all.unknown |= c.unknown;
            all.oldest_start = min_opt(all.oldest_start, c.oldest_start);
            all.trigger = min_opt(all.trigger, c.trigger);
            all.topic = min_opt(all.topic, c.topic);
        }
        let oldest = all.oldest_start?;
        if all.unknown || self.cut_at().is_some_and(|cut| oldest < cut) {
            return None;
        }
        let fine = self
            .stages
            .iter()
            .filter_map(|s| {
                s.coarse()
                    .map_or_else(|| s.replay_start(), |c| c.fine_replay_start())
            })
            .min_by_key(|r| r.offset);
        let (fine_start, fine_watermark) = match fine {
            Some(r) if r.offset < next_offset => (r.offset, r.watermark),
            _ => (next_offset, self.watermark),
        };
        Some(CoarseDraft {
            fine_start,
            fine_watermark,
            now_watermark: self.watermark,
            trigger: all.trigger,
            topic: all.topic,
        })
    }

    /// Rebuilds open coarse windows from rows read back from the rollups topic (from
    /// `plan.rollups_from` on), before a replay from `plan.fine_start`. `raw` is the
    /// plan's full replay point. Returns how many rows were merged.
    pub fn seed_coarse(&mut self, rows: &[ReadRollup], plan: &CoarsePlan, raw: ReplayPoint) -> usize {
        // Several copies of one window (earlier crashes, operator replays) are identical:
        // keep one.
        let mut seen = std::collections::HashSet::new();
        let mut typed = Vec::with_capacity(rows.len());
        for r in rows {
            let Some(level) = self.labels.iter().position(|l| *l == r.resolution) else {
                continue;
            };
            if !seen.insert((r.series.as_str(), level, r.window_start)) {
                continue;
            }
            typed.push(RollupRow {
                series: self.interner.intern(&r.series),
                level: level as u8,
                window_start: r.window_start,
                window_end: r.window_end,
                agg: r.agg,
            });
        }
        self.stages
            .iter_mut()
            .filter_map(|s| s.coarse_mut())
            .map(|c| c.seed(&typed, plan.now_watermark, plan.rollups_from, raw))
            .sum()
    }

    /// After [`Pipeline::restore`] of another run's checkpoint: its rows located by that
    /// run's source offsets are at or after `topic_from` in the rollups topic.
    pub fn locate_restored_rows(&mut self, topic_from: Option<i64>) {
        for c in self.stages.iter_mut().filter_map(|s| s.coarse_mut()) {
            c.locate_restored_rows(topic_from);
        }
    }

    /// Serialises everything needed to continue exactly where this pipeline is (in the
    /// checkpoint format [`crate::state::CHECKPOINT_FORMAT`]).
    pub fn snapshot(&self) -> Vec<u8> {
        PipelineSnapshot {
            shape: self.shape.clone(),
            names: (0..self.interner.len() as u32)
                .map(|id| self.interner.name(id).to_owned())
                .collect(),
            watermark: self.watermark,
            max_ts: self.max_ts,
            cut: self.cut_at(),
            stages: self
                .stages
                .iter()
                .map(|s| s.snapshot().unwrap_or_default())
                .collect(),
            idle: self.idle.iter().collect(),
        }
        .encode()
    }

    /// Restores a [`Pipeline::snapshot`] of this build into this (fresh) pipeline. A
    /// snapshot of another configuration or a corrupt one is an error and leaves the
    /// pipeline to be rebuilt.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        self.restore_format(bytes, crate::state::CHECKPOINT_FORMAT)
    }

    /// Restores a snapshot written in checkpoint format `format` (this build's or the
    /// one before).
    pub fn restore_format(&mut self, bytes: &[u8], format: u32) -> Result<(), RestoreError> {
        let snapshot = PipelineSnapshot::decode(bytes, format)?;
        if snapshot.shape != self.shape {
            return Err(RestoreError::OtherSetup {
                found: snapshot.shape,
                expected: self.shape.clone(),
            });
        }
        for name in &snapshot.names {
            self.interner.intern(name);
        }
        for (stage, bytes) in self.stages.iter_mut().zip(&snapshot.stages) {
            if !bytes.is_empty() {
                stage.restore(bytes)?;
            }
        }
        self.watermark = snapshot.watermark;
        self.max_ts = snapshot.max_ts;
        self.idle = snapshot.idle_log();
        self.restore_cut(snapshot.cut);
        Ok(())
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

    /// The earliest source record that still affects held state, over all stages.
    pub fn replay_start(&self) -> Option<ReplayPoint> {
        self.stages
            .iter()
            .filter_map(|s| s.replay_start())
            .min_by_key(|r| r.offset)
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

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
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
            // The tests' event times start at 0.
            limits: InputLimits::any_time(),
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
                None,
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
    fn records_outside_the_input_limits_are_dead_lettered_and_move_nothing() {
        let spec = PipelineSpec {
            limits: InputLimits::default(),
            ..spec(None)
        };
        let mut p = Pipeline::new(&spec);
        let mut sink = VecSink::default();
        let now = 1_764_700_020_000;
        let at = Some(now);
        p.process(
            Some(b"s"),
            Some(point("s", now, 1.5).as_bytes()),
            0,
            at,
            &mut sink,
        );
        let watermark = p.watermark();
        let huge = format!(
            r#"{{"series":"s","ts":{now},"value":1,"pad":"{}"}}"#,
            "x".repeat(70_000)
        );
        let hostile = [
            point("s", now + 3_600_001, 1.0), // past broker time + max_future
            point("s", 0, 1.0),               // before 2000
            point("s", i64::MAX, 1.0),        // would overflow window arithmetic
            point("s", now, 1e200),           // sums would overflow
            huge,
        ];
        for (i, record) in hostile.iter().enumerate() {
            p.process(Some(b"s"), Some(record.as_bytes()), 1 + i as i64, at, &mut sink);
        }
        // Without a broker timestamp only the fixed range applies.
        p.process(
            Some(b"s"),
            Some(point("s", i64::MAX, 1.0).as_bytes()),
            6,
            None,
            &mut sink,
        );
        assert_eq!(p.watermark(), watermark, "no bad record moved the watermark");
        let reasons: Vec<&str> = sink.dead_letters.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(reasons.len(), 6, "{reasons:?}");
        for (reason, expected) in
            reasons
                .iter()
                .zip(["after", "before 2000", "after", "beyond", "bytes", "after"])
        {
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
        }
        // A later good record closes the first minute with only the good point in it.
        p.process(
            Some(b"s"),
            Some(point("s", now + 120_000, 1.0).as_bytes()),
            7,
            at,
            &mut sink,
        );
        let (_, label, row) = &sink.rollups[0];
        assert_eq!(
            (label.as_str(), row.agg.count, row.agg.sum()),
            ("1m", 1, 1.5),
            "{:?}",
            sink.rollups
        );
    }

    #[test]
    fn bad_records_are_dead_lettered_and_processing_continues() {
        let mut p = Pipeline::new(&spec(None));
        let mut sink = VecSink::default();
        p.process(Some(b"s"), Some(b"{"), 0, None, &mut sink);
        p.process(None, Some(point("s", 0, 1.0).as_bytes()), 1, None, &mut sink);
        p.process(
            Some(b"s"),
            Some(point("s", 0, 1.0).as_bytes()),
            2,
            None,
            &mut sink,
        );
        p.process(
            Some(b"s"),
            Some(point("s", 120_000, 1.0).as_bytes()),
            3,
            None,
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
        p.process(
            Some(b"s"),
            Some(point("s", 1_000, 2.0).as_bytes()),
            0,
            None,
            &mut sink,
        );
        assert!(sink.rollups.is_empty());
        p.advance_watermark(600_000, 1, &mut sink);
        let labels: Vec<&str> = sink.rollups.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(labels, vec!["1m", "10m"]);
        assert_eq!(p.replay_start(), None, "nothing left open");
    }
}
