//! `tributary-dev demo`: embedded Kafka + load generator + rollup + detector in one
//! process, narrating what happens and checking the results.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use tributary::codec::{self, Format};
use tributary::config::{AppKind, Config, HumanDuration};
use tributary::runtime::Runtime;

use crate::kafka::{EmbeddedKafka, read_all};
use crate::loadgen::{self, LoadSpec};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub series: usize,
    pub points: u64,
    pub rate: u64,
    pub partitions: i32,
    pub port: u16,
    pub interval_ms: i64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            series: 500,
            points: 3000,
            rate: 200_000,
            partitions: 4,
            port: 0,
            interval_ms: 30_000,
        }
    }
}

/// What the demo saw, for callers that check it.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    pub produced: u64,
    pub rollups_by_resolution: BTreeMap<String, usize>,
    pub anomalies: usize,
    pub steps_injected: usize,
    pub steps_detected: usize,
    /// Dead-lettered records per consumer group (both apps see the same bad input).
    pub dead_letters: BTreeMap<String, usize>,
}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
        let _ = $out.flush();
    }};
}

pub fn run(opts: &DemoOptions, out: &mut impl Write) -> anyhow::Result<DemoReport> {
    say!(out, "▶ starting embedded Kafka (librdkafka mock cluster)");
    let kafka = EmbeddedKafka::start(1, opts.port)?;
    let brokers = kafka.bootstrap_servers().to_owned();
    for topic in ["metrics", "rollups", "anomalies", "dead-letter"] {
        kafka.create_topic(topic, opts.partitions)?;
    }
    say!(
        out,
        "  bootstrap {brokers}; topics metrics, rollups, anomalies, dead-letter with {} partitions",
        opts.partitions
    );

    let mut rollup_cfg = Config::defaults(AppKind::Rollup);
    rollup_cfg.kafka.brokers = brokers.clone();
    rollup_cfg.rollup.idle_timeout = HumanDuration(Duration::from_secs(3600));
    let mut detector_cfg = Config::defaults(AppKind::Detector);
    detector_cfg.kafka.brokers = brokers.clone();
    for c in [&mut rollup_cfg, &mut detector_cfg] {
        c.runtime.workers = 1;
    }
    say!(
        out,
        "▶ starting tributary-rollup (5m → 1h → 1d, grace 60s) and tributary-detector (CUSUM k=1 h=5)"
    );
    let rollup = Runtime::start(rollup_cfg)?;
    let detector = Runtime::start(detector_cfg)?;
    // Produce only once both own their partitions: the mock keeps just the newest 5 MiB
    // per partition, so a consumer that starts late would miss the oldest records.
    let joined = Instant::now();
    while joined.elapsed() < Duration::from_secs(60)
        && (rollup.metrics().assigned_partitions.get() < opts.partitions as i64
            || detector.metrics().assigned_partitions.get() < opts.partitions as i64)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    say!(
        out,
        "  both apps joined their consumer groups after {:.1}s",
        joined.elapsed().as_secs_f64()
    );

    let spec = LoadSpec {
        series: opts.series,
        points: opts.points,
        rate: opts.rate,
        interval_ms: opts.interval_ms,
        jitter_ms: 20_000.min(opts.interval_ms),
        anomaly_fraction: 0.02,
        ..LoadSpec::default()
    };
    let span_h = (opts.points as i64 * opts.interval_ms) as f64 / 3_600_000.0;
    say!(
        out,
        "▶ producing {} series × {} points ({:.1} h of event time, up to 20 s out of order, 2% of series get a step change) at {} records/s",
        opts.series,
        opts.points,
        span_h,
        opts.rate
    );
    let producer = {
        let brokers = brokers.clone();
        let spec = spec.clone();
        std::thread::spawn(move || loadgen::produce(&brokers, "metrics", &spec))
    };
    let started = Instant::now();
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_secs(2));
        say!(
            out,
            "  {:>5.1}s  rollup consumed {:>9}  rollups out {:>7}  |  detector consumed {:>9}  anomalies out {:>4}",
            started.elapsed().as_secs_f64(),
            rollup.metrics().records_consumed.get(),
            rollup.metrics().rollups_emitted.get(),
            detector.metrics().records_consumed.get(),
            detector.metrics().anomalies_emitted.get()
        );
    }
    let report = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    say!(
        out,
        "  produced {} records in {:.1}s ({:.0}/s)",
        report.records,
        report.elapsed.as_secs_f64(),
        report.records as f64 / report.elapsed.as_secs_f64()
    );

    say!(
        out,
        "▶ sending 3 malformed records (they go to dead-letter with the reason)"
    );
    send_bad_records(&brokers)?;
    let expected = report.records + 3;
    let consumed = || {
        rollup
            .metrics()
            .records_consumed
            .get()
            .min(detector.metrics().records_consumed.get())
    };
    let (mut last, mut last_change) = (consumed(), Instant::now());
    while consumed() < expected && last_change.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        if consumed() != last {
            (last, last_change) = (consumed(), Instant::now());
        }
    }
    if consumed() < expected {
        say!(
            out,
            "  ⚠ {} records never arrived: the mock cluster drops a partition's oldest data beyond 5 MiB; lower --rate or raise --partitions",
            expected - consumed()
        );
    }
    say!(
        out,
        "  caught up after {:.1}s; stopping both apps (flush outputs, commit offsets)",
        started.elapsed().as_secs_f64()
    );
    rollup.stop();
    detector.stop();
    let r = rollup.join()?;
    let d = detector.join()?;
    say!(
        out,
        "  rollup:   {} records, {} windows closed, {} late, {} dead-lettered",
        r.records,
        r.rollups,
        r.late,
        r.dead_lettered
    );
    say!(
        out,
        "  detector: {} records, {} anomalies",
        d.records,
        d.anomalies
    );

    say!(out, "▶ reading the output topics back");
    let rollups = read_all(&brokers, "rollups", Duration::from_secs(30))?;
    let mut by_res: BTreeMap<String, usize> = BTreeMap::new();
    let mut sample = BTreeMap::new();
    for rec in &rollups {
        if let Some(p) = &rec.payload {
            let row = codec::decode_rollup(Format::Json, rec.header(codec::FORMAT_HEADER), p)?;
            *by_res.entry(row.resolution.clone()).or_default() += 1;
            sample
                .entry(row.resolution.clone())
                .or_insert_with(|| String::from_utf8_lossy(p).into_owned());
        }
    }
    for (res, n) in &by_res {
        say!(out, "  {res:>3}: {n:>7} rollups, e.g. {}", sample[res]);
    }
    let anomalies = read_all(&brokers, "anomalies", Duration::from_secs(30))?;
    let mut detected = 0;
    let found: Vec<_> = anomalies
        .iter()
        .filter_map(|r| {
            r.payload
                .as_deref()
                .and_then(|p| codec::decode_anomaly(Format::Json, r.header(codec::FORMAT_HEADER), p).ok())
        })
        .collect();
    for step in &report.steps {
        let hit = found.iter().any(|a| {
            a.series == step.series
                && a.ts >= step.at_ms - spec.jitter_ms
                && a.ts <= step.at_ms + 20 * spec.interval_ms
        });
        if hit {
            detected += 1;
        }
    }
    if let Some(first) = anomalies.first().and_then(|r| r.payload.as_deref()) {
        say!(
            out,
            "  anomalies: {}, e.g. {}",
            anomalies.len(),
            String::from_utf8_lossy(first)
        );
    }
    say!(
        out,
        "  injected steps detected: {detected} of {}",
        report.steps.len()
    );
    let dead = read_all(&brokers, "dead-letter", Duration::from_secs(30))?;
    let mut dead_letters: BTreeMap<String, usize> = BTreeMap::new();
    for rec in &dead {
        let group = rec
            .headers
            .iter()
            .find(|(k, _)| k == "tributary.group")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        *dead_letters.entry(group.unwrap_or_default()).or_default() += 1;
    }
    for rec in dead.iter().take(3) {
        let reason = rec
            .headers
            .iter()
            .find(|(k, _)| k == "tributary.error")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        say!(
            out,
            "  dead-letter: {:?} ← {:?}",
            reason.unwrap_or_default(),
            String::from_utf8_lossy(rec.payload.as_deref().unwrap_or_default())
        );
    }
    say!(out, "✔ demo finished");
    Ok(DemoReport {
        produced: report.records,
        rollups_by_resolution: by_res,
        anomalies: anomalies.len(),
        steps_injected: report.steps.len(),
        steps_detected: detected,
        dead_letters,
    })
}

fn send_bad_records(brokers: &str) -> anyhow::Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let bad: [(&str, &str); 3] = [
        ("node-0/cpu.user", "{not json"),
        (
            "node-0/cpu.user",
            r#"{"series":"node-0/cpu.user","ts":1732320000000}"#,
        ),
        ("", r#"{"series":"x","ts":1,"value":1}"#),
    ];
    for (k, v) in bad {
        p.send(BaseRecord::to("metrics").key(k).payload(v))
            .map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(10))?;
    Ok(())
}
