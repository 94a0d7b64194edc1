//! Protocol v4 requests: OPTIONS/SUPPORTED, STARTUP, REGISTER, QUERY, PREPARE and
//! EXECUTE, with protocol errors for anything malformed or unknown (never a dropped
//! connection).

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::batch::*;
use super::frame::{self, Header, Malformed, Reader, Writer, error_code, opcode};
use super::parser::{self, Statement};
use super::server::*;
use super::storage::{ExecError, Store};
use super::types::CqlType;

/// A request failed: the ERROR body to send.
pub(super) struct CqlError(pub(super) Vec<u8>);

impl CqlError {
    pub(super) fn new(code: i32, message: &str) -> Self {
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

pub(super) async fn handle(
    cluster: &Cluster,
    index: usize,
    h: Header,
    body: &[u8],
    session: &Session,
) -> Vec<u8> {
    let keyspace = &session.keyspace;
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
    let open = matches!(
        h.opcode,
        opcode::OPTIONS | opcode::STARTUP | opcode::AUTH_RESPONSE
    );
    let result = match h.opcode {
        _ if !open && !session.authenticated.load(Ordering::SeqCst) => Err(CqlError::new(
            error_code::PROTOCOL,
            "the connection has not authenticated",
        )),
        opcode::OPTIONS => Ok((opcode::SUPPORTED, supported())),
        opcode::STARTUP => startup(&mut reader).map(|ready| match &cluster.credentials {
            // PasswordAuthenticator: the client answers with SASL PLAIN.
            Some(_) => {
                let mut w = Writer::new();
                w.string("org.apache.cassandra.auth.PasswordAuthenticator");
                (opcode::AUTHENTICATE, w.buf)
            }
            None => ready,
        }),
        opcode::AUTH_RESPONSE => authenticate(cluster, session, &mut reader),
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

pub(super) fn supported() -> Vec<u8> {
    let mut w = Writer::new();
    w.string_multimap(&[
        ("CQL_VERSION", vec!["3.4.4"]),
        ("COMPRESSION", vec![]),
        ("PROTOCOL_VERSIONS", vec!["4/v4"]),
    ]);
    w.buf
}

pub(super) fn startup(r: &mut Reader<'_>) -> Result<(u8, Vec<u8>), CqlError> {
    let options = r.string_map()?;
    if let Some(c) = options.get("COMPRESSION") {
        return Err(CqlError::new(
            error_code::PROTOCOL,
            &format!("compression {c} is not supported"),
        ));
    }
    Ok((opcode::READY, Vec::new()))
}

/// SASL PLAIN (`\0user\0password`) against the ring's credentials.
fn authenticate(cluster: &Cluster, session: &Session, r: &mut Reader<'_>) -> Result<(u8, Vec<u8>), CqlError> {
    let token = r.bytes()?.unwrap_or_default();
    let mut parts = token.split(|b| *b == 0).skip(1);
    let (user, password) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    match &cluster.credentials {
        Some((u, p)) if u.as_bytes() == user && p.as_bytes() == password => {
            session.authenticated.store(true, Ordering::SeqCst);
            let mut w = Writer::new();
            w.bytes(None);
            Ok((opcode::AUTH_SUCCESS, w.buf))
        }
        Some(_) => Err(CqlError::new(
            error_code::BAD_CREDENTIALS,
            &format!(
                "Provided username {} and/or password are incorrect",
                String::from_utf8_lossy(user)
            ),
        )),
        None => Err(CqlError::new(
            error_code::PROTOCOL,
            "no authentication was asked for",
        )),
    }
}

/// Query parameters shared by QUERY and EXECUTE.
pub(super) struct Params {
    pub(super) values: Vec<Option<Vec<u8>>>,
    pub(super) skip_metadata: bool,
    pub(super) page_size: Option<usize>,
    pub(super) paging_state: usize,
}

pub(super) fn params(r: &mut Reader<'_>) -> Result<Params, CqlError> {
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

pub(super) fn is_write(stmt: &Statement) -> bool {
    matches!(stmt, Statement::Insert { .. })
}

pub(super) fn touches_user_table(stmt: &Statement, current: Option<&str>) -> bool {
    let ks = match stmt {
        Statement::Insert { table, .. } | Statement::Select { table, .. } => {
            table.keyspace.as_deref().or(current)
        }
        _ => return false,
    };
    !matches!(ks, Some("system") | Some("system_schema") | None)
}

pub(super) async fn query(
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

pub(super) fn prepare(
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
pub(super) fn stmt_columns(
    store: &Store,
    stmt: &Statement,
    current: Option<&str>,
) -> Option<Vec<(String, CqlType)>> {
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

pub(super) fn statement_id(text: &str, keyspace: Option<&str>) -> [u8; 16] {
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

pub(super) async fn execute(
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
