//! Configuration: serde structs layered as app defaults < TOML file < `TRIBUTARY_*`
//! environment < command-line flags, validated once at start-up. Validation reports every
//! problem (unknown keys, wrong types, bad values) together, each named by its key.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::admin::AdminConfig;
use crate::codec::Format;
use crate::cusum::CusumConfig;
use crate::cusum::CusumParams;
pub use crate::duration::{DurationError, HumanDuration};
use crate::kafka::KafkaConfig;
use crate::limits::InputConfig;
use crate::pipeline::PipelineSpec;
pub use crate::reference::reference_drift;
use crate::stage::Subscription;
use crate::state::StateConfig;
use crate::window::Resolution;
use crate::window::RollupConfig;

/// Which application a configuration is for; each has its own defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    Rollup,
    Detector,
}

impl AppKind {
    pub fn name(self) -> &'static str {
        match self {
            AppKind::Rollup => "tributary-rollup",
            AppKind::Detector => "tributary-detector",
        }
    }
}

/// Topic names and formats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Source topic of metric points, keyed by series id.
    pub input: String,
    /// Encoding of the input's values: "json" or "bincode".
    pub input_format: Format,
    /// Closed windows go here, co-partitioned with the input.
    pub rollups: String,
    /// CUSUM change points go here.
    pub anomalies: String,
    /// Undecodable or invalid input, with the reason in headers.
    pub dead_letter: String,
    /// Records that missed their window; empty disables the late topic (they are still counted).
    pub late: String,
    /// Encoding of rollups and anomalies: "json" or "bincode".
    pub output_format: Format,
}

/// Threads and batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads that run pipelines; 0 means one per CPU.
    pub workers: usize,
    /// Records handed to a worker at a time.
    pub batch_size: usize,
    /// Batches queued per worker before the poll loop waits (bounded memory).
    pub queue_depth: usize,
    /// Upper bound on waiting for in-flight outputs at revoke or shutdown, and on sending
    /// the final commit again until it is confirmed.
    pub drain_timeout: HumanDuration,
}

/// Everything an app needs. Sections mirror the TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub rollup: RollupConfig,
    pub cusum: CusumConfig,
    pub runtime: RuntimeConfig,
    pub state: StateConfig,
    pub input: InputConfig,
    pub admin: AdminConfig,
}

/// Every problem found, each naming its key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problems):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn one(problem: String) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

impl Config {
    /// Built-in defaults of an app.
    pub fn defaults(app: AppKind) -> Self {
        let (group, admin, rollup, cusum) = match app {
            AppKind::Rollup => ("tributary-rollup", "127.0.0.1:9641", true, false),
            AppKind::Detector => ("tributary-detector", "127.0.0.1:9642", false, true),
        };
        let params = CusumParams::default();
        Config {
            kafka: KafkaConfig::for_group(group),
            topics: TopicsConfig {
                input: "metrics".into(),
                input_format: Format::Json,
                rollups: "rollups".into(),
                anomalies: "anomalies".into(),
                dead_letter: "dead-letter".into(),
                late: String::new(),
                output_format: Format::Json,
            },
            rollup: RollupConfig {
                enabled: rollup,
                levels: vec!["5m".into(), "1h".into(), "1d".into()],
                grace: HumanDuration(Duration::from_secs(60)),
                idle_timeout: HumanDuration(Duration::from_secs(300)),
            },
            cusum: CusumConfig {
                enabled: cusum,
                input: "raw".into(),
                k: params.k,
                h: params.h,
                warmup: params.warmup,
                min_stddev: params.min_stddev,
                reset_baseline: params.reset_baseline,
                replay_lookback: params.replay_lookback,
                replay_lookback_time: HumanDuration(Duration::from_millis(params.replay_lookback_ms as u64)),
            },
            runtime: RuntimeConfig {
                workers: 0,
                batch_size: 1024,
                queue_depth: 8,
                drain_timeout: HumanDuration(Duration::from_secs(30)),
            },
            state: StateConfig {
                dir: String::new(),
                checkpoint_interval: HumanDuration(Duration::from_secs(30)),
                block_cache_mb: 64,
                write_buffer_mb: 32,
                plan_store: "auto".into(),
                plan_topic: String::new(),
                plan_history_retention: HumanDuration(Duration::from_secs(7 * 86_400)),
            },
            input: InputConfig::default(),
            admin: AdminConfig {
                listen: admin.into(),
                token: String::new(),
                token_file: String::new(),
            },
        }
    }

    /// Loads the layers: defaults < `file` < environment (`TRIBUTARY_SECTION_KEY`) <
    /// `overrides` (`("section.key", value)` pairs from flags).
    pub fn load(
        app: AppKind,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let config = load_layered(&Config::defaults(app), file, env, overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that types cannot express. Reports every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        problems.extend(self.kafka.problems());
        problems.extend(self.input.problems());
        let t = &self.topics;
        let mut names = vec![("topics.input", &t.input)];
        if self.rollup.enabled {
            names.push(("topics.rollups", &t.rollups));
        }
        if self.cusum.enabled {
            names.push(("topics.anomalies", &t.anomalies));
        }
        names.push(("topics.dead_letter", &t.dead_letter));
        for (key, name) in &names {
            if name.trim().is_empty() {
                problems.push(format!("{key}: must not be empty"));
            } else if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                problems.push(format!("{key}: {name:?} is not a valid Kafka topic name"));
            }
        }
        for (i, (a, x)) in names.iter().enumerate() {
            for (b, y) in &names[i + 1..] {
                if x == y && !x.is_empty() {
                    problems.push(format!("{b}: must differ from {a} (both are {x:?})"));
                }
            }
        }
        if !self.rollup.enabled && !self.cusum.enabled {
            problems.push("rollup.enabled, cusum.enabled: at least one stage must be enabled".into());
        }
        if let Err(mut level_problems) = self.resolutions() {
            problems.append(&mut level_problems);
        }
        if self.cusum.enabled {
            let c = &self.cusum;
            if c.input != "raw" {
                if !self.rollup.enabled {
                    problems.push(format!(
                        "cusum.input: {:?} needs the rollup stage (rollup.enabled = true) or \"raw\"",
                        c.input
                    ));
                } else if !self.rollup.levels.contains(&c.input) {
                    problems.push(format!(
                        "cusum.input: {:?} is neither \"raw\" nor one of rollup.levels {:?}",
                        c.input, self.rollup.levels
                    ));
                }
            }
            if !(c.k >= 0.0 && c.k.is_finite()) {
                problems.push(format!("cusum.k: must be a finite number >= 0, not {}", c.k));
            }
            if !(c.h > 0.0 && c.h.is_finite()) {
                problems.push(format!("cusum.h: must be a finite number > 0, not {}", c.h));
            }
            if !(c.min_stddev > 0.0 && c.min_stddev.is_finite()) {
                problems.push(format!("cusum.min_stddev: must be > 0, not {}", c.min_stddev));
            }
        }
        if self.runtime.workers > 1024 {
            problems.push(format!(
                "runtime.workers: {} is more than 1024",
                self.runtime.workers
            ));
        }
        if self.runtime.batch_size == 0 {
            problems.push("runtime.batch_size: must be at least 1".into());
        }
        if self.runtime.queue_depth == 0 {
            problems.push("runtime.queue_depth: must be at least 1".into());
        }
        let st = &self.state;
        if !["auto", "metadata", "topic"].contains(&st.plan_store.as_str()) {
            problems.push(format!(
                "state.plan_store: {:?} is not \"auto\", \"metadata\" or \"topic\"",
                st.plan_store
            ));
        }
        if st.checkpoint_interval.0.is_zero() {
            problems.push("state.checkpoint_interval: must be greater than zero".into());
        }
        if st.block_cache_mb == 0 || st.write_buffer_mb == 0 {
            problems.push("state.block_cache_mb, state.write_buffer_mb: must be at least 1".into());
        }
        problems.extend(self.admin.problem());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The rollup levels, parsed and checked.
    pub fn resolutions(&self) -> Result<Vec<Resolution>, Vec<String>> {
        let mut problems = Vec::new();
        let mut out: Vec<Resolution> = Vec::new();
        if self.rollup.levels.is_empty() && self.rollup.enabled {
            problems.push("rollup.levels: at least one level is needed".into());
        }
        for (i, text) in self.rollup.levels.iter().enumerate() {
            match HumanDuration::parse(text) {
                // Window arithmetic stays far from overflow: event times end at year
                // 9999, widths at a year.
                Ok(d) if d.as_millis() > 366 * 86_400_000 => {
                    problems.push(format!("rollup.levels[{i}]: {text} is longer than 366d"))
                }
                Ok(d) if d.as_millis() > 0 => {
                    let width = d.as_millis();
                    if let Some(prev) = out.last()
                        && (width <= prev.width_ms || width % prev.width_ms != 0)
                    {
                        problems.push(format!(
                            "rollup.levels[{i}]: {text} must be a larger whole multiple of {}",
                            prev.label
                        ));
                    }
                    out.push(Resolution::new(width, text.clone()));
                }
                Ok(_) => problems.push(format!("rollup.levels[{i}]: must be longer than zero")),
                Err(e) => problems.push(format!("rollup.levels[{i}]: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// The per-partition pipeline this configuration describes.
    pub fn pipeline_spec(&self) -> Result<PipelineSpec, ConfigError> {
        let levels = self.resolutions().map_err(|problems| ConfigError { problems })?;
        let cusum = self.cusum.enabled.then(|| {
            let params = CusumParams {
                k: self.cusum.k,
                h: self.cusum.h,
                warmup: self.cusum.warmup,
                min_stddev: self.cusum.min_stddev,
                reset_baseline: self.cusum.reset_baseline,
                replay_lookback: self.cusum.replay_lookback,
                replay_lookback_ms: self
                    .cusum
                    .replay_lookback_time
                    .0
                    .as_millis()
                    .min(i64::MAX as u128) as i64,
            };
            let sub = levels
                .iter()
                .position(|r| r.label == self.cusum.input)
                .filter(|_| self.rollup.enabled)
                .map_or(Subscription::Points, |i| Subscription::RollupLevel(i as u8));
            (params, sub)
        });
        Ok(PipelineSpec {
            input_format: self.topics.input_format,
            rollup: self.rollup.enabled.then_some(levels),
            cusum,
            grace_ms: self.rollup.grace.as_millis(),
            limits: self.input.limits(),
        })
    }

    /// The topic that holds replay plans when commit metadata cannot.
    pub fn plan_topic(&self) -> String {
        if self.state.plan_topic.is_empty() {
            format!("{}.replay-plans", self.kafka.group)
        } else {
            self.state.plan_topic.clone()
        }
    }

    /// The topic that keeps earlier replay plans (see `state.plan_history_retention`).
    pub fn plan_history_topic(&self) -> String {
        format!("{}.replay-plan-history", self.kafka.group)
    }

    /// The effective configuration as TOML, for `--print-config`.
    /// The configuration as TOML for `--print-config`, secrets redacted.
    pub fn to_toml(&self) -> String {
        let shown = Config {
            kafka: self.kafka.redacted(),
            admin: self.admin.redacted(),
            ..self.clone()
        };
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

fn set(table: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

/// Environment values are TOML literals when they parse as one (`8`, `true`, `["5m"]`),
/// strings otherwise, so `TRIBUTARY_KAFKA_BROKERS=host:9092` needs no quoting.
fn env_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if k != "properties" => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Problems with a section's TLS files: a client certificate without its key (or the
/// reverse), and `files` (key, path) that are set but cannot be read. Named
/// `section.key`.
pub fn tls_file_problems(
    section: &str,
    cert_file: &str,
    key_file: &str,
    files: &[(&str, &str)],
) -> Vec<String> {
    let mut p = Vec::new();
    if cert_file.is_empty() != key_file.is_empty() {
        p.push(format!(
            "{section}.cert_file, {section}.key_file: set both or neither"
        ));
    }
    for (key, path) in files {
        if !path.is_empty() && std::fs::File::open(Path::new(path)).is_err() {
            p.push(format!("{section}.{key}: cannot read {path:?}"));
        }
    }
    p
}

/// Layers any sectioned configuration type: `defaults` < TOML `file` < environment
/// (`TRIBUTARY_<SECTION>_<KEY>`) < `overrides` (`("section.key", value)`). Every user key
/// is checked on its own against the defaults, so one bad key never hides the next and
/// every problem is named by its key.
pub fn load_layered<T: Serialize + DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, toml::Value)],
) -> Result<T, ConfigError> {
    let base = toml::Table::try_from(defaults)
        .map_err(|e| ConfigError::one(format!("internal: defaults do not serialise: {e}")))?;
    let sections: Vec<String> = base.keys().cloned().collect();
    let mut problems = Vec::new();
    let mut user = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::one(format!("cannot read {}: {e}", path.display())))?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::one(format!("{} is not valid TOML: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("TRIBUTARY_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let found = sections.iter().find_map(|s| {
            rest.strip_prefix(s.as_str())
                .and_then(|k| k.strip_prefix('_'))
                .map(|k| (s.clone(), k.to_owned()))
        });
        match found {
            Some((section, key)) => set(&mut user, &section, &key, env_value(&value)),
            None => problems.push(format!(
                "environment variable {name}: no such setting (expected TRIBUTARY_<SECTION>_<KEY> with a section among {})",
                sections.join(", ")
            )),
        }
    }
    for (path, value) in overrides {
        if let Some((section, key)) = path.split_once('.') {
            set(&mut user, section, key, value.clone());
        }
    }
    for (section, value) in &user {
        let Some(toml::Value::Table(defaults_section)) = base.get(section) else {
            problems.push(format!(
                "{section}: unknown section (known: {})",
                sections.join(", ")
            ));
            continue;
        };
        let toml::Value::Table(table) = value else {
            problems.push(format!("{section}: expected a [{section}] table"));
            continue;
        };
        for (key, value) in table {
            let mut probe_section = defaults_section.clone();
            probe_section.insert(key.clone(), value.clone());
            let mut probe = base.clone();
            probe.insert(section.clone(), toml::Value::Table(probe_section));
            if let Err(e) = toml::Value::Table(probe).try_into::<T>() {
                let message = e.message().trim().to_owned();
                if message.starts_with("unknown field") {
                    problems.push(format!("{section}.{key}: unknown key"));
                } else {
                    problems.push(format!("{section}.{key}: {message}"));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(ConfigError { problems });
    }
    let mut merged = base;
    merge(&mut merged, user);
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::one(e.to_string()))
}

#[cfg(test)]
mod tests;
