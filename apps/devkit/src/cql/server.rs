//! The ring's network side: one listener per node (127.0.0.1, .2, .3 … on one port),
//! protocol v4 request handling, per-node counters and fault injection.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};

use super::frame::{self, HEADER_LEN, Header, Malformed, Reader, Writer, error_code, opcode};
use super::parser::{self, Statement};
use super::storage::{BindSpec, ExecError, NodeView, Outcome, RowSet, Store, uuid_from};
use super::token::TokenRing;
use super::types::CqlType;

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
    pub batches: u64,
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

struct Node {
    addr: SocketAddr,
    counters: Mutex<NodeCounters>,
    faults: Mutex<Faults>,
    /// Whether the node is part of the ring (it listens only then).
    member: AtomicBool,
    /// The node is not serving: down by a fault, or not a member.
    down: watch::Sender<bool>,
    /// (window start, rows in window) for the throughput cap.
    window: Mutex<(Instant, u64)>,
}

#[derive(Debug, Clone)]
struct Prepared {
    statement: Statement,
    keyspace: Option<String>,
    binds: Vec<BindSpec>,
}

/// State shared by every node of the ring.
pub struct Cluster {
    store: Mutex<Store>,
    nodes: Vec<Node>,
    view: NodeView,
    prepared: Mutex<HashMap<[u8; 16], Prepared>>,
    rng: Mutex<u64>,
    /// EVENT bodies for connections that sent REGISTER (drivers follow ring changes so).
    events: broadcast::Sender<Vec<u8>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running emulated ring. Dropping it leaves the tasks running until the runtime stops;
/// call [`Ring::stop`] to close every listener.
#[derive(Debug, Clone)]
pub struct Ring {
    cluster: Arc<Cluster>,
    stop: watch::Sender<bool>,
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

    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The HTTP control surface: GET /counters, POST /counters/reset, GET /faults,
    /// POST /faults?node=N (JSON body with any Faults fields; no node = every node),
    /// GET /topology, POST /topology?node=N with {"member": true|false}.
    pub fn http_handler(&self) -> Arc<dyn tributary::admin::Handler> {
        use tributary::admin::{Request, Response};
        let ring = self.clone();
        Arc::new(move |r: &Request| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/counters") => Response::json(200, &ring.counters()),
            ("POST", "/counters/reset") => {
                ring.reset_counters();
                Response::text(200, "reset\n")
            }
            ("GET", "/faults") => Response::json(
                200,
                &(0..ring.cluster.nodes.len())
                    .map(|i| ring.faults(i))
                    .collect::<Vec<_>>(),
            ),
            ("POST", "/faults") => {
                let targets: Vec<usize> = match r.query_param("node").map(str::parse::<usize>) {
                    Some(Ok(n)) if n >= 1 && n <= ring.cluster.nodes.len() => vec![n - 1],
                    Some(_) => return Response::text(400, "node must be 1..=N\n"),
                    None => (0..ring.cluster.nodes.len()).collect(),
                };
                for i in targets {
                    let mut current = serde_json::to_value(ring.faults(i)).unwrap_or_default();
                    let patch: serde_json::Value = match serde_json::from_slice(&r.body) {
                        Ok(v) => v,
                        Err(e) => return Response::text(400, format!("body is not JSON: {e}\n")),
                    };
                    if let (Some(cur), Some(p)) = (current.as_object_mut(), patch.as_object()) {
                        for (k, v) in p {
                            cur.insert(k.clone(), v.clone());
                        }
                    }
                    match serde_json::from_value::<Faults>(current) {
                        Ok(f) => ring.set_faults(i, f),
                        Err(e) => return Response::text(400, format!("bad faults: {e}\n")),
                    }
                }
                Response::text(200, "ok\n")
            }
            ("GET", "/topology") => Response::json(
                200,
                &(0..ring.cluster.nodes.len())
                    .map(|i| {
                        serde_json::json!({
                            "address": ring.cluster.nodes[i].addr.to_string(),
                            "member": ring.is_member(i),
                        })
                    })
                    .collect::<Vec<_>>(),
            ),
            ("POST", "/topology") => {
                let node = match r.query_param("node").map(str::parse::<usize>) {
                    Some(Ok(n)) if n >= 1 && n <= ring.cluster.nodes.len() => n - 1,
                    _ => return Response::text(400, "node=N (1-based) is required\n"),
                };
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Change {
                    member: bool,
                }
                match serde_json::from_slice::<Change>(&r.body) {
                    Ok(c) => {
                        ring.set_member(node, c.member);
                        Response::text(200, "ok\n")
                    }
                    Err(e) => Response::text(400, format!("expected {{\"member\": true|false}}: {e}\n")),
                }
            }
            _ => Response::not_found(),
        })
    }
}

async fn serve_node(
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

async fn connection(cluster: Arc<Cluster>, index: usize, stream: TcpStream, mut down: watch::Receiver<bool>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let keyspace: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
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
        let keyspace = keyspace.clone();
        tokio::spawn(async move {
            let response = handle(&cluster, index, h, &body, &keyspace).await;
            let _ = tx.send(response).await;
        });
    }
    events.abort();
    drop(tx);
    let _ = writer.await;
}

/// A request failed: the ERROR body to send.
struct CqlError(Vec<u8>);

impl CqlError {
    fn new(code: i32, message: &str) -> Self {
        let mut w = Writer::new();
        w.int(code).string(message);
        CqlError(w.buf)
    }
}

impl From<Malformed> for CqlError {
    fn from(m: Malformed) -> Self {
        CqlError::new(error_code::PROTOCOL, &m.to_string())
    }
}

impl From<ExecError> for CqlError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Invalid(m) => CqlError::new(error_code::INVALID, &m),
            ExecError::Syntax(m) => CqlError::new(error_code::SYNTAX, &m),
            ExecError::AlreadyExists { keyspace, table } => {
                let mut w = Writer::new();
                let what = if table.is_empty() {
                    format!("Keyspace {keyspace} already exists")
                } else {
                    format!("Table {keyspace}.{table} already exists")
                };
                w.int(error_code::ALREADY_EXISTS)
                    .string(&what)
                    .string(&keyspace)
                    .string(&table);
                CqlError(w.buf)
            }
        }
    }
}

async fn handle(
    cluster: &Cluster,
    index: usize,
    h: Header,
    body: &[u8],
    keyspace: &Mutex<Option<String>>,
) -> Vec<u8> {
    {
        let mut c = lock(&cluster.nodes[index].counters);
        *c.requests.entry(opcode::name(h.opcode).to_owned()).or_default() += 1;
    }
    let mut reader = Reader::new(body);
    if h.flags & 0x04 != 0 {
        // Custom payload: a [bytes map] before the body; ignored.
        if let Ok(n) = reader.short() {
            for _ in 0..n {
                let _ = reader.string();
                let _ = reader.bytes();
            }
        }
    }
    let result = match h.opcode {
        opcode::OPTIONS => Ok((opcode::SUPPORTED, supported())),
        opcode::STARTUP => startup(&mut reader),
        opcode::REGISTER => Ok((opcode::READY, Vec::new())),
        opcode::QUERY => query(cluster, index, &mut reader, keyspace).await,
        opcode::PREPARE => prepare(cluster, &mut reader, keyspace),
        opcode::EXECUTE => execute(cluster, index, &mut reader, keyspace).await,
        opcode::BATCH => batch(cluster, index, &mut reader, body.len(), keyspace).await,
        other => Err(CqlError::new(
            error_code::PROTOCOL,
            &format!("unsupported request opcode 0x{other:02x}"),
        )),
    };
    match result {
        Ok((op, body)) => frame::response(h.stream, op, &body),
        Err(CqlError(body)) => frame::response(h.stream, opcode::ERROR, &body),
    }
}

fn supported() -> Vec<u8> {
    let mut w = Writer::new();
    w.string_multimap(&[
        ("CQL_VERSION", vec!["3.4.4"]),
        ("COMPRESSION", vec![]),
        ("PROTOCOL_VERSIONS", vec!["4/v4"]),
    ]);
    w.buf
}

fn startup(r: &mut Reader<'_>) -> Result<(u8, Vec<u8>), CqlError> {
    let options = r.string_map()?;
    if let Some(c) = options.get("COMPRESSION") {
        return Err(CqlError::new(
            error_code::PROTOCOL,
            &format!("compression {c} is not supported"),
        ));
    }
    Ok((opcode::READY, Vec::new()))
}

/// Query parameters shared by QUERY and EXECUTE.
struct Params {
    values: Vec<Option<Vec<u8>>>,
    skip_metadata: bool,
    page_size: Option<usize>,
    paging_state: usize,
}

fn params(r: &mut Reader<'_>) -> Result<Params, CqlError> {
    let _consistency = r.short()?;
    let flags = r.byte()?;
    let mut values = Vec::new();
    if flags & 0x01 != 0 {
        let n = r.short()?;
        for _ in 0..n {
            if flags & 0x40 != 0 {
                return Err(CqlError::new(
                    error_code::INVALID,
                    "named values are not supported by the emulated ring",
                ));
            }
            values.push(r.bytes()?);
        }
    }
    let page_size = if flags & 0x04 != 0 {
        Some(r.int()?.max(1) as usize)
    } else {
        None
    };
    let paging_state = if flags & 0x08 != 0 {
        r.bytes()?
            .and_then(|b| b.try_into().ok())
            .map_or(0, |b: [u8; 8]| u64::from_be_bytes(b) as usize)
    } else {
        0
    };
    Ok(Params {
        values,
        skip_metadata: flags & 0x02 != 0,
        page_size,
        paging_state,
    })
}

fn is_write(stmt: &Statement) -> bool {
    matches!(stmt, Statement::Insert { .. })
}

fn touches_user_table(stmt: &Statement, current: Option<&str>) -> bool {
    let ks = match stmt {
        Statement::Insert { table, .. } | Statement::Select { table, .. } => {
            table.keyspace.as_deref().or(current)
        }
        _ => return false,
    };
    !matches!(ks, Some("system") | Some("system_schema") | None)
}

impl Cluster {
    fn roll(&self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        let mut x = lock(&self.rng);
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        ((*x >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// Latency, injected errors and the throughput cap for a request touching user data.
    async fn faults(&self, index: usize, rows: u64, write: bool) -> Result<(), CqlError> {
        let node = &self.nodes[index];
        let f = lock(&node.faults).clone();
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if write && self.roll(f.unavailable) {
            lock(&node.counters).unavailable_sent += 1;
            let mut w = Writer::new();
            w.int(error_code::UNAVAILABLE)
                .string("Cannot achieve consistency level (injected)")
                .short(0x0001)
                .int(1)
                .int(0);
            return Err(CqlError(w.buf));
        }
        if write && self.roll(f.write_timeout) {
            lock(&node.counters).write_timeouts_sent += 1;
            let mut w = Writer::new();
            w.int(error_code::WRITE_TIMEOUT)
                .string("Operation timed out (injected)")
                .short(0x0001)
                .int(0)
                .int(1)
                .string("SIMPLE");
            return Err(CqlError(w.buf));
        }
        if self.roll(f.overloaded) {
            lock(&node.counters).overloaded_sent += 1;
            return Err(CqlError::new(error_code::OVERLOADED, "Overloaded (injected)"));
        }
        if write && f.max_rows_per_sec > 0 {
            let mut window = lock(&node.window);
            if window.0.elapsed() >= Duration::from_secs(1) {
                *window = (Instant::now(), 0);
            }
            if window.1 + rows > f.max_rows_per_sec {
                drop(window);
                let mut c = lock(&node.counters);
                c.throttled += 1;
                c.overloaded_sent += 1;
                return Err(CqlError::new(
                    error_code::OVERLOADED,
                    "Overloaded: node throughput cap reached",
                ));
            }
            window.1 += rows;
        }
        Ok(())
    }

    fn view(&self, index: usize) -> NodeView {
        NodeView {
            index,
            ..self.view.clone()
        }
    }

    /// Runs a statement and counts it; `write` counters only for INSERTs.
    fn run(
        &self,
        index: usize,
        stmt: &Statement,
        p: &Params,
        current: Option<String>,
        keyspace: &Mutex<Option<String>>,
    ) -> Result<Vec<u8>, CqlError> {
        let mut store = lock(&self.store);
        let local = if is_write(stmt) {
            let (ks, pk) = store.insert_target(stmt, &p.values, current.as_deref())?;
            Some(store.replicas(&ks, &pk).contains(&index))
        } else {
            None
        };
        let outcome = store.execute(stmt, &p.values, current.as_deref(), &self.view(index))?;
        drop(store);
        if let Some(local) = local {
            let mut c = lock(&self.nodes[index].counters);
            c.rows_written += 1;
            c.writes += 1;
            c.writes_replica_local += u64::from(local);
        }
        if let Outcome::SetKeyspace(ks) = &outcome {
            *lock(keyspace) = Some(ks.clone());
        }
        Ok(result_body(outcome, p))
    }
}

async fn query(
    cluster: &Cluster,
    index: usize,
    r: &mut Reader<'_>,
    keyspace: &Mutex<Option<String>>,
) -> Result<(u8, Vec<u8>), CqlError> {
    let text = r.long_string()?;
    let p = params(r)?;
    let (stmt, _) = parser::parse(&text).map_err(|e| CqlError::new(error_code::SYNTAX, &e))?;
    let current = lock(keyspace).clone();
    if touches_user_table(&stmt, current.as_deref()) {
        cluster.faults(index, 1, is_write(&stmt)).await?;
    }
    Ok((opcode::RESULT, cluster.run(index, &stmt, &p, current, keyspace)?))
}

fn prepare(
    cluster: &Cluster,
    r: &mut Reader<'_>,
    keyspace: &Mutex<Option<String>>,
) -> Result<(u8, Vec<u8>), CqlError> {
    let text = r.long_string()?;
    let (stmt, _) = parser::parse(&text).map_err(|e| CqlError::new(error_code::SYNTAX, &e))?;
    let current = lock(keyspace).clone();
    let store = lock(&cluster.store);
    let (binds, pk_indexes, ks, table) = store.bind_specs(&stmt, current.as_deref())?;
    // Result columns of a SELECT, so EXECUTE can skip metadata.
    let result_columns = match &stmt {
        Statement::Select { .. } => stmt_columns(&store, &stmt, current.as_deref()).unwrap_or_default(),
        _ => Vec::new(),
    };
    drop(store);
    let id = statement_id(&text, current.as_deref());
    lock(&cluster.prepared).insert(
        id,
        Prepared {
            statement: stmt.clone(),
            keyspace: current,
            binds: binds.clone(),
        },
    );
    let mut w = Writer::new();
    w.int(0x0004).short_bytes(&id);
    // Prepared metadata.
    w.int(0x0001).int(binds.len() as i32).int(pk_indexes.len() as i32);
    for i in &pk_indexes {
        w.short(*i);
    }
    w.string(&ks).string(&table);
    for b in &binds {
        w.string(&b.name);
        b.ty.write_option(&mut w);
    }
    // Result metadata.
    if result_columns.is_empty() {
        w.int(0x0004).int(0);
    } else {
        w.int(0x0001)
            .int(result_columns.len() as i32)
            .string(&ks)
            .string(&table);
        for (n, t) in &result_columns {
            w.string(n);
            t.write_option(&mut w);
        }
    }
    Ok((opcode::RESULT, w.buf))
}

/// Column specs a SELECT on a user table returns (system tables send metadata with rows).
fn stmt_columns(store: &Store, stmt: &Statement, current: Option<&str>) -> Option<Vec<(String, CqlType)>> {
    let Statement::Select { table, selection, .. } = stmt else {
        return None;
    };
    let ks = table.keyspace.as_deref().or(current)?;
    let schema = store.table(ks, &table.name).ok()?.schema.clone();
    let all: Vec<(String, CqlType)> = schema
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.ty.clone()))
        .collect();
    Some(match selection {
        parser::Selection::All => all,
        parser::Selection::Count => vec![("count".into(), CqlType::BigInt)],
        parser::Selection::Columns(names) => names
            .iter()
            .filter_map(|n| all.iter().find(|(c, _)| c == n).cloned())
            .collect(),
    })
}

fn statement_id(text: &str, keyspace: Option<&str>) -> [u8; 16] {
    // FNV-1a over keyspace and text, twice with different seeds: stable and collision-poor.
    let hash = |seed: u64| {
        let mut h = seed;
        for b in keyspace.unwrap_or("").bytes().chain([0]).chain(text.bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&hash(0xcbf2_9ce4_8422_2325).to_be_bytes());
    id[8..].copy_from_slice(&hash(0x8422_2325_cbf2_9ce4).to_be_bytes());
    id
}

async fn execute(
    cluster: &Cluster,
    index: usize,
    r: &mut Reader<'_>,
    keyspace: &Mutex<Option<String>>,
) -> Result<(u8, Vec<u8>), CqlError> {
    let id = r.short_bytes()?;
    let p = params(r)?;
    let prepared = id
        .as_slice()
        .try_into()
        .ok()
        .and_then(|id: [u8; 16]| lock(&cluster.prepared).get(&id).cloned());
    let Some(prepared) = prepared else {
        let mut w = Writer::new();
        w.int(error_code::UNPREPARED)
            .string("Prepared statement not found")
            .short_bytes(&id);
        return Err(CqlError(w.buf));
    };
    if p.values.len() != prepared.binds.len() {
        return Err(CqlError::new(
            error_code::INVALID,
            &format!("expected {} values, got {}", prepared.binds.len(), p.values.len()),
        ));
    }
    if touches_user_table(&prepared.statement, prepared.keyspace.as_deref()) {
        cluster.faults(index, 1, is_write(&prepared.statement)).await?;
    }
    Ok((
        opcode::RESULT,
        cluster.run(
            index,
            &prepared.statement,
            &p,
            prepared.keyspace.clone(),
            keyspace,
        )?,
    ))
}

async fn batch(
    cluster: &Cluster,
    index: usize,
    r: &mut Reader<'_>,
    body_len: usize,
    keyspace: &Mutex<Option<String>>,
) -> Result<(u8, Vec<u8>), CqlError> {
    let _kind = r.byte()?;
    let n = r.short()?;
    let current = lock(keyspace).clone();
    let mut items = Vec::with_capacity(n as usize);
    let mut value_bytes = 0usize;
    for _ in 0..n {
        let (stmt, ks) = match r.byte()? {
            0 => {
                let text = r.long_string()?;
                (
                    parser::parse(&text)
                        .map_err(|e| CqlError::new(error_code::SYNTAX, &e))?
                        .0,
                    current.clone(),
                )
            }
            1 => {
                let id = r.short_bytes()?;
                let found = id
                    .as_slice()
                    .try_into()
                    .ok()
                    .and_then(|id: [u8; 16]| lock(&cluster.prepared).get(&id).cloned());
                match found {
                    Some(p) => (p.statement, p.keyspace),
                    None => {
                        let mut w = Writer::new();
                        w.int(error_code::UNPREPARED)
                            .string("Prepared statement not found")
                            .short_bytes(&id);
                        return Err(CqlError(w.buf));
                    }
                }
            }
            k => {
                return Err(CqlError::new(
                    error_code::PROTOCOL,
                    &format!("bad batch statement kind {k}"),
                ));
            }
        };
        let count = r.short()?;
        let mut values = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let v = r.bytes()?;
            value_bytes += v.as_ref().map_or(0, Vec::len);
            values.push(v);
        }
        if !is_write(&stmt) {
            return Err(CqlError::new(
                error_code::INVALID,
                "Only INSERT statements are allowed in a batch here",
            ));
        }
        items.push((stmt, ks, values));
    }
    let _consistency = r.short()?;
    let node = &cluster.nodes[index];
    let limits = lock(&node.faults).clone();
    {
        let mut c = lock(&node.counters);
        c.batches += 1;
        c.largest_batch_bytes = c.largest_batch_bytes.max(body_len as u64);
        if value_bytes > limits.batch_warn_bytes {
            c.batch_warnings += 1;
        }
    }
    if value_bytes > limits.batch_fail_bytes {
        lock(&node.counters).batches_too_large += 1;
        return Err(CqlError::new(
            error_code::INVALID,
            &format!(
                "Batch too large: {value_bytes} bytes is above the fail threshold of {} bytes",
                limits.batch_fail_bytes
            ),
        ));
    }
    cluster.faults(index, items.len() as u64, true).await?;
    let mut store = lock(&cluster.store);
    let mut replica_sets = Vec::new();
    for (stmt, ks, values) in &items {
        let (target_ks, pk) = store.insert_target(stmt, values, ks.as_deref())?;
        let mut set = store.replicas(&target_ks, &pk);
        set.sort_unstable();
        replica_sets.push(set);
    }
    // Validate everything before applying anything, as a batch is all-or-nothing here.
    for (stmt, ks, values) in &items {
        store.execute(stmt, values, ks.as_deref(), &cluster.view(index))?;
    }
    drop(store);
    let local = replica_sets.iter().all(|s| s.contains(&index));
    replica_sets.sort();
    replica_sets.dedup();
    let mut c = lock(&node.counters);
    c.rows_written += items.len() as u64;
    c.batches_replica_local += u64::from(local);
    c.batches_multi_replica_set += u64::from(replica_sets.len() > 1);
    let mut w = Writer::new();
    w.int(0x0001);
    Ok((opcode::RESULT, w.buf))
}

fn result_body(outcome: Outcome, p: &Params) -> Vec<u8> {
    let mut w = Writer::new();
    match outcome {
        Outcome::Void => {
            w.int(0x0001);
        }
        Outcome::SetKeyspace(ks) => {
            w.int(0x0003).string(&ks);
        }
        Outcome::SchemaChange {
            change,
            target,
            keyspace,
            table,
        } => {
            w.int(0x0005).string(change).string(target).string(&keyspace);
            if let Some(t) = table {
                w.string(&t);
            }
        }
        Outcome::Rows(set) => rows(&mut w, set, p),
    }
    w.buf
}

fn rows(w: &mut Writer, set: RowSet, p: &Params) {
    let RowSet {
        keyspace,
        table,
        columns,
        rows,
    } = set;
    let start = p.paging_state.min(rows.len());
    let end = p.page_size.map_or(rows.len(), |n| (start + n).min(rows.len()));
    let more = end < rows.len();
    let mut flags = if p.skip_metadata { 0x0004 } else { 0x0001 };
    if more {
        flags |= 0x0002;
    }
    w.int(0x0002).int(flags).int(columns.len() as i32);
    if more {
        w.bytes(Some(&(end as u64).to_be_bytes()));
    }
    if !p.skip_metadata {
        w.string(&keyspace).string(&table);
        for (n, t) in &columns {
            w.string(n);
            t.write_option(w);
        }
    }
    w.int((end - start) as i32);
    for row in &rows[start..end] {
        for cell in row {
            w.bytes(cell.as_deref());
        }
    }
}
