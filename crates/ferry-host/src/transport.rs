//! Where migrations travel: TCP (plaintext only behind `--insecure`, else TLS) between hosts, or a
//! Unix socket on one host (the guest's RAM handed over as a file).

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use ferry_migrate::channel::Stream;
use ferry_migrate::tls;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::security::Security;

/// How long a source waits for a TCP connection to a destination.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a source waits for the destination's side of the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A migration address: `host:port`, or `unix:PATH` for a destination on the same host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// TCP, `host:port`.
    Tcp(String),
    /// A Unix socket on this host.
    Unix(PathBuf),
}

impl Endpoint {
    /// The name TLS checks in the destination's certificate: the host part of `host:port`
    /// (brackets of an IPv6 literal removed).
    pub fn host(&self) -> String {
        match self {
            Endpoint::Tcp(addr) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
            Endpoint::Unix(_) => "localhost".into(),
        }
    }

    /// Whether this is a same-host (Unix socket) endpoint.
    pub fn is_local(&self) -> bool {
        matches!(self, Endpoint::Unix(_))
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path (unix:/path/to/socket)".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "'{s}' is not a migration address (host:port, or unix:PATH on the same host)"
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => f.write_str(a),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Binding failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process serves this socket path.
    #[error("{0} is in use by another process")]
    InUse(PathBuf),
}

/// Where a destination waits for migrations.
#[derive(Debug)]
pub enum MigrationListener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket (mode 0600), removed on drop.
    Unix(UnixListener, PathBuf),
}

impl MigrationListener {
    /// Binds `at` (port 0 picks a free port).
    pub fn bind(at: &Endpoint) -> Result<Self, TransportError> {
        let bind_err = |source| TransportError::Bind {
            addr: at.to_string(),
            source,
        };
        match at {
            Endpoint::Unix(path) => {
                let l = crate::socket::bind_private(path).map_err(|e| match e {
                    crate::socket::BindError::InUse(p) => TransportError::InUse(p),
                    crate::socket::BindError::Io(source) => bind_err(source),
                })?;
                Ok(MigrationListener::Unix(l, path.clone()))
            }
            Endpoint::Tcp(addr) => Ok(MigrationListener::Tcp(
                TcpListener::bind(addr).map_err(bind_err)?,
            )),
        }
    }

    /// The address sources should dial (with the port actually bound).
    pub fn endpoint(&self) -> Endpoint {
        match self {
            MigrationListener::Tcp(l) => Endpoint::Tcp(
                l.local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into()),
            ),
            MigrationListener::Unix(_, p) => Endpoint::Unix(p.clone()),
        }
    }

    /// Whether this is a same-host listener.
    pub fn is_local(&self) -> bool {
        matches!(self, MigrationListener::Unix(..))
    }

    /// Accepts one migration connection, authenticated as `security` requires (the TLS handshake
    /// must complete within `timeout`).
    pub fn accept(&self, security: &Security, timeout: Duration) -> std::io::Result<Stream> {
        let s = match self {
            MigrationListener::Unix(l, _) => return l.accept().map(|(s, _)| Stream::Unix(s)),
            MigrationListener::Tcp(l) => l.accept()?.0,
        };
        match security {
            Security::Insecure => Ok(Stream::Tcp(s)),
            Security::LocalOnly => Err(std::io::Error::other(
                "TCP migrations need TLS certificates",
            )),
            Security::Tls(t) => {
                tls::accept(s, &t.server, &t.policy, timeout).map_err(std::io::Error::other)
            }
        }
    }
}

impl Drop for MigrationListener {
    fn drop(&mut self) {
        if let MigrationListener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Why a source cannot dial a destination.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address does not resolve.
    #[error("cannot resolve {addr}")]
    Resolve {
        /// The address.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// A network migration from a host without certificates.
    #[error(
        "migrating over the network needs TLS certificates: start the VM with --certs DIR --name NAME \
         (see `ferry certs`), or --insecure for a plaintext test setup; same-host migrations \
         (--to unix:PATH) need none"
    )]
    NeedsCertificates,
}

/// Dials one destination, once per migration channel, as `security` requires.
pub struct Connector<'a> {
    target: Target,
    security: &'a Security,
    server_name: String,
    transport: Mutex<String>,
}

enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl<'a> Connector<'a> {
    /// Prepares to dial `to`; TLS checks that the destination's certificate names `tls_name`
    /// (default: the host part of `to`).
    pub fn new(
        to: &Endpoint,
        tls_name: Option<&str>,
        security: &'a Security,
    ) -> Result<Self, ConnectError> {
        let (target, transport) = match to {
            Endpoint::Unix(p) => (
                Target::Unix(p.clone()),
                // How guest RAM went (handed over or copied) is known only after the migration.
                "unix socket, same host",
            ),
            Endpoint::Tcp(addr) => {
                if matches!(security, Security::LocalOnly) {
                    return Err(ConnectError::NeedsCertificates);
                }
                let resolve = |source| ConnectError::Resolve {
                    addr: addr.clone(),
                    source,
                };
                let sa = addr
                    .to_socket_addrs()
                    .map_err(resolve)?
                    .next()
                    .ok_or_else(|| resolve(std::io::Error::other("no address")))?;
                (Target::Tcp(sa), "tcp, plaintext (--insecure)")
            }
        };
        Ok(Connector {
            target,
            security,
            server_name: tls_name.map_or_else(|| to.host(), str::to_string),
            transport: Mutex::new(transport.into()),
        })
    }

    /// Opens one channel.
    pub fn connect(&self) -> std::io::Result<Stream> {
        let addr = match &self.target {
            Target::Unix(path) => return UnixStream::connect(path).map(Stream::Unix),
            Target::Tcp(a) => a,
        };
        let s = TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)?;
        match self.security {
            Security::Insecure => Ok(Stream::Tcp(s)),
            Security::LocalOnly => Err(std::io::Error::other(
                "TCP migrations need TLS certificates",
            )),
            Security::Tls(t) => {
                let stream = tls::connect(s, &t.client, &self.server_name, TLS_HANDSHAKE_TIMEOUT)
                    .map_err(std::io::Error::other)?;
                if let (Ok(mut d), Some(suite)) =
                    (self.transport.lock(), tls::cipher_suite(&stream))
                {
                    *d = format!(
                        "TLS 1.3, {suite}, mutual authentication ({})",
                        self.server_name
                    );
                }
                Ok(stream)
            }
        }
    }

    /// The transport and its protection, for the report.
    pub fn description(&self) -> String {
        self.transport.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Whether `path` is a socket some process is accepting on.
pub(crate) fn socket_in_use(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_name_their_host() {
        let e: Endpoint = "10.0.0.2:7000".parse().unwrap();
        assert_eq!(e.host(), "10.0.0.2");
        let e: Endpoint = "[::1]:7000".parse().unwrap();
        assert_eq!(e.host(), "::1");
        let e: Endpoint = "hostb.example:1".parse().unwrap();
        assert_eq!(e.host(), "hostb.example");
        let u: Endpoint = "unix:/run/x.sock".parse().unwrap();
        assert_eq!(u, Endpoint::Unix("/run/x.sock".into()));
        assert_eq!(u.to_string(), "unix:/run/x.sock");
        for bad in ["hostb", "hostb:port", ":7000", "unix:", "h:70000"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_without_certificates_cannot_dial_over_tcp() {
        let e: Endpoint = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(
            Connector::new(&e, None, &Security::LocalOnly),
            Err(ConnectError::NeedsCertificates)
        ));
        let u: Endpoint = "unix:/nonexistent/x".parse().unwrap();
        assert!(Connector::new(&u, None, &Security::LocalOnly).is_ok());
    }
}
