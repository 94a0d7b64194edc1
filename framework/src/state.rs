//! Local checkpoints of partition state in RocksDB. A checkpoint is the pipeline's
//! snapshot and the offset it corresponds to, in one value (so one atomic write), put only
//! after every output up to that offset is acknowledged. It only shortens replay: the
//! committed replay plan stays the source of truth, and a missing, corrupt or foreign
//! checkpoint means "replay from the plan".

use std::path::Path;

use rocksdb::{BlockBasedOptions, Cache, DB, Options, WriteBufferManager};
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// Replayable state: where replay plans live and the local RocksDB checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for local RocksDB checkpoints; empty disables them (restarts then replay
    /// from the committed plan alone).
    pub dir: String,
    /// How often each partition's state is checkpointed (written once its outputs are acked).
    pub checkpoint_interval: HumanDuration,
    /// RocksDB block cache shared by every partition, in MiB.
    pub block_cache_mb: u64,
    /// Upper bound on RocksDB memtables (write buffer manager), in MiB.
    pub write_buffer_mb: u64,
    /// Where replay plans are kept: "auto" (commit metadata when the broker keeps it,
    /// checked at start-up, else the plan topic), "metadata" or "topic".
    pub plan_store: String,
    /// Compacted topic for replay plans when commit metadata is not kept; empty means
    /// "<group>.replay-plans".
    pub plan_topic: String,
    /// How long earlier plans are kept (topic "<group>.replay-plan-history"): an
    /// operator's replay can reach back this far.
    pub plan_history_retention: HumanDuration,
}

/// The checkpoint format this build writes. Format 3 added idle flushes to the pipeline
/// snapshot; format 2, the one before, is still read (see [`Checkpoint::format`]).
pub const CHECKPOINT_FORMAT: u32 = 3;
/// The oldest checkpoint format this build reads.
const OLDEST_READ: u32 = 2;

/// One partition's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The snapshot is the state after processing every record before this offset.
    pub next_offset: i64,
    /// [`crate::pipeline::Pipeline::snapshot`] bytes.
    pub pipeline: Vec<u8>,
    /// Where the rows of the snapshot's open coarse windows start in the rollups topic,
    /// and where that topic ended, if known (see [`crate::replay::CoarsePlan`]).
    pub rollups_from: Option<i64>,
    pub rollups_end: Option<i64>,
    /// The format it was written in ([`CHECKPOINT_FORMAT`] when saved by this build),
    /// which says how to read `pipeline`.
    pub format: u32,
}

/// A checkpoint as stored, after its format number (unchanged since format 2).
#[derive(bincode::Encode, bincode::Decode)]
struct StoredCheckpoint {
    next_offset: i64,
    pipeline: Vec<u8>,
    rollups_from: Option<i64>,
    rollups_end: Option<i64>,
}

#[derive(bincode::Encode, bincode::Decode)]
struct Stored {
    version: u32,
    checkpoint: StoredCheckpoint,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store at {path}: {source}")]
    Open { path: String, source: rocksdb::Error },
    #[error("state store write: {0}")]
    Write(#[from] rocksdb::Error),
    #[error("state store read: {0}")]
    Read(rocksdb::Error),
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    #[error(
        "checkpoint format {found} is {} than this build reads ({OLDEST_READ} to {CHECKPOINT_FORMAT}); the partition rebuilds from its replay plan instead",
        if *found > CHECKPOINT_FORMAT { "newer" } else { "older" }
    )]
    Format { found: u32 },
}

/// The RocksDB database holding every partition's checkpoint, with its memory bounded by
/// one shared block cache that the memtables are charged to as well.
pub struct StateStore {
    db: DB,
    cache: Cache,
    /// Held for the life of the database: it bounds the memtables.
    _write_buffers: WriteBufferManager,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn key(topic: &str, partition: i32) -> Vec<u8> {
    format!("ckpt/{topic}/{partition}").into_bytes()
}

impl StateStore {
    /// Opens (or creates) the store in `dir` with `cache_bytes` of block cache and at most
    /// `write_buffer_bytes` of memtables, which are charged to the same cache.
    pub fn open(dir: &Path, cache_bytes: usize, write_buffer_bytes: usize) -> Result<Self, StateError> {
        let cache = Cache::new_lru_cache(cache_bytes);
        let write_buffers =
            WriteBufferManager::new_write_buffer_manager_with_cache(write_buffer_bytes, false, cache.clone());
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(&write_buffers);
        opts.set_write_buffer_size(write_buffer_bytes.clamp(1 << 20, 64 << 20));
        opts.set_max_write_buffer_number(2);
        opts.set_max_open_files(256);
        opts.set_keep_log_file_num(2);
        let db = DB::open(&opts, dir).map_err(|source| StateError::Open {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            db,
            cache,
            _write_buffers: write_buffers,
        })
    }

    /// The partition's checkpoint, or why there is none usable (for the log).
    pub fn load(&self, topic: &str, partition: i32) -> Result<Option<Checkpoint>, StateError> {
        let Some(bytes) = self.db.get(key(topic, partition)).map_err(StateError::Read)? else {
            return Ok(None);
        };
        let (stored, _): (Stored, usize) = bincode::decode_from_slice(&bytes, crate::stage::SNAPSHOT_DECODE)
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        if !(OLDEST_READ..=CHECKPOINT_FORMAT).contains(&stored.version) {
            return Err(StateError::Format {
                found: stored.version,
            });
        }
        let c = stored.checkpoint;
        Ok(Some(Checkpoint {
            next_offset: c.next_offset,
            pipeline: c.pipeline,
            rollups_from: c.rollups_from,
            rollups_end: c.rollups_end,
            format: stored.version,
        }))
    }

    /// Replaces the partition's checkpoint in one write.
    pub fn save(&self, topic: &str, partition: i32, checkpoint: Checkpoint) -> Result<(), StateError> {
        // Written as the format this build writes, whatever `checkpoint.format` says.
        let stored = Stored {
            version: CHECKPOINT_FORMAT,
            checkpoint: StoredCheckpoint {
                next_offset: checkpoint.next_offset,
                pipeline: checkpoint.pipeline,
                rollups_from: checkpoint.rollups_from,
                rollups_end: checkpoint.rollups_end,
            },
        };
        let bytes = bincode::encode_to_vec(&stored, bincode::config::standard()).unwrap_or_default();
        self.db.put(key(topic, partition), bytes)?;
        Ok(())
    }

    /// Forgets a partition's checkpoint (an operator's replay makes it stale).
    pub fn remove(&self, topic: &str, partition: i32) -> Result<(), StateError> {
        self.db.delete(key(topic, partition))?;
        Ok(())
    }

    /// Bytes held by the block cache (which also carries the memtables' charge).
    pub fn memory_bytes(&self) -> usize {
        self.cache.get_usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tributary-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn checkpoints_survive_reopening_and_are_per_partition() {
        let dir = temp_dir("reopen");
        {
            let store = StateStore::open(&dir, 8 << 20, 4 << 20).expect("open");
            let c = Checkpoint {
                next_offset: 42,
                pipeline: vec![1, 2, 3],
                rollups_from: Some(5),
                rollups_end: Some(9),
                format: CHECKPOINT_FORMAT,
            };
            store.save("metrics", 3, c).expect("save");
            assert_eq!(store.load("metrics", 4).expect("load"), None);
        }
        let store = StateStore::open(&dir, 8 << 20, 4 << 20).expect("reopen");
        let c = store.load("metrics", 3).expect("load").expect("present");
        assert_eq!((c.next_offset, c.pipeline), (42, vec![1, 2, 3]));
        assert_eq!((c.rollups_from, c.rollups_end), (Some(5), Some(9)));
        store.remove("metrics", 3).expect("remove");
        assert_eq!(store.load("metrics", 3).expect("load"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_checkpoint_is_reported_not_used() {
        let dir = temp_dir("corrupt");
        let store = StateStore::open(&dir, 8 << 20, 4 << 20).expect("open");
        store
            .db
            .put(key("metrics", 0), b"\xff\xff\xff garbage")
            .expect("put");
        assert!(store.load("metrics", 0).is_err());
        // The previous format is read (and says so); newer and older ones are refused.
        for (version, readable) in [
            (2, true),
            (CHECKPOINT_FORMAT, true),
            (CHECKPOINT_FORMAT + 1, false),
            (1, false),
        ] {
            let stored = Stored {
                version,
                checkpoint: StoredCheckpoint {
                    next_offset: 7,
                    pipeline: vec![9],
                    rollups_from: None,
                    rollups_end: None,
                },
            };
            let bytes = bincode::encode_to_vec(&stored, bincode::config::standard()).expect("encode");
            store.db.put(key("metrics", 1), bytes).expect("put");
            match store.load("metrics", 1) {
                Ok(Some(c)) => assert!(readable && c.format == version && c.next_offset == 7, "{version}"),
                Err(StateError::Format { found }) => assert!(!readable && found == version, "{version}"),
                other => panic!("{version}: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
