//! Where replay plans and the rows of coarse windows live on the broker. Plans travel in
//! the offset commit's metadata when the broker keeps it (Apache Kafka, librdkafka's mock
//! cluster). tansu 0.6 accepts metadata and returns it empty, so at start-up the runtime
//! [`probe`]s the broker, and where metadata is lost it also writes plans to a compacted
//! topic ([`PlanTopic`]). Coarse windows are rebuilt from the rollups topic
//! ([`read_rollups`]).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::client::client_config;
use crate::kafka::fetch_start::{Arrival, FetchStart};
use crate::kafka::logging::Logged;
use crate::kafka::polled::{Confirmation, Confirming, PolledProducer};
use crate::replay::Plan;

/// Why plans or rollup rows could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum PlanStoreError {
    #[error("cannot {action}: {source}")]
    Kafka {
        action: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot start a runtime for the plan topic: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("{what} not read up to offset {end} within {timeout:?}")]
    Timeout {
        what: String,
        end: i64,
        timeout: Duration,
    },
    #[error(
        "the replay plan of {key} is in format {version}, newer than this build reads ({}): it was written by a newer Tributary. Run that version (or newer), or replay the partition with this one",
        crate::replay::PLAN_FORMAT
    )]
    NewerFormat { key: String, version: u32 },
    #[error("{topic}/{partition} offset {offset} is not a rollup: {source}")]
    NotARollup {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: crate::codec::DecodeError,
    },
    #[error("{topic}/{partition} holds nothing from offset {from} to {first} any more (retention)")]
    NotRetained {
        topic: String,
        partition: i32,
        from: i64,
        first: i64,
    },
}

/// A plan read back, or the format number of one a newer build wrote.
pub type ReadPlan = Result<Plan, u32>;

/// Wraps a broker error with what was being done.
fn kafka(action: impl Into<String>) -> impl FnOnce(KafkaError) -> PlanStoreError {
    let action = action.into();
    move |source| PlanStoreError::Kafka { action, source }
}

/// Whether the broker returns an offset commit's metadata. Commits a marker for
/// partition 0 of `topic` under a probe group of our own (never the app's group) and
/// reads it back.
pub fn probe(config: &Config, topic: &str) -> Result<bool, PlanStoreError> {
    let group = format!("{}.metadata-probe", config.kafka.group);
    let consumer: BaseConsumer<Logged> = client_config(
        &config.kafka,
        &[("group.id", &group), ("enable.auto.commit", "false")],
    )
    .create_with_context(Logged("replay"))
    .map_err(kafka("create a client"))?;
    let marker = format!(
        "tributary-probe {}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .map_err(kafka("list the probe offset"))?;
    if let Some(mut el) = tpl.find_partition(topic, 0) {
        el.set_metadata(marker.clone());
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(kafka("commit the metadata probe"))?;
    let mut query = TopicPartitionList::new();
    query.add_partition(topic, 0);
    let back = consumer
        .committed_offsets(query, Duration::from_secs(10))
        .map_err(kafka("read the metadata probe back"))?;
    Ok(back
        .find_partition(topic, 0)
        .is_some_and(|el| el.metadata() == marker))
}

/// Plans in a compacted topic (one partition, key = "topic/partition"), for brokers that
/// drop commit metadata. Read back up to a fence record this process writes first, so
/// the read ends exactly at what was there, whatever the broker says its end offsets are.
pub struct PlanTopic {
    pub(super) topic: String,
    producer: PolledProducer<Confirming>,
    /// Kept from start to stop with the topic's metadata loaded, so a read at assignment
    /// starts fetching at once (a new client waits 500 ms for a leader it does not know
    /// yet, which was most of a clean start's time).
    reader: BaseConsumer<Logged>,
    rt: tokio::runtime::Runtime,
    /// Plan writes not yet confirmed, by key (`None`: it could not even be queued). A
    /// commit waits for its partitions' plans: an offset committed without its plan
    /// would resume with empty state on a broker that drops commit metadata.
    pending: Mutex<Vec<(String, Option<Confirmation>)>>,
}

impl std::fmt::Debug for PlanTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanTopic").field("topic", &self.topic).finish()
    }
}

fn plan_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl PlanTopic {
    pub fn new(config: &Config, topic: String) -> Result<Self, PlanStoreError> {
        // In order without idempotence: one request in flight keeps retries from
        // reordering plans (a duplicate is harmless, the newest per key wins), and no
        // producer id is needed first, which a new idempotent producer waits up to a
        // second for, while the first assignment waits on the fence write.
        let p = client_config(
            &config.kafka,
            &[
                ("enable.idempotence", "false"),
                ("max.in.flight.requests.per.connection", "1"),
                ("acks", "all"),
                ("linger.ms", "5"),
            ],
        );
        let reader_group = format!("{}.plan-reader", config.kafka.group);
        let reader: BaseConsumer<Logged> = reader_config(config, &reader_group)
            .create_with_context(Logged("replay"))
            .map_err(kafka("create a client"))?;
        reader
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(kafka(format!("read the metadata of {topic}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Self {
            topic,
            producer: PolledProducer::create(&p, Confirming(Logged("replay")))
                .map_err(kafka("create a client"))?,
            reader,
            rt,
            pending: Mutex::new(Vec::new()),
        })
    }

    /// Queues a plan (for the history: a valid resume point on its own, outputs before
    /// its offset being acknowledged, so the write need not be awaited).
    pub fn write(&self, topic: &str, partition: i32, plan: &Plan) {
        let _ = self.queue(&plan_key(topic, partition), plan);
    }

    /// Queues the plan of an offset about to be committed; [`PlanTopic::confirm`] waits
    /// for it before the commit.
    pub fn write_for_commit(&self, topic: &str, partition: i32, plan: &Plan) {
        let key = plan_key(topic, partition);
        let delivery = self.queue(&key, plan);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, delivery));
    }

    fn queue(&self, key: &str, plan: &Plan) -> Option<Confirmation> {
        let value = plan.encode();
        let record = BaseRecord::to(&self.topic).partition(0).key(key).payload(&value);
        match self.producer.queue(record) {
            Ok(delivery) => Some(delivery),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "cannot queue replay plan");
                None
            }
        }
    }

    /// Waits (at most `timeout`) for the plan writes queued so far for these partitions;
    /// returns those of them with a write that failed or did not finish.
    pub fn confirm(&self, partitions: &[(&str, i32)], timeout: Duration) -> HashSet<(String, i32)> {
        let keys: HashMap<String, (&str, i32)> = partitions
            .iter()
            .map(|&(t, p)| (plan_key(t, p), (t, p)))
            .collect();
        let mine: Vec<_> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let (mine, rest) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(key, _)| keys.contains_key(key));
            *pending = rest;
            mine
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failed = HashSet::new();
        for (key, delivery) in mine {
            let written = match delivery {
                Some(d) => matches!(
                    self.rt
                        .block_on(async { tokio::time::timeout_at(deadline, d).await }),
                    Ok(Ok(Ok(_)))
                ),
                None => false,
            };
            if !written && let Some(&(t, p)) = keys.get(&key) {
                failed.insert((t.to_owned(), p));
            }
        }
        if !failed.is_empty() {
            tracing::warn!(topic = %self.topic, partitions = ?failed, "replay plans not written; their offsets are committed later with new ones");
        }
        failed
    }

    /// Waits for queued plan writes (shutdown).
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        let _ = self.producer.flush(timeout);
    }

    /// The newest plan of every partition written so far; for a partition whose newest
    /// plan a newer build wrote, the number of its format.
    pub fn read_all(&self, timeout: Duration) -> Result<HashMap<(String, i32), ReadPlan>, PlanStoreError> {
        let mut plans = HashMap::new();
        for (topic, partition, plan) in self.read_log(timeout)? {
            plans.insert((topic, partition), plan);
        }
        Ok(plans)
    }

    /// Every plan in the topic, oldest first, read up to a fence record written first
    /// (`Err` with the format number for a plan a newer build wrote).
    pub fn read_log(&self, timeout: Duration) -> Result<Vec<(String, i32, ReadPlan)>, PlanStoreError> {
        let fence_value = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let fence = BaseRecord::to(&self.topic)
            .partition(0)
            .key("fence")
            .payload(&fence_value);
        let fence_offset = self
            .rt
            .block_on(self.producer.send(fence, timeout))
            .map_err(kafka("write the plan topic's fence"))?
            .1;
        let consumer = &self.reader;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(kafka("list the plan topic"))?;
        consumer.assign(&tpl).map_err(kafka("assign the plan topic"))?;
        // Stop fetching once read, whichever way the read ends.
        let _unassign = Unassign(consumer);
        let deadline = Instant::now() + timeout;
        let mut plans = Vec::new();
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(msg)) => {
                    if msg.offset() >= fence_offset {
                        return Ok(plans);
                    }
                    let key = msg.key().and_then(|k| std::str::from_utf8(k).ok());
                    let value = msg.payload().and_then(|v| std::str::from_utf8(v).ok());
                    let plan = value.and_then(|v| match Plan::newer_format(v) {
                        Some(version) => Some(Err(version)),
                        None => Plan::decode(v).map(Ok),
                    });
                    if let (Some((topic, partition)), Some(plan)) =
                        (key.and_then(|k| k.rsplit_once('/')), plan)
                        && let Ok(partition) = partition.parse()
                    {
                        plans.push((topic.to_owned(), partition, plan));
                    }
                }
                Some(Err(e)) => tracing::warn!(topic = %self.topic, error = %e, "reading replay plans"),
                None => {}
            }
        }
        Err(PlanStoreError::Timeout {
            what: format!("plan topic {}", self.topic),
            end: fence_offset,
            timeout,
        })
    }
}

/// Silence that sends a reader's fetch start further back: its fetches are answered
/// within `fetch.wait.max.ms` (10 ms), so this is many empty answers in a row.
const READER_SILENCE: Duration = Duration::from_millis(300);

/// A consumer that reads a known range once: no commits, and fetches answered at once
/// (the broker's default wait for more data would add up to 500 ms per read).
fn reader_config(config: &Config, group: &str) -> ClientConfig {
    client_config(
        &config.kafka,
        &[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            ("fetch.wait.max.ms", "10"),
        ],
    )
}

/// Unassigns its consumer when dropped.
struct Unassign<'a>(&'a BaseConsumer<Logged>);

impl Drop for Unassign<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.unassign() {
            tracing::debug!(error = %e, "cannot unassign the plan reader");
        }
    }
}

/// Reads back partition `partition` of the rollups topic over `[from, end)`: the rows a
/// [`CoarsePlan`] rebuilds coarse windows from. Stops at `end` (a broker's high
/// watermark cannot be trusted: tansu 0.6 reports a wrong one). A broker that serves
/// nothing for a fetch starting inside a record batch (tansu) is met by seeking further
/// back and skipping what comes before `from`.
pub fn read_rollups(
    config: &Config,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
    timeout: Duration,
) -> Result<Vec<crate::pipeline::ReadRollup>, PlanStoreError> {
    let mut rows = Vec::new();
    if from >= end {
        return Ok(rows);
    }
    let group = format!("{}.rollups-reader", config.kafka.group);
    let mut reader = reader_config(config, &group);
    reader.set("auto.offset.reset", "error");
    let consumer: BaseConsumer<Logged> = reader
        .create_with_context(Logged("replay"))
        .map_err(kafka("create a client"))?;
    consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka(format!("read the metadata of {topic}")))?;
    let seek_to = |offset: i64| -> Result<(), PlanStoreError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(kafka("list the rollups partition"))?;
        consumer
            .assign(&tpl)
            .map_err(kafka(format!("assign {topic}/{partition}")))
    };
    seek_to(from)?;
    let deadline = Instant::now() + timeout;
    // Until reading is known to start at `from`, see FetchStart.
    let mut guard = Some(FetchStart::at(from).silent_after(READER_SILENCE));
    let format = config.topics.output_format;
    let seek_back = |to: i64, why: &str| -> Result<(), PlanStoreError> {
        tracing::warn!(
            topic,
            partition,
            from,
            seek = to,
            why,
            "the broker may not serve fetches that start inside a record batch; seeking back"
        );
        seek_to(to)
    };
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(msg)) => {
                let offset = msg.offset();
                match guard.as_mut().map(|g| g.arrived(offset)) {
                    None => {}
                    Some(Arrival::Resumed) => guard = None,
                    // Rows a coarse window needs are gone: raw records rebuild it instead.
                    Some(Arrival::Gap { missing_from }) => {
                        return Err(PlanStoreError::NotRetained {
                            topic: topic.to_owned(),
                            partition,
                            from: missing_from,
                            first: offset,
                        });
                    }
                    Some(Arrival::Before | Arrival::Skipped(None)) => continue,
                    Some(Arrival::Skipped(Some(to))) => {
                        seek_back(to, "records before it were skipped")?;
                        continue;
                    }
                }
                // A row that cannot be read would leave a coarse window short: give up on
                // the topic and let the caller replay raw records instead.
                let r = crate::codec::decode_rollup(
                    format,
                    crate::kafka::headers::format_of(&msg),
                    msg.payload().unwrap_or_default(),
                )
                .map_err(|source| PlanStoreError::NotARollup {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    source,
                })?;
                rows.push(crate::pipeline::ReadRollup {
                    agg: r.agg(),
                    series: r.series,
                    resolution: r.resolution,
                    window_start: r.window_start,
                    window_end: r.window_end,
                });
                if offset + 1 >= end {
                    return Ok(rows);
                }
            }
            Some(Err(e)) => return Err(kafka(format!("read {topic}/{partition} from {from}"))(e)),
            None => {
                if let Some(to) = guard.as_mut().and_then(FetchStart::silent) {
                    seek_back(to, "nothing was served")?;
                }
            }
        }
    }
    Err(PlanStoreError::Timeout {
        what: format!("{topic}/{partition} from {from}"),
        end,
        timeout,
    })
}

/// Where this process keeps plans.
#[derive(Debug)]
pub enum PlanStore {
    /// In the offset commit's metadata only.
    Metadata,
    /// Also in a plan topic (the broker drops metadata).
    Topic(Box<PlanTopic>),
}

#[cfg(test)]
mod tests {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use super::*;
    use crate::config::AppKind;

    fn plan(next_offset: i64) -> Plan {
        Plan {
            replay_start: 0,
            next_offset,
            watermark: 0,
            requested: false,
            cut: None,
            coarse: None,
            idle: Default::default(),
        }
    }

    #[test]
    fn a_commit_learns_which_of_its_plans_did_not_reach_the_plan_topic() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("plans", 1, 1).expect("topic");
        let mut config = Config::defaults(AppKind::Rollup);
        config.kafka.brokers = cluster.bootstrap_servers();
        let store = PlanTopic::new(&config, "plans".into()).expect("plan topic");
        let timeout = Duration::from_secs(10);

        store.write_for_commit("in", 0, &plan(10));
        assert!(store.confirm(&[("in", 0)], timeout).is_empty(), "written");

        // The broker refuses the next write (an error no retry helps).
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        store.write_for_commit("in", 1, &plan(20));
        let failed = store.confirm(&[("in", 1), ("in", 0)], timeout);
        assert_eq!(failed, HashSet::from([("in".to_owned(), 1)]));

        // The next write goes through, and only partition 1's newest plan is asked about.
        store.write_for_commit("in", 1, &plan(30));
        assert!(store.confirm(&[("in", 1)], timeout).is_empty());
        let plans = store.read_all(timeout).expect("read back");
        let written: Vec<i64> = [0, 1]
            .iter()
            .filter_map(|&p| {
                plans
                    .get(&("in".to_owned(), p))?
                    .as_ref()
                    .ok()
                    .map(|p| p.next_offset)
            })
            .collect();
        assert_eq!(written, [10, 30], "the refused plan never reached the topic");
    }
}
