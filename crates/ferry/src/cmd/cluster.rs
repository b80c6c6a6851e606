//! `ferry cluster status`, `ferry host drain`, `ferry plan`: the cluster as its daemons see it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use ferry_daemon::api::types::{
    ApiError, ClusterInfo, DrainRequest, HostInfo, MigrationInfo, VmInfo,
};
use ferry_daemon::planner::{Plan, Prediction};
use ferry_daemon::DaemonClient;

use super::remote::{block_on, print_vms, DaemonSel};
use crate::size::human;

/// `ferry cluster ...`.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// A table of hosts (load, VMs, migrations in flight), their VMs and the migrations.
    Status(StatusArgs),
}

/// `ferry cluster status`.
#[derive(Args, Clone, Debug)]
pub struct StatusArgs {
    /// The cluster file (default: $FERRY_CLUSTER, else ~/.config/ferry/cluster.toml; without
    /// one, this host's daemon alone).
    #[arg(long)]
    pub cluster: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ferry host ...`.
#[derive(Subcommand)]
pub enum HostCommand {
    /// Empty a host by a deadline: the planner moves its VMs elsewhere.
    Drain(DrainArgs),
}

/// `ferry host drain`.
#[derive(Args, Clone, Debug)]
pub struct DrainArgs {
    /// The host to empty.
    pub host: String,
    /// Deadline, like 10m, 90s or 1h.
    #[arg(long, value_parser = parse_duration)]
    pub by: Duration,
    /// The cluster file.
    #[arg(long)]
    pub cluster: Option<std::path::PathBuf>,
}

/// `ferry plan`.
#[derive(Args, Clone, Debug)]
pub struct PlanArgs {
    /// Carry the plan out.
    #[arg(long)]
    pub apply: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub daemon: DaemonSel,
}

/// Parses `10m`, `90s`, `1h`, `2h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a duration (like 10m, 90s, 1h)"))?;
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("'{s}': unknown unit '{c}' (s, m, h or d)")),
        };
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!(
            "'{s}': the last number needs a unit (s, m, h or d)"
        ));
    }
    if total == 0 {
        return Err(format!("'{s}' is not a positive duration"));
    }
    Ok(Duration::from_secs(total))
}

/// One host as the status command saw it.
#[derive(serde::Serialize)]
struct HostView {
    name: String,
    host: Option<HostInfo>,
    vms: Vec<VmInfo>,
    migrations: Vec<MigrationInfo>,
    error: Option<String>,
}

async fn look(name: String, client: DaemonClient) -> HostView {
    let r = async {
        let host: HostInfo = client.get("/v1/hosts/self").await?;
        let vms: Vec<VmInfo> = client.get("/v1/vms").await?;
        let migrations: Vec<MigrationInfo> = client.get("/v1/migrations").await?;
        Ok::<_, ferry_daemon::client::ClientError>((host, vms, migrations))
    }
    .await;
    match r {
        Ok((host, vms, migrations)) => HostView {
            name: host.name.clone(),
            host: Some(host),
            vms,
            migrations,
            error: None,
        },
        Err(e) => HostView {
            name,
            host: None,
            vms: Vec::new(),
            migrations: Vec::new(),
            error: Some(e.to_string()),
        },
    }
}

/// `ferry cluster status`.
pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let sel = DaemonSel {
        host: None,
        cluster: a.cluster.clone(),
    };
    let cfg = sel.config()?;
    let mut targets = Vec::new();
    if cfg.hosts.is_empty() {
        targets.push(("this host".to_string(), cfg.target(None)?));
    }
    for name in cfg.hosts.keys() {
        targets.push((name.clone(), cfg.target(Some(name))?));
    }
    let (views, store): (Vec<HostView>, Option<ClusterInfo>) = block_on(async {
        let clients: Vec<(String, DaemonClient)> = targets
            .into_iter()
            .map(|(name, t)| {
                (
                    name,
                    DaemonClient::new(t).with_timeout(Duration::from_secs(5)),
                )
            })
            .collect();
        let mut store = None;
        for (_, c) in &clients {
            if let Ok(i) = c.get::<ClusterInfo>("/v1/cluster").await {
                store = Some(i);
                break;
            }
        }
        let calls = clients.into_iter().map(|(name, c)| look(name, c));
        Ok((futures_util::future::join_all(calls).await, store))
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "hosts": views, "store": store }))?
        );
    } else {
        print_status(&views);
        if let Some(s) = &store {
            print_store(s);
        }
    }
    Ok(if views.iter().any(|v| v.error.is_some()) {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_status(views: &[HostView]) {
    println!(
        "{:<10} {:<22} {:>4} {:>10} {:>6} {:>21} {:>10}",
        "HOST", "API", "VMS", "VM MEMORY", "CPU", "HOST MEMORY", "MIGRATIONS"
    );
    for v in views {
        match (&v.host, &v.error) {
            (Some(h), _) => {
                let l = &h.load;
                let (inn, out) = v.migrations.iter().fold((0, 0), |(i, o), m| {
                    if m.to == h.name {
                        (i + 1, o)
                    } else {
                        (i, o + 1)
                    }
                });
                println!(
                    "{:<10} {:<22} {:>4} {:>10} {:>5.0}% {:>21} {:>10}",
                    h.name,
                    h.api.clone().unwrap_or_else(|| "(local only)".into()),
                    l.vms,
                    human(l.vm_memory),
                    l.cpu_usage * 100.0,
                    format!("{} / {}", human(l.memory_used), human(l.memory_total)),
                    format!("{inn} in, {out} out"),
                );
            }
            (None, e) => println!(
                "{:<10} UNREACHABLE: {}",
                v.name,
                e.clone().unwrap_or_default()
            ),
        }
    }
    let vms: Vec<VmInfo> = views.iter().flat_map(|v| v.vms.clone()).collect();
    println!();
    if vms.is_empty() {
        println!("no VMs");
    } else {
        print_vms(&vms);
    }
    let mut migs: Vec<&MigrationInfo> = views.iter().flat_map(|v| v.migrations.iter()).collect();
    // A migration shows on both its hosts: list it once.
    migs.sort_by(|a, b| a.id.cmp(&b.id).then(b.bytes.cmp(&a.bytes)));
    migs.dedup_by(|a, b| a.id == b.id);
    println!();
    if migs.is_empty() {
        println!("no migrations in flight");
        return;
    }
    println!(
        "{:<20} {:<16} {:<8} {:<8} {:<10} {:<12} {:>10} {:>9}",
        "MIGRATION", "VM", "FROM", "TO", "STATE", "PHASE", "SENT", "ELAPSED"
    );
    for m in migs {
        println!(
            "{:<20} {:<16} {:<8} {:<8} {:<10} {:<12} {:>10} {:>8.1}s",
            m.id,
            m.vm,
            m.from,
            m.to,
            format!("{:?}", m.state).to_lowercase(),
            m.phase.clone().unwrap_or_else(|| "-".into()),
            human(m.bytes),
            m.elapsed_ms as f64 / 1e3
        );
    }
}

/// The cluster store's view: every host with its state and lease, every VM record.
fn print_store(s: &ClusterInfo) {
    println!();
    println!(
        "cluster store: leader {}",
        s.leader.clone().unwrap_or_else(|| "none".into())
    );
    println!(
        "{:<10} {:<20} {:<6} {:>4} {:>10} {:>6} {:>10}",
        "HOST", "STATE", "LEASE", "VMS", "VM MEMORY", "CPU", "MIGRATIONS"
    );
    for h in &s.hosts {
        println!(
            "{:<10} {:<20} {:<6} {:>4} {:>10} {:>5.0}% {:>10}",
            format!(
                "{}{}",
                h.name,
                if h.leader == Some(true) { "*" } else { "" }
            ),
            h.state.clone().unwrap_or_default(),
            if h.alive == Some(true) {
                "alive"
            } else {
                "dead"
            },
            h.load.vms,
            human(h.load.vm_memory),
            h.load.cpu_usage * 100.0,
            h.load.migrations_in_flight,
        );
    }
    println!();
    println!(
        "{:<16} {:<10} {:<22} {:>5} {:>10} {:<10}",
        "VM RECORD", "OWNER", "STATE", "EPOCH", "MEMORY", "CPU"
    );
    for v in &s.vms {
        println!(
            "{:<16} {:<10} {:<22} {:>5} {:>10} {:<10}",
            v.name,
            v.owner,
            v.state,
            v.epoch,
            human(v.memory),
            match v.cpu_restricted {
                Some(true) => "baseline",
                Some(false) => "host CPU",
                None => "-",
            }
        );
    }
}

fn prediction(p: &Prediction) -> String {
    format!(
        "{:.1} s / {:.0} ms / {}",
        p.total_ms / 1e3,
        p.downtime_ms,
        human(p.bytes as u64)
    )
}

/// A plan as a table.
pub fn print_plan(p: &Plan) {
    println!(
        "planner on {}: decided in {:.2} ms; learned model: {}",
        p.leader,
        p.decision_ms,
        if p.model_samples > 0 {
            format!("fitted on {} migrations", p.model_samples)
        } else {
            "not enough recorded migrations yet".into()
        }
    );
    if p.moves.is_empty() {
        println!("nothing to move");
    } else {
        println!(
            "{:<16} {:<10} {:<10} {:<12} {:<32} {:<32}",
            "VM", "FROM", "TO", "WHY", "FORMULA time / downtime / bytes", "LEARNED"
        );
        for m in &p.moves {
            println!(
                "{:<16} {:<10} {:<10} {:<12} {:<32} {:<32}",
                m.vm,
                m.from,
                m.to,
                serde_json::to_value(m.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                prediction(&m.formula),
                m.learned
                    .as_ref()
                    .map(prediction)
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    if !p.power_off.is_empty() {
        println!(
            "hosts consolidation would empty for power-off: {}",
            p.power_off.join(", ")
        );
    }
    for x in &p.in_flight {
        println!("in flight: {x}");
    }
    for x in &p.started {
        println!("started: {x}");
    }
    for x in &p.problems {
        println!("problem: {x}");
    }
}

async fn planner_call(
    client: &DaemonClient,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<()> {
    let (status, bytes) = client.raw(hyper::Method::POST, path, body).await?;
    if status.is_success() {
        if !bytes.is_empty() {
            println!("{}", String::from_utf8_lossy(&bytes));
        }
        return Ok(());
    }
    match serde_json::from_slice::<ApiError>(&bytes) {
        Ok(e) => bail!("{}", e.error),
        Err(_) => bail!("{}", String::from_utf8_lossy(&bytes)),
    }
}

/// `ferry host drain H --by D`.
pub fn drain(a: DrainArgs) -> anyhow::Result<ExitCode> {
    let sel = DaemonSel {
        host: Some(a.host.clone()),
        cluster: a.cluster.clone(),
    };
    let cfg = sel.config()?;
    // Ask the host's own daemon when the cluster file knows it, else this host's daemon.
    let target = if cfg.hosts.contains_key(&a.host) {
        cfg.target(Some(&a.host))?
    } else {
        cfg.target(None)?
    };
    let client = DaemonClient::new(target);
    let body = serde_json::to_vec(&DrainRequest {
        by_secs: a.by.as_secs(),
    })?;
    block_on(planner_call(
        &client,
        &format!("/v1/hosts/{}/drain", a.host),
        Some(body),
    ))?;
    println!(
        "host {} drains: it takes no new VMs, and the planner moves its VMs elsewhere by {} s from now \
         (`ferry plan` shows the moves, `ferry cluster status` where they are)",
        a.host,
        a.by.as_secs()
    );
    Ok(ExitCode::SUCCESS)
}

/// `ferry plan [--apply]`.
pub fn plan(a: PlanArgs) -> anyhow::Result<ExitCode> {
    let client = a.daemon.client()?;
    let plan: Plan = block_on(async {
        let (status, bytes) = if a.apply {
            client
                .raw(hyper::Method::POST, "/v1/plan/apply", Some(b"{}".to_vec()))
                .await?
        } else {
            client.raw(hyper::Method::GET, "/v1/plan", None).await?
        };
        if status.is_success() {
            return Ok(serde_json::from_slice::<Plan>(&bytes)?);
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(e) => bail!("{}", e.error),
            Err(_) => bail!("{}", String::from_utf8_lossy(&bytes)),
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print_plan(&plan);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("0m").is_err());
        assert!(parse_duration("m").is_err());
    }
}
