//! Watches: order, filtering, and starting in the past.

use std::time::Duration;

use ferry_store::{Condition, Op, Revision, Store, Txn, TxnOutcome, Watch, WatchEvent};

/// A compact form of an event: ("put"/"del", key, revision, value).
type Seen = (&'static str, String, Revision, Vec<u8>);

fn seen(ev: WatchEvent) -> Seen {
    match ev {
        WatchEvent::Put(kv) => ("put", kv.key, kv.mod_revision, kv.value),
        WatchEvent::Delete { key, revision } => ("del", key, revision, Vec::new()),
    }
}

async fn take(w: &mut Watch, n: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Ok(ev))) => out.push(seen(ev)),
            other => panic!("after {out:?}: expected an event, got {other:?}"),
        }
    }
    // Nothing more arrives.
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        panic!("unexpected extra event {extra:?} after {out:?}");
    }
    out
}

/// Writes a fixed sequence under /t/w/ (and noise outside it); returns what a watcher of
/// /t/w/ must see.
async fn write_sequence<S: Store>(s: &S) -> Vec<Seen> {
    let mut expect = Vec::new();
    let r = s.put("/t/w/a", b"1".to_vec(), None).await.unwrap();
    expect.push(("put", "/t/w/a".to_string(), r, b"1".to_vec()));
    s.put("/t/other", b"noise".to_vec(), None).await.unwrap();
    let r = s.put("/t/w/b", b"2".to_vec(), None).await.unwrap();
    expect.push(("put", "/t/w/b".to_string(), r, b"2".to_vec()));
    let r = s.put("/t/w/a", b"3".to_vec(), None).await.unwrap();
    expect.push(("put", "/t/w/a".to_string(), r, b"3".to_vec()));
    let r = s.delete("/t/w/b").await.unwrap().unwrap();
    expect.push(("del", "/t/w/b".to_string(), r, Vec::new()));
    let txn = Txn::new()
        .when(Condition::mod_revision("/t/w/a", expect[2].2))
        .then(Op::put("/t/w/c", "4"))
        .then(Op::delete("/t/w/a"))
        .then(Op::put("/t/other", "noise"));
    let r = match s.txn(txn).await.unwrap() {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("{other:?}"),
    };
    expect.push(("put", "/t/w/c".to_string(), r, b"4".to_vec()));
    expect.push(("del", "/t/w/a".to_string(), r, Vec::new()));
    expect
}

pub async fn events_arrive_in_revision_order<S: Store>(s: &S) {
    let mut w = s.watch_prefix("/t/w/", None).await.unwrap();
    let mut w2 = s.watch_prefix("/t/w/", None).await.unwrap();
    let expect = write_sequence(s).await;
    let got = take(&mut w, expect.len()).await;
    assert_eq!(got, expect);
    assert!(
        got.windows(2).all(|p| p[0].2 <= p[1].2),
        "revisions never go back"
    );
    // A second watcher sees the same history.
    assert_eq!(take(&mut w2, expect.len()).await, expect);
    // Dropping a watch does not disturb the store or other watchers.
    drop(w2);
    let r = s.put("/t/w/z", b"5".to_vec(), None).await.unwrap();
    assert_eq!(
        take(&mut w, 1).await,
        vec![("put", "/t/w/z".to_string(), r, b"5".to_vec())]
    );
}

pub async fn watch_from_a_past_revision_replays_it<S: Store>(s: &S) {
    let start = s.list("/t/").await.unwrap().revision.next();
    let expect = write_sequence(s).await;
    let mut w = s.watch_prefix("/t/w/", Some(start)).await.unwrap();
    assert_eq!(take(&mut w, expect.len()).await, expect);

    // list, then watch from the list's revision + 1: nothing missed, nothing twice.
    let listing = s.list("/t/w/").await.unwrap();
    assert_eq!(listing.kvs.len(), 1);
    let mut w = s
        .watch_prefix("/t/w/", Some(listing.revision.next()))
        .await
        .unwrap();
    let r = s.put("/t/w/after", b"6".to_vec(), None).await.unwrap();
    assert_eq!(
        take(&mut w, 1).await,
        vec![("put", "/t/w/after".to_string(), r, b"6".to_vec())]
    );

    // Starting in the middle skips what came before.
    let mut w = s.watch_prefix("/t/w/", Some(expect[3].2)).await.unwrap();
    let mut tail = expect[3..].to_vec();
    tail.push(("put", "/t/w/after".to_string(), r, b"6".to_vec()));
    assert_eq!(take(&mut w, tail.len()).await, tail);
}
