//! Per-partition ledger tying source offsets to output acknowledgements.
//!
//! Each output a partition produces gets the next sequence number. After processing a
//! batch the worker records "offset N is done once the first S outputs are acked".
//! Delivery reports may arrive out of order across output topics, so acks are tracked as
//! a contiguous prefix plus a small set of early arrivals. The committable offset is the
//! last checkpoint whose outputs are all acknowledged. A failed delivery is never acked, so
//! commits stop right before it and the partition is reprocessed from there after a restart.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use crate::pipeline::CoarseDraft;
use crate::replay::Plan;

/// Trigger entries kept before old ones are dropped (one per window close, so this is
/// months of 5-minute windows).
const MAX_ROLLUP_TRIGGERS: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    /// Every sequence number below this is acknowledged.
    acked_below: u64,
    early: BTreeSet<u64>,
    failed: Option<String>,
    /// (outputs that must be acked, the plan at that point), in order.
    checkpoints: VecDeque<(u64, Plan, Option<CoarseDraft>)>,
    /// Highest offset known safe to commit, with its plan.
    safe: Option<Plan>,
    /// Offset last handed to a commit request.
    sent: Option<i64>,
    /// Already committed before this ledger began (a resumed partition): never commit at
    /// or below it, so replay does not move the group's offset backwards.
    floor: Option<i64>,
    /// Source offset → first rollups-topic offset its rollups were delivered at.
    rollup_triggers: BTreeMap<i64, i64>,
    /// One past the highest rollups-topic offset delivered (or known from a restored plan).
    rollups_end: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<State>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger for a partition resumed at `committed`: nothing at or below it is
    /// committed again, so replay never moves the group's offset backwards.
    pub fn resuming_at(committed: Option<i64>) -> Self {
        let ledger = Self::default();
        ledger.lock().floor = committed;
        ledger
    }

    /// Where the rollups topic ended for the state this ledger's run resumed from.
    pub fn with_rollups_end(self, end: Option<i64>) -> Self {
        self.lock().rollups_end = end;
        self
    }

    /// A rollup produced for source offset `trigger` was stored at `offset`.
    pub fn rollup_delivered(&self, trigger: i64, offset: i64) {
        let mut s = self.lock();
        let first = s.rollup_triggers.entry(trigger).or_insert(offset);
        *first = (*first).min(offset);
        s.rollups_end = Some(s.rollups_end.map_or(offset + 1, |e| e.max(offset + 1)));
        if s.rollup_triggers.len() > MAX_ROLLUP_TRIGGERS
            && let Some((&oldest, _)) = s.rollup_triggers.first_key_value()
        {
            s.rollup_triggers.remove(&oldest);
        }
    }

    pub fn rollups_end(&self) -> Option<i64> {
        self.lock().rollups_end
    }

    /// The first rollups-topic offset of rows located by `draft` and the topic's end, once
    /// every output they depend on is delivered; `None` if they cannot be located.
    pub fn locate(&self, trigger: Option<i64>, topic: Option<i64>) -> Option<(i64, i64)> {
        let s = self.lock();
        Self::locate_in(&s, trigger, topic)
    }

    fn locate_in(s: &State, trigger: Option<i64>, topic: Option<i64>) -> Option<(i64, i64)> {
        let mut from = topic;
        if let Some(t) = trigger {
            // Outputs of later source offsets come later in the topic; the minimum covers
            // any reordering between them.
            let at = s.rollup_triggers.range(t..).map(|(_, o)| *o).min()?;
            from = Some(from.map_or(at, |f| f.min(at)));
        }
        Some((from?, s.rollups_end?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned ledger means a worker panicked mid-update; the data is still a valid
        // (conservative) prefix, so keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker finished everything before `plan.next_offset`, having produced
    /// `produced` outputs in total so far; `coarse` is completed once those are delivered.
    pub fn checkpoint(&self, produced: u64, plan: Plan, coarse: Option<CoarseDraft>) {
        let mut s = self.lock();
        match s.checkpoints.back_mut() {
            Some(last) if last.0 == produced => {
                if plan.next_offset >= last.1.next_offset {
                    last.1 = plan;
                    last.2 = coarse;
                }
            }
            _ => s.checkpoints.push_back((produced, plan, coarse)),
        }
    }

    /// A delivery report for output `seq`.
    pub fn ack(&self, seq: u64, result: Result<(), String>) {
        let mut s = self.lock();
        if let Err(e) = result {
            s.failed.get_or_insert(e);
            return;
        }
        if seq == s.acked_below {
            s.acked_below += 1;
            while s.early.first() == Some(&s.acked_below) {
                s.early.pop_first();
                s.acked_below += 1;
            }
        } else if seq > s.acked_below {
            s.early.insert(seq);
        }
    }

    /// The first delivery error, if any.
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Advances the safe point over checkpoints whose outputs are all acknowledged.
    pub fn safe_plan(&self) -> Option<Plan> {
        let mut s = self.lock();
        // A failed output is never acked, so the prefix stops right before it.
        while let Some(&(needed, mut plan, coarse)) = s.checkpoints.front() {
            if needed > s.acked_below {
                break;
            }
            // Every output before the plan is delivered, so its rows can be located now.
            plan.coarse = coarse
                .and_then(|d| Self::locate_in(&s, d.trigger, d.topic).map(|(from, end)| d.locate(from, end)));
            s.safe = Some(plan);
            s.checkpoints.pop_front();
        }
        s.safe
    }

    pub fn safe_offset(&self) -> Option<i64> {
        self.safe_plan().map(|p| p.next_offset)
    }

    /// The safe offset and its plan if it moved since the last call (or, with `again`,
    /// even if not: an async commit can fail unseen, so it is repeated now and then),
    /// marking it sent.
    pub fn take_commit(&self, again: bool) -> Option<Plan> {
        let safe = self.safe_plan()?;
        let mut s = self.lock();
        if s.floor.is_some_and(|f| safe.next_offset <= f)
            || (!again && s.sent.is_some_and(|sent| sent >= safe.next_offset))
        {
            return None;
        }
        s.sent = Some(safe.next_offset);
        Some(safe)
    }

    /// A commit failed: send the same offset again next time.
    pub fn commit_failed(&self, offset: i64) {
        let mut s = self.lock();
        if s.sent == Some(offset) {
            s.sent = None;
        }
    }

    /// Outputs produced but not yet acknowledged.
    pub fn unacked(&self, produced: u64) -> u64 {
        let s = self.lock();
        produced.saturating_sub(s.acked_below)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Plan {
        Plan::fresh(offset)
    }

    #[test]
    fn commits_only_fully_acknowledged_prefixes() {
        let l = Ledger::new();
        l.checkpoint(0, at(10), None); // offsets 0..10 produced nothing
        assert_eq!(l.take_commit(false), Some(at(10)));
        l.checkpoint(2, at(20), None); // offsets 10..20 produced outputs 0 and 1
        l.checkpoint(3, at(30), None);
        assert_eq!(l.take_commit(false), None);
        l.ack(1, Ok(())); // out of order
        assert_eq!(l.take_commit(false), None);
        l.ack(0, Ok(()));
        assert_eq!(l.take_commit(false), Some(at(20)));
        assert_eq!(l.take_commit(false), None, "nothing new");
        l.ack(2, Ok(()));
        assert_eq!(l.take_commit(false), Some(at(30)));
    }

    #[test]
    fn a_failed_delivery_stops_commits() {
        let l = Ledger::new();
        l.checkpoint(1, at(5), None);
        l.checkpoint(2, at(9), None);
        l.ack(0, Ok(()));
        l.ack(1, Err("timed out".into()));
        assert_eq!(l.safe_offset(), Some(5));
        assert_eq!(l.failure().as_deref(), Some("timed out"));
        l.checkpoint(2, at(12), None);
        assert_eq!(l.safe_offset(), Some(5));
    }

    #[test]
    fn a_resumed_partition_never_commits_behind_its_committed_offset() {
        let l = Ledger::resuming_at(Some(100));
        l.checkpoint(0, at(60), None); // replaying
        assert_eq!(l.take_commit(false), None);
        l.checkpoint(0, at(100), None);
        assert_eq!(l.take_commit(false), None);
        l.checkpoint(0, at(130), None);
        assert_eq!(l.take_commit(false), Some(at(130)));
        assert_eq!(l.take_commit(false), None);
        assert_eq!(l.take_commit(true), Some(at(130)), "repeated on request");
    }

    #[test]
    fn failed_commits_are_retried() {
        let l = Ledger::new();
        l.checkpoint(0, at(7), None);
        assert_eq!(l.take_commit(false), Some(at(7)));
        l.commit_failed(7);
        assert_eq!(l.take_commit(false), Some(at(7)));
    }
}
