//! Through a real Kafka-protocol broker process (tansu) with the app binaries as
//! processes and Python's confluent-kafka on the other side.

use std::collections::BTreeMap;
use std::time::Duration;

use harness::{
    Outgoing, Process, Tansu, app_binary, committed_and_end, create_topics, eventually, free_port, metric,
    point_json, py_consume, py_produce, unique,
};

use crate::dataset::{self, Duplicates};

#[test]
fn rollup_app_matches_an_independent_oracle() {
    let kafka = Tansu::start();
    let (input, rollups, dlq, late, group) = (
        unique("metrics"),
        unique("rollups"),
        unique("dlq"),
        unique("late"),
        unique("rollup"),
    );
    // Only the input exists: the app creates its outputs with the input's partition count.
    create_topics(&kafka.brokers, &[(&input, 3)]);
    let data = dataset::build(12, 26, 3, 7);
    py_produce(&kafka.brokers, &input, &data.records);

    let admin = format!("127.0.0.1:{}", free_port());
    let mut app = Process::spawn(
        "tributary-rollup",
        &app_binary("tributary-rollup"),
        &[
            "--brokers",
            &kafka.brokers,
            "--input-topic",
            &input,
            "--output-topic",
            &rollups,
            "--dlq-topic",
            &dlq,
            "--late-topic",
            &late,
            "--group",
            &group,
            "--admin-listen",
            &admin,
        ],
        &[],
    );
    let out = py_consume(&kafka.brokers, &rollups, data.expected.len(), 180, 3.0);
    assert!(app.is_running(), "app died:\n{}", app.log_text());
    dataset::check_rollups(&data, Duplicates::Refused, &out);

    let dead = py_consume(&kafka.brokers, &dlq, data.bad, 60, 2.0);
    assert_eq!(dead.len(), data.bad, "every bad record dead-lettered once");
    for d in &dead {
        let reason = d.headers.get("tributary.error").expect("reason header");
        assert!(!reason.is_empty());
        assert_eq!(d.headers.get("tributary.source.topic"), Some(&input));
        assert_eq!(d.headers.get("tributary.group"), Some(&group));
        let offset: i64 = d.headers["tributary.source.offset"]
            .parse()
            .expect("offset header");
        assert!(offset >= 0);
    }
    assert!(
        dead.iter()
            .any(|d| d.headers["tributary.error"].contains("no key"))
    );
    assert!(
        dead.iter()
            .any(|d| d.headers["tributary.error"].contains("invalid JSON"))
    );
    for reason in [
        "is after",
        "before 2000",
        "beyond",
        "more than input.max_record_bytes",
        "key is not UTF-8",
        "invalid type: sequence",
    ] {
        assert!(
            dead.iter().any(|d| d.headers["tributary.error"].contains(reason)),
            "no dead letter says {reason:?}"
        );
    }
    // Records over the size limit are dead-lettered cut to it, their sizes in headers.
    let cut: Vec<_> = dead
        .iter()
        .filter(|d| {
            d.headers.contains_key("tributary.original.size")
                || d.headers.contains_key("tributary.original.key.size")
        })
        .collect();
    assert_eq!(cut.len(), 2, "the padded value and the long key are cut");
    assert!(
        cut.iter()
            .all(|d| d.value.as_ref().map_or(0, String::len) <= 65_536)
    );
    assert!(cut.iter().all(|d| d.key.as_ref().map_or(0, String::len) <= 1024));

    let late_records = py_consume(&kafka.brokers, &late, data.late, 60, 2.0);
    assert_eq!(late_records.len(), data.late, "every late record forwarded once");
    assert_eq!(
        metric(&admin, "tributary_records_late_total"),
        Some(data.late as f64)
    );
    assert_eq!(
        metric(&admin, "tributary_records_dead_lettered_total"),
        Some(data.bad as f64)
    );

    assert_eq!(
        app.terminate(Duration::from_secs(60)),
        Some(0),
        "clean exit on SIGTERM:\n{}",
        app.log_text()
    );
    let (committed, end) = committed_and_end(&kafka.brokers, &group, &input, data.records.len());
    assert_eq!(committed, end, "everything processed is committed at shutdown");
}

#[test]
fn detector_flags_injected_steps_only() {
    let kafka = Tansu::start();
    let (input, anomalies, group) = (unique("metrics"), unique("anomalies"), unique("detector"));
    create_topics(&kafka.brokers, &[(&input, 2), (&anomalies, 2)]);
    let mut rng = 99u64;
    let mut noise = move || {
        let mut acc = 0.0;
        for _ in 0..12 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            acc += (rng >> 11) as f64 / (1u64 << 53) as f64;
        }
        acc - 6.0
    };
    let t0 = 1_732_320_000_000i64;
    let step_at = 250;
    let mut records = Vec::new();
    for i in 0..400i64 {
        for s in 0..6 {
            let name = format!("svc-{s}/latency");
            let shift = match s {
                0 if i >= step_at => 10.0,
                1 if i >= step_at => -10.0,
                _ => 0.0,
            };
            let value = 50.0 + s as f64 + shift + noise();
            records.push(Outgoing {
                key: Some(name.clone()),
                value: Some(point_json(&name, t0 + i * 10_000, value)),
                partition: Some(s % 2),
            });
        }
    }
    py_produce(&kafka.brokers, &input, &records);
    let mut app = Process::spawn(
        "tributary-detector",
        &app_binary("tributary-detector"),
        &[
            "--brokers",
            &kafka.brokers,
            "--input-topic",
            &input,
            "--output-topic",
            &anomalies,
            "--group",
            &group,
            "--admin-listen",
            "",
        ],
        // A high threshold through the environment layer: stationary series must stay quiet.
        &[("TRIBUTARY_CUSUM_H", "8")],
    );
    let found = py_consume(&kafka.brokers, &anomalies, 2, 120, 4.0);
    assert_eq!(
        app.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        app.log_text()
    );
    let by_series: BTreeMap<String, Vec<harness::Value>> = found.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r.json());
        m
    });
    assert_eq!(
        by_series.keys().cloned().collect::<Vec<_>>(),
        vec!["svc-0/latency", "svc-1/latency"],
        "only the stepped series alarm: {found:?}"
    );
    for (series, direction) in [("svc-0/latency", "up"), ("svc-1/latency", "down")] {
        let a = &by_series[series][0];
        assert_eq!(a["direction"], direction);
        let ts = a["ts"].as_i64().expect("ts");
        assert!(
            ts >= t0 + step_at * 10_000 && ts <= t0 + (step_at + 5) * 10_000,
            "{series} flagged at {ts}"
        );
        assert!(a["cusum"].as_f64().expect("cusum") > 8.0);
        assert_eq!(a["threshold"].as_f64(), Some(8.0));
        assert!(a["stddev"].as_f64().expect("stddev") > 0.5);
    }
}

#[test]
fn two_instances_share_a_topic() {
    let kafka = Tansu::start();
    let (input, rollups, group) = (unique("metrics"), unique("rollups"), unique("rollup"));
    create_topics(&kafka.brokers, &[(&input, 4), (&rollups, 4)]);
    let admins = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let mut apps: Vec<Process> = admins
        .iter()
        .map(|admin| {
            Process::spawn(
                "tributary-rollup",
                &app_binary("tributary-rollup"),
                &[
                    "--brokers",
                    &kafka.brokers,
                    "--input-topic",
                    &input,
                    "--output-topic",
                    &rollups,
                    "--group",
                    &group,
                    "--admin-listen",
                    admin,
                    "--workers",
                    "1",
                ],
                &[],
            )
        })
        .collect();
    // Both members must own partitions before data arrives (this runtime rebuilds
    // no state on a rebalance yet, so moving a partition mid-stream would split windows).
    let balanced = eventually(Duration::from_secs(60), || {
        let counts: Vec<f64> = admins
            .iter()
            .filter_map(|a| metric(a, "tributary_assigned_partitions"))
            .collect();
        (counts.len() == 2 && counts.iter().all(|c| *c > 0.0) && counts.iter().sum::<f64>() == 4.0)
            .then_some(counts)
    });
    assert!(
        balanced.is_some(),
        "partitions not shared: {}\n{}",
        apps[0].log_text(),
        apps[1].log_text()
    );
    let data = dataset::build(8, 3, 4, 11);
    py_produce(&kafka.brokers, &input, &data.records);
    let out = py_consume(&kafka.brokers, &rollups, data.expected.len(), 180, 3.0);
    dataset::check_rollups(&data, Duplicates::Refused, &out);
    for admin in &admins {
        assert!(
            metric(admin, "tributary_records_consumed_total").unwrap_or(0.0) > 0.0,
            "both instances did work"
        );
    }
    for app in &mut apps {
        assert_eq!(
            app.terminate(Duration::from_secs(60)),
            Some(0),
            "{}",
            app.log_text()
        );
    }
    let (committed, end) = committed_and_end(&kafka.brokers, &group, &input, data.records.len());
    assert_eq!(committed, end, "both members committed what they processed");
}
