//! `ferry bench qemu` without the ferry CLI: `cargo run -p ferry-bench --example bench_qemu -- --ferry
//! target/debug/ferry [--scenario a,b] [--repeat N] [--quick] [--markdown F] [--plots DIR] [--json F]`.

use clap::Parser;
use ferry_bench::{run_cli, BenchQemuArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchQemuArgs,
}

fn main() -> std::process::ExitCode {
    match run_cli(&Cli::parse().args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_qemu: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
