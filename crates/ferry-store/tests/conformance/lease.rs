//! Leases: expiry, keep-alive, revoke, and the background keeper.

use std::time::{Duration, Instant};

use ferry_store::{LeaseKeeper, LeaseStatus, Store, StoreError, WatchEvent};

use super::{eventually, EXPIRY_SLACK, TTL};

pub async fn keys_vanish_when_the_lease_expires<S: Store>(s: &S) {
    let granted = Instant::now();
    let lease = s.grant_lease(TTL).await.unwrap();
    assert_eq!(lease.ttl, TTL);
    s.put("/t/l/1", b"1".to_vec(), Some(lease.id))
        .await
        .unwrap();
    s.put("/t/l/2", b"2".to_vec(), Some(lease.id))
        .await
        .unwrap();
    s.put("/t/l/keep", b"k".to_vec(), None).await.unwrap();
    assert_eq!(
        s.get("/t/l/1").await.unwrap().unwrap().lease,
        Some(lease.id)
    );
    let mut watch = s.watch_prefix("/t/l/", None).await.unwrap();
    tokio::time::sleep((granted + TTL / 2).saturating_duration_since(Instant::now())).await;
    assert!(
        s.get("/t/l/1").await.unwrap().is_some(),
        "expired before its TTL"
    );

    assert!(
        eventually(TTL + EXPIRY_SLACK, || async {
            s.get("/t/l/1").await.unwrap().is_none()
        })
        .await,
        "leased key still present {:?} after the grant",
        granted.elapsed()
    );
    assert!(s.get("/t/l/2").await.unwrap().is_none());
    assert!(
        s.get("/t/l/keep").await.unwrap().is_some(),
        "keys without the lease stay"
    );

    // Both deletions are seen, at one revision.
    let mut deleted = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Delete { key, revision }))) => deleted.push((key, revision)),
            other => panic!("expected a delete event, got {other:?}"),
        }
    }
    deleted.sort();
    assert_eq!(deleted[0].0, "/t/l/1");
    assert_eq!(deleted[1].0, "/t/l/2");
    assert_eq!(deleted[0].1, deleted[1].1, "one lease, one revision");

    // The lease is gone for every purpose.
    assert!(
        matches!(s.keep_alive(lease.id).await, Err(StoreError::LeaseNotFound(id)) if id == lease.id)
    );
    assert!(matches!(
        s.put("/t/l/3", b"3".to_vec(), Some(lease.id)).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(s.get("/t/l/3").await.unwrap().is_none());
    assert!(matches!(
        s.revoke_lease(lease.id).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

pub async fn keep_alive_extends_and_revoke_deletes_now<S: Store>(s: &S) {
    assert!(matches!(
        s.grant_lease(Duration::ZERO).await,
        Err(StoreError::ZeroTtl)
    ));

    let lease = s.grant_lease(TTL).await.unwrap();
    s.put("/t/ka", b"x".to_vec(), Some(lease.id)).await.unwrap();
    // Kept alive for 2.5 TTLs: still there.
    let start = Instant::now();
    while start.elapsed() < TTL * 5 / 2 {
        tokio::time::sleep(TTL / 4).await;
        s.keep_alive(lease.id).await.unwrap();
    }
    assert!(
        s.get("/t/ka").await.unwrap().is_some(),
        "kept-alive key expired"
    );
    // Left alone: gone.
    assert!(
        eventually(TTL + EXPIRY_SLACK, || async {
            s.get("/t/ka").await.unwrap().is_none()
        })
        .await
    );

    // Revoke deletes at once, and only the lease's keys.
    let lease = s.grant_lease(TTL * 30).await.unwrap();
    s.put("/t/rv/1", b"1".to_vec(), Some(lease.id))
        .await
        .unwrap();
    s.put("/t/rv/2", b"2".to_vec(), None).await.unwrap();
    // Re-putting without a lease detaches the key from it.
    s.put("/t/rv/3", b"3".to_vec(), Some(lease.id))
        .await
        .unwrap();
    s.put("/t/rv/3", b"3".to_vec(), None).await.unwrap();
    s.revoke_lease(lease.id).await.unwrap();
    let left: Vec<String> = s
        .list("/t/rv/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(left, ["/t/rv/2", "/t/rv/3"]);
}

pub async fn keeper_renews_and_reports_loss<S: Store>(s: &S) {
    let keeper = LeaseKeeper::grant(s.clone(), TTL).await.unwrap();
    s.put("/t/kp", b"x".to_vec(), Some(keeper.id()))
        .await
        .unwrap();
    tokio::time::sleep(TTL * 5 / 2).await;
    assert!(keeper.is_alive());
    assert!(
        s.get("/t/kp").await.unwrap().is_some(),
        "the keeper did not renew"
    );

    // Revoked behind the keeper's back: it notices and says so.
    s.revoke_lease(keeper.id()).await.unwrap();
    tokio::time::timeout(TTL * 2, keeper.lost())
        .await
        .expect("lost() did not complete after the lease was revoked");
    assert!(!keeper.is_alive());
    assert_eq!(keeper.status(), LeaseStatus::Lost);

    // An abandoned lease expires like a crashed holder's; adopt() refuses a dead lease.
    let keeper = LeaseKeeper::grant(s.clone(), TTL).await.unwrap();
    let lease = keeper.lease();
    s.put("/t/kp2", b"x".to_vec(), Some(lease.id))
        .await
        .unwrap();
    keeper.abandon();
    assert!(
        eventually(TTL + EXPIRY_SLACK, || async {
            s.get("/t/kp2").await.unwrap().is_none()
        })
        .await
    );
    assert!(matches!(
        LeaseKeeper::adopt(s.clone(), lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}
