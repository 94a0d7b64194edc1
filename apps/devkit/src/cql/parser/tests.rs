use super::*;

#[test]
fn parses_driver_and_writer_statements() {
    let (s, binds) =
        parse("SELECT keyspace_name, replication FROM system_schema.keyspaces where keyspace_name in ?")
            .expect("select");
    assert_eq!(binds, 1);
    assert!(matches!(s, Statement::Select { ref conditions, .. } if conditions[0].op == Op::In));
    let (s, _) = parse("SELECT host_id, rpc_address FROM system.local WHERE key='local'").expect("local");
    assert!(
        matches!(s, Statement::Select { ref conditions, .. } if conditions[0].value == Operand::One(Term::Literal(Literal::Str("local".into()))))
    );
    let (s, binds) = parse("INSERT INTO ks.t (a, b, c) VALUES (?, ?, 1.5e-3) USING TTL ?").expect("insert");
    assert_eq!(binds, 3);
    assert!(matches!(
        s,
        Statement::Insert {
            ttl: Some(Term::Bind(2)),
            timestamp: None,
            ..
        }
    ));
    let (s, binds) = parse("INSERT INTO ks.t (a) VALUES (?) USING TTL ? AND TIMESTAMP ?").expect("insert");
    assert_eq!(binds, 3);
    assert!(matches!(
        s,
        Statement::Insert {
            ttl: Some(Term::Bind(1)),
            timestamp: Some(Term::Bind(2)),
            ..
        }
    ));
    let (s, _) = parse(
        "CREATE TABLE IF NOT EXISTS ks.points (series text, bucket bigint, ts timestamp, value double, tags map<text, text>, \
         PRIMARY KEY ((series, bucket), ts)) WITH CLUSTERING ORDER BY (ts DESC) AND default_time_to_live = 0;",
    )
    .expect("create table");
    match s {
        Statement::CreateTable {
            partition_key,
            clustering,
            descending,
            columns,
            ..
        } => {
            assert_eq!(partition_key, vec!["series", "bucket"]);
            assert_eq!(clustering, vec!["ts"]);
            assert_eq!(descending, vec!["ts"]);
            assert_eq!(columns[4].1, "map<text, text>");
        }
        other => panic!("{other:?}"),
    }
    let (s, _) = parse("CREATE KEYSPACE IF NOT EXISTS k WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 3} AND durable_writes = true").expect("ks");
    assert!(matches!(s, Statement::CreateKeyspace { ref replication, .. } if replication.len() == 2));
    assert!(parse("SELEC * FROM t").is_err());
    assert!(parse("SELECT * FROM t WHERE a = 'x").is_err());
}
