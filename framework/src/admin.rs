//! The admin HTTP endpoint: one small HTTP/1.1 server per app for `/metrics`, `/health`,
//! `/status` and operator actions. Hand-rolled on tokio to keep the dependency tree lean;
//! requests are small and bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The admin HTTP endpoint (`[admin]` in every app's config): metrics, health, status and
/// operator actions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address; empty disables the endpoint.
    pub listen: String,
    /// Bearer token required by the endpoints that change state (replay, rate limit);
    /// prefer `token_file`. Never shown.
    #[serde(default)]
    pub token: String,
    /// A file whose first line is that token (e.g. a mounted Kubernetes secret).
    #[serde(default)]
    pub token_file: String,
}

impl AdminConfig {
    /// What is wrong with this section, if anything (`admin.listen` must be empty or an
    /// address).
    pub fn problem(&self) -> Option<String> {
        if !self.token.is_empty() && !self.token_file.is_empty() {
            return Some("admin.token: set it or token_file, not both".to_owned());
        }
        if let Err(e) = self.bearer() {
            return Some(format!(
                "admin.token_file: cannot read {:?}: {e}",
                self.token_file
            ));
        }
        if self.listen.is_empty() || self.listen.parse::<SocketAddr>().is_ok() {
            return None;
        }
        Some(format!(
            "admin.listen: {:?} is not an address like 127.0.0.1:9641 (empty disables it)",
            self.listen
        ))
    }

    /// The token, from `token_file` when one is named; `None` when none is set.
    pub fn bearer(&self) -> std::io::Result<Option<String>> {
        let token = if self.token_file.is_empty() {
            self.token.clone()
        } else {
            crate::secret::read(&self.token_file)?.trim().to_owned()
        };
        Ok((!token.is_empty()).then_some(token))
    }

    /// A copy fit to show: the token replaced.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        if !shown.token.is_empty() {
            shown.token = crate::kafka::client::REDACTED.to_owned();
        }
        shown
    }

    /// Wraps `handler` so requests that change state (any method but GET and HEAD) need
    /// the bearer token when one is set, and are refused beyond loopback when none is;
    /// `/metrics`, health and status stay open to scrapers and probes.
    pub fn protect(&self, handler: Arc<dyn Handler>) -> Arc<dyn Handler> {
        let loopback = self
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback());
        let token = match self.bearer() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(file = %self.token_file, error = %e, "cannot read admin.token_file; state-changing endpoints refused");
                Some(String::new())
            }
        };
        if token.is_none() && !loopback {
            tracing::warn!(listen = %self.listen, "no admin.token_file: endpoints that change state are refused beyond loopback");
        }
        Arc::new(Protected {
            inner: handler,
            token,
            loopback,
        })
    }
}

const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; more are answered 503 at once.
const MAX_CONNECTIONS: usize = 64;
const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    /// The `Authorization: Bearer` token, if sent.
    pub bearer: Option<String>,
}

impl Request {
    /// The value of `name` in the query string, if present, percent-decoded (`+` is a
    /// space); `None` also when it does not decode to UTF-8.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let decode = |s: &str| {
            let spaced = s.replace('+', " ");
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| decode(k).as_deref() == Some(name))
            .and_then(|(_, v)| decode(v))
    }
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, body: &impl serde::Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(body).unwrap_or_else(|e| e.to_string().into_bytes()),
        }
    }

    pub fn not_found() -> Self {
        Self::text(404, "not found\n")
    }

    /// `/health/ready`: 200 when ready, else 503 with the reasons as JSON (a Kubernetes
    /// readinessProbe needs only the status; an operator reads the reasons).
    pub fn readiness(ready: Result<(), Vec<String>>) -> Self {
        match ready {
            Ok(()) => Self::text(200, "ready\n"),
            Err(reasons) => Self::json(503, &serde_json::json!({ "ready": false, "reasons": reasons })),
        }
    }
}

/// Application-specific routes.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: &Request) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &Request) -> Response {
        self(request)
    }
}

/// A handler behind the token check (see [`AdminConfig::protect`]).
struct Protected {
    inner: Arc<dyn Handler>,
    /// `Some("")` when the token file could not be read: nothing matches it.
    token: Option<String>,
    loopback: bool,
}

impl Handler for Protected {
    fn handle(&self, request: &Request) -> Response {
        if matches!(request.method.as_str(), "GET" | "HEAD") {
            return self.inner.handle(request);
        }
        match (&self.token, &request.bearer) {
            (None, _) if self.loopback => self.inner.handle(request),
            (None, _) => Response::text(
                403,
                "this endpoint changes state: set admin.token_file to use it beyond loopback\n",
            ),
            (Some(want), Some(got)) if !want.is_empty() && same_bytes(want.as_bytes(), got.as_bytes()) => {
                self.inner.handle(request)
            }
            (Some(_), _) => Response::text(401, "a valid bearer token is required\n"),
        }
    }
}

/// Compares without stopping at the first difference, so the time taken does not say
/// how much of a guess was right.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Binds the admin listener. Port 0 picks a free port (tests).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` completes.
pub async fn serve(listener: TcpListener, handler: Arc<dyn Handler>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((mut stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Bounded: a flood of connections cannot exhaust the app.
                        tokio::spawn(async move {
                            let busy = Response::text(503, "too many admin connections\n");
                            let _ = write_response(&mut stream, &busy).await;
                        });
                        continue;
                    };
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, handler).await {
                            tracing::debug!(%peer, error = %e, "admin connection failed");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn connection(mut stream: TcpStream, handler: Arc<dyn Handler>) -> std::io::Result<()> {
    let request = match tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let resp = Response::text(400, format!("{e}\n"));
            return write_response(&mut stream, &resp).await;
        }
        Err(_) => return Ok(()),
    };
    // Handlers may block briefly (they talk to the runtime through channels).
    let response = tokio::task::spawn_blocking(move || handler.handle(&request))
        .await
        .unwrap_or_else(|e| Response::text(500, format!("handler failed: {e}\n")));
    write_response(&mut stream, &response).await
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed mid-request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let method = parts.next().ok_or_else(|| bad("no method"))?.to_owned();
    let target = parts.next().ok_or_else(|| bad("no path"))?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut length = 0usize;
    let mut bearer = None;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().map_err(|_| bad("bad content-length"))?;
        } else if k.trim().eq_ignore_ascii_case("authorization") {
            bearer = v.trim().strip_prefix("Bearer ").map(|t| t.trim().to_owned());
        }
    }
    if length > MAX_BODY {
        return Err(bad("body too large"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed mid-body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        body,
        bearer,
    })
}

async fn write_response(stream: &mut TcpStream, r: &Response) -> std::io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&r.body).await?;
    stream.shutdown().await
}

/// A minimal blocking HTTP client for the CLI's `ctl` commands and tests.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    request_with(addr, method, path, body, None)
}

/// The same, sending `token` as a bearer token.
pub fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_requests_to_the_handler() {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handler: Arc<dyn Handler> = Arc::new(|r: &Request| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/health") => Response::text(200, "ok\n"),
            ("POST", "/echo") => Response::text(
                200,
                format!(
                    "{}:{}",
                    r.query_param("x").unwrap_or_else(|| "-".into()),
                    String::from_utf8_lossy(&r.body)
                ),
            ),
            _ => Response::not_found(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, handler, async move {
            let _ = rx.await;
        }));
        let (health, echo, missing) = tokio::task::spawn_blocking(move || {
            (
                request(addr, "GET", "/health", b""),
                request(addr, "POST", "/echo?x=1", b"hello"),
                request(addr, "GET", "/nope", b""),
            )
        })
        .await
        .expect("join");
        assert_eq!(health.expect("health"), (200, "ok\n".to_owned()));
        assert_eq!(echo.expect("echo"), (200, "1:hello".to_owned()));
        assert_eq!(missing.expect("missing").0, 404);
        let _ = tx.send(());
        server.await.expect("server stops");
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let r = Request {
            method: "POST".into(),
            path: "/replay".into(),
            query: "from_time=2026-11-24T10%3A00%3A00%2B01%3A00&partitions=0%2C3&note=a+b&bad=%FF".into(),
            body: Vec::new(),
            bearer: None,
        };
        assert_eq!(
            r.query_param("from_time").as_deref(),
            Some("2026-11-24T10:00:00+01:00")
        );
        assert_eq!(r.query_param("partitions").as_deref(), Some("0,3"));
        assert_eq!(r.query_param("note").as_deref(), Some("a b"));
        assert_eq!(r.query_param("bad"), None, "not UTF-8");
        assert_eq!(r.query_param("missing"), None);
    }

    #[test]
    fn state_changing_requests_need_the_token_and_reads_do_not() {
        let ok: Arc<dyn Handler> = Arc::new(|_: &Request| Response::text(200, "done\n"));
        let req = |method: &str, bearer: Option<&str>| Request {
            method: method.into(),
            path: "/x".into(),
            query: String::new(),
            body: Vec::new(),
            bearer: bearer.map(str::to_owned),
        };
        let with_token = AdminConfig {
            listen: "0.0.0.0:9641".into(),
            token: "t0ken".into(),
            token_file: String::new(),
        }
        .protect(ok.clone());
        assert_eq!(with_token.handle(&req("GET", None)).status, 200);
        assert_eq!(with_token.handle(&req("POST", None)).status, 401);
        assert_eq!(with_token.handle(&req("POST", Some("t0kem"))).status, 401);
        assert_eq!(with_token.handle(&req("POST", Some("t0ke"))).status, 401);
        assert_eq!(with_token.handle(&req("POST", Some("t0ken"))).status, 200);
        let open = |listen: &str| AdminConfig {
            listen: listen.into(),
            token: String::new(),
            token_file: String::new(),
        };
        assert_eq!(
            open("127.0.0.1:9641")
                .protect(ok.clone())
                .handle(&req("POST", None))
                .status,
            200
        );
        assert_eq!(
            open("0.0.0.0:9641")
                .protect(ok.clone())
                .handle(&req("POST", None))
                .status,
            403
        );
        assert_eq!(
            open("0.0.0.0:9641").protect(ok).handle(&req("GET", None)).status,
            200
        );
    }
}
