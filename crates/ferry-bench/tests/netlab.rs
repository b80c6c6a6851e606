//! The bench's network lab (scenario f) without the engines: commands of each side run in their
//! namespace, the route crosses the delay proxy (round trip >= 20 ms), and the lab is gone after a
//! panic. Needs root and iproute2; without them it is skipped, unless CI=true.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_bench::{prefixed_command, LabNetwork, LabSpec, Network, Side};

const NAME: &str = "ferrybft";

fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && ip) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but not root ({root}) or no `ip netns` ({ip})"
        );
        eprintln!("SKIPPED: needs root ({root}) and `ip netns` ({ip})");
    }
    root && ip
}

fn lab_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{NAME}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn sides_in_namespaces_route_through_the_delay_proxy() {
    if !prerequisites() {
        return;
    }
    let lab = LabNetwork::up(NAME, &LabSpec::gbit_20ms()).expect("lab up");
    let host = lab.listen_host();
    assert_eq!(host, "10.77.0.2");
    assert!(lab.name().contains("1 Gbit/s, 20 ms RTT"), "{}", lab.name());

    // A destination-side command sees the destination's address, a source-side one does not.
    let addrs = |side| {
        let out = prefixed_command(&lab.prefix(side), "ip")
            .args(["-4", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(addrs(Side::Destination).contains("10.77.0.2/"));
    assert!(addrs(Side::Source).contains("10.77.0.1/"));

    // An echo server where the destination listens; a client on the source host through the route.
    let listener = lab
        .run_in(Side::Destination, move || {
            TcpListener::bind((host.as_str(), 0))
        })
        .unwrap()
        .unwrap();
    let listen = listener.local_addr().unwrap().to_string();
    let echo = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut b = [0u8; 64];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 || s.write_all(&b[..n]).is_err() {
                break;
            }
        }
    });
    let route = lab.route(&listen).unwrap();
    assert!(route.addr.starts_with("127.0.0.1:"), "{}", route.addr);
    let to = route.addr.clone();
    let rtts = lab
        .run_in(Side::Source, move || {
            let mut s = TcpStream::connect(&to).unwrap();
            s.set_nodelay(true).unwrap();
            let mut rtts = vec![];
            for _ in 0..5 {
                let t = Instant::now();
                s.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"ping");
                rtts.push(t.elapsed());
            }
            rtts
        })
        .unwrap();
    let min = rtts.iter().min().unwrap();
    assert!(
        *min >= Duration::from_millis(20) && *min < Duration::from_millis(60),
        "round trips {rtts:?}"
    );
    drop(route);
    echo.join().unwrap();

    // Torn down on a panic too.
    let r = std::panic::catch_unwind(move || {
        let _lab = lab;
        panic!("a run failed");
    });
    assert!(r.is_err());
    assert!(lab_namespaces().is_empty(), "left: {:?}", lab_namespaces());
}
