//! The writer's configuration: same layering and error reporting as the other apps
//! (defaults < file < `TRIBUTARY_*` environment < flags, every bad key named).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tributary::admin::AdminConfig;
use tributary::codec::Format;
use tributary::config::{ConfigError, HumanDuration, load_layered, tls_file_problems};
use tributary::kafka::KafkaConfig;

use scylla::statement::Consistency;

use crate::budget::LimitScope;
use crate::limiter::{Adaptive, RateLimit};

/// Topics the writer reads, and where rejected rows go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterTopics {
    /// Raw points → table `points`; empty skips raw points.
    pub metrics: String,
    /// Rollups → tables `rollups_<resolution>`; empty skips them.
    pub rollups: String,
    /// Anomalies → table `anomalies`; empty skips them.
    pub anomalies: String,
    /// Encoding of all three: "json" or "bincode".
    pub format: Format,
    /// Undecodable records and rows the cluster rejects for good, with the reason.
    pub dead_letter: String,
}

/// The Cassandra/ScyllaDB cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraConfig {
    /// Contact points, host:port; the driver discovers the rest of the ring.
    pub contact_points: Vec<String>,
    pub keyspace: String,
    /// "NetworkTopologyStrategy" or "SimpleStrategy" (used by `schema apply`).
    pub replication_class: String,
    /// Replication factor (per data centre for NetworkTopologyStrategy).
    pub replication_factor: u32,
    /// Data centre name for NetworkTopologyStrategy.
    pub datacenter: String,
    /// Write consistency: one, local_one, quorum, local_quorum, all.
    pub consistency: String,
    /// Per-request timeout.
    pub request_timeout: HumanDuration,
    /// User for PasswordAuthenticator; empty connects without authenticating.
    pub username: String,
    /// Password of `username`; prefer `password_file`. Never shown.
    pub password: String,
    /// A file whose first line is the password (e.g. a mounted Kubernetes secret).
    pub password_file: String,
    /// Speak TLS to every node; the nodes' certificates are always verified.
    pub tls: bool,
    /// PEM CA certificates that sign the nodes' certificates; empty = the system's trust
    /// store.
    pub ca_file: String,
    /// PEM client certificate for mutual TLS (with `key_file`).
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

impl CassandraConfig {
    /// The password, from `password_file` when one is named.
    pub fn password(&self) -> std::io::Result<String> {
        if self.password_file.is_empty() {
            return Ok(self.password.clone());
        }
        tributary::secret::read(&self.password_file)
    }
}

/// Time to live per table and resolution ("0s" = keep forever).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtlConfig {
    pub points: HumanDuration,
    pub anomalies: HumanDuration,
    /// Per rollup resolution, e.g. "5m" = "90d"; resolutions not listed are kept forever.
    pub rollups: BTreeMap<String, HumanDuration>,
}

/// Micro-batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per UNLOGGED batch at most (rows grouped by their exact replica set).
    pub max_rows: usize,
    /// Bytes of bound values per batch at most; keep under the cluster's 5 KiB warning.
    pub max_bytes: usize,
    /// A group waits at most this long for more rows.
    pub linger: HumanDuration,
    /// Group rows by their exact replica set (token-aware). `false` batches rows wherever
    /// they live: only to measure what token awareness buys (benchmarks, the tests'
    /// controls); every batch then lands on a coordinator that forwards most of it.
    pub by_replica_set: bool,
}

/// Rate limits, changeable at runtime (admin endpoint, `ctl`, SIGHUP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Whom the limit is for: this process, or the whole writer group (shared by
    /// partitions owned; see [`crate::budget`]).
    pub scope: LimitScope,
    /// Rows per second into the cluster; 0 = unlimited.
    pub rows_per_sec: u32,
    /// Rows admitted at once after an idle spell; at least batch.max_rows.
    pub burst: u32,
    /// Requests in flight per coordinator node at most.
    pub max_in_flight_per_node: usize,
    /// Back off on Overloaded/timeouts and creep back up.
    pub adaptive: bool,
    /// Adaptive mode: the rate is multiplied by this on overload (0 < x < 1)…
    pub adaptive_backoff: f64,
    /// …and by this after each quiet `adaptive_interval` (> 1)…
    pub adaptive_increase: f64,
    pub adaptive_interval: HumanDuration,
    /// …and never goes below this share of `rows_per_sec` (0 < x <= 1).
    pub adaptive_floor_ratio: f64,
}

/// Flow control and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Rows read but not yet acknowledged per partition before it is paused.
    pub max_pending_per_partition: usize,
    /// Longest wait between retries of a failing batch.
    pub max_backoff: HumanDuration,
    /// Upper bound on draining in-flight writes at shutdown or revoke, and on sending the
    /// final commit again until it is confirmed.
    pub drain_timeout: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterConfig {
    pub kafka: KafkaConfig,
    pub topics: WriterTopics,
    pub cassandra: CassandraConfig,
    pub ttl: TtlConfig,
    pub batch: BatchConfig,
    pub limits: LimitsConfig,
    pub flow: FlowConfig,
    pub admin: AdminConfig,
}

fn days(n: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(n * 86_400))
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::for_group("tributary-writer"),
            topics: WriterTopics {
                metrics: "metrics".into(),
                rollups: "rollups".into(),
                anomalies: "anomalies".into(),
                format: Format::Json,
                dead_letter: "dead-letter".into(),
            },
            cassandra: CassandraConfig {
                contact_points: vec!["127.0.0.1:9042".into()],
                keyspace: "tributary".into(),
                replication_class: "NetworkTopologyStrategy".into(),
                replication_factor: 3,
                datacenter: "datacenter1".into(),
                consistency: "local_quorum".into(),
                request_timeout: HumanDuration(Duration::from_secs(10)),
                username: String::new(),
                password: String::new(),
                password_file: String::new(),
                tls: false,
                ca_file: String::new(),
                cert_file: String::new(),
                key_file: String::new(),
            },
            ttl: TtlConfig {
                points: days(7),
                anomalies: days(90),
                rollups: [
                    ("5m".to_owned(), days(90)),
                    ("1h".to_owned(), days(730)),
                    ("1d".to_owned(), HumanDuration(Duration::ZERO)),
                ]
                .into(),
            },
            batch: BatchConfig {
                max_rows: 32,
                max_bytes: 4_000,
                linger: HumanDuration(Duration::from_millis(5)),
                by_replica_set: true,
            },
            limits: LimitsConfig {
                scope: LimitScope::Process,
                rows_per_sec: 0,
                burst: 1_000,
                max_in_flight_per_node: 64,
                adaptive: false,
                adaptive_backoff: 0.7,
                adaptive_increase: 1.05,
                adaptive_interval: HumanDuration(Duration::from_secs(5)),
                adaptive_floor_ratio: 0.05,
            },
            flow: FlowConfig {
                max_pending_per_partition: 20_000,
                max_backoff: HumanDuration(Duration::from_secs(10)),
                drain_timeout: HumanDuration(Duration::from_secs(30)),
            },
            admin: AdminConfig {
                listen: "127.0.0.1:9643".into(),
                token: String::new(),
                token_file: String::new(),
            },
        }
    }
}

/// A consistency level by its CQL name (`one`, `local_one`, `quorum`, `local_quorum`, `all`).
pub fn consistency(name: &str) -> Option<Consistency> {
    Some(match name.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "local_one" => Consistency::LocalOne,
        "quorum" => Consistency::Quorum,
        "local_quorum" => Consistency::LocalQuorum,
        "all" => Consistency::All,
        _ => return None,
    })
}

impl WriterConfig {
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, toml::Value)],
    ) -> Result<Self, ConfigError> {
        let c: WriterConfig = load_layered(&WriterConfig::default(), file, env, overrides)?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = self.kafka.problems();
        let t = &self.topics;
        if t.metrics.is_empty() && t.rollups.is_empty() && t.anomalies.is_empty() {
            p.push("topics: at least one of metrics, rollups, anomalies must be set".into());
        }
        if t.dead_letter.is_empty() {
            p.push("topics.dead_letter: must not be empty".into());
        }
        if self.cassandra.contact_points.is_empty() {
            p.push("cassandra.contact_points: at least one host:port".into());
        }
        let c = &self.cassandra;
        if !c.password.is_empty() && !c.password_file.is_empty() {
            p.push("cassandra.password: set it or password_file, not both".into());
        }
        if !c.password_file.is_empty() && c.password().is_err() {
            p.push(format!(
                "cassandra.password_file: cannot read {:?}",
                c.password_file
            ));
        }
        if c.username.is_empty() && !(c.password.is_empty() && c.password_file.is_empty()) {
            p.push("cassandra.username: needed with a password".into());
        }
        let files = [
            ("ca_file", c.ca_file.as_str()),
            ("cert_file", c.cert_file.as_str()),
            ("key_file", c.key_file.as_str()),
        ];
        for (key, path) in files {
            if !path.is_empty() && !c.tls {
                p.push(format!("cassandra.{key}: set, but cassandra.tls is false"));
            }
        }
        p.extend(tls_file_problems("cassandra", &c.cert_file, &c.key_file, &files));
        if !self
            .cassandra
            .keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self.cassandra.keyspace.is_empty()
        {
            p.push(format!(
                "cassandra.keyspace: {:?} is not a valid keyspace name",
                self.cassandra.keyspace
            ));
        }
        if !["NetworkTopologyStrategy", "SimpleStrategy"].contains(&self.cassandra.replication_class.as_str())
        {
            p.push(format!(
                "cassandra.replication_class: {:?} is neither NetworkTopologyStrategy nor SimpleStrategy",
                self.cassandra.replication_class
            ));
        }
        if self.cassandra.replication_factor == 0 {
            p.push("cassandra.replication_factor: must be at least 1".into());
        }
        if consistency(&self.cassandra.consistency).is_none() {
            p.push(format!(
                "cassandra.consistency: {:?} is not one of one, local_one, quorum, local_quorum, all",
                self.cassandra.consistency
            ));
        }
        for res in self.ttl.rollups.keys() {
            if HumanDuration::parse(res).is_err() {
                p.push(format!(
                    "ttl.rollups.{res}: the key must be a resolution such as \"5m\""
                ));
            }
        }
        if self.batch.max_rows == 0 {
            p.push("batch.max_rows: must be at least 1".into());
        }
        if self.batch.max_bytes < 64 {
            p.push("batch.max_bytes: must be at least 64".into());
        }
        if let Err(e) = self.rate_limit().validate(self.batch.max_rows) {
            p.push(format!("limits.burst: {e}"));
        }
        let l = &self.limits;
        if !(l.adaptive_backoff > 0.0 && l.adaptive_backoff < 1.0) {
            p.push(format!(
                "limits.adaptive_backoff: {} must be between 0 and 1 (exclusive)",
                l.adaptive_backoff
            ));
        }
        if !(l.adaptive_increase > 1.0 && l.adaptive_increase.is_finite()) {
            p.push(format!(
                "limits.adaptive_increase: {} must be above 1",
                l.adaptive_increase
            ));
        }
        if !(l.adaptive_floor_ratio > 0.0 && l.adaptive_floor_ratio <= 1.0) {
            p.push(format!(
                "limits.adaptive_floor_ratio: {} must be in (0, 1]",
                l.adaptive_floor_ratio
            ));
        }
        if l.adaptive_interval.0 < Duration::from_millis(10) {
            p.push("limits.adaptive_interval: must be at least 10ms".into());
        }
        if self.limits.max_in_flight_per_node == 0 {
            p.push("limits.max_in_flight_per_node: must be at least 1".into());
        }
        if self.flow.max_pending_per_partition < self.batch.max_rows {
            p.push("flow.max_pending_per_partition: must be at least batch.max_rows".into());
        }
        p.extend(self.admin.problem());
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    pub fn rate_limit(&self) -> RateLimit {
        RateLimit {
            rows_per_sec: self.limits.rows_per_sec,
            burst: self.limits.burst,
        }
    }

    pub fn adaptive(&self) -> Adaptive {
        let l = &self.limits;
        Adaptive {
            enabled: l.adaptive,
            backoff: l.adaptive_backoff,
            increase: l.adaptive_increase,
            floor_ratio: l.adaptive_floor_ratio,
            interval_ms: l.adaptive_interval.0.as_millis().min(u64::MAX as u128) as u64,
        }
    }

    /// The configuration as TOML for `--print-config`, secrets redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = WriterConfig {
            kafka: self.kafka.redacted(),
            admin: self.admin.redacted(),
            ..self.clone()
        };
        if !shown.cassandra.password.is_empty() {
            shown.cassandra.password = tributary::kafka::client::REDACTED.to_owned();
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_shipped_file_documents_them() {
        assert_eq!(
            WriterConfig::load(None, Vec::new(), &[]),
            Ok(WriterConfig::default())
        );
        let file = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../../config/writer.toml");
        assert_eq!(
            WriterConfig::load(Some(&file), Vec::new(), &[]),
            Ok(WriterConfig::default())
        );
        let text = std::fs::read_to_string(&file).expect("config/writer.toml");
        assert_eq!(
            tributary::config::reference_drift(&WriterConfig::default(), &text),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_bad_key_is_named() {
        let err = WriterConfig::load(
            None,
            vec![
                ("TRIBUTARY_LIMITS_ROWS_PER_SEC".into(), "fast".into()),
                ("TRIBUTARY_BATCH_MAX_ROWZ".into(), "3".into()),
                ("TRIBUTARY_CASSANDRA_CONSISTENCY".into(), "most".into()),
            ],
            &[],
        )
        .expect_err("invalid");
        let all = err.problems.join("\n");
        assert!(all.contains("limits.rows_per_sec"), "{all}");
        assert!(all.contains("batch.max_rowz: unknown key"), "{all}");
        let err = WriterConfig::load(
            None,
            vec![
                ("TRIBUTARY_CASSANDRA_CONSISTENCY".into(), "most".into()),
                ("TRIBUTARY_LIMITS_ROWS_PER_SEC".into(), "10".into()),
                ("TRIBUTARY_LIMITS_BURST".into(), "5".into()),
                ("TRIBUTARY_LIMITS_ADAPTIVE_BACKOFF".into(), "1.5".into()),
                ("TRIBUTARY_LIMITS_ADAPTIVE_INCREASE".into(), "0.9".into()),
            ],
            &[],
        )
        .expect_err("invalid values");
        let all = err.problems.join("\n");
        for key in [
            "cassandra.consistency",
            "limits.burst",
            "limits.adaptive_backoff",
            "limits.adaptive_increase",
        ] {
            assert!(all.contains(key), "{key} not named in:\n{all}");
        }
    }
}
