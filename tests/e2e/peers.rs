//! The benchmark peers measure what they claim: the naive read-back detector stores every
//! event in the ring and runs CUSUM over the events it reads back; the runtime peer
//! consumes everything, with and without its stages.

use std::process::Command;

use harness::{CqlRing, DevKafka, app_binary};
use serde_json::Value;

/// Fills a topic with `tributary-dev produce`; returns what it printed.
fn produce(brokers: &str, args: &[&str]) -> String {
    let out = Command::new(app_binary("tributary-dev"))
        .args(["produce", "--brokers", brokers])
        .args(args)
        .output()
        .expect("produce");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dev(args: &[&str]) -> Value {
    let out = Command::new(app_binary("tributary-dev"))
        .args(args)
        .output()
        .expect("tributary-dev");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary")
}

/// One check at a time, so what each check reads back is exact: from the window-th event
/// of a series on, the last 50 of its events, newest first. Every series has a step; a
/// detector that read the oldest events, or none, would not see it.
#[test]
fn the_naive_peer_checks_each_event_against_the_events_it_read_back() {
    let (series, points, window) = (6u64, 120u64, 50u64);
    let kafka = DevKafka::start(&["events"], 2);
    let ring = CqlRing::start(3);
    let (series_arg, points_arg) = (series.to_string(), points.to_string());
    let printed = produce(
        &kafka.brokers,
        &[
            "--topic",
            "events",
            "--series",
            &series_arg,
            "--points",
            &points_arg,
            "--anomalies",
            "1",
            "--seed",
            "11",
        ],
    );
    let steps = printed.matches("injected step").count() as u64;
    assert_eq!(steps, series, "every series should get a step");

    let total = (series * points).to_string();
    let report = dev(&[
        "naive-peer",
        "--brokers",
        &kafka.brokers,
        "--topic",
        "events",
        "--contact-points",
        &ring.contact_point(),
        "--records",
        &total,
        "--window",
        &window.to_string(),
        "--concurrency",
        "1",
    ]);
    assert_eq!(
        report["checked"].as_u64(),
        Some(series * (points - window + 1)),
        "{report}"
    );
    // An 8-sigma step stays in the newer half of the window for 25 checks of its series.
    let anomalies = report["anomalies"].as_u64().unwrap_or(0);
    assert!(anomalies >= series * 20, "{anomalies} anomalies: {report}");
    assert!(report["cpu"].as_f64().is_some_and(|c| c > 0.0), "{report}");
}

/// Each run in a group of its own, as `peers.py` runs them: joining the group the previous
/// run had just left took the next about 40 s here, after which every record could arrive
/// between two of the clock's looks. Enough records that they do not.
#[test]
fn the_runtime_peer_consumes_everything_with_and_without_its_stages() {
    let kafka = DevKafka::start(&["metrics", "rollups", "anomalies", "dead-letter"], 4);
    produce(&kafka.brokers, &["--series", "50", "--points", "1000"]);
    for (group, extra) in [("full", &[][..]), ("decode-only", &["--decode-only"][..])] {
        let mut args = vec![
            "runtime-peer",
            "--brokers",
            &kafka.brokers,
            "--records",
            "50000",
            "--group",
            group,
        ];
        args.extend_from_slice(extra);
        let report = dev(&args);
        let records = report["records"].as_u64().unwrap_or(0);
        // Timed from the first record counted, so the first fetch's records are left out.
        assert!(records > 0 && records < 50_000, "{extra:?}: {report}");
        assert!(report["wall"].as_f64().is_some_and(|w| w > 0.0), "{report}");
        assert!(report["cpu"].as_f64().is_some_and(|c| c > 0.0), "{report}");
    }
}
