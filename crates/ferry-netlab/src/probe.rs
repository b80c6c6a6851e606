//! Tiny measurement tools for labs: a server with sink and echo modes, a timed sender and an
//! RTT prober. Plain TCP, no dependencies, usable from tests, benchmarks and examples.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::proxy::shutdown_listener;
use crate::LabError;

const MODE_SINK: u8 = b'S';
const MODE_ECHO: u8 = b'E';
const SEND_CHUNK: usize = 1 << 20;

fn io_err(what: &str) -> impl FnOnce(io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        what: what.to_string(),
        source,
    }
}

/// A probe server: sink connections count bytes until EOF and reply with the count, echo
/// connections send back what they receive.
#[derive(Debug)]
pub struct ProbeServer {
    local_addr: SocketAddr,
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl ProbeServer {
    /// Binds (in the calling thread's namespace) and serves on background threads.
    pub fn start(addr: SocketAddr) -> Result<ProbeServer, LabError> {
        let listener = TcpListener::bind(addr).map_err(io_err("probe bind"))?;
        let local_addr = listener.local_addr().map_err(io_err("probe bind"))?;
        let accept_side = listener.try_clone().map_err(io_err("probe bind"))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let acceptor = thread::Builder::new()
            .name("probe-accept".into())
            .spawn(move || serve(accept_side, &stop))
            .map_err(LabError::Thread)?;
        Ok(ProbeServer {
            local_addr,
            listener,
            stopping,
            acceptor: Some(acceptor),
        })
    }

    /// Address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        shutdown_listener(&self.listener);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Serves probe connections on `listener` until it fails or `stop` is set.
pub fn serve(listener: TcpListener, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((s, _)) => {
                let _ = thread::Builder::new()
                    .name("probe-conn".into())
                    .spawn(move || handle(s));
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return,
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn handle(mut s: TcpStream) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    match mode[0] {
        MODE_SINK => {
            let mut buf = vec![0u8; SEND_CHUNK];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            s.write_all(&total.to_be_bytes())?;
        }
        MODE_ECHO => {
            let mut r = s.try_clone()?;
            io::copy(&mut r, &mut s)?;
        }
        _ => {}
    }
    s.shutdown(Shutdown::Both)
}

/// Result of a timed transfer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    /// Bytes the sink confirmed.
    pub bytes: u64,
    /// From connect to the sink's confirmation.
    pub elapsed: Duration,
}

impl Transfer {
    /// Goodput in bit/s.
    pub fn bits_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64()
    }
}

/// Sends to a probe sink at `addr` for about `duration` and waits for its byte count.
pub fn send_for(addr: SocketAddr, duration: Duration) -> Result<Transfer, LabError> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(io_err("probe connect"))?;
    s.write_all(&[MODE_SINK]).map_err(io_err("probe send"))?;
    let chunk = vec![0xa5u8; SEND_CHUNK];
    let mut sent = 0u64;
    while start.elapsed() < duration {
        s.write_all(&chunk).map_err(io_err("probe send"))?;
        sent += chunk.len() as u64;
    }
    s.shutdown(Shutdown::Write).map_err(io_err("probe send"))?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).map_err(io_err("probe confirm"))?;
    let bytes = u64::from_be_bytes(count);
    if bytes != sent {
        return Err(LabError::Io {
            what: "probe confirm".into(),
            source: io::Error::other(format!("sink counted {bytes} of {sent} bytes")),
        });
    }
    Ok(Transfer {
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Measures `rounds` round trips of a 64-byte message to a probe echo at `addr` (after one warm-up).
pub fn rtt(addr: SocketAddr, rounds: usize) -> Result<Vec<Duration>, LabError> {
    let mut s = TcpStream::connect(addr).map_err(io_err("probe connect"))?;
    s.set_nodelay(true).map_err(io_err("probe connect"))?;
    s.write_all(&[MODE_ECHO]).map_err(io_err("probe echo"))?;
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(rounds);
    for i in 0..=rounds {
        let t = Instant::now();
        s.write_all(&msg).map_err(io_err("probe echo"))?;
        s.read_exact(&mut back).map_err(io_err("probe echo"))?;
        if i > 0 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

/// The median of some durations (zero if empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn sink_and_echo_on_loopback() {
        let srv = ProbeServer::start((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let t = send_for(srv.local_addr(), Duration::from_millis(100)).unwrap();
        assert!(t.bytes > 0 && t.bits_per_sec() > 0.0);
        let r = rtt(srv.local_addr(), 5).unwrap();
        assert_eq!(r.len(), 5);
        assert!(median(r) < Duration::from_millis(50));
    }
}
