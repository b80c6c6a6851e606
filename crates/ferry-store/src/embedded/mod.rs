//! The embedded backend: one redb file for one host and for tests.
//!
//! * Revisions, leases and their deadlines live in the file, so a restart keeps the data,
//!   continues the revision counter and expires leases by the wall clock: a lease whose
//!   deadline passed while the process was down is expired at the first operation after
//!   `open` (or by the reaper thread, whichever comes first).
//! * Every operation first expires due leases, so no caller can observe a key whose lease
//!   deadline has passed when a compare-and-swap or guarded transaction is evaluated; a
//!   reaper thread also expires them at their deadline so watchers see the deletes.
//! * Watches work within the process. The last [`HISTORY_EVENTS`] events are kept in memory
//!   so a watch can start at a recent past revision; older starts (and any start before the
//!   revision at `open`) fail with [`StoreError::Compacted`], like etcd after a compaction.
//! * redb is synchronous: each operation runs on tokio's blocking pool, so `open` may be
//!   called anywhere but the operations need a tokio runtime.

mod codec;
mod history;
mod tx;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable};
use tokio::sync::{broadcast, mpsc};

use self::codec::{KV, LEASES, LEASE_KEYS, META, META_REVISION, META_SCHEMA, SCHEMA};
use self::history::History;
use self::tx::Tx;
use crate::counter::{WriteCounter, WriteCounts, WriteKind};
use crate::error::StoreError;
use crate::store::Store;
use crate::types::{KeyValue, Lease, LeaseId, Listing, Op, Revision, Txn, TxnOutcome, WatchEvent};
use crate::watch::{Watch, WATCH_BUFFER};

/// Events kept in memory for watches that start in the past.
pub const HISTORY_EVENTS: usize = 10_000;
/// Commits a slow watcher may fall behind before it gets [`StoreError::WatchLagged`].
const BROADCAST_COMMITS: usize = 4096;
/// The reaper's longest sleep (it is woken early when a nearer deadline appears).
const REAPER_MAX_SLEEP: Duration = Duration::from_secs(1);

/// A [`Store`] in one redb file. Clones share the database; it closes when the last clone
/// is dropped (and the file can then be opened again).
#[derive(Clone)]
pub struct EmbeddedStore {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.handle.inner.path)
            .finish()
    }
}

/// Owns the reaper thread: dropping the last handle stops and joins it, so the database is
/// closed by the time the drop returns.
struct Handle {
    inner: Arc<Inner>,
    reaper: Option<JoinHandle<()>>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Serialises writers with the publication of their events.
    writer: Mutex<Writer>,
    /// The earliest lease deadline (ms since the Unix epoch), `u64::MAX` when no lease.
    earliest: AtomicU64,
    events: broadcast::Sender<Arc<Vec<WatchEvent>>>,
    counts: WriteCounter,
    wake: Wake,
}

struct Writer {
    revision: Revision,
    history: History,
    deadlines: HashMap<LeaseId, u64>,
}

/// Wakes the reaper when a nearer deadline appears or the store closes.
#[derive(Default)]
struct Wake {
    state: Mutex<(u64, bool)>, // (generation, stop)
    cv: Condvar,
}

impl Wake {
    fn generation(&self) -> u64 {
        lock(&self.state).0
    }

    fn notify(&self, stop: bool) {
        let mut s = lock(&self.state);
        s.0 += 1;
        s.1 |= stop;
        self.cv.notify_all();
    }

    /// Sleeps up to `timeout` unless `generation` is already stale; false once stopped.
    fn wait(&self, generation: u64, timeout: Duration) -> bool {
        let s = lock(&self.state);
        if s.1 {
            return false;
        }
        if s.0 != generation {
            return true;
        }
        let (s, _) = self
            .cv
            .wait_timeout(s, timeout)
            .unwrap_or_else(|e| e.into_inner());
        !s.1
    }
}

/// Locks a mutex, taking over a poisoned one (a panicked writer's redb transaction was
/// aborted, so the guarded bookkeeping is still the committed state's).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in the file at `path`.
    ///
    /// Fails if another `EmbeddedStore` (in this or another process) has the file open, or if
    /// the file was written by an incompatible version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path)?;
        let (revision, deadlines) = Self::prepare(&db)?;
        let earliest = deadlines.values().copied().min().unwrap_or(u64::MAX);
        let inner = Arc::new(Inner {
            db,
            path,
            writer: Mutex::new(Writer {
                revision,
                history: History::new(revision, HISTORY_EVENTS),
                deadlines,
            }),
            earliest: AtomicU64::new(earliest),
            events: broadcast::channel(BROADCAST_COMMITS).0,
            counts: WriteCounter::default(),
            wake: Wake::default(),
        });
        let reaper_inner = inner.clone();
        let reaper = std::thread::Builder::new()
            .name("ferry-store-reaper".into())
            .spawn(move || reaper_inner.reap_loop())
            .map_err(|e| {
                StoreError::Corrupt(format!("cannot start the lease reaper thread: {e}"))
            })?;
        Ok(Self {
            handle: Arc::new(Handle {
                inner,
                reaper: Some(reaper),
            }),
        })
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.handle.inner.path
    }

    /// Creates the tables, checks the layout version, loads the revision and lease deadlines.
    fn prepare(db: &Database) -> Result<(Revision, HashMap<LeaseId, u64>), StoreError> {
        let txn = db.begin_write()?;
        let out = {
            let mut meta = txn.open_table(META)?;
            txn.open_table(KV)?;
            txn.open_multimap_table(LEASE_KEYS)?;
            let leases = txn.open_table(LEASES)?;
            let schema = meta.get(META_SCHEMA)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert(META_SCHEMA, SCHEMA)?;
                }
                Some(SCHEMA) => {}
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "file layout version {other}, this build reads version {SCHEMA}"
                    )))
                }
            }
            let revision = Revision(meta.get(META_REVISION)?.map_or(0, |v| v.value()));
            let mut deadlines = HashMap::new();
            for entry in leases.iter()? {
                let (id, v) = entry?;
                deadlines.insert(LeaseId(id.value()), v.value().1);
            }
            (revision, deadlines)
        };
        txn.commit()?;
        Ok(out)
    }

    /// Runs `f` on the blocking pool with the store's internals.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let inner = self.handle.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(StoreError::Worker)?
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.wake.notify(true);
        if let Some(t) = self.reaper.take() {
            let _ = t.join();
        }
    }
}

impl Inner {
    /// Runs `f` in one write transaction after expiring due leases, then publishes the events.
    fn write<R>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut w = lock(&self.writer);
        let txn = self.db.begin_write()?;
        let (r, events, deadlines, revision) = {
            let mut tx = Tx::open(&txn)?;
            tx.reap(now_ms())?;
            let r = f(&mut tx)?;
            let (events, deadlines, revision) = tx.finish()?;
            (r, events, deadlines, revision)
        };
        txn.commit()?;
        w.revision = revision;
        if !deadlines.is_empty() {
            for (id, d) in deadlines {
                match d {
                    Some(d) => w.deadlines.insert(id, d),
                    None => w.deadlines.remove(&id),
                };
            }
            let earliest = w.deadlines.values().copied().min().unwrap_or(u64::MAX);
            let before = self.earliest.swap(earliest, Ordering::SeqCst);
            if earliest < before {
                self.wake.notify(false);
            }
        }
        if !events.is_empty() {
            w.history.push(&events);
            // No receiver is fine: nobody watches.
            let _ = self.events.send(Arc::new(events));
        }
        Ok(r)
    }

    /// Expires due leases first (as a write), then runs `f` on a read transaction.
    fn read<R>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        if self.earliest.load(Ordering::SeqCst) <= now_ms() {
            self.write(|_| Ok(()))?;
        }
        let txn = self.db.begin_read()?;
        f(&txn)
    }

    fn reap_loop(self: Arc<Self>) {
        loop {
            let generation = self.wake.generation();
            let now = now_ms();
            let due = self.earliest.load(Ordering::SeqCst);
            if due <= now {
                if let Err(e) = self.write(|_| Ok(())) {
                    tracing::warn!(error = %e, "embedded store: expiring leases failed");
                    if !self.wake.wait(generation, Duration::from_millis(100)) {
                        return;
                    }
                }
                continue;
            }
            let sleep = Duration::from_millis(due - now).min(REAPER_MAX_SLEEP);
            if !self.wake.wait(generation, sleep) {
                return;
            }
        }
    }
}

fn read_kv(txn: &redb::ReadTransaction, key: &str) -> Result<Option<KeyValue>, StoreError> {
    let kv = txn.open_table(KV)?;
    let v = kv.get(key)?;
    v.map(|v| codec::decode(key, v.value())).transpose()
}

impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| inner.read(|txn| read_kv(txn, &key)))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            inner.read(|txn| {
                let meta = txn.open_table(META)?;
                let revision = Revision(meta.get(META_REVISION)?.map_or(0, |v| v.value()));
                let kv = txn.open_table(KV)?;
                let mut kvs = Vec::new();
                for entry in kv.range(prefix.as_str()..)? {
                    let (k, v) = entry?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    kvs.push(codec::decode(k.value(), v.value())?);
                }
                Ok(Listing { revision, kvs })
            })
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        self.handle.inner.counts.record(WriteKind::Put);
        let key = key.to_string();
        self.blocking(move |inner| {
            inner.write(|tx| {
                tx.put(&key, value, lease)?;
                tx.seal();
                Ok(tx.revision())
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.handle.inner.counts.record(WriteKind::Delete);
        let key = key.to_string();
        self.blocking(move |inner| {
            inner.write(|tx| {
                let deleted = tx.delete(&key)?;
                tx.seal();
                Ok(deleted.then(|| tx.revision()))
            })
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        self.handle.inner.counts.record(WriteKind::Delete);
        let prefix = prefix.to_string();
        self.blocking(move |inner| {
            inner.write(|tx| {
                let keys = tx.keys_under(&prefix)?;
                for k in &keys {
                    tx.delete(k)?;
                }
                Ok(keys.len() as u64)
            })
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        txn.validate()?;
        self.handle.inner.counts.record(WriteKind::Txn);
        self.blocking(move |inner| {
            inner.write(|tx| {
                let mut current = Vec::with_capacity(txn.conditions.len());
                let mut holds = true;
                for c in &txn.conditions {
                    let kv = tx.read(c.key())?;
                    holds &= c.holds(kv.as_ref().map(|kv| kv.mod_revision));
                    current.push(kv);
                }
                if !holds {
                    return Ok(TxnOutcome::Failed { current });
                }
                for op in txn.ops {
                    match op {
                        Op::Put { key, value, lease } => tx.put(&key, value, lease)?,
                        Op::Delete { key } => {
                            tx.delete(&key)?;
                        }
                    }
                }
                tx.seal();
                Ok(TxnOutcome::Committed {
                    revision: tx.revision(),
                })
            })
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Err(StoreError::ZeroTtl);
        }
        self.handle.inner.counts.record(WriteKind::LeaseGrant);
        let id = self
            .blocking(move |inner| inner.write(|tx| tx.grant(ttl_ms, now_ms())))
            .await?;
        Ok(Lease {
            id,
            ttl: Duration::from_millis(ttl_ms),
        })
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.handle.inner.counts.record(WriteKind::KeepAlive);
        self.blocking(move |inner| inner.write(|tx| tx.keep_alive(lease, now_ms())))
            .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.handle.inner.counts.record(WriteKind::LeaseRevoke);
        self.blocking(move |inner| {
            inner.write(|tx| match tx.revoke(lease)? {
                true => Ok(()),
                false => Err(StoreError::LeaseNotFound(lease)),
            })
        })
        .await
    }

    async fn watch_prefix(
        &self,
        prefix: &str,
        start: Option<Revision>,
    ) -> Result<Watch, StoreError> {
        let inner = &self.handle.inner;
        let (replay, mut rx, from) = {
            let w = lock(&inner.writer);
            let from = start.unwrap_or(w.revision.next()).max(Revision(1));
            let replay = w.history.since(from)?;
            (replay, inner.events.subscribe(), from)
        };
        let prefix = prefix.to_string();
        let (tx, out) = mpsc::channel(WATCH_BUFFER);
        let task = tokio::spawn(async move {
            for ev in replay.into_iter().filter(|e| e.key().starts_with(&prefix)) {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                match rx.recv().await {
                    Ok(batch) => {
                        for ev in batch.iter() {
                            if ev.revision() >= from
                                && ev.key().starts_with(&prefix)
                                && tx.send(Ok(ev.clone())).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(StoreError::WatchLagged)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Watch::new(out, task))
    }

    fn write_counts(&self) -> WriteCounts {
        self.handle.inner.counts.snapshot()
    }
}
