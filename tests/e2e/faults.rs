//! Faults through real processes, each run on a new seed (printed; set
//! `E2E_SEED` to rerun one) and ending with an exact comparison against the
//! oracle.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{Process, Tansu, create_topics, free_port, py_produce};

use crate::dataset;
use crate::rollup_bed::{Bed, PARTITIONS, bed_on, dev_bed, kill, split, tansu_bed};

pub(crate) fn seed() -> u64 {
    let seed = std::env::var("E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (E2E_SEED={seed} reruns this case)");
    seed
}

/// A seeded xorshift stream: `next(n)` is below `n`.
pub(crate) fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed | 1;
    move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    }
}

/// Records stream in, and each time the rollup app is working through them tansu is
/// stopped for `outage` (a range in ms, seeded) and started again, with the same app
/// process running throughout; with `in_flight`, only once some outputs are produced
/// and not yet acknowledged. Ends with the oracle's exact comparison; returns how many
/// outputs the app could not deliver and how many partitions it rebuilt for them.
///
/// The app's session (45 s) outlasts each outage and librdkafka's reconnect backoff: with
/// the bed's 6 s it expired in about 1 run in 5, and tansu 0.6 then kept the lost member
/// as the group's leader for minutes, answering every SyncGroup of the new member
/// 'rebalance in progress' (issue 12). A lost session would also have partitions resumed
/// by a new assignment instead of rebuilt.
fn broker_outages(
    properties: &[(&str, &str)],
    outages: usize,
    outage: std::ops::Range<u64>,
    in_flight: bool,
) -> (u64, u64) {
    let seed = seed();
    let mut next = rng(seed);
    let mut tansu = Tansu::start_stored();
    let properties: Vec<_> = [("session.timeout.ms", "45000")]
        .into_iter()
        .chain(properties.iter().copied())
        .collect();
    let bed = bed_on(Box::new(()), tansu.brokers.clone())
        .with_kafka_properties(&properties)
        .with_cusum();
    create_topics(&bed.brokers, &[(&bed.input, PARTITIONS)]);
    let series = 48;
    let data = dataset::build(series, 12, PARTITIONS, seed);
    let (body, sentinels) = split(&data, series);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = bed.start(&admin, &bed.state_dir);
    if let Err(last) = harness::wait_readiness(&admin, None, Duration::from_secs(120)) {
        panic!("never ready: {last:?}\n{}", app.log_text());
    }
    let metric = |name: &str| harness::metric(&admin, name).unwrap_or(0.0) as u64;
    let consumed = || metric("tributary_records_consumed_total");
    let unacked = || {
        let produced = metric("tributary_rollups_emitted_total")
            + metric("tributary_anomalies_emitted_total")
            + metric("tributary_records_dead_lettered_total");
        produced.saturating_sub(metric("tributary_outputs_acked_total"))
    };
    for (restart, chunk) in body.chunks(body.len() / outages + 1).enumerate() {
        let before = consumed();
        let producing = {
            let (brokers, input, chunk) = (bed.brokers.clone(), bed.input.clone(), chunk.to_vec());
            std::thread::spawn(move || py_produce(&brokers, &input, &chunk))
        };
        let threshold = before + 500 + next(2_000);
        let midway = harness::eventually(Duration::from_secs(60), || {
            (consumed() >= threshold && (!in_flight || unacked() > 0)).then_some(())
        });
        assert!(midway.is_some(), "nothing consumed:\n{}", app.log_text());
        tansu.stop();
        std::thread::sleep(Duration::from_millis(
            outage.start + next(outage.end - outage.start),
        ));
        tansu.start_again();
        producing.join().expect("producer");
        assert!(
            app.is_running(),
            "stopped by restart {}:\n{}",
            restart + 1,
            app.log_text()
        );
    }
    if let Err(last) = harness::wait_readiness(&admin, None, Duration::from_secs(120)) {
        panic!("not ready after the restarts: {last:?}\n{}", app.log_text());
    }
    py_produce(&bed.brokers, &bed.input, sentinels);
    bed.wait_caught_up(&data.records, &app);
    let failed = metric("tributary_output_errors_total");
    let rebuilt = metric("tributary_partitions_rebuilt_total");
    eprintln!("outputs not delivered: {failed}; partitions rebuilt: {rebuilt}");
    bed.finish(&data, &mut app);
    dataset::check_steps(&data, &bed.anomalies_out(data.steps.len()));
    (failed, rebuilt)
}

#[test]
fn the_rollup_app_rides_out_three_broker_restarts_mid_stream() {
    // The producer rides out a 1-4 s outage by itself (message.timeout.ms is 5 min).
    broker_outages(&[], 3, 1_000..4_000, false);
}

#[test]
fn outputs_the_broker_never_took_are_produced_again_by_a_rebuild() {
    // Outputs time out during the outage: their partitions are rebuilt from the newest
    // acknowledged plan and produce them again, and the app stays up. Not idempotent here:
    // after a timed-out output librdkafka bumps the idempotent producer's epoch, and
    // tansu 0.6's sqlite storage panics on that ("more or less than one row" in
    // idempotent_message_check) and serves nothing afterwards; Kafka takes it.
    // Outputs wait 1 s in the producer, so the broker stops with some in flight; they
    // time out 5 s after they were produced, well within the 10-12 s outage. With 2 s,
    // tansu (sqlite, busy with the rebuilds' reads) sometimes took longer than the 1 s
    // left to acknowledge a produce after the restart, and the rebuilds never ended.
    let properties = [
        ("message.timeout.ms", "5000"),
        ("linger.ms", "1000"),
        ("enable.idempotence", "false"),
    ];
    let (failed, rebuilt) = broker_outages(&properties, 2, 10_000..12_000, true);
    assert!(failed >= 1, "no output failed, so nothing was tested");
    assert!(
        rebuilt >= 1,
        "{failed} outputs failed but no partition was rebuilt"
    );
}

/// Partitions whose state is being rebuilt (outputs suppressed), from the app's /metrics.
fn replaying(admin: &str) -> Vec<String> {
    let Some((_, text)) = harness::admin_get(admin, "/metrics") else {
        return vec![];
    };
    text.lines()
        .filter(|l| l.starts_with("tributary_partition_replaying{"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(_, v)| v.parse::<f64>() == Ok(1.0))
        .map(|(series, _)| series.to_owned())
        .collect()
}

/// The rollup app SIGKILLed four times at seeded random points, alternately restarted
/// with and without its local checkpoints; one of the restarts without them (seeded) is
/// killed as soon as /metrics shows a partition rebuilding, and its log, read after the
/// kill, proves a replay never finished. Ends with the oracle's exact comparison.
#[test]
fn the_rollup_app_survives_sigkills_at_random_points_one_inside_a_replay() {
    let seed = seed();
    let mut next = rng(seed);
    let tansu = Tansu::start();
    let brokers = tansu.brokers.clone();
    let bed = bed_on(Box::new(tansu), brokers).with_cusum();
    create_topics(&bed.brokers, &[(&bed.input, PARTITIONS)]);
    let series = 48;
    let data = dataset::build(series, 12, PARTITIONS, seed);
    let (body, sentinels) = split(&data, series);
    let chunks: Vec<_> = body.chunks(body.len() / 5 + 1).collect();
    let admin = format!("127.0.0.1:{}", free_port());
    py_produce(&bed.brokers, &bed.input, chunks[0]);
    let mut produced = 1;
    let replay_kill = [1, 3][next(2) as usize];
    let mut inside = None;
    for i in 0..4 {
        if i % 2 == 1 {
            let _ = std::fs::remove_dir_all(&bed.state_dir);
        }
        let mut app = bed.start(&admin, &bed.state_dir);
        if i == replay_kill {
            let seen = harness::eventually(Duration::from_secs(60), || {
                Some(replaying(&admin)).filter(|r| !r.is_empty())
            });
            kill(&mut app);
            // Read after the kill: a replay the log shows unfinished never finished.
            let log = app.log_text();
            let Some(partitions) = seen else {
                panic!("no partition was seen rebuilding after a restart without checkpoints:\n{log}");
            };
            let (started, finished) = (
                log.matches("replay started").count(),
                log.matches("replay finished").count(),
            );
            assert!(
                started > finished,
                "the kill came after the replays ({started} started, {finished} finished):\n{log}"
            );
            inside = Some(partitions);
        } else {
            let assigned = harness::eventually(Duration::from_secs(60), || {
                app.log_text().contains("partition assigned").then_some(())
            });
            assert!(assigned.is_some(), "{}", app.log_text());
            // More records while it runs, then a kill at a random point.
            py_produce(&bed.brokers, &bed.input, chunks[produced]);
            produced += 1;
            std::thread::sleep(Duration::from_millis(next(2_000)));
            if i == replay_kill - 1 {
                // The replay to kill into needs a committed plan to rebuild from.
                let committed = harness::eventually(Duration::from_secs(60), || {
                    let (c, _) = harness::py_committed(&bed.brokers, &bed.group, &bed.input);
                    (c.values().filter(|&&o| o > 0).count() == PARTITIONS as usize).then_some(())
                });
                assert!(committed.is_some(), "nothing committed:\n{}", app.log_text());
            }
            kill(&mut app);
        }
    }
    eprintln!("killed inside the replay of {inside:?}");
    for chunk in &chunks[produced..] {
        py_produce(&bed.brokers, &bed.input, chunk);
    }
    py_produce(&bed.brokers, &bed.input, sentinels);
    let mut app = bed.start(&admin, &bed.state_dir);
    bed.finish(&data, &mut app);
    dataset::check_steps(&data, &bed.anomalies_out(data.steps.len()));
}

/// Three instances of the rollup app in one group, started and stopped at seeded moments
/// while records stream in; after every other move the next one comes at once, before
/// the group has settled, after the others once it has. With `kills`, a third of
/// the stops are SIGKILLs. Ends with the oracle's exact comparison.
fn rebalance_storm(bed: Bed, kills: bool) {
    let seed = seed();
    let mut next = rng(seed);
    let series = 48;
    let data = dataset::build(series, 12, PARTITIONS, seed);
    let (body, sentinels) = split(&data, series);
    let chunks: Vec<_> = body.chunks(body.len() / 11 + 1).collect();
    let admins: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let state = |slot: usize| bed.state_dir.with_extension(slot.to_string());
    // Every process the storm started, so their logs can be read at the end.
    let mut started: Vec<(usize, Process)> = vec![(0, bed.start(&admins[0], &state(0)))];
    // Every partition has records and commits before the storm, so each takeover in it
    // resumes mid-stream.
    py_produce(&bed.brokers, &bed.input, chunks[0]);
    bed.wait_caught_up(chunks[0], &started[0].1);
    let mut running = [true, false, false];
    let mut moves = Vec::new();
    for (i, chunk) in chunks.iter().enumerate().skip(1) {
        let producing = {
            let (brokers, input, chunk) = (bed.brokers.clone(), bed.input.clone(), chunk.to_vec());
            std::thread::spawn(move || py_produce(&brokers, &input, &chunk))
        };
        let mut slot = next(3) as usize;
        if running[slot] && running.iter().filter(|r| **r).count() == 1 {
            // The last one running stays: another joins instead.
            slot = (slot + 1 + next(2) as usize) % 3;
        }
        if running[slot] {
            let app = &mut started
                .iter_mut()
                .rev()
                .find(|(s, _)| *s == slot)
                .expect("running")
                .1;
            if kills && next(3) == 0 {
                kill(app);
                moves.push(format!("kill {slot}"));
            } else {
                assert_eq!(
                    app.terminate(Duration::from_secs(60)),
                    Some(0),
                    "{}",
                    app.log_text()
                );
                moves.push(format!("stop {slot}"));
            }
        } else {
            if next(2) == 0 {
                let _ = std::fs::remove_dir_all(state(slot));
            }
            started.push((slot, bed.start(&admins[slot], &state(slot))));
            moves.push(format!("start {slot}"));
        }
        running[slot] = !running[slot];
        if i % 2 == 0 {
            // Settled: every partition owned, by every instance running.
            let owned: Vec<&String> = admins
                .iter()
                .zip(running)
                .filter(|(_, r)| *r)
                .map(|(a, _)| a)
                .collect();
            let settled = harness::eventually(Duration::from_secs(90), || {
                let counts: Vec<f64> = owned
                    .iter()
                    .filter_map(|a| harness::metric(a, "tributary_assigned_partitions"))
                    .collect();
                (counts.len() == owned.len()
                    && counts.iter().all(|c| *c > 0.0)
                    && counts.iter().sum::<f64>() == f64::from(PARTITIONS))
                .then_some(())
            });
            assert!(
                settled.is_some(),
                "never settled after {moves:?}:\n{}",
                logs(&started)
            );
            moves.push("settled".into());
        }
        producing.join().expect("producer");
    }
    eprintln!("storm: {}", moves.join(", "));
    py_produce(&bed.brokers, &bed.input, sentinels);
    let live = &started
        .iter()
        .rev()
        .find(|(s, _)| running[*s])
        .expect("one runs")
        .1;
    bed.wait_caught_up(&data.records, live);
    let out = bed.rollups_out(data.expected.len());
    dataset::check_rollups(&data, dataset::Duplicates::Identical, &out);
    dataset::check_steps(&data, &bed.anomalies_out(data.steps.len()));
    // It was a storm: partitions were taken over mid-stream (resumed past offset 0) many
    // times.
    let takeovers: Vec<usize> = started
        .iter()
        .filter(|(_, p)| p.log_text().lines().any(resumed_mid_stream))
        .map(|(s, _)| *s)
        .collect();
    let count: usize = started
        .iter()
        .map(|(_, p)| p.log_text().lines().filter(|l| resumed_mid_stream(l)).count())
        .sum();
    let slots: std::collections::BTreeSet<_> = takeovers.iter().collect();
    eprintln!(
        "{count} takeovers mid-stream, by instances {slots:?}, {} processes",
        started.len()
    );
    assert!(
        count >= PARTITIONS as usize / 2,
        "only {count} takeovers mid-stream, by {slots:?}:\n{}",
        logs(&started)
    );
    for (slot, app) in &mut started {
        if running[*slot] && app.is_running() {
            assert_eq!(
                app.terminate(Duration::from_secs(60)),
                Some(0),
                "{}",
                app.log_text()
            );
        }
    }
}

/// Every process's log, one after the other.
fn logs(started: &[(usize, Process)]) -> String {
    started
        .iter()
        .map(|(_, p)| p.log_text())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A log line of a partition resumed from a committed offset past its start.
fn resumed_mid_stream(line: &str) -> bool {
    line.contains("resuming partition")
        && line
            .split_once("committed=Some(")
            .and_then(|(_, rest)| rest.split_once(')'))
            .and_then(|(n, _)| n.parse::<i64>().ok())
            .is_some_and(|n| n > 0)
}

/// On the mock broker (its own process), whose group coordinator expires a killed member
/// that was in a settled group.
#[test]
fn a_rebalance_storm_of_three_instances_with_sigkills_loses_and_doubles_nothing() {
    rebalance_storm(dev_bed().with_cusum(), true);
}

/// On tansu the instances leave gracefully only: tansu 0.6 can leave a SIGKILLed member of
/// a settled group as the one every partition is assigned to, and the group then never
/// settles again (seen here: the survivor's assignment stayed empty for minutes).
#[test]
#[ignore = "tansu 0.6 group coordinator (issue 12): in 1 of 13 runs here the group never settled within 90 s after two graceful leaves in a row, with the survivor polling; the same storm on the mock broker, with SIGKILLs, runs in CI. Run with --ignored"]
fn a_rebalance_storm_of_three_instances_on_tansu() {
    rebalance_storm(tansu_bed().with_cusum(), false);
}
