//! The writer's counters and gauges, on the framework's metrics library (prometheus-client),
//! exported at /metrics. The limiter's figures are read at each scrape.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tributary::metrics::{Counter, Gauge, Registry, Unit, register_build_info, render};

use crate::limiter::Limiter;

#[derive(Debug)]
pub struct WriterMetrics {
    pub records_consumed: Counter,
    pub rows_written: Counter,
    pub batches: Counter,
    pub single_statements: Counter,
    pub retries: Counter,
    pub batches_split: Counter,
    pub regrouped: Counter,
    pub overload_signals: Counter,
    pub dead_lettered: Counter,
    pub dead_letter_errors: Counter,
    pub rows_cancelled: Counter,
    pub commits: Counter,
    pub commit_errors: Counter,
    pub records_not_retained: Counter,
    pub pending_rows: Gauge,
    pub paused_partitions: Gauge,
    /// Rows handed to write tasks and not yet settled.
    pub rows_in_flight: Gauge,
    /// Seconds each write request (batch or single statement) took, answered or failed.
    pub write_latency: Histogram,
    /// Rows in each write request the cluster acknowledged.
    pub batch_rows: Histogram,
    /// Records between the consumer's position and the high watermark, per partition
    /// owned, once librdkafka's statistics know it.
    pub consumer_lag: Family<Vec<(String, String)>, Gauge>,
    registry: Registry,
}

/// The labels of a partition's series.
pub fn partition_labels(topic: &str, partition: i32) -> Vec<(String, String)> {
    vec![
        ("topic".to_owned(), topic.to_owned()),
        ("partition".to_owned(), partition.to_string()),
    ]
}

impl Default for WriterMetrics {
    fn default() -> Self {
        Self {
            records_consumed: Counter::default(),
            rows_written: Counter::default(),
            batches: Counter::default(),
            single_statements: Counter::default(),
            retries: Counter::default(),
            batches_split: Counter::default(),
            regrouped: Counter::default(),
            overload_signals: Counter::default(),
            dead_lettered: Counter::default(),
            dead_letter_errors: Counter::default(),
            rows_cancelled: Counter::default(),
            commits: Counter::default(),
            commit_errors: Counter::default(),
            records_not_retained: Counter::default(),
            pending_rows: Gauge::default(),
            paused_partitions: Gauge::default(),
            rows_in_flight: Gauge::default(),
            // 0.25 ms to about 8 s.
            write_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 16)),
            // 1 to 2,048 rows.
            batch_rows: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            consumer_lag: Family::default(),
            registry: Registry::default(),
        }
    }
}

impl WriterMetrics {
    pub fn new(limiter: Arc<Limiter>) -> Self {
        // Counters and gauges start at zero; each is registered once, by name, below.
        let mut m = Self::default();
        let counters = [
            ("records_consumed", "Records read from Kafka", &m.records_consumed),
            ("rows_written", "Rows the cluster acknowledged", &m.rows_written),
            ("batches", "UNLOGGED batches written", &m.batches),
            (
                "single_statements",
                "Rows written as a plain statement",
                &m.single_statements,
            ),
            ("retries", "Retried writes", &m.retries),
            (
                "batches_split",
                "Batches the cluster rejected, split to find the rows it refuses",
                &m.batches_split,
            ),
            (
                "regrouped",
                "Groups split again because the ring changed while they waited",
                &m.regrouped,
            ),
            (
                "overload_signals",
                "Overloaded/timeout answers",
                &m.overload_signals,
            ),
            (
                "dead_lettered",
                "Records stored in the dead-letter topic",
                &m.dead_lettered,
            ),
            (
                "dead_letter_errors",
                "Failed attempts to store a dead letter (retried)",
                &m.dead_letter_errors,
            ),
            (
                "records_not_retained",
                "Records gone from the broker (retention) before they were written",
                &m.records_not_retained,
            ),
            (
                "rows_cancelled",
                "Rows not written because their partition was revoked first (the next owner writes them)",
                &m.rows_cancelled,
            ),
            (
                "commits",
                "Partition offsets whose commit the broker confirmed",
                &m.commits,
            ),
            (
                "commit_errors",
                "Partition offsets whose commit failed (sent again)",
                &m.commit_errors,
            ),
        ];
        for (name, help, c) in counters {
            m.registry
                .register(format!("tributary_writer_{name}"), help, c.clone());
        }
        let gauges = [
            (
                "pending_rows",
                "Rows read and not yet acknowledged",
                &m.pending_rows,
            ),
            (
                "paused_partitions",
                "Partitions paused for backpressure",
                &m.paused_partitions,
            ),
            (
                "rows_in_flight",
                "Rows in write tasks, not yet settled",
                &m.rows_in_flight,
            ),
        ];
        for (name, help, g) in gauges {
            m.registry
                .register(format!("tributary_writer_{name}"), help, g.clone());
        }
        m.registry.register_with_unit(
            "tributary_writer_write_latency",
            "Time each write request (UNLOGGED batch or single statement) took until the cluster answered, failures included",
            Unit::Seconds,
            m.write_latency.clone(),
        );
        m.registry.register(
            "tributary_writer_batch_rows",
            "Rows in each write request the cluster acknowledged",
            m.batch_rows.clone(),
        );
        m.registry.register(
            "tributary_writer_partition_consumer_lag",
            "Records between the consumer's position and the high watermark, per partition owned, once known (wrong where the broker reports a wrong high watermark, e.g. tansu 0.6)",
            m.consumer_lag.clone(),
        );
        m.registry.register_collector(Box::new(LimiterFigures(limiter)));
        register_build_info(&mut m.registry);
        m
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The limiter's settings and waiting time, read at each scrape.
#[derive(Debug)]
struct LimiterFigures(Arc<Limiter>);

impl Collector for LimiterFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let limiter = &self.0;
        let limit = limiter.current();
        let gauges = [
            (
                "tributary_writer_rate_limit_rows_per_sec",
                "Configured rate limit (0 = unlimited).",
                limit.rows_per_sec as f64,
            ),
            (
                "tributary_writer_rate_limit_burst",
                "Configured burst.",
                limit.burst as f64,
            ),
            (
                "tributary_writer_rate_limit_effective_rows_per_sec",
                "Rate in force (adaptive mode may lower it).",
                limiter.effective() as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let gauge = ConstGauge::new(v);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let waited = ConstCounter::new(limiter.waited().as_secs_f64());
        waited.encode(encoder.encode_descriptor(
            "tributary_writer_rate_limit_wait",
            "Time writes waited for the rate limiter.",
            Some(&Unit::Seconds),
            waited.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Adaptive, RateLimit};

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_are_counters_gauges_are_gauges_and_units_are_in_the_names() {
        let limit = RateLimit {
            rows_per_sec: 500,
            burst: 64,
        };
        let limiter = Arc::new(Limiter::new(limit, Adaptive::default()));
        let m = WriterMetrics::new(limiter);
        m.rows_written.inc_by(7);
        m.pending_rows.set(3);
        m.write_latency.observe(0.003);
        m.batch_rows.observe(40.0);
        m.batch_rows.observe(1.0);
        m.consumer_lag
            .get_or_create(&partition_labels("metrics", 2))
            .set(17);
        let text = m.render();
        assert!(
            text.contains("tributary_writer_partition_consumer_lag{topic=\"metrics\",partition=\"2\"} 17\n"),
            "{text}"
        );
        assert_eq!(
            value(&text, "tributary_writer_write_latency_seconds_count"),
            Some(1.0)
        );
        assert!(
            text.contains("tributary_writer_write_latency_seconds_bucket{le=\"0.004\"} 1\n"),
            "{text}"
        );
        assert_eq!(value(&text, "tributary_writer_batch_rows_sum"), Some(41.0));
        assert!(
            text.contains("tributary_writer_batch_rows_bucket{le=\"64\"} 2\n"),
            "{text}"
        );
        assert_eq!(
            value(&text, "tributary_writer_rows_written_total"),
            Some(7.0),
            "{text}"
        );
        assert_eq!(value(&text, "tributary_writer_pending_rows"), Some(3.0));
        assert_eq!(
            value(&text, "tributary_writer_rate_limit_rows_per_sec"),
            Some(500.0)
        );
        assert_eq!(
            value(&text, "tributary_writer_rate_limit_wait_seconds_total"),
            Some(0.0)
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let (name, kind) = (line.split(' ').nth(2), line.split(' ').nth(3));
            let is_total = name.is_some_and(|n| n.ends_with("_total"));
            assert_eq!(is_total, kind == Some("counter"), "{line}");
        }
    }
}
