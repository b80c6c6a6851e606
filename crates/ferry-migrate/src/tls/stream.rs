//! A TLS connection whose read and write halves can live on different threads.
//!
//! The engine reads a channel on one thread while another writes it. A rustls connection is one
//! state machine, so it sits behind a mutex, but socket I/O never happens while holding it on the
//! read side: a reader reads raw bytes first, then takes the lock only to decrypt them. A writer
//! encrypts under the lock and writes outside it (one writer thread per channel keeps records in
//! order), so a blocked write never keeps the reader from draining the socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use rustls::Connection;

/// Shared TLS state of one connection.
struct Shared {
    conn: Connection,
}

/// One handle on a TLS connection (clone it with [`TlsStream::try_clone`]).
pub struct TlsStream {
    sock: TcpStream,
    shared: Arc<Mutex<Shared>>,
    /// Ciphertext read from the socket and not yet fed to rustls: `raw[start..end]`.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("peer", &self.sock.peer_addr().ok())
            .finish()
    }
}

fn poisoned() -> std::io::Error {
    std::io::Error::other("TLS state lock poisoned")
}

impl TlsStream {
    /// Wraps a connection whose handshake is complete.
    pub fn new(sock: TcpStream, conn: Connection) -> Self {
        Self::handle(sock, Arc::new(Mutex::new(Shared { conn })))
    }

    fn handle(sock: TcpStream, shared: Arc<Mutex<Shared>>) -> Self {
        Self {
            sock,
            shared,
            raw: vec![0; 256 << 10],
            start: 0,
            end: 0,
            out: Vec::new(),
        }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self::handle(self.sock.try_clone()?, self.shared.clone()))
    }

    /// The TCP socket underneath (timeouts, shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// The negotiated cipher suite.
    pub fn cipher_suite(&self) -> Option<String> {
        let s = self.shared.lock().ok()?;
        s.conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()))
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // Serve plaintext straight out of rustls's buffer: no copy of our own.
            {
                let mut s = self.shared.lock().map_err(|_| poisoned())?;
                match s.conn.reader().read(buf) {
                    Ok(n) => return Ok(n), // 0: the peer closed cleanly
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Feed ciphertext we already hold (rustls decrypts it on processing).
                if self.start < self.end {
                    let mut input = &self.raw[self.start..self.end];
                    let fed = s.conn.read_tls(&mut input)?;
                    self.start += fed;
                    s.conn
                        .process_new_packets()
                        .map_err(std::io::Error::other)?;
                    // Replies rustls owes the peer (rare after the handshake): write under the lock.
                    while s.conn.wants_write() {
                        let mut sock = &self.sock;
                        s.conn.write_tls(&mut sock)?;
                    }
                    continue;
                }
            }
            // Nothing buffered anywhere: read ciphertext without holding the lock.
            let n = self.sock.read(&mut self.raw)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            (self.start, self.end) = (0, n);
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.clear();
        let n = {
            let mut s = self.shared.lock().map_err(|_| poisoned())?;
            let n = s.conn.writer().write(buf)?;
            while s.conn.wants_write() {
                s.conn.write_tls(&mut self.out)?;
            }
            n
        };
        self.sock.write_all(&self.out)?;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        // A frame is header + payload: encrypt both in one go rather than as two records.
        self.out.clear();
        let n = {
            let mut s = self.shared.lock().map_err(|_| poisoned())?;
            let n = s.conn.writer().write_vectored(bufs)?;
            while s.conn.wants_write() {
                s.conn.write_tls(&mut self.out)?;
            }
            n
        };
        self.sock.write_all(&self.out)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
