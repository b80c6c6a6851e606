//! The VM ownership state machine as plain functions: what a VM record becomes at each step.
//! [`super::ClusterStore`] applies each step with a compare-and-swap on the record's revision.

use super::names::{HostName, MigrationId};
use super::records::{VmRecord, VmState};

/// A step that the VM's current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Only a running VM can start migrating.
    #[error("VM {vm} is {state:?}, not running, so it cannot start migrating")]
    NotRunning {
        /// The VM.
        vm: String,
        /// Its state.
        state: VmState,
    },
    /// A VM cannot migrate to the host it is on.
    #[error("VM {vm} already runs on {host}")]
    SameHost {
        /// The VM.
        vm: String,
        /// Its host.
        host: HostName,
    },
    /// Switch-over or abort of a migration the VM is not in.
    #[error("VM {vm} is not in migration {migration} (it is {state:?})")]
    NotInMigration {
        /// The VM.
        vm: String,
        /// The migration named.
        migration: MigrationId,
        /// Its state.
        state: VmState,
    },
    /// A host acted on a VM it does not own.
    #[error("VM {vm} is owned by {owner}, not {host}")]
    NotOwner {
        /// The VM.
        vm: String,
        /// Its owner.
        owner: HostName,
        /// The host that tried.
        host: HostName,
    },
    /// Only a lost or paused VM can be recovered.
    #[error("VM {vm} is {state:?}; only a lost or paused VM can be recovered")]
    NotRecoverable {
        /// The VM.
        vm: String,
        /// Its state.
        state: VmState,
    },
}

/// Starts migrating a running VM from its owner to `to`.
pub fn begin_migration(
    vm: &VmRecord,
    to: &HostName,
    migration: &MigrationId,
) -> Result<VmRecord, TransitionError> {
    if vm.state != VmState::Running {
        return Err(TransitionError::NotRunning {
            vm: vm.id.to_string(),
            state: vm.state.clone(),
        });
    }
    if &vm.owner == to {
        return Err(TransitionError::SameHost {
            vm: vm.id.to_string(),
            host: to.clone(),
        });
    }
    Ok(VmRecord {
        state: VmState::Migrating {
            from: vm.owner.clone(),
            to: to.clone(),
            migration: migration.clone(),
        },
        ..vm.clone()
    })
}

fn in_migration<'a>(
    vm: &'a VmRecord,
    migration: &MigrationId,
) -> Result<(&'a HostName, &'a HostName), TransitionError> {
    match &vm.state {
        VmState::Migrating {
            from,
            to,
            migration: m,
        } if m == migration => Ok((from, to)),
        state => Err(TransitionError::NotInMigration {
            vm: vm.id.to_string(),
            migration: migration.clone(),
            state: state.clone(),
        }),
    }
}

/// Switch-over: the destination becomes the owner, running, at the next epoch.
pub fn switch_over(vm: &VmRecord, migration: &MigrationId) -> Result<VmRecord, TransitionError> {
    let (_, to) = in_migration(vm, migration)?;
    Ok(VmRecord {
        owner: to.clone(),
        state: VmState::Running,
        epoch: vm.epoch + 1,
        ..vm.clone()
    })
}

/// Abort: the VM keeps running on its source, which stays the owner (same epoch).
pub fn abort_migration(
    vm: &VmRecord,
    migration: &MigrationId,
) -> Result<VmRecord, TransitionError> {
    let (from, _) = in_migration(vm, migration)?;
    Ok(VmRecord {
        owner: from.clone(),
        state: VmState::Running,
        ..vm.clone()
    })
}

fn check_owner(vm: &VmRecord, host: &HostName) -> Result<(), TransitionError> {
    if &vm.owner != host {
        return Err(TransitionError::NotOwner {
            vm: vm.id.to_string(),
            owner: vm.owner.clone(),
            host: host.clone(),
        });
    }
    Ok(())
}

/// The owner paused the VM and cannot tell yet whether it can resume it (for example a
/// switch-over whose outcome was unknown); any migration is over.
pub fn pause(vm: &VmRecord, host: &HostName) -> Result<VmRecord, TransitionError> {
    check_owner(vm, host)?;
    Ok(VmRecord {
        state: VmState::PausedRecoverable,
        ..vm.clone()
    })
}

/// The owner resumes a paused or lost VM it still holds, at the next epoch.
pub fn recover(vm: &VmRecord, host: &HostName) -> Result<VmRecord, TransitionError> {
    check_owner(vm, host)?;
    match vm.state {
        VmState::Lost | VmState::PausedRecoverable => Ok(VmRecord {
            state: VmState::Running,
            epoch: vm.epoch + 1,
            ..vm.clone()
        }),
        ref state => Err(TransitionError::NotRecoverable {
            vm: vm.id.to_string(),
            state: state.clone(),
        }),
    }
}

/// What a host's death does to one VM record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeathEffect {
    /// Nothing: the VM is elsewhere, or already lost.
    Unaffected,
    /// The dead host owned it (running, paused, or as a migration's source before the
    /// switch-over): nobody may run it now. The destination of an unfinished migration never
    /// won the switch-over, so it must not resume its copy.
    Lost(VmRecord),
    /// The dead host was the destination of its migration: the source keeps it, running.
    MigrationAborted(VmRecord),
}

/// What `dead`'s death does to `vm`.
pub fn after_host_death(vm: &VmRecord, dead: &HostName) -> DeathEffect {
    if &vm.owner == dead {
        return match vm.state {
            VmState::Lost => DeathEffect::Unaffected,
            _ => DeathEffect::Lost(VmRecord {
                state: VmState::Lost,
                ..vm.clone()
            }),
        };
    }
    match &vm.state {
        VmState::Migrating { to, .. } if to == dead => DeathEffect::MigrationAborted(VmRecord {
            state: VmState::Running,
            ..vm.clone()
        }),
        _ => DeathEffect::Unaffected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::names::VmId;

    fn h(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    fn vm(owner: &str, state: VmState) -> VmRecord {
        VmRecord {
            id: VmId::new("v").unwrap(),
            owner: h(owner),
            state,
            epoch: 4,
            vcpus: 1,
            memory_bytes: 1 << 20,
            cpu: None,
        }
    }

    fn mig() -> MigrationId {
        MigrationId::new("m").unwrap()
    }

    #[test]
    fn migration_moves_ownership_once_and_raises_the_epoch() {
        let v = vm("a", VmState::Running);
        let m = begin_migration(&v, &h("b"), &mig()).unwrap();
        assert_eq!(m.owner, h("a"), "the source owns the VM until switch-over");
        let s = switch_over(&m, &mig()).unwrap();
        assert_eq!(
            (s.owner.clone(), s.state.clone(), s.epoch),
            (h("b"), VmState::Running, 5)
        );
        // Switching over again, or with another migration's id, is refused.
        assert!(matches!(
            switch_over(&s, &mig()),
            Err(TransitionError::NotInMigration { .. })
        ));
        let other = MigrationId::new("other").unwrap();
        assert!(switch_over(&m, &other).is_err());
        let a = abort_migration(&m, &mig()).unwrap();
        assert_eq!((a.owner, a.state, a.epoch), (h("a"), VmState::Running, 4));
    }

    #[test]
    fn refuses_impossible_starts() {
        assert!(matches!(
            begin_migration(&vm("a", VmState::Running), &h("a"), &mig()),
            Err(TransitionError::SameHost { .. })
        ));
        assert!(matches!(
            begin_migration(&vm("a", VmState::Lost), &h("b"), &mig()),
            Err(TransitionError::NotRunning { .. })
        ));
    }

    #[test]
    fn death_of_owner_source_or_destination() {
        let migrating = vm(
            "a",
            VmState::Migrating {
                from: h("a"),
                to: h("b"),
                migration: mig(),
            },
        );
        match after_host_death(&migrating, &h("a")) {
            DeathEffect::Lost(r) => assert_eq!((r.owner, r.state), (h("a"), VmState::Lost)),
            other => panic!("{other:?}"),
        }
        match after_host_death(&migrating, &h("b")) {
            DeathEffect::MigrationAborted(r) => {
                assert_eq!((r.owner, r.state), (h("a"), VmState::Running))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            after_host_death(&migrating, &h("c")),
            DeathEffect::Unaffected
        );
        assert_eq!(
            after_host_death(&vm("a", VmState::Lost), &h("a")),
            DeathEffect::Unaffected
        );
        assert!(matches!(
            after_host_death(&vm("a", VmState::PausedRecoverable), &h("a")),
            DeathEffect::Lost(_)
        ));
    }

    #[test]
    fn only_the_owner_recovers_and_only_lost_or_paused() {
        let lost = vm("a", VmState::Lost);
        assert!(matches!(
            recover(&lost, &h("b")),
            Err(TransitionError::NotOwner { .. })
        ));
        let r = recover(&lost, &h("a")).unwrap();
        assert_eq!((r.state.clone(), r.epoch), (VmState::Running, 5));
        assert!(matches!(
            recover(&r, &h("a")),
            Err(TransitionError::NotRecoverable { .. })
        ));
        let p = pause(&r, &h("a")).unwrap();
        assert_eq!(p.state, VmState::PausedRecoverable);
        assert!(pause(&r, &h("b")).is_err());
    }
}
