//! KVM's dirty log read into reusable [`DirtyBitmap`]s
//! (kvm-ioctls' `get_dirty_log` allocates a new vector per call, which we avoid on the hot path).

pub use ferry_model::bitmap::{AtomicBitmap, DirtyBitmap};
use kvm_bindings::kvm_dirty_log;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_iow_nr;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
vmm_sys_util::ioctl_iowr_nr!(
    KVM_CLEAR_DIRTY_LOG,
    KVMIO,
    0xc0,
    kvm_bindings::kvm_clear_dirty_log
);

/// Reads one slot's KVM dirty log into `buf` (resized once, then reused). Reading clears the log,
/// unless manual clearing is on ([`enable_manual_clear`]).
pub fn get_dirty_log(
    vm: &kvm_ioctls::VmFd,
    slot: u32,
    pages: u64,
    buf: &mut Vec<u64>,
) -> std::io::Result<()> {
    buf.resize(pages.div_ceil(64) as usize, 0);
    let log = kvm_dirty_log {
        slot,
        padding1: 0,
        __bindgen_anon_1: kvm_bindings::kvm_dirty_log__bindgen_ty_1 {
            dirty_bitmap: buf.as_mut_ptr().cast(),
        },
    };
    // SAFETY: `log` points at a buffer of ceil(pages/64) u64s, exactly the bitmap size KVM writes for a
    // slot of `pages` pages; the VM fd is valid for the call's duration.
    let ret = unsafe { ioctl_with_ref(vm, KVM_GET_DIRTY_LOG(), &log) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How this VM's dirty log is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearMode {
    /// Reading the log clears it and write-protects every page read (KVM without
    /// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2).
    OnRead,
    /// Reading only copies the log; [`clear_dirty_log`] clears and write-protects exactly the pages
    /// given, so pages left uncleared stay writable (and keep reading as written).
    Manual,
    /// As [`ClearMode::Manual`], and turning logging on write-protects nothing: every page reads as
    /// written until it is cleared (KVM_DIRTY_LOG_INITIALLY_SET).
    ManualInitiallySet,
}

impl ClearMode {
    /// Whether pages may be left writable while the log runs.
    pub fn manual(self) -> bool {
        self != ClearMode::OnRead
    }
}

/// Turns on manual clearing of the dirty log (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) if this KVM has
/// it, with KVM_DIRTY_LOG_INITIALLY_SET where offered: reading the log then neither clears it nor
/// write-protects pages; [`clear_dirty_log`] does that for exactly the pages given.
pub fn enable_manual_clear(vm: &kvm_ioctls::VmFd) -> ClearMode {
    let offered = vm
        .check_extension_raw(u64::from(kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2))
        .max(0) as u64;
    let manual = u64::from(kvm_bindings::KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE);
    let initially_set = u64::from(kvm_bindings::KVM_DIRTY_LOG_INITIALLY_SET);
    let enable = |flags: u64| {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            args: [flags, 0, 0, 0],
            ..Default::default()
        };
        offered & flags == flags && vm.enable_cap(&cap).is_ok()
    };
    if enable(manual | initially_set) {
        ClearMode::ManualInitiallySet
    } else if enable(manual) {
        ClearMode::Manual
    } else {
        ClearMode::OnRead
    }
}

/// Clears (and write-protects again) the pages of `slot` whose bits are set in `bitmap`, which
/// covers the whole slot of `pages` pages: after this, writes to them are logged anew. A page whose
/// log bit is already clear is left as it is (it is write-protected already).
pub fn clear_dirty_log(
    vm: &kvm_ioctls::VmFd,
    slot: u32,
    pages: u64,
    bitmap: &[u64],
) -> std::io::Result<()> {
    let num_pages = u32::try_from(pages).map_err(|_| std::io::Error::other("slot too large"))?;
    if bitmap.len() as u64 != pages.div_ceil(64) {
        return Err(std::io::Error::other("bitmap does not cover the slot"));
    }
    let log = kvm_bindings::kvm_clear_dirty_log {
        slot,
        num_pages,
        first_page: 0,
        __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
            // KVM only reads the bitmap (copy_from_user); the pointer is mutable by the ABI's type.
            dirty_bitmap: bitmap.as_ptr().cast_mut().cast(),
        },
    };
    // SAFETY: the bitmap holds ceil(pages/64) u64s (checked), the size KVM reads for `num_pages`
    // pages from page 0 of the slot, and KVM never writes it; the VM fd is valid for the call.
    let ret = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &log) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
