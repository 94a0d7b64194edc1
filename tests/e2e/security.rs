//! Kafka with TLS and SASL (SCRAM-SHA-512), as managed services run it: tansu requiring
//! authentication behind a TLS terminator. The apps connect through `[kafka.security]`
//! (password from a file, the broker's CA), never show the password, and report a wrong
//! password or an untrusted certificate while they keep retrying.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{
    CqlRing, Outgoing, Process, SecureTansu, app_binary, create_topics, eventually, free_port, py_produce,
    unique,
};

use crate::dataset::{self, Duplicates};

/// A `[kafka.security]` section for `kafka`, with `password` written to a file.
fn security_section(kafka: &SecureTansu, password: &str, ca_file: &Path) -> String {
    let password_file = kafka.dir.join(unique("password"));
    std::fs::write(&password_file, format!("{password}\n")).expect("password file");
    format!(
        "[kafka.security]\nprotocol = \"sasl_ssl\"\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
        kafka.username,
        password_file.display(),
        ca_file.display()
    )
}

fn config_file(kafka: &SecureTansu, text: &str) -> PathBuf {
    let path = kafka.dir.join(format!("{}.toml", unique("app")));
    std::fs::write(&path, text).expect("config file");
    path
}

fn rollup(kafka: &SecureTansu, config: &Path, input: &str, rollups: &str) -> Process {
    rollup_at(&kafka.brokers, config, input, rollups)
}

fn rollup_at(brokers: &str, config: &Path, input: &str, rollups: &str) -> Process {
    Process::spawn(
        "tributary-rollup",
        &app_binary("tributary-rollup"),
        &[
            "--config",
            &config.display().to_string(),
            "--brokers",
            brokers,
            "--input-topic",
            input,
            "--output-topic",
            rollups,
            "--group",
            &unique("rollup"),
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
        &[("RUST_LOG", "info")],
    )
}

/// `n` points of `series` series, all in partition 0 of a new topic; returns the topic.
fn produce_points(brokers: &str, n: i64, series: i64) -> (String, Vec<Outgoing>) {
    let points: Vec<Outgoing> = (0..n)
        .map(|i| {
            let name = format!("host-{}/cpu", i % series);
            Outgoing {
                value: Some(harness::point_json(
                    &name,
                    1_732_320_000_000 + i * 10_000,
                    i as f64,
                )),
                key: Some(name),
                partition: Some(0),
            }
        })
        .collect();
    let topic = unique("points");
    create_topics(brokers, &[(&topic, 1)]);
    py_produce(brokers, &topic, &points);
    (topic, points)
}

/// `tributary-writer schema apply` for `keyspace` at `contact`, with `env`.
fn apply_schema(contact: &str, keyspace: &str, env: &[(&str, String)]) -> std::process::Output {
    std::process::Command::new(app_binary("tributary-writer"))
        .args(["schema", "apply", "--contact-points", contact])
        .args([
            "--keyspace",
            keyspace,
            "--replication-factor",
            "1",
            "--log",
            "warn",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("schema apply")
}

/// Where a writer of raw points reads and writes.
struct PointsWriter<'a> {
    brokers: &'a str,
    contact: &'a str,
    keyspace: &'a str,
    input: &'a str,
    group: String,
    admin: String,
}

impl<'a> PointsWriter<'a> {
    /// A group and an admin address of its own; every start joins the same group.
    fn new(brokers: &'a str, contact: &'a str, keyspace: &'a str, input: &'a str) -> Self {
        Self {
            brokers,
            contact,
            keyspace,
            input,
            group: unique("writer"),
            admin: format!("127.0.0.1:{}", free_port()),
        }
    }

    /// The writer as a process, reading only `input`, with `config` if given and `env`.
    fn start(&self, config: Option<&Path>, env: &[(&str, String)]) -> Process {
        let mut args = Vec::new();
        let config = config.map(|c| c.display().to_string());
        if let Some(c) = &config {
            args.extend(["--config", c.as_str()]);
        }
        args.extend([
            "--brokers",
            self.brokers,
            "--contact-points",
            self.contact,
            "--keyspace",
            self.keyspace,
            "--metrics-topic",
            self.input,
            "--rollups-topic",
            "",
            "--anomalies-topic",
            "",
            "--group",
            &self.group,
            "--admin-listen",
            &self.admin,
        ]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Process::spawn("tributary-writer", &app_binary("tributary-writer"), &args, &env)
    }
}

#[test]
fn the_rollup_app_and_the_writer_work_over_sasl_ssl() {
    let kafka = SecureTansu::start();
    let (input, rollups) = (unique("metrics"), unique("rollups"));
    create_topics(&kafka.brokers, &[(&input, 3)]);
    let data = dataset::build(6, 8, 3, 29);
    let (first, second) = data.records.split_at(data.records.len() / 2);
    py_produce(&kafka.brokers, &input, first);
    let config = config_file(
        &kafka,
        &format!(
            "[kafka]\ncommit_interval = \"200ms\"\n{}",
            security_section(&kafka, &kafka.password, &kafka.ca_file)
        ),
    );
    let mut app = rollup(&kafka, &config, &input, &rollups);
    // tansu grants 60 s sessions and refuses the re-authentication librdkafka sends at
    // 90 % of that, so every connection is dropped about 54 s after it logged in. The
    // second half is produced after that, so the run must ride the drops out.
    let dropped = eventually(Duration::from_secs(120), || {
        app.log_text()
            .contains("mechanism handshake failed")
            .then_some(())
    });
    assert!(dropped.is_some(), "no session ran out:\n{}", app.log_text());
    py_produce(&kafka.brokers, &input, second);
    dataset::expect_rollups_then_stop(&kafka.brokers, &rollups, &data, Duplicates::Refused, &mut app);
    assert!(
        !app.log_text().contains(&kafka.password),
        "the password was logged"
    );

    // The writer, through the same section, writes the points to the ring.
    let ring = CqlRing::start(3);
    let keyspace = unique("ks").replace('-', "_");
    let contact = ring.contact_point();
    let schema = apply_schema(&contact, &keyspace, &[]);
    assert!(
        schema.status.success(),
        "{}",
        String::from_utf8_lossy(&schema.stderr)
    );
    let (writer_input, points) = produce_points(&kafka.brokers, 300, 1);
    let writer_config = config_file(&kafka, &security_section(&kafka, &kafka.password, &kafka.ca_file));
    let target = PointsWriter::new(&kafka.brokers, &contact, &keyspace, &writer_input);
    let mut writer = target.start(Some(&writer_config), &[]);
    let all = eventually(Duration::from_secs(120), || {
        (ring.count(&keyspace, "points") == points.len() as u64).then_some(())
    });
    assert!(all.is_some(), "points not written:\n{}", writer.log_text());
    assert_eq!(
        writer.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        writer.log_text()
    );
    assert!(
        !writer.log_text().contains(&kafka.password),
        "the password was logged"
    );
}

#[test]
fn a_wrong_password_and_an_untrusted_certificate_are_reported_and_retried() {
    let kafka = SecureTansu::start();
    let input = unique("metrics");
    create_topics(&kafka.brokers, &[(&input, 1)]);
    // A certificate that signed nothing the broker presents.
    let (stranger, _) = harness::self_signed(&kafka.dir, "stranger", &[]);
    let wrong_password = format!("wrong-{}", unique("pw"));
    // The broker's certificate names 127.0.0.1 only.
    let by_name = kafka.brokers.replace("127.0.0.1", "localhost");
    let cases = [
        (
            security_section(&kafka, &wrong_password, &kafka.ca_file),
            kafka.brokers.clone(),
            "SASL authentication error",
        ),
        (
            security_section(&kafka, &kafka.password, &stranger),
            kafka.brokers.clone(),
            "certificate verify failed",
        ),
        (
            security_section(&kafka, &kafka.password, &kafka.ca_file),
            by_name,
            "certificate verify failed",
        ),
    ];
    for (section, brokers, cause) in cases {
        let config = config_file(&kafka, &section);
        let mut app = rollup_at(&brokers, &config, &input, &unique("rollups"));
        let reported = eventually(Duration::from_secs(60), || {
            let log = app.log_text();
            (log.contains(cause) && log.contains(&brokers)).then_some(())
        });
        assert!(
            reported.is_some(),
            "{cause:?} naming {brokers} not logged:\n{}",
            app.log_text()
        );
        // Still up and retrying, not crashed: an operator can fix the secret.
        std::thread::sleep(Duration::from_secs(3));
        assert!(app.is_running(), "the app gave up:\n{}", app.log_text());
        let log = app.log_text();
        assert!(
            !log.contains(&wrong_password) && !log.contains(&kafka.password),
            "a password was logged"
        );
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn the_writer_logs_into_cassandra_with_a_password_file_and_keeps_retrying_a_refused_login() {
    let kafka = harness::Tansu::start();
    let password = unique("cql-pw");
    let ring = CqlRing::start_with_login(3, "writer", &password);
    let dir = std::env::temp_dir().join(unique("cql-login"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (right, wrong) = (dir.join("right"), dir.join("wrong"));
    std::fs::write(&right, format!("{password}\n")).expect("password file");
    let wrong_password = unique("not-it");
    std::fs::write(&wrong, &wrong_password).expect("password file");
    let login = |file: &Path| {
        [
            ("TRIBUTARY_CASSANDRA_USERNAME", "writer".to_owned()),
            ("TRIBUTARY_CASSANDRA_PASSWORD_FILE", file.display().to_string()),
        ]
    };
    let keyspace = unique("ks").replace('-', "_");
    let contact = ring.contact_point();
    let schema = |env: &[(&str, String)]| apply_schema(&contact, &keyspace, env);
    // The ring really asks: without a login nothing passes.
    let refused = schema(&[]);
    assert!(
        !refused.status.success(),
        "the ring accepted a client without a login"
    );
    let applied = schema(&login(&right));
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let (input, points) = produce_points(&kafka.brokers, 200, 1);
    let target = PointsWriter::new(&kafka.brokers, &contact, &keyspace, &input);
    let start = |file: &Path| {
        let mut env = login(file).to_vec();
        // Every log line on: the password must not be in any of them.
        env.push(("RUST_LOG", "trace".to_owned()));
        target.start(None, &env)
    };
    let mut refused = start(&wrong);
    let reported = eventually(Duration::from_secs(60), || {
        let log = refused.log_text();
        (log.contains("cannot reach the cluster; retrying") && log.contains("incorrect")).then_some(())
    });
    assert!(
        reported.is_some(),
        "a refused login not reported:\n{}",
        refused.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(refused.is_running(), "gave up:\n{}", refused.log_text());
    assert!(
        !refused.log_text().contains(&wrong_password),
        "the password was logged"
    );
    assert_eq!(ring.count(&keyspace, "points"), 0);
    // Alive but not ready, and it says why.
    assert_eq!(
        harness::admin_get(&target.admin, "/health/live").map(|r| r.0),
        Some(200)
    );
    let (status, body) = harness::admin_get(&target.admin, "/health/ready").expect("admin answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("connecting to the Cassandra/ScyllaDB cluster"),
        "{body}"
    );
    drop(refused);

    let writer = start(&right);
    let all = eventually(Duration::from_secs(120), || {
        (ring.count(&keyspace, "points") == points.len() as u64).then_some(())
    });
    assert!(all.is_some(), "points not written:\n{}", writer.log_text());
    assert_eq!(
        harness::admin_get(&target.admin, "/health/ready"),
        Some((200, "ready\n".to_owned()))
    );
    let mut outputs = vec![writer.log_text()];
    for path in ["/status", "/metrics"] {
        outputs.push(harness::admin_get(&target.admin, path).expect("admin endpoint").1);
    }
    assert!(outputs[0].len() > 10_000, "trace logging was not on");
    for text in outputs {
        assert!(!text.contains(&password), "the password was shown:\n{text}");
    }
}

#[test]
fn mutual_tls_takes_the_client_certificate_and_refuses_a_client_without_one() {
    let kafka = SecureTansu::start_with(true);
    let (cert, key) = kafka.client_cert.clone().expect("mutual TLS");
    let (input, rollups) = (unique("metrics"), unique("rollups"));
    create_topics(&kafka.brokers, &[(&input, 2)]);
    let data = dataset::build(4, 6, 2, 31);
    py_produce(&kafka.brokers, &input, &data.records);
    let section = security_section(&kafka, &kafka.password, &kafka.ca_file);
    let without = config_file(&kafka, &section);
    let mut refused = rollup(&kafka, &without, &input, &unique("rollups"));
    let reported = eventually(Duration::from_secs(60), || {
        let log = refused.log_text();
        (log.contains("certificate required") && log.contains(&kafka.brokers)).then_some(())
    });
    assert!(
        reported.is_some(),
        "no handshake failure logged:\n{}",
        refused.log_text()
    );
    assert!(refused.is_running(), "gave up:\n{}", refused.log_text());
    drop(refused);

    let with = config_file(
        &kafka,
        &format!(
            "{section}cert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let mut app = rollup(&kafka, &with, &input, &rollups);
    dataset::expect_rollups_then_stop(&kafka.brokers, &rollups, &data, Duplicates::Refused, &mut app);
}

#[test]
fn endpoints_that_change_state_need_the_token_and_ctl_reads_it_from_the_config() {
    use crate::writer::{setup_on, start_writer_env};
    use tributary::admin::request_with;

    let s = setup_on(1, false);
    let dir = std::env::temp_dir().join(unique("admin-token"));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = unique("admin-token-value");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let admin = format!("127.0.0.1:{}", free_port());
    let env = [("TRIBUTARY_ADMIN_TOKEN_FILE", token_file.to_str().expect("path"))];
    let mut writer = start_writer_env(&s, &admin, &[], &env);
    let addr = admin.parse().expect("addr");
    let up = eventually(Duration::from_secs(30), || {
        request_with(addr, "GET", "/metrics", b"", None).ok()
    });
    assert_eq!(
        up.map(|r| r.0),
        Some(200),
        "/metrics stays open: {}",
        writer.log_text()
    );
    let limit = br#"{"rows_per_sec": 700, "burst": 70}"#;
    for (bearer, status) in [
        (None, 401),
        (Some("not-the-token"), 401),
        (Some(token.as_str()), 200),
    ] {
        let (got, body) = request_with(addr, "POST", "/rate-limit", limit, bearer).expect("request");
        assert_eq!(got, status, "bearer {bearer:?}: {body}");
    }
    // ctl takes the address and the token from the writer's config file.
    let config = dir.join("writer.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{admin}\"\ntoken_file = \"{}\"\n",
            token_file.display()
        ),
    )
    .expect("config");
    let ctl = std::process::Command::new(app_binary("tributary-writer"))
        .args(["--config", config.to_str().expect("path")])
        .args(["ctl", "rate-limit", "--rows-per-sec", "900", "--burst", "90"])
        .output()
        .expect("ctl");
    assert!(
        ctl.status.success(),
        "ctl: {}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert_eq!(
        harness::metric(&admin, "tributary_writer_rate_limit_rows_per_sec"),
        Some(900.0)
    );
    assert!(!writer.log_text().contains(&token), "the token was logged");
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));

    // Beyond loopback and without a token, state-changing endpoints are refused.
    let port = free_port();
    let open = format!("0.0.0.0:{port}");
    let writer = start_writer_env(&s, &open, &[], &[]);
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let up = eventually(Duration::from_secs(30), || {
        request_with(addr, "GET", "/metrics", b"", None).ok()
    });
    assert_eq!(up.map(|r| r.0), Some(200), "{}", writer.log_text());
    let (got, body) = request_with(addr, "POST", "/rate-limit", limit, None).expect("request");
    assert_eq!(got, 403, "{body}");
    assert!(body.contains("admin.token_file"), "{body}");
}

#[test]
fn no_secret_reaches_any_output_even_with_trace_logging() {
    let kafka = SecureTansu::start();
    let input = unique("metrics");
    create_topics(&kafka.brokers, &[(&input, 1)]);
    let token = unique("admin-token-secret");
    let admin = format!("127.0.0.1:{}", free_port());
    // Inline secrets, the worst case (files are preferred), with every log line on.
    let config = config_file(
        &kafka,
        &format!(
            "[kafka]\nproperties = {{ debug = \"all\" }}\n[kafka.security]\nprotocol = \"sasl_ssl\"\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\npassword = \"{}\"\nca_file = \"{}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{token}\"\n",
            kafka.username,
            kafka.password,
            kafka.ca_file.display()
        ),
    );
    let mut app = Process::spawn(
        "tributary-rollup",
        &app_binary("tributary-rollup"),
        &[
            "--config",
            &config.display().to_string(),
            "--brokers",
            &kafka.brokers,
            "--input-topic",
            &input,
            "--group",
            &unique("rollup"),
        ],
        &[("RUST_LOG", "trace")],
    );
    let assigned = eventually(Duration::from_secs(60), || {
        app.log_text().contains("partition assigned").then_some(())
    });
    assert!(assigned.is_some(), "{}", app.log_text());
    let mut outputs = vec![app.log_text()];
    for path in ["/status", "/metrics", "/health"] {
        let (_, body) = harness::admin_get(&admin, path).expect("admin endpoint");
        outputs.push(body);
    }
    let addr = admin.parse().expect("addr");
    let (status, body) =
        tributary::admin::request_with(addr, "POST", "/replay?from_offset=0", b"", Some("wrong"))
            .expect("replay");
    assert_eq!(status, 401);
    outputs.push(body);
    for args in [vec!["--help"], vec!["replay", "--help"], vec!["--print-config"]] {
        let out = std::process::Command::new(app_binary("tributary-rollup"))
            .arg("--config")
            .arg(&config)
            .args(&args)
            .output()
            .expect("run");
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert_eq!(app.terminate(Duration::from_secs(60)), Some(0));
    outputs.push(app.log_text());
    assert!(outputs[0].len() > 10_000, "trace logging was not on");
    for (i, text) in outputs.iter().enumerate() {
        for secret in [&kafka.password, &token] {
            assert!(
                !text.contains(secret.as_str()),
                "output {i} holds a secret:\n{text}"
            );
        }
    }
}

#[test]
fn the_writer_speaks_tls_to_the_cluster_and_refuses_an_unverified_one() {
    let kafka = harness::Tansu::start();
    let ring = CqlRing::start(3);
    let (tls_port, ca_file, _terminators) = ring.with_tls(3);
    let contact = format!("127.0.0.1:{tls_port}");
    let keyspace = unique("ks").replace('-', "_");
    let dir = std::env::temp_dir().join(unique("cql-tls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (stranger, _) = harness::self_signed(&dir, "stranger", &[]);
    let tls = |ca: &Path| {
        [
            ("TRIBUTARY_CASSANDRA_TLS", "true".to_owned()),
            ("TRIBUTARY_CASSANDRA_CA_FILE", ca.display().to_string()),
        ]
    };
    let schema = apply_schema(&contact, &keyspace, &tls(&ca_file));
    assert!(
        schema.status.success(),
        "{}",
        String::from_utf8_lossy(&schema.stderr)
    );

    let (input, points) = produce_points(&kafka.brokers, 200, 7);
    let target = PointsWriter::new(&kafka.brokers, &contact, &keyspace, &input);
    let start = |ca: &Path| target.start(None, &tls(ca));
    let mut refused = start(&stranger);
    let reported = eventually(Duration::from_secs(60), || {
        let log = refused.log_text();
        (log.contains("cannot reach the cluster; retrying") && log.contains("certificate verify failed"))
            .then_some(())
    });
    assert!(
        reported.is_some(),
        "an unverified cluster not reported:\n{}",
        refused.log_text()
    );
    assert!(refused.is_running(), "gave up:\n{}", refused.log_text());
    drop(refused);

    let writer = start(&ca_file);
    let all = eventually(Duration::from_secs(120), || {
        (ring.count(&keyspace, "points") == points.len() as u64).then_some(())
    });
    assert!(
        all.is_some(),
        "points not written over TLS:\n{}",
        writer.log_text()
    );
    // Every node was reached through its terminator: the ring saw the writer's rows on
    // more than one node, and only TLS ports were given.
    let nodes_written = ring
        .counters()
        .iter()
        .filter(|c| c["rows_written"].as_u64().unwrap_or(0) > 0)
        .count();
    assert!(nodes_written > 1, "{:?}", ring.counters());
    // Python's cassandra-driver reads them back through TLS too.
    let counted = std::process::Command::new("python3")
        .arg(harness::workspace_root().join("tests/py/cql_client.py"))
        .args(["count", "127.0.0.1", &tls_port.to_string(), &keyspace, "points"])
        .env("CQL_SSL_CA", &ca_file)
        .output()
        .expect("python3");
    assert!(
        counted.status.success(),
        "{}",
        String::from_utf8_lossy(&counted.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&counted.stdout).trim(),
        points.len().to_string()
    );
}

#[test]
fn the_writer_presents_its_client_certificate_to_a_cluster_that_requires_one() {
    let ring = CqlRing::start(3);
    let dir = std::env::temp_dir().join(unique("cql-mtls"));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = harness::self_signed(&dir, "writer", &[]);
    let (tls_port, ca_file, _terminators) = ring.with_tls_for(3, Some(&cert));
    let contact = format!("127.0.0.1:{tls_port}");
    let schema = |client: bool| {
        let mut env = vec![
            ("TRIBUTARY_CASSANDRA_TLS", "true".to_owned()),
            ("TRIBUTARY_CASSANDRA_CA_FILE", ca_file.display().to_string()),
        ];
        if client {
            env.push(("TRIBUTARY_CASSANDRA_CERT_FILE", cert.display().to_string()));
            env.push(("TRIBUTARY_CASSANDRA_KEY_FILE", key.display().to_string()));
        }
        apply_schema(&contact, &unique("ks").replace('-', "_"), &env)
    };
    let without = schema(false);
    assert!(
        !without.status.success(),
        "a cluster requiring a client certificate let one in without"
    );
    let with = schema(true);
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
}
