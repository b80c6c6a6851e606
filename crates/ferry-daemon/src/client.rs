//! A client of a daemon's API: over its local Unix socket, or over TCP with mutual TLS.
//!
//! Used by the CLI (`ferry vm list --host H`, `ferry migrate VM --to H`, `ferry cluster status`)
//! and by daemons talking to each other (a source asks the destination to get ready).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::types::{ApiError, DaemonEvent};

/// How long connecting (and the TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a daemon's API is.
#[derive(Clone)]
pub enum Target {
    /// The local socket.
    Unix(PathBuf),
    /// TCP with mutual TLS.
    Tls {
        /// `host:port`.
        addr: String,
        /// The name the daemon's certificate must carry.
        server_name: String,
        /// Our certificate and the CA we trust.
        config: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tls {
                addr, server_name, ..
            } => write!(f, "https://{addr} ({server_name})"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon cannot be reached.
    #[error("cannot reach the ferry daemon at {target}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("the ferry daemon at {target} did not answer within {} s", limit.as_secs())]
    Timeout {
        /// Where.
        target: String,
        /// The limit.
        limit: Duration,
    },
    /// HTTP failed.
    #[error("HTTP to the ferry daemon at {target} failed")]
    Http {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The daemon's message.
        message: String,
    },
    /// The answer is not what the API promises.
    #[error("bad answer from the ferry daemon at {target}")]
    Decode {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A client of one daemon.
#[derive(Clone)]
pub struct DaemonClient {
    target: Target,
    timeout: Duration,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl DaemonClient {
    /// A client of the daemon at `target`; plain calls time out after 30 s.
    pub fn new(target: Target) -> Self {
        DaemonClient {
            target,
            timeout: Duration::from_secs(30),
        }
    }

    /// Changes the time limit of plain calls (not of event streams).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where it calls.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn connect_err(&self, source: std::io::Error) -> ClientError {
        ClientError::Connect {
            target: self.target.to_string(),
            source,
        }
    }

    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let fut = async {
            Ok::<Box<dyn Io>, ClientError>(match &self.target {
                Target::Unix(path) => Box::new(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|e| self.connect_err(e))?,
                ),
                Target::Tls {
                    addr,
                    server_name,
                    config,
                } => {
                    let tcp = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .map_err(|e| self.connect_err(e))?;
                    let _ = tcp.set_nodelay(true);
                    let name = ServerName::try_from(server_name.clone()).map_err(|e| {
                        self.connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    })?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| self.connect_err(e))?;
                    Box::new(tls)
                }
            })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, fut)
            .await
            .map_err(|_| ClientError::Timeout {
                target: self.target.to_string(),
                limit: CONNECT_TIMEOUT,
            })?
    }

    /// Sends one request on a new connection; the response with its body still streaming.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let io = self.connect().await?;
        let http = |source| ClientError::Http {
            target: self.target.to_string(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = match &self.target {
            Target::Unix(_) => "localhost".to_string(),
            Target::Tls { addr, .. } => addr.clone(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Connect {
                target: self.target.to_string(),
                source: std::io::Error::other(e),
            })?;
        sender.send_request(req).await.map_err(http)
    }

    /// One call: the status and the whole body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let call = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|source| ClientError::Http {
                    target: self.target.to_string(),
                    source,
                })?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                target: self.target.to_string(),
                limit: self.timeout,
            })?
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api { status, message });
        }
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            target: self.target.to_string(),
            source,
        })
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, decoded.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            target: self.target.to_string(),
            source,
        })?;
        self.json(Method::POST, path, Some(body)).await
    }

    /// `DELETE path`, decoded.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::DELETE, path, None).await
    }

    /// Subscribes to `/v1/events` (with a query such as `?migration=ID`): the events as they come.
    /// The stream ends when the daemon closes it.
    pub async fn events(
        &self,
        query: &str,
    ) -> Result<impl Stream<Item = Result<DaemonEvent, ClientError>>, ClientError> {
        let resp = tokio::time::timeout(
            self.timeout,
            self.send(Method::GET, &format!("/v1/events{query}"), None),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            target: self.target.to_string(),
            limit: self.timeout,
        })??;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ClientError::Api {
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let target = self.target.to_string();
        let body = resp.into_body();
        Ok(futures_util::stream::unfold(
            (body, SseParser::default(), target),
            |(mut body, mut parser, target)| async move {
                loop {
                    if let Some(data) = parser.next_event() {
                        let ev = serde_json::from_str::<DaemonEvent>(&data).map_err(|source| {
                            ClientError::Decode {
                                target: target.clone(),
                                source,
                            }
                        });
                        return Some((ev, (body, parser, target)));
                    }
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                parser.push(&data);
                            }
                        }
                        Some(Err(source)) => {
                            return Some((
                                Err(ClientError::Http {
                                    target: target.clone(),
                                    source,
                                }),
                                (body, parser, target),
                            ))
                        }
                        None => return None,
                    }
                }
            },
        ))
    }
}

/// Splits a Server-Sent Events byte stream into the `data` of each event (comments and other
/// fields skipped; multi-line data joined with newlines).
#[derive(Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    /// Adds bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
    }

    /// The next complete event's data, if one is buffered.
    pub fn next_event(&mut self) -> Option<String> {
        loop {
            let end = self.buf.find("\n\n")?;
            let block: String = self.buf.drain(..end + 2).collect();
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                return Some(data.join("\n"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        p.push(b": keep-alive\n\nevent: vm\ndata: {\"a\":");
        assert_eq!(p.next_event(), None);
        p.push(b"1}\n\nevent: x\ndata: one\ndata: two\n\n");
        assert_eq!(p.next_event().as_deref(), Some("{\"a\":1}"));
        assert_eq!(p.next_event().as_deref(), Some("one\ntwo"));
        assert_eq!(p.next_event(), None);
    }
}
