//! Boots generated images in QEMU and checks them against docs/GUEST-ABI.md: banner, heartbeats,
//! mailbox counters, verification sweeps (driven through the GDB stub), the fill, pacing and the
//! start-up RAM check. Needs `qemu-system-x86_64`; skips without it unless CI=true.

mod qemu;

use std::time::{Duration, Instant};

use ferry_guest::layout::page_address;
use ferry_guest::mailbox::*;
use ferry_guest::{
    build_image, expected_first_word, expected_tag, Entropy, GuestConfig, Heartbeat, Pattern, Rate,
    WriteSize,
};
use qemu::{assert_consecutive, heartbeats_after_banner, qemu_available, serial_lock, Qemu};

const BANNER: &str = "ferry-guest abi=1";
const WAIT: Duration = Duration::from_secs(20);

fn small(ws_mib: u64) -> GuestConfig {
    GuestConfig {
        memory: 64 << 20,
        working_set: ws_mib << 20,
        ..GuestConfig::default()
    }
}

/// Requests a sweep and waits for its answer.
fn verify(q: &mut Qemu, request: u64) -> Mailbox {
    q.write_u64(MAILBOX_ADDR + OFF_VERIFY_REQUEST, request);
    q.wait_mailbox(WAIT, |m| m.verify_done == request)
        .filter(|m| m.verify_done == request)
        .unwrap_or_else(|| panic!("sweep {request} never finished"))
}

/// Pages the guest has written at least once, from its version table.
fn written_pages(q: &mut Qemu, pages: u64) -> u64 {
    let versions = q.read_mem(0x20_0000, pages as usize * 8);
    versions
        .chunks_exact(8)
        .filter(|v| v.iter().any(|&b| b != 0))
        .count() as u64
}

/// Requests a sweep and checks its page counts against the version table around it.
fn verify_written(q: &mut Qemu, request: u64, pages: u64) -> Mailbox {
    let before = written_pages(q, pages);
    let v = verify(q, request);
    let after = written_pages(q, pages);
    assert_eq!(
        v.verify_pages, pages,
        "the sweep covers the whole working set"
    );
    assert!(
        (before..=after).contains(&v.verify_written),
        "sweep checked {} written pages; {before}..={after} were written",
        v.verify_written
    );
    v
}

#[test]
fn boots_heartbeats_and_verifies() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = small(8);
    let mut q = Qemu::boot("boot", &build_image(&cfg).expect("image"), 128);
    let enough = |s: &[u8]| heartbeats_after_banner(s, BANNER).is_some_and(|h| h.len() >= 200);
    assert!(
        q.wait_serial(WAIT, enough),
        "no banner + 200 heartbeats on serial; stderr: {}",
        q.stderr()
    );
    assert_consecutive(&heartbeats_after_banner(&q.serial(), BANNER).expect("banner"));

    let m1 = q.mailbox().expect("mailbox magic set");
    assert_eq!(m1.abi, ABI_VERSION);
    assert_eq!(m1.state, STATE_RUNNING);
    assert_eq!(m1.ws_pages, 2048);
    assert_eq!(m1.ws_base, 4 << 20);
    assert!(m1.tsc_hz > 0);
    assert_eq!(m1.params().pattern, Pattern::Random.code());
    assert!(m1.params().full_page);
    let (dt, cpu, m1, m2) = q.measure(Duration::from_secs(1));
    assert!(
        m2.iterations > m1.iterations,
        "iterations stuck at {}",
        m1.iterations
    );
    assert!(m2.heartbeats > m1.heartbeats);
    assert_eq!(m2.errors, 0, "self-check errors in the loop");
    let beats = (m2.heartbeats - m1.heartbeats) as f64;
    eprintln!(
        "{:.0} page writes/s, {:.0} heartbeats/s, vCPU ran {cpu:.2} s of {dt:.2} s",
        (m2.iterations - m1.iterations) as f64 / dt,
        beats / dt
    );
    // Under KVM the TSC runs at the host's rate, so 1 ms heartbeats come at most ~1000 per second
    // of wall time, and about that many per second the vCPU ran (missed beats are skipped while
    // its thread waits for a CPU, never burst).
    assert!(beats / dt < 1100.0, "{} heartbeats/s", beats / dt);
    assert!(
        beats / cpu >= 250.0,
        "{} heartbeats per second of vCPU time",
        beats / cpu
    );
    assert_eq!(m1.heartbeat(), Some(Heartbeat::Time { us: 1000 }));

    let v = verify_written(&mut q, 1, 2048);
    assert_eq!(v.verify_errors, 0);
    let v = verify_written(&mut q, 2, 2048);
    assert_eq!(v.verify_errors, 0);
    assert_eq!(v.errors, 0);
    assert_eq!(v.state, STATE_RUNNING);
    // The sweeps and the stops for memory writes must not have broken the heartbeat sequence.
    assert_consecutive(&heartbeats_after_banner(&q.serial(), BANNER).expect("banner"));
}

#[test]
fn fill_then_idle_and_detect_corruption() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        fill: true,
        rate: Rate::PagesPerSec(0),
        pattern: Pattern::Sequential,
        entropy: Entropy::Text,
        ..small(4)
    };
    let pages = 1024;
    let mut q = Qemu::boot("fill", &build_image(&cfg).expect("image"), 128);
    let m = q
        .wait_mailbox(WAIT, |m| m.state == STATE_RUNNING)
        .unwrap_or_else(|| panic!("guest never finished its fill; stderr: {}", q.stderr()));
    assert_eq!(m.iterations, pages, "the fill writes every page once");
    assert!(m.params().fill);
    std::thread::sleep(Duration::from_millis(200));
    let idle = q.mailbox().expect("mailbox");
    assert_eq!(
        idle.iterations, pages,
        "rate 0 must not write after the fill"
    );
    assert!(
        idle.heartbeats > m.heartbeats,
        "heartbeats go on while idle"
    );
    assert_eq!(idle.errors, 0);

    // Every page is at version 1 with its tag and text content.
    let versions = q.read_mem(0x20_0000, pages as usize * 8);
    assert!(versions.chunks_exact(8).all(|v| v == 1u64.to_le_bytes()));
    let page = q.read_mem(m.ws_base + 3 * 4096, 4096);
    let tag = u64::from_le_bytes(page[..8].try_into().expect("8 bytes"));
    assert_eq!(tag, expected_tag(cfg.seed, 3, 1));
    assert!(
        page[8..].iter().all(|b| (b'a'..=b'p').contains(b)),
        "text entropy bytes"
    );

    let v = verify(&mut q, 7);
    assert_eq!(
        (v.verify_errors, v.verify_pages, v.verify_written),
        (0, pages, pages)
    );
    q.write_u64(m.ws_base + 5 * 4096, 0xDEAD_BEEF);
    q.write_u64(m.ws_base + 900 * 4096, 0);
    let v = verify(&mut q, 8);
    assert_eq!(
        (v.verify_errors, v.verify_pages),
        (2, pages),
        "the sweep finds both bad pages"
    );
    assert_eq!(v.iterations, pages);
}

/// Mixed entropy: every page's content follows its class, and the sweep checks each class right
/// (untagged zero pages included).
#[test]
fn mixed_fill_has_three_classes_and_verifies() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        fill: true,
        rate: Rate::PagesPerSec(0),
        pattern: Pattern::Sequential,
        entropy: Entropy::Mixed,
        ..small(4)
    };
    let pages = 1024u64;
    let mut q = Qemu::boot("mixed", &build_image(&cfg).expect("image"), 128);
    let m = q
        .wait_mailbox(WAIT, |m| m.state == STATE_RUNNING)
        .unwrap_or_else(|| panic!("guest never finished its fill; stderr: {}", q.stderr()));
    assert_eq!(m.iterations, pages);
    assert_eq!(m.params().entropy, Entropy::Mixed.code());
    assert_eq!(m.errors, 0);

    let ws = q.read_mem(m.ws_base, (pages * 4096) as usize);
    let mut seen = [0u64; 3];
    for (i, page) in ws.chunks_exact(4096).enumerate() {
        let i = i as u64;
        let first = u64::from_le_bytes(page[..8].try_into().expect("8 bytes"));
        assert_eq!(
            first,
            expected_first_word(cfg.entropy, cfg.seed, i, 1),
            "page {i}"
        );
        match cfg.entropy.of_page(i) {
            Entropy::Zero => {
                assert!(page.iter().all(|&b| b == 0), "zero page {i}");
                seen[0] += 1;
            }
            Entropy::Text => {
                assert!(
                    page[8..].iter().all(|b| (b'a'..=b'p').contains(b)),
                    "text page {i}"
                );
                seen[1] += 1;
            }
            _ => {
                let distinct = page[8..]
                    .iter()
                    .fold([false; 256], |mut s, &b| {
                        s[b as usize] = true;
                        s
                    })
                    .iter()
                    .filter(|&&x| x)
                    .count();
                assert!(distinct > 200, "random page {i} has {distinct} byte values");
                seen[2] += 1;
            }
        }
    }
    assert!(seen.iter().all(|&n| n > pages / 8), "classes {seen:?}");

    let v = verify(&mut q, 3);
    assert_eq!(
        (v.verify_errors, v.verify_pages, v.verify_written),
        (0, pages, pages)
    );
    // A zero page that is no longer zero, and a text page with a wrong tag, are both caught.
    let zero = (0..pages)
        .find(|&i| cfg.entropy.of_page(i) == Entropy::Zero)
        .expect("a zero page");
    let text = (0..pages)
        .find(|&i| cfg.entropy.of_page(i) == Entropy::Text)
        .expect("a text page");
    q.write_u64(m.ws_base + zero * 4096, 1);
    q.write_u64(m.ws_base + text * 4096, 0);
    let v = verify(&mut q, 4);
    assert_eq!(v.verify_errors, 2, "the sweep finds both bad pages");
}

/// Mixed entropy under the running loop: every rewrite dispatches on the page's class, and both the
/// loop's own checks and a sweep find nothing wrong.
#[test]
fn mixed_random_writes_verify() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        entropy: Entropy::Mixed,
        ..small(4)
    };
    let mut q = Qemu::boot("mixed-loop", &build_image(&cfg).expect("image"), 128);
    let m = q
        .wait_mailbox(WAIT, |m| m.state == STATE_RUNNING && m.iterations > 20_000)
        .unwrap_or_else(|| panic!("guest not writing; stderr: {}", q.stderr()));
    assert_eq!(m.errors, 0, "self-check errors in the loop");
    let v = verify_written(&mut q, 1, 1024);
    assert_eq!((v.verify_errors, v.errors), (0, 0));
}

#[test]
fn paced_hotcold_word_writes() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        pattern: Pattern::HotCold,
        entropy: Entropy::Zero,
        write_size: WriteSize::Word,
        rate: Rate::PagesPerSec(2000),
        ..small(8)
    };
    let mut q = Qemu::boot("paced", &build_image(&cfg).expect("image"), 128);
    q.wait_mailbox(WAIT, |m| m.state == STATE_RUNNING && m.iterations > 0)
        .unwrap_or_else(|| panic!("guest not running; stderr: {}", q.stderr()));
    let (dt, cpu, m1, m2) = q.measure(Duration::from_secs(1));
    let writes = (m2.iterations - m1.iterations) as f64;
    assert_eq!(m2.errors, 0);
    assert!(!m2.params().full_page);
    // Never ahead of the 2000/s schedule in wall time; at least 2000 per second the vCPU ran (it
    // spins between writes, and after a short wait for a CPU it catches up: more per vCPU second).
    assert!(
        writes / dt < 2500.0 && writes / cpu >= 1000.0,
        "paced at {:.0} pages/s of wall time, {:.0} per vCPU second; want 2000",
        writes / dt,
        writes / cpu
    );
    if cpu / dt > 0.9 {
        assert!(
            writes / dt >= 1000.0,
            "{} pages/s on an idle machine",
            writes / dt
        );
    }
    let v = verify_written(&mut q, 1, 2048);
    assert_eq!(v.verify_errors, 0);
}

#[test]
fn too_little_ram_exits_with_status_1() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        memory: 256 << 20,
        working_set: 128 << 20,
        ..GuestConfig::default()
    };
    let mut q = Qemu::boot("small-ram", &build_image(&cfg).expect("image"), 64);
    // isa-debug-exit turns the byte 1 into exit status (1 << 1) | 1.
    assert_eq!(q.wait_exit(WAIT), Some(3), "stderr: {}", q.stderr());
    let serial = String::from_utf8_lossy(&q.serial()).into_owned();
    assert!(serial.contains("RAM too small"), "serial: {serial:?}");
}

/// A working set past 3 GiB continues at 4 GiB (the hole below 4 GiB has no RAM).
#[test]
fn working_set_skips_the_hole_below_4g() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        memory: 4 << 30,
        working_set: (3 << 30) + (64 << 20),
        // Paced so only a few hundred MiB of host memory get touched.
        rate: Rate::PagesPerSec(50_000),
        ..GuestConfig::default()
    };
    let pages = cfg.working_set / 4096;
    let mut q = Qemu::boot("hole", &build_image(&cfg).expect("image"), 4096);
    q.wait_mailbox(WAIT, |m| m.iterations > 3_000)
        .unwrap_or_else(|| panic!("guest not writing; stderr: {}", q.stderr()));
    let v = verify_written(&mut q, 1, pages);
    assert_eq!((v.verify_errors, v.errors), (0, 0));

    // Find a written page above the hole and check its tag where the ABI says it lives.
    let versions = q.read_mem(0x20_0000, pages as usize * 8);
    let first_high = ((3u64 << 30) - v.ws_base) / 4096;
    let (index, version) = (first_high..pages)
        .map(|i| {
            let at = i as usize * 8;
            (
                i,
                u64::from_le_bytes(versions[at..at + 8].try_into().expect("8 bytes")),
            )
        })
        .find(|&(_, ver)| ver > 0)
        .expect("some page above the hole was written");
    let addr = page_address(v.ws_base, index);
    assert!(addr >= 4 << 30);
    let tag = u64::from_le_bytes(q.read_mem(addr, 8).try_into().expect("8 bytes"));
    assert!(
        tag == expected_tag(cfg.seed, index, version)
            || tag == expected_tag(cfg.seed, index, version + 1)
    );
    // The loop may rewrite the page first; then its own check must have caught the corruption.
    q.write_u64(addr, 0x1234_5678);
    let v = verify(&mut q, 2);
    assert_eq!(
        v.verify_errors + v.errors,
        1,
        "corruption above 4 GiB went unnoticed"
    );
}

#[test]
fn missing_ram_above_4g_exits_with_status_1() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        memory: 4 << 30,
        working_set: (3 << 30) + (64 << 20),
        ..GuestConfig::default()
    };
    // 3200 MiB is all below 4 GiB in QEMU: enough for mem_upper, but nothing at 4 GiB.
    let mut q = Qemu::boot("no-high-ram", &build_image(&cfg).expect("image"), 3200);
    assert_eq!(q.wait_exit(WAIT), Some(3), "stderr: {}", q.stderr());
    assert!(String::from_utf8_lossy(&q.serial()).contains("RAM too small"));
}

/// Stops the VM, reads the mailbox, and lets it run again: counters read in one instant.
fn mailbox_stopped(q: &mut Qemu) -> Mailbox {
    q.qmp_cmd(r#"{"execute":"stop"}"#);
    let m = q.mailbox().expect("mailbox");
    q.qmp_cmd(r#"{"execute":"cont"}"#);
    m
}

/// `pages:N`: one byte per N pages written, the fill's pages included, and no time tick while the
/// guest writes.
#[test]
fn progress_bytes_count_pages_written() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        heartbeat: Heartbeat::Pages { every: 64 },
        fill: true,
        ..small(4)
    };
    let mut q = Qemu::boot("progress", &build_image(&cfg).expect("image"), 128);
    q.wait_mailbox(WAIT, |m| m.state == STATE_RUNNING && m.iterations > 50_000)
        .unwrap_or_else(|| panic!("guest not writing; stderr: {}", q.stderr()));
    for _ in 0..3 {
        let m = mailbox_stopped(&mut q);
        assert_eq!(m.heartbeat(), Some(Heartbeat::Pages { every: 64 }));
        // The vCPU may stop between the iterations store and the progress byte's counter.
        let due = m.iterations / 64;
        assert!(
            m.heartbeats == due || (m.iterations.is_multiple_of(64) && m.heartbeats + 1 == due),
            "{} progress bytes after {} page writes, want {due}",
            m.heartbeats,
            m.iterations
        );
        assert_eq!(m.errors, 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    // The serial carries the same bytes: 0x80 | seq, consecutive from the first page written.
    let ok = |s: &[u8]| heartbeats_after_banner(s, BANNER).is_some_and(|h| h.len() >= 1000);
    assert!(q.wait_serial(WAIT, ok), "too few progress bytes on serial");
    assert_consecutive(&heartbeats_after_banner(&q.serial(), BANNER).expect("banner"));
}

/// `pages:N` on an idle guest: progress bytes during the fill, then a 1 ms time tick.
#[test]
fn idle_progress_guest_falls_back_to_a_time_tick() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        heartbeat: Heartbeat::Pages { every: 64 },
        fill: true,
        rate: Rate::PagesPerSec(0),
        ..small(4)
    };
    let mut q = Qemu::boot("idle-progress", &build_image(&cfg).expect("image"), 128);
    let m = q
        .wait_mailbox(WAIT, |m| m.state == STATE_RUNNING)
        .unwrap_or_else(|| panic!("guest never finished its fill; stderr: {}", q.stderr()));
    assert_eq!(m.iterations, 1024);
    assert!(
        m.heartbeats >= 16,
        "{} bytes for a 1024-page fill",
        m.heartbeats
    );
    let (dt, cpu, m, idle) = q.measure(Duration::from_secs(1));
    assert_eq!(idle.iterations, 1024);
    let ticks = (idle.heartbeats - m.heartbeats) as f64;
    assert!(
        ticks / dt < 1100.0 && ticks / cpu >= 250.0,
        "idle ticks: {ticks} in {dt:.2} s, the vCPU ran {cpu:.2} s"
    );
    assert_consecutive(&heartbeats_after_banner(&q.serial(), BANNER).expect("banner"));
}

/// `dots:N`: an ASCII '.' per N pages (console text), nothing else, nothing while idle.
#[test]
fn dots_are_plain_text_progress() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        heartbeat: Heartbeat::Dots { every: 64 },
        fill: true,
        rate: Rate::PagesPerSec(0),
        ..small(4)
    };
    let mut q = Qemu::boot("dots", &build_image(&cfg).expect("image"), 128);
    let m = q
        .wait_mailbox(WAIT, |m| m.state == STATE_RUNNING)
        .unwrap_or_else(|| panic!("guest never finished its fill; stderr: {}", q.stderr()));
    assert_eq!(m.heartbeats, 16);
    std::thread::sleep(Duration::from_millis(300));
    let serial = q.serial();
    let text = String::from_utf8(serial.clone()).expect("only 7-bit text on serial");
    let (banner, rest) = text.split_once('\n').expect("banner line");
    assert!(banner.starts_with(BANNER), "{banner}");
    assert!(banner.contains("heartbeat=dots:64"), "{banner}");
    assert_eq!(rest, ".".repeat(16), "one dot per 64 pages of the fill");
    let v = verify(&mut q, 1);
    assert_eq!((v.verify_errors, v.verify_written), (0, 1024));
}

/// `none`: not a byte on COM1, while the guest writes and answers a verification request.
#[test]
fn a_silent_guest_prints_nothing() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        heartbeat: Heartbeat::None,
        ..small(4)
    };
    let mut q = Qemu::boot("silent", &build_image(&cfg).expect("image"), 128);
    let m = q
        .wait_mailbox(WAIT, |m| m.state == STATE_RUNNING && m.iterations > 10_000)
        .unwrap_or_else(|| panic!("guest not writing; stderr: {}", q.stderr()));
    assert_eq!(m.heartbeats, 0);
    let v = verify_written(&mut q, 1, 1024);
    assert_eq!((v.verify_errors, v.errors), (0, 0));
    assert!(q.serial().is_empty(), "serial: {:?}", q.serial());
}

/// `sequential` rewrites whole pages in index order, wrapping: the version table is one step
/// down at a single point, and each page holds full-page content under its tag.
#[test]
fn sequential_writes_whole_pages_in_order() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    let cfg = GuestConfig {
        pattern: Pattern::Sequential,
        heartbeat: Heartbeat::Pages { every: 1024 },
        ..small(8)
    };
    let pages = 2048usize;
    let mut q = Qemu::boot("sequential", &build_image(&cfg).expect("image"), 128);
    let m = q
        .wait_mailbox(WAIT, |m| {
            m.state == STATE_RUNNING && m.iterations > 3 * 2048
        })
        .unwrap_or_else(|| panic!("guest not writing; stderr: {}", q.stderr()));
    q.qmp_cmd(r#"{"execute":"stop"}"#);
    let mb = q.mailbox().expect("mailbox");
    let versions: Vec<u64> = q
        .read_mem(0x20_0000, pages * 8)
        .chunks_exact(8)
        .map(|v| u64::from_le_bytes(v.try_into().expect("8 bytes")))
        .collect();
    let top = versions[0];
    let boundary = versions.iter().position(|&v| v != top).unwrap_or(pages);
    assert!(
        versions[boundary..].iter().all(|&v| v + 1 == top),
        "versions are not one sequential sweep: {:?}",
        &versions[boundary.saturating_sub(2)..(boundary + 2).min(pages)]
    );
    // Every write so far is accounted for by whole sweeps plus the pages before the boundary (one
    // more if the vCPU stopped inside a write, after the version bump, before the counter's).
    let accounted = (top - 1) * pages as u64 + boundary as u64;
    assert!(
        accounted == mb.iterations || accounted == mb.iterations + 1,
        "page writes {} vs {accounted} in the version table",
        mb.iterations
    );
    let i = 7u64;
    let page = q.read_mem(m.ws_base + i * 4096, 4096);
    let tag = u64::from_le_bytes(page[..8].try_into().expect("8 bytes"));
    assert_eq!(tag, expected_tag(cfg.seed, i, versions[i as usize]));
    let distinct = page[8..].iter().fold([false; 256], |mut s, &b| {
        s[b as usize] = true;
        s
    });
    assert!(
        distinct.iter().filter(|&&x| x).count() > 200,
        "the whole page is rewritten with random bytes"
    );
    q.qmp_cmd(r#"{"execute":"cont"}"#);
}

/// `mixed`: sequential runs and random pages; the loop's checks and a sweep find nothing wrong,
/// and the version table shows runs of consecutive pages written the same number of times.
#[test]
fn mixed_pattern_writes_runs_and_random_pages() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    // Paced, so the version table is read while most pages are still unwritten.
    let cfg = GuestConfig {
        pattern: Pattern::Mixed,
        heartbeat: Heartbeat::Pages { every: 256 },
        rate: Rate::PagesPerSec(2000),
        ..small(16)
    };
    let pages = 4096usize;
    let mut q = Qemu::boot("mixed-pattern", &build_image(&cfg).expect("image"), 128);
    q.wait_mailbox(WAIT, |m| m.state == STATE_RUNNING && m.iterations >= 640)
        .unwrap_or_else(|| panic!("guest not writing; stderr: {}", q.stderr()));
    q.qmp_cmd(r#"{"execute":"stop"}"#);
    let mb = q.mailbox().expect("mailbox");
    let versions: Vec<u64> = q
        .read_mem(0x20_0000, pages * 8)
        .chunks_exact(8)
        .map(|v| u64::from_le_bytes(v.try_into().expect("8 bytes")))
        .collect();
    q.qmp_cmd(r#"{"execute":"cont"}"#);
    assert_eq!(mb.params().pattern, Pattern::Mixed.code());
    let sum = versions.iter().sum::<u64>();
    assert!(
        sum == mb.iterations || sum == mb.iterations + 1,
        "{sum} versions vs {} page writes",
        mb.iterations
    );
    // Sequential runs: stretches of 64 written pages (random writes alone make runs of a few).
    let longest = versions
        .split(|&v| v == 0)
        .map(<[u64]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest >= 32, "longest run of written pages {longest}");
    // Random pages: written pages with no written neighbour.
    let written = |i: usize| versions.get(i).is_some_and(|&v| v > 0);
    let lone = (0..pages)
        .filter(|&i| written(i) && !written(i + 1) && (i == 0 || !written(i - 1)))
        .count();
    assert!(lone >= 50, "only {lone} isolated written pages");
    let v = verify_written(&mut q, 1, pages as u64);
    assert_eq!((v.verify_errors, v.errors), (0, 0));
}

/// Not a check: measures the heartbeat's cost (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn measure_heartbeat_cost() {
    if !qemu_available() {
        return;
    }
    let _lock = serial_lock();
    for (entropy, write_size) in [
        (Entropy::Random, WriteSize::Page),
        (Entropy::Random, WriteSize::Word),
    ] {
        for heartbeat in [
            Heartbeat::Time { us: 1000 },
            Heartbeat::Time { us: u32::MAX },
            Heartbeat::Pages { every: 1024 },
            Heartbeat::Pages { every: 256 },
        ] {
            let cfg = GuestConfig {
                entropy,
                write_size,
                heartbeat,
                ..small(8)
            };
            let mut q = Qemu::boot("cost", &build_image(&cfg).expect("image"), 128);
            let m1 = q
                .wait_mailbox(WAIT, |m| m.state == STATE_RUNNING && m.iterations > 0)
                .expect("running");
            let t1 = Instant::now();
            std::thread::sleep(Duration::from_secs(3));
            let m2 = q.mailbox().expect("mailbox");
            let dt = t1.elapsed().as_secs_f64();
            eprintln!(
                "{entropy}/{write_size} heartbeat {heartbeat}: {:.0} writes/s, {:.0} heartbeats/s",
                (m2.iterations - m1.iterations) as f64 / dt,
                (m2.heartbeats - m1.heartbeats) as f64 / dt
            );
        }
    }
}
