//! TLS 1.3 with mutual certificate authentication for every migration channel (rustls, ring).
//!
//! Both sides hold a certificate signed by the cluster CA. The source checks that the destination's
//! certificate names the host it dialled; the destination accepts only CA-signed peers whose name
//! its policy allows. Plaintext exists only behind an explicit `--insecure`.

pub mod certs;
pub mod revoke;
mod stream;
mod verify;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

pub use revoke::DenyList;
pub use stream::TlsStream;

use crate::channel::Stream;
use crate::MigrateError;

/// Why TLS set-up or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration or the handshake.
    #[error("TLS protocol")]
    Rustls(#[from] rustls::Error),
    /// Building the client-certificate verifier failed.
    #[error("TLS client verifier: {0}")]
    Verifier(String),
    /// The peer's certificate is valid but its name is not allowed here.
    #[error("peer certificate is not allowed by this host's policy (allowed: {allowed})")]
    NotAllowed {
        /// The names this host accepts.
        allowed: String,
    },
    /// The handshake did not complete (peer silent, closed, or spoke something else).
    #[error("TLS handshake with {peer} failed")]
    Handshake {
        /// Who we talked to.
        peer: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(String),
    /// A name that cannot be a TLS server name.
    #[error("'{0}' is not a valid host name or IP address for TLS")]
    BadName(String),
}

/// This host's identity: the cluster CA it trusts, its own certificate and key, and the
/// certificates it no longer accepts.
#[derive(Clone, Debug)]
pub struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    revoked: Option<DenyList>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_err(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl Identity {
    /// Loads the CA certificate, this host's certificate chain and its private key (PEM files).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let ca_der = CertificateDer::from_pem_slice(&read_pem(ca)?)
            .map_err(|e| pem_err(ca, e.to_string()))?;
        let chain = CertificateDer::pem_slice_iter(&read_pem(cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(cert, "no certificate in the file"));
        }
        let key_der = PrivateKeyDer::from_pem_slice(&read_pem(key)?)
            .map_err(|e| pem_err(key, e.to_string()))?;
        Ok(Self {
            ca: ca_der,
            chain,
            key: Arc::new(key_der),
            revoked: None,
        })
    }

    /// Loads `ca.pem`, `NAME.pem` and `NAME.key` from a directory made by `ferry certs`, and the
    /// revocation list `revoked.txt` there if there is one.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let id = Self::load(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )?;
        let list = dir.join(certs::REVOKED_FILE);
        if list.exists() {
            return Ok(id.with_revoked(DenyList::open(&list)?));
        }
        Ok(id)
    }

    /// Refuses peers that `list` names, at every handshake, in both directions.
    pub fn with_revoked(mut self, list: DenyList) -> Self {
        self.revoked = Some(list);
        self
    }

    /// The revocation list in force, if any.
    pub fn revoked(&self) -> Option<&DenyList> {
        self.revoked.as_ref()
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }
}

/// ring's TLS 1.3 suites, AES-128-GCM first: as strong for this use and faster than AES-256 on the
/// bulk path (the stream is most of a migration's CPU).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// The source's side: trusts the cluster CA (minus revoked certificates), presents its own
/// certificate.
pub fn client_config(id: &Identity) -> Result<Arc<ClientConfig>, TlsError> {
    let webpki = WebPkiServerVerifier::builder_with_provider(id.roots()?, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let check = verify::ServerCheck {
        inner: webpki,
        revoked: id.revoked.clone(),
    };
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(check))
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(cfg))
}

/// The destination's side: requires a client certificate signed by the cluster CA, not revoked.
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for(id, &Policy::default())
}

/// Like [`server_config`], admitting only peers `policy` allows: a refused peer is told so in the
/// handshake (an `access_denied` alert), not merely hung up on.
pub fn server_config_for(id: &Identity, policy: &Policy) -> Result<Arc<ServerConfig>, TlsError> {
    let webpki = WebPkiClientVerifier::builder_with_provider(id.roots()?, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let check = verify::ClientCheck {
        inner: webpki,
        revoked: id.revoked.clone(),
        policy: policy.clone(),
    };
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(check))
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    Ok(Arc::new(cfg))
}

/// Which peer names a destination accepts (any name the CA signed, when empty).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Allowed peer names (DNS names or IP addresses in the certificate).
    pub allowed: Vec<String>,
}

impl Policy {
    /// Checks a verified peer certificate against the allowed names.
    pub fn check(&self, peer: &CertificateDer<'_>) -> Result<(), TlsError> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let cert =
            webpki::EndEntityCert::try_from(peer).map_err(|e| TlsError::Verifier(e.to_string()))?;
        let ok = self.allowed.iter().any(|name| {
            ServerName::try_from(name.as_str())
                .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
        });
        if ok {
            Ok(())
        } else {
            Err(TlsError::NotAllowed {
                allowed: self.allowed.join(", "),
            })
        }
    }
}

fn handshake_err(peer: &str) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |source| {
        MigrateError::Tls(TlsError::Handshake {
            peer: peer.to_string(),
            source,
        })
    }
}

/// Connects TLS over `sock` to a destination that must prove it is `server_name`.
pub fn connect(
    sock: TcpStream,
    cfg: &Arc<ClientConfig>,
    server_name: &str,
    timeout: Duration,
) -> Result<Stream, MigrateError> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|_| TlsError::BadName(server_name.into()))?;
    let mut conn = ClientConnection::new(cfg.clone(), name).map_err(TlsError::from)?;
    handshake(&sock, &mut conn, server_name, timeout)?;
    Ok(Stream::Tls(TlsStream::new(sock, conn.into())))
}

/// Accepts TLS on `sock` from a source whose certificate the CA signed and `policy` allows.
pub fn accept(
    sock: TcpStream,
    cfg: &Arc<ServerConfig>,
    policy: &Policy,
    timeout: Duration,
) -> Result<Stream, MigrateError> {
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "peer".into());
    let mut conn = ServerConnection::new(cfg.clone()).map_err(TlsError::from)?;
    handshake(&sock, &mut conn, &peer, timeout).map_err(|e| match e {
        MigrateError::Tls(TlsError::Rustls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))) => MigrateError::Tls(TlsError::NotAllowed {
            allowed: policy.allowed.join(", "),
        }),
        e => e,
    })?;
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| TlsError::Verifier("peer presented no certificate".into()))?;
    if let Err(e) = policy.check(cert) {
        // Tell the peer why before hanging up, so both sides log the same reason.
        conn.send_close_notify();
        let mut s = &sock;
        let _ = conn.write_tls(&mut s);
        return Err(e.into());
    }
    Ok(Stream::Tls(TlsStream::new(sock, conn.into())))
}

fn handshake<C, D>(
    sock: &TcpStream,
    conn: &mut C,
    peer: &str,
    timeout: Duration,
) -> Result<(), MigrateError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    sock.set_read_timeout(Some(timeout))
        .map_err(handshake_err(peer))?;
    sock.set_write_timeout(Some(timeout))
        .map_err(handshake_err(peer))?;
    let mut s = sock;
    while conn.is_handshaking() {
        conn.complete_io(&mut s).map_err(|e| {
            // rustls reports certificate problems as InvalidData wrapping its own error: keep them.
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => MigrateError::Tls(TlsError::Rustls(tls.clone())),
                None => handshake_err(peer)(e),
            }
        })?;
    }
    Ok(())
}

/// Name of the negotiated cipher suite, for reports.
pub fn cipher_suite(stream: &Stream) -> Option<String> {
    match stream {
        Stream::Tls(t) => t.cipher_suite(),
        _ => None,
    }
}
