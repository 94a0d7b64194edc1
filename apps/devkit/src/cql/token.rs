//! Murmur3Partitioner tokens exactly as Cassandra computes them, and a vnode token ring
//! with SimpleStrategy-style replica placement (one data centre).

/// Cassandra's MurmurHash3 x64_128, first half, as a token. Cassandra reads tail bytes as
/// signed Java bytes, so they are sign-extended here too; `i64::MIN` maps to `i64::MAX`.
pub fn murmur3_token(data: &[u8]) -> i64 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let fmix = |mut k: u64| {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        k ^ (k >> 33)
    };
    let (mut h1, mut h2) = (0u64, 0u64);
    let blocks = data.len() / 16;
    for i in 0..blocks {
        let word = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&data[i * 16 + o..i * 16 + o + 8]);
            u64::from_le_bytes(w)
        };
        let (mut k1, mut k2) = (word(0), word(8));
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = &data[blocks * 16..];
    let signed = |i: usize| tail[i] as i8 as i64 as u64;
    let (mut k1, mut k2) = (0u64, 0u64);
    for i in (8..tail.len()).rev() {
        k2 ^= signed(i) << ((i - 8) * 8);
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    for i in (0..tail.len().min(8)).rev() {
        k1 ^= signed(i) << (i * 8);
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }
    h1 ^= data.len() as u64;
    h2 ^= data.len() as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix(h1);
    h2 = fmix(h2);
    h1 = h1.wrapping_add(h2);
    let token = h1 as i64;
    if token == i64::MIN { i64::MAX } else { token }
}

/// The bytes a partition key is hashed from: the value itself for one column, otherwise
/// each component as `[u16 length][bytes][0]`.
pub fn partition_key_bytes(components: &[&[u8]]) -> Vec<u8> {
    if let [one] = components {
        return one.to_vec();
    }
    let mut out = Vec::new();
    for c in components {
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c);
        out.push(0);
    }
    out
}

/// Vnode tokens of every node, sorted around the ring.
#[derive(Debug, Clone)]
pub struct TokenRing {
    nodes: usize,
    /// Every node slot's vnodes, members or not: a node that joins takes its own tokens.
    ring: Vec<(i64, usize)>,
    members: Vec<bool>,
}

impl TokenRing {
    /// `vnodes` random tokens per node, deterministic for `seed`.
    pub fn new(nodes: usize, vnodes: usize, seed: u64) -> Self {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut ring = Vec::with_capacity(nodes * vnodes);
        for node in 0..nodes {
            for _ in 0..vnodes {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ring.push((x as i64, node));
            }
        }
        ring.sort_unstable();
        ring.dedup_by_key(|t| t.0);
        Self {
            nodes,
            ring,
            members: vec![true; nodes],
        }
    }

    /// Node slots, members of the ring or not.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn is_member(&self, node: usize) -> bool {
        self.members.get(node).copied().unwrap_or(false)
    }

    /// A node joins (its tokens start owning data) or leaves the ring.
    pub fn set_member(&mut self, node: usize, member: bool) {
        if let Some(m) = self.members.get_mut(node) {
            *m = member;
        }
    }

    pub fn tokens_of(&self, node: usize) -> Vec<i64> {
        self.ring.iter().filter(|t| t.1 == node).map(|t| t.0).collect()
    }

    /// Replicas of `token`: the owner of the first member vnode at or after it, then the
    /// next distinct member nodes clockwise, `rf` in all (primary first).
    pub fn replicas(&self, token: i64, rf: usize) -> Vec<usize> {
        let start = self.ring.partition_point(|t| t.0 < token);
        let wanted = rf.min(self.members.iter().filter(|m| **m).count());
        let mut out = Vec::with_capacity(wanted);
        for i in 0..self.ring.len() {
            if out.len() == wanted {
                break;
            }
            let node = self.ring[(start + i) % self.ring.len()].1;
            if self.members[node] && !out.contains(&node) {
                out.push(node);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_cassandra_tokens() {
        // Values from Cassandra's own Murmur3Partitioner (e.g. `SELECT token(k)`).
        assert_eq!(murmur3_token(b""), 0);
        assert_eq!(murmur3_token(b"test"), -6017608668500074083);
        assert_eq!(murmur3_token(&1i32.to_be_bytes()), -4069959284402364209);
    }

    #[test]
    fn replicas_are_distinct_and_cover_the_ring() {
        let ring = TokenRing::new(3, 16, 1);
        for t in [i64::MIN, -1, 0, 1, i64::MAX] {
            let r = ring.replicas(t, 3);
            let mut s = r.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s, vec![0, 1, 2]);
            assert_eq!(ring.replicas(t, 1), vec![r[0]]);
        }
        assert_eq!((0..3).map(|n| ring.tokens_of(n).len()).sum::<usize>(), 48);
    }

    #[test]
    fn a_leaving_node_hands_its_ranges_to_the_next_member_and_takes_them_back() {
        let mut ring = TokenRing::new(4, 16, 1);
        let owned_by = |ring: &TokenRing, n: usize| {
            ring.tokens_of(n)
                .iter()
                .filter(|&&t| ring.replicas(t, 1) == vec![n])
                .count()
        };
        assert_eq!(owned_by(&ring, 3), 16);
        let before: Vec<Vec<usize>> = ring.tokens_of(3).iter().map(|&t| ring.replicas(t, 2)).collect();
        ring.set_member(3, false);
        for &t in &ring.tokens_of(3) {
            let r = ring.replicas(t, 3);
            assert_eq!(r.len(), 3);
            assert!(!r.contains(&3), "a non-member replicates nothing");
        }
        assert_eq!(ring.replicas(0, 5).len(), 3, "rf is capped by the members");
        ring.set_member(3, true);
        let after: Vec<Vec<usize>> = ring.tokens_of(3).iter().map(|&t| ring.replicas(t, 2)).collect();
        assert_eq!(before, after, "rejoining restores the same ownership");
    }
}
