//! The stage trait: plain synchronous code that takes one record at a time, updates its
//! own state and emits through a [`Collector`]. The runtime owns threads, Kafka and time.

use crate::record::{Anomaly, Point, RollupRow, SeriesId};

/// What a stage consumes: raw points, or closed windows of one rollup level emitted by an
/// upstream stage in the same pipeline (no intermediate topic).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    Point(&'a Point),
    Rollup(&'a RollupRow),
}

/// Which inputs a stage subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    Points,
    /// Closed windows of the rollup level with this index.
    RollupLevel(u8),
}

/// Per-record facts the runtime hands to a stage.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// Source offset of the record being processed.
    pub offset: i64,
    /// Current watermark of the partition (max event time − grace), epoch ms.
    pub watermark: i64,
}

/// Where a replay must start for a stage's state: the source offset, and the partition's
/// watermark just before that record, so replayed records are accepted or found late
/// exactly as they were the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayPoint {
    pub offset: i64,
    pub watermark: i64,
}

/// Where the fine rows held in a stage's open coarse windows can be read back from its
/// rollups output (see [`CoarseState::coarse_sources`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoarseSources {
    /// Start of the oldest open coarse window, if any is open.
    pub oldest_start: Option<i64>,
    /// Some window's rows cannot be located: coarse state must come from a raw replay.
    pub unknown: bool,
    /// Earliest source offset whose outputs hold such rows (mapped to a topic offset by
    /// the runtime, which saw them delivered).
    pub trigger: Option<i64>,
    /// Earliest rollups-topic offset known to hold such rows.
    pub topic: Option<i64>,
}

/// How checkpoint bytes are decoded (the wire format of `bincode::config::standard()`):
/// with a limit, so a corrupt checkpoint claiming a huge length is an error rather than
/// an allocation that aborts the process. Far above any real partition's state.
pub const SNAPSHOT_DECODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<{ 1 << 30 }>,
> = bincode::config::standard().with_limit::<{ 1 << 30 }>();

/// Why a snapshot cannot be restored (the partition then rebuilds from its plan).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    #[error("checkpoint is of another setup ({found}), this one is {expected}")]
    OtherSetup { found: String, expected: String },
}

/// Everything a stage can emit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Output {
    Rollup(RollupRow),
    Anomaly(Anomaly),
    /// The record fed a window that had already closed.
    Late {
        series: SeriesId,
        ts: i64,
        offset: i64,
    },
}

/// Collects the outputs of one record (or one watermark advance). Reused across records so
/// the hot path does not allocate.
#[derive(Debug, Default)]
pub struct Collector {
    outputs: Vec<Output>,
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn emit(&mut self, output: Output) {
        self.outputs.push(output);
    }

    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    pub fn as_slice(&self) -> &[Output] {
        &self.outputs
    }

    pub fn get(&self, index: usize) -> Option<&Output> {
        self.outputs.get(index)
    }

    pub fn drain(&mut self) -> std::vec::Drain<'_, Output> {
        self.outputs.drain(..)
    }

    pub fn clear(&mut self) {
        self.outputs.clear();
    }
}

/// One processing step on a partition's stream. A new stage implements [`Stage::name`]
/// and [`Stage::process`]; the hooks default to no-ops, and only stages whose state is
/// rebuilt after a restart implement [`Stage::replay_start`], [`Stage::snapshot`] and
/// [`Stage::restore`].
pub trait Stage: Send {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Which inputs this stage consumes.
    fn subscription(&self) -> Subscription {
        Subscription::Points
    }

    /// Consumes one input record.
    fn process(&mut self, input: Input<'_>, ctx: Context, out: &mut Collector);

    /// The partition's watermark advanced to `ctx.watermark` with the record at
    /// `ctx.offset` (or, without a record, the next offset): close whatever is complete.
    fn on_watermark(&mut self, _ctx: Context, _out: &mut Collector) {}

    /// Outputs are suppressed from now on (`true`, state is being rebuilt) or not.
    fn set_replaying(&mut self, _replaying: bool) {}

    /// The partition is being released (revoke or shutdown): emit whatever must not wait
    /// for the next owner. State that replay rebuilds (open windows) is not emitted.
    fn flush(&mut self, _out: &mut Collector) {}

    /// The earliest source record that still affects state held now, if any; the runtime
    /// replays from the earliest over stages after a restart.
    fn replay_start(&self) -> Option<ReplayPoint> {
        None
    }

    /// The stage's coarse windows, if it keeps any that can be rebuilt from its own
    /// output topic (the rollup stage).
    fn coarse(&self) -> Option<&dyn CoarseState> {
        None
    }

    /// The same, to change.
    fn coarse_mut(&mut self) -> Option<&mut dyn CoarseState> {
        None
    }

    /// Serialises the stage's state for a local checkpoint.
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }

    /// Restores state written by [`Stage::snapshot`].
    fn restore(&mut self, _bytes: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Coarse windows (1h, 1d) that come back after a restart from the fine rows already in
/// the stage's output topic instead of a day of raw records. Only the rollup stage has
/// them; the runtime reaches them through [`Stage::coarse`].
pub trait CoarseState {
    /// Where a replay must start when coarse state comes back from the stage's own
    /// output topic instead ([`CoarseState::seed`]).
    fn fine_replay_start(&self) -> Option<ReplayPoint>;

    /// Where the rows of open coarse windows are, for a plan that rebuilds them from the
    /// output topic.
    fn coarse_sources(&self) -> CoarseSources;

    /// Rebuilds coarse state from rows read back from the output topic (starting at
    /// `topic_from`): rows closed at or before `watermark` whose coarse window was still
    /// open then. `raw` is the plan's full replay point, kept as the windows' fallback.
    /// Returns how many rows were used.
    fn seed(&mut self, rows: &[RollupRow], watermark: i64, topic_from: i64, raw: ReplayPoint) -> usize;

    /// After restoring a checkpoint of another run: rows located by that run's source
    /// offsets are at or after `topic_from` (unknown if `None`).
    fn locate_restored_rows(&mut self, topic_from: Option<i64>);
}
