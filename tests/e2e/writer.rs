//! tributary-writer as a process: tansu broker, emulated CQL ring process, Python clients.

use std::time::{Duration, Instant};

use harness::{
    CqlRing, Outgoing, Process, Tansu, app_binary, committed_and_end, create_topics, eventually, free_port,
    metric, py_consume, py_produce, py_produce_headed, unique,
};

/// Either broker process; both speak the Kafka protocol to the writer.
pub(crate) enum TestBroker {
    Tansu(Tansu),
    Dev(harness::DevKafka),
}

impl TestBroker {
    pub(crate) fn brokers(&self) -> &str {
        match self {
            TestBroker::Tansu(t) => &t.brokers,
            TestBroker::Dev(d) => &d.brokers,
        }
    }
}

pub(crate) struct Setup {
    pub(crate) kafka: TestBroker,
    pub(crate) ring: CqlRing,
    pub(crate) keyspace: String,
    pub(crate) metrics: String,
    pub(crate) rollups: String,
    pub(crate) anomalies: String,
    pub(crate) dlq: String,
    pub(crate) group: String,
}

fn setup(rf: u32) -> Setup {
    setup_on(rf, false)
}

/// Tansu and a ring of `nodes` nodes, keyspace at `rf`.
pub(crate) fn setup_nodes(rf: u32, nodes: usize) -> Setup {
    setup_layout(rf, None, nodes, 0)
}

pub(crate) fn setup_on(rf: u32, dev_kafka: bool) -> Setup {
    setup_ring(rf, dev_kafka, 0)
}

fn setup_ring(rf: u32, dev_kafka: bool, spare_nodes: usize) -> Setup {
    setup_with(rf, dev_kafka.then_some(0), spare_nodes)
}

/// `dev_kafka` = Some(n): the mock broker process, whose first n offset commits fail;
/// None: tansu.
fn setup_with(rf: u32, dev_kafka: Option<usize>, spare_nodes: usize) -> Setup {
    setup_layout(rf, dev_kafka, 3, spare_nodes)
}

fn setup_layout(rf: u32, dev_kafka: Option<usize>, nodes: usize, spare_nodes: usize) -> Setup {
    setup_broker(
        rf,
        dev_kafka.map_or(Broker::Tansu, Broker::Dev),
        nodes,
        spare_nodes,
    )
}

/// Which broker process a setup starts.
enum Broker {
    /// The mock broker process, whose first n offset commits fail.
    Dev(usize),
    /// tansu with in-memory storage.
    Tansu,
    /// tansu on sqlite storage, so it can be stopped and started again.
    TansuStored,
}

fn setup_broker(rf: u32, broker: Broker, nodes: usize, spare_nodes: usize) -> Setup {
    let (metrics, rollups, anomalies, dlq) = (
        unique("metrics"),
        unique("rollups"),
        unique("anomalies"),
        unique("dlq"),
    );
    let tansu = |t: Tansu| {
        create_topics(
            &t.brokers,
            &[(&metrics, 3), (&rollups, 3), (&anomalies, 3), (&dlq, 3)],
        );
        TestBroker::Tansu(t)
    };
    let kafka = match broker {
        Broker::Dev(fail_commits) => TestBroker::Dev(harness::DevKafka::start_failing_commits(
            &[&metrics, &rollups, &anomalies, &dlq],
            3,
            fail_commits,
        )),
        Broker::Tansu => tansu(Tansu::start()),
        Broker::TansuStored => tansu(Tansu::start_stored()),
    };
    let ring = CqlRing::start_with_spare(nodes, spare_nodes);
    let s = Setup {
        keyspace: unique("ks").replace('-', "_"),
        metrics,
        rollups,
        anomalies,
        dlq,
        group: unique("writer"),
        kafka,
        ring,
    };
    for _ in 0..2 {
        // Twice: schema apply is idempotent.
        let out = std::process::Command::new(app_binary("tributary-writer"))
            .args([
                "schema",
                "apply",
                "--contact-points",
                &s.ring.contact_point(),
                "--keyspace",
                &s.keyspace,
                "--replication-factor",
                &rf.to_string(),
                "--log",
                "warn",
            ])
            .output()
            .expect("schema apply");
        assert!(
            out.status.success(),
            "schema apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s
}

/// A path for a writer config file in a directory of its own.
fn config_path() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("writer-config"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("writer.toml")
}

fn start_writer(s: &Setup, admin: &str, extra: &[&str]) -> Process {
    start_writer_env(s, admin, extra, &[])
}

pub(crate) fn start_writer_env(s: &Setup, admin: &str, extra: &[&str], env: &[(&str, &str)]) -> Process {
    let mut args = vec![
        "--brokers",
        s.kafka.brokers(),
        "--contact-points",
        s.ring.contact_point().leak(),
        "--keyspace",
        &s.keyspace,
        "--metrics-topic",
        &s.metrics,
        "--rollups-topic",
        &s.rollups,
        "--anomalies-topic",
        &s.anomalies,
        "--dlq-topic",
        &s.dlq,
        "--group",
        &s.group,
        "--admin-listen",
        admin,
    ];
    args.extend_from_slice(extra);
    Process::spawn("tributary-writer", &app_binary("tributary-writer"), &args, env)
}

/// `tributary-writer ctl rate-limit` against a running writer; it must succeed.
pub(crate) fn ctl_rate_limit(admin: &str, rows_per_sec: u32, burst: u32) {
    let out = std::process::Command::new(app_binary("tributary-writer"))
        .args(["ctl", "--admin", admin, "rate-limit", "--rows-per-sec"])
        .arg(rows_per_sec.to_string())
        .arg("--burst")
        .arg(burst.to_string())
        .output()
        .expect("ctl");
    assert!(
        out.status.success(),
        "ctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn points(n_series: usize, per_series: usize) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for i in 0..per_series {
        for s in 0..n_series {
            let name = format!("host-{s}/cpu");
            out.push(Outgoing {
                key: Some(name.clone()),
                value: Some(harness::point_json(
                    &name,
                    1_732_320_000_000 + i as i64 * 10_000,
                    i as f64,
                )),
                partition: Some((s % 3) as i32),
            });
        }
    }
    out
}

pub(crate) fn wait_written(admin: &str, rows: u64, writer: &mut Process) {
    let done = eventually(Duration::from_secs(120), || {
        (metric(admin, "tributary_writer_rows_written_total").unwrap_or(0.0) as u64 >= rows).then_some(())
    });
    assert!(
        done.is_some(),
        "writer wrote {:?} of {rows}:\n{}",
        metric(admin, "tributary_writer_rows_written_total"),
        writer.log_text()
    );
}

/// Waits until the ring holds all `rows` points (nothing lost), else fails with the log.
pub(crate) fn wait_all_points(s: &Setup, rows: usize, writer: &Process) {
    let all = eventually(Duration::from_secs(120), || {
        (s.ring.count(&s.keyspace, "points") == rows as u64).then_some(())
    });
    assert!(
        all.is_some(),
        "rows lost: {} of {rows}\n{}",
        s.ring.count(&s.keyspace, "points"),
        writer.log_text()
    );
}

fn writes_everything_token_aware(rf: u32, nodes: usize) {
    let s = setup_nodes(rf, nodes);
    let data = points(40, 50);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let rollup = |res: &str, start: i64, width: i64| Outgoing {
        key: Some("host-1/cpu".into()),
        value: Some(format!(
            r#"{{"series":"host-1/cpu","resolution":"{res}","window_start":{start},"window_end":{},"count":3,"min":1,"max":3,"sum":6,"avg":2}}"#,
            start + width
        )),
        partition: Some(1),
    };
    py_produce(
        s.kafka.brokers(),
        &s.rollups,
        &[
            rollup("5m", 0, 300_000),
            rollup("5m", 300_000, 300_000),
            rollup("1h", 0, 3_600_000),
            rollup("7m", 0, 420_000),
        ],
    );
    // A row from a newer rollup app (record format 3): refused by name, not misread.
    py_produce_headed(
        s.kafka.brokers(),
        &s.rollups,
        &[(rollup("5m", 600_000, 300_000), vec![("tributary.format", "3")])],
    );
    py_produce(s.kafka.brokers(), &s.anomalies, &[Outgoing {
        key: Some("host-2/cpu".into()),
        value: Some(r#"{"series":"host-2/cpu","ts":1732320000000,"value":9.5,"direction":"up","cusum":6.1,"threshold":5.0,"mean":1.0,"stddev":0.5}"#.into()),
        partition: Some(2),
    }]);
    py_produce(
        s.kafka.brokers(),
        &s.metrics,
        &[Outgoing {
            key: None,
            value: Some("not json".into()),
            partition: Some(0),
        }],
    );
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &[]);
    wait_written(&admin, data.len() as u64 + 4, &mut writer);
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        data.len() as u64,
        "every point read back"
    );
    assert_eq!(s.ring.count(&s.keyspace, "rollups_5m"), 2);
    assert_eq!(s.ring.count(&s.keyspace, "rollups_1h"), 1);
    assert_eq!(s.ring.count(&s.keyspace, "anomalies"), 1);
    let dead = py_consume(s.kafka.brokers(), &s.dlq, 3, 60, 2.0);
    assert_eq!(
        dead.len(),
        3,
        "the bad point, the 7m rollup (no table) and the format-3 rollup are dead-lettered"
    );
    assert!(dead.iter().any(|d| d.headers["tributary.error"].contains("7m")));
    assert!(
        dead.iter()
            .any(|d| d.headers["tributary.error"]
                .contains("record format 3 is newer than this build reads (2)")),
        "{dead:?}"
    );
    let batches = s.ring.total("batches");
    assert!(batches > 0, "rows were batched");
    assert_eq!(
        s.ring.total("batches_replica_local"),
        batches,
        "every batch owned by its coordinator: {:?}",
        s.ring.counters()
    );
    assert_eq!(s.ring.total("batches_multi_replica_set"), 0);
    assert!(
        s.ring
            .counters()
            .iter()
            .all(|c| c["largest_batch_bytes"].as_u64().unwrap_or(0) < 5 * 1024 + 1024),
        "batches stay near the 5 KiB warning threshold"
    );
    assert_eq!(
        s.ring.total("batch_warnings"),
        0,
        "no batch over the 5 KiB warning threshold"
    );
    assert_eq!(
        writer.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        writer.log_text()
    );
    let (committed, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len() + 1);
    assert_eq!(committed, end, "every acknowledged row committed at shutdown");
}

#[test]
fn writer_rf1_every_row_read_back_and_batches_replica_local() {
    writes_everything_token_aware(1, 3);
}

#[test]
fn writer_rf3_on_six_nodes_every_row_read_back_and_batches_replica_local() {
    // Six nodes at RF 3: no node replicates every row, so locality is earned.
    writes_everything_token_aware(3, 6);
}

#[test]
fn writer_rate_limit_holds_and_changes_at_runtime() {
    let s = setup(1);
    let data = points(30, 200);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let (rate, burst) = (400.0, 64.0);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &["--rows-per-sec", "400", "--burst", "64"]);
    // Sample the ring's own row counter for 13 s. A window of 10 s or more may see at
    // most rate·Δt + burst. (Rows admitted just before a window land inside it, but once
    // the bucket is empty that is rate·latency, under burst while the ring answers within
    // burst/rate = 160 ms.) A shorter window is held to rate·(Δt + 0.25 s) + burst.
    // 6,000 rows at 400/s keep the writer busy past the sampling.
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(13) {
        samples.push((Instant::now(), s.ring.total("rows_written")));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        samples.last().map_or(0, |s| s.1) > 0,
        "nothing written: {}",
        writer.log_text()
    );
    assert!(
        samples.last().map_or(0, |s| s.1) < data.len() as u64,
        "the writer must still be busy at the end of the sampling, or the bound proves nothing"
    );
    let long_windows = samples
        .iter()
        .enumerate()
        .flat_map(|(i, a)| samples[i + 1..].iter().map(move |b| b.0.duration_since(a.0)))
        .filter(|dt| *dt >= Duration::from_secs(10))
        .count();
    assert!(long_windows >= 100, "only {long_windows} windows of 10 s or more");
    for (i, a) in samples.iter().enumerate() {
        for b in &samples[i + 1..] {
            let dt = b.0.duration_since(a.0).as_secs_f64();
            let slack = if dt >= 10.0 { 0.0 } else { 0.25 };
            let bound = rate * (dt + slack) + burst;
            assert!(
                ((b.1 - a.1) as f64) <= bound,
                "{} rows in {dt:.2}s exceeds {bound:.0}",
                b.1 - a.1
            );
        }
    }
    // Raise the limit through the CLI: the writer speeds up without a restart.
    let before = s.ring.total("rows_written");
    ctl_rate_limit(&admin, 5000, 500);
    assert_eq!(
        metric(&admin, "tributary_writer_rate_limit_rows_per_sec"),
        Some(5000.0)
    );
    let t1 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let gained = s.ring.total("rows_written") - before;
    let old_bound = rate * (t1.elapsed().as_secs_f64() + 0.25) + burst;
    assert!(
        gained as f64 > old_bound,
        "only {gained} rows after raising the limit (old bound {old_bound:.0})"
    );
    wait_written(&admin, data.len() as u64, &mut writer);
    assert!(metric(&admin, "tributary_writer_rate_limit_wait_seconds_total").unwrap_or(0.0) > 0.0);
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
    assert_eq!(s.ring.count(&s.keyspace, "points"), data.len() as u64);
}

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

#[test]
fn writer_is_unready_while_the_ring_is_down_and_ready_again_after() {
    let s = setup_on(1, true);
    let admin = format!("127.0.0.1:{}", free_port());
    let writer = start_writer(&s, &admin, &[]);
    let readiness = |reason, secs| {
        if let Err(last) = harness::wait_readiness(&admin, reason, Duration::from_secs(secs)) {
            panic!("waited for {reason:?}, last {last:?}\n{}", writer.log_text());
        }
    };
    readiness(None, 60);
    // Every node refuses connections: the driver's pools empty and the writer says so.
    s.ring.faults(None, r#"{"down": true}"#);
    readiness(Some("no open connection to any node"), 60);
    assert_eq!(harness::admin_get(&admin, "/health/live").map(|r| r.0), Some(200));
    // Points that arrive meanwhile wait; nothing is lost.
    let data = points(6, 20);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    std::thread::sleep(Duration::from_secs(2));
    let still = harness::admin_get(&admin, "/health/ready");
    assert!(
        still.as_ref().is_some_and(|(status, _)| *status == 503),
        "{still:?}"
    );
    s.ring.faults(None, r#"{"down": false}"#);
    readiness(None, 60);
    wait_all_points(&s, data.len(), &writer);
}

#[test]
fn writer_pauses_for_a_slow_cluster_and_reloads_limits_on_sighup() {
    // The mock broker process: tansu 0.6 returns nothing for a fetch that starts inside a
    // record batch, which is where a resumed partition continues.
    let s = setup_on(1, true);
    let data = points(30, 40);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    // A slow ring and a small per-partition allowance: partitions must be paused rather
    // than read ahead without bound.
    s.ring.faults(None, r#"{"latency_ms": 200}"#);
    let file = config_path();
    let write_limits = |rows: u32| {
        std::fs::write(&file, format!("[limits]\nrows_per_sec = {rows}\nburst = 200\n[flow]\nmax_pending_per_partition = 40\n[batch]\nmax_rows = 8\n"))
            .expect("config");
    };
    write_limits(100_000);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &["--config", file.to_str().expect("utf-8 path")]);
    let paused = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_writer_paused_partitions").unwrap_or(0.0) > 0.0).then_some(())
    });
    assert!(paused.is_some(), "no partition was paused: {}", writer.log_text());
    assert!(
        metric(&admin, "tributary_writer_pending_rows").unwrap_or(f64::MAX) <= 3.0 * 40.0 + 3.0 * 8.0,
        "pending rows stay bounded"
    );
    write_limits(1234);
    writer.signal("HUP");
    let reloaded = eventually(Duration::from_secs(30), || {
        (metric(&admin, "tributary_writer_rate_limit_rows_per_sec") == Some(1234.0)).then_some(())
    });
    assert!(
        reloaded.is_some(),
        "SIGHUP did not reload the limits: {}",
        writer.log_text()
    );
    s.ring.faults(None, r#"{"latency_ms": 0}"#);
    wait_written(&admin, data.len() as u64, &mut writer);
    assert_eq!(s.ring.count(&s.keyspace, "points"), data.len() as u64);
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
}

#[test]
fn writer_splits_a_rejected_batch_and_dead_letters_only_the_refused_rows() {
    let s = setup(1);
    let mut data = points(20, 20);
    // Partition keys longer than 65,535 bytes: the cluster refuses these rows for good.
    let refused: Vec<String> = (0..3).map(|i| format!("{i}-{}", "x".repeat(70_000))).collect();
    for (i, name) in refused.iter().enumerate() {
        data.push(Outgoing {
            key: Some(name.clone()),
            value: Some(harness::point_json(name, 1_732_320_000_000, 1.0)),
            partition: Some(i as i32 % 3),
        });
    }
    data.extend(points(20, 20).into_iter().map(|mut o| {
        // Same series, later points: good rows after the refused ones too.
        let v: serde_json::Value = serde_json::from_str(o.value.as_deref().unwrap_or("{}")).expect("json");
        let series = v["series"].as_str().unwrap_or_default().to_owned();
        let ts = v["ts"].as_i64().unwrap_or(0) + 86_400_000;
        o.value = Some(harness::point_json(&series, ts, 2.0));
        o
    }));
    let good = data.len() - refused.len();
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    // Room for a long row inside a batch, so the refused rows arrive in batches with good
    // ones and the writer must split them.
    let file = config_path();
    std::fs::write(&file, "[batch]\nmax_bytes = 1000000\nlinger = \"50ms\"\n").expect("config");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &["--config", file.to_str().expect("utf-8 path")]);
    let settled = eventually(Duration::from_secs(120), || {
        let written = metric(&admin, "tributary_writer_rows_written_total").unwrap_or(0.0) as usize;
        let dead = metric(&admin, "tributary_writer_dead_lettered_total").unwrap_or(0.0) as usize;
        (written + dead >= data.len()).then_some(())
    });
    assert!(settled.is_some(), "{}", writer.log_text());
    assert!(
        metric(&admin, "tributary_writer_batches_split_total").unwrap_or(0.0) > 0.0,
        "a refused row shared a batch with good rows, and the batch was split"
    );
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        good as u64,
        "every good row written, including those batched with a refused one"
    );
    let dead = py_consume(s.kafka.brokers(), &s.dlq, refused.len(), 60, 2.0);
    assert_eq!(
        dead.len(),
        refused.len(),
        "only the refused rows are dead-lettered"
    );
    for d in &dead {
        let reason = &d.headers["tributary.error"];
        // The driver or the cluster refuses the key; either way the reason names the limit.
        assert!(reason.contains("65535"), "the reason: {reason}");
        assert!(refused.contains(d.key.as_ref().expect("key")));
        assert_eq!(d.headers.get("tributary.source.topic"), Some(&s.metrics));
    }
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
    let (committed, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len());
    assert_eq!(committed, end, "dead-lettered rows are committed too");
}

#[test]
fn writer_adaptive_rate_backs_off_under_overload_and_climbs_back() {
    let s = setup(1);
    let data = points(30, 100);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    // Each node takes at most 200 rows/s and answers Overloaded beyond that, as a busy
    // Cassandra node does; the writer may send 20,000 rows/s.
    s.ring.faults(None, r#"{"max_rows_per_sec": 200}"#);
    let file = config_path();
    std::fs::write(
        &file,
        "[limits]\nrows_per_sec = 20000\nburst = 500\nadaptive = true\nadaptive_backoff = 0.5\nadaptive_increase = 2.0\nadaptive_interval = \"1s\"\n",
    )
    .expect("config");
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &["--config", file.to_str().expect("utf-8 path")]);
    let effective = || metric(&admin, "tributary_writer_rate_limit_effective_rows_per_sec");
    let backed_off = eventually(Duration::from_secs(60), || {
        effective().is_some_and(|r| r <= 5_000.0).then_some(())
    });
    assert!(
        backed_off.is_some(),
        "effective rate {:?} never came down: {}",
        effective(),
        writer.log_text()
    );
    assert!(metric(&admin, "tributary_writer_overload_signals_total").unwrap_or(0.0) > 0.0);
    assert_eq!(
        metric(&admin, "tributary_writer_rate_limit_rows_per_sec"),
        Some(20_000.0),
        "adaptation lowers the rate in force, not the configured limit"
    );
    // The cluster recovers: the rate climbs back to the configured limit.
    s.ring.faults(None, r#"{"max_rows_per_sec": 0}"#);
    let climbed = eventually(Duration::from_secs(60), || {
        effective().is_some_and(|r| r >= 20_000.0).then_some(())
    });
    assert!(
        climbed.is_some(),
        "effective rate {:?} did not climb back",
        effective()
    );
    wait_written(&admin, data.len() as u64, &mut writer);
    assert!(s.ring.total("throttled") > 0, "the ring did push back");
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        data.len() as u64,
        "nothing lost"
    );
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
}

/// Batches and replica-local batches over every node, now.
/// Batches applied and those of them that were replica-local, from one snapshot of the
/// ring's counters (two reads, or counting batches on arrival, would let a batch in
/// flight between them look non-local).
fn batch_counts(ring: &CqlRing) -> (u64, u64) {
    let counters = ring.counters();
    let sum = |key: &str| counters.iter().map(|n| n[key].as_u64().unwrap_or(0)).sum::<u64>();
    (sum("batches_applied"), sum("batches_replica_local"))
}

fn node_rows(ring: &CqlRing, index: usize) -> u64 {
    ring.counters()[index]["rows_written"].as_u64().unwrap_or(0)
}

#[test]
fn writer_follows_a_node_joining_and_one_leaving() {
    let s = setup_ring(1, false, 1);
    let data = points(40, 150);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let admin = format!("127.0.0.1:{}", free_port());
    // Slow enough that the ring changes twice while the writer works.
    let mut writer = start_writer(&s, &admin, &["--rows-per-sec", "500", "--burst", "64"]);
    let started = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_writer_rows_written_total").unwrap_or(0.0) > 500.0).then_some(())
    });
    assert!(started.is_some(), "{}", writer.log_text());
    assert_eq!(node_rows(&s.ring, 3), 0, "the spare node is outside the ring");

    // Node 4 joins: the writer sends its rows there, in batches it coordinates.
    s.ring.set_member(4, true);
    let joined = eventually(Duration::from_secs(30), || {
        (node_rows(&s.ring, 3) > 0).then_some(())
    });
    assert!(
        joined.is_some(),
        "the new node got no rows: {:?}",
        s.ring.counters()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (b0, l0) = batch_counts(&s.ring);
    std::thread::sleep(Duration::from_secs(2));
    let (b1, l1) = batch_counts(&s.ring);
    assert!(b1 > b0, "the writer kept batching");
    assert_eq!(
        l1 - l0,
        b1 - b0,
        "every batch replica-local after the join: {:?}\n{}",
        s.ring.counters(),
        writer.log_text()
    );

    // Node 2 leaves: its ranges move, the writer stops sending to it and loses nothing.
    s.ring.set_member(2, false);
    std::thread::sleep(Duration::from_secs(1));
    let (left_rows, total) = (node_rows(&s.ring, 1), s.ring.total("rows_written"));
    let (b2, l2) = batch_counts(&s.ring);
    std::thread::sleep(Duration::from_secs(2));
    assert!(s.ring.total("rows_written") > total, "the writer kept writing");
    assert_eq!(
        node_rows(&s.ring, 1),
        left_rows,
        "nothing goes to the node that left"
    );
    let (b3, l3) = batch_counts(&s.ring);
    assert_eq!(
        l3 - l2,
        b3 - b2,
        "every batch replica-local after the leave: {:?}\n{}",
        s.ring.counters(),
        writer.log_text()
    );

    wait_written(&admin, data.len() as u64, &mut writer);
    assert!(
        metric(&admin, "tributary_writer_regrouped_total").unwrap_or(0.0) > 0.0,
        "rows waiting for the rate limiter were regrouped for the new ring"
    );
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        data.len() as u64,
        "every row read back"
    );
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
    let (committed, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len());
    assert_eq!(committed, end);
}

/// Newer data wins in Cassandra: rows carry `USING TIMESTAMP` from their record's Kafka
/// timestamp (when the rollup app emitted it), so a window emitted again later (after a
/// replay) is never overwritten by an older write of it that reaches the cluster after it,
/// e.g. one still being retried against a slow node. Here every older version arrives
/// last on purpose, at slow nodes.
#[test]
fn an_older_version_of_a_row_arriving_last_does_not_overwrite_the_newer() {
    let s = setup(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let window = |start: i64, count: u32, at: i64| {
        let sum = 10 * count;
        (
            Outgoing {
                key: Some("host-7/cpu".into()),
                value: Some(format!(
                    r#"{{"series":"host-7/cpu","resolution":"5m","window_start":{start},"window_end":{},"count":{count},"min":1,"max":10,"sum":{sum},"avg":10}}"#,
                    start + 300_000
                )),
                partition: Some(1),
            },
            at,
        )
    };
    let windows = 30;
    let mut records = Vec::new();
    for w in 0..windows {
        let start = 1_732_320_000_000 + w * 300_000;
        // The re-emitted (newer) version first, the original (older) one after it.
        records.push(window(start, 2, now - 1_000));
        records.push(window(start, 1, now - 61_000));
    }
    harness::py_produce_stamped(s.kafka.brokers(), &s.rollups, &records);
    // Every write waits on slow nodes.
    s.ring.faults(None, r#"{"latency_ms": 100}"#);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer(&s, &admin, &[]);
    wait_written(&admin, records.len() as u64, &mut writer);
    let rows = s.ring.select(&format!(
        "SELECT window_start, count, sum FROM {}.rollups_5m",
        s.keyspace
    ));
    assert_eq!(rows.len(), windows as usize, "{rows:?}");
    for r in &rows {
        assert_eq!(
            (&r[1], &r[2]),
            (&serde_json::json!(2), &serde_json::json!(20.0)),
            "the newer version stays: {r:?}"
        );
    }
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
}
