//! Leader election: failover on lease expiry, and never two leaders acting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_store::{Election, LeaseKeeper, Op, Revision, Store, StoreError, Txn, TxnOutcome};

use super::{EXPIRY_SLACK, TTL};

const KEY: &str = "/t/leader";

pub async fn leader_fails_over_when_its_lease_expires<S: Store>(s: &S) {
    let election = Election::new(s.clone(), KEY);
    assert_eq!(election.leader().await.unwrap(), None);
    let mut observer = election.observe().await.unwrap();
    assert_eq!(observer.next().await.unwrap(), None);

    let ka = LeaseKeeper::grant(s.clone(), TTL).await.unwrap();
    let kb = LeaseKeeper::grant(s.clone(), TTL).await.unwrap();
    let a = election.campaign("a", ka.id()).await.unwrap();
    assert!(a.is_leader().await.unwrap());
    let seen = observer.next().await.unwrap().expect("a leads");
    assert_eq!(
        (seen.candidate.as_str(), seen.revision),
        ("a", a.revision())
    );
    // Campaigning again on the same lease finds the same term.
    assert_eq!(
        election.campaign("a", ka.id()).await.unwrap().revision(),
        a.revision()
    );
    assert!(election.try_campaign("b", kb.id()).await.unwrap().is_none());

    let b_task = tokio::spawn({
        let election = election.clone();
        let lease = kb.id();
        async move { election.campaign("b", lease).await }
    });
    // While a's lease is renewed, b waits and a acts.
    tokio::time::sleep(TTL * 2).await;
    assert!(!b_task.is_finished(), "b became leader while a was alive");
    assert!(a
        .txn(Txn::new().then(Op::put("/t/data", "by a")))
        .await
        .unwrap()
        .committed());

    // a stops renewing (a crash, or a partition): its lease expires and b takes over.
    let crashed = Instant::now();
    ka.abandon();
    let b = tokio::time::timeout(TTL + EXPIRY_SLACK, b_task)
        .await
        .expect("b did not take over after a's lease expired")
        .unwrap()
        .unwrap();
    assert!(
        crashed.elapsed() >= TTL / 2,
        "b took over before a's lease could expire"
    );
    assert!(b.revision() > a.revision());
    assert_eq!(
        observer.next().await.unwrap(),
        None,
        "observer sees a's key go"
    );
    let seen = observer.next().await.unwrap().expect("b leads");
    assert_eq!(
        (seen.candidate.as_str(), seen.revision),
        ("b", b.revision())
    );

    // a finds out before acting: its guarded change is refused and changes nothing.
    tokio::time::timeout(Duration::from_secs(5), a.lost())
        .await
        .expect("a.lost() did not complete")
        .unwrap();
    assert!(!a.is_leader().await.unwrap());
    assert!(matches!(
        a.txn(Txn::new().then(Op::put("/t/data", "by stale a")))
            .await,
        Err(StoreError::NotLeader { .. })
    ));
    assert_eq!(s.get("/t/data").await.unwrap().unwrap().value, b"by a");
    assert!(
        !a.clone().resign().await.unwrap(),
        "a stale leader cannot resign the new one"
    );
    assert!(b
        .txn(Txn::new().then(Op::put("/t/data", "by b")))
        .await
        .unwrap()
        .committed());

    // b resigns: no leader.
    assert!(b.resign().await.unwrap());
    assert_eq!(observer.next().await.unwrap(), None);
    assert_eq!(election.leader().await.unwrap(), None);
}

/// Candidates campaign in turns for a few seconds; each leader writes through guarded
/// transactions until it resigns or abandons its lease (and then keeps trying, as a leader
/// that has not noticed would). Every successful write is logged with its revision and term:
/// ordered by revision, terms must never go back, i.e. no write of an older term lands after
/// a newer term began.
pub async fn two_campaigners_never_both_lead<S: Store>(s: &S) {
    const CANDIDATES: usize = 3;
    let run_for = Duration::from_secs(6);
    let log: Arc<Mutex<Vec<(Revision, Revision, usize)>>> = Arc::default();
    let stale_refusals = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let election = Election::new(s.clone(), KEY);
    let mut tasks = Vec::new();
    for c in 0..CANDIDATES {
        let (s, election, log, stop, refusals) = (
            s.clone(),
            election.clone(),
            log.clone(),
            stop.clone(),
            stale_refusals.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut term_no = 0;
            while !stop.load(Ordering::SeqCst) {
                let keeper = LeaseKeeper::grant(s.clone(), TTL).await.unwrap();
                let name = format!("c{c}");
                let campaign = election.campaign(&name, keeper.id());
                let leadership = match tokio::time::timeout(Duration::from_secs(4), campaign).await
                {
                    Ok(r) => r.unwrap(),
                    Err(_) => continue,
                };
                term_no += 1;
                // Alternate: resign cleanly, or crash (stop renewing) and keep writing.
                let crash = (c + term_no) % 2 == 0;
                for i in 0.. {
                    let txn = Txn::new().then(Op::put("/t/counter", format!("c{c} {i}")));
                    match leadership.txn(txn).await {
                        Ok(TxnOutcome::Committed { revision }) => {
                            log.lock()
                                .unwrap()
                                .push((revision, leadership.revision(), c))
                        }
                        Ok(other) => panic!("{other:?}"),
                        Err(StoreError::NotLeader { .. }) => {
                            *refusals.lock().unwrap() += 1;
                            break;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    if i == 5 {
                        if crash {
                            keeper.abandon();
                            // Keep acting as if still leader until the store says no.
                            loop {
                                let txn =
                                    Txn::new().then(Op::put("/t/counter", format!("c{c} stale")));
                                match leadership.txn(txn).await {
                                    Ok(TxnOutcome::Committed { revision }) => log
                                        .lock()
                                        .unwrap()
                                        .push((revision, leadership.revision(), c)),
                                    Ok(other) => panic!("{other:?}"),
                                    Err(StoreError::NotLeader { .. }) => {
                                        *refusals.lock().unwrap() += 1;
                                        break;
                                    }
                                    Err(e) => panic!("{e}"),
                                }
                                tokio::time::sleep(Duration::from_millis(30)).await;
                            }
                        } else {
                            assert!(leadership.clone().resign().await.unwrap());
                            keeper.revoke().await.unwrap();
                        }
                        break;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("candidate stuck")
            .unwrap();
    }

    let mut log = log.lock().unwrap().clone();
    log.sort();
    let terms: std::collections::BTreeSet<Revision> = log.iter().map(|e| e.1).collect();
    assert!(
        terms.len() >= 3,
        "too few terms to test anything: {terms:?}"
    );
    assert!(
        *stale_refusals.lock().unwrap() >= 1,
        "no crashed leader was refused"
    );
    for w in log.windows(2) {
        assert!(
            w[0].1 <= w[1].1,
            "a write of term {} (candidate {}) at revision {} came after term {} (candidate {}) began writing at revision {}",
            w[1].1, w[1].2, w[1].0, w[0].1, w[0].2, w[0].0
        );
    }
    // Each term belongs to one candidate.
    for t in &terms {
        let owners: std::collections::BTreeSet<usize> =
            log.iter().filter(|e| e.1 == *t).map(|e| e.2).collect();
        assert_eq!(owners.len(), 1, "term {t} had writers {owners:?}");
    }
}
