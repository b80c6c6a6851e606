//! The conformance suite on the embedded (redb) store, and what only it does: restarts.

mod conformance;

use std::time::{Duration, Instant};

use ferry_store::cluster::{
    ClusterError, ClusterStore, HostName, MigrationId, VmId, VmRecord, VmState,
};
use ferry_store::{Election, EmbeddedStore, LeaseKeeper, Store, StoreError};
use tempfile::TempDir;

struct Fixture {
    store: EmbeddedStore,
    dir: TempDir,
}

impl Fixture {
    async fn finish(self) {
        let path = self.store.path().to_path_buf();
        drop(self.store);
        assert!(path.exists());
        self.dir.close().unwrap();
    }
}

async fn fixture() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("state.redb")).unwrap();
    Some(Fixture { store, dir })
}

conformance_suite!(fixture);

#[tokio::test]
async fn restart_keeps_data_revisions_and_lease_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    let r1 = s.put("/k/plain", b"p".to_vec(), None).await.unwrap();
    let short_granted = Instant::now();
    let short = s.grant_lease(Duration::from_millis(1500)).await.unwrap();
    let long = s.grant_lease(Duration::from_secs(60)).await.unwrap();
    s.put("/k/short", b"s".to_vec(), Some(short.id))
        .await
        .unwrap();
    let r_long = s
        .put("/k/long", b"l".to_vec(), Some(long.id))
        .await
        .unwrap();
    let before = s.get("/k/plain").await.unwrap().unwrap();
    drop(s);

    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.get("/k/plain").await.unwrap().unwrap(), before);
    assert_eq!(before.mod_revision, r1);
    assert!(
        s.get("/k/short").await.unwrap().is_some(),
        "lease expired early across the restart"
    );
    let r_next = s.put("/k/next", b"n".to_vec(), None).await.unwrap();
    assert_eq!(r_next, r_long.next(), "revisions continue, never reused");

    // Nobody renews the short lease after the restart: it expires at its stored deadline.
    while s.get("/k/short").await.unwrap().is_some() {
        assert!(
            short_granted.elapsed() < Duration::from_secs(4),
            "short lease outlived its deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        short_granted.elapsed() >= Duration::from_millis(1400),
        "expired {:?} after grant",
        short_granted.elapsed()
    );
    assert!(matches!(
        s.keep_alive(short.id).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    // The long lease survived the restart and can be renewed and revoked.
    s.keep_alive(long.id).await.unwrap();
    assert!(s.get("/k/long").await.unwrap().is_some());
    s.revoke_lease(long.id).await.unwrap();
    assert!(s.get("/k/long").await.unwrap().is_none());
    // Lease ids are not reused either.
    assert!(s.grant_lease(Duration::from_secs(1)).await.unwrap().id.0 > long.id.0);
}

#[tokio::test]
async fn a_lease_that_expired_while_closed_is_gone_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    let lease = s.grant_lease(Duration::from_millis(300)).await.unwrap();
    s.put("/k/x", b"x".to_vec(), Some(lease.id)).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = EmbeddedStore::open(&path).unwrap();
    assert!(s.get("/k/x").await.unwrap().is_none());
    assert!(s.list("/k/").await.unwrap().kvs.is_empty());
}

#[tokio::test]
async fn watches_cannot_start_before_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    s.put("/k/a", b"1".to_vec(), None).await.unwrap();
    let r = s.put("/k/a", b"2".to_vec(), None).await.unwrap();
    drop(s);
    let s = EmbeddedStore::open(&path).unwrap();
    assert!(matches!(
        s.watch_prefix("/k/", Some(r)).await,
        Err(StoreError::Compacted { oldest, .. }) if oldest == r.next()
    ));
    let mut w = s.watch_prefix("/k/", Some(r.next())).await.unwrap();
    let r3 = s.put("/k/a", b"3".to_vec(), None).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision(), r3);
}

#[tokio::test]
async fn ownership_survives_a_restart_between_read_and_switch_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    let c = ClusterStore::new(s);
    let vm = c
        .create_vm(&VmRecord {
            id: VmId::new("vm-r").unwrap(),
            owner: HostName::new("a").unwrap(),
            state: VmState::Running,
            epoch: 1,
            vcpus: 1,
            memory_bytes: 1 << 28,
            cpu: None,
        })
        .await
        .unwrap();
    let (migrating, _) = c
        .begin_migration(
            &vm,
            &HostName::new("b").unwrap(),
            &MigrationId::new("m").unwrap(),
        )
        .await
        .unwrap();
    drop(c); // the daemon restarts

    let c = ClusterStore::new(EmbeddedStore::open(&path).unwrap());
    assert_eq!(c.vm(&vm.record.id).await.unwrap().unwrap(), migrating);
    assert_eq!(c.migrations().await.unwrap().items.len(), 1);
    let done = c.switch_over(&migrating).await.unwrap();
    assert_eq!((done.record.owner.as_str(), done.record.epoch), ("b", 2));
    // The same switch-over replayed after another restart (a retry) loses.
    drop(c);
    let c = ClusterStore::new(EmbeddedStore::open(&path).unwrap());
    assert!(matches!(
        c.switch_over(&migrating).await,
        Err(ClusterError::Conflict { .. })
    ));
    assert_eq!(c.vm(&vm.record.id).await.unwrap().unwrap(), done);
}

/// The leader key was written before the store was reopened, so no watch can start at its
/// revision: a campaigner must still wait for it and take over when its lease expires.
#[tokio::test]
async fn campaign_against_a_leader_from_before_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    let old = s.grant_lease(Duration::from_millis(1500)).await.unwrap();
    let granted = Instant::now();
    Election::new(s.clone(), "/leader")
        .campaign("old", old.id)
        .await
        .unwrap();
    drop(s);

    let s = EmbeddedStore::open(&path).unwrap();
    let keeper = LeaseKeeper::grant(s.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let election = Election::new(s.clone(), "/leader");
    assert_eq!(election.leader().await.unwrap().unwrap().candidate, "old");
    let before = s.write_counts();
    let new = tokio::time::timeout(
        Duration::from_secs(5),
        election.campaign("new", keeper.id()),
    )
    .await
    .expect("the campaign never took over")
    .unwrap();
    assert!(
        granted.elapsed() >= Duration::from_millis(1400),
        "took over before the old lease expired"
    );
    assert!(new.is_leader().await.unwrap());
    let tries = (s.write_counts() - before).txns;
    assert!(
        tries <= 3,
        "the campaign polled ({tries} attempts) instead of watching"
    );
}

#[tokio::test]
async fn one_file_has_one_opener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let s = EmbeddedStore::open(&path).unwrap();
    assert!(matches!(
        EmbeddedStore::open(&path),
        Err(StoreError::Database(_))
    ));
    let clone = s.clone();
    drop(s);
    // Still open through the clone.
    assert!(EmbeddedStore::open(&path).is_err());
    clone.put("/k", b"v".to_vec(), None).await.unwrap();
    drop(clone);
    // Closed when the last handle goes: opens again at once.
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.get("/k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(
        &path,
        b"this is not a redb file, just some text that is long enough",
    )
    .unwrap();
    assert!(EmbeddedStore::open(&path).is_err());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"this is not a redb file, just some text that is long enough",
        "a refused file is left as it was"
    );
}
