//! RESULT bodies: void, rows (with paging), set keyspace, schema change.

use super::frame::Writer;
use super::handlers::*;
use super::storage::{Outcome, RowSet};

pub(super) fn result_body(outcome: Outcome, p: &Params) -> Vec<u8> {
    let mut w = Writer::new();
    match outcome {
        Outcome::Void => {
            w.int(0x0001);
        }
        Outcome::SetKeyspace(ks) => {
            w.int(0x0003).string(&ks);
        }
        Outcome::SchemaChange {
            change,
            target,
            keyspace,
            table,
        } => {
            w.int(0x0005).string(change).string(target).string(&keyspace);
            if let Some(t) = table {
                w.string(&t);
            }
        }
        Outcome::Rows(set) => rows(&mut w, set, p),
    }
    w.buf
}

pub(super) fn rows(w: &mut Writer, set: RowSet, p: &Params) {
    let RowSet {
        keyspace,
        table,
        columns,
        rows,
    } = set;
    let start = p.paging_state.min(rows.len());
    let end = p.page_size.map_or(rows.len(), |n| (start + n).min(rows.len()));
    let more = end < rows.len();
    let mut flags = if p.skip_metadata { 0x0004 } else { 0x0001 };
    if more {
        flags |= 0x0002;
    }
    w.int(0x0002).int(flags).int(columns.len() as i32);
    if more {
        w.bytes(Some(&(end as u64).to_be_bytes()));
    }
    if !p.skip_metadata {
        w.string(&keyspace).string(&table);
        for (n, t) in &columns {
            w.string(n);
            t.write_option(w);
        }
    }
    w.int((end - start) as i32);
    for row in &rows[start..end] {
        for cell in row {
            w.bytes(cell.as_deref());
        }
    }
}
