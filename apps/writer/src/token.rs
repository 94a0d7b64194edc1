//! A row's token, from its partition key alone.
//!
//! The driver's `PreparedStatement::calculate_token` serialises and type-checks every
//! bound value of the row before it hashes the key's: that was a seventh of the writer's
//! instructions per row (callgrind). [`TokenKey`] serialises only the key's values, in
//! key order, and feeds them to the statement's own partitioner in the encoding the
//! driver uses (one value as is; a composite key as length, value, 0 per component).

use scylla::cluster::metadata::ColumnType;
use scylla::routing::Token;
use scylla::routing::partitioner::{Partitioner, PartitionerHasher, PartitionerName};
use scylla::serialize::value::SerializeValue;
use scylla::serialize::writers::CellWriter;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

/// Why a row's token cannot be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    #[error("the row has {have} values; the partition key needs value {index}")]
    Missing { index: usize, have: usize },
    #[error("partition key value {index} does not fit its column: {message}")]
    Serialize { index: usize, message: String },
    #[error("partition key value {index} is {len} bytes; a component is at most 65535")]
    TooLong { index: usize, len: usize },
}

/// The partition key of one prepared INSERT: its partitioner and, in key order, the
/// bound value's index and column type of each component.
#[derive(Debug, Clone)]
pub struct TokenKey {
    partitioner: PartitionerName,
    columns: Vec<(usize, ColumnType<'static>)>,
}

impl TokenKey {
    /// The key of `stmt`, or `None` when the statement binds no partition key (the
    /// driver then routes it without a token too).
    pub fn of(stmt: &PreparedStatement) -> Option<Self> {
        let specs = stmt.get_variable_col_specs();
        let mut pk = stmt.get_variable_pk_indexes().to_vec();
        if pk.is_empty() {
            return None;
        }
        pk.sort_by_key(|k| k.sequence);
        let columns = pk
            .iter()
            .map(|k| {
                let index = usize::from(k.index);
                specs.get_by_index(index).map(|spec| (index, spec.typ().clone()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            partitioner: stmt.get_partitioner_name().clone(),
            columns,
        })
    }

    /// The token of the row whose bound values are `values`.
    pub fn token(&self, values: &[CqlValue]) -> Result<Token, TokenError> {
        let mut hasher = self.partitioner.build_hasher();
        let mut buf = Vec::with_capacity(64);
        let composite = self.columns.len() > 1;
        for &(index, ref typ) in &self.columns {
            let value = values.get(index).ok_or(TokenError::Missing {
                index,
                have: values.len(),
            })?;
            buf.clear();
            value
                .serialize(typ, CellWriter::new_without_size(&mut buf))
                .map_err(|e| TokenError::Serialize {
                    index,
                    message: e.to_string(),
                })?;
            if composite {
                let len = u16::try_from(buf.len()).map_err(|_| TokenError::TooLong {
                    index,
                    len: buf.len(),
                })?;
                hasher.write(&len.to_be_bytes());
                hasher.write(&buf);
                hasher.write(&[0]);
            } else {
                hasher.write(&buf);
            }
        }
        Ok(hasher.finish())
    }
}
