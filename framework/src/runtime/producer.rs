//! The output producer: delivery reports advance the partition ledgers, and a producer
//! that failed fatally is replaced.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::kafka::logging;
use crate::kafka::polled::PolledProducer;
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
                // Once per run of a partition: a broker outage fails every output in flight.
                if tag.ledger.ack(tag.seq, Err(e.to_string())) {
                    tracing::error!(topic = msg.topic(), partition = msg.partition(), error = %e,
                        "output not delivered; commits stop for its source partition until it is rebuilt");
                }
            }
        }
    }
}

type Polled = PolledProducer<OutputContext>;

/// One output with its delivery tag.
pub type OutputRecord<'a> = BaseRecord<'a, [u8], [u8], Box<DeliveryTag>>;

/// The producer every worker sends outputs through. librdkafka refuses every later send
/// of a producer that failed fatally (an idempotent producer whose sequence broke, a
/// fenced one), so such a producer is replaced by a new one rather than stopping the app;
/// see [`OutputProducer::renew_if_fatal`].
pub struct OutputProducer {
    config: ClientConfig,
    metrics: Arc<Metrics>,
    current: RwLock<Polled>,
}

impl OutputProducer {
    pub fn new(config: ClientConfig, metrics: Arc<Metrics>) -> KafkaResult<Self> {
        let producer = Self::create(&config, &metrics)?;
        Ok(Self {
            config,
            metrics,
            current: RwLock::new(producer),
        })
    }

    fn create(config: &ClientConfig, metrics: &Arc<Metrics>) -> KafkaResult<Polled> {
        PolledProducer::create(
            config,
            OutputContext {
                metrics: metrics.clone(),
            },
        )
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Polled> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// rdkafka's own `send`: a refused record comes back to be sent again.
    #[allow(clippy::result_large_err)]
    pub fn send<'a>(&self, record: OutputRecord<'a>) -> Result<(), (KafkaError, OutputRecord<'a>)> {
        self.read().send(record)
    }

    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.read().flush(timeout)
    }

    /// Replaces the producer if it failed fatally and returns its error. The old one's
    /// outputs still queued or in flight fail, so their partitions are rebuilt as well.
    pub fn renew_if_fatal(&self) -> Option<String> {
        let (code, reason) = self.read().client().fatal_error()?;
        let fresh = match Self::create(&self.config, &self.metrics) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new producer; retried at the next failure");
                return Some(format!("{code:?}: {reason}"));
            }
        };
        let old = {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *current, fresh)
        };
        // Dropping purges what it still holds, failing those outputs' deliveries.
        drop(old);
        self.metrics.producers_renewed.inc_by(1);
        Some(format!("{code:?}: {reason}"))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::bindings::{self, rd_kafka_resp_err_t as Code};
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::runtime::ledger::Ledger;

    /// Raises a fatal error in a live producer, with librdkafka's own test hook.
    #[allow(unsafe_code)]
    fn make_fatal(p: &OutputProducer) {
        let native = p.read().client().native_ptr();
        // SAFETY: the handle stays alive while `p` holds its producer, and the reason is
        // a NUL-terminated string that outlives the call.
        let code = unsafe {
            bindings::rd_kafka_test_fatal_error(
                native,
                Code::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                c"sequence broken in a test".as_ptr(),
            )
        };
        assert_eq!(code, Code::RD_KAFKA_RESP_ERR_NO_ERROR);
    }

    #[test]
    fn a_producer_that_failed_fatally_is_replaced_and_the_new_one_delivers() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("out", 1, 1).expect("topic");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("enable.idempotence", "true");
        let metrics = Arc::new(Metrics::new());
        let producer = OutputProducer::new(config, metrics.clone()).expect("producer");
        assert_eq!(producer.renew_if_fatal(), None, "a healthy producer is kept");

        make_fatal(&producer);
        let ledger = Arc::new(Ledger::new());
        let tag = |seq| {
            Box::new(DeliveryTag {
                ledger: ledger.clone(),
                seq,
                rollup_trigger: None,
            })
        };
        // A fatally failed producer refuses the send, or fails its delivery.
        let refused = producer.send(OutputRecord::with_opaque_to("out", tag(0)).payload(b"x"));
        let _ = producer.flush(Duration::from_secs(5));
        assert!(refused.is_err() || ledger.failure().is_some());

        let error = producer.renew_if_fatal().expect("the fatal producer is replaced");
        assert!(error.contains("sequence broken in a test"), "{error}");
        assert_eq!(metrics.producers_renewed.get(), 1);
        assert_eq!(producer.renew_if_fatal(), None, "the new producer is healthy");

        let acked = metrics.outputs_acked.get();
        let fresh = Arc::new(Ledger::new());
        let tag = Box::new(DeliveryTag {
            ledger: fresh.clone(),
            seq: 0,
            rollup_trigger: None,
        });
        assert!(
            producer
                .send(OutputRecord::with_opaque_to("out", tag).payload(b"y"))
                .is_ok()
        );
        producer.flush(Duration::from_secs(10)).expect("flush");
        assert_eq!(
            metrics.outputs_acked.get(),
            acked + 1,
            "the new producer delivers"
        );
        assert_eq!(fresh.failure(), None);
    }
}
