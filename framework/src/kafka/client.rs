//! The shared `[kafka]` section and the librdkafka settings every client of every app is
//! built from, so a property set once (security, tuning) reaches them all.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::config::RDKafkaLogLevel;
use serde::{Deserialize, Serialize};

use super::security::SecurityConfig;
use crate::duration::HumanDuration;

/// Kafka connection and consumer-group settings (`[kafka]` in every app's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Consumer group id; instances with the same group share the partitions.
    pub group: String,
    /// Static group membership (KIP-345): a name unique to this instance that it keeps
    /// across restarts (a StatefulSet pod's name), so a restarted instance gets its
    /// partitions back at once instead of after the dead member's session timeout. Empty:
    /// dynamic membership. A member that is gone for good holds its partitions until its
    /// session expires, so scale down deliberately.
    pub group_instance_id: String,
    /// How often processed offsets (whose outputs are acknowledged) are committed.
    pub commit_interval: HumanDuration,
    /// Partition count for topics this app has to create when even the input is missing.
    pub default_partitions: i32,
    /// Replication factor for topics this app creates; -1 means the broker's default.
    pub replication_factor: i32,
    /// TLS and SASL for every client (`[kafka.security]`).
    pub security: SecurityConfig,
    /// Extra librdkafka properties, applied to every client the app creates (last, so
    /// they win).
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Defaults for an app whose consumer group is `group`.
    pub fn for_group(group: &str) -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group: group.into(),
            group_instance_id: String::new(),
            commit_interval: HumanDuration(Duration::from_secs(1)),
            default_partitions: 8,
            replication_factor: -1,
            security: SecurityConfig::default(),
            properties: BTreeMap::new(),
        }
    }

    /// A copy fit to show (`--print-config`): every property that holds a secret is
    /// replaced by `<redacted>`.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        shown.security = self.security.redacted();
        for (key, value) in shown.properties.iter_mut() {
            if is_secret(key) {
                *value = REDACTED.to_owned();
            }
        }
        shown
    }

    /// Problems with these settings, each named by its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.brokers.trim().is_empty() {
            p.push("kafka.brokers: must name at least one broker".to_owned());
        }
        if self.group.trim().is_empty() {
            p.push("kafka.group: must not be empty".to_owned());
        }
        if self.group_instance_id.len() > 249
            || !self
                .group_instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            p.push(
                "kafka.group_instance_id: at most 249 characters of a-z, A-Z, 0-9, '.', '_' and '-'"
                    .to_owned(),
            );
        }
        if self.commit_interval.0.is_zero() {
            p.push("kafka.commit_interval: must be greater than zero".to_owned());
        }
        if self.default_partitions < 1 {
            p.push("kafka.default_partitions: must be at least 1".to_owned());
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            p.push("kafka.replication_factor: must be -1 (broker default) or at least 1".to_owned());
        }
        p.extend(self.security.problems());
        p
    }
}

/// What a shown secret reads as.
pub const REDACTED: &str = "<redacted>";

/// librdkafka properties whose values are secrets: passwords, client secrets, private
/// keys given inline, and OAuth/JAAS configuration strings (which embed credentials).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "ssl_key",
        "oauthbearer.config",
        "jaas",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// Consumer settings: manual commits, no auto offset store, cooperative rebalancing and
/// fetch settings that keep the local queue full (librdkafka's defaults back off for a
/// whole second once `queued.min.messages` is reached, which leaves workers idle).
pub fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = client_config(
        kafka,
        &[
            ("group.id", &kafka.group),
            ("client.id", &kafka.group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("enable.partition.eof", "false"),
            ("queued.min.messages", "200000"),
            ("fetch.queue.backoff.ms", "5"),
            ("fetch.wait.max.ms", "100"),
            ("max.partition.fetch.bytes", "4194304"),
            // Broker reachability and consumer lag (see kafka::stats).
            ("statistics.interval.ms", super::stats::INTERVAL_MS),
        ],
    );
    if !kafka.group_instance_id.is_empty() && !kafka.properties.contains_key("group.instance.id") {
        config.set("group.instance.id", &kafka.group_instance_id);
    }
    config
}

/// Producer settings: idempotent (no duplicates or reordering from retries), lz4, small
/// linger for batching, and a bounded queue so a slow broker pushes back on its callers.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    client_config(
        kafka,
        &[
            ("client.id", &format!("{}-producer", kafka.group)),
            ("enable.idempotence", "true"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "500000"),
            ("queue.buffering.max.kbytes", "131072"),
        ],
    )
}

/// A client for the configured brokers with `settings`, then the user's
/// `kafka.properties`. librdkafka's own log lines are passed on from warnings up (all of
/// them when `debug` is set), so authentication and certificate errors are visible.
pub fn client_config(kafka: &KafkaConfig, settings: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers)
        .set("reconnect.backoff.max.ms", "5000");
    for (k, v) in settings {
        c.set(*k, *v);
    }
    kafka.security.apply(&mut c);
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    let level = if kafka.properties.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    };
    c.set_log_level(level);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_properties_reach_every_client_and_win() {
        let mut k = KafkaConfig::for_group("g");
        k.properties.insert("linger.ms".into(), "50".into());
        k.properties.insert("security.protocol".into(), "ssl".into());
        for c in [consumer_config(&k), producer_config(&k), client_config(&k, &[])] {
            assert_eq!(c.get("security.protocol"), Some("ssl"));
            assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        }
        assert_eq!(producer_config(&k).get("linger.ms"), Some("50"));
        assert_eq!(consumer_config(&k).get("enable.auto.commit"), Some("false"));
        assert!(matches!(consumer_config(&k).log_level, RDKafkaLogLevel::Warning));
        k.properties.insert("debug".into(), "broker".into());
        assert!(matches!(client_config(&k, &[]).log_level, RDKafkaLogLevel::Debug));
    }

    #[test]
    fn a_static_member_id_reaches_the_group_consumer_only() {
        let mut k = KafkaConfig::for_group("g");
        assert_eq!(
            consumer_config(&k).get("group.instance.id"),
            None,
            "dynamic by default"
        );
        k.group_instance_id = "rollup-0".into();
        assert_eq!(consumer_config(&k).get("group.instance.id"), Some("rollup-0"));
        // Other clients (plan reader, probes) must not fence the group's member.
        assert_eq!(client_config(&k, &[]).get("group.instance.id"), None);
        assert_eq!(producer_config(&k).get("group.instance.id"), None);
        assert!(k.problems().is_empty(), "{:?}", k.problems());
        for bad in ["pod 0", "pod/0", "é", &"x".repeat(250)] {
            k.group_instance_id = bad.to_owned();
            assert!(
                k.problems()
                    .iter()
                    .any(|p| p.starts_with("kafka.group_instance_id")),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn secrets_are_redacted_for_showing_and_nothing_else() {
        let mut k = KafkaConfig::for_group("g");
        for (key, value) in [
            ("sasl.password", "hunter2-unique"),
            ("ssl.key.password", "pem-pass-unique"),
            ("sasl.oauthbearer.client.secret", "client-secret-unique"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----unique"),
            ("sasl.username", "alice"),
            ("security.protocol", "SASL_SSL"),
        ] {
            k.properties.insert(key.into(), value.into());
        }
        let shown = toml::to_string(&k.redacted()).expect("toml");
        for secret in ["hunter2", "pem-pass", "client-secret", "BEGIN PRIVATE KEY"] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        assert!(shown.contains("alice") && shown.contains("SASL_SSL"), "{shown}");
        assert_eq!(k.redacted().properties["sasl.password"], REDACTED);
        assert_eq!(
            k.properties["sasl.password"], "hunter2-unique",
            "the config itself is untouched"
        );
    }

    #[test]
    fn every_bad_key_is_named() {
        let mut k = KafkaConfig::for_group("");
        k.brokers = " ".into();
        k.replication_factor = 0;
        let all = k.problems().join("\n");
        for key in ["kafka.brokers", "kafka.group", "kafka.replication_factor"] {
            assert!(all.contains(key), "{key} missing in {all}");
        }
        assert!(KafkaConfig::for_group("g").problems().is_empty());
    }
}
