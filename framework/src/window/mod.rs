//! Tumbling-window rollups aligned to the UTC epoch, cascading from the finest level to
//! coarser ones: a coarse window is merged in-process from the closed fine windows it
//! covers, never recomputed from raw records.

mod config;

pub use config::RollupConfig;

use std::collections::BTreeMap;

use crate::record::{Agg, RollupRow, SeriesId};
use crate::stage::{
    CoarseSources, CoarseState, Collector, Context, Input, Output, ReplayPoint, RestoreError, Stage,
};

#[cfg(test)]
mod tests;

/// One resolution, e.g. 5m = 300,000 ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub width_ms: i64,
    pub label: String,
}

impl Resolution {
    pub fn new(width_ms: i64, label: impl Into<String>) -> Self {
        Self {
            width_ms,
            label: label.into(),
        }
    }

    #[inline]
    pub fn window_start(&self, ts: i64) -> i64 {
        ts.div_euclid(self.width_ms) * self.width_ms
    }
}

/// Open state of one window: a flat vector of aggregates indexed by series id, plus the
/// ids touched so closing costs O(touched), not O(series).
#[derive(Debug, Default)]
struct Window {
    aggs: Vec<Agg>,
    touched: Vec<SeriesId>,
    /// Earliest source offset that fed this window (through any finer level).
    first_offset: i64,
    /// The watermark just before that record.
    first_watermark: i64,
    /// Coarse levels: where the fine rows merged into this window can be read back from
    /// the rollups topic.
    rows_from: RowsFrom,
}

/// Where the fine rows merged into a coarse window are in the rollups topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bincode::Encode, bincode::Decode)]
pub enum RowsFrom {
    /// Not known (merged while outputs were suppressed, or a level-0 window).
    #[default]
    Unknown,
    /// At or after the position of the outputs of this source offset (the record whose
    /// watermark closed the first of them); the runtime maps it to a topic offset.
    Trigger(i64),
    /// At or after this offset of the rollups topic.
    Topic(i64),
}

impl Window {
    #[inline]
    fn slot(&mut self, series: SeriesId) -> &mut Agg {
        let i = series as usize;
        if i >= self.aggs.len() {
            self.aggs.resize((i + 1).next_power_of_two(), Agg::EMPTY);
        }
        let agg = &mut self.aggs[i];
        if agg.is_empty() {
            self.touched.push(series);
        }
        agg
    }

    fn reset(&mut self) {
        for &s in &self.touched {
            self.aggs[s as usize] = Agg::EMPTY;
        }
        self.touched.clear();
        self.rows_from = RowsFrom::Unknown;
    }
}

#[derive(Debug)]
struct Level {
    resolution: Resolution,
    open: BTreeMap<i64, Window>,
    /// Recycled windows, so steady state allocates nothing.
    spare: Vec<Window>,
}

impl Level {
    fn window(&mut self, start: i64, first: ReplayPoint) -> &mut Window {
        let spare = &mut self.spare;
        let w = self.open.entry(start).or_insert_with(|| {
            let mut w = spare.pop().unwrap_or_default();
            w.first_offset = first.offset;
            w.first_watermark = first.watermark;
            w
        });
        if first.offset < w.first_offset {
            w.first_offset = first.offset;
            w.first_watermark = first.watermark;
        }
        w
    }
}

/// The rollup stage: windows at every configured level for every series of a partition.
#[derive(Debug)]
pub struct RollupStage {
    levels: Vec<Level>,
    /// Earliest end among open windows of any level: the watermark check per record is a
    /// single comparison until something can close.
    next_close: i64,
    /// Outputs are being suppressed (state is being rebuilt by replay).
    replaying: bool,
    /// Coarse windows were seeded from the rollups topic: fine windows closing during the
    /// replay are already in them and must not be merged again.
    seeded: bool,
}

impl RollupStage {
    /// `resolutions` must be ordered finest first, each a multiple of the previous one.
    pub fn new(resolutions: Vec<Resolution>) -> Self {
        assert!(!resolutions.is_empty(), "at least one resolution");
        Self {
            levels: resolutions
                .into_iter()
                .map(|resolution| Level {
                    resolution,
                    open: BTreeMap::new(),
                    spare: Vec::new(),
                })
                .collect(),
            next_close: i64::MAX,
            replaying: false,
            seeded: false,
        }
    }

    pub fn resolutions(&self) -> impl Iterator<Item = &Resolution> {
        self.levels.iter().map(|l| &l.resolution)
    }

    /// Number of windows open across all levels.
    pub fn open_windows(&self) -> usize {
        self.levels.iter().map(|l| l.open.len()).sum()
    }

    #[inline]
    fn add_point(&mut self, series: SeriesId, ts: i64, value: f64, ctx: Context, out: &mut Collector) {
        let level = &mut self.levels[0];
        let start = level.resolution.window_start(ts);
        let end = start + level.resolution.width_ms;
        if end <= ctx.watermark {
            out.emit(Output::Late {
                series,
                ts,
                offset: ctx.offset,
            });
            return;
        }
        let first = ReplayPoint {
            offset: ctx.offset,
            watermark: ctx.watermark,
        };
        level.window(start, first).slot(series).add(value);
        self.next_close = self.next_close.min(end);
    }

    /// Closes every window whose end is at or before `watermark`, finest level first so a
    /// coarse window has received all of its fine windows before it closes itself.
    /// `trigger` is the source offset whose watermark closes them.
    fn close_until(&mut self, watermark: i64, trigger: i64, out: &mut Collector) {
        let cascade = !(self.replaying && self.seeded);
        let rows_from = if self.replaying {
            RowsFrom::Unknown
        } else {
            RowsFrom::Trigger(trigger)
        };
        for i in 0..self.levels.len() {
            let (fine, coarse) = self.levels.split_at_mut(i + 1);
            let level = &mut fine[i];
            let mut next = coarse.first_mut().filter(|_| cascade);
            let width = level.resolution.width_ms;
            while let Some(entry) = level.open.first_entry() {
                let start = *entry.key();
                if start + width > watermark {
                    break;
                }
                let mut window = entry.remove();
                window.touched.sort_unstable();
                let coarse_window = next.as_mut().map(|c| {
                    let cstart = c.resolution.window_start(start);
                    let fresh = !c.open.contains_key(&cstart);
                    let w = c.window(
                        cstart,
                        ReplayPoint {
                            offset: window.first_offset,
                            watermark: window.first_watermark,
                        },
                    );
                    // Rows merged while outputs are suppressed cannot be located later.
                    if fresh {
                        w.rows_from = rows_from;
                    } else if rows_from == RowsFrom::Unknown {
                        w.rows_from = RowsFrom::Unknown;
                    }
                    w
                });
                let mut coarse_window = coarse_window;
                for &series in &window.touched {
                    let agg = window.aggs[series as usize];
                    out.emit(Output::Rollup(RollupRow {
                        series,
                        level: i as u8,
                        window_start: start,
                        window_end: start + width,
                        agg,
                    }));
                    if let Some(cw) = coarse_window.as_mut() {
                        cw.slot(series).merge(&agg);
                    }
                }
                window.reset();
                level.spare.push(window);
            }
        }
        self.refresh_next_close();
    }

    fn refresh_next_close(&mut self) {
        self.next_close = self
            .levels
            .iter()
            .filter_map(|l| l.open.first_key_value().map(|(s, _)| s + l.resolution.width_ms))
            .min()
            .unwrap_or(i64::MAX);
    }
}

impl Stage for RollupStage {
    fn name(&self) -> &'static str {
        "rollup"
    }

    #[inline]
    fn process(&mut self, input: Input<'_>, ctx: Context, out: &mut Collector) {
        if let Input::Point(p) = input {
            self.add_point(p.series, p.ts, p.value, ctx, out);
        }
    }

    #[inline]
    fn on_watermark(&mut self, ctx: Context, out: &mut Collector) {
        if ctx.watermark >= self.next_close {
            self.close_until(ctx.watermark, ctx.offset, out);
        }
    }

    fn set_replaying(&mut self, replaying: bool) {
        self.replaying = replaying;
        if !replaying {
            self.seeded = false;
        }
    }

    fn replay_start(&self) -> Option<ReplayPoint> {
        self.levels
            .iter()
            .flat_map(|l| l.open.values())
            .min_by_key(|w| w.first_offset)
            .map(|w| ReplayPoint {
                offset: w.first_offset,
                watermark: w.first_watermark,
            })
    }

    fn coarse(&self) -> Option<&dyn CoarseState> {
        Some(self)
    }

    fn coarse_mut(&mut self) -> Option<&mut dyn CoarseState> {
        Some(self)
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let levels = self
            .levels
            .iter()
            .map(|l| {
                l.open
                    .iter()
                    .map(|(&start, w)| WindowSnapshot {
                        start,
                        first_offset: w.first_offset,
                        first_watermark: w.first_watermark,
                        rows_from: w.rows_from,
                        aggs: w.touched.iter().map(|&s| (s, w.aggs[s as usize])).collect(),
                    })
                    .collect()
            })
            .collect();
        bincode::encode_to_vec(&RollupSnapshot { levels }, bincode::config::standard()).ok()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let (snapshot, _): (RollupSnapshot, usize) =
            bincode::decode_from_slice(bytes, crate::stage::SNAPSHOT_DECODE)
                .map_err(|e| RestoreError::Corrupt(e.to_string()))?;
        if snapshot.levels.len() != self.levels.len() {
            return Err(RestoreError::OtherSetup {
                found: format!("{} rollup levels", snapshot.levels.len()),
                expected: format!("{} rollup levels", self.levels.len()),
            });
        }
        for (level, windows) in self.levels.iter_mut().zip(snapshot.levels) {
            level.open.clear();
            for w in windows {
                let first = ReplayPoint {
                    offset: w.first_offset,
                    watermark: w.first_watermark,
                };
                let window = level.window(w.start, first);
                window.rows_from = w.rows_from;
                for (series, agg) in w.aggs {
                    window.slot(series).merge(&agg);
                }
            }
        }
        self.refresh_next_close();
        Ok(())
    }
}

impl CoarseState for RollupStage {
    fn fine_replay_start(&self) -> Option<ReplayPoint> {
        self.levels[0]
            .open
            .values()
            .min_by_key(|w| w.first_offset)
            .map(|w| ReplayPoint {
                offset: w.first_offset,
                watermark: w.first_watermark,
            })
    }

    fn locate_restored_rows(&mut self, topic_from: Option<i64>) {
        for w in self.levels.iter_mut().skip(1).flat_map(|l| l.open.values_mut()) {
            if let RowsFrom::Trigger(_) = w.rows_from {
                w.rows_from = topic_from.map_or(RowsFrom::Unknown, RowsFrom::Topic);
            }
        }
    }

    fn coarse_sources(&self) -> CoarseSources {
        let mut sources = CoarseSources::default();
        for (&start, w) in self.levels.iter().skip(1).flat_map(|l| l.open.iter()) {
            sources.oldest_start = Some(sources.oldest_start.map_or(start, |s| s.min(start)));
            match w.rows_from {
                RowsFrom::Unknown => sources.unknown = true,
                RowsFrom::Trigger(t) => sources.trigger = Some(sources.trigger.map_or(t, |m| m.min(t))),
                RowsFrom::Topic(o) => sources.topic = Some(sources.topic.map_or(o, |m| m.min(o))),
            }
        }
        sources
    }

    fn seed(&mut self, rows: &[RollupRow], watermark: i64, topic_from: i64, raw: ReplayPoint) -> usize {
        let mut merged = 0;
        for row in rows {
            let Some(coarse) = self.levels.get_mut(row.level as usize + 1) else {
                continue;
            };
            let start = coarse.resolution.window_start(row.window_start);
            // Only fine windows closed before the plan, in coarse windows still open then.
            if row.window_end > watermark || start + coarse.resolution.width_ms <= watermark {
                continue;
            }
            // Should the topic be unreadable at the next restart, a raw replay from the
            // plan's full replay start still rebuilds these windows.
            let w = coarse.window(start, raw);
            w.rows_from = RowsFrom::Topic(topic_from);
            w.slot(row.series).merge(&row.agg);
            merged += 1;
        }
        // In this mode the topic holds every fine window closed before the plan, so the
        // replay must not merge them again, whether or not any row was found.
        self.seeded = true;
        self.refresh_next_close();
        merged
    }
}

/// What a checkpoint keeps of a [`RollupStage`]: the open windows of every level.
#[derive(bincode::Encode, bincode::Decode)]
struct RollupSnapshot {
    levels: Vec<Vec<WindowSnapshot>>,
}

#[derive(bincode::Encode, bincode::Decode)]
struct WindowSnapshot {
    start: i64,
    first_offset: i64,
    first_watermark: i64,
    rows_from: RowsFrom,
    aggs: Vec<(SeriesId, Agg)>,
}
