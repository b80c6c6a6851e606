//! `ferry bench`: measurements that are only meaningful as ratios taken in the same run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_guest::{Entropy, GuestConfig, Pattern, Rate, WriteSize};

use crate::cmd::hosts::Host;
use crate::cmd::migrate::request_migration;
use crate::control::MigrateRequest;
use crate::size::{human, parse_size};

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Stop-and-copy of a guest whose RAM is full of random data, against the loopback TCP limit.
    StopAndCopy(StopAndCopyArgs),
    /// The same guest image and scenarios on ferry and on QEMU, side by side (ratios ferry/QEMU).
    Qemu(Box<ferry_bench::BenchQemuArgs>),
}

/// `ferry bench stop-and-copy`.
#[derive(Args, Clone, Debug)]
pub struct StopAndCopyArgs {
    /// Guest RAM (all but 16 MiB of it is filled with random data at boot).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory: u64,
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

fn stop_and_copy(a: &StopAndCopyArgs) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ws = a
        .memory
        .checked_sub(16 << 20)
        .context("memory must be more than 16 MiB")?;
    let cfg = GuestConfig {
        memory: a.memory,
        working_set: ws,
        pattern: Pattern::Sequential,
        entropy: Entropy::Random,
        write_size: WriteSize::Page,
        rate: Rate::PagesPerSec(0),
        fill: true,
        ..GuestConfig::default()
    };
    let image = dir.join("full.img");
    std::fs::write(&image, ferry_guest::build_image(&cfg)?)?;
    let certs = Host::make_certs(&dir)?;
    let runs: Vec<bool> = if a.compare_tls {
        vec![false, true]
    } else {
        vec![a.tls]
    };
    let mut limit = 0.0;
    let mut results = Vec::new();
    for tls in runs {
        let certs = tls.then_some(certs.as_path());
        let r = migrate_full_guest(a, &dir, &image, ws, certs, &mut limit)?;
        let tput = r.ram_bytes as f64 / (r.downtime_ms / 1e3);
        println!("transport             {}", r.transport);
        println!("guest RAM             {}", human(r.ram_bytes));
        println!(
            "stop-and-copy         {:.1} ms paused, {} on the wire",
            r.downtime_ms,
            human(r.bytes_sent)
        );
        println!("ferry throughput      {:.2} GB/s (RAM / pause)", tput / 1e9);
        println!(
            "loopback TCP limit    {:.2} GB/s (one stream, same run)",
            limit / 1e9
        );
        println!("ratio                 {:.2}", tput / limit);
        println!(
            "RAM digest            {}",
            if r.digest_match == Some(true) {
                "equal"
            } else {
                "NOT EQUAL"
            }
        );
        println!();
        results.push((tput, r.digest_match == Some(true)));
    }
    if let [(plain, _), (tls, _)] = results[..] {
        println!("TLS / plaintext throughput: {:.2}", tls / plain);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::io::stdout().flush();
    Ok(if results.iter().all(|r| r.1) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Boots a guest that fills its RAM with random data, then moves it with stop-and-copy. Measures the
/// loopback limit (once, into `limit`) while the guest is filled and idle.
fn migrate_full_guest(
    a: &StopAndCopyArgs,
    dir: &std::path::Path,
    image: &std::path::Path,
    ws: u64,
    certs: Option<&std::path::Path>,
    limit: &mut f64,
) -> anyhow::Result<ferry_migrate::Report> {
    let (mut dst, addr) = Host::destination(dir, !a.no_prefault, certs)?;
    let mut src = Host::source(dir, image, a.memory, certs)?;
    let t = Instant::now();
    println!("filling {} of guest RAM with random data ...", human(ws));
    src.wait_guest("the guest to fill its RAM", Duration::from_secs(300), |g| {
        g.state == 1 && g.iterations >= ws / 4096
    })?;
    println!("filled in {:.1} s", t.elapsed().as_secs_f64());
    if *limit == 0.0 {
        println!("measuring loopback TCP (one stream) ...");
        *limit = loopback_limit(4 << 30)?;
    }
    let req = MigrateRequest {
        to: addr,
        strategy: "stop-and-copy".into(),
        downtime_ms: 0,
        channels: a.channels,
        compression: "off".into(),
        verify: true,
        max_rounds: 0,
        tls_name: None,
        max_bandwidth: 0,
    };
    let r = request_migration(&src.socket, req, true)?;
    let _ = src.wait(Duration::from_secs(10));
    dst.stop();
    Ok(r)
}
