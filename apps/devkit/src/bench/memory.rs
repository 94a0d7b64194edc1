//! RSS with many active series, each holding open windows at every level and CUSUM
//! state.

use std::io::Write;
use std::time::{Duration, Instant};

use tributary::config::{AppKind, Config, HumanDuration};
use tributary::runtime::Runtime;

use super::clock::rss_mib;
use super::{BenchOptions, start_broker};
use crate::loadgen::{self, LoadSpec};

pub(super) fn memory(opts: &BenchOptions, out: &mut impl Write) -> anyhow::Result<()> {
    let partitions = 16;
    let broker = start_broker(&[
        ("metrics", partitions),
        ("rollups", partitions),
        ("anomalies", partitions),
        ("dead-letter", partitions),
    ])?;
    let mut config = Config::defaults(AppKind::Rollup);
    config.kafka.brokers = broker.brokers.clone();
    config.kafka.group = "bench-memory".into();
    config.cusum.enabled = true;
    config.admin.listen = String::new();
    config.runtime.workers = opts.workers;
    config.rollup.idle_timeout = HumanDuration(Duration::from_secs(3600));
    let (rss_before, _) = rss_mib();
    let rt = Runtime::start(config)?;
    while rt.metrics().assigned_partitions.get() < partitions as i64 {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Three points per series inside one 5m window: every series holds an open window at
    // each of the three levels plus CUSUM state, and nothing closes.
    let spec = LoadSpec {
        series: opts.memory_series,
        points: 3,
        interval_ms: 60_000,
        jitter_ms: 0,
        anomaly_fraction: 0.0,
        ..LoadSpec::default()
    };
    let producer = {
        let brokers = broker.brokers.clone();
        std::thread::spawn(move || loadgen::produce(&brokers, "metrics", &spec))
    };
    let report = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let t = Instant::now();
    while rt.metrics().records_consumed.get() < report.records && t.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let series: i64 = rt.metrics().partitions().values().map(|g| g.series).sum();
    let (rss, peak) = rss_mib();
    say!(
        out,
        "memory: {} active series ({} records consumed, {} rollups emitted) across 3 levels + CUSUM, {} partitions:",
        series,
        rt.metrics().records_consumed.get(),
        rt.metrics().rollups_emitted.get(),
        partitions
    );
    say!(
        out,
        "  RSS {rss:.0} MiB (peak {peak:.0} MiB; {rss_before:.0} MiB before start; includes this bench's load generator)"
    );
    rt.stop();
    rt.join()?;
    Ok(())
}
