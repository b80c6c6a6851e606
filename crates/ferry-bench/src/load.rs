//! A busy host: plain busy loops (`yes > /dev/null`) the bench starts before a run and stops after
//! it, so that every core has a runnable process at nice 0 competing with the VM hosts.

use std::process::{Command, Stdio};

use crate::procs;
use crate::BenchError;

/// Running busy loops; killed (and reaped) on drop.
pub struct Hogs {
    children: Vec<std::process::Child>,
}

impl Hogs {
    /// Starts `n` busy loops: `yes` writing to /dev/null, at the harness's own niceness (0 when the
    /// bench runs at 0; [`Hogs::nice`] says what they got).
    pub fn start(n: u32) -> Result<Hogs, BenchError> {
        let mut hogs = Hogs { children: vec![] };
        for _ in 0..n {
            let child = Command::new("yes")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| BenchError::io("cannot start a busy loop (yes)", e))?;
            hogs.children.push(child);
        }
        Ok(hogs)
    }

    /// CPU time of all of them so far, ms (None if one is gone).
    pub fn cpu_ms(&self) -> Option<f64> {
        self.children.iter().map(|c| procs::cpu_ms(c.id())).sum()
    }

    /// Niceness of the first one (None without any).
    pub fn nice(&self) -> Option<i64> {
        procs::nice(self.children.first()?.id())
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn busy_loops_burn_cpu_and_go_away() {
        let h = Hogs::start(1).unwrap();
        assert_eq!(h.len(), 1);
        let pid = h.children[0].id();
        let t = std::time::Instant::now();
        while h.cpu_ms().unwrap() < 10.0 {
            assert!(t.elapsed() < Duration::from_secs(20), "yes used no CPU");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(h.nice(), procs::nice(std::process::id()));
        drop(h);
        assert_eq!(procs::cpu_ms(pid), None, "the busy loop is gone");
    }
}
