//! Partitions whose outputs could not be delivered (a broker that stayed away longer than
//! `message.timeout.ms`, a producer that failed fatally) are rebuilt in place instead of
//! stopping the app: the run restarts from its newest plan whose outputs were all
//! acknowledged, so every output after it is produced again (identical to the first) and
//! nothing is committed past an undelivered one.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

use super::Tp;
use super::context::ConsumerCtx;
use super::coordinator::{Coordinator, ResumedFrom, seek};
use super::worker::Resume;
use crate::kafka::commits::Resend;

impl Coordinator {
    /// Rebuilds every owned partition whose ledger holds a delivery failure, after
    /// replacing the producer if it failed fatally. Returns how many were rebuilt.
    pub(super) fn rebuild_undelivered(&self, consumer: &BaseConsumer<ConsumerCtx>) -> usize {
        let failed: Vec<(Tp, String)> = self
            .assignments()
            .iter()
            .filter_map(|(tp, a)| Some((tp.clone(), a.ledger.failure()?)))
            .collect();
        if failed.is_empty() {
            return 0;
        }
        if let Some(fatal) = self.producer.renew_if_fatal() {
            tracing::warn!(error = %fatal, "the output producer failed fatally and was replaced; partitions with outputs in it are rebuilt");
        }
        // What was acknowledged before the failure is committed first, so a crash during
        // the rebuild resumes from there too.
        let acked: Vec<_> = {
            let map = self.assignments();
            failed
                .iter()
                .filter_map(|(tp, _)| Some((tp.clone(), map.get(tp)?.ledger.take_commit(Resend::Always)?)))
                .collect()
        };
        self.commit(consumer, &acked, CommitMode::Sync);
        let mut map = self.assignments();
        let mut rebuilt = 0;
        for (tp, error) in failed {
            let Some(a) = map.get(&tp) else { continue };
            let worker = a.worker;
            // The newest plan whose outputs are all delivered, else where the run began.
            let resumed = match a.ledger.safe_plan() {
                Some(plan) => ResumedFrom {
                    committed: a.resumed.committed.max(Some(plan.next_offset)),
                    plan: Some(plan),
                },
                None => a.resumed,
            };
            let (start, pipeline, rollups_end) = self.restore(&tp, resumed.committed, resumed.plan);
            match start.seek {
                Some(from) => seek(consumer, &tp, from),
                None => {
                    if let Err(e) = consumer.seek(
                        &tp.topic,
                        tp.partition,
                        Offset::Beginning,
                        Duration::from_secs(10),
                    ) {
                        tracing::warn!(topic = %tp.topic, partition = tp.partition, error = %e, "seek failed");
                    }
                }
            }
            if let Some(target) = start.guarded_from() {
                self.watch_for_stall(&tp, target);
            }
            tracing::warn!(topic = %tp.topic, partition = tp.partition, error, from = ?start.seek, acknowledged = ?resumed.committed,
                "an output was not delivered: the partition is rebuilt from its newest acknowledged plan and its later outputs are produced again");
            self.start_run(
                &mut map,
                tp,
                worker,
                pipeline,
                Resume::at(&start, rollups_end),
                resumed,
            );
            self.metrics.partitions_rebuilt.inc_by(1);
            rebuilt += 1;
        }
        drop(map);
        self.epoch.fetch_add(1, Ordering::Release);
        rebuilt
    }
}
