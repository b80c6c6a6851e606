//! Reads, writes, compare-and-swap and transactions.

use std::sync::Arc;

use ferry_store::{CasOutcome, Condition, Op, Revision, Store, StoreError, Txn, TxnOutcome};

pub async fn put_get_delete<S: Store>(s: &S) {
    assert_eq!(s.get("/t/a").await.unwrap(), None);
    let r1 = s.put("/t/a", b"one".to_vec(), None).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().expect("written");
    assert_eq!(kv.value, b"one");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (r1, r1, 1, None)
    );

    let r2 = s.put("/t/a", b"two".to_vec(), None).await.unwrap();
    assert!(
        r2 > r1,
        "every write advances the revision ({r1} then {r2})"
    );
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );
    assert_eq!(kv.value, b"two");

    let before = s.list("/t/").await.unwrap().revision;
    assert_eq!(before, r2);
    let rd = s.delete("/t/a").await.unwrap().expect("deleted");
    assert_eq!(rd, r2.next());
    assert_eq!(s.get("/t/a").await.unwrap(), None);
    // Deleting nothing changes nothing, not even the revision.
    assert_eq!(s.delete("/t/a").await.unwrap(), None);
    assert_eq!(s.list("/t/").await.unwrap().revision, rd);

    // Re-creating starts a new life: new create revision, version 1.
    let r3 = s.put("/t/a", b"three".to_vec(), None).await.unwrap();
    let kv = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.version), (r3, 1));
}

pub async fn list_and_delete_prefix<S: Store>(s: &S) {
    let mut last = Revision(0);
    for k in ["/t/a/2", "/t/a/1", "/t/a/10", "/t/ab", "/t/b"] {
        last = s.put(k, k.as_bytes().to_vec(), None).await.unwrap();
    }
    let l = s.list("/t/a/").await.unwrap();
    let keys: Vec<&str> = l.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        ["/t/a/1", "/t/a/10", "/t/a/2"],
        "byte order, prefix only"
    );
    assert_eq!(l.revision, last, "a list reports the store's revision");
    assert!(s.list("/nothing/").await.unwrap().kvs.is_empty());

    let before = s.list("/t/").await.unwrap().revision;
    assert_eq!(s.delete_prefix("/t/a/").await.unwrap(), 3);
    let after = s.list("/t/").await.unwrap();
    assert_eq!(
        after.revision,
        before.next(),
        "one revision for the whole prefix"
    );
    let left: Vec<&str> = after.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(left, ["/t/ab", "/t/b"]);
    assert_eq!(s.delete_prefix("/t/a/").await.unwrap(), 0);
}

pub async fn compare_and_swap_and_create<S: Store>(s: &S) {
    let r1 = match s.create("/t/k", b"first".to_vec(), None).await.unwrap() {
        CasOutcome::Swapped(r) => r,
        other => panic!("create on an empty key: {other:?}"),
    };
    match s.create("/t/k", b"second".to_vec(), None).await.unwrap() {
        CasOutcome::Conflict(Some(kv)) => {
            assert_eq!((kv.value, kv.mod_revision), (b"first".to_vec(), r1))
        }
        other => panic!("second create must conflict: {other:?}"),
    }
    let r2 = match s
        .compare_and_swap("/t/k", Some(r1), b"swapped".to_vec(), None)
        .await
        .unwrap()
    {
        CasOutcome::Swapped(r) => r,
        other => panic!("CAS at the current revision: {other:?}"),
    };
    // The stale revision loses and learns the current value.
    match s
        .compare_and_swap("/t/k", Some(r1), b"stale".to_vec(), None)
        .await
        .unwrap()
    {
        CasOutcome::Conflict(Some(kv)) => {
            assert_eq!((kv.value, kv.mod_revision), (b"swapped".to_vec(), r2))
        }
        other => panic!("stale CAS: {other:?}"),
    }
    assert_eq!(s.get("/t/k").await.unwrap().unwrap().value, b"swapped");
    s.delete("/t/k").await.unwrap();
    assert_eq!(
        s.compare_and_swap("/t/k", Some(r2), b"x".to_vec(), None)
            .await
            .unwrap(),
        CasOutcome::Conflict(None),
        "a deleted key does not match its old revision"
    );
    assert!(matches!(
        s.create("/t/k", b"again".to_vec(), None).await.unwrap(),
        CasOutcome::Swapped(_)
    ));
}

pub async fn transactions_are_atomic_and_validated<S: Store>(s: &S) {
    let ra = s.put("/t/a", b"a".to_vec(), None).await.unwrap();
    let rb = s.put("/t/b", b"b".to_vec(), None).await.unwrap();

    // One condition fails: nothing is applied, and both compared keys come back.
    let failing = Txn::new()
        .when(Condition::mod_revision("/t/a", ra))
        .when(Condition::mod_revision("/t/b", ra))
        .then(Op::put("/t/a", "A"))
        .then(Op::delete("/t/b"))
        .then(Op::put("/t/c", "C"));
    match s.txn(failing.clone()).await.unwrap() {
        TxnOutcome::Failed { current } => {
            assert_eq!(current.len(), 2);
            assert_eq!(current[0].as_ref().unwrap().mod_revision, ra);
            assert_eq!(current[1].as_ref().unwrap().mod_revision, rb);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("/t/a").await.unwrap().unwrap().value, b"a");
    assert!(s.get("/t/b").await.unwrap().is_some());
    assert!(s.get("/t/c").await.unwrap().is_none());
    assert_eq!(
        s.list("/t/").await.unwrap().revision,
        rb,
        "a failed transaction writes nothing"
    );

    // All hold: every operation lands at one revision.
    let ok = Txn::new()
        .when(Condition::mod_revision("/t/a", ra))
        .when(Condition::mod_revision("/t/b", rb))
        .when(Condition::absent("/t/c"))
        .then(Op::put("/t/a", "A"))
        .then(Op::delete("/t/b"))
        .then(Op::put("/t/c", "C"));
    let rev = match s.txn(ok).await.unwrap() {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("{other:?}"),
    };
    assert_eq!(rev, rb.next());
    assert_eq!(s.get("/t/a").await.unwrap().unwrap().mod_revision, rev);
    assert_eq!(s.get("/t/c").await.unwrap().unwrap().mod_revision, rev);
    assert!(s.get("/t/b").await.unwrap().is_none());

    // A key changed twice in one transaction is refused before anything is sent.
    let dup = Txn::new()
        .then(Op::put("/t/d", "1"))
        .then(Op::delete("/t/d"));
    assert!(matches!(s.txn(dup).await, Err(StoreError::DuplicateKey(k)) if k == "/t/d"));

    // A put on a lease that does not exist fails the whole transaction.
    let lease = s.grant_lease(super::TTL * 5).await.unwrap();
    s.revoke_lease(lease.id).await.unwrap();
    let dead = Txn::new()
        .then(Op::put("/t/e", "e"))
        .then(Op::put_with_lease("/t/f", "f", lease.id));
    assert!(matches!(s.txn(dead).await, Err(StoreError::LeaseNotFound(id)) if id == lease.id));
    assert!(s.get("/t/e").await.unwrap().is_none());
    assert_eq!(s.list("/t/").await.unwrap().revision, rev);
}

pub async fn racing_compare_and_swaps_have_one_winner<S: Store>(s: &S) {
    const TASKS: usize = 16;
    const ROUNDS: usize = 5;
    s.put("/t/race", b"start".to_vec(), None).await.unwrap();
    for round in 0..ROUNDS {
        let seen: Revision = s.get("/t/race").await.unwrap().unwrap().mod_revision;
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let (s, barrier) = (s.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let v = format!("round {round} task {t}").into_bytes();
                s.compare_and_swap("/t/race", Some(seen), v, None)
                    .await
                    .unwrap()
            }));
        }
        let mut winners = Vec::new();
        for (t, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                CasOutcome::Swapped(r) => winners.push((t, r)),
                CasOutcome::Conflict(kv) => assert!(kv.unwrap().mod_revision > seen),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one CAS wins, got {winners:?}"
        );
        let kv = s.get("/t/race").await.unwrap().unwrap();
        assert_eq!(
            kv.value,
            format!("round {round} task {}", winners[0].0).into_bytes()
        );
        assert_eq!(kv.mod_revision, winners[0].1);
    }
    assert_eq!(
        s.get("/t/race").await.unwrap().unwrap().version,
        1 + ROUNDS as u64
    );
}
