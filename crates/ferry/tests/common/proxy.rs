//! A userspace link for fault tests: a TCP forwarder that paces, cuts and stalls.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP forwarder, each direction of each connection paced to `rate` bytes/s, whose connections
/// can be cut (both directions shut down) while it keeps accepting new ones: a slow link and its
/// failure, in userspace.
pub struct CutProxy {
    pub addr: String,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Set: bytes from the destination to the source are no longer read (they back up in TCP).
    stall_back: Arc<AtomicBool>,
}

impl CutProxy {
    pub fn new(upstream: &str, rate: u64) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let stall_back = Arc::new(AtomicBool::new(false));
        let never = Arc::new(AtomicBool::new(false));
        let (c, s, up) = (conns.clone(), stop.clone(), upstream.to_string());
        let back = stall_back.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                down.set_nonblocking(false).unwrap();
                let Ok(upc) = TcpStream::connect(&up) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(down.try_clone().unwrap());
                list.push(upc.try_clone().unwrap());
                drop(list);
                pump(
                    down.try_clone().unwrap(),
                    upc.try_clone().unwrap(),
                    rate,
                    never.clone(),
                );
                pump(upc, down, rate, back.clone());
            }
        });
        CutProxy {
            addr,
            conns,
            stop,
            stall_back,
        }
    }

    /// Stops forwarding anything the destination sends (the source hears nothing more, its
    /// bytes still arrive): an answer lost in a half-broken link.
    pub fn stall_back(&self) {
        self.stall_back.store(true, Ordering::SeqCst);
    }

    /// Cuts every connection made so far.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, rate: u64, stalled: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let start = Instant::now();
        let mut sent = 0u64;
        loop {
            if stalled.load(Ordering::SeqCst) {
                // Read nothing more; end when the connection is cut.
                let mut probe = [0u8; 1];
                if matches!(from.peek(&mut probe), Ok(0) | Err(_)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                // Read before the stall, arrived after it: held back like the rest.
                Ok(_) if stalled.load(Ordering::SeqCst) => continue,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n as u64;
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
