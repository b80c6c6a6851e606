//! `ferry migrate`: asks a VM host to migrate its VM, shows progress, prints the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ferry_host::outcome::location_text;
use ferry_host::{
    ClientError, ControlClient, Endpoint, HostEvent, MigrateExit, MigrateRequest, VmLocation,
};
use ferry_migrate::{Event, Report, Strategy};
use ferry_wire::codec::Compression;
use indicatif::{ProgressBar, ProgressStyle};

use crate::size::human;

/// `ferry migrate`.
#[derive(Args, Clone, Debug)]
#[command(after_help = MigrateExit::HELP)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["name", "vm"])))]
pub struct MigrateArgs {
    /// The VM to move, by name: its daemon migrates it to the daemon of the host --to names
    /// (hosts and their API addresses come from the cluster file).
    pub name: Option<String>,
    /// Or: the control socket of a VM host process (printed by `ferry vm run`); --to is then the
    /// address printed by `ferry vm receive`.
    #[arg(long)]
    pub vm: Option<PathBuf>,
    /// Destination: a host name (with a VM name), or an address as printed by `ferry vm receive`
    /// (host:port, or unix:PATH on the same host; with --vm).
    #[arg(long)]
    pub to: String,
    /// The VM's host (default: found by asking this host's daemon, then every host of the
    /// cluster file).
    #[arg(long, requires = "name")]
    pub from: Option<String>,
    /// The cluster file (default: $FERRY_CLUSTER, else ~/.config/ferry/cluster.toml).
    #[arg(long, requires = "name")]
    pub cluster: Option<PathBuf>,
    /// stop-and-copy; precopy; postcopy (run on the destination at once, pages follow); hybrid
    /// (a few pre-copy rounds, then post-copy); auto (pre-copy, switching to post-copy when rounds stop
    /// shrinking).
    #[arg(long, default_value = "auto")]
    pub strategy: Strategy,
    /// Pause the guest may see at switch-over (ms); pre-copy keeps copying until the rest fits.
    #[arg(long, default_value_t = 10)]
    pub downtime: u64,
    /// Parallel connections, 1-64 (default: chosen once the first connection has timed the link:
    /// enough for the TCP windows to cover the link, at most one per core; at least 2 for
    /// strategies that may end in post-copy, so requested pages get a connection of their own).
    #[arg(long)]
    pub channels: Option<u16>,
    /// Page compression: off, lz4, zstd, zstd:LEVEL, adaptive.
    #[arg(long, default_value = "adaptive")]
    pub compression: Compression,
    /// Live rounds at most before switching over anyway.
    #[arg(long, default_value_t = 30)]
    pub max_rounds: u32,
    /// Skip the RAM digest comparison after switch-over.
    #[arg(long)]
    pub no_verify: bool,
    /// Bandwidth limit over all channels: bytes/s like 100M, or bits/s like 1gbit (default: none).
    /// Change it while the migration runs with `ferry vm bandwidth`.
    #[arg(long, value_parser = crate::size::parse_rate, default_value = "unlimited")]
    pub max_bandwidth: u64,
    /// Name the destination's certificate must carry (default: the host part of --to).
    #[arg(long)]
    pub tls_name: Option<String>,
    /// Print the final report as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Finish a post-copy whose link failed: reconnect to the same destination (still waiting,
    /// with the guest paused) and send the pages it lacks; the guest then runs there again.
    #[arg(long)]
    pub recover: bool,
    /// Seconds the source host may stay silent (it reports progress at least every second) before
    /// this command gives up on it.
    #[arg(long, default_value_t = 15)]
    pub deadline: u64,
}

impl MigrateArgs {
    /// The request these flags make of a VM host process.
    pub fn request(&self, to: Endpoint) -> MigrateRequest {
        MigrateRequest {
            to,
            strategy: self.strategy,
            downtime_ms: self.downtime,
            channels: self
                .channels
                .unwrap_or_else(|| default_channels(self.strategy)),
            compression: self.compression,
            verify: !self.no_verify,
            max_rounds: self.max_rounds,
            tls_name: self.tls_name.clone(),
            max_bandwidth: self.max_bandwidth,
            recover: self.recover,
        }
    }
}

/// Sends a migration request with a progress bar; returns the report.
pub fn request_migration(
    client: &ControlClient,
    req: MigrateRequest,
    show: bool,
) -> Result<Report, ClientError> {
    let bar = if show {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} pages  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    // Without a terminal the bar draws nothing, and its println neither: write the lines out.
    let say = |line: String| {
        if show && bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let report = client.migrate(req, &mut |e| match e {
        HostEvent::Migration(Event::Phase { phase }) => {
            bar.set_message(format!("phase: {}", serde_plain(phase)))
        }
        HostEvent::Migration(Event::Progress {
            round,
            done,
            total,
            bytes,
        }) => {
            bar.set_length(*total);
            bar.set_position(*done);
            bar.set_message(format!("round {round} ({})", human(*bytes)));
        }
        HostEvent::Migration(Event::Adapt { what }) => say(format!("  adapt: {what}")),
        HostEvent::Migration(Event::Round(r)) => say(format!(
            "  round {:>2}: {:>7} pages in {:>6.1} ms, guest dirtied {} meanwhile",
            r.round,
            r.pages,
            r.seconds * 1e3,
            r.dirtied
        )),
        HostEvent::Keepalive { .. } => {}
    });
    bar.finish_and_clear();
    report
}

/// A unit enum's serde name (`live-copy`).
fn serde_plain(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Where the VM is after a failed migration request, as far as this client can tell.
pub fn failure_location(e: &ClientError) -> Option<VmLocation> {
    match e {
        // The host answered: it says where the VM is.
        ClientError::Host(r) => r.vm,
        // Nothing was asked of any host.
        ClientError::Connect { .. } => None,
        // The request went out and the host died, went silent or spoke another protocol: the
        // migration may have run, or may still be running.
        _ => Some(VmLocation::Unknown),
    }
}

/// Prints why a migration failed and where the VM is; the exit code for it.
pub fn report_failure(e: &ClientError) -> ExitCode {
    eprintln!("ferry: error: {}", ferry_host::outcome::describe(e));
    let vm = failure_location(e);
    if let Some(vm) = vm {
        eprintln!("ferry: {}", location_text(vm));
    }
    ExitCode::from(MigrateExit::for_location(vm).code())
}

/// The largest pause the guest saw over a whole migration, from its heartbeat or progress bytes
/// on both hosts: the largest of the source's gap since the migration started, the switch-over gap
/// and the destination's gaps after it. With where it was, in words.
pub fn largest_guest_pause(r: &Report) -> Option<(f64, &'static str)> {
    let ms = |ns: u64| ns as f64 / 1e6;
    let candidates = [
        r.source_max_gap_ms.map(|g| (g, "before the switch-over")),
        r.guest_observed
            .map(|g| (ms(g.gap_ns), "at the switch-over")),
        r.guest_observed
            .map(|g| (ms(g.after_max_gap_ns), "after the switch-over")),
    ];
    candidates
        .into_iter()
        .flatten()
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// Prints a report for people.
pub fn print_report(r: &Report) {
    let guest = match (largest_guest_pause(r), r.guest_observed) {
        (None, _) => "not measured (the guest sends no heartbeat or progress bytes)".to_string(),
        (Some((g, at)), observed) => {
            let switch = observed.map_or("not measured".to_string(), |o| {
                format!(
                    "{:.2} ms (heartbeat sequence {})",
                    o.gap_ns as f64 / 1e6,
                    if o.sequence_continues {
                        "continues"
                    } else {
                        "BROKEN"
                    }
                )
            });
            format!("{g:.2} ms largest pause, {at}; switch-over gap {switch}")
        }
    };
    println!(
        "strategy            {} (used: {})",
        r.strategy, r.strategy_used
    );
    println!("guest RAM           {}", human(r.ram_bytes));
    println!("transport           {}", r.transport);
    println!("channels            {}", r.channels);
    println!("total time          {:.1} ms", r.total_ms);
    println!("downtime (engine)   {:.2} ms", r.downtime_ms);
    println!("downtime (guest)    {guest}");
    if let Some(g) = r.source_max_gap_ms {
        println!("largest pause before switch-over (guest)  {g:.2} ms");
    }
    if let Some(g) = r.guest_observed {
        println!(
            "largest pause after switch-over (guest)   {:.2} ms",
            g.after_max_gap_ns as f64 / 1e6
        );
    }
    println!("rounds              {}", r.rounds.len());
    println!("pages sent          {}", r.pages_sent);
    println!(
        "bytes on the wire   {} ({:.2} x RAM)",
        human(r.bytes_sent),
        r.bytes_sent as f64 / r.ram_bytes.max(1) as f64
    );
    println!("throughput          {:.0} MB/s", r.throughput_mbps);
    if r.postcopy_pages > 0 {
        println!(
            "post-copy           {} pages after the switch, {} on demand, done in {:.1} ms",
            r.postcopy_pages, r.postcopy_requests, r.postcopy_ms
        );
    }
    if r.max_throttle > 0 {
        println!("max throttle        {}%", r.max_throttle);
    }
    println!(
        "RAM digest          {}",
        match r.digest_match {
            Some(true) => format!("equal on both sides ({})", r.source_digest),
            Some(false) => "DIFFERENT".into(),
            None if r.strategy_used == ferry_migrate::source::HANDOVER => {
                "one shared copy (handed over, not copied: nothing to compare)".into()
            }
            None => "not checked".into(),
        }
    );
}

/// Runs `ferry migrate`.
pub fn run(a: MigrateArgs) -> anyhow::Result<ExitCode> {
    let Some(vm) = &a.vm else {
        return run_on_daemons(&a);
    };
    let to: Endpoint =
        a.to.parse()
            .map_err(|e: String| anyhow::anyhow!("--to: {e}"))?;
    let client = ControlClient::new(vm).with_deadline(Duration::from_secs(a.deadline.max(2)));
    let report = match request_migration(&client, a.request(to), !a.json) {
        Ok(r) => r,
        Err(e) => return Ok(report_failure(&e)),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::from(if report.digest_match == Some(false) {
        MigrateExit::IntegrityFailed.code()
    } else {
        MigrateExit::Migrated.code()
    }))
}

/// Channels when the user names none: 0, the engine chooses from the link (parallelism.rs).
pub fn default_channels(_strategy: Strategy) -> u16 {
    0
}

/// `ferry migrate VM --to HOST`: through the daemons.
fn run_on_daemons(a: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let name = a.name.as_deref().unwrap_or_default();
    if a.recover {
        anyhow::bail!(
            "--recover works on a VM host process (--vm SOCK); a daemon's VM is recovered with \
             `ferry migrate --vm RUN_DIR/vms/{name}/control.sock --recover --to ADDR` on its host"
        );
    }
    let mut req = ferry_daemon::api::types::StartMigration::new(name, a.to.as_str());
    req.strategy = a.strategy.to_string();
    req.downtime_ms = a.downtime;
    req.max_bandwidth = a.max_bandwidth;
    req.channels = a.channels.unwrap_or_else(|| default_channels(a.strategy));
    req.compression = a.compression.to_string();
    req.verify = !a.no_verify;
    req.max_rounds = a.max_rounds;
    crate::cmd::remote::migrate(crate::cmd::remote::DaemonMigration {
        daemon: &crate::cmd::remote::DaemonSel {
            host: a.from.clone(),
            cluster: a.cluster.clone(),
        },
        vm: name,
        to: &a.to,
        request: req,
        json: a.json,
    })
}

#[cfg(test)]
mod pause_tests {
    use ferry_migrate::{GuestObserved, Report};

    #[test]
    fn the_headline_is_the_largest_pause_of_the_whole_migration() {
        let mut r = Report {
            source_max_gap_ms: Some(24.99),
            guest_observed: Some(GuestObserved {
                gap_ns: 6_650_000,
                sequence_continues: true,
                after_max_gap_ns: 1_000_000,
            }),
            ..Report::default()
        };
        // Issue 12: the switch-over gap was 6.65 ms, a 24.99 ms pause came before it.
        assert_eq!(
            super::largest_guest_pause(&r),
            Some((24.99, "before the switch-over"))
        );
        r.source_max_gap_ms = Some(2.0);
        assert_eq!(
            super::largest_guest_pause(&r),
            Some((6.65, "at the switch-over"))
        );
        r.guest_observed = Some(GuestObserved {
            after_max_gap_ns: 180_000_000,
            ..r.guest_observed.unwrap()
        });
        assert_eq!(
            super::largest_guest_pause(&r),
            Some((180.0, "after the switch-over"))
        );
        assert_eq!(super::largest_guest_pause(&Report::default()), None);
    }
}
