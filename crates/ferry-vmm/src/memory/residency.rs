//! Which pages of guest RAM may hold data, for each backing.
//!
//! A page that was never written reads as zero and need not be sent (reading it could even
//! allocate it). A memfd on tmpfs tells that itself (`SEEK_DATA`/`SEEK_HOLE`), whoever wrote the
//! page. Anonymous memory has no file: its pages are in this process's page tables
//! (`/proc/self/pagemap`: present or swapped), and only this process can have written them.
//! hugetlbfs reports every page as data to `SEEK_DATA`, so hugetlb RAM this process created is read
//! from the page tables too; hugetlb RAM handed over by another process may hold pages this process
//! never mapped, so all of it counts as data there.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use crate::dirty::DirtyBitmap;
use crate::memory::PAGE_SIZE;

/// Pagemap bit: the page is present in RAM.
const PM_PRESENT: u64 = 1 << 63;
/// Pagemap bit: the page is swapped out.
const PM_SWAPPED: u64 = 1 << 62;
/// Pagemap entries read per system call (512 KiB of buffer).
const PAGEMAP_CHUNK: usize = 64 << 10;

/// Pages of a tmpfs file that are not holes.
pub(super) fn file_data_pages(file: &File, size: u64) -> DirtyBitmap {
    let mut map = DirtyBitmap::new(size / PAGE_SIZE as u64);
    let fd = file.as_raw_fd();
    let mut off: i64 = 0;
    let size = size as i64;
    while off < size {
        // SAFETY: lseek on our own valid fd has no memory-safety preconditions.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after `off`
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size } else { hole.min(size) };
        for p in (data as u64 / PAGE_SIZE as u64)..(end as u64).div_ceil(PAGE_SIZE as u64) {
            map.set(p);
        }
        off = end;
    }
    map
}

/// Whether any byte of `[off, off + len)` of a tmpfs file is data rather than a hole.
pub(super) fn file_has_data(file: &File, off: u64, len: u64) -> bool {
    // SAFETY: lseek on our own valid fd has no memory-safety preconditions.
    let data = unsafe { libc::lseek(file.as_raw_fd(), off as i64, libc::SEEK_DATA) };
    data >= 0 && (data as u64) < off + len
}

/// Pages of `[base, base + size)` that this process's page tables map or have swapped out.
pub(super) fn mapped_pages(base: *const u8, size: u64) -> io::Result<DirtyBitmap> {
    let pages = size / PAGE_SIZE as u64;
    let mut map = DirtyBitmap::new(pages);
    let pagemap = File::open("/proc/self/pagemap")?;
    let first = base as u64 / PAGE_SIZE as u64;
    let mut buf = vec![0u8; PAGEMAP_CHUNK * 8];
    let mut p = 0u64;
    while p < pages {
        let n = (pages - p).min(PAGEMAP_CHUNK as u64) as usize;
        pagemap.read_exact_at(&mut buf[..n * 8], (first + p) * 8)?;
        for (i, e) in buf[..n * 8].chunks_exact(8).enumerate() {
            let e = u64::from_ne_bytes(e.try_into().expect("8-byte chunk"));
            if e & (PM_PRESENT | PM_SWAPPED) != 0 {
                map.set(p + i as u64);
            }
        }
        p += n as u64;
    }
    Ok(map)
}
