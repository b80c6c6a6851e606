//! The CLI's cluster file: which hosts there are, where their APIs are, and the client certificate
//! to show them. `--host NAME` is resolved through it; without `--host` the CLI talks to this
//! host's daemon on its local socket.
//!
//! ```toml
//! # ~/.config/ferry/cluster.toml (or --cluster FILE, or $FERRY_CLUSTER)
//! certs_dir = "/etc/ferry/certs"  # ca.pem and the client certificate
//! client = "admin"                # the client certificate: admin.pem, admin.key
//! socket = "/run/ferry/api.sock"  # this host's daemon (the default shown)
//!
//! [hosts.node1]
//! api = "10.0.0.1:7070"
//! [hosts.node2]
//! api = "10.0.0.2:7070"
//! tls_name = "node2.dc1"          # name its certificate carries (default: the host's name)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client::Target;

/// Where this host's daemon listens by default.
pub const DEFAULT_SOCKET: &str = "/run/ferry/api.sock";

/// The cluster file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Directory with `ca.pem` and the client certificate.
    #[serde(default)]
    pub certs_dir: Option<PathBuf>,
    /// The client certificate's name.
    #[serde(default)]
    pub client: Option<String>,
    /// This host's daemon socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Hosts by name.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostEntry>,
    /// Where it was read from (for messages).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// One host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// Its API address, `host:port`.
    pub api: String,
    /// The name its certificate carries (default: the host's name).
    #[serde(default)]
    pub tls_name: Option<String>,
}

/// Why a host cannot be reached through the cluster file.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The file cannot be read.
    #[error("cannot read the cluster file {}", path.display())]
    Read {
        /// It.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not a valid cluster file.
    #[error("{} is not a valid cluster file", path.display())]
    Parse {
        /// It.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: toml::de::Error,
    },
    /// The host is not in it.
    #[error("host '{host}' is not in the cluster file{}; hosts there: {known}",
        path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_else(|| " (none was found: pass --cluster FILE or create ~/.config/ferry/cluster.toml)".into()))]
    UnknownHost {
        /// The name asked for.
        host: String,
        /// The file.
        path: Option<PathBuf>,
        /// The names it has.
        known: String,
    },
    /// No client certificate configured.
    #[error("the cluster file needs certs_dir and client (a certificate from `ferry certs issue`) to reach host '{0}' over the network")]
    NoClientCert(String),
    /// The client certificate cannot be loaded.
    #[error("cannot load the client certificate")]
    Identity(#[source] ferry_migrate::tls::TlsError),
}

impl ClusterConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut c: ClusterConfig = toml::from_str(&text).map_err(|source| ClusterError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// The file `--cluster` names, else `$FERRY_CLUSTER`, else `~/.config/ferry/cluster.toml` if
    /// it exists, else an empty configuration (this host's daemon only).
    pub fn discover(explicit: Option<&Path>) -> Result<Self, ClusterError> {
        if let Some(p) = explicit {
            return Self::load(p);
        }
        if let Some(p) = std::env::var_os("FERRY_CLUSTER") {
            return Self::load(Path::new(&p));
        }
        if let Some(home) = std::env::var_os("HOME") {
            let p = Path::new(&home).join(".config/ferry/cluster.toml");
            if p.exists() {
                return Self::load(&p);
            }
        }
        Ok(Self::default())
    }

    /// This host's daemon socket.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }

    /// Where `host` is: `None` is this host's daemon, `unix:PATH` a daemon socket, else a name
    /// from the file.
    pub fn target(&self, host: Option<&str>) -> Result<Target, ClusterError> {
        let Some(host) = host else {
            return Ok(Target::Unix(self.socket()));
        };
        if let Some(p) = host.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        let entry = self
            .hosts
            .get(host)
            .ok_or_else(|| ClusterError::UnknownHost {
                host: host.to_string(),
                path: self.path.clone(),
                known: if self.hosts.is_empty() {
                    "none".into()
                } else {
                    self.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })?;
        let (Some(dir), Some(client)) = (&self.certs_dir, &self.client) else {
            return Err(ClusterError::NoClientCert(host.to_string()));
        };
        let id =
            ferry_migrate::tls::Identity::from_dir(dir, client).map_err(ClusterError::Identity)?;
        let config = ferry_migrate::tls::client_config(&id).map_err(ClusterError::Identity)?;
        Ok(Target::Tls {
            addr: entry.api.clone(),
            server_name: entry.tls_name.clone().unwrap_or_else(|| host.to_string()),
            config,
        })
    }

    /// The API address of host `host`, if the file has it.
    pub fn api_of(&self, host: &str) -> Option<&str> {
        self.hosts.get(host).map(|h| h.api.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_resolve_to_targets() {
        let t = tempfile::tempdir().unwrap();
        let certs = t.path().join("certs");
        ferry_migrate::tls::certs::init_ca(&certs, 1).unwrap();
        ferry_migrate::tls::certs::issue(&certs, &["admin".into()], 1).unwrap();
        let file = t.path().join("cluster.toml");
        std::fs::write(
            &file,
            format!(
                "certs_dir = \"{}\"\nclient = \"admin\"\n[hosts.node1]\napi = \"10.0.0.1:7070\"\n\
                 [hosts.node2]\napi = \"10.0.0.2:7070\"\ntls_name = \"n2\"\n",
                certs.display()
            ),
        )
        .unwrap();
        let c = ClusterConfig::discover(Some(&file)).unwrap();
        assert!(
            matches!(c.target(None).unwrap(), Target::Unix(p) if p == Path::new(DEFAULT_SOCKET))
        );
        assert!(
            matches!(c.target(Some("unix:/x.sock")).unwrap(), Target::Unix(p) if p == Path::new("/x.sock"))
        );
        match c.target(Some("node2")).unwrap() {
            Target::Tls {
                addr, server_name, ..
            } => assert_eq!(
                (addr.as_str(), server_name.as_str()),
                ("10.0.0.2:7070", "n2")
            ),
            Target::Unix(_) => panic!("node2 is remote"),
        }
        let e = c.target(Some("node9")).unwrap_err().to_string();
        assert!(e.contains("node9") && e.contains("node1, node2"), "{e}");
        assert_eq!(c.api_of("node1"), Some("10.0.0.1:7070"));

        std::fs::write(&file, "[hosts.a]\napi = \"1.2.3.4:1\"\n").unwrap();
        let c = ClusterConfig::load(&file).unwrap();
        assert!(matches!(
            c.target(Some("a")),
            Err(ClusterError::NoClientCert(_))
        ));
        std::fs::write(&file, "[hosts.a]\naddr = \"1.2.3.4:1\"\n").unwrap();
        assert!(matches!(
            ClusterConfig::load(&file),
            Err(ClusterError::Parse { .. })
        ));
    }
}
