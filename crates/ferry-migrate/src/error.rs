use ferry_wire::codec::CodecError;
use ferry_wire::WireError;

/// Why a migration failed, and on which side of the point of no return.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Connecting, reading or writing a channel failed.
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something that breaks the protocol.
    #[error("protocol error")]
    Wire(#[from] WireError),
    /// A page batch failed to decode (it was not applied).
    #[error("page batch rejected")]
    Codec(#[from] CodecError),
    /// The peer closed the connection.
    #[error("peer closed the connection during {0}")]
    PeerClosed(&'static str),
    /// The peer aborted the migration.
    #[error("peer aborted the migration: {0}")]
    PeerAborted(String),
    /// The peer refused the migration at handshake.
    #[error("destination refused the migration: {0}")]
    Refused(String),
    /// The peer sent a frame that makes no sense at this point.
    #[error("unexpected {got:?} frame during {during}")]
    Unexpected {
        /// What arrived.
        got: ferry_wire::FrameType,
        /// What we were doing.
        during: &'static str,
    },
    /// TLS set-up, handshake or authorisation failed.
    #[error("TLS")]
    Tls(#[from] crate::tls::TlsError),
    /// The VM itself failed (KVM, state).
    #[error("VM error")]
    Vm(#[from] ferry_vmm::VmmError),
    /// Saved state could not be (de)serialised.
    #[error("device state encoding: {0}")]
    State(String),
    /// The requested option combination is not possible.
    #[error("{0}")]
    Config(String),
    /// Migration was cancelled before the point of no return.
    #[error("migration cancelled; the VM runs on at the source")]
    Cancelled,
    /// The link failed during post-copy: the VM runs on the destination but waits for pages that
    /// only the source has. The source keeps them; nothing is lost.
    #[error("post-copy interrupted; the VM is on the destination, waiting for pages the source keeps: {0}")]
    PostcopyInterrupted(String),
    /// The link failed after the source told the destination to run: the VM is paused here and
    /// must not run in two places, so it stays paused until an operator resolves it.
    #[error("the link failed after switch-over was committed; the VM is kept paused on the source (it may be running on the destination): {0}")]
    OutcomeUnknown(String),
}

impl MigrateError {
    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MigrateError {
        let context = context.into();
        move |source| MigrateError::Io { context, source }
    }
}
