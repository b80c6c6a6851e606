//! A small QEMU harness for the boot tests: spawn with a serial log, QMP for reading guest memory
//! and run control, and a GDB stub connection for writing guest memory (QMP cannot write it).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_guest::mailbox::{Mailbox, MAILBOX_ADDR, MAILBOX_SIZE};

/// QEMU binary the tests use.
pub const QEMU: &str = "qemu-system-x86_64";

/// Whether QEMU and a usable /dev/kvm are there; without them the tests skip, except under
/// CI=true where that is a failure. The tests never fall back to TCG: emulated, the guest runs
/// at a fraction of its speed and the rate checks would mean nothing.
pub fn qemu_available() -> bool {
    let found = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    if !found {
        assert!(
            !ci,
            "{QEMU} is not installed but CI=true: install qemu-system-x86"
        );
        eprintln!("skipping: {QEMU} not found");
        return false;
    }
    if let Err(e) = kvm {
        assert!(
            !ci,
            "/dev/kvm is not usable ({e}) but CI=true: these tests run QEMU with -accel kvm only"
        );
        eprintln!("skipping: /dev/kvm is not usable ({e}); QEMU runs with -accel kvm only");
        return false;
    }
    true
}

/// Boots run one at a time: the machine has two cores and timing checks need them.
pub fn serial_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running QEMU with its side channels; killed on drop.
pub struct Qemu {
    child: Child,
    dir: PathBuf,
    qmp: Option<BufReader<UnixStream>>,
    gdb: Option<UnixStream>,
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ferry-guest-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl Qemu {
    /// Boots `image` with `mem_mib` MiB of RAM under `-accel kvm` (never TCG). A QEMU that exits
    /// before the guest printed anything (KVM unusable, a bad flag) fails the test with its stderr.
    pub fn boot(tag: &str, image: &[u8], mem_mib: u64) -> Qemu {
        let mut q = Qemu::spawn(tag, image, mem_mib);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(500) {
            if let Ok(Some(status)) = q.child.try_wait() {
                assert!(
                    !q.serial().is_empty(),
                    "{QEMU} -accel kvm exited at start ({status}) before the guest printed \
                     anything; KVM must be usable for these tests. stderr: {}",
                    q.stderr().trim()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }

    fn spawn(tag: &str, image: &[u8], mem_mib: u64) -> Qemu {
        let dir = temp_dir(tag);
        let img = dir.join("guest.bin");
        std::fs::write(&img, image).expect("write image");
        let child = Command::new(QEMU)
            .args(["-accel", "kvm", "-m", &mem_mib.to_string(), "-kernel"])
            .arg(&img)
            .args(["-display", "none", "-no-reboot", "-nodefaults"])
            .args(["-device", "isa-debug-exit,iobase=0x501"])
            .arg("-serial")
            .arg(format!("file:{}", dir.join("serial").display()))
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp").display()
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,id=gdb0,path={},server=on,wait=off",
                dir.join("gdb").display()
            ))
            .args(["-gdb", "chardev:gdb0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
            .spawn()
            .expect("spawn qemu");
        Qemu {
            child,
            dir,
            qmp: None,
            gdb: None,
        }
    }

    /// CPU time (user + system, seconds) of QEMU's vCPU thread ("CPU 0/KVM"), or of the whole
    /// process if that thread is not found. Rates per second of this time do not depend on how
    /// busy the machine is: the guest's TSC runs on while its thread waits for a CPU.
    pub fn vcpu_cpu_secs(&self) -> f64 {
        let pid = self.child.id();
        let ticks = |stat: &str| -> Option<u64> {
            let rest = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        };
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        let task = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .find(|t| read(t.path().join("comm")).starts_with("CPU 0/KVM"));
        let stat = match task {
            Some(t) => read(t.path().join("stat")),
            None => read(PathBuf::from(format!("/proc/{pid}/stat"))),
        };
        // USER_HZ is 100 on every architecture ferry runs on.
        ticks(&stat).map_or(0.0, |t| t as f64 / 100.0)
    }

    /// Runs the guest for `wall` and returns (wall seconds, vCPU CPU seconds) over that time, with
    /// the mailbox before and after. Fails if the vCPU hardly ran (rates would mean nothing).
    pub fn measure(&mut self, wall: Duration) -> (f64, f64, Mailbox, Mailbox) {
        let m1 = self.mailbox().expect("mailbox");
        let (t, c1) = (Instant::now(), self.vcpu_cpu_secs());
        std::thread::sleep(wall);
        let m2 = self.mailbox().expect("mailbox");
        let (dt, dc) = (t.elapsed().as_secs_f64(), self.vcpu_cpu_secs() - c1);
        assert!(
            dc >= 0.05,
            "the vCPU ran only {dc:.3} s of {dt:.3} s: the machine is too busy to measure rates"
        );
        (dt, dc, m1, m2)
    }

    /// Everything the guest wrote to COM1 so far.
    pub fn serial(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("serial")).unwrap_or_default()
    }

    /// QEMU's stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Polls the serial log until `pred` holds or `timeout` passes.
    pub fn wait_serial(&self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
        wait_until(timeout, || pred(&self.serial()))
    }

    /// Waits for QEMU to exit by itself; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn qmp(&mut self) -> &mut BufReader<UnixStream> {
        if self.qmp.is_none() {
            let path = self.dir.join("qmp");
            let stream = connect(&path);
            let mut r = BufReader::new(stream);
            let mut greeting = String::new();
            r.read_line(&mut greeting).expect("QMP greeting");
            assert!(greeting.contains("QMP"), "bad QMP greeting {greeting:?}");
            self.qmp = Some(r);
            self.qmp_cmd(r#"{"execute":"qmp_capabilities"}"#);
        }
        self.qmp.as_mut().expect("qmp connected")
    }

    /// Runs one QMP command and returns its reply line, skipping asynchronous events.
    pub fn qmp_cmd(&mut self, cmd: &str) -> String {
        let r = self.qmp();
        r.get_mut().write_all(cmd.as_bytes()).expect("QMP write");
        r.get_mut().write_all(b"\n").expect("QMP write");
        loop {
            let mut line = String::new();
            let n = r.read_line(&mut line).expect("QMP read");
            assert!(n > 0, "QMP closed while waiting for {cmd}");
            if line.contains("\"return\"") {
                return line;
            }
            assert!(!line.contains("\"error\""), "QMP {cmd} failed: {line}");
        }
    }

    /// Reads guest-physical memory through QMP `pmemsave`.
    pub fn read_mem(&mut self, addr: u64, len: usize) -> Vec<u8> {
        let file = self.dir.join("pmem");
        let cmd = format!(
            r#"{{"execute":"pmemsave","arguments":{{"val":{addr},"size":{len},"filename":"{}"}}}}"#,
            file.display()
        );
        self.qmp_cmd(&cmd);
        std::fs::read(&file).expect("read pmemsave output")
    }

    /// The mailbox, or None while the guest has not set its magic.
    pub fn mailbox(&mut self) -> Option<Mailbox> {
        Mailbox::parse(&self.read_mem(MAILBOX_ADDR, MAILBOX_SIZE))
    }

    /// Polls the mailbox until `pred` holds; the last mailbox seen either way.
    pub fn wait_mailbox(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Mailbox) -> bool,
    ) -> Option<Mailbox> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            last = self.mailbox();
            if last.as_ref().is_some_and(&pred) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last
    }

    /// Writes guest memory: QMP stops the VM, the GDB stub writes (the identity map makes guest
    /// virtual addresses physical), QMP resumes.
    pub fn write_mem(&mut self, addr: u64, bytes: &[u8]) {
        self.qmp_cmd(r#"{"execute":"stop"}"#);
        let first = self.gdb.is_none();
        if first {
            self.gdb = Some(connect(&self.dir.join("gdb")));
        }
        let gdb = self.gdb.as_mut().expect("gdb connected");
        // The stub reports the stop (and on first connect may stop the VM itself): drain that.
        drain(gdb, Duration::from_millis(if first { 300 } else { 100 }));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let reply = gdb_packet(gdb, &format!("M{addr:x},{:x}:{hex}", bytes.len()));
        assert_eq!(reply, "OK", "gdb memory write refused");
        self.qmp_cmd(r#"{"execute":"cont"}"#);
    }

    /// Writes one little-endian u64 into guest memory.
    pub fn write_u64(&mut self, addr: u64, v: u64) {
        self.write_mem(addr, &v.to_le_bytes());
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(path: &Path) -> UnixStream {
    let mut last = None;
    for _ in 0..250 {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                return s;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("cannot connect to {}: {last:?}", path.display());
}

fn drain(s: &mut UnixStream, quiet: Duration) {
    s.set_read_timeout(Some(quiet)).expect("timeout");
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
}

/// Sends one GDB remote-protocol packet and returns the body of the reply packet.
fn gdb_packet(s: &mut UnixStream, body: &str) -> String {
    let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    s.write_all(format!("${body}#{sum:02x}").as_bytes())
        .expect("gdb write");
    let mut reply = Vec::new();
    let mut in_packet = false;
    let mut after_hash = None;
    let mut byte = [0u8; 1];
    loop {
        s.read_exact(&mut byte).expect("gdb read");
        match (in_packet, after_hash, byte[0]) {
            (false, _, b'$') => in_packet = true,
            (false, _, _) => {} // acks
            (true, None, b'#') => after_hash = Some(0),
            (true, None, c) => reply.push(c),
            (true, Some(1), _) => break,
            (true, Some(n), _) => after_hash = Some(n + 1),
        }
    }
    s.write_all(b"+").expect("gdb ack");
    String::from_utf8_lossy(&reply).into_owned()
}

/// Heartbeat sequence numbers found after the banner (None if the banner is not there yet).
pub fn heartbeats_after_banner(serial: &[u8], banner: &str) -> Option<Vec<u8>> {
    let pos = serial
        .windows(banner.len())
        .position(|w| w == banner.as_bytes())?;
    let rest = &serial[pos + banner.len()..];
    let nl = rest.iter().position(|&b| b == b'\n')?;
    Some(
        rest[nl + 1..]
            .iter()
            .filter(|&&b| ferry_guest::is_heartbeat(b))
            .map(|&b| ferry_guest::heartbeat_seq(b))
            .collect(),
    )
}

/// Asserts that heartbeat sequence numbers start at 0 and step by one (mod 128).
pub fn assert_consecutive(seqs: &[u8]) {
    for (i, &s) in seqs.iter().enumerate() {
        assert_eq!(
            s,
            (i % 128) as u8,
            "heartbeat {i} has seq {s}: heartbeats were lost"
        );
    }
}
