//! `tributary-dev bench --only restart`: how long a rollup instance takes to come back
//! after a SIGKILL, on a real Kafka-protocol broker (tansu) with librdkafka's default
//! session timeout: a clean start, then restarts with and without a static member id
//! (`kafka.group_instance_id`) and with and without the local checkpoints. The app runs
//! as its own process (the `tributary-rollup` binary beside this one), as deployed.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{BenchOptions, spec};
use crate::loadgen;

const TOPIC: &str = "metrics";
/// Long enough for a dynamic member's restart (45 s session) and a rebuild.
const PATIENCE: Duration = Duration::from_secs(120);

/// A child process killed (SIGKILL) when dropped.
pub(crate) struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `tansu` on PATH or where `cargo install` puts it.
pub(crate) fn tansu() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("tansu"))
        .chain([Path::new(&home).join(".cargo/bin/tansu")])
        .find(|p| p.exists())
}

fn start_tansu(bin: &Path) -> anyhow::Result<(Killed, String)> {
    start_tansu_on(bin, free_port()?, None)
}

/// tansu on `port`, in memory or on sqlite storage in `dir` (kept across restarts).
pub(crate) fn start_tansu_on(bin: &Path, port: u16, dir: Option<&Path>) -> anyhow::Result<(Killed, String)> {
    let url = format!("tcp://127.0.0.1:{port}");
    let storage = if dir.is_some() {
        "sqlite://tansu.db"
    } else {
        "memory://tansu/"
    };
    let child = Command::new(bin)
        .current_dir(dir.unwrap_or(Path::new(".")))
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            storage,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let broker = Killed(child);
    let brokers = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&brokers).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "tansu did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((broker, brokers))
}

fn create_topic(brokers: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let topic = NewTopic::new(TOPIC, partitions, TopicReplication::Fixed(1));
    for result in rt.block_on(admin.create_topics([&topic], &AdminOptions::new()))? {
        result.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
    }
    Ok(())
}

/// The group's committed offsets (tansu's high watermark cannot be trusted).
fn committed(brokers: &str, group: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok((0..partitions)
        .map(|p| match got.find_partition(TOPIC, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        })
        .collect())
}

/// One figure of the app's admin endpoint, summed over its label sets.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let (status, body) = tributary::admin::request(admin, "GET", "/metrics", b"").ok()?;
    (status == 200).then(|| {
        body.lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    })
}

struct App {
    binary: PathBuf,
    brokers: String,
    group: String,
    state_dir: PathBuf,
    partitions: i32,
}

impl App {
    fn spawn(&self, instance_id: &str, admin: SocketAddr, run: &str) -> anyhow::Result<Killed> {
        let log = std::fs::File::create(self.state_dir.with_extension(format!("{run}.log")))?;
        let config = self.state_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\ncommit_interval = \"200ms\"\n[rollup]\nidle_timeout = \"1h\"\n[state]\ndir = \"{}\"\ncheckpoint_interval = \"500ms\"\n",
                self.state_dir.display()
            ),
        )?;
        let child = Command::new(&self.binary)
            .args(["--config", &config.display().to_string()])
            .args(["--brokers", &self.brokers, "--input-topic", TOPIC])
            .args(["--output-topic", "rollups", "--group", &self.group])
            .args(["--admin-listen", &admin.to_string(), "--log", "info"])
            .env("TRIBUTARY_KAFKA_GROUP_INSTANCE_ID", instance_id)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Killed(child))
    }

    /// Seconds from `start` until every partition is assigned, then until every partition
    /// has processed up to `ends`.
    fn timed(&self, admin: SocketAddr, start: Instant, ends: &[i64]) -> anyhow::Result<(f64, f64)> {
        let wait = |done: &dyn Fn() -> bool, what: &str| -> anyhow::Result<f64> {
            while !done() {
                anyhow::ensure!(start.elapsed() < PATIENCE, "{what} not within {PATIENCE:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(start.elapsed().as_secs_f64())
        };
        let partitions = self.partitions as f64;
        let assigned = wait(
            &|| metric(admin, "tributary_assigned_partitions") == Some(partitions),
            "assignment",
        )?;
        let total: i64 = ends.iter().sum();
        let caught_up = wait(
            &|| metric(admin, "tributary_partition_processed_offset").is_some_and(|v| v >= total as f64),
            "catching up",
        )?;
        Ok((assigned, caught_up))
    }
}

pub fn restart(opts: &BenchOptions, out: &mut impl Write) -> anyhow::Result<()> {
    let Some(tansu) = tansu() else {
        writeln!(
            out,
            "restart: skipped, tansu is not installed (apps/devkit/setup.sh installs it)"
        )?;
        return Ok(());
    };
    let binary = std::env::current_exe()?.with_file_name("tributary-rollup");
    anyhow::ensure!(binary.exists(), "{} not built", binary.display());
    let (_broker, brokers) = start_tansu(&tansu)?;
    create_topic(&brokers, opts.partitions)?;
    let report = loadgen::produce(&brokers, TOPIC, &spec(opts))?;
    writeln!(
        out,
        "restart after SIGKILL (tansu, {} records, {} partitions, librdkafka's default 45 s session; seconds from process start):",
        report.records, opts.partitions
    )?;
    let scratch = std::env::temp_dir().join(format!("tributary-restart-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    for (membership, id) in [("static id", "bench-0"), ("dynamic  ", "")] {
        let app = App {
            binary: binary.clone(),
            group: format!("restart-bench-{}", id.is_empty()),
            state_dir: scratch.join(format!("state-{}", id.is_empty())),
            brokers: brokers.clone(),
            partitions: opts.partitions,
        };
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let start = Instant::now();
        let mut running = app.spawn(id, admin, "clean")?;
        let mut ends = vec![i64::MAX; opts.partitions as usize];
        let (assigned, _) = app.timed(admin, start, &[])?;
        // Caught up once the commits cover every record produced.
        while ends.iter().sum::<i64>() != report.records as i64 {
            anyhow::ensure!(start.elapsed() < PATIENCE, "the first run did not catch up");
            std::thread::sleep(Duration::from_millis(50));
            ends = committed(&brokers, &app.group, opts.partitions)?;
        }
        writeln!(
            out,
            "  {membership} clean start:             partitions assigned {assigned:6.2}, caught up {:6.2}",
            start.elapsed().as_secs_f64()
        )?;
        std::thread::sleep(Duration::from_secs(1)); // a checkpoint after the last record
        for (label, keep) in [("with checkpoint   ", true), ("without checkpoint", false)] {
            drop(running);
            if !keep {
                std::fs::remove_dir_all(&app.state_dir)?;
            }
            let start = Instant::now();
            running = app.spawn(id, admin, if keep { "checkpoint" } else { "plans" })?;
            let (assigned, caught_up) = app.timed(admin, start, &ends)?;
            writeln!(
                out,
                "  {membership} restart {label}: partitions assigned {assigned:6.2}, caught up {caught_up:6.2}"
            )?;
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    writeln!(out, "  (the app's logs: {})", scratch.display())?;
    Ok(())
}
