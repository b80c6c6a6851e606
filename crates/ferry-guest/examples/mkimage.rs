//! Writes a guest image: `mkimage OUT [MEMORY_MIB WS_MIB PATTERN ENTROPY WRITE RATE FILL HEARTBEAT]`.

use std::process::ExitCode;

use ferry_guest::{build_image, GuestConfig};

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = args.first().ok_or(
        "usage: mkimage OUT [MEMORY_MIB WS_MIB PATTERN ENTROPY WRITE RATE FILL HEARTBEAT]",
    )?;
    let mut cfg = GuestConfig::default();
    let arg = |i: usize| args.get(i).map(String::as_str);
    if let Some(v) = arg(1) {
        cfg.memory = v.parse::<u64>()? << 20;
    }
    if let Some(v) = arg(2) {
        cfg.working_set = v.parse::<u64>()? << 20;
    }
    if let Some(v) = arg(3) {
        cfg.pattern = v.parse()?;
    }
    if let Some(v) = arg(4) {
        cfg.entropy = v.parse()?;
    }
    if let Some(v) = arg(5) {
        cfg.write_size = v.parse()?;
    }
    if let Some(v) = arg(6) {
        cfg.rate = v.parse()?;
    }
    if let Some(v) = arg(7) {
        cfg.fill = v.parse()?;
    }
    if let Some(v) = arg(8) {
        cfg.heartbeat = v.parse()?;
    }
    std::fs::write(out, build_image(&cfg)?)?;
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkimage: {e}");
            ExitCode::FAILURE
        }
    }
}
