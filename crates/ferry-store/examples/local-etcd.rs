//! Runs an etcd server for ferry on this machine, restarted if it dies, until Ctrl-C.
//!
//! ```sh
//! cargo run -p ferry-store --example local-etcd -- [DIR] [CLIENT_PORT]
//! ```
//! DIR (default `ferry-etcd`) holds etcd's data (`DIR/data`, kept across runs) and its log
//! (`DIR/etcd.log`); CLIENT_PORT defaults to 2379 (the peer port is the next one). Needs the
//! `etcd` binary (Debian: `apt-get install etcd-server`).

use std::time::Duration;

use ferry_store::{EtcdStore, LocalEtcd, LocalEtcdConfig, Store};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("local-etcd: {e}");
        let mut cause = e.source();
        while let Some(c) = cause {
            eprintln!("  caused by: {c}");
            cause = c.source();
        }
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "ferry-etcd".into());
    let port: u16 = match args.next() {
        Some(p) => p.parse().map_err(|e| format!("CLIENT_PORT {p:?}: {e}"))?,
        None => 2379,
    };
    let mut config = LocalEtcdConfig::in_dir(&dir);
    config.client_port = port;
    config.peer_port = port.checked_add(1).ok_or("CLIENT_PORT too large")?;
    let etcd = LocalEtcd::start(config).await?;
    let pid = etcd.pid();
    let etcd = etcd.supervise(Duration::from_secs(1));
    let store = EtcdStore::connect(&[etcd.endpoint()]).await?;
    let revision = store.list("/ferry/").await?.revision;
    println!(
        "etcd is running: endpoint {} (pid {pid}, revision {revision})",
        etcd.endpoint()
    );
    println!("data in {dir}/data, log in {dir}/etcd.log; Ctrl-C stops it");
    tokio::signal::ctrl_c().await?;
    let restarts = etcd.restarts();
    let status = etcd.stop().await?;
    println!("etcd stopped ({status}; restarted {restarts} times)");
    Ok(())
}
