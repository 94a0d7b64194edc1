//! What a local checkpoint keeps of a pipeline, in each checkpoint format this build
//! reads (see [`crate::state::CHECKPOINT_FORMAT`]).

use crate::replay::IdleLog;
use crate::stage::{RestoreError, SNAPSHOT_DECODE};

/// Format 3: format 2 and the idle flushes since the oldest open window.
#[derive(bincode::Encode, bincode::Decode)]
pub(crate) struct PipelineSnapshot {
    /// Fingerprint of the stages and levels, so a checkpoint of another setup is refused.
    pub shape: String,
    /// Interned names in id order, so ids in stage state stay valid.
    pub names: Vec<String>,
    pub watermark: i64,
    pub max_ts: i64,
    /// An operator replay's cut, if any.
    pub cut: Option<i64>,
    pub stages: Vec<Vec<u8>>,
    /// (offset, watermark) of each idle flush, oldest first.
    pub idle: Vec<(i64, i64)>,
}

/// Format 2, as the build before format 3 wrote it.
#[derive(bincode::Decode)]
struct SnapshotV2 {
    shape: String,
    names: Vec<String>,
    watermark: i64,
    max_ts: i64,
    cut: Option<i64>,
    stages: Vec<Vec<u8>>,
}

impl PipelineSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// Reads a snapshot written in checkpoint format `format` (2 or 3).
    pub fn decode(bytes: &[u8], format: u32) -> Result<Self, RestoreError> {
        let corrupt = |e: bincode::error::DecodeError| RestoreError::Corrupt(e.to_string());
        if format == 2 {
            let (v2, _): (SnapshotV2, usize) =
                bincode::decode_from_slice(bytes, SNAPSHOT_DECODE).map_err(corrupt)?;
            return Ok(Self {
                shape: v2.shape,
                names: v2.names,
                watermark: v2.watermark,
                max_ts: v2.max_ts,
                cut: v2.cut,
                stages: v2.stages,
                idle: Vec::new(),
            });
        }
        let (snapshot, _): (Self, usize) =
            bincode::decode_from_slice(bytes, SNAPSHOT_DECODE).map_err(corrupt)?;
        Ok(snapshot)
    }

    pub fn idle_log(&self) -> IdleLog {
        let mut log = IdleLog::default();
        for &(offset, watermark) in &self.idle {
            log.record(offset, watermark);
        }
        log
    }
}
