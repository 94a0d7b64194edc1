//! Token-aware micro-batching, as plain synchronous code: rows are grouped by their exact
//! replica set (sorted node ids, compared in full, never a hash that could collide), and
//! a group is taken as a batch when it reaches the row or byte limit, or when its oldest
//! row has waited `linger`.

use foldhash::HashMap;
use std::time::{Duration, Instant};

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_rows: usize,
    /// Stay under the cluster's batch-size warning threshold (Cassandra: 5 KiB).
    pub max_bytes: usize,
    pub linger: Duration,
}

/// A replica set: node ids sorted, so equal sets compare equal. Shared, because every row
/// of a group carries it and a clone must not allocate.
pub type ReplicaSet = std::sync::Arc<[u128]>;

#[derive(Debug)]
struct Group<R> {
    rows: Vec<R>,
    bytes: usize,
    since: Instant,
}

/// Groups rows by replica set until a group is ready.
#[derive(Debug)]
pub struct Batcher<R> {
    limits: BatchLimits,
    groups: HashMap<ReplicaSet, Group<R>>,
    rows: usize,
}

impl<R> Batcher<R> {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            groups: HashMap::default(),
            rows: 0,
        }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Rows waiting in groups.
    pub fn pending(&self) -> usize {
        self.rows
    }

    /// Adds a row of `bytes` bytes. If it would push its group over a limit, the group is
    /// returned first as a full batch and the row starts a new group.
    pub fn push(
        &mut self,
        replicas: ReplicaSet,
        row: R,
        bytes: usize,
        now: Instant,
    ) -> Option<(ReplicaSet, Vec<R>)> {
        self.rows += 1;
        let limits = self.limits;
        let mut full = None;
        if let Some(g) = self.groups.get_mut(&replicas)
            && !g.rows.is_empty()
            && g.bytes + bytes > limits.max_bytes
        {
            let rows = std::mem::replace(&mut g.rows, Vec::with_capacity(limits.max_rows));
            self.rows -= rows.len();
            g.bytes = 0;
            g.since = now;
            full = Some((replicas.clone(), rows));
        }
        let g = self.groups.entry(replicas.clone()).or_insert_with(|| Group {
            rows: Vec::with_capacity(limits.max_rows),
            bytes: 0,
            since: now,
        });
        if g.rows.is_empty() {
            g.since = now;
        }
        g.rows.push(row);
        g.bytes += bytes;
        if full.is_none() && (g.rows.len() >= limits.max_rows || g.bytes >= limits.max_bytes) {
            let rows = std::mem::replace(&mut g.rows, Vec::with_capacity(limits.max_rows));
            self.rows -= rows.len();
            g.bytes = 0;
            return Some((replicas, rows));
        }
        full
    }

    /// Takes every group whose oldest row has waited at least `linger` (all groups when
    /// `force`).
    pub fn take_due(&mut self, now: Instant, force: bool) -> Vec<(ReplicaSet, Vec<R>)> {
        let linger = self.limits.linger;
        let mut out = Vec::new();
        for (set, g) in self.groups.iter_mut() {
            if !g.rows.is_empty() && (force || now.duration_since(g.since) >= linger) {
                let rows = std::mem::take(&mut g.rows);
                self.rows -= rows.len();
                g.bytes = 0;
                out.push((set.clone(), rows));
            }
        }
        // Forget empty groups so a changing ring does not leave stale keys behind.
        self.groups.retain(|_, g| !g.rows.is_empty());
        out
    }

    /// When the next group becomes due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter(|g| !g.rows.is_empty())
            .map(|g| g.since + self.limits.linger)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(ids: &[u128]) -> ReplicaSet {
        ids.into()
    }

    fn limits() -> BatchLimits {
        BatchLimits {
            max_rows: 4,
            max_bytes: 100,
            linger: Duration::from_millis(10),
        }
    }

    #[test]
    fn flushes_on_rows_bytes_and_linger() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits());
        let a = set(&[1, 2, 3]);
        for i in 0..3 {
            assert!(b.push(a.clone(), i, 10, t0).is_none());
        }
        let (set, rows) = b.push(a.clone(), 3, 10, t0).expect("four rows fill a batch");
        assert_eq!((set, rows), (a.clone(), vec![0, 1, 2, 3]));
        // Bytes: 60 + 60 > 100, so the first row goes out alone before the second is added.
        assert!(b.push(a.clone(), 10, 60, t0).is_none());
        let (_, rows) = b.push(a.clone(), 11, 60, t0).expect("byte limit");
        assert_eq!(rows, vec![10]);
        assert_eq!(b.pending(), 1);
        assert!(b.take_due(t0 + Duration::from_millis(5), false).is_empty());
        let due = b.take_due(t0 + Duration::from_millis(10), false);
        assert_eq!(due, vec![(a, vec![11])]);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn different_replica_sets_never_share_a_batch() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits());
        b.push(set(&[1, 2, 3]), "a", 1, t0);
        b.push(set(&[1, 2, 4]), "b", 1, t0);
        b.push(set(&[1, 2, 3]), "c", 1, t0);
        let mut due = b.take_due(t0, true);
        due.sort();
        assert_eq!(
            due,
            vec![(set(&[1, 2, 3]), vec!["a", "c"]), (set(&[1, 2, 4]), vec!["b"])]
        );
    }

    proptest! {
        /// Every row comes out exactly once, in a batch of its own replica set, within the
        /// limits (a single oversized row may stand alone).
        #[test]
        fn rows_are_conserved_and_batches_respect_limits(rows in prop::collection::vec((0u128..5, 1usize..60), 0..300)) {
            let t0 = Instant::now();
            let mut b = Batcher::new(limits());
            let mut out = Vec::new();
            for (i, (s, bytes)) in rows.iter().enumerate() {
                if let Some(batch) = b.push(set(&[*s, s + 10]), (i, *s, *bytes), *bytes, t0) {
                    out.push(batch);
                }
            }
            out.extend(b.take_due(t0, true));
            let mut seen: Vec<usize> = Vec::new();
            for (ids, batch) in &out {
                prop_assert!(batch.len() <= 4 && !batch.is_empty());
                let bytes: usize = batch.iter().map(|r| r.2).sum();
                prop_assert!(bytes <= 100 || batch.len() == 1, "{} bytes in {} rows", bytes, batch.len());
                for r in batch {
                    prop_assert_eq!(&ids[..], &[r.1, r.1 + 10]);
                    seen.push(r.0);
                }
            }
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..rows.len()).collect::<Vec<_>>());
            prop_assert_eq!(b.pending(), 0);
        }
    }
}
