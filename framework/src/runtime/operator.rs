//! Operator replays against the broker: a [`ReplayRequest`] turned into an offset per
//! partition (with errors an operator can act on), the end offsets that progress is shown
//! against, and the offline replay of a stopped app.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::client::client_config;
use crate::kafka::logging::Logged;
use crate::replay::request::RequestError;
use crate::replay::{self, Plan, ReplayFrom, ReplayRequest};

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
    #[error(
        "partition {partition}: offset {offset} is before every replay plan kept ({}); windows open there cannot be known, so a replay from it would re-emit partial windows. Replay from that offset or later, or from 0",
        reach.map_or("none is committed yet".to_owned(), |r| format!("the earliest is at offset {r}"))
    )]
    BeyondPlans {
        partition: i32,
        offset: i64,
        reach: Option<i64>,
    },
    #[error("cannot read the replay plans: {0}")]
    Plans(#[from] super::plans::PlanStoreError),
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
                | ReplayError::Plans(_)
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
/// `processed` is how far the app is known to have read each partition (its commits):
/// those offsets exist whatever the broker reports as its end (tansu 0.6 reports a wrong
/// high watermark).
pub fn resolve<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    request: &ReplayRequest,
    owned: Option<&[i32]>,
    processed: &dyn Fn(i32) -> Option<i64>,
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
        let high = high.max(processed(p).unwrap_or(high));
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

/// The plan each partition's replay commits (see [`replay::replay_from`]), from the plans
/// `known` holds for it; refused for any partition no known plan reaches back for.
pub fn plan_replays(
    offsets: &[(i32, i64)],
    known: impl Fn(i32) -> Vec<Plan>,
) -> Result<Vec<(i32, Plan)>, ReplayError> {
    offsets
        .iter()
        .map(|&(partition, offset)| {
            let plans = known(partition);
            let reach = plans.iter().filter(|p| !p.requested).map(|p| p.next_offset).min();
            replay::replay_from(offset, plans)
                .map(|plan| (partition, plan))
                .ok_or(ReplayError::BeyondPlans {
                    partition,
                    offset,
                    reach,
                })
        })
        .collect()
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
    let committed = committed(config, &consumer, topic)?;
    let offsets = resolve(&consumer, topic, request, None, &|p| {
        committed.get(&p).and_then(|c| c.0)
    })?;
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
    let known = known_plans(config, &consumer, topic, &committed)?;
    let plans = plan_replays(&offsets, |p| known.get(&p).cloned().unwrap_or_default())?;
    let mut tpl = TopicPartitionList::new();
    for (p, plan) in &plans {
        tpl.add_partition_offset(topic, *p, Offset::Offset(plan.next_offset))
            .map_err(kafka("list the replay offsets"))?;
        if let Some(mut el) = tpl.find_partition(topic, *p) {
            el.set_metadata(plan.encode());
        }
    }
    write_plan_topic(config, &c, topic, &plans)?;
    consumer.commit(&tpl, CommitMode::Sync).map_err(kafka(format!(
        "commit the replay offsets for group {}",
        config.kafka.group
    )))?;
    consumer.unsubscribe();
    Ok(offsets)
}

/// Per partition: the group's committed offset and the plan in its metadata.
type Committed = HashMap<i32, (Option<i64>, Option<Plan>)>;

/// The group's committed offset and the plan in its metadata, per partition of `topic`,
/// read once: the offsets bound the replay point (whatever end the broker reports), the
/// plans are among those it rebuilds from.
fn committed(
    config: &Config,
    consumer: &BaseConsumer<Logged>,
    topic: &str,
) -> Result<Committed, ReplayError> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka(format!("read metadata of {topic}")))?;
    let mut query = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            query.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(query, timeout).map_err(kafka(format!(
        "read the committed offsets of group {}",
        config.kafka.group
    )))?;
    Ok(committed
        .elements()
        .iter()
        .map(|el| {
            let offset = match el.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            };
            (el.partition(), (offset, Plan::decode(el.metadata())))
        })
        .collect())
}

/// The plans known for `topic`'s partitions: those committed (`committed`), and those in
/// the plan history and, where the app keeps them there too, the plan topic.
fn known_plans(
    config: &Config,
    consumer: &BaseConsumer<Logged>,
    topic: &str,
    committed: &Committed,
) -> Result<HashMap<i32, Vec<Plan>>, ReplayError> {
    let mut known: HashMap<i32, Vec<Plan>> = HashMap::new();
    for (&p, (_, plan)) in committed {
        if let Some(plan) = plan {
            known.entry(p).or_default().push(*plan);
        }
    }
    if topic_exists(consumer, &config.plan_history_topic()) {
        let history = super::history::PlanHistory::new(config, config.plan_history_topic())?;
        for (p, plans) in history.read(topic, Duration::from_secs(30))? {
            known.entry(p).or_default().extend(plans);
        }
    }
    if topic_exists(consumer, &config.plan_topic()) {
        let store = super::plans::PlanTopic::new(config, config.plan_topic())?;
        for ((t, p), plan) in store.read_all(Duration::from_secs(30))? {
            if t == topic
                && let Ok(plan) = plan
            {
                known.entry(p).or_default().push(plan);
            }
        }
    }
    Ok(known)
}

fn topic_exists(consumer: &BaseConsumer<Logged>, topic: &str) -> bool {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && !t.partitions().is_empty() && t.error().is_none())
        })
        .unwrap_or(false)
}

/// Where plans are kept in a topic, the replay's plans must be the newest there too.
fn write_plan_topic(
    config: &Config,
    client: &ClientConfig,
    topic: &str,
    plans: &[(i32, Plan)],
) -> Result<(), ReplayError> {
    let plan_topic = config.plan_topic();
    let consumer: BaseConsumer<Logged> = client
        .create_with_context(Logged("replay"))
        .map_err(kafka("create a consumer"))?;
    if !topic_exists(&consumer, &plan_topic) {
        return Ok(());
    }
    let producer: BaseProducer<Logged> =
        client_config(&config.kafka, &[("allow.auto.create.topics", "false")])
            .create_with_context(Logged("replay"))
            .map_err(kafka("create a producer"))?;
    for (p, plan) in plans {
        let key = format!("{topic}/{p}");
        let value = plan.encode();
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
