//! The emulated ring driven by the real scylla driver: discovery, token-aware routing
//! (checked through the ring's counters), batches, reads, paging, faults.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures::TryStreamExt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::routing::partitioner::{Murmur3Partitioner, Partitioner};
use scylla::statement::batch::{Batch, BatchType};
use tributary_devkit::cql::token::murmur3_token;
use tributary_devkit::cql::{Faults, Ring, RingConfig};

/// A ring on a port free on every node address (tests run in parallel).
async fn ring(nodes: usize) -> Ring {
    ring_with_spare(nodes, 0).await
}

async fn ring_with_spare(nodes: usize, spare: usize) -> Ring {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let config = RingConfig {
            nodes,
            port,
            first_ip: Ipv4Addr::new(127, 0, 0, 1),
            spare,
            ..RingConfig::default()
        };
        if let Ok(r) = Ring::start(config).await {
            return r;
        }
    }
    panic!("no free port for the ring");
}

async fn session(ring: &Ring) -> Session {
    SessionBuilder::new()
        .known_node_addr(ring.addresses()[0])
        .build()
        .await
        .expect("the driver connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_discovers_the_ring_and_routes_by_token() {
    let ring = ring(3).await;
    let s = session(&ring).await;
    let state = s.get_cluster_state();
    let mut seen: Vec<SocketAddr> = state
        .get_nodes_info()
        .iter()
        .map(|n| SocketAddr::new(n.address.ip(), n.address.port()))
        .collect();
    seen.sort();
    assert_eq!(seen, ring.addresses(), "every node discovered");

    s.query_unpaged("CREATE KEYSPACE IF NOT EXISTS tb WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[])
        .await
        .expect("keyspace");
    s.query_unpaged("CREATE TABLE IF NOT EXISTS tb.points (series text, ts bigint, value double, tags map<text, text>, PRIMARY KEY (series, ts))", &[])
        .await
        .expect("table");
    s.query_unpaged("CREATE TABLE IF NOT EXISTS tb.points (series text, ts bigint, value double, PRIMARY KEY (series, ts))", &[])
        .await
        .expect("IF NOT EXISTS is idempotent");
    s.refresh_metadata().await.expect("metadata");

    let insert = s
        .prepare("INSERT INTO tb.points (series, ts, value) VALUES (?, ?, ?) USING TTL 3600")
        .await
        .expect("prepare");
    ring.reset_counters();
    for i in 0..300i64 {
        s.execute_unpaged(&insert, (format!("node-{}/cpu", i % 30), i, i as f64 * 0.5))
            .await
            .expect("insert");
    }
    let counters = ring.counters();
    assert_eq!(counters.iter().map(|c| c.writes).sum::<u64>(), 300);
    assert_eq!(
        counters.iter().map(|c| c.writes_replica_local).sum::<u64>(),
        300,
        "token-aware: every write hit its owner: {counters:?}"
    );
    assert!(
        counters.iter().all(|c| c.writes > 0),
        "writes spread over every node: {counters:?}"
    );

    // Reads by partition key with a clustering range, in clustering order.
    let select = s
        .prepare("SELECT ts, value FROM tb.points WHERE series = ? AND ts >= ? AND ts < ?")
        .await
        .expect("prepare select");
    let rows: Vec<(i64, f64)> = s
        .execute_unpaged(&select, ("node-7/cpu", 0i64, 200i64))
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .rows::<(i64, f64)>()
        .expect("typed")
        .collect::<Result<_, _>>()
        .expect("decoded");
    let want: Vec<(i64, f64)> = (0..200)
        .filter(|i| i % 30 == 7)
        .map(|i| (i, i as f64 * 0.5))
        .collect();
    assert_eq!(rows, want);

    // A full scan through the pager, 50 rows a page.
    let mut scan = scylla::statement::Statement::new("SELECT series, ts FROM tb.points");
    scan.set_page_size(50);
    let all: Vec<(String, i64)> = s
        .query_iter(scan, &[])
        .await
        .expect("iter")
        .rows_stream::<(String, i64)>()
        .expect("stream")
        .try_collect()
        .await
        .expect("pages");
    assert_eq!(all.len(), 300);

    // Upsert: writing the same key again replaces the value.
    s.execute_unpaged(&insert, ("node-7/cpu", 7i64, -1.0))
        .await
        .expect("upsert");
    let count = count(&s, "tb.points").await;
    assert_eq!(count, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_counted_by_replica_locality() {
    let ring = ring(3).await;
    let s = session(&ring).await;
    s.query_unpaged(
        "CREATE KEYSPACE b WITH replication = {'class': 'NetworkTopologyStrategy', 'datacenter1': 3}",
        &[],
    )
    .await
    .expect("ks");
    s.query_unpaged(
        "CREATE TABLE b.t (k text, c int, v blob, PRIMARY KEY (k, c))",
        &[],
    )
    .await
    .expect("table");
    s.refresh_metadata().await.expect("metadata");
    let insert = s
        .prepare("INSERT INTO b.t (k, c, v) VALUES (?, ?, ?)")
        .await
        .expect("prepare");
    ring.reset_counters();
    // One partition: every row shares a replica set, and the driver routes to a replica.
    let mut batch = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for c in 0..10 {
        batch.append_statement(insert.clone());
        values.push(("same".to_owned(), c, vec![1u8; 16]));
    }
    s.batch(&batch, values).await.expect("batch");
    let c = ring.counters();
    assert_eq!(c.iter().map(|c| c.batches).sum::<u64>(), 1);
    assert_eq!(c.iter().map(|c| c.batches_applied).sum::<u64>(), 1);
    assert_eq!(c.iter().map(|c| c.batches_replica_local).sum::<u64>(), 1);
    assert_eq!(c.iter().map(|c| c.batches_multi_replica_set).sum::<u64>(), 0);

    // Above the 5 KiB warning threshold: accepted, and counted as a warning.
    let mut warn = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for c in 0..4 {
        warn.append_statement(insert.clone());
        values.push(("warn".to_owned(), c, vec![0u8; 2 * 1024]));
    }
    s.batch(&warn, values)
        .await
        .expect("a large batch is still accepted");
    assert_eq!(ring.counters().iter().map(|c| c.batch_warnings).sum::<u64>(), 1);
    assert!(
        ring.counters()
            .iter()
            .map(|c| c.largest_batch_bytes)
            .max()
            .unwrap_or(0)
            > 8 * 1024
    );

    // Too large: above the 50 KiB fail threshold the ring refuses the batch.
    let mut big = Batch::new(BatchType::Unlogged);
    let mut values = Vec::new();
    for c in 0..8 {
        big.append_statement(insert.clone());
        values.push(("big".to_owned(), c, vec![0u8; 8 * 1024]));
    }
    let err = s.batch(&big, values).await.expect_err("batch too large");
    assert!(err.to_string().contains("Batch too large"), "{err}");
    assert_eq!(
        ring.counters().iter().map(|c| c.batches_too_large).sum::<u64>(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_reach_the_driver() {
    let ring = ring(1).await;
    let s = session(&ring).await;
    s.query_unpaged(
        "CREATE KEYSPACE f WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        &[],
    )
    .await
    .expect("ks");
    s.query_unpaged("CREATE TABLE f.t (k int PRIMARY KEY, v text)", &[])
        .await
        .expect("table");
    ring.set_faults(
        0,
        Faults {
            overloaded: 1.0,
            ..Faults::default()
        },
    );
    let err = s
        .query_unpaged("INSERT INTO f.t (k, v) VALUES (1, 'x')", &[])
        .await
        .expect_err("overloaded");
    assert!(err.to_string().to_lowercase().contains("overloaded"), "{err}");
    ring.set_faults(
        0,
        Faults {
            write_timeout: 1.0,
            ..Faults::default()
        },
    );
    let err = s
        .query_unpaged("INSERT INTO f.t (k, v) VALUES (1, 'x')", &[])
        .await
        .expect_err("timeout");
    assert!(
        err.to_string().to_lowercase().contains("timed out") || err.to_string().contains("WriteTimeout"),
        "{err}"
    );
    ring.set_faults(
        0,
        Faults {
            unavailable: 1.0,
            ..Faults::default()
        },
    );
    let err = s
        .query_unpaged("INSERT INTO f.t (k, v) VALUES (1, 'x')", &[])
        .await
        .expect_err("unavailable");
    assert!(err.to_string().to_lowercase().contains("consistency"), "{err}");
    ring.set_faults(
        0,
        Faults {
            max_rows_per_sec: 5,
            ..Faults::default()
        },
    );
    let mut throttled = 0;
    for k in 0..20 {
        if s.query_unpaged(format!("INSERT INTO f.t (k, v) VALUES ({k}, 'x')"), &[])
            .await
            .is_err()
        {
            throttled += 1;
        }
    }
    assert!(
        throttled >= 10,
        "the cap answered Overloaded only {throttled} times"
    );
    ring.set_faults(
        0,
        Faults {
            latency_ms: 150,
            ..Faults::default()
        },
    );
    let started = std::time::Instant::now();
    s.query_unpaged("INSERT INTO f.t (k, v) VALUES (98, 'slow')", &[])
        .await
        .expect("slow but fine");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "latency not injected"
    );
    ring.set_faults(0, Faults::default());
    s.query_unpaged("INSERT INTO f.t (k, v) VALUES (99, 'ok')", &[])
        .await
        .expect("healthy again");
    let c = &ring.counters()[0];
    assert!(
        c.overloaded_sent >= 11 && c.write_timeouts_sent >= 1 && c.unavailable_sent >= 1,
        "{c:?}"
    );
}

#[test]
fn tokens_match_the_driver() {
    for key in [
        &b""[..],
        b"a",
        b"node-17/cpu.user",
        &[0xff; 15],
        &[0x80; 17],
        &[7; 33],
    ] {
        assert_eq!(
            murmur3_token(key),
            Murmur3Partitioner.hash_one(key).value(),
            "{key:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_storage_type_round_trips_and_truncate_empties() {
    use std::collections::{BTreeMap, BTreeSet};
    let ring = ring(3).await;
    let s = session(&ring).await;
    s.query_unpaged(
        "CREATE KEYSPACE t WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 2}",
        &[],
    )
    .await
    .expect("ks");
    s.query_unpaged(
        "CREATE TABLE t.all (k text, i int, b bigint, d double, ts timestamp, f boolean, x blob, u uuid, \
         m map<text, int>, st set<text>, l list<bigint>, PRIMARY KEY ((k, i), b))",
        &[],
    )
    .await
    .expect("table");
    let insert = s
        .prepare("INSERT INTO t.all (k, i, b, d, f, x, m, st, l) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .await
        .expect("prepare");
    let m: BTreeMap<String, i32> = [("a".to_owned(), 1), ("b".to_owned(), 2)].into();
    let st: BTreeSet<String> = ["x".to_owned(), "y".to_owned()].into();
    let l: Vec<i64> = vec![3, 1, 2];
    s.execute_unpaged(
        &insert,
        (
            "k",
            1i32,
            10i64,
            2.5f64,
            true,
            vec![0u8, 255],
            m.clone(),
            st.clone(),
            l.clone(),
        ),
    )
    .await
    .expect("insert");
    s.query_unpaged("INSERT INTO t.all (k, i, b, ts, u) VALUES ('k', 1, 10, 1732380000123, 123e4567-e89b-12d3-a456-426614174000)", &[])
        .await
        .expect("literal insert upserts");
    type Row = (
        i32,
        i64,
        f64,
        bool,
        Vec<u8>,
        BTreeMap<String, i32>,
        BTreeSet<String>,
        Vec<i64>,
        scylla::value::CqlTimestamp,
    );
    let row: Row = s
        .query_unpaged(
            "SELECT i, b, d, f, x, m, st, l, ts FROM t.all WHERE k = 'k' AND i = 1",
            &[],
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("typed row");
    assert_eq!(
        row,
        (
            1,
            10,
            2.5,
            true,
            vec![0, 255],
            m,
            st,
            l,
            scylla::value::CqlTimestamp(1_732_380_000_123)
        )
    );
    s.query_unpaged("TRUNCATE t.all", &[]).await.expect("truncate");
    assert_eq!(count(&s, "t.all").await, 0);
    let err = s
        .query_unpaged("SELECT * FROM system.peers_v2", &[])
        .await
        .expect_err("peers_v2 is absent, as on Cassandra 3");
    assert!(err.to_string().contains("unconfigured table"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_refuses_connections_and_the_rest_serve() {
    let ring = ring(3).await;
    let s = session(&ring).await;
    s.query_unpaged(
        "CREATE KEYSPACE d WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3}",
        &[],
    )
    .await
    .expect("ks");
    s.query_unpaged("CREATE TABLE d.t (k int PRIMARY KEY, v int)", &[])
        .await
        .expect("table");
    let down = ring.addresses()[2];
    ring.set_faults(
        2,
        Faults {
            down: true,
            ..Faults::default()
        },
    );
    let refused = tributary_devkit_connect_eventually_refused(down).await;
    assert!(refused, "node 3 still accepts connections");
    let insert = s
        .prepare("INSERT INTO d.t (k, v) VALUES (?, ?)")
        .await
        .expect("prepare");
    for k in 0..30 {
        s.execute_unpaged(&insert, (k, k))
            .await
            .expect("the other replicas serve");
    }
    ring.set_faults(2, Faults::default());
    let back = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if tokio::net::TcpStream::connect(down).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "node 3 did not come back");
}

async fn tributary_devkit_connect_eventually_refused(addr: SocketAddr) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Raw frames: unknown opcodes and malformed bodies get a protocol ERROR and the
/// connection keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_protocol_errors_not_dropped_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ring = ring(1).await;
    let mut c = tokio::net::TcpStream::connect(ring.addresses()[0])
        .await
        .expect("connect");
    async fn roundtrip(c: &mut tokio::net::TcpStream, stream: i16, op: u8, body: &[u8]) -> (u8, Vec<u8>) {
        let mut f = vec![0x04, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.push(op);
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
        c.write_all(&f).await.expect("write");
        let mut h = [0u8; 9];
        c.read_exact(&mut h).await.expect("response header");
        assert_eq!(i16::from_be_bytes([h[2], h[3]]), stream);
        let mut b = vec![0u8; u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize];
        c.read_exact(&mut b).await.expect("response body");
        (h[4], b)
    }
    let (op, body) = roundtrip(&mut c, 1, 0x1F, b"").await;
    assert_eq!(op, 0x00, "ERROR");
    assert_eq!(&body[..4], &0x000Ai32.to_be_bytes(), "protocol error code");
    let (op, body) = roundtrip(&mut c, 2, 0x07, &[0, 0, 0, 50, b'S']).await;
    assert_eq!(op, 0x00);
    assert_eq!(&body[..4], &0x000Ai32.to_be_bytes());
    let (op, body) = roundtrip(
        &mut c,
        3,
        0x07,
        &[
            0, 0, 0, 10, b'S', b'E', b'L', b'E', b'C', b' ', b'*', b' ', b'x', b'y', 0, 1, 0,
        ],
    )
    .await;
    assert_eq!(op, 0x00);
    assert_eq!(&body[..4], &0x2000i32.to_be_bytes(), "syntax error");
    let (op, _) = roundtrip(&mut c, 4, 0x05, b"").await;
    assert_eq!(
        op, 0x06,
        "the same connection still answers OPTIONS with SUPPORTED"
    );
}

#[test]
fn faults_change_over_http() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("rt");
    let ring = rt.block_on(ring(2));
    let handler = ring.http_handler();
    let req = |method: &str, path: &str, query: &str, body: &str| tributary::admin::Request {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        body: body.as_bytes().to_vec(),
        bearer: None,
    };
    let r = handler.handle(&req(
        "POST",
        "/faults",
        "node=2",
        r#"{"latency_ms": 25, "overloaded": 0.5}"#,
    ));
    assert_eq!(r.status, 200);
    assert_eq!(ring.faults(1).latency_ms, 25);
    assert_eq!(ring.faults(1).overloaded, 0.5);
    assert_eq!(ring.faults(0), Faults::default(), "only node 2 changed");
    assert_eq!(
        handler
            .handle(&req("POST", "/faults", "", r#"{"nonsense": 1}"#))
            .status,
        400
    );
    assert_eq!(
        handler.handle(&req("POST", "/faults", "node=9", "{}")).status,
        400
    );
    let counters: Vec<tributary_devkit::cql::NodeCounters> =
        serde_json::from_slice(&handler.handle(&req("GET", "/counters", "", "")).body).expect("json");
    assert_eq!(counters.len(), 2);
}

/// `SELECT COUNT(*)` of a table.
async fn count(s: &Session, table: &str) -> i64 {
    let (n,): (i64,) = s
        .query_unpaged(format!("SELECT COUNT(*) FROM {table}"), &[])
        .await
        .expect("count")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("one row");
    n
}

/// tb.kv (k text primary key, v int) in a keyspace with one replica.
async fn key_value_table(s: &Session) {
    s.query_unpaged("CREATE KEYSPACE IF NOT EXISTS tb WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}", &[])
        .await
        .expect("keyspace");
    s.query_unpaged(
        "CREATE TABLE IF NOT EXISTS tb.kv (k text, v int, PRIMARY KEY (k))",
        &[],
    )
    .await
    .expect("table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_key_over_64_kib_is_refused_as_invalid() {
    let ring = ring(1).await;
    let s = session(&ring).await;
    key_value_table(&s).await;
    let long = "k".repeat(70_000);
    // Unprepared, so the driver sends the key instead of refusing it first.
    let err = s
        .query_unpaged("INSERT INTO tb.kv (k, v) VALUES (?, ?)", (long.as_str(), 1))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("Key length of 70000 is longer than maximum of 65535"),
        "{text}"
    );
    s.query_unpaged("INSERT INTO tb.kv (k, v) VALUES (?, ?)", ("short", 1))
        .await
        .expect("a normal key is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_follows_nodes_joining_and_leaving() {
    let ring = ring_with_spare(3, 1).await;
    let s = session(&ring).await;
    key_value_table(&s).await;
    s.refresh_metadata().await.expect("metadata");
    let known = |s: &Session| {
        let mut a: Vec<SocketAddr> = s
            .get_cluster_state()
            .get_nodes_info()
            .iter()
            .map(|n| SocketAddr::new(n.address.ip(), n.address.port()))
            .collect();
        a.sort();
        a
    };
    let all = ring.addresses();
    assert_eq!(known(&s), all[..3], "the spare is not part of the ring yet");
    let insert = s
        .prepare("INSERT INTO tb.kv (k, v) VALUES (?, ?)")
        .await
        .expect("prepare");
    async fn write_all(s: &Session, insert: &scylla::statement::prepared::PreparedStatement) {
        for i in 0..200 {
            s.execute_unpaged(insert, (format!("key-{i}"), i))
                .await
                .expect("insert");
        }
    }
    // Join: the event makes the driver refresh its metadata (its periodic refresh is 60 s).
    ring.set_member(3, true);
    let mut waited = 0;
    while known(&s) != all && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(known(&s), all, "the driver saw the new node");
    // Connections to a new node are opened in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ring.reset_counters();
    write_all(&s, &insert).await;
    let c = ring.counters();
    assert!(
        c[3].writes > 0,
        "the new node owns some keys and gets their writes: {c:?}"
    );
    assert_eq!(
        c.iter().map(|c| c.writes_replica_local).sum::<u64>(),
        200,
        "{c:?}"
    );
    // Leave: the node's ranges move to the next members and the driver drops it.
    ring.set_member(1, false);
    let without: Vec<SocketAddr> = all.iter().copied().filter(|a| *a != all[1]).collect();
    let mut waited = 0;
    while known(&s) != without && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(known(&s), without, "the driver forgot the node that left");
    ring.reset_counters();
    write_all(&s, &insert).await;
    let c = ring.counters();
    assert_eq!(c[1].writes, 0, "nothing goes to a node that left: {c:?}");
    assert_eq!(
        c.iter().map(|c| c.writes_replica_local).sum::<u64>(),
        200,
        "{c:?}"
    );
    let count = count(&s, "tb.kv").await;
    assert_eq!(count, 200, "the data stayed readable through both changes");
}

/// Cassandra's last-write-wins by write timestamp: an older write that arrives later
/// (a retry) does not overwrite a newer one, prepared or not; without USING TIMESTAMP
/// the node's clock stamps the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_write_timestamp_wins_whatever_the_arrival_order() {
    let ring = ring(1).await;
    let s = session(&ring).await;
    key_value_table(&s).await;
    let insert = s
        .prepare("INSERT INTO tb.kv (k, v) VALUES (?, ?) USING TTL ? AND TIMESTAMP ?")
        .await
        .expect("prepare");
    let read = |k: &'static str| {
        let s = &s;
        async move {
            let (v,): (i32,) = s
                .query_unpaged("SELECT v FROM tb.kv WHERE k = ?", (k,))
                .await
                .expect("read")
                .into_rows_result()
                .expect("rows")
                .single_row()
                .expect("one row");
            v
        }
    };
    s.execute_unpaged(&insert, ("a", 2, 0, 2_000i64))
        .await
        .expect("newer");
    s.execute_unpaged(&insert, ("a", 1, 0, 1_000i64))
        .await
        .expect("older, later");
    assert_eq!(read("a").await, 2, "the older write arrived last but lost");
    s.execute_unpaged(&insert, ("a", 3, 0, 3_000i64))
        .await
        .expect("newest");
    assert_eq!(read("a").await, 3);
    // Unprepared, literal timestamp.
    s.query_unpaged("INSERT INTO tb.kv (k, v) VALUES ('b', 5) USING TIMESTAMP 50", &[])
        .await
        .expect("literal");
    s.query_unpaged("INSERT INTO tb.kv (k, v) VALUES ('b', 4) USING TIMESTAMP 40", &[])
        .await
        .expect("literal, older");
    assert_eq!(read("b").await, 5);
    // Unstamped writes take the node's clock (microseconds now), newer than 50.
    s.query_unpaged("INSERT INTO tb.kv (k, v) VALUES ('b', 6)", &[])
        .await
        .expect("unstamped");
    assert_eq!(read("b").await, 6);
}
