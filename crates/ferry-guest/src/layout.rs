//! Guest-physical memory layout (docs/GUEST-ABI.md, "Memory layout") and the image's internal slots.

use crate::{GuestConfig, GuestError};

/// Size of a guest page: the unit of the working set and of the version table.
pub const PAGE: u64 = 4096;
/// Size of a large page: the page tables map RAM with 2 MiB pages.
pub const LARGE_PAGE: u64 = 2 << 20;
/// One GiB: one page directory maps this much.
pub const GIB: u64 = 1 << 30;
/// Largest RAM the guest supports (mapped by up to 17 page directories, the hole included).
pub const MAX_MEMORY: u64 = 16 * GIB;
/// Start of the guest-physical hole below 4 GiB (LAPIC, IOAPIC, PCI): RAM past this offset lives
/// above 4 GiB, as both ferry's VMM and QEMU (`pc`, 3.5 GiB of RAM or more) lay it out.
pub const HOLE_START: u64 = 3 * GIB;
/// RAM just below the hole that the start-up check does not insist the loader reports as free.
pub const LOW_SLACK: u64 = 1 << 20;
/// End of the hole: where RAM continues.
pub const HOLE_END: u64 = 4 * GIB;

/// Guest-physical address of the PML4; the PDPT and the page directories follow it.
pub const PML4_ADDR: u64 = 0x1_0000;
/// Guest-physical address of the PDPT.
pub const PDPT_ADDR: u64 = 0x1_1000;
/// Guest-physical address of the first page directory (one per mapped GiB, contiguous).
pub const PD_ADDR: u64 = 0x1_2000;

/// Load address of the image (multiboot a.out kludge `load_addr`).
pub const IMAGE_BASE: u64 = 0x10_0000;
/// Guest-physical address of the version table (one u64 per working-set page).
pub const VERSION_TABLE: u64 = 0x20_0000;

/// Offset of the 32-bit entry code in the image (right after the 32-byte multiboot header).
pub const BOOT32_OFF: u64 = 0x40;
/// Offset of the 64-bit ring-0 set-up code.
pub const SETUP64_OFF: u64 = 0x800;
/// Offset of the GDT.
pub const GDT_OFF: u64 = 0x1000;
/// Offset of the GDTR pseudo-descriptor (limit u16, base u32) used by `lgdt` in 32-bit mode.
pub const GDTR_OFF: u64 = 0x1080;
/// Offset of the NUL-terminated start-up failure message.
pub const FAIL_MSG_OFF: u64 = 0x1100;
/// Offset of the NUL-terminated banner printed by ring 3.
pub const BANNER_OFF: u64 = 0x1200;
/// Offset of the 64-bit TSS.
pub const TSS_OFF: u64 = 0x2000;
/// Offset of the I/O permission bitmap inside the TSS.
pub const IOPB_OFF: u64 = 104;
/// TSS size: the 104-byte TSS, the 8 KiB bitmap, and the 0xFF byte the CPU may read past its end.
pub const TSS_SIZE: u64 = IOPB_OFF + 8192 + 1;
/// Offset of the ring-3 workload code; the file ends where this code ends.
pub const USER_OFF: u64 = 0x5000;
/// Ring-0 stack size (only the set-up code and the iretq frame use it).
pub const RING0_STACK: u64 = 0x1000;
/// Ring-3 stack size (a few nested calls at most).
pub const RING3_STACK: u64 = 0x4000;

/// GDT selector of the 64-bit ring-0 code segment.
pub const SEL_CODE64: u16 = 0x08;
/// GDT selector of the ring-0 data segment.
pub const SEL_DATA: u16 = 0x10;
/// GDT selector of the 32-bit ring-0 code segment.
pub const SEL_CODE32: u16 = 0x18;
/// GDT selector of the ring-3 data segment (RPL 3 included).
pub const SEL_USER_DATA: u16 = 0x20 | 3;
/// GDT selector of the 64-bit ring-3 code segment (RPL 3 included).
pub const SEL_USER_CODE: u16 = 0x28 | 3;
/// GDT selector of the TSS.
pub const SEL_TSS: u16 = 0x30;

/// Everything the code generators need to know about where things are, derived from a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Number of working-set pages.
    pub ws_pages: u64,
    /// Guest-physical base of the working set.
    pub ws_base: u64,
    /// RAM offset one past the working set: how much RAM the guest needs.
    pub ws_end: u64,
    /// Guest-physical address one past the working set (past the hole if the set crosses it).
    pub ws_phys_end: u64,
    /// GiBs of guest-physical space the page tables map.
    pub map_gib: u64,
    /// Minimum multiboot `mem_upper` (KiB above 1 MiB) for the start-up check.
    pub min_mem_upper_kib: u64,
    /// Bytes of RAM the working set needs at [`HOLE_END`] (0 if it stays below the hole).
    pub high_ram_needed: u64,
}

/// Guest-physical address of the RAM byte at `offset` (RAM past 3 GiB is mapped above 4 GiB).
pub const fn ram_to_phys(offset: u64) -> u64 {
    if offset < HOLE_START {
        offset
    } else {
        offset + (HOLE_END - HOLE_START)
    }
}

/// Guest-physical address of working-set page `index` given the mailbox's `ws_base`.
pub const fn page_address(ws_base: u64, index: u64) -> u64 {
    ram_to_phys(ws_base + index * PAGE)
}

/// Rounds `v` up to a multiple of `align` (a power of two).
pub const fn align_up(v: u64, align: u64) -> u64 {
    (v + align - 1) & !(align - 1)
}

impl Layout {
    /// Validates the config's sizes and computes the layout.
    pub fn new(cfg: &GuestConfig) -> Result<Layout, GuestError> {
        if cfg.working_set == 0 {
            return Err(GuestError::EmptyWorkingSet);
        }
        if !cfg.working_set.is_multiple_of(PAGE) {
            return Err(GuestError::UnalignedWorkingSet(cfg.working_set));
        }
        if cfg.memory > MAX_MEMORY {
            return Err(GuestError::MemoryTooLarge { memory: cfg.memory });
        }
        // Checked before the arithmetic below so a huge working set cannot overflow it.
        if cfg.working_set > MAX_MEMORY {
            return Err(GuestError::WorkingSetTooLarge {
                working_set: cfg.working_set,
                memory: cfg.memory,
                needed: cfg.working_set,
            });
        }
        let ws_pages = cfg.working_set / PAGE;
        let ws_base = align_up(VERSION_TABLE + 8 * ws_pages, LARGE_PAGE);
        let ws_end = ws_base + cfg.working_set;
        if ws_end > cfg.memory {
            return Err(GuestError::WorkingSetTooLarge {
                working_set: cfg.working_set,
                memory: cfg.memory,
                needed: ws_end,
            });
        }
        let ws_phys_end = ram_to_phys(ws_end - 1) + 1;
        // Mapping all of the configured memory (not just the working set) lets a host poke anywhere.
        let mem_phys_end = ram_to_phys(cfg.memory.max(1) - 1) + 1;
        let map_gib = align_up(mem_phys_end.max(ws_phys_end), GIB) / GIB;
        // A working set that runs into the hole uses RAM right up to 3 GiB, where firmware may
        // reserve a little (QEMU: 128 KiB of tables); that RAM is ours to clobber, so the check
        // leaves the last MiB out.
        let low_needed = if ws_end >= HOLE_START {
            HOLE_START - LOW_SLACK
        } else {
            ws_end
        };
        let min_mem_upper_kib = (low_needed - IMAGE_BASE).div_ceil(1024);
        Ok(Layout {
            ws_pages,
            ws_base,
            ws_end,
            ws_phys_end,
            map_gib,
            min_mem_upper_kib,
            high_ram_needed: ws_end.saturating_sub(HOLE_START),
        })
    }

    /// Guest-physical address of a working-set page.
    pub fn page_addr(&self, index: u64) -> u64 {
        page_address(self.ws_base, index)
    }

    /// Whether the working set continues above the hole.
    pub fn crosses_hole(&self) -> bool {
        self.high_ram_needed > 0
    }

    /// Number of pages of the hot set of the hot/cold pattern (10%, at least one).
    pub fn hot_pages(&self) -> u64 {
        (self.ws_pages / 10).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(memory: u64, ws: u64) -> GuestConfig {
        GuestConfig {
            memory,
            working_set: ws,
            ..GuestConfig::default()
        }
    }

    #[test]
    fn small_layout() {
        let l = Layout::new(&cfg(64 << 20, 8 << 20)).unwrap();
        assert_eq!(l.ws_pages, 2048);
        // 2048 * 8 = 16 KiB of versions after 2 MiB: the working set starts at the next 2 MiB.
        assert_eq!(l.ws_base, 4 << 20);
        assert_eq!(l.ws_end, 12 << 20);
        assert_eq!(l.map_gib, 1);
        assert_eq!(l.min_mem_upper_kib, 11 * 1024);
        assert_eq!(l.ws_phys_end, 12 << 20);
        assert!(!l.crosses_hole());
        assert_eq!(l.page_addr(1), (4 << 20) + 4096);
        assert_eq!(l.hot_pages(), 204);
    }

    #[test]
    fn large_layout() {
        let l = Layout::new(&cfg(16 * GIB, 15 * GIB)).unwrap();
        assert_eq!(l.ws_pages, 15 * GIB / PAGE);
        assert_eq!(
            l.ws_base,
            align_up(VERSION_TABLE + 8 * l.ws_pages, LARGE_PAGE)
        );
        // 16 GiB of RAM ends at 17 GiB guest-physical: 3 GiB below the hole, 13 GiB above 4 GiB.
        assert_eq!(l.map_gib, 17);
        assert_eq!(l.ws_phys_end, l.ws_end + GIB);
        assert_eq!(l.high_ram_needed, l.ws_end - 3 * GIB);
        assert_eq!(l.min_mem_upper_kib, (3 * GIB - (2 << 20)) / 1024);
        assert_eq!(l.page_addr(0), l.ws_base);
        let first_high = (3 * GIB - l.ws_base) / PAGE;
        assert_eq!(l.page_addr(first_high - 1), 3 * GIB - PAGE);
        assert_eq!(l.page_addr(first_high), 4 * GIB);
    }

    #[test]
    fn hole_mapping() {
        assert_eq!(ram_to_phys(0), 0);
        assert_eq!(ram_to_phys(3 * GIB - 1), 3 * GIB - 1);
        assert_eq!(ram_to_phys(3 * GIB), 4 * GIB);
        // 3.5 GiB of RAM: mapped up to 4.5 GiB, so 5 page directories.
        let l = Layout::new(&cfg(3 * GIB + GIB / 2, 1 << 20)).unwrap();
        assert_eq!(l.map_gib, 5);
        assert!(!l.crosses_hole());
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Layout::new(&cfg(64 << 20, 0)),
            Err(GuestError::EmptyWorkingSet)
        ));
        assert!(matches!(
            Layout::new(&cfg(64 << 20, 100)),
            Err(GuestError::UnalignedWorkingSet(100))
        ));
        assert!(matches!(
            Layout::new(&cfg(17 * GIB, 1 << 20)),
            Err(GuestError::MemoryTooLarge { .. })
        ));
        let e = Layout::new(&cfg(64 << 20, 64 << 20)).unwrap_err();
        assert!(matches!(e, GuestError::WorkingSetTooLarge { needed, .. } if needed == 68 << 20));
        assert!(e.to_string().contains("more than the configured memory"));
        assert!(matches!(
            Layout::new(&cfg(64 << 20, !4095)),
            Err(GuestError::WorkingSetTooLarge { .. })
        ));
    }

    #[test]
    fn hot_pages_at_least_one() {
        let l = Layout::new(&cfg(64 << 20, 4096)).unwrap();
        assert_eq!(l.hot_pages(), 1);
    }
}
