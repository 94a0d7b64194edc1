//! The rollup and detector apps' metrics, on the one metrics library every app uses
//! (prometheus-client): counters and gauges registered once in a [`Registry`] and rendered
//! in the Prometheus text format by the admin endpoint. Hot paths add per batch, never per
//! record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::{Registry, Unit};

use crate::kafka::readiness::GroupReadiness;

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything in `registry`, in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(4096);
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// Registers `tributary_build_info{version="…"} 1`: which build an instance runs (a
/// dashboard shows a rolling update's progress by it).
pub fn register_build_info(registry: &mut Registry) {
    let labels = [("version", env!("CARGO_PKG_VERSION"))];
    registry.register(
        "tributary_build",
        "The build this instance runs",
        prometheus_client::metrics::info::Info::new(labels),
    );
}

/// Per-partition figures, kept up to date by the worker that owns the partition (and the
/// consumer lag by librdkafka's statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionGauges {
    pub watermark_ms: i64,
    pub processed_offset: i64,
    pub committed_offset: i64,
    pub series: i64,
    pub open_windows: i64,
    /// Its state is being rebuilt (outputs suppressed).
    pub replaying: bool,
    /// Records behind the high watermark, from librdkafka's statistics; -1 = not known.
    pub consumer_lag: i64,
}

impl Default for PartitionGauges {
    fn default() -> Self {
        Self {
            watermark_ms: 0,
            processed_offset: 0,
            committed_offset: 0,
            series: 0,
            open_windows: 0,
            replaying: false,
            consumer_lag: -1,
        }
    }
}

type PartitionMap = Arc<Mutex<BTreeMap<(String, i32), PartitionGauges>>>;

/// Every metric the framework exports.
#[derive(Debug)]
pub struct Metrics {
    pub records_consumed: Counter,
    pub records_dead_lettered: Counter,
    pub records_late: Counter,
    pub rollups_emitted: Counter,
    pub anomalies_emitted: Counter,
    pub outputs_acked: Counter,
    pub output_errors: Counter,
    pub partitions_rebuilt: Counter,
    pub producers_renewed: Counter,
    pub commits: Counter,
    pub commit_errors: Counter,
    pub rebalances: Counter,
    pub idle_flushes: Counter,
    pub consumer_errors: Counter,
    pub producer_queue_full_waits: Counter,
    pub records_replayed: Counter,
    pub coarse_rows_read: Counter,
    pub replays_finished: Counter,
    pub checkpoints_written: Counter,
    pub checkpoint_errors: Counter,
    pub state_read_retries: Counter,
    pub idle_flushes_unrecorded: Counter,
    pub records_not_retained: Counter,
    pub retention_gaps: Counter,
    pub assigned_partitions: Gauge,
    /// RocksDB block cache usage (memtables are charged to it).
    pub state_memory_bytes: Gauge,
    partitions: PartitionMap,
    /// What readiness is made of (see [`Metrics::readiness`]): the group's part, and
    /// whether the committed offsets and plans are being read.
    pub group: GroupReadiness,
    pub restoring: AtomicBool,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            records_consumed: Counter::default(),
            records_dead_lettered: Counter::default(),
            records_late: Counter::default(),
            rollups_emitted: Counter::default(),
            anomalies_emitted: Counter::default(),
            outputs_acked: Counter::default(),
            output_errors: Counter::default(),
            partitions_rebuilt: Counter::default(),
            producers_renewed: Counter::default(),
            commits: Counter::default(),
            commit_errors: Counter::default(),
            rebalances: Counter::default(),
            idle_flushes: Counter::default(),
            consumer_errors: Counter::default(),
            producer_queue_full_waits: Counter::default(),
            records_replayed: Counter::default(),
            coarse_rows_read: Counter::default(),
            replays_finished: Counter::default(),
            checkpoints_written: Counter::default(),
            checkpoint_errors: Counter::default(),
            state_read_retries: Counter::default(),
            idle_flushes_unrecorded: Counter::default(),
            records_not_retained: Counter::default(),
            retention_gaps: Counter::default(),
            assigned_partitions: Gauge::default(),
            state_memory_bytes: Gauge::default(),
            partitions: PartitionMap::default(),
            group: GroupReadiness::default(),
            restoring: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register(
            "tributary_records_consumed",
            "Source records read",
            m.records_consumed.clone(),
        );
        registry.register(
            "tributary_records_dead_lettered",
            "Undecodable or invalid records sent to the dead-letter topic",
            m.records_dead_lettered.clone(),
        );
        registry.register(
            "tributary_records_late",
            "Records that arrived after their window closed",
            m.records_late.clone(),
        );
        registry.register(
            "tributary_rollups_emitted",
            "Closed windows produced",
            m.rollups_emitted.clone(),
        );
        registry.register(
            "tributary_anomalies_emitted",
            "Change points produced",
            m.anomalies_emitted.clone(),
        );
        registry.register(
            "tributary_outputs_acked",
            "Output records acknowledged by the broker",
            m.outputs_acked.clone(),
        );
        registry.register(
            "tributary_output_errors",
            "Output records the broker did not acknowledge",
            m.output_errors.clone(),
        );
        registry.register(
            "tributary_partitions_rebuilt",
            "Partitions rebuilt from their newest acknowledged plan after an output was not delivered",
            m.partitions_rebuilt.clone(),
        );
        registry.register(
            "tributary_producers_renewed",
            "Output producers replaced after a fatal error",
            m.producers_renewed.clone(),
        );
        registry.register(
            "tributary_commits",
            "Successful offset commits",
            m.commits.clone(),
        );
        registry.register(
            "tributary_commit_errors",
            "Failed offset commits",
            m.commit_errors.clone(),
        );
        registry.register(
            "tributary_rebalances",
            "Partition assignments and revocations",
            m.rebalances.clone(),
        );
        registry.register(
            "tributary_idle_flushes",
            "Watermark advances forced by an idle partition",
            m.idle_flushes.clone(),
        );
        registry.register(
            "tributary_consumer_errors",
            "Errors reported by the consumer (e.g. broker unreachable)",
            m.consumer_errors.clone(),
        );
        registry.register(
            "tributary_producer_queue_full_waits",
            "Times a worker waited for room in the producer queue",
            m.producer_queue_full_waits.clone(),
        );
        registry.register(
            "tributary_records_replayed",
            "Records processed again to rebuild state after a restart or rebalance (outputs suppressed)",
            m.records_replayed.clone(),
        );
        registry.register("tributary_coarse_rows_read", "Rollup rows read back from the rollups topic to rebuild coarse windows (instead of replaying raw records)", m.coarse_rows_read.clone());
        registry.register(
            "tributary_replays_finished",
            "Partitions whose state rebuild finished (outputs flow again)",
            m.replays_finished.clone(),
        );
        registry.register(
            "tributary_checkpoints_written",
            "Local RocksDB checkpoints written",
            m.checkpoints_written.clone(),
        );
        registry.register(
            "tributary_checkpoint_errors",
            "Local checkpoints that could not be written or read",
            m.checkpoint_errors.clone(),
        );
        registry.register(
            "tributary_state_read_retries",
            "Failed reads of committed offsets or replay plans at assignment; retried with backoff while the partitions wait",
            m.state_read_retries.clone(),
        );
        registry.register(
            "tributary_idle_flushes_unrecorded",
            "Idle flushes a replay plan could not keep (more than 64 within the oldest open window): a rebuild may accept records the first run found late",
            m.idle_flushes_unrecorded.clone(),
        );
        registry.register(
            "tributary_retention_gaps",
            "Resumes or rebuilds that found records they needed gone from the broker (retention); windows that may hold them are not emitted",
            m.retention_gaps.clone(),
        );
        registry.register(
            "tributary_records_not_retained",
            "Records a resume or rebuild needed that the broker no longer holds",
            m.records_not_retained.clone(),
        );
        registry.register(
            "tributary_assigned_partitions",
            "Partitions this instance owns",
            m.assigned_partitions.clone(),
        );
        registry.register_with_unit(
            "tributary_state_memory",
            "RocksDB block cache usage, memtables included",
            Unit::Bytes,
            m.state_memory_bytes.clone(),
        );
        registry.register_collector(Box::new(PartitionCollector(m.partitions.clone())));
        register_build_info(&mut registry);
        Self { registry, ..m }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, i32), PartitionGauges>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_partition(&self, topic: &str, partition: i32, gauges: PartitionGauges) {
        self.map().insert((topic.to_owned(), partition), gauges);
    }

    pub fn update_partition(&self, topic: &str, partition: i32, f: impl FnOnce(&mut PartitionGauges)) {
        f(self.map().entry((topic.to_owned(), partition)).or_default());
    }

    /// Applies librdkafka's statistics: broker reachability, and the lag of partitions
    /// this app still owns.
    pub fn apply_client_stats(&self, stats: &crate::kafka::stats::ClientStats) {
        self.group.apply_stats(stats);
        let mut map = self.map();
        for (topic, partition, lag) in &stats.lags {
            if let Some(g) = map.get_mut(&(topic.clone(), *partition)) {
                g.consumer_lag = *lag;
            }
        }
    }

    pub fn remove_partition(&self, topic: &str, partition: i32) {
        self.map().remove(&(topic.to_owned(), partition));
    }

    pub fn partitions(&self) -> BTreeMap<(String, i32), PartitionGauges> {
        self.map().clone()
    }

    /// Whether the app should get traffic and be counted as up by a rolling update:
    /// `Err` with the reasons while it has not joined its group, waits for the state its
    /// partitions resume from, rebuilds a partition's state, or stops.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut own = Vec::new();
        if self.restoring.load(Ordering::Relaxed) {
            own.push("reading the committed offsets and replay plans its partitions resume from".to_owned());
        }
        for ((topic, partition), _) in self.map().iter().filter(|(_, g)| g.replaying) {
            own.push(format!("rebuilding the state of {topic}/{partition}"));
        }
        self.group.readiness(own)
    }

    /// Renders everything in the Prometheus text format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The per-partition gauges, labelled by topic and partition, read at each scrape.
#[derive(Debug)]
struct PartitionCollector(PartitionMap);

impl Collector for PartitionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let parts = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        type Read = fn(&PartitionGauges) -> f64;
        let gauges: [(&str, &str, Option<Unit>, Read); 7] = [
            (
                "tributary_partition_watermark",
                "Event-time watermark of the partition, seconds since the epoch.",
                Some(Unit::Seconds),
                |g| g.watermark_ms as f64 / 1000.0,
            ),
            (
                "tributary_partition_processed_offset",
                "Next source offset to process.",
                None,
                |g| g.processed_offset as f64,
            ),
            (
                "tributary_partition_committed_offset",
                "Last committed source offset.",
                None,
                |g| g.committed_offset as f64,
            ),
            (
                "tributary_partition_series",
                "Series seen by the partition.",
                None,
                |g| g.series as f64,
            ),
            (
                "tributary_partition_open_windows",
                "Windows open across all levels.",
                None,
                |g| g.open_windows as f64,
            ),
            (
                "tributary_partition_replaying",
                "1 while the partition's state is rebuilt (outputs suppressed), else 0.",
                None,
                |g| f64::from(u8::from(g.replaying)),
            ),
            (
                "tributary_partition_consumer_lag",
                "Records between the consumer's position and the high watermark (-1 = not known yet; wrong where the broker reports a wrong high watermark, e.g. tansu 0.6).",
                None,
                |g| g.consumer_lag as f64,
            ),
        ];
        for (name, help, unit, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
            for ((topic, partition), g) in &parts {
                let labels = [("topic", topic.clone()), ("partition", partition.to_string())];
                ConstGauge::new(read(g)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labelled_gauges() {
        let m = Metrics::new();
        m.records_consumed.inc_by(42);
        m.set_partition(
            "metrics",
            3,
            PartitionGauges {
                watermark_ms: 7,
                ..Default::default()
            },
        );
        let text = m.render();
        assert!(text.contains("tributary_records_consumed_total 42\n"));
        let build = format!(
            "tributary_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        assert!(
            text.contains("tributary_partition_watermark_seconds{topic=\"metrics\",partition=\"3\"} 0.007\n")
        );
        m.remove_partition("metrics", 3);
        assert!(!m.render().contains("partition=\"3\""));
    }

    #[test]
    fn ready_only_once_joined_with_every_partition_rebuilt_and_not_stopping() {
        let m = Metrics::new();
        assert!(m.readiness().is_err(), "not joined yet");
        m.group.joined.store(true, Ordering::Relaxed);
        assert_eq!(m.readiness(), Ok(()));
        m.update_partition("metrics", 3, |g| g.replaying = true);
        assert_eq!(
            m.readiness(),
            Err(vec!["rebuilding the state of metrics/3".to_owned()])
        );
        m.update_partition("metrics", 3, |g| g.replaying = false);
        m.restoring.store(true, Ordering::Relaxed);
        assert!(m.readiness().is_err());
        m.restoring.store(false, Ordering::Relaxed);
        assert_eq!(m.readiness(), Ok(()));
        m.group.stopping.store(true, Ordering::Relaxed);
        assert_eq!(m.readiness(), Err(vec!["stopping".to_owned()]));
    }
}
