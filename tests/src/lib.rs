//! Helpers for the end-to-end tests: a real Kafka-protocol broker process (tansu), app
//! processes, an independent client (Python confluent-kafka), unique names, and an
//! oracle for rollups.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use serde_json::Value;
pub use tributary::record::exact_sum;

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A binary of this workspace, built into the same target directory as the test.
pub fn app_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --release --bins)",
        path.display()
    );
    path
}

fn logs_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("tributary-e2e-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// A child process killed when dropped, with its output in a log file.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(name: &str, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::spawn_in(None, name, program, args, envs)
    }

    /// The same, in the working directory `dir` if given.
    pub fn spawn_in(
        dir: Option<&Path>,
        name: &str,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let log = logs_dir().join(format!("{}.log", unique(name)));
        let file = std::fs::File::create(&log).expect("log file");
        let err = file.try_clone().expect("log file");
        let mut cmd = Command::new(program);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.args(args)
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("TERM");
        self.wait(timeout)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker on a free port, with in-memory storage or (to be restarted with its
/// data) sqlite storage in a directory of its own.
pub struct Tansu {
    pub brokers: String,
    pub process: Process,
    dir: Option<PathBuf>,
}

pub fn tansu_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("tansu");
        if p.exists() {
            return p;
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cargo/bin/tansu");
    assert!(
        p.exists(),
        "tansu is not installed: run tests/run.sh, which installs it"
    );
    p
}

impl Tansu {
    pub fn start() -> Self {
        Self::spawn(free_port(), None)
    }

    /// On sqlite storage, so [`Tansu::stop`] and [`Tansu::start_again`] are a broker
    /// restart that keeps topics, records and the group's offsets.
    pub fn start_stored() -> Self {
        let dir = std::env::temp_dir().join(unique("tansu-stored"));
        std::fs::create_dir_all(&dir).expect("dir");
        Self::spawn(free_port(), Some(dir))
    }

    /// Kills the broker (SIGKILL).
    pub fn stop(&mut self) {
        self.process.signal("KILL");
        let _ = self.process.wait(Duration::from_secs(10));
    }

    /// Starts it again on the same port and storage.
    pub fn start_again(&mut self) {
        let port = self
            .brokers
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        *self = Self::spawn(port, self.dir.take());
    }

    fn spawn(port: u16, dir: Option<PathBuf>) -> Self {
        let url = format!("tcp://127.0.0.1:{port}");
        let storage = if dir.is_some() {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        let process = Process::spawn_in(
            dir.as_deref(),
            "tansu",
            &tansu_binary(),
            &[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ],
            &[("RUST_LOG", "warn")],
        );
        let brokers = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&brokers).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not start:\n{}",
                process.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            brokers,
            process,
            dir,
        }
    }
}

/// tansu behind a TLS terminator (socat) with SASL SCRAM-SHA-512 required: the setup of
/// a managed Kafka service. tansu's own TLS flags did not work here; its users are created
/// while it runs without `--authentication`, then it is restarted on the same storage
/// with it.
pub struct SecureTansu {
    /// The TLS port: `SASL_SSL` only.
    pub brokers: String,
    /// The CA (here the self-signed broker certificate) clients must trust.
    pub ca_file: PathBuf,
    pub username: String,
    pub password: String,
    pub dir: PathBuf,
    /// With mutual TLS: the client certificate and key the terminator accepts.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    _broker: Process,
    _tls: Process,
    /// One secured broker at a time: tansu 0.6 sometimes answers a SCRAM handshake with
    /// "unsupported mechanism" when several run under load (seen in the full suite).
    _turn: std::sync::MutexGuard<'static, ()>,
}

static SECURE_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A self-signed certificate `dir/NAME.pem` and its key `dir/NAME-key.pem`, naming the
/// addresses in `sans` (e.g. `IP:127.0.0.1`; none for a certificate that names no host).
pub fn self_signed(dir: &Path, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={name}")]);
    if !sans.is_empty() {
        cmd.arg("-addext")
            .arg(format!("subjectAltName={}", sans.join(",")));
    }
    let made = cmd
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (cert, key)
}

/// One PEM file holding `cert` then `key`, as socat wants it.
fn cert_and_key(dir: &Path, cert: &Path, key: &Path) -> PathBuf {
    let both = dir.join(format!("{}-both.pem", unique("tls")));
    let pem = [
        std::fs::read(cert).expect("cert"),
        std::fs::read(key).expect("key"),
    ]
    .concat();
    std::fs::write(&both, pem).expect("pem");
    both
}

fn wait_listening(addr: &str, what: &Process) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} did not start:\n{}",
            what.name,
            what.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl SecureTansu {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// With `mutual`, the terminator also requires a client certificate (mutual TLS).
    pub fn start_with(mutual: bool) -> Self {
        let turn = SECURE_TURN.lock().unwrap_or_else(|p| p.into_inner());
        let dir = std::env::temp_dir().join(unique("secure-tansu"));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = self_signed(&dir, "broker", &["IP:127.0.0.1"]);
        let client_cert = mutual.then(|| self_signed(&dir, "client", &[]));
        let both = cert_and_key(&dir, &cert, &key);
        let (plain, tls) = (free_port(), free_port());
        let plain_url = format!("tcp://127.0.0.1:{plain}");
        let plain_addr = format!("127.0.0.1:{plain}");
        let broker = |advertised: &str, auth: bool| {
            let mut args = vec![
                "broker",
                "--listener-url",
                &plain_url,
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "sqlite://tansu.db",
            ];
            if auth {
                args.push("--authentication");
            }
            let p = Process::spawn_in(
                Some(&dir),
                "tansu",
                &tansu_binary(),
                &args,
                &[("RUST_LOG", "warn")],
            );
            wait_listening(&plain_addr, &p);
            p
        };
        let (username, password) = ("tributary-e2e".to_owned(), format!("pw-{}", unique("s")));
        let setup = broker(&plain_url, false);
        let created = Command::new(tansu_binary())
            .args(["user", "create", "--broker", &plain_url, &username, &password])
            .output()
            .expect("tansu user create");
        assert!(
            created.status.success(),
            "tansu user create: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        drop(setup);
        let tls_addr = format!("127.0.0.1:{tls}");
        let broker = broker(&format!("tcp://{tls_addr}"), true);
        let tls_process = Process::spawn(
            "socat",
            Path::new("socat"),
            &[
                &match &client_cert {
                    // Mutual TLS: only the client certificate made above is accepted.
                    Some((client, _)) => format!(
                        "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,cert={},verify=1,cafile={},fork",
                        both.display(),
                        client.display()
                    ),
                    None => format!(
                        "OPENSSL-LISTEN:{tls},bind=127.0.0.1,reuseaddr,cert={},verify=0,fork",
                        both.display()
                    ),
                },
                &format!("TCP:{plain_addr}"),
            ],
            &[],
        );
        wait_listening(&tls_addr, &tls_process);
        let s = Self {
            brokers: tls_addr,
            ca_file: cert,
            username,
            password,
            dir,
            client_cert,
            _broker: broker,
            _tls: tls_process,
            _turn: turn,
        };
        let mut settings = vec![
            ("security.protocol".into(), "SASL_SSL".into()),
            ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), s.username.clone()),
            ("sasl.password".into(), s.password.clone()),
            ("ssl.ca.location".into(), s.ca_file.display().to_string()),
        ];
        if let Some((cert, key)) = &s.client_cert {
            settings.push(("ssl.certificate.location".into(), cert.display().to_string()));
            settings.push(("ssl.key.location".into(), key.display().to_string()));
        }
        client_settings()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.brokers.clone(), settings);
        s
    }
}

/// Creates topics through the admin API.
pub fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    create_topics_configured(brokers, topics, &[]);
}

/// Creates topics with the topic configuration given (e.g. `retention.ms`).
pub fn create_topics_configured(brokers: &str, topics: &[(&str, i32)], configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (k, v) in settings_for(brokers) {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, n)| {
            configs.iter().fold(
                NewTopic::new(name, *n, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let results = futures_block_on(admin.create_topics(&new, &AdminOptions::new())).expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
}

fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    // rdkafka's admin futures complete on librdkafka's thread; a tiny executor suffices.
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Client settings a secured broker needs (SASL_SSL), by its bootstrap address, so every
/// helper that takes `brokers` reaches it unchanged.
type SettingsByBroker = BTreeMap<String, Vec<(String, String)>>;

fn client_settings() -> &'static std::sync::Mutex<SettingsByBroker> {
    static SETTINGS: std::sync::OnceLock<std::sync::Mutex<SettingsByBroker>> = std::sync::OnceLock::new();
    SETTINGS.get_or_init(Default::default)
}

fn settings_for(brokers: &str) -> Vec<(String, String)> {
    client_settings()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(brokers)
        .cloned()
        .unwrap_or_default()
}

/// The independent Python client, with the settings `brokers` needs.
fn python(brokers: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(python_client());
    let settings: serde_json::Map<String, Value> = settings_for(brokers)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    cmd.env("KAFKA_CLIENT_CONFIG", Value::Object(settings).to_string());
    cmd
}

fn python_client() -> PathBuf {
    workspace_root().join("tests/py/kafka_client.py")
}

/// A record for the independent producer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub key: Option<String>,
    pub value: Option<String>,
    pub partition: Option<i32>,
}

/// Produces through Python's confluent-kafka.
pub fn py_produce(brokers: &str, topic: &str, records: &[Outgoing]) {
    produce_lines(
        brokers,
        topic,
        records
            .iter()
            .map(|r| serde_json::json!({"key": r.key, "value": r.value, "partition": r.partition})),
    );
}

/// Produces records with the Kafka timestamps (CreateTime, milliseconds) given.
pub fn py_produce_stamped(brokers: &str, topic: &str, records: &[(Outgoing, i64)]) {
    produce_lines(
        brokers,
        topic,
        records.iter().map(|(r, ts)| {
            serde_json::json!({"key": r.key, "value": r.value, "partition": r.partition, "timestamp": ts})
        }),
    );
}

/// Produces records with the headers given.
pub fn py_produce_headed(brokers: &str, topic: &str, records: &[(Outgoing, Vec<(&str, &str)>)]) {
    produce_lines(
        brokers,
        topic,
        records.iter().map(|(r, headers)| {
            serde_json::json!({"key": r.key, "value": r.value, "partition": r.partition, "headers": headers})
        }),
    );
}

fn produce_lines(brokers: &str, topic: &str, lines: impl Iterator<Item = Value>) {
    let mut child = python(brokers)
        .args(["produce", brokers, topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for line in lines {
            writeln!(stdin, "{line}").expect("write to producer");
        }
    }
    let out = child.wait_with_output().expect("producer finished");
    assert!(
        out.status.success(),
        "python producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A record read by the independent consumer.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub key: Option<String>,
    pub value: Option<String>,
    pub partition: i32,
    pub offset: i64,
    pub headers: BTreeMap<String, String>,
}

impl Incoming {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.value.as_deref().unwrap_or("null")).expect("JSON value")
    }
}

/// Consumes a whole topic through Python's confluent-kafka: at least `min_count`
/// records, then until it has been idle for `idle_s`, or until `timeout_s`.
pub fn py_consume(
    brokers: &str,
    topic: &str,
    min_count: usize,
    timeout_s: u64,
    idle_s: f64,
) -> Vec<Incoming> {
    let out = python(brokers)
        .args([
            "consume",
            brokers,
            topic,
            &min_count.to_string(),
            &timeout_s.to_string(),
            &idle_s.to_string(),
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("consumer line");
            Incoming {
                key: v["key"].as_str().map(str::to_owned),
                value: v["value"].as_str().map(str::to_owned),
                partition: v["partition"].as_i64().unwrap_or(-1) as i32,
                offset: v["offset"].as_i64().unwrap_or(-1),
                headers: v["headers"]
                    .as_object()
                    .map(|h| {
                        h.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Commits `offset` for `group` with commit metadata, through Python's confluent-kafka.
pub fn py_commit(brokers: &str, group: &str, topic: &str, partition: i32, offset: i64, metadata: &str) {
    let out = python(brokers)
        .args([
            "commit",
            brokers,
            group,
            topic,
            &partition.to_string(),
            &offset.to_string(),
            metadata,
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python commit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The offset after each partition's last record, for records produced in order with
/// explicit partitions (what a group that consumed them all has committed).
pub fn end_offsets(records: &[Outgoing]) -> BTreeMap<i32, i64> {
    let mut end = BTreeMap::new();
    for r in records {
        *end.entry(r.partition.unwrap_or(0)).or_insert(0i64) += 1;
    }
    end
}

/// Committed offsets of `group` and end offsets of `topic`, per partition.
pub fn py_committed(brokers: &str, group: &str, topic: &str) -> (BTreeMap<i32, i64>, BTreeMap<i32, i64>) {
    let ask = || {
        python(brokers)
            .args(["committed", brokers, group, topic])
            .output()
            .expect("python3")
    };
    // A broker that just restarted may not answer the first metadata request in time.
    let mut out = ask();
    for _ in 0..3 {
        if out.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
        out = ask();
    }
    assert!(
        out.status.success(),
        "python committed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("committed JSON");
    let map = |k: &str| {
        v[k].as_object()
            .map(|m| {
                m.iter()
                    .map(|(p, o)| (p.parse().unwrap_or(-1), o.as_i64().unwrap_or(-1)))
                    .collect()
            })
            .unwrap_or_default()
    };
    (map("committed"), map("end"))
}

/// Committed offsets of `group` on `topic` next to the offset after the last record the
/// independent client reads from each partition. (tansu 0.6 reports a wrong high
/// watermark through ListOffsets, so the records themselves are the reference.)
pub fn committed_and_end(
    brokers: &str,
    group: &str,
    topic: &str,
    records: usize,
) -> (BTreeMap<i32, i64>, BTreeMap<i32, i64>) {
    let (committed, _) = py_committed(brokers, group, topic);
    let mut end = BTreeMap::new();
    for r in py_consume(brokers, topic, records, 120, 2.0) {
        let e = end.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    (committed, end)
}

/// A point for data sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pt<'a> {
    pub series: &'a str,
    pub ts: i64,
    pub value: f64,
}

pub fn point_json(series: &str, ts: i64, value: f64) -> String {
    serde_json::json!({"series": series, "ts": ts, "value": value}).to_string()
}

/// Expected aggregates of one window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// Rollups computed directly from raw records: (series, resolution, window_start).
pub fn oracle(points: &[Pt<'_>], levels: &[(&str, i64)]) -> BTreeMap<(String, String, i64), Expected> {
    let mut grouped: BTreeMap<(String, String, i64), Vec<f64>> = BTreeMap::new();
    for p in points {
        for (label, width) in levels {
            let start = p.ts.div_euclid(*width) * width;
            grouped
                .entry((p.series.to_owned(), (*label).to_owned(), start))
                .or_default()
                .push(p.value);
        }
    }
    grouped
        .into_iter()
        .map(|(k, vs)| {
            let e = Expected {
                count: vs.len() as u64,
                sum: exact_sum(&vs),
                min: vs.iter().copied().fold(f64::INFINITY, f64::min),
                max: vs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            };
            (k, e)
        })
        .collect()
}

/// Polls `f` until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GETs a path from an app's admin endpoint.
/// Every document of a YAML file, as JSON (read with Python's PyYAML, which setup.sh
/// installs).
pub fn yaml_docs(path: &std::path::Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("YAML as JSON")
}

pub fn admin_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let addr = addr.parse().ok()?;
    tributary::admin::request(addr, "GET", path, b"").ok()
}

/// Waits until an app's `/health/ready` answers 200 `ready`, or (with `reason`) 503 with
/// that reason among its reasons. `Err` holds the last answer.
pub fn wait_readiness(
    admin: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> Result<(), Option<(u16, String)>> {
    let mut last = None;
    let reached = eventually(timeout, || {
        last = admin_get(admin, "/health/ready");
        let (status, body) = last.as_ref()?;
        let reached = match reason {
            None => *status == 200 && body == "ready\n",
            Some(r) => *status == 503 && body.contains(r),
        };
        reached.then_some(())
    });
    reached.ok_or(last)
}

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

/// A metric from an app's Prometheus endpoint.
pub fn metric(admin: &str, name: &str) -> Option<f64> {
    let (_, text) = admin_get(admin, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// librdkafka's mock cluster as its own process (`tributary-dev kafka`): a Kafka-protocol
/// broker whose group coordinator expires dead members on their session timeout, which
/// crash tests need (with tansu 0.6 a member restarted after a SIGKILL waited 45 s to
/// over 80 s for its partitions).
pub struct DevKafka {
    pub brokers: String,
    pub process: Process,
}

impl DevKafka {
    pub fn start(topics: &[&str], partitions: i32) -> Self {
        Self::start_failing_commits(topics, partitions, 0)
    }

    /// The same, with the first `fail_commits` offset commits failing.
    pub fn start_failing_commits(topics: &[&str], partitions: i32, fail_commits: usize) -> Self {
        let port = free_port();
        let process = Process::spawn(
            "tributary-dev-kafka",
            &app_binary("tributary-dev"),
            &[
                "kafka",
                "--port",
                &port.to_string(),
                "--partitions",
                &partitions.to_string(),
                "--topics",
                &topics.join(","),
                "--fail-commits",
                &fail_commits.to_string(),
            ],
            &[],
        );
        let brokers = format!("127.0.0.1:{port}");
        let ready = eventually(Duration::from_secs(30), || {
            process.log_text().contains("bootstrap.servers=").then_some(())
        });
        assert!(ready.is_some(), "{}", process.log_text());
        Self { brokers, process }
    }
}
