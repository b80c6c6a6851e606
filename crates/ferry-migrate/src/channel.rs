//! A framed, CRC-checked, sequence-checked connection; the only place the engine touches sockets.

use std::io::{IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ferry_wire::run::{crc_append_page, RunHeader, RUN_HEADER_LEN};
use ferry_wire::{crc_start, encode_header_parts, FrameHeader, FrameType, HEADER_LEN};

use crate::memory::GuestMemory;
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

    /// The connection's round-trip time as the kernel measures it (TCP, also under TLS).
    pub fn rtt(&self) -> Option<Duration> {
        use std::os::fd::AsRawFd;
        match self {
            Stream::Tcp(s) => tcp_rtt(s.as_raw_fd()),
            Stream::Tls(s) => tcp_rtt(s.socket().as_raw_fd()),
            Stream::Unix(_) => None,
        }
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

impl FrameWriter {
    /// The connection's round-trip time as the kernel measures it, if it is TCP.
    pub fn rtt(&self) -> Option<Duration> {
        self.stream.rtt()
    }
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
        self.send_parts(kind, flags, &[payload])
    }

    /// Sends one frame whose payload is `parts` in order, with one vectored write (no copy of the
    /// parts into one buffer: a page run goes from guest RAM to the socket).
    pub fn send_parts(
        &mut self,
        kind: FrameType,
        flags: u8,
        parts: &[&[u8]],
    ) -> Result<(), MigrateError> {
        let h = encode_header_parts(kind, flags, self.seq, parts, self.key)?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if let Some(limit) = &self.limit {
            limit.acquire(HEADER_LEN + len);
        }
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(&h[..]);
        all.extend_from_slice(parts);
        write_all_parts(&mut self.stream, &mut all).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                MigrateError::PeerClosed("sending")
            }
            _ => MigrateError::Io {
                context: format!("sending {kind:?} frame"),
                source: e,
            },
        })?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += (HEADER_LEN + len) as u64;
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

fn write_all_parts(s: &mut Stream, mut parts: &mut [&[u8]]) -> std::io::Result<()> {
    loop {
        while parts.first().is_some_and(|p| p.is_empty()) {
            parts = &mut parts[1..];
        }
        if parts.is_empty() {
            return Ok(());
        }
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut n = s.write_vectored(&slices)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        for p in parts.iter_mut() {
            let k = n.min(p.len());
            *p = &p[k..];
            n -= k;
            if n == 0 {
                break;
            }
        }
    }
}

/// What [`FrameReader::recv_or_run`] received.
pub enum Received<'a> {
    /// A frame other than a page run; the payload is valid until the next call.
    Frame(FrameHeader, &'a [u8]),
    /// A page run, written into guest RAM and checked, with its frame flags; the per-page CRCs
    /// are in the caller's vector.
    Run(RunHeader, u8),
}

/// Which page runs a channel may write into guest RAM.
pub struct RunTarget<'a> {
    /// The destination's RAM.
    pub mem: &'a dyn GuestMemory,
    /// This channel.
    pub channel: u64,
    /// Channels of the migration (pages are sharded across them, `source::channel_of`).
    pub channels: u64,
}

/// Bytes read from the socket between per-page CRC passes: small enough that the pages are still
/// in cache when their CRC is computed.
const RUN_READ_CHUNK: usize = 64 << 10;

impl FrameReader {
    /// Receives one frame; the payload is valid until the next call. `during` names the phase for errors.
    pub fn recv(&mut self, during: &'static str) -> Result<(FrameHeader, &[u8]), MigrateError> {
        let mut raw = [0u8; HEADER_LEN];
        read_exact(&mut self.stream, &mut raw, during)?;
        let h = FrameHeader::parse(&raw)?;
        let p = self.finish_recv(&raw, h, during)?;
        Ok((h, p))
    }

    /// Receives one frame like [`FrameReader::recv`], except that a page run is read straight into
    /// `target`'s RAM (no staging copy), its per-page CRCs left in `crcs` and the frame CRC
    /// computed from them. `target` is `None` when the guest may run here (a run is then refused).
    ///
    /// The pages land before the frame's CRC is checked: a bad CRC fails the migration, and the
    /// destination, whose VM has not run, discards its RAM.
    pub fn recv_or_run(
        &mut self,
        during: &'static str,
        target: Option<&RunTarget<'_>>,
        crcs: &mut Vec<u32>,
    ) -> Result<Received<'_>, MigrateError> {
        let mut raw = [0u8; HEADER_LEN];
        read_exact(&mut self.stream, &mut raw, during)?;
        let h = FrameHeader::parse(&raw)?;
        if h.kind != FrameType::PageRun {
            let p = self.finish_recv(&raw, h, during)?;
            return Ok(Received::Frame(h, p));
        }
        let Some(t) = target else {
            return Err(MigrateError::Unexpected {
                got: h.kind,
                during: "post-switch-over (the VM may run)",
            });
        };
        let mut rh = [0u8; RUN_HEADER_LEN];
        if (h.len as usize) < RUN_HEADER_LEN {
            return Err(ferry_wire::WireError::Malformed("page run too short").into());
        }
        read_exact(&mut self.stream, &mut rh, during)?;
        let run = RunHeader::decode(&rh, h.len, t.mem.pages())?;
        let last = run.first + u64::from(run.count) - 1;
        // A run is at most one shard long, so its first and last pages name every shard it touches.
        if [run.first, last]
            .iter()
            .any(|&p| crate::source::channel_of(p, t.channels) != t.channel)
        {
            return Err(
                ferry_wire::WireError::Malformed("page run outside this channel's pages").into(),
            );
        }
        // Fresh pages faulted in by the socket copy cost several times a populate call here.
        t.mem.populate(run.first, u64::from(run.count));
        // SAFETY: the pages are this channel's (checked just above: pages are sharded across
        // channels, so no other receiver touches them) and the guest does not run here while runs
        // are accepted (the caller passes no target once it may).
        let dst = unsafe { t.mem.run_mut(run.first, u64::from(run.count)) };
        let mut crc = crc32c::crc32c_append(crc_start(&raw, self.key), &rh);
        crcs.clear();
        for chunk in dst.chunks_mut(RUN_READ_CHUNK) {
            read_exact(&mut self.stream, chunk, during)?;
            for page in chunk.chunks(ferry_vmm::PAGE_SIZE) {
                let c = crc32c::crc32c(page);
                crcs.push(c);
                crc = crc_append_page(crc, c);
            }
        }
        h.verify_crc(crc, self.seq)?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += (HEADER_LEN as u64) + u64::from(h.len);
        Ok(Received::Run(run, h.flags))
    }

    /// Reads and checks the payload of a frame whose header is read.
    fn finish_recv(
        &mut self,
        raw: &[u8; HEADER_LEN],
        h: FrameHeader,
        during: &'static str,
    ) -> Result<&[u8], MigrateError> {
        self.buf.resize(h.len as usize, 0);
        read_exact(&mut self.stream, &mut self.buf, during)?;
        h.verify(raw, &self.buf, self.key, self.seq)?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes += (HEADER_LEN + self.buf.len()) as u64;
        if h.kind == FrameType::Abort {
            let reason = ferry_wire::message::decode_reason(&self.buf)
                .unwrap_or_else(|_| "no reason given".into());
            return Err(MigrateError::PeerAborted(reason));
        }
        Ok(&self.buf)
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

/// The smoothed round-trip time the kernel measured on a TCP connection (`TCP_INFO`), if it is one.
pub fn tcp_rtt(fd: std::os::fd::RawFd) -> Option<Duration> {
    // SAFETY: tcp_info is plain data (all zero is valid); getsockopt writes at most `len` bytes
    // of it and sets `len` to what it wrote; an fd that is not a TCP socket only makes it fail.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (r == 0 && info.tcpi_rtt > 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
    }
}

/// The largest window one TCP stream may reach on this host: the smaller of the send buffer
/// maximum and half the receive buffer maximum (`net.ipv4.tcp_wmem`, `tcp_rmem`; the peer's are
/// assumed alike). Linux defaults (4 MiB, 6 MiB) when they cannot be read.
pub fn tcp_window_bytes() -> u64 {
    fn max_of(path: &str, default: u64) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(default)
    }
    let wmem = max_of("/proc/sys/net/ipv4/tcp_wmem", 4 << 20);
    let rmem = max_of("/proc/sys/net/ipv4/tcp_rmem", 6 << 20);
    wmem.min(rmem / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loopback_connection_reports_its_rtt() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        use std::io::{Read, Write};
        (&c).write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        use std::os::fd::AsRawFd;
        let rtt = tcp_rtt(c.as_raw_fd()).expect("TCP_INFO on a TCP socket");
        assert!(rtt < Duration::from_secs(1), "{rtt:?}");
        let (u, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(tcp_rtt(u.as_raw_fd()), None, "not TCP");
    }
    use crate::synthetic::SyntheticMemory;
    use ferry_vmm::PAGE_SIZE;

    fn pair() -> (FrameReader, FrameWriter) {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, _) = split(Stream::Unix(a), 7).unwrap();
        let (_, w) = split(Stream::Unix(b), 7).unwrap();
        (r, w)
    }

    fn pages(count: usize, seed: u8) -> Vec<u8> {
        (0..count * PAGE_SIZE)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i / PAGE_SIZE) as u8)
            .collect()
    }

    fn send_run(w: &mut FrameWriter, first: u64, data: &[u8]) {
        let h = RunHeader {
            first,
            count: (data.len() / PAGE_SIZE) as u32,
        };
        w.send_parts(FrameType::PageRun, 0, &[&h.encode(), data])
            .unwrap();
    }

    fn channel_1_of_2(mem: &SyntheticMemory) -> RunTarget<'_> {
        RunTarget {
            mem,
            channel: 1,
            channels: 2,
        }
    }

    #[test]
    fn a_page_run_lands_in_place_with_its_page_crcs() {
        let mem = SyntheticMemory::new(1024);
        let t = channel_1_of_2(&mem);
        let (mut r, mut w) = pair();
        let data = pages(20, 5);
        send_run(&mut w, 600, &data);
        w.send(FrameType::RoundEnd, 0, b"x").unwrap();
        let mut crcs = Vec::new();
        let got = r.recv_or_run("test", Some(&t), &mut crcs).unwrap();
        assert!(matches!(
            got,
            Received::Run(
                RunHeader {
                    first: 600,
                    count: 20
                },
                0
            )
        ));
        // SAFETY: the test owns the memory and nothing else touches it.
        assert_eq!(unsafe { mem.run(600, 20) }, &data[..]);
        let want: Vec<u32> = data.chunks(PAGE_SIZE).map(crc32c::crc32c).collect();
        assert_eq!(crcs, want);
        let got = r.recv_or_run("test", Some(&t), &mut crcs).unwrap();
        assert!(matches!(got, Received::Frame(h, b"x") if h.kind == FrameType::RoundEnd));
    }

    #[test]
    fn bad_page_runs_are_refused() {
        let mem = SyntheticMemory::new(1024);
        let t = channel_1_of_2(&mem);
        let mut crcs = Vec::new();
        // Channel 0's pages on channel 1.
        let (mut r, mut w) = pair();
        send_run(&mut w, 8, &pages(8, 1));
        assert!(r.recv_or_run("test", Some(&t), &mut crcs).is_err());
        // Once the guest may run, no run is taken.
        let (mut r, mut w) = pair();
        send_run(&mut w, 600, &pages(8, 1));
        assert!(matches!(
            r.recv_or_run("test", None, &mut crcs),
            Err(MigrateError::Unexpected { .. })
        ));
        // A corrupted page fails the frame CRC.
        let (mut r, w) = pair();
        let data = pages(8, 1);
        let h = RunHeader {
            first: 600,
            count: 8,
        };
        let hdr = encode_header_parts(FrameType::PageRun, 0, 0, &[&h.encode(), &data], 7).unwrap();
        let mut bad = data.clone();
        bad[5000] ^= 1;
        let mut s = w.stream.try_clone().unwrap();
        s.write_all(&hdr).unwrap();
        s.write_all(&h.encode()).unwrap();
        s.write_all(&bad).unwrap();
        let e = r.recv_or_run("test", Some(&t), &mut crcs).err().unwrap();
        assert!(
            matches!(e, MigrateError::Wire(ferry_wire::WireError::BadCrc { .. })),
            "{e:?}"
        );
    }
}
