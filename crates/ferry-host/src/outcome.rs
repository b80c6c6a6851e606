//! What a failed migration means for the VM, and the exit code that says it.
//!
//! [`classify`] is the one place where the engine's errors become a cause and a VM location;
//! [`MigrateExit`] is the one place where a location becomes an exit code.

use std::error::Error;
use std::io::ErrorKind;

use ferry_migrate::tls::TlsError;
use ferry_migrate::MigrateError;
use rustls::{AlertDescription, CertificateError};

use crate::protocol::{Cause, ErrorReply, VmLocation};

/// Exit codes of `ferry migrate` (and `ferry demo`): where the VM is when the command ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MigrateExit {
    /// 0: the VM runs on the destination.
    Migrated = 0,
    /// 1: an error before the host was asked to do anything (bad flags, no such control socket).
    Error = 1,
    /// 3: the VM runs on the destination, but an integrity check failed (RAM digests differ, or the
    /// guest's own check found bad pages).
    IntegrityFailed = 3,
    /// 4: the migration failed before its point of no return: the VM runs on the source, unchanged.
    OnSource = 4,
    /// 5: post-copy was interrupted: the guest is paused on the destination, its missing pages are
    /// kept on the source; `ferry migrate --recover` with the same `--to` finishes it.
    Recoverable = 5,
    /// 6: the outcome is unknown (the source host died or went silent, or the link failed after the
    /// switch-over was committed): check both hosts with `ferry vm status` before acting.
    Unknown = 6,
}

impl MigrateExit {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The exit code for a VM left at `vm` by a failed request.
    pub fn for_location(vm: Option<VmLocation>) -> MigrateExit {
        match vm {
            None => MigrateExit::Error,
            Some(VmLocation::Source) => MigrateExit::OnSource,
            Some(VmLocation::Destination) => MigrateExit::Migrated,
            Some(VmLocation::PausedRecoverable) => MigrateExit::Recoverable,
            Some(VmLocation::Unknown) => MigrateExit::Unknown,
        }
    }

    /// The table for `--help`.
    pub const HELP: &'static str = "Exit codes (where the VM is):
  0  migrated: the VM runs on the destination
  1  error before anything was attempted (bad flags, no VM host at --vm)
  2  usage error (unknown flag)
  3  migrated, but an integrity check failed (RAM digests differ)
  4  failed: the VM still runs on the source, nothing changed
  5  interrupted post-copy: the VM is paused; `ferry migrate --recover` with the same --to finishes it
  6  outcome unknown (source host died or went silent, or the link failed after commit): settle it with
     `ferry vm resolve --control SRC --peer DST`, which asks the destination and resumes on at most one";
}

/// What the VM location means, in words, for error output.
pub fn location_text(vm: VmLocation) -> &'static str {
    match vm {
        VmLocation::Source => "the VM still runs on the source; nothing changed",
        VmLocation::Destination => "the VM runs on the destination",
        VmLocation::PausedRecoverable => {
            "the VM is paused on the destination and its missing pages are kept on the source: \
             `ferry migrate --recover` with the same --to finishes the migration"
        }
        VmLocation::Unknown => {
            "the outcome is unknown: the source keeps its copy paused; `ferry vm resolve \
             --control SRC --peer DST` asks the destination and resumes the VM on at most one host"
        }
    }
}

/// Where a failed migration left the VM, according to the engine's error.
pub fn location(e: &MigrateError) -> VmLocation {
    match e {
        MigrateError::PostcopyInterrupted(_) => VmLocation::PausedRecoverable,
        MigrateError::OutcomeUnknown(_) => VmLocation::Unknown,
        _ => VmLocation::Source,
    }
}

/// The engine's error as a cause, a VM location and a message that names the cause.
pub fn classify(e: &MigrateError) -> ErrorReply {
    let vm = location(e);
    let (cause, headline) = cause_of(e);
    let detail = describe(e);
    let message = match headline {
        Some(h) => format!("{h} ({detail})"),
        None => detail,
    };
    ErrorReply {
        cause,
        vm: Some(vm),
        message,
    }
}

fn cause_of(e: &MigrateError) -> (Cause, Option<String>) {
    match e {
        MigrateError::Cancelled => return (Cause::Cancelled, None),
        MigrateError::PeerAborted(_) => return (Cause::PeerAborted, None),
        MigrateError::Refused(why) if why.contains("busy") => {
            return (
                Cause::DestinationBusy,
                Some("the destination is busy (it already hosts a VM or receives one)".into()),
            )
        }
        MigrateError::Refused(_) => return (Cause::Refused, None),
        MigrateError::Config(_) => return (Cause::Refused, None),
        MigrateError::Vm(_) => return (Cause::Vm, None),
        MigrateError::Wire(_) | MigrateError::Codec(_) | MigrateError::Unexpected { .. } => {
            return (Cause::Protocol, None)
        }
        _ => {}
    }
    // Look through the causes (io errors wrapping TLS errors wrapping rustls's) for the first
    // that names a reason.
    let mut found = None;
    walk(e, &mut |err| {
        if found.is_none() {
            found = reason(err);
        }
    });
    if let Some(f) = found {
        return f;
    }
    match e {
        MigrateError::PeerClosed(_) | MigrateError::PostcopyInterrupted(_) => {
            (Cause::PeerClosed, None)
        }
        MigrateError::Tls(_) => (Cause::Tls, None),
        _ => (Cause::Other, None),
    }
}

/// A cause named by one error in the chain.
fn reason(err: &(dyn Error + 'static)) -> Option<(Cause, Option<String>)> {
    if let Some(TlsError::NotAllowed { .. }) = err.downcast_ref::<TlsError>() {
        return Some((Cause::NotAllowed, None));
    }
    if let Some(r) = err.downcast_ref::<rustls::Error>() {
        return Some(rustls_reason(r));
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if io.get_ref().is_none() {
            return match io.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Some((
                    Cause::Timeout,
                    Some("timed out: the peer did not answer in time".into()),
                )),
                ErrorKind::ConnectionRefused => Some((
                    Cause::Unreachable,
                    Some("nothing accepts migrations at that address".into()),
                )),
                ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
                    Some((Cause::Unreachable, None))
                }
                _ => None,
            };
        }
    }
    None
}

fn rustls_reason(r: &rustls::Error) -> (Cause, Option<String>) {
    use rustls::Error as E;
    let (cause, text) = match r {
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            (
                Cause::UnknownCa,
                "the destination's certificate is not signed by this host's cluster CA",
            )
        }
        E::InvalidCertificate(CertificateError::Revoked) => (
            Cause::Revoked,
            "the peer's certificate is on this host's revocation list",
        ),
        E::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => (
            Cause::NotAllowed,
            "the peer's certificate is not allowed by this host's policy",
        ),
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => (
            Cause::Tls,
            "the destination's certificate does not carry the name dialled (see --tls-name)",
        ),
        E::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => (
            Cause::Tls,
            "the destination's certificate is expired or not yet valid",
        ),
        E::AlertReceived(AlertDescription::AccessDenied) => (
            Cause::NotAllowed,
            "refused by the destination's --allow policy: this host's certificate name is not \
             among the names it accepts",
        ),
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::DecryptError
            | AlertDescription::BadCertificate,
        ) => (
            Cause::UnknownCa,
            "the destination does not trust this host's certificate (unknown CA: it was issued by \
             another cluster CA)",
        ),
        E::AlertReceived(AlertDescription::CertificateRevoked) => (
            Cause::Revoked,
            "the destination has revoked this host's certificate",
        ),
        E::AlertReceived(AlertDescription::CertificateExpired) => (
            Cause::Tls,
            "the destination says this host's certificate has expired",
        ),
        _ => (Cause::Tls, "TLS failed"),
    };
    (cause, Some(text.into()))
}

/// Calls `f` on `e` and each of its causes, looking inside io errors that wrap another error
/// (whose `source()` skips the wrapped error itself).
pub fn walk(e: &(dyn Error + 'static), f: &mut dyn FnMut(&(dyn Error + 'static))) {
    f(e);
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        let inner: &(dyn Error + 'static) = inner;
        walk(inner, f);
        return;
    }
    if let Some(s) = e.source() {
        walk(s, f);
    }
}

/// An error and its causes on one line, each once; an OS timeout reads "timed out" rather than
/// "Resource temporarily unavailable (os error 11)".
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    walk(e, &mut |err| {
        let text = match err.downcast_ref::<std::io::Error>() {
            // A wrapper: its text is the wrapped error's, which comes next.
            Some(io) if io.get_ref().is_some() => return,
            Some(io) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                "timed out".to_string()
            }
            _ => err.to_string(),
        };
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
    });
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_io(e: rustls::Error) -> MigrateError {
        MigrateError::Io {
            context: "reading during handshake".into(),
            source: std::io::Error::other(e),
        }
    }

    #[test]
    fn every_location_has_its_own_exit_code() {
        let codes = [
            MigrateExit::Migrated,
            MigrateExit::Error,
            MigrateExit::IntegrityFailed,
            MigrateExit::OnSource,
            MigrateExit::Recoverable,
            MigrateExit::Unknown,
        ]
        .map(MigrateExit::code);
        let mut sorted = codes.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        assert!(!codes.contains(&2), "2 is clap's usage error");
        for c in codes {
            assert!(
                MigrateExit::HELP.contains(&format!("  {c}  ")),
                "{c} not in the help"
            );
        }
        assert_eq!(
            MigrateExit::for_location(Some(VmLocation::PausedRecoverable)),
            MigrateExit::Recoverable
        );
    }

    #[test]
    fn causes_are_named() {
        let timeout = MigrateError::Tls(TlsError::Handshake {
            peer: "10.0.0.2:7000".into(),
            source: std::io::Error::from(ErrorKind::WouldBlock),
        });
        let r = classify(&timeout);
        assert_eq!(r.cause, Cause::Timeout);
        assert_eq!(r.vm, Some(VmLocation::Source));
        assert!(r.message.contains("timed out"), "{}", r.message);
        assert!(!r.message.contains("os error 11"), "{}", r.message);
        assert!(r.message.contains("10.0.0.2:7000"), "{}", r.message);

        let denied = tls_io(rustls::Error::AlertReceived(AlertDescription::AccessDenied));
        let r = classify(&denied);
        assert_eq!(r.cause, Cause::NotAllowed);
        assert!(r.message.contains("--allow"), "{}", r.message);

        // The connect closure hands the engine a MigrateError inside an io::Error.
        let unknown_ca = MigrateError::Io {
            context: "cannot connect to the destination".into(),
            source: std::io::Error::other(MigrateError::Tls(TlsError::Rustls(
                rustls::Error::InvalidCertificate(CertificateError::BadSignature),
            ))),
        };
        let r = classify(&unknown_ca);
        assert_eq!(r.cause, Cause::UnknownCa);
        assert!(r.message.contains("cluster CA"), "{}", r.message);
        assert!(!r.message.contains("DecryptError"), "{}", r.message);

        let r = classify(&tls_io(rustls::Error::AlertReceived(
            AlertDescription::DecryptError,
        )));
        assert_eq!(r.cause, Cause::UnknownCa);

        let r = classify(&MigrateError::Refused(
            "busy: this host already runs a VM".into(),
        ));
        assert_eq!(r.cause, Cause::DestinationBusy);

        let refused = MigrateError::Io {
            context: "cannot connect to the destination".into(),
            source: std::io::Error::from(ErrorKind::ConnectionRefused),
        };
        let r = classify(&refused);
        assert_eq!(r.cause, Cause::Unreachable);
        assert!(r.message.contains("cannot connect to the destination"));
    }

    #[test]
    fn locations_follow_the_engine() {
        assert_eq!(
            classify(&MigrateError::PostcopyInterrupted("cut".into())).vm,
            Some(VmLocation::PausedRecoverable)
        );
        assert_eq!(
            classify(&MigrateError::OutcomeUnknown("cut".into())).vm,
            Some(VmLocation::Unknown)
        );
        assert_eq!(
            classify(&MigrateError::Cancelled).vm,
            Some(VmLocation::Source)
        );
        assert_eq!(classify(&MigrateError::Cancelled).cause, Cause::Cancelled);
    }
}
