//! Running a statement: keyspace and table DDL, INSERT with TTL (upserts), TRUNCATE,
//! and SELECT dispatched to user tables ([`super::select`]) or the system tables.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::parser::{Statement, TableRef, Term};
use super::select::{compare_clustering, project};
use super::storage::*;
use super::token::{murmur3_token, partition_key_bytes};
use super::types::CqlType;

impl Store {
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
                descending,
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
                    descending: clustering.iter().map(|c| descending.contains(c)).collect(),
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
                timestamp,
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
                // Without USING TIMESTAMP the coordinator's clock stamps the write.
                let written = match timestamp {
                    Some(term) => term_value(term, values, &CqlType::BigInt)?
                        .and_then(|b| b.as_slice().try_into().ok().map(i64::from_be_bytes))
                        .ok_or_else(|| ExecError::invalid("Invalid null value for USING TIMESTAMP"))?,
                    None => std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64),
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
                let ck_types: Vec<(&CqlType, bool)> = schema
                    .clustering
                    .iter()
                    .zip(&schema.descending)
                    .map(|(&i, &desc)| (&schema.columns[i].ty, desc))
                    .collect();
                let pos =
                    rows.binary_search_by(|r| compare_clustering(&ck_types, &r.clustering, &clustering));
                match pos {
                    Ok(i) => {
                        let row = &mut rows[i];
                        if row.expires.is_some_and(|e| e <= Instant::now()) {
                            row.cells = vec![None; schema.columns.len()];
                            row.written = vec![i64::MIN; schema.columns.len()];
                        }
                        let mut newer = false;
                        for ((slot, at), v) in row.cells.iter_mut().zip(row.written.iter_mut()).zip(cells) {
                            // The newer write wins; at equal timestamps the greater value.
                            if let Some(v) = v
                                && (written > *at || (written == *at && v >= *slot))
                            {
                                *slot = v;
                                *at = written;
                                newer = true;
                            }
                        }
                        if newer {
                            row.expires = expires;
                        }
                    }
                    Err(i) => rows.insert(
                        i,
                        StoredRow {
                            clustering,
                            written: cells
                                .iter()
                                .map(|c| if c.is_some() { written } else { i64::MIN })
                                .collect(),
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
}

pub(super) fn resolve(table: &TableRef, current: Option<&str>) -> Result<(String, String), ExecError> {
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

pub(super) fn replication_factor(replication: &[(String, String)]) -> Result<usize, ExecError> {
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
pub(super) fn term_value(
    term: &Term,
    values: &[Option<Vec<u8>>],
    ty: &CqlType,
) -> Result<Option<Vec<u8>>, ExecError> {
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
