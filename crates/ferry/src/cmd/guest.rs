//! `ferry guest build`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use ferry_guest::{Entropy, GuestConfig, Heartbeat, Pattern, Rate, WriteSize};

use crate::size::{human, parse_size};

/// Guest image commands.
#[derive(Subcommand)]
pub enum GuestCommand {
    /// Write a workload guest image (multiboot v1; boots in ferry and in `qemu-system-x86_64 -kernel`).
    Build(BuildArgs),
}

/// What the guest does, fixed at image build time.
#[derive(Args, Clone, Debug)]
pub struct BuildArgs {
    /// RAM the guest expects at least (it checks at boot).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory: u64,
    /// Working set: how much memory the workload writes over.
    #[arg(long = "ws", default_value = "256M", value_parser = parse_size)]
    pub working_set: u64,
    /// Write pattern: sequential, random, hotcold (90% of writes to 10% of pages) or mixed (runs of
    /// 64 pages, alternating: sequential from a random page, then random pages).
    #[arg(long, default_value = "random")]
    pub pattern: Pattern,
    /// Data written: zero, text (compresses ~2x), random (incompressible) or mixed (per page: about
    /// half zero, a quarter text, a quarter random).
    #[arg(long, default_value = "random")]
    pub entropy: Entropy,
    /// Write whole pages (page) or one word per page (word).
    #[arg(long = "write", default_value = "page")]
    pub write_size: WriteSize,
    /// Page writes per second, or "unlimited"; 0 = idle after the optional fill.
    #[arg(long, default_value = "unlimited")]
    pub rate: Rate,
    /// Write every working-set page once at boot (e.g. to fill RAM with random data).
    #[arg(long)]
    pub fill: bool,
    /// What the guest writes to COM1: `pages:N` (a byte 0x80|seq after every N pages written: a
    /// gap means the guest made no progress, whatever the cause; an idle guest ticks every 1 ms
    /// after its fill), `time:US` (a byte 0x80|seq every US microseconds: keeps ticking while the
    /// writes crawl), `dots:N` (an ASCII '.' every N pages, console text, as a guest from outside
    /// the project would print) or `none` (nothing, not even the banner).
    #[arg(long, default_value = "pages:1024")]
    pub heartbeat: Heartbeat,
    /// Seed of the guest's pseudo-random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
}

impl BuildArgs {
    /// The guest configuration these flags describe.
    pub fn config(&self) -> GuestConfig {
        GuestConfig {
            memory: self.memory,
            working_set: self.working_set,
            pattern: self.pattern,
            entropy: self.entropy,
            write_size: self.write_size,
            rate: self.rate,
            fill: self.fill,
            heartbeat: self.heartbeat,
            tsc_hz: 0,
            seed: self.seed,
        }
    }
}

/// Runs a guest subcommand.
pub fn run(cmd: GuestCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        GuestCommand::Build(a) => {
            let image =
                ferry_guest::build_image(&a.config()).context("cannot build the guest image")?;
            std::fs::write(&a.output, &image)
                .with_context(|| format!("cannot write {}", a.output.display()))?;
            println!(
                "wrote {} ({} bytes): memory {}, working set {}, {} {} writes, rate {}, heartbeat {}",
                a.output.display(),
                image.len(),
                human(a.memory),
                human(a.working_set),
                a.pattern,
                a.entropy,
                a.rate,
                a.heartbeat
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
