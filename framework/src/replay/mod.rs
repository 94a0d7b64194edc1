//! Replayable state without changelog topics: the pure part.
//!
//! Every commit carries a [`Plan`]: how far back to replay for the state held at the
//! committed offset, and the watermark then. On assignment the runtime [`decide`]s where
//! to seek (the plan's replay start, or a newer local checkpoint) and suppresses outputs up
//! to the committed offset while state is rebuilt. Operators ask for replays with a
//! [`ReplayRequest`].
//!
//! Nothing here talks to a broker: where plans are kept and read back (commit metadata,
//! the plan topic, the rollups topic) is [`crate::runtime::plans`]; how a request becomes
//! offsets is [`crate::runtime::operator`].

pub mod idle;
mod plan;
pub mod request;

pub use idle::IdleLog;
pub use plan::{
    CheckpointPosition, CoarsePlan, PLAN_FORMAT, Plan, StartPoint, StateSource, decide, first_read, is_probe,
    replay_from,
};
pub use request::{ReplayFrom, ReplayRequest};

#[cfg(test)]
mod gap_tests;
#[cfg(test)]
mod tests;
