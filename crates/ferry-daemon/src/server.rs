//! Where the API is served: TCP with mutual TLS (the cluster CA signs every client), and a Unix
//! socket (mode 0600) for root and the daemon's own user on this host.
//!
//! Each connection runs on its own task; a TLS handshake has a deadline and never holds up the
//! accept loop, so a peer that connects and says nothing stalls nobody.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tower::ServiceExt;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is calling, attached to every request.
#[derive(Clone, Debug)]
pub enum Peer {
    /// A process on this host, through the Unix socket.
    Local {
        /// Its user id.
        uid: u32,
    },
    /// A client with a certificate of the cluster CA.
    Tls {
        /// Its certificate (verified in the handshake).
        cert: Arc<CertificateDer<'static>>,
    },
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TCP address cannot be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The Unix socket cannot be created.
    #[error("cannot create the API socket {}", path.display())]
    Unix {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error("{} is in use by a running daemon", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
}

/// Binds the local API socket: stale sockets are replaced, a live one is refused; mode 0600.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Unix {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    // Bind under a umask that leaves no group or other bits, so the socket is never reachable by
    // others even for an instant; then set 0600 explicitly.
    // SAFETY: umask only changes this process's file-creation mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = l.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(l)
}

/// Serves `app` on the Unix socket until `shutdown` turns true. Peers other than root and the
/// daemon's own user are disconnected (the file mode already keeps them out).
pub async fn serve_unix(listener: UnixListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    // SAFETY: geteuid cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the API socket");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API socket peer's credentials");
                continue;
            }
        };
        if uid != 0 && uid != me {
            tracing::warn!(
                uid,
                "refused a local API client that is neither root nor the daemon's user"
            );
            continue;
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(serve_connection(stream, Peer::Local { uid }, app, shutdown));
    }
}

/// Serves `app` on a TCP listener with mutual TLS until `shutdown` turns true.
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, error = %e, "API client refused in the TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %addr, "API client did not finish the TLS handshake in time");
                    return;
                }
            };
            // The verifier requires a client certificate: a connection without one never gets
            // here. Checked again so that a configuration mistake fails closed.
            let Some(cert) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.clone().into_owned()))
            else {
                tracing::warn!(peer = %addr, "API client without a certificate");
                return;
            };
            serve_connection(tls, Peer::Tls { cert }, app, shutdown).await;
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: Peer,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        app.clone().oneshot(req)
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "API connection ended");
            }
        }
        _ = shutdown.changed() => {}
    }
}
