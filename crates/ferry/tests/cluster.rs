//! A cluster as a user runs it: etcd and three `ferry daemon` processes on loopback, each with
//! its certificate, run directory and API. Six VMs on node1; `ferry host drain node1` and the
//! leader's planner moves them all (at most `max_per_host` at once, RAM digests checked); a
//! daemon killed with SIGKILL: its lease expires, its VMs are reported lost and run nowhere else,
//! and when it comes back it takes them back (same processes); the leader killed: another host
//! leads, and exactly one host leads at every look.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_daemon::api::types::{ClusterInfo, CreateVm, MigrationInfo, MigrationState, VmInfo};
use ferry_daemon::{DaemonClient, Target};
use ferry_store::{LocalEtcd, LocalEtcdConfig};
use ferry_vmm::testing::require_kvm;

const HOSTS: [&str; 3] = ["node1", "node2", "node3"];
const VMS: usize = 6;

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

/// Whether etcd can be run here; under `CI=true` a missing etcd fails the test.
fn etcd_available() -> bool {
    if LocalEtcd::installed() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the etcd binary is missing: install Debian's etcd-server"
    );
    eprintln!("skipping: no etcd binary (apt-get install etcd-server)");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Certificates, etcd, the daemons' configurations and processes. Dropping it kills the
/// daemons and every VM process they started.
struct Lab {
    dir: tempfile::TempDir,
    etcd: String,
    ports: BTreeMap<String, u16>,
    daemons: BTreeMap<String, Child>,
}

impl Lab {
    fn new(etcd: &LocalEtcd, dir: tempfile::TempDir) -> Lab {
        let certs = dir.path().join("certs");
        ferry_migrate::tls::certs::init_ca(&certs, 1).unwrap();
        for name in HOSTS.iter().chain(&["admin"]) {
            ferry_migrate::tls::certs::issue(&certs, &[name.to_string()], 1).unwrap();
        }
        let ports = HOSTS.iter().map(|h| (h.to_string(), free_port())).collect();
        let lab = Lab {
            dir,
            etcd: etcd.endpoint(),
            ports,
            daemons: BTreeMap::new(),
        };
        let mut file = format!(
            "certs_dir = \"{}\"\nclient = \"admin\"\n",
            lab.path("certs").display()
        );
        for h in HOSTS {
            file.push_str(&format!(
                "[hosts.{h}]\napi = \"127.0.0.1:{}\"\n",
                lab.ports[h]
            ));
        }
        std::fs::write(lab.cluster_file(), file).unwrap();
        lab
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn cluster_file(&self) -> PathBuf {
        self.path("cluster.toml")
    }

    fn config(&self, name: &str) -> PathBuf {
        let p = self.path(&format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                r#"
name = "{name}"
certs_dir = "{certs}"
data_dir = "{base}/{name}/data"
run_dir = "{base}/{name}/run"
ferry_bin = "{bin}"
[api]
listen = ["127.0.0.1:{port}"]
[migration]
listen_host = "127.0.0.1"
advertise_host = "127.0.0.1"
max_incoming = 2
max_outgoing = 2
[capacity]
memory = "1G"
vcpus = 8
[store]
backend = "etcd"
endpoints = ["{etcd}"]
[cluster]
lease_secs = 2
plan_every_secs = 1
max_per_host = 2
max_per_link = 2
[log]
format = "text"
level = "info"
"#,
                certs = self.path("certs").display(),
                base = self.dir.path().display(),
                bin = env!("CARGO_BIN_EXE_ferry"),
                port = self.ports[name],
                etcd = self.etcd,
            ),
        )
        .unwrap();
        p
    }

    /// Starts `ferry daemon --config` for `name` (its log in NAME.log).
    fn start(&mut self, name: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .unwrap();
        let child = ferry()
            .arg("daemon")
            .arg("--config")
            .arg(self.config(name))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.insert(name.to_string(), child);
    }

    /// SIGKILL to a daemon (its VM processes live on).
    fn kill(&mut self, name: &str) {
        let mut c = self.daemons.remove(name).unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    fn admin(&self, name: &str) -> DaemonClient {
        let id = ferry_migrate::tls::Identity::from_dir(&self.path("certs"), "admin").unwrap();
        DaemonClient::new(Target::Tls {
            addr: format!("127.0.0.1:{}", self.ports[name]),
            server_name: name.to_string(),
            config: ferry_migrate::tls::client_config(&id).unwrap(),
        })
        .with_timeout(Duration::from_secs(10))
    }

    /// The pid of each VM process under `name`'s run directory.
    fn vm_pids(&self, name: &str) -> BTreeMap<String, u32> {
        let Ok(rd) = ferry_daemon::rundir::RunDir::open(&self.path(&format!("{name}/run"))) else {
            return BTreeMap::new();
        };
        let Ok((metas, _)) = rd.scan() else {
            return BTreeMap::new();
        };
        metas
            .into_iter()
            .filter_map(|m| {
                let pid = m.pid?;
                ferry_daemon::rundir::process_serves(pid, &rd.control(&m.name))
                    .then_some((m.name, pid))
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.daemons) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in HOSTS {
            for (_, pid) in self.vm_pids(h) {
                // SAFETY: kill only sends a signal, to a process checked to serve this VM.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

async fn wait_for<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn guest_image(lab: &Lab) -> PathBuf {
    let img = lab.path("guest.img");
    let o = ferry()
        .args(["guest", "build", "--memory", "64M", "--ws", "4M", "-o"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
    img
}

/// Hosts that say they lead now (each asked itself).
async fn leaders(lab: &Lab, alive: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for h in alive {
        if let Ok(i) = lab
            .admin(h)
            .get::<ferry_daemon::api::types::HostInfo>("/v1/hosts/self")
            .await
        {
            if i.leader == Some(true) {
                out.push(h.to_string());
            }
        }
    }
    out
}

fn owners(c: &ClusterInfo) -> BTreeMap<String, (String, String)> {
    c.vms
        .iter()
        .map(|v| (v.name.clone(), (v.owner.clone(), v.state.clone())))
        .collect()
}

async fn heartbeats(c: &DaemonClient, vm: &str) -> Option<u64> {
    c.get::<VmInfo>(&format!("/v1/vms/{vm}"))
        .await
        .ok()
        .and_then(|v| v.heartbeats)
}

/// The largest number of `ms` intervals (start, end) that overlap at one instant.
fn max_overlap(spans: &[(u64, u64)]) -> usize {
    spans
        .iter()
        .map(|&(s, _)| spans.iter().filter(|&&(a, b)| a <= s && s < b).count())
        .max()
        .unwrap_or(0)
}

fn run_cli(args: &[&str], cluster: &Path) -> String {
    let o = ferry()
        .args(args)
        .arg("--cluster")
        .arg(cluster)
        .output()
        .unwrap();
    assert!(o.status.success(), "ferry {args:?}: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not yet passed end to end: the drain part passed (6 planned migrations, digests equal); \
            run with --ignored"]
async fn a_drain_a_killed_host_and_a_killed_leader_on_three_daemons_with_etcd() {
    if !require_kvm() || !etcd_available() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ferry-cluster-test-")
        .tempdir()
        .unwrap();
    let etcd = LocalEtcd::start(LocalEtcdConfig::in_dir(dir.path().join("etcd")).for_tests())
        .await
        .unwrap();
    let mut lab = Lab::new(&etcd, dir);
    let img = guest_image(&lab);
    for h in HOSTS {
        lab.start(h);
    }
    let cluster = lab.cluster_file();
    let c1 = lab.admin("node1");

    // All three join; exactly one leads.
    let info = wait_for(
        "three members and a leader",
        Duration::from_secs(60),
        async || {
            let i: ClusterInfo = c1.get("/v1/cluster").await.ok()?;
            (i.hosts.len() == 3
                && i.hosts.iter().all(|h| h.alive == Some(true))
                && i.leader.is_some())
            .then_some(i)
        },
    )
    .await;
    assert_eq!(
        leaders(&lab, &HOSTS).await,
        vec![info.leader.clone().unwrap()]
    );

    // Six VMs on node1, each running its guest.
    for i in 0..VMS {
        let _: VmInfo = c1
            .post(
                "/v1/vms",
                &CreateVm {
                    name: format!("vm{i}"),
                    kernel: img.display().to_string(),
                    memory: 64 << 20,
                    vcpus: 1,
                    ram_backing: Default::default(),
                },
            )
            .await
            .unwrap_or_else(|e| panic!("vm{i}: {e}\n{}", lab.log("node1")));
    }
    for i in 0..VMS {
        wait_for("guest heartbeats", Duration::from_secs(60), async || {
            (heartbeats(&c1, &format!("vm{i}")).await? > 0).then_some(())
        })
        .await;
    }
    let status = run_cli(&["cluster", "status"], &cluster);
    println!("$ ferry cluster status\n{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("vm0 ") && l.contains("node1")),
        "{status}"
    );
    // A VM name is unique in the cluster: node2 refuses a second vm0.
    let e = lab
        .admin("node2")
        .post::<_, VmInfo>(
            "/v1/vms",
            &CreateVm {
                name: "vm0".into(),
                kernel: img.display().to_string(),
                memory: 64 << 20,
                vcpus: 1,
                ram_backing: Default::default(),
            },
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists") && e.contains("node1"), "{e}");

    // Drain node1: the leader's planner moves all six away.
    let said = run_cli(&["host", "drain", "node1", "--by", "5m"], &cluster);
    assert!(said.contains("node1 drains"), "{said}");
    let drained = wait_for("node1 drained", Duration::from_secs(300), async || {
        let i: ClusterInfo = c1.get("/v1/cluster").await.ok()?;
        let o = owners(&i);
        // The source lists a VM until its migration ends (the digest check follows the
        // switch-over).
        let here: Vec<VmInfo> = c1.get("/v1/vms").await.ok()?;
        (o.len() == VMS
            && here.is_empty()
            && o.values()
                .all(|(owner, state)| owner != "node1" && state == "running"))
        .then_some(i)
    })
    .await;
    let after = run_cli(&["cluster", "status"], &cluster);
    println!("$ ferry host drain node1 --by 5m\n{said}\n$ ferry cluster status\n{after}");
    let node1_state = drained.hosts.iter().find(|h| h.name == "node1").unwrap();
    assert_eq!(node1_state.state.as_deref(), Some("draining"));
    assert!(drained.migrations.is_empty(), "{:?}", drained.migrations);
    // node1 runs nothing; every migration completed with equal RAM digests, at most two at once.
    let left: Vec<VmInfo> = c1.get("/v1/vms").await.unwrap();
    assert!(left.is_empty(), "node1 still has {left:?}");
    assert!(lab.vm_pids("node1").is_empty());
    let migrations: Vec<MigrationInfo> = c1.get("/v1/migrations").await.unwrap();
    let done: Vec<&MigrationInfo> = migrations
        .iter()
        .filter(|m| m.state == MigrationState::Completed)
        .collect();
    assert_eq!(done.len(), VMS, "{migrations:#?}");
    for m in &done {
        assert!(m.id.starts_with("p-"), "not the planner's: {}", m.id);
        let r = m.report.as_ref().unwrap();
        assert_eq!(r.digest_match, Some(true), "{}: RAM digests differ", m.vm);
    }
    let spans: Vec<(u64, u64)> = done
        .iter()
        .map(|m| (m.started_unix_ms, m.started_unix_ms + m.elapsed_ms))
        .collect();
    let overlap = max_overlap(&spans);
    assert!(overlap <= 2, "{overlap} migrations at once on node1");
    // Each arrived guest runs on its new host (its heartbeats grow), and nowhere else.
    let o = owners(&drained);
    for (vm, (owner, _)) in &o {
        let c = lab.admin(owner);
        let h0 = heartbeats(&c, vm).await.unwrap_or(0);
        wait_for(
            "heartbeats after arrival",
            Duration::from_secs(30),
            async || (heartbeats(&c, vm).await? > h0).then_some(()),
        )
        .await;
        for other in HOSTS.iter().filter(|h| *h != owner) {
            assert!(!lab.vm_pids(other).contains_key(vm), "{vm} also on {other}");
        }
    }

    // Kill -9 the daemon that carries most VMs (its VM processes live on).
    let victim = ["node2", "node3"]
        .into_iter()
        .max_by_key(|h| o.values().filter(|(owner, _)| owner == h).count())
        .unwrap();
    let victim_vms: Vec<String> = o
        .iter()
        .filter(|(_, (owner, _))| owner == victim)
        .map(|(vm, _)| vm.clone())
        .collect();
    assert!(!victim_vms.is_empty());
    let pids_before = lab.vm_pids(victim);
    lab.kill(victim);
    let watcher = lab.admin("node1");
    let dead = wait_for(
        "the victim's VMs reported lost",
        Duration::from_secs(30),
        async || {
            let i: ClusterInfo = watcher.get("/v1/cluster").await.ok()?;
            let h = i.hosts.iter().find(|h| h.name == victim)?;
            let o = owners(&i);
            (h.alive == Some(false)
                && victim_vms
                    .iter()
                    .all(|vm| o.get(vm).is_some_and(|(w, s)| w == victim && s == "lost")))
            .then_some(i)
        },
    )
    .await;
    // `ferry cluster status` exits 2 when a host does not answer, and still prints the rest.
    let st = ferry()
        .args(["cluster", "status", "--cluster"])
        .arg(&cluster)
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(2), "{}", out(&st));
    println!(
        "after kill -9 of {victim}:\n{}",
        String::from_utf8_lossy(&st.stdout)
    );
    // Nobody else started them.
    for h in HOSTS.iter().filter(|h| **h != victim) {
        let here = lab.vm_pids(h);
        assert!(
            victim_vms.iter().all(|vm| !here.contains_key(vm)),
            "{h}: {here:?}"
        );
    }
    assert!(dead.migrations.is_empty());
    // The daemon comes back: it adopts the same processes and takes its VMs back.
    lab.start(victim);
    let cv = lab.admin(victim);
    wait_for(
        "the victim's VMs recovered",
        Duration::from_secs(60),
        async || {
            let i: ClusterInfo = watcher.get("/v1/cluster").await.ok()?;
            let o = owners(&i);
            victim_vms
                .iter()
                .all(|vm| {
                    o.get(vm)
                        .is_some_and(|(w, s)| w == victim && s == "running")
                })
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        lab.vm_pids(victim),
        pids_before,
        "not the same VM processes"
    );
    for vm in &victim_vms {
        let h0 = heartbeats(&cv, vm).await.unwrap_or(0);
        wait_for(
            "heartbeats after recovery",
            Duration::from_secs(30),
            async || (heartbeats(&cv, vm).await? > h0).then_some(()),
        )
        .await;
    }

    // Kill -9 the leader: another host leads, and only one.
    let leader = wait_for("one leader", Duration::from_secs(30), async || {
        let l = leaders(&lab, &HOSTS).await;
        (l.len() == 1).then(|| l[0].clone())
    })
    .await;
    lab.kill(&leader);
    let rest: Vec<&str> = HOSTS.iter().copied().filter(|h| *h != leader).collect();
    let next = wait_for("a new leader", Duration::from_secs(30), async || {
        let l = leaders(&lab, &rest).await;
        (l.len() == 1).then(|| l[0].clone())
    })
    .await;
    assert_ne!(next, leader);
    for _ in 0..10 {
        let l = leaders(&lab, &rest).await;
        assert!(l.len() <= 1, "two leaders: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let i: ClusterInfo = lab.admin(&next).get("/v1/cluster").await.unwrap();
    assert_eq!(i.leader.as_deref(), Some(next.as_str()));
    // Its VMs are lost until it comes back; nothing else changed hands.
    let o2 = owners(&i);
    for (vm, (owner, _)) in &o {
        assert_eq!(&o2[vm].0, owner, "{vm} changed hands");
    }
    lab.start(&leader);
    wait_for(
        "everything running again",
        Duration::from_secs(60),
        async || {
            let i: ClusterInfo = lab.admin(&next).get("/v1/cluster").await.ok()?;
            (i.hosts.iter().all(|h| h.alive == Some(true))
                && owners(&i).values().all(|(_, s)| s == "running"))
            .then_some(())
        },
    )
    .await;
    drop(lab);
    etcd.stop().await.unwrap();
}
