//! The daemon's configuration file (TOML).
//!
//! ```toml
//! name = "node1"                      # this host's name: its certificate is CERTS/node1.pem
//! certs_dir = "/etc/ferry/certs"      # ca.pem, node1.pem, node1.key (from `ferry certs`)
//! data_dir = "/var/lib/ferry"         # persistent state (the embedded store's file)
//! run_dir = "/run/ferry"              # VM directories, control sockets, the local API socket
//!
//! [api]
//! listen = ["0.0.0.0:7070"]           # HTTPS with client certificates (mTLS); may be empty
//! advertise = "10.0.0.1:7070"         # what other hosts dial (default: the first listen address)
//! unix_socket = "/run/ferry/api.sock" # for this host's own CLI (default: RUN_DIR/api.sock)
//!
//! [migration]
//! listen_host = "0.0.0.0"             # incoming migrations bind here (a free port each)
//! advertise_host = "10.0.0.1"         # what sources dial (default: the API's advertised host)
//! max_incoming = 2                    # migrations received at once
//! max_outgoing = 2                    # migrations sent at once
//! allow = []                          # hosts that may send VMs here (default: any the CA signed)
//!
//! [capacity]
//! max_vms = 32
//! memory = "16G"                      # guest RAM this host offers (default: 90% of MemTotal)
//! vcpus = 16                          # vCPUs it offers (default: 4 per CPU)
//!
//! [store]
//! backend = "embedded"                # or "etcd" with endpoints = ["http://10.0.0.9:2379"]
//! path = "/var/lib/ferry/state.redb"
//!
//! [cluster]                           # used with [store]
//! lease_secs = 5                      # membership lease: a host silent this long is dead
//! planner = true                      # campaign for leadership and plan when leader
//! plan_every_secs = 10                # the leader's planning period
//! max_per_host = 2                    # migrations at once per host (in plus out)
//! max_per_link = 2                    # migrations at once per pair of hosts
//! bandwidth = "1G"                    # bytes/s shared by the migrations of one host (0: none)
//!
//! [log]
//! format = "json"                     # or "text"
//! level = "info"                      # a tracing filter: "info,ferry_daemon=debug"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("{path} is not a valid ferry daemon configuration")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of its range or values contradict each other.
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// This host's name (its certificate's name; how the cluster calls it).
    pub name: String,
    /// Directory with `ca.pem`, `NAME.pem`, `NAME.key`. Without it the daemon serves only its
    /// Unix socket and can neither send nor receive migrations over the network.
    #[serde(default)]
    pub certs_dir: Option<PathBuf>,
    /// Persistent state.
    pub data_dir: PathBuf,
    /// VM directories (control sockets, logs) and the local API socket. VMs found here at start
    /// are adopted.
    pub run_dir: PathBuf,
    /// The `ferry` binary started for each VM (default: the running executable).
    #[serde(default)]
    pub ferry_bin: Option<PathBuf>,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Migrations in and out.
    #[serde(default)]
    pub migration: MigrationConfig,
    /// What this host offers to VMs.
    #[serde(default)]
    pub capacity: CapacityConfig,
    /// Cluster state (host and VM records).
    #[serde(default)]
    pub store: Option<StoreSection>,
    /// Membership, leadership and the planner (with `[store]`).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[api]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// TCP addresses served with mTLS.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// The address other hosts and remote clients dial (`host:port`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The local socket for this host's CLI (mode 0600).
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
}

/// `[migration]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Address incoming migrations listen on (a free port is picked per migration).
    #[serde(default = "default_listen_host")]
    pub listen_host: String,
    /// Host part sources dial (default: the host part of `api.advertise`, else `listen_host`).
    #[serde(default)]
    pub advertise_host: Option<String>,
    /// Incoming migrations at once.
    #[serde(default = "default_concurrency")]
    pub max_incoming: u32,
    /// Outgoing migrations at once.
    #[serde(default = "default_concurrency")]
    pub max_outgoing: u32,
    /// Names a source's certificate must carry to send a VM here (empty: any the CA signed).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Seconds an incoming migration may wait for its source to connect before it is dropped.
    #[serde(default = "default_incoming_timeout")]
    pub incoming_timeout_secs: u64,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            listen_host: default_listen_host(),
            advertise_host: None,
            max_incoming: default_concurrency(),
            max_outgoing: default_concurrency(),
            allow: Vec::new(),
            incoming_timeout_secs: default_incoming_timeout(),
        }
    }
}

fn default_listen_host() -> String {
    "0.0.0.0".into()
}

fn default_concurrency() -> u32 {
    2
}

fn default_incoming_timeout() -> u64 {
    60
}

/// `[capacity]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityConfig {
    /// VMs at most.
    #[serde(default)]
    pub max_vms: Option<u32>,
    /// Guest RAM offered, bytes (`"16G"`, `"512M"` or a number).
    #[serde(default, deserialize_with = "size::opt")]
    pub memory: Option<u64>,
    /// vCPUs offered.
    #[serde(default)]
    pub vcpus: Option<u32>,
}

/// `[cluster]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Membership lease time to live, seconds.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// Whether this host campaigns for leadership and plans when leader.
    #[serde(default = "default_true")]
    pub planner: bool,
    /// The leader's planning period, seconds.
    #[serde(default = "default_plan_every")]
    pub plan_every_secs: u64,
    /// Migrations at once per host (in and out together).
    #[serde(default = "default_concurrency")]
    pub max_per_host: u32,
    /// Migrations at once between one pair of hosts.
    #[serde(default = "default_concurrency")]
    pub max_per_link: u32,
    /// Bytes per second shared by one host's migrations (0: unlimited).
    #[serde(default, deserialize_with = "size::opt")]
    pub bandwidth: Option<u64>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            lease_secs: default_lease_secs(),
            planner: true,
            plan_every_secs: default_plan_every(),
            max_per_host: default_concurrency(),
            max_per_link: default_concurrency(),
            bandwidth: None,
        }
    }
}

fn default_lease_secs() -> u64 {
    5
}
fn default_true() -> bool {
    true
}
fn default_plan_every() -> u64 {
    10
}

/// `[store]`: the backend of cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StoreSection {
    /// One redb file (one host, and tests).
    Embedded {
        /// The file (default: DATA_DIR/state.redb).
        #[serde(default)]
        path: Option<PathBuf>,
    },
    /// An etcd cluster.
    Etcd {
        /// Client URLs.
        endpoints: Vec<String>,
    },
}

/// `[log]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Line format.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`FERRY_LOG` overrides it).
    #[serde(default)]
    pub level: Option<String>,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The limits the daemon enforces, with defaults filled in from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// VMs at most.
    pub max_vms: u32,
    /// Guest RAM offered, bytes.
    pub memory: u64,
    /// vCPUs offered.
    pub vcpus: u32,
}

impl DaemonConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseError::Toml(source) => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            ParseError::Invalid(m) => ConfigError::Invalid(format!("{}: {m}", path.display())),
        })
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let c: DaemonConfig = toml::from_str(text).map_err(ParseError::Toml)?;
        c.check().map_err(ParseError::Invalid)?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        if !valid_name(&self.name) {
            return Err(format!(
                "name '{}' must be 1-63 characters of a-z, 0-9, '-' and '.', starting with a letter or digit",
                self.name
            ));
        }
        if !self.api.listen.is_empty() && self.certs_dir.is_none() {
            return Err(
                "api.listen needs certs_dir: the network API is served only with mutual TLS \
                 (create certificates with `ferry certs init` and `ferry certs issue NAME`)"
                    .into(),
            );
        }
        if self.migration.max_incoming == 0 || self.migration.max_outgoing == 0 {
            return Err("migration.max_incoming and max_outgoing must be at least 1".into());
        }
        if self.cluster.lease_secs == 0 || self.cluster.plan_every_secs == 0 {
            return Err("cluster.lease_secs and plan_every_secs must be at least 1".into());
        }
        if self.cluster.max_per_host == 0 || self.cluster.max_per_link == 0 {
            return Err("cluster.max_per_host and max_per_link must be at least 1".into());
        }
        if let Some(StoreSection::Etcd { endpoints }) = &self.store {
            if endpoints.is_empty() {
                return Err("store.endpoints must name at least one etcd client URL".into());
            }
        }
        Ok(())
    }

    /// The local API socket.
    pub fn unix_socket(&self) -> PathBuf {
        self.api
            .unix_socket
            .clone()
            .unwrap_or_else(|| self.run_dir.join("api.sock"))
    }

    /// The address other hosts dial for the API, if it has one.
    pub fn api_advertise(&self) -> Option<String> {
        self.api
            .advertise
            .clone()
            .or_else(|| self.api.listen.first().map(|a| a.to_string()))
    }

    /// The host part sources dial for migrations.
    pub fn migration_advertise_host(&self) -> String {
        if let Some(h) = &self.migration.advertise_host {
            return h.clone();
        }
        if let Some(a) = &self.api.advertise {
            if let Some((h, _)) = a.rsplit_once(':') {
                return h.trim_start_matches('[').trim_end_matches(']').to_string();
            }
        }
        self.migration.listen_host.clone()
    }

    /// The capacity limits, defaults taken from the host's CPUs and RAM.
    pub fn capacity(&self, host_cpus: u32, host_memory: u64) -> Capacity {
        Capacity {
            max_vms: self.capacity.max_vms.unwrap_or(64),
            memory: self.capacity.memory.unwrap_or(host_memory / 10 * 9),
            vcpus: self.capacity.vcpus.unwrap_or(host_cpus.max(1) * 4),
        }
    }
}

/// Why configuration text is refused (without the file's name).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not TOML, or keys unknown or mistyped.
    #[error("bad configuration")]
    Toml(#[source] toml::de::Error),
    /// Values out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Whether `name` can name a host or a VM: a DNS label with dots allowed.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
}

/// Sizes written as numbers of bytes or with a K, M, G or T suffix (powers of 1024).
pub mod size {
    use super::*;

    /// Parses `"16G"`, `"512M"`, `"4096"`.
    pub fn parse(s: &str) -> Result<u64, String> {
        let s = s.trim();
        let (num, mul) = match s.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let mul: u64 = match c.to_ascii_uppercase() {
                    'K' => 1 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    _ => return Err(format!("'{s}': unknown size suffix (K, M, G or T)")),
                };
                (&s[..i], mul)
            }
            _ => (s, 1),
        };
        let n: u64 = num
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a size (like 512M or 16G)"))?;
        n.checked_mul(mul)
            .ok_or_else(|| format!("'{s}' is too large"))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    /// serde: an optional size.
    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Number(n)) => Ok(Some(n)),
            Some(Raw::Text(t)) => parse(&t).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "node1"
certs_dir = "/etc/ferry/certs"
data_dir = "/var/lib/ferry"
run_dir = "/run/ferry"

[api]
listen = ["0.0.0.0:7070"]
advertise = "10.0.0.1:7070"

[migration]
max_incoming = 3
allow = ["node2"]

[capacity]
max_vms = 8
memory = "16G"
vcpus = 12

[store]
backend = "etcd"
endpoints = ["http://10.0.0.9:2379"]

[log]
format = "json"
level = "debug"
"#;

    #[test]
    fn full_file_parses() {
        let c = DaemonConfig::parse(FULL).unwrap();
        assert_eq!(c.name, "node1");
        assert_eq!(c.api.listen[0].port(), 7070);
        assert_eq!(c.migration.max_incoming, 3);
        assert_eq!(c.migration.max_outgoing, 2);
        assert_eq!(c.capacity.memory, Some(16 << 30));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.migration_advertise_host(), "10.0.0.1");
        assert_eq!(c.unix_socket(), PathBuf::from("/run/ferry/api.sock"));
        assert_eq!(
            c.store,
            Some(StoreSection::Etcd {
                endpoints: vec!["http://10.0.0.9:2379".into()]
            })
        );
        let cap = c.capacity(4, 8 << 30);
        assert_eq!((cap.max_vms, cap.memory, cap.vcpus), (8, 16 << 30, 12));
    }

    #[test]
    fn defaults_come_from_the_host() {
        let c = DaemonConfig::parse("name = \"a\"\ndata_dir = \"/d\"\nrun_dir = \"/r\"\n").unwrap();
        let cap = c.capacity(2, 10 << 30);
        assert_eq!(cap.vcpus, 8);
        assert_eq!(cap.memory, 9 << 30);
        assert!(c.api_advertise().is_none());
    }

    #[test]
    fn typos_and_contradictions_are_refused() {
        let e =
            DaemonConfig::parse("name = \"a\"\ndata_dir = \"/d\"\nrun_dir = \"/r\"\nlisten = 3\n")
                .unwrap_err();
        assert!(e.to_string().contains("bad configuration"), "{e}");
        let e = DaemonConfig::parse(
            "name = \"a\"\ndata_dir = \"/d\"\nrun_dir = \"/r\"\n[api]\nlisten = [\"0.0.0.0:1\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("mutual TLS"), "{e}");
        let e = DaemonConfig::parse("name = \"Bad_Name\"\ndata_dir = \"/d\"\nrun_dir = \"/r\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("Bad_Name"), "{e}");
        let e = DaemonConfig::parse(
            "name = \"a\"\ndata_dir = \"/d\"\nrun_dir = \"/r\"\n[capacity]\nmemory = \"12Q\"\n",
        )
        .unwrap_err();
        assert!(matches!(e, ParseError::Toml(_)), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(size::parse("512M"), Ok(512 << 20));
        assert_eq!(size::parse("4096"), Ok(4096));
        assert_eq!(size::parse("2g"), Ok(2 << 30));
        assert!(size::parse("x").is_err());
        assert!(size::parse("99999999999T").is_err());
    }

    #[test]
    fn names() {
        assert!(valid_name("node-1.dc2"));
        assert!(!valid_name(""));
        assert!(!valid_name("-a"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
