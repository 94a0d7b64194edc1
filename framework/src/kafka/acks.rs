//! Which outputs of one partition have been acknowledged, and which source positions that
//! makes safe to commit. Used by every app: the rollup runtime's outputs are broker
//! deliveries, the writer's are rows the cluster acknowledged and dead letters delivered.
//!
//! Each output gets the next sequence number. After some input the caller records
//! "position P is safe once the first N outputs are acknowledged". Acknowledgements may
//! arrive in any order, so they are kept as a contiguous prefix plus early arrivals. A
//! failed output is never acknowledged, so nothing past it becomes safe.

use std::collections::{BTreeSet, VecDeque};

#[derive(Debug)]
pub struct AckedPrefix<P> {
    /// Every sequence number below this is acknowledged.
    acked_below: u64,
    early: BTreeSet<u64>,
    failed: Option<String>,
    /// (outputs that must be acknowledged, the position that is then safe), in order.
    waiting: VecDeque<(u64, P)>,
}

impl<P> Default for AckedPrefix<P> {
    fn default() -> Self {
        Self {
            acked_below: 0,
            early: BTreeSet::new(),
            failed: None,
            waiting: VecDeque::new(),
        }
    }
}

impl<P> AckedPrefix<P> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `position` is safe once the first `needed` outputs are acknowledged. When the last
    /// waiting position needs the same outputs, `merge` combines the two in place instead.
    pub fn push(&mut self, needed: u64, position: P, merge: impl FnOnce(&mut P, P)) {
        match self.waiting.back_mut() {
            Some(last) if last.0 == needed => merge(&mut last.1, position),
            _ => self.waiting.push_back((needed, position)),
        }
    }

    /// Output `seq` was acknowledged.
    pub fn ack(&mut self, seq: u64) {
        if seq == self.acked_below {
            self.acked_below += 1;
            while self.early.first() == Some(&self.acked_below) {
                self.early.pop_first();
                self.acked_below += 1;
            }
        } else if seq > self.acked_below {
            self.early.insert(seq);
        }
    }

    /// Output `seq` failed for good: nothing from it on becomes safe.
    pub fn fail(&mut self, reason: String) {
        self.failed.get_or_insert(reason);
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The oldest waiting position whose outputs are all acknowledged, removed.
    pub fn pop_safe(&mut self) -> Option<P> {
        match self.waiting.front() {
            Some(&(needed, _)) if needed <= self.acked_below => self.waiting.pop_front().map(|(_, p)| p),
            _ => None,
        }
    }

    /// Outputs among the first `produced` not yet acknowledged.
    pub fn unacked(&self, produced: u64) -> u64 {
        produced.saturating_sub(self.acked_below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(a: &mut AckedPrefix<i64>) -> Vec<i64> {
        std::iter::from_fn(|| a.pop_safe()).collect()
    }

    #[test]
    fn positions_become_safe_in_order_once_their_outputs_are_acked() {
        let mut a = AckedPrefix::new();
        let keep_later = |last: &mut i64, new: i64| *last = (*last).max(new);
        a.push(0, 10, keep_later);
        a.push(2, 20, keep_later);
        a.push(2, 25, keep_later); // same outputs: merged
        a.push(3, 30, keep_later);
        assert_eq!(drain(&mut a), vec![10]);
        a.ack(1); // out of order
        assert_eq!(drain(&mut a), Vec::<i64>::new());
        a.ack(0);
        assert_eq!(drain(&mut a), vec![25]);
        assert_eq!(a.unacked(3), 1);
        a.ack(2);
        assert_eq!(drain(&mut a), vec![30]);
        a.ack(2); // a duplicate report changes nothing
        assert_eq!(a.unacked(3), 0);
    }

    #[test]
    fn a_failed_output_is_never_passed() {
        let mut a = AckedPrefix::new();
        a.push(1, 5, |_, _| {});
        a.push(2, 9, |_, _| {});
        a.ack(0);
        a.fail("timed out".into());
        assert_eq!(drain(&mut a), vec![5]);
        assert_eq!(a.failure(), Some("timed out"));
        a.ack(2);
        assert_eq!(drain(&mut a), Vec::<i64>::new(), "output 1 never arrived");
    }
}
