//! Heartbeat taps: a FIFO (made with `mkfifo`) that a VM host writes its guest's COM1 into, read by a
//! harness thread that timestamps every byte with the monotonic clock the moment `read` returns it.
//!
//! Both engines write to a FIFO the same way (ferry: `--serial FIFO`; QEMU: `-serial file:FIFO`), so the
//! guest's progress (its progress bytes: one per N pages written) is measured identically for both:
//! the largest gap between two of them over a migration, the gap across the switch-over, and how
//! fast the guest wrote its first pass over fresh RAM and its later passes.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_guest::Heartbeat;

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

    /// Waits until a beat of `beat`'s kind read after `after` shows up; its time, or None after
    /// `timeout`.
    pub fn wait_beat_after(
        &self,
        beat: Heartbeat,
        after: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        let end = Instant::now() + timeout;
        loop {
            let found = self.bytes.lock().ok().and_then(|b| {
                b.iter()
                    .rev()
                    .take_while(|(t, _)| *t > after)
                    .filter(|(_, c)| beat.is_beat(*c))
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
    realtime_reader();
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

/// Puts the calling (reader) thread in the real-time class, so it reads a byte the moment the guest
/// writes it. In the normal class a woken reader waited for the running thread's slice to end: up
/// to 3.7 ms (`perf sched timehist`, scenario a), which showed up as heartbeat gaps that the guest
/// never had, for whichever engine ran. Without the privilege the reader stays as it is.
fn realtime_reader() {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call's duration.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

/// What the guest's progress bytes say about a migration window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuestGap {
    /// Largest gap between consecutive beats in the window (source and destination merged).
    pub max_gap: Duration,
    /// The gap from the source's last beat to the destination's first one (None if the guest
    /// never ran on the destination).
    pub switch_over_gap: Option<Duration>,
    /// Whether the sequence numbers step by one across the window (no beat lost); None for beats
    /// without a sequence (dots).
    pub sequence_continues: Option<bool>,
    /// Beats in the window.
    pub heartbeats: usize,
    /// From the first beat of the window (the last one before `from`) to its last one.
    pub span: Duration,
    /// Where the largest gap was: from `from` to the beat that ended it.
    pub largest_ends_after: Duration,
    /// Which hosts wrote the beats before and after the largest gap.
    pub largest_between: GapSides,
}

/// The hosts on either side of a gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapSides {
    /// Both beats from the source (a pause or a slowdown while the guest still ran there).
    Source,
    /// The last one on the source, the next one on the destination: the switch-over.
    SwitchOver,
    /// Both on the destination (e.g. post-copy page faults).
    Destination,
    /// From the destination back to the source (cannot happen in a migration; clock skew).
    Back,
}

impl GapSides {
    /// "on the source", "at the switch-over", ...
    pub fn describe(self) -> &'static str {
        match self {
            GapSides::Source => "on the source",
            GapSides::SwitchOver => "at the switch-over",
            GapSides::Destination => "on the destination",
            GapSides::Back => "destination to source",
        }
    }
}

impl GuestGap {
    /// A note for tables: "largest gap at the switch-over, 2.31 s in".
    pub fn note(&self) -> String {
        format!(
            "largest gap {}, {:.2} s in",
            self.largest_between.describe(),
            self.largest_ends_after.as_secs_f64()
        )
    }
}

/// Merges the beats (per `beat`) of the source and the destination and measures the largest gap
/// between consecutive ones from the last beat before `from` to the last one at or before `to`.
pub fn guest_gap(
    beat: Heartbeat,
    source: &[Stamped],
    destination: &[Stamped],
    from: Instant,
    to: Instant,
) -> Option<GuestGap> {
    // (time, byte, written by the destination)
    let mut hb: Vec<(Instant, u8, bool)> = source
        .iter()
        .map(|&(t, c)| (t, c, false))
        .chain(destination.iter().map(|&(t, c)| (t, c, true)))
        .filter(|&(_, c, _)| beat.is_beat(c))
        .collect();
    // Stable: at equal times the source's bytes stay first.
    hb.sort_by_key(|&(t, _, _)| t);
    let start = hb.iter().rposition(|&(t, _, _)| t < from).unwrap_or(0);
    let end = hb.iter().rposition(|&(t, _, _)| t <= to)?;
    if end <= start {
        return None;
    }
    let w = &hb[start..=end];
    let mut max_gap = Duration::ZERO;
    let mut largest = (w[0].0, GapSides::Source);
    let mut switch_over_gap = None;
    let mut continues = true;
    for pair in w.windows(2) {
        let ((ta, a, a_dst), (tb, b, b_dst)) = (pair[0], pair[1]);
        let sides = match (a_dst, b_dst) {
            (false, false) => GapSides::Source,
            (false, true) => GapSides::SwitchOver,
            (true, true) => GapSides::Destination,
            (true, false) => GapSides::Back,
        };
        if sides == GapSides::SwitchOver && switch_over_gap.is_none() {
            switch_over_gap = Some(tb - ta);
        }
        if tb - ta > max_gap {
            max_gap = tb - ta;
            largest = (tb, sides);
        }
        let (a, b) = (ferry_guest::heartbeat_seq(a), ferry_guest::heartbeat_seq(b));
        continues &= b == (a + 1) & 0x7f;
    }
    if std::env::var_os("FERRY_BENCH_GAPS").is_some() {
        // Debug aid: the beats around the largest gap (time from `from` in us, seq, side).
        if let Some(i) = w.iter().position(|&(t, _, _)| t == largest.0) {
            let lo = i.saturating_sub(12);
            let hi = (i + 12).min(w.len());
            let line: Vec<String> = w[lo..hi]
                .iter()
                .map(|&(t, c, d)| {
                    format!(
                        "{}{}:{}",
                        if d { "D" } else { "S" },
                        t.saturating_duration_since(from).as_micros(),
                        ferry_guest::heartbeat_seq(c)
                    )
                })
                .collect();
            eprintln!("[gaps] {}", line.join(" "));
        }
    }
    Some(GuestGap {
        max_gap,
        switch_over_gap,
        sequence_continues: matches!(beat, Heartbeat::Time { .. } | Heartbeat::Pages { .. })
            .then_some(continues),
        heartbeats: w.len(),
        span: w[w.len() - 1].0 - w[0].0,
        largest_ends_after: largest.0.saturating_duration_since(from),
        largest_between: largest.1,
    })
}

/// Bytes written over some time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Speed {
    /// Bytes of guest pages written.
    pub bytes: u64,
    /// Over this long.
    pub time: Duration,
}

impl Speed {
    /// MB (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64().max(1e-9) / 1e6
    }
}

/// The first beat after the guest's banner, the banner's end, and the beats that follow it.
fn beats_after_banner(beat: Heartbeat, source: &[Stamped]) -> Option<(Instant, Vec<Instant>)> {
    // The banner is the text up to the first newline; the workload starts right after it.
    let nl = source.iter().position(|&(_, c)| c == b'\n')?;
    let start = source[nl].0;
    let beats = source[nl + 1..]
        .iter()
        .filter(|&&(_, c)| beat.is_beat(c))
        .map(|&(t, _)| t)
        .collect();
    Some((start, beats))
}

/// How fast the guest wrote its first pass over its fresh working set: from the end of its banner
/// (the workload's start) to the progress byte that completes `ws_pages` page writes. For a
/// sequential writer, or a fill, that is every page touched once; a random writer has then
/// touched about 63% of them. None without progress bytes (time heartbeat, silent guest).
pub fn first_pass(beat: Heartbeat, source: &[Stamped], ws_pages: u64) -> Option<Speed> {
    let per = u64::from(beat.pages_per_byte()?);
    let (start, beats) = beats_after_banner(beat, source)?;
    let n = ws_pages.div_ceil(per).max(1);
    let end = *beats.get(usize::try_from(n).ok()? - 1)?;
    Some(Speed {
        bytes: n * per * 4096,
        time: end.saturating_duration_since(start),
    })
}

/// How fast the guest wrote over the last `over` before `before` (after its first pass, if the
/// migration starts late enough): progress bytes in that stretch. None with fewer than two.
pub fn speed_before(
    beat: Heartbeat,
    source: &[Stamped],
    before: Instant,
    over: Duration,
) -> Option<Speed> {
    let per = u64::from(beat.pages_per_byte()?);
    let (_, beats) = beats_after_banner(beat, source)?;
    let from = before.checked_sub(over)?;
    let w: Vec<Instant> = beats
        .into_iter()
        .filter(|&t| t >= from && t < before)
        .collect();
    let (first, last) = (*w.first()?, *w.last()?);
    (w.len() >= 2).then(|| Speed {
        bytes: (w.len() as u64 - 1) * per * 4096,
        time: last - first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGES: Heartbeat = Heartbeat::Pages { every: 1024 };

    #[test]
    fn gap_spans_both_sides() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let src: Vec<Stamped> = (0..10).map(|i| (ms(i), 0x80 | i as u8)).collect();
        let dst: Vec<Stamped> = (10..15).map(|i| (ms(i + 40), 0x80 | i as u8)).collect();
        let g = guest_gap(PAGES, &src, &dst, ms(5), ms(100)).unwrap();
        assert_eq!(g.max_gap, Duration::from_millis(41));
        assert_eq!(g.switch_over_gap, Some(Duration::from_millis(41)));
        assert_eq!(g.sequence_continues, Some(true));
        assert_eq!(g.span, Duration::from_millis(54 - 4));
        assert_eq!(g.largest_between, GapSides::SwitchOver);
        assert_eq!(g.largest_ends_after, Duration::from_millis(45));
        assert_eq!(g.note(), "largest gap at the switch-over, 0.04 s in");
        let g = guest_gap(PAGES, &src[..8], &dst, ms(5), ms(100)).unwrap();
        assert_eq!(g.sequence_continues, Some(false));
    }

    #[test]
    fn gap_located_on_one_side() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let src: Vec<Stamped> = (0..4).map(|i| (ms(i), 0x80 | i as u8)).collect();
        // The destination's guest stalls (post-copy faults) 60 ms after resuming 2 ms later.
        let dst = vec![(ms(5), 0x84), (ms(6), 0x85), (ms(66), 0x86)];
        let g = guest_gap(PAGES, &src, &dst, ms(0), ms(100)).unwrap();
        assert_eq!(g.max_gap, Duration::from_millis(60));
        assert_eq!(g.switch_over_gap, Some(Duration::from_millis(2)));
        assert_eq!(g.largest_between, GapSides::Destination);
        assert_eq!(g.largest_ends_after, Duration::from_millis(66));
        // Only the source: a pause during pre-copy.
        let g = guest_gap(PAGES, &[(ms(0), 0x80), (ms(30), 0x81)], &[], ms(0), ms(30)).unwrap();
        assert_eq!(g.largest_between, GapSides::Source);
        assert_eq!(
            g.switch_over_gap, None,
            "the guest never ran on the destination"
        );
    }

    #[test]
    fn text_is_ignored() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let src = vec![(ms(0), 0x80), (ms(1), b'x'), (ms(2), 0x81)];
        let g = guest_gap(PAGES, &src, &[], ms(0), ms(2)).unwrap();
        assert_eq!(g.max_gap, Duration::from_millis(2));
    }

    #[test]
    fn dots_are_the_beats_of_a_dots_guest() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let dots = Heartbeat::Dots { every: 1024 };
        // Top-bit bytes are not a dots guest's beats; text other than '.' neither.
        let src = vec![(ms(0), b'.'), (ms(1), 0x81), (ms(3), b'x'), (ms(4), b'.')];
        let dst = vec![(ms(20), b'.'), (ms(21), b'.')];
        let g = guest_gap(dots, &src, &dst, ms(0), ms(30)).unwrap();
        assert_eq!(g.max_gap, Duration::from_millis(16));
        assert_eq!(g.switch_over_gap, Some(Duration::from_millis(16)));
        assert_eq!(g.sequence_continues, None, "dots carry no sequence");
        assert_eq!(g.heartbeats, 4);
        // Nothing but text: no beats, no answer (and no panic).
        assert_eq!(guest_gap(PAGES, &[(ms(0), b'.')], &[], ms(0), ms(9)), None);
        assert_eq!(guest_gap(Heartbeat::None, &src, &dst, ms(0), ms(30)), None);
    }

    #[test]
    fn first_pass_and_later_speed() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let beat = Heartbeat::Pages { every: 1024 };
        // Banner, then 4 slow beats (fresh RAM: 32 ms per 4 MiB), then fast ones (1 ms).
        let mut src: Vec<Stamped> = b"banner\n".iter().map(|&c| (ms(10), c)).collect();
        let mut t = 10;
        for i in 0..20u8 {
            t += if i < 4 { 32 } else { 1 };
            src.push((ms(t), 0x80 | i));
        }
        // 16 MiB working set = 4096 pages = 4 beats: 16 MiB (16.78 MB) in 128 ms.
        let fp = first_pass(beat, &src, 4096).unwrap();
        assert_eq!(fp.bytes, 16 << 20);
        assert_eq!(fp.time, Duration::from_millis(128));
        assert!((fp.mb_per_s() - 131.07).abs() < 0.01, "{}", fp.mb_per_s());
        // A working set that is not a whole number of beats rounds up to the next beat.
        assert_eq!(first_pass(beat, &src, 4097).unwrap().bytes, 5 * 1024 * 4096);
        // Later: the last 10 ms before t = 154 hold beats 144..=153, 1 ms apart.
        let later = speed_before(beat, &src, ms(154), Duration::from_millis(10)).unwrap();
        assert_eq!(later.time, Duration::from_millis(9));
        assert_eq!(later.bytes, 9 * 1024 * 4096);
        // Not enough beats, or no progress heartbeat: no answer.
        assert_eq!(first_pass(beat, &src, 1 << 30), None);
        assert_eq!(first_pass(Heartbeat::Time { us: 1000 }, &src, 4096), None);
        assert_eq!(
            speed_before(beat, &src, ms(12), Duration::from_millis(1)),
            None
        );
        assert_eq!(first_pass(beat, &[], 4096), None);
    }
}
