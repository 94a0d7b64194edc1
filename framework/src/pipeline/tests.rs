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
