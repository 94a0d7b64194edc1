//! Operator replays against the broker: a [`ReplayRequest`] turned into an offset per
//! partition (with errors an operator can act on), the end offsets that progress is shown
//! against, and the offline replay of a stopped app.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::client::client_config;
use crate::kafka::logging::Logged;
use crate::replay::request::RequestError;
use crate::replay::{Plan, ReplayFrom, ReplayRequest};

/// Why a replay cannot start, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("cannot {action}: {source}")]
    Kafka {
        action: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("no partitions to replay (this instance owns none)")]
    NothingOwned,
    #[error("partition {partition} does not exist: {topic} has {total} partitions (0..={})", .total - 1)]
    NoPartition {
        topic: String,
        partition: i32,
        total: i32,
    },
    #[error(
        "partition {partition} is not assigned to this instance (it owns {owned:?}); ask its owner, or stop the group and replay offline"
    )]
    NotOwned { partition: i32, owned: Vec<i32> },
    #[error("offset {offset} is not in {topic}/{partition}, which holds offsets {low}..{high}")]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        offset: i64,
        low: i64,
        high: i64,
    },
    #[error(
        "group {group} did not hand this tool partitions {partitions:?} within 90 s: is the app still running? Then replay through its admin endpoint"
    )]
    GroupBusy { group: String, partitions: Vec<i32> },
    #[error("the runtime is busy or stopping; try again")]
    Busy,
    #[error("the runtime did not answer within 60 s")]
    NoAnswer,
}

impl ReplayError {
    /// Whether the same request may succeed later (the broker or the app was busy).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplayError::Kafka { .. }
                | ReplayError::GroupBusy { .. }
                | ReplayError::Busy
                | ReplayError::NoAnswer
        )
    }
}

/// Wraps a broker error with what was being done.
fn kafka(action: impl Into<String>) -> impl FnOnce(KafkaError) -> ReplayError {
    let action = action.into();
    move |source| ReplayError::Kafka { action, source }
}

/// Checks the partitions and turns the request into an offset per partition, with errors
/// an operator can act on. `owned` limits an online replay to this instance's partitions.
pub fn resolve<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    request: &ReplayRequest,
    owned: Option<&[i32]>,
) -> Result<Vec<(i32, i64)>, ReplayError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka(format!("read metadata of {topic}")))?;
    let total = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    if total == 0 {
        return Err(ReplayError::NoTopic(topic.to_owned()));
    }
    let partitions = match (&request.partitions, owned) {
        (Some(p), _) => p.clone(),
        (None, Some(owned)) => owned.to_vec(),
        (None, None) => (0..total).collect(),
    };
    if partitions.is_empty() {
        return Err(ReplayError::NothingOwned);
    }
    let mut out = Vec::new();
    for &p in &partitions {
        if p >= total {
            return Err(ReplayError::NoPartition {
                topic: topic.to_owned(),
                partition: p,
                total,
            });
        }
        if let Some(owned) = owned
            && !owned.contains(&p)
        {
            return Err(ReplayError::NotOwned {
                partition: p,
                owned: owned.to_vec(),
            });
        }
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka(format!("read the offsets of {topic}/{p}")))?;
        let offset = match request.from {
            ReplayFrom::Offset(o) => {
                if o < low || o > high {
                    return Err(ReplayError::OffsetOutOfRange {
                        topic: topic.to_owned(),
                        partition: p,
                        offset: o,
                        low,
                        high,
                    });
                }
                o
            }
            ReplayFrom::Time(ms) => {
                let mut q = TopicPartitionList::new();
                q.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(kafka(format!("look up {topic}/{p} by time")))?;
                let r = consumer
                    .offsets_for_times(q, timeout)
                    .map_err(kafka(format!("look up {topic}/{p} by time")))?;
                match r.find_partition(topic, p).map(|el| el.offset()) {
                    Some(Offset::Offset(o)) if o >= 0 => o,
                    // No record at or after that time: replay nothing, resume at the end.
                    _ => high,
                }
            }
        };
        out.push((p, offset));
    }
    Ok(out)
}

/// The end offset of each partition of the input topic (for progress); partitions whose
/// offsets cannot be read are left out.
pub fn end_offsets(
    config: &Config,
    partitions: impl Iterator<Item = i32>,
) -> std::collections::BTreeMap<i32, i64> {
    let Ok(consumer) =
        client_config(&config.kafka, &[]).create_with_context::<_, BaseConsumer<Logged>>(Logged("replay"))
    else {
        return Default::default();
    };
    partitions
        .filter_map(|p| {
            consumer
                .fetch_watermarks(&config.topics.input, p, Duration::from_secs(10))
                .ok()
                .map(|(_, high)| (p, high))
        })
        .collect()
}

/// An offline replay: the app must be stopped. Joins the app's group as its only member
/// (which also proves nobody else holds the partitions), commits a requested plan for
/// every chosen partition (and writes it to the plan topic, if there is one), and leaves.
pub fn offline(config: &Config, request: &ReplayRequest) -> Result<Vec<(i32, i64)>, ReplayError> {
    let topic = &config.topics.input;
    let c = client_config(
        &config.kafka,
        &[
            ("group.id", &config.kafka.group),
            ("enable.auto.commit", "false"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ],
    );
    let consumer: BaseConsumer<Logged> = c
        .create_with_context(Logged("replay"))
        .map_err(kafka("create a consumer"))?;
    let offsets = resolve(&consumer, topic, request, None)?;
    consumer
        .subscribe(&[topic])
        .map_err(kafka(format!("subscribe to {topic}")))?;
    // A member that just left or was killed holds its partitions until the broker expires
    // it (its session timeout), so wait a while before calling the app still running.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let _ = consumer.poll(Duration::from_millis(200));
        let held = consumer.assignment().map_err(kafka("read the assignment"))?;
        if offsets
            .iter()
            .all(|&(p, _)| held.find_partition(topic, p).is_some())
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(ReplayError::GroupBusy {
                group: config.kafka.group.clone(),
                partitions: offsets.iter().map(|o| o.0).collect(),
            });
        }
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in &offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .map_err(kafka("list the replay offsets"))?;
        if let Some(mut el) = tpl.find_partition(topic, p) {
            el.set_metadata(Plan::requested(o).encode());
        }
    }
    write_plan_topic(config, &c, topic, &offsets)?;
    consumer.commit(&tpl, CommitMode::Sync).map_err(kafka(format!(
        "commit the replay offsets for group {}",
        config.kafka.group
    )))?;
    consumer.unsubscribe();
    Ok(offsets)
}

/// Where plans are kept in a topic, the requested plans must be the newest there too.
fn write_plan_topic(
    config: &Config,
    client: &ClientConfig,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), ReplayError> {
    let plan_topic = config.plan_topic();
    let consumer: BaseConsumer<Logged> = client
        .create_with_context(Logged("replay"))
        .map_err(kafka("create a consumer"))?;
    let exists = consumer
        .fetch_metadata(Some(&plan_topic), Duration::from_secs(10))
        .map(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == plan_topic && !t.partitions().is_empty() && t.error().is_none())
        })
        .unwrap_or(false);
    if !exists {
        return Ok(());
    }
    let producer: BaseProducer<Logged> =
        client_config(&config.kafka, &[("allow.auto.create.topics", "false")])
            .create_with_context(Logged("replay"))
            .map_err(kafka("create a producer"))?;
    for &(p, o) in offsets {
        let key = format!("{topic}/{p}");
        let value = Plan::requested(o).encode();
        producer
            .send(
                BaseRecord::<str, str>::to(&plan_topic)
                    .partition(0)
                    .key(&key)
                    .payload(&value),
            )
            .map_err(|(e, _)| kafka(format!("write the plan topic {plan_topic}"))(e))?;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(kafka(format!("write the plan topic {plan_topic}")))
}
