//! vCPU threads. Each thread owns its `VcpuFd` only while running; pausing hands the fd back to the
//! VMM, so saving and restoring state never races with `KVM_RUN`.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{PortAction, PortBus};
use crate::VmmError;

/// Why a VM stopped running on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote its status to the exit port.
    Guest(u8),
    /// The guest asked for a reset (i8042).
    Reset,
    /// The guest triple-faulted.
    TripleFault,
    /// KVM could not run the guest.
    Failed(String),
}

/// State shared by the VMM and every vCPU thread.
#[derive(Debug, Default)]
pub(crate) struct RunControl {
    pause: AtomicBool,
    /// Percent of time the vCPUs sit out (auto-converge), applied at each VM exit.
    pub(crate) throttle: std::sync::atomic::AtomicU8,
    exit: Mutex<Option<ExitReason>>,
    exit_cv: Condvar,
}

impl RunControl {
    fn set_exit(&self, reason: ExitReason) {
        if let Ok(mut e) = self.exit.lock() {
            e.get_or_insert(reason);
        }
        self.pause.store(true, Ordering::SeqCst);
        self.exit_cv.notify_all();
    }

    pub(crate) fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn wait_exit(&self, timeout: Duration) -> Option<ExitReason> {
        let guard = self.exit.lock().ok()?;
        let (guard, _) = self
            .exit_cv
            .wait_timeout_while(guard, timeout, |e| e.is_none())
            .ok()?;
        guard.clone()
    }
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(|r| r.get());
    if !run.is_null() {
        // SAFETY: the pointer is the kvm_run mapping of the VcpuFd this very thread is running; it is
        // set right before and cleared right after the run loop, while the fd is alive. A single byte
        // store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 2
}

fn install_kick_handler() -> Result<(), VmmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
            .map_err(|e| {
                VmmError::Thread(format!("cannot install the vCPU kick signal handler: {e}"))
            });
    });
    result
}

/// One vCPU: its thread and, while paused, its fd.
#[derive(Debug)]
pub(crate) struct VcpuHandle {
    pub(crate) fd: Option<VcpuFd>,
    to_thread: Option<Sender<VcpuFd>>,
    from_thread: Receiver<VcpuFd>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    pub(crate) fn spawn(
        fd: VcpuFd,
        id: u64,
        bus: Arc<PortBus>,
        ctl: Arc<RunControl>,
    ) -> Result<Self, VmmError> {
        install_kick_handler()?;
        let (to_thread, rx) = channel::<VcpuFd>();
        let (tx, from_thread) = channel::<VcpuFd>();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || {
                while let Ok(mut fd) = rx.recv() {
                    run_until_paused(&mut fd, &bus, &ctl);
                    if tx.send(fd).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| VmmError::Thread(e.to_string()))?;
        Ok(Self {
            fd: Some(fd),
            to_thread: Some(to_thread),
            from_thread,
            thread: Some(thread),
        })
    }

    /// Hands the fd to the thread, which runs the vCPU until paused.
    pub(crate) fn resume(&mut self) -> Result<(), VmmError> {
        let (Some(fd), Some(tx)) = (self.fd.take(), self.to_thread.as_ref()) else {
            return Ok(());
        };
        tx.send(fd)
            .map_err(|_| VmmError::Thread("vCPU thread is gone".into()))
    }

    /// Kicks the thread out of KVM_RUN (the caller has set the pause flag) and takes the fd back.
    pub(crate) fn pause(&mut self) -> Result<(), VmmError> {
        if self.fd.is_some() {
            return Ok(());
        }
        let pthread = self.thread.as_ref().map(|t| t.as_pthread_t());
        for _ in 0..20_000 {
            if let Some(p) = pthread {
                // SAFETY: `p` is the pthread of a thread we spawned and have not joined, so it is valid.
                unsafe { libc::pthread_kill(p, kick_signal()) };
            }
            match self.from_thread.recv_timeout(Duration::from_micros(500)) {
                Ok(fd) => {
                    self.fd = Some(fd);
                    return Ok(());
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VmmError::Thread("vCPU thread died".into()))
                }
            }
        }
        Err(VmmError::Thread("vCPU did not stop within 10 s".into()))
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.to_thread = None; // the thread's recv() fails and it ends
        if self.fd.is_some() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl RunControl {
    pub(crate) fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::SeqCst);
    }
}

fn run_until_paused(fd: &mut VcpuFd, bus: &PortBus, ctl: &RunControl) {
    let run_ptr: *mut kvm_run = fd.get_kvm_run();
    KVM_RUN.with(|r| r.set(run_ptr));
    let mut slice_start = std::time::Instant::now();
    loop {
        if ctl.pause.load(Ordering::SeqCst) {
            break;
        }
        throttle(ctl.throttle.load(Ordering::Relaxed), &mut slice_start);
        match fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => match bus.write(port, data) {
                PortAction::None => {}
                PortAction::Exit(code) => ctl.set_exit(ExitReason::Guest(code)),
                PortAction::Reset => ctl.set_exit(ExitReason::Reset),
            },
            Ok(VcpuExit::IoIn(port, data)) => bus.read(port, data),
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::MmioWrite(..)) | Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => {}
            Ok(VcpuExit::Hlt) => ctl.set_exit(ExitReason::Guest(0)),
            Ok(VcpuExit::Shutdown) => ctl.set_exit(ExitReason::TripleFault),
            Ok(other) => ctl.set_exit(ExitReason::Failed(format!("unexpected VM exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
            }
            Err(e) => ctl.set_exit(ExitReason::Failed(format!("KVM_RUN: {e}"))),
        }
    }
    KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    fd.set_kvm_immediate_exit(0);
}

/// Time slice over which throttling is applied.
const THROTTLE_SLICE: Duration = Duration::from_millis(10);

/// Sleeps away `percent` of each slice. Applied at VM exits, so it bites as often as the guest exits
/// (ferry's guests exit at every heartbeat, 1 kHz by default).
fn throttle(percent: u8, slice_start: &mut std::time::Instant) {
    if percent == 0 {
        return;
    }
    let pct = u32::from(percent.min(99));
    let run_for = THROTTLE_SLICE * (100 - pct) / 100;
    if slice_start.elapsed() >= run_for {
        std::thread::sleep(THROTTLE_SLICE * pct / 100);
        *slice_start = std::time::Instant::now();
    }
}
