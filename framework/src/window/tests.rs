use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::record::{Point, exact_sum};

const MIN: i64 = 60_000;

fn levels() -> Vec<Resolution> {
    vec![
        Resolution::new(5 * MIN, "5m"),
        Resolution::new(60 * MIN, "1h"),
        Resolution::new(1440 * MIN, "1d"),
    ]
}

/// Drives a rollup stage the way the pipeline does: watermark = max ts − grace.
struct Driver {
    stage: RollupStage,
    grace: i64,
    max_ts: i64,
    watermark: i64,
    out: Collector,
}

impl Driver {
    fn new(grace: i64) -> Self {
        Self {
            stage: RollupStage::new(levels()),
            grace,
            max_ts: i64::MIN,
            watermark: i64::MIN,
            out: Collector::new(),
        }
    }

    fn push(&mut self, series: SeriesId, ts: i64, value: f64, offset: i64) {
        let p = Point { series, ts, value };
        let ctx = Context {
            offset,
            watermark: self.watermark,
        };
        self.stage.process(Input::Point(&p), ctx, &mut self.out);
        self.max_ts = self.max_ts.max(ts);
        let wm = self.max_ts - self.grace;
        if wm > self.watermark {
            self.watermark = wm;
            self.stage.on_watermark(
                Context {
                    offset,
                    watermark: wm,
                },
                &mut self.out,
            );
        }
    }

    fn finish(&mut self, until: i64) {
        self.stage.on_watermark(
            Context {
                offset: i64::MAX,
                watermark: until,
            },
            &mut self.out,
        );
    }

    fn rollups(&self) -> BTreeMap<(u8, SeriesId, i64), Agg> {
        let mut map = BTreeMap::new();
        for o in self.out.as_slice() {
            if let Output::Rollup(r) = o {
                let prev = map.insert((r.level, r.series, r.window_start), r.agg);
                assert!(prev.is_none(), "window emitted twice: {r:?}");
                assert_eq!(r.window_end - r.window_start, levels()[r.level as usize].width_ms);
            }
        }
        map
    }

    fn late_offsets(&self) -> Vec<i64> {
        self.out
            .as_slice()
            .iter()
            .filter_map(|o| match o {
                Output::Late { offset, .. } => Some(*offset),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn the_exact_sum_is_exact_where_naive_summation_is_not() {
    assert_eq!(exact_sum(&[0.1; 10]), 1.0);
    assert_ne!([0.1f64; 10].iter().sum::<f64>(), 1.0);
    assert_eq!(exact_sum(&[1e100, 1.0, -1e100, 1e-3]), 1.001);
    assert_eq!(exact_sum(&[]), 0.0);
}

/// Every window's raw values, per level.
fn window_values(records: &[(SeriesId, i64, f64)]) -> BTreeMap<(u8, SeriesId, i64), Vec<f64>> {
    let mut map: BTreeMap<(u8, SeriesId, i64), Vec<f64>> = BTreeMap::new();
    for (level, res) in levels().iter().enumerate() {
        for &(s, ts, v) in records {
            map.entry((level as u8, s, res.window_start(ts)))
                .or_default()
                .push(v);
        }
    }
    map
}

/// Batch oracle: every level computed directly from the raw records.
fn oracle(records: &[(SeriesId, i64, f64)]) -> BTreeMap<(u8, SeriesId, i64), Agg> {
    let mut map: BTreeMap<(u8, SeriesId, i64), Agg> = BTreeMap::new();
    for (level, res) in levels().iter().enumerate() {
        for &(s, ts, v) in records {
            map.entry((level as u8, s, res.window_start(ts)))
                .or_default()
                .add(v);
        }
    }
    map
}

fn assert_same(actual: &BTreeMap<(u8, SeriesId, i64), Agg>, expected: &BTreeMap<(u8, SeriesId, i64), Agg>) {
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "windows differ"
    );
    for (k, e) in expected {
        let a = &actual[k];
        assert_eq!(a.count, e.count, "{k:?}");
        assert_eq!(a.min, e.min, "{k:?}");
        assert_eq!(a.max, e.max, "{k:?}");
        let tolerance = 1e-12 * e.sum().abs().max(1.0);
        assert!(
            (a.sum() - e.sum()).abs() <= tolerance,
            "{k:?}: {} vs {}",
            a.sum(),
            e.sum()
        );
    }
}

#[test]
fn windows_align_to_the_epoch_and_close_on_the_watermark() {
    let mut d = Driver::new(60_000);
    let t0 = 1_732_379_700_000; // a 5m boundary
    d.push(0, t0 + 1, 1.0, 0);
    d.push(0, t0 + 299_999, 3.0, 1);
    d.push(0, t0 + 300_000, 10.0, 2); // next window; watermark t0 + 240_000
    assert!(d.rollups().is_empty(), "closed before grace elapsed");
    d.push(0, t0 + 360_000, 10.0, 3); // watermark reaches t0 + 300_000
    let r = d.rollups();
    let agg = r[&(0, 0, t0)];
    assert_eq!(agg.count, 2);
    assert_eq!(agg.sum(), 4.0);
    assert_eq!(agg.avg(), 2.0);
    assert_eq!((agg.min, agg.max), (1.0, 3.0));
}

#[test]
fn late_records_are_reported_not_merged() {
    let mut d = Driver::new(0);
    d.push(0, 0, 1.0, 0);
    d.push(0, 10 * MIN, 1.0, 1); // closes [0, 5m)
    d.push(0, 2 * MIN, 100.0, 2); // late for [0, 5m)
    assert_eq!(d.late_offsets(), vec![2]);
    assert_eq!(d.rollups()[&(0, 0, 0)].count, 1);
}

#[test]
fn coarse_window_closes_even_without_a_fine_window_at_its_end() {
    let mut d = Driver::new(0);
    d.push(0, 10 * MIN, 2.0, 0);
    d.push(0, 3 * 60 * MIN, 5.0, 1); // jumps past the end of hour 0
    let r = d.rollups();
    assert_eq!(r[&(1, 0, 0)].count, 1);
    assert!(!r.contains_key(&(1, 0, 3 * 60 * MIN)));
}

#[test]
fn replay_start_is_the_first_offset_of_an_open_window() {
    let mut d = Driver::new(0);
    d.push(0, 0, 1.0, 10);
    d.push(1, MIN, 1.0, 11);
    assert_eq!(d.stage.replay_start().map(|r| r.offset), Some(10));
    d.push(0, 5 * MIN, 1.0, 12); // closes [0,5m), but the 1h and 1d windows hold offset 10
    assert_eq!(d.stage.replay_start().map(|r| r.offset), Some(10));
}

fn arrival_order(records: &mut [(SeriesId, i64, f64)], jitter: &[i64]) {
    let mut keyed: Vec<(i64, usize)> = records
        .iter()
        .zip(jitter)
        .enumerate()
        .map(|(i, (r, j))| (r.1 + j, i))
        .collect();
    keyed.sort();
    let copy = records.to_vec();
    for (slot, (_, i)) in keyed.into_iter().enumerate() {
        records[slot] = copy[i];
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Streaming windows over input shuffled within the grace period equal a batch
    /// computation over the same records, at every level (so the cascade is exact too).
    #[test]
    fn streaming_equals_batch_oracle(
        raw in prop::collection::vec((0u32..20, 0i64..(3 * 1440 * MIN), -1000i32..1000), 1..2_000),
        jitter_seed in any::<u64>(),
        grace in 1i64..(10 * MIN),
        dyadic in any::<bool>(),
    ) {
        let mut records: Vec<(SeriesId, i64, f64)> = raw
            .iter()
            .map(|&(s, ts, v)| {
                let value = if dyadic { v as f64 / 8.0 } else { v as f64 * 0.1 + 1e-3 * (ts % 7) as f64 };
                (s, ts, value)
            })
            .collect();
        let mut x = jitter_seed | 1;
        let jitter: Vec<i64> = records
            .iter()
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % grace as u64) as i64
            })
            .collect();
        arrival_order(&mut records, &jitter);
        let mut d = Driver::new(grace);
        for (offset, &(s, ts, v)) in records.iter().enumerate() {
            d.push(s, ts, v, offset as i64);
        }
        d.finish(i64::MAX / 2);
        prop_assert!(d.late_offsets().is_empty());
        prop_assert_eq!(d.stage.open_windows(), 0);
        prop_assert_eq!(d.stage.replay_start(), None);
        let actual = d.rollups();
        let expected = oracle(&records);
        if dyadic {
            // Every partial sum is exact: the cascade must match bit for bit.
            for (k, e) in &expected {
                prop_assert_eq!(actual.get(k).map(|a| a.sum()), Some(e.sum()));
            }
        }
        assert_same(&actual, &expected);
        // At every level, through the cascade and in any arrival order, each sum is
        // within one unit in the last place of the exact sum (compensated summation's
        // bound; a plain running sum is off by up to n·u·Σ|x|, far more).
        for (k, values) in window_values(&records) {
            let exact = exact_sum(&values);
            let n = values.len() as f64;
            let magnitude: f64 = values.iter().map(|v| v.abs()).sum();
            let tolerance = (exact.abs().next_up() - exact.abs()) + 2.0 * n * n * f64::EPSILON * f64::EPSILON * magnitude;
            let got = actual.get(&k).map(Agg::sum);
            prop_assert!(
                got.is_some_and(|g| (g - exact).abs() <= tolerance),
                "{:?}: {:?} vs exact {} (tolerance {:e})", k, got, exact, tolerance
            );
        }
    }

    /// Records beyond the grace period are reported late and left out; everything else
    /// still matches the oracle built from the on-time records.
    #[test]
    fn late_records_are_excluded_exactly(
        raw in prop::collection::vec((0u32..5, 0i64..(6 * 60 * MIN), -100i32..100, any::<bool>()), 1..500),
    ) {
        let grace = MIN;
        let mut sorted = raw.clone();
        sorted.sort_by_key(|r| r.1);
        let mut d = Driver::new(grace);
        let mut on_time = Vec::new();
        let mut expected_late = Vec::new();
        let mut offset = 0;
        for &(s, ts, v, send_late) in &sorted {
            d.push(s, ts, v as f64, offset);
            on_time.push((s, ts, v as f64));
            offset += 1;
            if send_late && ts >= 30 * MIN {
                // A copy from 30 minutes ago: its 5m window closed long ago.
                d.push(s, ts - 30 * MIN, 1.0, offset);
                expected_late.push(offset);
                offset += 1;
            }
        }
        d.finish(i64::MAX / 2);
        prop_assert_eq!(d.late_offsets(), expected_late);
        assert_same(&d.rollups(), &oracle(&on_time));
    }
}
