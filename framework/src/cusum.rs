//! Two-sided Page CUSUM per series on standardised values.
//!
//! Each value is standardised against the running mean and standard deviation of the
//! values before it (Welford; variance divided by n). After `warmup` values:
//!
//! ```text
//! S+ = max(0, S+ + z - k)      S- = max(0, S- - z - k)
//! ```
//!
//! and an alarm is raised when either side exceeds `h`. Both `k` and `h` are in standard
//! deviations. After an alarm both sums reset to zero and, by default, the baseline
//! restarts from the alarming value so a step change is reported once, not every few
//! points for as long as the new level lasts.

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::record::{Anomaly, Direction, SeriesId};
use crate::stage::{Collector, Context, Input, Output, ReplayPoint, RestoreError, Stage, Subscription};

/// CUSUM change-point detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CusumConfig {
    /// Run the CUSUM stage.
    pub enabled: bool,
    /// "raw" for every point, or a rollup level (e.g. "5m") to watch window averages.
    pub input: String,
    /// Slack per observation, in standard deviations.
    pub k: f64,
    /// Alarm threshold, in standard deviations.
    pub h: f64,
    /// Observations per series before any alarm.
    pub warmup: u64,
    /// Floor for the standard deviation of flat series.
    pub min_stddev: f64,
    /// Restart the baseline after an alarm so a step is reported once.
    pub reset_baseline: bool,
    /// Inputs per partition replayed after a restart without a local checkpoint so the
    /// baselines are warm again (outputs suppressed); 0 replays nothing for CUSUM.
    pub replay_lookback: usize,
    /// The same by event time; the replay covers both look-backs. "0s" = none.
    pub replay_lookback_time: HumanDuration,
}

/// Detector parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CusumParams {
    /// Slack per observation, in standard deviations.
    pub k: f64,
    /// Alarm threshold, in standard deviations.
    pub h: f64,
    /// Observations that only train the baseline before any alarm.
    pub warmup: u64,
    /// Floor for the standard deviation, so a flat series does not divide by zero.
    pub min_stddev: f64,
    /// Restart the baseline after an alarm (otherwise only the sums reset).
    pub reset_baseline: bool,
    /// Inputs per partition replayed after a restart without a local checkpoint, so the
    /// baselines are warm again; 0 replays nothing for CUSUM.
    pub replay_lookback: usize,
    /// Event time replayed for the same reason (ms, by the partition's watermark); the
    /// replay covers both look-backs. 0 = none.
    pub replay_lookback_ms: i64,
}

/// Time marks kept per look-back window: the replay start is at most this fraction of the
/// window earlier than needed, and memory stays fixed however fast records arrive.
const TIME_MARKS: i64 = 1024;

impl Default for CusumParams {
    fn default() -> Self {
        Self {
            k: 1.0,
            h: 5.0,
            warmup: 30,
            min_stddev: 1e-9,
            reset_baseline: true,
            replay_lookback: 100_000,
            replay_lookback_ms: 0,
        }
    }
}

/// Per-series detector state: a handful of numbers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, bincode::Encode, bincode::Decode,
)]
pub struct CusumState {
    pub n: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean (Welford's M2).
    pub m2: f64,
    pub pos: f64,
    pub neg: f64,
}

/// An alarm raised by [`CusumState::update`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alarm {
    pub direction: Direction,
    pub cusum: f64,
    pub mean: f64,
    pub stddev: f64,
}

impl CusumState {
    /// Population standard deviation of the values seen so far.
    pub fn stddev(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }

    #[inline]
    fn observe(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Feeds one value; returns an alarm if it completes a change.
    #[inline]
    pub fn update(&mut self, x: f64, p: &CusumParams) -> Option<Alarm> {
        let mut alarm = None;
        if self.n >= p.warmup.max(1) {
            let stddev = self.stddev().max(p.min_stddev);
            let z = (x - self.mean) / stddev;
            self.pos = (self.pos + z - p.k).max(0.0);
            self.neg = (self.neg - z - p.k).max(0.0);
            let fired = if self.pos > p.h {
                Some((Direction::Up, self.pos))
            } else if self.neg > p.h {
                Some((Direction::Down, self.neg))
            } else {
                None
            };
            if let Some((direction, cusum)) = fired {
                alarm = Some(Alarm {
                    direction,
                    cusum,
                    mean: self.mean,
                    stddev: self.stddev(),
                });
                self.pos = 0.0;
                self.neg = 0.0;
                if p.reset_baseline {
                    *self = CusumState::default();
                }
            }
        }
        self.observe(x);
        alarm
    }
}

/// The CUSUM stage, on raw points or on the averages of one rollup level.
#[derive(Debug)]
pub struct CusumStage {
    params: CusumParams,
    subscription: Subscription,
    states: Vec<CusumState>,
    /// Source offsets (and watermarks) of the last `replay_lookback` distinct inputs,
    /// oldest first.
    recent: std::collections::VecDeque<(i64, i64)>,
    /// (offset, watermark) where the watermark first reached each step of the time
    /// look-back, oldest first; the first one is at or before the window's start.
    marks: std::collections::VecDeque<(i64, i64)>,
}

/// What a checkpoint keeps of a [`CusumStage`].
#[derive(bincode::Encode, bincode::Decode)]
struct CusumSnapshot {
    states: Vec<(u32, CusumState)>,
    recent: Vec<(i64, i64)>,
    marks: Vec<(i64, i64)>,
}

impl CusumStage {
    pub fn new(params: CusumParams, subscription: Subscription) -> Self {
        Self {
            params,
            subscription,
            states: Vec::new(),
            recent: std::collections::VecDeque::new(),
            marks: std::collections::VecDeque::new(),
        }
    }

    #[inline]
    fn remember(&mut self, ctx: Context) {
        self.remember_time(ctx);
        let lookback = self.params.replay_lookback;
        if lookback == 0 || self.recent.back().is_some_and(|r| r.0 == ctx.offset) {
            return;
        }
        if self.recent.len() == lookback {
            self.recent.pop_front();
        }
        self.recent.push_back((ctx.offset, ctx.watermark));
    }

    #[inline]
    fn remember_time(&mut self, ctx: Context) {
        let window = self.params.replay_lookback_ms;
        if window <= 0 {
            return;
        }
        let step = (window / TIME_MARKS).max(1);
        if self
            .marks
            .back()
            .is_none_or(|m| ctx.watermark >= m.1.saturating_add(step))
        {
            self.marks.push_back((ctx.offset, ctx.watermark));
        }
        // Drop the oldest mark while the next one still starts the window.
        let start = ctx.watermark.saturating_sub(window);
        while self.marks.len() >= 2 && self.marks[1].1 <= start {
            self.marks.pop_front();
        }
    }

    #[inline]
    fn state(&mut self, series: SeriesId) -> &mut CusumState {
        let i = series as usize;
        if i >= self.states.len() {
            self.states
                .resize((i + 1).next_power_of_two(), CusumState::default());
        }
        &mut self.states[i]
    }
}

impl Stage for CusumStage {
    fn name(&self) -> &'static str {
        "cusum"
    }

    fn subscription(&self) -> Subscription {
        self.subscription
    }

    #[inline]
    fn process(&mut self, input: Input<'_>, ctx: Context, out: &mut Collector) {
        let (series, ts, value) = match input {
            Input::Point(p) => {
                // Only raw points: a rollup input arrives with the watermark after its
                // record, which is not a valid replay point.
                self.remember(ctx);
                (p.series, p.ts, p.value)
            }
            Input::Rollup(r) => (r.series, r.window_start, r.agg.avg()),
        };
        let params = self.params;
        if let Some(alarm) = self.state(series).update(value, &params) {
            out.emit(Output::Anomaly(Anomaly {
                series,
                ts,
                value,
                direction: alarm.direction,
                cusum: alarm.cusum,
                threshold: params.h,
                mean: alarm.mean,
                stddev: alarm.stddev,
            }));
        }
    }

    /// The look-back: a restarted detector re-learns its baselines from these inputs.
    fn replay_start(&self) -> Option<ReplayPoint> {
        self.recent
            .front()
            .into_iter()
            .chain(self.marks.front())
            .min_by_key(|r| r.0)
            .map(|&(offset, watermark)| ReplayPoint { offset, watermark })
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        let snapshot = CusumSnapshot {
            states: (self.states.iter().enumerate())
                .filter(|(_, s)| s.n > 0)
                .map(|(i, s)| (i as u32, *s))
                .collect(),
            recent: self.recent.iter().copied().collect(),
            marks: self.marks.iter().copied().collect(),
        };
        bincode::encode_to_vec(&snapshot, bincode::config::standard()).ok()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let (snapshot, _): (CusumSnapshot, usize) =
            bincode::decode_from_slice(bytes, crate::stage::SNAPSHOT_DECODE)
                .map_err(|e| RestoreError::Corrupt(e.to_string()))?;
        self.states.clear();
        for (series, state) in snapshot.states {
            *self.state(series) = state;
        }
        self.recent = snapshot.recent.into();
        self.marks = snapshot.marks.into();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference: recompute mean and population variance from scratch for every value.
    fn naive_alarms(values: &[f64], p: &CusumParams) -> Vec<(usize, Direction)> {
        let mut alarms = Vec::new();
        let mut baseline: Vec<f64> = Vec::new();
        let (mut pos, mut neg) = (0.0f64, 0.0f64);
        for (i, &x) in values.iter().enumerate() {
            if baseline.len() as u64 >= p.warmup.max(1) {
                let n = baseline.len() as f64;
                let mean = baseline.iter().sum::<f64>() / n;
                let var = baseline.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let sd = var.sqrt().max(p.min_stddev);
                let z = (x - mean) / sd;
                pos = (pos + z - p.k).max(0.0);
                neg = (neg - z - p.k).max(0.0);
                let fired = if pos > p.h {
                    Some(Direction::Up)
                } else if neg > p.h {
                    Some(Direction::Down)
                } else {
                    None
                };
                if let Some(d) = fired {
                    alarms.push((i, d));
                    pos = 0.0;
                    neg = 0.0;
                    if p.reset_baseline {
                        baseline.clear();
                    }
                }
            }
            baseline.push(x);
        }
        alarms
    }

    fn alarms(values: &[f64], p: &CusumParams) -> Vec<(usize, Direction)> {
        let mut s = CusumState::default();
        values
            .iter()
            .enumerate()
            .filter_map(|(i, &x)| s.update(x, p).map(|a| (i, a.direction)))
            .collect()
    }

    /// Deterministic pseudo-normal noise (sum of uniforms) so tests need no RNG crate.
    fn noise(seed: u64, n: usize) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                let mut acc = 0.0;
                for _ in 0..12 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    acc += (x >> 11) as f64 / (1u64 << 53) as f64;
                }
                acc - 6.0
            })
            .collect()
    }

    #[test]
    fn welford_matches_population_statistics() {
        let mut s = CusumState::default();
        let values = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        for v in values {
            s.observe(v);
        }
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.stddev() - 2.0).abs() < 1e-12);
    }

    #[test]
    fn flags_an_upward_step_once_with_the_baseline() {
        let p = CusumParams::default();
        let mut values: Vec<f64> = noise(1, 200).iter().map(|n| 10.0 + n).collect();
        values.extend(noise(2, 200).iter().map(|n| 16.0 + n));
        let mut s = CusumState::default();
        let mut found = Vec::new();
        for (i, &x) in values.iter().enumerate() {
            if let Some(a) = s.update(x, &p) {
                found.push((i, a));
            }
        }
        let (first_at, first) = found.first().expect("the step is flagged");
        assert!((200..210).contains(first_at), "flagged at {first_at}");
        assert_eq!(first.direction, Direction::Up);
        assert!((first.mean - 10.0).abs() < 0.5, "baseline mean {}", first.mean);
        assert!(first.cusum > p.h);
        assert_eq!(found.len(), 1, "one alarm per change: {found:?}");
    }

    #[test]
    fn flags_a_downward_step() {
        let p = CusumParams::default();
        let mut values: Vec<f64> = noise(3, 100).iter().map(|n| 50.0 + n).collect();
        values.extend(noise(4, 50).iter().map(|n| 40.0 + n));
        let found = alarms(&values, &p);
        assert_eq!(found.first().map(|a| a.1), Some(Direction::Down));
    }

    #[test]
    fn no_alarm_during_warmup() {
        let p = CusumParams {
            warmup: 50,
            ..CusumParams::default()
        };
        let mut values = vec![1.0; 10];
        values.extend([1000.0; 30]);
        assert!(alarms(&values, &p).is_empty());
    }

    proptest! {
        #[test]
        fn matches_the_naive_reference(seed in 0u64..10_000, shift in -8.0f64..8.0, at in 40usize..160) {
            let p = CusumParams::default();
            let mut values = noise(seed, 200);
            for v in &mut values[at..] {
                *v += shift;
            }
            prop_assert_eq!(alarms(&values, &p), naive_alarms(&values, &p));
        }

        #[test]
        fn quiet_on_stationary_noise(seed in 0u64..10_000, level in -1e3f64..1e3, scale in 0.01f64..100.0) {
            // With k = 1 and h = 8 the in-control average run length is in the tens of
            // millions: 2,000 points of stationary noise must not alarm.
            let p = CusumParams { k: 1.0, h: 8.0, ..CusumParams::default() };
            let values: Vec<f64> = noise(seed, 2_000).iter().map(|n| level + scale * n).collect();
            prop_assert!(alarms(&values, &p).is_empty());
        }

        #[test]
        fn flags_injected_steps(seed in 0u64..10_000, level in -1e3f64..1e3, scale in 0.01f64..100.0, up in proptest::bool::ANY) {
            // h = 8: a false alarm shortly before the step would restart the baseline
            // and hide the step inside warm-up; at h = 8 that has negligible probability.
            let p = CusumParams { h: 8.0, ..CusumParams::default() };
            let step = if up { 4.0 * scale } else { -4.0 * scale };
            let mut values: Vec<f64> = noise(seed, 300).iter().map(|n| level + scale * n).collect();
            values.extend(noise(seed + 1, 100).iter().map(|n| level + step + scale * n));
            let found = alarms(&values, &p);
            let hit = found.iter().find(|(i, _)| *i >= 300);
            prop_assert!(hit.is_some(), "no alarm after the step: {:?}", found);
            let (i, d) = hit.copied().unwrap_or((0, Direction::Up));
            prop_assert!(i < 320, "late alarm at {}", i);
            prop_assert_eq!(d, if up { Direction::Up } else { Direction::Down });
        }
    }
}
