//! Data-set points and the rollups computed directly from them, to check the apps'
//! rollups against.

use std::collections::BTreeMap;

use tributary::record::exact_sum;

/// A point for data sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pt<'a> {
    pub series: &'a str,
    pub ts: i64,
    pub value: f64,
}

pub fn point_json(series: &str, ts: i64, value: f64) -> String {
    serde_json::json!({"series": series, "ts": ts, "value": value}).to_string()
}

/// Expected aggregates of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// Rollups computed directly from raw records: (series, resolution, window_start).
pub fn oracle(points: &[Pt<'_>], levels: &[(&str, i64)]) -> BTreeMap<(String, String, i64), Expected> {
    let mut grouped: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
    for p in points {
        for (label, width) in levels {
            let start = p.ts.div_euclid(*width) * width;
            grouped
                .entry((p.series.to_owned(), (*label).to_owned(), start))
                .or_default()
                .push(p.value);
        }
    }
    grouped
        .into_iter()
        .map(|(k, vs)| {
            let e = Expected {
                count: vs.len() as u64,
                sum: exact_sum(&vs),
                min: vs.iter().copied().fold(f64::INFINITY, f64::min),
                max: vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            };
            (k, e)
        })
        .collect()
}
