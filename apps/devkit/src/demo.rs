//! `tributary-dev demo`: the whole job in one process: embedded Kafka, the load
//! generator, rollup and detector, and the writer into the emulated CQL ring, narrating
//! what happens and checking the results.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary::codec::{self, Format};
use tributary::config::{AppKind, Config, HumanDuration};
use tributary::runtime::Runtime;
use tributary_writer::config::WriterConfig;
use tributary_writer::runtime::Control;

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
    /// Rollup and anomaly records the writer had to write, and the rows it wrote.
    pub rows_expected: u64,
    pub rows_written: u64,
    /// The ring's count of batches, and of those sent to a node that replicates every row.
    pub batches: u64,
    pub batches_replica_local: u64,
}

/// The emulated CQL ring and the writer, running in this process.
struct WriterSide {
    rt: tokio::runtime::Runtime,
    ring: crate::cql::Ring,
    control: Arc<Control>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tributary_writer::runtime::WriterError>>,
}

impl WriterSide {
    /// A 3-node ring on 127.0.0.1-3 (the keyspace at RF 2), schema applied, and the writer
    /// reading rollups and anomalies (raw points would be a row each, millions of them).
    fn start(brokers: &str) -> anyhow::Result<(Self, u16)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let ring = rt.block_on(crate::cql::Ring::start(crate::cql::RingConfig {
            port,
            ..Default::default()
        }))?;
        let mut config = WriterConfig::default();
        config.kafka.brokers = brokers.to_owned();
        config.topics.metrics = String::new();
        config.cassandra.contact_points = vec![format!("127.0.0.1:{port}")];
        config.cassandra.replication_class = "SimpleStrategy".into();
        config.cassandra.replication_factor = 2;
        config.cassandra.consistency = "one".into();
        config.admin.listen = String::new();
        rt.block_on(async {
            let session = tributary_writer::sink::connect(&config)
                .await
                .map_err(anyhow::Error::msg)?;
            tributary_writer::sink::apply_schema(&session, &config)
                .await
                .map_err(anyhow::Error::msg)
        })?;
        let control = Arc::new(Control::new(&config));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(tributary_writer::runtime::run(
            config,
            control.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Ok((
            Self {
                rt,
                ring,
                control,
                stop: Some(stop),
                task,
            },
            port,
        ))
    }

    fn rows_written(&self) -> u64 {
        self.control.metrics.rows_written.get()
    }

    /// (batches, batches sent to a node that replicates every row), from the ring.
    fn batches(&self) -> (u64, u64) {
        self.ring.counters().iter().fold((0, 0), |(b, l), c| {
            (b + c.batches_applied, l + c.batches_replica_local)
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = self.rt.block_on(self.task);
        self.ring.stop();
        result?.map_err(anyhow::Error::from)
    }
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
    let (writer, cql_port) = WriterSide::start(&brokers)?;
    say!(
        out,
        "▶ started the emulated CQL ring (3 nodes, 127.0.0.1-3:{cql_port}, keyspace tributary at RF 2) and tributary-writer (rollups + anomalies → tables, token-aware batches)"
    );
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
    let mut last = (Instant::now(), 0u64);
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_secs(2));
        let (batches, local) = writer.batches();
        let consumed = rollup.metrics().records_consumed.get();
        let events_per_sec = consumed.saturating_sub(last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), consumed);
        say!(
            out,
            "  {:>5.1}s  {:>7.0} events/s  rollup consumed {:>9}  rollups out {:>7}  |  detector consumed {:>9}  anomalies out {:>4}  |  writer rows {:>7}  batches {:>6} ({:.0}% replica-local)",
            started.elapsed().as_secs_f64(),
            events_per_sec,
            consumed,
            rollup.metrics().rollups_emitted.get(),
            detector.metrics().records_consumed.get(),
            detector.metrics().anomalies_emitted.get(),
            writer.rows_written(),
            batches,
            100.0 * local as f64 / batches.max(1) as f64
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
    // The writer had every rollup and anomaly record to write.
    let rows_expected = (rollups.len() + anomalies.len()) as u64;
    let waited = Instant::now();
    while writer.rows_written() < rows_expected && waited.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows_written = writer.rows_written();
    let (batches, batches_replica_local) = writer.batches();
    writer.stop()?;
    say!(
        out,
        "  writer: {rows_written} of {rows_expected} rows into rollups_5m/1h/1d and anomalies, in {batches} batches, {:.1}% sent to a replica of every row",
        100.0 * batches_replica_local as f64 / batches.max(1) as f64
    );
    say!(out, "✔ demo finished. Next:");
    say!(
        out,
        "  • deployed apps answer on their admin port: /metrics, /health/ready, /status (rollup 9641, detector 9642, writer 9643)"
    );
    say!(
        out,
        "  • deploy/monitoring/dashboard.json (Grafana) and alerts.yaml (Prometheus) watch those metrics; README \"Deploying\" walks through a cluster"
    );
    say!(
        out,
        "  • tributary-rollup replay --from-time … re-emits windows; tributary-writer ctl rate-limit … changes the write rate live"
    );
    Ok(DemoReport {
        produced: report.records,
        rollups_by_resolution: by_res,
        anomalies: anomalies.len(),
        steps_injected: report.steps.len(),
        steps_detected: detected,
        dead_letters,
        rows_expected,
        rows_written,
        batches,
        batches_replica_local,
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
