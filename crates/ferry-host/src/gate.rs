//! The commit gate: an arriving VM runs only once the host's daemon has recorded it as its own.
//!
//! The engine resumes an arriving VM when the source says Go (or at the start of post-copy).
//! With a gate, the destination first asks its daemon over a Unix socket; the daemon moves the
//! VM's ownership record to this host with a compare-and-swap and answers `go`, or refuses (the
//! record changed: the source kept the VM, or it was declared lost). A refused VM is never
//! resumed: the migration fails before the guest ran here, so the source may resume its own
//! copy. The gate is asked once; later resumes (post-copy recovery) pass.
//!
//! Protocol: the host connects, writes `commit\n`, and reads one line: `go`, or
//! `refuse: REASON`. Anything else, a closed socket or no answer in time is a refusal.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_migrate::postcopy::PostcopyTarget;
use ferry_migrate::{GuestMemory, GuestObserved, MigrateError, MigrationSink, SinkFactory};
use ferry_wire::message::VmConfig;

/// How long the daemon may take to answer (one store transaction, retried on errors).
pub const GATE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where to ask before an arriving VM may run.
#[derive(Clone, Debug)]
pub struct CommitGate {
    /// The daemon's socket for this VM.
    pub path: PathBuf,
    /// How long to wait for its answer.
    pub timeout: Duration,
}

/// Why the gate did not open.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The daemon cannot be asked.
    #[error("cannot ask the daemon at {} whether the VM may run here", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon refused.
    #[error("the daemon refused to run the VM here: {0}")]
    Refused(String),
}

impl CommitGate {
    /// A gate at `path` with the default timeout.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CommitGate {
            path: path.into(),
            timeout: GATE_TIMEOUT,
        }
    }

    /// Asks; `Ok` means the VM is this host's and may run.
    pub fn ask(&self) -> Result<(), GateError> {
        let io = |source| GateError::Io {
            path: self.path.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.path).map_err(io)?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        s.write_all(b"commit\n").map_err(io)?;
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).map_err(io)?;
        parse_answer(&line)
    }
}

/// Reads the daemon's one-line answer.
pub fn parse_answer(line: &str) -> Result<(), GateError> {
    match line.trim_end() {
        "go" => Ok(()),
        l => Err(GateError::Refused(
            l.strip_prefix("refuse: ")
                .map(str::to_string)
                .unwrap_or_else(|| format!("unexpected answer {l:?}")),
        )),
    }
}

/// A sink factory whose sinks ask `gate` before they first resume.
pub struct GatedFactory<F> {
    /// The factory wrapped.
    pub inner: F,
    /// The gate (`None`: resume freely).
    pub gate: Option<CommitGate>,
}

/// A sink that asks its gate before it first resumes.
pub struct GatedSink<K> {
    /// The sink wrapped.
    pub inner: K,
    gate: Option<CommitGate>,
}

impl<K> GatedSink<K> {
    /// Unwraps the sink.
    pub fn into_inner(self) -> K {
        self.inner
    }
}

impl<F: SinkFactory> SinkFactory for GatedFactory<F> {
    type Sink = GatedSink<F::Sink>;

    fn create(&mut self, cfg: &VmConfig) -> Result<Self::Sink, MigrateError> {
        Ok(GatedSink {
            inner: self.inner.create(cfg)?,
            gate: self.gate.clone(),
        })
    }

    fn create_shared(
        &mut self,
        cfg: &VmConfig,
        memory: std::fs::File,
    ) -> Result<Self::Sink, MigrateError> {
        Ok(GatedSink {
            inner: self.inner.create_shared(cfg, memory)?,
            gate: self.gate.clone(),
        })
    }
}

impl<K: MigrationSink> MigrationSink for GatedSink<K> {
    fn memory(&self) -> Arc<dyn GuestMemory> {
        self.inner.memory()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), MigrateError> {
        self.inner.restore_state(state)
    }

    fn resume(&mut self) -> Result<(), MigrateError> {
        if let Some(g) = &self.gate {
            g.ask()
                .map_err(|e| MigrateError::Refused(crate::outcome::describe(&e)))?;
            self.gate = None;
        }
        self.inner.resume()
    }

    fn guest_observed(&self) -> Option<GuestObserved> {
        self.inner.guest_observed()
    }

    fn postcopy_target(&self) -> Result<Arc<dyn PostcopyTarget>, MigrateError> {
        self.inner.postcopy_target()
    }

    fn pause(&mut self) -> Result<(), MigrateError> {
        self.inner.pause()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn answers_are_read_strictly() {
        assert!(parse_answer("go\n").is_ok());
        assert!(
            matches!(parse_answer("refuse: owned by b\n"), Err(GateError::Refused(r)) if r == "owned by b")
        );
        assert!(matches!(parse_answer(""), Err(GateError::Refused(_))));
        assert!(matches!(parse_answer("gone\n"), Err(GateError::Refused(_))));
    }

    #[test]
    fn a_gate_that_is_not_there_or_silent_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("commit.sock");
        assert!(matches!(
            CommitGate::new(&path).ask(),
            Err(GateError::Io { .. })
        ));
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert_eq!(line, "commit\n");
            s.write_all(b"go\n").unwrap();
            // A second asker gets no answer at all.
            let (_s2, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(400));
        });
        CommitGate::new(&path).ask().unwrap();
        let silent = CommitGate {
            path: path.clone(),
            timeout: Duration::from_millis(100),
        };
        assert!(matches!(silent.ask(), Err(GateError::Io { .. })));
        t.join().unwrap();
    }
}
