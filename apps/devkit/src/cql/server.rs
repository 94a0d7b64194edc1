//! The ring's network side: one listener per node (127.0.0.1, .2, .3 … on one port) and
//! its connections. Requests are answered by [`super::handlers`] (and [`super::batch`],
//! [`super::results`]); faults are applied by [`super::faults`]; nodes join and leave in
//! [`super::topology`]; the HTTP control surface is [`super::control`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};

use super::frame::{self, HEADER_LEN, Header, Writer, error_code, opcode};
use super::handlers::handle;
use super::parser::Statement;
use super::storage::{BindSpec, NodeView, Store, uuid_from};
use super::token::TokenRing;

/// How to lay out the ring.
#[derive(Debug, Clone)]
pub struct RingConfig {
    pub nodes: usize,
    /// First node's address; node i listens on the next addresses (127.0.0.1, .2, …).
    pub first_ip: Ipv4Addr,
    pub port: u16,
    pub vnodes: usize,
    pub seed: u64,
    /// Extra node slots after `nodes` that start outside the ring and can join it later
    /// (POST /topology), on the next addresses.
    pub spare: usize,
    /// (user, password) the ring requires, as Cassandra's PasswordAuthenticator does;
    /// `None` accepts every connection.
    pub credentials: Option<(String, String)>,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            nodes: 3,
            first_ip: Ipv4Addr::new(127, 0, 0, 1),
            port: 9042,
            vnodes: 16,
            seed: 7,
            spare: 0,
            credentials: None,
        }
    }
}

/// Faults of one node; all changeable while the ring runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every request on user tables.
    pub latency_ms: u64,
    /// Probability (0..1) that a write answers Overloaded.
    pub overloaded: f64,
    /// Probability that a write answers WriteTimeout.
    pub write_timeout: f64,
    /// Probability that a write answers Unavailable.
    pub unavailable: f64,
    /// The node refuses connections and drops the ones it has.
    pub down: bool,
    /// Batches above this many bytes are counted as warnings (Cassandra: 5 KiB).
    pub batch_warn_bytes: usize,
    /// Batches above this many bytes fail with "Batch too large" (Cassandra: 50 KiB).
    pub batch_fail_bytes: usize,
    /// Rows per second this node accepts before answering Overloaded; 0 = unlimited.
    pub max_rows_per_sec: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            overloaded: 0.0,
            write_timeout: 0.0,
            unavailable: 0.0,
            down: false,
            batch_warn_bytes: 5 * 1024,
            batch_fail_bytes: 50 * 1024,
            max_rows_per_sec: 0,
        }
    }
}

/// Per-node counters: how the writer proves it is token-aware.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeCounters {
    pub address: String,
    pub requests: BTreeMap<String, u64>,
    pub rows_written: u64,
    /// Single-statement writes, and those whose partition this node replicates.
    pub writes: u64,
    pub writes_replica_local: u64,
    /// Batches received (counted on arrival, whatever becomes of them).
    pub batches: u64,
    /// Batches applied; counted with `batches_replica_local` under one lock, so a
    /// snapshot taken while batches are in flight compares the two exactly.
    pub batches_applied: u64,
    /// Batches whose every row is replicated by this node.
    pub batches_replica_local: u64,
    /// Batches whose rows belong to more than one replica set.
    pub batches_multi_replica_set: u64,
    pub largest_batch_bytes: u64,
    pub batch_warnings: u64,
    pub batches_too_large: u64,
    pub overloaded_sent: u64,
    pub write_timeouts_sent: u64,
    pub unavailable_sent: u64,
    pub throttled: u64,
    pub connections: u64,
}

pub(super) struct Node {
    pub(super) addr: SocketAddr,
    pub(super) counters: Mutex<NodeCounters>,
    pub(super) faults: Mutex<Faults>,
    /// Whether the node is part of the ring (it listens only then).
    pub(super) member: AtomicBool,
    /// The node is not serving: down by a fault, or not a member.
    pub(super) down: watch::Sender<bool>,
    /// (window start, rows in window) for the throughput cap.
    pub(super) window: Mutex<(Instant, u64)>,
}

#[derive(Debug, Clone)]
pub(super) struct Prepared {
    pub(super) statement: Statement,
    pub(super) keyspace: Option<String>,
    pub(super) binds: Vec<BindSpec>,
}

/// State shared by every node of the ring.
pub struct Cluster {
    pub(super) store: Mutex<Store>,
    pub(super) nodes: Vec<Node>,
    pub(super) view: NodeView,
    pub(super) prepared: Mutex<HashMap<[u8; 16], Prepared>>,
    pub(super) rng: Mutex<u64>,
    /// EVENT bodies for connections that sent REGISTER (drivers follow ring changes so).
    pub(super) events: broadcast::Sender<Vec<u8>>,
    /// Required (user, password), if any.
    pub(super) credentials: Option<(String, String)>,
}

/// One client connection's state.
pub(super) struct Session {
    pub(super) keyspace: Mutex<Option<String>>,
    /// Whether the connection may send requests: it authenticated, or the ring requires
    /// no credentials.
    pub(super) authenticated: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running emulated ring. Dropping it leaves the tasks running until the runtime stops;
/// call [`Ring::stop`] to close every listener.
#[derive(Debug, Clone)]
pub struct Ring {
    pub(super) cluster: Arc<Cluster>,
    pub(super) stop: watch::Sender<bool>,
}

impl Ring {
    /// Binds every node and starts serving on the current tokio runtime.
    pub async fn start(config: RingConfig) -> std::io::Result<Ring> {
        let first = u32::from(config.first_ip);
        let slots = config.nodes + config.spare;
        let addrs: Vec<SocketAddr> = (0..slots)
            .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(first + i as u32)), config.port))
            .collect();
        let mut listeners = Vec::new();
        for a in &addrs[..config.nodes] {
            listeners.push(Some(TcpListener::bind(a).await?));
        }
        listeners.resize_with(slots, || None);
        let view = NodeView {
            index: 0,
            addresses: addrs.iter().map(SocketAddr::ip).collect(),
            host_ids: (0..slots).map(|i| uuid_from(1000 + i as u64)).collect(),
        };
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| Node {
                addr: *a,
                counters: Mutex::new(NodeCounters {
                    address: a.to_string(),
                    ..Default::default()
                }),
                faults: Mutex::new(Faults::default()),
                member: AtomicBool::new(i < config.nodes),
                down: watch::channel(i >= config.nodes).0,
                window: Mutex::new((Instant::now(), 0)),
            })
            .collect();
        let mut ring = TokenRing::new(slots, config.vnodes, config.seed);
        for spare in config.nodes..slots {
            ring.set_member(spare, false);
        }
        let cluster = Arc::new(Cluster {
            store: Mutex::new(Store::new(ring)),
            nodes,
            view,
            prepared: Mutex::new(HashMap::new()),
            rng: Mutex::new(config.seed | 1),
            events: broadcast::channel(64).0,
            credentials: config.credentials.clone(),
        });
        let (stop, _) = watch::channel(false);
        for (i, listener) in listeners.into_iter().enumerate() {
            tokio::spawn(serve_node(cluster.clone(), i, listener, stop.subscribe()));
        }
        Ok(Ring { cluster, stop })
    }

    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.cluster.nodes.iter().map(|n| n.addr).collect()
    }

    pub fn counters(&self) -> Vec<NodeCounters> {
        self.cluster
            .nodes
            .iter()
            .map(|n| lock(&n.counters).clone())
            .collect()
    }

    pub fn reset_counters(&self) {
        for n in &self.cluster.nodes {
            let mut c = lock(&n.counters);
            *c = NodeCounters {
                address: n.addr.to_string(),
                ..Default::default()
            };
        }
    }

    pub fn faults(&self, node: usize) -> Faults {
        lock(&self.cluster.nodes[node].faults).clone()
    }

    /// Replaces a node's faults; `down` takes effect at once.
    pub fn set_faults(&self, node: usize, faults: Faults) {
        let n = &self.cluster.nodes[node];
        n.down
            .send_replace(faults.down || !n.member.load(Ordering::SeqCst));
        *lock(&n.faults) = faults;
    }

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

pub(super) async fn serve_node(
    cluster: Arc<Cluster>,
    index: usize,
    mut listener: Option<TcpListener>,
    mut stop: watch::Receiver<bool>,
) {
    let node = &cluster.nodes[index];
    let mut down = node.down.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        if *down.borrow() {
            // Refuse connections for real: release the port until the node comes back.
            listener = None;
            tokio::select! {
                _ = down.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let l = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(node.addr).await {
                Ok(l) => listener.insert(l),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        tokio::select! {
            accepted = l.accept() => if let Ok((stream, _)) = accepted {
                let _ = stream.set_nodelay(true);
                lock(&node.counters).connections += 1;
                tokio::spawn(connection(cluster.clone(), index, stream, node.down.subscribe()));
            },
            _ = down.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

pub(super) async fn connection(
    cluster: Arc<Cluster>,
    index: usize,
    stream: TcpStream,
    mut down: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let session = Arc::new(Session {
        keyspace: Mutex::new(None),
        authenticated: AtomicBool::new(cluster.credentials.is_none()),
    });
    // Events go out only after the client sent REGISTER, on stream -1.
    let registered = Arc::new(AtomicBool::new(false));
    let events = {
        let mut rx = cluster.events.subscribe();
        let tx = tx.clone();
        let registered = registered.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(body) => {
                        if registered.load(Ordering::SeqCst)
                            && tx.send(frame::response(-1, opcode::EVENT, &body)).await.is_err()
                        {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };
    loop {
        let mut head = [0u8; HEADER_LEN];
        tokio::select! {
            r = rd.read_exact(&mut head) => if r.is_err() { break },
            _ = down.changed() => if *down.borrow() { break } else { continue },
        }
        let h = Header::parse(&head);
        if h.version & 0x7f != 4 {
            // Tell the client which version we speak; it may retry with v4.
            let mut w = Writer::new();
            w.int(error_code::PROTOCOL)
                .string("Invalid or unsupported protocol version (only v4 is supported)");
            let _ = tx.send(frame::response(h.stream, opcode::ERROR, &w.buf)).await;
            break;
        }
        if h.length as usize > frame::MAX_BODY {
            let mut w = Writer::new();
            w.int(error_code::PROTOCOL).string("frame too large");
            let _ = tx.send(frame::response(h.stream, opcode::ERROR, &w.buf)).await;
            break;
        }
        let mut body = vec![0u8; h.length as usize];
        if rd.read_exact(&mut body).await.is_err() {
            break;
        }
        if h.opcode == opcode::REGISTER {
            registered.store(true, Ordering::SeqCst);
        }
        let cluster = cluster.clone();
        let tx = tx.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let response = handle(&cluster, index, h, &body, &session).await;
            let _ = tx.send(response).await;
        });
    }
    events.abort();
    drop(tx);
    let _ = writer.await;
}
