//! Post-copy support for guest RAM: pages the destination does not have yet are *missing*; a guest
//! (or KVM on its behalf) touching one blocks on userfaultfd until the page is placed atomically.
//!
//! Works on memfd RAM (4 KiB or shmem THP: holes punched in the file) and anonymous RAM
//! (`MADV_DONTNEED`); not on hugetlb RAM, whose pages can only be placed 2 MiB at a time.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::memory::{GuestRam, RamBacking, PAGE_SIZE};
use crate::uffd::{CopyOutcome, Userfaultfd, FEATURE_MISSING_SHMEM};
use crate::VmmError;

/// Guest RAM with userfaultfd fault tracking.
pub struct PostcopyRam {
    ram: Arc<GuestRam>,
    uffd: Userfaultfd,
}

impl std::fmt::Debug for PostcopyRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostcopyRam")
            .field("size", &self.ram.size())
            .finish()
    }
}

fn uffd_err(op: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |e| VmmError::BadState(format!("userfaultfd {op}: {e}"))
}

impl PostcopyRam {
    /// Opens a userfaultfd for `ram` (not yet armed).
    pub fn new(ram: Arc<GuestRam>) -> Result<Self, VmmError> {
        let features = match ram.backing() {
            RamBacking::Memfd | RamBacking::ShmemThpMemfd => FEATURE_MISSING_SHMEM,
            // Anonymous memory is what userfaultfd always supported: no feature bit.
            RamBacking::AnonThp => 0,
            RamBacking::HugetlbMemfd => {
                return Err(VmmError::Unsupported(
                    "post-copy on hugetlb RAM (pages can only be placed 2 MiB at a time)",
                ))
            }
        };
        // KVM resolves guest accesses from kernel mode (get_user_pages): those faults must be seen,
        // so the fd is opened without UFFD_USER_MODE_ONLY.
        let uffd = Userfaultfd::open(features)
            .map_err(uffd_err("open (is /dev/userfaultfd available?)"))?;
        Ok(Self { ram, uffd })
    }

    /// Drops the content of pages `[first, first + count)` so they read as missing
    /// ([`GuestRam::discard`]).
    pub fn discard(&self, first: u64, count: u64) -> Result<(), VmmError> {
        self.ram.discard(first, count)
    }

    /// Starts trapping accesses to missing pages.
    pub fn arm(&self) -> Result<(), VmmError> {
        self.uffd
            .register(self.ram.host_base(), self.ram.size() as usize)
            .map_err(uffd_err("register"))?;
        Ok(())
    }

    /// Stops trapping (every page is present).
    pub fn disarm(&self) -> Result<(), VmmError> {
        self.uffd
            .unregister(self.ram.host_base(), self.ram.size() as usize)
            .map_err(uffd_err("unregister"))
    }

    /// Waits up to `timeout` for an access to a missing page; returns its page index.
    pub fn next_fault(&self, timeout: Duration) -> Result<Option<u64>, VmmError> {
        let mut pfd = libc::pollfd {
            fd: self.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n <= 0 {
            return Ok(None);
        }
        match self.uffd.read_fault().map_err(uffd_err("read"))? {
            Some(addr) => {
                let off = addr.wrapping_sub(self.ram.host_base() as u64);
                Ok((off < self.ram.size()).then_some(off / PAGE_SIZE as u64))
            }
            None => Ok(None),
        }
    }

    /// Installs pages `index..index + n` (`data` is `n` whole pages) atomically and wakes whoever
    /// waits for them, with one system call for the whole run when none is present yet. A page
    /// that is already present is left as it is (it arrived by another path first).
    pub fn place(&self, index: u64, data: &[u8]) -> Result<(), VmmError> {
        let n = (data.len() / PAGE_SIZE) as u64;
        if data.is_empty()
            || !data.len().is_multiple_of(PAGE_SIZE)
            || index
                .checked_add(n)
                .is_none_or(|end| end > self.ram.pages())
        {
            return Err(VmmError::OutOfRange {
                addr: index * PAGE_SIZE as u64,
                len: data.len() as u64,
            });
        }
        let mut done = 0usize;
        while done < data.len() {
            // SAFETY: pages `index..index + n` lie in the mapping (checked above), so the
            // destination is RAM registered with this uffd, and `data[done..]` is readable.
            // UFFDIO_COPY copies atomically, page by page, and never overwrites a present page.
            let dst = unsafe { self.ram.host_base().add(index as usize * PAGE_SIZE + done) };
            let left = data.len() - done;
            // SAFETY: as above.
            match unsafe { self.uffd.copy(data[done..].as_ptr(), dst, left) } {
                Ok(CopyOutcome::Done) => return Ok(()),
                // Stopped at a present page: the pages before it went in.
                Ok(CopyOutcome::Partial(c)) if c > 0 && c.is_multiple_of(PAGE_SIZE) => done += c,
                Ok(CopyOutcome::Partial(c)) => {
                    return Err(VmmError::BadState(format!(
                        "userfaultfd copy stopped after {c} bytes, not a page boundary"
                    )))
                }
                Ok(CopyOutcome::Exists) => {
                    self.uffd.wake(dst, PAGE_SIZE).map_err(uffd_err("wake"))?;
                    done += PAGE_SIZE;
                }
                Err(e) => return Err(uffd_err("copy")(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_page_blocks_until_placed() {
        if !crate::testing::require_userfaultfd() {
            return;
        }
        for b in [
            RamBacking::Memfd,
            RamBacking::ShmemThpMemfd,
            RamBacking::AnonThp,
        ] {
            eprintln!("backing {b:?}");
            missing_page_blocks_until_placed(b);
        }
    }

    #[test]
    fn hugetlb_ram_refuses_post_copy() {
        let Some(_pool) = crate::testing::require_hugetlb(2) else {
            return;
        };
        let ram = Arc::new(GuestRam::with_backing(4 << 20, RamBacking::HugetlbMemfd).unwrap());
        assert!(matches!(
            PostcopyRam::new(ram),
            Err(VmmError::Unsupported(_))
        ));
    }

    fn missing_page_blocks_until_placed(backing: RamBacking) {
        let ram = Arc::new(GuestRam::with_backing(4 << 20, backing).unwrap());
        ram.write_u64(3 * PAGE_SIZE as u64, 0x1111).unwrap();
        ram.write_u64(5 * PAGE_SIZE as u64, 0x2222).unwrap();
        let pc = Arc::new(PostcopyRam::new(ram.clone()).unwrap());
        pc.discard(3, 1).unwrap();
        pc.arm().unwrap();
        // Page 5 stayed present: reading it does not fault.
        assert_eq!(ram.read_u64(5 * PAGE_SIZE as u64).unwrap(), 0x2222);
        let reader = {
            let ram = ram.clone();
            std::thread::spawn(move || ram.read_u64(3 * PAGE_SIZE as u64 + 8).unwrap())
        };
        let fault = loop {
            if let Some(p) = pc.next_fault(Duration::from_secs(5)).unwrap() {
                break p;
            }
        };
        assert_eq!(fault, 3);
        let mut page = vec![0u8; PAGE_SIZE];
        page[8..16].copy_from_slice(&0xabcd_u64.to_le_bytes());
        pc.place(3, &page).unwrap();
        assert_eq!(reader.join().unwrap(), 0xabcd);
        pc.place(3, &page).unwrap(); // already present: not an error
                                     // A run with a present page in the middle: the others go in, the present one stays.
        pc.discard(2, 3).unwrap();
        pc.place(3, &page).unwrap();
        let mut run = vec![0u8; 3 * PAGE_SIZE];
        run[..8].copy_from_slice(&7u64.to_le_bytes());
        run[2 * PAGE_SIZE..2 * PAGE_SIZE + 8].copy_from_slice(&9u64.to_le_bytes());
        pc.place(2, &run).unwrap();
        assert_eq!(ram.read_u64(2 * PAGE_SIZE as u64).unwrap(), 7);
        assert_eq!(ram.read_u64(3 * PAGE_SIZE as u64 + 8).unwrap(), 0xabcd);
        assert_eq!(ram.read_u64(4 * PAGE_SIZE as u64).unwrap(), 9);
        assert!(
            pc.place(1023, &run).is_err(),
            "a run past the end is refused"
        );
        pc.disarm().unwrap();
    }
}
