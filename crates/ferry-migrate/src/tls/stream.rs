//! A TLS connection whose read and write halves can live on different threads.
//!
//! The engine reads a channel on one thread while another writes it. A rustls connection is one
//! state machine, so it sits behind a mutex, but socket I/O never happens while holding it on the
//! read side: a reader reads raw bytes first, then takes the lock only to decrypt them. A writer
//! encrypts under the lock and writes outside it (one writer thread per channel keeps records in
//! order), so a blocked write never keeps the reader from draining the socket.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use rustls::Connection;

/// Shared TLS state of one connection.
struct Shared {
    conn: Connection,
    /// Decrypted bytes not yet handed to a reader.
    plain: VecDeque<u8>,
}

/// One handle on a TLS connection (clone it with [`TlsStream::try_clone`]).
pub struct TlsStream {
    sock: TcpStream,
    shared: Arc<Mutex<Shared>>,
    raw: Vec<u8>,
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
        Self {
            sock,
            shared: Arc::new(Mutex::new(Shared {
                conn,
                plain: VecDeque::new(),
            })),
            raw: vec![0; 64 << 10],
            out: Vec::new(),
        }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            sock: self.sock.try_clone()?,
            shared: self.shared.clone(),
            raw: vec![0; 64 << 10],
            out: Vec::new(),
        })
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
            {
                let mut s = self.shared.lock().map_err(|_| poisoned())?;
                if !s.plain.is_empty() {
                    let n = buf.len().min(s.plain.len());
                    for (d, b) in buf.iter_mut().zip(s.plain.drain(..n)) {
                        *d = b;
                    }
                    return Ok(n);
                }
                // Plaintext rustls decrypted on its own (data that came with the last handshake
                // flight) is only in its buffer: serve it before waiting on the socket.
                match s.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            // No plaintext: read ciphertext without holding the lock.
            let n = self.sock.read(&mut self.raw)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let mut s = self.shared.lock().map_err(|_| poisoned())?;
            let mut input = &self.raw[..n];
            while !input.is_empty() {
                s.conn.read_tls(&mut input)?;
                let state = s
                    .conn
                    .process_new_packets()
                    .map_err(std::io::Error::other)?;
                let avail = state.plaintext_bytes_to_read();
                if avail > 0 {
                    let start = s.plain.len();
                    s.plain.resize(start + avail, 0);
                    let Shared { conn, plain } = &mut *s;
                    let (a, b) = plain.as_mut_slices();
                    let tail: &mut [u8] = if b.is_empty() {
                        &mut a[start..]
                    } else {
                        &mut b[start - a.len()..]
                    };
                    conn.reader().read_exact(tail)?;
                }
                if state.peer_has_closed() && s.plain.is_empty() {
                    return Ok(0);
                }
            }
            // Handshake-era replies (rare after the handshake): write them under the lock.
            while s.conn.wants_write() {
                let mut sock = &self.sock;
                s.conn.write_tls(&mut sock)?;
            }
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
