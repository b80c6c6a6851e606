//! The engine on real KVM: a ferry workload guest migrated over loopback TCP, checked end to end.

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ferry_guest::mailbox::{Mailbox, MAILBOX_ADDR, MAILBOX_SIZE, OFF_VERIFY_REQUEST};
use ferry_guest::{Entropy, GuestConfig, Pattern, Rate, WriteSize};
use ferry_migrate::channel::Stream;
use ferry_migrate::{
    migrate_out, receive, KvmSinkFactory, ReceiveOptions, SourceOptions, Strategy,
};
use ferry_vmm::devices::{Console, HeartbeatLog};
use ferry_vmm::testing::require_kvm;
use ferry_vmm::{GuestRam, Vm, VmConfig};

const MEM: u64 = 128 << 20;

fn mailbox(ram: &GuestRam) -> Option<Mailbox> {
    let mut page = vec![0u8; MAILBOX_SIZE];
    ram.read(MAILBOX_ADDR, &mut page).ok()?;
    Mailbox::parse(&page)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn boot(cfg: &GuestConfig) -> Vm {
    let image = ferry_guest::build_image(cfg).unwrap();
    let mut vm = Vm::new(
        VmConfig {
            memory: MEM,
            vcpus: 1,
        },
        Console::new(None, false, HeartbeatLog::default()),
    )
    .unwrap();
    vm.boot_multiboot(&image).unwrap();
    vm.resume().unwrap();
    wait_for(
        "the guest to start its workload",
        Duration::from_secs(30),
        || mailbox(vm.ram()).is_some_and(|m| m.iterations > 100 && m.heartbeats > 5),
    );
    vm
}

fn migrate(strategy: Strategy, pattern: Pattern, ws: u64) {
    let cfg = GuestConfig {
        memory: MEM,
        working_set: ws,
        pattern,
        entropy: Entropy::Random,
        write_size: WriteSize::Page,
        rate: Rate::Unlimited,
        ..GuestConfig::default()
    };
    let mut src = boot(&cfg);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let rx = std::thread::spawn(move || {
        let mut accept = || l.accept().map(|(s, _)| Stream::Tcp(s));
        receive(
            &mut accept,
            &mut KvmSinkFactory::default(),
            &ReceiveOptions::default(),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    // Two channels where post-copy may happen (requested pages get one of their own), as the CLI does.
    let channels = if matches!(
        strategy,
        Strategy::Postcopy | Strategy::Hybrid | Strategy::Auto
    ) {
        2
    } else {
        1
    };
    let opts = SourceOptions {
        strategy,
        channels,
        ..SourceOptions::default()
    };
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let report = migrate_out(&mut src, &connect, &opts, &mut |_| {}).unwrap();
    let incoming = rx.join().unwrap().unwrap();
    let at_pause = mailbox(src.ram()).unwrap();
    assert!(!src.is_running());
    assert_eq!(
        report.digest_match,
        Some(true),
        "RAM at switch-over differs between the hosts"
    );
    let g = report
        .guest_observed
        .expect("the guest's heartbeat was seen on the destination");
    assert!(
        g.sequence_continues,
        "heartbeat sequence broken across the migration"
    );
    assert!(g.gap_ns > 0);

    // The guest goes on from exactly where it stopped, and its own full check finds nothing wrong.
    let dst = incoming.sink.vm;
    wait_for("the guest to continue", Duration::from_secs(10), || {
        mailbox(dst.ram()).is_some_and(|m| m.iterations > at_pause.iterations + 1000)
    });
    dst.ram()
        .write_u64(MAILBOX_ADDR + OFF_VERIFY_REQUEST, 7)
        .unwrap();
    wait_for("the verification sweep", Duration::from_secs(30), || {
        mailbox(dst.ram()).is_some_and(|m| m.verify_done == 7)
    });
    let m = mailbox(dst.ram()).unwrap();
    assert_eq!(m.verify_pages, ws / 4096);
    assert_eq!(m.verify_errors, 0, "pages wrong after migration");
    assert_eq!(m.errors, 0, "the workload saw wrong pages");
    eprintln!(
        "{strategy} {pattern:?} ws={}M: total {:.0} ms, engine downtime {:.2} ms, guest gap {:.2} ms, {} rounds, {} bytes",
        ws >> 20,
        report.total_ms,
        report.downtime_ms,
        g.gap_ns as f64 / 1e6,
        report.rounds.len(),
        report.bytes_sent
    );
}

#[test]
fn stop_and_copy_moves_a_running_guest_intact() {
    if require_kvm() {
        migrate(Strategy::StopAndCopy, Pattern::Random, 16 << 20);
    }
}

#[test]
fn precopy_moves_a_running_guest_intact() {
    if require_kvm() {
        migrate(Strategy::Precopy, Pattern::HotCold, 32 << 20);
    }
}

#[test]
fn auto_moves_a_guest_writing_its_whole_ram() {
    if require_kvm() {
        migrate(Strategy::Auto, Pattern::Random, 96 << 20);
    }
}

#[test]
fn postcopy_moves_a_running_guest_intact() {
    if require_kvm() {
        migrate(Strategy::Postcopy, Pattern::Random, 64 << 20);
    }
}

#[test]
fn hybrid_moves_a_running_guest_intact() {
    if require_kvm() {
        migrate(Strategy::Hybrid, Pattern::HotCold, 96 << 20);
    }
}

/// Every strategy, working sets from 1% to (nearly) 100% of RAM, random and hot/cold writes.
#[test]
fn every_strategy_across_working_sets_and_patterns() {
    if !require_kvm() {
        return;
    }
    // 1% of 128 MiB rounded up to 2 MiB; and all RAM above the first 4 MiB, which hold the guest's
    // page tables, image and version table (97%).
    let full = MEM - (4 << 20);
    for strategy in [
        Strategy::StopAndCopy,
        Strategy::Precopy,
        Strategy::Postcopy,
        Strategy::Hybrid,
        Strategy::Auto,
    ] {
        for ws in [2 << 20, full] {
            for pattern in [Pattern::Random, Pattern::HotCold] {
                migrate(strategy, pattern, ws);
            }
        }
    }
}

/// Same host: guest RAM is handed over as a file descriptor over a Unix socket, not copied.
#[test]
fn same_host_handover_moves_the_guest_without_copying_its_ram() {
    if !require_kvm() {
        return;
    }
    let cfg = GuestConfig {
        memory: MEM,
        working_set: 32 << 20,
        ..GuestConfig::default()
    };
    let mut src = boot(&cfg);
    let dir = std::env::temp_dir().join(format!("ferry-handover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("migrate.sock");
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let rx = std::thread::spawn(move || {
        let mut accept = || l.accept().map(|(s, _)| Stream::Unix(s));
        receive(
            &mut accept,
            &mut KvmSinkFactory::default(),
            &ReceiveOptions::default(),
        )
    });
    let connect = || std::os::unix::net::UnixStream::connect(&path).map(Stream::Unix);
    let opts = SourceOptions {
        strategy: Strategy::Precopy,
        ..SourceOptions::default()
    };
    let report = migrate_out(&mut src, &connect, &opts, &mut |_| {}).unwrap();
    let incoming = rx.join().unwrap().unwrap();
    assert_eq!(report.strategy_used, ferry_migrate::source::HANDOVER);
    assert!(
        report.bytes_sent < 1 << 20,
        "{} bytes: RAM must not be copied",
        report.bytes_sent
    );
    let at_pause = mailbox(src.ram()).unwrap();
    let dst = incoming.sink.vm;
    wait_for("the guest to continue", Duration::from_secs(10), || {
        mailbox(dst.ram()).is_some_and(|m| m.iterations > at_pause.iterations + 1000)
    });
    dst.ram()
        .write_u64(MAILBOX_ADDR + OFF_VERIFY_REQUEST, 9)
        .unwrap();
    wait_for("the verification sweep", Duration::from_secs(30), || {
        mailbox(dst.ram()).is_some_and(|m| m.verify_done == 9)
    });
    let m = mailbox(dst.ram()).unwrap();
    assert_eq!((m.verify_errors, m.errors), (0, 0));
    let g = report
        .guest_observed
        .expect("heartbeats seen on the destination");
    assert!(g.sequence_continues);
    eprintln!(
        "handover: engine downtime {:.2} ms, guest gap {:.2} ms, {} bytes",
        report.downtime_ms,
        g.gap_ns as f64 / 1e6,
        report.bytes_sent
    );
}
