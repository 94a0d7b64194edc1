#!/usr/bin/env python3
"""Independent CQL client for the end-to-end tests (DataStax cassandra-driver).

  cql_client.py HOST PORT KEYSPACE              creates a table, writes rows, reads
                                                 them back; prints a JSON summary.
  cql_client.py count HOST PORT KEYSPACE TABLE   prints the table's row count.
  cql_client.py select HOST PORT QUERY           prints the rows as JSON lists.
"""
import json
import os
import ssl
import sys

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import Cluster
from cassandra.policies import RoundRobinPolicy


def main(host, port, keyspace):
    cluster = Cluster([host], port=int(port), protocol_version=4,
                      load_balancing_policy=RoundRobinPolicy(), connect_timeout=10)
    s = cluster.connect()
    s.execute(f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
              "{'class': 'SimpleStrategy', 'replication_factor': 3}")
    s.execute(f"CREATE TABLE IF NOT EXISTS {keyspace}.kv (k text, n int, v double, tags set<text>, "
              "PRIMARY KEY (k, n))")
    s.set_keyspace(keyspace)
    ins = s.prepare("INSERT INTO kv (k, n, v, tags) VALUES (?, ?, ?, ?)")
    for i in range(50):
        s.execute(ins, (f"key-{i % 5}", i, i * 1.5, {"a", f"t{i}"}))
    s.execute("INSERT INTO kv (k, n, v) VALUES ('literal', 1, 2.5) USING TTL 600")
    rows = list(s.execute("SELECT k, n, v, tags FROM kv WHERE k = %s", ("key-3",)))
    every = list(s.execute("SELECT k, n FROM kv"))
    hosts = sorted(str(h.address) for h in cluster.metadata.all_hosts())
    print(json.dumps({
        "hosts": hosts,
        "key3": [[r.k, r.n, r.v, sorted(r.tags)] for r in rows],
        "total": len(every),
        "tables": sorted(cluster.metadata.keyspaces[keyspace].tables.keys()),
    }))
    cluster.shutdown()


def count(host, port, keyspace, table):
    """Prints the number of rows in keyspace.table (logging in as CQL_USERNAME with
    CQL_PASSWORD when the ring asks; over TLS trusting CQL_SSL_CA when set)."""
    auth = None
    if os.environ.get("CQL_USERNAME"):
        auth = PlainTextAuthProvider(os.environ["CQL_USERNAME"], os.environ.get("CQL_PASSWORD", ""))
    ssl_context = None
    if os.environ.get("CQL_SSL_CA"):
        # TLS with the nodes' certificates verified against this CA.
        ssl_context = ssl.create_default_context(cafile=os.environ["CQL_SSL_CA"])
        ssl_context.check_hostname = False
    cluster = Cluster([host], port=int(port), protocol_version=4, auth_provider=auth,
                      ssl_context=ssl_context,
                      load_balancing_policy=RoundRobinPolicy(), connect_timeout=10)
    s = cluster.connect()
    print(s.execute(f"SELECT COUNT(*) FROM {keyspace}.{table}").one()[0])
    cluster.shutdown()


def select(host, port, query):
    cluster = Cluster([host], port=int(port), protocol_version=4,
                      load_balancing_policy=RoundRobinPolicy(), connect_timeout=10)
    s = cluster.connect()
    for row in s.execute(query):
        print(json.dumps([v if isinstance(v, (int, float, str)) or v is None else str(v) for v in row]))
    cluster.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "count":
        count(*sys.argv[2:6])
    elif sys.argv[1] == "select":
        select(*sys.argv[2:5])
    else:
        main(*sys.argv[1:4])
