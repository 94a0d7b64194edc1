//! Nodes joining and leaving the ring while it runs, and where a partition key's
//! replicas are.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::frame::Writer;
use super::server::*;

impl Ring {
    pub fn is_member(&self, node: usize) -> bool {
        self.cluster.nodes[node].member.load(Ordering::SeqCst)
    }

    /// A node joins the ring (starts listening, owns its tokens, appears in system.peers)
    /// or leaves it (hands its ranges to the next members, closes its connections).
    /// Registered clients get a TOPOLOGY_CHANGE event, as from a real cluster. The data
    /// stays in the one shared store, as if streamed to the new owners.
    pub fn set_member(&self, node: usize, member: bool) {
        let n = &self.cluster.nodes[node];
        if n.member.swap(member, Ordering::SeqCst) == member {
            return;
        }
        lock(&self.cluster.store).ring.set_member(node, member);
        n.down.send_replace(lock(&n.faults).down || !member);
        let mut w = Writer::new();
        w.string("TOPOLOGY_CHANGE")
            .string(if member { "NEW_NODE" } else { "REMOVED_NODE" });
        match n.addr.ip() {
            IpAddr::V4(v4) => w.byte(4).raw(&v4.octets()),
            IpAddr::V6(v6) => w.byte(16).raw(&v6.octets()),
        };
        w.int(i32::from(n.addr.port()));
        let _ = self.cluster.events.send(w.buf);
    }

    /// Replica nodes (indexes, primary first) of a serialised partition key in `keyspace`.
    pub fn replicas(&self, keyspace: &str, partition_key: &[u8]) -> Vec<usize> {
        lock(&self.cluster.store).replicas(keyspace, partition_key)
    }
}
