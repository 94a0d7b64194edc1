//! The runtime in-process against librdkafka's mock cluster (the embedded default).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tributary::config::{AppKind, Config};
use tributary::runtime::{Runtime, RuntimeError};
use tributary_devkit::demo::{self, DemoOptions};
use tributary_devkit::kafka::EmbeddedKafka;
use tributary_devkit::loadgen::{self, LoadSpec};

fn config(brokers: &str, group: &str) -> Config {
    let mut c = Config::defaults(AppKind::Rollup);
    c.kafka.brokers = brokers.to_owned();
    c.kafka.group = group.to_owned();
    c.admin.listen = String::new();
    c.runtime.workers = 2;
    c
}

#[test]
fn unreachable_broker_is_retried_until_stopped() {
    let port = harness::free_port();
    let rt = Runtime::start(config(&format!("127.0.0.1:{port}"), "g")).expect("starts");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!rt.is_finished(), "gave up instead of retrying");
    rt.stop();
    assert!(matches!(rt.join(), Err(RuntimeError::Stopped)));
}

#[test]
fn undersized_output_topic_is_a_clear_error() {
    let kafka = EmbeddedKafka::start(1, 0).expect("mock");
    kafka.create_topic("metrics", 4).expect("topic");
    kafka.create_topic("rollups", 2).expect("topic");
    kafka.create_topic("dead-letter", 1).expect("topic");
    let rt = Runtime::start(config(kafka.bootstrap_servers(), "g")).expect("starts");
    match rt.join() {
        Err(RuntimeError::Topology(m)) => {
            assert!(m.contains("rollups has 2 partitions") && m.contains("4"), "{m}")
        }
        other => panic!("expected a topology error, got {other:?}"),
    }
}

#[test]
fn shutdown_commits_everything_processed() {
    let kafka = EmbeddedKafka::start(1, 0).expect("mock");
    for t in ["metrics", "rollups", "dead-letter"] {
        kafka.create_topic(t, 3).expect("topic");
    }
    let spec = LoadSpec {
        series: 50,
        points: 200,
        ..LoadSpec::default()
    };
    let report = loadgen::produce(kafka.bootstrap_servers(), "metrics", &spec).expect("produce");
    let rt = Runtime::start(config(kafka.bootstrap_servers(), "commit-test")).expect("starts");
    let done = harness::eventually(Duration::from_secs(60), || {
        (rt.metrics().records_consumed.get() >= report.records).then_some(())
    });
    assert!(done.is_some(), "consumed {}", rt.metrics().records_consumed.get());
    rt.stop();
    let summary = rt.join().expect("clean stop");
    assert_eq!(summary.records, report.records);
    assert!(summary.rollups > 0);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "commit-test")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition("metrics", p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    let mut total = 0;
    for el in committed.elements() {
        let (_, high) = consumer
            .fetch_watermarks("metrics", el.partition(), Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!(el.offset(), Offset::Offset(high), "partition {}", el.partition());
        total += high;
    }
    assert_eq!(total as u64, report.records);
}

#[test]
fn demo_rolls_up_detects_and_dead_letters() {
    let opts = DemoOptions {
        series: 60,
        points: 3000,
        rate: 0,
        partitions: 2,
        port: 0,
        interval_ms: 30_000,
    };
    let mut narration = Vec::new();
    let report = demo::run(&opts, &mut narration).expect("demo runs");
    let text = String::from_utf8_lossy(&narration);
    assert_eq!(report.produced, 60 * 3000, "{text}");
    for res in ["5m", "1h", "1d"] {
        assert!(
            report.rollups_by_resolution.get(res).copied().unwrap_or(0) > 0,
            "no {res} rollups:\n{text}"
        );
    }
    // 25 h of 30 s points span 300 5m windows, plus the window before the first day that
    // the first point's jitter (up to 20 s back) reaches into; the last window stays open.
    assert_eq!(report.rollups_by_resolution["5m"], 60 * 300, "{text}");
    for group in ["tributary-rollup", "tributary-detector"] {
        assert_eq!(
            report.dead_letters.get(group),
            Some(&3),
            "{:?}",
            report.dead_letters
        );
    }
    assert_eq!(report.steps_detected, report.steps_injected, "{text}");
    // The writer half of the job: every rollup and anomaly row in the ring, in batches
    // each sent to a node that replicates all of its rows.
    assert!(report.rows_expected > 60 * 300, "{text}");
    assert_eq!(report.rows_written, report.rows_expected, "{text}");
    assert!(report.batches > 0, "{text}");
    assert_eq!(report.batches_replica_local, report.batches, "{text}");
}

fn read_rollups(brokers: &str) -> Vec<tributary::codec::RollupRecord> {
    tributary_devkit::kafka::read_all(brokers, "rollups", Duration::from_secs(30))
        .expect("read rollups")
        .iter()
        .filter_map(|r| Some((r.header(tributary::codec::FORMAT_HEADER), r.payload.as_deref()?)))
        .map(|(format, p)| {
            // This build's rows say which format they are in.
            assert_eq!(format, Some(tributary::codec::RECORD_FORMAT_TEXT.as_bytes()));
            tributary::codec::decode_rollup(tributary::codec::Format::Json, format, p).expect("rollup JSON")
        })
        .collect()
}

#[test]
fn idle_partition_closes_its_windows_without_new_records() {
    let kafka = EmbeddedKafka::start(1, 0).expect("mock");
    for t in ["metrics", "rollups", "dead-letter"] {
        kafka.create_topic(t, 1).expect("topic");
    }
    // Historical data and no sentinel: only the idle flush can close these windows.
    let spec = LoadSpec {
        series: 5,
        points: 30,
        interval_ms: 60_000,
        jitter_ms: 0,
        anomaly_fraction: 0.0,
        ..LoadSpec::default()
    };
    let report = loadgen::produce(kafka.bootstrap_servers(), "metrics", &spec).expect("produce");
    let mut c = config(kafka.bootstrap_servers(), "idle-test");
    c.rollup.idle_timeout = tributary::config::HumanDuration(Duration::from_secs(1));
    let rt = Runtime::start(c).expect("starts");
    let flushed = harness::eventually(Duration::from_secs(60), || {
        (rt.metrics().idle_flushes.get() > 0).then_some(())
    });
    assert!(flushed.is_some(), "no idle flush");
    rt.stop();
    let summary = rt.join().expect("clean stop");
    assert_eq!(summary.records, report.records);
    let rollups = read_rollups(kafka.bootstrap_servers());
    // 30 one-minute points per series: six 5m windows, the 30 minutes fall in one hour or
    // two, and one day; the idle flush closes all of them.
    let fives = rollups.iter().filter(|r| r.resolution == "5m").count();
    let days = rollups.iter().filter(|r| r.resolution == "1d").count();
    assert_eq!(fives, 5 * 6, "{rollups:?}");
    assert_eq!(days, 5);
    assert!(
        rollups
            .iter()
            .filter(|r| r.resolution == "1d")
            .all(|r| r.count == 30)
    );
}

#[test]
fn bincode_input_is_selectable() {
    let kafka = EmbeddedKafka::start(1, 0).expect("mock");
    for t in ["metrics", "rollups", "dead-letter"] {
        kafka.create_topic(t, 2).expect("topic");
    }
    let spec = LoadSpec {
        series: 10,
        points: 100,
        interval_ms: 60_000,
        jitter_ms: 0,
        anomaly_fraction: 0.0,
        format: tributary::codec::Format::Bincode,
        ..LoadSpec::default()
    };
    let report = loadgen::produce(kafka.bootstrap_servers(), "metrics", &spec).expect("produce");
    let mut c = config(kafka.bootstrap_servers(), "bincode-test");
    c.topics.input_format = tributary::codec::Format::Bincode;
    let rt = Runtime::start(c).expect("starts");
    let done = harness::eventually(Duration::from_secs(60), || {
        (rt.metrics().records_consumed.get() >= report.records).then_some(())
    });
    assert!(done.is_some());
    rt.stop();
    let summary = rt.join().expect("clean stop");
    assert_eq!(summary.dead_lettered, 0, "bincode records decode");
    // 100 one-minute points: 20 5m windows per series, the last still open.
    let fives = read_rollups(kafka.bootstrap_servers())
        .into_iter()
        .filter(|r| r.resolution == "5m")
        .count();
    assert_eq!(fives, 10 * 19);
}
