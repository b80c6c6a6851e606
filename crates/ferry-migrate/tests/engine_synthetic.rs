//! The engine against the synthetic VM over real loopback TCP: strategies, integrity, failures.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ferry_migrate::channel::Stream;
use ferry_migrate::recovery::{recover_in, recover_out};
use ferry_migrate::synthetic::{DirtyScript, SyntheticFactory, SyntheticVm};
use ferry_migrate::{
    migrate_out, receive, GuestMemory, MigrateError, MigrationSource, ReceiveOptions,
    SourceOptions, Strategy,
};

const PAGES: u64 = 4096; // 16 MiB

fn script(rate: u64, ws: u64) -> DirtyScript {
    DirtyScript {
        pages_per_sec: rate,
        working_set: ws,
        random: true,
    }
}

fn listener() -> (TcpListener, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

fn spawn_receiver(
    l: TcpListener,
    s: DirtyScript,
) -> thread::JoinHandle<Result<ferry_migrate::Incoming<SyntheticVm>, MigrateError>> {
    thread::spawn(move || {
        let mut accept = || l.accept().map(|(s, _)| Stream::Tcp(s));
        receive(
            &mut accept,
            &mut SyntheticFactory { script: s },
            &ReceiveOptions {
                timeout: Duration::from_secs(5),
            },
        )
    })
}

fn opts(strategy: Strategy, channels: u16) -> SourceOptions {
    SourceOptions {
        strategy,
        channels,
        timeout: Duration::from_secs(5),
        ..SourceOptions::default()
    }
}

fn same_memory(a: &dyn GuestMemory, b: &dyn GuestMemory) -> bool {
    let (mut x, mut y) = (vec![0u8; 4096], vec![0u8; 4096]);
    (0..a.pages()).all(|p| {
        a.read_page(p, &mut x);
        b.read_page(p, &mut y);
        x == y
    })
}

fn run(strategy: Strategy, channels: u16, s: DirtyScript) -> ferry_migrate::Report {
    run_vm(strategy, channels, s, SyntheticVm::new(PAGES, s))
}

fn run_vm(
    strategy: Strategy,
    channels: u16,
    s: DirtyScript,
    mut src: SyntheticVm,
) -> ferry_migrate::Report {
    let (l, addr) = listener();
    let rx = spawn_receiver(l, s);
    src.fill();
    src.resume().unwrap();
    thread::sleep(Duration::from_millis(30));
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let report = migrate_out(&mut src, &connect, &opts(strategy, channels), &mut |_| {}).unwrap();
    let incoming = rx.join().unwrap().unwrap();
    assert!(
        !src.is_running(),
        "the source must stay paused after a successful migration"
    );
    assert!(incoming.sink.is_running(), "the destination runs the VM");
    assert_eq!(
        report.digest_match,
        Some(true),
        "{strategy}: digests differ"
    );
    assert!(report.pages_sent >= PAGES);
    // The source is frozen at switch-over; the destination's RAM at switch-over equalled it. The
    // destination has run on since, so compare against a paused copy.
    let mut dst = incoming.sink;
    MigrationSource::pause(&mut dst).unwrap();
    if s.pages_per_sec == 0 {
        assert!(same_memory(&*src.memory(), &*MigrationSource::memory(&dst)));
    }
    assert!(
        dst.iterations() >= src.iterations(),
        "the guest continues from where it stopped"
    );
    report
}

#[test]
fn stop_and_copy_moves_an_idle_vm_exactly() {
    run(Strategy::StopAndCopy, 1, script(0, PAGES));
}

#[test]
fn precopy_moves_a_busy_vm_with_matching_digest() {
    run(Strategy::Precopy, 1, script(50_000, PAGES / 4));
}

#[test]
fn channel_count_is_chosen_after_the_handshake_when_not_given() {
    // Loopback: one stream covers the link, and post-copy keeps a channel for requested pages.
    let r = run(Strategy::Postcopy, 0, script(50_000, PAGES / 4));
    let cores = thread::available_parallelism().map_or(1, |n| n.get()) as u16;
    assert!(
        r.channels >= 2 && r.channels <= cores.max(2),
        "{}",
        r.channels
    );
    let r = run(Strategy::StopAndCopy, 0, script(0, PAGES));
    assert!(
        r.channels >= 1 && r.channels <= cores.max(1),
        "{}",
        r.channels
    );
}

#[test]
fn precopy_carries_pages_on_as_many_channels_as_the_link_needs() {
    // Channels chosen by ferry: it opens what the cores allow, and on loopback one stream covers
    // the link, so one channel carries the pages and the others only end each round.
    let (l, addr) = listener();
    let rx = spawn_receiver(l, script(50_000, PAGES / 4));
    let mut src = SyntheticVm::new(PAGES, script(50_000, PAGES / 4));
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let mut adapted = vec![];
    let r = migrate_out(&mut src, &connect, &opts(Strategy::Precopy, 0), &mut |e| {
        if let ferry_migrate::Event::Adapt { what } = e {
            adapted.push(what);
        }
    })
    .unwrap();
    rx.join().unwrap().unwrap();
    assert_eq!(r.digest_match, Some(true));
    let cores = thread::available_parallelism().map_or(1, |n| n.get()) as u16;
    assert_eq!(r.channels, cores.clamp(1, 8), "opened");
    if r.channels > 1 {
        let want = format!("1 of {} channels carry pages", r.channels);
        assert!(adapted.iter().any(|a| a.starts_with(&want)), "{adapted:?}");
    }
}

#[test]
fn precopy_over_three_channels() {
    run(Strategy::Precopy, 3, script(50_000, PAGES));
}

/// Pages rewritten every round are held back for the final round, and the guest still arrives intact.
#[test]
fn precopy_holds_back_pages_rewritten_every_round() {
    // 100 pages rewritten at random a million times a second: every page, every round.
    let s = script(1_000_000, 100);
    let (l, addr) = listener();
    let rx = spawn_receiver(l, s);
    let mut src = SyntheticVm::new(PAGES, s);
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let mut o = opts(Strategy::Precopy, 1);
    // No pause is short enough: it runs its six rounds, then switches over.
    o.max_rounds = 6;
    o.downtime_target = Duration::from_nanos(1);
    // Rounds of tens of ms (uncompressed pages through a rate limit), so every hot page is
    // rewritten in each even on a loaded machine.
    o.max_bandwidth = Arc::new(ferry_migrate::rate::RateLimit::new(8_000_000));
    o.encoder.compression = ferry_wire::codec::Compression::Off;
    let report = migrate_out(&mut src, &connect, &o, &mut |_| {}).unwrap();
    rx.join().unwrap().unwrap();
    assert_eq!(report.digest_match, Some(true));
    assert!(report.held_back_pages > 0, "{report:?}");
}

/// A guest walking its memory in order (issue 12 item 6): auto finds its pages by probes, leaves
/// them writable through the live copy and post-copies them; the guest arrives intact.
#[test]
fn auto_leaves_a_walking_guests_pages_writable_and_post_copies_them() {
    // 100k pages/s over 16 MiB: a probe read every 10 ms sees a quarter of the walk.
    let s = DirtyScript {
        pages_per_sec: 100_000,
        working_set: PAGES,
        random: false,
    };
    let r = run_vm(
        Strategy::Auto,
        2,
        s,
        SyntheticVm::new(PAGES, s).with_manual_clear(),
    );
    assert!(r.hot_set_pages > PAGES / 2, "{r:?}");
    assert_eq!(r.strategy_used, "hybrid", "{r:?}");
    assert!(r.postcopy_pages >= r.hot_set_pages / 2, "{r:?}");
}

/// A random writer is no walk: every page is tracked as before, even where pages could be left
/// writable.
#[test]
fn auto_tracks_every_page_of_a_random_writer() {
    let s = script(100_000, PAGES);
    let r = run_vm(
        Strategy::Auto,
        2,
        s,
        SyntheticVm::new(PAGES, s).with_manual_clear(),
    );
    assert_eq!(r.hot_set_pages, 0, "{r:?}");
}

/// The live copy says what CPU it got (issue 12 item 5: on a busy host, its fair share).
#[test]
fn the_live_copy_reports_its_cpu_share() {
    let r = run(Strategy::Precopy, 2, script(50_000, PAGES / 4));
    assert!(r.live_copy_ms > 0.0 && r.live_copy_cpu_ms > 0.0, "{r:?}");
    // Two copy threads at most, and the CPU time is theirs over the rounds' wall time.
    assert!(
        r.live_copy_cpu_cores > 0.0 && r.live_copy_cpu_cores <= 2.2,
        "{r:?}"
    );
    assert!(
        (r.live_copy_cpu_cores - r.live_copy_cpu_ms / r.live_copy_ms).abs() < 1e-9,
        "{r:?}"
    );
}

#[test]
fn auto_converges_a_guest_that_dirties_faster_than_the_link() {
    run(Strategy::Auto, 2, script(2_000_000, PAGES));
}

#[test]
fn destination_not_listening_keeps_the_source_running() {
    let (l, addr) = listener();
    drop(l);
    let mut src = SyntheticVm::new(PAGES, script(1000, 100));
    src.resume().unwrap();
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let err =
        migrate_out(&mut src, &connect, &opts(Strategy::Precopy, 1), &mut |_| {}).unwrap_err();
    assert!(matches!(err, MigrateError::Io { .. }), "{err}");
    assert!(src.is_running());
}

/// A fake destination that handshakes, reads a little and hangs up.
#[test]
fn peer_vanishing_mid_stream_resumes_the_source() {
    let (l, addr) = listener();
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = vec![0u8; 1 << 20];
        let _ = s.read(&mut b);
        // Pretend to be a destination: answer the hello properly, take some pages, then vanish.
        let ack = ferry_wire::message::HelloAck {
            version: 1,
            features: 0,
            refusal: None,
        }
        .encode();
        let h = ferry_wire::encode_header(ferry_wire::FrameType::HelloAck, 0, 0, &ack, 0).unwrap();
        s.write_all(&h).unwrap();
        s.write_all(&ack).unwrap();
        let _ = s.read(&mut b);
    });
    let mut src = SyntheticVm::new(PAGES, script(1000, 100));
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let err = migrate_out(
        &mut src,
        &connect,
        &opts(Strategy::StopAndCopy, 1),
        &mut |_| {},
    )
    .unwrap_err();
    t.join().unwrap();
    assert!(
        matches!(err, MigrateError::PeerClosed(_) | MigrateError::Io { .. }),
        "{err}"
    );
    assert!(
        src.is_running(),
        "stop-and-copy paused the VM; the failure must resume it"
    );
}

/// A man in the middle flips one byte of the stream: the destination refuses, the source resumes.
#[test]
fn corrupt_frame_is_refused_and_the_source_resumes() {
    let (l, addr) = listener();
    let (proxy_l, proxy_addr) = listener();
    let rx = spawn_receiver(l, script(0, 1));
    let proxy = thread::spawn(move || {
        let (mut from_src, _) = proxy_l.accept().unwrap();
        let mut to_dst = TcpStream::connect(addr).unwrap();
        let mut back = to_dst.try_clone().unwrap();
        let mut src_w = from_src.try_clone().unwrap();
        thread::spawn(move || {
            let _ = std::io::copy(&mut back, &mut src_w);
        });
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        loop {
            let n = match from_src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Well past the handshake, inside the first page batches (compression is off below, so
            // the stream is certain to reach this offset).
            if total < 20_000 && total + n >= 20_000 {
                buf[20_000 - total] ^= 0x40;
            }
            total += n;
            if to_dst.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut src = SyntheticVm::new(PAGES, script(0, 1));
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(proxy_addr).map(Stream::Tcp);
    let err = migrate_out(
        &mut src,
        &connect,
        &opts(Strategy::StopAndCopy, 1),
        &mut |_| {},
    )
    .unwrap_err();
    let dst_err = rx
        .join()
        .unwrap()
        .err()
        .expect("destination must refuse a corrupt stream");
    assert!(
        dst_err.to_string().contains("protocol") || matches!(dst_err, MigrateError::Wire(_)),
        "{dst_err}"
    );
    assert!(src.is_running(), "source resumes after {err}");
    let _ = proxy.join();
}

/// Sends `hello` as a raw frame and reads the destination's answer.
fn hand_shake(
    s: &mut TcpStream,
    hello: ferry_wire::message::Hello,
) -> ferry_wire::message::HelloAck {
    let hello = hello.encode();
    s.write_all(&ferry_wire::encode_header(ferry_wire::FrameType::Hello, 0, 0, &hello, 0).unwrap())
        .unwrap();
    s.write_all(&hello).unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let hdr = ferry_wire::FrameHeader::parse(&h).unwrap();
    let mut p = vec![0u8; hdr.len as usize];
    s.read_exact(&mut p).unwrap();
    ferry_wire::message::HelloAck::decode(&p).unwrap()
}

#[test]
fn a_channel_count_out_of_range_is_refused() {
    let (l, addr) = listener();
    let rx = spawn_receiver(l, script(0, 1));
    let mut s = TcpStream::connect(addr).unwrap();
    let id = [3; 16];
    let ack = hand_shake(
        &mut s,
        ferry_wire::message::Hello {
            min_version: ferry_wire::message::MIN_PROTOCOL_VERSION,
            max_version: ferry_wire::message::PROTOCOL_VERSION,
            features: 0,
            migration_id: id,
            channel: 0,
            channels: 0,
        },
    );
    assert!(ack.refusal.is_none());
    // 65 channels: more than any migration may open.
    let key = ferry_wire::message::channel_key(&id, 0);
    let count = 65u16.to_le_bytes();
    s.write_all(
        &ferry_wire::encode_header(ferry_wire::FrameType::Channels, 0, 1, &count, key).unwrap(),
    )
    .unwrap();
    s.write_all(&count).unwrap();
    let err = rx.join().unwrap().err().unwrap();
    assert!(format!("{err:?}").contains("channel count"), "{err:?}");
}

#[test]
fn version_mismatch_is_refused_with_a_clear_error() {
    let (l, addr) = listener();
    let rx = spawn_receiver(l, script(0, 1));
    let mut s = TcpStream::connect(addr).unwrap();
    let ack = hand_shake(
        &mut s,
        ferry_wire::message::Hello {
            min_version: 7,
            max_version: 9,
            features: 0,
            migration_id: [1; 16],
            channel: 0,
            channels: 1,
        },
    );
    assert!(ack.refusal.unwrap().contains("version mismatch"));
    let err = rx.join().unwrap().err().unwrap();
    assert!(matches!(err, MigrateError::Refused(_)), "{err}");
}

#[test]
fn cancel_before_switch_over_leaves_the_source_running() {
    let (l, addr) = listener();
    let _rx = spawn_receiver(l, script(0, 1));
    let mut src = SyntheticVm::new(PAGES, script(2_000_000, PAGES));
    src.resume().unwrap();
    let o = opts(Strategy::Precopy, 1);
    let cancel = o.cancel.clone();
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let mut events = |e: ferry_migrate::Event| {
        if matches!(e, ferry_migrate::Event::Round(_)) {
            cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    };
    let err = migrate_out(&mut src, &connect, &o, &mut events).unwrap_err();
    assert!(matches!(err, MigrateError::Cancelled), "{err}");
    assert!(src.is_running());
    let _ = Arc::new(());
}

#[test]
fn postcopy_moves_a_busy_vm_with_matching_digest() {
    run(Strategy::Postcopy, 1, script(200_000, PAGES));
}

#[test]
fn hybrid_switches_to_postcopy_after_its_rounds() {
    run(Strategy::Hybrid, 2, script(2_000_000, PAGES));
}

#[test]
fn auto_falls_back_to_postcopy_when_precopy_stalls() {
    let (l, addr) = listener();
    let rx = spawn_receiver(l, script(2_000_000, PAGES));
    let mut src = SyntheticVm::new(PAGES, script(2_000_000, PAGES));
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let report = migrate_out(&mut src, &connect, &opts(Strategy::Auto, 1), &mut |_| {}).unwrap();
    let incoming = rx.join().unwrap().unwrap();
    assert_eq!(report.digest_match, Some(true));
    assert!(incoming.postcopy_incomplete.is_none());
    assert!(
        ["precopy", "hybrid"].contains(&report.strategy_used.as_str()),
        "{}",
        report.strategy_used
    );
}

/// Over a long link, post-copy commits without Ready/Go (one round trip less of pause), and the
/// guest arrives intact; over loopback it keeps the exchange.
#[test]
fn postcopy_over_a_long_link_commits_in_one_round_trip() {
    let (l, addr) = listener();
    let rx = spawn_receiver(l, script(100_000, PAGES));
    let proxy = ferry_netlab::DelayProxy::new("127.0.0.1:0".parse().unwrap(), addr)
        .delay(Duration::from_millis(3))
        .start()
        .unwrap();
    let via = proxy.local_addr();
    let mut src = SyntheticVm::new(PAGES, script(100_000, PAGES));
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(via).map(Stream::Tcp);
    let report = migrate_out(
        &mut src,
        &connect,
        &opts(Strategy::Postcopy, 2),
        &mut |_| {},
    )
    .unwrap();
    let incoming = rx.join().unwrap().unwrap();
    assert!(report.rtt_ms >= 6.0, "rtt {} ms", report.rtt_ms);
    assert!(report.fast_commit, "a 6 ms round trip is a long link");
    assert_eq!(report.digest_match, Some(true));
    assert!(incoming.sink.is_running() && !src.is_running());
    proxy.stop();

    let (l, addr) = listener();
    let rx = spawn_receiver(l, script(100_000, PAGES));
    let mut src = SyntheticVm::new(PAGES, script(100_000, PAGES));
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let report = migrate_out(
        &mut src,
        &connect,
        &opts(Strategy::Postcopy, 2),
        &mut |_| {},
    )
    .unwrap();
    rx.join().unwrap().unwrap();
    assert!(!report.fast_commit, "loopback keeps Ready/Go");
    assert_eq!(report.digest_match, Some(true));
}

/// The source dies half way through post-copy: the destination keeps the VM, paused, and says so;
/// a recovery connection with the same migration id then finishes the migration.
#[test]
fn postcopy_link_loss_keeps_the_vm_paused_on_the_destination() {
    let (l, addr) = listener();
    let (proxy_l, proxy_addr) = listener();
    let rx = spawn_receiver(l, script(100_000, PAGES));
    // A proxy that cuts the stream after ~8 MB: past the switch-over (low memory, 4 MiB, goes
    // before it), before all 16 MiB are pushed.
    let proxy = thread::spawn(move || {
        let (mut from_src, _) = proxy_l.accept().unwrap();
        let mut to_dst = TcpStream::connect(addr).unwrap();
        let (mut back, mut src_w) = (to_dst.try_clone().unwrap(), from_src.try_clone().unwrap());
        thread::spawn(move || {
            let _ = std::io::copy(&mut back, &mut src_w);
        });
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        while total < 8_000_000 {
            match from_src.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    if to_dst.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_dst.shutdown(std::net::Shutdown::Both);
        let _ = from_src.shutdown(std::net::Shutdown::Both);
    });
    let mut src = SyntheticVm::new(PAGES, script(100_000, PAGES));
    src.fill();
    src.resume().unwrap();
    let connect = || TcpStream::connect(proxy_addr).map(Stream::Tcp);
    let mut o = opts(Strategy::Postcopy, 1);
    o.encoder.compression = ferry_wire::codec::Compression::Off;
    o.migration_id = Some([7; 16]);
    let err = migrate_out(&mut src, &connect, &o, &mut |_| {}).unwrap_err();
    assert!(matches!(err, MigrateError::PostcopyInterrupted(_)), "{err}");
    assert!(
        !src.is_running(),
        "after Go the source must never resume on its own"
    );
    let mut incoming = rx.join().unwrap().expect("the destination keeps the VM");
    let why = incoming
        .postcopy_incomplete
        .clone()
        .expect("the destination says pages are missing");
    assert!(why.contains("paused"), "{why}");
    assert!(!incoming.sink.is_running(), "the destination pauses the VM");
    let _ = proxy.join();

    // Recovery: a connection with another migration's id is refused and changes nothing...
    let rec = incoming.recovery.take().expect("recoverable");
    let missing = rec.missing_pages();
    assert!(missing > 0);
    let (l, addr) = listener();
    let dst = thread::spawn(move || {
        let mut accept = || l.accept().map(|(s, _)| Stream::Tcp(s));
        let ro = ReceiveOptions {
            timeout: Duration::from_secs(5),
        };
        let mut sink = incoming.sink;
        let first = recover_in(&mut accept, &mut sink, &rec, &ro);
        assert!(matches!(first, Err(MigrateError::Refused(_))), "{first:?}");
        assert_eq!(rec.missing_pages(), missing);
        // ...then the right one brings every missing page over and the guest runs again.
        let done = recover_in(&mut accept, &mut sink, &rec, &ro).unwrap();
        (sink, done)
    });
    let connect = || TcpStream::connect(addr).map(Stream::Tcp);
    let wrong = SourceOptions {
        migration_id: Some([8; 16]),
        ..opts(Strategy::Postcopy, 1)
    };
    assert!(matches!(
        recover_out(&mut src, &connect, &wrong),
        Err(MigrateError::Refused(_))
    ));
    let report = recover_out(&mut src, &connect, &o).unwrap();
    let (sink, done) = dst.join().unwrap();
    assert_eq!(done.pages, missing);
    assert_eq!(report.pages_sent, missing);
    assert_eq!(report.digest_match, Some(true));
    assert_eq!(done.digest_match, Some(true));
    assert!(sink.is_running(), "the guest runs on the destination again");
    assert!(!src.is_running(), "and only there");
}

/// The bandwidth limit holds over the copy, and a change while it runs takes effect.
#[test]
fn bandwidth_limit_is_honoured_and_changeable() {
    let run_limited = |limit: u64, change_to: Option<u64>| {
        let (l, addr) = listener();
        let rx = spawn_receiver(l, script(0, 1));
        let mut src = SyntheticVm::new(2048, script(0, 1)); // 8 MiB of distinct pages
        src.fill();
        src.resume().unwrap();
        let mut o = opts(Strategy::StopAndCopy, 2);
        o.encoder.compression = ferry_wire::codec::Compression::Off;
        o.max_bandwidth.set(limit);
        let knob = o.max_bandwidth.clone();
        let changer = change_to.map(|to| {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(300));
                knob.set(to);
            })
        });
        let connect = || TcpStream::connect(addr).map(Stream::Tcp);
        let r = migrate_out(&mut src, &connect, &o, &mut |_| {}).unwrap();
        rx.join().unwrap().unwrap();
        if let Some(c) = changer {
            c.join().unwrap();
        }
        // The copy itself: the one round of stop-and-copy, on both channels together.
        let copy = &r.rounds[0];
        (copy.bytes as f64, copy.seconds)
    };
    // 8 MB/s over about 8.4 MB: about a second.
    let (bytes, secs) = run_limited(8_000_000, None);
    let rate = bytes / secs;
    assert!(
        rate <= 8_000_000.0 * 1.05,
        "{rate} B/s exceeds the limit by more than 5%"
    );
    assert!(
        rate >= 8_000_000.0 * 0.9,
        "{rate} B/s: the limit should not slow the copy below it"
    );
    // Raised to unlimited after 0.3 s: the copy ends soon after.
    let (_, secs_raised) = run_limited(8_000_000, Some(0));
    assert!(
        secs_raised < secs * 0.6,
        "raising the limit mid-copy took effect ({secs_raised} s vs {secs} s)"
    );
}
