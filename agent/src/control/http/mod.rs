//! The local HTTP server (`control.http`, default `127.0.0.1:9180`): `GET /metrics`
//! (Prometheus text, or OpenMetrics when asked for), `GET /healthz`, `GET /status.json` (the
//! status document of the control socket and the retained status topic) and `GET /` (a status
//! page for the site, see `page`).
//!
//! hyper 1 (HTTP/1.1 only) with hyper-util's tokio glue: both are already in the dependency
//! tree (rumqttd), small, and maintained with tokio; a framework would add routing and
//! middleware layers that four fixed paths do not need.
//!
//! - Every answer is built from what the status board and the buffer already know; nothing
//!   here is on the readings' path.
//! - An address that cannot be bound (the port is taken) is logged once per distinct error,
//!   shown in status (`http`), and retried with backoff; the rest of the agent runs on.
//! - With `control.http_token_file`, every request without `Authorization: Bearer TOKEN` gets
//!   `401`, whatever the address (the token is read once at start).
//! - At most [`MAX_CONNECTIONS`] connections are served at once (one more is closed at once);
//!   a client has [`HEADER_TIMEOUT`] to send its request head. The listener and every
//!   connection race the shutdown: an open connection does not hold up a stop.

mod health;
mod metrics;
mod page;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::backoff::Backoff;
use crate::buffer::Store;
use crate::shutdown::Shutdown;
use crate::status::{HttpStatus, StatusBoard};

pub use health::health;

/// Connections served at once, at most.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Retrying a bind that failed: from this delay, doubling (with jitter) up to the next.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the server needs: where to listen and what to show.
#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    /// The bearer token every request must carry; None: no token is asked.
    pub token: Option<Arc<str>>,
    pub site: Arc<str>,
    /// `control.health_grace`.
    pub grace: Duration,
    pub store: Store,
    pub board: Arc<StatusBoard>,
}

/// The token of `control.http_token_file` (its first line), named in the error if it cannot
/// be read.
pub fn read_token(path: &std::path::Path) -> Result<Arc<str>, crate::tls::SetupError> {
    crate::tls::read_password("control.http_token_file", path).map(|p| p.expose().into())
}

impl Server {
    /// Listens (retrying a failed bind with backoff) and serves until shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        let me = Arc::new(self);
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut last_error: Option<String> = None;
        loop {
            // Cancel-safe enough: a bind in progress is simply dropped.
            let bound = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = TcpListener::bind(me.addr) => r,
            };
            match bound {
                Ok(listener) => {
                    tracing::info!(
                        "control.http: serving http://{}/ (metrics, health, status page)",
                        me.addr
                    );
                    me.board.set_http(Some(HttpStatus {
                        address: me.addr.to_string(),
                        listening: true,
                        error: None,
                    }));
                    last_error = None;
                    backoff.up();
                    if me.clone().accept(listener, &shutdown).await {
                        return;
                    }
                }
                Err(e) => {
                    let why = bind_error(me.addr, &e);
                    if last_error.as_deref() != Some(why.as_str()) {
                        tracing::warn!(
                            "{why}; retrying with backoff, the rest of the agent runs on"
                        );
                        last_error = Some(why.clone());
                    }
                    me.board.set_http(Some(HttpStatus {
                        address: me.addr.to_string(),
                        listening: false,
                        error: Some(why),
                    }));
                    let pause = backoff.next_delay();
                    tokio::select! {
                        // Cancel-safe: a cancelled token stays cancelled.
                        _ = shutdown.cancelled() => return,
                        // Cancel-safe: a sleep holds nothing.
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Serves connections on `listener`; true once shutdown began, false if the listener
    /// failed for good (it is bound again).
    async fn accept(self: Arc<Self>, listener: TcpListener, shutdown: &Shutdown) -> bool {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut failures = 0u32;
        loop {
            let accepted = tokio::select! {
                // Cancel-safe: a cancelled token stays cancelled.
                _ = shutdown.cancelled() => return true,
                // Cancel-safe: TcpListener::accept loses no connection when dropped.
                r = listener.accept() => r,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    failures = 0;
                    stream
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause, and after many in a row
                    // bind again.
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!("control.http {}: accepting a connection: {e}", self.addr);
                    }
                    if failures > 100 {
                        return false;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return true,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closed at once: a client that opens connections in a loop takes no more.
                drop(stream);
                continue;
            };
            let me = self.clone();
            let stop = shutdown.clone();
            let _ = shutdown.spawn("http client", async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.answer(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    // Not cancel-safe, and need not be: shutdown ends the connection.
                    _ = stop.cancelled() => {}
                    r = conn => {
                        if let Err(e) = r {
                            tracing::debug!("control.http: a connection ended: {e}");
                        }
                    }
                }
            });
        }
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(token) = &self.token {
            if !bearer_matches(req.headers().get(AUTHORIZATION), token) {
                let mut r = json(
                    StatusCode::UNAUTHORIZED,
                    &serde_json::json!({"error": "this agent's HTTP server needs `Authorization: Bearer TOKEN`, the token being the first line of control.http_token_file"}),
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                return r;
            }
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served here\n",
            );
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => {
                let open_metrics = req
                    .headers()
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("application/openmetrics-text"));
                let doc = crate::control::current_status(&self.store, &self.board).await;
                match metrics::encode(&doc, &self.board, open_metrics) {
                    Ok((body, content_type)) => {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                        r
                    }
                    Err(e) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("encoding the metrics failed: {e}\n"),
                    ),
                }
            }
            "/healthz" => {
                let h = health(&self.board, self.grace);
                let code = if h.ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(code, &h.to_json())
            }
            "/status.json" => {
                let doc = crate::control::current_status(&self.store, &self.board).await;
                json(StatusCode::OK, &doc)
            }
            "/" | "/index.html" => {
                let doc = crate::control::current_status(&self.store, &self.board).await;
                let h = health(&self.board, self.grace);
                let recent = crate::status::tally().recent_exceptions();
                let html = page::render(&self.site, &doc, &h, &recent);
                let mut r = Response::new(Full::new(Bytes::from(html)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            other => text(
                StatusCode::NOT_FOUND,
                &format!(
                    "{other}: not here; this agent serves /, /status.json, /healthz and /metrics\n"
                ),
            ),
        }
    }
}

/// What a failed bind means and what to do about it.
fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another program listens there (ss -ltnp shows which); stop it or set control.http to another port"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "no interface of this machine has that address; set control.http to one it has"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need privileges the service does not have; use a port above 1024"
        }
        _ => "check control.http",
    };
    format!("control.http {addr}: cannot listen: {e}; {hint}")
}

/// Whether `header` is `Bearer TOKEN`, compared in constant time.
fn bearer_matches(header: Option<&HeaderValue>, token: &str) -> bool {
    let Some(given) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json(code: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert!(bearer_matches(Some(&h("Bearer s3cret")), "s3cret"));
        assert!(!bearer_matches(Some(&h("Bearer s3cre")), "s3cret"));
        assert!(!bearer_matches(Some(&h("Bearer s3cretx")), "s3cret"));
        assert!(!bearer_matches(Some(&h("Basic s3cret")), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
    }

    #[test]
    fn a_taken_port_says_what_to_do() {
        let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let why = bind_error(([127, 0, 0, 1], 9180).into(), &e);
        assert!(
            why.starts_with("control.http 127.0.0.1:9180: cannot listen"),
            "{why}"
        );
        assert!(why.contains("set control.http to another port"), "{why}");
    }
}
