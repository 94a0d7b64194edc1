//! The writer computes a row's token from its partition key alone (`token::TokenKey`);
//! it must equal what the driver computes from the whole row, or batches would be grouped
//! under the wrong replica set. Checked against the driver on statements the emulated
//! ring prepared, for every table, over rows mapped from records as the writer maps them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use harness::CqlRing;
use serde_json::json;
use tributary_writer::config::WriterConfig;
use tributary_writer::rows::{Row, Source, to_row};
use tributary_writer::schema::TableKind;
use tributary_writer::sink::{self, Sink};

/// Series ids of several shapes: ASCII, multi-byte UTF-8, long, one character.
fn series(i: u64) -> String {
    match i % 4 {
        0 => format!("node-{i}/cpu.user"),
        1 => format!("узел-{i}/диск·🚀"),
        2 => format!("{}/{i}", "x".repeat(300 + (i % 50) as usize)),
        _ => char::from(b'a' + (i % 26) as u8).to_string(),
    }
}

/// Rows of every table from JSON records, with event times spread over negative and
/// positive days and buckets (the second component of every partition key).
fn rows(config: &WriterConfig, n: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    for i in 0..n {
        let s = series(i);
        // A multiplicative step spreads times from before 1970 to far after it.
        let ts = (i as i64).wrapping_mul(7_919_000_013) % 4_000_000_000_000 - 1_000_000_000_000;
        let point = json!({"series": s, "ts": ts, "value": 0.1 * i as f64});
        let resolution = ["5m", "1h", "1d"][(i % 3) as usize];
        let width = match resolution {
            "5m" => 300_000,
            "1h" => 3_600_000,
            _ => 86_400_000,
        };
        let start = ts.div_euclid(width) * width;
        let rollup = json!({
            "series": s, "resolution": resolution, "window_start": start,
            "window_end": start + width, "count": 3, "min": 1.0, "max": 3.0, "sum": 6.0, "avg": 2.0
        });
        let anomaly = json!({
            "series": s, "ts": ts, "value": 9.5, "direction": "up", "cusum": 5.1,
            "threshold": 5.0, "mean": 1.0, "stddev": 0.3
        });
        for (source, payload) in [
            (Source::Metrics, point),
            (Source::Rollups, rollup),
            (Source::Anomalies, anomaly),
        ] {
            let payload = serde_json::to_vec(&payload).expect("json");
            let row = to_row(config, source, Some(s.as_bytes()), Some(&payload), || None, 1_000)
                .unwrap_or_else(|e| panic!("record {i} of {source:?}: {e}"));
            rows.push(row);
        }
    }
    rows
}

#[test]
fn the_writers_token_equals_the_drivers_for_every_table() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ring = CqlRing::start(1);
    let mut config = WriterConfig::default();
    config.cassandra.contact_points = vec![ring.contact_point()];
    config.cassandra.replication_class = "SimpleStrategy".into();
    config.cassandra.replication_factor = 1;
    config.cassandra.consistency = "one".into();

    let rows = rows(&config, 2_000);
    let (mine, drivers) = rt.block_on(async {
        let session = Arc::new(sink::connect(&config).await.expect("connect"));
        sink::apply_schema(&session, &config).await.expect("schema");
        let sink = Sink::new(session.clone(), &config).await.expect("sink");
        let mut statements = HashMap::new();
        let mut mine = Vec::new();
        let mut drivers = Vec::new();
        for row in &rows {
            mine.push(sink.token(row).expect("token").value());
            if !statements.contains_key(&row.table) {
                let insert = row.table.insert(&config.cassandra.keyspace);
                let stmt = session.prepare(insert).await.expect("prepare");
                statements.insert(row.table.clone(), stmt);
            }
            let t = statements[&row.table]
                .calculate_token(&row.values)
                .expect("driver's token");
            drivers.push(t.expect("token-aware statement").value());
        }
        (mine, drivers)
    });

    let tables: BTreeSet<String> = rows.iter().map(|r| r.table.table_name()).collect();
    assert_eq!(
        tables.len(),
        5,
        "points, anomalies and three rollup tables: {tables:?}"
    );
    for (i, (a, b)) in mine.iter().zip(&drivers).enumerate() {
        assert_eq!(a, b, "row {i} of {:?}: {:?}", rows[i].table, rows[i].values);
    }
    // As many tokens as (series, day) keys among the points: a token that ignored a
    // component of the key would collide.
    let points: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].table == TableKind::Points)
        .collect();
    let keys: HashSet<String> = points
        .iter()
        .map(|&i| format!("{:?}", &rows[i].values[..2]))
        .collect();
    let tokens: HashSet<i64> = points.iter().map(|&i| mine[i]).collect();
    assert!(
        keys.len() > points.len() / 2,
        "{} keys of {} points",
        keys.len(),
        points.len()
    );
    assert_eq!(
        tokens.len(),
        keys.len(),
        "tokens of distinct partition keys collided"
    );
}
