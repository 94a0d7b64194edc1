//! Shared in-memory storage with upsert semantics and TTLs: keyspaces, tables and their
//! schemas. Every node of the ring serves the same data; replica placement matters only
//! for routing and the counters. Statements are run by [`super::execute`] (writes and
//! schema), [`super::select`] (reads), [`super::prepare`] (bind markers) and
//! [`super::system_tables`] (what drivers read to discover the ring).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::token::{TokenRing, murmur3_token};
use super::types::CqlType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PartitionKey,
    Clustering,
    Regular,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub ty: CqlType,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub keyspace: String,
    pub name: String,
    pub columns: Vec<Column>,
    pub partition_key: Vec<usize>,
    pub clustering: Vec<usize>,
    /// Per clustering column: stored (and read) newest first.
    pub descending: Vec<bool>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone)]
pub(super) struct StoredRow {
    pub(super) clustering: Vec<Vec<u8>>,
    pub(super) cells: Vec<Option<Vec<u8>>>,
    /// Each cell's write timestamp (microseconds): a write older than a cell's loses, as
    /// in Cassandra, whatever order the writes arrive in.
    pub(super) written: Vec<i64>,
    pub(super) expires: Option<Instant>,
}

#[derive(Debug)]
pub struct Table {
    pub schema: Arc<TableSchema>,
    /// Partitions in token order, as a full scan returns them.
    pub(super) partitions: BTreeMap<(i64, Vec<u8>), Vec<StoredRow>>,
}

#[derive(Debug)]
pub struct Keyspace {
    pub name: String,
    pub replication: Vec<(String, String)>,
    pub rf: usize,
    pub tables: BTreeMap<String, Table>,
}

/// A query error, mapped to a CQL error code by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    Invalid(String),
    Syntax(String),
    AlreadyExists { keyspace: String, table: String },
}

impl ExecError {
    pub(super) fn invalid(m: impl Into<String>) -> Self {
        ExecError::Invalid(m.into())
    }
}

/// Cassandra stores each partition key component behind a 16-bit length and refuses
/// longer ones; so does the emulator, which gives tests a row the cluster rejects for good.
const MAX_KEY_COMPONENT: usize = u16::MAX as usize;

pub(super) fn check_key_component(bytes: &[u8]) -> Result<(), ExecError> {
    if bytes.len() > MAX_KEY_COMPONENT {
        return Err(ExecError::invalid(format!(
            "Key length of {} is longer than maximum of {MAX_KEY_COMPONENT}",
            bytes.len()
        )));
    }
    Ok(())
}

/// What executing a statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Void,
    Rows(RowSet),
    SetKeyspace(String),
    SchemaChange {
        change: &'static str,
        target: &'static str,
        keyspace: String,
        table: Option<String>,
    },
}

/// Rows with their column specs.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSet {
    pub keyspace: String,
    pub table: String,
    pub columns: Vec<(String, CqlType)>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
}

/// A bind marker's name and type, for PREPARE results.
#[derive(Debug, Clone, PartialEq)]
pub struct BindSpec {
    pub name: String,
    pub ty: CqlType,
}

/// Facts about the node answering a query, for `system.local` and `system.peers`.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub index: usize,
    pub addresses: Vec<std::net::IpAddr>,
    pub host_ids: Vec<[u8; 16]>,
}

#[derive(Debug)]
pub struct Store {
    pub keyspaces: BTreeMap<String, Keyspace>,
    pub ring: TokenRing,
    pub schema_version: [u8; 16],
}

pub(super) const SYSTEM_KEYSPACES: [&str; 2] = ["system", "system_schema"];

impl Store {
    pub fn new(ring: TokenRing) -> Self {
        Self {
            keyspaces: BTreeMap::new(),
            ring,
            schema_version: uuid_from(1),
        }
    }

    pub(super) fn bump_schema(&mut self) {
        let next = u64::from_be_bytes(self.schema_version[8..16].try_into().unwrap_or([0; 8])) + 1;
        self.schema_version = uuid_from(next);
    }

    pub fn table(&self, keyspace: &str, name: &str) -> Result<&Table, ExecError> {
        self.keyspaces
            .get(keyspace)
            .ok_or_else(|| ExecError::invalid(format!("Keyspace {keyspace} does not exist")))?
            .tables
            .get(name)
            .ok_or_else(|| ExecError::invalid(format!("unconfigured table {name}")))
    }

    /// Replica nodes of a partition key, primary first.
    pub fn replicas(&self, keyspace: &str, pk_bytes: &[u8]) -> Vec<usize> {
        let rf = self.keyspaces.get(keyspace).map_or(1, |k| k.rf);
        self.ring.replicas(murmur3_token(pk_bytes), rf)
    }
}

/// A version-4-shaped UUID made from `n`, stable across runs.
pub fn uuid_from(n: u64) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&0x7472_6962_7574_6172u64.to_be_bytes());
    u[8..].copy_from_slice(&n.to_be_bytes());
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}
