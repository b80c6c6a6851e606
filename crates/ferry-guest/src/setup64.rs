//! 64-bit ring-0 set-up (segments, TSS) and the descriptor tables it uses, then `iretq` to ring 3.

use iced_x86::code_asm::*;

use crate::layout::*;

/// RFLAGS for ring 3: only the always-one bit. IOPL stays 0 on purpose so that port access is
/// governed by the TSS bitmap everywhere (this nested host drops IOPL anyway; QEMU would not).
const USER_RFLAGS: u32 = 0x0002;

/// Ports ring 3 may use: COM1 (heartbeat and console) and the exit port.
pub const ALLOWED_PORTS: [std::ops::RangeInclusive<u16>; 2] = [0x3F8..=0x3FF, 0x501..=0x501];

/// Addresses of the stacks and of the ring-3 entry point.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    /// Top of the ring-0 stack.
    pub ring0_stack_top: u64,
    /// Top of the ring-3 stack.
    pub ring3_stack_top: u64,
    /// First instruction of the workload.
    pub user_entry: u64,
}

/// Assembles the 64-bit set-up code for `IMAGE_BASE + SETUP64_OFF`.
pub fn assemble(t: &Targets) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    a.mov(ax, SEL_DATA as u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(rsp, t.ring0_stack_top)?;
    a.mov(ax, SEL_TSS as u32)?;
    a.ltr(ax)?;
    // The iretq frame: SS, RSP, RFLAGS, CS, RIP. Interrupts stay off (IF = 0): there is no IDT.
    a.push(SEL_USER_DATA as i32)?;
    a.mov(rax, t.ring3_stack_top)?;
    a.push(rax)?;
    a.push(USER_RFLAGS as i32)?;
    a.push(SEL_USER_CODE as i32)?;
    a.mov(rax, t.user_entry)?;
    a.push(rax)?;
    a.iretq()?;
    a.assemble(IMAGE_BASE + SETUP64_OFF)
}

/// The GDT: null, code64, data, code32, user data, user code64, TSS (two slots).
pub fn gdt() -> Vec<u8> {
    let tss_base = IMAGE_BASE + TSS_OFF;
    let tss_limit = TSS_SIZE - 1;
    let tss_low = (tss_limit & 0xFFFF)
        | (tss_base & 0xFF_FFFF) << 16
        | 0x89 << 40 // present, 64-bit TSS (available)
        | (tss_limit >> 16 & 0xF) << 48
        | (tss_base >> 24 & 0xFF) << 56;
    let tss_high = tss_base >> 32;
    let entries: [u64; 8] = [
        0,
        0x00AF_9A00_0000_FFFF, // 0x08 ring-0 code, L=1
        0x00CF_9200_0000_FFFF, // 0x10 ring-0 data
        0x00CF_9A00_0000_FFFF, // 0x18 ring-0 code, 32-bit
        0x00CF_F200_0000_FFFF, // 0x20 ring-3 data
        0x00AF_FA00_0000_FFFF, // 0x28 ring-3 code, L=1
        tss_low,
        tss_high,
    ];
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// The GDTR pseudo-descriptor for a 32-bit `lgdt`.
pub fn gdtr() -> [u8; 6] {
    let limit = (8 * 8 - 1) as u16;
    let base = (IMAGE_BASE + GDT_OFF) as u32;
    let mut out = [0u8; 6];
    out[..2].copy_from_slice(&limit.to_le_bytes());
    out[2..].copy_from_slice(&base.to_le_bytes());
    out
}

/// The 64-bit TSS with RSP0 and an I/O permission bitmap that allows [`ALLOWED_PORTS`].
pub fn tss(ring0_stack_top: u64) -> Vec<u8> {
    let mut t = vec![0u8; TSS_SIZE as usize];
    t[4..12].copy_from_slice(&ring0_stack_top.to_le_bytes());
    t[102..104].copy_from_slice(&(IOPB_OFF as u16).to_le_bytes());
    // A set bit denies the port; the trailing 0xFF byte is required past the bitmap's end.
    let bitmap = &mut t[IOPB_OFF as usize..];
    bitmap.fill(0xFF);
    for port in ALLOWED_PORTS.into_iter().flatten() {
        bitmap[usize::from(port / 8)] &= !(1 << (port % 8));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_allowed(tss: &[u8], port: u16) -> bool {
        tss[IOPB_OFF as usize + usize::from(port / 8)] & (1 << (port % 8)) == 0
    }

    #[test]
    fn tss_bitmap() {
        let t = tss(0x10_8000);
        assert_eq!(t.len(), 104 + 8192 + 1);
        assert_eq!(u16::from_le_bytes([t[102], t[103]]), 104);
        assert_eq!(u64::from_le_bytes(t[4..12].try_into().unwrap()), 0x10_8000);
        for p in 0x3F8..=0x3FF {
            assert!(port_allowed(&t, p));
        }
        assert!(port_allowed(&t, 0x501));
        for p in [0x3F7, 0x400, 0x500, 0x502, 0x64, 0x80, 0xFFFF] {
            assert!(!port_allowed(&t, p), "port {p:#x}");
        }
        assert_eq!(*t.last().unwrap(), 0xFF);
    }

    #[test]
    fn tss_descriptor() {
        let g = gdt();
        let low = u64::from_le_bytes(g[0x30..0x38].try_into().unwrap());
        let limit = (low & 0xFFFF) | (low >> 48 & 0xF) << 16;
        let base = (low >> 16 & 0xFF_FFFF) | (low >> 56) << 24;
        assert_eq!(limit, TSS_SIZE - 1);
        assert_eq!(base, IMAGE_BASE + TSS_OFF);
        assert_eq!(low >> 40 & 0xFF, 0x89);
        assert_eq!(gdtr()[..2], [63, 0]);
    }
}
