//! librdkafka's log lines and client errors into `tracing`, for every client of every app:
//! without this a broker's authentication or certificate error is never seen.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryResult, ProducerContext};

/// Passes one librdkafka log line on at the matching level. `client` says which of the
/// app's clients it came from (consumer, producer, admin, …).
pub fn forward_log(client: &str, level: RDKafkaLogLevel, facility: &str, message: &str) {
    // `[kafka.properties]` reach every client, so each producer warns about consumer-only
    // properties (and the other way round): worth a line, not an operator's attention.
    let level = match (level, facility) {
        (RDKafkaLogLevel::Warning, "CONFWARN") => RDKafkaLogLevel::Info,
        _ => level,
    };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", client, facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", client, facility, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", client, facility, "{message}"),
    }
}

/// A client-level error (all brokers down, authentication failed, …). librdkafka keeps
/// retrying these by itself; they are reported so an operator sees why nothing flows.
pub fn report_error(client: &str, error: &KafkaError, reason: &str) {
    tracing::warn!(client, error = %error, reason, "kafka client error");
}

/// The context of clients that need no callbacks of their own (admin clients, probes,
/// readers of the plan and rollups topics, offline replay): logs only.
#[derive(Debug, Clone, Copy)]
pub struct Logged(pub &'static str);

impl ClientContext for Logged {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(self.0, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        report_error(self.0, &error, reason);
    }
}

impl ConsumerContext for Logged {}

impl ProducerContext for Logged {
    type DeliveryOpaque = ();

    fn delivery(&self, _result: &DeliveryResult<'_>, _opaque: Self::DeliveryOpaque) {}
}
