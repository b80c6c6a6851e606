//! Ring-3 code: mailbox set-up, banner, optional fill, the workload loop, heartbeats and the
//! verification sweep (docs/GUEST-ABI.md, "Workload", "Heartbeat", "Verification sweep").
//!
//! The code is specialised per config at build time (pattern, entropy, write size and rate pick
//! which instructions are emitted), so the loop carries no run-time branching on parameters.
//!
//! Registers kept across the whole program (routines never clobber them unless noted):
//! r15 PRNG state, r14 checksum, r13 iterations, r12 next time-tick deadline (TSC; `u64::MAX`
//! while no time tick is due: progress heartbeats), r11 heartbeat/progress bytes emitted, r10 next
//! write deadline (paced rates), rbp pages left until the next progress byte, rbx current page
//! index. Scratch: rax, rcx, rdx, rsi, rdi, r8, r9.

use iced_x86::code_asm::*;

use crate::config::{
    Entropy, GuestConfig, Heartbeat, Pattern, Rate, WriteSize, MIXED_HASH, MIXED_RUN,
};
use crate::layout::{Layout, HOLE_END, HOLE_START, PAGE, VERSION_TABLE};
use crate::mailbox::*;

/// Golden-ratio increment of splitmix64.
pub const SPLITMIX_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const SPLITMIX_M1: u64 = 0xBF58_476D_1CE4_E5B9;
const SPLITMIX_M2: u64 = 0x94D0_49BB_1331_11EB;
/// Multiplier of xorshift64*.
const XORSHIFT_STAR: u64 = 0x2545_F491_4F6C_DD1D;
/// Text bytes are `'a' + nibble`: 16 letters, 4 bits of entropy per byte.
const TEXT_BASE: u64 = 0x6161_6161_6161_6161;
const NIBBLES: u64 = 0x0F0F_0F0F_0F0F_0F0F;
/// Sweep pages between heartbeat checks: keeps heartbeats flowing during long sweeps.
const SWEEP_TICK_EVERY: u32 = 64;
/// Port of COM1's data register.
const COM1: u32 = 0x3F8;

/// Build-time numbers the workload bakes in.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// TSC ticks between heartbeats.
    pub heartbeat_ticks: u64,
    /// TSC ticks between page writes for a paced rate.
    pub ticks_per_page: u64,
    /// TSC frequency baked into the mailbox.
    pub tsc_hz: u64,
    /// How far (TSC ticks) a paced loop may fall behind before it stops trying to catch up.
    pub catch_up_ticks: u64,
}

/// Absolute mailbox field operand (ring 3 reaches the mailbox through the identity map).
fn mb(off: u64) -> AsmMemoryOperand {
    qword_ptr(MAILBOX_ADDR + off)
}

/// Emits `out = tag(idx, ver)` per the ABI (0 when `ver` is 0); clobbers `tmp` and `k`.
fn emit_tag(
    a: &mut CodeAssembler,
    seed: u64,
    out: AsmRegister64,
    idx: AsmRegister64,
    ver: AsmRegister64,
    tmp: AsmRegister64,
    k: AsmRegister64,
) -> Result<(), IcedError> {
    a.mov(out, idx)?;
    a.shl(out, 32u32)?;
    a.xor(out, ver)?;
    a.mov(k, seed)?;
    a.xor(out, k)?;
    a.mov(k, SPLITMIX_GAMMA)?;
    a.add(out, k)?;
    for (shift, mul) in [
        (30u32, Some(SPLITMIX_M1)),
        (27, Some(SPLITMIX_M2)),
        (31, None),
    ] {
        a.mov(tmp, out)?;
        a.shr(tmp, shift)?;
        a.xor(out, tmp)?;
        if let Some(m) = mul {
            a.mov(k, m)?;
            a.imul_2(out, k)?;
        }
    }
    a.or(out, 1i32)?;
    a.test(ver, ver)?;
    a.cmovz(out, ver)?;
    Ok(())
}

/// Emits the hole skip for a working-set address in `reg` (RAM past 3 GiB lives above 4 GiB);
/// nothing when the working set stays below the hole. Clobbers `tmp`.
fn emit_hole_shift(
    a: &mut CodeAssembler,
    l: &Layout,
    reg: AsmRegister64,
    tmp: AsmRegister64,
) -> Result<(), IcedError> {
    if !l.crosses_hole() {
        return Ok(());
    }
    let mut below = a.create_label();
    a.mov(tmp, HOLE_START)?;
    a.cmp(reg, tmp)?;
    a.jb(below)?;
    a.add(reg, (HOLE_END - HOLE_START) as i32)?;
    a.set_label(&mut below)?;
    a.nop()?;
    Ok(())
}

/// Emits one xorshift64* step: advances r15 and leaves the scrambled output in rax.
fn emit_rand(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for (shift, left) in [(12u32, false), (25, true), (27, false)] {
        a.mov(rax, r15)?;
        if left {
            a.shl(rax, shift)?;
        } else {
            a.shr(rax, shift)?;
        }
        a.xor(r15, rax)?;
    }
    a.mov(rax, XORSHIFT_STAR)?;
    a.imul_2(rax, r15)?;
    Ok(())
}

/// Emits `rbx = uniform(0..n)` from a fresh random number (multiply-high, no division).
fn emit_uniform(a: &mut CodeAssembler, n: u64, offset: u64) -> Result<(), IcedError> {
    emit_rand(a)?;
    a.mov(rcx, n)?;
    a.mul(rcx)?;
    if offset == 0 {
        a.mov(rbx, rdx)?;
    } else {
        a.mov(rbx, offset)?;
        a.add(rbx, rdx)?;
    }
    Ok(())
}

/// Emits the page choice for the next iteration into rbx.
fn emit_pick(a: &mut CodeAssembler, pattern: Pattern, l: &Layout) -> Result<(), IcedError> {
    match pattern {
        Pattern::Sequential => {
            let mut ok = a.create_label();
            a.inc(rbx)?;
            a.mov(rax, l.ws_pages)?;
            a.cmp(rbx, rax)?;
            a.jb(ok)?;
            a.xor(ebx, ebx)?;
            a.set_label(&mut ok)?;
            a.nop()?;
        }
        Pattern::Random => emit_uniform(a, l.ws_pages, 0)?,
        Pattern::Mixed => {
            // r13 = writes so far picks the run: (r13 / RUN) odd -> random; even -> sequential,
            // from a random page at the run's first write, else the next page (wrapping).
            let mut random = a.create_label();
            let mut next = a.create_label();
            let mut done = a.create_label();
            a.mov(rax, r13)?;
            a.test(eax, MIXED_RUN as u32)?;
            a.jnz(random)?;
            a.test(eax, (MIXED_RUN - 1) as u32)?;
            a.jnz(next)?;
            a.set_label(&mut random)?;
            emit_uniform(a, l.ws_pages, 0)?;
            a.jmp(done)?;
            a.set_label(&mut next)?;
            a.inc(rbx)?;
            a.mov(rax, l.ws_pages)?;
            a.cmp(rbx, rax)?;
            a.jb(done)?;
            a.xor(ebx, ebx)?;
            a.set_label(&mut done)?;
            a.nop()?;
        }
        Pattern::HotCold => {
            let hot = l.hot_pages();
            let cold = l.ws_pages - hot;
            if cold == 0 {
                return emit_uniform(a, hot, 0);
            }
            let mut to_cold = a.create_label();
            let mut done = a.create_label();
            // One draw in ten goes cold: 90% of writes hit the first 10% of pages.
            emit_rand(a)?;
            a.mov(ecx, 10u32)?;
            a.mul(rcx)?;
            a.cmp(rdx, 9i32)?;
            a.jae(to_cold)?;
            emit_uniform(a, hot, 0)?;
            a.jmp(done)?;
            a.set_label(&mut to_cold)?;
            emit_uniform(a, cold, hot)?;
            a.set_label(&mut done)?;
            a.nop()?;
        }
    }
    Ok(())
}

/// Emits `dst = idx * MIXED_HASH` then `test dst, dst`: SF is bit 63, clear for the zero pages of
/// [`Entropy::Mixed`] (see [`Entropy::of_page`]).
fn emit_mixed_hash(
    a: &mut CodeAssembler,
    dst: AsmRegister64,
    idx: AsmRegister64,
) -> Result<(), IcedError> {
    a.mov(dst, MIXED_HASH)?;
    a.imul_2(dst, idx)?;
    // imul leaves SF undefined: set the flags explicitly.
    a.test(dst, dst)?;
    Ok(())
}

/// Emits the routine that writes page rbx: check and fold its tag, bump its version, rewrite it.
/// For [`Entropy::Mixed`] it dispatches on the page's class to one body per class.
fn emit_write_page(
    a: &mut CodeAssembler,
    cfg: &GuestConfig,
    l: &Layout,
    full_page: bool,
) -> Result<(), IcedError> {
    if cfg.entropy != Entropy::Mixed {
        return emit_write_body(a, cfg, l, full_page, cfg.entropy);
    }
    let mut zero = a.create_label();
    let mut random = a.create_label();
    // rax = h: bit 63 clear -> zero page; else bit 62 clear -> text; else random.
    emit_mixed_hash(a, rax, rbx)?;
    a.jns(zero)?;
    a.shl(rax, 1u32)?;
    a.js(random)?;
    emit_write_body(a, cfg, l, full_page, Entropy::Text)?;
    a.set_label(&mut random)?;
    emit_write_body(a, cfg, l, full_page, Entropy::Random)?;
    a.set_label(&mut zero)?;
    emit_write_body(a, cfg, l, full_page, Entropy::Zero)
}

/// Emits one write routine for pages of content `class` (never Mixed), ending in `ret`.
fn emit_write_body(
    a: &mut CodeAssembler,
    cfg: &GuestConfig,
    l: &Layout,
    full_page: bool,
    class: Entropy,
) -> Result<(), IcedError> {
    let tagged = class != Entropy::Zero;
    // rdi = page address, rsi = &version[i], r8 = version.
    a.mov(rdi, rbx)?;
    a.shl(rdi, 12u32)?;
    a.mov(rax, l.ws_base)?;
    a.add(rdi, rax)?;
    emit_hole_shift(a, l, rdi, rax)?;
    a.lea(rsi, qword_ptr(rbx * 8 + VERSION_TABLE as i32))?;
    a.mov(r8, qword_ptr(rsi))?;
    if tagged {
        emit_tag(a, cfg.seed, rax, rbx, r8, rcx, rdx)?;
    } else {
        a.xor(eax, eax)?;
    }
    a.mov(r9, qword_ptr(rdi))?;
    // Never-written pages hold whatever the loader left (firmware leaves data in free RAM), so
    // only written pages are checked.
    let mut tag_ok = a.create_label();
    a.test(r8, r8)?;
    a.jz(tag_ok)?;
    a.cmp(r9, rax)?;
    a.je(tag_ok)?;
    a.inc(mb(OFF_ERRORS))?;
    a.set_label(&mut tag_ok)?;
    a.rol(r14, 7u32)?;
    a.xor(r14, r9)?;
    a.inc(r8)?;
    a.mov(qword_ptr(rsi), r8)?;
    if tagged {
        emit_tag(a, cfg.seed, rax, rbx, r8, rcx, rdx)?;
    } else {
        a.xor(eax, eax)?;
    }
    a.mov(qword_ptr(rdi), rax)?;
    if full_page {
        a.add(rdi, 8i32)?;
        a.mov(ecx, (PAGE / 8 - 1) as u32)?;
        match class {
            Entropy::Zero | Entropy::Mixed => {
                a.xor(eax, eax)?;
                a.rep().stosq()?;
            }
            Entropy::Random | Entropy::Text => {
                let text = class == Entropy::Text;
                if text {
                    a.mov(r8, NIBBLES)?;
                    a.mov(r9, TEXT_BASE)?;
                }
                let mut fill = a.create_label();
                a.set_label(&mut fill)?;
                // Plain xorshift64 steps on the shared state: fast, and random enough for content.
                for (shift, left) in [(12u32, false), (25, true), (27, false)] {
                    a.mov(rax, r15)?;
                    if left {
                        a.shl(rax, shift)?;
                    } else {
                        a.shr(rax, shift)?;
                    }
                    a.xor(r15, rax)?;
                }
                a.mov(rax, r15)?;
                if text {
                    a.and(rax, r8)?;
                    a.add(rax, r9)?;
                }
                a.mov(qword_ptr(rdi), rax)?;
                a.add(rdi, 8i32)?;
                a.dec(ecx)?;
                a.jnz(fill)?;
            }
        }
    }
    a.ret()?;
    Ok(())
}

/// Emits `rax = rdtsc` as one 64-bit value; clobbers rdx.
fn emit_rdtsc(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.rdtsc()?;
    a.shl(rdx, 32u32)?;
    a.or(rax, rdx)?;
    Ok(())
}

/// Assembles the ring-3 program for `entry`; `banner` is the address of a NUL-terminated string.
pub fn assemble(
    cfg: &GuestConfig,
    l: &Layout,
    t: &Timing,
    params: u64,
    banner: u64,
    entry: u64,
) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut tick = a.create_label();
    let mut progress = a.create_label();
    let mut sweep = a.create_label();
    let mut write_full = a.create_label();
    let mut write_word = a.create_label();
    let beat = cfg.heartbeat;
    let per_byte = beat.pages_per_byte();

    // Mailbox: static fields first, magic last so a host that sees it can trust the rest.
    for (off, v) in [
        (OFF_ABI, ABI_VERSION),
        (OFF_STATE, STATE_BOOTING),
        (OFF_ITERATIONS, 0),
        (OFF_HEARTBEATS, 0),
        (OFF_CHECKSUM, 0),
        (OFF_ERRORS, 0),
        (OFF_VERIFY_DONE, 0),
        (OFF_VERIFY_ERRORS, 0),
        (OFF_VERIFY_PAGES, 0),
        (OFF_VERIFY_WRITTEN, 0),
        (OFF_WS_BASE, l.ws_base),
        (OFF_WS_PAGES, l.ws_pages),
        (OFF_PARAMS, params),
        (OFF_TSC_HZ, t.tsc_hz),
        (OFF_BEAT, beat.pack()),
        (OFF_MAGIC, MAGIC),
    ] {
        a.mov(rax, v)?;
        a.mov(mb(off), rax)?;
    }

    // Banner: one port write per byte; it runs once, before any heartbeat or progress byte.
    if beat != Heartbeat::None {
        let mut print = a.create_label();
        let mut printed = a.create_label();
        a.mov(rsi, banner)?;
        a.mov(edx, COM1)?;
        a.set_label(&mut print)?;
        a.mov(al, byte_ptr(rsi))?;
        a.test(al, al)?;
        a.jz(printed)?;
        a.out(dx, al)?;
        a.inc(rsi)?;
        a.jmp(print)?;
        a.set_label(&mut printed)?;
    }

    a.mov(r15, prng_seed(cfg.seed))?;
    a.xor(r14d, r14d)?;
    a.xor(r13d, r13d)?;
    a.xor(r11d, r11d)?;
    a.mov(ebp, per_byte.unwrap_or(0))?;
    emit_rdtsc(&mut a)?;
    a.mov(r10, rax)?;
    if let Heartbeat::Time { .. } = beat {
        a.mov(r12, t.heartbeat_ticks)?;
        a.add(r12, rax)?;
    } else {
        // No time tick: progress bytes come from the writes (and a silent guest has none).
        a.mov(r12, -1i64)?;
    }

    if cfg.fill {
        let mut fill = a.create_label();
        a.xor(ebx, ebx)?;
        a.set_label(&mut fill)?;
        a.call(write_full)?;
        a.inc(r13)?;
        a.mov(mb(OFF_ITERATIONS), r13)?;
        a.mov(mb(OFF_CHECKSUM), r14)?;
        if per_byte.is_some() {
            a.call(progress)?;
        }
        a.call(tick)?;
        a.inc(rbx)?;
        a.mov(rax, l.ws_pages)?;
        a.cmp(rbx, rax)?;
        a.jb(fill)?;
    }
    if matches!(beat, Heartbeat::Pages { .. }) && cfg.rate == Rate::PagesPerSec(0) {
        // An idle guest makes no progress to count: from here on it ticks on time, as the ABI says.
        emit_rdtsc(&mut a)?;
        a.mov(r12, t.heartbeat_ticks)?;
        a.add(r12, rax)?;
    }
    a.mov(mb(OFF_STATE), STATE_RUNNING as i32)?;
    // Sequential starts at page 0: the first pick increments past -1.
    a.mov(rbx, -1i64)?;

    let mut main = a.create_label();
    a.set_label(&mut main)?;
    a.call(tick)?;
    match cfg.rate {
        Rate::PagesPerSec(0) => {
            a.pause()?;
            a.jmp(main)?;
        }
        Rate::PagesPerSec(_) => {
            // rax = now (from tick). Wait for the deadline; after a long stall (e.g. a migration
            // pause) restart the schedule instead of bursting to catch up.
            let mut on_time = a.create_label();
            a.cmp(rax, r10)?;
            a.jb(main)?;
            a.mov(rcx, rax)?;
            a.sub(rcx, r10)?;
            a.mov(rdx, t.catch_up_ticks)?;
            a.cmp(rcx, rdx)?;
            a.jbe(on_time)?;
            a.mov(r10, rax)?;
            a.set_label(&mut on_time)?;
            a.mov(rcx, t.ticks_per_page)?;
            a.add(r10, rcx)?;
        }
        Rate::Unlimited => {}
    }
    if cfg.rate != Rate::PagesPerSec(0) {
        emit_pick(&mut a, cfg.pattern, l)?;
        match cfg.write_size {
            WriteSize::Page => a.call(write_full)?,
            WriteSize::Word => a.call(write_word)?,
        }
        a.inc(r13)?;
        a.mov(mb(OFF_ITERATIONS), r13)?;
        a.mov(mb(OFF_CHECKSUM), r14)?;
        if per_byte.is_some() {
            a.call(progress)?;
        }
        a.jmp(main)?;
    }

    // progress: after a page write, count it; every `per_byte` pages emit a progress byte
    // (`0x80 | seq`, or '.' for dots). Clobbers rax, rdx.
    a.set_label(&mut progress)?;
    if let Some(every) = per_byte {
        let mut not_yet = a.create_label();
        a.dec(rbp)?;
        a.jnz(not_yet)?;
        a.mov(ebp, every)?;
        if let Heartbeat::Dots { .. } = beat {
            a.mov(eax, u32::from(b'.'))?;
        } else {
            a.mov(eax, r11d)?;
            a.and(al, 0x7Fu32)?;
            a.or(al, 0x80u32)?;
        }
        a.mov(edx, COM1)?;
        a.out(dx, al)?;
        a.inc(r11)?;
        a.mov(mb(OFF_HEARTBEATS), r11)?;
        a.set_label(&mut not_yet)?;
    }
    a.ret()?;

    // tick: emit a time heartbeat if one is due, and serve a verification request (checked on
    // every call, whatever the heartbeat); returns rax = now.
    // Clobbers rax, rcx, rdx (and, through the sweep, rsi, rdi, r8, r9).
    let mut tick_ret = a.create_label();
    let mut check = a.create_label();
    a.set_label(&mut tick)?;
    emit_rdtsc(&mut a)?;
    a.cmp(rax, r12)?;
    a.jb(check)?;
    a.mov(rcx, rax)?;
    a.mov(eax, r11d)?;
    a.and(al, 0x7Fu32)?;
    a.or(al, 0x80u32)?;
    a.mov(edx, COM1)?;
    a.out(dx, al)?;
    a.inc(r11)?;
    a.mov(mb(OFF_HEARTBEATS), r11)?;
    // Next deadline one period on; if the guest was stopped longer, skip the missed beats so a
    // pause shows up as one long gap rather than a burst.
    let mut deadline_ok = a.create_label();
    a.mov(rax, t.heartbeat_ticks)?;
    a.add(r12, rax)?;
    a.cmp(r12, rcx)?;
    a.ja(deadline_ok)?;
    a.lea(r12, qword_ptr(rcx + rax))?;
    a.set_label(&mut deadline_ok)?;
    a.mov(rax, rcx)?;
    a.set_label(&mut check)?;
    a.cmp(mb(OFF_STATE), STATE_VERIFYING as i32)?;
    a.je(tick_ret)?;
    a.mov(rcx, mb(OFF_VERIFY_REQUEST))?;
    a.cmp(rcx, mb(OFF_VERIFY_DONE))?;
    a.je(tick_ret)?;
    a.mov(rax, rcx)?;
    a.call(sweep)?;
    emit_rdtsc(&mut a)?;
    a.set_label(&mut tick_ret)?;
    a.ret()?;

    // sweep (rax = request): check every page's tag against the version table.
    let mut sweep_loop = a.create_label();
    let mut sweep_ok = a.create_label();
    let mut sweep_next = a.create_label();
    let mut sweep_done = a.create_label();
    // r8 page index, r9 mismatches, r10 written pages checked (the pacing deadline is saved meanwhile).
    a.set_label(&mut sweep)?;
    a.push(rax)?;
    a.push(mb(OFF_STATE))?;
    a.push(r10)?;
    a.mov(mb(OFF_STATE), STATE_VERIFYING as i32)?;
    a.xor(r8d, r8d)?;
    a.xor(r9d, r9d)?;
    a.xor(r10d, r10d)?;
    a.set_label(&mut sweep_loop)?;
    a.mov(rax, l.ws_pages)?;
    a.cmp(r8, rax)?;
    a.jae(sweep_done)?;
    a.mov(rsi, qword_ptr(r8 * 8 + VERSION_TABLE as i32))?;
    a.test(rsi, rsi)?;
    a.jz(sweep_ok)?;
    a.inc(r10)?;
    match cfg.entropy {
        Entropy::Zero => a.xor(edi, edi)?,
        Entropy::Text | Entropy::Random => emit_tag(&mut a, cfg.seed, rdi, r8, rsi, rcx, rdx)?,
        Entropy::Mixed => {
            // Zero-class pages are untagged: expect 0 where h's bit 63 is clear.
            emit_tag(&mut a, cfg.seed, rdi, r8, rsi, rcx, rdx)?;
            a.xor(edx, edx)?;
            emit_mixed_hash(&mut a, rcx, r8)?;
            a.cmovns(rdi, rdx)?;
        }
    }
    a.mov(rax, r8)?;
    a.shl(rax, 12u32)?;
    a.mov(rcx, l.ws_base)?;
    a.add(rax, rcx)?;
    emit_hole_shift(&mut a, l, rax, rcx)?;
    a.cmp(rdi, qword_ptr(rax))?;
    a.je(sweep_ok)?;
    a.inc(r9)?;
    a.set_label(&mut sweep_ok)?;
    a.inc(r8)?;
    a.test(r8d, SWEEP_TICK_EVERY - 1)?;
    a.jnz(sweep_next)?;
    a.call(tick)?;
    a.set_label(&mut sweep_next)?;
    a.jmp(sweep_loop)?;
    a.set_label(&mut sweep_done)?;
    a.mov(mb(OFF_VERIFY_ERRORS), r9)?;
    a.mov(mb(OFF_VERIFY_PAGES), r8)?;
    a.mov(mb(OFF_VERIFY_WRITTEN), r10)?;
    a.pop(r10)?;
    a.pop(mb(OFF_STATE))?;
    a.pop(rax)?;
    a.mov(mb(OFF_VERIFY_DONE), rax)?;
    a.ret()?;

    a.set_label(&mut write_full)?;
    emit_write_page(&mut a, cfg, l, true)?;
    a.set_label(&mut write_word)?;
    emit_write_page(&mut a, cfg, l, false)?;

    a.assemble(entry)
}

/// Initial PRNG state: derived from the seed and never zero (xorshift would stay at zero).
pub fn prng_seed(seed: u64) -> u64 {
    match crate::splitmix64(seed ^ SPLITMIX_GAMMA) {
        0 => SPLITMIX_GAMMA,
        s => s,
    }
}
