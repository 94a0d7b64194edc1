//! The output producer's context: delivery reports advance the partition ledgers.

use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::metrics::Metrics;
use crate::runtime::ledger::Ledger;

/// Identifies one output for its delivery report.
#[derive(Debug)]
pub struct DeliveryTag {
    pub ledger: Arc<Ledger>,
    pub seq: u64,
    /// For a rollup: the source offset whose processing emitted it, so the ledger learns
    /// where in the rollups topic that offset's rows are.
    pub rollup_trigger: Option<i64>,
}

pub struct OutputContext {
    pub metrics: Arc<Metrics>,
}

impl ClientContext for OutputContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "producer error");
    }
}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = Box<DeliveryTag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Self::DeliveryOpaque) {
        match result {
            Ok(msg) => {
                self.metrics.outputs_acked.add(1);
                if let Some(trigger) = tag.rollup_trigger {
                    tag.ledger.rollup_delivered(trigger, msg.offset());
                }
                tag.ledger.ack(tag.seq, Ok(()));
            }
            Err((e, msg)) => {
                self.metrics.output_errors.add(1);
                tracing::error!(topic = msg.topic(), partition = msg.partition(), error = %e, "output not delivered; commits stop for its source partition");
                tag.ledger.ack(tag.seq, Err(e.to_string()));
            }
        }
    }
}

/// Headers that say where a forwarded (dead-lettered or late) record came from, so its
/// value can stay byte-for-byte: `tributary.group`, `tributary.source.topic`,
/// `tributary.source.partition`, `tributary.source.offset`.
pub fn provenance(topic: &str, group: &str, partition: i32, offset: i64) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::Header;
    rdkafka::message::OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "tributary.group",
            value: Some(group.as_bytes()),
        })
        .insert(Header {
            key: "tributary.source.topic",
            value: Some(topic.as_bytes()),
        })
        .insert(Header {
            key: "tributary.source.partition",
            value: Some(partition.to_string().as_bytes()),
        })
        .insert(Header {
            key: "tributary.source.offset",
            value: Some(offset.to_string().as_bytes()),
        })
}
