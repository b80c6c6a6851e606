//! 32-bit entry (ring 0, protected mode, paging off): own GDT, start-up memory check, page tables,
//! long mode, then a far jump into the 64-bit set-up code.
//!
//! Ring-0 code is emulated one instruction at a time on nested KVM, so this stays short: the only
//! loops are the RAM-too-small message and one store pair per 2 MiB page table entry.

use iced_x86::code_asm::*;

use crate::layout::*;
use crate::mailbox::{MAILBOX_ADDR, OFF_STATE, STATE_HALTED};
use crate::multiboot::{
    BOOT_MAGIC, INFO_FLAG_MMAP, INFO_MEM_UPPER, INFO_MMAP_ADDR, INFO_MMAP_LENGTH,
};

/// Page table entry flags: present, writable, user-accessible (ring 3 runs everything).
const PTE_PWU: u32 = 0x7;
/// Page directory entry flags for a 2 MiB page: present, writable, user, page size.
const PDE_LARGE: u32 = 0x87;
/// EFER MSR number and its long-mode-enable bit.
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u32 = 1 << 8;
const CR4_PAE: u32 = 1 << 5;
const CR0_PE_PG: u32 = 0x8000_0001;

/// Assembles the entry code for `IMAGE_BASE + BOOT32_OFF`.
pub fn assemble(layout: &Layout) -> Result<Vec<u8>, IcedError> {
    let base = IMAGE_BASE + BOOT32_OFF;
    let gdtr = (IMAGE_BASE + GDTR_OFF) as u32;
    let fail_msg = (IMAGE_BASE + FAIL_MSG_OFF) as u32;
    let setup64 = (IMAGE_BASE + SETUP64_OFF) as u32;
    let mut a = CodeAssembler::new(32)?;

    a.cli()?;
    // The loader's GDT may be anywhere (even overwritten by us later), so switch to ours first.
    a.lgdt(ptr(gdtr))?;
    // A far jump is the only way to reload CS; its target is this very next instruction.
    let after_jump = base + far_jump_target_offset();
    a.jmp_far(SEL_CODE32, after_jump as u32)?;
    a.mov(cx, SEL_DATA as u32)?;
    a.mov(ds, cx)?;
    a.mov(es, cx)?;
    a.mov(ss, cx)?;
    a.mov(fs, cx)?;
    a.mov(gs, cx)?;

    // Start-up check: with multiboot memory info, refuse to run if the working set is not in RAM.
    let mut check_done = a.create_label();
    a.cmp(eax, BOOT_MAGIC)?;
    a.jne(check_done)?;
    let mut fail = a.create_label();
    let mut high = a.create_label();
    a.test(dword_ptr(ebx), 1u32)?;
    a.jz(high)?;
    a.cmp(
        dword_ptr(ebx + INFO_MEM_UPPER),
        layout.min_mem_upper_kib as u32,
    )?;
    a.jb(fail)?;
    a.set_label(&mut high)?;
    if layout.crosses_hole() {
        emit_high_ram_check(&mut a, layout.high_ram_needed, check_done, fail)?;
    }
    a.jmp(check_done)?;
    a.set_label(&mut fail)?;
    a.mov(dword_ptr(MAILBOX_ADDR + OFF_STATE), STATE_HALTED as u32)?;
    a.mov(esi, fail_msg)?;
    a.mov(edx, 0x3F8u32)?;
    let mut print = a.create_label();
    let mut printed = a.create_label();
    a.set_label(&mut print)?;
    a.mov(al, byte_ptr(esi))?;
    a.test(al, al)?;
    a.jz(printed)?;
    a.out(dx, al)?;
    a.inc(esi)?;
    a.jmp(print)?;
    a.set_label(&mut printed)?;
    a.mov(edx, 0x501u32)?;
    a.mov(al, 1u32)?;
    a.out(dx, al)?;
    let mut halt = a.create_label();
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    a.set_label(&mut check_done)?;

    // Page tables: PML4 and PDPT are zeroed (RAM contents are not guaranteed after a reset);
    // the page directories are fully written by the loop below for every mapped GiB.
    a.xor(eax, eax)?;
    a.mov(edi, PML4_ADDR as u32)?;
    a.mov(ecx, 2 * 1024u32)?;
    a.cld()?;
    a.rep().stosd()?;
    a.mov(dword_ptr(PML4_ADDR), (PDPT_ADDR as u32) | PTE_PWU)?;
    // PDPT[g] = PD_g, one 4 KiB directory per GiB.
    a.mov(edi, PDPT_ADDR as u32)?;
    a.mov(eax, (PD_ADDR as u32) | PTE_PWU)?;
    a.mov(ecx, layout.map_gib as u32)?;
    let mut pdpt_loop = a.create_label();
    a.set_label(&mut pdpt_loop)?;
    a.mov(dword_ptr(edi), eax)?;
    a.add(eax, 0x1000u32)?;
    a.add(edi, 8u32)?;
    a.dec(ecx)?;
    a.jnz(pdpt_loop)?;
    // PD[i] = i * 2 MiB, as a 64-bit entry built from EDX:EAX since addresses pass 4 GiB.
    a.mov(edi, PD_ADDR as u32)?;
    a.mov(eax, PDE_LARGE)?;
    a.xor(edx, edx)?;
    a.mov(ecx, (layout.map_gib * 512) as u32)?;
    let mut pd_loop = a.create_label();
    a.set_label(&mut pd_loop)?;
    a.mov(dword_ptr(edi), eax)?;
    a.mov(dword_ptr(edi + 4), edx)?;
    a.add(eax, LARGE_PAGE as u32)?;
    a.adc(edx, 0u32)?;
    a.add(edi, 8u32)?;
    a.dec(ecx)?;
    a.jnz(pd_loop)?;

    // Long mode: PAE, CR3, EFER.LME, then paging on; the far jump lands in a 64-bit segment.
    a.mov(eax, PML4_ADDR as u32)?;
    a.mov(cr3, eax)?;
    a.mov(eax, cr4)?;
    a.or(eax, CR4_PAE)?;
    a.mov(cr4, eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, EFER_LME)?;
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, CR0_PE_PG)?;
    a.mov(cr0, eax)?;
    a.jmp_far(SEL_CODE64, setup64)?;

    a.assemble(base)
}

/// Emits a scan of the multiboot memory map (EBX = info) for an available region at 4 GiB at
/// least `needed` bytes long: jumps to `ok` if found or if there is no map, to `fail` otherwise.
fn emit_high_ram_check(
    a: &mut CodeAssembler,
    needed: u64,
    ok: CodeLabel,
    fail: CodeLabel,
) -> Result<(), IcedError> {
    let mut scan = a.create_label();
    let mut next = a.create_label();
    a.test(dword_ptr(ebx), INFO_FLAG_MMAP)?;
    a.jz(ok)?;
    a.mov(esi, dword_ptr(ebx + INFO_MMAP_ADDR))?;
    a.mov(edi, dword_ptr(ebx + INFO_MMAP_LENGTH))?;
    a.add(edi, esi)?;
    a.set_label(&mut scan)?;
    a.cmp(esi, edi)?;
    a.jae(fail)?;
    // Entry: size u32 (not counting itself), base u64, length u64, type u32 (1 = RAM).
    a.cmp(dword_ptr(esi + 20), 1u32)?;
    a.jne(next)?;
    a.cmp(dword_ptr(esi + 4), 0u32)?;
    a.jne(next)?;
    a.cmp(dword_ptr(esi + 8), (HOLE_END >> 32) as u32)?;
    a.jne(next)?;
    // length >= needed as a 64-bit compare: no borrow out of the high half.
    a.mov(eax, dword_ptr(esi + 12))?;
    a.mov(edx, dword_ptr(esi + 16))?;
    a.sub(eax, needed as u32)?;
    a.sbb(edx, (needed >> 32) as u32)?;
    a.jae(ok)?;
    a.set_label(&mut next)?;
    a.add(esi, dword_ptr(esi))?;
    a.add(esi, 4u32)?;
    a.jmp(scan)?;
    Ok(())
}

/// Offset from the start of the entry code of the instruction after the CS-reloading far jump:
/// `cli` (1 byte), `lgdt [abs32]` (7 bytes), `jmp ptr16:32` (7 bytes).
const fn far_jump_target_offset() -> u64 {
    1 + 7 + 7
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GuestConfig;

    #[test]
    fn far_jump_lands_after_itself() {
        let layout = Layout::new(&GuestConfig::default()).unwrap();
        let code = assemble(&layout).unwrap();
        // cli; lgdt [disp32]; jmp far: the jump opcode must sit where far_jump_target_offset expects.
        assert_eq!(code[0], 0xFA);
        assert_eq!(&code[1..3], &[0x0F, 0x01]);
        assert_eq!(code[8], 0xEA);
        let target = u32::from_le_bytes(code[9..13].try_into().unwrap()) as u64;
        assert_eq!(target, IMAGE_BASE + BOOT32_OFF + far_jump_target_offset());
        assert_eq!(u16::from_le_bytes([code[13], code[14]]), SEL_CODE32);
    }
}
