//! Counters and gauges with stable names, rendered in the Prometheus text format by the
//! admin endpoint. Hot paths add per batch, never per record.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-partition figures, replaced whole by the worker that owns the partition.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PartitionGauges {
    pub watermark_ms: i64,
    pub processed_offset: i64,
    pub committed_offset: i64,
    pub series: i64,
    pub open_windows: i64,
}

/// Every metric the framework exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub records_consumed: Counter,
    pub records_dead_lettered: Counter,
    pub records_late: Counter,
    pub rollups_emitted: Counter,
    pub anomalies_emitted: Counter,
    pub outputs_acked: Counter,
    pub output_errors: Counter,
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
    pub assigned_partitions: Gauge,
    /// RocksDB block cache usage (memtables are charged to it).
    pub state_memory_bytes: Gauge,
    partitions: Mutex<BTreeMap<(String, i32), PartitionGauges>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_partition(&self, topic: &str, partition: i32, gauges: PartitionGauges) {
        if let Ok(mut map) = self.partitions.lock() {
            map.insert((topic.to_owned(), partition), gauges);
        }
    }

    pub fn update_partition(&self, topic: &str, partition: i32, f: impl FnOnce(&mut PartitionGauges)) {
        if let Ok(mut map) = self.partitions.lock() {
            f(map.entry((topic.to_owned(), partition)).or_default());
        }
    }

    pub fn remove_partition(&self, topic: &str, partition: i32) {
        if let Ok(mut map) = self.partitions.lock() {
            map.remove(&(topic.to_owned(), partition));
        }
    }

    pub fn partitions(&self) -> BTreeMap<(String, i32), PartitionGauges> {
        self.partitions.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Renders everything in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [(&str, &str, &Counter); 18] = [
            (
                "tributary_records_consumed_total",
                "Source records read.",
                &self.records_consumed,
            ),
            (
                "tributary_records_dead_lettered_total",
                "Undecodable or invalid records sent to the dead-letter topic.",
                &self.records_dead_lettered,
            ),
            (
                "tributary_records_late_total",
                "Records that arrived after their window closed.",
                &self.records_late,
            ),
            (
                "tributary_rollups_emitted_total",
                "Closed windows produced.",
                &self.rollups_emitted,
            ),
            (
                "tributary_anomalies_emitted_total",
                "Change points produced.",
                &self.anomalies_emitted,
            ),
            (
                "tributary_outputs_acked_total",
                "Output records acknowledged by the broker.",
                &self.outputs_acked,
            ),
            (
                "tributary_output_errors_total",
                "Output records the broker did not acknowledge.",
                &self.output_errors,
            ),
            (
                "tributary_commits_total",
                "Successful offset commits.",
                &self.commits,
            ),
            (
                "tributary_commit_errors_total",
                "Failed offset commits.",
                &self.commit_errors,
            ),
            (
                "tributary_rebalances_total",
                "Partition assignments and revocations.",
                &self.rebalances,
            ),
            (
                "tributary_idle_flushes_total",
                "Watermark advances forced by an idle partition.",
                &self.idle_flushes,
            ),
            (
                "tributary_consumer_errors_total",
                "Errors reported by the consumer (e.g. broker unreachable).",
                &self.consumer_errors,
            ),
            (
                "tributary_producer_queue_full_waits_total",
                "Times a worker waited for room in the producer queue.",
                &self.producer_queue_full_waits,
            ),
            (
                "tributary_records_replayed_total",
                "Records processed again to rebuild state after a restart or rebalance (outputs suppressed).",
                &self.records_replayed,
            ),
            (
                "tributary_coarse_rows_read_total",
                "Rollup rows read back from the rollups topic to rebuild coarse windows (instead of replaying raw records).",
                &self.coarse_rows_read,
            ),
            (
                "tributary_replays_finished_total",
                "Partitions whose state rebuild finished (outputs flow again).",
                &self.replays_finished,
            ),
            (
                "tributary_checkpoints_written_total",
                "Local RocksDB checkpoints written.",
                &self.checkpoints_written,
            ),
            (
                "tributary_checkpoint_errors_total",
                "Local checkpoints that could not be written or read.",
                &self.checkpoint_errors,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                c.get()
            );
        }
        let _ = writeln!(
            out,
            "# HELP tributary_assigned_partitions Partitions this instance owns.\n# TYPE tributary_assigned_partitions gauge\ntributary_assigned_partitions {}",
            self.assigned_partitions.get()
        );
        let _ = writeln!(
            out,
            "# HELP tributary_state_memory_bytes RocksDB block cache usage, memtables included.\n# TYPE tributary_state_memory_bytes gauge\ntributary_state_memory_bytes {}",
            self.state_memory_bytes.get()
        );
        let parts = self.partitions();
        type Read = fn(&PartitionGauges) -> i64;
        let gauges: [(&str, &str, Read); 5] = [
            (
                "tributary_partition_watermark_ms",
                "Event-time watermark of the partition.",
                |g| g.watermark_ms,
            ),
            (
                "tributary_partition_processed_offset",
                "Next source offset to process.",
                |g| g.processed_offset,
            ),
            (
                "tributary_partition_committed_offset",
                "Last committed source offset.",
                |g| g.committed_offset,
            ),
            (
                "tributary_partition_series",
                "Series seen by the partition.",
                |g| g.series,
            ),
            (
                "tributary_partition_open_windows",
                "Windows open across all levels.",
                |g| g.open_windows,
            ),
        ];
        for (name, help, get) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for ((topic, partition), g) in &parts {
                let _ = writeln!(
                    out,
                    "{name}{{topic=\"{topic}\",partition=\"{partition}\"}} {}",
                    get(g)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_labelled_gauges() {
        let m = Metrics::new();
        m.records_consumed.add(42);
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
        assert!(text.contains("tributary_partition_watermark_ms{topic=\"metrics\",partition=\"3\"} 7\n"));
        m.remove_partition("metrics", 3);
        assert!(!m.render().contains("partition=\"3\""));
    }
}
