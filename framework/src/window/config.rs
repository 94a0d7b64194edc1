//! `[rollup]`: the window levels, grace and idle flush.

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// Window rollups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// Run the rollup stage.
    pub enabled: bool,
    /// Window widths, finest first; each a whole multiple of the previous one.
    pub levels: Vec<String>,
    /// Allowed lateness: a window closes when max event time − grace passes its end.
    pub grace: HumanDuration,
    /// A partition with no records for this long moves its watermark to wall-clock − grace.
    pub idle_timeout: HumanDuration,
}
