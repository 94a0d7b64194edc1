//! A restart, modelled in the synchronous core: run a pipeline up to a crash point whose
//! plan was committed, rebuild a fresh one from that plan (or from a checkpoint) and run
//! it to the end. Together the two runs must emit exactly what one uninterrupted run
//! emits: every window once, with the same values.

use proptest::prelude::*;

use crate::codec::Format;
use crate::cusum::CusumParams;
use crate::pipeline::{CoarseDraft, Pipeline, PipelineSpec, ReadRollup, VecSink};
use crate::replay::idle::IDLE_CAPACITY;
use crate::replay::{CoarsePlan, Plan, StateSource, decide, first_read, replay_from};
use crate::stage::{ReplayPoint, RestoreError, Subscription};
use crate::window::Resolution;

pub(super) fn spec(cusum: bool) -> PipelineSpec {
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
        // Event times start at 0.
        limits: crate::limits::InputLimits::any_time(),
    }
}

/// Repeatable pseudo-random numbers from `seed` (the test data needs no better).
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Records as (key, JSON value): a few series, event time moving forward with disorder
/// up to `jitter` (some of it beyond the grace, so some records are late).
pub(super) fn records(seed: u64, n: usize, jitter: i64) -> Vec<(String, String)> {
    let mut next = xorshift(seed);
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

/// Where a live run finds its partition quiet and flushes it: before roughly one record in
/// a hundred, by up to 90 s past its watermark (the wall clock running ahead of event
/// time), so records up to that far behind are late afterwards.
fn idle_flushes(seed: u64, n: usize) -> Vec<(usize, i64)> {
    let mut next = xorshift(seed.rotate_left(17));
    (1..n)
        .filter_map(|i| {
            let r = next();
            r.is_multiple_of(100)
                .then_some((i, 1 + ((r >> 20) % 90_000) as i64))
        })
        .collect()
}

/// Like [`run`], live: flushed idle where `idle` says, as the worker would be.
fn run_live(
    p: &mut Pipeline,
    recs: &[(String, String)],
    from: usize,
    to: usize,
    sink: &mut VecSink,
    idle: &[(usize, i64)],
) {
    for offset in from..to {
        if let Some(&(_, ahead)) = idle.iter().find(|f| f.0 == offset)
            && p.watermark() > i64::MIN
        {
            p.advance_watermark(p.watermark() + ahead, offset as i64, sink);
        }
        run(p, recs, offset, offset + 1, sink);
    }
}

pub(super) fn run(p: &mut Pipeline, recs: &[(String, String)], from: usize, to: usize, sink: &mut VecSink) {
    for (offset, (key, value)) in recs.iter().enumerate().take(to).skip(from) {
        p.process(
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            offset as i64,
            None,
            sink,
        );
    }
}

/// Rollups by series name (interned ids differ between a pipeline and its restart).
pub(super) fn sorted_rollups(sink: &VecSink) -> Vec<String> {
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

    /// Idle flushes included: the rebuild applies the ones the plan recorded where the
    /// first run did, so records they made late stay late.
    #[test]
    fn restart_from_the_committed_plan_emits_each_window_exactly_once(
        seed in any::<u64>(), n in 50usize..600, crash in 0usize..600, jitter in 1i64..40_000,
    ) {
        let crash = crash.min(n);
        let recs = records(seed, n, jitter);
        let idle = idle_flushes(seed, n);
        let mut whole = VecSink::default();
        run_live(&mut Pipeline::new(&spec(false)), &recs, 0, n, &mut whole, &idle);

        let mut before = VecSink::default();
        let mut first = Pipeline::new(&spec(false));
        run_live(&mut first, &recs, 0, crash, &mut before, &idle);
        // Through Kafka's commit metadata.
        let committed = Plan::decode(&first.plan(crash as i64).encode()).expect("plan round trip");

        let start = decide(Some(crash as i64), Some(committed), None);
        prop_assert_eq!(start.source, StateSource::Plan(committed));
        let mut second = Pipeline::new(&spec(false));
        second.restore_watermark(committed.watermark);
        second.restore_idle(committed.idle);
        second.set_replay_until(start.replay_until);
        let mut after = VecSink::default();
        run(&mut second, &recs, start.seek.unwrap_or(0) as usize, crash, &mut after);
        run_live(&mut second, &recs, crash, n, &mut after, &idle);

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
        second
            .restore(&snapshot)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
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
    assert!(matches!(
        Pipeline::new(&spec(false)).restore(&snapshot),
        Err(RestoreError::OtherSetup { .. })
    ));
    assert!(matches!(
        Pipeline::new(&spec(true)).restore(&snapshot[..snapshot.len() / 2]),
        Err(RestoreError::Corrupt(_))
    ));
    // A length far beyond the bytes (a corrupt disk): an error, not an allocation that
    // aborts the process (found by tests/hostile_input.rs).
    let huge = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    assert!(matches!(
        Pipeline::new(&spec(true)).restore(&huge),
        Err(RestoreError::Corrupt(_))
    ));
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

    // By event time: the last 120 s of watermark, whatever the input rate.
    let by_time = PipelineSpec {
        rollup: None,
        cusum: Some((
            CusumParams {
                replay_lookback: 0,
                replay_lookback_ms: 120_000,
                ..CusumParams::default()
            },
            Subscription::Points,
        )),
        ..spec(false)
    };
    let mut t = Pipeline::new(&by_time);
    run(&mut t, &recs, 0, 1_200, &mut VecSink::default());
    let plan = t.plan(1_200);
    assert!(
        plan.watermark <= t.watermark() - 120_000,
        "the replay covers the whole window: {plan:?}"
    );
    // One record a second: the watermark now is about 1,179 s, so the window starts near
    // 1,059 s, which the watermark reached (20 s of grace) near offset 1,079.
    assert!((1_070..=1_085).contains(&plan.replay_start), "{plan:?}");
    let both = PipelineSpec {
        cusum: Some((
            CusumParams {
                replay_lookback: 500,
                replay_lookback_ms: 120_000,
                ..CusumParams::default()
            },
            Subscription::Points,
        )),
        ..by_time
    };
    let mut b = Pipeline::new(&both);
    run(&mut b, &recs, 0, 1_200, &mut VecSink::default());
    assert_eq!(
        b.plan(1_200).replay_start,
        700,
        "the longer of the two look-backs"
    );
}

/// Like [`run`], keeping with each rollup the offset of the record whose processing
/// emitted it (a window "closes at" that offset).
fn run_triggers(p: &mut Pipeline, recs: &[(String, String)], from: usize, to: usize) -> Vec<(i64, String)> {
    let mut sink = VecSink::default();
    let mut out = Vec::new();
    for (offset, (key, value)) in recs.iter().enumerate().take(to).skip(from) {
        let before = sink.rollups.len();
        p.process(
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            offset as i64,
            None,
            &mut sink,
        );
        for (name, res, r) in &sink.rollups[before..] {
            out.push((
                offset as i64,
                format!("{name} {res} {} {} {:?}", r.window_start, r.window_end, r.agg),
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// An operator's replay from offset `at`, planned from the plans committed at
    /// `known_at` and `later` (before or after the replay point) and those the history
    /// keeps for idle flushes: it emits exactly the
    /// windows one uninterrupted run closed at or after the replay point, bit for bit
    /// (none partial, none missing, windows open at the replay point included), and late
    /// records stay late, also those an idle flush made late. Disorder reaches twice the
    /// grace period. A replay from before every known plan is refused.
    #[test]
    fn an_operator_replay_re_emits_exactly_the_windows_closing_after_its_point(
        seed in any::<u64>(), n in 50usize..900, at in 0usize..900, known_at in 0usize..900,
        later in 0usize..900, jitter in 1i64..40_000, cusum in any::<bool>(),
    ) {
        let (at, known_at) = (at.min(n) as i64, known_at.min(n));
        let later = later.min(n).max(known_at);
        let recs = records(seed, n, jitter);
        // Flushed idle before the last known plan's offset, which records them.
        let idle: Vec<(usize, i64)> = idle_flushes(seed, n).into_iter().filter(|f| f.0 < later).collect();
        let mut first = Pipeline::new(&spec(cusum));
        let mut whole = Vec::new();
        let mut known = Vec::new();
        let mut history = Vec::new();
        for offset in 0..n {
            if offset == known_at || offset == later {
                known.push(first.plan(offset as i64));
            }
            if let Some(&(_, ahead)) = idle.iter().find(|f| f.0 == offset)
                && first.watermark() > i64::MIN
            {
                let mut flushed = VecSink::default();
                first.advance_watermark(first.watermark() + ahead, offset as i64, &mut flushed);
                whole.extend(flushed.rollups.iter().map(|(name, res, r)| {
                    (offset as i64, format!("{name} {res} {} {} {:?}", r.window_start, r.window_end, r.agg))
                }));
                // The plan history keeps the plan that records each flush, taken when
                // the next record arrives (the worker's process_batch).
                history.push(first.plan(offset as i64));
            }
            whole.extend(run_triggers(&mut first, &recs, offset, offset + 1));
        }
        if later == n {
            known.push(first.plan(n as i64));
        }

        known.extend(history);
        // Within what a plan keeps (IDLE_CAPACITY flushes; more are counted as unrecorded).
        prop_assume!(first.stats().idle_unrecorded == 0 && idle.len() <= IDLE_CAPACITY);
        let Some(plan) = replay_from(at, known.clone()) else {
            // Refused only when no plan holds a state at or before the point from which
            // the windows closing there can be rebuilt (one flushed idle at the point
            // itself holds the state after that flush).
            prop_assert!(
                at > 0 && known.iter().all(|k| k.next_offset > at || k.idle.at(at).is_some()),
                "refused although a plan is at or before the point"
            );
            return Ok(());
        };
        // Through Kafka's commit metadata, then resumed as a restart would be.
        let plan = Plan::decode(&plan.encode()).expect("plan round trip");
        let start = decide(Some(plan.next_offset), Some(plan), None);
        let mut replayed = Pipeline::new(&spec(cusum));
        replayed.restore_watermark(plan.watermark);
        replayed.restore_idle(plan.idle);
        replayed.restore_cut(plan.cut);
        replayed.set_replay_until(start.replay_until);
        let from = start.seek.unwrap_or(0) as usize;
        let mut again: Vec<String> = run_triggers(&mut replayed, &recs, from, n).into_iter().map(|r| r.1).collect();
        let mut expected: Vec<String> = whole
            .into_iter()
            .filter(|(trigger, _)| *trigger >= plan.next_offset)
            .map(|r| r.1)
            .collect();
        again.sort();
        expected.sort();
        prop_assert_eq!(again, expected);
    }
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

/// The rollups topic of one partition as the runtime sees it: each row with the source
/// offset whose processing emitted it (delivery reports tell the runtime where it landed).
#[derive(Default)]
struct Topic {
    rows: Vec<(i64, ReadRollup)>,
}

impl Topic {
    /// Where a draft's rows start and where the topic ends, as the ledger computes it.
    fn locate(&self, draft: &CoarseDraft) -> Option<CoarsePlan> {
        let mut from = draft.topic;
        if let Some(t) = draft.trigger {
            let at = self.rows.iter().position(|(trigger, _)| *trigger >= t)? as i64;
            from = Some(from.map_or(at, |f| f.min(at)));
        }
        Some(draft.locate(from?, self.rows.len() as i64))
    }

    fn read(&self, c: &CoarsePlan) -> Vec<ReadRollup> {
        self.rows[c.rollups_from as usize..c.rollups_end as usize]
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// Like [`run`], one record at a time, appending emitted rollups to `topic`.
fn run_into(
    p: &mut Pipeline,
    recs: &[(String, String)],
    from: usize,
    to: usize,
    sink: &mut VecSink,
    topic: &mut Topic,
) {
    for (offset, (key, value)) in recs.iter().enumerate().take(to).skip(from) {
        let before = sink.rollups.len();
        p.process(
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            offset as i64,
            None,
            sink,
        );
        for (series, resolution, r) in &sink.rollups[before..] {
            topic.rows.push((
                offset as i64,
                ReadRollup {
                    series: series.clone(),
                    resolution: resolution.clone(),
                    window_start: r.window_start,
                    window_end: r.window_end,
                    agg: r.agg,
                },
            ));
        }
    }
}

/// A restart at `crash` from the plan committed there, rebuilding coarse windows from the
/// topic when the plan allows it. Returns the pipeline and the offset it reads from.
fn restart(first: &Pipeline, crash: i64, topic: &Topic) -> (Pipeline, usize, bool) {
    let mut plan = first.plan(crash);
    plan.coarse = first.coarse_draft(crash).and_then(|d| topic.locate(&d));
    // The plan goes through its text form, as it does through Kafka.
    let plan = Plan::decode(&plan.encode()).expect("plan round trip");
    let start = decide(Some(crash), Some(plan), None);
    let mut second = Pipeline::new(&spec(false));
    second.restore_cut(plan.cut);
    second.restore_idle(plan.idle);
    let seek = match plan.coarse {
        Some(c) => {
            let raw = ReplayPoint {
                offset: plan.replay_start,
                watermark: plan.watermark,
            };
            second.seed_coarse(&topic.read(&c), &c, raw);
            second.restore_watermark(c.fine_watermark);
            first_read(c.fine_start, crash)
        }
        None => {
            second.restore_watermark(plan.watermark);
            start.seek.unwrap_or(0)
        }
    };
    second.set_replay_until(start.replay_until);
    (second, seek.max(0) as usize, plan.coarse.is_some())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Coarse windows rebuilt from the rollups topic (raw records replayed only for the
    /// finest level), across two restarts: together the runs emit exactly what one
    /// uninterrupted run emits, bit for bit.
    #[test]
    fn restarts_rebuilding_coarse_windows_from_the_rollups_topic_emit_each_window_once(
        seed in any::<u64>(), n in 100usize..1_500, a in 0usize..1_500, b in 0usize..1_500, jitter in 1i64..40_000,
    ) {
        let (a, b) = (a.min(n), b.min(n));
        let (a, b) = (a.min(b), a.max(b));
        let recs = records(seed, n, jitter);
        let mut whole = VecSink::default();
        run(&mut Pipeline::new(&spec(false)), &recs, 0, n, &mut whole);

        let mut topic = Topic::default();
        let mut out = VecSink::default();
        let mut first = Pipeline::new(&spec(false));
        run_into(&mut first, &recs, 0, a, &mut out, &mut topic);
        let (mut second, seek, _) = restart(&first, a as i64, &topic);
        run_into(&mut second, &recs, seek, b, &mut out, &mut topic);
        let (mut third, seek, _) = restart(&second, b as i64, &topic);
        run_into(&mut third, &recs, seek, n, &mut out, &mut topic);

        prop_assert_eq!(sorted_rollups(&out), sorted_rollups(&whole));
    }
}

#[test]
fn coarse_windows_come_from_the_topic_and_the_raw_replay_shrinks_to_the_finest_level() {
    let recs = records(5, 1_500, 1_000);
    let mut whole = VecSink::default();
    run(&mut Pipeline::new(&spec(false)), &recs, 0, 1_500, &mut whole);
    let mut topic = Topic::default();
    let mut out = VecSink::default();
    let mut first = Pipeline::new(&spec(false));
    run_into(&mut first, &recs, 0, 1_340, &mut out, &mut topic);
    let full = first.plan(1_340);
    let (mut second, seek, coarse) = restart(&first, 1_340, &topic);
    assert!(coarse, "the plan locates its coarse rows");
    // The 15m window open at 1,340 s began at 900 s; the open 1m window at 1,320 s.
    assert!((895..=905).contains(&full.replay_start), "{full:?}");
    assert!(
        (1_250..=1_330).contains(&seek),
        "raw replay from the open 1m windows only: {seek}"
    );
    run_into(&mut second, &recs, seek, 1_500, &mut out, &mut topic);
    assert_eq!(sorted_rollups(&out), sorted_rollups(&whole));
}

/// A checkpoint the build before wrote (checkpoint format 2, kept verbatim: the pipeline
/// of [`spec`]`(true)` after records(7, 600, 5 s) up to offset 300) is read, and the
/// pipeline continues exactly as the one that wrote it would have.
#[test]
fn a_checkpoint_of_the_previous_format_continues_exactly() {
    let hex = include_str!("fixtures/pipeline-snapshot-v2.hex").trim();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect();
    let recs = records(7, 600, 5_000);
    let mut whole = Pipeline::new(&spec(true));
    run(&mut whole, &recs, 0, 300, &mut VecSink::default());
    let mut expected = VecSink::default();
    run(&mut whole, &recs, 300, 600, &mut expected);

    let mut restored = Pipeline::new(&spec(true));
    restored.restore_format(&bytes, 2).expect("format 2 is read");
    let mut out = VecSink::default();
    run(&mut restored, &recs, 300, 600, &mut out);
    assert!(!expected.rollups.is_empty());
    assert_eq!(sorted_rollups(&out), sorted_rollups(&expected));
    assert_eq!(
        format!("{:?}", out.anomalies),
        format!("{:?}", expected.anomalies)
    );
    // Read as this build's own format it is not mistaken for one.
    assert!(Pipeline::new(&spec(true)).restore(&bytes).is_err());
}
