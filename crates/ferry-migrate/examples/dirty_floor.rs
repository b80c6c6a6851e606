//! Throwaway measurement: a guest's progress (a byte per 1024 pages written) under each way of
//! tracking its writes. Usage: dirty_floor [sequential|random|mixed] [ws MiB] [mem MiB]

use std::time::{Duration, Instant};

use ferry_guest::mailbox::{Mailbox, MAILBOX_ADDR, MAILBOX_SIZE};
use ferry_guest::{Entropy, GuestConfig, Heartbeat, Pattern, Rate, WriteSize};
use ferry_vmm::clock::monotonic_ns;
use ferry_vmm::devices::{Console, HeartbeatLog};
use ferry_vmm::dirty::DirtyBitmap;
use ferry_vmm::{GuestRam, Vm, VmConfig};

fn mailbox(ram: &GuestRam) -> Option<Mailbox> {
    let mut page = vec![0u8; MAILBOX_SIZE];
    ram.read(MAILBOX_ADDR, &mut page).ok()?;
    Mailbox::parse(&page)
}

/// (beats, max gap ms, mean ms per beat) over the window that just ended.
fn window(vm: &Vm, t0: u64, c0: u64) -> (u64, f64, f64) {
    let log = vm.heartbeats();
    let log = log.lock().unwrap();
    let beats = log.snapshot().count - c0;
    let max = log.max_gap_since(t0).unwrap_or(0) as f64 / 1e6;
    let span = (monotonic_ns() - t0) as f64 / 1e6;
    (beats, max, span / beats.max(1) as f64)
}

fn measure(vm: &mut Vm, what: &str, dur: Duration, mut every: impl FnMut(&mut Vm)) {
    let t0 = monotonic_ns();
    let c0 = vm.heartbeats().lock().unwrap().snapshot().count;
    let end = Instant::now() + dur;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        every(vm);
    }
    let (beats, max, mean) = window(vm, t0, c0);
    println!("{what:40} beats {beats:5}  mean {mean:7.2} ms/beat  max gap {max:7.2} ms");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pattern: Pattern = args.get(1).map_or("sequential", |s| s).parse().unwrap();
    let ws = args.get(2).map_or(64, |s| s.parse().unwrap()) << 20;
    let mem = args.get(3).map_or(512, |s| s.parse().unwrap()) << 20;
    let cfg = GuestConfig {
        memory: mem,
        working_set: ws,
        pattern,
        entropy: Entropy::Random,
        write_size: WriteSize::Page,
        rate: Rate::Unlimited,
        heartbeat: Heartbeat::Pages { every: 1024 },
        ..GuestConfig::default()
    };
    let image = ferry_guest::build_image(&cfg).unwrap();
    let mut vm = Vm::new(
        VmConfig {
            memory: mem,
            vcpus: 1,
        },
        Console::new(None, false, HeartbeatLog::default()),
    )
    .unwrap();
    println!("clear mode {:?}", vm.dirty_clear_mode());
    vm.boot_multiboot(&image).unwrap();
    vm.resume().unwrap();
    let t = Instant::now();
    while mailbox(vm.ram()).is_none_or(|m| m.iterations <= 3 * (ws / 4096)) {
        std::thread::sleep(Duration::from_millis(10));
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "guest did not warm up"
        );
    }
    let pages = vm.ram().pages();
    let d = Duration::from_millis(std::env::var("MS").map_or(600, |s| s.parse().unwrap()));
    measure(&mut vm, "native (no log)", d, |_| {});
    // Classic: everything protected, re-armed every 20 ms.
    vm.set_dirty_logging(false).unwrap();
    vm.set_dirty_logging(true).unwrap();
    let mut scratch = DirtyBitmap::new(pages);
    vm.collect_dirty(&mut scratch).unwrap();
    measure(&mut vm, "classic, re-armed every 20 ms", d, |vm| {
        let mut b = DirtyBitmap::new(pages);
        vm.collect_dirty(&mut b).unwrap();
    });
    vm.set_dirty_logging(false).unwrap();
    measure(&mut vm, "log off after classic", d, |_| {});
    measure(&mut vm, "log off after classic #1", d, |_| {});
    vm.start_dirty_log_unprotected().unwrap();
    measure(&mut vm, "unprotected start, no reads", d, |_| {});
    measure(&mut vm, "unprotected start, no reads #1", d, |_| {});
    // Initially set, nothing protected.
    let lazy = vm.start_dirty_log_unprotected().unwrap();
    println!("unprotected start: {lazy}");
    let full = DirtyBitmap::full(pages);
    for i in 0..2 {
        measure(
            &mut vm,
            &format!("log on, nothing protected #{i}"),
            d,
            |vm| {
                let mut b = DirtyBitmap::new(pages);
                vm.collect_dirty_keep(&mut b, &full).unwrap();
            },
        );
    }
    vm.set_dirty_logging(false).unwrap();
    for i in 0..2 {
        measure(&mut vm, &format!("log off again #{i}"), d, |_| {});
    }
    vm.start_dirty_log_unprotected().unwrap();
    for every in [64u64, 16, 4] {
        let mut probes = DirtyBitmap::new(pages);
        (0..pages)
            .step_by(every as usize)
            .for_each(|p| probes.set(p));
        let mut keep = DirtyBitmap::full(pages);
        keep.and_not(&probes);
        vm.protect_pages(&probes).unwrap();
        let mut seen = DirtyBitmap::new(pages);
        measure(
            &mut vm,
            &format!("probes 1/{every}, re-armed every 20 ms"),
            d,
            |vm| {
                let mut b = DirtyBitmap::new(pages);
                vm.collect_dirty_keep(&mut b, &keep).unwrap();
                b.and(&probes);
                seen.or(&b);
            },
        );
        println!("   probes seen written: {}", seen.count());
        vm.start_dirty_log_unprotected().unwrap();
    }
    // A destination: fresh RAM filled with the source's pages, state restored.
    vm.pause().unwrap();
    let state = vm.save_state().unwrap();
    let mut dst = Vm::new(
        VmConfig {
            memory: mem,
            vcpus: 1,
        },
        Console::new(None, false, HeartbeatLog::default()),
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    for p in 0..pages {
        vm.ram().read_page(p, &mut buf);
        dst.ram().write_page(p, &buf);
    }
    dst.restore_state(&state).unwrap();
    dst.continue_heartbeats(state.heartbeat);
    dst.resume().unwrap();
    measure(
        &mut dst,
        "destination, RAM written before resume",
        d,
        |_| {},
    );
    measure(&mut dst, "destination, afterwards", d, |_| {});
}
