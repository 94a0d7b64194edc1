//! The rollup app as a process on a Kafka-protocol broker process, for the tests that
//! kill, restart and replay it: a bed of topics, a group, a config with quick commits and
//! checkpoints, and the app's start, graceful stop and SIGKILL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{
    DevKafka, Incoming, Outgoing, Process, Tansu, app_binary, create_topics, eventually, py_committed,
    py_consume, unique,
};

use crate::dataset::{self, DataSet, Duplicates};

pub(crate) const PARTITIONS: i32 = 4;

pub(crate) struct Bed {
    pub(crate) brokers: String,
    pub(crate) input: String,
    pub(crate) rollups: String,
    pub(crate) group: String,
    /// The app's config file.
    pub(crate) config: PathBuf,
    pub(crate) state_dir: PathBuf,
    /// The broker process, held so it lives as long as the bed.
    _kafka: Box<dyn std::any::Any>,
}

pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A config file: quick commits and checkpoints, a short session so a killed member is
/// replaced quickly; `properties` add to or replace those librdkafka properties.
fn write_config(dir: &Path, state_dir: &Path, properties: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("rollup.toml");
    let debug = std::env::var("E2E_KAFKA_DEBUG").ok();
    let mut merged =
        std::collections::BTreeMap::from([("session.timeout.ms", "6000"), ("heartbeat.interval.ms", "500")]);
    merged.extend(
        properties
            .iter()
            .copied()
            .chain(debug.as_deref().map(|d| ("debug", d))),
    );
    let properties: Vec<String> = merged.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"")).collect();
    let properties = properties.join(", ");
    let text = format!(
        r#"
[kafka]
commit_interval = "200ms"
properties = {{ {properties} }}
[rollup]
idle_timeout = "1d"
[state]
dir = "{}"
checkpoint_interval = "500ms"
"#,
        state_dir.display()
    );
    std::fs::write(&path, text).expect("config file");
    path
}

pub(crate) fn bed_on(broker: Box<dyn std::any::Any>, brokers: String) -> Bed {
    let dir = scratch("replay-bed");
    let state_dir = dir.join("state");
    Bed {
        config: write_config(&dir, &state_dir, &[]),
        state_dir,
        brokers,
        input: unique("metrics"),
        rollups: unique("rollups"),
        group: unique("rollup"),
        _kafka: broker,
    }
}

/// tansu, the Kafka-protocol broker process: its group coordinator also expires a killed
/// member after the 6 s session the bed configures.
pub(crate) fn tansu_bed() -> Bed {
    let tansu = Tansu::start();
    let brokers = tansu.brokers.clone();
    let bed = bed_on(Box::new(tansu), brokers);
    create_topics(&bed.brokers, &[(&bed.input, PARTITIONS)]);
    bed
}

pub(crate) fn dev_bed() -> Bed {
    dev_bed_failing_commits(0)
}

/// The mock broker process, whose first `fail_commits` offset commits fail.
pub(crate) fn dev_bed_failing_commits(fail_commits: usize) -> Bed {
    let (input, rollups) = (unique("metrics"), unique("rollups"));
    let kafka = DevKafka::start_failing_commits(&[&input, &rollups, "dead-letter"], PARTITIONS, fail_commits);
    let brokers = kafka.brokers.clone();
    Bed {
        input,
        rollups,
        ..bed_on(Box::new(kafka), brokers)
    }
}

impl Bed {
    /// The same bed with more librdkafka properties in the app's config.
    pub(crate) fn with_kafka_properties(self, properties: &[(&str, &str)]) -> Self {
        let dir = self.config.parent().expect("config dir").to_path_buf();
        Self {
            config: write_config(&dir, &self.state_dir, properties),
            ..self
        }
    }

    /// The same bed with CUSUM on beside the rollups (anomalies to the "anomalies" topic).
    pub(crate) fn with_cusum(self) -> Self {
        let mut text = std::fs::read_to_string(&self.config).expect("config file");
        text.push_str("[cusum]\nenabled = true\n");
        std::fs::write(&self.config, text).expect("config file");
        self
    }

    /// Every anomaly so far, once at least `min` are there.
    pub(crate) fn anomalies_out(&self, min: usize) -> Vec<Incoming> {
        py_consume(&self.brokers, "anomalies", min, 120, 3.0)
    }

    pub(crate) fn start(&self, admin: &str, state_dir: &Path) -> Process {
        self.start_env(admin, state_dir, &[])
    }

    pub(crate) fn start_env(&self, admin: &str, state_dir: &Path, env: &[(&str, &str)]) -> Process {
        let state = state_dir.display().to_string();
        let mut env = env.to_vec();
        // E2E_RUST_LOG (e.g. "info,librdkafka=debug" with E2E_KAFKA_DEBUG=cgrp) looks closer.
        let filter = std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into());
        env.extend([
            ("TRIBUTARY_STATE_DIR", state.as_str()),
            ("RUST_LOG", filter.as_str()),
        ]);
        Process::spawn(
            "tributary-rollup",
            &app_binary("tributary-rollup"),
            &[
                "--config",
                &self.config.display().to_string(),
                "--brokers",
                &self.brokers,
                "--input-topic",
                &self.input,
                "--output-topic",
                &self.rollups,
                "--group",
                &self.group,
                "--admin-listen",
                admin,
            ],
            &env,
        )
    }

    /// Waits until the group's commits reach the end of every partition that has records.
    pub(crate) fn wait_caught_up(&self, records: &[Outgoing], app: &Process) {
        let end = harness::end_offsets(records);
        let mut last = Default::default();
        let done = eventually(Duration::from_secs(120), || {
            let (committed, _) = py_committed(&self.brokers, &self.group, &self.input);
            let caught_up = end
                .iter()
                .all(|(p, n)| committed.get(p).copied().unwrap_or(-1) >= *n);
            last = committed;
            caught_up.then_some(())
        });
        assert!(
            done.is_some(),
            "never caught up: committed {last:?}, expected {end:?}; log:\n{}",
            app.log_text()
        );
    }

    /// Waits until every record is committed, checks the rollups against the oracle
    /// (duplicates only if identical) and stops the app gracefully.
    pub(crate) fn finish(&self, data: &DataSet, app: &mut Process) {
        self.wait_caught_up(&data.records, app);
        let out = self.rollups_out(data.expected.len());
        dataset::check_rollups(data, Duplicates::Identical, &out);
        stop(app);
    }

    pub(crate) fn rollups_out(&self, min: usize) -> Vec<Incoming> {
        py_consume(&self.brokers, &self.rollups, min, 120, 3.0)
    }
}

/// The records before the sentinels, and the sentinels (which close every window).
pub(crate) fn split(data: &DataSet, series: usize) -> (&[Outgoing], &[Outgoing]) {
    data.records.split_at(data.records.len() - series)
}

/// Stops the app gracefully: it must exit 0.
pub(crate) fn stop(app: &mut Process) {
    assert_eq!(
        app.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        app.log_text()
    );
}

pub(crate) fn kill(app: &mut Process) {
    app.signal("KILL");
    assert_eq!(app.wait(Duration::from_secs(10)), None, "killed by a signal");
}
