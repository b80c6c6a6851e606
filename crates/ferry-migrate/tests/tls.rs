//! Migration over TLS 1.3 with mutual authentication, and every way a TLS peer can be wrong.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ferry_migrate::synthetic::{DirtyScript, SyntheticFactory, SyntheticVm};
use ferry_migrate::tls::{self, certs, Identity, Policy};
use ferry_migrate::{
    migrate_out, receive, MigrateError, MigrationSource, ReceiveOptions, SourceOptions, Strategy,
};
use ferry_wire::codec::Compression;

const PAGES: u64 = 1024;
const T: Duration = Duration::from_secs(5);

/// A private directory removed with its keys when the test ends.
fn dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ferry-tls-{name}-"))
        .tempdir()
        .unwrap()
}

/// A CA with a destination (valid for 127.0.0.1) and a source certificate.
fn cluster(name: &str) -> tempfile::TempDir {
    let t = dir(name);
    let d = t.path();
    certs::init_ca(d, 30).unwrap();
    certs::issue(
        d,
        &["destination".into(), "127.0.0.1".into(), "10.77.0.2".into()],
        30,
    )
    .unwrap();
    certs::issue(d, &["source".into()], 30).unwrap();
    t
}

fn idle() -> DirtyScript {
    DirtyScript {
        pages_per_sec: 0,
        working_set: 1,
        random: false,
    }
}

fn source_vm() -> SyntheticVm {
    let mut vm = SyntheticVm::new(PAGES, idle());
    vm.fill();
    vm.resume().unwrap();
    vm
}

fn opts() -> SourceOptions {
    let mut o = SourceOptions {
        strategy: Strategy::StopAndCopy,
        timeout: T,
        ..SourceOptions::default()
    };
    o.encoder.compression = Compression::Off;
    o
}

/// A TLS destination on a fresh port; returns its address and the outcome of the receive.
fn tls_destination(
    id: Identity,
    policy: Policy,
) -> (
    std::net::SocketAddr,
    thread::JoinHandle<Result<ferry_migrate::Incoming<SyntheticVm>, MigrateError>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let cfg = tls::server_config_for(&id, &policy).unwrap();
    let h = thread::spawn(move || {
        let mut accept = || -> std::io::Result<ferry_migrate::channel::Stream> {
            let (s, _) = l.accept()?;
            tls::accept(s, &cfg, &policy, T).map_err(|e| std::io::Error::other(chain(&e)))
        };
        receive(
            &mut accept,
            &mut SyntheticFactory { script: idle() },
            &ReceiveOptions { timeout: T },
        )
    });
    (addr, h)
}

/// Forwards TCP to `to`, counting the bytes the source sends.
fn counting_proxy(to: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    thread::spawn(move || {
        while let Ok((mut a, _)) = l.accept() {
            let Ok(mut b) = TcpStream::connect(to) else {
                return;
            };
            let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut b2, &mut a2);
                let _ = a2.shutdown(std::net::Shutdown::Both);
            });
            let c = c.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = a.read(&mut buf) {
                    if n == 0 || b.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    c.fetch_add(n as u64, Ordering::SeqCst);
                }
                let _ = b.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, count)
}

fn tls_source(
    src: &mut SyntheticVm,
    to: std::net::SocketAddr,
    id: &Identity,
    name: &str,
) -> Result<ferry_migrate::Report, MigrateError> {
    let cfg = tls::client_config(id).unwrap();
    let connect = || -> std::io::Result<ferry_migrate::channel::Stream> {
        let s = TcpStream::connect(to)?;
        tls::connect(s, &cfg, name, T).map_err(|e| std::io::Error::other(chain(&e)))
    };
    migrate_out(src, &connect, &opts(), &mut |_| {})
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s += &format!(": {x}");
        c = x.source();
    }
    s
}

/// Asserts a refused migration: the source runs on, and no more than a handshake crossed the wire.
fn assert_refused(src: &SyntheticVm, err: &MigrateError, sent: u64) {
    assert!(src.is_running(), "source must keep running after {err}");
    assert!(
        sent < 8 * 1024,
        "{sent} bytes left the source: more than a handshake ({err})"
    );
}

#[test]
fn migrates_over_mutually_authenticated_tls() {
    let t = cluster("ok");
    let d = t.path();
    let (addr, dst) = tls_destination(
        Identity::from_dir(d, "destination").unwrap(),
        Policy::default(),
    );
    let mut src = source_vm();
    let r = tls_source(
        &mut src,
        addr,
        &Identity::from_dir(d, "source").unwrap(),
        "127.0.0.1",
    )
    .unwrap();
    assert_eq!(r.digest_match, Some(true));
    assert!(dst.join().unwrap().is_ok());
    assert!(!src.is_running());
}

fn refused_case(
    src_id: Identity,
    dst_id: Identity,
    policy: Policy,
    name: &str,
) -> (MigrateError, String) {
    let (addr, dst) = tls_destination(dst_id, policy);
    let (proxy, sent) = counting_proxy(addr);
    let mut src = source_vm();
    let err = tls_source(&mut src, proxy, &src_id, name).unwrap_err();
    let dst_err = dst.join().unwrap().err().expect("destination must refuse");
    thread::sleep(Duration::from_millis(50));
    assert_refused(&src, &err, sent.load(Ordering::SeqCst));
    (err, chain(&dst_err))
}

#[test]
fn unknown_ca_is_refused_on_both_sides() {
    let (ta, tb) = (cluster("ca-a"), cluster("ca-b"));
    let (a, b) = (ta.path(), tb.path());
    let (err, dst_err) = refused_case(
        Identity::from_dir(b, "source").unwrap(),
        Identity::from_dir(a, "destination").unwrap(),
        Policy::default(),
        "127.0.0.1",
    );
    // Each CA has a name of its own: a foreign certificate is from an unknown issuer (not a
    // bad signature, which rustls reports as a DecryptError).
    let e = chain(&err);
    assert!(e.contains("UnknownIssuer"), "source: {e}");
    assert!(dst_err.contains("alert"), "destination: {dst_err}");
}

#[test]
fn expired_certificate_is_refused() {
    let t = cluster("expired");
    let d = t.path();
    certs::issue(d, &["old".into()], -2).unwrap();
    let (err, dst_err) = refused_case(
        Identity::from_dir(d, "old").unwrap(),
        Identity::from_dir(d, "destination").unwrap(),
        Policy::default(),
        "127.0.0.1",
    );
    assert!(
        dst_err.contains("certificate expired"),
        "destination: {dst_err}"
    );
    let _ = err;
}

#[test]
fn wrong_host_name_is_refused() {
    let t = cluster("name");
    let d = t.path();
    let (err, _) = refused_case(
        Identity::from_dir(d, "source").unwrap(),
        Identity::from_dir(d, "destination").unwrap(),
        Policy::default(),
        "elsewhere.example",
    );
    assert!(
        chain(&err).contains("not valid for name"),
        "{}",
        chain(&err)
    );
}

#[test]
fn peer_outside_the_policy_is_refused_and_told_so() {
    let t = cluster("policy");
    let d = t.path();
    let (err, dst_err) = refused_case(
        Identity::from_dir(d, "source").unwrap(),
        Identity::from_dir(d, "destination").unwrap(),
        Policy {
            allowed: vec!["trusted-host".into()],
        },
        "127.0.0.1",
    );
    assert!(dst_err.contains("not allowed"), "{dst_err}");
    // The source learns why: an access_denied alert, not a bare hang-up.
    assert!(
        chain(&err).contains("AccessDenied"),
        "source: {}",
        chain(&err)
    );
}

#[test]
fn plaintext_source_on_a_tls_port_is_refused() {
    let t = cluster("plain");
    let d = t.path();
    let (addr, dst) = tls_destination(
        Identity::from_dir(d, "destination").unwrap(),
        Policy::default(),
    );
    let (proxy, sent) = counting_proxy(addr);
    let mut src = source_vm();
    let connect = || TcpStream::connect(proxy).map(ferry_migrate::channel::Stream::Tcp);
    let err = migrate_out(&mut src, &connect, &opts(), &mut |_| {}).unwrap_err();
    assert!(dst.join().unwrap().is_err());
    assert_refused(&src, &err, sent.load(Ordering::SeqCst));
}

#[test]
fn truncated_handshake_fails_cleanly_and_the_source_runs_on() {
    let t = cluster("trunc");
    let d = t.path();
    // A "destination" that takes the connection, reads the ClientHello and hangs up.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 100];
        let _ = s.read(&mut b);
    });
    let mut src = source_vm();
    let err = tls_source(
        &mut src,
        addr,
        &Identity::from_dir(d, "source").unwrap(),
        "127.0.0.1",
    )
    .unwrap_err();
    t.join().unwrap();
    assert!(src.is_running(), "{err}");
    assert!(chain(&err).contains("handshake"), "{}", chain(&err));
    // And a destination that is sent half a handshake refuses and is not stuck.
    let (addr, dst) = tls_destination(
        Identity::from_dir(d, "destination").unwrap(),
        Policy::default(),
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    drop(s);
    assert!(dst.join().unwrap().is_err());
}

#[test]
fn certificate_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = cluster("perm");
    let d = t.path();
    for f in ["ca.key", "ca.pem", "source.key", "source.pem"] {
        let mode = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    assert!(
        certs::init_ca(d, 30).is_err(),
        "an existing CA must not be replaced"
    );
    // A key file that existed with a looser mode is made private again.
    std::fs::set_permissions(d.join("source.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    certs::issue(d, &["source".into()], 30).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.join("source.key")), 0o600);
    assert_eq!(mode(d), 0o700, "the CA directory itself");
}

#[test]
fn a_host_bundle_holds_only_what_the_host_needs() {
    use std::os::unix::fs::PermissionsExt;
    let t = cluster("bundle");
    let ca = t.path();
    certs::revoke(ca, &"name:old-host".parse().unwrap()).unwrap();
    let b = dir("bundle-out");
    let bundle = b.path().join("hostb");
    let issued =
        certs::issue_bundle(ca, &["hostb".into(), "127.0.0.1".into()], 30, &bundle).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["ca.pem", "hostb.key", "hostb.pem", "revoked.txt"]);
    assert!(
        !ca.join("hostb.key").exists(),
        "the host's key is not left with the CA"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bundle), 0o700);
    assert_eq!(mode(&bundle.join("hostb.key")), 0o600);
    assert_eq!(issued.serial.len(), 16 * 3 - 1, "{}", issued.serial);
    // The bundle is a working identity: a migration from the CA's source to it succeeds.
    let (addr, dst) = tls_destination(
        Identity::from_dir(&bundle, "hostb").unwrap(),
        Policy::default(),
    );
    let mut src = source_vm();
    let r = tls_source(
        &mut src,
        addr,
        &Identity::from_dir(ca, "source").unwrap(),
        "127.0.0.1",
    );
    assert_eq!(r.unwrap().digest_match, Some(true));
    assert!(dst.join().unwrap().is_ok());
    assert!(
        certs::issue_bundle(ca, &["x".into()], 30, ca).is_err(),
        "a bundle never goes next to the CA key"
    );
}

#[test]
fn a_revoked_source_is_refused_and_told_so() {
    let t = cluster("revoked-src");
    let d = t.path();
    // The destination's list exists (empty) when it starts, and is read again at the handshake.
    std::fs::write(d.join("revoked.txt"), "# nothing yet\n").unwrap();
    let dst_id = Identity::from_dir(d, "destination").unwrap();
    assert!(dst_id.revoked().is_some());
    certs::revoke(d, &"name:source".parse().unwrap()).unwrap();
    let (err, dst_err) = refused_case(
        Identity::load(
            &d.join("ca.pem"),
            &d.join("source.pem"),
            &d.join("source.key"),
        )
        .unwrap(),
        dst_id,
        Policy::default(),
        "127.0.0.1",
    );
    assert!(
        chain(&err).contains("CertificateRevoked"),
        "source: {}",
        chain(&err)
    );
    assert!(dst_err.contains("Revoked"), "destination: {dst_err}");
}

#[test]
fn a_revoked_destination_is_refused_by_its_source() {
    let t = cluster("revoked-dst");
    let d = t.path();
    let issued = certs::issue(d, &["destination".into(), "127.0.0.1".into()], 30).unwrap();
    let list = d.join("mine.txt");
    std::fs::write(&list, format!("serial:{}\n", issued.serial.to_uppercase())).unwrap();
    let src_id = Identity::load(
        &d.join("ca.pem"),
        &d.join("source.pem"),
        &d.join("source.key"),
    )
    .unwrap()
    .with_revoked(tls::DenyList::open(&list).unwrap());
    let (err, _) = refused_case(
        src_id,
        Identity::from_dir(d, "destination").unwrap(),
        Policy::default(),
        "127.0.0.1",
    );
    assert!(chain(&err).contains("Revoked"), "source: {}", chain(&err));
}

/// Migrates between two network-lab hosts (namespaces joined by veth) while tcpdump captures host
/// 0's veth, and reports whether `pattern` appeared on the wire.
fn capture_contains(lab: &ferry_netlab::Lab, pattern: &'static [u8], use_tls: bool) -> bool {
    use std::process::Stdio;
    let t = cluster(if use_tls { "cap-tls" } else { "cap-plain" });
    let d = t.path();
    let pcap = d.join("capture.pcap");
    let mut dump = lab
        .command(0, "tcpdump")
        .args(["-i", "eth0", "-U", "-s", "0", "-Z", "root", "-w"])
        .arg(&pcap)
        .arg("tcp port 7100")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump runs");
    let mut err = std::io::BufReader::new(dump.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump: {line}");
    thread::sleep(Duration::from_millis(300)); // "listening" comes a moment before capture starts
    let dst_addr = std::net::SocketAddr::from((lab.host_addr(1), 7100));
    let server = tls::server_config(&Identity::from_dir(d, "destination").unwrap()).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let dst = lab
        .spawn_in(1, move || {
            let l = TcpListener::bind(dst_addr).unwrap();
            ready_tx.send(()).unwrap();
            let mut accept = || -> std::io::Result<ferry_migrate::channel::Stream> {
                let (s, _) = l.accept()?;
                if use_tls {
                    tls::accept(s, &server, &Policy::default(), T)
                        .map_err(|e| std::io::Error::other(chain(&e)))
                } else {
                    Ok(ferry_migrate::channel::Stream::Tcp(s))
                }
            };
            receive(
                &mut accept,
                &mut SyntheticFactory { script: idle() },
                &ReceiveOptions { timeout: T },
            )
            .is_ok()
        })
        .unwrap();
    ready_rx.recv().unwrap();
    let src_id = Identity::from_dir(d, "source").unwrap();
    let src = lab
        .spawn_in(0, move || {
            let mut src = SyntheticVm::new(PAGES, idle());
            let mem = MigrationSource::memory(&src);
            for p in 0..64 {
                // SAFETY: the synthetic guest is not running yet and nothing else touches its memory.
                let page = unsafe { mem.page_mut(p) };
                for (i, b) in page.iter_mut().enumerate() {
                    *b = pattern[i % pattern.len()];
                }
                page[..8].copy_from_slice(&p.to_le_bytes()); // distinct pages: dedup must not hide them
            }
            src.resume().unwrap();
            if use_tls {
                tls_source(&mut src, dst_addr, &src_id, &dst_addr.ip().to_string()).is_ok()
            } else {
                let connect =
                    || TcpStream::connect(dst_addr).map(ferry_migrate::channel::Stream::Tcp);
                migrate_out(&mut src, &connect, &opts(), &mut |_| {}).is_ok()
            }
        })
        .unwrap();
    assert!(src.join().unwrap(), "migration between the lab hosts");
    assert!(dst.join().unwrap(), "destination received the VM");
    thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) of the child we spawned (SIGINT makes tcpdump flush and exit).
    unsafe { libc_kill(dump.id() as i32, 2) };
    let _ = dump.wait();
    let bytes = std::fs::read(&pcap).unwrap();
    assert!(
        bytes.len() > 100_000,
        "the capture holds the migration ({} bytes)",
        bytes.len()
    );
    bytes.windows(pattern.len()).any(|w| w == pattern)
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn capture_on_the_lab_veth_shows_guest_memory_only_without_tls() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let have_tcpdump = std::process::Command::new("tcpdump")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let cfg = ferry_netlab::LabConfig {
        name: format!("ferrycap{}", std::process::id() % 10000),
        hosts: 2,
        ..Default::default()
    };
    let lab = match (have_tcpdump, ferry_netlab::Lab::up(&cfg)) {
        (true, Ok(lab)) => lab,
        (t, l) => {
            assert!(
                !ci,
                "CI=true but the capture test cannot run (tcpdump: {t}, lab: {:?})",
                l.err()
            );
            eprintln!("SKIP: needs root, ip netns and tcpdump");
            return;
        }
    };
    let pattern: &'static [u8] = b"FERRY-GUEST-SECRET-7f3a9c";
    assert!(
        capture_contains(&lab, pattern, false),
        "--insecure: the guest's bytes cross the wire in the clear"
    );
    assert!(
        !capture_contains(&lab, pattern, true),
        "TLS: the guest's bytes must not appear on the wire"
    );
}
