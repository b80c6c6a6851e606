//! One VM on a host and its migrations: status, verification, stop, migrate away, cancel.
//!
//! A [`VmHost`] owns its VM. Its methods may be called from several threads at once (one per
//! control client): a migration holds the VM for its whole run, while status, cancel and bandwidth
//! changes are answered from the migration's shared state. A `ferry vm run` process wraps one; a
//! daemon can keep many.
//!
//! Lock order: `state`, then `vm`. The only exception is [`VmHost::migrate`], which holds `vm`
//! while the host is `Migrating` and takes `state` to leave that phase; no other method takes
//! `vm` while the host is `Migrating`, so the two never wait on each other.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_migrate::rate::RateLimit;
use ferry_migrate::{Event, MigrateError, MigrationSource, Report, SourceOptions};
use ferry_vmm::clock::monotonic_ns;
use ferry_vmm::{ExitReason, GuestRam, Vm};

use crate::guest_probe::{self, Verification};
use crate::outcome::{self, describe};
use crate::protocol::{
    Cause, ErrorReply, HostEvent, HostState, HostStatus, MigrateRequest, MigrationStatus, Reply,
    Request, VmLocation, VmStatus,
};
use crate::security::Security;
use crate::server::{EventSink, Handler};
use crate::transport::{Connector, Endpoint};

/// How long a guest's verification sweep may take.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Console text a status carries (the end of it).
const CONSOLE_TAIL: usize = 4096;

/// How a host's VM ended.
#[derive(Clone, Debug, PartialEq)]
pub enum HostEnd {
    /// The guest stopped by itself.
    GuestExited(ExitReason),
    /// An operator stopped it.
    Stopped,
    /// It migrated away.
    Migrated {
        /// Where to.
        to: String,
    },
}

impl HostEnd {
    /// The exit code of a process that hosted this VM: 0 when it stopped or left as asked, the
    /// guest's own status when it exited, 2 when it failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            HostEnd::Stopped | HostEnd::Migrated { .. } => 0,
            HostEnd::GuestExited(ExitReason::Guest(c)) => *c,
            HostEnd::GuestExited(_) => 2,
        }
    }
}

/// A migration in progress: what other clients may see and change while it runs.
struct ActiveMigration {
    to: String,
    cancel: Arc<AtomicBool>,
    limit: Arc<RateLimit>,
    progress: Mutex<MigrationStatus>,
    start: Instant,
}

impl ActiveMigration {
    fn note(&self, e: &Event) {
        let Ok(mut p) = self.progress.lock() else {
            return;
        };
        match e {
            Event::Phase { phase } => p.phase = Some(*phase),
            Event::Progress {
                round,
                done,
                total,
                bytes,
            } => {
                (p.round, p.done, p.total, p.bytes) = (*round, *done, *total, *bytes);
            }
            _ => {}
        }
    }

    fn status(&self) -> MigrationStatus {
        let mut s = self.progress.lock().map(|p| p.clone()).unwrap_or_default();
        s.to = self.to.clone();
        s.max_bandwidth = self.limit.get();
        s.elapsed_ms = self.start.elapsed().as_millis() as u64;
        s
    }
}

enum Phase {
    Running,
    Migrating(Arc<ActiveMigration>),
    Ended(HostEnd),
}

struct State {
    phase: Phase,
    /// An earlier migration ended without a clear outcome: no new migration from this copy.
    outcome_unknown: bool,
    /// The id of a post-copy whose link failed: `ferry migrate --recover` finishes it.
    interrupted: Option<[u8; 16]>,
}

/// One VM and its migrations.
pub struct VmHost {
    security: Security,
    ram: Arc<GuestRam>,
    vm: Mutex<Vm>,
    state: Mutex<State>,
    changed: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is caught and answered; the data stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VmHost {
    /// Hosts `vm` (running or not), migrating it as `security` allows.
    pub fn new(vm: Vm, security: Security) -> VmHost {
        VmHost {
            security,
            ram: vm.ram().clone(),
            vm: Mutex::new(vm),
            state: Mutex::new(State {
                phase: Phase::Running,
                outcome_unknown: false,
                interrupted: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// Starts or continues the VM's vCPUs.
    pub fn resume(&self) -> Result<(), ferry_vmm::VmmError> {
        let st = lock(&self.state);
        if let Phase::Running = st.phase {
            lock(&self.vm).resume()?;
        }
        Ok(())
    }

    /// How the VM ended, if it did.
    pub fn end(&self) -> Option<HostEnd> {
        match &lock(&self.state).phase {
            Phase::Ended(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Waits until the VM ends (its guest exits, it is stopped, or it migrates away).
    pub fn wait_end(&self) -> HostEnd {
        let mut st = lock(&self.state);
        loop {
            match &st.phase {
                Phase::Ended(e) => return e.clone(),
                Phase::Running => {
                    if let Some(reason) = lock(&self.vm).exit_reason() {
                        st.phase = Phase::Ended(HostEnd::GuestExited(reason));
                        self.changed.notify_all();
                        continue;
                    }
                }
                Phase::Migrating(_) => {}
            }
            st = match self.changed.wait_timeout(st, Duration::from_millis(50)) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// The VM's status (or the migration's, while one runs).
    pub fn status(&self) -> HostStatus {
        let st = lock(&self.state);
        match &st.phase {
            Phase::Migrating(m) => HostStatus {
                state: Some(HostState::Migrating),
                migration: Some(m.status()),
                ..HostStatus::default()
            },
            Phase::Ended(_) => HostStatus {
                state: Some(HostState::Ended),
                ..HostStatus::default()
            },
            Phase::Running => {
                let vm = lock(&self.vm);
                let (count, median) = vm
                    .heartbeats()
                    .lock()
                    .map(|l| (l.snapshot().count, l.median_gap()))
                    .unwrap_or_default();
                let text = vm.console_text();
                HostStatus {
                    state: Some(HostState::Running),
                    vm: Some(VmStatus {
                        running: vm.is_running(),
                        memory: self.ram.size(),
                        vcpus: vm.vcpu_count(),
                        heartbeats_seen: count,
                        heartbeat_period_ms: median.map(|m| m as f64 / 1e6),
                        outcome_unknown: st.outcome_unknown,
                        postcopy_interrupted: st.interrupted.is_some(),
                        ram_backing: Some(self.ram.backing()),
                    }),
                    guest: Some(guest_probe::status(&self.ram)),
                    console_tail: Some(tail(&text, CONSOLE_TAIL).to_string()),
                    ..HostStatus::default()
                }
            }
        }
    }

    fn require_running(st: &State) -> Result<(), ErrorReply> {
        match &st.phase {
            Phase::Running => Ok(()),
            Phase::Migrating(_) => Err(ErrorReply::new(
                Cause::HostBusy,
                "a migration is in progress; only status, cancel and bandwidth changes are possible",
            )),
            Phase::Ended(e) => Err(ErrorReply::new(
                Cause::NoVm,
                format!("the VM is no longer here ({e:?})"),
            )),
        }
    }

    /// Asks the guest (a ferry guest) to check every page it wrote; waits up to `timeout`.
    pub fn verify(&self, timeout: Duration) -> Result<Verification, ErrorReply> {
        Self::require_running(&lock(&self.state))?;
        guest_probe::verify(&self.ram, timeout).map_err(|e| ErrorReply::new(Cause::Guest, e))
    }

    /// Pauses the VM for good; the host ends.
    pub fn stop(&self) -> Result<(), ErrorReply> {
        let mut st = lock(&self.state);
        Self::require_running(&st)?;
        if st.interrupted.is_some() {
            return Err(ErrorReply::new(
                Cause::Refused,
                "this host keeps the only copy of pages an interrupted post-copy still needs: \
                 finish it with `ferry migrate --recover` first",
            ));
        }
        lock(&self.vm)
            .pause()
            .map_err(|e| ErrorReply::new(Cause::Vm, describe(&e)))?;
        st.phase = Phase::Ended(HostEnd::Stopped);
        self.changed.notify_all();
        Ok(())
    }

    /// Resumes the VM kept paused after a migration whose outcome was in doubt; the caller has
    /// established that the destination holds no copy that runs or will run. An interrupted
    /// post-copy is resumed only with `rollback` (its destination had the newer state).
    pub fn resume_in_doubt(&self, rollback: bool) -> Result<(), ErrorReply> {
        let mut st = lock(&self.state);
        Self::require_running(&st)?;
        if !st.outcome_unknown && st.interrupted.is_none() {
            return Err(ErrorReply::new(
                Cause::Refused,
                "no migration of this VM is in doubt: nothing to resume",
            ));
        }
        if st.interrupted.is_some() && !rollback {
            return Err(ErrorReply::new(
                Cause::Refused,
                "a post-copy of this VM was interrupted: the destination ran the guest after the \
                 switch-over; finish it with `ferry migrate --recover`, or roll back only if that \
                 host is gone",
            )
            .with_vm(VmLocation::PausedRecoverable));
        }
        lock(&self.vm)
            .resume()
            .map_err(|e| ErrorReply::new(Cause::Vm, describe(&e)))?;
        st.outcome_unknown = false;
        st.interrupted = None;
        self.changed.notify_all();
        Ok(())
    }

    fn active(&self) -> Result<Arc<ActiveMigration>, ErrorReply> {
        match &lock(&self.state).phase {
            Phase::Migrating(m) => Ok(m.clone()),
            _ => Err(ErrorReply::new(
                Cause::NotMigrating,
                "no migration in progress",
            )),
        }
    }

    /// Asks the migration in progress to stop (honoured until its point of no return).
    pub fn cancel(&self) -> Result<(), ErrorReply> {
        self.active()?.cancel.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Changes the migration's bandwidth limit (bytes/s, 0 = none); the limit now in force.
    pub fn set_bandwidth(&self, bytes_per_sec: u64) -> Result<u64, ErrorReply> {
        let m = self.active()?;
        m.limit.set(bytes_per_sec);
        Ok(m.limit.get())
    }

    /// Migrates the VM to `req.to` (or finishes its interrupted post-copy there); `events` sees the
    /// progress. On success the VM runs on the destination and this host has ended.
    pub fn migrate(
        &self,
        req: &MigrateRequest,
        events: &mut dyn FnMut(HostEvent),
    ) -> Result<Report, ErrorReply> {
        let (active, id) = self.begin(req)?;
        // From here on the host is Migrating; whatever happens below (a panic included), the guard
        // leaves that phase, so no request waits forever for it.
        let mut guard = MigratingGuard {
            host: self,
            settled: false,
        };
        let outcome = {
            let mut vm = lock(&self.vm);
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.run_migration(&mut vm, req, id, &active, events)
            }));
            result.unwrap_or_else(|panic| {
                // Where the engine stopped is not known. A VM still running here is the only
                // running copy (the engine pauses before it commits); a paused one is kept paused
                // until an operator knows more.
                let running = vm.is_running();
                if running {
                    let _ = vm.set_throttle(0);
                    let _ = vm.stop_dirty_log();
                }
                Outcome::Panicked {
                    what: panic_text(&panic),
                    running,
                }
            })
        };
        let mut st = lock(&self.state);
        guard.settled = true;
        st.phase = Phase::Running;
        let result = match outcome {
            Outcome::Done(report) => {
                st.phase = Phase::Ended(HostEnd::Migrated {
                    to: req.to.to_string(),
                });
                Ok(*report)
            }
            Outcome::NotStarted(reply) => Err(reply),
            Outcome::Failed(e) => {
                st.outcome_unknown |= matches!(
                    e,
                    MigrateError::OutcomeUnknown(_) | MigrateError::PostcopyInterrupted(_)
                );
                if matches!(e, MigrateError::PostcopyInterrupted(_)) {
                    st.interrupted = Some(id);
                }
                Err(outcome::classify(&e))
            }
            Outcome::Panicked { what, running } => {
                tracing::error!(panic = %what, "the migration panicked");
                st.outcome_unknown |= !running;
                Err(ErrorReply {
                    cause: Cause::Internal,
                    vm: Some(if running {
                        VmLocation::Source
                    } else {
                        VmLocation::Unknown
                    }),
                    message: format!("internal error in the migration (a bug in ferry): {what}"),
                })
            }
        };
        self.changed.notify_all();
        result
    }

    /// Checks that a migration may start and enters the Migrating phase.
    fn begin(&self, req: &MigrateRequest) -> Result<(Arc<ActiveMigration>, [u8; 16]), ErrorReply> {
        let mut st = lock(&self.state);
        if let Phase::Migrating(_) = st.phase {
            return Err(ErrorReply::new(
                Cause::HostBusy,
                "a migration of this VM is already in progress",
            ));
        }
        Self::require_running(&st)?;
        let here = if st.interrupted.is_some() {
            VmLocation::PausedRecoverable
        } else {
            VmLocation::Unknown
        };
        if req.recover && st.interrupted.is_none() {
            return Err(ErrorReply::new(
                Cause::Refused,
                "no interrupted post-copy to recover on this host",
            ));
        }
        // The guest may be running (or waiting for pages) on the earlier destination: a new
        // migration from this copy could make a second one.
        if !req.recover && st.outcome_unknown {
            return Err(ErrorReply::new(
                Cause::Refused,
                "an earlier migration of this VM did not finish cleanly (see `ferry vm status`); \
                 finish a post-copy with `ferry migrate --recover`, or resolve it by hand",
            )
            .with_vm(here));
        }
        let id = match (req.recover, st.interrupted) {
            (true, Some(id)) => id,
            _ => ferry_migrate::source::new_migration_id(),
        };
        let active = Arc::new(ActiveMigration {
            to: req.to.to_string(),
            cancel: Arc::new(AtomicBool::new(false)),
            limit: Arc::new(RateLimit::new(req.max_bandwidth)),
            progress: Mutex::new(MigrationStatus::default()),
            start: Instant::now(),
        });
        st.phase = Phase::Migrating(active.clone());
        Ok((active, id))
    }

    fn run_migration(
        &self,
        vm: &mut Vm,
        req: &MigrateRequest,
        id: [u8; 16],
        active: &ActiveMigration,
        events: &mut dyn FnMut(HostEvent),
    ) -> Outcome {
        let connector = match Connector::new(&req.to, req.tls_name.as_deref(), &self.security) {
            Ok(c) => c,
            Err(e) => {
                return Outcome::NotStarted(
                    ErrorReply::new(Cause::Refused, describe(&e)).with_vm(VmLocation::Source),
                )
            }
        };
        let opts = SourceOptions {
            cancel: active.cancel.clone(),
            max_bandwidth: active.limit.clone(),
            strategy: req.strategy,
            downtime_target: Duration::from_millis(req.downtime_ms),
            max_rounds: req.max_rounds,
            channels: req.channels,
            encoder: ferry_wire::codec::EncoderConfig {
                compression: req.compression,
                ..Default::default()
            },
            verify: req.verify,
            migration_id: Some(id),
            ..SourceOptions::default()
        };
        let start_ns = monotonic_ns();
        let connect = || connector.connect();
        let mut on_event = |e: Event| {
            active.note(&e);
            events(HostEvent::Migration(e));
        };
        let result = if req.recover {
            ferry_migrate::recovery::recover_out(vm, &connect, &opts)
        } else {
            ferry_migrate::migrate_out(vm, &connect, &opts, &mut on_event)
        };
        let heartbeats = vm.heartbeats();
        match result.map(|mut r| {
            r.transport = connector.description();
            if matches!(req.to, Endpoint::Unix(_)) {
                r.transport
                    .push_str(if r.strategy_used == ferry_migrate::source::HANDOVER {
                        " (guest RAM handed over as a file)"
                    } else if self.ram.file().is_none() {
                        " (guest RAM copied: anonymous RAM has no file to hand over; \
                     --ram-backing memfd on `vm run` allows that)"
                    } else {
                        " (guest RAM copied)"
                    });
            }
            r.source_max_gap_ms = heartbeats
                .lock()
                .ok()
                .and_then(|l| l.max_gap_since(start_ns))
                .map(|g| g as f64 / 1e6);
            // The VM lives on the destination now: scrub this copy (unless it was handed over:
            // then it is the destination's RAM).
            if r.strategy_used != ferry_migrate::source::HANDOVER {
                let _ = self.ram.scrub();
            }
            r
        }) {
            Ok(r) => Outcome::Done(Box::new(r)),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// How a migration attempt ended.
enum Outcome {
    Done(Box<Report>),
    Failed(MigrateError),
    NotStarted(ErrorReply),
    Panicked { what: String, running: bool },
}

/// The last `max` bytes of `text` at most, cut at a character boundary (the guest writes whatever
/// bytes it likes; they arrive here lossily decoded).
fn tail(text: &str, max: usize) -> &str {
    let cut = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| text.len() - i <= max)
        .unwrap_or(text.len());
    &text[cut..]
}

/// Leaves the Migrating phase if [`VmHost::migrate`] did not get to (it unwound): the outcome is
/// then unknown.
struct MigratingGuard<'a> {
    host: &'a VmHost,
    settled: bool,
}

impl Drop for MigratingGuard<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut st = lock(&self.host.state);
        if let Phase::Migrating(_) = st.phase {
            st.phase = Phase::Running;
            st.outcome_unknown = true;
        }
        self.host.changed.notify_all();
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

impl Handler for VmHost {
    fn handle(&self, request: Request, events: &EventSink<'_>) -> Result<Reply, ErrorReply> {
        match request {
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::Verify => self.verify(VERIFY_TIMEOUT).map(Reply::Verified),
            Request::Stop => self.stop().map(|()| Reply::Stopped),
            Request::Cancel => self.cancel().map(|()| Reply::CancelRequested),
            Request::Resume { rollback } => self.resume_in_doubt(rollback).map(|()| Reply::Resumed),
            Request::SetBandwidth { bytes_per_sec } => self
                .set_bandwidth(bytes_per_sec)
                .map(|bytes_per_sec| Reply::Bandwidth { bytes_per_sec }),
            Request::Migrate(req) => self
                .migrate(&req, &mut |e| events.emit(e))
                .map(|r| Reply::Migrated(Box::new(r))),
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_vmm::devices::{Console, HeartbeatLog};
    use ferry_vmm::testing::require_kvm;
    use ferry_vmm::VmConfig;

    use super::*;

    /// A multiboot image whose 32-bit code counts in ECX forever.
    fn spinning_image() -> Vec<u8> {
        let load = 0x10_0000u32;
        let flags = (1u32 << 16) | 2;
        let words = [
            0x1BAD_B002u32,
            flags,
            0u32.wrapping_sub(0x1BAD_B002).wrapping_sub(flags),
            load,
            load,
            load + 0x200,
            load + 0x200,
            load + 0x100,
        ];
        let mut img = vec![0u8; 0x200];
        for (i, w) in words.iter().enumerate() {
            img[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        img[0x100..0x105].copy_from_slice(&[0x31, 0xc9, 0x41, 0xeb, 0xfd]);
        img
    }

    fn host() -> VmHost {
        let mut vm = Vm::new(
            VmConfig {
                memory: 16 << 20,
                vcpus: 1,
            },
            Console::new(None, false, HeartbeatLog::default()),
        )
        .unwrap();
        vm.boot_multiboot(&spinning_image()).unwrap();
        let host = VmHost::new(vm, Security::Insecure);
        host.resume().unwrap();
        host
    }

    /// A closed loopback port.
    fn nowhere() -> MigrateRequest {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        MigrateRequest::new(format!("127.0.0.1:{port}").parse().unwrap())
    }

    #[test]
    fn console_tails_cut_between_characters() {
        assert_eq!(tail("hello", 3), "llo");
        assert_eq!(tail("hi", 10), "hi");
        assert_eq!(tail("", 10), "");
        // 'é' is two bytes: a cut inside it moves to the next character.
        assert_eq!(tail("aé\u{fffd}b", 4), "\u{fffd}b");
        assert_eq!(tail("ééé", 3), "é");
        assert_eq!(tail("x", 0), "");
    }

    #[test]
    fn a_panic_inside_a_migration_is_answered_and_leaves_the_vm_serviceable() {
        if !require_kvm() {
            return;
        }
        let host = host();
        // The event callback runs inside the engine: a panic there unwinds through it.
        let e = host
            .migrate(&nowhere(), &mut |_| panic!("boom in the middle"))
            .unwrap_err();
        assert_eq!(e.cause, Cause::Internal, "{e:?}");
        assert!(e.message.contains("boom in the middle"), "{}", e.message);
        // It never paused the guest: the VM runs here, the only copy.
        assert_eq!(e.vm, Some(VmLocation::Source));
        let s = host.status();
        assert_eq!(s.state, Some(HostState::Running));
        let vm = s.vm.unwrap();
        assert!(vm.running && !vm.outcome_unknown, "{vm:?}");
        // Not stuck in Migrating: the next migration is attempted (and fails on its own merits).
        let e = host.migrate(&nowhere(), &mut |_| {}).unwrap_err();
        assert_eq!(e.cause, Cause::Unreachable, "{e:?}");
        assert_eq!(e.vm, Some(VmLocation::Source));
        assert!(matches!(
            host.cancel(),
            Err(ErrorReply {
                cause: Cause::NotMigrating,
                ..
            })
        ));
        host.stop().unwrap();
        assert_eq!(host.end(), Some(HostEnd::Stopped));
        assert_eq!(host.wait_end(), HostEnd::Stopped);
    }

    #[test]
    fn an_interrupted_postcopy_blocks_stop_and_new_migrations() {
        if !require_kvm() {
            return;
        }
        let host = host();
        lock(&host.state).interrupted = Some([7; 16]);
        lock(&host.state).outcome_unknown = true;
        let e = host.stop().unwrap_err();
        assert_eq!(e.cause, Cause::Refused);
        assert!(e.message.contains("--recover"), "{}", e.message);
        let e = host.migrate(&nowhere(), &mut |_| {}).unwrap_err();
        assert_eq!(e.cause, Cause::Refused);
        assert_eq!(e.vm, Some(VmLocation::PausedRecoverable));
        assert!(host.end().is_none());
    }
}
