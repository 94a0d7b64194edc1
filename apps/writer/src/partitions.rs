//! The partitions this writer owns: for each, the acknowledged prefix of its records
//! (every record becomes one output: a row the cluster acknowledged, or a dead letter
//! delivered), commits confirmed by the broker, and whether it is paused for backpressure.
//! Built on the framework's [`AckedPrefix`] and [`CommitState`], like the rollup runtime.

use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::{Offset, TopicPartitionList};
use tributary::kafka::acks::AckedPrefix;
use tributary::kafka::commits::{CommitState, Resend};

/// A topic partition; topic names are shared strings so a record costs no allocation.
pub type TopicPartition = (Arc<str>, i32);

/// One ownership of a partition by this process. A partition revoked and assigned again
/// gets a new run, so rows of the old one are told apart: they are cancelled.
#[derive(Debug)]
pub struct Run {
    pub tp: TopicPartition,
    generation: u64,
    cancelled: AtomicBool,
}

impl Run {
    /// The partition was revoked: rows of this run still waiting are not written (the
    /// next owner writes them again from the committed offset; upserts are idempotent).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// A record's place in its partition's ledger.
#[derive(Debug, Clone)]
pub struct Slot {
    pub run: Arc<Run>,
    pub offset: i64,
    seq: u64,
}

#[derive(Debug)]
struct Owned {
    run: Arc<Run>,
    acks: AckedPrefix<i64>,
    safe: Option<i64>,
    commit: CommitState,
    /// Records read (= outputs) so far.
    produced: u64,
    /// The next offset to read.
    next: Option<i64>,
    paused: bool,
}

impl Owned {
    fn unacked(&self) -> u64 {
        self.acks.unacked(self.produced)
    }

    fn safe(&mut self) -> Option<i64> {
        while let Some(p) = self.acks.pop_safe() {
            self.safe = Some(p);
        }
        self.safe
    }
}

/// Every partition this process owns, shared by the loop, the write tasks, the
/// dead-letter tasks and the consumer's callbacks.
#[derive(Debug, Default)]
pub struct Partitions {
    owned: Mutex<HashMap<TopicPartition, Owned>>,
    generations: AtomicU64,
}

impl Partitions {
    fn lock(&self) -> MutexGuard<'_, HashMap<TopicPartition, Owned>> {
        // A panicked holder leaves a conservative prefix behind: keep using it.
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owned(&self, tp: TopicPartition, committed: Option<i64>) -> Owned {
        let run = Arc::new(Run {
            tp,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            cancelled: AtomicBool::new(false),
        });
        Owned {
            run,
            acks: AckedPrefix::new(),
            safe: None,
            commit: CommitState::resuming_at(committed),
            produced: 0,
            next: None,
            paused: false,
        }
    }

    /// `tp` is now ours; `committed` is the group's offset for it (never committed
    /// again, so nothing moves the group backwards).
    pub fn assign(&self, tp: TopicPartition, committed: Option<i64>) {
        let owned = self.owned(tp.clone(), committed);
        if let Some(old) = self.lock().insert(tp, owned) {
            old.run.cancelled.store(true, Ordering::Relaxed);
        }
    }

    /// A record at `offset` was read: its output gets the next place in the ledger.
    /// None for a partition this process does not own (a record fetched before a
    /// revoke): it is not ours to write or commit.
    pub fn read(&self, tp: &TopicPartition, offset: i64) -> Option<Slot> {
        let mut owned = self.lock();
        let o = owned.get_mut(tp)?;
        let seq = o.produced;
        o.produced += 1;
        o.acks
            .push(o.produced, offset + 1, |last, new| *last = (*last).max(new));
        o.next = Some(offset + 1);
        Some(Slot {
            run: o.run.clone(),
            offset,
            seq,
        })
    }

    /// The outputs of `slots` were acknowledged; those of revoked runs are ignored.
    pub fn ack<'a>(&self, slots: impl IntoIterator<Item = &'a Slot>) {
        let mut owned = self.lock();
        for slot in slots {
            if let Some(o) = owned.get_mut(&slot.run.tp)
                && o.run.generation == slot.run.generation
            {
                o.acks.ack(slot.seq);
            }
        }
    }

    /// Whether `tp` should be paused now (too many unacknowledged records); marks it.
    pub fn should_pause(&self, tp: &TopicPartition, max_pending: usize) -> Option<u64> {
        let mut owned = self.lock();
        let o = owned.get_mut(tp)?;
        let pending = o.unacked();
        (!o.paused && pending >= max_pending as u64).then(|| {
            o.paused = true;
            pending
        })
    }

    /// Paused partitions that drained below half the limit, marked resumed, with the
    /// offset reading continues at.
    pub fn to_resume(&self, max_pending: usize) -> Vec<(TopicPartition, Option<i64>)> {
        let mut owned = self.lock();
        owned
            .iter_mut()
            .filter(|(_, o)| o.paused && o.unacked() <= max_pending as u64 / 2)
            .map(|(tp, o)| {
                o.paused = false;
                (tp.clone(), o.next)
            })
            .collect()
    }

    /// Rows read and not yet acknowledged, and partitions paused.
    pub fn backlog(&self) -> (u64, u64) {
        let owned = self.lock();
        let pending = owned.values().map(Owned::unacked).sum();
        let paused = owned.values().filter(|o| o.paused).count() as u64;
        (pending, paused)
    }

    /// Acknowledged prefixes to commit now (see [`Resend`]).
    pub fn committable(&self, resend: Resend) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, o) in self.lock().iter_mut() {
            if let Some(safe) = o.safe()
                && o.commit.take(safe, resend)
            {
                let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(safe));
            }
        }
        tpl
    }

    /// Gives up `tps`: their runs are cancelled, and their acknowledged prefixes returned
    /// for the commit at revoke (with `Resend::Unconfirmed`, only those not confirmed).
    pub fn revoke(
        &self,
        tps: impl IntoIterator<Item = TopicPartition>,
        resend: Resend,
    ) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let mut owned = self.lock();
        for tp in tps {
            if let Some(mut o) = owned.remove(&tp) {
                o.run.cancelled.store(true, Ordering::Relaxed);
                if let Some(safe) = o.safe()
                    && o.commit.take(safe, resend)
                {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(safe));
                }
            }
        }
        tpl
    }

    /// The broker's answer to a commit of `offset` for a partition.
    pub fn settle_commit(&self, topic: &str, partition: i32, offset: i64, ok: bool) {
        let mut owned = self.lock();
        if let Some(o) = owned.get_mut(&(Arc::<str>::from(topic), partition)) {
            if ok {
                o.commit.confirmed(offset);
            } else {
                o.commit.failed(offset);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("t".into(), p)
    }

    fn offsets(tpl: &TopicPartitionList) -> Vec<(i32, i64)> {
        tpl.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_acknowledged_prefix_is_committed_and_confirmed_commits_are_not_repeated() {
        let p = Partitions::default();
        p.assign(tp(0), Some(10));
        let slots: Vec<Slot> = (10..15).filter_map(|o| p.read(&tp(0), o)).collect();
        p.ack([&slots[1], &slots[0], &slots[3]]);
        assert_eq!(offsets(&p.committable(Resend::New)), vec![(0, 12)]);
        assert!(offsets(&p.committable(Resend::New)).is_empty(), "sent already");
        p.settle_commit("t", 0, 12, false);
        assert_eq!(
            offsets(&p.committable(Resend::New)),
            vec![(0, 12)],
            "failed: sent again"
        );
        p.settle_commit("t", 0, 12, true);
        assert!(
            offsets(&p.committable(Resend::Unconfirmed)).is_empty(),
            "confirmed"
        );
        p.ack([&slots[2]]);
        assert_eq!(offsets(&p.committable(Resend::New)), vec![(0, 14)]);
        assert_eq!(p.backlog(), (1, 0));
    }

    #[test]
    fn a_revoked_run_is_cancelled_and_its_late_acks_do_not_count_for_the_next_run() {
        let p = Partitions::default();
        p.assign(tp(1), None);
        let old = p.read(&tp(1), 0).expect("owned");
        let done = p.read(&tp(1), 1).expect("owned");
        p.ack([&done]);
        assert!(
            offsets(&p.revoke([tp(1)], Resend::Always)).is_empty(),
            "offset 0 is not acknowledged"
        );
        assert!(old.run.is_cancelled());
        p.assign(tp(1), None);
        assert!(p.read(&tp(3), 0).is_none(), "not ours");
        let new = p.read(&tp(1), 0).expect("owned");
        p.ack([&old]); // a write of the old run finishing late
        assert!(offsets(&p.committable(Resend::New)).is_empty());
        assert!(!new.run.is_cancelled());
        p.ack([&new]);
        assert_eq!(offsets(&p.committable(Resend::New)), vec![(1, 1)]);
    }

    #[test]
    fn partitions_pause_when_behind_and_resume_where_reading_stopped() {
        let p = Partitions::default();
        p.assign(tp(2), None);
        let slots: Vec<Slot> = (0..4).filter_map(|o| p.read(&tp(2), o)).collect();
        assert_eq!(slots.len(), 4);
        assert_eq!(p.should_pause(&tp(2), 4), Some(4));
        assert_eq!(p.should_pause(&tp(2), 4), None, "paused already");
        assert!(p.to_resume(4).is_empty());
        p.ack(&slots[..2]);
        assert_eq!(p.to_resume(4), vec![(tp(2), Some(4))]);
        assert_eq!(p.backlog(), (2, 0));
    }
}
