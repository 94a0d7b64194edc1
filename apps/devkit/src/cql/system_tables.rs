//! The virtual system tables drivers read to discover the ring and the schema:
//! `system.local`, `system.peers` (`peers_v2` answers Invalid, which drivers fall back
//! from) and `system_schema.*`.

use super::storage::*;
use super::types::{self, CqlType};

impl Store {
    pub(super) fn system_table(&self, ks: &str, name: &str, node: &NodeView) -> Result<RowSet, ExecError> {
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
                        let order = match s.clustering.iter().position(|&p| p == i) {
                            Some(k) if s.descending.get(k) == Some(&true) => "desc",
                            Some(_) => "asc",
                            None => "none",
                        };
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
