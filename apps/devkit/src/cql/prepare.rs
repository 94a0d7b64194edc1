//! PREPARE: the names and types of a statement's bind markers, which of them form the
//! partition key (so drivers route token-aware), and where an INSERT writes.

use super::execute::{resolve, term_value};
use super::parser::{Op, Operand, Statement, Term};
use super::storage::*;
use super::token::partition_key_bytes;
use super::types::CqlType;

impl Store {
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
                columns,
                values,
                ttl,
                timestamp,
                ..
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
                if let Some(Term::Bind(i)) = timestamp {
                    specs.push((
                        *i,
                        BindSpec {
                            name: "[timestamp]".into(),
                            ty: CqlType::BigInt,
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
}
