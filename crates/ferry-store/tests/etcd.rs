//! The conformance suite on etcd (Debian's etcd 3.4), each test with its own etcd server in
//! a temporary directory on free ports, stopped by pid at the end; and the local etcd
//! helper's own behaviour.

mod conformance;

use std::time::Duration;

use ferry_store::{EtcdStore, LocalEtcd, LocalEtcdConfig, LocalEtcdError, Store};
use tempfile::TempDir;

/// Whether etcd can be run here; under `CI=true` a missing etcd fails the test.
fn etcd_available() -> bool {
    if LocalEtcd::installed() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but the etcd binary is missing: install Debian's etcd-server (see .ci/run)"
        );
    }
    eprintln!("skipping: no etcd binary (apt-get install etcd-server)");
    false
}

/// etcd 3.4 handles SIGTERM by shutting down and then re-raising it.
fn stopped_by_sigterm(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.success() || status.signal() == Some(libc::SIGTERM)
}

struct Fixture {
    store: EtcdStore,
    etcd: LocalEtcd,
    dir: TempDir,
}

impl Fixture {
    async fn finish(self) {
        drop(self.store);
        let pid = self.etcd.pid();
        let status = self.etcd.stop().await.unwrap();
        assert!(
            stopped_by_sigterm(status),
            "etcd (pid {pid}) did not stop on SIGTERM: {status}"
        );
        // SAFETY: kill with signal 0 sends nothing; it only checks whether the pid exists.
        let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
        assert!(!exists, "etcd (pid {pid}) still running");
        self.dir.close().unwrap();
    }
}

async fn fixture() -> Option<Fixture> {
    if !etcd_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(LocalEtcdConfig::in_dir(dir.path()).for_tests())
        .await
        .unwrap();
    let store = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
    Some(Fixture { store, etcd, dir })
}

conformance_suite!(fixture);

#[tokio::test]
async fn supervisor_restarts_a_killed_etcd_with_its_data() {
    if !etcd_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(LocalEtcdConfig::in_dir(dir.path()).for_tests())
        .await
        .unwrap();
    let sup = etcd.supervise(Duration::from_millis(100));
    let store = EtcdStore::connect(&[sup.endpoint()]).await.unwrap();
    let r = store.put("/k", b"survives".to_vec(), None).await.unwrap();

    let first = sup.pid();
    // SAFETY: kill(2) sends SIGKILL to the etcd this test started.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    assert!(
        conformance::eventually(Duration::from_secs(20), || async { sup.restarts() == 1 }).await,
        "the supervisor did not restart etcd"
    );
    assert_ne!(sup.pid(), first);
    // The same client reconnects; the data and the revision are still there.
    assert!(
        conformance::eventually(Duration::from_secs(10), || async {
            matches!(store.get("/k").await, Ok(Some(kv)) if kv.value == b"survives" && kv.mod_revision == r)
        })
        .await
    );
    let status = sup.stop().await.unwrap();
    assert!(stopped_by_sigterm(status), "{status}");
    dir.close().unwrap();
}

/// Requests time out after 5 s; a watch is a long-lived stream and must not.
#[tokio::test]
async fn a_watch_outlives_the_request_timeout() {
    let Some(f) = fixture().await else { return };
    let mut w = f.store.watch_prefix("/t/", None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let r = f.store.put("/t/late", b"x".to_vec(), None).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("no event")
        .expect("watch ended")
        .expect("watch failed");
    assert_eq!(ev.revision(), r);
    drop(w);
    f.finish().await;
}

#[tokio::test]
async fn a_missing_binary_or_a_bad_flag_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalEtcdConfig::in_dir(dir.path()).for_tests();
    config.binary = "/nonexistent/etcd".into();
    assert!(matches!(
        LocalEtcd::start(config).await,
        Err(LocalEtcdError::NotInstalled(_))
    ));
    if !etcd_available() {
        return;
    }
    // A taken port is refused before etcd starts (the readiness probe would reach the other
    // server otherwise).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = LocalEtcdConfig::in_dir(dir.path()).for_tests();
    config.client_port = taken.local_addr().unwrap().port();
    assert!(matches!(
        LocalEtcd::start(config).await,
        Err(LocalEtcdError::PortInUse { port, .. }) if port == taken.local_addr().unwrap().port()
    ));
    // etcd refuses to start (a name it cannot parse): the error carries its log.
    let mut config = LocalEtcdConfig::in_dir(dir.path()).for_tests();
    config.name = "bad name,=x".into();
    match LocalEtcd::start(config).await {
        Err(LocalEtcdError::Exited { log_tail, .. }) => assert!(!log_tail.is_empty()),
        other => panic!("expected etcd to exit, got {other:?}"),
    }
}

#[tokio::test]
async fn connecting_to_nothing_fails_instead_of_hanging() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        EtcdStore::connect(&[format!("http://127.0.0.1:{port}")]),
    )
    .await
    .expect("connect hung");
    assert!(r.is_err());
}
