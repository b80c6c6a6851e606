//! What guest RAM is made of, and the choice of it from the host's facts.
//!
//! The first guest touch of a 4 KiB host page costs a (nested) EPT exit; with 2 MiB pages the guest
//! takes 512 times fewer. Which 2 MiB pages a host offers depends on its configuration:
//! a hugetlb pool (`vm.nr_hugepages`), shmem THP (`shmem_enabled`), anonymous THP (`enabled`).
//! [`choose`] is a pure function of those facts ([`HostMemory`], read from sysfs by
//! [`HostMemory::read`]), so the rule is testable without KVM.
//!
//! | backing | shareable (fd handover, a keeper process) | post-copy (userfaultfd) |
//! |---|---|---|
//! | [`RamBacking::HugetlbMemfd`] | yes | not yet (needs 2 MiB placement) |
//! | [`RamBacking::ShmemThpMemfd`] | yes | yes (4 KiB holes split huge pages) |
//! | [`RamBacking::AnonThp`] | no (no file) | yes (`MADV_DONTNEED` makes pages missing) |
//! | [`RamBacking::Memfd`] | yes | yes |

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Bytes in a huge page (x86-64 PMD).
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// What guest RAM is made of (serialized as [`RamBacking::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RamBacking {
    /// A memfd on hugetlbfs (`MFD_HUGETLB | MFD_HUGE_2MB`): 2 MiB pages from the host's reserved
    /// pool, reserved when mapped (so a short pool fails at creation, never at a guest fault).
    #[serde(rename = "hugetlb")]
    HugetlbMemfd,
    /// A memfd with `MADV_HUGEPAGE`, on a host whose `shmem_enabled` lets shmem use 2 MiB pages.
    #[serde(rename = "memfd-thp")]
    ShmemThpMemfd,
    /// Private anonymous memory with `MADV_HUGEPAGE` (what QEMU uses): 2 MiB THP where the host's
    /// `enabled` allows it. Has no file descriptor: it cannot be handed to another process.
    #[serde(rename = "anon")]
    AnonThp,
    /// A memfd with 4 KiB shmem pages: works on every host.
    #[serde(rename = "memfd")]
    Memfd,
}

impl RamBacking {
    /// Whether the RAM is a file another process can map (same-host fd handover, a process that
    /// keeps the memory while the VMM restarts).
    pub fn shareable(self) -> bool {
        !matches!(self, RamBacking::AnonThp)
    }

    /// Whether userfaultfd post-copy can run on this RAM (making pages missing and placing them
    /// one 4 KiB page at a time).
    pub fn supports_postcopy(self) -> bool {
        !matches!(self, RamBacking::HugetlbMemfd)
    }

    /// Short name, as `--ram-backing` and reports spell the kind.
    pub fn name(self) -> &'static str {
        match self {
            RamBacking::HugetlbMemfd => "hugetlb",
            RamBacking::ShmemThpMemfd => "memfd-thp",
            RamBacking::AnonThp => "anon",
            RamBacking::Memfd => "memfd",
        }
    }
}

impl fmt::Display for RamBacking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RamBacking::HugetlbMemfd => "hugetlb memfd, 2 MiB pages from the pool",
            RamBacking::ShmemThpMemfd => "memfd, 2 MiB shmem THP",
            RamBacking::AnonThp => "anonymous, 2 MiB THP",
            RamBacking::Memfd => "memfd, 4 KiB pages",
        })
    }
}

/// What the user asked for (`--ram-backing`; serialized as spelled there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RamBackingChoice {
    /// The fastest backing the host offers (and the use allows).
    #[default]
    Auto,
    /// Anonymous memory with THP.
    Anon,
    /// A memfd (with shmem THP when the host allows it).
    Memfd,
    /// A hugetlb memfd (the pool must hold the whole RAM).
    Hugetlb,
}

impl FromStr for RamBackingChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "anon" => Ok(Self::Anon),
            "memfd" => Ok(Self::Memfd),
            "hugetlb" => Ok(Self::Hugetlb),
            _ => Err(format!(
                "unknown RAM backing {s:?}: use auto, anon, memfd or hugetlb"
            )),
        }
    }
}

impl fmt::Display for RamBackingChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Anon => "anon",
            Self::Memfd => "memfd",
            Self::Hugetlb => "hugetlb",
        })
    }
}

/// A THP `enabled` setting (top level or per size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThpSetting {
    /// `always`
    Always,
    /// `madvise`
    Madvise,
    /// `never` (or THP absent from this kernel)
    Never,
    /// `inherit` (per-size only: the top-level setting applies)
    Inherit,
}

/// A THP `shmem_enabled` setting (top level or per size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmemThpSetting {
    /// `always`
    Always,
    /// `within_size`
    WithinSize,
    /// `advise` (huge pages for mappings with `MADV_HUGEPAGE`)
    Advise,
    /// `never`
    Never,
    /// `deny` (top level: off for every mount, overriding per-size settings)
    Deny,
    /// `force` (top level: on for every mount)
    Force,
    /// `inherit` (per-size only)
    Inherit,
}

/// The host's 2 MiB hugetlb pool (`/sys/kernel/mm/hugepages/hugepages-2048kB`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HugetlbPool {
    /// `nr_hugepages`
    pub total: u64,
    /// `free_hugepages`
    pub free: u64,
    /// `resv_hugepages`: free pages already promised to mappings.
    pub reserved: u64,
}

impl HugetlbPool {
    /// Pages a new mapping can still reserve.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// The host's huge-page configuration, as far as guest RAM is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMemory {
    /// `transparent_hugepage/enabled`
    pub thp: ThpSetting,
    /// `transparent_hugepage/hugepages-2048kB/enabled` (None: no per-size control)
    pub thp_2m: Option<ThpSetting>,
    /// `transparent_hugepage/shmem_enabled`
    pub shmem_thp: ShmemThpSetting,
    /// `transparent_hugepage/hugepages-2048kB/shmem_enabled` (None: no per-size control)
    pub shmem_thp_2m: Option<ShmemThpSetting>,
    /// The 2 MiB hugetlb pool (None: the kernel has no 2 MiB hugetlb pages).
    pub hugetlb: Option<HugetlbPool>,
}

const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";
const HUGETLB_DIR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

impl HostMemory {
    /// Reads the facts from sysfs. Anything missing or unreadable counts as "off".
    pub fn read() -> Self {
        let word =
            |file: &str| selected(&std::fs::read_to_string(Path::new(THP_DIR).join(file)).ok()?);
        let count = |file: &str| -> Option<u64> {
            std::fs::read_to_string(Path::new(HUGETLB_DIR).join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let hugetlb = count("nr_hugepages").map(|total| HugetlbPool {
            total,
            free: count("free_hugepages").unwrap_or(0),
            reserved: count("resv_hugepages").unwrap_or(0),
        });
        Self {
            thp: word("enabled")
                .and_then(|w| parse_thp(&w))
                .unwrap_or(ThpSetting::Never),
            thp_2m: word("hugepages-2048kB/enabled").and_then(|w| parse_thp(&w)),
            shmem_thp: word("shmem_enabled")
                .and_then(|w| parse_shmem(&w))
                .unwrap_or(ShmemThpSetting::Never),
            shmem_thp_2m: word("hugepages-2048kB/shmem_enabled").and_then(|w| parse_shmem(&w)),
            hugetlb,
        }
    }

    /// Whether anonymous memory with `MADV_HUGEPAGE` gets 2 MiB pages.
    pub fn anon_thp(&self) -> bool {
        let madvised = |s: ThpSetting| matches!(s, ThpSetting::Always | ThpSetting::Madvise);
        match self.thp_2m {
            Some(ThpSetting::Inherit) | None => madvised(self.thp),
            Some(s) => madvised(s),
        }
    }

    /// Whether a memfd mapped with `MADV_HUGEPAGE` gets 2 MiB shmem pages.
    pub fn shmem_thp(&self) -> bool {
        use ShmemThpSetting::*;
        let on = |s: ShmemThpSetting| matches!(s, Always | WithinSize | Advise | Force);
        match (self.shmem_thp, self.shmem_thp_2m) {
            (Deny, _) => false,
            (Force, _) => true,
            (top, Some(Inherit) | None) => on(top),
            (_, Some(size)) => on(size),
        }
    }

    /// Why shmem THP is off, in the host's own words (for messages).
    fn shmem_thp_off_reason(&self) -> String {
        match self.shmem_thp_2m {
            Some(s) if s != ShmemThpSetting::Inherit && self.shmem_thp != ShmemThpSetting::Deny => {
                format!("hugepages-2048kB/shmem_enabled={}", shmem_word(s))
            }
            _ => format!("shmem_enabled={}", shmem_word(self.shmem_thp)),
        }
    }

    fn anon_thp_off_reason(&self) -> String {
        match self.thp_2m {
            Some(s) if s != ThpSetting::Inherit => {
                format!("hugepages-2048kB/enabled={}", thp_word(s))
            }
            _ => format!("enabled={}", thp_word(self.thp)),
        }
    }

    fn hugetlb_reason(&self, need: u64) -> String {
        match self.hugetlb {
            None => "no 2 MiB hugetlb pages in this kernel".into(),
            Some(p) if p.total == 0 => "no hugetlb pool".into(),
            Some(p) => format!(
                "hugetlb pool: {} of {} 2 MiB pages free, {need} needed",
                p.available(),
                p.total
            ),
        }
    }
}

/// The backing chosen for one VM's RAM, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamPlan {
    /// What to create.
    pub backing: RamBacking,
    /// Whether the host will give it 2 MiB pages.
    pub huge_pages: bool,
    /// Why this one, in the host's terms.
    pub reason: String,
}

impl fmt::Display for RamPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.huge_pages || self.backing == RamBacking::Memfd {
            write!(f, "{}", self.backing)?;
        } else {
            // Asked-for THP the host does not give.
            write!(
                f,
                "{}, 4 KiB pages",
                match self.backing {
                    RamBacking::ShmemThpMemfd => "memfd",
                    _ => "anonymous",
                }
            )?;
        }
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// What guest RAM is for, as far as the choice goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRequest {
    /// Bytes of RAM.
    pub size: u64,
    /// What the user asked for.
    pub choice: RamBackingChoice,
    /// The RAM is a migration destination's: all of it is written at once as pages arrive.
    pub destination: bool,
    /// The RAM may receive pages by userfaultfd post-copy (a migration destination whose
    /// strategy may end in post-copy).
    pub may_postcopy: bool,
}

/// A backing the user asked for that the host cannot give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackingError {
    /// `--ram-backing hugetlb` without enough free pool pages.
    #[error(
        "--ram-backing hugetlb: {reason}; reserve pages with `sysctl vm.nr_hugepages=N` (as root), \
         or use --ram-backing auto"
    )]
    HugetlbUnavailable {
        /// The pool's state.
        reason: String,
    },
}

/// Chooses guest RAM's backing: the fastest the host offers (hugetlb pool, then shmem THP, then
/// anonymous THP, then a plain memfd) unless the user asked for one; RAM that may take post-copy
/// never gets hugetlb (placing pages there needs whole 2 MiB pages, which the engine does not send
/// yet), and says so.
pub fn choose(host: &HostMemory, req: &RamRequest) -> Result<RamPlan, BackingError> {
    let need = req.size.div_ceil(HUGE_PAGE_SIZE);
    let pool_ok = host.hugetlb.is_some_and(|p| p.available() >= need);
    let shmem = host.shmem_thp();
    let anon = host.anon_thp();
    let plan = |backing, huge_pages, reason: String| RamPlan {
        backing,
        huge_pages,
        reason,
    };
    let postcopy_note = "hugetlb RAM cannot take post-copy yet";
    let memfd = |why: Vec<String>| {
        if shmem {
            plan(RamBacking::ShmemThpMemfd, true, why.join("; "))
        } else {
            let mut why = why;
            why.push(format!("shmem THP off: {}", host.shmem_thp_off_reason()));
            plan(RamBacking::Memfd, false, why.join("; "))
        }
    };
    match req.choice {
        RamBackingChoice::Hugetlb if req.may_postcopy => {
            let mut p = best_for_postcopy(host, shmem, anon);
            p.reason = join(&[
                &format!("asked for hugetlb, but this migration may end in post-copy and {postcopy_note}"),
                &p.reason,
            ]);
            Ok(p)
        }
        RamBackingChoice::Hugetlb if pool_ok => {
            Ok(plan(RamBacking::HugetlbMemfd, true, "asked for".into()))
        }
        RamBackingChoice::Hugetlb => Err(BackingError::HugetlbUnavailable {
            reason: host.hugetlb_reason(need),
        }),
        RamBackingChoice::Memfd => Ok(memfd(vec!["asked for".into()])),
        RamBackingChoice::Anon if anon => Ok(plan(RamBacking::AnonThp, true, "asked for".into())),
        RamBackingChoice::Anon => Ok(plan(
            RamBacking::AnonThp,
            false,
            format!("asked for; THP off: {}", host.anon_thp_off_reason()),
        )),
        RamBackingChoice::Auto if req.destination => Ok(plan(
            RamBacking::Memfd,
            false,
            "a migration destination writes all of its RAM at once, and fresh 2 MiB pages fill \
             several times slower than 4 KiB pages on a host like this one (measured: receiving \
             into anonymous THP took 27-32 s against 8-11 s into a 4 KiB memfd; docs/BENCHMARKS.md, \
             Guest RAM backings); ask with --ram-backing for another"
                .into(),
        )),
        RamBackingChoice::Auto if pool_ok && !req.may_postcopy => Ok(plan(
            RamBacking::HugetlbMemfd,
            true,
            host.hugetlb_reason(need),
        )),
        RamBackingChoice::Auto => {
            let mut p = best_for_postcopy(host, shmem, anon);
            let hugetlb = if pool_ok {
                format!("a migration that may end in post-copy: {postcopy_note}")
            } else {
                host.hugetlb_reason(need)
            };
            p.reason = join(&[&p.reason, &hugetlb]);
            Ok(p)
        }
    }
}

/// The fastest backing post-copy can use.
fn best_for_postcopy(host: &HostMemory, shmem: bool, anon: bool) -> RamPlan {
    let shmem_off = format!("shmem THP off: {}", host.shmem_thp_off_reason());
    if shmem {
        RamPlan {
            backing: RamBacking::ShmemThpMemfd,
            huge_pages: true,
            reason: String::new(),
        }
    } else if anon {
        RamPlan {
            backing: RamBacking::AnonThp,
            huge_pages: true,
            reason: shmem_off,
        }
    } else {
        RamPlan {
            backing: RamBacking::Memfd,
            huge_pages: false,
            reason: join(&[
                &shmem_off,
                &format!("anonymous THP off: {}", host.anon_thp_off_reason()),
            ]),
        }
    }
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("; ")
}

/// The bracketed word of a sysfs choice list (`always [madvise] never` -> `madvise`).
fn selected(text: &str) -> Option<String> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

fn parse_thp(w: &str) -> Option<ThpSetting> {
    Some(match w {
        "always" => ThpSetting::Always,
        "madvise" => ThpSetting::Madvise,
        "never" => ThpSetting::Never,
        "inherit" => ThpSetting::Inherit,
        _ => return None,
    })
}

fn parse_shmem(w: &str) -> Option<ShmemThpSetting> {
    use ShmemThpSetting::*;
    Some(match w {
        "always" => Always,
        "within_size" => WithinSize,
        "advise" => Advise,
        "never" => Never,
        "deny" => Deny,
        "force" => Force,
        "inherit" => Inherit,
        _ => return None,
    })
}

fn thp_word(s: ThpSetting) -> &'static str {
    match s {
        ThpSetting::Always => "always",
        ThpSetting::Madvise => "madvise",
        ThpSetting::Never => "never",
        ThpSetting::Inherit => "inherit",
    }
}

fn shmem_word(s: ShmemThpSetting) -> &'static str {
    use ShmemThpSetting::*;
    match s {
        Always => "always",
        WithinSize => "within_size",
        Advise => "advise",
        Never => "never",
        Deny => "deny",
        Force => "force",
        Inherit => "inherit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine as measured: THP madvise, shmem THP never (per size: inherit), no pool.
    fn this_host() -> HostMemory {
        HostMemory {
            thp: ThpSetting::Madvise,
            thp_2m: Some(ThpSetting::Inherit),
            shmem_thp: ShmemThpSetting::Never,
            shmem_thp_2m: Some(ShmemThpSetting::Inherit),
            hugetlb: Some(HugetlbPool::default()),
        }
    }

    fn req(choice: RamBackingChoice, may_postcopy: bool) -> RamRequest {
        RamRequest {
            size: 1 << 30,
            choice,
            destination: false,
            may_postcopy,
        }
    }

    #[test]
    fn auto_gives_a_destination_small_pages_and_honours_a_request() {
        let host = this_host();
        let dest = RamRequest {
            destination: true,
            ..req(RamBackingChoice::Auto, true)
        };
        let p = choose(&host, &dest).unwrap();
        assert_eq!((p.backing, p.huge_pages), (RamBacking::Memfd, false), "{p}");
        let asked = RamRequest {
            destination: true,
            ..req(RamBackingChoice::Anon, true)
        };
        assert_eq!(choose(&host, &asked).unwrap().backing, RamBacking::AnonThp);
    }

    fn auto(host: &HostMemory) -> RamPlan {
        choose(host, &req(RamBackingChoice::Auto, false)).unwrap()
    }

    #[test]
    fn sysfs_words_are_parsed() {
        assert_eq!(
            selected("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(
            selected("always within_size advise [never] deny force").as_deref(),
            Some("never")
        );
        assert_eq!(selected("garbage"), None);
        assert_eq!(
            parse_shmem("within_size"),
            Some(ShmemThpSetting::WithinSize)
        );
        assert_eq!(parse_thp("bogus"), None);
    }

    #[test]
    fn this_host_gets_anonymous_thp_and_says_why() {
        let p = auto(&this_host());
        assert_eq!(p.backing, RamBacking::AnonThp);
        assert!(p.huge_pages);
        assert_eq!(
            p.to_string(),
            "anonymous, 2 MiB THP (shmem THP off: shmem_enabled=never; no hugetlb pool)"
        );
    }

    #[test]
    fn a_big_enough_pool_wins_unless_post_copy_may_follow() {
        let mut h = this_host();
        h.hugetlb = Some(HugetlbPool {
            total: 600,
            free: 560,
            reserved: 40,
        });
        let p = auto(&h);
        assert_eq!(p.backing, RamBacking::HugetlbMemfd);
        assert_eq!(
            p.reason,
            "hugetlb pool: 520 of 600 2 MiB pages free, 512 needed"
        );
        let p = choose(&h, &req(RamBackingChoice::Auto, true)).unwrap();
        assert_eq!(p.backing, RamBacking::AnonThp);
        assert!(p.reason.contains("post-copy"), "{p}");
        // One page short: not hugetlb.
        h.hugetlb = Some(HugetlbPool {
            total: 600,
            free: 551,
            reserved: 40,
        });
        let p = auto(&h);
        assert_eq!(p.backing, RamBacking::AnonThp);
        assert!(p.reason.contains("511 of 600"), "{p}");
    }

    #[test]
    fn shmem_thp_beats_anonymous_memory_when_the_host_allows_it() {
        for top in [
            ShmemThpSetting::Always,
            ShmemThpSetting::WithinSize,
            ShmemThpSetting::Advise,
            ShmemThpSetting::Force,
        ] {
            let h = HostMemory {
                shmem_thp: top,
                ..this_host()
            };
            assert_eq!(auto(&h).backing, RamBacking::ShmemThpMemfd, "{top:?}");
        }
        // The per-size setting overrides the top level, except deny and force.
        let h = HostMemory {
            shmem_thp_2m: Some(ShmemThpSetting::Advise),
            ..this_host()
        };
        assert_eq!(auto(&h).backing, RamBacking::ShmemThpMemfd);
        let h = HostMemory {
            shmem_thp: ShmemThpSetting::Always,
            shmem_thp_2m: Some(ShmemThpSetting::Never),
            ..this_host()
        };
        let p = auto(&h);
        assert_eq!(p.backing, RamBacking::AnonThp);
        assert!(
            p.reason.contains("hugepages-2048kB/shmem_enabled=never"),
            "{p}"
        );
        let h = HostMemory {
            shmem_thp: ShmemThpSetting::Deny,
            shmem_thp_2m: Some(ShmemThpSetting::Always),
            ..this_host()
        };
        assert_eq!(auto(&h).backing, RamBacking::AnonThp);
    }

    #[test]
    fn no_huge_pages_at_all_means_a_plain_memfd() {
        let h = HostMemory {
            thp: ThpSetting::Never,
            ..this_host()
        };
        let p = auto(&h);
        assert_eq!(p.backing, RamBacking::Memfd);
        assert!(!p.huge_pages);
        assert!(p.reason.contains("anonymous THP off: enabled=never"), "{p}");
        // Per-size anon setting overrides the top level.
        let h = HostMemory {
            thp: ThpSetting::Never,
            thp_2m: Some(ThpSetting::Madvise),
            ..this_host()
        };
        assert_eq!(auto(&h).backing, RamBacking::AnonThp);
    }

    #[test]
    fn explicit_choices_are_honoured_or_refused_clearly() {
        let h = this_host();
        let p = choose(&h, &req(RamBackingChoice::Memfd, false)).unwrap();
        assert_eq!((p.backing, p.huge_pages), (RamBacking::Memfd, false));
        assert!(
            p.to_string()
                .starts_with("memfd, 4 KiB pages (asked for; shmem THP off"),
            "{p}"
        );
        let p = choose(&h, &req(RamBackingChoice::Anon, false)).unwrap();
        assert_eq!(p.backing, RamBacking::AnonThp);
        let err = choose(&h, &req(RamBackingChoice::Hugetlb, false)).unwrap_err();
        assert!(err.to_string().contains("no hugetlb pool"), "{err}");
        // Asked-for hugetlb on a post-copy destination: a backing that can take it, said so.
        let mut h = this_host();
        h.hugetlb = Some(HugetlbPool {
            total: 1024,
            free: 1024,
            reserved: 0,
        });
        let p = choose(&h, &req(RamBackingChoice::Hugetlb, true)).unwrap();
        assert!(p.backing.supports_postcopy());
        assert!(p.reason.starts_with("asked for hugetlb, but"), "{p}");
        let p = choose(&h, &req(RamBackingChoice::Hugetlb, false)).unwrap();
        assert_eq!(p.backing, RamBacking::HugetlbMemfd);
        // Anonymous memory asked for on a host without THP: 4 KiB pages, said so.
        let h = HostMemory {
            thp: ThpSetting::Never,
            ..this_host()
        };
        let p = choose(&h, &req(RamBackingChoice::Anon, false)).unwrap();
        assert!(!p.huge_pages);
        assert_eq!(
            p.to_string(),
            "anonymous, 4 KiB pages (asked for; THP off: enabled=never)"
        );
    }

    #[test]
    fn every_plan_for_post_copy_supports_it() {
        let settings = [
            ShmemThpSetting::Always,
            ShmemThpSetting::Never,
            ShmemThpSetting::Deny,
        ];
        for shmem in settings {
            for thp in [ThpSetting::Madvise, ThpSetting::Never] {
                for choice in [
                    RamBackingChoice::Auto,
                    RamBackingChoice::Anon,
                    RamBackingChoice::Memfd,
                    RamBackingChoice::Hugetlb,
                ] {
                    let h = HostMemory {
                        thp,
                        thp_2m: None,
                        shmem_thp: shmem,
                        shmem_thp_2m: None,
                        hugetlb: Some(HugetlbPool {
                            total: 4096,
                            free: 4096,
                            reserved: 0,
                        }),
                    };
                    let p = choose(&h, &req(choice, true)).unwrap();
                    assert!(
                        p.backing.supports_postcopy(),
                        "{choice} {shmem:?} {thp:?}: {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn choices_parse_and_print_back() {
        for s in ["auto", "anon", "memfd", "hugetlb"] {
            assert_eq!(s.parse::<RamBackingChoice>().unwrap().to_string(), s);
        }
        assert!("huge".parse::<RamBackingChoice>().is_err());
    }

    #[test]
    fn serialized_names_are_the_short_names() {
        for b in [
            RamBacking::HugetlbMemfd,
            RamBacking::ShmemThpMemfd,
            RamBacking::AnonThp,
            RamBacking::Memfd,
        ] {
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{}\"", b.name()));
            assert_eq!(serde_json::from_str::<RamBacking>(&json).unwrap(), b);
        }
        for c in ["auto", "anon", "memfd", "hugetlb"] {
            let parsed: RamBackingChoice = serde_json::from_str(&format!("\"{c}\"")).unwrap();
            assert_eq!(parsed.to_string(), c);
        }
        assert!(serde_json::from_str::<RamBackingChoice>("\"huge\"").is_err());
    }
}
