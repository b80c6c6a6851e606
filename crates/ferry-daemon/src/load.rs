//! The host's load, read from /proc: CPU use between two samples of `/proc/stat`, memory from
//! `/proc/meminfo`.

use std::path::Path;

/// Cumulative CPU time counters of the whole host (the `cpu` line of `/proc/stat`), in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing anything.
    pub busy: u64,
    /// All ticks (busy + idle + iowait).
    pub total: u64,
}

impl CpuTimes {
    /// Parses the first (`cpu `) line of `/proc/stat`.
    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
        // counted in user and nice, so it is left out of the sum.
        if v.len() < 4 {
            return None;
        }
        let total: u64 = v.iter().take(8).sum();
        let idle = v[3] + v.get(4).copied().unwrap_or(0);
        Some(CpuTimes {
            busy: total - idle,
            total,
        })
    }

    /// Fraction of CPU time busy between `earlier` and `self` (0 when no time passed).
    pub fn usage_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        (self.busy.saturating_sub(earlier.busy) as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// The host's memory, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what new work can use without swapping.
    pub available: u64,
}

impl MemInfo {
    /// Parses `/proc/meminfo`.
    pub fn parse(text: &str) -> Option<MemInfo> {
        let field = |name: &str| -> Option<u64> {
            let l = text.lines().find(|l| l.starts_with(name))?;
            let kb: u64 = l[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb * 1024)
        };
        Some(MemInfo {
            total: field("MemTotal:")?,
            available: field("MemAvailable:")?,
        })
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

/// Reads the CPU counters now.
pub fn read_cpu() -> Option<CpuTimes> {
    CpuTimes::parse(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Reads memory now.
pub fn read_mem() -> Option<MemInfo> {
    MemInfo::parse(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Online CPUs.
pub fn cpu_count() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Resident memory of a process, bytes (`VmRSS` of `/proc/PID/status`).
pub fn process_rss(pid: u32) -> Option<u64> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let l = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = l["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_usage_between_samples() {
        let a = CpuTimes::parse("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let b = CpuTimes::parse("cpu  250 0 150 800 100 0 0 0 50 0\n").unwrap();
        assert_eq!(a.total, 1000);
        assert_eq!(a.busy, 200);
        // 200 busy ticks out of 300 (guest time is inside user and not counted twice).
        assert!((b.usage_since(&a) - 200.0 / 300.0).abs() < 1e-9);
        assert_eq!(a.usage_since(&a), 0.0);
        assert!(CpuTimes::parse("intr 1 2\n").is_none());
        assert!(CpuTimes::parse("cpu  x y\n").is_none());
    }

    #[test]
    fn meminfo() {
        let m = MemInfo::parse(
            "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    6000000 kB\n",
        )
        .unwrap();
        assert_eq!(m.total, 8_000_000 * 1024);
        assert_eq!(m.used(), 2_000_000 * 1024);
        assert!(MemInfo::parse("MemTotal: 1 kB\n").is_none());
    }

    #[test]
    fn this_host_reads() {
        assert!(read_cpu().is_some_and(|c| c.total > 0));
        assert!(read_mem().is_some_and(|m| m.total > m.used()));
        assert!(process_rss(std::process::id()).is_some_and(|r| r > 0));
    }
}

/// CPU time a process has used so far (user + system), seconds (`/proc/PID/stat`).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    parse_process_cpu(&text, clock_ticks())
}

/// utime + stime of a `/proc/PID/stat` line, in seconds at `ticks` per second.
pub fn parse_process_cpu(stat: &str, ticks: f64) -> Option<f64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod process_cpu_tests {
    #[test]
    fn stat_with_spaces_in_the_name() {
        let line = "4242 (ferry vm) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0";
        assert_eq!(super::parse_process_cpu(line, 100.0), Some(3.0));
        assert_eq!(super::parse_process_cpu("garbage", 100.0), None);
    }
}
