//! Idle flushes, kept so that a rebuild reproduces them. An idle flush moves a quiet
//! partition's watermark by the wall clock, which no record carries: a rebuild that only
//! replays records would accept records the first run found late and reopen windows the
//! flush closed. So each flush is recorded as (offset of the next record, watermark) and
//! travels in the replay plan; a rebuild applies it before that record, as the first run
//! did.

/// How many flushes a plan carries: the ones since the oldest open window began. A
/// partition quiet more often than this within its longest window keeps the newest
/// ones ([`IdleLog::record`] says when one goes).
pub const IDLE_CAPACITY: usize = 64;

/// Idle flushes in offset order, at most one per offset (the last one there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleLog {
    len: u8,
    entries: [(i64, i64); IDLE_CAPACITY],
}

impl Default for IdleLog {
    fn default() -> Self {
        Self {
            len: 0,
            entries: [(0, 0); IDLE_CAPACITY],
        }
    }
}

impl IdleLog {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.entries[..self.len as usize].iter().copied()
    }

    /// The offset of the newest flush, if any.
    pub fn newest(&self) -> Option<i64> {
        self.len.checked_sub(1).map(|i| self.entries[i as usize].0)
    }

    /// Records a flush to `watermark` before the record at `offset`; `true` when the
    /// oldest flush had to go to make room.
    pub fn record(&mut self, offset: i64, watermark: i64) -> bool {
        let n = self.len as usize;
        if n > 0 && self.entries[n - 1].0 >= offset {
            // Still quiet at the same offset: the newest watermark is the one that counts.
            self.entries[n - 1] = (offset, self.entries[n - 1].1.max(watermark));
            return false;
        }
        if n == IDLE_CAPACITY {
            self.entries.copy_within(1.., 0);
            self.entries[n - 1] = (offset, watermark);
            true
        } else {
            self.entries[n] = (offset, watermark);
            self.len += 1;
            false
        }
    }

    /// The flushes a rebuild from `replay_start` needs: those after its first record.
    pub fn after(&self, replay_start: i64) -> IdleLog {
        let mut out = IdleLog::default();
        for (offset, watermark) in self.iter().filter(|e| e.0 > replay_start) {
            out.record(offset, watermark);
        }
        out
    }

    /// This log and `other` together (each plan knows the flushes since its own replay
    /// start; earlier plans know older ones), newest kept when over capacity.
    pub fn merged(&self, other: &IdleLog) -> IdleLog {
        let mut all: Vec<(i64, i64)> = self.iter().chain(other.iter()).collect();
        all.sort_unstable();
        let mut out = IdleLog::default();
        for (offset, watermark) in all {
            out.record(offset, watermark);
        }
        out
    }

    /// The watermark a flush set before the record at `offset`, if one did.
    pub fn at(&self, offset: i64) -> Option<i64> {
        self.iter().find(|e| e.0 == offset).map(|e| e.1)
    }

    /// `offset:watermark` pairs joined by commas (the plan's `i=` field).
    pub fn encode(&self) -> String {
        self.iter()
            .map(|(o, w)| format!("{o}:{w}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses [`IdleLog::encode`]'s output; anything malformed, out of order or longer
    /// than the capacity is `None`.
    pub fn decode(text: &str) -> Option<IdleLog> {
        let mut out = IdleLog::default();
        for pair in text.split(',') {
            let (o, w) = pair.split_once(':')?;
            let (o, w) = (o.parse().ok()?, w.parse().ok()?);
            if out.len as usize == IDLE_CAPACITY || out.iter().last().is_some_and(|last| last.0 >= o) {
                return None;
            }
            out.record(o, w);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushes_are_kept_per_offset_newest_first_to_go_when_full() {
        let mut log = IdleLog::default();
        log.record(10, 100);
        log.record(10, 150);
        log.record(12, 200);
        assert_eq!(log.iter().collect::<Vec<_>>(), vec![(10, 150), (12, 200)]);
        assert_eq!((log.at(10), log.at(11)), (Some(150), None));
        assert_eq!(log.after(10).iter().collect::<Vec<_>>(), vec![(12, 200)]);
        assert_eq!(IdleLog::decode(&log.encode()), Some(log));
        let dropped = (0..IDLE_CAPACITY as i64)
            .filter(|i| log.record(100 + i, 1_000 + i))
            .count();
        assert_eq!(log.iter().count(), IDLE_CAPACITY);
        assert_eq!(log.iter().next(), Some((100, 1_000)), "the two oldest went");
        assert_eq!(dropped, 2);
        assert_eq!(log.newest(), Some(100 + IDLE_CAPACITY as i64 - 1));
        let a = IdleLog::decode("5:50,9:90").expect("a");
        let b = IdleLog::decode("9:95,12:120").expect("b");
        assert_eq!(a.merged(&b).encode(), "5:50,9:95,12:120");
        for bad in ["", "1", "1:x", "2:1,1:1", "1:1,1:2"] {
            assert_eq!(IdleLog::decode(bad), None, "{bad:?}");
        }
    }
}
