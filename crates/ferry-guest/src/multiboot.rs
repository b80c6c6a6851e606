//! The multiboot v1 header (a.out kludge) that lets any multiboot loader place and enter the image.

/// Header magic a loader searches for in the first 8 KiB.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// Value of EAX at entry when a multiboot loader started us.
pub const BOOT_MAGIC: u32 = 0x2BAD_B002;
/// Flag: the loader must fill `mem_lower`/`mem_upper`.
pub const FLAG_MEMINFO: u32 = 1 << 1;
/// Flag: the address fields of the header are valid (the a.out kludge).
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Header flags this image uses.
pub const FLAGS: u32 = FLAG_MEMINFO | FLAG_AOUT_KLUDGE;
/// Size of the header with the a.out address fields.
pub const HEADER_SIZE: usize = 32;
/// Offset of `mem_upper` (KiB above 1 MiB) in the multiboot information structure.
pub const INFO_MEM_UPPER: u32 = 8;
/// Information flag: `mmap_length`/`mmap_addr` are valid.
pub const INFO_FLAG_MMAP: u32 = 1 << 6;
/// Offset of `mmap_length` in the multiboot information structure.
pub const INFO_MMAP_LENGTH: u32 = 44;
/// Offset of `mmap_addr` in the multiboot information structure.
pub const INFO_MMAP_ADDR: u32 = 48;

/// The address fields of the header, all guest-physical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Where the header itself is loaded.
    pub header_addr: u32,
    /// Where file offset 0 is loaded.
    pub load_addr: u32,
    /// End of the part of the file to load.
    pub load_end_addr: u32,
    /// End of the zeroed area after the loaded part.
    pub bss_end_addr: u32,
    /// Where the loader jumps to.
    pub entry_addr: u32,
}

/// The checksum that makes magic + flags + checksum wrap to zero.
pub fn checksum(flags: u32) -> u32 {
    0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags)
}

impl Header {
    /// Encodes the header as it appears in the image.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let words = [
            HEADER_MAGIC,
            FLAGS,
            checksum(FLAGS),
            self.header_addr,
            self.load_addr,
            self.load_end_addr,
            self.bss_end_addr,
            self.entry_addr,
        ];
        let mut out = [0u8; HEADER_SIZE];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_encoding() {
        let h = Header {
            header_addr: 0x10_0000,
            load_addr: 0x10_0000,
            load_end_addr: 0x10_6000,
            bss_end_addr: 0x10_B000,
            entry_addr: 0x10_0040,
        };
        let b = h.encode();
        let w = |i: usize| u32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(w(0), 0x1BAD_B002);
        assert_eq!(w(1), 0x0001_0002);
        assert_eq!(w(0).wrapping_add(w(1)).wrapping_add(w(2)), 0);
        assert_eq!(
            (w(3), w(4), w(5), w(6), w(7)),
            (0x10_0000, 0x10_0000, 0x10_6000, 0x10_B000, 0x10_0040)
        );
    }
}
