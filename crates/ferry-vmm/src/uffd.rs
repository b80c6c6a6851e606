//! The userfaultfd ABI, defined here from `<linux/userfaultfd.h>`: a handful of ioctls and
//! `repr(C)` structs. Defining them in the project (instead of a `-sys` crate that runs bindgen)
//! keeps the build free of libclang: `cargo build` needs only the Rust toolchain.
//!
//! Only what post-copy uses is here: open (system call, falling back to `/dev/userfaultfd`), the
//! API handshake, register/unregister in MISSING mode, `UFFDIO_COPY`, `UFFDIO_WAKE`, and reading
//! page-fault events.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `UFFD_API`: the only API version the kernel speaks.
const UFFD_API: u64 = 0xaa;
/// The ioctl type byte of every userfaultfd ioctl.
const UFFDIO: u64 = 0xaa;

/// Kernel feature bit: MISSING faults on shmem (memfd) mappings.
pub const FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Kernel feature bit: MISSING faults on hugetlbfs mappings.
pub const FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;

/// `UFFDIO_REGISTER_MODE_MISSING`.
const REGISTER_MODE_MISSING: u64 = 1;
/// `UFFD_EVENT_PAGEFAULT`.
const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_USER_MODE_ONLY`: a flag of the system call; ferry never sets it (KVM's own accesses to
/// guest RAM are kernel-mode faults and must be caught too).
#[allow(dead_code)]
const USER_MODE_ONLY: libc::c_int = 1;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    /// Bytes copied, or a negated errno.
    copy: i64,
}

/// `struct uffd_msg` (32 bytes): the event byte, padding, then a 24-byte union whose page-fault
/// arm is `{ flags: u64, address: u64, ptid: u32 }`.
#[repr(C)]
#[derive(Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    arg: [u64; 3],
}

const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

/// `_IOC(dir, type, nr, size)` as the kernel's asm-generic encoding defines it.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const UFFDIO_API: u64 = ioc(IOC_READ | IOC_WRITE, 0x3f, std::mem::size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);
const UFFDIO_UNREGISTER: u64 = ioc(IOC_READ, 0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: u64 = ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x03,
    std::mem::size_of::<UffdioCopy>(),
);
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd`: `_IO(0xaa, 0x00)`.
const USERFAULTFD_IOC_NEW: u64 = ioc(0, 0x00, 0);

/// The result of a `UFFDIO_COPY` that did not fail outright.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyOutcome {
    /// Every byte was copied.
    Done,
    /// The kernel stopped after this many bytes (it met a present page, or was interrupted).
    Partial(usize),
    /// The first page is already present (`EEXIST`): nothing was copied.
    Exists,
}

/// An open userfaultfd, non-blocking and close-on-exec, after the API handshake.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: File,
}

impl Userfaultfd {
    /// Opens a userfaultfd that sees kernel-mode faults too, and requires the kernel `features`
    /// (for example [`FEATURE_MISSING_SHMEM`]). Tries the system call first, then
    /// `/dev/userfaultfd` (which works where `vm.unprivileged_userfaultfd` forbids the call).
    pub fn open(features: u64) -> io::Result<Self> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        // SAFETY: the userfaultfd system call takes one int of flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        let fd = if raw >= 0 {
            // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
            unsafe { OwnedFd::from_raw_fd(raw as RawFd) }
        } else {
            let dev = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/userfaultfd")?;
            // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its integer argument and returns a
            // new userfaultfd or -1; `dev` is an open /dev/userfaultfd.
            let raw = unsafe {
                libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as libc::c_ulong, flags)
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above, a fresh fd owned by nobody else.
            unsafe { OwnedFd::from_raw_fd(raw) }
        };
        let uffd = Self { fd: File::from(fd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        uffd.ioctl(UFFDIO_API, &mut api)?;
        if api.features & features != features {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the kernel lacks userfaultfd features {:#x}",
                    features & !api.features
                ),
            ));
        }
        Ok(uffd)
    }

    fn ioctl<T>(&self, request: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: every request used in this module is paired with the struct type the kernel
        // reads and writes for it (sizes asserted above, encoded in the request number), and `arg`
        // is a live, exclusive reference for the duration of the call.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                request as libc::c_ulong,
                std::ptr::from_mut(arg),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Traps accesses to missing pages in `[start, start + len)` (MISSING mode).
    pub fn register(&self, start: *mut u8, len: usize) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        self.ioctl(UFFDIO_REGISTER, &mut reg)
    }

    /// Stops trapping `[start, start + len)`; threads waiting there are woken.
    pub fn unregister(&self, start: *mut u8, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        self.ioctl(UFFDIO_UNREGISTER, &mut range)
    }

    /// Wakes threads waiting on `[start, start + len)`.
    pub fn wake(&self, start: *mut u8, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        self.ioctl(UFFDIO_WAKE, &mut range)
    }

    /// Copies `len` bytes from `src` into the registered range at `dst` atomically, page by page,
    /// never overwriting a present page, and wakes the waiters.
    ///
    /// # Safety
    /// `src..src + len` must be readable, and `dst..dst + len` must lie in a range registered with
    /// this userfaultfd (page-aligned, `len` a multiple of the page size).
    pub unsafe fn copy(&self, src: *const u8, dst: *mut u8, len: usize) -> io::Result<CopyOutcome> {
        let mut c = UffdioCopy {
            dst: dst as u64,
            src: src as u64,
            len: len as u64,
            mode: 0,
            copy: 0,
        };
        match self.ioctl(UFFDIO_COPY, &mut c) {
            Ok(()) if c.copy == len as i64 => Ok(CopyOutcome::Done),
            Ok(()) => Ok(CopyOutcome::Partial(usize::try_from(c.copy).unwrap_or(0))),
            // The kernel reports a partial copy as EAGAIN with the bytes copied in `copy`.
            Err(_) if c.copy > 0 => Ok(CopyOutcome::Partial(usize::try_from(c.copy).unwrap_or(0))),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(CopyOutcome::Exists),
            Err(e) => Err(e),
        }
    }

    /// Reads one event without blocking: the faulting address of a page fault, `None` when no
    /// event is pending or the event is not a page fault.
    pub fn read_fault(&self) -> io::Result<Option<u64>> {
        let mut msg = UffdMsg::default();
        // SAFETY: reading at most size_of::<UffdMsg>() bytes into a live, exclusive struct of
        // plain integers (any bit pattern is valid).
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::from_mut(&mut msg).cast(),
                std::mem::size_of::<UffdMsg>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            };
        }
        if usize::try_from(n).ok() != Some(std::mem::size_of::<UffdMsg>()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short read from userfaultfd",
            ));
        }
        Ok((msg.event == EVENT_PAGEFAULT).then_some(msg.arg[1]))
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // Values from <linux/userfaultfd.h> on x86-64, as the C preprocessor expands them.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
    }
}
