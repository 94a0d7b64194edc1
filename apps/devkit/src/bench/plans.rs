//! `tributary-dev bench --only plans`: what an assignment pays to read the replay-plan
//! topic, with a day of plans in it. Brokers that drop commit metadata (tansu) keep plans
//! there, one per partition at every commit (`kafka.commit_interval`, 1 s by default), and
//! every assignment reads the topic up to a fence. Measured on tansu's sqlite storage:
//! the read with a day of plans not yet compacted, then after a broker restart, whose
//! maintenance compacts the topic to one plan per partition (Kafka compacts the same way
//! once a segment rolls; the plan topic rolls every 10 minutes).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tributary::config::{AppKind, Config};
use tributary::replay::{CoarsePlan, IdleLog, Plan};
use tributary::runtime::plans::PlanTopic;
use tributary::runtime::topics;

use super::restart::{free_port, start_tansu_on, tansu};
use super::{BenchOptions, cpu_seconds};

/// A day of commits at the default `kafka.commit_interval` (1 s).
const COMMITS_PER_DAY: i64 = 86_400;

/// A plan as the rollup app writes it mid-stream: coarse windows located.
fn plan_at(offset: i64) -> Plan {
    Plan {
        coarse: Some(CoarsePlan {
            fine_start: offset - 1_200,
            fine_watermark: 1_764_700_000_000 + offset,
            now_watermark: 1_764_700_300_000 + offset,
            rollups_from: offset / 40,
            rollups_end: offset / 40 + 120,
        }),
        ..Plan {
            replay_start: offset - 90_000,
            next_offset: offset,
            watermark: 1_764_600_000_000 + offset,
            requested: false,
            cut: None,
            coarse: None,
            idle: IdleLog::default(),
        }
    }
}

/// Reads the plan topic as an assignment does, `runs` times: (plans read, median wall
/// seconds, median CPU seconds of this process).
fn read(store: &PlanTopic, runs: usize) -> anyhow::Result<(usize, f64, f64)> {
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    let mut plans = 0;
    for _ in 0..runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        plans = store.read_log(Duration::from_secs(600))?.len();
        walls.push(t.elapsed().as_secs_f64());
        cpus.push(cpu_seconds() - c);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((plans, median(&mut walls), median(&mut cpus)))
}

pub fn plans(opts: &BenchOptions, out: &mut impl Write) -> anyhow::Result<()> {
    let Some(bin) = tansu() else {
        writeln!(
            out,
            "plan topic: skipped (tansu not installed; apps/devkit/setup.sh installs it)"
        )?;
        return Ok(());
    };
    let dir = std::env::temp_dir().join(format!("tributary-plan-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let (broker, brokers) = start_tansu_on(&bin, port, Some(&dir))?;
    let mut config = Config::defaults(AppKind::Rollup);
    config.kafka.brokers = brokers;
    config.kafka.group = "plan-bench".into();
    let topic = config.plan_topic();
    topics::ensure_plan_topic(&config, &topic, &AtomicBool::new(false))?;
    let partitions = opts.partitions.max(1);
    let per_partition = (opts.records as i64 / partitions as i64).clamp(1, COMMITS_PER_DAY);
    writeln!(
        out,
        "plan topic on tansu (sqlite), {partitions} partitions × {per_partition} plans (a day of commits at 1 s is {COMMITS_PER_DAY}; --records sets the total):"
    )?;
    let store = PlanTopic::new(&config, topic.clone())?;
    let started = Instant::now();
    for i in 1..=per_partition {
        for p in 0..partitions {
            store.write("metrics", p, &plan_at(i * 10_000 + i64::from(p)));
        }
        if i % 10_000 == 0 {
            store.flush(Duration::from_secs(600));
        }
    }
    store.flush(Duration::from_secs(600));
    writeln!(
        out,
        "  written in {:.1} s ({:.0} plans/s)",
        started.elapsed().as_secs_f64(),
        (per_partition * i64::from(partitions)) as f64 / started.elapsed().as_secs_f64()
    )?;
    let (n, wall, cpu) = read(&store, 3)?;
    writeln!(
        out,
        "  read at assignment, uncompacted:  {n:>8} plans  {wall:>7.2} s wall  {cpu:>6.2} CPU-s (median of 3)"
    )?;
    drop(store);
    // tansu's maintenance runs at start-up: it compacts the topic to one plan per key.
    drop(broker);
    let (_broker, _) = start_tansu_on(&bin, port, Some(&dir))?;
    let store = PlanTopic::new(&config, topic)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while read(&store, 1)?.0 > partitions as usize + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
    }
    let (n, wall, cpu) = read(&store, 3)?;
    writeln!(
        out,
        "  read at assignment, compacted:    {n:>8} plans  {wall:>7.2} s wall  {cpu:>6.2} CPU-s (median of 3)"
    )?;
    let _ = std::fs::remove_dir_all(Path::new(&dir));
    Ok(())
}
