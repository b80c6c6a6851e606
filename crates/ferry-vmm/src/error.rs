use std::path::PathBuf;

/// Everything that can go wrong creating, loading, running or snapshotting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm is missing or not accessible.
    #[error("cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed")]
    Kvm {
        /// What we asked KVM to do.
        op: &'static str,
        /// The errno KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be created or mapped.
    #[error("cannot allocate {size} bytes of guest RAM")]
    Memory {
        /// Requested size.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The requested RAM size is not usable.
    #[error("invalid guest memory size {0} bytes (must be a multiple of 2 MiB, at least 4 MiB and at most 64 GiB)")]
    BadMemorySize(u64),
    /// The kernel image could not be read.
    #[error("cannot read kernel image {path}")]
    ImageRead {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image is not something we can boot.
    #[error("invalid kernel image: {0}")]
    BadImage(String),
    /// A guest address range falls outside guest RAM.
    #[error("guest address range {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfRange {
        /// Start address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Saved state does not fit this VM.
    #[error("incompatible VM state: {0}")]
    BadState(String),
    /// The VM uses CPU features this host lacks (a migration here would break the guest).
    #[error("this host's CPU lacks features the VM uses: {missing}")]
    CpuFeaturesMissing {
        /// The features, by name (`avx2, bmi2`).
        missing: String,
    },
    /// KVM here answers the guest's CPUID from the real CPU, so a feature cannot be hidden.
    #[error("KVM on this host does not apply a restricted CPUID table (the guest keeps features {kept}): its VMs run with the host's own CPU")]
    CpuNotRestrictable {
        /// Features the guest still sees beyond the requested set.
        kept: String,
    },
    /// The RAM backing asked for is not available on this host.
    #[error(transparent)]
    Backing(#[from] crate::memory::BackingError),
    /// An operation this VM's configuration cannot do.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// A vCPU thread could not be started or stopped.
    #[error("vCPU thread: {0}")]
    Thread(String),
}

impl VmmError {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
        move |source| VmmError::Kvm { op, source }
    }
}
