//! The emulated CQL ring as a process, with its HTTP control and TLS terminators.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::admin::admin_get;
use crate::process::{Process, app_binary, eventually, free_port, unique, wait_listening, workspace_root};
use crate::tls::{cert_and_key, self_signed};

/// The emulated CQL ring as a process (`tributary-dev cql`) with its HTTP control.
pub struct CqlRing {
    pub port: u16,
    pub http: String,
    pub process: Process,
    /// The (user, password) the ring requires, if any.
    login: Option<(String, String)>,
}

impl CqlRing {
    pub fn start(nodes: usize) -> Self {
        Self::start_with_spare(nodes, 0)
    }

    /// `spare` more nodes start outside the ring; [`CqlRing::set_member`] adds them.
    pub fn start_with_spare(nodes: usize, spare: usize) -> Self {
        Self::start_with(nodes, spare, None)
    }

    /// A ring that requires `(user, password)` (PasswordAuthenticator).
    pub fn start_with_login(nodes: usize, user: &str, password: &str) -> Self {
        Self::start_with(nodes, 0, Some((user, password)))
    }

    fn start_with(nodes: usize, spare: usize, login: Option<(&str, &str)>) -> Self {
        let port = free_port();
        let http = format!("127.0.0.1:{}", free_port());
        let (user, password) = login.unwrap_or_default();
        let process = Process::spawn(
            "tributary-dev-cql",
            &app_binary("tributary-dev"),
            &[
                "cql",
                "--nodes",
                &nodes.to_string(),
                "--spare",
                &spare.to_string(),
                "--port",
                &port.to_string(),
                "--http",
                &http,
                "--username",
                user,
            ],
            &[("TRIBUTARY_DEV_CQL_PASSWORD", password)],
        );
        let ready = eventually(Duration::from_secs(30), || {
            process.log_text().contains("Ctrl-C stops").then_some(())
        });
        assert!(ready.is_some(), "ring did not start: {}", process.log_text());
        Self {
            port,
            http,
            process,
            login: login.map(|(u, p)| (u.to_owned(), p.to_owned())),
        }
    }

    pub fn contact_point(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Puts a TLS terminator (socat, certificate for every node's address) in front of
    /// each of the `nodes` nodes, on one port for all; returns it, the CA file clients
    /// must trust, and the terminators (which stop when dropped).
    pub fn with_tls(&self, nodes: usize) -> (u16, PathBuf, Vec<Process>) {
        self.with_tls_for(nodes, None)
    }

    /// The same; with `client`, the terminators require that client certificate (mutual
    /// TLS).
    pub fn with_tls_for(&self, nodes: usize, client: Option<&Path>) -> (u16, PathBuf, Vec<Process>) {
        let dir = std::env::temp_dir().join(unique("ring-tls"));
        std::fs::create_dir_all(&dir).expect("dir");
        let names: Vec<String> = (1..=nodes).map(|i| format!("IP:127.0.0.{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (cert, key) = self_signed(&dir, "ring", &names);
        let both = cert_and_key(&dir, &cert, &key);
        let tls = free_port();
        let terminators = (1..=nodes)
            .map(|i| {
                let p = Process::spawn(
                    "socat",
                    Path::new("socat"),
                    &[
                        &match client {
                            Some(client) => format!(
                                "OPENSSL-LISTEN:{tls},bind=127.0.0.{i},reuseaddr,cert={},verify=1,cafile={},fork",
                                both.display(),
                                client.display()
                            ),
                            None => format!(
                                "OPENSSL-LISTEN:{tls},bind=127.0.0.{i},reuseaddr,cert={},verify=0,fork",
                                both.display()
                            ),
                        },
                        &format!("TCP:127.0.0.{i}:{}", self.port),
                    ],
                    &[],
                );
                wait_listening(&format!("127.0.0.{i}:{tls}"), &p);
                p
            })
            .collect();
        (tls, cert, terminators)
    }

    /// Per-node counters.
    pub fn counters(&self) -> Vec<Value> {
        let (_, body) = admin_get(&self.http, "/counters").expect("ring counters");
        serde_json::from_str::<Value>(&body)
            .expect("counters JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Sum of one counter over every node.
    pub fn total(&self, name: &str) -> u64 {
        self.counters()
            .iter()
            .map(|c| c[name].as_u64().unwrap_or(0))
            .sum()
    }

    /// Changes faults (`node` 1-based, None = every node).
    pub fn faults(&self, node: Option<usize>, json: &str) {
        let addr = self.http.parse().expect("addr");
        let path = node.map_or("/faults".to_owned(), |n| format!("/faults?node={n}"));
        let (status, body) = tributary::admin::request(addr, "POST", &path, json.as_bytes()).expect("faults");
        assert_eq!(status, 200, "{body}");
    }

    /// A node (1-based) joins or leaves the ring.
    pub fn set_member(&self, node: usize, member: bool) {
        let addr = self.http.parse().expect("addr");
        let body = format!("{{\"member\": {member}}}");
        let (status, text) =
            tributary::admin::request(addr, "POST", &format!("/topology?node={node}"), body.as_bytes())
                .expect("topology");
        assert_eq!(status, 200, "{text}");
    }

    /// The rows a query returns, each as a JSON list, through Python's cassandra-driver.
    pub fn select(&self, query: &str) -> Vec<Value> {
        self.cql_client("select", &[query])
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON row"))
            .collect()
    }

    /// Row count of a table, through Python's cassandra-driver.
    pub fn count(&self, keyspace: &str, table: &str) -> u64 {
        self.cql_client("count", &[keyspace, table])
            .trim()
            .parse()
            .expect("a count")
    }

    /// What `tests/py/cql_client.py COMMAND 127.0.0.1 PORT ARGS…` prints (logged in as
    /// the ring's user, if it has one).
    fn cql_client(&self, command: &str, args: &[&str]) -> String {
        let (user, password) = self.login.clone().unwrap_or_default();
        let out = Command::new("python3")
            .arg(workspace_root().join("tests/py/cql_client.py"))
            .args([command, "127.0.0.1", &self.port.to_string()])
            .args(args)
            .env("CQL_USERNAME", user)
            .env("CQL_PASSWORD", password)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
