//! Operator replays against the broker: a [`ReplayRequest`] turned into an offset per
//! partition (with errors an operator can act on), the end offsets that progress is shown
//! against, and the offline replay of a stopped app.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::client::client_config;
use crate::kafka::logging::Logged;
use crate::replay::{Plan, ReplayFrom, ReplayRequest};

/// Checks the partitions and turns the request into an offset per partition, with errors
/// an operator can act on. `owned` limits an online replay to this instance's partitions.
pub fn resolve<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    request: &ReplayRequest,
    owned: Option<&[i32]>,
) -> Result<Vec<(i32, i64)>, String> {
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("cannot read metadata of {topic}: {e}"))?;
    let total = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    if total == 0 {
        return Err(format!("topic {topic} does not exist"));
    }
    let partitions = match (&request.partitions, owned) {
        (Some(p), _) => p.clone(),
        (None, Some(owned)) => owned.to_vec(),
        (None, None) => (0..total).collect(),
    };
    if partitions.is_empty() {
        return Err("no partitions to replay (this instance owns none)".into());
    }
    let mut out = Vec::new();
    for &p in &partitions {
        if p >= total {
            return Err(format!(
                "partition {p} does not exist: {topic} has {total} partitions (0..={})",
                total - 1
            ));
        }
        if let Some(owned) = owned
            && !owned.contains(&p)
        {
            return Err(format!(
                "partition {p} is not assigned to this instance (it owns {owned:?}); ask its owner, or stop the group and replay offline"
            ));
        }
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(|e| format!("cannot read the offsets of {topic}/{p}: {e}"))?;
        let offset = match request.from {
            ReplayFrom::Offset(o) => {
                if o < low || o > high {
                    return Err(format!(
                        "offset {o} is not in {topic}/{p}, which holds offsets {low}..{high}"
                    ));
                }
                o
            }
            ReplayFrom::Time(ms) => {
                let mut q = TopicPartitionList::new();
                q.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(|e| e.to_string())?;
                let r = consumer
                    .offsets_for_times(q, timeout)
                    .map_err(|e| format!("cannot look up {topic}/{p} by time: {e}"))?;
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
pub fn offline(config: &Config, request: &ReplayRequest) -> Result<Vec<(i32, i64)>, String> {
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
        .map_err(|e| e.to_string())?;
    let offsets = resolve(&consumer, topic, request, None)?;
    consumer.subscribe(&[topic]).map_err(|e| e.to_string())?;
    // A member that just left or was killed holds its partitions until the broker expires
    // it (its session timeout), so wait a while before calling the app still running.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let _ = consumer.poll(Duration::from_millis(200));
        let held = consumer.assignment().map_err(|e| e.to_string())?;
        if offsets
            .iter()
            .all(|&(p, _)| held.find_partition(topic, p).is_some())
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "group {} did not hand this tool partitions {:?} within 90 s: is the app still running? Then replay through its admin endpoint",
                config.kafka.group,
                offsets.iter().map(|o| o.0).collect::<Vec<_>>()
            ));
        }
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in &offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .map_err(|e| e.to_string())?;
        if let Some(mut el) = tpl.find_partition(topic, p) {
            el.set_metadata(Plan::requested(o).encode());
        }
    }
    write_plan_topic(config, &c, topic, &offsets)?;
    consumer.commit(&tpl, CommitMode::Sync).map_err(|e| {
        format!(
            "cannot commit the replay offsets for group {}: {e}",
            config.kafka.group
        )
    })?;
    consumer.unsubscribe();
    Ok(offsets)
}

/// Where plans are kept in a topic, the requested plans must be the newest there too.
fn write_plan_topic(
    config: &Config,
    client: &ClientConfig,
    topic: &str,
    offsets: &[(i32, i64)],
) -> Result<(), String> {
    let plan_topic = config.plan_topic();
    let consumer: BaseConsumer<Logged> = client
        .create_with_context(Logged("replay"))
        .map_err(|e| e.to_string())?;
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
            .map_err(|e| e.to_string())?;
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
            .map_err(|(e, _)| format!("cannot write the plan topic {plan_topic}: {e}"))?;
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("cannot write the plan topic {plan_topic}: {e}"))
}
