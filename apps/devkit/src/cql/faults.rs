//! Fault injection per node (latency, Overloaded, WriteTimeout, Unavailable, a rows/s
//! cap) and running statements against the shared store.

use std::time::{Duration, Instant};

use std::sync::Mutex;

use super::frame::{Writer, error_code};
use super::handlers::*;
use super::parser::Statement;
use super::results::*;
use super::server::*;
use super::storage::{NodeView, Outcome};

impl Cluster {
    pub(super) fn roll(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = lock(&self.rng);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        ((*x >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Latency, injected errors and the throughput cap for a request touching user data.
    pub(super) async fn faults(&self, index: usize, rows: u64, write: bool) -> Result<(), CqlError> {
        let node = &self.nodes[index];
        let f = lock(&node.faults).clone();
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if write && self.roll(f.unavailable) {
            lock(&node.counters).unavailable_sent += 1;
            let mut w = Writer::new();
            w.int(error_code::UNAVAILABLE)
                .string("Cannot achieve consistency level (injected)")
                .short(0x0001)
                .int(1)
                .int(0);
            return Err(CqlError(w.buf));
        }
        if write && self.roll(f.write_timeout) {
            lock(&node.counters).write_timeouts_sent += 1;
            let mut w = Writer::new();
            w.int(error_code::WRITE_TIMEOUT)
                .string("Operation timed out (injected)")
                .short(0x0001)
                .int(0)
                .int(1)
                .string("SIMPLE");
            return Err(CqlError(w.buf));
        }
        if self.roll(f.overloaded) {
            lock(&node.counters).overloaded_sent += 1;
            return Err(CqlError::new(error_code::OVERLOADED, "Overloaded (injected)"));
        }
        if write && f.max_rows_per_sec > 0 {
            let mut window = lock(&node.window);
            if window.0.elapsed() >= Duration::from_secs(1) {
                *window = (Instant::now(), 0);
            }
            if window.1 + rows > f.max_rows_per_sec {
                drop(window);
                let mut c = lock(&node.counters);
                c.throttled += 1;
                c.overloaded_sent += 1;
                return Err(CqlError::new(
                    error_code::OVERLOADED,
                    "Overloaded: node throughput cap reached",
                ));
            }
            window.1 += rows;
        }
        Ok(())
    }

    pub(super) fn view(&self, index: usize) -> NodeView {
        NodeView {
            index,
            ..self.view.clone()
        }
    }

    /// Runs a statement and counts it; `write` counters only for INSERTs.
    pub(super) fn run(
        &self,
        index: usize,
        stmt: &Statement,
        p: &Params,
        current: Option<String>,
        keyspace: &Mutex<Option<String>>,
    ) -> Result<Vec<u8>, CqlError> {
        let mut store = lock(&self.store);
        let local = if is_write(stmt) {
            let (ks, pk) = store.insert_target(stmt, &p.values, current.as_deref())?;
            Some(store.replicas(&ks, &pk).contains(&index))
        } else {
            None
        };
        let outcome = store.execute(stmt, &p.values, current.as_deref(), &self.view(index))?;
        drop(store);
        if let Some(local) = local {
            let mut c = lock(&self.nodes[index].counters);
            c.rows_written += 1;
            c.writes += 1;
            c.writes_replica_local += u64::from(local);
        }
        if let Outcome::SetKeyspace(ks) = &outcome {
            *lock(keyspace) = Some(ks.clone());
        }
        Ok(result_body(outcome, p))
    }
}
