//! The app binaries' command line: defaults, help, and configuration errors.

use std::process::Command;

use harness::app_binary;

#[test]
fn bad_config_names_every_bad_key_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(harness::unique("config"));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rollup.toml");
    std::fs::write(
        &path,
        "[kafka]\nbrokers = 1\nbrokres = \"x\"\n[rollup]\ngrace = \"soon\"\nlevels = [\"5m\", \"7m\"]\n[extra]\nx = 1\n",
    )
    .expect("write");
    let out = Command::new(app_binary("tributary-rollup"))
        .arg("--config")
        .arg(&path)
        .env("TRIBUTARY_CUSUM_KK", "1")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "kafka.brokers",
        "kafka.brokres",
        "rollup.grace",
        "extra",
        "cusum.kk",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn runs_on_defaults_and_documents_every_flag() {
    for (bin, group) in [
        ("tributary-rollup", "tributary-rollup"),
        ("tributary-detector", "tributary-detector"),
    ] {
        let out = Command::new(app_binary(bin))
            .arg("--print-config")
            .env_remove("RUST_LOG")
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("group = \"{group}\"")), "{text}");
        assert!(text.contains("input = \"metrics\""));
        let help = Command::new(app_binary(bin)).arg("--help").output().expect("run");
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in [
            "--config",
            "--brokers",
            "--input-topic",
            "--output-topic",
            "--anomaly-topic",
            "--dlq-topic",
            "--group",
        ] {
            assert!(help.contains(flag), "{bin} --help lacks {flag}");
        }
    }
}

#[test]
fn every_binary_tells_its_version() {
    for bin in [
        "tributary-rollup",
        "tributary-detector",
        "tributary-writer",
        "tributary-dev",
    ] {
        let out = Command::new(app_binary(bin))
            .arg("--version")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{bin} {}", env!("CARGO_PKG_VERSION")),
        );
    }
}

#[test]
fn print_config_shows_no_secret() {
    let secret = harness::unique("s3cret-pw");
    let props = format!(
        r#"{{ "sasl.username" = "alice", "sasl.password" = "{secret}", "ssl.key.password" = "{secret}" }}"#
    );
    for bin in ["tributary-rollup", "tributary-detector", "tributary-writer"] {
        let security = format!(
            r#"{{ protocol = "sasl_ssl", mechanism = "SCRAM-SHA-512", username = "alice", password = "{secret}" }}"#
        );
        let out = Command::new(app_binary(bin))
            .arg("--print-config")
            .env("TRIBUTARY_KAFKA_PROPERTIES", &props)
            .env("TRIBUTARY_KAFKA_SECURITY", &security)
            .env_remove("RUST_LOG")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(&secret), "{bin} printed the secret:\n{all}");
        assert!(
            all.contains("\"sasl.password\" = \"<redacted>\""),
            "{bin}:\n{all}"
        );
        assert!(
            all.contains("password = \"<redacted>\"") && all.contains("protocol = \"sasl_ssl\""),
            "{bin}: [kafka.security] shown, its password redacted:\n{all}"
        );
        assert!(
            all.contains("alice"),
            "{bin}: other properties stay visible:\n{all}"
        );
    }
    let out = Command::new(app_binary("tributary-writer"))
        .arg("--print-config")
        .env("TRIBUTARY_CASSANDRA_USERNAME", "writer")
        .env("TRIBUTARY_CASSANDRA_PASSWORD", &secret)
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !all.contains(&secret),
        "the Cassandra password shown:\n{all}"
    );
    assert!(all.contains("password = \"<redacted>\""), "{all}");
}

/// `tributary-dev kafka` on a chosen port serves any Kafka client; `tributary-dev produce`
/// fills it deterministically.
#[test]
fn embedded_kafka_serves_external_clients_on_a_chosen_port() {
    let port = harness::free_port();
    let mut kafka = harness::Process::spawn(
        "tributary-dev-kafka",
        &app_binary("tributary-dev"),
        &[
            "kafka",
            "--port",
            &port.to_string(),
            "--partitions",
            "3",
            "--topics",
            "metrics,other",
        ],
        &[],
    );
    let brokers = format!("127.0.0.1:{port}");
    let printed = harness::eventually(std::time::Duration::from_secs(30), || {
        kafka
            .log_text()
            .contains(&format!("bootstrap.servers={brokers}"))
            .then_some(())
    });
    assert!(printed.is_some(), "{}", kafka.log_text());
    let out = Command::new(app_binary("tributary-dev"))
        .args([
            "produce",
            "--brokers",
            &brokers,
            "--series",
            "7",
            "--points",
            "20",
            "--seed",
            "3",
        ])
        .output()
        .expect("produce");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("produced 140 records"));
    // The independent client reads what the load generator wrote, through the fixed port.
    let records = harness::py_consume(&brokers, "metrics", 140, 60, 2.0);
    assert_eq!(records.len(), 140);
    let series: std::collections::BTreeSet<_> = records.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(series.len(), 7);
    harness::py_produce(
        &brokers,
        "other",
        &[harness::Outgoing {
            key: Some("k".into()),
            value: Some("v".into()),
            partition: None,
        }],
    );
    let back = harness::py_consume(&brokers, "other", 1, 30, 1.0);
    assert_eq!(back.first().and_then(|r| r.value.as_deref()), Some("v"));
    assert_eq!(kafka.terminate(std::time::Duration::from_secs(30)), Some(0));
}

/// Python's cassandra-driver (an independent client) against `tributary-dev cql`.
#[test]
fn emulated_ring_serves_the_python_cassandra_driver() {
    let port = harness::free_port();
    let http = format!("127.0.0.1:{}", harness::free_port());
    let mut ring = harness::Process::spawn(
        "tributary-dev-cql",
        &app_binary("tributary-dev"),
        &[
            "cql",
            "--nodes",
            "3",
            "--port",
            &port.to_string(),
            "--http",
            &http,
        ],
        &[],
    );
    let ready = harness::eventually(std::time::Duration::from_secs(30), || {
        ring.log_text().contains("Ctrl-C stops").then_some(())
    });
    assert!(ready.is_some(), "{}", ring.log_text());
    let script = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("py/cql_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string(), "pyks"])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python client failed: {}\nring log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ring.log_text()
    );
    let v: harness::Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(
        v["hosts"],
        serde_json::json!(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
    );
    assert_eq!(v["total"], 51);
    assert_eq!(v["tables"], serde_json::json!(["kv"]));
    let key3 = v["key3"].as_array().expect("rows");
    assert_eq!(key3.len(), 10);
    assert_eq!(key3[0], serde_json::json!(["key-3", 3, 4.5, ["a", "t3"]]));
    // The counters endpoint saw the writes, spread over the nodes.
    let (status, body) = harness::admin_get(&http, "/counters").expect("counters");
    assert_eq!(status, 200);
    let counters: harness::Value = serde_json::from_str(&body).expect("counters JSON");
    let written: u64 = counters
        .as_array()
        .expect("nodes")
        .iter()
        .map(|c| c["rows_written"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(written, 51);
    assert_eq!(ring.terminate(std::time::Duration::from_secs(30)), Some(0));
}

/// The Kubernetes manifests: every StatefulSet gives each pod its own name as its static
/// member id and probes liveness and readiness, and every config they ship loads in the
/// app it is for.
/// `--log-format json`: every line a log collector reads is one JSON object with a
/// level and a message, from the apps' own lines and librdkafka's alike.
#[test]
fn json_logs_are_one_object_per_line() {
    let unreachable = format!("127.0.0.1:{}", harness::free_port());
    for (bin, args) in [
        (
            "tributary-writer",
            vec![
                "--contact-points",
                unreachable.as_str(),
                "--brokers",
                unreachable.as_str(),
            ],
        ),
        ("tributary-rollup", vec!["--brokers", unreachable.as_str()]),
    ] {
        let mut args = args.clone();
        args.extend(["--log-format", "json", "--admin-listen", ""]);
        let mut app = harness::Process::spawn(bin, &app_binary(bin), &args, &[("RUST_LOG", "info")]);
        // Both keep retrying an unreachable service and say so.
        let logged = harness::eventually(std::time::Duration::from_secs(30), || {
            (app.log_text().lines().count() >= 2).then_some(())
        });
        assert!(logged.is_some(), "{bin} logged nothing:\n{}", app.log_text());
        app.signal("KILL");
        let _ = app.wait(std::time::Duration::from_secs(10));
        for line in app.log_text().lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{bin}: not JSON ({e}): {line}"));
            assert!(v["level"].is_string(), "{bin}: no level: {line}");
            assert!(v["message"].is_string(), "{bin}: no message: {line}");
        }
    }
}
