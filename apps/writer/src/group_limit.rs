//! The writer group's rate limit in a compacted topic, `<group>.limits`. A change made at
//! one member (`ctl rate-limit`, SIGHUP) is published there, and every member reads the
//! topic from its start and then follows it, so the change reaches all of them within
//! about a second and outlives restarts. Kafka is the channel because every member
//! already reaches it with the group's credentials: nothing else to open, secure or
//! discover. Until the topic holds a limit, the configured one is the group's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tributary::kafka::KafkaConfig;
use tributary::kafka::client::{client_config, producer_config};
use tributary::kafka::logging::Logged;

use crate::budget::Budget;
use crate::limiter::RateLimit;

const KEY: &str = "limit";

pub fn topic(kafka: &KafkaConfig) -> String {
    format!("{}.limits", kafka.group)
}

/// Publishes the group's limit.
pub struct GroupLimit {
    topic: String,
    producer: BaseProducer<Logged>,
}

impl std::fmt::Debug for GroupLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLimit").field("topic", &self.topic).finish()
    }
}

impl GroupLimit {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            topic: topic(kafka),
            producer: producer_config(kafka).create_with_context(Logged("limits"))?,
        })
    }

    /// Sends the limit and waits until the broker has it.
    pub fn publish(&self, limit: RateLimit) -> Result<(), String> {
        let value = serde_json::to_string(&limit).map_err(|e| e.to_string())?;
        self.producer
            .send(
                BaseRecord::<str, str>::to(&self.topic)
                    .key(KEY)
                    .payload(&value)
                    .partition(0),
            )
            .map_err(|(e, _)| format!("cannot queue the group's limit: {e}"))?;
        self.producer
            .flush(Duration::from_secs(10))
            .map_err(|e| format!("the group's limit did not reach {} within 10 s: {e}", self.topic))
    }
}

/// Sets its flag when dropped: stops a helper thread however `run` ends.
pub struct SetOnDrop(pub Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Makes sure the group's limit topic exists (retried with backoff while Kafka cannot be
/// reached) and follows it until `stop` is set. `Err(None)`: `shutdown` came first.
pub async fn ensure_and_follow(
    kafka: &KafkaConfig,
    budget: Arc<Budget>,
    stop: Arc<AtomicBool>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), Option<String>> {
    let kafka = kafka.clone();
    let name = topic(&kafka);
    let ensure = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            tributary::runtime::topics::ensure_compacted_topic(&kafka, &name, &stop).map(|()| kafka)
        })
    };
    tokio::pin!(ensure);
    let kafka = tokio::select! {
        ensured = &mut ensure => match ensured {
            Ok(Ok(kafka)) => kafka,
            Ok(Err(e)) => return Err(Some(e.to_string())),
            Err(e) => return Err(Some(e.to_string())),
        },
        _ = shutdown.as_mut() => {
            stop.store(true, Ordering::Relaxed);
            return Err(None);
        }
    };
    follow(&kafka, budget, stop).map_err(|e| Some(e.to_string()))?;
    Ok(())
}

/// Follows the topic on a thread of its own until `stop`, handing each limit read to
/// `budget`.
pub fn follow(
    kafka: &KafkaConfig,
    budget: Arc<Budget>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let topic = topic(kafka);
    let group = format!("{}.limits-reader", kafka.group);
    let reader = client_config(
        kafka,
        &[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
            ("fetch.wait.max.ms", "200"),
        ],
    );
    std::thread::Builder::new()
        .name("group-limit".into())
        .spawn(move || {
            let consumer: BaseConsumer<Logged> = match reader.create_with_context(Logged("limits")) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot follow the group's rate limit; the configured limit stays");
                    return;
                }
            };
            let mut tpl = TopicPartitionList::new();
            if let Err(e) = tpl
                .add_partition_offset(&topic, 0, Offset::Beginning)
                .and_then(|()| consumer.assign(&tpl))
            {
                tracing::error!(error = %e, "cannot follow the group's rate limit; the configured limit stays");
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(msg)) => match msg.payload().map(serde_json::from_slice::<RateLimit>) {
                        Some(Ok(limit)) => budget.set_group(limit),
                        other => tracing::warn!(topic, offset = msg.offset(), error = ?other.map(|r| r.err()),
                            "not a rate limit; ignored"),
                    },
                    Some(Err(e)) => tracing::debug!(topic, error = %e, "reading the group's rate limit"),
                    None => {}
                }
            }
        })
}
