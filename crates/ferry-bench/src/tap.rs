//! Heartbeat taps: a FIFO (made with `mkfifo`) that a VM host writes its guest's COM1 into, read by a
//! harness thread that timestamps every byte with the monotonic clock the moment `read` returns it.
//!
//! Both engines write to a FIFO the same way (ferry: `--serial FIFO`; QEMU: `-serial file:FIFO`), so the
//! guest-observed downtime is measured identically for both.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::BenchError;

/// One byte the guest wrote, with the (monotonic) time the harness read it.
pub type Stamped = (Instant, u8);

/// A FIFO and the thread that reads it.
pub struct SerialTap {
    path: PathBuf,
    bytes: Arc<Mutex<Vec<Stamped>>>,
    thread: Option<JoinHandle<()>>,
}

impl SerialTap {
    /// Creates the FIFO at `path` and starts reading it (the thread waits for a writer to open it).
    pub fn new(path: &Path) -> Result<SerialTap, BenchError> {
        let _ = std::fs::remove_file(path);
        let status = Command::new("mkfifo")
            .arg(path)
            .status()
            .map_err(|e| BenchError::io("cannot run mkfifo", e))?;
        if !status.success() {
            return Err(BenchError::Setup(format!(
                "mkfifo {} failed ({status})",
                path.display()
            )));
        }
        let bytes = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let (p, b) = (path.to_path_buf(), bytes.clone());
        let thread = std::thread::Builder::new()
            .name("serial-tap".into())
            .spawn(move || read_fifo(&p, &b))
            .map_err(|e| BenchError::io("cannot start the serial tap thread", e))?;
        Ok(SerialTap {
            path: path.to_path_buf(),
            bytes,
            thread: Some(thread),
        })
    }

    /// The FIFO's path, for the VM host's command line.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the bytes read so far.
    pub fn snapshot(&self) -> Vec<Stamped> {
        self.bytes.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Waits until a heartbeat read after `after` shows up; its time, or None after `timeout`.
    pub fn wait_heartbeat_after(&self, after: Instant, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        loop {
            let found = self.bytes.lock().ok().and_then(|b| {
                b.iter()
                    .rev()
                    .take_while(|(t, _)| *t > after)
                    .filter(|(_, c)| ferry_guest::is_heartbeat(*c))
                    .map(|(t, _)| *t)
                    .last()
            });
            if found.is_some() {
                return found;
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops reading (call once the writer is gone) and returns everything read.
    pub fn finish(mut self) -> Vec<Stamped> {
        self.stop();
        self.snapshot()
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            // If the reader still waits for a writer (or the writer never came), open and close the
            // write end ourselves: that wakes it with end-of-file. Non-blocking, so this fails at
            // once (ENXIO) when nobody reads any more.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path);
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SerialTap {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_fifo(path: &Path, out: &Mutex<Vec<Stamped>>) {
    let Ok(mut f) = File::open(path) else { return };
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let t = Instant::now();
                if let Ok(mut v) = out.lock() {
                    v.extend(buf[..n].iter().map(|&c| (t, c)));
                }
            }
        }
    }
}

/// What the heartbeats say about a migration window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuestGap {
    /// Largest gap between consecutive heartbeats in the window (source and destination merged).
    pub max_gap: Duration,
    /// Whether the sequence numbers step by one across the window (no heartbeat lost).
    pub sequence_continues: bool,
    /// Heartbeats in the window.
    pub heartbeats: usize,
}

/// Merges the heartbeats of the source and the destination and measures the largest gap between
/// consecutive ones from the last heartbeat before `from` to the last one at or before `to`.
pub fn guest_gap(
    source: &[Stamped],
    destination: &[Stamped],
    from: Instant,
    to: Instant,
) -> Option<GuestGap> {
    let mut hb: Vec<Stamped> = source
        .iter()
        .chain(destination.iter())
        .copied()
        .filter(|&(_, c)| ferry_guest::is_heartbeat(c))
        .collect();
    // Stable: at equal times the source's bytes stay first.
    hb.sort_by_key(|&(t, _)| t);
    let start = hb.iter().rposition(|&(t, _)| t < from).unwrap_or(0);
    let end = hb.iter().rposition(|&(t, _)| t <= to)?;
    if end <= start {
        return None;
    }
    let w = &hb[start..=end];
    let mut max_gap = Duration::ZERO;
    let mut continues = true;
    for pair in w.windows(2) {
        max_gap = max_gap.max(pair[1].0 - pair[0].0);
        let (a, b) = (
            ferry_guest::heartbeat_seq(pair[0].1),
            ferry_guest::heartbeat_seq(pair[1].1),
        );
        continues &= b == (a + 1) & 0x7f;
    }
    Some(GuestGap {
        max_gap,
        sequence_continues: continues,
        heartbeats: w.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gap_spans_both_sides() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let src: Vec<Stamped> = (0..10).map(|i| (ms(i), 0x80 | i as u8)).collect();
        let dst: Vec<Stamped> = (10..15).map(|i| (ms(i + 40), 0x80 | i as u8)).collect();
        let g = guest_gap(&src, &dst, ms(5), ms(100)).unwrap();
        assert_eq!(g.max_gap, Duration::from_millis(41));
        assert!(g.sequence_continues);
        let g = guest_gap(&src[..8], &dst, ms(5), ms(100)).unwrap();
        assert!(!g.sequence_continues);
    }

    #[test]
    fn text_is_ignored() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let src = vec![(ms(0), 0x80), (ms(1), b'x'), (ms(2), 0x81)];
        let g = guest_gap(&src, &[], ms(0), ms(2)).unwrap();
        assert_eq!(g.max_gap, Duration::from_millis(2));
    }
}
