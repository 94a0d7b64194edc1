//! The independent Kafka client the tests check the apps with: Python's confluent-kafka
//! (produce, consume, commit, committed offsets) and rdkafka's admin API (topics), with
//! the settings a secured broker needs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::process::workspace_root;

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

pub(crate) fn client_settings() -> &'static std::sync::Mutex<SettingsByBroker> {
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
