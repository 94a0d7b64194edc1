//! Topic preparation: the input waited for, outputs and the plan topic created with the
//! partition counts co-partitioning needs.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer};

use crate::config::Config;
use crate::kafka::Backoff;
use crate::kafka::KafkaConfig;
use crate::kafka::client::{client_config, producer_config};
use crate::kafka::logging::Logged;
use crate::runtime::RuntimeError;

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
    let (admin, producer) = admin_clients(&config.kafka)?;

    let mut backoff = Backoff::new();
    let input_partitions = loop {
        match partition_count(admin.inner(), input) {
            Ok(Some(n)) => break n,
            Ok(None) => tracing::warn!(topic = input, "input topic does not exist yet; waiting"),
            Err(e) => {
                tracing::warn!(brokers = %config.kafka.brokers, error = %e, "cannot reach Kafka; retrying");
                show_cause(&producer);
            }
        }
        backoff.wait(stop).map_err(|_| RuntimeError::Stopped)?;
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
                    create_topic(&admin, &producer, &config.kafka, &out.name, input_partitions, &[]);
                    continue;
                }
                Ok(None) => tracing::warn!(topic = %out.name, "output topic does not exist yet; retrying"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach Kafka; retrying");
                    show_cause(&producer);
                }
            }
            backoff.wait(stop).map_err(|_| RuntimeError::Stopped)?;
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
/// librdkafka queues its log lines and client errors for the application to poll; an
/// admin client never polls them, so the reason behind "cannot reach Kafka" (a refused
/// password, an untrusted certificate) would stay unseen. The producer made alongside
/// meets the same brokers with the same settings: polling it passes its lines on.
fn show_cause(producer: &BaseProducer<Logged>) {
    producer.poll(Duration::ZERO);
}

fn admin_clients(kafka: &KafkaConfig) -> Result<(AdminClient<Logged>, BaseProducer<Logged>), RuntimeError> {
    let admin = client_config(kafka, &[])
        .create_with_context(Logged("admin"))
        .map_err(RuntimeError::kafka("create an admin client"))?;
    let producer = producer_config(kafka)
        .create_with_context(Logged("admin"))
        .map_err(RuntimeError::kafka("create a producer"))?;
    Ok((admin, producer))
}

/// Settings of the replay-plan topic. Every assignment reads it whole (up to a fence), and
/// a plan is written per partition at every commit: compaction must keep it near one plan
/// per partition. Kafka never compacts a segment still being written, and its default
/// segment rolls after 7 days, so the topic rolls and becomes compactable every 10
/// minutes: an assignment reads at most about 10 minutes of plans plus one per partition.
pub const PLAN_TOPIC_SETTINGS: [(&str, &str); 4] = [
    ("cleanup.policy", "compact"),
    ("segment.ms", "600000"),
    ("max.compaction.lag.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.1"),
];

/// Makes sure the single-partition, compacted replay-plan topic exists.
pub fn ensure_plan_topic(config: &Config, name: &str, stop: &AtomicBool) -> Result<(), RuntimeError> {
    ensure_single(&config.kafka, name, &PLAN_TOPIC_SETTINGS, stop)
}

/// Makes sure a single-partition, compacted topic exists (the writer group's limit).
pub fn ensure_compacted_topic(
    kafka: &KafkaConfig,
    name: &str,
    stop: &AtomicBool,
) -> Result<(), RuntimeError> {
    ensure_single(kafka, name, &[("cleanup.policy", "compact")], stop)
}

/// Makes sure the single-partition plan-history topic exists, deleting plans older than
/// `state.plan_history_retention`.
pub fn ensure_plan_history_topic(config: &Config, name: &str, stop: &AtomicBool) -> Result<(), RuntimeError> {
    let retention = config.state.plan_history_retention.0.as_millis().to_string();
    ensure_single(
        &config.kafka,
        name,
        &[("cleanup.policy", "delete"), ("retention.ms", &retention)],
        stop,
    )
}

fn ensure_single(
    kafka: &KafkaConfig,
    name: &str,
    settings: &[(&str, &str)],
    stop: &AtomicBool,
) -> Result<(), RuntimeError> {
    let (admin, producer) = admin_clients(kafka)?;
    let mut backoff = Backoff::new();
    let mut created = false;
    loop {
        match partition_count(admin.inner(), name) {
            Ok(Some(_)) => return Ok(()),
            Ok(None) if !created => {
                created = true;
                create_topic(&admin, &producer, kafka, name, 1, settings);
                continue;
            }
            Ok(None) => tracing::warn!(topic = name, "topic does not exist yet; retrying"),
            Err(e) => tracing::warn!(error = %e, "cannot reach Kafka; retrying"),
        }
        backoff.wait(stop).map_err(|_| RuntimeError::Stopped)?;
    }
}

fn create_topic(
    admin: &AdminClient<Logged>,
    producer: &BaseProducer<Logged>,
    kafka: &KafkaConfig,
    name: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) {
    let replication = TopicReplication::Fixed(kafka.replication_factor);
    let mut topic = NewTopic::new(name, partitions, replication);
    for (k, v) in settings {
        topic = topic.set(k, v);
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
