//! The output producer's context: delivery reports advance the partition ledgers.

use std::sync::Arc;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use crate::kafka::logging;
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
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        logging::forward_log("producer", level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        logging::report_error("producer", &error, reason);
    }
}

impl ProducerContext for OutputContext {
    type DeliveryOpaque = Box<DeliveryTag>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Self::DeliveryOpaque) {
        match result {
            Ok(msg) => {
                self.metrics.outputs_acked.inc_by(1);
                if let Some(trigger) = tag.rollup_trigger {
                    tag.ledger.rollup_delivered(trigger, msg.offset());
                }
                tag.ledger.ack(tag.seq, Ok(()));
            }
            Err((e, msg)) => {
                self.metrics.output_errors.inc_by(1);
                tracing::error!(topic = msg.topic(), partition = msg.partition(), error = %e, "output not delivered; commits stop for its source partition");
                tag.ledger.ack(tag.seq, Err(e.to_string()));
            }
        }
    }
}
