//! `ferry bench`: measurements that are only meaningful as ratios taken in the same run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_guest::{Entropy, GuestConfig, Pattern, Rate, WriteSize};

use ferry_host::MigrateRequest;
use ferry_wire::codec::Compression;

use crate::cmd::hosts;
use crate::cmd::migrate::request_migration;
use crate::size::{human, parse_size};

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Stop-and-copy of a guest whose RAM is full of data (random by default), against the loopback
    /// TCP limit; optionally TLS against plaintext or codecs against none, in the same run.
    StopAndCopy(StopAndCopyArgs),
    /// The same guest image and scenarios on ferry and on QEMU, side by side (ratios ferry/QEMU).
    Qemu(Box<ferry_bench::BenchQemuArgs>),
}

/// `ferry bench stop-and-copy`.
#[derive(Args, Clone, Debug)]
pub struct StopAndCopyArgs {
    /// Guest RAM (all but 16 MiB of it is filled at boot with data of the chosen entropy).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory: u64,
    /// What the guest fills its RAM with: zero, text, random (incompressible) or mixed (per page:
    /// about half zero, a quarter text, a quarter random). Zero pages are written, not left as holes.
    #[arg(long, default_value = "random")]
    pub entropy: Entropy,
    /// Page compression for a single run: off, lz4, zstd, zstd:LEVEL, adaptive.
    #[arg(long, default_value = "off", conflicts_with = "compare_codecs")]
    pub compression: Compression,
    /// Migrate twice in one run, compression off then with --codecs, and print the ratios of time
    /// and bytes on the wire.
    #[arg(long, conflicts_with = "compare_tls")]
    pub compare_codecs: bool,
    /// The codecs --compare-codecs measures against compression off (default: adaptive, the CLI's
    /// default).
    #[arg(long, default_value = "adaptive", requires = "compare_codecs")]
    pub codecs: Compression,
    /// Bandwidth limit over all channels, bytes/s like 100M or bits/s like 1gbit (default: none),
    /// e.g. to see what the adaptive codecs do on a slower link.
    #[arg(long, value_parser = crate::size::parse_rate, default_value = "unlimited")]
    pub max_bandwidth: u64,
    /// Run the whole measurement this many times (a fresh guest per migration).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// Parallel channels.
    #[arg(long, default_value_t = 1)]
    pub channels: u16,
    /// Migrate over TLS 1.3 with mutual authentication (default: plaintext, to measure the link).
    #[arg(long)]
    pub tls: bool,
    /// Migrate twice in one run, plaintext then TLS, and print the TLS/plaintext ratio.
    #[arg(long, conflicts_with = "tls")]
    pub compare_tls: bool,
    /// Do not fault the destination's RAM in ahead of the copy.
    #[arg(long)]
    pub no_prefault: bool,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::StopAndCopy(a) => stop_and_copy(&a),
        BenchCommand::Qemu(a) => {
            ferry_bench::run_cli(&a)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One TCP stream on loopback, 1 MiB writes, bytes discarded: the link limit the engine competes with.
pub fn loopback_limit(bytes: u64) -> anyhow::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k as u64,
            }
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let buf = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&buf)?;
        sent += buf.len() as u64;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(got as f64 / t.elapsed().as_secs_f64())
}

/// One migration of the benchmark: the transport and the codecs it uses.
#[derive(Clone, Debug)]
struct RunSpec {
    tls: bool,
    compression: Compression,
}

/// What one migration of the benchmark measured.
struct RunResult {
    spec: RunSpec,
    report: ferry_migrate::Report,
    /// Pages the guest's own sweep found wrong on the destination (None if the sweep failed).
    guest_errors: Option<u64>,
}

impl RunResult {
    fn ok(&self) -> bool {
        self.report.digest_match == Some(true) && self.guest_errors == Some(0)
    }

    fn wire_per_ram(&self) -> f64 {
        self.report.bytes_sent as f64 / self.report.ram_bytes.max(1) as f64
    }
}

fn stop_and_copy(a: &StopAndCopyArgs) -> anyhow::Result<ExitCode> {
    // A private directory (mode 0700, removed at the end): it holds the run's CA key.
    let tmp = tempfile::Builder::new().prefix("ferry-bench-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    let ws = a
        .memory
        .checked_sub(16 << 20)
        .context("memory must be more than 16 MiB")?;
    let cfg = GuestConfig {
        memory: a.memory,
        working_set: ws,
        pattern: Pattern::Sequential,
        entropy: a.entropy,
        write_size: WriteSize::Page,
        rate: Rate::PagesPerSec(0),
        fill: true,
        ..GuestConfig::default()
    };
    let image = dir.join("full.img");
    std::fs::write(&image, ferry_guest::build_image(&cfg)?)?;
    let certs = hosts::make_certs(&dir)?;
    let spec = |tls: bool, compression: Compression| RunSpec { tls, compression };
    let specs: Vec<RunSpec> = if a.compare_tls {
        vec![spec(false, a.compression), spec(true, a.compression)]
    } else if a.compare_codecs {
        vec![spec(a.tls, Compression::Off), spec(a.tls, a.codecs)]
    } else {
        vec![spec(a.tls, a.compression)]
    };
    let mut limit = 0.0;
    let mut all_ok = true;
    let mut pairs = Vec::new();
    for rep in 0..a.repeat {
        if a.repeat > 1 {
            println!("=== repetition {} of {}", rep + 1, a.repeat);
        }
        // Every other repetition runs the pair the other way round, so whatever favours the first
        // (or second) migration of a repetition falls on both sides.
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..specs.len()).collect()
        } else {
            (0..specs.len()).rev().collect()
        };
        let mut results: Vec<Option<RunResult>> = specs.iter().map(|_| None).collect();
        for i in order {
            let s = &specs[i];
            let certs = s.tls.then_some(&certs);
            let r = migrate_full_guest(a, s, &dir, &image, ws, certs, &mut limit)?;
            print_run(&r, limit);
            all_ok &= r.ok();
            results[i] = Some(r);
        }
        let results: Vec<RunResult> = results.into_iter().flatten().collect();
        if let [plain, tls] = &results[..] {
            if a.compare_tls {
                println!(
                    "TLS / plaintext throughput: {:.2}",
                    plain.report.downtime_ms / tls.report.downtime_ms
                );
            }
        }
        if let [off, on] = &results[..] {
            if a.compare_codecs {
                let (t_off, t_on) = (off.report.total_ms, on.report.total_ms);
                let (p_off, p_on) = (off.report.downtime_ms, on.report.downtime_ms);
                println!(
                    "codecs / no codecs: total time {:.3}, pause {:.3}; wire {:.3} x RAM vs {:.3} x RAM",
                    t_on / t_off,
                    p_on / p_off,
                    on.wire_per_ram(),
                    off.wire_per_ram()
                );
                pairs.push((
                    t_off,
                    t_on,
                    p_off,
                    p_on,
                    off.wire_per_ram(),
                    on.wire_per_ram(),
                ));
            }
        }
        println!();
    }
    if pairs.len() > 1 {
        println!("summary ({} entropy, {}):", a.entropy, human(a.memory));
        println!("run | total ms off -> codecs | ratio | pause ms off -> codecs | ratio | wire x RAM off -> codecs");
        for (i, (t_off, t_on, p_off, p_on, w_off, w_on)) in pairs.iter().enumerate() {
            println!(
                "{:>3} | {t_off:.0} -> {t_on:.0} | {:.3} | {p_off:.0} -> {p_on:.0} | {:.3} | {w_off:.3} -> {w_on:.3}",
                i + 1,
                t_on / t_off,
                p_on / p_off,
            );
        }
        let total: Vec<f64> = pairs.iter().map(|p| p.1 / p.0).collect();
        let pause: Vec<f64> = pairs.iter().map(|p| p.3 / p.2).collect();
        println!(
            "median codecs / no codecs: total time {:.3}, pause {:.3}",
            median(total),
            median(pause)
        );
    }
    drop(tmp);
    let _ = std::io::stdout().flush();
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The middle value (the mean of the two middle ones for an even count); NaN if empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Prints one migration's numbers.
fn print_run(r: &RunResult, limit: f64) {
    let rep = &r.report;
    let tput = rep.ram_bytes as f64 / (rep.downtime_ms / 1e3);
    println!("transport             {}", rep.transport);
    println!("compression           {}", r.spec.compression);
    println!("guest RAM             {}", human(rep.ram_bytes));
    println!(
        "stop-and-copy         {:.1} ms paused, {:.1} ms in total",
        rep.downtime_ms, rep.total_ms
    );
    println!(
        "on the wire           {} ({:.3} x RAM)",
        human(rep.bytes_sent),
        r.wire_per_ram()
    );
    println!("ferry throughput      {:.2} GB/s (RAM / pause)", tput / 1e9);
    println!(
        "loopback TCP limit    {:.2} GB/s (one stream, same run)",
        limit / 1e9
    );
    println!("ratio                 {:.2}", tput / limit);
    println!(
        "RAM digest            {}",
        if rep.digest_match == Some(true) {
            "equal"
        } else {
            "NOT EQUAL"
        }
    );
    match r.guest_errors {
        Some(0) => println!("guest self-check      every page as written"),
        Some(n) => println!("guest self-check      {n} BAD PAGES"),
        None => println!("guest self-check      FAILED TO RUN"),
    }
}

/// Boots a guest that fills its RAM, then moves it with stop-and-copy and has the guest check its
/// pages on the destination. Measures the loopback limit (once, into `limit`) while the guest is
/// filled and idle.
fn migrate_full_guest(
    a: &StopAndCopyArgs,
    spec: &RunSpec,
    dir: &std::path::Path,
    image: &std::path::Path,
    ws: u64,
    certs: Option<&hosts::Certs>,
    limit: &mut f64,
) -> anyhow::Result<RunResult> {
    let bundle = |c: &hosts::Certs| c.destination.clone();
    let dst_bundle = certs.map(bundle);
    let mut dst = hosts::destination(dir, "127.0.0.1:0", !a.no_prefault, dst_bundle.as_deref())?;
    let addr = dst
        .listen()
        .cloned()
        .context("the destination printed no address")?;
    let src_bundle = certs.map(|c| c.source.clone());
    let mut src = hosts::source(dir, image, a.memory, src_bundle.as_deref(), false)?;
    let t = Instant::now();
    println!(
        "filling {} of guest RAM with {} data ...",
        human(ws),
        a.entropy
    );
    src.wait_guest("the guest to fill its RAM", Duration::from_secs(300), |g| {
        g.state == 1 && g.iterations >= ws / 4096
    })?;
    println!("filled in {:.1} s", t.elapsed().as_secs_f64());
    if *limit == 0.0 {
        println!("measuring loopback TCP (one stream) ...");
        *limit = loopback_limit(4 << 30)?;
    }
    let req = MigrateRequest {
        strategy: ferry_migrate::Strategy::StopAndCopy,
        downtime_ms: 0,
        channels: a.channels,
        compression: spec.compression,
        max_rounds: 0,
        max_bandwidth: a.max_bandwidth,
        ..MigrateRequest::new(addr)
    };
    let report = request_migration(src.client(), req, true)?;
    let _ = src.wait(Duration::from_secs(10));
    // The guest checks every page it wrote against its own records, on the destination.
    let guest_errors = dst.client().verify().ok().map(|v| v.errors + v.loop_errors);
    dst.stop(Duration::from_secs(5));
    Ok(RunResult {
        spec: spec.clone(),
        report,
        guest_errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
