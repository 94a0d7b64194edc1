//! Commit bookkeeping of one partition: what was sent, what the broker confirmed, and
//! when to send again. A commit is done only once the broker confirms it (see
//! [`commit_and_settle`]); a failed one is sent again.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::Backoff;

/// When a safe offset that was already sent is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Only offsets not sent yet.
    New,
    /// Also offsets sent but not confirmed (a commit can be lost unseen, e.g. in a
    /// rebalance).
    Unconfirmed,
    /// Always: the commit at revoke and at shutdown.
    Always,
}

impl Resend {
    /// What a revoke takes from its partitions: every safe offset, except in the revoke
    /// of the consumer's close, where only what the final commit left unconfirmed is of
    /// interest (see [`commit_at_revoke`]).
    pub fn at_revoke(closing: bool) -> Self {
        if closing {
            Resend::Unconfirmed
        } else {
            Resend::Always
        }
    }
}

/// Whether a revoke commits the offsets it took (`pending` partitions' worth), logging
/// why when it does not: not when the assignment was lost (another member may own the
/// partitions), and not in the revoke of the consumer's close, which comes after the
/// final commit: a synchronous commit there can wait forever for a group that is
/// rebalancing, and with it the close. Either way the next owner resumes from the last
/// confirmed commit.
pub fn commit_at_revoke(lost: bool, closing: bool, pending: usize) -> bool {
    if lost {
        tracing::warn!("assignment lost (session timeout?); not committing revoked partitions");
        false
    } else if closing {
        if pending > 0 {
            tracing::warn!(
                partitions = pending,
                "leaving with offsets the final commit could not confirm; the next owner resumes from the last confirmed commit"
            );
        }
        false
    } else {
        true
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitState {
    /// Committed before this run began (a resumed partition): never commit at or below
    /// it, so a replay does not move the group's offset backwards.
    floor: Option<i64>,
    sent: Option<i64>,
    confirmed: Option<i64>,
}

impl CommitState {
    pub fn resuming_at(committed: Option<i64>) -> Self {
        Self {
            floor: committed,
            ..Self::default()
        }
    }

    /// Whether `safe` should be committed now; if so it is marked sent.
    pub fn take(&mut self, safe: i64, resend: Resend) -> bool {
        if self.floor.is_some_and(|f| safe <= f) {
            return false;
        }
        let send = match resend {
            Resend::New => self.sent.is_none_or(|s| s < safe),
            Resend::Unconfirmed => self.confirmed.is_none_or(|c| c < safe),
            Resend::Always => true,
        };
        if send {
            self.sent = Some(self.sent.map_or(safe, |s| s.max(safe)));
        }
        send
    }

    /// The broker confirmed a commit of `offset`.
    pub fn confirmed(&mut self, offset: i64) {
        self.confirmed = Some(self.confirmed.map_or(offset, |c| c.max(offset)));
    }

    /// A commit of `offset` failed: unless a later one is on its way, send again.
    pub fn failed(&mut self, offset: i64) {
        if self.sent == Some(offset) {
            self.sent = self.confirmed;
        }
    }

    /// The highest offset the broker confirmed in this run.
    pub fn confirmed_offset(&self) -> Option<i64> {
        self.confirmed
    }
}

/// Commits `offsets` and waits for the broker's answer, then calls
/// `settle(topic, partition, offset, confirmed)` for every partition.
///
/// Commits are confirmed by waiting for them, on a thread of their own where the wait must
/// not stall consumption: librdkafka reports the result of an asynchronous commit only
/// through its `offset_commit_cb`, which rdkafka does not set, so an asynchronous commit
/// that fails is never seen by the application (only logged by librdkafka).
pub fn commit_and_settle<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    offsets: &TopicPartitionList,
    mut settle: impl FnMut(&str, i32, i64, bool),
) -> KafkaResult<()> {
    if offsets.count() == 0 {
        return Ok(());
    }
    let result = consumer.commit(offsets, CommitMode::Sync);
    for el in offsets.elements() {
        if let Offset::Offset(o) = el.offset() {
            settle(el.topic(), el.partition(), o, result.is_ok());
        }
    }
    result
}

/// The last commit of a run (at shutdown): sent again with backoff until the broker
/// confirms it or `within` has passed, so a broker that fails a commit now and then does
/// not cost a replay at the next start, and one that keeps failing cannot hold the
/// process. Returns the last error when it gave up.
pub fn commit_final<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    offsets: &TopicPartitionList,
    within: Duration,
    mut settle: impl FnMut(&str, i32, i64, bool),
) -> KafkaResult<()> {
    let deadline = Instant::now() + within;
    let mut backoff = Backoff::new().with_max(Duration::from_secs(2));
    loop {
        let Err(e) = commit_and_settle(consumer, offsets, &mut settle) else {
            return Ok(());
        };
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            return Err(e);
        }
        tracing::warn!(error = %e, retry_in = ?delay, "final offset commit failed; sending it again");
        std::thread::sleep(delay);
    }
}

/// Calls `settle(topic, partition, offset)` for every partition of a commit that was
/// never sent (its offsets are to be sent again).
pub fn settle_unsent(offsets: &TopicPartitionList, mut settle: impl FnMut(&str, i32, i64)) {
    for el in offsets.elements() {
        if let Offset::Offset(o) = el.offset() {
            settle(el.topic(), el.partition(), o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoke_commits_everything_except_when_lost_or_closing() {
        assert_eq!(Resend::at_revoke(false), Resend::Always);
        assert_eq!(Resend::at_revoke(true), Resend::Unconfirmed);
        assert!(commit_at_revoke(false, false, 3));
        assert!(!commit_at_revoke(true, false, 3));
        assert!(!commit_at_revoke(false, true, 3));
        assert!(!commit_at_revoke(false, true, 0));
    }

    #[test]
    fn an_offset_is_done_only_once_confirmed() {
        let mut c = CommitState::default();
        assert!(c.take(10, Resend::New));
        assert!(!c.take(10, Resend::New), "in flight");
        assert!(c.take(10, Resend::Unconfirmed), "not confirmed yet");
        c.confirmed(10);
        assert!(!c.take(10, Resend::Unconfirmed));
        assert!(c.take(10, Resend::Always));
        assert_eq!(c.confirmed_offset(), Some(10));
    }

    #[test]
    fn a_failed_commit_is_sent_again_unless_a_later_one_is_on_its_way() {
        let mut c = CommitState::default();
        assert!(c.take(5, Resend::New));
        c.failed(5);
        assert!(c.take(5, Resend::New), "resent after the failure");
        assert!(c.take(8, Resend::New));
        c.failed(5); // the older one's failure arrives late
        assert!(!c.take(8, Resend::New), "8 is still on its way");
        c.failed(8);
        assert!(c.take(8, Resend::New));
    }

    #[test]
    fn a_resumed_partition_never_commits_at_or_below_its_floor() {
        let mut c = CommitState::resuming_at(Some(100));
        assert!(!c.take(60, Resend::Always));
        assert!(!c.take(100, Resend::Always));
        assert!(c.take(130, Resend::New));
    }
}
