//! One ferry migration: `ferry vm receive` and `ferry vm run` as separate processes, `ferry migrate
//! --json` between them.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::procs::Proc;
use crate::scenario::FerrySettings;
use crate::tap::SerialTap;
use crate::{BenchError, GuestCheck, Outcome, RunCtx, RunResult, Side};

/// Sends one request line to a ferry control socket; the final reply line.
fn control(socket: &Path, req: &str) -> Result<Value, BenchError> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| BenchError::io(format!("cannot reach {}", socket.display()), e))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| BenchError::io("socket timeout", e))?;
    s.write_all(format!("{req}\n").as_bytes())
        .map_err(|e| BenchError::io("control socket write", e))?;
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| BenchError::io("control socket read", e))?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| BenchError::Ferry(format!("bad control reply {line:?}: {e}")))?;
        if v.get("event").is_none() {
            return Ok(v);
        }
    }
    Err(BenchError::Ferry("control socket closed".into()))
}

/// Runs one migration of the scenario's guest with `s`.
pub fn run(ctx: &RunCtx, s: &FerrySettings) -> Result<RunResult, BenchError> {
    let src_tap = SerialTap::new(&ctx.dir.join("ferry-src.fifo"))?;
    let dst_tap = SerialTap::new(&ctx.dir.join("ferry-dst.fifo"))?;
    let (src_sock, dst_sock) = (
        ctx.dir.join("ferry-src.sock"),
        ctx.dir.join("ferry-dst.sock"),
    );

    let mut cmd = ctx.command(Side::Destination, ctx.ferry);
    // QEMU migrates in plaintext: compare like for like.
    cmd.args(["vm", "receive", "--listen"])
        .arg(format!("{}:0", ctx.listen_host()))
        // QEMU's destination does not fault its RAM in ahead of the copy: neither does ferry's.
        .args(["--once", "--insecure", "--no-prefault"])
        .arg("--control")
        .arg(&dst_sock)
        .arg("--serial")
        .arg(dst_tap.path());
    let mut dst = Proc::spawn("ferry-destination", ctx.dir, cmd, Stdio::piped())?;
    let mut first = String::new();
    let out = dst.child.stdout.take();
    if let Some(out) = out {
        let _ = BufReader::new(out).read_line(&mut first);
    }
    let listen = match first.trim().strip_prefix("listening on ") {
        Some(a) => a.to_string(),
        None => {
            return Err(BenchError::Ferry(format!(
                "destination did not start: {}",
                dst.log_tail()
            )))
        }
    };
    // Kept until the end of the run: on the network lab it holds the delay proxy.
    let route = ctx.route(&listen)?;

    let mut cmd = ctx.command(Side::Source, ctx.ferry);
    cmd.args(["vm", "run", "--insecure", "--vcpus", "1", "--kernel"])
        .arg(ctx.image)
        .args(["--memory", &ctx.guest.memory.to_string(), "--control"])
        .arg(&src_sock)
        .arg("--serial")
        .arg(src_tap.path());
    let mut src = Proc::spawn("ferry-source", ctx.dir, cmd, Stdio::null())?;

    // Wait for the workload loop (after the fill, if any) and a heartbeat.
    let t = Instant::now();
    loop {
        src.check_alive()?;
        if let Ok(v) = control(&src_sock, r#"{"op":"status"}"#) {
            let g = &v["guest"];
            let beats = g["heartbeats"].as_u64().unwrap_or(0) > 0
                || ctx.guest.heartbeat == ferry_guest::Heartbeat::None;
            if g["state"].as_u64() == Some(1) && beats {
                break;
            }
        }
        if t.elapsed() > ctx.boot_timeout {
            return Err(BenchError::Ferry(format!(
                "guest not running after {:?}: {}",
                ctx.boot_timeout,
                src.log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let iterations = || -> Option<(Instant, u64)> {
        let v = control(&src_sock, r#"{"op":"status"}"#).ok()?;
        Some((Instant::now(), v["guest"]["iterations"].as_u64()?))
    };
    let rate = crate::warm_rate(
        iterations,
        crate::warm_pages(ctx.guest),
        ctx.warmup,
        Duration::from_secs(30),
    );

    ctx.before_migration();
    let (src_cpu0, dst_cpu0, load0) = (src.cpu_ms(), dst.cpu_ms(), ctx.load_cpu_ms());
    let t0 = Instant::now();
    let mut cmd = ctx.command(Side::Source, ctx.ferry);
    cmd.args(["migrate", "--json", "--vm"])
        .arg(&src_sock)
        .args(["--to", &route.addr, "--strategy", &s.strategy])
        .args(["--downtime", &s.downtime_ms.to_string()]);
    if let Some(n) = s.channels {
        cmd.args(["--channels", &n.to_string()]);
    }
    cmd.args(["--compression", &s.compression])
        .args(["--max-rounds", &s.max_rounds.to_string()]);
    let mut client = Proc::spawn("ferry-migrate", ctx.dir, cmd, Stdio::piped())?;
    let mut stdout = client.child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = stdout.as_mut() {
            let _ = o.read_to_string(&mut s);
        }
        s
    });
    // ferry's pre-copy always ends (max rounds), but do not hang the suite on a bug.
    let deadline = ctx.timeout + Duration::from_secs(120);
    let status = loop {
        if let Ok(Some(st)) = client.child.try_wait() {
            break Some(st);
        }
        if t0.elapsed() > deadline {
            client.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let t1 = Instant::now();
    let (dst_cpu1, load1) = (dst.cpu_ms(), ctx.load_cpu_ms());
    let text = reader.join().unwrap_or_default();

    let mut r = RunResult::new(Outcome::Completed);
    r.guest_writes_per_s = rate;
    let report: Option<Value> = serde_json::from_str(&text).ok();
    match (&status, &report) {
        (None, _) => {
            r.outcome = Outcome::Failed(format!("ferry migrate did not return in {deadline:?}"))
        }
        (Some(_), None) => {
            r.outcome = Outcome::Failed(format!("ferry migrate failed: {}", client.log_tail()))
        }
        (Some(st), Some(rep)) => {
            if rep["digest_match"].as_bool() == Some(false) || !st.success() {
                r.outcome = Outcome::Failed(format!("RAM digest differs ({st})"));
            }
            r.engine_report = rep.clone();
            r.strategy_used = rep["strategy_used"].as_str().map(str::to_string);
            r.engine_dirty_pages_per_s = live_dirty_rate(rep);
            r.total_ms = rep["total_ms"].as_f64();
            r.engine_downtime_ms = rep["downtime_ms"].as_f64();
            r.wire_bytes = rep["bytes_sent"].as_u64();
            let rounds = rep["rounds"].as_array().map_or(0, |a| a.len());
            let used = rep["strategy_used"].as_str().unwrap_or("?");
            r.notes.push(format!("used {used}, {rounds} rounds"));
            // Post-copy's rounds are not a bulk copy.
            if let Some(m) = round0_mbit(rep).filter(|_| used != "postcopy") {
                r.notes.push(format!("round 0 at {m:.0} Mbit/s"));
            }
            if let Some(t) = rep["max_throttle"].as_u64().filter(|&t| t > 0) {
                r.notes.push(format!("throttle {t}%"));
            }
            if let Some(g) = rep["guest_observed"]["gap_ns"].as_f64() {
                r.notes.push(format!("ferry's own gap {:.1} ms", g / 1e6));
            }
        }
    }
    // The source exits after a migration: read its CPU time while it is a zombie.
    if src.wait_exited(Duration::from_secs(10)) {
        r.source_cpu_ms = src.cpu_ms().zip(src_cpu0).map(|(a, b)| a - b);
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
    let on = if completed { &dst_sock } else { &src_sock };
    match control(on, r#"{"op":"verify"}"#) {
        Ok(v) if v["ok"] == true => {
            let f = |k: &str| v["verify"][k].as_u64().unwrap_or(0);
            r.guest_check = Some(GuestCheck {
                pages: f("pages"),
                written: None,
                errors: f("errors"),
                loop_errors: f("loop_errors"),
                on_destination: completed,
            });
        }
        Ok(v) => r.notes.push(format!("guest check failed: {}", v["error"])),
        Err(e) => r.notes.push(format!("guest check failed: {e}")),
    }
    let _ = control(&dst_sock, r#"{"op":"stop"}"#);
    dst.wait_exited(Duration::from_secs(5));
    dst.kill();
    src.kill();
    let (sb, db) = (src_tap.finish(), dst_tap.finish());
    crate::analyse(&mut r, ctx, (&sb, &db), (t0, t1, end));
    Ok(r)
}

/// The guest's dirty rate over the live rounds after the bulk copy (pages dirtied / their time),
/// pages/s, from `ferry migrate --json`; the bulk round's too when it is the only one.
fn live_dirty_rate(report: &Value) -> Option<f64> {
    let rounds = report["rounds"].as_array()?;
    let live = if rounds.len() > 1 {
        &rounds[1..]
    } else {
        &rounds[..]
    };
    let (dirtied, secs) = live.iter().fold((0.0, 0.0), |(d, s), r| {
        (
            d + r["dirtied"].as_f64().unwrap_or(0.0),
            s + r["seconds"].as_f64().unwrap_or(0.0),
        )
    });
    (secs > 0.0).then(|| dirtied / secs)
}

/// Throughput of the first pre-copy round (the bulk copy), Mbit/s, from `ferry migrate --json`.
fn round0_mbit(report: &Value) -> Option<f64> {
    let r0 = report["rounds"].as_array()?.first()?;
    let (bytes, secs) = (r0["bytes"].as_f64()?, r0["seconds"].as_f64()?);
    (secs > 0.0).then(|| bytes * 8.0 / secs / 1e6)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn round0_throughput() {
        let rep = json!({"rounds": [{"round": 0, "bytes": 125_000_000u64, "seconds": 1.0}, {"round": 1, "bytes": 1, "seconds": 0.1}]});
        assert_eq!(super::round0_mbit(&rep), Some(1000.0));
        assert_eq!(super::round0_mbit(&json!({"rounds": []})), None);
        assert_eq!(super::round0_mbit(&json!({})), None);
    }

    #[test]
    fn dirty_rate_over_the_live_rounds() {
        let rep = json!({"rounds": [
            {"dirtied": 1000, "seconds": 1.0},
            {"dirtied": 300, "seconds": 0.1},
            {"dirtied": 100, "seconds": 0.1}
        ]});
        assert_eq!(super::live_dirty_rate(&rep), Some(2000.0));
        let one = json!({"rounds": [{"dirtied": 50, "seconds": 0.5}]});
        assert_eq!(super::live_dirty_rate(&one), Some(100.0));
        assert_eq!(super::live_dirty_rate(&json!({"rounds": []})), None);
    }
}
