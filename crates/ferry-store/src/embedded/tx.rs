//! One embedded write transaction: the tables, the revision being written, the events made.

use redb::{MultimapTable, ReadableTable, Table, WriteTransaction};

use super::codec::{self, KV, LEASES, LEASE_KEYS, META, META_LEASE_SEQ, META_REVISION};
use crate::error::StoreError;
use crate::types::{KeyValue, LeaseId, Revision, WatchEvent};

/// A lease whose deadline changed (`None`: the lease is gone).
pub(super) type DeadlineChange = (LeaseId, Option<u64>);

/// The tables of one write transaction and what it has changed so far.
///
/// Changes are made at `revision + 1` until [`Tx::seal`] closes that revision; a transaction
/// may seal several revisions (one per expired lease, then the caller's own change).
pub(super) struct Tx<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    leases: Table<'t, i64, (u64, u64)>,
    lease_keys: MultimapTable<'t, i64, &'static str>,
    meta: Table<'t, &'static str, u64>,
    revision: u64,
    pending: bool,
    pub(super) events: Vec<WatchEvent>,
    pub(super) deadlines: Vec<DeadlineChange>,
}

impl<'t> Tx<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        let meta = txn.open_table(META)?;
        let revision = meta.get(META_REVISION)?.map_or(0, |v| v.value());
        Ok(Self {
            kv: txn.open_table(KV)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_multimap_table(LEASE_KEYS)?,
            meta,
            revision,
            pending: false,
            events: Vec::new(),
            deadlines: Vec::new(),
        })
    }

    /// The last sealed revision.
    pub(super) fn revision(&self) -> Revision {
        Revision(self.revision)
    }

    /// The revision the current change is stamped with.
    fn change_revision(&mut self) -> Revision {
        self.pending = true;
        Revision(self.revision + 1)
    }

    /// Closes the revision being written, if anything was changed at it.
    pub(super) fn seal(&mut self) {
        if self.pending {
            self.revision += 1;
            self.pending = false;
        }
    }

    /// Seals and records the revision; call once before commit.
    pub(super) fn finish(
        mut self,
    ) -> Result<(Vec<WatchEvent>, Vec<DeadlineChange>, Revision), StoreError> {
        self.seal();
        self.meta.insert(META_REVISION, self.revision)?;
        Ok((self.events, self.deadlines, Revision(self.revision)))
    }

    pub(super) fn read(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self.kv.get(key)? {
            Some(v) => Ok(Some(codec::decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Keys under `prefix`, in order.
    pub(super) fn keys_under(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for entry in self.kv.range(prefix..)? {
            let (k, _) = entry?;
            if !k.value().starts_with(prefix) {
                break;
            }
            keys.push(k.value().to_string());
        }
        Ok(keys)
    }

    pub(super) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<(), StoreError> {
        if let Some(l) = lease {
            if self.leases.get(l.0)?.is_none() {
                return Err(StoreError::LeaseNotFound(l));
            }
        }
        let old = self.read(key)?;
        let revision = self.change_revision();
        let old_lease = old.as_ref().and_then(|o| o.lease);
        if old_lease != lease {
            if let Some(o) = old_lease {
                self.lease_keys.remove(o.0, key)?;
            }
            if let Some(l) = lease {
                self.lease_keys.insert(l.0, key)?;
            }
        }
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: old.as_ref().map_or(revision, |o| o.create_revision),
            mod_revision: revision,
            version: old.map_or(1, |o| o.version + 1),
            lease,
        };
        self.kv.insert(key, codec::encode(&kv).as_slice())?;
        self.events.push(WatchEvent::Put(kv));
        Ok(())
    }

    /// Deletes `key`; false if it did not exist.
    pub(super) fn delete(&mut self, key: &str) -> Result<bool, StoreError> {
        let Some(old) = self.read(key)? else {
            return Ok(false);
        };
        let revision = self.change_revision();
        if let Some(l) = old.lease {
            self.lease_keys.remove(l.0, key)?;
        }
        self.kv.remove(key)?;
        self.events.push(WatchEvent::Delete {
            key: key.to_string(),
            revision,
        });
        Ok(true)
    }

    pub(super) fn grant(&mut self, ttl_ms: u64, now_ms: u64) -> Result<LeaseId, StoreError> {
        let seq = self.meta.get(META_LEASE_SEQ)?.map_or(0, |v| v.value()) + 1;
        self.meta.insert(META_LEASE_SEQ, seq)?;
        let id = LeaseId(
            i64::try_from(seq).map_err(|_| StoreError::Corrupt("lease ids exhausted".into()))?,
        );
        let deadline = now_ms.saturating_add(ttl_ms);
        self.leases.insert(id.0, (ttl_ms, deadline))?;
        self.deadlines.push((id, Some(deadline)));
        Ok(id)
    }

    pub(super) fn keep_alive(&mut self, id: LeaseId, now_ms: u64) -> Result<(), StoreError> {
        let Some((ttl_ms, _)) = self.leases.get(id.0)?.map(|v| v.value()) else {
            return Err(StoreError::LeaseNotFound(id));
        };
        let deadline = now_ms.saturating_add(ttl_ms);
        self.leases.insert(id.0, (ttl_ms, deadline))?;
        self.deadlines.push((id, Some(deadline)));
        Ok(())
    }

    /// Removes the lease and deletes its keys at one revision; false if there was no lease.
    pub(super) fn revoke(&mut self, id: LeaseId) -> Result<bool, StoreError> {
        if self.leases.remove(id.0)?.is_none() {
            return Ok(false);
        }
        let mut keys = Vec::new();
        for k in self.lease_keys.remove_all(id.0)? {
            keys.push(k?.value().to_string());
        }
        for k in keys {
            self.delete(&k)?;
        }
        self.seal();
        self.deadlines.push((id, None));
        Ok(true)
    }

    /// Revokes every lease whose deadline is at or before `now_ms`, each at its own revision.
    pub(super) fn reap(&mut self, now_ms: u64) -> Result<(), StoreError> {
        let mut due = Vec::new();
        for entry in self.leases.iter()? {
            let (id, v) = entry?;
            let (_, deadline) = v.value();
            if deadline <= now_ms {
                due.push((deadline, LeaseId(id.value())));
            }
        }
        due.sort_unstable();
        for (_, id) in due {
            self.revoke(id)?;
        }
        Ok(())
    }
}
