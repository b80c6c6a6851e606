//! CPU feature sets: what a host's KVM offers a guest, what a VM was started with, the baseline a
//! cluster can run everywhere, and the check that refuses a migration to a host lacking a feature
//! before any page moves.
//!
//! A feature is one bit of a CPUID register that advertises an instruction-set extension. Only
//! registers made of such bits are kept ([`FeatureWord`]); bits that describe the running state
//! rather than the CPU (OSXSAVE, OSPKE follow CR4) are left out of comparisons.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A CPUID output register made of feature bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FeatureWord {
    /// Leaf 1, ECX.
    Leaf1Ecx,
    /// Leaf 1, EDX.
    Leaf1Edx,
    /// Leaf 7 subleaf 0, EBX.
    Leaf7Ebx,
    /// Leaf 7 subleaf 0, ECX.
    Leaf7Ecx,
    /// Leaf 7 subleaf 0, EDX.
    Leaf7Edx,
    /// Leaf 0xd subleaf 1, EAX (XSAVEOPT, XSAVEC, XGETBV1, XSAVES).
    LeafDSub1Eax,
    /// Leaf 0x8000_0001, ECX.
    Ext1Ecx,
    /// Leaf 0x8000_0001, EDX.
    Ext1Edx,
}

impl FeatureWord {
    /// Every word, in storage order.
    pub const ALL: [FeatureWord; 8] = [
        FeatureWord::Leaf1Ecx,
        FeatureWord::Leaf1Edx,
        FeatureWord::Leaf7Ebx,
        FeatureWord::Leaf7Ecx,
        FeatureWord::Leaf7Edx,
        FeatureWord::LeafDSub1Eax,
        FeatureWord::Ext1Ecx,
        FeatureWord::Ext1Edx,
    ];

    /// The CPUID function, subleaf index and register (0 = EAX .. 3 = EDX) this word is read from.
    pub fn location(self) -> (u32, u32, Register) {
        match self {
            FeatureWord::Leaf1Ecx => (1, 0, Register::Ecx),
            FeatureWord::Leaf1Edx => (1, 0, Register::Edx),
            FeatureWord::Leaf7Ebx => (7, 0, Register::Ebx),
            FeatureWord::Leaf7Ecx => (7, 0, Register::Ecx),
            FeatureWord::Leaf7Edx => (7, 0, Register::Edx),
            FeatureWord::LeafDSub1Eax => (0xd, 1, Register::Eax),
            FeatureWord::Ext1Ecx => (0x8000_0001, 0, Register::Ecx),
            FeatureWord::Ext1Edx => (0x8000_0001, 0, Register::Edx),
        }
    }

    /// Bits of this word that reflect guest state, not CPU capability, and are never compared.
    pub fn dynamic_bits(self) -> u32 {
        match self {
            // OSXSAVE (bit 27) mirrors CR4.OSXSAVE; the hypervisor bit (31) is ours to set.
            FeatureWord::Leaf1Ecx => (1 << 27) | (1 << 31),
            // OSPKE (bit 4) mirrors CR4.PKE.
            FeatureWord::Leaf7Ecx => 1 << 4,
            _ => 0,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One of the four CPUID output registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// Named features, for messages: (word, bit, name). Bits without a name are still compared and
/// are shown as `leaf1.ecx[5]`-style names.
const NAMES: &[(FeatureWord, u8, &str)] = &[
    (FeatureWord::Leaf1Ecx, 0, "sse3"),
    (FeatureWord::Leaf1Ecx, 1, "pclmulqdq"),
    (FeatureWord::Leaf1Ecx, 9, "ssse3"),
    (FeatureWord::Leaf1Ecx, 12, "fma"),
    (FeatureWord::Leaf1Ecx, 13, "cx16"),
    (FeatureWord::Leaf1Ecx, 19, "sse4.1"),
    (FeatureWord::Leaf1Ecx, 20, "sse4.2"),
    (FeatureWord::Leaf1Ecx, 21, "x2apic"),
    (FeatureWord::Leaf1Ecx, 22, "movbe"),
    (FeatureWord::Leaf1Ecx, 23, "popcnt"),
    (FeatureWord::Leaf1Ecx, 25, "aes"),
    (FeatureWord::Leaf1Ecx, 26, "xsave"),
    (FeatureWord::Leaf1Ecx, 28, "avx"),
    (FeatureWord::Leaf1Ecx, 29, "f16c"),
    (FeatureWord::Leaf1Ecx, 30, "rdrand"),
    (FeatureWord::Leaf1Edx, 0, "fpu"),
    (FeatureWord::Leaf1Edx, 4, "tsc"),
    (FeatureWord::Leaf1Edx, 8, "cx8"),
    (FeatureWord::Leaf1Edx, 15, "cmov"),
    (FeatureWord::Leaf1Edx, 23, "mmx"),
    (FeatureWord::Leaf1Edx, 24, "fxsr"),
    (FeatureWord::Leaf1Edx, 25, "sse"),
    (FeatureWord::Leaf1Edx, 26, "sse2"),
    (FeatureWord::Leaf7Ebx, 0, "fsgsbase"),
    (FeatureWord::Leaf7Ebx, 3, "bmi1"),
    (FeatureWord::Leaf7Ebx, 5, "avx2"),
    (FeatureWord::Leaf7Ebx, 7, "smep"),
    (FeatureWord::Leaf7Ebx, 8, "bmi2"),
    (FeatureWord::Leaf7Ebx, 9, "erms"),
    (FeatureWord::Leaf7Ebx, 10, "invpcid"),
    (FeatureWord::Leaf7Ebx, 16, "avx512f"),
    (FeatureWord::Leaf7Ebx, 17, "avx512dq"),
    (FeatureWord::Leaf7Ebx, 18, "rdseed"),
    (FeatureWord::Leaf7Ebx, 19, "adx"),
    (FeatureWord::Leaf7Ebx, 20, "smap"),
    (FeatureWord::Leaf7Ebx, 23, "clflushopt"),
    (FeatureWord::Leaf7Ebx, 24, "clwb"),
    (FeatureWord::Leaf7Ebx, 29, "sha"),
    (FeatureWord::Leaf7Ebx, 30, "avx512bw"),
    (FeatureWord::Leaf7Ebx, 31, "avx512vl"),
    (FeatureWord::Leaf7Ecx, 1, "avx512vbmi"),
    (FeatureWord::Leaf7Ecx, 2, "umip"),
    (FeatureWord::Leaf7Ecx, 3, "pku"),
    (FeatureWord::Leaf7Ecx, 8, "gfni"),
    (FeatureWord::Leaf7Ecx, 9, "vaes"),
    (FeatureWord::Leaf7Ecx, 10, "vpclmulqdq"),
    (FeatureWord::Leaf7Ecx, 22, "rdpid"),
    (FeatureWord::Leaf7Edx, 4, "fsrm"),
    (FeatureWord::LeafDSub1Eax, 0, "xsaveopt"),
    (FeatureWord::LeafDSub1Eax, 1, "xsavec"),
    (FeatureWord::LeafDSub1Eax, 3, "xsaves"),
    (FeatureWord::Ext1Ecx, 0, "lahf_lm"),
    (FeatureWord::Ext1Ecx, 5, "lzcnt"),
    (FeatureWord::Ext1Ecx, 8, "prefetchw"),
    (FeatureWord::Ext1Edx, 11, "syscall"),
    (FeatureWord::Ext1Edx, 20, "nx"),
    (FeatureWord::Ext1Edx, 26, "pdpe1gb"),
    (FeatureWord::Ext1Edx, 27, "rdtscp"),
    (FeatureWord::Ext1Edx, 29, "lm"),
];

/// A set of CPU features: one 32-bit mask per [`FeatureWord`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuFeatures {
    words: [u32; 8],
}

/// One feature bit, named when the table knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// The register it lives in.
    pub word: FeatureWord,
    /// Its bit.
    pub bit: u8,
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match NAMES
            .iter()
            .find(|(w, b, _)| *w == self.word && *b == self.bit)
        {
            Some((_, _, name)) => f.write_str(name),
            None => write!(f, "{:?}[{}]", self.word, self.bit),
        }
    }
}

impl CpuFeatures {
    /// Builds a set from CPUID entries `(function, index, eax, ebx, ecx, edx)`, as KVM lists them;
    /// entries for other leaves are ignored, missing leaves count as no features.
    pub fn from_cpuid<'a>(
        entries: impl IntoIterator<Item = &'a (u32, u32, [u32; 4])>,
    ) -> CpuFeatures {
        let mut set = CpuFeatures::default();
        for (function, index, regs) in entries {
            for word in FeatureWord::ALL {
                let (f, i, reg) = word.location();
                if f == *function && i == *index {
                    set.words[word.index()] = regs[reg as usize] & !word.dynamic_bits();
                }
            }
        }
        set
    }

    /// The mask of one word.
    pub fn word(&self, word: FeatureWord) -> u32 {
        self.words[word.index()]
    }

    /// Replaces one word's mask (its state bits are dropped, as in [`CpuFeatures::from_cpuid`]).
    pub fn with_word(mut self, word: FeatureWord, mask: u32) -> CpuFeatures {
        self.words[word.index()] = mask & !word.dynamic_bits();
        self
    }

    /// The set without `feature`.
    pub fn without(self, feature: Feature) -> CpuFeatures {
        let mask = self.word(feature.word) & !(1u32 << feature.bit);
        self.with_word(feature.word, mask)
    }

    /// Features in both sets: what a VM may use to run on every host of a cluster.
    pub fn intersect(&self, other: &CpuFeatures) -> CpuFeatures {
        let mut out = *self;
        for (o, b) in out.words.iter_mut().zip(other.words) {
            *o &= b;
        }
        out
    }

    /// The baseline of many hosts (their intersection); `None` for no hosts.
    pub fn baseline<'a>(hosts: impl IntoIterator<Item = &'a CpuFeatures>) -> Option<CpuFeatures> {
        hosts.into_iter().fold(None, |acc, h| {
            Some(match acc {
                None => *h,
                Some(a) => a.intersect(h),
            })
        })
    }

    /// Features in `self` that `host` lacks: a VM using `self` cannot move to `host` if non-empty.
    pub fn missing_on(&self, host: &CpuFeatures) -> Vec<Feature> {
        let mut out = Vec::new();
        for word in FeatureWord::ALL {
            let lacking = self.word(word) & !host.word(word);
            for bit in 0..32u8 {
                if lacking & (1 << bit) != 0 {
                    out.push(Feature { word, bit });
                }
            }
        }
        out
    }

    /// Whether every feature of `self` is in `host`.
    pub fn runs_on(&self, host: &CpuFeatures) -> bool {
        self.missing_on(host).is_empty()
    }

    /// Number of feature bits set.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }
}

/// Formats a list of features as `avx2, bmi2`.
pub fn feature_list(features: &[Feature]) -> String {
    features
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(leaf1_ecx: u32, leaf7_ebx: u32) -> CpuFeatures {
        CpuFeatures::from_cpuid(&[(1, 0, [0, 0, leaf1_ecx, 0]), (7, 0, [0, leaf7_ebx, 0, 0])])
    }

    #[test]
    fn a_vm_runs_only_where_every_feature_is_present() {
        let avx2_host = host(1 << 28, (1 << 5) | (1 << 8));
        let old_host = host(1 << 28, 0);
        assert!(old_host.runs_on(&avx2_host));
        let missing = avx2_host.missing_on(&old_host);
        assert_eq!(feature_list(&missing), "avx2, bmi2");
        assert!(!avx2_host.runs_on(&old_host));
        let base = CpuFeatures::baseline([&avx2_host, &old_host]).unwrap();
        assert_eq!(base, old_host);
        assert!(base.runs_on(&avx2_host) && base.runs_on(&old_host));
        assert_eq!(CpuFeatures::baseline([]), None);
    }

    #[test]
    fn state_bits_are_not_features() {
        // OSXSAVE and the hypervisor bit differ between a running guest and a host: never compared.
        let a = host((1 << 27) | (1 << 31) | 1, 0);
        let b = host(1, 0);
        assert_eq!(a, b);
        assert_eq!(a.count(), 1);
    }

    #[test]
    fn subleaves_and_unknown_leaves() {
        let set = CpuFeatures::from_cpuid(&[
            (0xd, 0, [0xffff_ffff; 4]),
            (0xd, 1, [0b1011, 0, 0, 0]),
            (0x4000_0000, 0, [1, 2, 3, 4]),
        ]);
        assert_eq!(set.word(FeatureWord::LeafDSub1Eax), 0b1011);
        assert_eq!(set.count(), 3);
        let unnamed = Feature {
            word: FeatureWord::Leaf7Edx,
            bit: 31,
        };
        assert_eq!(unnamed.to_string(), "Leaf7Edx[31]");
    }
}
