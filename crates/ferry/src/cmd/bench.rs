//! `ferry bench`: measurements that are only meaningful as ratios taken in the same run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use ferry_guest::{Entropy, GuestConfig, Pattern, Rate, WriteSize};

use crate::cmd::demo::{guest_status, Host};
use crate::cmd::migrate::request_migration;
use crate::control::{call, MigrateRequest, Request};
use crate::size::{human, parse_size};

/// Benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Stop-and-copy of a guest whose RAM is full of random data, against the loopback TCP limit.
    StopAndCopy(StopAndCopyArgs),
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
    /// Fault the destination's RAM in ahead of the copy.
    #[arg(long)]
    pub prefault: bool,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::StopAndCopy(a) => stop_and_copy(&a),
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
    let (src_sock, dst_sock) = (dir.join("s.sock"), dir.join("d.sock"));
    let mut recv_args = vec!["vm", "receive", "--listen", "127.0.0.1:0", "--once"];
    if a.prefault {
        recv_args.push("--prefault");
    }
    let dst_sock_s = dst_sock.to_string_lossy().into_owned();
    recv_args.extend(["--control", &dst_sock_s]);
    let mut dst = Host::spawn("destination", &dir, &recv_args, Stdio::piped())?;
    let mut first = String::new();
    BufReader::new(dst.child.stdout.take().context("stdout")?).read_line(&mut first)?;
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .context("destination did not start")?
        .to_string();
    let mem = a.memory.to_string();
    let mut src = Host::spawn(
        "source",
        &dir,
        &[
            "vm",
            "run",
            "--kernel",
            &image.to_string_lossy(),
            "--memory",
            &mem,
            "--control",
            &src_sock.to_string_lossy(),
        ],
        Stdio::null(),
    )?;
    let t = Instant::now();
    println!("filling {} of guest RAM with random data ...", human(ws));
    loop {
        if let Ok(g) = guest_status(&src_sock) {
            if g.state == 1 && g.iterations >= ws / 4096 {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("guest did not finish filling its RAM: {}", src.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "filled in {:.1} s; measuring loopback TCP (one stream) ...",
        t.elapsed().as_secs_f64()
    );
    let limit = loopback_limit(4 << 30)?;
    let req = MigrateRequest {
        to: addr,
        strategy: "stop-and-copy".into(),
        downtime_ms: 0,
        channels: a.channels,
        compression: "off".into(),
        verify: true,
        max_rounds: 0,
    };
    let r = request_migration(&src_sock, req, true)?;
    let _ = src.wait(Duration::from_secs(10));
    let _ = call(&dst_sock, &Request::Stop, |_| {});
    let _ = dst.wait(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
    let tput = r.ram_bytes as f64 / (r.downtime_ms / 1e3);
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
    let _ = std::io::stdout().flush();
    Ok(if r.digest_match == Some(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
