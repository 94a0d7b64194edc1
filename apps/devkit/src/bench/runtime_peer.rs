//! The rollup app's runtime as a benchmark process: the full pipeline (rollup + CUSUM),
//! or with both stages off, consuming and decoding only, which is what the full pipeline
//! on the same broker is bounded by. Both are timed the same way, in the process, with no
//! metrics endpoint being scraped (polling `/metrics` every 5 ms cost the app process a
//! fifth of its CPU). Benchmarks only.

use std::time::Duration;

use tributary::config::{AppKind, Config};
use tributary::runtime::Runtime;

use super::clock::{Timed, time_until};

/// The command line of `tributary-dev runtime-peer`.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeOptions {
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, default_value = "metrics")]
    pub topic: String,
    #[arg(long, default_value = "tributary-runtime-peer")]
    pub group: String,
    /// Records to consume, from the topic's start.
    #[arg(long)]
    pub records: u64,
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Both stages off: the limit the full pipeline is bounded by.
    #[arg(long)]
    pub decode_only: bool,
}

/// Consumes `records` records from the topic's start; timed from the first.
pub fn run(opts: &RuntimeOptions) -> anyhow::Result<Timed> {
    let state = std::env::temp_dir().join(format!("tributary-runtime-peer-{}", std::process::id()));
    let mut config = Config::defaults(AppKind::Rollup);
    config.kafka.brokers = opts.brokers.clone();
    config.kafka.group = opts.group.clone();
    config.topics.input = opts.topic.clone();
    config.admin.listen = String::new();
    config.runtime.workers = opts.workers;
    config.state.dir = state.display().to_string();
    config.cusum.enabled = true;
    let rt = start(config, opts.decode_only)?;
    let timed = until_consumed(&rt, opts.records);
    rt.stop();
    rt.join()?;
    let _ = std::fs::remove_dir_all(&state);
    timed
}

/// Starts the runtime `config` describes or, `decode_only`, the same runtime with both
/// stages off: its consume path (fetch settings, poll thread, workers, commits) alone,
/// which the full pipeline is bounded by.
pub(super) fn start(config: Config, decode_only: bool) -> anyhow::Result<Runtime> {
    if !decode_only {
        return Ok(Runtime::start(config)?);
    }
    let mut spec = config.pipeline_spec()?;
    spec.rollup = None;
    spec.cusum = None;
    Ok(Runtime::start_with(config, spec)?)
}

/// Until the runtime has consumed `total` records (within 300 s), timed from its first.
pub(super) fn until_consumed(rt: &Runtime, total: u64) -> anyhow::Result<Timed> {
    time_until(total, Duration::from_secs(300), || {
        rt.metrics().records_consumed.get()
    })
}
