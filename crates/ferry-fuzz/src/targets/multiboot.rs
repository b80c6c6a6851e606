//! The multiboot v1 loader, fed an image file as a user or an attacker hands it to `ferry vm run`.
//!
//! Loading may fail with an error; it must not panic, must not allocate beyond the guest's RAM, and
//! what it accepts must start inside the image it loaded into RAM.

use ferry_vmm::loader::multiboot::load_multiboot;
use ferry_vmm::memory::GuestRam;

/// Guest RAM the images load into: small, so that "does not fit" paths are reached often.
const RAM_BYTES: u64 = 8 << 20;

thread_local! {
    static RAM: GuestRam = GuestRam::new(RAM_BYTES).expect("8 MiB of guest RAM for the loader target");
}

pub(super) fn run(data: &[u8]) {
    RAM.with(|ram| {
        if let Ok(info) = load_multiboot(ram, data) {
            assert!(
                info.image_end <= RAM_BYTES,
                "image ends at {:#x}, beyond {RAM_BYTES:#x} bytes of RAM",
                info.image_end
            );
            assert!(
                u64::from(info.entry) < info.image_end,
                "entry {:#x} beyond the image's end {:#x}",
                info.entry,
                info.image_end
            );
        }
    });
}

const MAGIC: u32 = 0x1BAD_B002;

fn push_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// An a.out-kludge image of one page loaded at 1 MiB with `bss` bytes of bss.
fn aout(bss: u32) -> Vec<u8> {
    let load = 0x10_0000u32;
    let flags = (1 << 16) | 2;
    let mut img = Vec::new();
    for w in [
        MAGIC,
        flags,
        0u32.wrapping_sub(MAGIC).wrapping_sub(flags),
        load,
        load,
        load + 0x1000,
        load + 0x1000 + bss,
        load + 0x40,
    ] {
        push_u32(&mut img, w);
    }
    img.resize(0x1000, 0x90);
    img
}

/// A 32-bit ELF with one PT_LOAD segment at 1 MiB and the multiboot header in its first page.
fn elf32() -> Vec<u8> {
    let mut img = vec![0u8; 0x2000];
    img[..4].copy_from_slice(b"\x7fELF");
    img[4] = 1; // ELFCLASS32
    img[5] = 1; // little endian
    img[24..28].copy_from_slice(&0x10_0080u32.to_le_bytes()); // entry
    img[28..32].copy_from_slice(&52u32.to_le_bytes()); // phoff
    img[42..44].copy_from_slice(&32u16.to_le_bytes()); // phentsize
    img[44..46].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = 52;
    for (k, v) in [
        1u32, 0x1000, 0x10_0000, 0x10_0000, 0x1000, 0x3000, 5, 0x1000,
    ]
    .into_iter()
    .enumerate()
    {
        img[ph + 4 * k..ph + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
    }
    let hdr = 0x100;
    let flags = 2u32;
    for (k, w) in [MAGIC, flags, 0u32.wrapping_sub(MAGIC).wrapping_sub(flags)]
        .into_iter()
        .enumerate()
    {
        img[hdr + 4 * k..hdr + 4 * k + 4].copy_from_slice(&w.to_le_bytes());
    }
    img
}

pub(super) fn seeds() -> Vec<Vec<u8>> {
    vec![aout(0), aout(0x4000), elf32()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_load() {
        RAM.with(|ram| {
            for (i, img) in seeds().iter().enumerate() {
                load_multiboot(ram, img).unwrap_or_else(|e| panic!("seed {i}: {e}"));
            }
        });
    }
}
