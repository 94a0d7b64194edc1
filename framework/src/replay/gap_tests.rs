//! A rebuild that misses records the broker no longer holds: the windows it emits must be
//! complete (equal to an uninterrupted run's), and windows starting after the missing
//! records' latest possible event time must still come out.

use proptest::prelude::*;

use super::tests::{records, run, sorted_rollups, spec};
use crate::limits::InputLimits;
use crate::pipeline::{Pipeline, PipelineSpec, VecSink};

/// Event times are `offset · 1000` minus up to the jitter, so "now" when offset `n` is
/// read is `n · 1000`; records may be up to this far ahead of it.
const MAX_FUTURE_MS: i64 = 5_000;

fn spec_with_future() -> PipelineSpec {
    PipelineSpec {
        limits: InputLimits {
            max_future_ms: MAX_FUTURE_MS,
            ..InputLimits::any_time()
        },
        ..spec(false)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_rebuild_missing_records_emits_only_complete_windows(
        seed in any::<u64>(),
        crash in 300usize..700,
        lost_fraction in 0.05f64..1.0,
        jitter in prop::sample::select(vec![1i64, 15_000, 45_000]),
    ) {
        let n = 1_200;
        let recs = records(seed, n, jitter);
        let mut whole = VecSink::default();
        run(&mut Pipeline::new(&spec_with_future()), &recs, 0, n, &mut whole);
        let original = sorted_rollups(&whole);

        let mut first = Pipeline::new(&spec_with_future());
        run(&mut first, &recs, 0, crash, &mut VecSink::default());
        let plan = first.plan(crash as i64);
        let start = plan.replay_start as usize;
        // Retention deleted the records from the replay start up to `kept`.
        let kept = start + 1 + ((crash - start) as f64 * lost_fraction) as usize;
        let mut rebuilt = Pipeline::new(&spec_with_future());
        rebuilt.restore_watermark(plan.watermark);
        rebuilt.restore_idle(plan.idle);
        rebuilt.set_replay_until(crash as i64);
        let cut = rebuilt.records_lost(kept as i64 * 1_000, None);
        prop_assert!(
            cut <= kept as i64 * 1_000 + MAX_FUTURE_MS + 1,
            "no window later than the missing records' newest possible event time is left out"
        );
        let mut out = VecSink::default();
        run(&mut rebuilt, &recs, kept, n, &mut out);
        let emitted = sorted_rollups(&out);
        for r in &emitted {
            prop_assert!(original.contains(r), "partial window emitted: {}", r);
        }
        // Windows that start after the cut and close after the crash all come out.
        let later = sorted_rollups(&VecSink {
            rollups: whole
                .rollups
                .iter()
                .filter(|(_, _, r)| r.window_start >= cut && r.window_end > (crash as i64 + 60) * 1_000)
                .cloned()
                .collect(),
            ..VecSink::default()
        });
        prop_assert!(!later.is_empty(), "the test data reaches past the cut");
        for r in &later {
            prop_assert!(emitted.contains(r), "complete window not emitted: {}", r);
        }
    }
}
