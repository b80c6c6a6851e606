//! Host processes that the demo and the benchmarks start: a destination (`ferry vm receive`) and a
//! source (`ferry vm run`) of this very binary, each with its control socket and a log file in the
//! work directory; killed if we fail half way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use ferry_host::supervise::{Auth, HostProcess, HostSpec, Role};
use ferry_host::RamBackingChoice;

/// How long a host process may take to print its readiness line.
const READY: Duration = Duration::from_secs(30);

fn ferry() -> anyhow::Result<Command> {
    Ok(Command::new(
        std::env::current_exe().context("cannot find the ferry binary")?,
    ))
}

/// The certificate bundles of a loopback pair.
pub(crate) struct Certs {
    /// The destination's ("destination", valid for 127.0.0.1).
    pub(crate) destination: PathBuf,
    /// The source's ("source").
    pub(crate) source: PathBuf,
}

/// As an operator would: a cluster CA in `dir/ca` and one bundle per host (its key and
/// certificate and the CA certificate, not the CA key) in `dir/destination` and `dir/source`.
pub(crate) fn make_certs(dir: &Path) -> anyhow::Result<Certs> {
    use ferry_migrate::tls::certs;
    let ca = dir.join("ca");
    certs::init_ca(&ca, 1)?;
    let c = Certs {
        destination: dir.join("destination"),
        source: dir.join("source"),
    };
    let dst_names = ["destination".into(), "127.0.0.1".into()];
    certs::issue_bundle(&ca, &dst_names, 1, &c.destination)?;
    certs::issue_bundle(&ca, &["source".into()], 1, &c.source)?;
    Ok(c)
}

fn auth(bundle: Option<&Path>, name: &str, local: bool) -> Auth {
    match bundle {
        Some(c) => Auth::Certs {
            dir: c.to_path_buf(),
            name: name.into(),
        },
        None if local => Auth::None,
        None => Auth::Insecure,
    }
}

/// Starts `ferry vm receive` on `listen` (`127.0.0.1:0` picks a port; `unix:PATH` for a same-host
/// destination, which needs no certificates). With a certificate bundle it accepts only TLS peers
/// of its CA, else plaintext (--insecure).
pub(crate) fn destination(
    dir: &Path,
    listen: &str,
    prefault: bool,
    certs: Option<&Path>,
) -> anyhow::Result<HostProcess> {
    let listen = listen.parse().map_err(anyhow::Error::msg)?;
    let spec = HostSpec {
        auth: auth(
            certs,
            "destination",
            matches!(listen, ferry_host::Endpoint::Unix(_)),
        ),
        role: Role::Receive {
            listen,
            once: true,
            prefault,
            ram_backing: RamBackingChoice::Auto,
            allow: Vec::new(),
        },
        control: dir.join("destination.sock"),
        serial: None,
    };
    Ok(HostProcess::spawn(
        ferry()?,
        &spec,
        "destination",
        dir,
        READY,
    )?)
}

/// Starts `ferry vm run` booting `image` with `memory` bytes of RAM: TLS with a certificate bundle,
/// plaintext without one, or (with `local`) no certificates at all, for a same-host migration; then
/// its RAM is a memfd, which the migration hands over instead of copying (anonymous RAM, the default
/// where it is the only kind with huge pages, has no file to hand over).
pub(crate) fn source(
    dir: &Path,
    image: &Path,
    memory: u64,
    certs: Option<&Path>,
    local: bool,
) -> anyhow::Result<HostProcess> {
    let spec = HostSpec {
        role: Role::Run {
            kernel: image.to_path_buf(),
            memory,
            vcpus: 1,
            ram_backing: if local {
                RamBackingChoice::Memfd
            } else {
                RamBackingChoice::Auto
            },
        },
        auth: auth(certs, "source", local),
        control: dir.join("source.sock"),
        serial: None,
    };
    Ok(HostProcess::spawn(ferry()?, &spec, "source", dir, READY)?)
}
