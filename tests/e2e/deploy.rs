//! The deployment artefacts as a cluster would use them: hadolint on the Dockerfile,
//! kubernetes-validate on the manifests, every StatefulSet's binary started with the
//! arguments, environment and files its pod gets and probed on the paths and ports the
//! manifest names, and every metric the dashboard and the alert rules query exported by
//! the running apps.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::{CqlRing, Process, Tansu, app_binary, create_topics, eventually, unique, workspace_root};
use serde_json::Value;

fn run_tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("{program} (apps/devkit/setup.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dockerfile_and_the_manifests_pass_their_linters() {
    run_tool(
        "hadolint",
        &["--config", "deploy/.hadolint.yaml", "deploy/Dockerfile"],
    );
    run_tool(
        "kubernetes-validate",
        &["--strict", "--quiet", "deploy/kubernetes/tributary.yaml"],
    );
}

/// Every `tributary_…` name in a query text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("tributary_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every name a `/metrics` answer can be queried by: sample names, and the names each
/// `# TYPE` line stands for (a family without samples yet still exists).
fn exported(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or_default();
            for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// A pod's files under `root`: each volume mount of the container gets its ConfigMap's
/// files, the Secret's admin token, or an empty directory (a volume claim).
fn materialise(root: &Path, set: &Value, config_maps: &[&Value]) -> Vec<String> {
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().expect("volumeMounts") {
        let path = mount["mountPath"].as_str().expect("mountPath");
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("mount dir");
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"]);
        match volume {
            Some(v) if v["configMap"].is_object() => {
                let map = config_maps
                    .iter()
                    .find(|m| m["metadata"]["name"] == v["configMap"]["name"])
                    .expect("the ConfigMap the pod mounts");
                for (file, text) in map["data"].as_object().expect("data") {
                    std::fs::write(dir.join(file), text.as_str().expect("text")).expect("file");
                }
            }
            Some(v) if v["secret"].is_object() => {
                std::fs::write(dir.join("admin-token"), "deploy-test-token\n").expect("token");
            }
            _ => {} // a volume claim: the directory is enough.
        }
        mounts.push(path.to_owned());
    }
    // Longest first, so /etc/tributary/config is rewritten before /etc/tributary.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    mounts
}

/// `text` with every mount path moved under `root`.
fn rooted(text: &str, root: &Path, mounts: &[String]) -> String {
    let mut out = text.to_owned();
    for m in mounts {
        let moved = root.join(m.trim_start_matches('/')).display().to_string();
        out = out.replace(m.as_str(), &moved);
    }
    out
}

#[test]
fn each_pod_starts_as_its_manifest_says_and_exports_what_the_dashboard_and_alerts_query() {
    let docs = harness::yaml_docs(&workspace_root().join("deploy/kubernetes/tributary.yaml"));
    let config_maps: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ConfigMap").collect();
    let sets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "StatefulSet").collect();
    assert_eq!(sets.len(), 3);
    // What the pods would reach by name in a cluster, here on loopback.
    let tansu = Tansu::start();
    create_topics(
        &tansu.brokers,
        &[
            ("metrics", 2),
            ("rollups", 2),
            ("anomalies", 2),
            ("dead-letter", 2),
        ],
    );
    // A few records, so consumer positions and lags become known.
    let points: Vec<harness::Outgoing> = (0..20)
        .map(|i| harness::Outgoing {
            key: Some("host-1/cpu".into()),
            value: Some(harness::point_json(
                "host-1/cpu",
                1_732_320_000_000 + i * 10_000,
                1.0,
            )),
            partition: Some(0),
        })
        .collect();
    harness::py_produce(&tansu.brokers, "metrics", &points);
    let ring = CqlRing::start_with_spare(3, 0);
    let schema = Command::new(app_binary("tributary-writer"))
        .args(["schema", "apply", "--contact-points", &ring.contact_point()])
        .args(["--replication-factor", "1", "--log", "warn"])
        .output()
        .expect("schema apply");
    assert!(
        schema.status.success(),
        "{}",
        String::from_utf8_lossy(&schema.stderr)
    );

    let mut seen = BTreeSet::new();
    for set in sets {
        let name = set["metadata"]["name"].as_str().expect("name");
        let container = &set["spec"]["template"]["spec"]["containers"][0];
        let root: PathBuf = std::env::temp_dir().join(unique("pod"));
        let mounts = materialise(&root, set, &config_maps);
        // Config files name the mount paths too (state dir, token file).
        for m in &mounts {
            let dir = root.join(m.trim_start_matches('/'));
            for entry in std::fs::read_dir(&dir).expect("mount").flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    std::fs::write(entry.path(), rooted(&text, &root, &mounts)).expect("rewrite");
                }
            }
        }
        let args: Vec<String> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| rooted(a.as_str().expect("arg"), &root, &mounts))
            .collect();
        let pod_name = format!("{name}-0");
        let mut env: Vec<(String, String)> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => pod_name.clone(),
                    Some(other) => panic!("{name}: env from {other} not modelled here"),
                    None => e["value"].as_str().unwrap_or_default().to_owned(),
                };
                (e["name"].as_str().expect("env name").to_owned(), value)
            })
            .collect();
        env.push(("TRIBUTARY_KAFKA_BROKERS".into(), tansu.brokers.clone()));
        if name == "tributary-writer" {
            env.push((
                "TRIBUTARY_CASSANDRA_CONTACT_POINTS".into(),
                format!("[\"{}\"]", ring.contact_point()),
            ));
        }
        let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let arg_refs: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let shown = Command::new(app_binary(&args[0]))
            .args(&arg_refs)
            .arg("--print-config")
            .envs(env_refs.iter().copied())
            .env_remove("RUST_LOG")
            .output()
            .expect("print-config");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            text.contains(&format!("group_instance_id = \"{pod_name}\"")),
            "{name}: the pod name is not its static member id:\n{text}{}",
            String::from_utf8_lossy(&shown.stderr)
        );
        let mut app = Process::spawn(name, &app_binary(&args[0]), &arg_refs, &env_refs);

        // The probes, on the port their manifest names.
        let port_of = |probe: &str| {
            let port = &container[probe]["httpGet"]["port"];
            port.as_u64().unwrap_or_else(|| {
                container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == *port)
                    .and_then(|p| p["containerPort"].as_u64())
                    .unwrap_or_else(|| panic!("{name}: no port named {port}"))
            })
        };
        for (probe, patience) in [("livenessProbe", 30), ("readinessProbe", 120)] {
            let path = container[probe]["httpGet"]["path"].as_str().expect("path");
            let addr = format!("127.0.0.1:{}", port_of(probe));
            let answered = eventually(Duration::from_secs(patience), || {
                harness::admin_get(&addr, path).filter(|(code, _)| *code == 200)
            });
            assert!(
                answered.is_some(),
                "{name}: {probe} {addr}{path} answered {:?}\n{}",
                harness::admin_get(&addr, path),
                app.log_text()
            );
        }
        // Twice, a statistics interval (5 s) apart: lags appear once librdkafka knows them.
        let addr = format!("127.0.0.1:{}", port_of("readinessProbe"));
        for wait in [0, 6] {
            std::thread::sleep(Duration::from_secs(wait));
            let (code, body) = harness::admin_get(&addr, "/metrics").expect("metrics");
            assert_eq!(code, 200);
            seen.extend(exported(&body));
        }
        assert_eq!(
            app.terminate(Duration::from_secs(60)),
            Some(0),
            "{}",
            app.log_text()
        );
    }

    let monitoring = workspace_root().join("deploy/monitoring");
    let alerts = std::fs::read_to_string(monitoring.join("alerts.yaml")).expect("alerts");
    let dashboard = std::fs::read_to_string(monitoring.join("dashboard.json")).expect("dashboard");
    let queried: BTreeSet<String> = metric_names(&alerts)
        .into_iter()
        .chain(metric_names(&dashboard))
        .collect();
    assert!(queried.len() > 10, "{queried:?}");
    let missing: Vec<&String> = queried.iter().filter(|m| !seen.contains(*m)).collect();
    assert!(missing.is_empty(), "queried but exported by no app: {missing:?}");
}
