//! Embedded Kafka: librdkafka's mock cluster, optionally reachable on fixed ports.
//!
//! The mock cluster binds ephemeral loopback ports. For a fixed port a small TCP proxy
//! listens on it and the broker's advertised address is pointed at the proxy, so clients
//! that bootstrap from the fixed port keep using it after reading metadata.
//!
//! Mind the mock's retention (hard-coded in librdkafka): each partition keeps at most
//! 5 MiB or 100,000 message sets and silently drops older data.

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};

/// A running mock cluster. Dropping it stops the brokers.
pub struct EmbeddedKafka {
    // Owns the mock cluster (created by `test.mock.num.brokers`); declared before the
    // runtime so the brokers stop before the proxies.
    handle: BaseProducer<DefaultProducerContext>,
    bootstrap: String,
    _proxies: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for EmbeddedKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKafka")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedKafkaError {
    #[error("cannot start the mock cluster: {0}")]
    Start(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
}

impl EmbeddedKafka {
    /// Starts `brokers` mock brokers. With `port` = 0 clients use the mock's own ephemeral
    /// ports; otherwise broker i is reachable on `port + i`.
    pub fn start(brokers: i32, port: u16) -> Result<Self, EmbeddedKafkaError> {
        let handle: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .set("log_level", "3")
            .create()
            .map_err(|e| EmbeddedKafkaError::Start(e.to_string()))?;
        let actual = handle
            .client()
            .mock_cluster()
            .ok_or_else(|| EmbeddedKafkaError::Start("no mock cluster on the handle".into()))?
            .bootstrap_servers();
        if port == 0 {
            return Ok(Self {
                handle,
                bootstrap: actual,
                _proxies: None,
            });
        }
        let targets: Vec<String> = actual.split(',').map(str::to_owned).collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tributary-kafka-proxy")
            .enable_all()
            .build()
            .map_err(|e| EmbeddedKafkaError::Start(e.to_string()))?;
        let mut fixed = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let addr = SocketAddr::from(([127, 0, 0, 1], port + i as u16));
            let listener = rt
                .block_on(tokio::net::TcpListener::bind(addr))
                .map_err(|source| EmbeddedKafkaError::Listen { addr, source })?;
            rt.spawn(proxy(listener, target.clone()));
            advertise(&handle, i as i32 + 1, addr.port());
            fixed.push(addr.to_string());
        }
        Ok(Self {
            handle,
            bootstrap: fixed.join(","),
            _proxies: Some(rt),
        })
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the mock has no CreateTopics API; auto-creation gives 4 partitions).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), EmbeddedKafkaError> {
        let err = |reason: String| EmbeddedKafkaError::Topic {
            topic: topic.to_owned(),
            reason,
        };
        let cluster: MockCluster<'_, _> = self
            .handle
            .client()
            .mock_cluster()
            .ok_or_else(|| err("no mock cluster".into()))?;
        cluster
            .create_topic(topic, partitions, 1)
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    /// The next `n` OffsetCommit requests fail with OFFSET_METADATA_TOO_LARGE, an error
    /// librdkafka hands to the application instead of retrying.
    pub fn fail_commits(&self, n: usize) -> Result<(), EmbeddedKafkaError> {
        use rdkafka::types::RDKafkaApiKey;
        use rdkafka::types::RDKafkaRespErr;
        let cluster: MockCluster<'_, _> = self
            .handle
            .client()
            .mock_cluster()
            .ok_or_else(|| EmbeddedKafkaError::Start("no mock cluster".into()))?;
        let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; n];
        cluster.request_errors(RDKafkaApiKey::OffsetCommit, &errors);
        Ok(())
    }

    /// Waits until the brokers answer metadata requests.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let client: Result<BaseProducer, _> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create();
        client.is_ok_and(|c| c.client().fetch_metadata(None, timeout).is_ok())
    }
}

/// Points broker `id`'s advertised listener at the proxy port. rdkafka exposes no safe
/// wrapper for `rd_kafka_mock_broker_set_host_port`.
#[allow(unsafe_code)]
fn advertise(handle: &BaseProducer, id: i32, port: u16) {
    use rdkafka::bindings as rd;
    let host = c"127.0.0.1";
    // SAFETY: the mock cluster belongs to `handle`, which outlives this call; the host
    // string is NUL-terminated and copied by librdkafka.
    unsafe {
        let cluster = rd::rd_kafka_handle_mock_cluster(handle.client().native_ptr());
        if !cluster.is_null() {
            rd::rd_kafka_mock_broker_set_host_port(cluster, id, host.as_ptr(), port as i32);
        }
    }
}

async fn proxy(listener: tokio::net::TcpListener, target: String) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReadRecord {
    /// The value of the header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Reads every record currently in `topic` (all partitions, from the start up to the high
/// watermarks seen when called).
pub fn read_all(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, rdkafka::error::KafkaError> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tributary-devkit-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut ends = std::collections::HashMap::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            if high > low {
                remaining += high - low;
                ends.insert(p.id(), high);
                tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
            }
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&m.partition());
                }
                out.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(out)
}
