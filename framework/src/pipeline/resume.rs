//! Where a restarted pipeline resumes: the replay plan for its state, the coarse part a
//! plan can rebuild from the rollups topic, cuts for operator replays and lost records,
//! and checkpoint snapshots.

use super::{Cut, Pipeline};
use crate::record::{Agg, RollupRow};
use crate::replay::{CoarsePlan, IdleLog, Plan};
use crate::snapshot::PipelineSnapshot;
use crate::stage::{CoarseSources, ReplayPoint, RestoreError};

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

impl Pipeline {
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

    /// The earliest source record that still affects held state, over all stages.
    pub fn replay_start(&self) -> Option<ReplayPoint> {
        self.stages
            .iter()
            .filter_map(|s| s.replay_start())
            .min_by_key(|r| r.offset)
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
