//! Settling a migration whose outcome is unknown (`ferry vm resolve`): ask the other side, then
//! resume the VM on at most one host.
//!
//! A source that lost its link after pausing the guest for the switch-over cannot tell whether the
//! destination runs the VM; it keeps its copy paused ([`crate::VmLocation::Unknown`]). [`decide`]
//! turns what the destination says about itself into the one safe action; it never resumes the
//! source while the destination may run the guest.

use crate::protocol::{HostState, HostStatus};

/// What is known about the destination.
#[derive(Clone, Debug)]
pub enum Peer {
    /// Its control socket answered with this status.
    Status(HostStatus),
    /// Its control socket did not answer (why, in words).
    Unreachable(String),
    /// The operator states that the destination host is gone for good (powered off, fenced): its
    /// copy, if any, will never run again.
    Gone,
}

/// The one safe action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Nothing to settle: the source's VM is not in doubt (it runs, or it left cleanly).
    Nothing(&'static str),
    /// The destination has the VM (it runs it, or ran it and moved on): stop the paused copy on
    /// the source.
    StopSource,
    /// The destination holds no copy: resume the VM on the source. With `rollback`, the guest
    /// may go back to its state at the switch-over (whatever it did on the destination since, if
    /// it ran there, is lost with that copy).
    ResumeSource {
        /// The guest may have run on the destination after the switch-over.
        rollback: bool,
    },
    /// An interrupted post-copy whose destination waits for its pages: finish it with
    /// `ferry migrate --recover`.
    Recover,
    /// Not safe to act: why, and what would settle it.
    Undecided(String),
}

/// The safe action for a source whose status is `source`, given what is known about its peer.
pub fn decide(source: &HostStatus, peer: &Peer) -> Resolution {
    let Some(vm) = source
        .vm
        .as_ref()
        .filter(|_| source.state == Some(HostState::Running))
    else {
        return Resolution::Nothing("the VM is no longer on this host (it left or stopped)");
    };
    if vm.running {
        return Resolution::Nothing("the VM runs on this host");
    }
    if !vm.outcome_unknown && !vm.postcopy_interrupted {
        return Resolution::Nothing("the VM is paused on this host, but no migration is in doubt");
    }
    let interrupted = vm.postcopy_interrupted;
    let status = match peer {
        Peer::Gone => return Resolution::ResumeSource { rollback: true },
        Peer::Unreachable(why) => {
            return Resolution::Undecided(format!(
                "the destination does not answer ({why}): it may run the VM. If that host is \
                 down for good (powered off, fenced), `--peer-gone` resumes the VM here as it was \
                 at the switch-over"
            ))
        }
        Peer::Status(s) => s,
    };
    match status.state {
        // It never got the VM, or dropped what arrived (perhaps after running it a while): no
        // copy runs or will run there.
        Some(HostState::Waiting) => Resolution::ResumeSource { rollback: true },
        Some(HostState::Receiving) if interrupted => Resolution::Recover,
        Some(HostState::Receiving) => Resolution::Undecided(
            "the destination is still receiving: it gives up at its own timeout; run resolve \
             again then"
                .into(),
        ),
        Some(HostState::Running | HostState::Migrating | HostState::Ended) if interrupted => {
            // It has a VM although our post-copy to it never finished: not this one's state to
            // discard from here.
            Resolution::Undecided(
                "the destination has a VM, but this host holds pages of an unfinished post-copy: \
                 finish it with `ferry migrate --recover`"
                    .into(),
            )
        }
        Some(HostState::Running | HostState::Migrating | HostState::Ended) => {
            Resolution::StopSource
        }
        None => Resolution::Undecided("the destination did not say what state it is in".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::VmStatus;

    fn source(running: bool, unknown: bool, interrupted: bool) -> HostStatus {
        HostStatus {
            state: Some(HostState::Running),
            vm: Some(VmStatus {
                running,
                outcome_unknown: unknown,
                postcopy_interrupted: interrupted,
                ..VmStatus::default()
            }),
            ..HostStatus::default()
        }
    }

    fn peer(state: HostState) -> Peer {
        Peer::Status(HostStatus {
            state: Some(state),
            ..HostStatus::default()
        })
    }

    #[test]
    fn the_source_resumes_only_where_the_destination_holds_no_copy() {
        let unknown = source(false, true, false);
        assert_eq!(
            decide(&unknown, &peer(HostState::Waiting)),
            Resolution::ResumeSource { rollback: true }
        );
        for has_it in [HostState::Running, HostState::Migrating, HostState::Ended] {
            assert_eq!(decide(&unknown, &peer(has_it)), Resolution::StopSource);
        }
        assert!(matches!(
            decide(&unknown, &peer(HostState::Receiving)),
            Resolution::Undecided(_)
        ));
        let r = decide(&unknown, &Peer::Unreachable("connection refused".into()));
        assert!(
            matches!(&r, Resolution::Undecided(w) if w.contains("--peer-gone")),
            "{r:?}"
        );
        assert_eq!(
            decide(&unknown, &Peer::Gone),
            Resolution::ResumeSource { rollback: true }
        );
    }

    #[test]
    fn an_interrupted_postcopy_is_recovered_not_discarded() {
        let interrupted = source(false, true, true);
        assert_eq!(
            decide(&interrupted, &peer(HostState::Receiving)),
            Resolution::Recover
        );
        for has_vm in [HostState::Running, HostState::Migrating, HostState::Ended] {
            assert!(matches!(
                decide(&interrupted, &peer(has_vm)),
                Resolution::Undecided(_)
            ));
        }
        // The destination dropped what it had: the source's copy is the only one left.
        assert_eq!(
            decide(&interrupted, &peer(HostState::Waiting)),
            Resolution::ResumeSource { rollback: true }
        );
        assert_eq!(
            decide(&interrupted, &Peer::Gone),
            Resolution::ResumeSource { rollback: true }
        );
    }

    #[test]
    fn nothing_is_done_to_a_vm_not_in_doubt() {
        for s in [
            source(true, false, false),
            source(true, true, false),
            source(false, false, false),
            HostStatus {
                state: Some(HostState::Ended),
                ..HostStatus::default()
            },
        ] {
            assert!(matches!(decide(&s, &Peer::Gone), Resolution::Nothing(_)));
        }
    }
}
