//! Replica locality where it has to be earned: a ring of 6 nodes at RF 3, so no node
//! replicates every row. The check that every batch went to a replica of all its rows
//! comes with its control: the same rows batched without regard to replica sets
//! (`batch.by_replica_set = false`) must fail it.

use std::time::Duration;

use harness::{free_port, py_produce, unique};

use crate::writer::{Setup, points, setup_nodes, start_writer_env, wait_written};

/// (batches applied, replica-local, spanning several replica sets) over every node.
fn batch_totals(s: &Setup) -> (u64, u64, u64) {
    (
        s.ring.total("batches_applied"),
        s.ring.total("batches_replica_local"),
        s.ring.total("batches_multi_replica_set"),
    )
}

/// Writes every point with a writer of its own group; the ring's batch counters it added.
fn write_all(s: &Setup, rows: u64, by_replica_set: &str) -> (u64, u64, u64) {
    let before = batch_totals(s);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut writer = start_writer_env(
        s,
        &admin,
        &[],
        &[("TRIBUTARY_BATCH_BY_REPLICA_SET", by_replica_set)],
    );
    wait_written(&admin, rows, &mut writer);
    assert_eq!(
        writer.terminate(Duration::from_secs(60)),
        Some(0),
        "{}",
        writer.log_text()
    );
    let after = batch_totals(s);
    (after.0 - before.0, after.1 - before.1, after.2 - before.2)
}

#[test]
fn on_six_nodes_at_rf3_every_batch_is_replica_local_and_the_control_is_not() {
    let s = setup_nodes(3, 6);
    let data = points(60, 40);
    py_produce(s.kafka.brokers(), &s.metrics, &data);
    let rows = data.len() as u64;

    let (batches, local, mixed) = write_all(&s, rows, "true");
    assert!(batches > 20, "{batches} batches");
    assert_eq!(
        (local, mixed),
        (batches, 0),
        "token-aware: every batch replica-local"
    );

    // The same rows again under another group, batched wherever they live.
    let s = Setup {
        group: unique("writer-blind"),
        ..s
    };
    let (batches, local, mixed) = write_all(&s, rows, "false");
    assert!(batches > 20, "{batches} batches");
    assert!(
        (local as f64) < 0.5 * batches as f64 && mixed > 0,
        "without replica sets the check must fail: {local} of {batches} replica-local, {mixed} mixed"
    );
}
