//! The tables the writer fills, and `schema apply`. Partitions are bucketed by time so
//! they stay bounded: raw points and anomalies by UTC day, rollups by 1,000 windows.

use crate::config::WriterConfig;

/// What a topic's records become.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TableKind {
    Points,
    Rollups(String),
    Anomalies,
}

impl TableKind {
    pub fn table_name(&self) -> String {
        match self {
            TableKind::Points => "points".into(),
            TableKind::Rollups(res) => format!("rollups_{res}"),
            TableKind::Anomalies => "anomalies".into(),
        }
    }

    /// The prepared INSERT (the last binds are the TTL in seconds, 0 = none, and the
    /// write timestamp in microseconds).
    pub fn insert(&self, keyspace: &str) -> String {
        let table = self.table_name();
        match self {
            TableKind::Points => format!(
                "INSERT INTO {keyspace}.{table} (series, day, ts, value) VALUES (?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ),
            TableKind::Rollups(_) => format!(
                "INSERT INTO {keyspace}.{table} (series, bucket, window_start, window_end, count, min, max, sum, avg) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ),
            TableKind::Anomalies => format!(
                "INSERT INTO {keyspace}.{table} (series, day, ts, value, direction, cusum, threshold, mean, stddev) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
            ),
        }
    }
}

pub const DAY_MS: i64 = 86_400_000;

/// Windows per rollup partition.
pub const WINDOWS_PER_BUCKET: i64 = 1_000;

/// The statements `schema apply` runs, in order; all idempotent.
pub fn statements(config: &WriterConfig) -> Vec<String> {
    let c = &config.cassandra;
    let ks = &c.keyspace;
    let replication = match c.replication_class.as_str() {
        "SimpleStrategy" => format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            c.replication_factor
        ),
        _ => format!(
            "{{'class': 'NetworkTopologyStrategy', '{}': {}}}",
            c.datacenter, c.replication_factor
        ),
    };
    let mut out = vec![
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.points (series text, day bigint, ts timestamp, value double, \
             PRIMARY KEY ((series, day), ts))"
        ),
    ];
    for res in config.ttl.rollups.keys() {
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.rollups_{res} (series text, bucket bigint, window_start timestamp, \
             window_end timestamp, count bigint, min double, max double, sum double, avg double, \
             PRIMARY KEY ((series, bucket), window_start))"
        ));
    }
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.anomalies (series text, day bigint, ts timestamp, value double, direction text, \
         cusum double, threshold double, mean double, stddev double, PRIMARY KEY ((series, day), ts))"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// config/schema.cql is the reference operators read; it must match what `schema
    /// apply` runs with the default configuration.
    #[test]
    fn shipped_schema_matches_the_default_statements() {
        let path = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../../config/schema.cql");
        let text = std::fs::read_to_string(path).expect("config/schema.cql");
        let normalise = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let shipped: Vec<String> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            .split(';')
            .map(normalise)
            .filter(|s| !s.is_empty())
            .collect();
        let generated: Vec<String> = statements(&WriterConfig::default())
            .iter()
            .map(|s| normalise(s))
            .collect();
        assert_eq!(shipped, generated);
    }
}
