//! One clock for every host-side timestamp, comparable across processes on one machine.

/// Nanoseconds of `CLOCK_MONOTONIC`: the same clock in every process on the host, so a source's
/// last heartbeat and a destination's first one can be subtracted.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}
