//! Replayable state end to end: the rollup binary as a process on a Kafka-protocol broker
//! process, killed with SIGKILL at arbitrary points, restarted with and without its
//! RocksDB directory, joined by a second instance, and asked to replay by an operator.
//! The final rollups must equal the oracle, with duplicates only where identical.
//!
//! The SIGKILL and join/leave tests run on both brokers: tansu (real Kafka protocol,
//! drops commit metadata, so plans come from the plan topic) and librdkafka's mock
//! cluster as its own process (`tributary-dev kafka`, keeps metadata). Both expire a
//! killed member after the 6 s session the bed configures (librdkafka's default is 45 s).

use std::path::Path;
use std::time::Duration;

use harness::{
    Incoming, Outgoing, Tansu, app_binary, create_topics, eventually, free_port, metric, py_committed,
    py_produce,
};

use crate::dataset::{self, Duplicates};
use crate::rollup_bed::{
    Bed, PARTITIONS, bed_on, dev_bed, dev_bed_failing_commits, kill, split, stop, tansu_bed,
};

#[test]
fn rollups_survive_repeated_sigkills_including_during_replay() {
    sigkills_including_during_replay(dev_bed());
}

#[test]
fn rollups_survive_repeated_sigkills_on_tansu() {
    sigkills_including_during_replay(tansu_bed());
}

fn sigkills_including_during_replay(bed: Bed) {
    let series = 16;
    let data = dataset::build(series, 26, PARTITIONS, 11);
    let (body, sentinels) = split(&data, series);
    let chunks: Vec<&[Outgoing]> = body.chunks(body.len() / 5 + 1).collect();
    let admin = format!("127.0.0.1:{}", free_port());
    py_produce(&bed.brokers, &bed.input, chunks[0]);
    // Kill points after the partitions are assigned: at once (mid-replay), and later
    // while new records are processed. Every other restart runs without its RocksDB
    // directory, so both rebuild paths are crashed into.
    let delays_ms = [0u64, 1_500, 30, 800];
    let mut replays_seen = 0;
    let mut coarse_from_topic = 0;
    for (i, delay) in delays_ms.iter().enumerate() {
        if i % 2 == 1 {
            let _ = std::fs::remove_dir_all(&bed.state_dir);
        }
        let mut app = bed.start(&admin, &bed.state_dir);
        let assigned = eventually(Duration::from_secs(60), || {
            app.log_text().contains("partition assigned").then_some(())
        });
        assert!(assigned.is_some(), "{}", app.log_text());
        if let Some(chunk) = chunks.get(i + 1) {
            py_produce(&bed.brokers, &bed.input, chunk);
        }
        std::thread::sleep(Duration::from_millis(*delay));
        if app.log_text().contains("replay started") {
            replays_seen += 1;
        }
        coarse_from_topic += app
            .log_text()
            .matches("coarse windows rebuilt from the rollups topic")
            .count();
        kill(&mut app);
    }
    assert!(replays_seen > 0, "no restart rebuilt state by replay");
    assert!(
        coarse_from_topic > 0,
        "no restart rebuilt coarse windows from the rollups topic"
    );
    for chunk in chunks.iter().skip(delays_ms.len() + 1) {
        py_produce(&bed.brokers, &bed.input, chunk);
    }
    py_produce(&bed.brokers, &bed.input, sentinels);
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.finish(&data, &mut app);
}

#[test]
fn the_final_commit_is_sent_again_until_the_broker_confirms_it() {
    // No commit before shutdown (a 1 h commit interval, plans in the commit metadata, so
    // no metadata probe either), and the broker fails the first 2 offset commits: only an
    // app that sends its final commit again ends committed at the end of every partition.
    let bed = dev_bed_failing_commits(2);
    let series = 8;
    let data = dataset::build(series, 12, PARTITIONS, 5);
    py_produce(&bed.brokers, &bed.input, &data.records);
    let admin = format!("127.0.0.1:{}", free_port());
    let env = [
        ("TRIBUTARY_KAFKA_COMMIT_INTERVAL", "1h"),
        ("TRIBUTARY_STATE_PLAN_STORE", "metadata"),
    ];
    let mut app = bed.start_env(&admin, &bed.state_dir, &env);
    let read = eventually(Duration::from_secs(120), || {
        let n = metric(&admin, "tributary_records_consumed_total")?;
        (n >= data.records.len() as f64).then_some(())
    });
    assert!(read.is_some(), "not every record was read:\n{}", app.log_text());
    stop(&mut app);
    let end = harness::end_offsets(&data.records);
    let (committed, _) = py_committed(&bed.brokers, &bed.group, &bed.input);
    let got: std::collections::BTreeMap<i32, i64> = end
        .keys()
        .map(|p| (*p, committed.get(p).copied().unwrap_or(-1)))
        .collect();
    assert_eq!(got, end, "{}", app.log_text());
    assert_eq!(
        app.log_text()
            .matches("final offset commit failed; sending it again")
            .count(),
        2,
        "{}",
        app.log_text()
    );
}

#[test]
fn failed_commits_are_sent_again_until_the_broker_confirms_them() {
    // The broker fails the first 6 offset commits. All records are produced before the app
    // starts, so once they are processed no offset moves again: only an app that learns of
    // the failures and sends the same offsets again gets every offset committed.
    let bed = dev_bed_failing_commits(6);
    let series = 8;
    let data = dataset::build(series, 12, PARTITIONS, 5);
    py_produce(&bed.brokers, &bed.input, &data.records);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.wait_caught_up(&data.records, &app);
    let failed = metric(&admin, "tributary_commit_errors_total").unwrap_or(0.0);
    assert!(
        failed >= 1.0,
        "the injected failures were seen: {failed}\n{}",
        app.log_text()
    );
    stop(&mut app);
}

#[test]
fn restarts_resume_from_the_checkpoint_when_kept_and_replay_when_deleted() {
    let bed = dev_bed();
    let series = 12;
    let data = dataset::build(series, 26, PARTITIONS, 5);
    let (body, sentinels) = split(&data, series);
    let (first, second) = body.split_at(body.len() / 2);
    let admin = format!("127.0.0.1:{}", free_port());
    py_produce(&bed.brokers, &bed.input, first);
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.wait_caught_up(first, &app);
    let written = eventually(Duration::from_secs(30), || {
        (metric(&admin, "tributary_checkpoints_written_total").unwrap_or(0.0) >= PARTITIONS as f64)
            .then_some(())
    });
    assert!(written.is_some(), "no checkpoints written:\n{}", app.log_text());
    kill(&mut app);

    // Kept: every partition resumes from its checkpoint.
    let mut app = bed.start(&admin, &bed.state_dir);
    let resumed = eventually(Duration::from_secs(60), || {
        (app.log_text().matches("source=Checkpoint").count() >= PARTITIONS as usize).then_some(())
    });
    assert!(resumed.is_some(), "checkpoints not used:\n{}", app.log_text());
    kill(&mut app);

    // Deleted: full replay from the committed plans, same results.
    std::fs::remove_dir_all(&bed.state_dir).expect("delete state dir");
    py_produce(&bed.brokers, &bed.input, second);
    let mut app = bed.start(&admin, &bed.state_dir);
    let replayed = eventually(Duration::from_secs(60), || {
        (app.log_text().matches("source=Plan").count() >= PARTITIONS as usize).then_some(())
    });
    assert!(replayed.is_some(), "plans not used:\n{}", app.log_text());
    py_produce(&bed.brokers, &bed.input, sentinels);
    let finished = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_replays_finished_total").unwrap_or(0.0) >= PARTITIONS as f64).then_some(())
    });
    assert!(finished.is_some(), "{}", app.log_text());
    assert!(metric(&admin, "tributary_records_replayed_total").unwrap_or(0.0) > 0.0);
    bed.finish(&data, &mut app);
}

#[test]
fn a_second_instance_joining_and_leaving_loses_and_changes_nothing() {
    join_and_leave(dev_bed());
}

#[test]
fn a_second_instance_joining_and_leaving_on_tansu() {
    join_and_leave(tansu_bed());
}

fn join_and_leave(bed: Bed) {
    let series = 16;
    let data = dataset::build(series, 26, PARTITIONS, 23);
    let (body, sentinels) = split(&data, series);
    let thirds: Vec<&[Outgoing]> = body.chunks(body.len() / 3 + 1).collect();
    let (admin_a, admin_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    py_produce(&bed.brokers, &bed.input, thirds[0]);
    let mut a = bed.start(&admin_a, &bed.state_dir);
    bed.wait_caught_up(thirds[0], &a);
    let mut b = bed.start(&admin_b, &bed.state_dir.with_extension("b"));
    let shared = eventually(Duration::from_secs(60), || {
        (metric(&admin_b, "tributary_assigned_partitions").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(
        shared.is_some(),
        "second instance got no partitions:\n{}",
        b.log_text()
    );
    py_produce(&bed.brokers, &bed.input, thirds[1]);
    let moved = eventually(Duration::from_secs(60), || {
        b.log_text().contains("source=Plan").then_some(())
    });
    assert!(
        moved.is_some(),
        "moved partitions were not rebuilt from plans:\n{}",
        b.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.terminate(Duration::from_secs(60)), Some(0), "{}", b.log_text());
    for rest in &thirds[2..] {
        py_produce(&bed.brokers, &bed.input, rest);
    }
    py_produce(&bed.brokers, &bed.input, sentinels);
    bed.finish(&data, &mut a);
}

fn replay_cli(bed: &Bed, admin: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec![
        "--config",
        bed.config.to_str().expect("path"),
        "--brokers",
        &bed.brokers,
        "--input-topic",
        &bed.input,
        "--group",
        &bed.group,
        "--admin-listen",
        admin,
        "replay",
    ];
    all.extend_from_slice(args);
    let out = std::process::Command::new(app_binary("tributary-rollup"))
        .args(&all)
        .output()
        .expect("replay command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn the_app_is_unready_while_its_broker_is_down_and_loses_nothing_across_the_restart() {
    // tansu on sqlite storage, killed and started again on the same port and data: a
    // broker restart. The test holds the broker itself to stop and start it.
    let mut tansu = Tansu::start_stored();
    let bed = bed_on(Box::new(()), tansu.brokers.clone());
    create_topics(&bed.brokers, &[(&bed.input, PARTITIONS)]);
    let series = 8;
    let data = dataset::build(series, 12, PARTITIONS, 7);
    let (body, sentinels) = split(&data, series);
    py_produce(&bed.brokers, &bed.input, body);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start(&admin, &bed.state_dir);
    let readiness = |reason, secs| {
        if let Err(last) = harness::wait_readiness(&admin, reason, Duration::from_secs(secs)) {
            panic!("waited for {reason:?}, last {last:?}\n{}", app.log_text());
        }
    };
    readiness(None, 120);
    tansu.stop();
    readiness(Some("no connection to any Kafka broker"), 60);
    assert_eq!(harness::admin_get(&admin, "/health/live").map(|r| r.0), Some(200));
    tansu.start_again();
    readiness(None, 120);
    py_produce(&bed.brokers, &bed.input, sentinels);
    bed.finish(&data, &mut app);
}

#[test]
fn an_operator_replay_re_emits_identical_rollups_online_and_offline() {
    let bed = dev_bed();
    let series = 8;
    let data = dataset::build(series, 26, PARTITIONS, 3);
    let admin = format!("127.0.0.1:{}", free_port());
    py_produce(&bed.brokers, &bed.input, &data.records);
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.wait_caught_up(&data.records, &app);
    let ready = harness::wait_readiness(&admin, None, Duration::from_secs(30));
    assert_eq!(ready, Ok(()));
    let before = bed.rollups_out(data.expected.len());
    dataset::check_rollups(&data, Duplicates::Refused, &before);
    let on_partition_1 = |rs: &[Incoming]| rs.iter().filter(|r| r.partition == 1).count();

    // Bad requests get clear errors and change nothing.
    let (code, text) = replay_cli(&bed, &admin, &["--from-offset", "0", "--partitions", "9"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("partition 9 does not exist"), "{text}");
    let (code, text) = replay_cli(&bed, &admin, &["--from-offset", "999999", "--partitions", "1"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("offset 999999 is not in"), "{text}");

    // Online, through the admin endpoint: partition 1 again from its first record.
    let (code, text) = replay_cli(&bed, &admin, &["--from-offset", "0", "--partitions", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("\"from_offset\":0"), "{text}");
    // The command follows the replay to the end offset it had when it started.
    assert!(
        text.contains("(100%)"),
        "progress not followed to the end: {text}"
    );
    let again = eventually(Duration::from_secs(60), || {
        let out = bed.rollups_out(before.len());
        (on_partition_1(&out) > on_partition_1(&before)).then_some(out)
    })
    .expect("replayed rollups re-emitted");
    dataset::check_rollups(&data, Duplicates::Identical, &again);
    let reemitted = on_partition_1(&again) - on_partition_1(&before);
    stop(&mut app);

    // Offline, with the app stopped: the next start replays and re-emits.
    let (code, text) = replay_cli(
        &bed,
        &admin,
        &["--offline", "--from-offset", "0", "--partitions", "1"],
    );
    assert_eq!(code, Some(0), "{text}");
    let mut app = bed.start(&admin, &bed.state_dir);
    let third = eventually(Duration::from_secs(60), || {
        let out = bed.rollups_out(again.len());
        (on_partition_1(&out) >= on_partition_1(&again) + reemitted).then_some(out)
    })
    .expect("offline replay re-emitted");
    dataset::check_rollups(&data, Duplicates::Identical, &third);
    stop(&mut app);
}

#[test]
fn plans_survive_on_a_broker_that_drops_commit_metadata() {
    let tansu = Tansu::start();
    let brokers = tansu.brokers.clone();
    let bed = bed_on(Box::new(tansu), brokers);
    create_topics(&bed.brokers, &[(&bed.input, 2)]);
    let series = 8;
    let data = dataset::build(series, 26, 2, 17);
    let (body, sentinels) = split(&data, series);
    let (first, second) = body.split_at(body.len() / 2);
    let admin = format!("127.0.0.1:{}", free_port());
    py_produce(&bed.brokers, &bed.input, first);
    // No local checkpoints: the restart must rebuild from the plan alone.
    let no_state = Path::new("");
    let mut app = bed.start(&admin, no_state);
    bed.wait_caught_up(first, &app);
    assert!(
        app.log_text().contains("keeps_metadata=false"),
        "{}",
        app.log_text()
    );
    stop(&mut app);

    py_produce(&bed.brokers, &bed.input, second);
    py_produce(&bed.brokers, &bed.input, sentinels);
    let mut app = bed.start(&admin, no_state);
    bed.finish(&data, &mut app);
    assert!(app.log_text().contains("source=Plan"), "{}", app.log_text());
}

#[test]
fn a_replay_from_mid_stream_re_emits_the_windows_open_there_complete() {
    // The mock cluster does not look offsets up by time: both replays by offset.
    mid_stream_replay(dev_bed(), 23, false);
}

#[test]
fn a_replay_from_mid_stream_on_tansu() {
    mid_stream_replay(tansu_bed(), 29, true);
}

/// An app processes the first half of the records, stops, and is started again for the
/// rest (a replay reaches back to the plans kept since then). An operator then replays
/// partition 1 from a point in the second half by offset, online, and offline from the
/// start of the second half, by time (when it was produced: the broker's timestamps) or
/// by offset:
/// the day window open at each replay point is emitted again complete (equal to the
/// oracle), and windows that closed well before it are not emitted again. The records
/// arrive up to 40 s out of order, and some 11 minutes late.
fn mid_stream_replay(bed: Bed, seed: u64, offline_by_time: bool) {
    let series = 8;
    let data = dataset::build(series, 26, PARTITIONS, seed);
    let admin = format!("127.0.0.1:{}", free_port());
    let (first, rest) = data.records.split_at(data.records.len() / 2);
    py_produce(&bed.brokers, &bed.input, first);
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.wait_caught_up(first, &app);
    stop(&mut app);
    // Broker timestamps are produce times: the second half is stamped after this.
    std::thread::sleep(Duration::from_millis(20));
    let rest_produced = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    std::thread::sleep(Duration::from_millis(20));
    py_produce(&bed.brokers, &bed.input, rest);
    let first_on_1 = first.iter().filter(|r| r.partition == Some(1)).count();
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.wait_caught_up(&data.records, &app);
    let before = bed.rollups_out(data.expected.len());
    dataset::check_rollups(&data, Duplicates::Refused, &before);

    // Partition 1's records in offset order, and the event time of each.
    let on_1: Vec<i64> = data
        .records
        .iter()
        .filter(|r| r.partition == Some(1))
        .map(|r| {
            let v: serde_json::Value =
                serde_json::from_str(r.value.as_deref().unwrap_or("null")).unwrap_or_default();
            v["ts"].as_i64().unwrap_or(i64::MIN)
        })
        .collect();
    let count = |rows: &[Incoming], pick: &dyn Fn(&serde_json::Value) -> bool| {
        rows.iter()
            .filter(|r| r.partition == 1 && pick(&r.json()))
            .count()
    };
    let day = 86_400_000;
    let mut seen = before;
    for (offset, offline) in [(on_1.len() * 5 / 8, false), (first_on_1, true)] {
        // The replay point's event time (a bad record there has none: the next one's).
        let ts = on_1[offset..]
            .iter()
            .copied()
            .find(|&t| t > 0)
            .expect("a point after the replay point");
        let day_start = ts - ts.rem_euclid(day);
        let open_day = |v: &serde_json::Value| v["resolution"] == "1d" && v["window_start"] == day_start;
        // 5m windows that ended an hour before the replay point's record.
        let long_closed = |v: &serde_json::Value| {
            v["resolution"] == "5m" && v["window_end"].as_i64().is_some_and(|end| end < ts - 3_600_000)
        };
        let (days, closed) = (count(&seen, &open_day), count(&seen, &long_closed));
        let series_with_day: std::collections::BTreeSet<String> = seen
            .iter()
            .filter(|r| r.partition == 1 && open_day(&r.json()))
            .map(|r| r.json()["series"].to_string())
            .collect();
        assert!(days > 0 && closed > 0, "the day at offset {offset} has rows");
        let (from_offset, from_time) = (offset.to_string(), rest_produced.to_string());
        let mut args = vec!["--from-offset", &from_offset, "--partitions", "1"];
        if offline {
            stop(&mut app);
            args.insert(0, "--offline");
            if offline_by_time {
                // The first record of the second half, `first_on_1`.
                args = vec!["--offline", "--from-time", &from_time, "--partitions", "1"];
            }
        }
        let (code, text) = replay_cli(&bed, &admin, &args);
        assert_eq!(code, Some(0), "{text}");
        if offline {
            app = bed.start(&admin, &bed.state_dir);
        }
        let out = eventually(Duration::from_secs(90), || {
            let out = bed.rollups_out(seen.len());
            (count(&out, &open_day) >= days + series_with_day.len()).then_some(out)
        })
        .unwrap_or_else(|| {
            panic!(
                "the day window open at offset {offset} was not emitted again; log:\n{}",
                app.log_text()
            )
        });
        dataset::check_rollups(&data, Duplicates::Identical, &out);
        assert_eq!(
            count(&out, &long_closed),
            closed,
            "windows closed long before offset {offset} were emitted again"
        );
        seen = out;
    }
    stop(&mut app);
}

/// A plan a newer build committed is refused with a clear error, never resumed from with
/// empty state: the partition waits (nothing emitted, nothing committed) and says why,
/// and the app still stops cleanly.
#[test]
fn a_plan_from_a_newer_build_is_refused_not_resumed_with_empty_state() {
    let bed = dev_bed();
    let series = 8;
    let data = dataset::build(series, 2, PARTITIONS, 31);
    py_produce(&bed.brokers, &bed.input, &data.records);
    harness::py_commit(
        &bed.brokers,
        &bed.group,
        &bed.input,
        2,
        10,
        "tributary-plan/3 r=0 n=10 w=0 q=1",
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start(&admin, &bed.state_dir);
    let refused = eventually(Duration::from_secs(60), || {
        app.log_text()
            .contains("is in format 3, newer than this build reads (2)")
            .then_some(())
    });
    assert!(refused.is_some(), "{}", app.log_text());
    // Not ready while it waits, and it says why.
    let (status, body) = harness::admin_get(&admin, "/health/ready").expect("admin answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("reading the committed offsets"), "{body}");
    assert_eq!(harness::admin_get(&admin, "/health/live").map(|r| r.0), Some(200));
    std::thread::sleep(Duration::from_secs(3));
    let (committed, _) = py_committed(&bed.brokers, &bed.group, &bed.input);
    assert_eq!(
        committed.get(&2),
        Some(&10),
        "nothing committed past the refused plan"
    );
    assert!(
        !app.log_text().contains("resuming partition"),
        "{}",
        app.log_text()
    );
    stop(&mut app);
}
