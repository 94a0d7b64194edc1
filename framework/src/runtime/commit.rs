//! Commits of the rollup runtime: each partition's acknowledged offset with its replay plan
//! in the commit metadata (and in the plan topic when the broker drops metadata), marked
//! done only when the broker confirms it.

use std::sync::mpsc::TrySendError;

use rdkafka::consumer::{BaseConsumer, CommitMode};
use rdkafka::{Offset, TopicPartitionList};

use super::Tp;
use super::context::ConsumerCtx;
use super::coordinator::{Coordinator, lock};
use super::plans::PlanStore;
use crate::kafka::commits::{self, Resend};
use crate::replay::Plan;

impl Coordinator {
    /// Commits offsets with their plans in the metadata (and in the plan topic when the
    /// broker drops metadata).
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<ConsumerCtx>,
        plans: &[(Tp, Plan)],
        mode: CommitMode,
    ) {
        if plans.is_empty() {
            return;
        }
        let tpl = self.offsets(plans);
        match mode {
            CommitMode::Sync => self.commit_now(consumer, &tpl),
            // The committer thread waits for the broker; if it is still busy with an
            // earlier commit, these offsets count as failed and are sent again later.
            CommitMode::Async => {
                let committer = lock(&self.committer).clone();
                match committer {
                    Some(tx) => {
                        if let Err(TrySendError::Full(tpl) | TrySendError::Disconnected(tpl)) =
                            tx.try_send(tpl)
                        {
                            commits::settle_unsent(&tpl, |t, p, o| self.settle_commit(t, p, o, false));
                        }
                    }
                    None => self.commit_now(consumer, &tpl),
                }
            }
        }
    }

    /// The commit at shutdown: sent again with backoff until the broker confirms it, for
    /// at most `runtime.drain_timeout`.
    pub(super) fn commit_final(&self, consumer: &BaseConsumer<ConsumerCtx>, plans: &[(Tp, Plan)]) {
        if plans.is_empty() {
            return;
        }
        let tpl = self.with_plans_written(&self.offsets(plans));
        let settle = |t: &str, p, o, ok| self.settle_commit(t, p, o, ok);
        if let Err(e) = commits::commit_final(consumer, &tpl, self.drain_timeout, settle) {
            tracing::error!(error = %e, "final offset commit failed; the next start replays from the last confirmed commit");
        }
    }

    /// The offsets to commit with their plans as metadata; the plans also go to the plan
    /// topic (when the broker drops metadata) and the plan history.
    fn offsets(&self, plans: &[(Tp, Plan)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (tp, plan) in plans {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(plan.next_offset));
            if let Some(mut el) = tpl.find_partition(&tp.topic, tp.partition) {
                el.set_metadata(plan.encode());
            }
            if let PlanStore::Topic(store) = &self.plans {
                store.write_for_commit(&tp.topic, tp.partition, plan);
            }
            self.history.offer(&tp.topic, tp.partition, plan);
        }
        tpl
    }

    /// `tpl` without the partitions whose plans did not reach the plan topic (where plans
    /// are kept there), which are settled as failed so they are sent again with new plans.
    fn with_plans_written(&self, tpl: &TopicPartitionList) -> TopicPartitionList {
        let PlanStore::Topic(store) = &self.plans else {
            return tpl.clone();
        };
        let elements = tpl.elements();
        let partitions: Vec<(&str, i32)> = elements.iter().map(|el| (el.topic(), el.partition())).collect();
        let failed = store.confirm(&partitions, self.drain_timeout);
        if failed.is_empty() {
            return tpl.clone();
        }
        let mut kept = TopicPartitionList::new();
        for el in elements {
            let Offset::Offset(offset) = el.offset() else {
                continue;
            };
            if failed.contains(&(el.topic().to_owned(), el.partition())) {
                self.settle_commit(el.topic(), el.partition(), offset, false);
            } else if kept
                .add_partition_offset(el.topic(), el.partition(), el.offset())
                .is_ok()
                && let Some(mut added) = kept.find_partition(el.topic(), el.partition())
            {
                added.set_metadata(el.metadata());
            }
        }
        kept
    }

    /// Commits `tpl` once its plans are written, waiting for the broker, and settles each
    /// partition.
    pub(super) fn commit_now(&self, consumer: &BaseConsumer<ConsumerCtx>, tpl: &TopicPartitionList) {
        let tpl = &self.with_plans_written(tpl);
        let result = commits::commit_and_settle(consumer, tpl, |topic, partition, offset, ok| {
            self.settle_commit(topic, partition, offset, ok)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; it is sent again");
        }
    }

    /// The broker's answer to a commit of `offset`: confirmed, or to be sent again.
    pub(super) fn settle_commit(&self, topic: &str, partition: i32, offset: i64, ok: bool) {
        let tp = Tp {
            topic: topic.into(),
            partition,
        };
        let map = self.assignments();
        let ledger = map.get(&tp).map(|a| &a.ledger);
        if ok {
            self.metrics.commits.inc_by(1);
            self.metrics
                .update_partition(topic, partition, |g| g.committed_offset = offset);
            if let Some(l) = ledger {
                l.commit_confirmed(offset);
            }
        } else {
            self.metrics.commit_errors.inc_by(1);
            if let Some(l) = ledger {
                l.commit_failed(offset);
            }
        }
    }

    /// Offsets (with their plans) whose outputs are all acknowledged and that are to be
    /// committed now (see [`Resend`]).
    pub(super) fn committable(&self, resend: Resend) -> Vec<(Tp, Plan)> {
        self.assignments()
            .iter()
            .filter_map(|(tp, a)| a.ledger.take_commit(resend).map(|plan| (tp.clone(), plan)))
            .collect()
    }
}
