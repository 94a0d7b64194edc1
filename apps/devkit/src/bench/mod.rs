//! `tributary-dev bench`: end-to-end figures, one part per file. Benchmarks measure;
//! nothing here asserts.
//!
//! The embedded broker runs in a child process so the CPU time measured (the process's
//! CPU clock) is Tributary's alone.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::figures::Figures;
use crate::loadgen::LoadSpec;

macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
        let _ = $out.flush();
    }};
}

pub mod clock;
mod e2e;
mod memory;
pub mod naive_peer;
mod pipeline;
pub mod plans;
mod replay;
pub mod restart;
pub mod runtime_peer;
mod writer;

pub use clock::{FirstCount, cpu_seconds};

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

pub(crate) struct Broker {
    child: Child,
    pub(crate) brokers: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_broker(topics: &[(&str, i32)]) -> anyhow::Result<Broker> {
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
            pipeline::pipeline_only(opts, out, &mut figures);
        }
        if wants("e2e") {
            e2e::end_to_end(opts, out, &mut figures)?;
        }
        if wants("writer") {
            writer::writer(opts, out, &mut figures)?;
        }
        if wants("replay") {
            replay::replay(opts, out, &mut figures)?;
        }
    }
    if opts.runs > 1 {
        say!(out, "## medians of {} runs", opts.runs);
        figures.report(out)?;
    }
    // Memory is cleanest measured once, in its own process.
    if wants("memory") && opts.memory_series > 0 {
        memory::memory(opts, out)?;
    }
    if wants("restart") {
        restart::restart(opts, out)?;
    }
    if opts.only.as_deref() == Some("plans") {
        plans::plans(opts, out)?;
    }
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
