//! tributary-writer under faults: SIGKILLs, a node down, failed and refused commits,
//! broker restarts and partitions handed between writers. Nothing lost, nothing committed
//! before it was written.

use std::time::Duration;

use harness::{committed_and_end, eventually, free_port, metric, py_produce};

use crate::writer::{
    Broker, Setup, TestBroker, points, setup_broker, setup_on, setup_with, start_writer, start_writer_env,
    wait_all_points, wait_written,
};

#[test]
fn writer_loses_nothing_under_faults_a_node_down_and_sigkill() {
    // The mock broker process: it expires the killed member after its 6 s session.
    faults_a_node_down_and_sigkill(setup_on(3, true));
}

#[test]
fn writer_sends_failed_commits_again_until_the_broker_confirms_them() {
    // The broker fails the first 3 offset commits. Nothing new is read after the rows are
    // written, so only a writer that learns of the failures (commit callback) and sends
    // the same offsets again ends with every offset committed.
    let s = setup_with(1, Some(3), 0);
    let data = points(12, 25);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let end = harness::end_offsets(&data);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &[]);
    wait_written(&admin, data.len() as u64, &mut writer);
    let committed = eventually(Duration::from_secs(30), || {
        let (committed, _) = harness::py_committed(s.kafka.brokers(), &s.group, &s.metrics);
        (committed == end).then_some(())
    });
    assert!(
        committed.is_some(),
        "committed {:?}, end {end:?}\n{}",
        harness::py_committed(s.kafka.brokers(), &s.group, &s.metrics).0,
        writer.log_text()
    );
    let failed = metric(&admin, "tributary_writer_commit_errors_total").unwrap_or(0.0);
    assert!(failed >= 3.0, "the injected failures were seen: {failed}");
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
}

#[test]
fn writer_sends_its_final_commit_again_until_the_broker_confirms_it() {
    // No commit before shutdown (a 1 h commit interval) and the broker fails the first 2
    // offset commits: only a writer that sends its final commit again ends committed at
    // the end of every partition.
    let s = setup_with(1, Some(2), 0);
    let data = points(12, 25);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let end = harness::end_offsets(&data);
    let admin = format!("127.0.0.1:{}", free_port());
    let env = [("TRIBUTARY_KAFKA_COMMIT_INTERVAL", "1h")];
    let mut writer = start_writer_env(&s, &admin, &[], &env);
    wait_written(&admin, data.len() as u64, &mut writer);
    assert_eq!(
        writer.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        writer.log_text()
    );
    let (committed, _) = harness::py_committed(s.kafka.brokers(), &s.group, &s.metrics);
    assert_eq!(committed, end, "{}", writer.log_text());
    assert_eq!(
        writer
            .log_text()
            .matches("final offset commit failed; sending it again")
            .count(),
        2,
        "{}",
        writer.log_text()
    );
}

#[test]
fn writers_sharing_a_group_hand_partitions_over_cancelling_revoked_rows() {
    // Writer A reads every record at once and writes slowly; writer B joins the group and
    // takes partitions from A, then leaves. A's rows of the partitions it gave up are
    // cancelled (B writes them again from the committed offset), nothing is lost, and the
    // group ends committed at the end of every partition.
    let s = setup_on(1, true);
    let session = [(
        "TRIBUTARY_KAFKA_PROPERTIES",
        r#"{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }"#,
    )];
    let data = points(30, 100);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let slow = ["--rows-per-sec", "200", "--burst", "32"];
    let admin_a = format!("127.0.0.1:{}", free_port());
    let mut a = start_writer_env(&s, &admin_a, &slow, &session);
    let started = eventually(Duration::from_secs(60), || {
        (metric(&admin_a, "tributary_writer_rows_written_total").unwrap_or(0.0) > 300.0).then_some(())
    });
    assert!(started.is_some(), "{}", a.log_text());
    let admin_b = format!("127.0.0.1:{}", free_port());
    let mut b = start_writer_env(&s, &admin_b, &slow, &session);
    let handed = eventually(Duration::from_secs(60), || {
        (a.log_text().contains("partition revoked") && b.log_text().contains("partition assigned"))
            .then_some(())
    });
    assert!(handed.is_some(), "A:\n{}\nB:\n{}", a.log_text(), b.log_text());
    // Rows waiting in the limiter are dropped when they wake up, not at the revoke.
    let cancelled = eventually(Duration::from_secs(30), || {
        (metric(&admin_a, "tributary_writer_rows_cancelled_total").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(
        cancelled.is_some(),
        "rows of revoked partitions were cancelled:\n{}",
        a.log_text()
    );
    let b_wrote = eventually(Duration::from_secs(60), || {
        (metric(&admin_b, "tributary_writer_rows_written_total").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(b_wrote.is_some(), "{}", b.log_text());
    assert_eq!(b.terminate(Duration::from_secs(60)), Some(0), "{}", b.log_text());
    wait_all_points(&s, data.len(), &a);
    assert_eq!(a.terminate(Duration::from_secs(60)), Some(0), "{}", a.log_text());
    let (committed, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len());
    assert_eq!(committed, end);
}

#[test]
fn writer_loses_nothing_after_a_sigkill_on_tansu() {
    // tansu serves the next record batch for a fetch that starts inside one: the writer
    // must notice instead of skipping records.
    faults_a_node_down_and_sigkill(setup_on(3, false));
}

fn faults_a_node_down_and_sigkill(s: Setup) {
    let session = [(
        "TRIBUTARY_KAFKA_PROPERTIES",
        r#"{ "session.timeout.ms" = "6000" }"#,
    )];
    let data = points(30, 100);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    s.ring.faults(
        None,
        r#"{"overloaded": 0.2, "write_timeout": 0.2, "latency_ms": 5}"#,
    );
    s.ring.faults(Some(2), r#"{"down": true}"#);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer_env(
        &s,
        &admin,
        &["--rows-per-sec", "1500", "--burst", "100"],
        &session,
    );
    // Kill it hard mid-run, then restart: at-least-once means nothing is lost.
    let some = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_writer_rows_written_total").unwrap_or(0.0) > 500.0).then_some(())
    });
    assert!(some.is_some(), "{}", writer.log_text());
    writer.signal("KILL");
    assert_eq!(writer.wait(Duration::from_secs(10)), None, "killed by a signal");
    s.ring.faults(Some(2), r#"{"down": false}"#);
    let mut writer = start_writer_env(&s, &admin, &[], &session);
    let retried = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_writer_retries_total").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(retried.is_some(), "injected errors were retried");
    s.ring.faults(
        None,
        r#"{"overloaded": 0.0, "write_timeout": 0.0, "latency_ms": 0}"#,
    );
    wait_all_points(&s, data.len(), &writer);
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
    let (committed, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len());
    assert_eq!(committed, end);
}

#[test]
fn writer_survives_sigkills_at_random_points_under_ring_faults() {
    // Three SIGKILLs, each once the writer has written a seeded number of rows; before
    // each start a seeded node is down or up, and the ring is slow and sheds some writes
    // (its own count is read only once the faults are cleared). In the end every
    // row is in the ring exactly once (rows are keyed, so a second write of one is the
    // same row) and the group is committed at the end of every partition.
    let seed = crate::faults::seed();
    let mut next = crate::faults::rng(seed);
    let s = setup_on(3, true);
    let session = [(
        "TRIBUTARY_KAFKA_PROPERTIES",
        r#"{ "session.timeout.ms" = "6000" }"#,
    )];
    let data = points(30, 100);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let admin = format!("127.0.0.1:{}", free_port());
    let limit = ["--rows-per-sec", "1500", "--burst", "100"];
    let total = data.len() as u64;
    let thresholds: Vec<u64> = (0..3).map(|_| total / 20 + next(total * 3 / 10)).collect();
    for (kill, at) in thresholds.iter().enumerate() {
        // Node 1 is the writer's only contact point: it stays up so a restart can start.
        let node = 2 + next(2) as usize;
        let down = next(2) == 1;
        s.ring.faults(Some(node), &format!(r#"{{"down": {down}}}"#));
        s.ring.faults(
            None,
            &format!(
                r#"{{"overloaded": 0.{}, "write_timeout": 0.{}, "latency_ms": {}}}"#,
                next(3),
                next(3),
                next(10)
            ),
        );
        let mut writer = start_writer_env(&s, &admin, &limit, &session);
        let reached = eventually(Duration::from_secs(120), || {
            let written = metric(&admin, "tributary_writer_rows_written_total").unwrap_or(0.0);
            (written >= *at as f64).then_some(())
        });
        assert!(
            reached.is_some(),
            "kill {}: never wrote {at} rows (node {node} down: {down})\n{}",
            kill + 1,
            writer.log_text()
        );
        writer.signal("KILL");
        assert_eq!(writer.wait(Duration::from_secs(10)), None, "killed by a signal");
        s.ring.faults(Some(node), r#"{"down": false}"#);
    }
    eprintln!("killed after {thresholds:?} rows written by each run, of {total}");
    s.ring.faults(
        None,
        r#"{"overloaded": 0.0, "write_timeout": 0.0, "latency_ms": 0}"#,
    );
    let mut writer = start_writer_env(&s, &admin, &[], &session);
    wait_all_points(&s, data.len(), &writer);
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        total,
        "no row beyond the data"
    );
    let (committed, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len());
    assert_eq!(committed, end);
}

#[test]
fn writer_rides_out_broker_restarts_mid_stream() {
    // tansu (sqlite) stopped for a seeded 2-5 s twice while the writer works through the
    // points, with the same writer process running throughout: every row reaches the
    // ring, and the group is committed at the end of every partition.
    let seed = crate::faults::seed();
    let mut next = crate::faults::rng(seed);
    let mut s = setup_broker(1, Broker::TansuStored, 3, 0);
    let data = points(30, 100);
    let (first, second) = data.split_at(data.len() / 2);
    py_produce(s.kafka.brokers(), &s.metrics, first);
    let admin = format!("127.0.0.1:{}", free_port());
    let session = [(
        "TRIBUTARY_KAFKA_PROPERTIES",
        r#"{ "session.timeout.ms" = "6000" }"#,
    )];
    let mut writer = start_writer_env(&s, &admin, &["--rows-per-sec", "300", "--burst", "64"], &session);
    let total = data.len() as u64;
    for (restart, rest) in [Some(second), None].into_iter().enumerate() {
        let at = (restart as u64 + 1) * total / 4 + next(total / 10);
        let reached = eventually(Duration::from_secs(120), || {
            let written = metric(&admin, "tributary_writer_rows_written_total").unwrap_or(0.0);
            (written >= at as f64).then_some(())
        });
        assert!(reached.is_some(), "never wrote {at} rows:\n{}", writer.log_text());
        let TestBroker::Tansu(tansu) = &mut s.kafka else {
            unreachable!("a tansu setup")
        };
        tansu.stop();
        std::thread::sleep(Duration::from_millis(2_000 + next(3_000)));
        tansu.start_again();
        assert!(
            writer.is_running(),
            "stopped by restart {}:\n{}",
            restart + 1,
            writer.log_text()
        );
        if let Some(rest) = rest {
            py_produce(s.kafka.brokers(), &s.metrics, rest);
        }
    }
    wait_all_points(&s, data.len(), &writer);
    // A session lost in an outage revokes without a commit; the rows are in the ring, and
    // the writer, back in the group, reads them again from the committed offset, writes
    // them again (the same rows) and commits to the end by itself.
    let (_, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len());
    let mut last = Default::default();
    let caught_up = eventually(Duration::from_secs(120), || {
        let (committed, _) = harness::py_committed(s.kafka.brokers(), &s.group, &s.metrics);
        let done = committed == end;
        last = committed;
        done.then_some(())
    });
    assert!(
        caught_up.is_some(),
        "never committed to the end: {last:?} of {end:?}\n{}",
        writer.log_text()
    );
    assert_eq!(
        writer.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        writer.log_text()
    );
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        total,
        "no row beyond the data"
    );
}
