//! `tributary-dev bench`: end-to-end figures. Benchmarks measure; nothing here asserts.
//!
//! The embedded broker runs in a child process so the CPU time measured (the process's
//! CPU clock) is Tributary's alone.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary::codec::{self, Format};
use tributary::config::{AppKind, Config, HumanDuration};
use tributary::pipeline::{Pipeline, VecSink};
use tributary::record::RawPoint;
use tributary::runtime::Runtime;

use crate::figures::Figures;
use crate::loadgen::{self, LoadSpec};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub records: u64,
    pub series: usize,
    pub partitions: i32,
    pub workers: usize,
    pub memory_series: usize,
    /// Run one part only: "pipeline", "e2e", "memory", "writer", "replay", "restart" or
    /// "plans" (plans runs only when asked for).
    pub only: Option<String>,
    /// Runs of the pipeline, e2e, writer and replay parts; each figure is then reported
    /// as the median with min and max.
    pub runs: usize,
}

/// CPU seconds used by this process so far (user + system, every thread), at the
/// clock's nanosecond resolution: /proc/self/stat counts 10 ms ticks, which made rates
/// whole-tick quotients.
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Resident set size and its peak, in MiB.
pub fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

struct Broker {
    child: Child,
    brokers: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_broker(topics: &[(&str, i32)]) -> anyhow::Result<Broker> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let exe = std::env::current_exe()?;
    let names: Vec<&str> = topics.iter().map(|t| t.0).collect();
    let partitions = topics.first().map_or(8, |t| t.1);
    let child = Command::new(exe)
        .args([
            "kafka",
            "--port",
            &port.to_string(),
            "--partitions",
            &partitions.to_string(),
            "--topics",
            &names.join(","),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let brokers = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready: Result<BaseConsumer, _> = ClientConfig::new().set("bootstrap.servers", &brokers).create();
        if ready.is_ok_and(|c| {
            c.fetch_metadata(Some(names[0]), Duration::from_secs(1))
                .is_ok_and(|m| m.topics().iter().any(|t| !t.partitions().is_empty()))
        }) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "embedded broker did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Broker { child, brokers })
}

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
        let _ = $out.flush();
    }};
}

pub fn run(opts: &BenchOptions, out: &mut impl Write) -> anyhow::Result<()> {
    say!(
        out,
        "# tributary-dev bench on {} CPUs",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let wants = |part: &str| opts.only.as_deref().is_none_or(|o| o == part);
    let mut figures = Figures::default();
    for run in 1..=opts.runs.max(1) {
        if opts.runs > 1 {
            say!(out, "## run {run} of {}", opts.runs);
        }
        if wants("pipeline") {
            pipeline_only(opts, out, &mut figures);
        }
        if wants("e2e") {
            end_to_end(opts, out, &mut figures)?;
        }
        if wants("writer") {
            writer(opts, out, &mut figures)?;
        }
        if wants("replay") {
            replay(opts, out, &mut figures)?;
        }
    }
    if opts.runs > 1 {
        say!(out, "## medians of {} runs", opts.runs);
        figures.report(out)?;
    }
    // Memory is cleanest measured once, in its own process.
    if wants("memory") && opts.memory_series > 0 {
        memory(opts, out)?;
    }
    if wants("restart") {
        crate::restart_bench::restart(opts, out)?;
    }
    if opts.only.as_deref() == Some("plans") {
        crate::plan_bench::plans(opts, out)?;
    }
    Ok(())
}

/// Until every partition has processed up to `ends` (or 300 s): (wall seconds, CPU seconds).
fn until_caught_up(rt: &Runtime, input: &str, ends: &[i64]) -> (f64, f64) {
    let (t, cpu) = (Instant::now(), cpu_seconds());
    while t.elapsed() < Duration::from_secs(300) {
        let parts = rt.metrics().partitions();
        let done = ends.iter().enumerate().all(|(p, end)| {
            *end == 0
                || parts
                    .get(&(input.to_owned(), p as i32))
                    .is_some_and(|g| g.processed_offset >= *end)
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (t.elapsed().as_secs_f64(), cpu_seconds() - cpu)
}

/// Replay figures: the rate of a full replay (every record of every partition, outputs
/// suppressed), and restart-to-caught-up with and without a local checkpoint.
fn replay(opts: &BenchOptions, out: &mut impl Write, figures: &mut Figures) -> anyhow::Result<()> {
    use rdkafka::consumer::CommitMode;
    use rdkafka::{Offset, TopicPartitionList};
    use tributary::replay::Plan;

    let broker = start_broker(&[
        ("metrics", opts.partitions),
        ("rollups", opts.partitions),
        ("dead-letter", opts.partitions),
    ])?;
    let report = loadgen::produce(&broker.brokers, "metrics", &spec(opts))?;
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()?;
    let mut ranges = Vec::new();
    for p in 0..opts.partitions {
        ranges.push(probe.fetch_watermarks("metrics", p, Duration::from_secs(5))?);
    }
    let ends: Vec<i64> = ranges.iter().map(|r| r.1).collect();
    let retained: i64 = ranges.iter().map(|(lo, hi)| hi - lo).sum();
    let state_dir = std::env::temp_dir().join(format!("tributary-bench-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state_dir);
    let mut config = Config::defaults(AppKind::Rollup);
    config.kafka.brokers = broker.brokers.clone();
    config.kafka.group = "bench-replay".into();
    config.admin.listen = String::new();
    config.runtime.workers = opts.workers;
    config.rollup.idle_timeout = HumanDuration(Duration::from_secs(3600));
    config.state.dir = state_dir.display().to_string();
    config.state.checkpoint_interval = HumanDuration(Duration::from_millis(500));
    // The mock's coordinator holds the first join of an empty group for about a session
    // timeout; a short one keeps the restarts about Tributary.
    config
        .kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    config
        .kafka
        .properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    say!(
        out,
        "replay ({} records produced, {retained} retained by the mock, {} partitions, {} workers, levels 5m/1h/1d):",
        report.records,
        opts.partitions,
        opts.workers
    );

    // First run: process everything, commit plans, write checkpoints.
    let rt = Runtime::start(config.clone())?;
    let (wall, _) = until_caught_up(&rt, "metrics", &ends);
    std::thread::sleep(Duration::from_secs(2)); // a checkpoint after the last records
    let memory = rt.metrics().state_memory_bytes.get();
    rt.stop();
    rt.join()?;
    say!(
        out,
        "  first run processed everything in {wall:.2}s; RocksDB block cache + memtables {:.1} MiB (bound {} + {} MiB)",
        memory as f64 / 1048576.0,
        config.state.block_cache_mb,
        config.state.write_buffer_mb
    );

    // Restart with the local checkpoints, then without them (replay from the plans).
    for (label, keep) in [("with checkpoint   ", true), ("without checkpoint", false)] {
        if !keep {
            std::fs::remove_dir_all(&state_dir)?;
        }
        let rt = Runtime::start(config.clone())?;
        let t = Instant::now();
        while rt.metrics().assigned_partitions.get() < opts.partitions as i64
            && t.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        let joined = t.elapsed().as_secs_f64();
        let (rebuild, cpu) = until_caught_up(&rt, "metrics", &ends);
        let replayed = rt.metrics().records_replayed.get();
        rt.stop();
        rt.join()?;
        say!(
            out,
            "  restart {label}: partitions assigned {joined:.2}s after start, then caught up in {rebuild:.3}s ({replayed} records replayed, {cpu:.2} CPU-s)"
        );
        figures.add(
            &format!("replay: restart {}, assigned to caught up", label.trim()),
            "s",
            rebuild,
        );
    }

    // Full replay: plans that say "everything before the end was emitted, rebuild from
    // the first record" make every record a replayed one.
    // A group of its own: brokers refuse a non-member's commit to a group that exists.
    config.kafka.group = "bench-replay-full".into();
    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", "bench-replay-full")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (p, (lo, hi)) in ranges.iter().enumerate() {
        tpl.add_partition_offset("metrics", p as i32, Offset::Offset(*hi))?;
        if let Some(mut el) = tpl.find_partition("metrics", p as i32) {
            let plan = Plan {
                replay_start: *lo,
                ..Plan::fresh(*hi)
            };
            el.set_metadata(plan.encode());
        }
    }
    committer.commit(&tpl, CommitMode::Sync)?;
    drop(committer);
    std::fs::remove_dir_all(&state_dir)?;
    let rt = Runtime::start(config.clone())?;
    // The clock starts at the first replayed record, and only records replayed after
    // that moment are divided by it.
    let mut first: Option<(Instant, f64, u64)> = None;
    let t = Instant::now();
    while rt.metrics().replays_finished.get() < opts.partitions as u64
        && t.elapsed() < Duration::from_secs(300)
    {
        let replayed = rt.metrics().records_replayed.get();
        if first.is_none() && replayed > 0 {
            first = Some((Instant::now(), cpu_seconds(), replayed));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (start, cpu, before) = first.unwrap_or((t, cpu_seconds(), 0));
    let (wall, used) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let replayed = rt.metrics().records_replayed.get() - before;
    rt.stop();
    rt.join()?;
    let _ = std::fs::remove_dir_all(&state_dir);
    say!(
        out,
        "  full replay: {replayed} records in {wall:.2}s = {:.0} records/s wall, {:.0} per CPU-second ({used:.2} CPU-s; timed from the first replayed record)",
        replayed as f64 / wall,
        replayed as f64 / used
    );
    figures.add("replay: full replay, wall", "records/s", replayed as f64 / wall);
    figures.add(
        "replay: full replay, per CPU-second",
        "records/CPU-s",
        replayed as f64 / used,
    );
    Ok(())
}

pub(crate) fn spec(opts: &BenchOptions) -> LoadSpec {
    LoadSpec {
        series: opts.series,
        points: opts.records / opts.series as u64,
        interval_ms: 10_000,
        jitter_ms: 5_000,
        anomaly_fraction: 0.01,
        ..LoadSpec::default()
    }
}

/// Decode + rollup + CUSUM on one thread, no Kafka: the per-core ceiling.
fn pipeline_only(opts: &BenchOptions, out: &mut impl Write, figures: &mut Figures) {
    let spec = spec(opts);
    let mut records: Vec<(String, Vec<u8>)> = Vec::with_capacity(opts.records as usize);
    loadgen::generate(&spec, |s, ts, value| {
        let mut buf = Vec::new();
        codec::encode_point(
            Format::Json,
            &RawPoint {
                series: s.into(),
                ts,
                value,
            },
            &mut buf,
        );
        records.push((s.to_owned(), buf));
        true
    });
    let mut config = Config::defaults(AppKind::Rollup);
    config.cusum.enabled = true;
    let Ok(full) = config.pipeline_spec() else { return };
    let mut decode_only = 0usize;
    let t = Instant::now();
    for (k, v) in &records {
        decode_only +=
            codec::decode_point(Format::Json, Some(k.as_bytes()), Some(v)).map_or(0, |p| p.series.len());
    }
    let decode_rate = records.len() as f64 / t.elapsed().as_secs_f64();
    let mut pipeline = Pipeline::new(&full);
    let mut sink = VecSink::default();
    let t = Instant::now();
    for (i, (k, v)) in records.iter().enumerate() {
        pipeline.process(Some(k.as_bytes()), Some(v), i as i64, None, &mut sink);
        if sink.rollups.len() > 100_000 {
            sink.rollups.clear();
        }
    }
    let full_rate = records.len() as f64 / t.elapsed().as_secs_f64();
    say!(
        out,
        "pipeline only (1 thread, no Kafka, {} records, {} series):",
        records.len(),
        opts.series
    );
    say!(
        out,
        "  JSON decode                      {:>10.0} records/s  (checksum {decode_only})",
        decode_rate
    );
    say!(
        out,
        "  decode + 5m/1h/1d rollup + CUSUM {:>10.0} records/s",
        full_rate
    );
    figures.add("pipeline: JSON decode, 1 thread", "records/s", decode_rate);
    figures.add(
        "pipeline: decode + rollup + CUSUM, 1 thread",
        "records/s",
        full_rate,
    );
}

fn end_to_end(opts: &BenchOptions, out: &mut impl Write, figures: &mut Figures) -> anyhow::Result<()> {
    let broker = start_broker(&[
        ("metrics", opts.partitions),
        ("rollups", opts.partitions),
        ("anomalies", opts.partitions),
        ("dead-letter", opts.partitions),
    ])?;
    let spec = spec(opts);
    let report = loadgen::produce(&broker.brokers, "metrics", &spec)?;
    let total = report.records;
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
        "end to end through the embedded broker ({} partitions, broker in a child process):",
        opts.partitions
    );
    say!(
        out,
        "  produced {total} records ({} series); {available} retained by the mock",
        opts.series
    );
    let total = available as u64;

    // Baseline: consume and decode only, one consumer thread.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.min.messages", "200000")
        .set("fetch.queue.backoff.ms", "5")
        .set("max.partition.fetch.bytes", "4194304")
        .create()?;
    consumer.subscribe(&["metrics"])?;
    let joined = Instant::now();
    let mut first: Option<(Instant, f64)> = None;
    let mut n = 0u64;
    let mut ok = 0u64;
    while n < total && joined.elapsed() < Duration::from_secs(300) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            ok += codec::decode_point(Format::Json, m.key(), m.payload()).is_ok() as u64;
            n += 1;
            // The clock starts after the first record: the n - 1 after it are divided.
            if first.is_none() {
                first = Some((Instant::now(), cpu_seconds()));
            }
        }
    }
    let (t, cpu) = first.unwrap_or((joined, cpu_seconds()));
    let (wall, used) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    drop(consumer);
    let n = n.saturating_sub(1);
    let base_rate = n as f64 / wall;
    let base_used = used;
    say!(
        out,
        "  consume + decode only   {:>10.0} records/s wall, {:>10.0} per CPU-second ({ok} decoded, {used:.2} CPU-s)",
        base_rate,
        n as f64 / used
    );

    // The rollup app with CUSUM in the same process.
    let mut config = Config::defaults(AppKind::Rollup);
    config.kafka.brokers = broker.brokers.clone();
    config.kafka.group = "bench-rollup".into();
    config.cusum.enabled = true;
    config.admin.listen = String::new();
    config.runtime.workers = opts.workers;
    config.rollup.idle_timeout = HumanDuration(Duration::from_secs(3600));
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let rt = Runtime::start(config)?;
    let mut first: Option<(Instant, f64, u64)> = None;
    while rt.metrics().records_consumed.get() < total && t.elapsed() < Duration::from_secs(300) {
        let consumed = rt.metrics().records_consumed.get();
        if first.is_none() && consumed > 0 {
            first = Some((Instant::now(), cpu_seconds(), consumed));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (start, start_cpu, before) = first.unwrap_or((t, cpu, 0));
    let (wall, used) = (start.elapsed().as_secs_f64(), cpu_seconds() - start_cpu);
    // Only records consumed after the clock started are divided by it.
    let consumed = rt.metrics().records_consumed.get() - before;
    let rollups = rt.metrics().rollups_emitted.get();
    let anomalies = rt.metrics().anomalies_emitted.get();
    rt.stop();
    rt.join()?;
    let rate = consumed as f64 / wall;
    say!(
        out,
        "  rollup 5m/1h/1d + CUSUM {:>10.0} records/s wall, {:>10.0} per CPU-second ({consumed} records, {rollups} rollups, {anomalies} anomalies, {used:.2} CPU-s, {} workers; timed from the first record, group join excluded)",
        rate,
        consumed as f64 / used,
        opts.workers
    );
    let base_cpu_rate = n as f64 / base_used;
    say!(
        out,
        "  ratio to consume + decode: {:.0}% (wall), {:.0}% (per CPU-second)",
        100.0 * rate / base_rate,
        100.0 * (consumed as f64 / used) / base_cpu_rate
    );
    figures.add(
        "e2e: consume + decode only (plain rdkafka consumer), wall",
        "records/s",
        base_rate,
    );
    figures.add(
        "e2e: consume + decode only, per CPU-second",
        "records/CPU-s",
        base_cpu_rate,
    );
    figures.add("e2e: rollup + CUSUM, wall", "records/s", rate);
    figures.add(
        "e2e: rollup + CUSUM, per CPU-second",
        "records/CPU-s",
        consumed as f64 / used,
    );
    figures.add(
        "e2e: rollup + CUSUM / decode only, per CPU-second",
        "%",
        100.0 * (consumed as f64 / used) / base_cpu_rate,
    );
    Ok(())
}

fn memory(opts: &BenchOptions, out: &mut impl Write) -> anyhow::Result<()> {
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

/// The writer into the emulated ring (its own process, RF 1), batching on and off.
fn writer(opts: &BenchOptions, out: &mut impl Write, figures: &mut Figures) -> anyhow::Result<()> {
    use tributary_writer::config::WriterConfig;
    use tributary_writer::runtime::Control;

    let rows = opts.records.min(300_000);
    let broker = start_broker(&[("metrics", opts.partitions), ("dead-letter", opts.partitions)])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let http = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    );
    let mut ring = Command::new(std::env::current_exe()?)
        .args([
            "cql",
            "--nodes",
            "3",
            "--port",
            &port.to_string(),
            "--http",
            &http,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "ring did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let spec = LoadSpec {
        series: opts.series,
        points: rows / opts.series as u64,
        ..LoadSpec::default()
    };
    let report = loadgen::produce(&broker.brokers, "metrics", &spec)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    say!(
        out,
        "writer into the emulated ring (3 nodes, RF 1; broker and ring in child processes), {} rows:",
        report.records
    );
    let modes = [
        ("token-aware batches", 32usize, true),
        ("batches ignoring replica sets", 32, false),
        ("unbatched", 1, true),
    ];
    for (i, (label, max_rows, by_replica_set)) in modes.into_iter().enumerate() {
        let mut config = WriterConfig::default();
        config.kafka.brokers = broker.brokers.clone();
        config.kafka.group = format!("bench-writer-{i}");
        config.topics.rollups = String::new();
        config.topics.anomalies = String::new();
        config.cassandra.contact_points = vec![format!("127.0.0.1:{port}")];
        config.cassandra.keyspace = "bench".into();
        config.cassandra.replication_class = "SimpleStrategy".into();
        config.cassandra.replication_factor = 1;
        config.cassandra.consistency = "one".into();
        config.batch.max_rows = max_rows;
        config.batch.by_replica_set = by_replica_set;
        config.admin.listen = String::new();
        let reset = tributary::admin::request(http.parse()?, "POST", "/counters/reset", b"");
        anyhow::ensure!(reset.is_ok(), "cannot reset ring counters");
        let control = Arc::new(Control::new(&config));
        let metrics = control.metrics.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let total = report.records;
        let (wall, cpu, timed) = rt.block_on(async {
            let session = tributary_writer::sink::connect(&config)
                .await
                .map_err(anyhow::Error::msg)?;
            tributary_writer::sink::apply_schema(&session, &config)
                .await
                .map_err(anyhow::Error::msg)?;
            let task = tokio::spawn(tributary_writer::runtime::run(
                config.clone(),
                control.clone(),
                async move {
                    let _ = stop_rx.await;
                },
            ));
            // Timed from the first row written; only rows written after it are divided.
            let mut first: Option<(Instant, f64, u64)> = None;
            let started = Instant::now();
            while metrics.rows_written.get() < total && started.elapsed() < Duration::from_secs(600) {
                let rows = metrics.rows_written.get();
                if first.is_none() && rows > 0 {
                    first = Some((Instant::now(), cpu_seconds(), rows));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let (t, c, before) = first.unwrap_or((started, cpu_seconds(), 0));
            let timed = metrics.rows_written.get().saturating_sub(before);
            let result = (t.elapsed().as_secs_f64(), cpu_seconds() - c, timed);
            let _ = stop_tx.send(());
            let _ = task.await;
            Ok::<_, anyhow::Error>(result)
        })?;
        let (_, body) = tributary::admin::request(http.parse()?, "GET", "/counters", b"")?;
        let nodes: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        let sum = |k: &str| nodes.iter().map(|n| n[k].as_u64().unwrap_or(0)).sum::<u64>();
        let requests: u64 = nodes
            .iter()
            .flat_map(|n| n["requests"].as_object().cloned().unwrap_or_default())
            .filter(|(op, _)| op == "execute" || op == "batch" || op == "query")
            .map(|(_, v)| v.as_u64().unwrap_or(0))
            .sum();
        let written = sum("rows_written");
        let batches = sum("batches");
        let local = sum("batches_replica_local");
        say!(
            out,
            "  {label}: {:>9.0} rows/s wall, {:>9.0} rows per CPU-second ({written} rows, {:.2} CPU-s); {batches} batches, {:.1}% replica-local; {:.1} requests per 1,000 rows",
            timed as f64 / wall,
            timed as f64 / cpu.max(1e-6),
            cpu,
            if batches > 0 {
                100.0 * local as f64 / batches as f64
            } else {
                0.0
            },
            1000.0 * requests as f64 / written.max(1) as f64
        );
        figures.add(&format!("writer: {label}, wall"), "rows/s", timed as f64 / wall);
        figures.add(
            &format!("writer: {label}, per CPU-second"),
            "rows/CPU-s",
            timed as f64 / cpu.max(1e-6),
        );
        figures.add(
            &format!("writer: {label}, batches replica-local"),
            "%",
            100.0 * local as f64 / batches.max(1) as f64,
        );
        figures.add(
            &format!("writer: {label}, requests per 1,000 rows"),
            "requests",
            1000.0 * requests as f64 / written.max(1) as f64,
        );
    }
    let _ = ring.kill();
    let _ = ring.wait();
    Ok(())
}
