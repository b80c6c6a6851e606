//! Thread priorities: bulk page transfer yields the CPU to the work a running guest waits on
//! (its vCPU, fault requests, requested pages). On a host with few cores the two compete, and the
//! scheduler's default fairness lets a busy pusher delay a woken vCPU by milliseconds.

use std::time::{Duration, Instant};

/// Nice value of background transfer threads (weight about 1/10 of a default thread).
const BACKGROUND_NICE: libc::c_int = 10;

/// How long a post-copy pusher stays in the idle class after the guest resumes: the guest faults
/// hardest right then, and afterwards the push must not starve behind a busy host.
pub const IDLE_WINDOW: Duration = Duration::from_millis(100);

fn tid() -> libc::id_t {
    // SAFETY: gettid has no preconditions and returns the calling thread's id.
    unsafe { libc::gettid() as libc::id_t }
}

/// Lowers the calling thread's priority (nice 10) for the rest of its life.
///
/// Only for threads that end with the migration: an unprivileged process may not raise it again.
/// Failure is harmless (the transfer only competes as before) and is logged, not returned.
pub fn background() {
    // SAFETY: getpriority on our own thread id reads its nice value (-1 is also a valid value;
    // an error is impossible for our own id, and would only make us aim for 10).
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid()) };
    // SAFETY: setpriority on our own thread id only changes its scheduling weight; never upwards.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid(), BACKGROUND_NICE.max(current)) };
    if r != 0 {
        tracing::debug!(
            "could not lower a transfer thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn set_policy(policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call's duration.
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// A thread in the idle scheduling class, for a bounded time: see [`IdleWindow::tick`].
#[derive(Debug)]
pub struct IdleWindow {
    until: Option<Instant>,
}

impl IdleWindow {
    /// Puts the calling thread in the idle class (it runs only when a CPU has nothing else to do)
    /// for [`IDLE_WINDOW`]; at nice 10 if the idle class is refused.
    pub fn enter() -> Self {
        background();
        let idle = set_policy(libc::SCHED_IDLE);
        Self {
            until: idle.then(|| Instant::now() + IDLE_WINDOW),
        }
    }

    /// Call from the thread's loop: once the window is over, back to the normal class at nice 10.
    /// An unprivileged thread may be refused that (Linux checks RLIMIT_NICE); it then stays idle.
    pub fn tick(&mut self) {
        if self.until.is_some_and(|t| Instant::now() >= t) {
            self.until = None;
            if !set_policy(libc::SCHED_OTHER) {
                tracing::debug!(
                    "a transfer thread stays in the idle class: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice(tid: libc::id_t) -> libc::c_int {
        // SAFETY: getpriority on our own thread ids has no memory effects.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) }
    }

    fn policy() -> libc::c_int {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn background_lowers_only_the_calling_thread() {
        let main = tid();
        let before = nice(main);
        let inner = std::thread::spawn(move || {
            background();
            nice(tid())
        })
        .join()
        .unwrap();
        assert_eq!(inner, BACKGROUND_NICE.max(before));
        assert_eq!(nice(main), before);
    }

    #[test]
    fn idle_window_ends_in_the_normal_class() {
        std::thread::spawn(|| {
            let mut w = IdleWindow::enter();
            assert_eq!(policy(), libc::SCHED_IDLE);
            w.tick();
            assert_eq!(policy(), libc::SCHED_IDLE, "still inside the window");
            std::thread::sleep(IDLE_WINDOW);
            w.tick();
            // Root (CI) may leave the idle class; an unprivileged run may legitimately stay.
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0 {
                assert_eq!(policy(), libc::SCHED_OTHER);
            }
            assert_eq!(nice(tid()), BACKGROUND_NICE.max(nice(tid())));
        })
        .join()
        .unwrap();
    }
}
