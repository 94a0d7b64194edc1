//! BATCH: prepared and unprepared statements, the per-node batch counters (replica-local,
//! spanning several replica sets, largest) and the size warning and failure thresholds.

use std::sync::Mutex;

use super::frame::{Reader, Writer, error_code, opcode};
use super::handlers::*;
use super::parser::{self};
use super::server::*;

pub(super) async fn batch(
    cluster: &Cluster,
    index: usize,
    r: &mut Reader<'_>,
    body_len: usize,
    keyspace: &Mutex<Option<String>>,
) -> Result<(u8, Vec<u8>), CqlError> {
    let _kind = r.byte()?;
    let n = r.short()?;
    let current = lock(keyspace).clone();
    let mut items = Vec::with_capacity(n as usize);
    let mut value_bytes = 0usize;
    for _ in 0..n {
        let (stmt, ks) = match r.byte()? {
            0 => {
                let text = r.long_string()?;
                (
                    parser::parse(&text)
                        .map_err(|e| CqlError::new(error_code::SYNTAX, &e))?
                        .0,
                    current.clone(),
                )
            }
            1 => {
                let id = r.short_bytes()?;
                let found = id
                    .as_slice()
                    .try_into()
                    .ok()
                    .and_then(|id: [u8; 16]| lock(&cluster.prepared).get(&id).cloned());
                match found {
                    Some(p) => (p.statement, p.keyspace),
                    None => {
                        let mut w = Writer::new();
                        w.int(error_code::UNPREPARED)
                            .string("Prepared statement not found")
                            .short_bytes(&id);
                        return Err(CqlError(w.buf));
                    }
                }
            }
            k => {
                return Err(CqlError::new(
                    error_code::PROTOCOL,
                    &format!("bad batch statement kind {k}"),
                ));
            }
        };
        let count = r.short()?;
        let mut values = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let v = r.bytes()?;
            value_bytes += v.as_ref().map_or(0, Vec::len);
            values.push(v);
        }
        if !is_write(&stmt) {
            return Err(CqlError::new(
                error_code::INVALID,
                "Only INSERT statements are allowed in a batch here",
            ));
        }
        items.push((stmt, ks, values));
    }
    let _consistency = r.short()?;
    let node = &cluster.nodes[index];
    let limits = lock(&node.faults).clone();
    {
        let mut c = lock(&node.counters);
        c.batches += 1;
        c.largest_batch_bytes = c.largest_batch_bytes.max(body_len as u64);
        if value_bytes > limits.batch_warn_bytes {
            c.batch_warnings += 1;
        }
    }
    if value_bytes > limits.batch_fail_bytes {
        lock(&node.counters).batches_too_large += 1;
        return Err(CqlError::new(
            error_code::INVALID,
            &format!(
                "Batch too large: {value_bytes} bytes is above the fail threshold of {} bytes",
                limits.batch_fail_bytes
            ),
        ));
    }
    cluster.faults(index, items.len() as u64, true).await?;
    let mut store = lock(&cluster.store);
    let mut replica_sets = Vec::new();
    for (stmt, ks, values) in &items {
        let (target_ks, pk) = store.insert_target(stmt, values, ks.as_deref())?;
        let mut set = store.replicas(&target_ks, &pk);
        set.sort_unstable();
        replica_sets.push(set);
    }
    // Validate everything before applying anything, as a batch is all-or-nothing here.
    for (stmt, ks, values) in &items {
        store.execute(stmt, values, ks.as_deref(), &cluster.view(index))?;
    }
    drop(store);
    let local = replica_sets.iter().all(|s| s.contains(&index));
    replica_sets.sort();
    replica_sets.dedup();
    let mut c = lock(&node.counters);
    c.rows_written += items.len() as u64;
    c.batches_applied += 1;
    c.batches_replica_local += u64::from(local);
    c.batches_multi_replica_set += u64::from(replica_sets.len() > 1);
    let mut w = Writer::new();
    w.int(0x0001);
    Ok((opcode::RESULT, w.buf))
}
