//! End to end through the embedded broker: the rollup app with CUSUM against the same
//! runtime consuming and decoding only (its limit), with a plain rdkafka consumer beside
//! them as a second reference.

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary::codec::{self, Format};
use tributary::config::{AppKind, Config, HumanDuration};

use super::clock::{FirstCount, Timed};
use super::runtime_peer::{self, until_consumed};
use super::{BenchOptions, spec, start_broker};
use crate::figures::Figures;
use crate::loadgen;

pub(super) fn end_to_end(
    opts: &BenchOptions,
    out: &mut impl Write,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let broker = start_broker(&[
        ("metrics", opts.partitions),
        ("rollups", opts.partitions),
        ("anomalies", opts.partitions),
        ("dead-letter", opts.partitions),
    ])?;
    let spec = spec(opts);
    let report = loadgen::produce(&broker.brokers, "metrics", &spec)?;
    // Check nothing was dropped by the mock's 5 MiB-per-partition retention.
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()?;
    let mut available = 0;
    for p in 0..opts.partitions {
        let (lo, hi) = probe.fetch_watermarks("metrics", p, Duration::from_secs(5))?;
        available += hi - lo;
    }
    say!(
        out,
        "end to end through the embedded broker ({} partitions, broker in a child process, {} workers; each timed from its first record, group join excluded):",
        opts.partitions,
        opts.workers
    );
    say!(
        out,
        "  produced {} records ({} series); {available} retained by the mock",
        report.records,
        opts.series
    );
    let total = available as u64;

    let plain = plain_consumer(&broker.brokers, total)?;
    say!(
        out,
        "  plain rdkafka consumer + decode   {:>10.0} records/s wall, {:>10.0} per CPU-second ({} records, {:.2} CPU-s)",
        plain.per_second(),
        plain.per_cpu_second(),
        plain.items,
        plain.cpu
    );

    let mut config = Config::defaults(AppKind::Rollup);
    config.kafka.brokers = broker.brokers.clone();
    config.cusum.enabled = true;
    config.admin.listen = String::new();
    config.runtime.workers = opts.workers;
    config.rollup.idle_timeout = HumanDuration(Duration::from_secs(3600));

    config.kafka.group = "bench-decode-only".into();
    let rt = runtime_peer::start(config.clone(), true)?;
    let decode = until_consumed(&rt, total);
    rt.stop();
    rt.join()?;
    let decode = decode?;
    say!(
        out,
        "  runtime, consume + decode only    {:>10.0} records/s wall, {:>10.0} per CPU-second ({} records, {:.2} CPU-s)",
        decode.per_second(),
        decode.per_cpu_second(),
        decode.items,
        decode.cpu
    );

    config.kafka.group = "bench-rollup".into();
    let rt = runtime_peer::start(config, false)?;
    let full = until_consumed(&rt, total);
    let rollups = rt.metrics().rollups_emitted.get();
    let anomalies = rt.metrics().anomalies_emitted.get();
    rt.stop();
    rt.join()?;
    let full = full?;
    say!(
        out,
        "  runtime, rollup 5m/1h/1d + CUSUM  {:>10.0} records/s wall, {:>10.0} per CPU-second ({} records, {rollups} rollups, {anomalies} anomalies, {:.2} CPU-s)",
        full.per_second(),
        full.per_cpu_second(),
        full.items,
        full.cpu
    );
    let ratio = 100.0 * full.per_cpu_second() / decode.per_cpu_second();
    say!(
        out,
        "  rollup + CUSUM / runtime decode only: {:.0}% (wall), {ratio:.0}% (per CPU-second); / plain consumer: {:.0}% (per CPU-second)",
        100.0 * full.per_second() / decode.per_second(),
        100.0 * full.per_cpu_second() / plain.per_cpu_second()
    );
    for (label, t) in [
        ("e2e: plain rdkafka consumer + decode", plain),
        ("e2e: runtime consume + decode only", decode),
        ("e2e: rollup + CUSUM", full),
    ] {
        figures.add(&format!("{label}, wall"), "records/s", t.per_second());
        figures.add(
            &format!("{label}, per CPU-second"),
            "records/CPU-s",
            t.per_cpu_second(),
        );
    }
    figures.add(
        "e2e: rollup + CUSUM / runtime decode only, per CPU-second",
        "%",
        ratio,
    );
    figures.add(
        "e2e: rollup + CUSUM / plain consumer, per CPU-second",
        "%",
        100.0 * full.per_cpu_second() / plain.per_cpu_second(),
    );
    Ok(())
}

/// A plain rdkafka consumer in one thread that decodes every record: the second reference.
fn plain_consumer(brokers: &str, total: u64) -> anyhow::Result<Timed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.min.messages", "200000")
        .set("fetch.queue.backoff.ms", "5")
        .set("max.partition.fetch.bytes", "4194304")
        .create()?;
    consumer.subscribe(&["metrics"])?;
    let mut clock = FirstCount::new();
    let joined = Instant::now();
    let mut n = 0u64;
    let mut ok = 0u64;
    while n < total && joined.elapsed() < Duration::from_secs(300) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            ok += codec::decode_point(Format::Json, m.key(), m.payload()).is_ok() as u64;
            n += 1;
            clock.see(n);
        }
    }
    anyhow::ensure!(ok == n, "the plain consumer decoded {ok} of {n} records");
    Ok(clock.timed(n))
}
