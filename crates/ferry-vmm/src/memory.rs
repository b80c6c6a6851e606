//! Guest RAM: one memfd, mapped once into the VMM, exposed to KVM as one or two slots.
//!
//! Migration addresses RAM by *page index* into the memfd (file offset / 4 KiB), not by guest
//! physical address, so the hole below 4 GiB never shows up in the stream.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::VmmError;

/// Size of a guest page as migration sees it.
pub const PAGE_SIZE: usize = 4096;

/// RAM above this guest-physical address is placed at [`HIGH_RAM_START`] instead, keeping the
/// LAPIC/IOAPIC window free.
pub const LOW_RAM_MAX: u64 = 3 << 30;
/// Where RAM beyond [`LOW_RAM_MAX`] is mapped.
pub const HIGH_RAM_START: u64 = 4 << 30;

/// One KVM memory slot: a guest-physical range backed by a range of the memfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// KVM slot number.
    pub id: u32,
    /// Guest-physical start.
    pub gpa: u64,
    /// Byte offset into the memfd (and the host mapping).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Guest RAM backed by a memfd and mapped shared into this process.
#[derive(Debug)]
pub struct GuestRam {
    file: File,
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
    /// Creates `size` bytes of zeroed guest RAM in a fresh memfd.
    pub fn new(size: u64) -> Result<Self, VmmError> {
        check_size(size)?;
        let name = c"ferry-guest-ram";
        // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other preconditions.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(mem_err(size));
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(size)
            .map_err(|source| VmmError::Memory { size, source })?;
        Self::map(file, size)
    }

    /// Maps RAM from an existing memfd handed over by a peer on this host (no copy).
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
        Self::map(file, size)
    }

    fn map(file: File, size: u64) -> Result<Self, VmmError> {
        // SAFETY: mapping a fresh region (addr NULL) of a file we own, of exactly its length; the result
        // is checked against MAP_FAILED before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(mem_err(size));
        }
        // Ask for transparent huge pages: with 4 KiB host pages, a guest writing at random over a
        // large working set spends most of its time in (nested) TLB misses. The kernel honours this
        // for shmem only when /sys/kernel/mm/transparent_hugepage/shmem_enabled allows `advise`.
        // SAFETY: advice on our own fresh mapping; it changes no contents.
        unsafe { libc::madvise(base, size as usize, libc::MADV_HUGEPAGE) };
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
            base: base.cast(),
            size,
            slots,
        })
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

    /// The memfd, for handing the RAM to another process on this host.
    pub fn file(&self) -> &File {
        &self.file
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

    /// Pages that may hold data: everything except holes of the memfd, which read as zero and
    /// which reading would needlessly allocate (shmem allocates on a read fault).
    pub fn data_pages(&self) -> crate::dirty::DirtyBitmap {
        let mut map = crate::dirty::DirtyBitmap::new(self.pages());
        let fd = self.file.as_raw_fd();
        let mut off: i64 = 0;
        let size = self.size as i64;
        while off < size {
            // SAFETY: lseek on our own valid fd has no memory-safety preconditions.
            let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
            if data < 0 {
                break; // ENXIO: no data after `off`
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            let end = if hole < 0 { size } else { hole };
            for p in (data as u64 / PAGE_SIZE as u64)..(end as u64).div_ceil(PAGE_SIZE as u64) {
                map.set(p);
            }
            off = end;
        }
        map
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
        // SAFETY: our own live mapping; MADV_REMOVE on a shared memfd mapping frees the backing pages,
        // and later reads see zeroes, so no guest byte stays readable through this mapping.
        let r = unsafe { libc::madvise(self.base.cast(), self.size as usize, libc::MADV_REMOVE) };
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

    #[test]
    fn data_pages_skips_holes() {
        let ram = GuestRam::new(8 << 20).unwrap();
        assert_eq!(ram.data_pages().count(), 0);
        ram.write_u64(5 * PAGE_SIZE as u64 + 8, 1).unwrap();
        let d = ram.data_pages();
        assert!(d.get(5));
        assert!(!d.get(1000));
    }

    #[test]
    fn scrub_zeroes_ram() {
        let ram = GuestRam::new(4 << 20).unwrap();
        ram.write_u64(0x100, 42).unwrap();
        ram.scrub().unwrap();
        assert_eq!(ram.read_u64(0x100).unwrap(), 0);
    }
}
