//! Per-partition ledger of the rollup runtime: source offsets tied to output
//! acknowledgements ([`AckedPrefix`]) and commits confirmed by the broker
//! ([`CommitState`]), plus where the rollups of each source offset landed so a plan can
//! say where its open coarse windows' rows are.
//!
//! A failed delivery is never acked, so commits stop right before it and the partition is
//! reprocessed from there after a restart.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::kafka::acks::AckedPrefix;
use crate::kafka::commits::{CommitState, Resend};
use crate::pipeline::CoarseDraft;
use crate::replay::Plan;

/// Trigger entries kept before old ones are dropped (one per window close, so this is
/// months of 5-minute windows).
const MAX_ROLLUP_TRIGGERS: usize = 100_000;

#[derive(Debug, Default)]
struct LedgerState {
    prefix: AckedPrefix<(Plan, Option<CoarseDraft>)>,
    /// Highest offset known safe to commit, with its plan.
    safe: Option<Plan>,
    commit: CommitState,
    /// Source offset → first rollups-topic offset its rollups were delivered at.
    rollup_triggers: BTreeMap<i64, i64>,
    /// One past the highest rollups-topic offset delivered (or known from a restored plan).
    rollups_end: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<LedgerState>,
}

impl Ledger {
    pub fn new() -> Self {
        Self::default()
    }

    /// A ledger for a partition resumed at `committed`: nothing at or below it is
    /// committed again, so replay never moves the group's offset backwards.
    pub fn resuming_at(committed: Option<i64>) -> Self {
        let ledger = Self::default();
        ledger.lock().commit = CommitState::resuming_at(committed);
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

    fn locate_in(s: &LedgerState, trigger: Option<i64>, topic: Option<i64>) -> Option<(i64, i64)> {
        let mut from = topic;
        if let Some(t) = trigger {
            // Outputs of later source offsets come later in the topic; the minimum covers
            // any reordering between them.
            let at = s.rollup_triggers.range(t..).map(|(_, o)| *o).min()?;
            from = Some(from.map_or(at, |f| f.min(at)));
        }
        Some((from?, s.rollups_end?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        // A poisoned ledger means a worker panicked mid-update; the data is still a valid
        // (conservative) prefix, so keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker finished everything before `plan.next_offset`, having produced
    /// `produced` outputs in total so far; `coarse` is completed once those are delivered.
    pub fn checkpoint(&self, produced: u64, plan: Plan, coarse: Option<CoarseDraft>) {
        self.lock().prefix.push(produced, (plan, coarse), |last, new| {
            if new.0.next_offset >= last.0.next_offset {
                *last = new;
            }
        });
    }

    /// A delivery report for output `seq`; true if it is the ledger's first failure.
    pub fn ack(&self, seq: u64, result: Result<(), String>) -> bool {
        let mut s = self.lock();
        match result {
            Ok(()) => {
                s.prefix.ack(seq);
                false
            }
            Err(e) => {
                let first = s.prefix.failure().is_none();
                s.prefix.fail(e);
                first
            }
        }
    }

    /// The first delivery error, if any.
    pub fn failure(&self) -> Option<String> {
        self.lock().prefix.failure().map(str::to_owned)
    }

    /// Advances the safe point over checkpoints whose outputs are all acknowledged.
    pub fn safe_plan(&self) -> Option<Plan> {
        let mut s = self.lock();
        while let Some((mut plan, coarse)) = s.prefix.pop_safe() {
            // Every output before the plan is delivered, so its rows can be located now.
            plan.coarse = coarse
                .and_then(|d| Self::locate_in(&s, d.trigger, d.topic).map(|(from, end)| d.locate(from, end)));
            s.safe = Some(plan);
        }
        s.safe
    }

    pub fn safe_offset(&self) -> Option<i64> {
        self.safe_plan().map(|p| p.next_offset)
    }

    /// The safe offset and its plan if it is to be committed now (see [`Resend`]),
    /// marking it sent.
    pub fn take_commit(&self, resend: Resend) -> Option<Plan> {
        let safe = self.safe_plan()?;
        self.lock().commit.take(safe.next_offset, resend).then_some(safe)
    }

    /// The broker confirmed a commit of `offset`.
    pub fn commit_confirmed(&self, offset: i64) {
        self.lock().commit.confirmed(offset);
    }

    /// A commit failed: send the same offset again next time.
    pub fn commit_failed(&self, offset: i64) {
        self.lock().commit.failed(offset);
    }

    /// Outputs produced but not yet acknowledged.
    pub fn unacked(&self, produced: u64) -> u64 {
        self.lock().prefix.unacked(produced)
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
        assert_eq!(l.take_commit(Resend::New), Some(at(10)));
        l.checkpoint(2, at(20), None); // offsets 10..20 produced outputs 0 and 1
        l.checkpoint(3, at(30), None);
        assert_eq!(l.take_commit(Resend::New), None);
        l.ack(1, Ok(())); // out of order
        assert_eq!(l.take_commit(Resend::New), None);
        l.ack(0, Ok(()));
        assert_eq!(l.take_commit(Resend::New), Some(at(20)));
        assert_eq!(l.take_commit(Resend::New), None, "nothing new");
        l.ack(2, Ok(()));
        assert_eq!(l.take_commit(Resend::New), Some(at(30)));
    }

    #[test]
    fn a_failed_delivery_stops_commits() {
        let l = Ledger::new();
        l.checkpoint(1, at(5), None);
        l.checkpoint(2, at(9), None);
        assert!(!l.ack(0, Ok(())));
        assert!(l.ack(1, Err("timed out".into())), "the first failure is reported");
        assert!(!l.ack(2, Err("timed out too".into())), "later ones are not");
        assert_eq!(l.safe_offset(), Some(5));
        assert_eq!(l.failure().as_deref(), Some("timed out"));
        l.checkpoint(2, at(12), None);
        assert_eq!(l.safe_offset(), Some(5));
    }

    #[test]
    fn a_resumed_partition_never_commits_behind_its_committed_offset() {
        let l = Ledger::resuming_at(Some(100));
        l.checkpoint(0, at(60), None); // replaying
        assert_eq!(l.take_commit(Resend::New), None);
        l.checkpoint(0, at(100), None);
        assert_eq!(l.take_commit(Resend::New), None);
        l.checkpoint(0, at(130), None);
        assert_eq!(l.take_commit(Resend::New), Some(at(130)));
        assert_eq!(l.take_commit(Resend::New), None);
        assert_eq!(
            l.take_commit(Resend::Always),
            Some(at(130)),
            "repeated on request"
        );
    }

    #[test]
    fn failed_commits_are_retried() {
        let l = Ledger::new();
        l.checkpoint(0, at(7), None);
        assert_eq!(l.take_commit(Resend::New), Some(at(7)));
        l.commit_failed(7);
        assert_eq!(l.take_commit(Resend::New), Some(at(7)));
    }
}
