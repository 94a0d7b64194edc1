//! A restart, modelled in the synchronous core: run a pipeline up to a crash point whose
//! plan was committed, rebuild a fresh one from that plan (or from a checkpoint) and run
//! it to the end. Together the two runs must emit exactly what one uninterrupted run
//! emits: every window once, with the same values.

use proptest::prelude::*;

use crate::codec::Format;
use crate::cusum::CusumParams;
use crate::pipeline::{Pipeline, PipelineSpec, VecSink};
use crate::replay::{Plan, StateSource, decide};
use crate::stage::Subscription;
use crate::window::Resolution;

fn spec(cusum: bool) -> PipelineSpec {
    PipelineSpec {
        input_format: Format::Json,
        rollup: Some(vec![
            Resolution::new(60_000, "1m"),
            Resolution::new(300_000, "5m"),
            Resolution::new(900_000, "15m"),
        ]),
        cusum: cusum.then_some((
            CusumParams {
                warmup: 5,
                ..CusumParams::default()
            },
            Subscription::Points,
        )),
        grace_ms: 20_000,
    }
}

/// Records as (key, JSON value): a few series, event time moving forward with disorder
/// up to `jitter` (some of it beyond the grace, so some records are late).
fn records(seed: u64, n: usize, jitter: i64) -> Vec<(String, String)> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|i| {
            let series = format!("s{}", next() % 4);
            let ts = i as i64 * 1_000 - (next() % jitter.max(1) as u64) as i64;
            let value = (next() % 1000) as f64 / 7.0;
            let json = format!(r#"{{"series":"{series}","ts":{ts},"value":{value}}}"#);
            (series, json)
        })
        .collect()
}

fn run(p: &mut Pipeline, recs: &[(String, String)], from: usize, to: usize, sink: &mut VecSink) {
    for (offset, (key, value)) in recs.iter().enumerate().take(to).skip(from) {
        p.process(Some(key.as_bytes()), Some(value.as_bytes()), offset as i64, sink);
    }
}

/// Rollups by series name (interned ids differ between a pipeline and its restart).
fn sorted_rollups(sink: &VecSink) -> Vec<String> {
    let mut v: Vec<String> = sink
        .rollups
        .iter()
        .map(|(name, res, r)| format!("{name} {res} {} {} {:?}", r.window_start, r.window_end, r.agg))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn restart_from_the_committed_plan_emits_each_window_exactly_once(
        seed in any::<u64>(), n in 50usize..600, crash in 0usize..600, jitter in 1i64..40_000,
    ) {
        let crash = crash.min(n);
        let recs = records(seed, n, jitter);
        let mut whole = VecSink::default();
        run(&mut Pipeline::new(&spec(false)), &recs, 0, n, &mut whole);

        let mut before = VecSink::default();
        let mut first = Pipeline::new(&spec(false));
        run(&mut first, &recs, 0, crash, &mut before);
        let committed = first.plan(crash as i64);

        let start = decide(Some(crash as i64), Some(committed), None);
        prop_assert_eq!(start.source, StateSource::Plan(committed));
        let mut second = Pipeline::new(&spec(false));
        second.restore_watermark(committed.watermark);
        second.set_replay_until(start.replay_until);
        let mut after = VecSink::default();
        run(&mut second, &recs, start.seek.unwrap_or(0) as usize, n, &mut after);

        let mut combined = sorted_rollups(&before);
        combined.extend(sorted_rollups(&after));
        combined.sort();
        prop_assert_eq!(combined, sorted_rollups(&whole));
        prop_assert_eq!(before.late.len() + after.late.len(), whole.late.len());
    }

    #[test]
    fn restart_from_a_checkpoint_continues_exactly_including_cusum(
        seed in any::<u64>(), n in 50usize..600, cut in 0usize..600, jitter in 1i64..40_000,
    ) {
        let cut = cut.min(n);
        let recs = records(seed, n, jitter);
        let mut whole = VecSink::default();
        run(&mut Pipeline::new(&spec(true)), &recs, 0, n, &mut whole);

        let mut first = Pipeline::new(&spec(true));
        let mut out = VecSink::default();
        run(&mut first, &recs, 0, cut, &mut out);
        let snapshot = first.snapshot();
        let mut second = Pipeline::new(&spec(true));
        second.restore(&snapshot).map_err(TestCaseError::fail)?;
        run(&mut second, &recs, cut, n, &mut out);

        prop_assert_eq!(sorted_rollups(&out), sorted_rollups(&whole));
        prop_assert_eq!(format!("{:?}", out.anomalies), format!("{:?}", whole.anomalies));
    }
}

#[test]
fn a_checkpoint_of_another_setup_is_refused() {
    let mut p = Pipeline::new(&spec(true));
    let recs = records(7, 100, 1_000);
    run(&mut p, &recs, 0, 100, &mut VecSink::default());
    let snapshot = p.snapshot();
    assert!(Pipeline::new(&spec(false)).restore(&snapshot).is_err());
    assert!(
        Pipeline::new(&spec(true))
            .restore(&snapshot[..snapshot.len() / 2])
            .is_err()
    );
}

#[test]
fn the_plan_reaches_back_to_the_oldest_open_window_and_cusum_lookback() {
    let mut p = Pipeline::new(&spec(false));
    let recs = records(3, 1_200, 1_000);
    run(&mut p, &recs, 0, 1_200, &mut VecSink::default());
    let plan = p.plan(1_200);
    // The 15m window open at the end began at event time 900 s, about offset 900.
    assert!((895..=905).contains(&plan.replay_start), "{plan:?}");
    assert_eq!(plan.next_offset, 1_200);
    assert!(
        (850_000..900_000).contains(&plan.watermark),
        "the watermark just before the replay start: {plan:?}"
    );

    let short = PipelineSpec {
        rollup: None,
        cusum: Some((
            CusumParams {
                replay_lookback: 50,
                ..CusumParams::default()
            },
            Subscription::Points,
        )),
        ..spec(false)
    };
    let mut d = Pipeline::new(&short);
    run(&mut d, &recs, 0, 1_200, &mut VecSink::default());
    assert_eq!(d.plan(1_200).replay_start, 1_150, "the last 50 inputs");
}

#[test]
fn an_operator_replay_re_emits_only_windows_the_replay_point_does_not_cut() {
    let recs = records(11, 900, 1);
    let mut whole = VecSink::default();
    run(&mut Pipeline::new(&spec(false)), &recs, 0, 900, &mut whole);
    let mut p = Pipeline::new(&spec(false));
    p.reemit_from_next_record();
    let mut replayed = VecSink::default();
    run(&mut p, &recs, 450, 900, &mut replayed);
    assert!(!replayed.rollups.is_empty());
    // Every re-emitted window equals the original one: none is partial.
    let original = sorted_rollups(&whole);
    for r in sorted_rollups(&replayed) {
        assert!(original.contains(&r), "partial or unknown window re-emitted: {r}");
    }
    // And each window that starts after the cut (450 s + grace) is re-emitted.
    let cut = 450_000 + 20_000;
    let expected = whole.rollups.iter().filter(|r| r.2.window_start >= cut).count();
    assert_eq!(replayed.rollups.len(), expected);
}

#[test]
fn an_operator_replay_cut_survives_a_restart_from_its_plan() {
    let recs = records(13, 900, 1);
    let mut whole = VecSink::default();
    run(&mut Pipeline::new(&spec(false)), &recs, 0, 900, &mut whole);
    let original = sorted_rollups(&whole);
    // Replay from 450, crash at 600 after a normal commit, restart from that plan.
    let mut p = Pipeline::new(&spec(false));
    p.reemit_from_next_record();
    let mut out = VecSink::default();
    run(&mut p, &recs, 450, 600, &mut out);
    let plan = p.plan(600);
    assert_eq!(plan.cut, Some(450_000 + 20_000));
    let mut q = Pipeline::new(&spec(false));
    q.restore_watermark(plan.watermark);
    q.restore_cut(plan.cut);
    q.set_replay_until(600);
    run(&mut q, &recs, plan.replay_start as usize, 900, &mut out);
    for r in sorted_rollups(&out) {
        assert!(
            original.contains(&r),
            "partial window emitted after the restart: {r}"
        );
    }
}

#[test]
fn requested_plans_survive_the_metadata_round_trip() {
    let p = Plan::requested(12);
    assert_eq!(Plan::decode(&p.encode()).map(|p| p.requested), Some(true));
}
