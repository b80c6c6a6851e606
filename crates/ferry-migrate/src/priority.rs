//! Thread priorities: bulk page transfer yields the CPU to the work a running guest waits on (its
//! vCPU, fault requests, requested pages). On a host with few cores they compete, and on kernels
//! without preemption and with a 4 ms tick (these machines) a thread that holds a core keeps it
//! until it blocks or the tick, whatever its weight. Three kinds of thread:
//! - [`Bulk`]: live-round copy, in the idle class and off the running vCPUs' CPUs; if it starves
//!   there (a busy host), back in the normal class for a fair share of the CPU, like any process;
//! - the post-copy push: the idle class for [`IDLE_WINDOW`] after the guest resumes, when it
//!   faults hardest (guest-observed pause 2.0-4.7 ms with the push at nice 10, 1.9-3.1 ms with the
//!   window, demo guest, 8 runs each), then [`background`] or normal;
//! - [`urgent`]: the threads a faulting post-copy guest waits on, in the real-time class.

use std::time::{Duration, Instant};

/// How long a post-copy pusher stays in the idle class after the guest resumes: the guest faults
/// hardest right then; afterwards the push must not starve behind a busy host (at nice 10 under a
/// parallel build, a 128 MiB push took 2.1 s instead of 0.25 s).
pub const IDLE_WINDOW: Duration = Duration::from_millis(100);

/// Nice value of threads that copy pages while the guest runs (weight about 1/10 of a default
/// thread): a running guest, here or another one on the host, keeps its CPU.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread to nice 10 for the rest of its life (only for threads that end with
/// their round or migration: an unprivileged thread may not come back). Live rounds on a 2-core
/// host otherwise descheduled the guest for 12-37 ms at a time (largest heartbeat gaps on the
/// source in `ferry bench qemu`). Failure only means the copy competes as before.
pub fn background() {
    // SAFETY: getpriority/setpriority on the calling thread (who = 0 means the caller, and for
    // PRIO_PROCESS Linux applies it to the calling thread) only read or lower its nice value.
    unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        if current < BACKGROUND_NICE {
            libc::setpriority(libc::PRIO_PROCESS, 0, BACKGROUND_NICE);
        }
    }
}

/// Sets the calling thread's nice value (raising it back needs the rights [`may_leave_idle`]
/// checks); failure is harmless.
fn set_nice(nice: libc::c_int) {
    // SAFETY: setpriority on the calling thread (who = 0; PRIO_PROCESS applies to the thread).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
}

/// How long a bulk thread in the idle class measures its progress before judging it starved.
const STARVE_WINDOW: Duration = Duration::from_millis(100);

/// Below this many bytes a second a bulk thread that also waited for a CPU most of the time is
/// starving, not merely sharing: a thread held up by the link waits in a socket call, not for a
/// CPU, and one sharing a core with other copy threads still moves hundreds of MB/s.
const STARVE_FLOOR_BYTES_PER_S: u64 = 32 << 20;

/// Whether a thread in the idle class starves: over `window` it waited for a CPU more than half
/// the time and moved fewer bytes than [`STARVE_FLOOR_BYTES_PER_S`].
pub fn starved(window: Duration, run_delay: Duration, bytes: u64) -> bool {
    let floor = STARVE_FLOOR_BYTES_PER_S as f64 * window.as_secs_f64();
    run_delay * 2 > window && (bytes as f64) < floor
}

/// CPU time the calling thread has used (CLOCK_THREAD_CPUTIME_ID; zero if unavailable).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Time the calling thread has waited on a run queue since it started (`/proc/thread-self/schedstat`).
fn run_delay() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPUs on which this process's vCPU threads (threads named `vcpu*`) last ran.
fn vcpu_cpus() -> Vec<usize> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            if !comm.starts_with("vcpu") {
                return None;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Fields after the command name (which may hold spaces) start at "state" (field 3);
            // field 39 is the CPU the thread last ran on. A halted vCPU sleeps: it needs no CPU.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            if fields.next()? != "R" {
                return None;
            }
            fields.nth(35)?.parse().ok()
        })
        .collect()
}

/// Keeps the calling thread off the CPUs this process's running vCPUs are on, if a CPU is left;
/// the thread's affinity before, if it changed it.
fn avoid_vcpu_cpus() -> Option<libc::cpu_set_t> {
    let busy = vcpu_cpus();
    if busy.is_empty() {
        return None;
    }
    // SAFETY: cpu_set_t is plain data (all zero is the empty set); sched_getaffinity and
    // sched_setaffinity on the calling thread (pid 0) read and write one set we own, of the size
    // we pass; CPU_CLR ignores CPUs beyond the set.
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut before) != 0 {
            return None;
        }
        let mut left = before;
        for &c in &busy {
            libc::CPU_CLR(c, &mut left);
        }
        (libc::CPU_COUNT(&left) > 0 && libc::sched_setaffinity(0, size, &left) == 0)
            .then_some(before)
    }
}

/// Sets the calling thread's CPU affinity back.
fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size we pass.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

/// Where a [`Bulk`] thread is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkClass {
    /// The idle class: it runs only on a CPU that nothing else wants.
    Idle,
    /// Nice 10 ([`background`]): the thread may not come back from the idle class, so it never
    /// entered it.
    Background,
    /// The normal class at the thread's own nice value: it starved in the idle class (a busy
    /// host) and now takes a fair share of the CPU, as any other process.
    Shared,
    /// Back where it started ([`Bulk::restore`]).
    Normal,
}

/// A thread that copies bulk pages while a guest runs on this host. A copy thread that the
/// scheduler puts on a running vCPU's core keeps it until it blocks or the next tick (4 ms at
/// HZ=250, whatever its weight: `perf sched` showed nice-10 and idle-class copy threads holding a
/// vCPU off for 2-4 ms; a 100 us slice through `sched_setattr` changed nothing, the
/// slice ends only at a tick here). So it stays off the CPUs this process's running vCPUs are on
/// when another CPU is left, and it runs in the idle class, which yields to every other thread
/// on its CPU. Scenario a of `ferry bench qemu`, largest guest gap over 8 runs: median 4.1 ms at
/// nice 10, 2.6 ms like this. On a host with no spare CPU the idle class would stall the
/// migration, so a thread that starves there ([`starved`]) goes to nice 10, which still gets
/// about a tenth of a core.
#[derive(Debug)]
pub struct Bulk {
    class: BulkClass,
    /// The nice value to go back to, when the thread may.
    before: Option<libc::c_int>,
    /// The CPU affinity to go back to, when the thread changed it.
    affinity: Option<libc::cpu_set_t>,
    window_start: Instant,
    delay_at_start: Duration,
    bytes: u64,
    /// The thread's CPU time when it entered.
    cpu_at_enter: Duration,
}

impl Bulk {
    /// Puts the calling thread in the idle class if it may come back from it, otherwise at
    /// background priority for good.
    pub fn enter() -> Self {
        // SAFETY: getpriority on the calling thread reads its nice value.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let idle = may_leave_idle() && set_policy(libc::SCHED_IDLE);
        if !idle {
            background();
        }
        let affinity = avoid_vcpu_cpus();
        Self {
            class: if idle {
                BulkClass::Idle
            } else {
                BulkClass::Background
            },
            before: idle.then_some(nice),
            affinity,
            window_start: Instant::now(),
            delay_at_start: run_delay().unwrap_or_default(),
            bytes: 0,
            cpu_at_enter: thread_cpu_time(),
        }
    }

    /// CPU time the thread used since it entered (its share of a busy host shows here).
    pub fn cpu_time(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.cpu_at_enter)
    }

    /// Where the thread is now.
    pub fn class(&self) -> BulkClass {
        self.class
    }

    /// Call after moving `bytes`: leaves the idle class if the thread starves there.
    pub fn progress(&mut self, bytes: u64) {
        if self.class != BulkClass::Idle {
            return;
        }
        self.bytes += bytes;
        let window = self.window_start.elapsed();
        if window < STARVE_WINDOW {
            return;
        }
        let Some(delay) = run_delay() else { return };
        if starved(
            window,
            delay.saturating_sub(self.delay_at_start),
            self.bytes,
        ) {
            // A busy host (issue 12 item 5): every CPU is taken, by the guest or by others. At
            // nice 10 the copy got about a twentieth of a core next to two busy loops and took
            // 2-4x QEMU's time, whose migration thread runs at nice 0; a migration finishes in
            // the time its fair share of the CPU allows, and the guest's vCPU keeps its own share
            // (the copy stays off the vCPU's CPU where another is left).
            tracing::debug!(
                "a copy thread starves in the idle class ({} bytes in {window:?}): normal class",
                self.bytes
            );
            set_policy(libc::SCHED_OTHER);
            match self.before {
                Some(nice) => set_nice(nice),
                None => background(),
            }
            self.class = BulkClass::Shared;
        }
        self.window_start = Instant::now();
        self.delay_at_start = delay;
        self.bytes = 0;
    }

    /// Back to the normal class at the thread's first nice value, if it
    /// may (the pages it moves are now on a paused or running guest's critical path).
    pub fn restore(&mut self) {
        if let Some(set) = self.affinity.take() {
            set_affinity(&set);
        }
        if let Some(nice) = self.before.take() {
            set_policy(libc::SCHED_OTHER);
            set_nice(nice);
            self.class = BulkClass::Normal;
        }
    }
}

/// Puts the calling thread in the real-time class (SCHED_FIFO, lowest priority) if the process may:
/// for the threads a faulting post-copy guest waits on (fault requests, requested pages). They
/// work for microseconds per fault and then block; in the normal class a woken one that found
/// both cores busy waited for the running thread's 4 ms scheduler tick (post-copy fault waits of
/// 2-5 ms, `FERRY_LOG=ferry_migrate=debug`). Returns whether it took effect.
pub fn urgent() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call's duration.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call's duration.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// Whether this thread may leave the idle class again: Linux lets a thread go back to the normal
/// class at its nice value only within RLIMIT_NICE, or with CAP_SYS_NICE (root here).
fn may_leave_idle() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: geteuid has no preconditions; getrlimit writes one rlimit we own.
    let (root, got) = unsafe {
        (
            libc::geteuid() == 0,
            libc::getrlimit(libc::RLIMIT_NICE, &mut lim),
        )
    };
    // SAFETY: getpriority on the calling thread reads its nice value.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    root || (got == 0 && lim.rlim_cur >= (20 - nice) as libc::rlim_t)
}

/// A thread in the idle scheduling class for [`IDLE_WINDOW`]: see [`IdleWindow::tick`].
#[derive(Debug)]
pub struct IdleWindow {
    until: Option<Instant>,
}

impl IdleWindow {
    /// Puts the calling thread in the idle class (it runs only when a CPU has nothing else to do),
    /// if it will be allowed back; otherwise leaves it as it is.
    pub fn enter() -> Self {
        let idle = may_leave_idle() && set_policy(libc::SCHED_IDLE);
        Self {
            until: idle.then(|| Instant::now() + IDLE_WINDOW),
        }
    }

    /// Whether the thread is in the idle class now.
    pub fn is_idle(&self) -> bool {
        self.until.is_some()
    }

    /// Call from the thread's loop: once the window is over, back to the normal class.
    pub fn tick(&mut self) {
        if self.until.is_some_and(|t| Instant::now() >= t) {
            self.until = None;
            if !set_policy(libc::SCHED_OTHER) {
                tracing::warn!(
                    "a post-copy transfer thread stays in the idle class: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> libc::c_int {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn background_lowers_only_the_calling_thread() {
        // SAFETY: getpriority on the calling thread.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = nice();
        let inner = std::thread::spawn(move || {
            background();
            nice()
        })
        .join()
        .unwrap();
        assert_eq!(inner, BACKGROUND_NICE.max(before));
        assert_eq!(nice(), before);
    }

    fn allowed_cpus() -> u32 {
        // SAFETY: as in avoid_vcpu_cpus.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            libc::CPU_COUNT(&set) as u32
        }
    }

    #[test]
    fn starving_needs_both_a_long_wait_and_little_progress() {
        let w = Duration::from_millis(100);
        assert!(starved(w, Duration::from_millis(90), 1 << 20));
        assert!(
            !starved(w, Duration::from_millis(90), 8 << 20),
            "shares a core, moves data"
        );
        assert!(
            !starved(w, Duration::from_millis(10), 0),
            "waits on the link, not a CPU"
        );
        assert!(
            !starved(w, Duration::from_millis(50), 0),
            "half the time is not starving"
        );
    }

    #[test]
    fn bulk_goes_idle_and_comes_back() {
        std::thread::spawn(|| {
            // SAFETY: getpriority on the calling thread.
            let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let before = nice();
            let mut b = Bulk::enter();
            if !may_leave_idle() {
                assert_eq!(b.class(), BulkClass::Background);
                return;
            }
            assert_eq!(b.class(), BulkClass::Idle);
            assert_eq!(policy(), libc::SCHED_IDLE);
            b.progress(1 << 30); // plenty of progress: stays idle
            assert_eq!(b.class(), BulkClass::Idle);
            b.restore();
            assert_eq!(b.class(), BulkClass::Normal);
            assert_eq!(policy(), libc::SCHED_OTHER);
            assert_eq!(nice(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_starving_bulk_thread_leaves_the_idle_class() {
        if !may_leave_idle() {
            return; // it never enters the idle class then (checked above)
        }
        // A normal-class spinner and the bulk thread on one CPU: the idle class gets next to
        // nothing there.
        let cpu = {
            // SAFETY: sched_getcpu has no preconditions.
            let c = unsafe { libc::sched_getcpu() };
            c.max(0) as usize
        };
        let pin = move || {
            // SAFETY: as in avoid_vcpu_cpus; the set holds one CPU this thread may use.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        // SAFETY: getpriority on the calling thread.
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let class = std::thread::spawn(move || {
            pin();
            let mut b = Bulk::enter();
            let end = Instant::now() + Duration::from_secs(10);
            // Work at a copy thread's pace (about 1 GB/s): the idle class's crumbs of CPU
            // move far less than the floor.
            let page = vec![1u8; 4096];
            let mut sum = 0u64;
            while b.class() == BulkClass::Idle && Instant::now() < end {
                for &x in std::hint::black_box(&page).iter() {
                    sum = sum.wrapping_mul(31).wrapping_add(u64::from(x));
                }
                b.progress(page.len() as u64);
            }
            std::hint::black_box(sum);
            // SAFETY: getpriority on the calling thread.
            (b.class(), policy(), unsafe {
                libc::getpriority(libc::PRIO_PROCESS, 0)
            })
        })
        .join()
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        // Back in the normal class at its own nice value: a fair share of the busy CPU.
        assert_eq!(class, (BulkClass::Shared, libc::SCHED_OTHER, before));
    }

    #[test]
    fn bulk_keeps_off_a_running_vcpu() {
        if allowed_cpus() < 2 {
            return; // no CPU would be left
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let vcpu = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
                .unwrap()
        };
        std::thread::sleep(Duration::from_millis(20));
        let (seen, during, after, all) = std::thread::spawn(|| {
            let all = allowed_cpus();
            let seen = vcpu_cpus();
            let mut b = Bulk::enter();
            let during = allowed_cpus();
            b.restore();
            (seen, during, allowed_cpus(), all)
        })
        .join()
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        vcpu.join().unwrap();
        assert_eq!(seen.len(), 1, "the spinning vcpu0 thread is found");
        assert_eq!(during, all - 1);
        assert_eq!(after, all);
    }

    #[test]
    fn urgent_threads_are_real_time_when_allowed() {
        let main = policy();
        let (ok, p) = std::thread::spawn(|| (urgent(), policy())).join().unwrap();
        if ok {
            assert_eq!(p, libc::SCHED_FIFO);
        } else {
            assert_eq!(p, main, "a refused change leaves the thread as it was");
        }
        assert_eq!(policy(), main, "only the calling thread changes");
    }

    #[test]
    fn idle_window_ends_in_the_normal_class() {
        let main = policy();
        std::thread::spawn(|| {
            let mut w = IdleWindow::enter();
            if !w.is_idle() {
                // Not allowed back (unprivileged, RLIMIT_NICE): then it must not have gone idle.
                assert_eq!(policy(), libc::SCHED_OTHER);
                return;
            }
            assert_eq!(policy(), libc::SCHED_IDLE);
            w.tick();
            assert_eq!(policy(), libc::SCHED_IDLE, "still inside the window");
            std::thread::sleep(IDLE_WINDOW);
            w.tick();
            assert_eq!(policy(), libc::SCHED_OTHER);
            assert!(!w.is_idle());
        })
        .join()
        .unwrap();
        assert_eq!(policy(), main, "only the calling thread changes");
    }
}
