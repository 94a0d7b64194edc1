//! Kafka clients and topic preparation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::Producer;

use crate::config::Config;
use crate::runtime::RuntimeError;

/// Consumer settings: manual commits, no auto offset store, cooperative rebalancing and
/// fetch settings that keep the local queue full (librdkafka's defaults back off for a
/// whole second once `queued.min.messages` is reached, which leaves workers idle).
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers)
        .set("group.id", &config.kafka.group)
        .set("client.id", &config.kafka.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false")
        .set("queued.min.messages", "200000")
        .set("fetch.queue.backoff.ms", "5")
        .set("fetch.wait.max.ms", "100")
        .set("max.partition.fetch.bytes", "4194304")
        .set("reconnect.backoff.max.ms", "5000");
    apply(&mut c, &config.kafka.properties);
    c
}

/// Producer settings: idempotent (no duplicates or reordering from retries), lz4, small
/// linger for batching, and a bounded queue so a slow broker pushes back on workers.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers)
        .set("client.id", format!("{}-producer", config.kafka.group))
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "131072")
        .set("reconnect.backoff.max.ms", "5000");
    apply(&mut c, &config.kafka.properties);
    c
}

/// A client for `config`'s brokers with `settings`, then the user's `kafka.properties`
/// (last, so security and tuning settings apply to every client the app creates).
pub fn client_config(config: &Config, settings: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.kafka.brokers);
    for (k, v) in settings {
        c.set(*k, *v);
    }
    apply(&mut c, &config.kafka.properties);
    c
}

fn apply(c: &mut ClientConfig, properties: &BTreeMap<String, String>) {
    for (k, v) in properties {
        c.set(k, v);
    }
}

/// Partition counts of the topics a pipeline reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicLayout {
    pub input_partitions: i32,
    pub outputs: BTreeMap<String, i32>,
}

/// An output topic and whether it must be co-partitioned with the input.
#[derive(Debug, Clone)]
pub struct OutputTopic {
    pub name: String,
    pub copartitioned: bool,
}

/// Waits for the input topic, then makes sure every output exists: created through the
/// admin API with the input's partition count, or, on brokers that do not implement
/// CreateTopics (librdkafka's mock cluster), auto-created by a metadata request. Brokers
/// that cannot be reached are retried with backoff until `stop` is set.
pub fn prepare_topics(
    config: &Config,
    input: &str,
    outputs: &[OutputTopic],
    stop: &AtomicBool,
) -> Result<TopicLayout, RuntimeError> {
    let (admin, producer) = admin_clients(config)?;

    let mut backoff = Backoff::new();
    let input_partitions = loop {
        match partition_count(admin.inner(), input) {
            Ok(Some(n)) => break n,
            Ok(None) => tracing::warn!(topic = input, "input topic does not exist yet; waiting"),
            Err(e) => {
                tracing::warn!(brokers = %config.kafka.brokers, error = %e, "cannot reach Kafka; retrying")
            }
        }
        backoff.wait(stop)?;
    };

    let mut layout = TopicLayout {
        input_partitions,
        outputs: BTreeMap::new(),
    };
    for out in outputs {
        let mut backoff = Backoff::new();
        let mut created = false;
        let n = loop {
            match partition_count(admin.inner(), &out.name) {
                Ok(Some(n)) => break n,
                Ok(None) if !created => {
                    created = true;
                    create_topic(&admin, &producer, config, &out.name, input_partitions, false);
                    continue;
                }
                Ok(None) => tracing::warn!(topic = %out.name, "output topic does not exist yet; retrying"),
                Err(e) => tracing::warn!(error = %e, "cannot reach Kafka; retrying"),
            }
            backoff.wait(stop)?;
        };
        if out.copartitioned && n < input_partitions {
            return Err(RuntimeError::Topology(format!(
                "topic {} has {n} partitions but {input} has {input_partitions}: outputs are \
                 produced to the same partition number as their source, so it needs at least \
                 {input_partitions}; recreate it with {input_partitions} partitions",
                out.name
            )));
        }
        layout.outputs.insert(out.name.clone(), n);
    }
    Ok(layout)
}

/// An admin client for CreateTopics, and a producer whose metadata requests auto-create
/// topics on brokers without CreateTopics.
fn admin_clients(
    config: &Config,
) -> Result<(AdminClient<DefaultClientContext>, rdkafka::producer::BaseProducer), RuntimeError> {
    let admin = client_config(config, &[])
        .create()
        .map_err(|e| RuntimeError::Kafka(format!("cannot create admin client: {e}")))?;
    let producer = producer_config(config)
        .create()
        .map_err(|e| RuntimeError::Kafka(format!("cannot create producer: {e}")))?;
    Ok((admin, producer))
}

/// Makes sure the single-partition, compacted replay-plan topic exists.
pub fn ensure_plan_topic(config: &Config, name: &str, stop: &AtomicBool) -> Result<(), RuntimeError> {
    let (admin, producer) = admin_clients(config)?;
    let mut backoff = Backoff::new();
    let mut created = false;
    loop {
        match partition_count(admin.inner(), name) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if !created => {
                created = true;
                create_topic(&admin, &producer, config, name, 1, true);
                continue;
            }
            Ok(None) => tracing::warn!(topic = name, "plan topic does not exist yet; retrying"),
            Err(e) => tracing::warn!(error = %e, "cannot reach Kafka; retrying"),
        }
        backoff.wait(stop)?;
    }
}

fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    producer: &rdkafka::producer::BaseProducer,
    config: &Config,
    name: &str,
    partitions: i32,
    compact: bool,
) {
    let replication = TopicReplication::Fixed(config.kafka.replication_factor);
    let mut topic = NewTopic::new(name, partitions, replication);
    if compact {
        topic = topic.set("cleanup.policy", "compact");
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(admin.create_topics([&topic], &options)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a runtime to create topics");
            return;
        }
    };
    match result.as_deref() {
        Ok([Ok(_)]) => tracing::info!(topic = name, partitions, "created topic"),
        Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => {}
        other => {
            // The mock cluster has no CreateTopics; it creates topics when asked for their
            // metadata by a client that allows auto-creation (producers do by default).
            tracing::info!(topic = name, result = ?other, "CreateTopics unavailable; asking for auto-creation");
            let _ = producer
                .client()
                .fetch_metadata(Some(name), Duration::from_secs(5));
        }
    }
}

fn partition_count<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<Option<i32>, String> {
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32))
}

/// Exponential backoff with jitter, 100 ms to 10 s, that gives up when `stop` is set.
#[derive(Debug)]
pub struct Backoff {
    delay: Duration,
    seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() as u64 | 1);
        Self {
            delay: Duration::from_millis(100),
            seed,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter = 0.5 + (self.seed % 1000) as f64 / 1000.0;
        let d = self.delay.mul_f64(jitter);
        self.delay = (self.delay * 2).min(Duration::from_secs(10));
        d
    }

    pub fn wait(&mut self, stop: &AtomicBool) -> Result<(), RuntimeError> {
        let until = std::time::Instant::now() + self.next_delay();
        while std::time::Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Err(RuntimeError::Stopped);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
