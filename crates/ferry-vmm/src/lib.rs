//! Ferry's micro virtual machine monitor.
//!
//! A small KVM VMM with exactly what migration needs: guest RAM with huge pages where the host has
//! them (a hugetlb or shmem-THP memfd, or anonymous THP; a memfd lets a same-host peer take the
//! file descriptor; userfaultfd post-copy works on memfds and anonymous RAM), a multiboot v1
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
pub use memory::{GuestRam, RamBacking, RamBackingChoice, RamPlan, RamRequest, PAGE_SIZE};
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

    /// 2 MiB hugetlb pool pages set aside for a test; given back when dropped.
    #[derive(Debug)]
    pub struct HugetlbReservation {
        added: u64,
        _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    }

    const NR_HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

    /// Makes sure the 2 MiB hugetlb pool has `pages` free pages, growing it (as root) when it has
    /// not, for as long as the returned value lives. Returns None (the caller skips) when that is
    /// impossible, except under `CI=true`, where it is a failure.
    pub fn require_hugetlb(pages: u64) -> Option<HugetlbReservation> {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let available = || {
            crate::memory::HostMemory::read()
                .hugetlb
                .map_or(0, |p| p.available())
        };
        let have = available();
        if have >= pages {
            return Some(HugetlbReservation {
                added: 0,
                _one_at_a_time: guard,
            });
        }
        let added = pages - have;
        let grown = std::fs::read_to_string(NR_HUGEPAGES_2M)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .is_some_and(|n| std::fs::write(NR_HUGEPAGES_2M, (n + added).to_string()).is_ok());
        let reservation = HugetlbReservation {
            added: if grown { added } else { 0 },
            _one_at_a_time: guard,
        };
        if grown && available() >= pages {
            return Some(reservation);
        }
        drop(reservation); // gives back what was added
        let why =
            format!("cannot get {pages} free 2 MiB hugetlb pages (needs root and free memory)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but {why}: hugetlb tests must run in CI");
        }
        eprintln!("SKIP: {why}");
        None
    }

    impl Drop for HugetlbReservation {
        fn drop(&mut self) {
            if self.added == 0 {
                return;
            }
            if let Some(n) = std::fs::read_to_string(NR_HUGEPAGES_2M)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                let _ = std::fs::write(NR_HUGEPAGES_2M, n.saturating_sub(self.added).to_string());
            }
        }
    }
}
