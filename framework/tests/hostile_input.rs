//! Bounded fuzzing in the test command: arbitrary bytes and text into everything that
//! reads input from a topic, a commit, a checkpoint, a flag or an HTTP query. Nothing may
//! panic; what is accepted must mean what it says (round trips), and a pipeline fed
//! garbage dead-letters it and keeps going. (cargo-fuzz needs a nightly toolchain, which
//! this project does not use; proptest's shrinking gives the smallest failing input.)

use proptest::prelude::*;
use tributary::codec::{self, Format};
use tributary::cusum::CusumParams;
use tributary::pipeline::{Pipeline, PipelineSpec, VecSink};
use tributary::replay::request::{ReplayRequest, parse_partitions, parse_time};
use tributary::replay::{IdleLog, Plan};
use tributary::stage::Subscription;
use tributary::window::Resolution;

fn spec(format: Format) -> PipelineSpec {
    PipelineSpec {
        input_format: format,
        rollup: Some(vec![
            Resolution::new(300_000, "5m"),
            Resolution::new(3_600_000, "1h"),
            Resolution::new(86_400_000, "1d"),
        ]),
        cusum: Some((CusumParams::default(), Subscription::RollupLevel(0))),
        grace_ms: 60_000,
        limits: Default::default(),
    }
}

/// Bytes that are often almost valid: JSON points with fields replaced by arbitrary text.
fn near_json() -> impl Strategy<Value = Vec<u8>> {
    (".{0,12}", ".{0,24}", ".{0,24}")
        .prop_map(|(s, ts, v)| format!(r#"{{"series":"{s}","ts":{ts},"value":{v}}}"#).into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), near in near_json()) {
        for payload in [&bytes[..], &near[..]] {
            for format in [Format::Json, Format::Bincode] {
                let _ = codec::decode_point(format, Some(payload), Some(payload));
                let _ = codec::decode_point(format, None, Some(payload));
                for header in [None, Some(&payload[..payload.len().min(4)]), Some(&b"2"[..])] {
                    let _ = codec::decode_rollup(format, header, payload);
                    let _ = codec::decode_anomaly(format, header, payload);
                }
            }
        }
    }

    #[test]
    fn plans_and_idle_logs_from_arbitrary_metadata(
        text in ".{0,200}", tail in "[0-9:, =a-z-]{0,80}", idle in "[0-9:,-]{0,24}",
    ) {
        for t in [
            text.clone(),
            format!("tributary-plan/1 {tail}"),
            format!("tributary-plan/2 r=1 n=5 w=0 {tail}"),
            format!("tributary-plan/2 r=1 n=5 w=0 i={idle}"),
            idle.clone(),
        ] {
            if let Some(plan) = Plan::decode(&t) {
                // Whatever is accepted is a consistent plan that survives a round trip.
                prop_assert!(plan.replay_start <= plan.next_offset, "{t:?}");
                prop_assert_eq!(Plan::decode(&plan.encode()), Some(plan));
            }
            let _ = Plan::newer_format(&t);
            if let Some(log) = IdleLog::decode(&t) {
                prop_assert_eq!(IdleLog::decode(&log.encode()), Some(log));
            }
        }
    }

    #[test]
    fn operator_inputs_never_panic(text in ".{0,64}", key in "[a-z_]{0,16}") {
        let _ = parse_time(&text);
        let _ = parse_partitions(&text);
        let _ = ReplayRequest::from_query(|k| (k == key || key.is_empty()).then(|| text.clone()));
    }

    #[test]
    fn a_pipeline_dead_letters_garbage_and_keeps_going(
        records in prop::collection::vec(prop_oneof![prop::collection::vec(any::<u8>(), 0..64), near_json()], 1..64),
        bincode in any::<bool>(),
    ) {
        let format = if bincode { Format::Bincode } else { Format::Json };
        let mut p = Pipeline::new(&spec(format));
        let mut sink = VecSink::default();
        for (offset, r) in records.iter().enumerate() {
            p.process(Some(b"k"), Some(r), offset as i64, Some(1_800_000_000_000), &mut sink);
        }
        // A good record after all that is still processed.
        let good = br#"{"series":"s","ts":1799999000000,"value":1.5}"#;
        p.process(Some(b"s"), Some(good), records.len() as i64, Some(1_800_000_000_000), &mut sink);
        prop_assert!(p.stats().records as usize == records.len() + 1);
        // Every record is accounted for: dead-lettered, late, or in the state.
        prop_assert!(sink.dead_letters.len() as u64 == p.stats().dead_lettered);
    }

    #[test]
    fn checkpoints_of_arbitrary_bytes_are_refused_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), format in 0u32..5) {
        let mut p = Pipeline::new(&spec(Format::Json));
        let _ = p.restore_format(&bytes, format);
    }
}
