//! The rollup app's runtime as a benchmark process: the full pipeline (rollup + CUSUM),
//! or with both stages off, consuming and decoding only, which is what the full pipeline
//! on the same broker is bounded by. Both are timed the same way, in the process, with no
//! metrics endpoint being scraped (polling `/metrics` every 5 ms cost the app process a
//! fifth of its CPU). Benchmarks only.

use tributary::config::{AppKind, Config};
use tributary::runtime::Runtime;

use super::clock::Timed;

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
    let mut spec = config.pipeline_spec()?;
    if opts.decode_only {
        spec.rollup = None;
        spec.cusum = None;
    }
    let rt = Runtime::start_with(config, spec)?;
    let timed = super::e2e::until_consumed(&rt, opts.records);
    let consumed = rt.metrics().records_consumed.get();
    rt.stop();
    rt.join()?;
    let _ = std::fs::remove_dir_all(&state);
    anyhow::ensure!(
        consumed >= opts.records,
        "consumed {consumed} of {} records within 300 s",
        opts.records
    );
    Ok(timed)
}
