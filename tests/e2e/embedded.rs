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
}
