//! The runtime of the rollup and detector apps: a plain rdkafka consumer in a consumer
//! group, a poll thread that copies records into per-partition batches, worker threads that
//! run the pipelines, an idempotent producer, and commits of acknowledged prefixes only.
//! Rebalances are handled in the consumer's callbacks on the poll thread: on revoke the
//! partitions' queued batches are processed, their outputs flushed and their offsets
//! committed before the partitions are released; on assign fresh pipelines are created.
//!
//! - [`poll`]: the poll thread and loop, start-up and shutdown;
//! - [`coordinator`]: who owns which partition, assignment and revocation;
//! - [`recovery`]: where an assigned partition resumes and how its state comes back;
//! - [`rebuild`]: partitions with an undelivered output rebuilt in place;
//! - [`commit`]: commits with replay plans, confirmed by the broker;
//! - [`control`]: operator requests (replay) to a running runtime;
//! - [`context`]: the consumer's callbacks;
//! - [`worker`]: worker threads running the partitions' pipelines, fed [`batch`]es;
//! - [`output`]: a partition's outputs produced to Kafka;
//! - [`ledger`], [`producer`]: output acknowledgements, delivery reports, and the producer
//!   replaced after a fatal error;
//! - [`plans`]: where plans and coarse rows live on the broker;
//! - [`history`]: earlier plans kept for operator replays;
//! - [`operator`]: operator replays against the broker;
//! - [`topics`]: topic preparation.

mod batch;
mod commit;
mod context;
mod control;
mod coordinator;
pub mod history;
pub mod ledger;
pub mod operator;
mod output;
pub mod plans;
mod poll;
pub mod producer;
mod rebuild;
mod recovery;
pub mod topics;
mod worker;

pub use control::{ControlHandle, ControlRequest};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::pipeline::PipelineSpec;

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tp {
    pub topic: Arc<str>,
    pub partition: i32,
}

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("kafka: cannot {action}: {source}")]
    Kafka {
        action: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("replay plans: {0}")]
    Plans(#[from] plans::PlanStoreError),
    #[error("topic layout: {0}")]
    Topology(String),
    #[error("outputs were not delivered, stopped without committing past them: {0}")]
    Delivery(String),
    #[error("state store: {0}")]
    State(#[from] crate::state::StateError),
    #[error("cannot start {what}: {source}")]
    Start {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stopped before start-up finished")]
    Stopped,
    #[error("a runtime thread panicked")]
    Panicked,
}

impl RuntimeError {
    /// Whether a restart can be expected to help (Kafka trouble) or not (bad setup).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RuntimeError::Kafka { .. } | RuntimeError::Plans(_) | RuntimeError::Delivery(_)
        )
    }

    /// A broker error with what was being done.
    pub fn kafka(action: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let action = action.into();
        move |source| RuntimeError::Kafka { action, source }
    }

    /// A thread or listener that could not start.
    pub fn start(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| RuntimeError::Start { what, source }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub records: u64,
    pub rollups: u64,
    pub anomalies: u64,
    pub dead_lettered: u64,
    pub late: u64,
}

/// A running pipeline. Dropping it does not stop it: call [`Runtime::stop`] and
/// [`Runtime::join`].
pub struct Runtime {
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    control: ControlHandle,
    thread: JoinHandle<Result<RunSummary, RuntimeError>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// Validates `config` and starts consuming on a background thread.
    pub fn start(config: Config) -> Result<Self, RuntimeError> {
        config.validate()?;
        let spec = config.pipeline_spec()?;
        Self::start_with(config, spec)
    }

    /// Starts with a pipeline other than the one `config` describes, e.g. with both
    /// stages off: the benchmarks' "consume and decode only through the runtime" limit,
    /// which a configuration refuses.
    pub fn start_with(config: Config, spec: PipelineSpec) -> Result<Self, RuntimeError> {
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(Metrics::new());
        let (control_tx, control_rx) = mpsc::sync_channel(4);
        let thread = {
            let stop = stop.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("tributary-poll".into())
                .spawn(move || poll::poll_thread(config, spec, stop, metrics, control_rx))
                .map_err(RuntimeError::start("the poll thread"))?
        };
        Ok(Self {
            stop,
            metrics,
            control: ControlHandle { tx: control_tx },
            thread,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Operator requests (replay) to this runtime.
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Asks the runtime to finish: process what was read, flush outputs, commit, leave the
    /// group.
    pub fn stop(&self) {
        self.metrics.group.stopping.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    pub fn join(self) -> Result<RunSummary, RuntimeError> {
        self.thread.join().map_err(|_| RuntimeError::Panicked)?
    }
}
