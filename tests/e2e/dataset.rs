//! A data set with out-of-order records within grace, late records, bad records and a
//! far-future sentinel per series, plus what it must produce.

use std::collections::BTreeMap;

use harness::{Expected, Incoming, Outgoing, Pt, oracle, point_json};

/// Whether a window may appear more than once in the output (at-least-once after a crash:
/// only with identical values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    Refused,
    Identical,
}

pub const GRACE_MS: i64 = 60_000;
pub const LEVELS: [(&str, i64); 3] = [("5m", 300_000), ("1h", 3_600_000), ("1d", 86_400_000)];
const T0: i64 = 1_732_320_000_000; // a UTC day boundary
const SENTINEL_TS: i64 = T0 + 30 * 86_400_000;

pub struct DataSet {
    pub records: Vec<Outgoing>,
    /// Windows every rollup must match (sentinels' windows stay open and are excluded).
    pub expected: BTreeMap<(String, String, i64), Expected>,
    pub late: usize,
    pub bad: usize,
    pub partition_of: BTreeMap<String, i32>,
    /// Series whose level steps up by `STEP` partway, and the time of the first point at
    /// the new level: CUSUM must report each once.
    pub steps: BTreeMap<String, i64>,
}

/// The injected level shift: over 17 standard deviations of the uniform noise.
pub const STEP: f64 = 500.0;

/// `series` series over `hours` hours, one point every 20 s with up to 40 s of disorder,
/// a late copy every so often, a few bad records, then a sentinel per series.
pub fn build(series: usize, hours: i64, partitions: i32, seed: u64) -> DataSet {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let names: Vec<String> = (0..series).map(|i| format!("host-{i:03}/cpu.user")).collect();
    let partition_of: BTreeMap<String, i32> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), (i as i32) % partitions))
        .collect();
    // (arrival, series, ts, value, late): arrival order is event time plus disorder below
    // the grace period, merged across series as a partition would see them.
    let mut events: Vec<(i64, usize, i64, f64, bool)> = Vec::new();
    let mut steps = BTreeMap::new();
    let step = 20_000;
    let step_at = T0 + hours * 3_600_000 * 6 / 10;
    for (s, name) in names.iter().enumerate() {
        let mut ts = T0 + (s as i64 * 997) % step;
        let mut i = 0;
        while ts < T0 + hours * 3_600_000 {
            let mut value = ((next() % 100_000) as f64) / 1000.0 - 20.0 + s as f64;
            if s % 12 == 5 && ts >= step_at {
                steps.entry(name.clone()).or_insert(ts);
                value += STEP;
            }
            let arrival = ts + (next() % 40_000) as i64;
            events.push((arrival, s, ts, value, false));
            if i % 97 == 50 {
                // Arrives right after this point with a timestamp 11 minutes older than
                // it: by then the watermark has passed that record's 5m window. Its value
                // is an ordinary one, so CUSUM (which takes every point) sees no spike; a
                // window that took it would be off in its count.
                events.push((arrival + 1, s, ts - GRACE_MS - 600_000, value, true));
            }
            ts += step;
            i += 1;
        }
    }
    events.sort_by_key(|e| (e.0, e.1, e.4));
    let mut records = Vec::new();
    let mut on_time: Vec<Pt<'_>> = Vec::new();
    let mut late = 0;
    for &(_, s, ts, value, is_late) in &events {
        let name = &names[s];
        records.push(Outgoing {
            key: Some(name.clone()),
            value: Some(point_json(name, ts, value)),
            partition: Some(partition_of[name]),
        });
        if is_late {
            late += 1;
        } else {
            on_time.push(Pt {
                series: name,
                ts,
                value,
            });
        }
    }
    let first = &names[0];
    let nested = format!(
        r#"{{"series":"{first}","ts":{T0},"value":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let padded = format!(
        r#"{{"series":"{first}","ts":{T0},"value":1,"pad":"{}"}}"#,
        "x".repeat(100_000)
    );
    // (key, value): every one is dead-lettered with a reason, and nothing after it is lost.
    let bad_records: Vec<(Option<String>, String)> = vec![
        (
            Some(first.clone()),
            format!("{{\"series\":\"{first}\",\"ts\":{T0}"),
        ),
        (
            Some(first.clone()),
            format!("{{\"series\":\"{first}\",\"ts\":{T0},\"value\":\"high\"}}"),
        ),
        (Some(first.clone()), "not json at all".into()),
        (None, point_json(first, T0, 1.0)),
        // Hostile input: far future (year 2100), before 2000, the i64 limits, a value
        // too large to sum, one JSON cannot hold, deep nesting, a record over the size
        // limit, a key over it, an empty key, invalid UTF-8 in the value and the key.
        (Some(first.clone()), point_json(first, 4_102_444_800_000, 1.0)),
        (Some(first.clone()), point_json(first, 0, 1.0)),
        (Some(first.clone()), point_json(first, i64::MAX, 1.0)),
        (Some(first.clone()), point_json(first, i64::MIN, 1.0)),
        (Some(first.clone()), point_json(first, T0, 1e200)),
        (
            Some(first.clone()),
            format!(r#"{{"series":"{first}","ts":{T0},"value":1e400}}"#),
        ),
        (Some(first.clone()), nested),
        (Some(first.clone()), padded),
        (Some("k".repeat(70_000)), point_json(first, T0, 1.0)),
        (Some(String::new()), point_json(first, T0, 1.0)),
        (Some(first.clone()), "b64:/+7/".into()),
        (Some("b64:/w==".into()), point_json(first, T0, 1.0)),
    ];
    let bad = bad_records.len();
    for (key, value) in bad_records {
        records.push(Outgoing {
            key,
            value: Some(value),
            partition: Some(partition_of[first]),
        });
    }
    for name in &names {
        records.push(Outgoing {
            key: Some(name.clone()),
            value: Some(point_json(name, SENTINEL_TS, 0.0)),
            partition: Some(partition_of[name]),
        });
    }
    let expected = oracle(&on_time, &LEVELS);
    DataSet {
        records,
        expected,
        late,
        bad,
        partition_of,
        steps,
    }
}

/// Every injected step is reported once by CUSUM (duplicates only identical), going up,
/// within 5 minutes of its first point. Other alarms are not judged: the uniform noise
/// can drive a sum past the threshold now and then (CI: 5.33 > 5 on an ordinary value).
pub fn check_steps(data: &DataSet, anomalies: &[Incoming]) {
    for (series, at) in &data.steps {
        let seen: std::collections::BTreeSet<String> = anomalies
            .iter()
            .map(|a| a.json())
            .filter(|v| v["series"] == series.as_str())
            .filter(|v| {
                v["ts"]
                    .as_i64()
                    .is_some_and(|ts| (*at..at + 300_000).contains(&ts))
            })
            .map(|v| v.to_string())
            .collect();
        assert_eq!(
            seen.len(),
            1,
            "the step of {series} at {at} found {} times: {seen:?}",
            seen.len()
        );
        let v: harness::Value = serde_json::from_str(seen.first().expect("one")).expect("JSON");
        assert_eq!(v["direction"], "up", "the step of {series} at {at} found as {v}");
    }
}

/// Reads `rollups` until the oracle's windows are there, checks them with `app` still
/// running, then stops `app` gracefully (it must exit 0).
pub fn expect_rollups_then_stop(
    brokers: &str,
    rollups: &str,
    data: &DataSet,
    duplicates: Duplicates,
    app: &mut harness::Process,
) {
    let out = harness::py_consume(brokers, rollups, data.expected.len(), 180, 3.0);
    assert!(app.is_running(), "app died:\n{}", app.log_text());
    check_rollups(data, duplicates, &out);
    assert_eq!(
        app.terminate(std::time::Duration::from_secs(60)),
        Some(0),
        "{}",
        app.log_text()
    );
}

/// Every rollup equals the oracle and every oracle window is there.
pub fn check_rollups(data: &DataSet, duplicates: Duplicates, rollups: &[Incoming]) {
    let seen = check_emitted(data, duplicates, rollups);
    let missing: Vec<_> = data
        .expected
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} windows missing, e.g. {missing:?}",
        data.expected.keys().filter(|k| !seen.contains_key(*k)).count()
    );
}

/// Every rollup equals the oracle's window (whether or not all are there); returns the
/// windows seen.
pub fn check_emitted(
    data: &DataSet,
    duplicates: Duplicates,
    rollups: &[Incoming],
) -> BTreeMap<(String, String, i64), String> {
    let mut seen: BTreeMap<(String, String, i64), String> = BTreeMap::new();
    for r in rollups {
        let v = r.json();
        let series = v["series"].as_str().expect("series").to_owned();
        let key = (
            series.clone(),
            v["resolution"].as_str().expect("resolution").to_owned(),
            v["window_start"].as_i64().expect("start"),
        );
        assert_eq!(r.key.as_deref(), Some(series.as_str()), "rollup keyed by series");
        assert_eq!(
            r.partition, data.partition_of[&series],
            "rollup co-partitioned with its source"
        );
        let values = format!("{} {} {} {}", v["count"], v["min"], v["max"], v["sum"]);
        if let Some(before) = seen.insert(key.clone(), values.clone()) {
            assert!(
                duplicates == Duplicates::Identical,
                "window emitted twice: {key:?}"
            );
            assert_eq!(
                before, values,
                "window {key:?} emitted twice with different values"
            );
        }
        let Some(e) = data.expected.get(&key) else {
            // Only the sentinels' far-future windows are not in the oracle, and they never close.
            panic!("unexpected window {key:?}: {v}");
        };
        let width = LEVELS.iter().find(|l| l.0 == key.1).expect("level").1;
        assert_eq!(v["window_end"].as_i64(), Some(key.2 + width), "{key:?}");
        assert_eq!(v["count"].as_u64(), Some(e.count), "{key:?}");
        assert_eq!(v["min"].as_f64(), Some(e.min), "{key:?}");
        assert_eq!(v["max"].as_f64(), Some(e.max), "{key:?}");
        assert_eq!(v["sum"].as_f64(), Some(e.sum), "{key:?}");
        let avg = v["avg"].as_f64().expect("avg");
        let want = e.sum / e.count as f64;
        assert!(
            (avg - want).abs() <= 1e-9 * want.abs().max(1e-300),
            "{key:?}: avg {avg} vs {want}"
        );
    }
    seen
}
