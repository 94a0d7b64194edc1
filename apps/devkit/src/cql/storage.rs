//! Shared in-memory storage with upsert semantics and TTLs, the schema, and the virtual
//! system tables the drivers read. Every node of the ring serves the same data; replica
//! placement matters only for routing and the counters.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::parser::{Condition, Op, Operand, Selection, Statement, TableRef, Term};
use super::token::{TokenRing, murmur3_token, partition_key_bytes};
use super::types::{self, CqlType};

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
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

#[derive(Debug, Clone)]
struct StoredRow {
    clustering: Vec<Vec<u8>>,
    cells: Vec<Option<Vec<u8>>>,
    expires: Option<Instant>,
}

#[derive(Debug)]
pub struct Table {
    pub schema: Arc<TableSchema>,
    /// Partitions in token order, as a full scan returns them.
    partitions: BTreeMap<(i64, Vec<u8>), Vec<StoredRow>>,
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
    fn invalid(m: impl Into<String>) -> Self {
        ExecError::Invalid(m.into())
    }
}

/// Cassandra stores each partition key component behind a 16-bit length and refuses
/// longer ones; so does the emulator, which gives tests a row the cluster rejects for good.
const MAX_KEY_COMPONENT: usize = u16::MAX as usize;

fn check_key_component(bytes: &[u8]) -> Result<(), ExecError> {
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

const SYSTEM_KEYSPACES: [&str; 2] = ["system", "system_schema"];

impl Store {
    pub fn new(ring: TokenRing) -> Self {
        Self {
            keyspaces: BTreeMap::new(),
            ring,
            schema_version: uuid_from(1),
        }
    }

    fn bump_schema(&mut self) {
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

    /// Binds' names and types (and which binds form the partition key), without executing.
    pub fn bind_specs(
        &self,
        stmt: &Statement,
        current: Option<&str>,
    ) -> Result<(Vec<BindSpec>, Vec<u16>, String, String), ExecError> {
        let mut specs: Vec<(usize, BindSpec)> = Vec::new();
        let (ks, table) = match stmt {
            Statement::Insert { table, .. } | Statement::Select { table, .. } => resolve(table, current)?,
            _ => (current.unwrap_or_default().to_owned(), String::new()),
        };
        let schema = if SYSTEM_KEYSPACES.contains(&ks.as_str()) || table.is_empty() {
            None
        } else {
            Some(self.table(&ks, &table)?.schema.clone())
        };
        let col_type = |name: &str| -> Result<CqlType, ExecError> {
            match &schema {
                Some(s) => s
                    .column(name)
                    .map(|i| s.columns[i].ty.clone())
                    .ok_or_else(|| ExecError::invalid(format!("Undefined column name {name}"))),
                None => Ok(CqlType::Text),
            }
        };
        let mut pk_indexes = Vec::new();
        match stmt {
            Statement::Insert {
                columns, values, ttl, ..
            } => {
                for (c, v) in columns.iter().zip(values) {
                    if let Term::Bind(i) = v {
                        specs.push((
                            *i,
                            BindSpec {
                                name: c.clone(),
                                ty: col_type(c)?,
                            },
                        ));
                    }
                }
                if let Some(Term::Bind(i)) = ttl {
                    specs.push((
                        *i,
                        BindSpec {
                            name: "[ttl]".into(),
                            ty: CqlType::Int,
                        },
                    ));
                }
                if let Some(s) = &schema {
                    for &pk in &s.partition_key {
                        let pos = columns.iter().position(|c| *c == s.columns[pk].name);
                        match pos.map(|p| &values[p]) {
                            Some(Term::Bind(i)) => pk_indexes.push(*i as u16),
                            _ => {
                                pk_indexes.clear();
                                break;
                            }
                        }
                    }
                }
            }
            Statement::Select {
                conditions, limit, ..
            } => {
                for c in conditions {
                    match (&c.value, c.op) {
                        (Operand::One(Term::Bind(i)), Op::In) => specs.push((
                            *i,
                            BindSpec {
                                name: format!("in({})", c.column),
                                ty: CqlType::List(Box::new(col_type(&c.column)?)),
                            },
                        )),
                        (Operand::One(Term::Bind(i)), _) => specs.push((
                            *i,
                            BindSpec {
                                name: c.column.clone(),
                                ty: col_type(&c.column)?,
                            },
                        )),
                        (Operand::List(items), _) => {
                            for t in items {
                                if let Term::Bind(i) = t {
                                    specs.push((
                                        *i,
                                        BindSpec {
                                            name: c.column.clone(),
                                            ty: col_type(&c.column)?,
                                        },
                                    ));
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if let Some(Term::Bind(i)) = limit {
                    specs.push((
                        *i,
                        BindSpec {
                            name: "[limit]".into(),
                            ty: CqlType::Int,
                        },
                    ));
                }
                if let Some(s) = &schema {
                    for &pk in &s.partition_key {
                        let bound = conditions
                            .iter()
                            .find(|c| c.column == s.columns[pk].name && c.op == Op::Eq);
                        match bound.map(|c| &c.value) {
                            Some(Operand::One(Term::Bind(i))) => pk_indexes.push(*i as u16),
                            _ => {
                                pk_indexes.clear();
                                break;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        specs.sort_by_key(|s| s.0);
        Ok((specs.into_iter().map(|s| s.1).collect(), pk_indexes, ks, table))
    }

    /// The partition key bytes an INSERT writes to (for routing and counters).
    pub fn insert_target(
        &self,
        stmt: &Statement,
        values: &[Option<Vec<u8>>],
        current: Option<&str>,
    ) -> Result<(String, Vec<u8>), ExecError> {
        let Statement::Insert {
            table,
            columns,
            values: terms,
            ..
        } = stmt
        else {
            return Err(ExecError::invalid(
                "only INSERT statements are supported in batches",
            ));
        };
        let (ks, name) = resolve(table, current)?;
        let schema = self.table(&ks, &name)?.schema.clone();
        let mut parts = Vec::new();
        for &pk in &schema.partition_key {
            let pos = columns
                .iter()
                .position(|c| *c == schema.columns[pk].name)
                .ok_or_else(|| {
                    ExecError::invalid(format!(
                        "Some partition key parts are missing: {}",
                        schema.columns[pk].name
                    ))
                })?;
            let part = term_value(&terms[pos], values, &schema.columns[pk].ty)?
                .ok_or_else(|| ExecError::invalid("null partition key"))?;
            check_key_component(&part)?;
            parts.push(part);
        }
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        Ok((ks, partition_key_bytes(&refs)))
    }

    /// Executes one statement with its bound values.
    pub fn execute(
        &mut self,
        stmt: &Statement,
        values: &[Option<Vec<u8>>],
        current: Option<&str>,
        node: &NodeView,
    ) -> Result<Outcome, ExecError> {
        match stmt {
            Statement::Use(ks) => {
                if self.keyspaces.contains_key(ks) || SYSTEM_KEYSPACES.contains(&ks.as_str()) {
                    Ok(Outcome::SetKeyspace(ks.clone()))
                } else {
                    Err(ExecError::invalid(format!("Keyspace '{ks}' does not exist")))
                }
            }
            Statement::CreateKeyspace {
                name,
                if_not_exists,
                replication,
            } => {
                if self.keyspaces.contains_key(name) || SYSTEM_KEYSPACES.contains(&name.as_str()) {
                    return if *if_not_exists {
                        Ok(Outcome::Void)
                    } else {
                        Err(ExecError::AlreadyExists {
                            keyspace: name.clone(),
                            table: String::new(),
                        })
                    };
                }
                let rf = replication_factor(replication)?;
                self.keyspaces.insert(
                    name.clone(),
                    Keyspace {
                        name: name.clone(),
                        replication: replication.clone(),
                        rf,
                        tables: BTreeMap::new(),
                    },
                );
                self.bump_schema();
                Ok(Outcome::SchemaChange {
                    change: "CREATED",
                    target: "KEYSPACE",
                    keyspace: name.clone(),
                    table: None,
                })
            }
            Statement::CreateTable {
                table,
                if_not_exists,
                columns,
                partition_key,
                clustering,
            } => {
                let (ks, name) = resolve(table, current)?;
                let keyspace = self
                    .keyspaces
                    .get_mut(&ks)
                    .ok_or_else(|| ExecError::invalid(format!("Keyspace {ks} does not exist")))?;
                if keyspace.tables.contains_key(&name) {
                    return if *if_not_exists {
                        Ok(Outcome::Void)
                    } else {
                        Err(ExecError::AlreadyExists {
                            keyspace: ks,
                            table: name,
                        })
                    };
                }
                let mut cols = Vec::new();
                for (n, t) in columns {
                    let kind = if partition_key.contains(n) {
                        Kind::PartitionKey
                    } else if clustering.contains(n) {
                        Kind::Clustering
                    } else {
                        Kind::Regular
                    };
                    cols.push(Column {
                        name: n.clone(),
                        ty: CqlType::parse(t).map_err(ExecError::Invalid)?,
                        kind,
                    });
                }
                let find = |n: &String| {
                    cols.iter().position(|c| &c.name == n).ok_or_else(|| {
                        ExecError::invalid(format!("Unknown definition {n} referenced in PRIMARY KEY"))
                    })
                };
                let pk = partition_key.iter().map(find).collect::<Result<Vec<_>, _>>()?;
                let ck = clustering.iter().map(find).collect::<Result<Vec<_>, _>>()?;
                let schema = TableSchema {
                    keyspace: ks.clone(),
                    name: name.clone(),
                    columns: cols,
                    partition_key: pk,
                    clustering: ck,
                };
                keyspace.tables.insert(
                    name.clone(),
                    Table {
                        schema: Arc::new(schema),
                        partitions: BTreeMap::new(),
                    },
                );
                self.bump_schema();
                Ok(Outcome::SchemaChange {
                    change: "CREATED",
                    target: "TABLE",
                    keyspace: ks,
                    table: Some(name),
                })
            }
            Statement::DropKeyspace { name, if_exists } => {
                if self.keyspaces.remove(name).is_none() && !if_exists {
                    return Err(ExecError::invalid(format!("Keyspace {name} does not exist")));
                }
                self.bump_schema();
                Ok(Outcome::SchemaChange {
                    change: "DROPPED",
                    target: "KEYSPACE",
                    keyspace: name.clone(),
                    table: None,
                })
            }
            Statement::DropTable { table, if_exists } => {
                let (ks, name) = resolve(table, current)?;
                let removed = self.keyspaces.get_mut(&ks).and_then(|k| k.tables.remove(&name));
                if removed.is_none() && !if_exists {
                    return Err(ExecError::invalid(format!("unconfigured table {name}")));
                }
                self.bump_schema();
                Ok(Outcome::SchemaChange {
                    change: "DROPPED",
                    target: "TABLE",
                    keyspace: ks,
                    table: Some(name),
                })
            }
            Statement::Truncate(table) => {
                let (ks, name) = resolve(table, current)?;
                let t = self
                    .keyspaces
                    .get_mut(&ks)
                    .and_then(|k| k.tables.get_mut(&name))
                    .ok_or_else(|| ExecError::invalid(format!("unconfigured table {name}")))?;
                t.partitions.clear();
                Ok(Outcome::Void)
            }
            Statement::Insert {
                table,
                columns,
                values: terms,
                ttl,
            } => {
                let (ks, name) = resolve(table, current)?;
                if SYSTEM_KEYSPACES.contains(&ks.as_str()) {
                    return Err(ExecError::invalid("system tables are read-only"));
                }
                let t = self
                    .keyspaces
                    .get_mut(&ks)
                    .and_then(|k| k.tables.get_mut(&name))
                    .ok_or_else(|| ExecError::invalid(format!("unconfigured table {name}")))?;
                let schema = t.schema.clone();
                let mut cells: Vec<Option<Option<Vec<u8>>>> = vec![None; schema.columns.len()];
                for (c, term) in columns.iter().zip(terms) {
                    let i = schema
                        .column(c)
                        .ok_or_else(|| ExecError::invalid(format!("Undefined column name {c}")))?;
                    let v = term_value(term, values, &schema.columns[i].ty)?;
                    if let Some(b) = &v {
                        schema.columns[i]
                            .ty
                            .validate(b)
                            .map_err(|e| ExecError::invalid(format!("Invalid value for column {c}: {e}")))?;
                    }
                    cells[i] = Some(v);
                }
                let ttl = match ttl {
                    Some(term) => term_value(term, values, &CqlType::Int)?
                        .map(|b| i32::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 4])))
                        .filter(|s| *s > 0),
                    None => None,
                };
                let mut key = Vec::new();
                for &pk in &schema.partition_key {
                    match &cells[pk] {
                        Some(Some(b)) => {
                            check_key_component(b)?;
                            key.push(b.clone());
                        }
                        _ => {
                            return Err(ExecError::invalid(format!(
                                "Missing partition key {}",
                                schema.columns[pk].name
                            )));
                        }
                    }
                }
                let mut clustering = Vec::new();
                for &ck in &schema.clustering {
                    match &cells[ck] {
                        Some(Some(b)) => clustering.push(b.clone()),
                        _ => {
                            return Err(ExecError::invalid(format!(
                                "Missing clustering key {}",
                                schema.columns[ck].name
                            )));
                        }
                    }
                }
                let refs: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
                let pk_bytes = partition_key_bytes(&refs);
                let token = murmur3_token(&pk_bytes);
                let rows = t.partitions.entry((token, pk_bytes)).or_default();
                let expires = ttl.map(|s| Instant::now() + Duration::from_secs(s as u64));
                let ck_types: Vec<&CqlType> =
                    schema.clustering.iter().map(|&i| &schema.columns[i].ty).collect();
                let pos =
                    rows.binary_search_by(|r| compare_clustering(&ck_types, &r.clustering, &clustering));
                match pos {
                    Ok(i) => {
                        let row = &mut rows[i];
                        if row.expires.is_some_and(|e| e <= Instant::now()) {
                            row.cells = vec![None; schema.columns.len()];
                        }
                        for (slot, v) in row.cells.iter_mut().zip(cells) {
                            if let Some(v) = v {
                                *slot = v;
                            }
                        }
                        row.expires = expires;
                    }
                    Err(i) => rows.insert(
                        i,
                        StoredRow {
                            clustering,
                            cells: cells.into_iter().map(Option::flatten).collect(),
                            expires,
                        },
                    ),
                }
                Ok(Outcome::Void)
            }
            Statement::Select {
                table,
                selection,
                conditions,
                limit,
            } => {
                let (ks, name) = resolve(table, current)?;
                let limit = match limit {
                    Some(term) => term_value(term, values, &CqlType::Int)?.map(|b| {
                        i32::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 4])).max(0) as usize
                    }),
                    None => None,
                };
                let set = if SYSTEM_KEYSPACES.contains(&ks.as_str()) {
                    self.system_table(&ks, &name, node)?
                } else {
                    self.scan(&ks, &name, conditions, values)?
                };
                project(set, selection, conditions, values, limit)
            }
        }
    }

    /// Rows of a user table, narrowed by partition key when the WHERE clause names it.
    fn scan(
        &self,
        ks: &str,
        name: &str,
        conditions: &[Condition],
        values: &[Option<Vec<u8>>],
    ) -> Result<RowSet, ExecError> {
        let t = self.table(ks, name)?;
        let s = &t.schema;
        let now = Instant::now();
        let mut rows = Vec::new();
        let mut emit = |partition: &Vec<StoredRow>| {
            for r in partition.iter().filter(|r| r.expires.is_none_or(|e| e > now)) {
                rows.push(r.cells.clone());
            }
        };
        // Partition-key equality (or IN) picks partitions directly.
        let mut key_choices: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
        let mut all_keyed = true;
        for &pk in &s.partition_key {
            let col = &s.columns[pk];
            let c = conditions
                .iter()
                .find(|c| c.column == col.name && (c.op == Op::Eq || c.op == Op::In));
            let Some(c) = c else {
                all_keyed = false;
                break;
            };
            let options = operand_values(c, values, &col.ty)?;
            key_choices = key_choices
                .into_iter()
                .flat_map(|prefix| {
                    options
                        .iter()
                        .map(move |o| [prefix.clone(), vec![o.clone()]].concat())
                })
                .collect();
        }
        if all_keyed {
            for key in key_choices {
                let refs: Vec<&[u8]> = key.iter().map(Vec::as_slice).collect();
                let bytes = partition_key_bytes(&refs);
                if let Some(p) = t.partitions.get(&(murmur3_token(&bytes), bytes)) {
                    emit(p);
                }
            }
        } else {
            for p in t.partitions.values() {
                emit(p);
            }
        }
        Ok(RowSet {
            keyspace: ks.to_owned(),
            table: name.to_owned(),
            columns: s.columns.iter().map(|c| (c.name.clone(), c.ty.clone())).collect(),
            rows,
        })
    }

    fn system_table(&self, ks: &str, name: &str, node: &NodeView) -> Result<RowSet, ExecError> {
        let set = |cols: &[(&str, &str)], rows: Vec<Vec<Option<Vec<u8>>>>| RowSet {
            keyspace: ks.to_owned(),
            table: name.to_owned(),
            columns: cols
                .iter()
                .map(|(n, t)| ((*n).to_owned(), CqlType::parse(t).unwrap_or(CqlType::Text)))
                .collect(),
            rows,
        };
        let inet = |ip: &std::net::IpAddr| {
            Some(match ip {
                std::net::IpAddr::V4(v) => v.octets().to_vec(),
                std::net::IpAddr::V6(v) => v.octets().to_vec(),
            })
        };
        let tokens = |n: usize| {
            types::text_set(
                &self
                    .ring
                    .tokens_of(n)
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>(),
            )
        };
        let version = Some(self.schema_version.to_vec());
        match (ks, name) {
            ("system", "local") => {
                let i = node.index;
                Ok(set(
                    &[
                        ("key", "text"),
                        ("host_id", "uuid"),
                        ("rpc_address", "inet"),
                        ("broadcast_address", "inet"),
                        ("listen_address", "inet"),
                        ("data_center", "text"),
                        ("rack", "text"),
                        ("tokens", "set<text>"),
                        ("cluster_name", "text"),
                        ("schema_version", "uuid"),
                        ("release_version", "text"),
                        ("cql_version", "text"),
                        ("partitioner", "text"),
                        ("native_protocol_version", "text"),
                    ],
                    vec![vec![
                        types::text("local"),
                        Some(node.host_ids[i].to_vec()),
                        inet(&node.addresses[i]),
                        inet(&node.addresses[i]),
                        inet(&node.addresses[i]),
                        types::text("datacenter1"),
                        types::text("rack1"),
                        tokens(i),
                        types::text("tributary-emulated"),
                        version,
                        types::text("3.11.4"),
                        types::text("3.4.4"),
                        types::text("org.apache.cassandra.dht.Murmur3Partitioner"),
                        types::text("4"),
                    ]],
                ))
            }
            ("system", "peers") => {
                let rows = (0..self.ring.nodes())
                    .filter(|&i| i != node.index && self.ring.is_member(i))
                    .map(|i| {
                        vec![
                            inet(&node.addresses[i]),
                            Some(node.host_ids[i].to_vec()),
                            inet(&node.addresses[i]),
                            inet(&node.addresses[i]),
                            types::text("datacenter1"),
                            types::text("rack1"),
                            tokens(i),
                            version.clone(),
                            types::text("3.11.4"),
                        ]
                    })
                    .collect();
                Ok(set(
                    &[
                        ("peer", "inet"),
                        ("host_id", "uuid"),
                        ("rpc_address", "inet"),
                        ("preferred_ip", "inet"),
                        ("data_center", "text"),
                        ("rack", "text"),
                        ("tokens", "set<text>"),
                        ("schema_version", "uuid"),
                        ("release_version", "text"),
                    ],
                    rows,
                ))
            }
            ("system_schema", "keyspaces") => {
                let mut rows = Vec::new();
                for k in self.keyspaces.values() {
                    rows.push(vec![
                        types::text(&k.name),
                        Some(vec![1]),
                        types::text_map(&k.replication),
                    ]);
                }
                Ok(set(
                    &[
                        ("keyspace_name", "text"),
                        ("durable_writes", "boolean"),
                        ("replication", "map<text, text>"),
                    ],
                    rows,
                ))
            }
            ("system_schema", "tables") => {
                let rows = self
                    .keyspaces
                    .values()
                    .flat_map(|k| k.tables.values())
                    .map(|t| {
                        vec![
                            types::text(&t.schema.keyspace),
                            types::text(&t.schema.name),
                            types::text_set(&["compound".to_owned()]),
                            Some(0.01f64.to_be_bytes().to_vec()),
                            types::text(""),
                            Some(0i32.to_be_bytes().to_vec()),
                            Some(864000i32.to_be_bytes().to_vec()),
                            Some(uuid_from(t.schema.name.len() as u64).to_vec()),
                        ]
                    })
                    .collect();
                Ok(set(
                    &[
                        ("keyspace_name", "text"),
                        ("table_name", "text"),
                        ("flags", "set<text>"),
                        ("bloom_filter_fp_chance", "double"),
                        ("comment", "text"),
                        ("default_time_to_live", "int"),
                        ("gc_grace_seconds", "int"),
                        ("id", "uuid"),
                    ],
                    rows,
                ))
            }
            ("system_schema", "columns") => {
                let mut rows = Vec::new();
                for t in self.keyspaces.values().flat_map(|k| k.tables.values()) {
                    let s = &t.schema;
                    for (i, c) in s.columns.iter().enumerate() {
                        let (kind, position) = match c.kind {
                            Kind::PartitionKey => (
                                "partition_key",
                                s.partition_key.iter().position(|&p| p == i).unwrap_or(0) as i32,
                            ),
                            Kind::Clustering => (
                                "clustering",
                                s.clustering.iter().position(|&p| p == i).unwrap_or(0) as i32,
                            ),
                            Kind::Regular => ("regular", -1),
                        };
                        let order = if c.kind == Kind::Clustering { "asc" } else { "none" };
                        rows.push(vec![
                            types::text(&s.keyspace),
                            types::text(&s.name),
                            types::text(&c.name),
                            types::text(order),
                            Some(c.name.as_bytes().to_vec()),
                            types::text(kind),
                            Some(position.to_be_bytes().to_vec()),
                            types::text(&c.ty.cql_name()),
                        ]);
                    }
                }
                Ok(set(
                    &[
                        ("keyspace_name", "text"),
                        ("table_name", "text"),
                        ("column_name", "text"),
                        ("clustering_order", "text"),
                        ("column_name_bytes", "blob"),
                        ("kind", "text"),
                        ("position", "int"),
                        ("type", "text"),
                    ],
                    rows,
                ))
            }
            ("system_schema", "views") => Ok(set(
                &[
                    ("keyspace_name", "text"),
                    ("view_name", "text"),
                    ("base_table_name", "text"),
                    ("base_table_id", "uuid"),
                    ("include_all_columns", "boolean"),
                    ("where_clause", "text"),
                ],
                Vec::new(),
            )),
            ("system_schema", "types") => Ok(set(
                &[
                    ("keyspace_name", "text"),
                    ("type_name", "text"),
                    ("field_names", "list<text>"),
                    ("field_types", "list<text>"),
                ],
                Vec::new(),
            )),
            ("system_schema", "functions") => Ok(set(
                &[
                    ("keyspace_name", "text"),
                    ("function_name", "text"),
                    ("argument_types", "list<text>"),
                    ("argument_names", "list<text>"),
                    ("body", "text"),
                    ("called_on_null_input", "boolean"),
                    ("language", "text"),
                    ("return_type", "text"),
                ],
                Vec::new(),
            )),
            ("system_schema", "aggregates") => Ok(set(
                &[
                    ("keyspace_name", "text"),
                    ("aggregate_name", "text"),
                    ("argument_types", "list<text>"),
                    ("final_func", "text"),
                    ("initcond", "text"),
                    ("return_type", "text"),
                    ("state_func", "text"),
                    ("state_type", "text"),
                ],
                Vec::new(),
            )),
            ("system_schema", "triggers") => Ok(set(
                &[
                    ("keyspace_name", "text"),
                    ("table_name", "text"),
                    ("trigger_name", "text"),
                    ("options", "map<text, text>"),
                ],
                Vec::new(),
            )),
            ("system_schema", "indexes") => Ok(set(
                &[
                    ("keyspace_name", "text"),
                    ("table_name", "text"),
                    ("index_name", "text"),
                    ("kind", "text"),
                    ("options", "map<text, text>"),
                ],
                Vec::new(),
            )),
            // Includes peers_v2 and ScyllaDB's scylla_tables/scylla_keyspaces: drivers fall
            // back when these answer Invalid, as they do on Cassandra 3.
            _ => Err(ExecError::invalid(format!("unconfigured table {name}"))),
        }
    }
}

fn resolve(table: &TableRef, current: Option<&str>) -> Result<(String, String), ExecError> {
    let ks = table
        .keyspace
        .clone()
        .or_else(|| current.map(str::to_owned))
        .ok_or_else(|| {
            ExecError::invalid(
                "No keyspace has been specified. USE a keyspace, or explicitly specify keyspace.tablename",
            )
        })?;
    Ok((ks, table.name.clone()))
}

fn replication_factor(replication: &[(String, String)]) -> Result<usize, ExecError> {
    let class = replication
        .iter()
        .find(|(k, _)| k == "class")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ExecError::Syntax("replication needs a 'class'".into()))?;
    let rf_of = |key: &str| {
        replication
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<usize>().ok())
    };
    let rf = match class.rsplit('.').next().unwrap_or(class) {
        "SimpleStrategy" => rf_of("replication_factor"),
        "NetworkTopologyStrategy" => rf_of("datacenter1").or_else(|| rf_of("replication_factor")),
        other => {
            return Err(ExecError::Syntax(format!(
                "unsupported replication class {other}"
            )));
        }
    };
    rf.filter(|rf| *rf > 0).ok_or_else(|| {
        ExecError::Syntax(
            "replication needs a positive replication_factor (or datacenter1 for NetworkTopologyStrategy)"
                .into(),
        )
    })
}

/// The value of a term: a bound value or a literal serialised as `ty`.
fn term_value(term: &Term, values: &[Option<Vec<u8>>], ty: &CqlType) -> Result<Option<Vec<u8>>, ExecError> {
    match term {
        Term::Bind(i) => values.get(*i).cloned().ok_or_else(|| {
            ExecError::invalid(format!(
                "There were {} markers(?) in CQL but {} bound variables",
                i + 1,
                values.len()
            ))
        }),
        Term::Literal(l) => l.to_bytes(ty).map_err(ExecError::Invalid),
    }
}

fn operand_values(
    c: &Condition,
    values: &[Option<Vec<u8>>],
    ty: &CqlType,
) -> Result<Vec<Vec<u8>>, ExecError> {
    let one = |t: &Term| {
        term_value(t, values, ty)?
            .ok_or_else(|| ExecError::invalid(format!("Invalid null value for {}", c.column)))
    };
    match (&c.value, c.op) {
        (Operand::List(items), _) => items.iter().map(one).collect(),
        (Operand::One(t), Op::In) => {
            let list = term_value(t, values, &CqlType::List(Box::new(ty.clone())))?.unwrap_or_default();
            Ok(types::collection_elements(&list, 1)
                .map_err(ExecError::Invalid)?
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect())
        }
        (Operand::One(t), _) => Ok(vec![one(t)?]),
    }
}

fn compare_clustering(types: &[&CqlType], a: &[Vec<u8>], b: &[Vec<u8>]) -> Ordering {
    for ((t, x), y) in types.iter().zip(a).zip(b) {
        match t.compare(x, y) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

/// Applies WHERE filters, the selection and LIMIT.
fn project(
    set: RowSet,
    selection: &Selection,
    conditions: &[Condition],
    values: &[Option<Vec<u8>>],
    limit: Option<usize>,
) -> Result<Outcome, ExecError> {
    let mut filters = Vec::new();
    for c in conditions {
        let i = set
            .columns
            .iter()
            .position(|(n, _)| *n == c.column)
            .ok_or_else(|| ExecError::invalid(format!("Undefined column name {}", c.column)))?;
        let ty = set.columns[i].1.clone();
        filters.push((i, c.op, operand_values(c, values, &ty)?, ty));
    }
    let mut rows: Vec<Vec<Option<Vec<u8>>>> = set
        .rows
        .into_iter()
        .filter(|row| {
            filters.iter().all(|(i, op, wanted, ty)| {
                let Some(v) = &row[*i] else { return false };
                match op {
                    Op::Eq | Op::In => wanted.iter().any(|w| ty.compare(v, w) == Ordering::Equal),
                    Op::Lt => ty.compare(v, &wanted[0]) == Ordering::Less,
                    Op::Le => ty.compare(v, &wanted[0]) != Ordering::Greater,
                    Op::Gt => ty.compare(v, &wanted[0]) == Ordering::Greater,
                    Op::Ge => ty.compare(v, &wanted[0]) != Ordering::Less,
                }
            })
        })
        .collect();
    if let Some(l) = limit {
        rows.truncate(l);
    }
    let (columns, rows) = match selection {
        Selection::All => (set.columns, rows),
        Selection::Count => (
            vec![("count".to_owned(), CqlType::BigInt)],
            vec![vec![Some((rows.len() as i64).to_be_bytes().to_vec())]],
        ),
        Selection::Columns(names) => {
            let idx = names
                .iter()
                .map(|n| {
                    set.columns
                        .iter()
                        .position(|(c, _)| c == n)
                        .ok_or_else(|| ExecError::invalid(format!("Undefined column name {n}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let columns = idx.iter().map(|&i| set.columns[i].clone()).collect();
            let rows = rows
                .into_iter()
                .map(|r| idx.iter().map(|&i| r[i].clone()).collect())
                .collect();
            (columns, rows)
        }
    };
    Ok(Outcome::Rows(RowSet {
        keyspace: set.keyspace,
        table: set.table,
        columns,
        rows,
    }))
}

pub fn uuid_from(n: u64) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&0x7472_6962_7574_6172u64.to_be_bytes());
    u[8..].copy_from_slice(&n.to_be_bytes());
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}
