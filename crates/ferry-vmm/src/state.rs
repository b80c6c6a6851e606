//! Complete, serialisable VM state: every vCPU, the interrupt controllers, the PIT, the KVM clock and
//! the devices. It is what crosses the wire at switch-over, so it must miss nothing the guest can see.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

use crate::devices::{HeartbeatSnapshot, SerialSnapshot};

/// Architectural state of one vCPU.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// General registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87, SSE and extended state (covers what KVM_GET_FPU would).
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Every MSR KVM lists as saveable and returned, the TSC included.
    pub msrs: Vec<kvm_msr_entry>,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Runnable, halted, waiting for SIPI...
    pub mp_state: kvm_mp_state,
    /// DR0-DR7.
    pub debugregs: kvm_debugregs,
    /// TSC frequency the vCPU runs at, in kHz.
    pub tsc_khz: u32,
}

/// The whole VM except RAM.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Guest RAM size the state belongs to.
    pub memory: u64,
    /// The CPU features the guest saw (None in states saved before ferry recorded them).
    #[serde(default)]
    pub cpu: Option<ferry_model::cpu::CpuFeatures>,
    /// One entry per vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// PIC master, PIC slave, IOAPIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The in-kernel PIT.
    pub pit: kvm_pit_state2,
    /// The KVM clock.
    pub clock: kvm_clock_data,
    /// COM1 registers.
    pub serial: SerialSnapshot,
    /// The guest's last heartbeat, so the next host can time the pause.
    pub heartbeat: HeartbeatSnapshot,
}

/// MSR number of the time-stamp counter.
pub const MSR_IA32_TSC: u32 = 0x10;

impl VcpuState {
    /// The saved value of an MSR, if it was saved.
    pub fn msr(&self, index: u32) -> Option<u64> {
        self.msrs.iter().find(|m| m.index == index).map(|m| m.data)
    }
}
