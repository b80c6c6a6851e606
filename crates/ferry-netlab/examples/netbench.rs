//! Measures what docs/NETLAB.md reports (root needed, about 40 s):
//! single-stream TCP throughput at 1 Gbit/s tbf with and without a 20 ms RTT proxy,
//! RTTs, the proxy's window cap, stall-as-loss, and the proxy's own overhead on loopback.
//!
//! `cargo run --release -p ferry-netlab --example netbench [-- SECONDS]`

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferry_netlab::probe::{self, ProbeServer, Transfer};
use ferry_netlab::{DelayProxy, Lab, LabConfig, LabError};

fn mbit(t: &Transfer) -> String {
    format!("{:8.1} Mbit/s", t.bits_per_sec() / 1e6)
}

fn main() -> Result<(), LabError> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let dur = Duration::from_secs_f64(secs);
    let lab = Lab::up(&LabConfig {
        name: "fnl-bench".into(),
        hosts: 2,
        rate_bit: Some(1_000_000_000),
        ..LabConfig::default()
    })?;
    let listen: SocketAddr = (lab.host_addr(1), 0).into();
    let server = lab
        .spawn_in(1, move || ProbeServer::start(listen))?
        .join()
        .expect("server thread")?;
    let target = server.local_addr();
    let in_h0 = |f: Box<dyn FnOnce() -> Result<Transfer, LabError> + Send>| {
        lab.spawn_in(0, f)
            .and_then(|t| t.join().expect("sender thread"))
    };
    let rtt_h0 = |addr: SocketAddr| -> Result<Duration, LabError> {
        let r = lab
            .spawn_in(0, move || probe::rtt(addr, 20))?
            .join()
            .expect("rtt thread")?;
        Ok(probe::median(r))
    };
    // A proxy in host 0 on its loopback, forwarding across the shaped link to host 1.
    let proxy_h0 = |p: DelayProxy| -> Result<_, LabError> {
        lab.spawn_in(0, move || p.start())?
            .join()
            .expect("proxy thread")
    };
    let lo: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();

    println!("single TCP stream, {secs} s per run, host 0 -> host 1");
    let t = in_h0(Box::new(move || probe::send_for(target, dur)))?;
    println!(
        "1 Gbit/s tbf, direct                      {}  rtt {:?}",
        mbit(&t),
        rtt_h0(target)?
    );

    for (delay_ms, buffer) in [(10u64, 16usize << 20), (10, 2 << 20), (20, 16 << 20)] {
        let p = proxy_h0(
            DelayProxy::new(lo, target)
                .delay(Duration::from_millis(delay_ms))
                .buffer(buffer),
        )?;
        let a = p.local_addr();
        let t = in_h0(Box::new(move || probe::send_for(a, dur)))?;
        println!(
            "1 Gbit/s tbf, proxy {delay_ms} ms each way, {:2} MiB buf {}  rtt {:?}",
            buffer >> 20,
            mbit(&t),
            rtt_h0(a)?
        );
    }

    for loss in [1e-5, 1e-4] {
        let p = proxy_h0(
            DelayProxy::new(lo, target)
                .delay(Duration::from_millis(10))
                .loss(loss),
        )?;
        let a = p.local_addr();
        let t = in_h0(Box::new(move || probe::send_for(a, dur)))?;
        println!(
            "1 Gbit/s tbf, proxy 10 ms, loss {loss:e} (stall 20 ms) {}  stalls {}",
            mbit(&t),
            p.stats().stalls
        );
    }

    lab.clear_rate()?;
    let t = in_h0(Box::new(move || probe::send_for(target, dur)))?;
    println!("unshaped veth+bridge, direct              {}", mbit(&t));
    let p = proxy_h0(DelayProxy::new(lo, target).delay(Duration::from_millis(10)))?;
    let a = p.local_addr();
    let t = in_h0(Box::new(move || probe::send_for(a, dur)))?;
    println!("unshaped veth+bridge, proxy 10 ms         {}", mbit(&t));
    drop(p);
    drop(server);

    // The proxy's own cost: loopback, zero delay, in the root namespace and in host 0.
    let ns = lab.netns(0).to_string();
    lab.spawn_in(0, move || loopback_overhead(&ns, dur))?
        .join()
        .expect("loopback thread")?;
    lab.down()?;
    loopback_overhead("root netns", dur)
}

/// CPU time (user + system) of this whole process so far, in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" closing the command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn loopback_overhead(place: &str, dur: Duration) -> Result<(), LabError> {
    let lo: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
    let server = ProbeServer::start(lo)?;
    let direct = server.local_addr();
    let proxy = DelayProxy::spawn(lo, direct, Duration::ZERO)?;
    for (what, addr) in [("direct    ", direct), ("proxy 0 ms", proxy.local_addr())] {
        for _ in 0..3 {
            let cpu = cpu_secs();
            let t = probe::send_for(addr, dur)?;
            let cpu_per_gb = (cpu_secs() - cpu) / (t.bytes as f64 / 1e9);
            let r = probe::median(probe::rtt(addr, 500)?);
            println!(
                "loopback ({place}), {what} {}  {cpu_per_gb:.2} CPU-s/GB  rtt {r:?}",
                mbit(&t)
            );
        }
    }
    Ok(())
}
