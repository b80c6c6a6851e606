//! The control client: one request, its events, its answer; never waits forever.
//!
//! A host sends a keepalive at least every second while it works on a request, so silence longer
//! than the client's deadline means the host is stuck or gone: the call ends with
//! [`ClientError::Deadline`]. A host that dies mid-request closes the socket: [`ClientError::Closed`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_migrate::Report;

use crate::guest_probe::Verification;
use crate::protocol::{
    self, ErrorReply, HostEvent, HostStatus, Message, MessageError, MigrateRequest, Reply, Request,
    MAX_REPLY_BYTES,
};

/// Silence after which a host counts as stuck (it sends a keepalive every second).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached (no host there, or no permission).
    #[error("cannot reach the VM host's control socket {}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {} failed", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host closed the connection before answering: it died, or was killed.
    #[error(
        "the VM host at {} closed the connection without an answer (did it exit or crash?)",
        socket.display()
    )]
    Closed {
        /// The socket.
        socket: PathBuf,
    },
    /// The host sent nothing for too long.
    #[error(
        "the VM host at {} sent nothing for {} s (it sends a keepalive every second): it is \
         stuck or stopped",
        socket.display(),
        silent.as_secs()
    )]
    Deadline {
        /// The socket.
        socket: PathBuf,
        /// How long it was silent.
        silent: Duration,
    },
    /// The whole call took longer than its total deadline.
    #[error("the VM host at {} did not finish within {} s", socket.display(), limit.as_secs())]
    TotalDeadline {
        /// The socket.
        socket: PathBuf,
        /// The limit.
        limit: Duration,
    },
    /// A line the client cannot read (another protocol version, or garbage).
    #[error("bad answer from the VM host at {}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: MessageError,
    },
    /// The host answered with an error.
    #[error(transparent)]
    Host(#[from] ErrorReply),
    /// The host answered with a reply that does not belong to the request.
    #[error("the VM host answered '{op}' with an unexpected {reply}")]
    Unexpected {
        /// The request.
        op: &'static str,
        /// What came back.
        reply: String,
    },
}

/// A client of one VM host's control socket.
#[derive(Clone, Debug)]
pub struct ControlClient {
    socket: PathBuf,
    deadline: Duration,
    total: Option<Duration>,
}

impl ControlClient {
    /// A client of the host at `socket`, with the default silence deadline and no total limit.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        ControlClient {
            socket: socket.into(),
            deadline: DEFAULT_DEADLINE,
            total: None,
        }
    }

    /// Changes how long the host may stay silent.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Limits each call's total time (for tools that must not wait on a slow migration).
    pub fn with_total_deadline(mut self, total: Duration) -> Self {
        self.total = Some(total);
        self
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `req`; calls `on_event` for each event; returns the final reply.
    pub fn call(
        &self,
        req: &Request,
        on_event: &mut dyn FnMut(&HostEvent),
    ) -> Result<Reply, ClientError> {
        let io = |source| ClientError::Io {
            socket: self.socket.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        s.set_write_timeout(Some(self.deadline)).map_err(io)?;
        s.write_all(protocol::encode_request(req).as_bytes())
            .map_err(io)?;
        let start = Instant::now();
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        loop {
            let wait = match self.total {
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(ClientError::TotalDeadline {
                            socket: self.socket.clone(),
                            limit: t,
                        });
                    }
                    left.min(self.deadline)
                }
                None => self.deadline,
            };
            reader.get_ref().set_read_timeout(Some(wait)).map_err(io)?;
            line.clear();
            let waited = Instant::now();
            let n = match Read::take(&mut reader, MAX_REPLY_BYTES as u64).read_line(&mut line) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.total.is_some_and(|t| start.elapsed() >= t) {
                        return Err(ClientError::TotalDeadline {
                            socket: self.socket.clone(),
                            limit: self.total.unwrap_or_default(),
                        });
                    }
                    return Err(ClientError::Deadline {
                        socket: self.socket.clone(),
                        silent: waited.elapsed(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(ClientError::Closed {
                        socket: self.socket.clone(),
                    })
                }
                Err(e) => return Err(io(e)),
            };
            if n >= MAX_REPLY_BYTES {
                return Err(io(std::io::Error::other(format!(
                    "a reply line longer than {MAX_REPLY_BYTES} bytes"
                ))));
            }
            if n == 0 || !line.ends_with('\n') {
                // EOF (a line cut short counts as EOF too: the host died while writing it).
                return Err(ClientError::Closed {
                    socket: self.socket.clone(),
                });
            }
            match protocol::decode_message(&line) {
                Ok(Message::Event(e)) => on_event(&e),
                Ok(Message::Ok(reply)) => return Ok(reply),
                Ok(Message::Error(e)) => return Err(ClientError::Host(e)),
                Err(source) => {
                    return Err(ClientError::Protocol {
                        socket: self.socket.clone(),
                        source,
                    })
                }
            }
        }
    }

    fn unexpected(op: &'static str, reply: Reply) -> ClientError {
        let name = serde_json::to_value(&reply)
            .ok()
            .and_then(|v| v["reply"].as_str().map(str::to_string))
            .unwrap_or_default();
        ClientError::Unexpected { op, reply: name }
    }

    /// The host's status.
    pub fn status(&self) -> Result<HostStatus, ClientError> {
        match self.call(&Request::Status, &mut |_| {})? {
            Reply::Status(s) => Ok(*s),
            other => Err(Self::unexpected("status", other)),
        }
    }

    /// Asks the guest to verify its pages.
    pub fn verify(&self) -> Result<Verification, ClientError> {
        match self.call(&Request::Verify, &mut |_| {})? {
            Reply::Verified(v) => Ok(v),
            other => Err(Self::unexpected("verify", other)),
        }
    }

    /// Resumes a VM kept paused after a migration in doubt (see [`crate::resolve`]).
    pub fn resume(&self, rollback: bool) -> Result<(), ClientError> {
        match self.call(&Request::Resume { rollback }, &mut |_| {})? {
            Reply::Resumed => Ok(()),
            other => Err(Self::unexpected("resume", other)),
        }
    }

    /// Stops the VM and its host process.
    pub fn stop(&self) -> Result<(), ClientError> {
        match self.call(&Request::Stop, &mut |_| {})? {
            Reply::Stopped => Ok(()),
            other => Err(Self::unexpected("stop", other)),
        }
    }

    /// Cancels the migration in progress.
    pub fn cancel(&self) -> Result<(), ClientError> {
        match self.call(&Request::Cancel, &mut |_| {})? {
            Reply::CancelRequested => Ok(()),
            other => Err(Self::unexpected("cancel", other)),
        }
    }

    /// Changes the bandwidth limit of the migration in progress; the limit now in force.
    pub fn set_bandwidth(&self, bytes_per_sec: u64) -> Result<u64, ClientError> {
        match self.call(&Request::SetBandwidth { bytes_per_sec }, &mut |_| {})? {
            Reply::Bandwidth { bytes_per_sec } => Ok(bytes_per_sec),
            other => Err(Self::unexpected("set-bandwidth", other)),
        }
    }

    /// Migrates the VM; `on_event` sees the progress. The report once the VM runs on the
    /// destination.
    pub fn migrate(
        &self,
        req: MigrateRequest,
        on_event: &mut dyn FnMut(&HostEvent),
    ) -> Result<Report, ClientError> {
        match self.call(&Request::Migrate(req), on_event)? {
            Reply::Migrated(r) => Ok(*r),
            other => Err(Self::unexpected("migrate", other)),
        }
    }
}
