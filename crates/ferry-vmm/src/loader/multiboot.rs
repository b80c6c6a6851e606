//! Multiboot v1 loader: the a.out-kludge flat format and 32-bit ELF, as QEMU's `-kernel` accepts.
//!
//! Every field comes from an untrusted file, so every address and length is checked against the
//! file and guest RAM before a byte is copied.

use crate::memory::{GuestRam, HIGH_RAM_START};
use crate::VmmError;

/// Multiboot v1 header magic.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Value in EAX at entry that tells the kernel a multiboot loader started it.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// Where the multiboot information structure is placed (below the guest ABI's page tables).
pub const INFO_ADDR: u64 = 0x9000;
const MMAP_ADDR: u64 = INFO_ADDR + 0x100;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Header flags bits 0-15 are requirements; we satisfy 0 (page alignment) and 1 (memory info).
const SUPPORTED_REQUIRED: u32 = 0b11;

/// Where and how to start the loaded kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// Entry point (32-bit protected mode).
    pub entry: u32,
    /// Physical address of the multiboot information structure (goes in EBX).
    pub info_addr: u32,
    /// Highest address the image occupies (end of bss).
    pub image_end: u64,
}

fn bad(msg: impl Into<String>) -> VmmError {
    VmmError::BadImage(msg.into())
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Finds the multiboot header: 4-byte aligned, within the first 8 KiB, checksum valid.
fn find_header(image: &[u8]) -> Option<usize> {
    (0..8192.min(image.len().saturating_sub(11)))
        .step_by(4)
        .find(|&off| {
            let (Some(magic), Some(flags), Some(sum)) = (
                u32_at(image, off),
                u32_at(image, off + 4),
                u32_at(image, off + 8),
            ) else {
                return false;
            };
            magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0
        })
}

/// Loads a multiboot v1 image into guest RAM and writes the multiboot information structure.
pub fn load_multiboot(ram: &GuestRam, image: &[u8]) -> Result<BootInfo, VmmError> {
    let hdr = find_header(image).ok_or_else(|| bad("no multiboot v1 header in the first 8 KiB"))?;
    let flags = u32_at(image, hdr + 4).unwrap_or(0);
    let required = flags & 0xffff;
    if required & !SUPPORTED_REQUIRED != 0 {
        return Err(bad(format!(
            "multiboot header requires unsupported features {required:#x}"
        )));
    }
    let (entry, image_end) = if flags & FLAG_AOUT_KLUDGE != 0 {
        load_aout(ram, image, hdr)?
    } else {
        load_elf32(ram, image)?
    };
    write_info(ram)?;
    Ok(BootInfo {
        entry,
        info_addr: INFO_ADDR as u32,
        image_end,
    })
}

fn load_aout(ram: &GuestRam, image: &[u8], hdr: usize) -> Result<(u32, u64), VmmError> {
    let field = |i: usize| {
        u32_at(image, hdr + 12 + 4 * i).ok_or_else(|| bad("truncated a.out kludge fields"))
    };
    let (header_addr, load_addr, load_end, bss_end, entry) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if load_addr > header_addr {
        return Err(bad("load_addr is above header_addr"));
    }
    let file_start = (hdr as u64)
        .checked_sub(u64::from(header_addr - load_addr))
        .ok_or_else(|| bad("header_addr - load_addr exceeds the header's file offset"))?
        as usize;
    let load_len = if load_end == 0 {
        image.len() - file_start
    } else {
        load_end
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr below load_addr"))? as usize
    };
    let data = image
        .get(file_start..file_start + load_len)
        .ok_or_else(|| {
            bad(format!(
                "image is {} bytes, header says {}",
                image.len(),
                file_start + load_len
            ))
        })?;
    ram.write(u64::from(load_addr), data)?;
    let mut end = u64::from(load_addr) + load_len as u64;
    if bss_end != 0 {
        let bss_end = u64::from(bss_end);
        if bss_end < end {
            return Err(bad("bss_end_addr below load_end_addr"));
        }
        zero(ram, end, bss_end - end)?;
        end = bss_end;
    }
    if entry < load_addr || u64::from(entry) >= end {
        return Err(bad(format!("entry {entry:#x} is outside the loaded image")));
    }
    Ok((entry, end))
}

fn load_elf32(ram: &GuestRam, image: &[u8]) -> Result<(u32, u64), VmmError> {
    if image.get(0..4) != Some(b"\x7fELF") {
        return Err(bad(
            "multiboot header without the a.out kludge, and not an ELF file",
        ));
    }
    if image.get(4) != Some(&1) {
        return Err(bad(
            "64-bit ELF multiboot images need the a.out kludge header (as with QEMU)",
        ));
    }
    let u16_at = |off: usize| {
        image
            .get(off..off + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]))
    };
    let entry = u32_at(image, 24).ok_or_else(|| bad("truncated ELF header"))?;
    let phoff = u32_at(image, 28).ok_or_else(|| bad("truncated ELF header"))? as usize;
    let phentsize = u16_at(42).ok_or_else(|| bad("truncated ELF header"))? as usize;
    let phnum = u16_at(44).ok_or_else(|| bad("truncated ELF header"))? as usize;
    if phentsize < 32 {
        return Err(bad("ELF program header entries too small"));
    }
    let mut end = 0u64;
    let mut entry_loaded = false;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let f =
            |k: usize| u32_at(image, ph + 4 * k).ok_or_else(|| bad("truncated ELF program header"));
        if f(0)? != 1 {
            continue; // not PT_LOAD
        }
        let (offset, paddr, filesz, memsz) = (
            f(1)? as usize,
            u64::from(f(3)?),
            f(4)? as usize,
            u64::from(f(5)?),
        );
        let data = image
            .get(offset..offset + filesz)
            .ok_or_else(|| bad("ELF segment extends past the end of the file"))?;
        ram.write(paddr, data)?;
        if memsz > filesz as u64 {
            zero(ram, paddr + filesz as u64, memsz - filesz as u64)?;
        }
        entry_loaded |= (paddr..paddr + memsz.max(filesz as u64)).contains(&u64::from(entry));
        end = end.max(paddr + memsz.max(filesz as u64));
    }
    if end == 0 {
        return Err(bad("ELF file has no loadable segment"));
    }
    if !entry_loaded {
        return Err(bad(format!(
            "ELF entry {entry:#x} is outside every loadable segment"
        )));
    }
    Ok((entry, end))
}

/// Zeroes `len` bytes of guest RAM at `gpa` (a bss), checked against RAM before anything is
/// written and without allocating more than a page: an image's bss size comes from the file.
fn zero(ram: &GuestRam, gpa: u64, len: u64) -> Result<(), VmmError> {
    ram.gpa_to_offset(gpa, len)?;
    let page = [0u8; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(page.len() as u64);
        ram.write(gpa + done, &page[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// Writes the information structure: memory sizes (flags bit 0) and a memory map (bit 6).
fn write_info(ram: &GuestRam) -> Result<(), VmmError> {
    let low = ram.low_size();
    let mut regions: Vec<(u64, u64)> = vec![(0, 0x9_fc00), (0x10_0000, low - 0x10_0000)];
    if ram.size() > low {
        regions.push((HIGH_RAM_START, ram.size() - low));
    }
    let mut mmap = Vec::new();
    for (base, len) in &regions {
        mmap.extend_from_slice(&20u32.to_le_bytes()); // size of the entry after this field
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&1u32.to_le_bytes()); // available RAM
    }
    let mut info = [0u8; 52];
    let mut put = |off: usize, v: u32| info[off..off + 4].copy_from_slice(&v.to_le_bytes());
    put(0, 1 | 1 << 6);
    put(4, 639);
    put(8, ((low - 0x10_0000) / 1024) as u32);
    put(44, mmap.len() as u32);
    put(48, MMAP_ADDR as u32);
    ram.write(INFO_ADDR, &info)?;
    ram.write(MMAP_ADDR, &mmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aout_image(entry_off: u32, bss: u32) -> Vec<u8> {
        let load = 0x10_0000u32;
        let mut img = vec![0u8; 0x1000];
        let flags = FLAG_AOUT_KLUDGE | 2;
        let words = [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
            load + 16,
            load,
            load + 0x1000,
            load + 0x1000 + bss,
            load + entry_off,
        ];
        for (i, w) in words.iter().enumerate() {
            img[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        img[0x800] = 0xf4;
        img
    }

    #[test]
    fn loads_aout_kludge_image_and_info() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let info = load_multiboot(&ram, &aout_image(0x800, 0x2000)).unwrap();
        assert_eq!(info.entry, 0x10_0800);
        assert_eq!(info.image_end, 0x10_3000);
        let mut b = [0u8; 1];
        ram.read(0x10_0800, &mut b).unwrap();
        assert_eq!(b[0], 0xf4);
        assert_eq!(ram.read_u64(INFO_ADDR).unwrap() as u32, 1 | 1 << 6);
        let mem_upper = ram.read_u64(INFO_ADDR + 8).unwrap() & 0xffff_ffff;
        assert_eq!(mem_upper, (64 << 20) / 1024 - 1024);
    }

    #[test]
    fn rejects_garbage_and_hostile_headers() {
        let ram = GuestRam::new(8 << 20).unwrap();
        assert!(matches!(
            load_multiboot(&ram, b"hello"),
            Err(VmmError::BadImage(_))
        ));
        assert!(load_multiboot(&ram, &vec![0u8; 10000]).is_err());
        // Entry outside the image.
        assert!(load_multiboot(&ram, &aout_image(0x5000, 0)).is_err());
        // bss that runs past RAM.
        assert!(load_multiboot(&ram, &aout_image(0x800, 0x7fff_0000)).is_err());
        // Truncated file: header claims more than the file holds.
        let mut img = aout_image(0x800, 0);
        img.truncate(0x900);
        assert!(load_multiboot(&ram, &img).is_err());
    }
}
