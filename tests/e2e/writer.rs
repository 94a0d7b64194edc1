//! tributary-writer as a process (tansu broker, emulated CQL ring process, Python
//! clients): the setup every writer test shares, and what the writer writes where.

use std::time::Duration;

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

pub(crate) fn setup(rf: u32) -> Setup {
    setup_on(rf, false)
}

/// Tansu and a ring of `nodes` nodes, keyspace at `rf`.
pub(crate) fn setup_nodes(rf: u32, nodes: usize) -> Setup {
    setup_layout(rf, None, nodes, 0)
}

pub(crate) fn setup_on(rf: u32, dev_kafka: bool) -> Setup {
    setup_ring(rf, dev_kafka, 0)
}

pub(crate) fn setup_ring(rf: u32, dev_kafka: bool, spare_nodes: usize) -> Setup {
    setup_with(rf, dev_kafka.then_some(0), spare_nodes)
}

/// `dev_kafka` = Some(n): the mock broker process, whose first n offset commits fail;
/// None: tansu.
pub(crate) fn setup_with(rf: u32, dev_kafka: Option<usize>, spare_nodes: usize) -> Setup {
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
pub(crate) enum Broker {
    /// The mock broker process, whose first n offset commits fail.
    Dev(usize),
    /// tansu with in-memory storage.
    Tansu,
    /// tansu on sqlite storage, so it can be stopped and started again.
    TansuStored,
}

pub(crate) fn setup_broker(rf: u32, broker: Broker, nodes: usize, spare_nodes: usize) -> Setup {
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
pub(crate) fn config_path() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("writer-config"));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("writer.toml")
}

pub(crate) fn start_writer(s: &Setup, admin: &str, extra: &[&str]) -> Process {
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
