//! Reads of user tables: a partition by key (with a clustering range) or a full scan in
//! token order, then the selected columns.

use std::cmp::Ordering;
use std::time::Instant;

use super::execute::term_value;
use super::parser::{Condition, Op, Operand, Selection, Term};
use super::storage::*;
use super::token::{murmur3_token, partition_key_bytes};
use super::types::{self, CqlType};

impl Store {
    /// Rows of a user table, narrowed by partition key when the WHERE clause names it.
    pub(super) fn scan(
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
}

pub(super) fn operand_values(
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

/// Orders clustering keys as stored: each column ascending or, when declared so, descending.
pub(super) fn compare_clustering(types: &[(&CqlType, bool)], a: &[Vec<u8>], b: &[Vec<u8>]) -> Ordering {
    for ((&(t, descending), x), y) in types.iter().zip(a).zip(b) {
        match t.compare(x, y) {
            Ordering::Equal => continue,
            other if descending => return other.reverse(),
            other => return other,
        }
    }
    Ordering::Equal
}

/// Applies WHERE filters, the selection and LIMIT.
pub(super) fn project(
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

#[cfg(test)]
mod tests {
    use super::super::parser::parse;
    use super::super::token::TokenRing;
    use super::*;

    fn run(store: &mut Store, cql: &str) -> Outcome {
        let node = NodeView {
            index: 0,
            addresses: vec!["127.0.0.1".parse().expect("ip")],
            host_ids: vec![[0; 16]],
        };
        let (stmt, _) = parse(cql).expect(cql);
        store.execute(&stmt, &[], Some("k"), &node).expect(cql)
    }

    fn first_column(outcome: Outcome) -> Vec<i64> {
        let Outcome::Rows(set) = outcome else {
            panic!("no rows")
        };
        set.rows
            .iter()
            .map(|r| i64::from_be_bytes(r[0].clone().expect("value").try_into().expect("bigint")))
            .collect()
    }

    #[test]
    fn a_descending_clustering_order_reads_newest_first() {
        let mut store = Store::new(TokenRing::new(1, 4, 1));
        run(
            &mut store,
            "CREATE KEYSPACE k WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        );
        run(
            &mut store,
            "CREATE TABLE k.up (s text, ts bigint, PRIMARY KEY (s, ts))",
        );
        run(
            &mut store,
            "CREATE TABLE k.down (s text, ts bigint, PRIMARY KEY (s, ts)) WITH CLUSTERING ORDER BY (ts DESC) AND comment = 'x'",
        );
        for table in ["up", "down"] {
            for ts in [5, 1, 9, 3, 7] {
                run(
                    &mut store,
                    &format!("INSERT INTO k.{table} (s, ts) VALUES ('a', {ts})"),
                );
            }
        }
        assert_eq!(
            first_column(run(&mut store, "SELECT ts FROM k.up WHERE s = 'a' LIMIT 3")),
            [1, 3, 5]
        );
        assert_eq!(
            first_column(run(&mut store, "SELECT ts FROM k.down WHERE s = 'a' LIMIT 3")),
            [9, 7, 5]
        );
    }
}
