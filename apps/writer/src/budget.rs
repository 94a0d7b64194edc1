//! One rate budget for a whole group of writers (`limits.scope = "group"`): each member
//! takes the share of the group's limit that its partitions are of all the partitions
//! of the topics it consumes, re-evaluated at every rebalance, so N members together
//! send the group's limit, not N times it. The group's limit itself travels through a
//! topic (see [`crate::group_limit`]), so a change made at one member reaches all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use serde::{Deserialize, Serialize};

use crate::limiter::{Limiter, RateLimit};

/// Whom `[limits]` applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// Each writer process on its own.
    #[default]
    Process,
    /// The writer group as a whole, shared by partitions owned.
    Group,
}

#[derive(Debug, Clone, Copy)]
struct Share {
    group: RateLimit,
    owned: usize,
    total: usize,
}

/// A member's part of the group's limit, applied to its limiter.
#[derive(Debug)]
pub struct Budget {
    limiter: Arc<Limiter>,
    share: Mutex<Share>,
    max_batch_rows: usize,
}

/// The member's limit: its share of the group's rows per second, rounded down so the
/// members' limits never add up to more than the group's (at least one row per second
/// while it owns a partition), and the same share of the burst, but never less than the
/// largest batch, which must fit in one admission. Unlimited stays unlimited.
pub fn member_limit(group: RateLimit, owned: usize, total: usize, max_batch_rows: usize) -> RateLimit {
    if group.rows_per_sec == 0 {
        return group;
    }
    let total = total.max(owned).max(1) as u64;
    let part = |n: u32| (u64::from(n) * owned as u64 / total) as u32;
    RateLimit {
        rows_per_sec: part(group.rows_per_sec).max(1),
        burst: part(group.burst).max(max_batch_rows as u32),
    }
}

impl Budget {
    /// Until the first assignment the member owns nothing and its limit is the smallest.
    pub fn new(limiter: Arc<Limiter>, group: RateLimit, max_batch_rows: usize) -> Self {
        let budget = Self {
            limiter,
            share: Mutex::new(Share {
                group,
                owned: 0,
                total: 0,
            }),
            max_batch_rows,
        };
        budget.apply();
        budget
    }

    /// The group's limit (`ctl`, SIGHUP or another member's change, read from the topic).
    pub fn set_group(&self, group: RateLimit) {
        self.lock().group = group;
        self.apply();
    }

    /// After a rebalance: `owned` of the `total` partitions are this member's.
    pub fn set_partitions(&self, owned: usize, total: usize) {
        {
            let mut s = self.lock();
            s.owned = owned;
            s.total = total;
        }
        self.apply();
    }

    /// (group limit, partitions owned, partitions in all).
    pub fn view(&self) -> (RateLimit, usize, usize) {
        let s = self.lock();
        (s.group, s.owned, s.total)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Share> {
        self.share.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self) {
        let s = *self.lock();
        let mine = member_limit(s.group, s.owned, s.total, self.max_batch_rows);
        if mine != self.limiter.current() {
            tracing::info!(
                group_rows_per_sec = s.group.rows_per_sec,
                owned = s.owned,
                total = s.total,
                rows_per_sec = mine.rows_per_sec,
                burst = mine.burst,
                "this member's share of the group's rate limit"
            );
            self.limiter.set(mine);
        }
    }
}

/// This member's share of the group's budget: the partitions it owns of all the
/// partitions of `topics` (read from the broker's metadata at every rebalance).
pub fn share_by_partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    budget: &Budget,
    topics: &[String],
) {
    let owned = consumer.assignment().map_or(0, |a| a.count());
    let mut total = 0;
    for topic in topics {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(m) => total += m.topics().iter().map(|t| t.partitions().len()).sum::<usize>(),
            Err(e) => {
                // Owned partitions as the whole: the share errs high until the next
                // rebalance, never to zero.
                tracing::warn!(topic, error = %e, "cannot read partition counts; sharing the group's limit by what is known");
                total += owned;
            }
        }
    }
    budget.set_partitions(owned, total);
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: RateLimit = RateLimit {
        rows_per_sec: 1_000,
        burst: 300,
    };

    #[test]
    fn members_shares_add_up_to_the_group_limit_at_most() {
        for members in [&[3usize, 5][..], &[1, 2, 6], &[4, 4, 4]] {
            let total: usize = members.iter().sum();
            let sum: u32 = members
                .iter()
                .map(|&owned| member_limit(GROUP, owned, total, 32).rows_per_sec)
                .sum();
            assert!(sum <= GROUP.rows_per_sec, "{members:?}: {sum}");
            assert!(
                sum + members.len() as u32 > GROUP.rows_per_sec,
                "{members:?}: {sum} wastes the budget"
            );
        }
        assert_eq!(member_limit(GROUP, 8, 8, 32), GROUP, "a lone member has it all");
    }

    #[test]
    fn a_share_keeps_room_for_a_batch_and_unlimited_stays_unlimited() {
        assert_eq!(
            member_limit(GROUP, 1, 10, 64),
            RateLimit {
                rows_per_sec: 100,
                burst: 64
            }
        );
        assert_eq!(
            member_limit(GROUP, 0, 10, 64).rows_per_sec,
            1,
            "0 would mean unlimited"
        );
        let unlimited = RateLimit {
            rows_per_sec: 0,
            burst: 5,
        };
        assert_eq!(member_limit(unlimited, 1, 10, 64), unlimited);
    }
}
