//! Ferry's cluster records on top of a [`Store`]: hosts, membership, VM ownership and
//! migrations in flight (key layout in [`keys`]).
//!
//! Every change of a VM record is a compare-and-swap on the revision the caller read, so two
//! hosts (or two planners) that race on one VM cannot both win: a VM is owned by exactly one
//! host at every instant, and since ownership lives in the store, also across daemon
//! restarts. A migration costs two store writes: [`ClusterStore::begin_migration`] and
//! [`ClusterStore::switch_over`] (or [`ClusterStore::abort_migration`]), each one
//! transaction.

pub mod keys;
mod membership;
pub mod names;
pub mod ownership;
pub mod records;

use std::time::Duration;

use serde::de::DeserializeOwned;

pub use self::keys::Keys;
pub use self::membership::{Member, MemberEvent, MemberWatch, Membership};
pub use self::names::{HostName, InvalidName, MigrationId, VmId};
pub use self::ownership::{DeathEffect, TransitionError};
pub use self::records::{
    Capacity, CpuFeatures, HealthSymptom, HostRecord, HostReport, HostState, Load, MigrationRecord,
    MigrationSample, Timestamp, VmCpu, VmRecord, VmState, SCHEMA,
};
use crate::counter::WriteCounts;
use crate::error::StoreError;
use crate::store::Store;
use crate::types::{Condition, Op, Revision, Txn, TxnOutcome};

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The store failed.
    #[error("store operation failed")]
    Store(#[from] StoreError),
    /// A stored record is not what this build expects.
    #[error("record at {key:?} cannot be read")]
    Decode {
        /// Its key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record written by another version.
    #[error("record at {key:?} has schema version {found}; this build reads version {SCHEMA}")]
    UnsupportedSchema {
        /// Its key.
        key: String,
        /// Its version.
        found: u32,
    },
    /// A key under ferry's root that names no valid host, VM or migration.
    #[error("key {key:?} does not name a valid host, VM or migration")]
    BadKey {
        /// The key.
        key: String,
    },
    /// The record changed since it was read: another host or planner won the race.
    #[error("{key:?} changed concurrently (now at revision {current:?}); re-read it")]
    Conflict {
        /// The key.
        key: String,
        /// Its revision now (`None`: deleted).
        current: Option<Revision>,
    },
    /// Create-if-absent found the key.
    #[error("{key:?} already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// The record does not exist.
    #[error("{key:?} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The guard ([`ClusterStore::guarded_by`], normally the planner's leadership) no longer
    /// holds: nothing was changed.
    #[error("not the leader any more (guard on {key:?} failed); nothing was changed")]
    NotLeader {
        /// The guard's key.
        key: String,
    },
    /// A host declared dead still has its membership key.
    #[error("host {host} is alive (its membership key exists)")]
    HostAlive {
        /// The host.
        host: HostName,
    },
    /// The VM's state does not allow the step.
    #[error("invalid VM state change")]
    Transition(#[from] TransitionError),
}

/// A record and the revision it was read or written at (what a compare-and-swap compares).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    /// The record.
    pub record: T,
    /// Its key's modification revision.
    pub revision: Revision,
}

/// Records read together, and the store revision they were read at: watch from
/// `revision.next()` to follow every later change.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed<T> {
    /// The store's revision at the read.
    pub revision: Revision,
    /// The records, ordered by key.
    pub items: Vec<T>,
}

/// What [`ClusterStore::host_died`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeathReport {
    /// VMs the dead host owned, now [`VmState::Lost`].
    pub lost: Vec<VmId>,
    /// VMs that were migrating to it, now running on their source again.
    pub aborted: Vec<VmId>,
}

/// How often a compare-and-swap loop re-reads a record that keeps changing under it.
const CAS_RETRIES: usize = 16;

/// Typed access to ferry's records in a [`Store`].
#[derive(Debug, Clone)]
pub struct ClusterStore<S> {
    store: S,
    keys: Keys,
    guard: Option<Condition>,
}

impl<S: Store> ClusterStore<S> {
    /// Records under the default root (`/ferry/v1/`).
    pub fn new(store: S) -> Self {
        Self::with_keys(store, Keys::default())
    }

    /// Records under another key layout root (tests, or two clusters in one store).
    pub fn with_keys(store: S, keys: Keys) -> Self {
        Self {
            store,
            keys,
            guard: None,
        }
    }

    /// The same records, but every change also requires `guard` (for the planner:
    /// `leadership.condition()`), failing with [`ClusterError::NotLeader`] when it does not
    /// hold. Membership reports are never guarded.
    pub fn guarded_by(&self, guard: Condition) -> Self {
        Self {
            guard: Some(guard),
            ..self.clone()
        }
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The writes sent through this store so far (snapshot before and after an operation
    /// and subtract to count what it cost).
    pub fn write_counts(&self) -> WriteCounts {
        self.store.write_counts()
    }

    async fn get_record<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Stored<T>>, ClusterError> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(Stored {
                record: records::decode(key, &kv.value)?,
                revision: kv.mod_revision,
            })),
            None => Ok(None),
        }
    }

    async fn list_records<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Listed<Stored<T>>, ClusterError> {
        let listing = self.store.list(prefix).await?;
        let items = listing
            .kvs
            .iter()
            .map(|kv| {
                Ok(Stored {
                    record: records::decode(&kv.key, &kv.value)?,
                    revision: kv.mod_revision,
                })
            })
            .collect::<Result<_, ClusterError>>()?;
        Ok(Listed {
            revision: listing.revision,
            items,
        })
    }

    /// Applies `ops` if `conditions` (and the guard) hold; says which condition failed.
    async fn commit(
        &self,
        mut conditions: Vec<Condition>,
        ops: Vec<Op>,
    ) -> Result<Revision, ClusterError> {
        let guarded = self.guard.is_some();
        if let Some(g) = &self.guard {
            conditions.insert(0, g.clone());
        }
        let txn = Txn {
            conditions: conditions.clone(),
            ops,
        };
        let current = match self.store.txn(txn).await? {
            TxnOutcome::Committed { revision } => return Ok(revision),
            TxnOutcome::Failed { current } => current,
        };
        for (i, (c, kv)) in conditions.iter().zip(&current).enumerate() {
            let now = kv.as_ref().map(|kv| kv.mod_revision);
            if c.holds(now) {
                continue;
            }
            let key = c.key().to_string();
            return Err(match c {
                _ if guarded && i == 0 => ClusterError::NotLeader { key },
                Condition::ModRevision { expected: None, .. } => {
                    ClusterError::AlreadyExists { key }
                }
                Condition::ModRevision { .. } => ClusterError::Conflict { key, current: now },
            });
        }
        // Every condition holds now: something changed and changed back in between.
        Err(ClusterError::Conflict {
            key: conditions
                .first()
                .map(|c| c.key().to_string())
                .unwrap_or_default(),
            current: None,
        })
    }

    // ---- hosts ----

    /// Writes a host's record (creating or replacing it).
    pub async fn put_host(&self, host: &HostRecord) -> Result<Stored<HostRecord>, ClusterError> {
        let revision = self
            .commit(
                vec![],
                vec![Op::put(self.keys.host(&host.name), records::encode(host))],
            )
            .await?;
        Ok(Stored {
            record: host.clone(),
            revision,
        })
    }

    /// A host's record.
    pub async fn host(&self, host: &HostName) -> Result<Option<Stored<HostRecord>>, ClusterError> {
        self.get_record(&self.keys.host(host)).await
    }

    /// Every host's record.
    pub async fn hosts(&self) -> Result<Listed<Stored<HostRecord>>, ClusterError> {
        self.list_records(&self.keys.hosts()).await
    }

    /// Replaces a host's record if it has not changed since `old` was read.
    pub async fn update_host(
        &self,
        old: &Stored<HostRecord>,
        new: HostRecord,
    ) -> Result<Stored<HostRecord>, ClusterError> {
        let key = self.keys.host(&new.name);
        let revision = self
            .commit(
                vec![Condition::mod_revision(&key, old.revision)],
                vec![Op::put(&key, records::encode(&new))],
            )
            .await?;
        Ok(Stored {
            record: new,
            revision,
        })
    }

    /// Sets a host's state (re-reading on concurrent changes to other fields).
    pub async fn set_host_state(
        &self,
        host: &HostName,
        state: HostState,
    ) -> Result<Stored<HostRecord>, ClusterError> {
        let key = self.keys.host(host);
        for _ in 0..CAS_RETRIES {
            let old = self
                .host(host)
                .await?
                .ok_or_else(|| ClusterError::NotFound { key: key.clone() })?;
            let new = HostRecord {
                state,
                ..old.record.clone()
            };
            match self.update_host(&old, new).await {
                Err(ClusterError::Conflict { .. }) => continue,
                other => return other,
            }
        }
        Err(ClusterError::Conflict { key, current: None })
    }

    // ---- membership ----

    /// Makes `host` a member: grants a lease of `ttl`, kept alive in the background, and
    /// creates `members/<host>` on it with `report`. Fails with
    /// [`ClusterError::AlreadyExists`] while another daemon (or this host's previous run,
    /// until its lease expires) holds the membership. Never guarded.
    pub async fn join(
        &self,
        host: &HostName,
        ttl: Duration,
        report: &HostReport,
    ) -> Result<Membership<S>, ClusterError> {
        membership::join(&self.store, &self.keys, host, ttl, report).await
    }

    /// The live hosts.
    pub async fn members(&self) -> Result<Listed<Member>, ClusterError> {
        let prefix = self.keys.members();
        let listing = self.store.list(&prefix).await?;
        let items = listing
            .kvs
            .iter()
            .map(|kv| membership::member(&prefix, kv))
            .collect::<Result<_, _>>()?;
        Ok(Listed {
            revision: listing.revision,
            items,
        })
    }

    /// Membership changes from revision `start` (`None`: from now on).
    pub async fn watch_members(
        &self,
        start: Option<Revision>,
    ) -> Result<MemberWatch, ClusterError> {
        let prefix = self.keys.members();
        let watch = self.store.watch_prefix(&prefix, start).await?;
        Ok(MemberWatch { prefix, watch })
    }

    // ---- VMs ----

    /// Records a new VM; [`ClusterError::AlreadyExists`] if the id is taken.
    pub async fn create_vm(&self, vm: &VmRecord) -> Result<Stored<VmRecord>, ClusterError> {
        let key = self.keys.vm(&vm.id);
        let revision = self
            .commit(
                vec![Condition::absent(&key)],
                vec![Op::put(&key, records::encode(vm))],
            )
            .await?;
        Ok(Stored {
            record: vm.clone(),
            revision,
        })
    }

    /// A VM's record.
    pub async fn vm(&self, id: &VmId) -> Result<Option<Stored<VmRecord>>, ClusterError> {
        self.get_record(&self.keys.vm(id)).await
    }

    /// Every VM's record.
    pub async fn vms(&self) -> Result<Listed<Stored<VmRecord>>, ClusterError> {
        self.list_records(&self.keys.vms()).await
    }

    /// Replaces a VM's record if it is still at `old.revision`. Prefer the named steps
    /// below, which also check the state machine.
    pub async fn update_vm(
        &self,
        old: &Stored<VmRecord>,
        new: VmRecord,
    ) -> Result<Stored<VmRecord>, ClusterError> {
        let key = self.keys.vm(&new.id);
        let revision = self
            .commit(
                vec![Condition::mod_revision(&key, old.revision)],
                vec![Op::put(&key, records::encode(&new))],
            )
            .await?;
        Ok(Stored {
            record: new,
            revision,
        })
    }

    /// Deletes a VM's record if it is still at `old.revision` (the VM was destroyed).
    pub async fn delete_vm(&self, old: &Stored<VmRecord>) -> Result<Revision, ClusterError> {
        let key = self.keys.vm(&old.record.id);
        self.commit(
            vec![Condition::mod_revision(&key, old.revision)],
            vec![Op::delete(&key)],
        )
        .await
    }

    // ---- migrations ----

    /// Starts migration `id` of `vm` to `to`: one transaction that moves the VM record to
    /// [`VmState::Migrating`] (if unchanged since read) and creates the migration record.
    pub async fn begin_migration(
        &self,
        vm: &Stored<VmRecord>,
        to: &HostName,
        id: &MigrationId,
    ) -> Result<(Stored<VmRecord>, MigrationRecord), ClusterError> {
        let new = ownership::begin_migration(&vm.record, to, id)?;
        let migration = MigrationRecord {
            id: id.clone(),
            vm: vm.record.id.clone(),
            from: vm.record.owner.clone(),
            to: to.clone(),
            started_at: Timestamp::now(),
            vm_epoch: vm.record.epoch,
        };
        let vm_key = self.keys.vm(&vm.record.id);
        let m_key = self.keys.migration(id);
        let revision = self
            .commit(
                vec![
                    Condition::mod_revision(&vm_key, vm.revision),
                    Condition::absent(&m_key),
                ],
                vec![
                    Op::put(&vm_key, records::encode(&new)),
                    Op::put(&m_key, records::encode(&migration)),
                ],
            )
            .await?;
        Ok((
            Stored {
                record: new,
                revision,
            },
            migration,
        ))
    }

    /// Switch-over: the destination becomes the owner, in one compare-and-swap on the VM
    /// record's revision that also deletes the migration record. Of any number of
    /// concurrent attempts from the same read, exactly one succeeds; the others get
    /// [`ClusterError::Conflict`]. Only the winner's destination may resume the VM.
    ///
    /// If this returns a store error (for example a lost connection), the outcome is
    /// unknown: keep the VM paused and re-read the record — the switch-over happened iff the
    /// owner is the destination at epoch `vm.record.epoch + 1`.
    pub async fn switch_over(
        &self,
        vm: &Stored<VmRecord>,
    ) -> Result<Stored<VmRecord>, ClusterError> {
        let migration = migration_of(&vm.record)?;
        let new = ownership::switch_over(&vm.record, &migration)?;
        self.finish_migration(vm, new, &migration).await
    }

    /// Aborts the VM's migration: it stays on (and keeps running on) its source.
    pub async fn abort_migration(
        &self,
        vm: &Stored<VmRecord>,
    ) -> Result<Stored<VmRecord>, ClusterError> {
        let migration = migration_of(&vm.record)?;
        let new = ownership::abort_migration(&vm.record, &migration)?;
        self.finish_migration(vm, new, &migration).await
    }

    async fn finish_migration(
        &self,
        vm: &Stored<VmRecord>,
        new: VmRecord,
        migration: &MigrationId,
    ) -> Result<Stored<VmRecord>, ClusterError> {
        let vm_key = self.keys.vm(&vm.record.id);
        let revision = self
            .commit(
                vec![Condition::mod_revision(&vm_key, vm.revision)],
                vec![
                    Op::put(&vm_key, records::encode(&new)),
                    Op::delete(self.keys.migration(migration)),
                ],
            )
            .await?;
        Ok(Stored {
            record: new,
            revision,
        })
    }

    /// Records a finished migration's measurements (one write, not guarded: history is
    /// evidence, not a decision).
    pub async fn record_sample(&self, sample: &MigrationSample) -> Result<Revision, ClusterError> {
        Ok(self
            .store
            .put(&self.keys.sample(&sample.id), records::encode(sample), None)
            .await?)
    }

    /// Every recorded migration.
    pub async fn samples(&self) -> Result<Vec<MigrationSample>, ClusterError> {
        Ok(self
            .list_records::<MigrationSample>(&self.keys.history())
            .await?
            .items
            .into_iter()
            .map(|s| s.record)
            .collect())
    }

    /// The migrations in flight.
    pub async fn migrations(&self) -> Result<Listed<Stored<MigrationRecord>>, ClusterError> {
        self.list_records(&self.keys.migrations()).await
    }

    /// The owner paused the VM and cannot resume it yet ([`VmState::PausedRecoverable`]);
    /// ends any migration of it.
    pub async fn pause_vm(
        &self,
        vm: &Stored<VmRecord>,
        host: &HostName,
    ) -> Result<Stored<VmRecord>, ClusterError> {
        let new = ownership::pause(&vm.record, host)?;
        let vm_key = self.keys.vm(&vm.record.id);
        let mut ops = vec![Op::put(&vm_key, records::encode(&new))];
        if let Ok(m) = migration_of(&vm.record) {
            ops.push(Op::delete(self.keys.migration(&m)));
        }
        let revision = self
            .commit(vec![Condition::mod_revision(&vm_key, vm.revision)], ops)
            .await?;
        Ok(Stored {
            record: new,
            revision,
        })
    }

    /// The owner resumes a lost or paused VM it still holds; raises the epoch.
    pub async fn recover_vm(
        &self,
        vm: &Stored<VmRecord>,
        host: &HostName,
    ) -> Result<Stored<VmRecord>, ClusterError> {
        let new = ownership::recover(&vm.record, host)?;
        self.update_vm(vm, new).await
    }

    // ---- failures ----

    /// Applies a host's death (its membership key is gone): marks the host
    /// [`HostState::Failed`], its VMs [`VmState::Lost`], and aborts migrations towards it.
    /// Each change also requires the membership key to be absent, so a host that rejoins
    /// meanwhile stops the rest with [`ClusterError::HostAlive`]. Costs one write per
    /// affected VM, plus one for the host record. Idempotent.
    pub async fn host_died(&self, host: &HostName) -> Result<DeathReport, ClusterError> {
        let member_key = self.keys.member(host);
        let alive = |e: ClusterError| match e {
            ClusterError::AlreadyExists { key } if key == member_key => {
                ClusterError::HostAlive { host: host.clone() }
            }
            e => e,
        };
        if self.store.get(&member_key).await?.is_some() {
            return Err(ClusterError::HostAlive { host: host.clone() });
        }
        let mut report = DeathReport::default();
        for vm in self.vms().await?.items {
            let mut vm = vm;
            for attempt in 0.. {
                let (new, lost) = match ownership::after_host_death(&vm.record, host) {
                    DeathEffect::Unaffected => break,
                    DeathEffect::Lost(r) => (r, true),
                    DeathEffect::MigrationAborted(r) => (r, false),
                };
                let vm_key = self.keys.vm(&vm.record.id);
                let mut ops = vec![Op::put(&vm_key, records::encode(&new))];
                if let Ok(m) = migration_of(&vm.record) {
                    ops.push(Op::delete(self.keys.migration(&m)));
                }
                let conditions = vec![
                    Condition::absent(&member_key),
                    Condition::mod_revision(&vm_key, vm.revision),
                ];
                match self.commit(conditions, ops).await.map_err(alive) {
                    Ok(_) => {
                        if lost {
                            report.lost.push(new.id);
                        } else {
                            report.aborted.push(new.id);
                        }
                        break;
                    }
                    Err(ClusterError::Conflict { .. }) if attempt < CAS_RETRIES => {
                        match self.vm(&vm.record.id).await? {
                            Some(v) => vm = v,
                            None => break,
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let host_key = self.keys.host(host);
        for _ in 0..CAS_RETRIES {
            let Some(old) = self.host(host).await? else {
                break;
            };
            if old.record.state == HostState::Failed {
                break;
            }
            let new = HostRecord {
                state: HostState::Failed,
                ..old.record
            };
            let conditions = vec![
                Condition::absent(&member_key),
                Condition::mod_revision(&host_key, old.revision),
            ];
            match self
                .commit(conditions, vec![Op::put(&host_key, records::encode(&new))])
                .await
                .map_err(alive)
            {
                Ok(_) => break,
                Err(ClusterError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }
}

fn migration_of(vm: &VmRecord) -> Result<MigrationId, TransitionError> {
    match &vm.state {
        VmState::Migrating { migration, .. } => Ok(migration.clone()),
        state => Err(TransitionError::NotInMigration {
            vm: vm.id.to_string(),
            migration: MigrationId::new("none").expect("valid"),
            state: state.clone(),
        }),
    }
}
