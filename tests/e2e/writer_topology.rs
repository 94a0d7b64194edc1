//! tributary-writer follows the ring's topology: a node joining and one leaving.

use std::time::Duration;

use harness::{CqlRing, committed_and_end, eventually, free_port, metric, py_produce};

use crate::writer::{points, setup_ring, start_writer, wait_written};

/// Batches applied and those of them that were replica-local, from one snapshot of the
/// ring's counters (two reads, or counting batches on arrival, would let a batch in
/// flight between them look non-local).
fn batch_counts(ring: &CqlRing) -> (u64, u64) {
    let counters = ring.counters();
    let sum = |key: &str| counters.iter().map(|n| n[key].as_u64().unwrap_or(0)).sum::<u64>();
    (sum("batches_applied"), sum("batches_replica_local"))
}

fn node_rows(ring: &CqlRing, index: usize) -> u64 {
    ring.counters()[index]["rows_written"].as_u64().unwrap_or(0)
}

#[test]
fn writer_follows_a_node_joining_and_one_leaving() {
    let s = setup_ring(1, false, 1);
    let data = points(40, 150);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let admin = format!("127.0.0.1:{}", free_port());
    // Slow enough that the ring changes twice while the writer works.
    let mut writer = start_writer(&s, &admin, &["--rows-per-sec", "500", "--burst", "64"]);
    let started = eventually(Duration::from_secs(60), || {
        (metric(&admin, "tributary_writer_rows_written_total").unwrap_or(0.0) > 500.0).then_some(())
    });
    assert!(started.is_some(), "{}", writer.log_text());
    assert_eq!(node_rows(&s.ring, 3), 0, "the spare node is outside the ring");

    // Node 4 joins: the writer sends its rows there, in batches it coordinates.
    s.ring.set_member(4, true);
    let joined = eventually(Duration::from_secs(30), || {
        (node_rows(&s.ring, 3) > 0).then_some(())
    });
    assert!(
        joined.is_some(),
        "the new node got no rows: {:?}",
        s.ring.counters()
    );
    std::thread::sleep(Duration::from_secs(1));
    let (b0, l0) = batch_counts(&s.ring);
    std::thread::sleep(Duration::from_secs(2));
    let (b1, l1) = batch_counts(&s.ring);
    assert!(b1 > b0, "the writer kept batching");
    assert_eq!(
        l1 - l0,
        b1 - b0,
        "every batch replica-local after the join: {:?}\n{}",
        s.ring.counters(),
        writer.log_text()
    );

    // Node 2 leaves: its ranges move, the writer stops sending to it and loses nothing.
    s.ring.set_member(2, false);
    std::thread::sleep(Duration::from_secs(1));
    let (left_rows, total) = (node_rows(&s.ring, 1), s.ring.total("rows_written"));
    let (b2, l2) = batch_counts(&s.ring);
    std::thread::sleep(Duration::from_secs(2));
    assert!(s.ring.total("rows_written") > total, "the writer kept writing");
    assert_eq!(
        node_rows(&s.ring, 1),
        left_rows,
        "nothing goes to the node that left"
    );
    let (b3, l3) = batch_counts(&s.ring);
    assert_eq!(
        l3 - l2,
        b3 - b2,
        "every batch replica-local after the leave: {:?}\n{}",
        s.ring.counters(),
        writer.log_text()
    );

    wait_written(&admin, data.len() as u64, &mut writer);
    assert!(
        metric(&admin, "tributary_writer_regrouped_total").unwrap_or(0.0) > 0.0,
        "rows waiting for the rate limiter were regrouped for the new ring"
    );
    assert_eq!(
        s.ring.count(&s.keyspace, "points"),
        data.len() as u64,
        "every row read back"
    );
    assert_eq!(writer.terminate(Duration::from_secs(60)), Some(0));
    let (committed, end) = committed_and_end(s.kafka.brokers(), &s.group, &s.metrics, data.len());
    assert_eq!(committed, end);
}
