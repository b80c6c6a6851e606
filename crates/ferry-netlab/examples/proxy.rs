//! A delay proxy process, e.g. inside a lab host:
//!
//! ```text
//! cargo run -p ferry-netlab --example proxy -- --netns ferrylab-h0 \
//!     --listen 127.0.0.1:5001 --to 10.77.0.2:5001 --delay 10ms [--loss 0.001] [--stall 20ms] [--buffer 16777216]
//! ```
//! Without `--netns` it runs in the current namespace (or under `ip netns exec`).

use std::net::SocketAddr;
use std::process::ExitCode;

use ferry_netlab::units::parse_duration;
use ferry_netlab::{enter_netns, DelayProxy, LabError};

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "proxy: {e}\nusage: proxy --listen ADDR --to ADDR [--delay D] [--loss P] [--stall D] [--buffer BYTES] [--netns NAME]"
            );
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<(), LabError> {
    let bad = |m: String| LabError::Config(m);
    let addr = |s: String| {
        s.parse::<SocketAddr>()
            .map_err(|_| bad(format!("bad address {s}")))
    };
    let (mut listen, mut to, mut netns) = (None, None, None);
    let (mut delay, mut loss, mut stall, mut buffer) = (None, 0.0, None, None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(|| bad(format!("{a} needs a value")))?;
        match a.as_str() {
            "--listen" => listen = Some(addr(v)?),
            "--to" => to = Some(addr(v)?),
            "--netns" => netns = Some(v),
            "--delay" => delay = Some(parse_duration(&v)?),
            "--stall" => stall = Some(parse_duration(&v)?),
            "--loss" => loss = v.parse().map_err(|_| bad(format!("bad --loss {v}")))?,
            "--buffer" => buffer = Some(v.parse().map_err(|_| bad(format!("bad --buffer {v}")))?),
            other => return Err(bad(format!("unknown flag {other}"))),
        }
    }
    let listen = listen.ok_or_else(|| bad("--listen is required".into()))?;
    let to = to.ok_or_else(|| bad("--to is required".into()))?;
    if let Some(ns) = &netns {
        // Before any socket or thread exists, so everything runs inside the namespace.
        enter_netns(ns)?;
    }
    let mut proxy = DelayProxy::new(listen, to)
        .delay(delay.unwrap_or_default())
        .loss(loss);
    if let Some(s) = stall {
        proxy = proxy.stall(s);
    }
    if let Some(b) = buffer {
        proxy = proxy.buffer(b);
    }
    eprintln!(
        "proxy {listen} -> {to} in {}, delay {:?} each way, loss {loss}",
        netns.as_deref().unwrap_or("current netns"),
        delay.unwrap_or_default()
    );
    proxy.run()
}
