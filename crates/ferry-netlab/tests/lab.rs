//! Lab integration tests: need root and `ip netns`; skipped with a notice otherwise (failed if CI=true).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use ferry_netlab::probe::{self, ProbeServer};
use ferry_netlab::{Lab, LabConfig};

/// Timing tests must not share the two cores with each other.
static SERIAL: Mutex<()> = Mutex::new(());

const HELPER_ENV: &str = "FERRY_NETLAB_TEST_SINK";

fn lab_or_skip(config: &LabConfig) -> Option<Lab> {
    match Lab::up(config) {
        Ok(lab) => Some(lab),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("lab `{}` cannot be built under CI: {e}", config.name)
        }
        Err(e) => {
            // Straight to stderr: libtest would hide eprintln! output of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: lab `{}` needs root and `ip netns`: {e}",
                config.name
            );
            None
        }
    }
}

/// Not a test of its own: the throughput test runs this binary inside a namespace with
/// HELPER_ENV set, and then it serves a probe sink until stdin closes.
#[test]
fn helper_sink_process() {
    let Ok(addr) = std::env::var(HELPER_ENV) else {
        return;
    };
    let server = ProbeServer::start(addr.parse().expect("helper address")).expect("helper bind");
    println!("READY {}", server.local_addr());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn assert_near(measured: f64, target: f64, what: &str) {
    let ratio = measured / target;
    eprintln!(
        "{what}: {:.1} Mbit/s of {:.1} Mbit/s ({:.1}%)",
        measured / 1e6,
        target / 1e6,
        ratio * 100.0
    );
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: measured {measured:.0} bit/s, shaped {target:.0} bit/s"
    );
}

#[test]
fn shaped_throughput_between_namespaces() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rate = 100_000_000;
    let Some(lab) = lab_or_skip(&LabConfig {
        name: "fnlt-tput".into(),
        hosts: 2,
        rate_bit: Some(rate),
        ..LabConfig::default()
    }) else {
        return;
    };
    // The sink is this test binary, run inside host 1 as a separate process.
    let mut sink = lab
        .command(1, std::env::current_exe().unwrap())
        .args(["--exact", "helper_sink_process", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(
            HELPER_ENV,
            SocketAddr::from((lab.host_addr(1), 0)).to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sink in host 1");
    let mut lines = BufReader::new(sink.stdout.take().unwrap()).lines();
    let sink_addr: SocketAddr = loop {
        let line = lines.next().expect("sink exited before READY").unwrap();
        // libtest prints "test helper_sink_process ... " before the helper's own output.
        if let Some((_, a)) = line.split_once("READY ") {
            break a.trim().parse().unwrap();
        }
    };
    assert_eq!(sink_addr.ip(), lab.host_addr(1));

    let send = |secs: f64| {
        lab.spawn_in(0, move || {
            probe::send_for(sink_addr, Duration::from_secs_f64(secs))
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap()
    };
    let t = send(2.0);
    assert_near(t.bits_per_sec(), rate as f64, "100 Mbit/s tbf");

    lab.set_rate(rate / 2).unwrap();
    assert_eq!(lab.rate(), Some(rate / 2));
    let t = send(1.5);
    assert_near(
        t.bits_per_sec(),
        (rate / 2) as f64,
        "tc change to 50 Mbit/s",
    );

    drop(sink.stdin.take());
    sink.wait().unwrap();
    lab.down().unwrap();
    assert!(Lab::status("fnlt-tput").unwrap().is_empty());
}

#[test]
fn delay_proxy_rtt_between_namespaces() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lab) = lab_or_skip(&LabConfig {
        name: "fnlt-rtt".into(),
        hosts: 2,
        delay: Some(Duration::from_millis(10)),
        ..LabConfig::default()
    }) else {
        return;
    };
    let listen: SocketAddr = (lab.host_addr(1), 0).into();
    let server = lab
        .spawn_in(1, move || ProbeServer::start(listen))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    let target = server.local_addr();
    let rtt_in_host0 = |addr: SocketAddr| {
        lab.spawn_in(0, move || probe::rtt(addr, 10))
            .unwrap()
            .join()
            .unwrap()
            .unwrap()
    };

    let direct = probe::median(rtt_in_host0(target));
    assert!(direct < Duration::from_millis(5), "direct rtt {direct:?}");

    // Proxy in host 0 on its loopback, forwarding across the bridge to host 1.
    let proxy = lab
        .spawn_proxy(0, (Ipv4Addr::LOCALHOST, 0).into(), target)
        .unwrap();
    let samples = rtt_in_host0(proxy.local_addr());
    let min = *samples.iter().min().unwrap();
    let med = probe::median(samples);
    eprintln!("rtt direct {direct:?}, through 10 ms proxy: min {min:?} median {med:?}");
    assert!(min >= Duration::from_millis(20), "rtt {min:?}");
    assert!(med < Duration::from_millis(40), "rtt {med:?}");
    assert_eq!(proxy.stats().connections, 1);
    proxy.stop();
    drop(server);
    drop(lab);
    assert!(Lab::status("fnlt-rtt").unwrap().is_empty());
}

#[test]
fn lifecycle_command_status_and_stale_cleanup() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = LabConfig {
        name: "fnlt-life".into(),
        hosts: 3,
        rate_bit: Some(10_000_000),
        ..LabConfig::default()
    };
    let Some(lab) = lab_or_skip(&config) else {
        return;
    };
    assert_eq!(lab.netns(2), "fnlt-life-h2");
    // spawn_in threads really are in the host's namespace.
    let ns_inode = std::fs::metadata(ferry_netlab::netns::netns_path(lab.netns(1)))
        .unwrap()
        .ino();
    let thread_ns = lab
        .spawn_in(1, || std::fs::read_link("/proc/thread-self/ns/net"))
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(thread_ns.to_string_lossy(), format!("net:[{ns_inode}]"));
    assert_eq!(lab.host_addr(2), Ipv4Addr::new(10, 77, 0, 3));
    let out = lab
        .command(2, "ip")
        .args(["-4", "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.0.3/24"));

    let status = Lab::status("fnlt-life").unwrap();
    assert!(status.switch);
    assert_eq!(status.hosts.len(), 3);
    assert_eq!(status.hosts[1].addr, Some(Ipv4Addr::new(10, 77, 0, 2)));
    assert!(status.hosts[0].qdisc.contains("tbf"), "{status}");

    // A persisted lab is stale for the next `up` of the same name, which replaces it.
    lab.persist();
    assert_eq!(Lab::status("fnlt-life").unwrap().hosts.len(), 3);
    let smaller = LabConfig {
        hosts: 2,
        rate_bit: None,
        ..config
    };
    let lab = Lab::up(&smaller).unwrap();
    let status = Lab::status("fnlt-life").unwrap();
    assert_eq!(status.hosts.len(), 2);
    assert!(!status.hosts[0].qdisc.contains("tbf"), "{status}");
    drop(lab);
    assert!(Lab::status("fnlt-life").unwrap().is_empty());
    assert!(Lab::teardown("fnlt-life").unwrap().is_empty());
}
