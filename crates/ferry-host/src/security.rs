//! How a host protects migrations: mutual TLS with the cluster CA (and who may send it a VM), same
//! host only without certificates, or plaintext behind an explicit `--insecure`.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_migrate::tls::{self, TlsError};

/// What the operator configured.
#[derive(Clone, Debug, Default)]
pub struct SecurityConfig {
    /// Directory with `ca.pem`, `NAME.pem` and `NAME.key` (from `ferry certs`).
    pub certs: Option<PathBuf>,
    /// This host's name (its certificate's file name).
    pub name: Option<String>,
    /// Plaintext, no authentication.
    pub insecure: bool,
    /// Names a source's certificate must carry to send this host a VM (empty: any the CA signed).
    pub allow: Vec<String>,
    /// A revocation list (default: `revoked.txt` in the certificate directory, if there is one).
    pub revoked: Option<PathBuf>,
}

/// What a host may do without certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Network migrations must be possible now (a TCP receiver).
    Network,
    /// Same-host migrations suffice until a network migration is asked for (a running VM).
    LocalOk,
}

/// How this host protects migrations.
pub enum Security {
    /// Plaintext (--insecure).
    Insecure,
    /// No certificates: only same-host (Unix socket) migrations are possible.
    LocalOnly,
    /// TLS 1.3 with mutual authentication.
    Tls(Box<TlsSetup>),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Security::Insecure => "Insecure",
            Security::LocalOnly => "LocalOnly",
            Security::Tls(_) => "Tls",
        })
    }
}

/// TLS configurations for both directions.
pub struct TlsSetup {
    /// For migrating out.
    pub client: Arc<rustls::ClientConfig>,
    /// For migrations coming in.
    pub server: Arc<rustls::ServerConfig>,
    /// Who may send us a VM.
    pub policy: tls::Policy,
    /// The revocation list checked at every handshake.
    pub revoked: Option<PathBuf>,
}

/// Why the security configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// Network migrations asked for, without certificates or --insecure.
    #[error(
        "migrations need TLS certificates: pass --certs DIR --name NAME (create them with \
         `ferry certs init` and `ferry certs issue NAME`), or --insecure for a plaintext test setup"
    )]
    NeedCertificates,
    /// --certs without --name or the other way round.
    #[error("--certs and --name go together")]
    Incomplete,
    /// The identity files could not be loaded.
    #[error("cannot load the TLS identity {name} from {dir}")]
    Identity {
        /// Host name.
        name: String,
        /// Certificate directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// The revocation list cannot be used.
    #[error("cannot use the revocation list {path}")]
    Revoked {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// An --allow name that no certificate can carry.
    #[error("--allow '{0}' is not a DNS name or an IP address")]
    BadAllowName(String),
    /// Building the TLS configuration failed.
    #[error("TLS configuration")]
    Tls(#[from] TlsError),
}

/// Checks that `name` can appear in a certificate (DNS-name syntax, or an IP address).
pub fn validate_allow_name(name: &str) -> Result<(), SecurityError> {
    match rustls::pki_types::ServerName::try_from(name) {
        Ok(_) if !name.ends_with('.') => Ok(()),
        _ => Err(SecurityError::BadAllowName(name.to_string())),
    }
}

impl Security {
    /// The revocation list in force (TLS only).
    pub fn revoked(&self) -> Option<&std::path::Path> {
        match self {
            Security::Tls(t) => t.revoked.as_deref(),
            _ => None,
        }
    }

    /// Loads the certificates `cfg` names (or accepts `--insecure`; the caller warns about it).
    pub fn load(cfg: &SecurityConfig, need: Need) -> Result<Security, SecurityError> {
        for name in &cfg.allow {
            validate_allow_name(name)?;
        }
        if cfg.insecure {
            return Ok(Security::Insecure);
        }
        let (dir, name) = match (&cfg.certs, &cfg.name) {
            (Some(d), Some(n)) => (d, n),
            (None, None) if need == Need::LocalOk && cfg.allow.is_empty() => {
                return Ok(Security::LocalOnly)
            }
            (None, None) => return Err(SecurityError::NeedCertificates),
            _ => return Err(SecurityError::Incomplete),
        };
        let mut id =
            tls::Identity::from_dir(dir, name).map_err(|source| SecurityError::Identity {
                name: name.clone(),
                dir: dir.clone(),
                source,
            })?;
        if let Some(path) = &cfg.revoked {
            let list = tls::DenyList::open(path).map_err(|source| SecurityError::Revoked {
                path: path.clone(),
                source,
            })?;
            id = id.with_revoked(list);
        }
        let policy = tls::Policy {
            allowed: cfg.allow.clone(),
        };
        Ok(Security::Tls(Box::new(TlsSetup {
            client: tls::client_config(&id)?,
            server: tls::server_config_for(&id, &policy)?,
            policy,
            revoked: id.revoked().map(|l| l.path().to_path_buf()),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_names_must_be_certificate_names() {
        for ok in [
            "hosta",
            "hosta.dc1.example",
            "10.0.0.2",
            "::1",
            "xn--bcher-kva.example",
        ] {
            validate_allow_name(ok).unwrap();
        }
        for bad in [
            "",
            "host a",
            "hosta/",
            "*.example",
            "a..b",
            "trailing.",
            "-",
            "h\u{e9}te",
        ] {
            assert!(validate_allow_name(bad).is_err(), "{bad:?}");
        }
        let cfg = SecurityConfig {
            insecure: true,
            allow: vec!["no spaces please".into()],
            ..SecurityConfig::default()
        };
        let e = Security::load(&cfg, Need::Network).unwrap_err();
        assert!(e.to_string().contains("'no spaces please'"), "{e}");
    }
}
