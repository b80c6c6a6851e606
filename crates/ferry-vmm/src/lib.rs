//! Ferry's micro virtual machine monitor.
//!
//! A small KVM VMM with exactly what migration needs: guest RAM in a memfd (so a destination can
//! register it with userfaultfd, or a same-host peer can take the file descriptor), a multiboot v1
//! loader, a COM1 whose every byte is timestamped on the host, an exit port, vCPU threads that pause
//! and resume on demand, complete state save/restore, and KVM dirty logging with reusable buffers.

pub mod clock;
pub mod devices;
pub mod dirty;
mod error;
pub mod loader;
pub mod memory;
pub mod postcopy;
pub mod state;
pub mod uffd;
mod vcpu;
mod vm;

pub use error::VmmError;
pub use memory::{GuestRam, PAGE_SIZE};
pub use vm::{host_cpu_features, ExitReason, Vm, VmConfig};

/// Support for tests that need KVM.
pub mod testing {
    /// Whether KVM tests should run: true when /dev/kvm exists. When it does not, returns false
    /// (the caller skips) unless `CI=true`, where a missing /dev/kvm is a failure, not a skip.
    pub fn require_kvm() -> bool {
        if std::path::Path::new("/dev/kvm").exists() {
            return true;
        }
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but /dev/kvm is missing: KVM tests must run in CI");
        }
        eprintln!("SKIP: /dev/kvm not present");
        false
    }

    /// Whether userfaultfd tests should run: true when a userfaultfd opens. Under `CI=true` a
    /// missing userfaultfd is a failure, not a skip.
    pub fn require_userfaultfd() -> bool {
        match crate::uffd::Userfaultfd::open(crate::uffd::FEATURE_MISSING_SHMEM) {
            Ok(_) => true,
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true but userfaultfd cannot be opened ({e}): post-copy tests must run in CI")
            }
            Err(e) => {
                eprintln!("SKIP: userfaultfd unavailable: {e}");
                false
            }
        }
    }
}
