//! Write tasks: one group of rows sharing a replica set, written until it succeeds.
//! Retryable errors back off with jitter; a rejected batch is split so only the rows the
//! cluster refuses are dead-lettered; a group whose rows no longer share a replica set
//! (the ring changed while it waited) is split by replica set first; rows of a partition
//! revoked meanwhile are cancelled (the next owner writes them again).

use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tributary::kafka::Backoff;

use crate::batcher::ReplicaSet;
use crate::dead_letter::DeadLetters;
use crate::limiter::Limiter;
use crate::metrics::WriterMetrics;
use crate::partitions::{Partitions, Slot};
use crate::rows::Row;
use crate::sink::{Sink, WriteError};

/// A row, its place in its partition's ledger, and its token.
#[derive(Debug)]
pub struct QueuedRow {
    pub slot: Slot,
    pub row: Row,
    /// None when the driver cannot compute it (the row is then grouped with others
    /// lacking one and routed by the driver; the cluster decides whether it is valid).
    pub token: Option<scylla::routing::Token>,
    /// The ring view its replica set came from.
    pub epoch: u64,
}

/// What a write task needs, shared by all of them.
#[derive(Debug)]
pub struct Writers {
    pub sink: Arc<Sink>,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<WriterMetrics>,
    pub partitions: Arc<Partitions>,
    pub dead_letters: Arc<DeadLetters>,
    pub max_backoff: Duration,
}

/// A group still to write, and whether the rate limiter already admitted its rows.
struct Work {
    replicas: ReplicaSet,
    rows: Vec<QueuedRow>,
    admitted: bool,
}

impl Writers {
    /// Rows given to write tasks and not yet settled (written, dead-lettered or cancelled).
    pub fn in_flight(&self) -> u64 {
        self.metrics.rows_in_flight.get().max(0) as u64
    }

    /// Starts a task that writes `rows`.
    pub fn spawn(self: &Arc<Self>, replicas: ReplicaSet, rows: Vec<QueuedRow>) {
        self.metrics.rows_in_flight.inc_by(rows.len() as i64);
        tokio::spawn(self.clone().write(replicas, rows));
    }

    fn settled(&self, n: usize) {
        self.metrics.rows_in_flight.dec_by(n as i64);
    }

    /// Drops rows of revoked partitions; true if none is left.
    fn cancel_revoked(&self, work: &mut Work) -> bool {
        let before = work.rows.len();
        work.rows.retain(|r| !r.slot.run.is_cancelled());
        let cancelled = before - work.rows.len();
        if cancelled > 0 {
            self.metrics.rows_cancelled.inc_by(cancelled as u64);
            self.settled(cancelled);
        }
        work.rows.is_empty()
    }

    async fn write(self: Arc<Self>, replicas: ReplicaSet, rows: Vec<QueuedRow>) {
        let mut queue = vec![Work {
            replicas,
            rows,
            admitted: false,
        }];
        'groups: while let Some(mut work) = queue.pop() {
            let mut backoff = Backoff::new().with_max(self.max_backoff);
            loop {
                if self.cancel_revoked(&mut work) {
                    continue 'groups;
                }
                if !work.admitted {
                    // Rows whose partition is revoked while they wait give their place up
                    // unspent: the budget goes to rows that will be written.
                    let rows = &work.rows;
                    let all_revoked = || rows.iter().all(|r| r.slot.run.is_cancelled());
                    let admitted = self.limiter.acquire_unless(rows.len() as u32, all_revoked).await;
                    work.admitted = admitted;
                    if self.cancel_revoked(&mut work) {
                        continue 'groups;
                    }
                }
                if let Some(parts) = regroup(&self.sink, &mut work) {
                    self.metrics.regrouped.inc_by(1);
                    queue.extend(parts);
                    continue 'groups;
                }
                let refs: Vec<&Row> = work.rows.iter().map(|p| &p.row).collect();
                let sent = Instant::now();
                let result = self.sink.write(&refs, &work.replicas).await;
                self.metrics.write_latency.observe(sent.elapsed().as_secs_f64());
                match result {
                    Ok(()) => {
                        let n = work.rows.len();
                        self.metrics.rows_written.inc_by(n as u64);
                        self.metrics.batch_rows.observe(n as f64);
                        let kind = if n > 1 {
                            &self.metrics.batches
                        } else {
                            &self.metrics.single_statements
                        };
                        kind.inc_by(1);
                        self.partitions.ack(work.rows.iter().map(|r| &r.slot));
                        self.settled(n);
                        continue 'groups;
                    }
                    Err(WriteError::Retryable { message, overload }) => {
                        self.metrics.retries.inc_by(1);
                        if overload {
                            self.metrics.overload_signals.inc_by(1);
                        }
                        self.limiter.signal(overload);
                        let delay = backoff.next_delay();
                        tracing::debug!(error = %message, ?delay, rows = work.rows.len(), "write failed; retrying");
                        tokio::time::sleep(delay).await;
                        // A retry reaches the cluster again, so it counts against the limit.
                        work.admitted = false;
                    }
                    Err(WriteError::Rejected(reason)) => {
                        if work.rows.len() > 1 {
                            self.metrics.batches_split.inc_by(1);
                            tracing::debug!(
                                reason,
                                rows = work.rows.len(),
                                "batch rejected; writing its rows one by one"
                            );
                            let replicas = work.replicas.clone();
                            queue.extend(work.rows.into_iter().map(|p| Work {
                                replicas: replicas.clone(),
                                rows: vec![p],
                                admitted: false,
                            }));
                        } else if let Some(p) = work.rows.pop() {
                            let slot = &p.slot;
                            tracing::warn!(topic = %slot.run.tp.0, partition = slot.run.tp.1, offset = slot.offset, reason,
                                "row rejected by the cluster; dead-lettered");
                            self.dead_letters.row(p.slot, &p.row, reason);
                            self.settled(1);
                        }
                        continue 'groups;
                    }
                }
            }
        }
    }
}

/// Regroups rows whose replica sets came from an older view of the ring: rows wait in the
/// rate limiter and in retries, and a node may join or leave meanwhile. None when the
/// group is still one replica set under the current view.
fn regroup(sink: &Sink, work: &mut Work) -> Option<Vec<Work>> {
    let epoch = sink.epoch();
    if work.rows.iter().all(|p| p.token.is_none() || p.epoch == epoch) {
        return None;
    }
    let mut groups: HashMap<ReplicaSet, Vec<QueuedRow>> = HashMap::default();
    for mut p in std::mem::take(&mut work.rows) {
        let set = match p.token {
            Some(t) => {
                let (set, e) = sink.replica_set(&p.row.table, t);
                p.epoch = e;
                set
            }
            None => work.replicas.clone(),
        };
        groups.entry(set).or_default().push(p);
    }
    if groups.len() == 1
        && let Some((set, rows)) = groups.drain().next()
    {
        work.replicas = set;
        work.rows = rows;
        return None;
    }
    Some(
        groups
            .into_iter()
            .map(|(replicas, rows)| Work {
                replicas,
                rows,
                admitted: work.admitted,
            })
            .collect(),
    )
}
