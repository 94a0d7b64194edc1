//! The consumer's context: rebalance callbacks (assign and revoke through the
//! coordinator), librdkafka's log lines and its statistics.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use super::coordinator::Coordinator;
use crate::kafka::{logging, stats};

/// The consumer's context: rebalance callbacks and commit results.
pub(super) struct ConsumerCtx {
    pub(super) coordinator: Arc<Coordinator>,
}

impl ClientContext for ConsumerCtx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        logging::forward_log("consumer", level, fac, log_message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.coordinator.metrics.consumer_errors.inc_by(1);
        logging::report_error("consumer", &error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(s) = stats::parse(statistics) {
            self.coordinator.metrics.apply_client_stats(&s);
        }
    }
}

impl ConsumerContext for ConsumerCtx {
    /// Replaces rdkafka's default so the start offset of each assigned partition is the
    /// one its replay plan (or checkpoint) calls for, set before fetching begins.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.coordinator.assign(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.coordinator.revoke(consumer, tpl);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "applying the rebalance failed");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Error(e) = rebalance {
            tracing::warn!(error = %e, "rebalance error");
        }
    }
}
