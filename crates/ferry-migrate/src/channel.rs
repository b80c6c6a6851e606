//! A framed, CRC-checked, sequence-checked connection; the only place the engine touches sockets.

use std::io::{IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ferry_wire::{encode_header, FrameHeader, FrameType, HEADER_LEN};

use crate::MigrateError;

/// A byte stream a migration can run over.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix socket (same host).
    Unix(UnixStream),
    /// TLS 1.3 over TCP.
    Tls(crate::tls::TlsStream),
}

impl Stream {
    /// A second handle on the same connection (one thread reads while another writes).
    pub fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tls(s) => Stream::Tls(s.try_clone()?),
        })
    }

    /// How long a read may block before the peer counts as gone.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.socket().set_read_timeout(t),
        }
    }

    /// How long a write may block before the peer counts as gone.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Tls(s) => s.socket().set_write_timeout(t),
        }
    }

    /// Sends small frames at once: switch-over is a ping-pong of small control frames, and Nagle's
    /// algorithm meeting delayed ACKs would add up to 40 ms to each exchange, inside the pause.
    pub fn set_nodelay(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
            Stream::Tls(s) => s.socket().set_nodelay(true),
        }
    }

    /// Readies a new migration connection: small frames go out at once (see [`Stream::set_nodelay`]),
    /// and a peer silent for `timeout` counts as gone.
    pub fn prepare(&self, timeout: std::time::Duration) -> Result<(), MigrateError> {
        self.set_nodelay()
            .map_err(MigrateError::io("socket option"))?;
        self.set_read_timeout(Some(timeout))
            .map_err(MigrateError::io("socket option"))?;
        self.set_write_timeout(Some(timeout))
            .map_err(MigrateError::io("socket option"))
    }

    /// Whether this is a same-host (Unix) connection, over which RAM can be handed over as a file.
    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Sends a file descriptor (and one byte) over a Unix connection.
    pub fn send_fd(&self, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let Stream::Unix(s) = self else {
            return Err(std::io::Error::other(
                "file descriptors travel only over Unix sockets",
            ));
        };
        let mut byte = [b'F'];
        let (mut iov, mut control) = (one_byte_iov(&mut byte), vec![0u8; fd_control_len()]);
        let msg = fd_msghdr(&mut iov, &mut control);
        // SAFETY: msg_control points at CMSG_SPACE(int) bytes, so the first header and its one-int
        // payload fit; CMSG_FIRSTHDR and CMSG_DATA only compute addresses inside that buffer.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fd.as_raw_fd());
        }
        // SAFETY: a valid socket and a fully initialised msghdr whose buffers live across the call.
        if unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives a file descriptor sent with [`Stream::send_fd`].
    pub fn recv_fd(&self) -> std::io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let Stream::Unix(s) = self else {
            return Err(std::io::Error::other(
                "file descriptors travel only over Unix sockets",
            ));
        };
        let mut byte = [0u8; 1];
        let (mut iov, mut control) = (one_byte_iov(&mut byte), vec![0u8; fd_control_len()]);
        let mut msg = fd_msghdr(&mut iov, &mut control);
        // SAFETY: valid socket and initialised msghdr; MSG_CMSG_CLOEXEC keeps the fd from children.
        let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n != 1 {
            return Err(if n == 0 {
                std::io::ErrorKind::UnexpectedEof.into()
            } else {
                std::io::Error::last_os_error()
            });
        }
        // SAFETY: the kernel filled `control`; CMSG_FIRSTHDR returns null when there is no header
        // (checked), and the payload of an SCM_RIGHTS header is the descriptor we now own.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null()
                || (*c).cmsg_level != libc::SOL_SOCKET
                || (*c).cmsg_type != libc::SCM_RIGHTS
            {
                return Err(std::io::Error::other("the peer sent no file descriptor"));
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
            Ok(std::fs::File::from_raw_fd(fd))
        }
    }

    /// Closes both directions (wakes a thread blocked reading the other handle).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tls(s) => s.socket().shutdown(std::net::Shutdown::Both),
        };
    }
}

fn one_byte_iov(byte: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// Bytes of control buffer for one file descriptor.
fn fd_control_len() -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize }
}

/// A message header for one data byte and one file descriptor; `iov` and `control` must outlive it.
fn fd_msghdr(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is a valid empty value; the fields set below complete it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    msg
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
            Stream::Tls(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sending half of a channel.
#[derive(Debug)]
pub struct FrameWriter {
    stream: Stream,
    key: u32,
    seq: u32,
    limit: Option<std::sync::Arc<crate::rate::RateLimit>>,
    /// Bytes written, headers included.
    pub bytes: u64,
}

/// Receiving half of a channel, with a reusable payload buffer.
#[derive(Debug)]
pub struct FrameReader {
    stream: Stream,
    key: u32,
    seq: u32,
    buf: Vec<u8>,
    /// Bytes read, headers included.
    pub bytes: u64,
}

/// Splits a connection into framed halves keyed by `key` (0 until the handshake sets the key).
pub fn split(stream: Stream, key: u32) -> Result<(FrameReader, FrameWriter), MigrateError> {
    let w = stream
        .try_clone()
        .map_err(MigrateError::io("cannot clone socket"))?;
    Ok((
        FrameReader {
            stream,
            key,
            seq: 0,
            buf: Vec::new(),
            bytes: 0,
        },
        FrameWriter {
            stream: w,
            key,
            seq: 0,
            limit: None,
            bytes: 0,
        },
    ))
}

impl FrameWriter {
    /// Sends one frame.
    pub fn send(&mut self, kind: FrameType, flags: u8, payload: &[u8]) -> Result<(), MigrateError> {
        let h = encode_header(kind, flags, self.seq, payload, self.key)?;
        if let Some(limit) = &self.limit {
            limit.acquire(HEADER_LEN + payload.len());
        }
        write_all_vectored(&mut self.stream, &h, payload).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                MigrateError::PeerClosed("sending")
            }
            _ => MigrateError::Io {
                context: format!("sending {kind:?} frame"),
                source: e,
            },
        })?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += (HEADER_LEN + payload.len()) as u64;
        Ok(())
    }

    /// Switches to the migration's channel key (after the handshake frames).
    pub fn set_key(&mut self, key: u32) {
        self.key = key;
    }

    /// Holds this channel to a (shared) bandwidth limit.
    pub fn set_rate_limit(&mut self, limit: std::sync::Arc<crate::rate::RateLimit>) {
        self.limit = Some(limit);
    }

    /// The underlying stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

fn write_all_vectored(s: &mut Stream, mut head: &[u8], mut body: &[u8]) -> std::io::Result<()> {
    while !head.is_empty() || !body.is_empty() {
        let n = s.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

impl FrameReader {
    /// Receives one frame; the payload is valid until the next call. `during` names the phase for errors.
    pub fn recv(&mut self, during: &'static str) -> Result<(FrameHeader, &[u8]), MigrateError> {
        let mut raw = [0u8; HEADER_LEN];
        read_exact(&mut self.stream, &mut raw, during)?;
        let h = FrameHeader::parse(&raw)?;
        self.buf.resize(h.len as usize, 0);
        read_exact(&mut self.stream, &mut self.buf, during)?;
        h.verify(&raw, &self.buf, self.key, self.seq)?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += (HEADER_LEN + self.buf.len()) as u64;
        if h.kind == FrameType::Abort {
            let reason = ferry_wire::message::decode_reason(&self.buf)
                .unwrap_or_else(|_| "no reason given".into());
            return Err(MigrateError::PeerAborted(reason));
        }
        Ok((h, &self.buf))
    }

    /// Receives a frame that must be of type `want`.
    pub fn expect(&mut self, want: FrameType, during: &'static str) -> Result<&[u8], MigrateError> {
        let (h, p) = self.recv(during)?;
        if h.kind != want {
            return Err(MigrateError::Unexpected {
                got: h.kind,
                during,
            });
        }
        Ok(p)
    }

    /// Switches to the migration's channel key.
    pub fn set_key(&mut self, key: u32) {
        self.key = key;
    }

    /// The underlying stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

fn read_exact(s: &mut Stream, buf: &mut [u8], during: &'static str) -> Result<(), MigrateError> {
    s.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            MigrateError::PeerClosed(during)
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => MigrateError::Io {
            context: format!("peer silent too long during {during}"),
            source: e,
        },
        _ => MigrateError::Io {
            context: format!("reading during {during}"),
            source: e,
        },
    })
}
