//! One QEMU migration: a source and an `-incoming defer` destination (`qemu-system-x86_64 -accel kvm`),
//! configured and driven over QMP.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_guest::mailbox::{
    Mailbox, MAILBOX_ADDR, MAILBOX_SIZE, OFF_VERIFY_REQUEST, STATE_RUNNING,
};
use ferry_guest::Heartbeat;
use serde_json::{json, Value};

use crate::procs::{free_port, Proc};
use crate::scenario::QemuSettings;
use crate::tap::SerialTap;
use crate::{BenchError, GuestCheck, Outcome, RunCtx, RunResult, Side};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// `qemu-system-x86_64 --version`, first line (None if QEMU is not installed).
pub fn version() -> Option<String> {
    let out = Command::new(QEMU).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}

/// A QMP connection.
pub struct Qmp {
    r: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects (retrying while QEMU starts) and leaves capability negotiation mode.
    pub fn connect(path: &Path, owner: &Proc) -> Result<Qmp, BenchError> {
        let t = Instant::now();
        let s = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if t.elapsed() > Duration::from_secs(20) => {
                    return Err(BenchError::io(format!("QMP {}", path.display()), e))
                }
                Err(_) => {
                    owner.check_alive()?;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| BenchError::io("QMP timeout", e))?;
        let mut q = Qmp {
            r: BufReader::new(s),
        };
        // QEMU 7.2 may hand a newly connected client an event (seen: RESUME) before the greeting;
        // events carry "event" and are skipped, anything else must be the greeting.
        let mut greeting = String::new();
        for _ in 0..16 {
            greeting.clear();
            q.r.read_line(&mut greeting)
                .map_err(|e| BenchError::io("QMP greeting", e))?;
            if !greeting.contains("\"event\"") {
                break;
            }
        }
        if !greeting.contains("QMP") {
            return Err(BenchError::Qmp(format!("bad greeting {greeting:?}")));
        }
        q.exec("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Runs a command; its `return` value. Asynchronous events are skipped.
    pub fn exec(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, BenchError> {
        let msg = match args {
            Some(a) => json!({"execute": cmd, "arguments": a}),
            None => json!({ "execute": cmd }),
        };
        let w = self.r.get_mut();
        w.write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| BenchError::io(format!("QMP {cmd}"), e))?;
        loop {
            let mut line = String::new();
            let n = self
                .r
                .read_line(&mut line)
                .map_err(|e| BenchError::io(format!("QMP {cmd}"), e))?;
            if n == 0 {
                return Err(BenchError::Qmp(format!("QMP closed during {cmd}")));
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| BenchError::Qmp(format!("bad QMP line {line:?}: {e}")))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(BenchError::Qmp(format!("{cmd}: {}", e["desc"])));
            }
        }
    }

    /// Asks the guest for its verification sweep and waits for the answer: stops the VM, writes the
    /// request through the GDB stub at `gdb`, lets it run, polls the mailbox (through `file`).
    pub fn verify(
        &mut self,
        gdb: &Path,
        file: &Path,
        timeout: Duration,
    ) -> Result<GuestCheck, BenchError> {
        let before = self
            .mailbox(file)?
            .ok_or_else(|| BenchError::Setup("no guest mailbox to verify with".into()))?;
        let request = before.verify_request.wrapping_add(1).max(1);
        self.exec("stop", None)?;
        let written = crate::gdb::write_mem(
            gdb,
            MAILBOX_ADDR + OFF_VERIFY_REQUEST,
            &request.to_le_bytes(),
        );
        self.exec("cont", None)?;
        written?;
        let t = Instant::now();
        loop {
            if let Some(m) = self.mailbox(file)?.filter(|m| m.verify_done == request) {
                return Ok(GuestCheck {
                    pages: m.verify_pages,
                    written: Some(m.verify_written),
                    errors: m.verify_errors,
                    loop_errors: m.errors,
                    on_destination: false,
                });
            }
            if t.elapsed() > timeout {
                return Err(BenchError::Setup(format!(
                    "the guest did not finish its verification sweep in {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The guest's mailbox (via `pmemsave` into `file`), None until the guest has set it up.
    pub fn mailbox(&mut self, file: &Path) -> Result<Option<Mailbox>, BenchError> {
        self.exec(
            "pmemsave",
            Some(json!({"val": MAILBOX_ADDR, "size": MAILBOX_SIZE, "filename": file})),
        )?;
        let page = std::fs::read(file).map_err(|e| BenchError::io("pmemsave output", e))?;
        Ok(Mailbox::parse(&page))
    }
}

/// The GDB stub socket of one side's QEMU.
fn gdb_socket(ctx: &RunCtx, name: &str) -> std::path::PathBuf {
    ctx.dir.join(format!("{name}.gdb"))
}

fn spawn(
    ctx: &RunCtx,
    name: &str,
    qmp: &Path,
    serial: &Path,
    incoming: bool,
) -> Result<Proc, BenchError> {
    let side = if incoming {
        Side::Destination
    } else {
        Side::Source
    };
    let mut cmd = ctx.command(side, QEMU);
    // KVM only: QEMU has no fallback here (a TCG guest would make every number meaningless), and
    // one that cannot use KVM exits at once, which `Qmp::connect` reports with its log.
    cmd.args(["-accel", "kvm", "-smp", "1", "-m"])
        .arg(format!("{}M", ctx.guest.memory >> 20))
        .arg("-kernel")
        .arg(ctx.image)
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0x501", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        // The GDB stub, idle until the guest's check after the migration writes its request.
        .arg("-chardev")
        .arg(format!(
            "socket,id=gdb0,path={},server=on,wait=off",
            gdb_socket(ctx, name).display()
        ))
        .args(["-gdb", "chardev:gdb0"]);
    if incoming {
        cmd.args(["-incoming", "defer"]);
    }
    Proc::spawn(name, ctx.dir, cmd, Stdio::null())
}

fn capabilities(s: &QemuSettings, source: bool) -> Value {
    let mut caps = vec![];
    let mut on = |name: &str| caps.push(json!({"capability": name, "state": true}));
    if s.postcopy {
        on("postcopy-ram");
    }
    if s.multifd.is_some() {
        on("multifd");
    }
    if source && s.auto_converge {
        on("auto-converge");
    }
    if s.xbzrle {
        on("xbzrle");
    }
    json!({ "capabilities": caps })
}

fn parameters(s: &QemuSettings, source: bool) -> Value {
    let mut p = serde_json::Map::new();
    if let Some((n, c)) = &s.multifd {
        p.insert("multifd-channels".into(), json!(n));
        p.insert("multifd-compression".into(), json!(c));
    }
    if source {
        if let Some(b) = s.max_bandwidth {
            p.insert("max-bandwidth".into(), json!(b));
        }
        if let Some(d) = s.downtime_limit_ms {
            p.insert("downtime-limit".into(), json!(d));
        }
    }
    Value::Object(p)
}

/// Runs one migration of the scenario's guest with `s`.
pub fn run(ctx: &RunCtx, s: &QemuSettings) -> Result<RunResult, BenchError> {
    let src_tap = SerialTap::new(&ctx.dir.join("qemu-src.fifo"))?;
    let dst_tap = SerialTap::new(&ctx.dir.join("qemu-dst.fifo"))?;
    let (src_qmp, dst_qmp) = (ctx.dir.join("qemu-src.qmp"), ctx.dir.join("qemu-dst.qmp"));
    let mut dst = spawn(ctx, "qemu-destination", &dst_qmp, dst_tap.path(), true)?;
    let mut src = spawn(ctx, "qemu-source", &src_qmp, src_tap.path(), false)?;
    let mut dq = Qmp::connect(&dst_qmp, &dst)?;
    let mut sq = Qmp::connect(&src_qmp, &src)?;

    let pmem = ctx.dir.join("qemu-mailbox");
    let t = Instant::now();
    loop {
        src.check_alive()?;
        if let Some(m) = sq.mailbox(&pmem)? {
            let beats = m.heartbeats > 0 || ctx.guest.heartbeat == Heartbeat::None;
            if m.state == STATE_RUNNING && beats {
                break;
            }
        }
        if t.elapsed() > ctx.boot_timeout {
            return Err(BenchError::Setup(format!(
                "QEMU guest not running after {:?}: {}",
                ctx.boot_timeout,
                src.log_tail()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let port = free_port()?;
    dq.exec("migrate-set-capabilities", Some(capabilities(s, false)))?;
    dq.exec("migrate-set-parameters", Some(parameters(s, false)))?;
    let listen = format!("{}:{port}", ctx.listen_host());
    dq.exec(
        "migrate-incoming",
        Some(json!({ "uri": format!("tcp:{listen}") })),
    )?;
    // Kept until the end of the run: on the network lab it holds the delay proxy.
    let route = ctx.route(&listen)?;
    sq.exec("migrate-set-capabilities", Some(capabilities(s, true)))?;
    sq.exec("migrate-set-parameters", Some(parameters(s, true)))?;
    let iterations = || -> Option<(Instant, u64)> {
        let m = sq.mailbox(&pmem).ok()??;
        Some((Instant::now(), m.iterations))
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
    sq.exec(
        "migrate",
        Some(json!({ "uri": format!("tcp:{}", route.addr) })),
    )?;
    let mut postcopy_started = false;
    let mut cancelled_at: Option<Instant> = None;
    let mut r = RunResult::new(Outcome::Completed);
    r.guest_writes_per_s = rate;
    let mut postcopy_seen: Option<Instant> = None;
    // A cancelled migration reports no RAM counters: keep the last ones seen.
    let mut last_ram = Value::Null;
    let mut completed_polls = 0;
    let last = loop {
        let v = sq.exec("query-migrate", None)?;
        let status = v["status"].as_str().unwrap_or("").to_string();
        if v["ram"].is_object() {
            last_ram = v["ram"].clone();
        }
        match status.as_str() {
            // QEMU 7.2 sets COMPLETED before it computes total-time and downtime
            // (migration_completion, then migration_calculate_complete): a query in
            // between reads 0 for both, so wait for the numbers.
            "completed"
                if v["total-time"].as_f64().unwrap_or(0.0) <= 0.0 && completed_polls < 100 =>
            {
                completed_polls += 1;
            }
            "completed" => break v,
            "failed" => {
                r.outcome = Outcome::Failed(format!(
                    "QEMU migration failed: {}",
                    v["error-desc"].as_str().unwrap_or("?")
                ));
                break v;
            }
            "cancelled" => {
                r.outcome = Outcome::DidNotConverge {
                    after_s: ctx.timeout.as_secs_f64(),
                };
                break v;
            }
            "postcopy-active" if postcopy_seen.is_none() => postcopy_seen = Some(Instant::now()),
            _ => {}
        }
        let syncs = v["ram"]["dirty-sync-count"].as_u64().unwrap_or(0);
        if s.postcopy && !postcopy_started && status == "active" && syncs >= 2 {
            sq.exec("migrate-start-postcopy", None)?;
            postcopy_started = true;
        }
        let elapsed = t0.elapsed();
        if elapsed > ctx.timeout && !status.starts_with("postcopy") && cancelled_at.is_none() {
            sq.exec("migrate_cancel", None)?;
            cancelled_at = Some(Instant::now());
        }
        if elapsed > ctx.timeout * 2 + Duration::from_secs(60) {
            r.outcome = Outcome::Failed(format!("stuck in status {status}"));
            break v;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let t1 = cancelled_at.unwrap_or_else(Instant::now);
    let (src_cpu1, dst_cpu1, load1) = (src.cpu_ms(), dst.cpu_ms(), ctx.load_cpu_ms());
    r.source_cpu_ms = src_cpu1.zip(src_cpu0).map(|(a, b)| a - b);
    r.destination_cpu_ms = dst_cpu1.zip(dst_cpu0).map(|(a, b)| a - b);
    r.hogs_cpu_cores = load1
        .zip(load0)
        .map(|(a, b)| (a - b) / 1e3 / (t1 - t0).as_secs_f64().max(1e-9));
    r.strategy_used = Some(if postcopy_seen.is_some() {
        "postcopy".into()
    } else {
        "precopy".into()
    });
    r.engine_dirty_pages_per_s = last_ram["dirty-pages-rate"].as_f64().filter(|&d| d > 0.0);
    r.engine_report = last.clone();
    if r.engine_report.get("ram").is_none_or(|v| !v.is_object()) {
        r.engine_report["ram"] = last_ram.clone();
    }
    let ram = &last_ram;
    r.wire_bytes = ram["transferred"].as_u64();
    match r.outcome {
        Outcome::Completed => {
            r.total_ms = last["total-time"].as_f64();
            r.engine_downtime_ms = last["downtime"].as_f64();
        }
        _ => r.total_ms = Some((t1 - t0).as_secs_f64() * 1e3),
    }
    r.notes.push(format!(
        "{} dirty syncs",
        ram["dirty-sync-count"].as_u64().unwrap_or(0)
    ));
    // On completion QEMU reports the average over the whole migration, before that the last rate.
    if let Some(m) = ram["mbps"].as_f64().filter(|&m| m > 0.0) {
        r.notes.push(match r.outcome {
            Outcome::Completed => format!("average {m:.0} Mbit/s"),
            _ => format!("{m:.0} Mbit/s at the end"),
        });
    }
    if s.postcopy {
        r.notes.push(match postcopy_seen {
            Some(t) => format!("post-copy from {:.0} ms", (t - t0).as_secs_f64() * 1e3),
            None if postcopy_started => "post-copy requested, never entered".into(),
            None => "finished before the post-copy switch".into(),
        });
    }
    if let Some(p) = last["cpu-throttle-percentage"].as_u64() {
        r.notes.push(format!("throttle {p}%"));
    }
    if let Some(p) = ram["postcopy-requests"].as_u64().filter(|&p| p > 0) {
        r.notes.push(format!("{p} postcopy page requests"));
    }
    if let Some(x) = last.get("xbzrle-cache") {
        r.notes.push(format!(
            "xbzrle {} pages, {} cache misses",
            x["pages"], x["cache-miss"]
        ));
    }

    // Completed: wait for the guest's first heartbeat on the destination. Not completed: the
    // guest stays on the source; measure what the attempt did to it.
    let completed = matches!(r.outcome, Outcome::Completed);
    let end = if completed {
        dst_tap
            .wait_beat_after(ctx.guest.heartbeat, t1, Duration::from_secs(5))
            .unwrap_or_else(Instant::now)
    } else {
        t1
    };
    // The guest checks every page it wrote, where it runs now.
    let (q, name) = if completed {
        (&mut dq, "qemu-destination")
    } else {
        (&mut sq, "qemu-source")
    };
    match q.verify(&gdb_socket(ctx, name), &pmem, Duration::from_secs(60)) {
        Ok(c) => {
            r.guest_check = Some(GuestCheck {
                on_destination: completed,
                ..c
            })
        }
        Err(e) => r.notes.push(format!("guest check failed: {e}")),
    }
    let _ = sq.exec("quit", None);
    let _ = dq.exec("quit", None);
    src.wait_exited(Duration::from_secs(5));
    dst.wait_exited(Duration::from_secs(5));
    src.kill();
    dst.kill();
    let (sb, db) = (src_tap.finish(), dst_tap.finish());
    crate::analyse(&mut r, ctx, (&sb, &db), (t0, t1, end));
    Ok(r)
}
