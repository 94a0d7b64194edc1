//! Writes batches to Cassandra/ScyllaDB with the scylla driver: prepared INSERTs, replica
//! sets from the driver's view of the ring, UNLOGGED batches whose first statement routes
//! them to a replica that owns every row, a cap on requests in flight per node, and errors
//! classified by variant as retryable or not.

use foldhash::HashMap;
use std::sync::{Arc, Mutex};

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::routing::Token;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::sync::Semaphore;

use crate::batcher::ReplicaSet;
use crate::config::{WriterConfig, consistency};
use crate::rows::Row;
use crate::schema::TableKind;
use crate::token::{TokenError, TokenKey};

/// How a failed write should be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Timeouts, overload, unavailable replicas, lost connections: try again later.
    #[error("retryable: {message}")]
    Retryable { message: String, overload: bool },
    /// The cluster refuses these values for good (invalid, too large, …).
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Classifies a driver error by variant, never by message text.
pub fn classify(e: &ExecutionError) -> WriteError {
    match e {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, msg)) => match db {
            DbError::SyntaxError
            | DbError::Invalid
            | DbError::AlreadyExists { .. }
            | DbError::Unauthorized
            | DbError::ConfigError
            | DbError::FunctionFailure { .. } => WriteError::Rejected(format!("{db}: {msg}")),
            DbError::Overloaded | DbError::WriteTimeout { .. } | DbError::RateLimitReached { .. } => {
                WriteError::Retryable {
                    message: format!("{db}: {msg}"),
                    overload: true,
                }
            }
            _ => WriteError::Retryable {
                message: format!("{db}: {msg}"),
                overload: false,
            },
        },
        ExecutionError::LastAttemptError(RequestAttemptError::SerializationError(s)) => {
            WriteError::Rejected(s.to_string())
        }
        ExecutionError::BadQuery(b) => WriteError::Rejected(b.to_string()),
        ExecutionError::RequestTimeout(_) => WriteError::Retryable {
            message: e.to_string(),
            overload: true,
        },
        other => WriteError::Retryable {
            message: other.to_string(),
            overload: false,
        },
    }
}

/// Why the sink cannot start or a row cannot be routed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    // The driver's errors are large: boxed so a Result stays small on the row path.
    #[error("cannot connect: {0}")]
    Connect(Box<scylla::errors::NewSessionError>),
    #[error("{source}\n  while running: {statement}")]
    Schema {
        statement: String,
        #[source]
        source: Box<ExecutionError>,
    },
    #[error("cannot refresh the cluster's metadata: {0}")]
    Metadata(Box<scylla::errors::MetadataError>),
    #[error("cannot prepare the INSERT for {table}: {source} (has `tributary-writer schema apply` run?)")]
    Prepare {
        table: String,
        #[source]
        source: Box<scylla::errors::PrepareError>,
    },
    #[error("no statement for {0:?}")]
    NoStatement(TableKind),
    #[error("cannot compute the token: {0}")]
    Token(#[from] TokenError),
    #[error("the statement has no partition key")]
    NoPartitionKey,
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("cannot read cassandra.password_file {file:?}: {source}")]
    PasswordFile {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Connects to the cluster (the caller retries with backoff).
pub async fn connect(config: &WriterConfig) -> Result<Session, SinkError> {
    let c = &config.cassandra;
    let mut builder = SessionBuilder::new()
        .known_nodes(&c.contact_points)
        .connection_timeout(c.request_timeout.0);
    if c.tls {
        builder = builder.tls_context(Some(tls_context(c)?));
    }
    if !c.username.is_empty() {
        // Read at each connect, so a rotated secret is picked up by the next attempt.
        let password = c.password().map_err(|e| SinkError::PasswordFile {
            file: c.password_file.clone(),
            source: e,
        })?;
        builder = builder.user(&c.username, password);
    }
    builder.build().await.map_err(|e| SinkError::Connect(Box::new(e)))
}

/// TLS that verifies the nodes against `ca_file` (or the system's trust store), with the
/// client certificate for mutual TLS when one is set. Verification is never turned off.
fn tls_context(c: &crate::config::CassandraConfig) -> Result<openssl::ssl::SslContext, SinkError> {
    use openssl::ssl::{SslContextBuilder, SslFiletype, SslMethod, SslVerifyMode};
    let tls = |what: &str, e: openssl::error::ErrorStack| SinkError::Tls(format!("{what}: {e}"));
    let mut b = SslContextBuilder::new(SslMethod::tls_client()).map_err(|e| tls("TLS", e))?;
    if c.ca_file.is_empty() {
        b.set_default_verify_paths()
            .map_err(|e| tls("the system trust store", e))?;
    } else {
        b.set_ca_file(&c.ca_file)
            .map_err(|e| tls(&format!("cassandra.ca_file {:?}", c.ca_file), e))?;
    }
    b.set_verify(SslVerifyMode::PEER);
    if !c.cert_file.is_empty() {
        b.set_certificate_chain_file(&c.cert_file)
            .map_err(|e| tls(&format!("cassandra.cert_file {:?}", c.cert_file), e))?;
        b.set_private_key_file(&c.key_file, SslFiletype::PEM)
            .map_err(|e| tls(&format!("cassandra.key_file {:?}", c.key_file), e))?;
    }
    Ok(b.build())
}

/// Runs the schema statements (idempotent).
pub async fn apply_schema(session: &Session, config: &WriterConfig) -> Result<usize, SinkError> {
    let statements = crate::schema::statements(config);
    for s in &statements {
        session
            .query_unpaged(s.as_str(), &[])
            .await
            .map_err(|source| SinkError::Schema {
                statement: s.clone(),
                source: Box::new(source),
            })?;
    }
    session
        .refresh_metadata()
        .await
        .map_err(|e| SinkError::Metadata(Box::new(e)))?;
    Ok(statements.len())
}

pub struct Sink {
    session: Arc<Session>,
    keyspace: String,
    statements: HashMap<TableKind, PreparedStatement>,
    /// The partition key of each statement that has one, for [`Sink::token`].
    keys: HashMap<TableKind, TokenKey>,
    consistency: Consistency,
    in_flight: InFlight,
    /// Replica sets by (table, token), valid for one cluster-state snapshot: a ring change
    /// (the driver publishes a new snapshot) empties it.
    replica_cache: Mutex<ReplicaCache>,
}

#[derive(Default)]
struct ReplicaCache {
    /// The snapshot the entries belong to; holding it keeps its address from being reused.
    state: Option<Arc<scylla::cluster::ClusterState>>,
    sets: HashMap<(TableKind, i64), ReplicaSet>,
    /// The nodes of the last snapshot, to log ring changes (not schema refreshes).
    nodes: Vec<String>,
    /// Counts snapshots seen.
    epoch: u64,
}

fn node_addresses(state: &scylla::cluster::ClusterState) -> Vec<String> {
    let mut nodes: Vec<String> = state
        .get_nodes_info()
        .iter()
        .map(|n| n.address.to_string())
        .collect();
    nodes.sort();
    nodes
}

/// Entries kept before the cache starts over (bounds memory with many partitions).
const REPLICA_CACHE_MAX: usize = 1 << 20;

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Prepares an INSERT for every table the configuration names.
    pub async fn new(session: Arc<Session>, config: &WriterConfig) -> Result<Self, SinkError> {
        let ks = config.cassandra.keyspace.clone();
        let consistency = consistency(&config.cassandra.consistency).unwrap_or(Consistency::LocalQuorum);
        let mut kinds = vec![TableKind::Points, TableKind::Anomalies];
        kinds.extend(config.ttl.rollups.keys().map(|r| TableKind::Rollups(r.clone())));
        let mut statements = HashMap::default();
        let mut keys = HashMap::default();
        for kind in kinds {
            let mut p = session
                .prepare(kind.insert(&ks))
                .await
                .map_err(|source| SinkError::Prepare {
                    table: format!("{ks}.{}", kind.table_name()),
                    source: Box::new(source),
                })?;
            p.set_consistency(consistency);
            if let Some(key) = TokenKey::of(&p) {
                keys.insert(kind.clone(), key);
            }
            statements.insert(kind, p);
        }
        Ok(Self {
            session,
            keyspace: ks,
            statements,
            keys,
            consistency,
            in_flight: InFlight::new(config.limits.max_in_flight_per_node),
            replica_cache: Mutex::new(ReplicaCache::default()),
        })
    }

    /// The row's token, computed once when the row is read.
    pub fn token(&self, row: &Row) -> Result<Token, SinkError> {
        match self.keys.get(&row.table) {
            Some(key) => Ok(key.token(&row.values)?),
            None if self.statements.contains_key(&row.table) => Err(SinkError::NoPartitionKey),
            None => Err(SinkError::NoStatement(row.table.clone())),
        }
    }

    /// The cache for the driver's current view of the ring: a new snapshot (ring change or
    /// schema refresh) empties it and starts a new epoch.
    fn current_cache(
        &self,
    ) -> (
        std::sync::MutexGuard<'_, ReplicaCache>,
        Arc<scylla::cluster::ClusterState>,
    ) {
        let state = self.session.get_cluster_state();
        let mut cache = self.replica_cache.lock().unwrap_or_else(|p| p.into_inner());
        let current = cache.state.as_ref().is_some_and(|s| Arc::ptr_eq(s, &state));
        if !current || cache.sets.len() >= REPLICA_CACHE_MAX {
            if !current {
                cache.epoch += 1;
                let nodes = node_addresses(&state);
                if nodes != cache.nodes {
                    tracing::info!(?nodes, "cluster ring changed; replica sets follow it");
                    cache.nodes = nodes;
                }
            }
            cache.state = Some(state.clone());
            cache.sets.clear();
        }
        (cache, state)
    }

    /// The epoch of the driver's current view of the ring. Rows grouped under an older
    /// epoch must be regrouped before they are written.
    pub fn epoch(&self) -> u64 {
        self.current_cache().0.epoch
    }

    /// The replica set of a token of `table` (node host ids, sorted) and the epoch it
    /// belongs to, from the driver's current view of the ring.
    pub fn replica_set(&self, table: &TableKind, token: Token) -> (ReplicaSet, u64) {
        let (mut cache, state) = self.current_cache();
        let epoch = cache.epoch;
        let key = (table.clone(), token.value());
        if let Some(set) = cache.sets.get(&key) {
            return (set.clone(), epoch);
        }
        let mut ids: Vec<u128> = state
            .get_token_endpoints(&self.keyspace, &table.table_name(), token)
            .iter()
            .map(|(node, _)| node.host_id.as_u128())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let set: ReplicaSet = ids.into();
        cache.sets.insert(key, set.clone());
        (set, epoch)
    }

    fn permits(&self, replicas: &ReplicaSet) -> Vec<Arc<Semaphore>> {
        self.in_flight.semaphores(replicas)
    }

    /// Writes the rows of one replica set: a plain statement for one row, an UNLOGGED
    /// batch otherwise. The driver routes a batch by its first statement's token, and every
    /// row shares that replica set, so the coordinator owns every row.
    pub async fn write(&self, rows: &[&Row], replicas: &ReplicaSet) -> Result<(), WriteError> {
        // Hold a permit on every node that may coordinate: a bound per node that holds
        // whichever replica the driver picks.
        let semaphores = self.permits(replicas);
        let mut permits = Vec::with_capacity(semaphores.len());
        for s in &semaphores {
            permits.push(
                s.clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| WriteError::Retryable {
                        message: e.to_string(),
                        overload: false,
                    })?,
            );
        }
        let result = match rows {
            [] => Ok(()),
            [one] => {
                let stmt = self
                    .statements
                    .get(&one.table)
                    .ok_or_else(|| WriteError::Rejected(format!("no statement for {:?}", one.table)))?;
                self.session.execute_unpaged(stmt, &one.values).await.map(|_| ())
            }
            many => {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_consistency(self.consistency);
                let mut values = Vec::with_capacity(many.len());
                for r in many {
                    let stmt = self
                        .statements
                        .get(&r.table)
                        .ok_or_else(|| WriteError::Rejected(format!("no statement for {:?}", r.table)))?;
                    batch.append_statement(stmt.clone());
                    values.push(&r.values);
                }
                self.session.batch(&batch, values).await.map(|_| ())
            }
        };
        drop(permits);
        result.map_err(|e| classify(&e))
    }
}

/// The cap on requests in flight per node. A request holds a permit of every node of its
/// replica set (whichever the driver picks as coordinator is covered); a request without
/// a replica set (no token) holds one of a shared "unrouted" bound, so no row escapes the
/// cap.
#[derive(Debug)]
struct InFlight {
    max: usize,
    per_node: Mutex<HashMap<u128, Arc<Semaphore>>>,
    unrouted: Arc<Semaphore>,
}

impl InFlight {
    fn new(max: usize) -> Self {
        Self {
            max,
            per_node: Mutex::new(HashMap::default()),
            unrouted: Arc::new(Semaphore::new(max)),
        }
    }

    fn semaphores(&self, replicas: &[u128]) -> Vec<Arc<Semaphore>> {
        if replicas.is_empty() {
            return vec![self.unrouted.clone()];
        }
        let mut map = self.per_node.lock().unwrap_or_else(|p| p.into_inner());
        replicas
            .iter()
            .map(|n| {
                map.entry(*n)
                    .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
                    .clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_counts_against_an_in_flight_cap_routed_or_not() {
        let cap = InFlight::new(2);
        let a = cap.semaphores(&[1, 2]);
        assert_eq!(a.len(), 2);
        let permits: Vec<_> = (0..2)
            .filter_map(|_| a[0].clone().try_acquire_owned().ok())
            .collect();
        assert_eq!(permits.len(), 2);
        assert!(
            cap.semaphores(&[1])[0].clone().try_acquire_owned().is_err(),
            "node 1 is at its cap"
        );
        assert!(
            cap.semaphores(&[3])[0].clone().try_acquire_owned().is_ok(),
            "node 3 is not"
        );
        let unrouted = cap.semaphores(&[]);
        assert_eq!(unrouted.len(), 1, "a row without a token still takes a permit");
        let held: Vec<_> = (0..2)
            .filter_map(|_| unrouted[0].clone().try_acquire_owned().ok())
            .collect();
        assert_eq!(held.len(), 2);
        assert!(
            cap.semaphores(&[])[0].clone().try_acquire_owned().is_err(),
            "unrouted rows are capped too"
        );
    }
}
