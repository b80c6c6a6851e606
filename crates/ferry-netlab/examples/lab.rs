//! Manual lab control (root needed):
//!
//! ```text
//! cargo run -p ferry-netlab --example lab -- up --hosts 2 --rate 1gbit --delay 10ms
//! cargo run -p ferry-netlab --example lab -- status
//! cargo run -p ferry-netlab --example lab -- rate 200mbit
//! cargo run -p ferry-netlab --example lab -- down
//! ```
//! `--name` (default "ferrylab") selects the lab in every command.

use std::process::ExitCode;

use ferry_netlab::units::{parse_duration, parse_rate};
use ferry_netlab::{Lab, LabConfig, LabError};

const USAGE: &str =
    "usage: lab up [--name N] [--hosts 2] [--rate 1gbit] [--delay 10ms] [--loss 0.001]
       lab down|status [--name N]
       lab rate [--name N] RATE|none";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), LabError> {
    let bad = |m: String| LabError::Config(m);
    let (cmd, rest) = args
        .split_first()
        .ok_or_else(|| bad("missing command".into()))?;
    let mut config = LabConfig::default();
    let mut positional = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| bad(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--name" => config.name = value()?,
            "--hosts" => {
                let v = value()?;
                config.hosts = v.parse().map_err(|_| bad(format!("bad --hosts {v}")))?;
            }
            "--rate" => config.rate_bit = Some(parse_rate(&value()?)?),
            "--delay" => config.delay = Some(parse_duration(&value()?)?),
            "--loss" => {
                let v = value()?;
                config.loss = v.parse().map_err(|_| bad(format!("bad --loss {v}")))?;
            }
            s if s.starts_with("--") => return Err(bad(format!("unknown flag {s}"))),
            s => positional.push(s.to_string()),
        }
    }
    match cmd.as_str() {
        "up" => {
            let lab = Lab::up(&config)?;
            println!("up: {config}");
            for i in 0..lab.hosts() {
                println!(
                    "  host {i}: netns {} addr {}",
                    lab.netns(i),
                    lab.host_addr(i)
                );
            }
            if let Some(d) = config.delay {
                println!(
                    "delay is added per TCP service by a proxy; e.g. to reach port 5001 of host 1 \
                     from host 0 with {d:?} each way:\n  cargo run -p ferry-netlab --example proxy -- \
                     --netns {} --listen 127.0.0.1:5001 --to {}:5001 --delay {}ms --loss {}",
                    lab.netns(0),
                    lab.host_addr(1),
                    d.as_secs_f64() * 1e3,
                    config.loss
                );
            }
            println!(
                "run programs inside with: ip netns exec {} <program>",
                lab.netns(0)
            );
            lab.persist();
            Ok(())
        }
        "down" => {
            let gone = Lab::teardown(&config.name)?;
            println!("down: removed {} namespace(s) {gone:?}", gone.len());
            Ok(())
        }
        "status" => {
            print!("{}", Lab::status(&config.name)?);
            Ok(())
        }
        "rate" => {
            let lab = Lab::attach(&config.name)?;
            match positional.first().map(String::as_str) {
                Some("none") => lab.clear_rate()?,
                Some(r) => lab.set_rate(parse_rate(r)?)?,
                None => return Err(bad("rate needs RATE or none".into())),
            }
            print!("{}", Lab::status(&config.name)?);
            Ok(())
        }
        other => Err(bad(format!("unknown command {other}"))),
    }
}
