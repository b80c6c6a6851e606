//! The control protocol of a VM host: typed requests, events and replies as JSON lines.
//!
//! A client connects to the host's control socket and sends one request line,
//! `{"v":1,"op":"status"}`. The host answers with zero or more event lines, `{"v":1,"event":{...}}`
//! (migration progress, and a keepalive at least every second while a request is being worked on),
//! then one final line: `{"v":1,"ok":{"reply":"status",...}}` or
//! `{"v":1,"error":{"cause":"timeout","vm":"source","message":"..."}}`.
//!
//! Every line carries the protocol version `v`. A host answers a request of another version (or of
//! none: a ferry from before versioning) with an error that says so; a request without a version is
//! answered in that older client's own format (`{"ok":false,"error":"..."}`) so that it prints the
//! reason. A client refuses replies of another version the same way.

use std::fmt;

use ferry_migrate::{Event, Phase, Report, Strategy};
use ferry_wire::codec::Compression;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::guest_probe::{GuestStatus, Verification};
use crate::transport::Endpoint;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line a host reads (bytes, newline included); longer requests are refused.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// Longest reply or event line a client reads (bytes): a report with hundreds of rounds fits.
pub const MAX_REPLY_BYTES: usize = 16 << 20;

/// A request to a VM host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// VM, guest and migration status.
    Status,
    /// Migrate the VM away.
    Migrate(MigrateRequest),
    /// Ask the guest to verify all its pages (a ferry guest only).
    Verify,
    /// Stop the VM and the host process.
    Stop,
    /// Cancel the migration in progress (honoured until its point of no return).
    Cancel,
    /// Change the bandwidth limit of the migration in progress.
    SetBandwidth {
        /// New limit in bytes/s (0 = unlimited).
        bytes_per_sec: u64,
    },
    /// Resume a VM kept paused after a migration whose outcome was in doubt, once the destination
    /// is known to hold no copy (`ferry vm resolve` asks it first).
    Resume {
        /// Also when a post-copy was interrupted: the guest goes back to its state at the
        /// switch-over (the destination, gone or empty, had the newer one).
        rollback: bool,
    },
}

impl Request {
    /// The request's name on the wire (`op`).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Migrate(_) => "migrate",
            Request::Verify => "verify",
            Request::Stop => "stop",
            Request::Cancel => "cancel",
            Request::SetBandwidth { .. } => "set-bandwidth",
            Request::Resume { .. } => "resume",
        }
    }
}

/// Parameters of a migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    /// Where the VM goes: `host:port`, or `unix:PATH` on the same host.
    pub to: Endpoint,
    /// How to move it.
    pub strategy: Strategy,
    /// Pause the guest may see at switch-over, in ms.
    pub downtime_ms: u64,
    /// Parallel channels (0: chosen from the link).
    pub channels: u16,
    /// Page compression.
    #[serde(with = "compression_name")]
    pub compression: Compression,
    /// Compare RAM digests after the switch-over.
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

impl MigrateRequest {
    /// A migration to `to` with ferry's defaults (auto, 10 ms, adaptive compression, verified).
    pub fn new(to: Endpoint) -> Self {
        MigrateRequest {
            to,
            strategy: Strategy::Auto,
            downtime_ms: 10,
            channels: 0,
            compression: Compression::Adaptive,
            verify: true,
            max_rounds: 30,
            tls_name: None,
            max_bandwidth: 0,
            recover: false,
        }
    }
}

mod compression_name {
    use ferry_wire::codec::Compression;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(c)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One line from the host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Message {
    /// Progress while a request is worked on.
    Event(HostEvent),
    /// The request succeeded (last line).
    Ok(Reply),
    /// The request failed (last line).
    Error(ErrorReply),
}

/// Something the host reports while it works on a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostEvent {
    /// The migration engine's progress.
    Migration(Event),
    /// The host is alive and still working on the request (sent at least every second).
    Keepalive {
        /// Time since the request arrived, ms.
        elapsed_ms: u64,
    },
}

/// A successful answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// Answer to [`Request::Status`].
    Status(Box<HostStatus>),
    /// Answer to [`Request::Verify`].
    Verified(Verification),
    /// Answer to [`Request::Stop`]: the VM is paused and the host process ends.
    Stopped,
    /// Answer to [`Request::Migrate`]: the VM runs on the destination.
    Migrated(Box<Report>),
    /// Answer to [`Request::Cancel`].
    CancelRequested,
    /// Answer to [`Request::Resume`]: the VM runs here again.
    Resumed,
    /// Answer to [`Request::SetBandwidth`].
    Bandwidth {
        /// The limit now in force, bytes/s (0 = unlimited).
        bytes_per_sec: u64,
    },
}

/// Where a host is with its VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Waiting for a VM to arrive by migration.
    Waiting,
    /// A VM is arriving, or an interrupted post-copy waits for its source to reconnect.
    Receiving,
    /// The VM is here (running, or paused after an unclear migration: see [`VmStatus`]).
    Running,
    /// The VM is being migrated away.
    Migrating,
    /// The VM is gone: it stopped, its guest exited, or it migrated away.
    Ended,
}

/// Answer to [`Request::Status`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostStatus {
    /// Where the host is.
    pub state: Option<HostState>,
    /// The VM (when it is here and not migrating).
    pub vm: Option<VmStatus>,
    /// What the guest says about itself (a ferry guest's mailbox; `ferry_guest: false` otherwise).
    pub guest: Option<GuestStatus>,
    /// The last few KiB of the guest's console text.
    pub console_tail: Option<String>,
    /// The migration in progress.
    pub migration: Option<MigrationStatus>,
    /// Where migrations arrive (a receiving host).
    pub listen: Option<String>,
}

/// The VM on a host.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmStatus {
    /// Whether its vCPUs run.
    pub running: bool,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Heartbeat bytes the guest has written on COM1.
    pub heartbeats_seen: u64,
    /// Median time between heartbeats, ms.
    pub heartbeat_period_ms: Option<f64>,
    /// An earlier migration ended without a clear outcome: the VM is kept paused here.
    pub outcome_unknown: bool,
    /// A post-copy of this VM was interrupted: `ferry migrate --recover` finishes it.
    pub postcopy_interrupted: bool,
    /// What its guest RAM is made of (absent from hosts older than this field).
    #[serde(default)]
    pub ram_backing: Option<ferry_vmm::RamBacking>,
}

/// A migration in progress.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// Destination.
    pub to: String,
    /// Current phase.
    pub phase: Option<Phase>,
    /// Current round.
    pub round: u32,
    /// Pages of the round done.
    pub done: u64,
    /// Pages in the round.
    pub total: u64,
    /// Bytes sent so far.
    pub bytes: u64,
    /// Bandwidth limit in force, bytes/s (0 = unlimited).
    pub max_bandwidth: u64,
    /// Time since the migration started, ms.
    pub elapsed_ms: u64,
}

/// A failed request: what went wrong, and where the VM is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ErrorReply {
    /// What kind of failure.
    pub cause: Cause,
    /// Where the VM is now (for migrations; `None` when the request did not touch it).
    #[serde(default)]
    pub vm: Option<VmLocation>,
    /// What happened, for people.
    pub message: String,
}

impl ErrorReply {
    /// An error that did not touch the VM.
    pub fn new(cause: Cause, message: impl Into<String>) -> Self {
        ErrorReply {
            cause,
            vm: None,
            message: message.into(),
        }
    }

    /// The same error, saying where the VM is.
    pub fn with_vm(mut self, vm: VmLocation) -> Self {
        self.vm = Some(vm);
        self
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The request could not be read (not UTF-8, not JSON, too long, unknown op, bad fields).
    BadRequest,
    /// Client and host speak different protocol versions.
    Version,
    /// The host is busy with another request that excludes this one (a migration in progress).
    HostBusy,
    /// The request needs a migration in progress, and there is none.
    NotMigrating,
    /// The host has no VM (waiting for one, or it ended).
    NoVm,
    /// The guest cannot do this (not a ferry guest, or it did not answer).
    Guest,
    /// The request is not possible in the host's state or with its configuration.
    Refused,
    /// A peer did not answer in time.
    Timeout,
    /// The destination's `--allow` policy does not admit this host.
    NotAllowed,
    /// A certificate is not signed by the cluster CA the other side trusts.
    UnknownCa,
    /// A certificate has been revoked.
    Revoked,
    /// Another TLS failure (expired certificate, wrong name, protocol).
    Tls,
    /// The destination is busy with another VM or migration.
    DestinationBusy,
    /// The destination could not be reached.
    Unreachable,
    /// The peer closed the connection.
    PeerClosed,
    /// The peer aborted the migration.
    PeerAborted,
    /// The migration was cancelled.
    Cancelled,
    /// The peer broke the migration protocol.
    Protocol,
    /// The VM (KVM) failed.
    Vm,
    /// A bug in ferry (a panic), caught; the host keeps serving.
    Internal,
    /// Anything else (also: a cause this client does not know).
    #[serde(other)]
    Other,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = serde_json::to_value(self).ok();
        f.write_str(v.as_ref().and_then(Value::as_str).unwrap_or("other"))
    }
}

/// Where the VM is after a migration request (see [`crate::outcome::MigrateExit`] for the exit
/// codes `ferry migrate` gives each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmLocation {
    /// The migration failed before its point of no return: the VM runs on the source, unchanged.
    Source,
    /// The VM runs on the destination.
    Destination,
    /// Post-copy was interrupted: the guest is paused on the destination and its missing pages are
    /// on the source; `ferry migrate --recover` with the same `--to` finishes the migration.
    PausedRecoverable,
    /// The outcome is not known (the link failed after the switch-over was committed, or the host
    /// died or went silent): the source keeps its copy paused; check both hosts before acting.
    Unknown,
}

/// Why a request line was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST_BYTES`].
    #[error("request longer than {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// Not valid UTF-8.
    #[error("request is not UTF-8 text")]
    NotUtf8,
    /// Not a JSON object.
    #[error("request is not a JSON object")]
    NotJson(#[source] serde_json::Error),
    /// No `v` field: a client from before the protocol was versioned.
    #[error(
        "this VM host speaks control protocol version {PROTOCOL_VERSION}; the request carries no \
         version (a ferry older than the host): use a ferry of the same version"
    )]
    NoVersion,
    /// Another version.
    #[error(
        "this VM host speaks control protocol version {PROTOCOL_VERSION}; the request is version \
         {got}: use a ferry of the same version"
    )]
    Version {
        /// The version the client sent.
        got: Value,
    },
    /// Valid JSON of this version that is not a request (unknown op, missing or bad fields).
    #[error("bad request: {0}")]
    Invalid(#[source] serde_json::Error),
}

impl RequestError {
    /// The error to answer it with.
    pub fn reply(&self) -> ErrorReply {
        let cause = match self {
            RequestError::NoVersion | RequestError::Version { .. } => Cause::Version,
            _ => Cause::BadRequest,
        };
        let message = match self {
            RequestError::NotJson(e) => format!("{self}: {e}"),
            _ => self.to_string(),
        };
        ErrorReply::new(cause, message)
    }
}

/// Encodes a request as one line (newline included).
pub fn encode_request(req: &Request) -> String {
    line_with_version(serde_json::to_value(req).unwrap_or(Value::Null))
}

/// Decodes one request line (with or without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > MAX_REQUEST_BYTES {
        return Err(RequestError::TooLong {
            limit: MAX_REQUEST_BYTES,
        });
    }
    let text = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
    let mut v: Value = serde_json::from_str(text.trim_end()).map_err(RequestError::NotJson)?;
    let Some(obj) = v.as_object_mut() else {
        return Err(RequestError::NotJson(serde::de::Error::custom(
            "expected an object",
        )));
    };
    match obj.remove("v") {
        None => return Err(RequestError::NoVersion),
        Some(got) if got.as_u64() != Some(u64::from(PROTOCOL_VERSION)) => {
            return Err(RequestError::Version { got })
        }
        Some(_) => {}
    }
    Request::deserialize(v).map_err(RequestError::Invalid)
}

/// Encodes a host line (newline included).
pub fn encode_message(m: &Message) -> String {
    line_with_version(serde_json::to_value(m).unwrap_or(Value::Null))
}

/// The error line a client from before versioning understands (`{"ok":false,"error":"..."}`).
pub fn legacy_error_line(message: &str) -> String {
    let mut s = serde_json::json!({"ok": false, "error": message}).to_string();
    s.push('\n');
    s
}

/// Why a host line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not JSON, or not a message of this version.
    #[error("unreadable reply from the VM host")]
    Json(#[source] serde_json::Error),
    /// A line without a version: a ferry host from before versioning.
    #[error(
        "the VM host speaks an older, unversioned control protocol (this ferry speaks version \
         {PROTOCOL_VERSION}): use a ferry of the same version on both"
    )]
    NoVersion,
    /// Another version.
    #[error(
        "the VM host speaks control protocol version {got} (this ferry speaks version \
         {PROTOCOL_VERSION}): use a ferry of the same version on both"
    )]
    Version {
        /// The host's version.
        got: Value,
    },
}

/// Decodes one host line.
pub fn decode_message(line: &str) -> Result<Message, MessageError> {
    let mut v: Value = serde_json::from_str(line.trim_end()).map_err(MessageError::Json)?;
    let version = v.as_object_mut().and_then(|o| o.remove("v"));
    match version {
        None => Err(MessageError::NoVersion),
        Some(got) if got.as_u64() != Some(u64::from(PROTOCOL_VERSION)) => {
            Err(MessageError::Version { got })
        }
        Some(_) => Message::deserialize(v).map_err(MessageError::Json),
    }
}

fn line_with_version(mut v: Value) -> String {
    if let Some(obj) = v.as_object_mut() {
        obj.insert("v".into(), Value::from(PROTOCOL_VERSION));
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migrate() -> Request {
        let mut m = MigrateRequest::new("10.0.0.2:7000".parse().unwrap());
        m.compression = Compression::Zstd { level: 5 };
        m.strategy = Strategy::Postcopy;
        Request::Migrate(m)
    }

    #[test]
    fn requests_round_trip_with_their_version() {
        for req in [
            Request::Status,
            migrate(),
            Request::Verify,
            Request::Stop,
            Request::Cancel,
            Request::SetBandwidth {
                bytes_per_sec: 1 << 20,
            },
        ] {
            let line = encode_request(&req);
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert!(
                line.contains(&format!("\"v\":{PROTOCOL_VERSION}")),
                "{line}"
            );
            assert!(line.contains(&format!("\"op\":\"{}\"", req.op())), "{line}");
            assert_eq!(decode_request(line.as_bytes()).unwrap(), req);
        }
        let line = encode_request(&migrate());
        assert!(line.contains("\"compression\":\"zstd:5\""), "{line}");
        assert!(line.contains("\"to\":\"10.0.0.2:7000\""), "{line}");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases: [(&[u8], &str); 7] = [
            (b"\xff\xfe{}\n", "not UTF-8"),
            (b"hello\n", "not a JSON object"),
            (b"[1,2]\n", "not a JSON object"),
            (b"{\"op\":\"status\"}\n", "carries no version"),
            (b"{\"v\":2,\"op\":\"status\"}\n", "request is version 2"),
            (
                b"{\"v\":1,\"op\":\"teleport\"}\n",
                "unknown variant `teleport`",
            ),
            (b"{\"v\":1,\"op\":\"set-bandwidth\"}\n", "missing field"),
        ];
        for (line, want) in cases {
            let e = decode_request(line).unwrap_err();
            let msg = e.reply().message;
            assert!(msg.contains(want), "{line:?}: {msg}");
        }
        let long = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert!(matches!(
            decode_request(&long),
            Err(RequestError::TooLong { .. })
        ));
        assert_eq!(
            decode_request(b"{\"op\":\"status\"}")
                .unwrap_err()
                .reply()
                .cause,
            Cause::Version
        );
    }

    #[test]
    fn host_lines_round_trip_and_other_versions_are_refused() {
        let msgs = [
            Message::Event(HostEvent::Keepalive { elapsed_ms: 1000 }),
            Message::Event(HostEvent::Migration(Event::Phase {
                phase: Phase::LiveCopy,
            })),
            Message::Ok(Reply::Bandwidth { bytes_per_sec: 7 }),
            Message::Ok(Reply::Migrated(Box::default())),
            Message::Error(
                ErrorReply::new(Cause::Timeout, "no answer").with_vm(VmLocation::Source),
            ),
        ];
        for m in msgs {
            let line = encode_message(&m);
            let back = decode_message(&line).unwrap();
            assert_eq!(
                serde_json::to_value(&back).unwrap(),
                serde_json::to_value(&m).unwrap()
            );
        }
        let e = decode_message("{\"ok\":true}").unwrap_err();
        assert!(matches!(e, MessageError::NoVersion), "{e}");
        let e = decode_message("{\"v\":9,\"ok\":{\"reply\":\"stopped\"}}").unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        // A cause from a newer host reads as Other rather than failing the whole reply.
        let m = decode_message(
            "{\"v\":1,\"error\":{\"cause\":\"solar-flare\",\"message\":\"m\",\"vm\":\"source\"}}",
        )
        .unwrap();
        assert!(
            matches!(
                m,
                Message::Error(ErrorReply {
                    cause: Cause::Other,
                    vm: Some(VmLocation::Source),
                    ..
                })
            ),
            "{m:?}"
        );
    }

    #[test]
    fn an_old_client_gets_its_own_error_format() {
        let line = legacy_error_line("versions differ");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "versions differ");
    }
}
