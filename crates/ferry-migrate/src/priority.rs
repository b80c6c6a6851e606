//! Thread priorities: bulk page transfer yields the CPU to the work a running guest waits on
//! (its vCPU, fault requests, requested pages) right after a post-copy switch-over. On a host with
//! few cores the two compete, and the scheduler's default fairness let a busy pusher delay a woken
//! vCPU by milliseconds (guest-observed pause 2.0-4.7 ms with the push at nice 10, 1.9-3.1 ms with
//! it in the idle class, demo guest, 8 runs each).

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
