//! Guest RAM: one mapping in the VMM (a memfd, a hugetlb memfd or anonymous memory: see
//! [`backing`]), exposed to KVM as one or two slots.
//!
//! Migration addresses RAM by *page index* into the mapping (offset / 4 KiB), not by guest
//! physical address, so the hole below 4 GiB never shows up in the stream.

pub mod backing;
mod populate;
mod residency;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use backing::{
    choose, BackingError, HostMemory, RamBacking, RamBackingChoice, RamPlan, RamRequest,
    HUGE_PAGE_SIZE,
};
pub use populate::Populator;

use crate::VmmError;

/// Size of a guest page as migration sees it.
pub const PAGE_SIZE: usize = 4096;

/// RAM above this guest-physical address is placed at [`HIGH_RAM_START`] instead, keeping the
/// LAPIC/IOAPIC window free.
pub const LOW_RAM_MAX: u64 = 3 << 30;
/// Where RAM beyond [`LOW_RAM_MAX`] is mapped.
pub const HIGH_RAM_START: u64 = 4 << 30;

/// One KVM memory slot: a guest-physical range backed by a range of the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// KVM slot number.
    pub id: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Byte offset into the mapping (and the memfd, when there is one).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Where a RAM's pages may have been written from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// Created by this process: only it (and its KVM VM) has touched the pages.
    Created,
    /// Mapped from a file handed over by another process, which wrote pages this one never mapped.
    HandedOver,
}

/// Guest RAM: one mapping of [`GuestRam::size`] bytes, aligned to 2 MiB (so KVM can map huge
/// pages where the backing has them), made of the [`RamBacking`] it was created with.
#[derive(Debug)]
pub struct GuestRam {
    /// The memfd (None for anonymous RAM).
    file: Option<File>,
    backing: RamBacking,
    origin: Origin,
    base: *mut u8,
    size: u64,
    slots: Vec<Slot>,
}

// SAFETY: the mapping is owned by `GuestRam` and lives until drop; all access goes through raw-pointer
// copies bounded by `size`, which is sound from any thread (the guest itself writes concurrently, as
// with any VMM; we never hand out references into guest RAM).
unsafe impl Send for GuestRam {}
// SAFETY: as for Send: shared access only copies bytes in or out through raw pointers.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM in a fresh memfd with 4 KiB pages
    /// ([`RamBacking::Memfd`]): shareable, and the same on every host.
    pub fn new(size: u64) -> Result<Self, VmmError> {
        Self::with_backing(size, RamBacking::Memfd)
    }

    /// Creates `size` bytes of zeroed guest RAM of the given backing.
    pub fn with_backing(size: u64, backing: RamBacking) -> Result<Self, VmmError> {
        check_size(size)?;
        let file = match backing {
            RamBacking::AnonThp => None,
            RamBacking::Memfd | RamBacking::ShmemThpMemfd => Some(memfd(size, 0)?),
            RamBacking::HugetlbMemfd => Some(memfd(size, libc::MFD_HUGETLB | libc::MFD_HUGE_2MB)?),
        };
        Self::map(file, backing, Origin::Created, size)
    }

    /// Chooses a backing for `req` from this host's facts ([`backing::choose`]) and creates the
    /// RAM. When `auto` picked the hugetlb pool and another process took the pages meanwhile,
    /// chooses again without it.
    pub fn planned(req: &RamRequest) -> Result<(Self, RamPlan), VmmError> {
        let mut host = HostMemory::read();
        let plan = choose(&host, req)?;
        match Self::with_backing(req.size, plan.backing) {
            Err(VmmError::Memory { .. })
                if plan.backing == RamBacking::HugetlbMemfd
                    && req.choice == RamBackingChoice::Auto =>
            {
                host.hugetlb = None;
                let mut plan = choose(&host, req)?;
                plan.reason = format!("{}; the hugetlb pool ran short at creation", plan.reason);
                Ok((Self::with_backing(req.size, plan.backing)?, plan))
            }
            r => Ok((r?, plan)),
        }
    }

    /// Maps RAM from an existing memfd handed over by a peer on this host (no copy). Its backing
    /// (hugetlb or shmem) is read from the file.
    pub fn from_file(file: File, size: u64) -> Result<Self, VmmError> {
        check_size(size)?;
        let len = file
            .metadata()
            .map_err(|source| VmmError::Memory { size, source })?
            .len();
        if len != size {
            return Err(VmmError::BadState(format!(
                "memory file holds {len} bytes, the VM needs {size}"
            )));
        }
        // SAFETY: an all-zero statfs is a valid value of this plain C struct.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs writes one statfs into the live, exclusive `fs`; the fd is ours.
        if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
            return Err(mem_err(size));
        }
        let backing = if fs.f_type == libc::HUGETLBFS_MAGIC {
            RamBacking::HugetlbMemfd
        } else if fs.f_type == libc::TMPFS_MAGIC {
            if HostMemory::read().shmem_thp() {
                RamBacking::ShmemThpMemfd
            } else {
                RamBacking::Memfd
            }
        } else {
            return Err(VmmError::BadState(format!(
                "memory file is on neither tmpfs nor hugetlbfs (filesystem magic {:#x})",
                fs.f_type
            )));
        };
        Self::map(Some(file), backing, Origin::HandedOver, size)
    }

    fn map(
        file: Option<File>,
        backing: RamBacking,
        origin: Origin,
        size: u64,
    ) -> Result<Self, VmmError> {
        let len = size as usize;
        // Reserve 2 MiB more address space than needed and place the RAM at its first 2 MiB
        // boundary: KVM maps a huge page only where host and guest addresses agree modulo 2 MiB,
        // and slot 0 starts at guest-physical 0.
        let slack = HUGE_PAGE_SIZE as usize;
        // SAFETY: a fresh inaccessible anonymous reservation (addr NULL); checked below.
        let area = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + slack,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if area == libc::MAP_FAILED {
            return Err(mem_err(size));
        }
        let head = (area as usize).next_multiple_of(slack) - area as usize;
        // SAFETY: `head <= slack`, so `area + head` lies inside the reservation.
        let want = unsafe { area.cast::<u8>().add(head) }.cast::<libc::c_void>();
        let (flags, fd) = match &file {
            // No MAP_NORESERVE for hugetlb: the pool pages are reserved now, so a short pool fails
            // here with ENOMEM instead of a SIGBUS at some later guest fault.
            Some(f) if backing == RamBacking::HugetlbMemfd => (libc::MAP_SHARED, f.as_raw_fd()),
            Some(f) => (libc::MAP_SHARED | libc::MAP_NORESERVE, f.as_raw_fd()),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
            ),
        };
        // SAFETY: MAP_FIXED over `[want, want + len)`, which lies inside our own reservation (so
        // it replaces nothing but that); the file, when there is one, is at least `len` long.
        let base = unsafe {
            libc::mmap(
                want,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                fd,
                0,
            )
        };
        let failed = (base == libc::MAP_FAILED).then(std::io::Error::last_os_error);
        // SAFETY: unmapping the parts of our own reservation before and after the RAM (or all of
        // it when the mapping failed); nothing else lives there.
        unsafe {
            match failed {
                Some(_) => {
                    libc::munmap(area, len + slack);
                }
                None => {
                    if head > 0 {
                        libc::munmap(area, head);
                    }
                    if slack - head > 0 {
                        libc::munmap(want.cast::<u8>().add(len).cast(), slack - head);
                    }
                }
            }
        }
        if let Some(source) = failed {
            return Err(VmmError::Memory { size, source });
        }
        if matches!(backing, RamBacking::AnonThp | RamBacking::ShmemThpMemfd) {
            // SAFETY: advice on our own fresh mapping; it changes no contents.
            unsafe { libc::madvise(base, len, libc::MADV_HUGEPAGE) };
        }
        if file.is_none() {
            // A private mapping would otherwise be copied-on-write into a forked child (as QEMU
            // does, keep guest RAM out of any fork: the guest's next writes would all fault).
            // SAFETY: advice on our own fresh mapping; it changes no contents.
            unsafe { libc::madvise(base, len, libc::MADV_DONTFORK) };
        }
        let low = size.min(LOW_RAM_MAX);
        let mut slots = vec![Slot {
            id: 0,
            gpa: 0,
            offset: 0,
            len: low,
        }];
        if size > low {
            slots.push(Slot {
                id: 1,
                gpa: HIGH_RAM_START,
                offset: low,
                len: size - low,
            });
        }
        Ok(Self {
            file,
            backing,
            origin,
            base: base.cast(),
            size,
            slots,
        })
    }

    /// What this RAM is made of.
    pub fn backing(&self) -> RamBacking {
        self.backing
    }

    /// Total bytes of RAM.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.size / PAGE_SIZE as u64
    }

    /// The KVM slots this RAM is exposed as.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The memfd, for handing the RAM to another process on this host (None: anonymous RAM,
    /// which no other process can map).
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// Host address of the mapping (for KVM's memory regions and userfaultfd).
    pub fn host_base(&self) -> *mut u8 {
        self.base
    }

    /// Bytes of RAM below 4 GiB (the first slot).
    pub fn low_size(&self) -> u64 {
        self.slots[0].len
    }

    /// Translates a guest-physical range to an offset into the memfd.
    pub fn gpa_to_offset(&self, gpa: u64, len: u64) -> Result<u64, VmmError> {
        self.slots
            .iter()
            .find(|s| gpa >= s.gpa && gpa.checked_add(len).is_some_and(|end| end <= s.gpa + s.len))
            .map(|s| s.offset + (gpa - s.gpa))
            .ok_or(VmmError::OutOfRange { addr: gpa, len })
    }

    /// Copies guest-physical memory out.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), VmmError> {
        let off = self.gpa_to_offset(gpa, buf.len() as u64)?;
        self.read_at(off, buf);
        Ok(())
    }

    /// Copies bytes into guest-physical memory.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), VmmError> {
        let off = self.gpa_to_offset(gpa, data.len() as u64)?;
        self.write_at(off, data);
        Ok(())
    }

    /// Reads a little-endian u64 at a guest-physical address.
    pub fn read_u64(&self, gpa: u64) -> Result<u64, VmmError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u64 at a guest-physical address.
    pub fn write_u64(&self, gpa: u64, value: u64) -> Result<(), VmmError> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Copies page `index` into `buf` (which must be [`PAGE_SIZE`] long).
    ///
    /// # Panics
    /// If `index` is not a page of this RAM or `buf` is not one page: both are caller bugs, never
    /// peer input (the stream decoder checks page numbers first).
    pub fn read_page(&self, index: u64, buf: &mut [u8]) {
        assert!(index < self.pages() && buf.len() == PAGE_SIZE);
        self.read_at(index * PAGE_SIZE as u64, buf);
    }

    /// Copies one page into page `index`. Panics like [`GuestRam::read_page`].
    pub fn write_page(&self, index: u64, data: &[u8]) {
        assert!(index < self.pages() && data.len() == PAGE_SIZE);
        self.write_at(index * PAGE_SIZE as u64, data);
    }

    /// Copies `buf.len()` bytes starting at memfd offset `off`.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) {
        assert!(off
            .checked_add(buf.len() as u64)
            .is_some_and(|e| e <= self.size));
        // SAFETY: the range was just checked to lie inside the live mapping; `buf` is a distinct
        // Rust allocation, so the regions cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.add(off as usize), buf.as_mut_ptr(), buf.len())
        };
    }

    /// Copies `data` to memfd offset `off`.
    pub fn write_at(&self, off: u64, data: &[u8]) {
        assert!(off
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= self.size));
        // SAFETY: the range was just checked to lie inside the live, writable mapping; `data` is a
        // distinct Rust allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off as usize), data.len())
        };
    }

    /// Pages that may hold data; the others read as zero, and reading them would needlessly
    /// allocate them (shmem and hugetlb allocate on a read fault). See [`residency`] for how each
    /// backing tells.
    pub fn data_pages(&self) -> crate::dirty::DirtyBitmap {
        let all = || crate::dirty::DirtyBitmap::full(self.pages());
        match (&self.file, self.backing, self.origin) {
            (Some(f), RamBacking::Memfd | RamBacking::ShmemThpMemfd, _) => {
                residency::file_data_pages(f, self.size)
            }
            (_, RamBacking::HugetlbMemfd, Origin::HandedOver) => all(),
            // Unreadable pagemap (it needs no privilege, so this is unexpected): every page may
            // hold data, which is slower but loses nothing.
            _ => residency::mapped_pages(self.base, self.size).unwrap_or_else(|e| {
                tracing::warn!("cannot read /proc/self/pagemap ({e}): treating all RAM as data");
                all()
            }),
        }
    }

    /// Drops the content of pages `first..first + count` so that they are *missing* (the next
    /// access faults, or reads zero): a hole punched in the memfd, or `MADV_DONTNEED` on anonymous
    /// memory. The kernel zaps every mapping of them, KVM's included (its MMU notifier).
    /// hugetlb RAM can only drop whole 2 MiB pages and is refused.
    pub fn discard(&self, first: u64, count: u64) -> Result<(), VmmError> {
        let (off, len) = (first * PAGE_SIZE as u64, count * PAGE_SIZE as u64);
        if first
            .checked_add(count)
            .is_none_or(|end| end > self.pages())
        {
            return Err(VmmError::OutOfRange { addr: off, len });
        }
        let r = match (&self.file, self.backing) {
            (_, RamBacking::HugetlbMemfd) => {
                return Err(VmmError::Unsupported(
                    "dropping single 4 KiB pages of hugetlb RAM (post-copy needs a memfd or anonymous RAM)",
                ))
            }
            // SAFETY: fallocate on our own memfd within its size; punching a hole only frees
            // pages (and zaps their mappings).
            (Some(f), _) => unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                )
            },
            // SAFETY: the range lies inside our own private anonymous mapping (checked above);
            // MADV_DONTNEED only unmaps it, so the next access finds the pages missing.
            (None, _) => unsafe {
                libc::madvise(
                    self.base.add(off as usize).cast(),
                    len as usize,
                    libc::MADV_DONTNEED,
                )
            },
        };
        if r != 0 {
            return Err(mem_err(len));
        }
        // A hole punched into part of a huge shmem page is only zeroed, not freed, when the kernel
        // cannot split that page: the page would then read as zero instead of faulting. Check.
        if let Some(f) = &self.file {
            if residency::file_has_data(f, off, len) {
                return Err(VmmError::BadState(format!(
                    "pages {first}+{count} are still present after a hole was punched (a huge page could not be split)"
                )));
            }
        }
        Ok(())
    }

    /// Faults every page in ahead of use, so first-touch page faults stay off the critical path.
    pub fn populate(&self) -> Result<(), VmmError> {
        // SAFETY: the range is exactly our own live mapping; MADV_POPULATE_WRITE only faults pages in.
        let r = unsafe {
            libc::madvise(
                self.base.cast(),
                self.size as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r != 0 {
            return Err(mem_err(self.size));
        }
        Ok(())
    }

    /// Faults pages `first..first + count` in with one system call (a no-op for pages already
    /// there). Receiving into fresh pages otherwise faults each one inside the kernel's copy, which
    /// costs more: in a socket-to-memfd test here, 1 GiB received into a fresh memfd took
    /// 0.86-2.3 s, into a populated one 0.33 s plus 0.33 s to populate it.
    pub fn populate_range(&self, first: u64, count: u64) -> Result<(), VmmError> {
        let end = first
            .checked_add(count)
            .filter(|&e| e <= self.pages())
            .ok_or_else(|| VmmError::BadState(format!("pages {first}+{count} beyond RAM")))?;
        // SAFETY: the range lies inside our own live mapping (checked); MADV_POPULATE_WRITE only
        // faults pages in, it changes no content.
        let r = unsafe {
            libc::madvise(
                self.base.add(first as usize * PAGE_SIZE).cast(),
                (end - first) as usize * PAGE_SIZE,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if r != 0 {
            return Err(mem_err((end - first) * PAGE_SIZE as u64));
        }
        Ok(())
    }

    /// Zeroes all of RAM and gives the memory back to the kernel (after the VM has left this host).
    pub fn scrub(&self) -> Result<(), VmmError> {
        let advice = match self.file {
            Some(_) => libc::MADV_REMOVE,
            None => libc::MADV_DONTNEED,
        };
        // SAFETY: our own live mapping. MADV_REMOVE on a shared memfd (tmpfs or hugetlbfs) mapping
        // frees the file's pages; MADV_DONTNEED on private anonymous memory frees its pages. Either
        // way later reads see zeroes, so no guest byte stays readable through this mapping.
        let r = unsafe { libc::madvise(self.base.cast(), self.size as usize, advice) };
        if r != 0 {
            return Err(mem_err(self.size));
        }
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` describe the mapping created in `map`, unmapped exactly once here.
        unsafe { libc::munmap(self.base.cast(), self.size as usize) };
    }
}

/// A fresh memfd of `size` bytes; `flags` adds to `MFD_CLOEXEC` (hugetlb flags).
fn memfd(size: u64, flags: libc::c_uint) -> Result<File, VmmError> {
    let name = c"ferry-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other preconditions.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(mem_err(size));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)
        .map_err(|source| VmmError::Memory { size, source })?;
    Ok(file)
}

fn check_size(size: u64) -> Result<(), VmmError> {
    if !((4 << 20)..=(64 << 30)).contains(&size) || !size.is_multiple_of(2 << 20) {
        return Err(VmmError::BadMemorySize(size));
    }
    Ok(())
}

fn mem_err(size: u64) -> VmmError {
    VmmError::Memory {
        size,
        source: std::io::Error::last_os_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_is_one_slot_and_round_trips() {
        let ram = GuestRam::new(8 << 20).unwrap();
        assert_eq!(ram.slots().len(), 1);
        ram.write_u64(0x1234, 0xdead_beef).unwrap();
        assert_eq!(ram.read_u64(0x1234).unwrap(), 0xdead_beef);
        let mut page = vec![0u8; PAGE_SIZE];
        ram.read_page(1, &mut page);
        assert_eq!(&page[0x234..0x23c], &0xdead_beef_u64.to_le_bytes());
        assert!(ram.read(8 << 20, &mut [0u8; 1]).is_err());
    }

    #[test]
    fn large_ram_skips_the_hole_below_4g() {
        let ram = GuestRam::new(4 << 30).unwrap();
        assert_eq!(ram.slots().len(), 2);
        assert_eq!(ram.gpa_to_offset(HIGH_RAM_START, 8).unwrap(), LOW_RAM_MAX);
        assert!(ram.gpa_to_offset(LOW_RAM_MAX, 8).is_err());
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            GuestRam::new(3 << 20),
            Err(VmmError::BadMemorySize(_))
        ));
        assert!(matches!(
            GuestRam::new((8 << 20) + 4096),
            Err(VmmError::BadMemorySize(_))
        ));
    }

    /// Backings every host can create (ShmemThpMemfd is a memfd with MADV_HUGEPAGE: it gets 4 KiB
    /// pages where shmem THP is off, but behaves the same).
    const EVERYWHERE: [RamBacking; 3] = [
        RamBacking::Memfd,
        RamBacking::ShmemThpMemfd,
        RamBacking::AnonThp,
    ];

    #[test]
    fn every_backing_is_aligned_for_huge_pages_and_round_trips() {
        for b in EVERYWHERE {
            let ram = GuestRam::with_backing(8 << 20, b).unwrap();
            assert_eq!(ram.backing(), b);
            assert_eq!(ram.host_base() as u64 % HUGE_PAGE_SIZE, 0, "{b:?}");
            assert_eq!(ram.file().is_some(), b.shareable());
            ram.write_u64(0x20_1234, 0xfeed).unwrap();
            assert_eq!(ram.read_u64(0x20_1234).unwrap(), 0xfeed, "{b:?}");
        }
    }

    #[test]
    fn data_pages_skips_holes() {
        for b in EVERYWHERE {
            let ram = GuestRam::with_backing(8 << 20, b).unwrap();
            assert_eq!(ram.data_pages().count(), 0, "{b:?}");
            ram.write_u64(5 * PAGE_SIZE as u64 + 8, 1).unwrap();
            // A read of a fresh anonymous page maps the shared zero page: harmless either way.
            let d = ram.data_pages();
            assert!(d.get(5), "{b:?}");
            assert!(!d.get(1000), "{b:?}: a page of another 2 MiB region");
            assert!(
                d.count() <= 512,
                "{b:?}: at most the huge page around page 5"
            );
        }
    }

    #[test]
    fn discard_makes_pages_read_as_zero_and_leaves_others() {
        for b in EVERYWHERE {
            let ram = GuestRam::with_backing(8 << 20, b).unwrap();
            for p in [3u64, 4, 5] {
                ram.write_u64(p * PAGE_SIZE as u64, 100 + p).unwrap();
            }
            ram.discard(4, 1).unwrap();
            assert_eq!(ram.read_u64(4 * PAGE_SIZE as u64).unwrap(), 0, "{b:?}");
            assert_eq!(ram.read_u64(3 * PAGE_SIZE as u64).unwrap(), 103, "{b:?}");
            assert_eq!(ram.read_u64(5 * PAGE_SIZE as u64).unwrap(), 105, "{b:?}");
            assert!(ram.discard(2047, 2).is_err(), "past the end");
        }
    }

    #[test]
    fn scrub_zeroes_ram() {
        for b in EVERYWHERE {
            let ram = GuestRam::with_backing(4 << 20, b).unwrap();
            ram.write_u64(0x100, 42).unwrap();
            ram.scrub().unwrap();
            assert_eq!(
                ram.data_pages().count(),
                0,
                "{b:?}: scrubbed RAM holds nothing"
            );
            assert_eq!(ram.read_u64(0x100).unwrap(), 0, "{b:?}");
        }
    }

    #[test]
    fn handed_over_memfd_keeps_its_content_and_kind() {
        let ram = GuestRam::with_backing(4 << 20, RamBacking::Memfd).unwrap();
        ram.write_u64(0x3000, 7).unwrap();
        let peer = GuestRam::from_file(ram.file().unwrap().try_clone().unwrap(), 4 << 20).unwrap();
        assert!(matches!(
            peer.backing(),
            RamBacking::Memfd | RamBacking::ShmemThpMemfd
        ));
        assert_eq!(peer.read_u64(0x3000).unwrap(), 7);
        assert!(peer.data_pages().get(3));
        assert!(GuestRam::from_file(ram.file().unwrap().try_clone().unwrap(), 8 << 20).is_err());
    }

    #[test]
    fn hugetlb_ram_works_where_a_pool_exists() {
        let Some(_pool) = crate::testing::require_hugetlb(4) else {
            return;
        };
        let ram = GuestRam::with_backing(8 << 20, RamBacking::HugetlbMemfd).unwrap();
        assert_eq!(ram.data_pages().count(), 0, "nothing touched yet");
        ram.write_u64(5 * PAGE_SIZE as u64, 9).unwrap();
        let d = ram.data_pages();
        assert!(d.get(5) && !d.get(600));
        assert_eq!(d.count(), 512, "one 2 MiB page");
        assert!(matches!(ram.discard(5, 1), Err(VmmError::Unsupported(_))));
        // Handed over: the peer cannot see which pages the creator touched, so all count.
        let peer = GuestRam::from_file(ram.file().unwrap().try_clone().unwrap(), 8 << 20).unwrap();
        assert_eq!(peer.backing(), RamBacking::HugetlbMemfd);
        assert_eq!(peer.read_u64(5 * PAGE_SIZE as u64).unwrap(), 9);
        assert_eq!(peer.data_pages().count(), peer.pages());
        drop(peer);
        ram.scrub().unwrap();
        assert_eq!(ram.read_u64(5 * PAGE_SIZE as u64).unwrap(), 0);
        // The pool is reserved at creation: RAM larger than the pool fails there, not at a fault.
        let huge = GuestRam::with_backing(64 << 30, RamBacking::HugetlbMemfd);
        assert!(matches!(huge, Err(VmmError::Memory { .. })), "{huge:?}");
    }

    #[test]
    fn planned_ram_is_what_the_plan_says() {
        let req = RamRequest {
            size: 8 << 20,
            choice: RamBackingChoice::Auto,
            destination: false,
            may_postcopy: true,
        };
        let (ram, plan) = GuestRam::planned(&req).unwrap();
        assert_eq!(ram.backing(), plan.backing);
        assert!(plan.backing.supports_postcopy(), "{plan}");
    }
}
