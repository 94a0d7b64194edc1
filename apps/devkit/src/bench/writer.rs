//! The writer into the emulated ring: token-aware batches, batches ignoring replica sets,
//! and single rows, with the ring's counters.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::clock::FirstCount;
use super::{BenchOptions, start_broker};
use crate::figures::Figures;
use crate::loadgen::{self, LoadSpec};

/// The writer into the emulated ring (its own process, RF 1), batching on and off.
pub(super) fn writer(opts: &BenchOptions, out: &mut impl Write, figures: &mut Figures) -> anyhow::Result<()> {
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
            let mut clock = FirstCount::new();
            let started = Instant::now();
            while metrics.rows_written.get() < total && started.elapsed() < Duration::from_secs(600) {
                clock.see(metrics.rows_written.get());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let timed = clock.timed(metrics.rows_written.get());
            let result = (timed.wall, timed.cpu, timed.items);
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
