//! Command line of `tributary-dev`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tributary::codec::Format;
use tributary::config::HumanDuration;

use crate::demo::{self, DemoOptions};
use crate::kafka::EmbeddedKafka;
use crate::loadgen::{self, LoadSpec};

#[derive(Debug, Parser)]
#[command(
    name = "tributary-dev",
    version,
    about = "Tributary's development kit: embedded Kafka, load generator, demo (dev and test only)"
)]
struct DevCli {
    #[command(subcommand)]
    command: DevCommand,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, global = true, default_value = "warn", env = "RUST_LOG")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Run librdkafka's mock cluster until Ctrl-C; any Kafka client can use it.
    Kafka {
        /// First broker's port (broker i listens on PORT+i); 0 = ephemeral ports.
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Number of mock brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Topics to create up front (the mock cannot create topics through the admin API).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "metrics,rollups,anomalies,dead-letter"
        )]
        topics: Vec<String>,
        /// Partitions per created topic.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Fault for tests: the first N offset commits fail (OFFSET_METADATA_TOO_LARGE,
        /// which librdkafka does not retry by itself, so the client has to).
        #[arg(long, default_value_t = 0)]
        fail_commits: usize,
    },
    /// Run the emulated CQL ring (native protocol v4) until Ctrl-C.
    Cql {
        /// Number of nodes; node i listens on 127.0.0.(i+1).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Port every node listens on.
        #[arg(long, default_value_t = 9042)]
        port: u16,
        /// Vnode tokens per node.
        #[arg(long, default_value_t = 16)]
        vnodes: usize,
        /// Extra nodes that start outside the ring and join it on POST /topology?node=N.
        #[arg(long, default_value_t = 0)]
        spare: usize,
        /// HTTP control: GET /counters, POST /counters/reset, GET /faults, POST /faults?node=N,
        /// GET /topology, POST /topology?node=N {"member": bool}.
        #[arg(long, default_value = "127.0.0.1:9043")]
        http: String,
        /// Require this user (PasswordAuthenticator), with the password from
        /// TRIBUTARY_DEV_CQL_PASSWORD.
        #[arg(long, default_value = "")]
        username: String,
    },
    /// Generate metric points into a topic: N series, rate, duration, jitter, step changes.
    Produce {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "metrics")]
        topic: String,
        /// Number of series.
        #[arg(long, default_value_t = 1000)]
        series: usize,
        /// Points per series.
        #[arg(long, default_value_t = 1000)]
        points: u64,
        /// Records per second; 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Stop after this long (e.g. 30s) even if points remain.
        #[arg(long)]
        duration: Option<String>,
        /// Event-time distance between points of a series (e.g. 10s).
        #[arg(long, default_value = "10s")]
        interval: String,
        /// Out-of-order jitter: timestamps move back by up to this much (e.g. 5s).
        #[arg(long, default_value = "5s")]
        jitter: String,
        /// Fraction of series that get one step change.
        #[arg(long, default_value_t = 0.01)]
        anomalies: f64,
        /// Step size in standard deviations.
        #[arg(long, default_value_t = 8.0)]
        step_sigma: f64,
        /// Event time of the first point, epoch ms (default: a fixed day, so runs repeat).
        #[arg(long)]
        start_ms: Option<i64>,
        /// Random seed; the same seed gives the same records.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Value encoding: json or bincode.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// End-to-end figures: throughput through the embedded broker, per CPU-second, memory.
    Bench {
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Worker threads of the rollup runtime.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Series for the memory figure (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        memory_series: usize,
        /// Run one part only: pipeline, e2e, memory, writer, replay, restart or plans (memory is cleanest in its own process; restart and plans need tansu; plans runs only when asked for).
        #[arg(long)]
        only: Option<String>,
        /// Repeat the pipeline, e2e, writer and replay parts; with more than one run each
        /// figure is summarised as the median with min and max.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=50))]
        runs: u16,
    },
    /// Benchmark peer: a naive per-event detector that writes every event to the CQL
    /// ring and reads the series' last events back for CUSUM (Anomalia Machina style).
    /// Prints {"records", "wall", "cpu", ...} as JSON, timed from the first event checked.
    NaivePeer(crate::bench::naive_peer::NaiveOptions),
    /// Benchmark peer: the rollup app's runtime with rollup + CUSUM, or consuming and
    /// decoding only. Prints {"records", "wall", "cpu"} as JSON, timed from the first record.
    RuntimePeer(crate::bench::runtime_peer::RuntimeOptions),
    /// Embedded Kafka + load generator + rollup + detector, narrated.
    Demo {
        #[arg(long, default_value_t = 500)]
        series: usize,
        #[arg(long, default_value_t = 3000)]
        points: u64,
        #[arg(long, default_value_t = 200_000)]
        rate: u64,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Fixed Kafka port for the embedded cluster; 0 = ephemeral.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

pub fn main() -> ExitCode {
    let cli = DevCli::parse();
    tributary::app::init_tracing(&cli.log, tributary::app::LogFormat::Text);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tributary-dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    HumanDuration::parse(text)
        .map(|d| d.0)
        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Kafka {
            port,
            brokers,
            topics,
            partitions,
            fail_commits,
        } => {
            let kafka = EmbeddedKafka::start(brokers, port)?;
            for t in topics.iter().filter(|t| !t.is_empty()) {
                kafka.create_topic(t, partitions)?;
            }
            if fail_commits > 0 {
                kafka.fail_commits(fail_commits)?;
                println!("the first {fail_commits} offset commits will fail");
            }
            println!("bootstrap.servers={}", kafka.bootstrap_servers());
            println!(
                "topics: {} ({partitions} partitions each); Ctrl-C stops",
                topics.join(", ")
            );
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(tributary::app::shutdown_signal());
            Ok(())
        }
        DevCommand::Cql {
            nodes,
            port,
            vnodes,
            spare,
            http,
            username,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let credentials = (!username.is_empty()).then(|| {
                    (
                        username,
                        std::env::var("TRIBUTARY_DEV_CQL_PASSWORD").unwrap_or_default(),
                    )
                });
                let config = crate::cql::RingConfig {
                    nodes,
                    port,
                    vnodes,
                    spare,
                    credentials,
                    ..Default::default()
                };
                let ring = crate::cql::Ring::start(config).await?;
                let addrs: Vec<String> = ring.addresses().iter().map(ToString::to_string).collect();
                println!("cql nodes: {}", addrs.join(","));
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                if !http.is_empty() {
                    let listener = tributary::admin::bind(&http).await?;
                    println!(
                        "control: http://{}/counters, /faults, /topology",
                        listener.local_addr()?
                    );
                    tokio::spawn(tributary::admin::serve(
                        listener,
                        ring.http_handler(),
                        async move {
                            let _ = stop_rx.await;
                        },
                    ));
                }
                println!("Ctrl-C stops");
                tributary::app::shutdown_signal().await;
                ring.stop();
                let _ = stop_tx.send(());
                Ok::<(), anyhow::Error>(())
            })
        }
        DevCommand::Produce {
            brokers,
            topic,
            series,
            points,
            rate,
            duration: run_for,
            interval,
            jitter,
            anomalies,
            step_sigma,
            start_ms,
            seed,
            format,
        } => {
            let format = match format.as_str() {
                "json" => Format::Json,
                "bincode" => Format::Bincode,
                other => anyhow::bail!("--format: {other:?} is neither json nor bincode"),
            };
            let spec = LoadSpec {
                series,
                points,
                rate,
                duration: run_for.as_deref().map(|d| duration("duration", d)).transpose()?,
                start_ms: start_ms.unwrap_or(LoadSpec::default().start_ms),
                interval_ms: duration("interval", &interval)?.as_millis() as i64,
                jitter_ms: duration("jitter", &jitter)?.as_millis() as i64,
                anomaly_fraction: anomalies,
                step_sigma,
                seed,
                format,
            };
            let report = loadgen::produce(&brokers, &topic, &spec)?;
            println!(
                "produced {} records to {topic} in {:.2}s ({:.0} records/s)",
                report.records,
                report.elapsed.as_secs_f64(),
                report.records as f64 / report.elapsed.as_secs_f64().max(1e-9)
            );
            for s in &report.steps {
                println!(
                    "injected step: series={} at_ms={} size={:.3}",
                    s.series, s.at_ms, s.size
                );
            }
            Ok(())
        }
        DevCommand::Bench {
            records,
            series,
            partitions,
            workers,
            memory_series,
            only,
            runs,
        } => {
            let opts = crate::bench::BenchOptions {
                records,
                series,
                partitions,
                workers,
                memory_series,
                only,
                runs: runs.into(),
            };
            crate::bench::run(&opts, &mut std::io::stdout())
        }
        DevCommand::NaivePeer(opts) => {
            let r = crate::bench::naive_peer::run(&opts)?;
            println!(
                "{}",
                serde_json::json!({
                    "records": r.timed.items,
                    "wall": r.timed.wall,
                    "cpu": r.timed.cpu,
                    "checked": r.checked,
                    "anomalies": r.anomalies,
                })
            );
            Ok(())
        }
        DevCommand::RuntimePeer(opts) => {
            let t = crate::bench::runtime_peer::run(&opts)?;
            println!(
                "{}",
                serde_json::json!({"records": t.items, "wall": t.wall, "cpu": t.cpu})
            );
            Ok(())
        }
        DevCommand::Demo {
            series,
            points,
            rate,
            partitions,
            port,
        } => {
            let opts = DemoOptions {
                series,
                points,
                rate,
                partitions,
                port,
                ..DemoOptions::default()
            };
            let report = demo::run(&opts, &mut std::io::stdout())?;
            if report.rollups_by_resolution.is_empty() {
                anyhow::bail!("the demo produced no rollups");
            }
            Ok(())
        }
    }
}
