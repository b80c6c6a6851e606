//! Ferry's workload guests: bootable x86-64 multiboot images generated from Rust with iced-x86.
//!
//! The binding contract with hosts is docs/GUEST-ABI.md. [`build_image`] turns a [`GuestConfig`]
//! into a flat image that boots with `qemu-system-x86_64 -kernel` and in ferry's own VMM; the
//! [`mailbox`] module and the heartbeat/tag helpers let a host read what the guest reports.

mod boot32;
pub mod config;
pub mod layout;
pub mod mailbox;
pub mod multiboot;
mod setup64;
mod workload;

use std::time::{Duration, Instant};

pub use config::{
    Entropy, GuestConfig, Heartbeat, ParseParamError, Pattern, Rate, WriteSize, IDLE_TICK_US,
    MIXED_RUN,
};
use layout::*;
use mailbox::Params;

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The working set has no pages.
    #[error("working set is empty: it needs at least one 4 KiB page")]
    EmptyWorkingSet,
    /// The working set is not a whole number of pages.
    #[error("working set of {0} bytes is not a multiple of 4096 bytes (the page size)")]
    UnalignedWorkingSet(u64),
    /// The page tables cannot map that much RAM.
    #[error("memory of {memory} bytes is over the 16 GiB the guest can map")]
    MemoryTooLarge {
        /// The configured memory.
        memory: u64,
    },
    /// The working set with its version table does not fit in the configured memory.
    #[error(
        "working set of {working_set} bytes needs {needed} bytes of RAM (version table and \
         2 MiB alignment included), more than the configured memory of {memory} bytes"
    )]
    WorkingSetTooLarge {
        /// The configured working set.
        working_set: u64,
        /// The configured memory.
        memory: u64,
        /// RAM the layout would need.
        needed: u64,
    },
    /// A heartbeat period of zero would flood the serial port.
    #[error("heartbeat must come at most every microsecond or every page (got {0})")]
    ZeroHeartbeat(Heartbeat),
    /// The host's TSC frequency could not be measured.
    #[error("cannot measure the host TSC frequency: {0}")]
    TscMeasure(&'static str),
    /// A generated part outgrew its fixed slot in the image (a bug in this crate).
    #[error("internal error: {part} is {size} bytes, over its {limit}-byte slot")]
    SlotOverflow {
        /// Which part.
        part: &'static str,
        /// Its size.
        size: u64,
        /// Its slot's size.
        limit: u64,
    },
    /// The assembler rejected generated code (a bug in this crate).
    #[error("assembling the guest failed: {0}")]
    Assemble(#[from] iced_x86::IcedError),
}

/// The splitmix64 finaliser with its golden-ratio increment: the mixing function behind the tags.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(workload::SPLITMIX_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The tag the guest writes as the first word of page `page_index` at `version` (0 if never written).
///
/// Pages of entropy `zero` (and the zero-class pages of `mixed`) are not tagged: their expected first
/// word is always 0 ([`expected_first_word`]).
pub fn expected_tag(seed: u64, page_index: u64, version: u64) -> u64 {
    if version == 0 {
        0
    } else {
        splitmix64((page_index << 32) ^ version ^ seed) | 1
    }
}

/// The first word of working-set page `page_index` after `version` writes with `entropy`: 0 for
/// pages whose class ([`Entropy::of_page`]) is zero, [`expected_tag`] otherwise.
pub fn expected_first_word(entropy: Entropy, seed: u64, page_index: u64, version: u64) -> u64 {
    match entropy.of_page(page_index) {
        Entropy::Zero => 0,
        _ => expected_tag(seed, page_index, version),
    }
}

/// Whether a byte read from COM1 is a heartbeat or a progress byte of [`Heartbeat::Pages`]
/// (console text is 7-bit; the dots of [`Heartbeat::Dots`] are text: see [`Heartbeat::is_beat`]).
pub fn is_heartbeat(byte: u8) -> bool {
    byte & 0x80 != 0
}

/// Sequence number (0..=127) carried by a heartbeat byte.
pub fn heartbeat_seq(byte: u8) -> u8 {
    byte & 0x7F
}

/// Measures this host's TSC frequency in Hz against the monotonic clock over about 50 ms.
pub fn host_tsc_hz() -> Result<u64, GuestError> {
    #[cfg(target_arch = "x86_64")]
    {
        let rdtsc = || {
            // SAFETY: rdtsc only reads the time-stamp counter; every x86-64 CPU has it and
            // user mode may run it unless the OS sets CR4.TSD, which Linux does not.
            unsafe { core::arch::x86_64::_rdtsc() }
        };
        let t0 = Instant::now();
        let c0 = rdtsc();
        std::thread::sleep(Duration::from_millis(50));
        let c1 = rdtsc();
        let elapsed = t0.elapsed().as_nanos();
        let ticks = u128::from(c1.wrapping_sub(c0));
        if elapsed == 0 || ticks == 0 || c1 < c0 {
            return Err(GuestError::TscMeasure("the TSC did not advance"));
        }
        u64::try_from(ticks * 1_000_000_000 / elapsed)
            .map_err(|_| GuestError::TscMeasure("implausible TSC frequency"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Err(GuestError::TscMeasure("not an x86-64 host; set tsc_hz"))
    }
}

/// Computes the TSC-based timing constants the workload bakes in.
fn timing(cfg: &GuestConfig, tsc_hz: u64) -> Result<workload::Timing, GuestError> {
    if cfg.heartbeat != Heartbeat::None && cfg.heartbeat.every() == 0 {
        return Err(GuestError::ZeroHeartbeat(cfg.heartbeat));
    }
    // The time tick's period: the heartbeat's own, or the idle fallback of a progress heartbeat.
    let tick_us = match cfg.heartbeat {
        Heartbeat::Time { us } => us,
        _ => IDLE_TICK_US,
    };
    let hb = u128::from(tsc_hz) * u128::from(tick_us) / 1_000_000;
    let heartbeat_ticks = u64::try_from(hb).unwrap_or(u64::MAX).max(1);
    let ticks_per_page = match cfg.rate {
        Rate::PagesPerSec(r) if r > 0 => (tsc_hz / r).max(1),
        _ => 0,
    };
    Ok(workload::Timing {
        heartbeat_ticks,
        ticks_per_page,
        tsc_hz,
        catch_up_ticks: (tsc_hz / 100).max(ticks_per_page),
    })
}

/// The one-line banner printed on COM1 when the workload starts.
fn banner(cfg: &GuestConfig, l: &Layout, tsc_hz: u64) -> String {
    format!(
        "ferry-guest abi={} pattern={} entropy={} write={} rate={} fill={} ws_pages={} \
         ws_base={:#x} heartbeat={} tsc_hz={}\n",
        mailbox::ABI_VERSION,
        cfg.pattern,
        cfg.entropy,
        cfg.write_size,
        cfg.rate,
        if cfg.fill { "yes" } else { "no" },
        l.ws_pages,
        l.ws_base,
        cfg.heartbeat,
        tsc_hz,
    )
}

/// Copies `bytes` into the image at `off`, failing if they spill past `end`.
fn place(
    img: &mut Vec<u8>,
    part: &'static str,
    off: u64,
    end: u64,
    bytes: &[u8],
) -> Result<(), GuestError> {
    let size = bytes.len() as u64;
    if off + size > end {
        return Err(GuestError::SlotOverflow {
            part,
            size,
            limit: end - off,
        });
    }
    let (off, end_b) = (off as usize, (off + size) as usize);
    if img.len() < end_b {
        img.resize(end_b, 0);
    }
    img[off..end_b].copy_from_slice(bytes);
    Ok(())
}

/// Builds a bootable multiboot image for `cfg` (measuring the host TSC if `cfg.tsc_hz` is 0).
pub fn build_image(cfg: &GuestConfig) -> Result<Vec<u8>, GuestError> {
    let l = Layout::new(cfg)?;
    if cfg.heartbeat != Heartbeat::None && cfg.heartbeat.every() == 0 {
        return Err(GuestError::ZeroHeartbeat(cfg.heartbeat));
    }
    let tsc_hz = match cfg.tsc_hz {
        0 => host_tsc_hz()?,
        hz => hz,
    };
    let t = timing(cfg, tsc_hz)?;
    let params = Params {
        pattern: cfg.pattern.code(),
        entropy: cfg.entropy.code(),
        full_page: cfg.write_size == WriteSize::Page,
        fill: cfg.fill,
    }
    .pack();

    let user_entry = IMAGE_BASE + USER_OFF;
    let user = workload::assemble(cfg, &l, &t, params, IMAGE_BASE + BANNER_OFF, user_entry)?;
    let file_len = USER_OFF + user.len() as u64;
    let ring0_stack_top = align_up(IMAGE_BASE + file_len, PAGE) + RING0_STACK;
    let ring3_stack_top = ring0_stack_top + RING3_STACK;
    let bss_end = ring3_stack_top;
    if bss_end > VERSION_TABLE {
        return Err(GuestError::SlotOverflow {
            part: "image with stacks",
            size: bss_end - IMAGE_BASE,
            limit: VERSION_TABLE - IMAGE_BASE,
        });
    }
    let setup = setup64::assemble(&setup64::Targets {
        ring0_stack_top,
        ring3_stack_top,
        user_entry,
    })?;
    let boot = boot32::assemble(&l)?;
    let header = multiboot::Header {
        header_addr: IMAGE_BASE as u32,
        load_addr: IMAGE_BASE as u32,
        load_end_addr: (IMAGE_BASE + file_len) as u32,
        bss_end_addr: bss_end as u32,
        entry_addr: (IMAGE_BASE + BOOT32_OFF) as u32,
    };
    let fail_msg = format!(
        "ferry-guest: RAM too small: this image needs {} MiB\n\0",
        l.ws_end.div_ceil(1 << 20)
    );
    let banner = banner(cfg, &l, tsc_hz) + "\0";

    let mut img = Vec::with_capacity(file_len as usize);
    place(
        &mut img,
        "multiboot header",
        0,
        BOOT32_OFF,
        &header.encode(),
    )?;
    place(&mut img, "32-bit entry", BOOT32_OFF, SETUP64_OFF, &boot)?;
    place(&mut img, "64-bit set-up", SETUP64_OFF, GDT_OFF, &setup)?;
    place(&mut img, "GDT", GDT_OFF, GDTR_OFF, &setup64::gdt())?;
    place(&mut img, "GDTR", GDTR_OFF, FAIL_MSG_OFF, &setup64::gdtr())?;
    place(
        &mut img,
        "failure message",
        FAIL_MSG_OFF,
        BANNER_OFF,
        fail_msg.as_bytes(),
    )?;
    place(&mut img, "banner", BANNER_OFF, TSS_OFF, banner.as_bytes())?;
    place(
        &mut img,
        "TSS",
        TSS_OFF,
        USER_OFF,
        &setup64::tss(ring0_stack_top),
    )?;
    place(&mut img, "workload", USER_OFF, file_len, &user)?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GuestConfig {
        GuestConfig {
            memory: 64 << 20,
            working_set: 8 << 20,
            tsc_hz: 2_000_000_000,
            ..GuestConfig::default()
        }
    }

    fn word(img: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(img[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn image_header_matches_layout() {
        let img = build_image(&small()).unwrap();
        assert_eq!(word(&img, 0), multiboot::HEADER_MAGIC);
        assert_eq!(
            word(&img, 0)
                .wrapping_add(word(&img, 4))
                .wrapping_add(word(&img, 8)),
            0
        );
        assert_eq!(word(&img, 16), IMAGE_BASE as u32);
        assert_eq!(word(&img, 20) as u64, IMAGE_BASE + img.len() as u64);
        assert!(word(&img, 24) > word(&img, 20));
        assert!(u64::from(word(&img, 24)) <= VERSION_TABLE);
        assert_eq!(word(&img, 28) as u64, IMAGE_BASE + BOOT32_OFF);
        // QEMU tries Linux first: the image must not look like a bzImage.
        assert_ne!(&img[0x202..0x206], b"HdrS");
    }

    #[test]
    fn every_variant_builds() {
        for pattern in [
            Pattern::Sequential,
            Pattern::Random,
            Pattern::HotCold,
            Pattern::Mixed,
        ] {
            for entropy in [
                Entropy::Zero,
                Entropy::Text,
                Entropy::Random,
                Entropy::Mixed,
            ] {
                for write_size in [WriteSize::Word, WriteSize::Page] {
                    for rate in [
                        Rate::Unlimited,
                        Rate::PagesPerSec(0),
                        Rate::PagesPerSec(1000),
                    ] {
                        let cfg = GuestConfig {
                            pattern,
                            entropy,
                            write_size,
                            rate,
                            fill: true,
                            ..small()
                        };
                        build_image(&cfg).unwrap();
                    }
                }
            }
        }
        for heartbeat in [
            Heartbeat::Time { us: 1 },
            Heartbeat::Pages { every: 1 },
            Heartbeat::Pages { every: u32::MAX },
            Heartbeat::Dots { every: 1024 },
            Heartbeat::None,
        ] {
            for rate in [Rate::Unlimited, Rate::PagesPerSec(0)] {
                for pattern in [Pattern::Sequential, Pattern::Mixed] {
                    let cfg = GuestConfig {
                        heartbeat,
                        rate,
                        pattern,
                        fill: true,
                        ..small()
                    };
                    build_image(&cfg).unwrap();
                }
            }
        }
        let huge = GuestConfig {
            memory: 16 << 30,
            working_set: 15 << 30,
            ..small()
        };
        build_image(&huge).unwrap();
    }

    #[test]
    fn config_errors() {
        for heartbeat in [Heartbeat::Time { us: 0 }, Heartbeat::Pages { every: 0 }] {
            let e = build_image(&GuestConfig {
                heartbeat,
                ..small()
            })
            .unwrap_err();
            assert!(matches!(e, GuestError::ZeroHeartbeat(_)), "{e}");
        }
        let e = build_image(&GuestConfig {
            working_set: 64 << 20,
            ..small()
        })
        .unwrap_err();
        assert!(matches!(e, GuestError::WorkingSetTooLarge { .. }), "{e}");
    }

    #[test]
    fn timing_math() {
        let t = timing(
            &GuestConfig {
                rate: Rate::PagesPerSec(1000),
                ..small()
            },
            2_000_000_000,
        )
        .unwrap();
        assert_eq!(t.heartbeat_ticks, 2_000_000);
        assert_eq!(t.ticks_per_page, 2_000_000);
        let t = timing(
            &GuestConfig {
                heartbeat: Heartbeat::Time { us: u32::MAX },
                rate: Rate::PagesPerSec(u64::MAX),
                ..small()
            },
            4_000_000_000,
        )
        .unwrap();
        assert_eq!(t.ticks_per_page, 1);
        assert_eq!(t.heartbeat_ticks, 4_000 * u64::from(u32::MAX));
        // A progress heartbeat's idle fallback ticks every IDLE_TICK_US.
        let t = timing(
            &GuestConfig {
                heartbeat: Heartbeat::Pages { every: 1024 },
                ..small()
            },
            2_000_000_000,
        )
        .unwrap();
        assert_eq!(t.heartbeat_ticks, 2_000 * u64::from(IDLE_TICK_US));
    }

    #[test]
    fn tags() {
        assert_eq!(expected_tag(1, 2, 0), 0);
        assert_eq!(expected_tag(7, 3, 1) & 1, 1);
        assert_ne!(expected_tag(7, 3, 1), expected_tag(7, 3, 2));
        assert_ne!(expected_tag(7, 3, 1), expected_tag(7, 4, 1));
        assert_ne!(expected_tag(7, 3, 1), expected_tag(8, 3, 1));
        // Known splitmix64 output for input 0 (first value of the reference generator seeded 0).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(expected_tag(0, 0, 1), splitmix64(1) | 1);
    }

    #[test]
    fn mixed_first_words() {
        let (zero, text) = (0, 1);
        assert_eq!(Entropy::Mixed.of_page(zero), Entropy::Zero);
        assert_eq!(Entropy::Mixed.of_page(text), Entropy::Text);
        assert_eq!(expected_first_word(Entropy::Mixed, 9, zero, 3), 0);
        assert_eq!(
            expected_first_word(Entropy::Mixed, 9, text, 3),
            expected_tag(9, text, 3)
        );
        assert_eq!(expected_first_word(Entropy::Zero, 9, text, 3), 0);
        assert_eq!(expected_first_word(Entropy::Random, 9, text, 0), 0);
    }

    #[test]
    fn mixed_image_has_all_three_bodies() {
        // A mixed image carries a write routine per class, so it is larger than a random one.
        let base = GuestConfig {
            fill: true,
            ..small()
        };
        let random = build_image(&base).unwrap();
        let mixed = build_image(&GuestConfig {
            entropy: Entropy::Mixed,
            ..base
        })
        .unwrap();
        assert!(mixed.len() > random.len());
    }

    #[test]
    fn heartbeat_bytes() {
        assert!(is_heartbeat(0x80));
        assert!(is_heartbeat(0xFF));
        assert!(!is_heartbeat(b'f'));
        assert_eq!(heartbeat_seq(0x85), 5);
        assert_eq!(heartbeat_seq(0xFF), 127);
    }

    #[test]
    fn host_tsc_is_plausible() {
        let hz = host_tsc_hz().unwrap();
        assert!((100_000_000..20_000_000_000).contains(&hz), "{hz}");
    }
}
