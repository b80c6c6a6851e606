//! Child processes: CPU time from /proc/PID/stat, waiting for exit without reaping (so the CPU time
//! of an exited process can still be read while it is a zombie), kill on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// Linux reports utime/stime in USER_HZ ticks, 100 per second on every architecture ferry runs on.
const TICK_MS: f64 = 10.0;

/// User + system CPU time of process `pid` (all its threads), in ms; None if it is gone (reaped).
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start with the state, field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 * TICK_MS)
}

/// Niceness of process `pid` (field 19 of /proc/PID/stat); None if it is gone.
pub fn nice(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// Process state letter from /proc/PID/stat ('R', 'S', 'Z', ...).
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// A child process with a log file for its stderr; killed (and reaped) on drop.
pub struct Proc {
    /// The child.
    pub child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr to `dir/name.log` and the given stdout.
    pub fn spawn(
        name: &str,
        dir: &Path,
        mut cmd: Command,
        stdout: Stdio,
    ) -> Result<Proc, BenchError> {
        let log = dir.join(format!("{name}.log"));
        let err = std::fs::File::create(&log)
            .map_err(|e| BenchError::io(format!("cannot create {}", log.display()), e))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .map_err(|e| BenchError::io(format!("cannot start {name} ({cmd:?})"), e))?;
        Ok(Proc {
            child,
            name: name.to_string(),
            log,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time so far (ms).
    pub fn cpu_ms(&self) -> Option<f64> {
        cpu_ms(self.pid())
    }

    /// Whether the process has exited (zombie or gone), without reaping it.
    pub fn exited(&self) -> bool {
        !matches!(state(self.pid()), Some(c) if c != 'Z' && c != 'X')
    }

    /// Waits up to `timeout` for the process to exit, without reaping it; whether it did.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.exited()
    }

    /// Fails with the log tail if the process has exited.
    pub fn check_alive(&self) -> Result<(), BenchError> {
        if self.exited() {
            return Err(BenchError::Setup(format!(
                "{} exited early: {}",
                self.name,
                self.log_tail()
            )));
        }
        Ok(())
    }

    /// Last lines of the process's stderr.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().rev().take(6).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Kills (if still running) and reaps.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on loopback (bound, then released: the engine binds it right after).
pub fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("cannot bind a loopback port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("local_addr", e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_cpu_time_is_readable() {
        let t = super::cpu_ms(std::process::id()).unwrap();
        assert!(t >= 0.0);
    }
}
