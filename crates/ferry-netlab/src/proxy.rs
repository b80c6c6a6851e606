//! A userspace TCP proxy that adds one-way delay (both directions) and emulates loss as stalls.
//!
//! Each direction of each connection has a reader thread that stamps every chunk it reads with
//! `now + delay` and queues it, and a writer thread that releases chunks in order when they are
//! due. The queue holds at most `buffer` bytes per direction; that bound acts as the emulated
//! path's window, so throughput is capped at `buffer / delay` (default 16 MiB: 6.7 Gbit/s at
//! 20 ms). TCP cannot lose bytes, so "loss" delays a chunk (and everything behind it) by `stall`,
//! like a retransmission would; the sender's congestion window is not reduced, unlike real loss.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::LabError;

/// Largest single read from a socket.
const READ_CHUNK: usize = 256 * 1024;
/// Largest batch a writer takes from its queue per lock.
const WRITE_BATCH: usize = 1024 * 1024;
/// TCP payload per segment at MTU 1500, the unit `loss` applies to.
const SEGMENT: usize = 1448;

/// Configuration of a delay proxy; [`DelayProxy::start`] runs it on threads.
#[derive(Debug, Clone)]
pub struct DelayProxy {
    listen: SocketAddr,
    forward_to: SocketAddr,
    delay: Duration,
    buffer: usize,
    loss: f64,
    stall: Option<Duration>,
    seed: u64,
}

/// Counters of a running proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes delivered from clients to the forward address.
    pub bytes_forward: u64,
    /// Bytes delivered from the forward address back to clients.
    pub bytes_backward: u64,
    /// Stalls injected to emulate loss.
    pub stalls: u64,
}

#[derive(Default)]
struct Shared {
    stopping: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, [TcpStream; 2]>>,
    connections: AtomicU64,
    bytes_forward: AtomicU64,
    bytes_backward: AtomicU64,
    stalls: AtomicU64,
}

impl Shared {
    fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections: self.connections.load(Ordering::Relaxed),
            bytes_forward: self.bytes_forward.load(Ordering::Relaxed),
            bytes_backward: self.bytes_backward.load(Ordering::Relaxed),
            stalls: self.stalls.load(Ordering::Relaxed),
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, [TcpStream; 2]>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running proxy; stops (closing its connections) on [`ProxyHandle::stop`] or drop.
#[derive(Debug)]
pub struct ProxyHandle {
    local_addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("stats", &self.stats())
            .finish()
    }
}

impl DelayProxy {
    /// Starts a proxy on threads: listen on `listen`, forward to `forward_to`, `delay` each way.
    pub fn spawn(
        listen: SocketAddr,
        forward_to: SocketAddr,
        delay: Duration,
    ) -> Result<ProxyHandle, LabError> {
        DelayProxy::new(listen, forward_to).delay(delay).start()
    }

    /// A proxy from `listen` to `forward_to` with no delay, no loss and a 16 MiB buffer.
    pub fn new(listen: SocketAddr, forward_to: SocketAddr) -> DelayProxy {
        DelayProxy {
            listen,
            forward_to,
            delay: Duration::ZERO,
            buffer: 16 << 20,
            loss: 0.0,
            stall: None,
            seed: 0x5eed_f00d_cafe_d00d,
        }
    }

    /// Sets the one-way delay applied in each direction.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the most bytes queued per direction (the emulated window; throughput <= buffer/delay).
    pub fn buffer(mut self, bytes: usize) -> Self {
        self.buffer = bytes.max(1);
        self
    }

    /// Sets the probability per 1448-byte segment of a stall (emulated loss), clamped to [0, 1].
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Sets how long a stall holds the stream (default: the emulated RTT, 2 x delay, at least 1 ms).
    pub fn stall(mut self, stall: Duration) -> Self {
        self.stall = Some(stall);
        self
    }

    /// Sets the seed of the stall generator (runs with the same seed stall alike).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    fn stall_time(&self) -> Duration {
        self.stall
            .unwrap_or_else(|| (2 * self.delay).max(Duration::from_millis(1)))
    }

    fn bind(&self) -> Result<TcpListener, LabError> {
        TcpListener::bind(self.listen).map_err(|source| LabError::Io {
            what: format!("proxy bind {}", self.listen),
            source,
        })
    }

    /// Binds in the calling thread's network namespace and serves on background threads.
    pub fn start(self) -> Result<ProxyHandle, LabError> {
        let listener = self.bind()?;
        let io_err = |source| LabError::Io {
            what: "proxy listener".into(),
            source,
        };
        let local_addr = listener.local_addr().map_err(io_err)?;
        let accept_side = listener.try_clone().map_err(io_err)?;
        let shared = Arc::new(Shared::default());
        let sh = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(accept_side, Arc::new(self), sh))
            .map_err(LabError::Thread)?;
        Ok(ProxyHandle {
            local_addr,
            listener,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Binds and serves on the calling thread until the listener fails (for a proxy process).
    pub fn run(self) -> Result<(), LabError> {
        let listener = self.bind()?;
        accept_loop(listener, Arc::new(self), Arc::new(Shared::default()));
        Err(LabError::Io {
            what: "proxy accept".into(),
            source: io::Error::other("listener stopped"),
        })
    }
}

impl ProxyHandle {
    /// Address the proxy listens on (with the real port if it was bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// Stops accepting, closes every proxied connection and waits for the acceptor.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        shutdown_listener(&self.listener);
        for pair in self.shared.conns().values() {
            for s in pair {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Wakes a thread blocked in accept() on this listener (Linux returns EINVAL from accept).
pub(crate) fn shutdown_listener(listener: &TcpListener) {
    // SAFETY: the descriptor belongs to `listener`, which is borrowed for the whole call, so it
    // is open; shutdown(2) reads no memory of ours and leaves the descriptor open and owned.
    let _ = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}

fn accept_loop(listener: TcpListener, cfg: Arc<DelayProxy>, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((client, _)) => {
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let (cfg, sh) = (Arc::clone(&cfg), Arc::clone(&shared));
                let spawned = thread::Builder::new()
                    .name("proxy-conn".into())
                    .spawn(move || connection(client, &cfg, &sh));
                if spawned.is_err() {
                    thread::sleep(Duration::from_millis(10));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return,
            // Transient (aborted handshake, descriptor limit): back off a little and go on.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn connection(client: TcpStream, cfg: &DelayProxy, shared: &Arc<Shared>) {
    let Ok(upstream) = TcpStream::connect(cfg.forward_to) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    shared.conns().insert(id, [c2, u2]);
    let abort = {
        let (c, u) = (client.try_clone(), upstream.try_clone());
        move || {
            if let Ok(c) = &c {
                let _ = c.shutdown(Shutdown::Both);
            }
            if let Ok(u) = &u {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
    };
    if shared.stopping.load(Ordering::SeqCst) {
        abort();
    } else {
        let abort = Arc::new(abort);
        let fwd = {
            let (src, dst) = (client.try_clone(), upstream.try_clone());
            let (cfg, sh, abort) = (cfg.clone(), Arc::clone(shared), Arc::clone(&abort));
            thread::Builder::new()
                .name("proxy-fwd".into())
                .spawn(move || {
                    if let (Ok(src), Ok(dst)) = (src, dst) {
                        pipe(src, dst, &cfg, &sh, id * 2, &sh.bytes_forward, &*abort);
                    }
                })
        };
        match fwd {
            Ok(fwd) => {
                pipe(
                    upstream,
                    client,
                    cfg,
                    shared,
                    id * 2 + 1,
                    &shared.bytes_backward,
                    &*abort,
                );
                let _ = fwd.join();
            }
            Err(_) => abort(),
        }
    }
    shared.conns().remove(&id);
}

enum Item {
    Data(Vec<u8>),
    Eof,
}

#[derive(Default)]
struct QState {
    items: VecDeque<(Instant, Item)>,
    bytes: usize,
    dead: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<QState>,
    data: Condvar,
    space: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill(&self) {
        self.lock().dead = true;
        self.data.notify_all();
        self.space.notify_all();
    }
}

/// Small xorshift64* generator for stall decisions.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Copies src to dst with delay: a reader thread fills the queue, this thread drains it.
fn pipe(
    src: TcpStream,
    dst: TcpStream,
    cfg: &DelayProxy,
    shared: &Arc<Shared>,
    stream: u64,
    counter: &AtomicU64,
    abort: &(dyn Fn() + Sync),
) {
    let q = Arc::new(Queue::default());
    let reader = {
        let q = Arc::clone(&q);
        let (delay, buffer, loss, stall) = (cfg.delay, cfg.buffer, cfg.loss, cfg.stall_time());
        let rng = Rng::new(cfg.seed ^ stream);
        let sh = Arc::clone(shared);
        thread::Builder::new()
            .name("proxy-read".into())
            .spawn(move || read_side(src, &q, delay, buffer, loss, stall, rng, &sh))
    };
    let Ok(reader) = reader else {
        abort();
        return;
    };
    if write_side(&dst, &q, counter).is_err() {
        q.kill();
        abort();
    }
    if reader.join().unwrap_or(false) {
        // The reader failed (reset): tear the whole connection down.
        abort();
    }
}

/// Reads chunks and queues them with their due time; returns true if the connection broke.
#[allow(clippy::too_many_arguments)]
fn read_side(
    mut src: TcpStream,
    q: &Queue,
    delay: Duration,
    buffer: usize,
    loss: f64,
    stall: Duration,
    mut rng: Rng,
    shared: &Shared,
) -> bool {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut last_due = Instant::now();
    loop {
        let room = {
            let mut st = q.lock();
            while st.bytes >= buffer && !st.dead {
                st = q.space.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.dead {
                return false;
            }
            buffer - st.bytes
        };
        let want = room.min(buf.len());
        let item = match src.read(&mut buf[..want]) {
            Ok(0) => Item::Eof,
            Ok(n) => Item::Data(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                q.kill();
                return true;
            }
        };
        let mut due = (Instant::now() + delay).max(last_due);
        if let Item::Data(d) = &item {
            if loss > 0.0 {
                let segments = d.len().div_ceil(SEGMENT) as i32;
                let p = 1.0 - (1.0 - loss).powi(segments);
                if rng.unit() < p {
                    due += stall;
                    shared.stalls.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        last_due = due;
        let eof = matches!(item, Item::Eof);
        {
            let mut st = q.lock();
            if let Item::Data(d) = &item {
                st.bytes += d.len();
            }
            st.items.push_back((due, item));
        }
        q.data.notify_one();
        if eof {
            return false;
        }
    }
}

/// Writes queued chunks when due; on EOF half-closes dst. Err means the connection broke.
fn write_side(mut dst: &TcpStream, q: &Queue, counter: &AtomicU64) -> Result<(), ()> {
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut eof = false;
        {
            let mut st = q.lock();
            loop {
                if st.dead {
                    return Err(());
                }
                let Some(&(due, _)) = st.items.front() else {
                    st = q.data.wait(st).unwrap_or_else(|e| e.into_inner());
                    continue;
                };
                let now = Instant::now();
                if due <= now {
                    break;
                }
                st = q
                    .data
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let now = Instant::now();
            let mut taken = 0;
            while let Some(&(due, _)) = st.items.front() {
                if due > now || taken >= WRITE_BATCH {
                    break;
                }
                match st.items.pop_front().map(|(_, item)| item) {
                    Some(Item::Data(d)) => {
                        taken += d.len();
                        batch.push(d);
                    }
                    Some(Item::Eof) | None => {
                        eof = true;
                        break;
                    }
                }
            }
            st.bytes -= taken;
        }
        q.space.notify_one();
        for d in batch.drain(..) {
            dst.write_all(&d).map_err(|_| ())?;
            counter.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        if eof {
            let _ = dst.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn loopback() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    /// An echo server that also half-closes when the client does.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind(loopback()).unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    fn roundtrip(proxy: &ProxyHandle, data: &[u8]) -> Vec<u8> {
        let mut c = TcpStream::connect(proxy.local_addr()).unwrap();
        let mut w = c.try_clone().unwrap();
        let data = data.to_vec();
        let writer = thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        writer.join().unwrap();
        back
    }

    #[test]
    fn preserves_bytes_and_half_close() {
        let p = DelayProxy::spawn(loopback(), echo_server(), Duration::from_millis(2)).unwrap();
        let mut rng = Rng::new(7);
        let data: Vec<u8> = (0..3_000_000).map(|_| (rng.unit() * 256.0) as u8).collect();
        assert_eq!(roundtrip(&p, &data), data);
        let s = p.stats();
        assert_eq!((s.bytes_forward, s.bytes_backward), (3_000_000, 3_000_000));
        assert_eq!(s.connections, 1);
    }

    #[test]
    fn small_buffer_still_correct() {
        let p = DelayProxy::new(loopback(), echo_server())
            .buffer(1000)
            .start()
            .unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(roundtrip(&p, &data), data);
    }

    #[test]
    fn adds_delay_both_ways() {
        let p = DelayProxy::spawn(loopback(), echo_server(), Duration::from_millis(15)).unwrap();
        let mut c = TcpStream::connect(p.local_addr()).unwrap();
        c.set_nodelay(true).unwrap();
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            c.write_all(b"ping").unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            best = best.min(t.elapsed());
        }
        assert!(best >= Duration::from_millis(30), "rtt {best:?}");
        assert!(best < Duration::from_millis(45), "rtt {best:?}");
    }

    #[test]
    fn loss_stalls_but_delivers() {
        let p = DelayProxy::new(loopback(), echo_server())
            .loss(0.01)
            .stall(Duration::from_millis(5))
            .start()
            .unwrap();
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(roundtrip(&p, &data), data);
        assert!(p.stats().stalls > 0);
    }

    #[test]
    fn stop_closes_connections() {
        let p = DelayProxy::spawn(loopback(), echo_server(), Duration::ZERO).unwrap();
        let addr = p.local_addr();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        p.stop();
        let mut rest = Vec::new();
        assert!(matches!(c.read_to_end(&mut rest), Ok(0) | Err(_)));
        assert!(TcpStream::connect(addr).is_err());
    }
}
