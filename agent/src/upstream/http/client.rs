//! One HTTP/1.1 connection to the endpoint at a time (hyper's client connection over our own
//! TCP and rustls stream), kept open between requests and opened again when it closes. The
//! TLS files and the bearer token are read at each new connection, so a rotated certificate
//! or token is picked up without a restart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::{Config, HttpAddr};
use crate::link::{Io, NETWORK_TIMEOUT};
use crate::tls::Access;

/// The longest wait for an answer once the request is written.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of an answer's body read at most (a reason for a person, not data).
const BODY_MAX: usize = 64 << 10;

/// A request: one batch.
pub struct Post {
    pub body: Bytes,
    pub content_type: &'static str,
    pub idempotency_key: String,
}

/// The endpoint's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The start of the body, as text.
    pub body: String,
}

pub struct Client {
    config: Arc<Config>,
    addr: HttpAddr,
    conn: Option<Conn>,
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// `Bearer …`, when `upstream.token_file` is set.
    authorization: Option<header::HeaderValue>,
    /// It has carried a request already (an idle keep-alive connection the endpoint may have
    /// closed meanwhile).
    used: bool,
}

impl Client {
    pub fn new(config: Arc<Config>, addr: HttpAddr) -> Client {
        Client {
            config,
            addr,
            conn: None,
        }
    }

    /// Sends `post` and reads the answer. An error is a network failure, in words for a
    /// person (the batch is sent again later), and whether the request may have reached the
    /// endpoint (it was written, and no answer came). A connection the endpoint closed while
    /// idle is replaced once at once, without counting as a failure.
    pub async fn send(&mut self, post: &Post) -> Result<Answer, Unanswered> {
        let reused = self.conn.as_ref().is_some_and(|c| c.used);
        let r = match self.try_send(post).await {
            Err(Failure::BeforeAnswer(_)) if reused => {
                self.conn = None;
                self.try_send(post).await
            }
            r => r,
        };
        r.map_err(|f| Unanswered {
            may_have_arrived: !matches!(f, Failure::Connect(_)),
            why: f.into_text(),
        })
    }

    /// Opens a connection unless one is open: with nothing to send, this tells whether the
    /// endpoint can be reached (TCP, TLS and the certificates), for status and health.
    pub async fn reach(&mut self) -> Result<(), String> {
        if self.conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
            self.conn = Some(self.connect().await?);
        }
        Ok(())
    }

    async fn try_send(&mut self, post: &Post) -> Result<Answer, Failure> {
        if self.conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
            self.conn = Some(self.connect().await.map_err(Failure::Connect)?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Connect("no connection".into()));
        };
        let mut request = hyper::Request::post(self.addr.path.as_str())
            .header(header::HOST, self.addr.authority.as_str())
            .header(header::CONTENT_TYPE, post.content_type)
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("edge-agent/", env!("CARGO_PKG_VERSION")),
            )
            .header("Idempotency-Key", post.idempotency_key.as_str());
        if let Some(auth) = &conn.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Full::new(post.body.clone()))
            .map_err(|e| Failure::Connect(format!("the request cannot be built: {e}")))?;
        conn.used = true;
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
            conn.sender
                .ready()
                .await
                .map_err(|e| Failure::BeforeAnswer(chain(&e)))?;
            let response = conn
                .sender
                .send_request(request)
                .await
                .map_err(|e| Failure::BeforeAnswer(chain(&e)))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // A body beyond BODY_MAX is not read: the connection is not reused then.
            let body = match Limited::new(response.into_body(), BODY_MAX).collect().await {
                Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                Err(_) => String::new(),
            };
            Ok(Answer {
                status,
                retry_after,
                body,
            })
        })
        .await;
        match answer {
            // The token or the client certificate was not accepted: the next attempt opens a
            // new connection, which reads upstream.token_file and the TLS files again, so a
            // fixed file is used without a restart.
            Ok(Ok(a)) if matches!(a.status, 401 | 403 | 407) => {
                self.conn = None;
                Ok(a)
            }
            Ok(Ok(a)) => Ok(a),
            Ok(Err(f)) => {
                self.conn = None;
                Err(f)
            }
            Err(_) => {
                self.conn = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        let a = &self.addr;
        let up = &self.config.upstream;
        let mut access =
            Access::prepare(&up.access("upstream"), a.tls).map_err(|e| e.to_string())?;
        let authorization = match &up.token_file {
            Some(path) => {
                let token = crate::tls::read_password("upstream.token_file", path)
                    .map_err(|e| e.to_string())?;
                let value = header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        format!(
                            "upstream.token_file {}: the token has characters a header cannot carry; write it on one line of printable ASCII",
                            path.display()
                        )
                    })?;
                let mut value = value;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let at = format!("{}:{}", a.host, a.port);
        let tcp = tokio::time::timeout(NETWORK_TIMEOUT, TcpStream::connect((a.host.as_str(), a.port)))
            .await
            .map_err(|_| format!("TCP connection to {at}: no answer within {NETWORK_TIMEOUT:?} (a firewall or a wrong host?)"))?
            .map_err(|e| format!("TCP connection to {at}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match access.tls.take() {
            None => Box::new(tcp),
            Some(mut tls) => {
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                let name = ServerName::try_from(a.host.clone())
                    .map_err(|e| format!("upstream.url: host name {:?}: {e}", a.host))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
                let stream = tokio::time::timeout(NETWORK_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        format!("TLS handshake with {at}: no answer within {NETWORK_TIMEOUT:?}")
                    })?
                    .map_err(
                        |e| match crate::tls::explain_for(&e, "upstream", "endpoint") {
                            Some(reading) => format!("{at}: {reading}"),
                            None => format!("TLS handshake with {at}: {e}"),
                        },
                    )?;
                Box::new(stream)
            }
        };
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP connection to {at}: {}", chain(&e)))?;
        // Ends when `sender` is dropped or the endpoint closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            authorization,
            used: false,
        })
    }
}

/// A request without an answer.
#[derive(Debug)]
pub struct Unanswered {
    pub why: String,
    /// It was written (or partly): the endpoint may have taken it.
    pub may_have_arrived: bool,
}

enum Failure {
    Connect(String),
    /// The request failed before any answer (written or not).
    BeforeAnswer(String),
    Timeout,
}

impl Failure {
    fn into_text(self) -> String {
        match self {
            Failure::Connect(s) => s,
            Failure::BeforeAnswer(s) => format!("no answer: {s}"),
            Failure::Timeout => format!(
                "no answer within {ANSWER_TIMEOUT:?}; the batch is sent again with the same Idempotency-Key"
            ),
        }
    }
}

/// An error and its causes, `a: b: c`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
