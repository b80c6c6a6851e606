//! `ferry demo`: a destination and a source as separate processes on loopback, a guest writing
//! memory at full speed, one live migration, and a report with an integrity verdict.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use ferry_guest::{Entropy, GuestConfig, Heartbeat, Pattern, Rate, WriteSize};
use ferry_host::{MigrateExit, MigrateRequest};
use ferry_migrate::Strategy;

use crate::cmd::hosts;
use crate::cmd::migrate::{largest_guest_pause, print_report, report_failure, request_migration};
use crate::size::{human, parse_size};

/// `ferry demo`.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Guest RAM.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory: u64,
    /// Working set the guest writes over (full-page writes at full speed).
    #[arg(long = "ws", default_value = "128M", value_parser = parse_size)]
    pub working_set: u64,
    /// Which pages the guest writes: random, sequential, mixed or hotcold.
    #[arg(long, default_value = "random")]
    pub pattern: Pattern,
    /// What the guest writes to COM1 (see `ferry guest build --help`). The default, a progress byte
    /// per 1024 pages written, shows every stretch in which the guest made no progress, slow writes
    /// included; a time-driven heartbeat (time:1000) keeps ticking while they crawl.
    #[arg(long, default_value = "pages:1024")]
    pub heartbeat: Heartbeat,
    /// Strategy (auto is ferry's best: pre-copy that throttles a guest that will not converge).
    #[arg(long, default_value = "auto")]
    pub strategy: Strategy,
    /// Parallel channels (default: chosen from the link and the cores, as `ferry migrate` does).
    #[arg(long)]
    pub channels: Option<u16>,
    /// Seconds the guest runs before the migration starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Same host (a VMM upgrade or restart): the destination listens on a Unix socket and takes the
    /// guest's RAM as a file descriptor, so nothing is copied.
    #[arg(long)]
    pub same_host: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep the work directory (image, logs) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// Runs the demo.
pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    // A private directory (mode 0700, unpredictable name): it holds the demo's CA key.
    let dir = tempfile::Builder::new().prefix("ferry-demo-").tempdir()?;
    let result = demo(&a, dir.path());
    if a.keep || !matches!(result, Ok(ref c) if *c == ExitCode::SUCCESS) {
        eprintln!(
            "ferry demo: work directory kept at {}",
            dir.keep().display()
        );
    }
    result
}

fn demo(a: &DemoArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let say = |s: String| {
        if !a.json {
            println!("{s}");
        }
    };
    let cfg = GuestConfig {
        memory: a.memory,
        working_set: a.working_set,
        pattern: a.pattern,
        entropy: Entropy::Random,
        write_size: WriteSize::Page,
        rate: Rate::Unlimited,
        heartbeat: a.heartbeat,
        ..GuestConfig::default()
    };
    let image = dir.join("guest.img");
    std::fs::write(&image, ferry_guest::build_image(&cfg)?)?;
    let beat = match a.heartbeat {
        Heartbeat::Pages { every } => format!("a progress byte per {every} pages written"),
        Heartbeat::Time { us } => format!("a time-driven heartbeat every {us} us"),
        Heartbeat::Dots { every } => format!("an ASCII '.' per {every} pages (console text)"),
        Heartbeat::None => "nothing on COM1".into(),
    };
    say(format!(
        "guest: {} RAM, {} full-page writes over {} at full speed, {beat}",
        human(a.memory),
        a.pattern,
        human(a.working_set)
    ));

    // Like a real cluster: a CA, one certificate per host, mutual TLS on every channel. On one host,
    // a Unix socket (mode 0600) and RAM handed over as a file.
    let certs = if a.same_host {
        None
    } else {
        Some(hosts::make_certs(dir)?)
    };
    let listen = if a.same_host {
        format!("unix:{}", dir.join("migrate.sock").display())
    } else {
        "127.0.0.1:0".into()
    };
    let mut dst = hosts::destination(
        dir,
        &listen,
        true,
        certs.as_ref().map(|c| c.destination.as_path()),
    )?;
    let addr = dst
        .listen()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the destination printed no address"))?;
    say(format!(
        "destination host: process {} listening on {addr}",
        dst.pid()
    ));
    let mut src = hosts::source(
        dir,
        &image,
        a.memory,
        certs.as_ref().map(|c| c.source.as_path()),
        a.same_host,
    )?;
    let t = Instant::now();
    let booted = src.wait_guest("the guest to start", Duration::from_secs(60), |g| {
        g.ferry_guest && g.iterations > 0 && (g.heartbeats > 0 || a.heartbeat == Heartbeat::None)
    })?;
    say(format!(
        "source host: process {}, guest running after {:.0} ms ({} page writes so far)",
        src.pid(),
        t.elapsed().as_secs_f64() * 1e3,
        booted.iterations
    ));
    std::thread::sleep(Duration::from_secs_f64(a.warmup));
    let before = src.guest()?;
    say(format!("migrating with strategy {} ...", a.strategy));
    let req = MigrateRequest {
        strategy: a.strategy,
        channels: a
            .channels
            .unwrap_or_else(|| crate::cmd::migrate::default_channels(a.strategy)),
        ..MigrateRequest::new(addr.clone())
    };
    let report = match request_migration(src.client(), req, !a.json) {
        Ok(r) => r,
        Err(e) => return Ok(report_failure(&e)),
    };
    match src.wait(Duration::from_secs(10)) {
        Some(s) if s.success() => {}
        other => bail!(
            "source did not exit cleanly after the migration ({other:?}): {}",
            src.log_tail(5)
        ),
    }
    // The guest goes on at the destination: its counters grow past where the source stopped.
    std::thread::sleep(Duration::from_millis(300));
    let after = dst.guest()?;
    let verify = dst.client().verify()?;
    dst.stop(Duration::from_secs(5));

    let continues = after.iterations > before.iterations
        && (after.heartbeats > before.heartbeats || a.heartbeat == Heartbeat::None);
    // A guest without heartbeat bytes (dots, none) has no sequence to check: it is not a failure.
    let seq_ok = match report.guest_observed {
        Some(g) => g.sequence_continues,
        None => !matches!(
            a.heartbeat,
            Heartbeat::Time { .. } | Heartbeat::Pages { .. }
        ),
    };
    // A handover leaves one copy of RAM (shared): there is no second copy to compare, so the
    // guest's own check of every page decides.
    let handed_over = report.strategy_used == ferry_migrate::source::HANDOVER;
    let digest_ok =
        report.digest_match == Some(true) || (handed_over && report.digest_match.is_none());
    let ok = digest_ok && verify.errors == 0 && verify.loop_errors == 0 && continues && seq_ok;
    if a.json {
        let pause = largest_guest_pause(&report);
        let out = serde_json::json!({
            "report": report, "guest_before": before, "guest_after": after, "verify": verify, "integrity_ok": ok,
            "guest_pause": {
                "largest_ms": pause.map(|p| p.0),
                "where": pause.map(|p| p.1),
                "switch_over_ms": report.guest_observed.map(|g| g.gap_ns as f64 / 1e6),
                "heartbeat": a.heartbeat.to_string(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!();
        print_report(&report);
        println!(
            "guest self-check    {} pages verified on the destination, {} bad; loop errors {}",
            verify.pages, verify.errors, verify.loop_errors
        );
        println!(
            "guest continues     page writes {} -> {}, heartbeats {} -> {}",
            before.iterations, after.iterations, before.heartbeats, after.heartbeats
        );
        println!("integrity           {}", if ok { "OK" } else { "FAILED" });
    }
    Ok(ExitCode::from(if ok {
        MigrateExit::Migrated.code()
    } else {
        MigrateExit::IntegrityFailed.code()
    }))
}
