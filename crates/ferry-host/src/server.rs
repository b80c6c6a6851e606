//! The control server: a Unix socket on which every client gets its own thread, a deadline to send
//! its request, and an answer, whatever it sends.
//!
//! A client that connects and sends nothing holds only its own thread, and only until its read
//! deadline; a line that is too long, not UTF-8, not JSON or not a request is answered with an
//! error; a handler that panics is answered with an error too, and the server keeps serving.
//! While a request is worked on, the client gets a keepalive event at least every
//! [`ServerOptions::keepalive`], so it can tell a slow host from a dead one.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::protocol::{
    self, Cause, ErrorReply, HostEvent, Message, Reply, Request, RequestError, MAX_REQUEST_BYTES,
};

/// Serves requests. One call per request, on the client's own thread; calls run concurrently.
pub trait Handler: Send + Sync {
    /// Answers `request`; `events` reaches the client while the call runs.
    fn handle(&self, request: Request, events: &EventSink<'_>) -> Result<Reply, ErrorReply>;
}

/// Limits of the control server.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Time a client has, from connecting, to send its request line.
    pub read_deadline: Duration,
    /// Longest a write to a client may block before the client is given up (its request goes on).
    pub write_deadline: Duration,
    /// Longest silence towards a client while its request is worked on.
    pub keepalive: Duration,
    /// Clients served at once; more are told to retry.
    pub max_clients: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            read_deadline: Duration::from_secs(5),
            write_deadline: Duration::from_secs(10),
            keepalive: Duration::from_secs(1),
            max_clients: 64,
        }
    }
}

/// A running control server; stops accepting when dropped (see [`ControlServer::shutdown`]).
pub struct ControlServer {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    stop: AtomicBool,
    clients: AtomicUsize,
    /// Requests being worked on or answered, and a signal when one finishes.
    busy: Mutex<usize>,
    idle: Condvar,
}

impl ControlServer {
    /// Serves `listener` (bound at `path`, removed when the server ends) with `handler`.
    pub fn start(
        listener: UnixListener,
        path: PathBuf,
        handler: Arc<dyn Handler>,
        opts: ServerOptions,
    ) -> std::io::Result<ControlServer> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            busy: Mutex::new(0),
            idle: Condvar::new(),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("ferry-control".into())
            .spawn(move || accept_loop(&listener, &sh, &handler, opts))?;
        Ok(ControlServer {
            path,
            shared,
            accept: Some(accept),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, then waits up to `grace` for the requests in progress to be answered (a
    /// migration's final report, a stop's confirmation) before the process goes.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop_accepting();
        let end = Instant::now() + grace;
        let mut busy = self.shared.busy.lock().unwrap_or_else(|p| p.into_inner());
        while *busy > 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            busy = match self.shared.idle.wait_timeout(busy, left) {
                Ok((b, _)) => b,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn stop_accepting(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept call: it sees the flag and returns.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if self.accept.is_some() {
            self.stop_accepting();
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    handler: &Arc<dyn Handler>,
    opts: ServerOptions,
) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else {
            // EMFILE and the like: do not spin.
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if shared.clients.fetch_add(1, Ordering::SeqCst) >= opts.max_clients {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let reply = ErrorReply::new(
                Cause::HostBusy,
                format!(
                    "too many control clients at once (at most {}); retry",
                    opts.max_clients
                ),
            );
            let _ =
                (&stream).write_all(protocol::encode_message(&Message::Error(reply)).as_bytes());
            continue;
        }
        let (sh, h) = (shared.clone(), handler.clone());
        let spawned = std::thread::Builder::new()
            .name("ferry-control-client".into())
            .spawn(move || {
                serve_client(stream, &sh, h.as_ref(), opts);
                sh.clients.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Events and replies to one client. Writes have a deadline; after a failed write the client is
/// given up and later writes are skipped (the request itself goes on).
pub struct EventSink<'a> {
    out: &'a Mutex<ClientWriter>,
}

struct ClientWriter {
    stream: UnixStream,
    gone: bool,
    last: Instant,
}

impl ClientWriter {
    fn send(&mut self, m: &Message) {
        if self.gone {
            return;
        }
        if (&self.stream)
            .write_all(protocol::encode_message(m).as_bytes())
            .is_err()
        {
            self.gone = true;
        }
        self.last = Instant::now();
    }
}

impl EventSink<'_> {
    /// Sends an event to the client (dropped if the client is gone).
    pub fn emit(&self, event: HostEvent) {
        if let Ok(mut w) = self.out.lock() {
            w.send(&Message::Event(event));
        }
    }
}

/// Reads one line of at most `limit` bytes (newline excluded), or what came before EOF.
fn read_line(stream: &mut UnixStream, limit: usize) -> Result<Vec<u8>, LineError> {
    let mut line = Vec::with_capacity(256);
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LineError::Deadline)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(LineError::Closed),
        };
        if n == 0 {
            return if line.is_empty() {
                Err(LineError::Closed)
            } else {
                Ok(line)
            };
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..i]);
            return if line.len() > limit {
                Err(LineError::TooLong)
            } else {
                Ok(line)
            };
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > limit {
            return Err(LineError::TooLong);
        }
    }
}

enum LineError {
    Deadline,
    Closed,
    TooLong,
}

fn serve_client(
    mut stream: UnixStream,
    shared: &Shared,
    handler: &dyn Handler,
    opts: ServerOptions,
) {
    let _ = stream.set_read_timeout(Some(opts.read_deadline));
    let _ = stream.set_write_timeout(Some(opts.write_deadline));
    let line = read_line(&mut stream, MAX_REQUEST_BYTES);
    let Ok(out) = stream.try_clone() else {
        return;
    };
    let writer = Mutex::new(ClientWriter {
        stream: out,
        gone: false,
        last: Instant::now(),
    });
    let answer = |m: Message| {
        if let Ok(mut w) = writer.lock() {
            w.send(&m);
        }
    };
    let request = match line {
        Ok(l) => protocol::decode_request(&l),
        Err(LineError::Closed) => return,
        Err(LineError::TooLong) => Err(RequestError::TooLong {
            limit: MAX_REQUEST_BYTES,
        }),
        Err(LineError::Deadline) => {
            answer(Message::Error(ErrorReply::new(
                Cause::BadRequest,
                format!(
                    "no request line within {} s; closing",
                    opts.read_deadline.as_secs_f64()
                ),
            )));
            return;
        }
    };
    let request = match request {
        Ok(r) => r,
        Err(RequestError::NoVersion) => {
            // An older client: answer in its own format so it prints why.
            if let Ok(mut w) = writer.lock() {
                let _ = (&w.stream).write_all(
                    protocol::legacy_error_line(&RequestError::NoVersion.to_string()).as_bytes(),
                );
                w.gone = true;
            }
            return;
        }
        Err(e) => {
            answer(Message::Error(e.reply()));
            return;
        }
    };
    if let Ok(mut b) = shared.busy.lock() {
        *b += 1;
    }
    let result = handle_with_keepalive(handler, request, &writer, opts.keepalive);
    answer(match result {
        Ok(reply) => Message::Ok(reply),
        Err(e) => Message::Error(e),
    });
    if let Ok(mut b) = shared.busy.lock() {
        *b -= 1;
    }
    shared.idle.notify_all();
}

/// Runs the handler while a ticker sends keepalives; a panic in the handler becomes an error reply.
fn handle_with_keepalive(
    handler: &dyn Handler,
    request: Request,
    writer: &Mutex<ClientWriter>,
    every: Duration,
) -> Result<Reply, ErrorReply> {
    let op = request.op();
    let done = (Mutex::new(false), Condvar::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| {
            let (lock, cv) = &done;
            let mut finished = lock.lock().unwrap_or_else(|p| p.into_inner());
            while !*finished {
                finished = match cv.wait_timeout(finished, every / 2) {
                    Ok((f, _)) => f,
                    Err(p) => p.into_inner().0,
                };
                if *finished {
                    break;
                }
                if let Ok(mut w) = writer.lock() {
                    if w.last.elapsed() >= every / 2 {
                        w.send(&Message::Event(HostEvent::Keepalive {
                            elapsed_ms: start.elapsed().as_millis() as u64,
                        }));
                    }
                }
            }
        });
        // Whatever happens in the handler (a panic included), the ticker is told to stop, so this
        // scope can never wait forever for it.
        let _stop = StopTicker(&done);
        let sink = EventSink { out: writer };
        match std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(request, &sink))) {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(op, panic = %what, "control request panicked");
                Err(ErrorReply::new(
                    Cause::Internal,
                    format!("internal error while serving '{op}' (a bug in ferry): {what}"),
                ))
            }
        }
    })
}

/// Sets the ticker's flag on drop, also while unwinding.
struct StopTicker<'a>(&'a (Mutex<bool>, Condvar));

impl Drop for StopTicker<'_> {
    fn drop(&mut self) {
        let (lock, cv) = self.0;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;
    use crate::client::{ClientError, ControlClient};
    use crate::protocol::HostStatus;

    /// Answers status at once, stop after `slow`, and panics on verify.
    struct Fake {
        slow: Duration,
    }

    impl Handler for Fake {
        fn handle(&self, request: Request, _: &EventSink<'_>) -> Result<Reply, ErrorReply> {
            match request {
                Request::Status => Ok(Reply::Status(Box::default())),
                Request::Stop => {
                    std::thread::sleep(self.slow);
                    Ok(Reply::Stopped)
                }
                Request::Verify => panic!("verify exploded"),
                _ => Err(ErrorReply::new(Cause::NotMigrating, "no")),
            }
        }
    }

    fn serve(opts: ServerOptions, slow: Duration) -> (tempfile::TempDir, ControlServer) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.sock");
        let l = crate::socket::bind_private(&path).unwrap();
        let s = ControlServer::start(l, path, Arc::new(Fake { slow }), opts).unwrap();
        (d, s)
    }

    fn raw(path: &Path, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(bytes).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    fn error_of(line: &str) -> ErrorReply {
        match protocol::decode_message(line).unwrap() {
            Message::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn status_ok(path: &Path) -> HostStatus {
        ControlClient::new(path)
            .with_deadline(Duration::from_secs(5))
            .status()
            .unwrap()
    }

    #[test]
    fn bad_requests_get_an_error_and_the_server_keeps_serving() {
        let (_d, s) = serve(ServerOptions::default(), Duration::ZERO);
        let p = s.path().to_path_buf();
        let cases: [(&[u8], Cause, &str); 4] = [
            (b"\xff\xfe\xfd garbage\n", Cause::BadRequest, "not UTF-8"),
            (b"{not json\n", Cause::BadRequest, "not a JSON object"),
            (
                b"{\"v\":1,\"op\":\"reboot-the-world\"}\n",
                Cause::BadRequest,
                "unknown variant",
            ),
            (
                b"{\"v\":7,\"op\":\"status\"}\n",
                Cause::Version,
                "version 7",
            ),
        ];
        for (bytes, cause, text) in cases {
            let e = error_of(&raw(&p, bytes));
            assert_eq!(e.cause, cause, "{bytes:?}: {e:?}");
            assert!(e.message.contains(text), "{bytes:?}: {}", e.message);
            status_ok(&p);
        }
        // Too long: refused without reading it all into memory first.
        let mut long = vec![b'x'; MAX_REQUEST_BYTES + 10];
        long.push(b'\n');
        let e = error_of(&raw(&p, &long));
        assert!(e.message.contains("longer than"), "{}", e.message);
        // An old, unversioned client gets an answer in its own format.
        let old: serde_json::Value =
            serde_json::from_str(&raw(&p, b"{\"op\":\"status\"}\n")).unwrap();
        assert_eq!(old["ok"], false);
        assert!(old["error"].as_str().unwrap().contains("version"), "{old}");
        status_ok(&p);
    }

    #[test]
    fn a_silent_client_blocks_nobody_and_is_dropped_at_its_deadline() {
        let opts = ServerOptions {
            read_deadline: Duration::from_secs(3),
            ..ServerOptions::default()
        };
        let (_d, s) = serve(opts, Duration::ZERO);
        let p = s.path().to_path_buf();
        let silent = UnixStream::connect(&p).unwrap();
        let half = {
            let mut h = UnixStream::connect(&p).unwrap();
            h.write_all(b"{\"v\":1,\"op\":").unwrap();
            h
        };
        // Others are served at once, while both wait.
        let t = Instant::now();
        for _ in 0..5 {
            status_ok(&p);
        }
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        // Past the deadline each is told why and closed.
        for c in [silent, half] {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut line = String::new();
            BufReader::new(c).read_line(&mut line).unwrap();
            assert!(
                error_of(&line).message.contains("no request line"),
                "{line}"
            );
        }
    }

    #[test]
    fn a_panicking_handler_is_an_error_reply_not_a_dead_server() {
        let (_d, s) = serve(ServerOptions::default(), Duration::ZERO);
        let c = ControlClient::new(s.path()).with_deadline(Duration::from_secs(5));
        match c.verify() {
            Err(ClientError::Host(e)) => {
                assert_eq!(e.cause, Cause::Internal);
                assert!(e.message.contains("verify exploded"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        status_ok(s.path());
    }

    #[test]
    fn slow_requests_get_keepalives_and_shutdown_waits_for_their_answer() {
        let opts = ServerOptions {
            keepalive: Duration::from_millis(100),
            ..ServerOptions::default()
        };
        let (_d, s) = serve(opts, Duration::from_millis(700));
        // The client's deadline is far shorter than the request: keepalives carry it through.
        let c = ControlClient::new(s.path()).with_deadline(Duration::from_millis(300));
        let client = std::thread::spawn(move || {
            let mut beats = 0;
            let r = c.call(&Request::Stop, &mut |e| {
                if let HostEvent::Keepalive { .. } = e {
                    beats += 1
                }
            });
            (r, beats)
        });
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        s.shutdown(Duration::from_secs(5));
        let (r, beats) = client.join().unwrap();
        assert!(matches!(r, Ok(Reply::Stopped)), "{r:?}");
        assert!(beats >= 3, "{beats} keepalives in 700 ms at one per 100 ms");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_client_gives_up_on_a_silent_or_vanished_host() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("mute.sock");
        let l = crate::socket::bind_private(&path).unwrap();
        // A host that reads the request and then says nothing, then one that hangs up.
        let host = std::thread::spawn(move || {
            let (mute, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&mute).read_line(&mut line).unwrap();
            let (gone, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&gone).read_line(&mut line).unwrap();
            drop(gone);
            std::thread::sleep(Duration::from_secs(2));
            drop(mute);
        });
        let c = ControlClient::new(&path).with_deadline(Duration::from_millis(300));
        let t = Instant::now();
        let e = c.status().unwrap_err();
        assert!(matches!(e, ClientError::Deadline { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(e.to_string().contains("mute.sock"), "names the host: {e}");
        let e = c.status().unwrap_err();
        assert!(matches!(e, ClientError::Closed { .. }), "{e}");
        host.join().unwrap();
    }
}
