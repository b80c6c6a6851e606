//! Lab topology: `<name>-sw` holds a bridge, `<name>-h<i>` are the hosts, each joined to the
//! bridge by a veth pair (`eth0` in the host, `p<i>` on the bridge).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::netns::{spawn_in_netns, NetnsThread};
use crate::proxy::{DelayProxy, ProxyHandle};
use crate::units::format_rate;
use crate::LabError;

/// The subnet host addresses come from; it exists only inside the lab's namespaces.
pub const LAB_SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 77, 0, 0), 24);

/// Most hosts a lab can have (addresses .1 to .250 of the lab subnet).
const MAX_HOSTS: u8 = 250;

/// Socket buffer ceiling set in every host namespace (tcp_rmem/tcp_wmem max), enough for
/// bandwidth-delay products far beyond 1 Gbit/s x 100 ms.
const TCP_BUF_MAX: u64 = 64 << 20;

/// What lab to build.
#[derive(Debug, Clone, PartialEq)]
pub struct LabConfig {
    /// Prefix of every namespace name, e.g. "ferrylab" (letters, digits, `_`, `-`).
    pub name: String,
    /// Number of hosts (at least 2).
    pub hosts: u8,
    /// tbf rate in bit/s applied to every link in both directions (None: unshaped).
    pub rate_bit: Option<u64>,
    /// One-way delay added by proxies from [`Lab::spawn_proxy`] (None: no delay).
    pub delay: Option<Duration>,
    /// Probability per 1448-byte segment that a proxy stalls the stream (TCP cannot drop).
    pub loss: f64,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: "ferrylab".into(),
            hosts: 2,
            rate_bit: None,
            delay: None,
            loss: 0.0,
        }
    }
}

impl LabConfig {
    fn validate(&self) -> Result<(), LabError> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 32
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(LabError::Config(format!(
                "name `{n}` must be 1-32 letters, digits, `_` or `-`"
            )));
        }
        if self.hosts < 2 || self.hosts > MAX_HOSTS {
            return Err(LabError::Config(format!(
                "hosts must be 2..={MAX_HOSTS}, got {}",
                self.hosts
            )));
        }
        if let Some(r) = self.rate_bit {
            if r < 8_000 {
                return Err(LabError::Config(format!(
                    "rate {r} bit/s is below 8 kbit/s"
                )));
            }
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err(LabError::Config(format!(
                "loss must be in [0, 1), got {}",
                self.loss
            )));
        }
        Ok(())
    }
}

/// A running lab; dropping it tears it down (unless [`Lab::persist`] was called).
#[derive(Debug)]
pub struct Lab {
    config: LabConfig,
    switch: String,
    hosts: Vec<String>,
    rate: Mutex<Option<u64>>,
    torn_down: bool,
}

fn switch_name(name: &str) -> String {
    format!("{name}-sw")
}

fn host_name(name: &str, i: usize) -> String {
    format!("{name}-h{i}")
}

fn host_addr_of(i: usize) -> Ipv4Addr {
    let [a, b, c, _] = LAB_SUBNET.0.octets();
    Ipv4Addr::new(a, b, c, i as u8 + 1)
}

/// Runs a command, returning stdout, or its stderr as the error.
fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Names from `ip netns list` ("name (id: 3)" lines).
fn list_netns() -> Result<Vec<String>, LabError> {
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Whether `ns` is one of lab `name`'s namespaces (`<name>-sw` or `<name>-h<digits>`).
fn belongs_to(name: &str, ns: &str) -> bool {
    match ns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) {
        Some("sw") => true,
        Some(rest) => rest
            .strip_prefix('h')
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// tbf parameters for a rate: (burst bytes, queue limit bytes).
fn tbf_params(rate_bit: u64) -> (u64, u64) {
    let bytes_per_sec = rate_bit / 8;
    // 1 ms of tokens, but never less than two full frames (tbf drops frames above burst).
    let burst = (bytes_per_sec / 1000).max(2 * 1514);
    // 25 ms of queue: deep enough that a single forwarded TCP flow is not starved by drops.
    let limit = (bytes_per_sec / 40).max(4 * burst).max(64 * 1024);
    (burst, limit)
}

fn tbf_args(rate_bit: u64) -> Vec<String> {
    let (burst, limit) = tbf_params(rate_bit);
    vec![
        "tbf".into(),
        "rate".into(),
        format!("{rate_bit}bit"),
        "burst".into(),
        burst.to_string(),
        "limit".into(),
        limit.to_string(),
    ]
}

/// Writes a sysctl (path relative to /proc/sys) inside a namespace.
fn netns_sysctl(netns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{key}");
    let value = value.to_string();
    let t = spawn_in_netns(netns, move || std::fs::write(path, value))?;
    let res = t
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("panicked")));
    res.map_err(|source| LabError::Sysctl {
        netns: netns.to_string(),
        key: key.to_string(),
        source,
    })
}

impl Lab {
    /// Builds the lab, first removing any stale lab with the same name.
    pub fn up(config: &LabConfig) -> Result<Lab, LabError> {
        config.validate()?;
        Lab::teardown(&config.name)?;
        let mut lab = Lab {
            config: config.clone(),
            switch: switch_name(&config.name),
            hosts: (0..config.hosts as usize)
                .map(|i| host_name(&config.name, i))
                .collect(),
            rate: Mutex::new(None),
            torn_down: false,
        };
        // On error `lab` is dropped here, which removes whatever was created.
        lab.build()?;
        if let Some(r) = config.rate_bit {
            lab.set_rate(r)?;
        }
        Ok(lab)
    }

    /// Takes hold of a running lab (e.g. one left by `up` with [`Lab::persist`]) to change or inspect it.
    ///
    /// Unlike [`Lab::up`], the returned value does not tear the lab down when dropped; call [`Lab::down`].
    pub fn attach(name: &str) -> Result<Lab, LabError> {
        let status = Lab::status(name)?;
        let n = status.hosts.len();
        let contiguous = status
            .hosts
            .iter()
            .enumerate()
            .all(|(i, h)| h.netns == host_name(name, i));
        if !status.switch || n < 2 || !contiguous {
            return Err(LabError::Config(format!(
                "no complete lab `{name}` is running"
            )));
        }
        let rate = status.hosts[0]
            .qdisc
            .split_whitespace()
            .skip_while(|w| *w != "rate")
            .nth(1)
            .and_then(|r| crate::units::parse_rate(r).ok());
        Ok(Lab {
            config: LabConfig {
                name: name.to_string(),
                hosts: n as u8,
                rate_bit: rate,
                ..LabConfig::default()
            },
            switch: switch_name(name),
            hosts: (0..n).map(|i| host_name(name, i)).collect(),
            rate: Mutex::new(rate),
            torn_down: true,
        })
    }

    fn build(&mut self) -> Result<(), LabError> {
        let sw = self.switch.as_str();
        run("ip", &["netns", "add", sw])?;
        run("ip", &["-n", sw, "link", "set", "lo", "up"])?;
        run("ip", &["-n", sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", sw, "link", "set", "br0", "up"])?;
        // Keep the lab quiet: no IPv6 router solicitations or link-local chatter.
        let _ = netns_sysctl(sw, "net/ipv6/conf/all/disable_ipv6", "1");
        for (i, h) in self.hosts.iter().enumerate() {
            let h = h.as_str();
            let port = format!("p{i}");
            let addr = format!("{}/{}", host_addr_of(i), LAB_SUBNET.1);
            run("ip", &["netns", "add", h])?;
            let _ = netns_sysctl(h, "net/ipv6/conf/all/disable_ipv6", "1");
            run(
                "ip",
                &[
                    "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", h,
                ],
            )?;
            run(
                "ip",
                &["-n", sw, "link", "set", &port, "master", "br0", "up"],
            )?;
            run("ip", &["-n", h, "link", "set", "lo", "up"])?;
            run("ip", &["-n", h, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", h, "link", "set", "eth0", "up"])?;
            let bufs = format!("4096 131072 {TCP_BUF_MAX}");
            netns_sysctl(h, "net/ipv4/tcp_rmem", &bufs)?;
            netns_sysctl(h, "net/ipv4/tcp_wmem", &bufs)?;
        }
        Ok(())
    }

    /// The configuration the lab was built from.
    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    /// Address of host `i` (10.77.0.(i+1)); panics if `i` is not a host.
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.hosts.len(), "lab has no host {i}");
        host_addr_of(i)
    }

    /// Network namespace name of host `i`; panics if `i` is not a host.
    pub fn netns(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Namespace holding the bridge.
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// A command running `program` inside host `i`'s namespace (`ip netns exec`); add args and spawn.
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(self.netns(i)).arg(program);
        c
    }

    /// Runs `f` on a new thread inside host `i`'s namespace (sockets it opens live there).
    pub fn spawn_in<F, T>(&self, i: usize, f: F) -> Result<NetnsThread<T>, LabError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_in_netns(self.netns(i), f)
    }

    /// Starts an in-process delay proxy inside host `i`, with the lab's delay and loss.
    ///
    /// It listens on `listen` (in host `i`) and connects to `forward_to` from host `i`.
    pub fn spawn_proxy(
        &self,
        i: usize,
        listen: SocketAddr,
        forward_to: SocketAddr,
    ) -> Result<ProxyHandle, LabError> {
        let proxy = DelayProxy::new(listen, forward_to)
            .delay(self.config.delay.unwrap_or(Duration::ZERO))
            .loss(self.config.loss);
        self.spawn_in(i, move || proxy.start())?
            .join()
            .map_err(|_| LabError::Thread(std::io::Error::other("proxy start panicked")))?
    }

    /// Current shaping rate in bit/s, if any.
    pub fn rate(&self) -> Option<u64> {
        *self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shapes every link (both directions) to `rate_bit`, changing the tbf if one is installed.
    pub fn set_rate(&self, rate_bit: u64) -> Result<(), LabError> {
        if rate_bit < 8_000 {
            return Err(LabError::Config(format!(
                "rate {rate_bit} bit/s is below 8 kbit/s"
            )));
        }
        let mut cur = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let verb = if cur.is_some() { "change" } else { "add" };
        let tbf = tbf_args(rate_bit);
        let tbf: Vec<&str> = tbf.iter().map(String::as_str).collect();
        for (i, h) in self.hosts.iter().enumerate() {
            let port = format!("p{i}");
            for (ns, dev) in [(h.as_str(), "eth0"), (self.switch.as_str(), port.as_str())] {
                let mut args = vec!["-n", ns, "qdisc", verb, "dev", dev, "root"];
                args.extend_from_slice(&tbf);
                run("tc", &args)?;
            }
        }
        *cur = Some(rate_bit);
        Ok(())
    }

    /// Removes shaping from every link.
    pub fn clear_rate(&self) -> Result<(), LabError> {
        let mut cur = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if cur.is_none() {
            return Ok(());
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let port = format!("p{i}");
            for (ns, dev) in [(h.as_str(), "eth0"), (self.switch.as_str(), port.as_str())] {
                run("tc", &["-n", ns, "qdisc", "del", "dev", dev, "root"])?;
            }
        }
        *cur = None;
        Ok(())
    }

    /// Keeps the namespaces after this value is dropped (for `up` commands); remove with [`Lab::teardown`].
    pub fn persist(mut self) {
        self.torn_down = true;
    }

    /// Tears the lab down now, reporting errors (Drop does the same silently).
    pub fn down(mut self) -> Result<(), LabError> {
        // Also for attached labs, which Drop leaves alone.
        self.torn_down = true;
        Lab::teardown(&self.config.name).map(|_| ())
    }

    /// Deletes every namespace of lab `name` (idempotent); returns the names deleted.
    pub fn teardown(name: &str) -> Result<Vec<String>, LabError> {
        let mut gone = Vec::new();
        for ns in list_netns()? {
            if belongs_to(name, &ns) {
                run("ip", &["netns", "del", &ns])?;
                gone.push(ns);
            }
        }
        Ok(gone)
    }

    /// Describes what exists of lab `name`.
    pub fn status(name: &str) -> Result<LabStatus, LabError> {
        let all = list_netns()?;
        let switch = all.contains(&switch_name(name));
        let mut hosts: Vec<(usize, String)> = all
            .into_iter()
            .filter(|ns| belongs_to(name, ns) && *ns != switch_name(name))
            .filter_map(|ns| {
                let i = ns.rsplit('h').next()?.parse().ok()?;
                Some((i, ns))
            })
            .collect();
        hosts.sort();
        let hosts = hosts
            .into_iter()
            .map(|(_, netns)| {
                let addr = run(
                    "ip",
                    &["-n", &netns, "-4", "-o", "addr", "show", "dev", "eth0"],
                )
                .ok()
                .and_then(|o| {
                    let w: Vec<&str> = o.split_whitespace().collect();
                    let pos = w.iter().position(|x| *x == "inet")?;
                    w.get(pos + 1)?.split('/').next()?.parse().ok()
                });
                let qdisc = run("tc", &["-n", &netns, "qdisc", "show", "dev", "eth0"])
                    .map(|o| o.lines().next().unwrap_or("").trim().to_string())
                    .unwrap_or_default();
                HostStatus { netns, addr, qdisc }
            })
            .collect();
        Ok(LabStatus {
            name: name.to_string(),
            switch,
            hosts,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = Lab::teardown(&self.config.name) {
                eprintln!(
                    "ferry-netlab: teardown of `{}` failed: {e}",
                    self.config.name
                );
            }
        }
    }
}

/// One host as found by [`Lab::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    /// Namespace name.
    pub netns: String,
    /// IPv4 address on eth0, if configured.
    pub addr: Option<Ipv4Addr>,
    /// First line of `tc qdisc show dev eth0`.
    pub qdisc: String,
}

/// What exists of a lab, from [`Lab::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabStatus {
    /// Lab name.
    pub name: String,
    /// Whether the bridge namespace exists.
    pub switch: bool,
    /// Host namespaces found, in index order.
    pub hosts: Vec<HostStatus>,
}

impl LabStatus {
    /// Whether nothing of the lab exists.
    pub fn is_empty(&self) -> bool {
        !self.switch && self.hosts.is_empty()
    }
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "lab `{}`: not running", self.name);
        }
        writeln!(
            f,
            "lab `{}`: switch {}, {} host(s)",
            self.name,
            if self.switch { "up" } else { "missing" },
            self.hosts.len()
        )?;
        for h in &self.hosts {
            let addr = h.addr.map_or("-".to_string(), |a| a.to_string());
            writeln!(f, "  {:<20} {:<12} {}", h.netns, addr, h.qdisc)?;
        }
        Ok(())
    }
}

impl fmt::Display for LabConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} hosts", self.name, self.hosts)?;
        if let Some(r) = self.rate_bit {
            write!(f, ", {}", format_rate(r))?;
        }
        if let Some(d) = self.delay {
            write!(f, ", {d:?} one-way delay")?;
        }
        if self.loss > 0.0 {
            write!(f, ", {}% loss (as stalls)", self.loss * 100.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong() {
        assert!(belongs_to("lab", "lab-sw"));
        assert!(belongs_to("lab", "lab-h0"));
        assert!(belongs_to("lab", "lab-h12"));
        assert!(!belongs_to("lab", "lab-h"));
        assert!(!belongs_to("lab", "lab-h1-sw"));
        assert!(!belongs_to("lab", "lab2-h1"));
        assert!(!belongs_to("lab", "other"));
    }

    #[test]
    fn config_checks() {
        assert!(LabConfig::default().validate().is_ok());
        let bad = |f: fn(&mut LabConfig)| {
            let mut c = LabConfig::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(bad(|c| c.hosts = 1));
        assert!(bad(|c| c.name = "a b".into()));
        assert!(bad(|c| c.name = String::new()));
        assert!(bad(|c| c.loss = 1.0));
        assert!(bad(|c| c.rate_bit = Some(10)));
    }

    #[test]
    fn tbf_sizes() {
        assert_eq!(tbf_params(1_000_000_000), (125_000, 3_125_000));
        assert_eq!(tbf_params(100_000_000), (12_500, 312_500));
        assert_eq!(tbf_params(1_000_000).0, 3028);
    }
}
