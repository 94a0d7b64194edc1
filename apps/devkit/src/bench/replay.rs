//! Replay figures: a full replay's rate and restart-to-caught-up with and without a
//! local checkpoint.

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary::config::{AppKind, Config, HumanDuration};
use tributary::runtime::Runtime;

use super::clock::{FirstCount, cpu_seconds};
use super::{BenchOptions, spec, start_broker};
use crate::figures::Figures;
use crate::loadgen;

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
pub(super) fn replay(opts: &BenchOptions, out: &mut impl Write, figures: &mut Figures) -> anyhow::Result<()> {
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
    // Every partition's checkpoint covers its last records once it has written two more:
    // the first may have been taken before them (see runtime::worker::checkpoint).
    let written = rt.metrics().checkpoints_written.get();
    let t = Instant::now();
    while rt.metrics().checkpoints_written.get() < written + 2 * opts.partitions as u64
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let mut clock = FirstCount::new();
    let t = Instant::now();
    while rt.metrics().replays_finished.get() < opts.partitions as u64
        && t.elapsed() < Duration::from_secs(300)
    {
        clock.see(rt.metrics().records_replayed.get());
        std::thread::sleep(Duration::from_millis(2));
    }
    let timed = clock.timed(rt.metrics().records_replayed.get());
    let (replayed, wall, used) = (timed.items, timed.wall, timed.cpu);
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
