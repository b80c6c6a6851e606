//! Stand-alone runner of `ferry sim` for benchmarks and experiments:
//! `cargo run --release -p ferry-sim --example sim -- --policy lr-mmt-1.2 --trace 20110303`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "sim")]
struct Cli {
    #[command(flatten)]
    args: ferry_sim::cli::SimArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = ferry_sim::cli::run(&cli.args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
