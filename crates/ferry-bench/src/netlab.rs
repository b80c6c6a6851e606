//! The network lab as a [`Network`]: the source in one namespace, the destination in another, a
//! `tc tbf` veth between them and a delay proxy on the source host, as `bench/netlab-1gbit.sh` sets
//! it up for ferry alone.
//!
//! ```text
//!  <name>-h0 (source)                                         <name>-h1 (destination)
//!  ferry vm run / QEMU --> 127.0.0.1:P  delay proxy  --> eth0 ==tbf== bridge ==tbf== eth0 10.77.0.2:PORT
//!                          (in the harness, delay each way)                         ferry vm receive / QEMU -incoming
//! ```
//!
//! Source processes run under `ip netns exec <name>-h0` and destination processes under
//! `ip netns exec <name>-h1` (which execs the program, so process ids and /proc CPU times are the
//! program's own). The destination listens on its lab address; [`Network::route`] starts a delay
//! proxy inside the source host that listens on that host's loopback and forwards across the lab,
//! so the whole migration stream (and every reply) crosses the shaped link and the delay. The
//! proxy runs on threads of the harness and stops when the [`Route`] is dropped; the lab is torn
//! down when the [`LabNetwork`] is dropped (also on error or panic).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use ferry_netlab::{DelayProxy, Lab, LabConfig};

use crate::scenario::LabSpec;
use crate::{BenchError, Network, Route, Side};

/// Default lab name (namespace prefix) of the bench: `ferrybf-sw`, `ferrybf-h0`, `ferrybf-h1`.
pub const LAB_NAME: &str = "ferrybf";

/// Lab host the source runs in.
const SOURCE_HOST: usize = 0;
/// Lab host the destination runs in.
const DESTINATION_HOST: usize = 1;

/// A two-host network lab for the bench; torn down on drop.
pub struct LabNetwork {
    lab: Lab,
    spec: LabSpec,
}

/// `ip netns exec NS`: the prefix that runs a program inside namespace `ns`.
pub fn netns_prefix(ns: &str) -> Vec<String> {
    ["ip", "netns", "exec", ns].map(String::from).to_vec()
}

/// What the proxy on the source host listens on (its loopback, any port) and forwards to (where
/// the destination listens, which must be an IPv4 address and port).
pub fn proxy_addresses(listen: &str) -> Result<(SocketAddr, SocketAddr), BenchError> {
    let to: SocketAddr = listen.parse().map_err(|_| {
        BenchError::Setup(format!(
            "the destination's address {listen:?} is not an IP address and port"
        ))
    })?;
    Ok((
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        to,
    ))
}

/// Processes living in namespace `ns` (`ip netns pids`; none if it does not exist).
fn pids_in(ns: &str) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// "5 MB", "1.25 MB".
fn mb(bytes: usize) -> String {
    format!("{} MB", bytes as f64 / 1e6)
}

fn lab_err(what: &str) -> impl FnOnce(ferry_netlab::LabError) -> BenchError + '_ {
    move |e| BenchError::Setup(format!("{what}: {e}"))
}

impl LabNetwork {
    /// Brings up lab `name` (two hosts) with `spec`'s rate; a stale lab of that name is removed
    /// first, but not one that processes still run in (another bench, probably).
    pub fn up(name: &str, spec: &LabSpec) -> Result<LabNetwork, BenchError> {
        let status = Lab::status(name).map_err(lab_err("network lab status"))?;
        let busy: Vec<String> = status
            .hosts
            .iter()
            .flat_map(|h| pids_in(&h.netns))
            .collect();
        if !busy.is_empty() {
            return Err(BenchError::Setup(format!(
                "network lab `{name}` is in use (processes {}): another bench is running?",
                busy.join(", ")
            )));
        }
        let lab = Lab::up(&LabConfig {
            name: name.into(),
            hosts: 2,
            rate_bit: Some(spec.rate_bit),
            delay: Some(Duration::from_millis(spec.one_way_delay_ms)),
            loss: 0.0,
        })
        .map_err(lab_err(
            "cannot bring the network lab up (root and iproute2 needed)",
        ))?;
        Ok(LabNetwork {
            lab,
            spec: spec.clone(),
        })
    }

    /// Tears the lab down now, reporting errors (dropping it does the same silently).
    pub fn down(self) -> Result<(), BenchError> {
        self.lab.down().map_err(lab_err("network lab teardown"))
    }

    /// Runs `f` on a thread inside `side`'s host and returns its result (sockets it opens live
    /// there, and stay there when handed back).
    pub fn run_in<T: Send + 'static>(
        &self,
        side: Side,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BenchError> {
        self.lab
            .spawn_in(LabNetwork::host(side), f)
            .map_err(lab_err("cannot enter the lab host"))?
            .join()
            .map_err(|_| BenchError::Setup("a thread in the lab panicked".into()))
    }

    fn host(side: Side) -> usize {
        match side {
            Side::Source => SOURCE_HOST,
            Side::Destination => DESTINATION_HOST,
        }
    }
}

impl Network for LabNetwork {
    fn name(&self) -> String {
        format!(
            "network lab, {} (tc tbf on the veth, a delay proxy adding {} ms each way with {} of \
             buffer): source in namespace {}, destination in {} at {}",
            self.spec.describe(),
            self.spec.one_way_delay_ms,
            mb(self.spec.proxy_buffer),
            self.lab.netns(SOURCE_HOST),
            self.lab.netns(DESTINATION_HOST),
            self.lab.host_addr(DESTINATION_HOST),
        )
    }

    fn prefix(&self, side: Side) -> Vec<String> {
        netns_prefix(self.lab.netns(LabNetwork::host(side)))
    }

    fn listen_host(&self) -> String {
        self.lab.host_addr(DESTINATION_HOST).to_string()
    }

    fn route(&self, listen: &str) -> Result<Route, BenchError> {
        let (at, to) = proxy_addresses(listen)?;
        let proxy = DelayProxy::new(at, to)
            .delay(Duration::from_millis(self.spec.one_way_delay_ms))
            .buffer(self.spec.proxy_buffer);
        // Started on a thread inside the source host: it listens there and connects from there
        // (its own threads inherit the namespace).
        let proxy = self
            .run_in(Side::Source, move || proxy.start())?
            .map_err(lab_err("cannot start the delay proxy"))?;
        Ok(Route::through(proxy.local_addr().to_string(), proxy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_runs_inside_the_namespace() {
        let p = netns_prefix("ferrybf-h1");
        assert_eq!(p, ["ip", "netns", "exec", "ferrybf-h1"]);
        let c = crate::prefixed_command(&p, "/bin/ferry");
        assert_eq!(c.get_program(), "ip");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["netns", "exec", "ferrybf-h1", "/bin/ferry"]);
        let c = crate::prefixed_command(&[], "/bin/ferry");
        assert_eq!(c.get_program(), "/bin/ferry");
        assert_eq!(c.get_args().count(), 0);
    }

    #[test]
    fn proxy_listens_on_loopback_and_forwards_to_the_destination() {
        let (at, to) = proxy_addresses("10.77.0.2:7000").unwrap();
        assert_eq!(at, "127.0.0.1:0".parse().unwrap());
        assert_eq!(to, "10.77.0.2:7000".parse().unwrap());
        assert!(proxy_addresses("unix:/tmp/x").is_err());
        assert!(proxy_addresses("10.77.0.2").is_err());
    }

    #[test]
    fn spec_described() {
        assert_eq!(mb(5_000_000), "5 MB");
        assert_eq!(mb(1_250_000), "1.25 MB");
        assert_eq!(LabSpec::gbit_20ms().describe(), "1 Gbit/s, 20 ms RTT");
        let s = LabSpec::new(100_000_000, 25);
        assert_eq!(s.describe(), "100 Mbit/s, 50 ms RTT");
        assert_eq!(s.proxy_buffer, 1_250_000);
        assert_eq!(LabSpec::gbit_20ms().proxy_buffer, 5_000_000);
        assert_eq!(LabSpec::new(10_000_000, 1).proxy_buffer, 1 << 20);
    }
}
