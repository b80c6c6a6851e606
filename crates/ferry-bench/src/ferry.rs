//! One ferry migration: `ferry vm receive` and `ferry vm run` as separate processes (in the network
//! lab's namespaces when there is one), and the migration asked of the source over its control
//! socket with the typed client of `ferry-host`.

use std::time::{Duration, Instant};

use ferry_host::outcome::describe;
use ferry_host::supervise::{Auth, HostProcess, HostSpec, Role, SuperviseError};
use ferry_host::{ClientError, ControlClient, Endpoint, MigrateRequest};
use ferry_migrate::Report;

use crate::procs::cpu_ms;
use crate::scenario::FerrySettings;
use crate::tap::SerialTap;
use crate::{BenchError, GuestCheck, Outcome, RunCtx, RunResult, Side};

fn supervise(e: SuperviseError) -> BenchError {
    BenchError::Ferry(describe(&e))
}

/// The migration request `s` stands for.
fn request(s: &FerrySettings, to: &str) -> Result<MigrateRequest, BenchError> {
    let to: Endpoint = to.parse().map_err(BenchError::Setup)?;
    Ok(MigrateRequest {
        strategy: s.strategy.parse().map_err(BenchError::Setup)?,
        downtime_ms: s.downtime_ms,
        // 0: chosen from the link, as `ferry migrate` does.
        channels: s.channels.unwrap_or(0),
        compression: s
            .compression
            .parse()
            .map_err(|e| BenchError::Setup(format!("{e}")))?,
        max_rounds: s.max_rounds,
        ..MigrateRequest::new(to)
    })
}

/// Runs one migration of the scenario's guest with `s`.
pub fn run(ctx: &RunCtx, s: &FerrySettings) -> Result<RunResult, BenchError> {
    let src_tap = SerialTap::new(&ctx.dir.join("ferry-src.fifo"))?;
    let dst_tap = SerialTap::new(&ctx.dir.join("ferry-dst.fifo"))?;
    let listen: Endpoint = format!("{}:0", ctx.listen_host())
        .parse()
        .map_err(BenchError::Setup)?;
    let dst_spec = HostSpec {
        role: Role::Receive {
            listen,
            once: true,
            // QEMU's destination does not fault its RAM in ahead of the copy: neither does ferry's.
            prefault: false,
            ram_backing: s.ram_backing,
            allow: Vec::new(),
        },
        // QEMU migrates in plaintext: compare like for like.
        auth: Auth::Insecure,
        control: ctx.dir.join("ferry-dst.sock"),
        serial: Some(dst_tap.path().to_string_lossy().into_owned()),
    };
    let ready = Duration::from_secs(30);
    let mut dst = HostProcess::spawn(
        ctx.command(Side::Destination, ctx.ferry),
        &dst_spec,
        "ferry-destination",
        ctx.dir,
        ready,
    )
    .map_err(supervise)?;
    let listen = dst
        .listen()
        .map(ToString::to_string)
        .ok_or_else(|| BenchError::Ferry("the destination printed no address".into()))?;
    // Kept until the end of the run: on the network lab it holds the delay proxy.
    let route = ctx.route(&listen)?;

    let src_spec = HostSpec {
        role: Role::Run {
            kernel: ctx.image.to_path_buf(),
            memory: ctx.guest.memory,
            vcpus: 1,
            ram_backing: s.ram_backing,
        },
        auth: Auth::Insecure,
        control: ctx.dir.join("ferry-src.sock"),
        serial: Some(src_tap.path().to_string_lossy().into_owned()),
    };
    let mut src = HostProcess::spawn(
        ctx.command(Side::Source, ctx.ferry),
        &src_spec,
        "ferry-source",
        ctx.dir,
        ready,
    )
    .map_err(supervise)?;

    // Wait for the workload loop (after the fill, if any) and a heartbeat.
    let silent = ctx.guest.heartbeat == ferry_guest::Heartbeat::None;
    src.wait_guest("the guest to run", ctx.boot_timeout, |g| {
        g.state == 1 && (g.heartbeats > 0 || silent)
    })
    .map_err(supervise)?;
    let iterations = || -> Option<(Instant, u64)> {
        let g = src.client().status().ok()?.guest?;
        Some((Instant::now(), g.iterations))
    };
    let rate = crate::warm_rate(
        iterations,
        crate::warm_pages(ctx.guest),
        ctx.warmup,
        Duration::from_secs(30),
    );

    ctx.before_migration();
    let (src_cpu0, dst_cpu0, load0) = (cpu_ms(src.pid()), cpu_ms(dst.pid()), ctx.load_cpu_ms());
    let req = request(s, &route.addr)?;
    // ferry's pre-copy always ends (max rounds), but do not hang the suite on a bug.
    let deadline = ctx.timeout + Duration::from_secs(120);
    let client = src.client().clone().with_total_deadline(deadline);
    let t0 = Instant::now();
    let migrated = client.migrate(req, &mut |_| {});
    let t1 = Instant::now();
    let (dst_cpu1, load1) = (cpu_ms(dst.pid()), ctx.load_cpu_ms());

    let mut r = RunResult::new(Outcome::Completed);
    r.guest_writes_per_s = rate;
    match &migrated {
        Err(ClientError::TotalDeadline { .. }) => {
            r.outcome = Outcome::Failed(format!("ferry migrate did not return in {deadline:?}"))
        }
        Err(e) => r.outcome = Outcome::Failed(format!("ferry migrate failed: {}", describe(e))),
        Ok(rep) => {
            if rep.digest_match == Some(false) {
                r.outcome = Outcome::Failed("RAM digest differs".into());
            }
            r.engine_report = serde_json::to_value(rep).unwrap_or_default();
            r.strategy_used = Some(rep.strategy_used.clone());
            r.engine_dirty_pages_per_s = live_dirty_rate(rep);
            r.total_ms = Some(rep.total_ms);
            r.engine_downtime_ms = Some(rep.downtime_ms);
            r.wire_bytes = Some(rep.bytes_sent);
            let used = rep.strategy_used.as_str();
            r.notes
                .push(format!("used {used}, {} rounds", rep.rounds.len()));
            // Post-copy's rounds are not a bulk copy.
            if let Some(m) = round0_mbit(rep).filter(|_| used != "postcopy") {
                r.notes.push(format!("round 0 at {m:.0} Mbit/s"));
            }
            if rep.max_throttle > 0 {
                r.notes.push(format!("throttle {}%", rep.max_throttle));
            }
            if let Some(g) = rep.guest_observed {
                r.notes
                    .push(format!("ferry's own gap {:.1} ms", g.gap_ns as f64 / 1e6));
            }
        }
    }
    // The source exits after a migration: read its CPU time while it is a zombie.
    if src.wait_exited(Duration::from_secs(10)) {
        r.source_cpu_ms = cpu_ms(src.pid()).zip(src_cpu0).map(|(a, b)| a - b);
    }
    r.destination_cpu_ms = dst_cpu1.zip(dst_cpu0).map(|(a, b)| a - b);
    r.hogs_cpu_cores = load1
        .zip(load0)
        .map(|(a, b)| (a - b) / 1e3 / (t1 - t0).as_secs_f64().max(1e-9));

    let completed = matches!(r.outcome, Outcome::Completed);
    let end = dst_tap
        .wait_beat_after(ctx.guest.heartbeat, t1, Duration::from_secs(5))
        .unwrap_or_else(Instant::now);
    // The guest checks every page it wrote, where it runs now.
    let on: &ControlClient = if completed {
        dst.client()
    } else {
        src.client()
    };
    match on.verify() {
        Ok(v) => {
            r.guest_check = Some(GuestCheck {
                pages: v.pages,
                written: None,
                errors: v.errors,
                loop_errors: v.loop_errors,
                on_destination: completed,
            });
        }
        Err(e) => r
            .notes
            .push(format!("guest check failed: {}", describe(&e))),
    }
    dst.stop(Duration::from_secs(5));
    src.kill();
    let (sb, db) = (src_tap.finish(), dst_tap.finish());
    crate::analyse(&mut r, ctx, (&sb, &db), (t0, t1, end));
    Ok(r)
}

/// The guest's dirty rate over the live rounds after the bulk copy (pages dirtied / their time),
/// pages/s; the bulk round's too when it is the only one.
fn live_dirty_rate(report: &Report) -> Option<f64> {
    let rounds = &report.rounds;
    let live = if rounds.len() > 1 {
        &rounds[1..]
    } else {
        &rounds[..]
    };
    let (dirtied, secs) = live.iter().fold((0.0, 0.0), |(d, s), r| {
        (d + r.dirtied as f64, s + r.seconds)
    });
    (secs > 0.0).then(|| dirtied / secs)
}

/// Throughput of the first pre-copy round (the bulk copy), Mbit/s.
fn round0_mbit(report: &Report) -> Option<f64> {
    let r0 = report.rounds.first()?;
    (r0.seconds > 0.0).then(|| r0.bytes as f64 * 8.0 / r0.seconds / 1e6)
}

#[cfg(test)]
mod tests {
    use ferry_migrate::report::RoundStats;
    use ferry_migrate::Report;

    fn report(rounds: &[(u64, u64, f64)]) -> Report {
        Report {
            rounds: rounds
                .iter()
                .enumerate()
                .map(|(i, &(bytes, dirtied, seconds))| RoundStats {
                    round: i as u32,
                    bytes,
                    dirtied,
                    seconds,
                    ..RoundStats::default()
                })
                .collect(),
            ..Report::default()
        }
    }

    #[test]
    fn round0_throughput() {
        let rep = report(&[(125_000_000, 0, 1.0), (1, 0, 0.1)]);
        assert_eq!(super::round0_mbit(&rep), Some(1000.0));
        assert_eq!(super::round0_mbit(&Report::default()), None);
        assert_eq!(super::round0_mbit(&report(&[(5, 0, 0.0)])), None);
    }

    #[test]
    fn dirty_rate_over_the_live_rounds() {
        let rep = report(&[(0, 1000, 1.0), (0, 300, 0.1), (0, 100, 0.1)]);
        assert_eq!(super::live_dirty_rate(&rep), Some(2000.0));
        let one = report(&[(0, 50, 0.5)]);
        assert_eq!(super::live_dirty_rate(&one), Some(100.0));
        assert_eq!(super::live_dirty_rate(&Report::default()), None);
    }
}
