use super::*;

fn plan(r: i64, n: i64) -> Plan {
    Plan {
        replay_start: r,
        next_offset: n,
        watermark: 1_000,
        requested: false,
        cut: None,
        coarse: None,
        idle: IdleLog::default(),
    }
}

#[test]
fn plans_round_trip_and_foreign_metadata_is_ignored() {
    let p = Plan {
        replay_start: 17,
        next_offset: 42,
        watermark: i64::MIN,
        requested: false,
        cut: None,
        coarse: None,
        idle: IdleLog::default(),
    };
    assert_eq!(Plan::decode(&p.encode()), Some(p));
    let cut = Plan {
        cut: Some(1_732_380_000_000),
        ..p
    };
    assert_eq!(Plan::decode(&cut.encode()), Some(cut));
    let coarse = Plan {
        coarse: Some(CoarsePlan {
            fine_start: 30,
            fine_watermark: 1_732_379_000_000,
            now_watermark: 1_732_380_000_000,
            rollups_from: 7,
            rollups_end: 19,
        }),
        ..cut
    };
    assert_eq!(Plan::decode(&coarse.encode()), Some(coarse));
    assert!(coarse.encode().len() < 256);
    assert_eq!(
        Plan::decode(&Plan::requested(9).encode()),
        Some(Plan::requested(9))
    );
    assert!(p.encode().len() < 128);
    for bad in [
        "",
        "hello",
        "tributary-plan/3 r=1 n=2 w=3",
        "tributary-plan/1 r=1 n=2 w=3 i=5:5",
        "tributary-plan/1 r=1 n=x w=3",
        "tributary-plan/1 r=1 n=2 w=3 x",
        "tributary-plan/1 r=1 n=2 w=3 f=1 g=1",
    ] {
        assert_eq!(Plan::decode(bad), None, "{bad:?}");
    }
    assert_eq!(
        Plan::decode("tributary-plan/1 r=9 n=2 w=3"),
        None,
        "start after offset"
    );
    // Plans of a newer build are recognised as such (and refused by the runtime);
    // foreign metadata and this build's own plans are not.
    assert_eq!(Plan::newer_format("tributary-plan/3 r=1 n=2 w=3 z=9"), Some(3));
    assert_eq!(Plan::newer_format("tributary-plan/17"), Some(17));
    for not_newer in [
        "tributary-plan/1 r=1 n=2 w=3",
        "tributary-plan/2 r=1 n=2 w=3 i=2:5",
        "",
        "hello",
        "tributary-plan/x",
    ] {
        assert_eq!(Plan::newer_format(not_newer), None, "{not_newer:?}");
    }
    assert_eq!(TAG_2, format!("{TAG_NAME}{PLAN_FORMAT}"));
    let idle = Plan {
        idle: IdleLog::decode("3:9,4:12").expect("idle"),
        ..p
    };
    assert!(
        idle.encode().starts_with("tributary-plan/2 "),
        "{}",
        idle.encode()
    );
    assert_eq!(Plan::decode(&idle.encode()), Some(idle));
    assert!(
        p.encode().starts_with("tributary-plan/1 "),
        "no idle flush, format 1"
    );
}

#[test]
fn an_operator_replay_rebuilds_from_the_newest_plan_at_or_before_its_point() {
    let older = plan(10, 60);
    let newer = Plan {
        cut: Some(7),
        ..plan(40, 100)
    };
    // From 120 (capped at 100, the newest known offset): the newer plan, at 100.
    let p = replay_from(120, [older, newer]).expect("known");
    assert_eq!(
        (p.replay_start, p.next_offset, p.watermark, p.cut),
        (40, 100, 1_000, Some(7))
    );
    assert!(!p.requested && p.coarse.is_none());
    // From 70: the older plan (the newer one's rebuild starts at 40, but windows open
    // at 70 may have closed before 100 and hold records before 40).
    let p = replay_from(70, [older, newer]).expect("known");
    assert_eq!((p.replay_start, p.next_offset), (10, 70));
    // Before every known plan: refused.
    assert_eq!(replay_from(50, [older, newer]), None);
    assert_eq!(replay_from(5, []), None);
    assert_eq!(replay_from(0, []), Some(Plan::fresh(0)));
    // The replayed plan resumes like a restart: suppressed up to 70, read from 10.
    let s = decide(Some(70), Some(p), None);
    assert_eq!((s.seek, s.replay_until), (Some(10), 70));
    // Idle flushes any known plan recorded after the rebuild's start come along.
    let flushed = |text: &str| IdleLog::decode(text).expect("idle log");
    let with_idle = [
        Plan {
            idle: flushed("45:900,60:950"),
            ..newer
        },
        Plan {
            idle: flushed("5:700,30:800"),
            ..older
        },
    ];
    let p = replay_from(70, with_idle).expect("known");
    assert_eq!(p.idle.encode(), "30:800,45:900,60:950");
    // A plan an older build committed for its own replay cannot be rebuilt from.
    assert_eq!(replay_from(20, [Plan::requested(10)]), None);
}

/// Plans as earlier builds committed them, kept verbatim: every later build must read
/// them (an upgrade resumes from what the old build committed).
#[test]
fn plans_of_the_previous_builds_are_read() {
    let kept = [
        (
            "tributary-plan/1 r=17 n=42 w=-9223372036854775808",
            (17, 42, i64::MIN),
        ),
        (
            "tributary-plan/1 r=100 n=250 w=1732380000000 c=1732379000000",
            (100, 250, 1_732_380_000_000),
        ),
        (
            "tributary-plan/1 r=5 n=90 w=1732379000000 f=60 g=1732379500000 t=1732380000000 u=3 v=12",
            (5, 90, 1_732_379_000_000),
        ),
        (
            "tributary-plan/1 r=9 n=9 w=-9223372036854775808 requested",
            (9, 9, i64::MIN),
        ),
    ];
    for (text, (r, n, w)) in kept {
        let p = Plan::decode(text).unwrap_or_else(|| panic!("unread: {text}"));
        assert_eq!((p.replay_start, p.next_offset, p.watermark), (r, n, w), "{text}");
        assert_eq!(Plan::decode(&p.encode()), Some(p), "{text}");
    }
}

#[test]
fn nothing_committed_starts_empty() {
    let s = decide(None, None, Some(CheckpointPosition { next_offset: 5 }));
    assert_eq!(s.source, StateSource::Empty);
    assert_eq!(s.seek, None);
}

#[test]
fn a_plan_replays_from_its_start_and_suppresses_up_to_the_commit() {
    let s = decide(Some(100), Some(plan(40, 100)), None);
    assert_eq!(s.seek, Some(40));
    assert_eq!(s.replay_until, 100);
    assert_eq!(s.source, StateSource::Plan(plan(40, 100)));
}

#[test]
fn a_plan_ahead_of_a_lagging_commit_still_counts() {
    let s = decide(Some(80), Some(plan(40, 100)), None);
    assert_eq!((s.seek, s.replay_until), (Some(40), 100));
}

#[test]
fn a_usable_checkpoint_shortens_the_replay() {
    let s = decide(
        Some(100),
        Some(plan(40, 100)),
        Some(CheckpointPosition { next_offset: 90 }),
    );
    assert_eq!(
        (s.seek, s.replay_until, s.source),
        (Some(90), 100, StateSource::Checkpoint)
    );
}

#[test]
fn stale_or_future_checkpoints_fall_back_to_the_plan() {
    let stale = decide(
        Some(100),
        Some(plan(40, 100)),
        Some(CheckpointPosition { next_offset: 30 }),
    );
    assert_eq!(stale.seek, Some(40));
    let future = decide(
        Some(100),
        Some(plan(40, 100)),
        Some(CheckpointPosition { next_offset: 120 }),
    );
    assert_eq!(future.seek, Some(40));
}

#[test]
fn a_requested_replay_starts_at_its_offset_without_suppression_or_checkpoint() {
    let p = Plan::requested(10);
    let s = decide(Some(10), Some(p), Some(CheckpointPosition { next_offset: 10 }));
    assert_eq!(
        (s.seek, s.replay_until, s.source),
        (Some(10), 10, StateSource::Plan(p))
    );
}

#[test]
fn a_plan_with_nothing_open_still_reads_one_known_record() {
    let s = decide(Some(100), Some(plan(100, 100)), None);
    assert_eq!((s.seek, s.replay_until), (Some(99), 100));
}

#[test]
fn every_resume_at_a_known_offset_is_guarded_even_with_nothing_to_replay() {
    // A checkpoint exactly at the commit: nothing to replay, but the fetch at 100 may
    // still start inside a batch.
    let at_commit = decide(
        Some(100),
        Some(plan(40, 100)),
        Some(CheckpointPosition { next_offset: 100 }),
    );
    assert_eq!(at_commit.source, StateSource::Checkpoint);
    assert_eq!(at_commit.guarded_from(), Some(100));
    let replaying = decide(Some(100), Some(plan(40, 100)), None);
    assert_eq!(replaying.guarded_from(), Some(40));
    let committed_only = decide(Some(100), None, None);
    assert_eq!(committed_only.guarded_from(), Some(100));
    assert_eq!(decide(None, None, None).guarded_from(), None);
    assert_eq!(
        decide(Some(0), None, None).guarded_from(),
        None,
        "offset 0 starts a batch"
    );
}

#[test]
fn a_commit_without_a_plan_resumes_there_with_empty_state() {
    let s = decide(Some(100), None, Some(CheckpointPosition { next_offset: 90 }));
    assert_eq!(
        (s.seek, s.replay_until, s.source),
        (Some(100), 100, StateSource::CommittedOnly)
    );
}

#[test]
fn records_gone_before_the_first_one_the_state_needs_cost_nothing() {
    // Nothing to replay: the record before the commit is read only as a probe.
    let probing = decide(Some(100), Some(plan(100, 100)), None);
    assert_eq!((probing.seek, probing.needed_from()), (Some(99), Some(100)));
    // One record to replay: that same offset is needed.
    let one = decide(Some(100), Some(plan(99, 100)), None);
    assert_eq!((one.seek, one.needed_from()), (Some(99), Some(99)));
    let checkpoint = decide(
        Some(100),
        Some(plan(40, 100)),
        Some(CheckpointPosition { next_offset: 100 }),
    );
    assert_eq!(checkpoint.needed_from(), Some(100));
    assert_eq!(decide(None, None, None).needed_from(), None);
}
