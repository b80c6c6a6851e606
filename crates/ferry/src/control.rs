//! The control socket of a VM host process: JSON lines over a Unix socket.
//!
//! A client sends one request line; the host answers with zero or more `{"event": ...}` lines and
//! one final line, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};

/// A request to a VM host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// VM and guest status.
    Status,
    /// Migrate the VM away.
    Migrate(MigrateRequest),
    /// Ask the guest to verify all its pages.
    Verify,
    /// Stop the VM and the host process.
    Stop,
    /// Cancel the migration in progress (before its point of no return).
    Cancel,
    /// Change the bandwidth limit of the migration in progress (bytes/s, 0 = unlimited).
    SetBandwidth {
        /// New limit.
        bytes_per_sec: u64,
    },
}

/// Parameters of a migration request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// Destination address (host:port).
    pub to: String,
    /// Strategy name.
    pub strategy: String,
    /// Downtime target in ms.
    pub downtime_ms: u64,
    /// Parallel channels.
    pub channels: u16,
    /// Compression: off, lz4, zstd, zstd:N, adaptive.
    pub compression: String,
    /// Compare RAM digests.
    pub verify: bool,
    /// Live rounds at most.
    pub max_rounds: u32,
    /// Name the destination's certificate must carry (default: the host part of `to`).
    #[serde(default)]
    pub tls_name: Option<String>,
    /// Bandwidth limit in bytes/s over all channels (0 = unlimited).
    #[serde(default)]
    pub max_bandwidth: u64,
    /// Finish this VM's interrupted post-copy at `to` instead of starting a migration.
    #[serde(default)]
    pub recover: bool,
}

/// Sends a request and calls `on_event` for each event line; returns the final line.
pub fn call(
    socket: &Path,
    req: &Request,
    mut on_event: impl FnMut(&serde_json::Value),
) -> anyhow::Result<serde_json::Value> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("cannot reach the VM's control socket {}", socket.display()))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let reader = BufReader::new(s);
    for l in reader.lines() {
        let l = l.context("reading from the control socket")?;
        let v: serde_json::Value =
            serde_json::from_str(&l).context("bad reply on the control socket")?;
        if let Some(e) = v.get("event") {
            on_event(e);
            continue;
        }
        if v.get("ok").and_then(|o| o.as_bool()) == Some(true) {
            return Ok(v);
        }
        let msg = v
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("unknown error");
        return Err(anyhow!("{msg}"));
    }
    Err(anyhow!(
        "the VM host closed the control socket without an answer"
    ))
}
