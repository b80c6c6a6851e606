//! Daemons as a user meets them: two in-process daemons on loopback (each with its certificates,
//! run directory and API), VMs booted and moved between them through the API and the CLI, the
//! event stream, the metrics, the OpenAPI document, and clients refused at the TLS layer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_daemon::api::types::{
    ApiError, CreateVm, DaemonEvent, HostInfo, MigrationInfo, MigrationState, StartMigration,
    VmInfo, VmState,
};
use ferry_daemon::{DaemonClient, DaemonConfig, RunningDaemon, Target};
use ferry_vmm::testing::require_kvm;
use futures_util::StreamExt;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

fn out(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A work directory with a cluster CA and certificates for node1, node2 and a client, admin;
/// VM processes left in its run directories are killed when it is dropped.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("ferry-daemon-test-")
            .tempdir()
            .unwrap();
        let certs = dir.path().join("certs");
        ferry_migrate::tls::certs::init_ca(&certs, 1).unwrap();
        for name in ["node1", "node2", "admin"] {
            ferry_migrate::tls::certs::issue(&certs, &[name.into()], 1).unwrap();
        }
        Lab { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(&self, name: &str) -> DaemonConfig {
        DaemonConfig::parse(&format!(
            r#"
name = "{name}"
certs_dir = "{certs}"
data_dir = "{base}/{name}/data"
run_dir = "{base}/{name}/run"
ferry_bin = "{bin}"
[api]
listen = ["127.0.0.1:0"]
[migration]
listen_host = "127.0.0.1"
advertise_host = "127.0.0.1"
[capacity]
memory = "1G"
vcpus = 4
[log]
level = "info"
"#,
            certs = self.path("certs").display(),
            base = self.dir.path().display(),
            bin = env!("CARGO_BIN_EXE_ferry"),
        ))
        .unwrap()
    }

    /// A client with the admin certificate.
    fn admin(&self, d: &RunningDaemon) -> DaemonClient {
        let id = ferry_migrate::tls::Identity::from_dir(&self.path("certs"), "admin").unwrap();
        DaemonClient::new(Target::Tls {
            addr: d.api_addrs[0].to_string(),
            server_name: d.daemon.name().to_string(),
            config: ferry_migrate::tls::client_config(&id).unwrap(),
        })
    }

    /// A cluster file naming both daemons.
    fn cluster_file(&self, a: &RunningDaemon, b: &RunningDaemon) -> PathBuf {
        let p = self.path("cluster.toml");
        std::fs::write(
            &p,
            format!(
                "certs_dir = \"{}\"\nclient = \"admin\"\n[hosts.node1]\napi = \"{}\"\n[hosts.node2]\napi = \"{}\"\n",
                self.path("certs").display(),
                a.api_addrs[0],
                b.api_addrs[0]
            ),
        )
        .unwrap();
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failed test must not leave VMs running.
        for node in ["node1", "node2"] {
            let Ok(rd) = ferry_daemon::rundir::RunDir::open(&self.path(&format!("{node}/run")))
            else {
                continue;
            };
            if let Ok((metas, _)) = rd.scan() {
                for m in metas {
                    if let Some(pid) = m.pid {
                        if ferry_daemon::rundir::process_serves(pid, &rd.control(&m.name)) {
                            // SAFETY: kill only sends a signal, to a process checked to be this VM's.
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        }
                    }
                }
            }
        }
    }
}

fn guest_image(lab: &Lab) -> PathBuf {
    let img = lab.path("guest.img");
    let o = ferry()
        .args(["guest", "build", "--memory", "64M", "--ws", "8M", "-o"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    img
}

async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lines of the exposition text as (name with labels, value); panics on a line that is neither a
/// comment nor a sample.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "no # EOF terminator:\n{text}"
    );
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value: {line}"));
        let metric = name.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        samples.push((name.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], name: &str) -> Option<f64> {
    samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

async fn metrics(c: &DaemonClient) -> Vec<(String, f64)> {
    let (status, body) = c.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    assert!(status.is_success());
    parse_exposition(&String::from_utf8_lossy(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_its_document_and_metrics_and_refuses_clients_without_a_certificate() {
    let lab = Lab::new();
    let d = ferry_daemon::start(lab.config("node1")).await.unwrap();
    let admin = lab.admin(&d);

    let host: HostInfo = admin.get("/v1/hosts/self").await.unwrap();
    assert_eq!(host.name, "node1");
    assert_eq!(host.api, Some(d.api_addrs[0].to_string()));
    assert!(host.network_migrations);
    assert_eq!(host.capacity.memory, 1 << 30);

    // The local socket: 0600, and it serves the same API.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.unix_socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "API socket mode {mode:o}");
    let local = DaemonClient::new(Target::Unix(d.unix_socket.clone()));
    let vms: Vec<VmInfo> = local.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty());

    // The OpenAPI document: JSON, with every route.
    let (status, body) = admin
        .raw(hyper::Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    assert!(status.is_success());
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/hosts/self",
        "/v1/hosts",
        "/v1/hosts/{name}/drain",
        "/v1/vms",
        "/v1/vms/{name}",
        "/v1/vms/{name}/stop",
        "/v1/migrations",
        "/v1/migrations/{id}",
        "/v1/incoming",
        "/v1/incoming/{vm}",
        "/v1/events",
        "/metrics",
        "/v1/plan",
        "/v1/plan/apply",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
    assert!(doc["components"]["schemas"]["MigrationInfo"].is_object());

    // /metrics parses as exposition text and has the host gauges.
    let m = metrics(&admin).await;
    assert_eq!(sample(&m, "ferry_host_vms{host=\"node1\"}"), Some(0.0));
    assert!(sample(&m, "ferry_host_memory_total_bytes{host=\"node1\"}").unwrap() > 0.0);

    // No cluster store, so no planner: a clear answer, not a silent success.
    let (status, body) = admin
        .raw(hyper::Method::GET, "/v1/plan", None)
        .await
        .unwrap();
    assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE);
    let p: ApiError = serde_json::from_slice(&body).unwrap();
    assert!(p.error.contains("no planner"), "{}", p.error);

    // Bad input: a clear 4xx.
    let e = admin
        .post::<_, VmInfo>(
            "/v1/vms",
            &CreateVm {
                name: "Bad Name".into(),
                kernel: "/nonexistent".into(),
                memory: 64 << 20,
                vcpus: 1,
                ram_backing: Default::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a VM name"), "{e}");
    let e = admin
        .post::<_, MigrationInfo>("/v1/migrations", &StartMigration::new("nope", "node2"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("no API address") || e.to_string().contains("no VM named"),
        "{e}"
    );

    // A client without a certificate, and one with a certificate of another CA: refused in the
    // TLS handshake, never answered.
    let ca = ferry_migrate::tls::Identity::from_dir(&lab.path("certs"), "admin").unwrap();
    let _ = ca;
    let roots = {
        use rustls::pki_types::pem::PemObject;
        let mut r = rustls::RootCertStore::empty();
        r.add(rustls::pki_types::CertificateDer::from_pem_file(lab.path("certs/ca.pem")).unwrap())
            .unwrap();
        Arc::new(r)
    };
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let anon = DaemonClient::new(Target::Tls {
        addr: d.api_addrs[0].to_string(),
        server_name: "node1".into(),
        config: Arc::new(no_cert),
    })
    .with_timeout(Duration::from_secs(5));
    let e = anon.get::<HostInfo>("/v1/hosts/self").await.unwrap_err();
    assert!(
        !matches!(e, ferry_daemon::client::ClientError::Api { .. }),
        "a client without a certificate got an HTTP answer: {e}"
    );
    let other = tempfile::tempdir().unwrap();
    ferry_migrate::tls::certs::init_ca(other.path(), 1).unwrap();
    ferry_migrate::tls::certs::issue(other.path(), &["admin".into()], 1).unwrap();
    let stranger_id = ferry_migrate::tls::Identity::from_dir(other.path(), "admin").unwrap();
    // It trusts our server (so only our side can refuse), but its own certificate is foreign.
    let mut stranger_cfg = (*ferry_migrate::tls::client_config(&stranger_id).unwrap()).clone();
    stranger_cfg
        .dangerous()
        .set_certificate_verifier(Arc::new(TrustAnything));
    let stranger = DaemonClient::new(Target::Tls {
        addr: d.api_addrs[0].to_string(),
        server_name: "node1".into(),
        config: Arc::new(stranger_cfg),
    })
    .with_timeout(Duration::from_secs(5));
    let e = stranger
        .get::<HostInfo>("/v1/hosts/self")
        .await
        .unwrap_err();
    assert!(
        !matches!(e, ferry_daemon::client::ClientError::Api { .. }),
        "a client of another CA got an HTTP answer: {e}"
    );
    // The daemon still serves its rightful clients.
    let host: HostInfo = admin.get("/v1/hosts/self").await.unwrap();
    assert_eq!(host.name, "node1");

    // A second daemon on the same run directory is refused (its socket is in use).
    let e = ferry_daemon::start(lab.config("node1")).await;
    assert!(e.is_err(), "two daemons on one run directory");
    d.shutdown().await;
}

/// A server-certificate verifier that accepts anything (for the foreign client only).
#[derive(Debug)]
struct TrustAnything;

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_run_migrate_adopt_and_stop_a_vm() {
    if !require_kvm() {
        return;
    }
    let lab = Lab::new();
    let img = guest_image(&lab);
    let a = ferry_daemon::start(lab.config("node1")).await.unwrap();
    let b = ferry_daemon::start(lab.config("node2")).await.unwrap();
    let (ca, cb) = (lab.admin(&a), lab.admin(&b));
    let cluster = lab.cluster_file(&a, &b);

    // Create a VM on node1 through the CLI (its local socket).
    let o = ferry()
        .args(["vm", "run", "web", "--host"])
        .arg(format!("unix:{}", a.unix_socket.display()))
        .arg("--kernel")
        .arg(&img)
        .args(["--memory", "64M"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("VM web running on node1"),
        "{}",
        out(&o)
    );
    let vms: Vec<VmInfo> = ca.get("/v1/vms").await.unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(
        (vms[0].name.as_str(), vms[0].state),
        ("web", VmState::Running)
    );
    assert_eq!(vms[0].memory, 64 << 20);
    // The guest runs: its heartbeats grow.
    wait_for("guest heartbeats", Duration::from_secs(20), async || {
        let v: VmInfo = ca.get("/v1/vms/web").await.ok()?;
        (v.heartbeats? > 0).then_some(())
    })
    .await;

    // `ferry vm list --host node1` through the cluster file (mTLS with the admin certificate).
    let o = ferry()
        .args(["vm", "list", "--host", "node1", "--cluster"])
        .arg(&cluster)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        listing.contains("web") && listing.contains("running"),
        "{listing}"
    );
    println!("$ ferry vm list --host node1\n{listing}");

    // Migration 1, node1 -> node2, with the CLI: `ferry migrate web --to node2 --json`.
    let o = ferry()
        .args([
            "migrate",
            "web",
            "--to",
            "node2",
            "--strategy",
            "precopy",
            "--json",
            "--cluster",
        ])
        .arg(&cluster)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let m: MigrationInfo =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)));
    assert_eq!(m.state, MigrationState::Completed);
    assert_eq!((m.from.as_str(), m.to.as_str()), ("node1", "node2"));
    let report = m.report.expect("a completed migration has a report");
    assert_eq!(report.digest_match, Some(true), "RAM digests differ");
    assert!(report.transport.contains("TLS"), "{}", report.transport);

    // node2 owns it now; node1 has nothing left.
    let arrived = wait_for("the VM on node2", Duration::from_secs(10), async || {
        let v: VmInfo = cb.get("/v1/vms/web").await.ok()?;
        (v.state == VmState::Running).then_some(v)
    })
    .await;
    assert!(arrived.pid.is_some());
    let left: Vec<VmInfo> = ca.get("/v1/vms").await.unwrap();
    assert!(left.is_empty(), "node1 still lists {left:?}");

    // `ferry cluster status` shows both hosts and the VM on node2.
    let o = ferry()
        .args(["cluster", "status", "--cluster"])
        .arg(&cluster)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        status.contains("node1") && status.contains("node2"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("node2") && l.contains("running")),
        "{status}"
    );
    println!("$ ferry cluster status\n{status}");

    // Migration 2, node2 -> node1, through the API, followed on the event stream.
    let events = cb.clone().events("?vm=web").await.unwrap();
    let collector = tokio::spawn(async move {
        futures_util::pin_mut!(events);
        let mut seen = Vec::new();
        while let Some(Ok(e)) = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .ok()
            .flatten()
        {
            let done =
                matches!(&e, DaemonEvent::Migration { migration } if migration.state.is_final());
            seen.push(e);
            if done {
                break;
            }
        }
        seen
    });
    let mut req = StartMigration::new("web", "node1");
    req.to_api = Some(a.api_addrs[0].to_string());
    req.strategy = "precopy".into();
    let started: MigrationInfo = cb.post("/v1/migrations", &req).await.unwrap();
    assert_eq!(started.state, MigrationState::Preparing);
    let seen = collector.await.unwrap();
    let progress = seen
        .iter()
        .filter(|e| matches!(e, DaemonEvent::MigrationProgress { id, .. } if *id == started.id))
        .count();
    assert!(progress > 0, "no progress events on /v1/events: {seen:?}");
    match seen.last() {
        Some(DaemonEvent::Migration { migration }) => {
            assert_eq!(migration.id, started.id);
            assert_eq!(
                migration.state,
                MigrationState::Completed,
                "{:?}",
                migration.error
            );
        }
        other => panic!("the stream did not end with the migration's end: {other:?}"),
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, DaemonEvent::Vm { state: None, .. })),
        "no VM-left event"
    );
    let back = wait_for(
        "the VM back on node1",
        Duration::from_secs(10),
        async || {
            let v: VmInfo = ca.get("/v1/vms/web").await.ok()?;
            (v.state == VmState::Running).then_some(v)
        },
    )
    .await;
    let pid = back.pid.unwrap();

    // Metrics count the migrations on their source, and the arrivals on their destination.
    let mb = metrics(&cb).await;
    assert_eq!(
        sample(&mb, "ferry_migrations_started_total{strategy=\"precopy\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &mb,
            "ferry_migrations_completed_total{strategy=\"precopy\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&mb, "ferry_migration_duration_seconds_count"),
        Some(1.0)
    );
    let done: MigrationInfo = cb
        .get(&format!("/v1/migrations/{}", started.id))
        .await
        .unwrap();
    let sent = done.report.expect("report of migration 2").bytes_sent;
    assert!(sent > 0);
    assert_eq!(
        sample(&mb, "ferry_migration_bytes_sent_total"),
        Some(sent as f64)
    );
    assert_eq!(sample(&mb, "ferry_migrations_received_total"), Some(1.0));
    assert_eq!(sample(&mb, "ferry_host_vms{host=\"node2\"}"), Some(0.0));
    let ma = metrics(&ca).await;
    assert_eq!(
        sample(
            &ma,
            "ferry_migrations_completed_total{strategy=\"precopy\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&ma, "ferry_host_vms{host=\"node1\"}"), Some(1.0));
    let (_, text) = ca.raw(hyper::Method::GET, "/metrics", None).await.unwrap();
    println!(
        "$ curl .../metrics (node1)\n{}",
        String::from_utf8_lossy(&text)
    );

    // A daemon restart does not touch the VM: the new daemon adopts it, same process.
    let cfg = lab.config("node1");
    a.shutdown().await;
    let run = ferry_daemon::rundir::RunDir::open(Path::new(&cfg.run_dir)).unwrap();
    assert!(
        ferry_daemon::rundir::process_serves(pid, &run.control("web")),
        "the VM died with its daemon"
    );
    let a = ferry_daemon::start(cfg).await.unwrap();
    let ca = lab.admin(&a);
    let v: VmInfo = ca.get("/v1/vms/web").await.unwrap();
    assert_eq!((v.state, v.pid), (VmState::Running, Some(pid)));

    // Stop it with the CLI: gone from the list, its process ended.
    let cluster = lab.cluster_file(&a, &b);
    let o = ferry()
        .args(["vm", "stop", "web", "--host", "node1", "--cluster"])
        .arg(&cluster)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    let vms: Vec<VmInfo> = ca.get("/v1/vms").await.unwrap();
    assert!(vms.is_empty(), "{vms:?}");
    assert!(!ferry_daemon::rundir::process_serves(
        pid,
        &run.control("web")
    ));
    a.shutdown().await;
    b.shutdown().await;
}
