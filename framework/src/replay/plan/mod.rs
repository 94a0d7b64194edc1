//! The replay plan committed next to each offset, and the pure decision of where a newly
//! assigned partition starts and how much of it is replay.

use std::fmt::Write as _;

use super::idle::IdleLog;

/// What a restart needs besides the committed offset: where to start reading so that the
/// state held at `next_offset` can be rebuilt, and the watermark that state had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// First source offset that still affects state (minimum over stages).
    pub replay_start: i64,
    /// The offset this plan belongs to: everything before it is processed and its outputs
    /// are acknowledged.
    pub next_offset: i64,
    /// The partition's watermark (max event time − grace) just before `replay_start`, so
    /// replayed records are accepted or found late exactly as the first time.
    pub watermark: i64,
    /// An operator asked to replay from `next_offset`: outputs are re-emitted (not
    /// suppressed), except windows the replay point cuts through.
    pub requested: bool,
    /// After an operator's replay: windows starting before this event time were cut by
    /// the replay point and are never emitted again (they would be partial).
    pub cut: Option<i64>,
    /// A shorter way back: coarse windows from the rollups topic, raw records only for the
    /// finest level. Absent when the rows cannot be located; then `replay_start` serves.
    pub coarse: Option<CoarsePlan>,
    /// Idle flushes after `replay_start` (and up to `next_offset`), which a rebuild
    /// applies where the first run did.
    pub idle: IdleLog,
}

/// Rebuilding coarse levels (1h, 1d) from the co-partitioned rollups topic instead of a
/// day of raw records: open coarse windows are the fine rows of the rollups partition in
/// `[rollups_from, rollups_end)` that closed at or before `now_watermark` and whose coarse
/// window was still open then; only the finest level is replayed from raw records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoarsePlan {
    /// Raw replay start for the finest level (and stages without coarse state).
    pub fine_start: i64,
    /// The watermark just before `fine_start`.
    pub fine_watermark: i64,
    /// The watermark at `next_offset`.
    pub now_watermark: i64,
    /// Rollups-topic offsets (same partition number) that hold the rows.
    pub rollups_from: i64,
    pub rollups_end: i64,
}

/// The newest plan format this build reads and writes. A later format gets a new number;
/// this build then refuses such plans (see [`Plan::newer_format`]). Format 2 added idle
/// flushes (`i=`); a plan without any is still written as format 1, which builds before
/// format 2 read.
pub const PLAN_FORMAT: u32 = 2;

/// Prefix of every encoded plan: the format's name and number.
const TAG: &str = "tributary-plan/1";
const TAG_2: &str = "tributary-plan/2";
const TAG_NAME: &str = "tributary-plan/";

impl Plan {
    /// A plan with no state to rebuild: start at `offset`, nothing emitted yet.
    pub fn fresh(offset: i64) -> Self {
        Self {
            replay_start: offset,
            next_offset: offset,
            watermark: i64::MIN,
            requested: false,
            cut: None,
            coarse: None,
            idle: IdleLog::default(),
        }
    }

    /// The plan an older build committed for an operator's replay from `offset` (it
    /// re-emitted from the next record, leaving out windows the replay point cut).
    #[cfg(test)]
    pub fn requested(offset: i64) -> Self {
        Self {
            requested: true,
            ..Self::fresh(offset)
        }
    }

    /// A short text that fits Kafka's commit metadata (4 KiB by default) many times over.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(96);
        let tag = if self.idle.is_empty() { TAG } else { TAG_2 };
        let _ = write!(
            s,
            "{tag} r={} n={} w={}",
            self.replay_start, self.next_offset, self.watermark
        );
        if let Some(cut) = self.cut {
            let _ = write!(s, " c={cut}");
        }
        if let Some(c) = self.coarse {
            let _ = write!(
                s,
                " f={} g={} t={} u={} v={}",
                c.fine_start, c.fine_watermark, c.now_watermark, c.rollups_from, c.rollups_end
            );
        }
        if !self.idle.is_empty() {
            let _ = write!(s, " i={}", self.idle.encode());
        }
        if self.requested {
            s.push_str(" requested");
        }
        s
    }

    /// The format number of a plan written by a newer build than this one, which this
    /// build must not resume from: it cannot know what the plan's state needs.
    pub fn newer_format(text: &str) -> Option<u32> {
        let version = text
            .strip_prefix(TAG_NAME)?
            .split(' ')
            .next()?
            .parse::<u32>()
            .ok()?;
        (version > PLAN_FORMAT).then_some(version)
    }

    /// Parses [`Plan::encode`]'s output; anything else (empty metadata from a broker that
    /// drops it, another tool's metadata, a future version) is `None`.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let version_2 = match parts.next()? {
            TAG => false,
            TAG_2 => true,
            _ => return None,
        };
        let mut field = |name: &str| -> Option<i64> {
            let (k, v) = parts.next()?.split_once('=')?;
            if k != name {
                return None;
            }
            v.parse().ok()
        };
        let mut plan = Plan {
            replay_start: field("r")?,
            next_offset: field("n")?,
            watermark: field("w")?,
            requested: false,
            cut: None,
            coarse: None,
            idle: IdleLog::default(),
        };
        let mut coarse: [Option<i64>; 5] = [None; 5];
        for extra in parts {
            match extra.split_once('=') {
                None if extra == "requested" => plan.requested = true,
                Some(("c", v)) => plan.cut = Some(v.parse().ok()?),
                Some(("i", v)) if version_2 => plan.idle = IdleLog::decode(v)?,
                Some((k, v)) if ["f", "g", "t", "u", "v"].contains(&k) => {
                    let i = ["f", "g", "t", "u", "v"].iter().position(|n| *n == k)?;
                    coarse[i] = Some(v.parse().ok()?);
                }
                _ => return None,
            }
        }
        match coarse {
            [Some(f), Some(g), Some(t), Some(u), Some(v)] => {
                plan.coarse = Some(CoarsePlan {
                    fine_start: f,
                    fine_watermark: g,
                    now_watermark: t,
                    rollups_from: u,
                    rollups_end: v,
                });
            }
            [None, None, None, None, None] => {}
            _ => return None,
        }
        let coarse_ok = plan.coarse.is_none_or(|c| {
            c.fine_start >= plan.replay_start
                && c.fine_start <= plan.next_offset
                && c.rollups_from <= c.rollups_end
        });
        (plan.replay_start <= plan.next_offset && coarse_ok).then_some(plan)
    }
}

/// The plan an operator's replay from offset `n` commits: the state held at `n` is
/// rebuilt exactly as a restart rebuilds it, from the newest known plan at or before `n`
/// (its replay start and watermark; processing from there reproduces every state after
/// it), outputs are suppressed up to `n`, and from `n` on every window that closes is
/// emitted again, complete. A plan past `n` will not do: windows that were open at `n`
/// and closed before its offset may hold records before its replay start. Past the newest
/// known plan outputs may not have been emitted yet, so `n` is capped there (more is
/// re-emitted, never less). Offset 0 needs no plan (no state precedes it). `None` when
/// no known plan is at or before `n`: a replay from there could not tell which windows
/// were open, so it is refused rather than emitting partial ones.
pub fn replay_from(n: i64, known: impl IntoIterator<Item = Plan>) -> Option<Plan> {
    let known: Vec<Plan> = known.into_iter().filter(|p| !p.requested).collect();
    // The rebuild passes idle flushes every known plan recorded (later ones too, up to
    // their own offsets): each one after its start is applied again.
    let flushes = known
        .iter()
        .fold(IdleLog::default(), |all, k| all.merged(&k.idle));
    if n <= 0 {
        return Some(Plan {
            idle: flushes.after(-1),
            ..Plan::fresh(0)
        });
    }
    let n = n.min(known.iter().map(|p| p.next_offset).max()?);
    // A plan flushed idle at its own offset holds the state after that flush: it cannot
    // re-emit the windows the flush closed, which close at the replay point.
    let p = known
        .iter()
        .filter(|p| p.next_offset < n || (p.next_offset == n && p.idle.at(n).is_none()))
        .max_by_key(|p| p.next_offset)?;
    let idle = flushes.after(p.replay_start - 1);
    Some(Plan {
        replay_start: p.replay_start,
        next_offset: n,
        watermark: p.watermark,
        requested: false,
        cut: p.cut,
        // Located for the plan's own offset, not for `n`.
        coarse: None,
        idle,
    })
}

/// Where a local checkpoint stands, as far as the start decision is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPosition {
    /// The checkpointed state is the state after processing everything before this.
    pub next_offset: i64,
}

/// How a partition's state comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per assigned partition at assignment; boxing buys nothing"
)]
pub enum StateSource {
    /// Nothing committed: start where `auto.offset.reset` says, with empty state.
    Empty,
    /// Committed without a plan (older version, or the plan was lost): empty state from the
    /// committed offset, as a plain consumer would.
    CommittedOnly,
    /// Rebuild by replaying the source from the plan's replay start.
    Plan(Plan),
    /// Load the local checkpoint, then replay what came after it.
    Checkpoint,
}

/// Where to seek and until which offset outputs are suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartPoint {
    /// Offset to seek to; `None` leaves it to `auto.offset.reset`.
    pub seek: Option<i64>,
    /// Outputs of records before this offset were emitted before: suppress them.
    pub replay_until: i64,
    /// The record at `seek` is read only to see where the broker serves from (see
    /// [`first_read`]); the state needs the records after it.
    pub probe: bool,
    pub source: StateSource,
}

impl StartPoint {
    /// The offset whose arrival proves the broker served the partition from where it was
    /// sought: every resume at a known offset is watched, a checkpoint or commit with
    /// nothing to replay included, since a broker that answers a fetch inside a record
    /// batch with the next batch (tansu) would otherwise skip the rest of that batch
    /// silently. Offset 0 starts a batch; `None` when `auto.offset.reset` decides.
    pub fn guarded_from(&self) -> Option<i64> {
        self.seek.filter(|&s| s > 0)
    }

    /// The first offset whose record the resumed state needs: records gone from the
    /// broker before it cost nothing.
    pub fn needed_from(&self) -> Option<i64> {
        self.seek.map(|s| s + i64::from(self.probe))
    }
}

/// Where a rebuild that replays from `replay_start` up to `acked` starts reading. With
/// nothing to replay it starts one record early anyway: under the restored watermark that
/// record is late (its window closed before the commit), so it changes nothing, and every
/// resume then reads a record that is known to exist, which lets the runtime notice a
/// broker that serves nothing from a mid-batch offset (tansu) and seek back.
pub fn first_read(replay_start: i64, acked: i64) -> i64 {
    if is_probe(replay_start, acked) {
        acked - 1
    } else {
        replay_start
    }
}

/// Whether [`first_read`] reads one record before the state needs any.
pub fn is_probe(replay_start: i64, acked: i64) -> bool {
    replay_start == acked && acked > 0
}

/// Decides how a newly assigned partition resumes. The committed plan is the source of
/// truth; a local checkpoint is used only when it is at or after the plan's replay start
/// (then it holds everything the replay would rebuild, in less time) and not past what is
/// known to be acknowledged.
pub fn decide(
    committed: Option<i64>,
    plan: Option<Plan>,
    checkpoint: Option<CheckpointPosition>,
) -> StartPoint {
    // A plan is written only once every output before its offset is acknowledged, so it
    // is a valid resume point even when the group's commit lags behind it.
    let acked = committed.into_iter().chain(plan.map(|p| p.next_offset)).max();
    let Some(acked) = acked else {
        return StartPoint {
            seek: None,
            replay_until: i64::MIN,
            probe: false,
            source: StateSource::Empty,
        };
    };
    let plan = plan.filter(|p| p.next_offset <= acked);
    if let (Some(ckpt), Some(p)) = (checkpoint, plan)
        && !p.requested
        && ckpt.next_offset >= p.replay_start
        && ckpt.next_offset <= acked
    {
        return StartPoint {
            seek: Some(ckpt.next_offset),
            replay_until: acked,
            probe: false,
            source: StateSource::Checkpoint,
        };
    }
    match plan {
        Some(p) => StartPoint {
            seek: Some(if p.requested {
                p.replay_start
            } else {
                first_read(p.replay_start, acked)
            }),
            replay_until: acked,
            probe: !p.requested && is_probe(p.replay_start, acked),
            source: StateSource::Plan(p),
        },
        None => StartPoint {
            seek: Some(acked),
            replay_until: acked,
            probe: false,
            source: StateSource::CommittedOnly,
        },
    }
}

#[cfg(test)]
mod tests;
