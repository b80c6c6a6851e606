//! A ferry VM: KVM objects, RAM, devices and vCPU threads, with pause/resume and state save/restore.

use std::sync::Arc;
use std::time::Duration;

use ferry_model::cpu::{feature_list, CpuFeatures, FeatureWord, Register};
use kvm_bindings::{
    kvm_irqchip, kvm_msr_entry, kvm_pit_config, kvm_userspace_memory_region, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::devices::{Console, HeartbeatLog, HeartbeatSnapshot, PortBus};
use crate::dirty::{clear_dirty_log, enable_manual_clear, get_dirty_log, ClearMode, DirtyBitmap};
use crate::loader::{load_multiboot, BootInfo};
use crate::memory::{GuestRam, PAGE_SIZE};
use crate::state::{VcpuState, VmState};
use crate::vcpu::{RunControl, VcpuHandle};
use crate::VmmError;

pub use crate::vcpu::ExitReason;

/// Shape of a VM.
#[derive(Clone, Copy, Debug)]
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs (the first boots the kernel; the others wait for INIT/SIPI).
    pub vcpus: u8,
}

/// A KVM virtual machine.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    ram: Arc<GuestRam>,
    bus: Arc<PortBus>,
    ctl: Arc<RunControl>,
    vcpus: Vec<VcpuHandle>,
    msr_index: Vec<u32>,
    running: bool,
    dirty_logging: bool,
    /// Whether KVM leaves clearing the dirty log to us (see [`Vm::collect_dirty`]).
    clear_mode: ClearMode,
    slot_scratch: Vec<u64>,
    /// What this host's KVM offers a guest, as KVM lists it (before any restriction).
    supported_cpuid: kvm_bindings::CpuId,
    /// The CPU features this host gives an unrestricted guest (see [`host_cpu_features`]).
    host_cpu: CpuFeatures,
    /// The CPU features the guest sees now (the host's, or a baseline's).
    cpu: CpuFeatures,
}

/// Reads the feature words out of KVM's CPUID entries.
fn features_of(cpuid: &kvm_bindings::CpuId) -> CpuFeatures {
    let entries: Vec<(u32, u32, [u32; 4])> = cpuid
        .as_slice()
        .iter()
        .map(|e| (e.function, e.index, [e.eax, e.ebx, e.ecx, e.edx]))
        .collect();
    CpuFeatures::from_cpuid(&entries)
}

/// The CPU features a guest on this host gets (what a host publishes to its cluster): the CPUID
/// table KVM holds for a fresh vCPU given everything KVM supports, read back. On standard KVM that
/// is KVM's supported set; some platforms (this nested, partly emulated one among them) answer
/// with the real CPU's table whatever the VMM sets, and then that is what guests see.
pub fn host_cpu_features() -> Result<CpuFeatures, VmmError> {
    let kvm = Kvm::new().map_err(VmmError::KvmOpen)?;
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::kvm("GET_SUPPORTED_CPUID"))?;
    let fd = kvm.create_vm().map_err(VmmError::kvm("CREATE_VM"))?;
    let vcpu = fd.create_vcpu(0).map_err(VmmError::kvm("CREATE_VCPU"))?;
    applied_features(&vcpu, &vcpu_cpuid(&cpuid, 0, None))
}

/// Sets `cpuid` on `vcpu` and returns the features KVM then holds for it.
fn applied_features(vcpu: &VcpuFd, cpuid: &kvm_bindings::CpuId) -> Result<CpuFeatures, VmmError> {
    vcpu.set_cpuid2(cpuid)
        .map_err(VmmError::kvm("SET_CPUID2"))?;
    let held = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(VmmError::kvm("GET_CPUID2"))?;
    Ok(features_of(&held))
}

/// `cpuid` for vCPU `id`: its APIC ids set, and every feature word outside `allowed` cleared.
fn vcpu_cpuid(
    supported: &kvm_bindings::CpuId,
    id: u32,
    allowed: Option<&CpuFeatures>,
) -> kvm_bindings::CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ebx = (e.ebx & 0x00ff_ffff) | (id << 24);
        }
        if e.function == 0xb || e.function == 0x1f {
            e.edx = id;
        }
        let Some(allowed) = allowed else { continue };
        for word in FeatureWord::ALL {
            let (f, i, reg) = word.location();
            if f != e.function || i != e.index {
                continue;
            }
            // Bits that are guest state (OSXSAVE, the hypervisor bit) are never in a feature set:
            // they stay as KVM has them.
            let mask = allowed.word(word) | word.dynamic_bits();
            match reg {
                Register::Eax => e.eax &= mask,
                Register::Ebx => e.ebx &= mask,
                Register::Ecx => e.ecx &= mask,
                Register::Edx => e.edx &= mask,
            }
        }
    }
    cpuid
}

impl Vm {
    /// Creates a VM with fresh zeroed RAM; nothing runs until [`Vm::resume`].
    pub fn new(cfg: VmConfig, console: Console) -> Result<Self, VmmError> {
        Self::with_ram(GuestRam::new(cfg.memory)?, cfg.vcpus, console)
    }

    /// Creates a VM around existing RAM (a same-host handover, or RAM filled by a migration).
    pub fn with_ram(ram: GuestRam, vcpus: u8, console: Console) -> Result<Self, VmmError> {
        if vcpus == 0 {
            return Err(VmmError::BadState("a VM needs at least one vCPU".into()));
        }
        let kvm = Kvm::new().map_err(VmmError::KvmOpen)?;
        let fd = kvm.create_vm().map_err(VmmError::kvm("CREATE_VM"))?;
        let ram = Arc::new(ram);
        // Memory first: SET_USER_MEMORY_REGION is ~100x slower once the irqchip exists.
        set_slots(&fd, &ram, false)?;
        let clear_mode = enable_manual_clear(&fd);
        fd.set_tss_address(0xfffb_d000)
            .map_err(VmmError::kvm("SET_TSS_ADDR"))?;
        fd.create_irq_chip()
            .map_err(VmmError::kvm("CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmmError::kvm("CREATE_PIT2"))?;
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::kvm("GET_SUPPORTED_CPUID"))?;
        let msr_index = kvm
            .get_msr_index_list()
            .map_err(VmmError::kvm("GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        let bus = Arc::new(PortBus::new(console));
        let ctl = Arc::new(RunControl::default());
        let mut handles = Vec::with_capacity(vcpus as usize);
        let mut host_cpu = CpuFeatures::default();
        for id in 0..vcpus {
            let vcpu = fd
                .create_vcpu(u64::from(id))
                .map_err(VmmError::kvm("CREATE_VCPU"))?;
            let applied = applied_features(&vcpu, &vcpu_cpuid(&cpuid, u32::from(id), None))?;
            if id == 0 {
                host_cpu = applied;
            }
            let id = u64::from(id);
            handles.push(VcpuHandle::spawn(vcpu, id, bus.clone(), ctl.clone())?);
        }
        ctl.set_paused(true);
        Ok(Self {
            fd,
            ram,
            bus,
            ctl,
            vcpus: handles,
            msr_index,
            running: false,
            dirty_logging: false,
            clear_mode,
            slot_scratch: Vec::new(),
            cpu: host_cpu,
            host_cpu,
            supported_cpuid: cpuid,
        })
    }

    /// The CPU features the guest sees.
    pub fn cpu_features(&self) -> CpuFeatures {
        self.cpu
    }

    /// The CPU features in vCPU 0's CPUID table as KVM holds it (read back with KVM_GET_CPUID2).
    pub fn applied_cpu_features(&self) -> Result<CpuFeatures, VmmError> {
        let cpuid = self
            .paused_vcpu(0)?
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(VmmError::kvm("GET_CPUID2"))?;
        Ok(features_of(&cpuid))
    }

    /// Restricts the guest's CPU to `features` (a cluster baseline, or the features a migrating VM
    /// had on its source), before it first runs. Fails, naming them, if this host lacks any of
    /// them, and fails too if KVM does not hold the restricted table afterwards (a platform that
    /// answers CPUID from the real CPU cannot hide a feature from its guests).
    pub fn restrict_cpu(&mut self, features: &CpuFeatures) -> Result<(), VmmError> {
        let missing = features.missing_on(&self.host_cpu);
        if !missing.is_empty() {
            return Err(VmmError::CpuFeaturesMissing {
                missing: feature_list(&missing),
            });
        }
        for i in 0..self.vcpus.len() {
            let id = u32::try_from(i).map_err(|_| VmmError::BadState("vCPU id".into()))?;
            let cpuid = vcpu_cpuid(&self.supported_cpuid, id, Some(features));
            let held = applied_features(self.paused_vcpu(i)?, &cpuid)?;
            if held != *features {
                self.cpu = held;
                return Err(VmmError::CpuNotRestrictable {
                    kept: feature_list(&held.missing_on(features)),
                });
            }
        }
        self.cpu = *features;
        Ok(())
    }

    /// Loads a multiboot v1 image and points the boot vCPU at it (32-bit protected mode, per spec).
    pub fn boot_multiboot(&mut self, image: &[u8]) -> Result<BootInfo, VmmError> {
        let info = load_multiboot(&self.ram, image)?;
        let vcpu = self.paused_vcpu(0)?;
        let mut sregs = vcpu.get_sregs().map_err(VmmError::kvm("GET_SREGS"))?;
        let code = kvm_bindings::kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x10,
            type_: 0xb,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_bindings::kvm_segment {
            selector: 0x18,
            type_: 0x3,
            ..code
        };
        sregs.cs = code;
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.cr0 = 0x11; // PE | ET: protected mode, paging off
        sregs.cr4 = 0;
        sregs.efer = 0;
        vcpu.set_sregs(&sregs).map_err(VmmError::kvm("SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: u64::from(info.entry),
            rax: u64::from(crate::loader::multiboot::BOOTLOADER_MAGIC),
            rbx: u64::from(info.info_addr),
            rflags: 0x2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(VmmError::kvm("SET_REGS"))?;
        Ok(info)
    }

    fn paused_vcpu(&self, i: usize) -> Result<&VcpuFd, VmmError> {
        self.vcpus
            .get(i)
            .and_then(|v| v.fd.as_ref())
            .ok_or_else(|| {
                VmmError::BadState("vCPU state can only be touched while the VM is paused".into())
            })
    }

    /// Guest RAM.
    pub fn ram(&self) -> &Arc<GuestRam> {
        &self.ram
    }

    /// The guest's heartbeat log.
    pub fn heartbeats(&self) -> Arc<std::sync::Mutex<HeartbeatLog>> {
        self.bus
            .serial
            .lock()
            .map(|s| s.console().heartbeats.clone())
            .unwrap_or_default()
    }

    /// Console text written by the guest so far (heartbeats removed).
    pub fn console_text(&self) -> String {
        self.bus
            .serial
            .lock()
            .ok()
            .and_then(|s| {
                s.console()
                    .text
                    .lock()
                    .ok()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
            })
            .unwrap_or_default()
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> u8 {
        self.vcpus.len() as u8
    }

    /// Makes the vCPUs sit out `percent` of their time (auto-converge); 0 turns it off.
    pub fn set_throttle_percent(&self, percent: u8) {
        self.ctl
            .throttle
            .store(percent.min(99), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the vCPUs are running.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Starts or continues all vCPUs.
    pub fn resume(&mut self) -> Result<(), VmmError> {
        if self.ctl.exit_reason().is_some() {
            return Err(VmmError::BadState(
                "the guest has stopped; it cannot be resumed".into(),
            ));
        }
        self.ctl.set_paused(false);
        for v in &mut self.vcpus {
            v.resume()?;
        }
        self.running = true;
        Ok(())
    }

    /// Stops all vCPUs and takes their fds back; returns once none is inside KVM_RUN.
    pub fn pause(&mut self) -> Result<(), VmmError> {
        self.ctl.set_paused(true);
        for v in &mut self.vcpus {
            v.pause()?;
        }
        self.running = false;
        Ok(())
    }

    /// Why the guest stopped, if it did.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.ctl.exit_reason()
    }

    /// Waits up to `timeout` for the guest to stop on its own.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitReason> {
        self.ctl.wait_exit(timeout)
    }

    /// Saves the complete state. The VM must be paused.
    pub fn save_state(&self) -> Result<VmState, VmmError> {
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for i in 0..self.vcpus.len() {
            vcpus.push(self.save_vcpu(self.paused_vcpu(i)?)?);
        }
        let mut irqchips = Vec::with_capacity(3);
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map_err(VmmError::kvm("GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        let serial = self
            .bus
            .serial
            .lock()
            .map_err(|_| VmmError::BadState("serial lock poisoned".into()))?;
        Ok(VmState {
            memory: self.ram.size(),
            cpu: Some(self.cpu),
            vcpus,
            irqchips,
            pit: self.fd.get_pit2().map_err(VmmError::kvm("GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(VmmError::kvm("GET_CLOCK"))?,
            serial: serial.snapshot(),
            heartbeat: serial
                .console()
                .heartbeats
                .lock()
                .map(|h| h.snapshot())
                .unwrap_or_default(),
        })
    }

    fn save_vcpu(&self, v: &VcpuFd) -> Result<VcpuState, VmmError> {
        // MP_STATE first: KVM may move pending events into the state as it reads it.
        let mp_state = v.get_mp_state().map_err(VmmError::kvm("GET_MP_STATE"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msr_index
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|e| VmmError::BadState(format!("MSR list: {e:?}")))?;
        let n = v.get_msrs(&mut msrs).map_err(VmmError::kvm("GET_MSRS"))?;
        Ok(VcpuState {
            regs: v.get_regs().map_err(VmmError::kvm("GET_REGS"))?,
            sregs: v.get_sregs().map_err(VmmError::kvm("GET_SREGS"))?,
            xsave: v.get_xsave().map_err(VmmError::kvm("GET_XSAVE"))?,
            xcrs: v.get_xcrs().map_err(VmmError::kvm("GET_XCRS"))?,
            msrs: msrs.as_slice()[..n].to_vec(),
            lapic: v.get_lapic().map_err(VmmError::kvm("GET_LAPIC"))?,
            events: v
                .get_vcpu_events()
                .map_err(VmmError::kvm("GET_VCPU_EVENTS"))?,
            mp_state,
            debugregs: v.get_debug_regs().map_err(VmmError::kvm("GET_DEBUGREGS"))?,
            tsc_khz: v.get_tsc_khz().map_err(VmmError::kvm("GET_TSC_KHZ"))?,
        })
    }

    /// Restores state saved by [`Vm::save_state`] (on this or another host). The VM must be paused.
    pub fn restore_state(&mut self, state: &VmState) -> Result<(), VmmError> {
        if state.memory != self.ram.size() {
            return Err(VmmError::BadState(format!(
                "state is for {} bytes of RAM, this VM has {}",
                state.memory,
                self.ram.size()
            )));
        }
        if state.vcpus.len() != self.vcpus.len() {
            return Err(VmmError::BadState(format!(
                "state has {} vCPUs, this VM has {}",
                state.vcpus.len(),
                self.vcpus.len()
            )));
        }
        // The guest must keep seeing the CPU it had: the same features, and none this host lacks.
        if let Some(cpu) = &state.cpu {
            if *cpu != self.cpu {
                self.restrict_cpu(cpu)?;
            }
        }
        for (i, s) in state.vcpus.iter().enumerate() {
            let v = self.paused_vcpu(i)?;
            // Order matters: sregs (incl. APIC base) before LAPIC, MSRs after sregs, events and
            // MP state last so nothing earlier overwrites them.
            v.set_sregs(&s.sregs).map_err(VmmError::kvm("SET_SREGS"))?;
            v.set_regs(&s.regs).map_err(VmmError::kvm("SET_REGS"))?;
            // SAFETY: `s.xsave` is a complete kvm_xsave saved by KVM_GET_XSAVE (4 KiB, the legacy size
            // this VM uses, since we never enable XSAVE2), so KVM reads no more than the struct holds.
            unsafe { v.set_xsave(&s.xsave) }.map_err(VmmError::kvm("SET_XSAVE"))?;
            v.set_xcrs(&s.xcrs).map_err(VmmError::kvm("SET_XCRS"))?;
            if s.tsc_khz != 0 {
                let _ = v.set_tsc_khz(s.tsc_khz); // unsupported scaling is not fatal: same host kind
            }
            let msrs = Msrs::from_entries(&s.msrs)
                .map_err(|e| VmmError::BadState(format!("MSRs: {e:?}")))?;
            let n = v.set_msrs(&msrs).map_err(VmmError::kvm("SET_MSRS"))?;
            if n != s.msrs.len() {
                let bad = s.msrs.get(n).map(|m| m.index).unwrap_or(0);
                return Err(VmmError::BadState(format!("KVM refused MSR {bad:#x}")));
            }
            v.set_lapic(&s.lapic).map_err(VmmError::kvm("SET_LAPIC"))?;
            v.set_debug_regs(&s.debugregs)
                .map_err(VmmError::kvm("SET_DEBUGREGS"))?;
            v.set_vcpu_events(&s.events)
                .map_err(VmmError::kvm("SET_VCPU_EVENTS"))?;
            v.set_mp_state(s.mp_state)
                .map_err(VmmError::kvm("SET_MP_STATE"))?;
        }
        for chip in &state.irqchips {
            self.fd
                .set_irqchip(chip)
                .map_err(VmmError::kvm("SET_IRQCHIP"))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(VmmError::kvm("SET_PIT2"))?;
        let mut clock = state.clock;
        clock.flags = 0; // the absolute clock value is what we carry; let KVM pick its own flags
        self.fd
            .set_clock(&clock)
            .map_err(VmmError::kvm("SET_CLOCK"))?;
        let mut serial = self
            .bus
            .serial
            .lock()
            .map_err(|_| VmmError::BadState("serial lock poisoned".into()))?;
        serial.restore(&state.serial).map_err(VmmError::BadState)?;
        Ok(())
    }

    /// Continues the heartbeat log from a migration source's last heartbeat.
    pub fn continue_heartbeats(&self, from: HeartbeatSnapshot) {
        if let Ok(mut log) = self.heartbeats().lock() {
            *log = HeartbeatLog::continuing(from);
        }
    }

    /// Turns KVM dirty logging on or off for all of RAM. Turned on, every page is armed: only
    /// writes from now on show (where KVM marks pages initially written,
    /// [`ClearMode::ManualInitiallySet`], that takes one clear of the whole log; see
    /// [`Vm::start_dirty_log_unprotected`] for leaving them so).
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), VmmError> {
        let was = self.dirty_logging;
        self.switch_dirty_logging(on)?;
        if on && !was && self.clear_mode == ClearMode::ManualInitiallySet {
            let mut scratch = DirtyBitmap::new(self.ram.pages());
            self.read_dirty_log(&mut scratch, Rearm::All)?;
        }
        Ok(())
    }

    /// Turns KVM dirty logging on or off, as KVM does it.
    fn switch_dirty_logging(&mut self, on: bool) -> Result<(), VmmError> {
        if on != self.dirty_logging {
            set_slots(&self.fd, &self.ram, on)?;
            self.dirty_logging = on;
        }
        Ok(())
    }

    /// ORs the pages written since the last call into `into` (and clears KVM's log).
    ///
    /// With manual clearing (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, used when KVM has it) reading the
    /// log only copies it, and KVM_CLEAR_DIRTY_LOG then write-protects exactly the pages read as
    /// dirty, skipped for a slot with none: classic reading walks and re-protects every slot.
    pub fn collect_dirty(&mut self, into: &mut DirtyBitmap) -> Result<(), VmmError> {
        self.read_dirty_log(into, Rearm::All)
    }

    /// Like [`Vm::collect_dirty`], but the pages in `keep` are not write-protected again: they
    /// stay writable, so the guest writes them at full speed, and they keep reading as written
    /// until [`Vm::protect_pages`] (or a later collect without them) arms them. Without manual
    /// clearing ([`Vm::can_keep_writable`] false) every page read is re-armed, as by
    /// [`Vm::collect_dirty`].
    pub fn collect_dirty_keep(
        &mut self,
        into: &mut DirtyBitmap,
        keep: &DirtyBitmap,
    ) -> Result<(), VmmError> {
        self.read_dirty_log(into, Rearm::Except(keep))
    }

    /// Like [`Vm::collect_dirty`], but with manual clearing leaves KVM's log as it is: nothing is
    /// write-protected again. For the last read of a migration, inside the pause (with a 512 MiB
    /// working set the clear took about 0.2 ms there). Turn logging off and on before relying on
    /// the log again.
    pub fn collect_dirty_final(&mut self, into: &mut DirtyBitmap) -> Result<(), VmmError> {
        self.read_dirty_log(into, Rearm::None)
    }

    /// Turns dirty logging on (again) without write-protecting any page, where KVM can
    /// (KVM_DIRTY_LOG_INITIALLY_SET): every page then reads as written and stays writable until
    /// [`Vm::protect_pages`] arms it. Returns false, having changed nothing, where KVM cannot.
    pub fn start_dirty_log_unprotected(&mut self) -> Result<bool, VmmError> {
        if self.clear_mode != ClearMode::ManualInitiallySet {
            return Ok(false);
        }
        self.switch_dirty_logging(false)?;
        self.switch_dirty_logging(true)?;
        Ok(true)
    }

    /// Arms the log for `pages`: clears their bits and write-protects them, so that from now on
    /// only new writes show. Pages whose bit is clear are already armed and stay as they are.
    /// Without manual clearing this is a no-op: every page read is armed by the read itself.
    pub fn protect_pages(&mut self, pages: &DirtyBitmap) -> Result<(), VmmError> {
        if !self.dirty_logging {
            return Err(VmmError::BadState("dirty logging is off".into()));
        }
        if !self.clear_mode.manual() {
            return Ok(());
        }
        let page = PAGE_SIZE as u64;
        for slot in self.ram.slots() {
            let n = slot.len / page;
            let words = pages.words_at(slot.offset / page, n);
            if words.iter().all(|&w| w == 0) {
                continue;
            }
            self.slot_scratch.clear();
            self.slot_scratch.extend_from_slice(words);
            self.slot_scratch.resize(n.div_ceil(64) as usize, 0);
            clear_dirty_log(&self.fd, slot.id, n, &self.slot_scratch)
                .map_err(|e| VmmError::BadState(format!("KVM_CLEAR_DIRTY_LOG: {e}")))?;
        }
        Ok(())
    }

    /// ORs every slot's log into `into`; with manual clearing, `rearm` says which of the pages read
    /// are cleared (and write-protected) again (without it, reading clears the log anyway).
    fn read_dirty_log(&mut self, into: &mut DirtyBitmap, rearm: Rearm<'_>) -> Result<(), VmmError> {
        if !self.dirty_logging {
            return Err(VmmError::BadState("dirty logging is off".into()));
        }
        let page = PAGE_SIZE as u64;
        for slot in self.ram.slots() {
            let pages = slot.len / page;
            let first = slot.offset / page;
            get_dirty_log(&self.fd, slot.id, pages, &mut self.slot_scratch)
                .map_err(|e| VmmError::BadState(format!("KVM_GET_DIRTY_LOG: {e}")))?;
            into.or_words_at(first, &self.slot_scratch);
            if !self.clear_mode.manual() {
                continue;
            }
            match rearm {
                Rearm::None => continue,
                Rearm::All => {}
                Rearm::Except(keep) => {
                    for (w, k) in self
                        .slot_scratch
                        .iter_mut()
                        .zip(keep.words_at(first, pages))
                    {
                        *w &= !k;
                    }
                }
            }
            if self.slot_scratch.iter().any(|&w| w != 0) {
                clear_dirty_log(&self.fd, slot.id, pages, &self.slot_scratch)
                    .map_err(|e| VmmError::BadState(format!("KVM_CLEAR_DIRTY_LOG: {e}")))?;
            }
        }
        Ok(())
    }

    /// Whether the dirty log is cleared manually (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
    pub fn manual_dirty_clear(&self) -> bool {
        self.clear_mode.manual()
    }

    /// Whether pages can be left writable while the dirty log runs ([`Vm::collect_dirty_keep`]).
    pub fn can_keep_writable(&self) -> bool {
        self.clear_mode.manual()
    }

    /// How this VM's dirty log is cleared.
    pub fn dirty_clear_mode(&self) -> ClearMode {
        self.clear_mode
    }
}

/// Which pages a read of the dirty log arms again.
#[derive(Clone, Copy)]
enum Rearm<'a> {
    /// Every page read as written.
    All,
    /// Every page read as written except these.
    Except(&'a DirtyBitmap),
    /// None (the last read of a migration).
    None,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.pause();
    }
}

fn set_slots(fd: &VmFd, ram: &GuestRam, log_dirty: bool) -> Result<(), VmmError> {
    for s in ram.slots() {
        let region = kvm_userspace_memory_region {
            slot: s.id,
            flags: if log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: s.gpa,
            memory_size: s.len,
            userspace_addr: ram.host_base() as u64 + s.offset,
        };
        // SAFETY: the host range [base+offset, +len) lies inside `ram`'s live mapping, which the Vm
        // keeps alive (Arc) for as long as the VM fd, and so as long as KVM may touch it.
        unsafe { fd.set_user_memory_region(region) }
            .map_err(VmmError::kvm("SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
