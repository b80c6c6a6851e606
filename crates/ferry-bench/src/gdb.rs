//! Writing guest memory of a QEMU through its GDB stub (QMP can read guest memory, `pmemsave`, but
//! not write it): just the `M` packet, enough to ask the guest for its verification sweep.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::BenchError;

fn err(what: &str, e: std::io::Error) -> BenchError {
    BenchError::io(format!("GDB stub: {what}"), e)
}

/// Reads and drops whatever the stub sends until it is quiet for `quiet` (the stop reply it may
/// send on connect, acks).
fn drain(s: &mut UnixStream, quiet: Duration) -> Result<(), BenchError> {
    s.set_read_timeout(Some(quiet))
        .map_err(|e| err("timeout", e))?;
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// A packet's frame: `$body#checksum`.
fn frame(body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${body}#{sum:02x}")
}

/// Sends one packet and returns the body of the reply packet.
fn packet(s: &mut UnixStream, body: &str) -> Result<String, BenchError> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| err("timeout", e))?;
    s.write_all(frame(body).as_bytes())
        .map_err(|e| err("write", e))?;
    let mut reply = Vec::new();
    let (mut in_packet, mut after_hash) = (false, None);
    let mut byte = [0u8; 1];
    loop {
        s.read_exact(&mut byte).map_err(|e| err("read", e))?;
        match (in_packet, after_hash, byte[0]) {
            (false, _, b'$') => in_packet = true,
            (false, _, _) => {} // acks
            (true, None, b'#') => after_hash = Some(0),
            (true, None, c) => reply.push(c),
            (true, Some(1), _) => break,
            (true, Some(n), _) => after_hash = Some(n + 1),
        }
    }
    s.write_all(b"+").map_err(|e| err("ack", e))?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Writes `bytes` at guest address `addr` (the guests identity-map their RAM, so the virtual
/// address the stub uses is the physical one). The VM should be stopped (QMP `stop`).
pub fn write_mem(socket: &Path, addr: u64, bytes: &[u8]) -> Result<(), BenchError> {
    let t = Instant::now();
    let mut s = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if t.elapsed() > Duration::from_secs(5) => return Err(err("connect", e)),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    drain(&mut s, Duration::from_millis(300))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let reply = packet(&mut s, &format!("M{addr:x},{:x}:{hex}", bytes.len()))?;
    // Detach, so the stub lets the VM run again when QMP says `cont`.
    let _ = packet(&mut s, "D");
    if reply == "OK" {
        Ok(())
    } else {
        Err(BenchError::Setup(format!(
            "GDB stub refused the memory write: {reply:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_carry_the_checksum() {
        assert_eq!(super::frame("OK"), "$OK#9a");
        assert_eq!(super::frame(""), "$#00");
    }
}
