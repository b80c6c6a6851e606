//! What a guest image does: the workload parameters and their text forms.

use std::fmt;
use std::str::FromStr;

/// Why a workload parameter did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct ParseParamError {
    /// Which parameter was being parsed.
    pub what: &'static str,
    /// The text that was rejected.
    pub value: String,
    /// The accepted forms.
    pub expected: &'static str,
}

/// Which working-set page each iteration writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Page 0, 1, 2, ... wrapping around.
    Sequential,
    /// Uniformly random pages (xorshift64*).
    Random,
    /// 90% of writes into the first 10% of pages, the rest into the other 90%.
    HotCold,
    /// Runs of [`MIXED_RUN`] pages, alternating: a sequential run starting at a uniformly random
    /// page (wrapping), then a run of uniformly random pages. The run is chosen by the number of
    /// page writes so far: writes `k` with `(k / MIXED_RUN)` even are sequential.
    Mixed,
}

/// Pages per run of [`Pattern::Mixed`] (256 KiB: a buffer copy's worth).
pub const MIXED_RUN: u64 = 64;

/// What the guest writes to COM1 while it runs (docs/GUEST-ABI.md, "Heartbeat").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// `0x80 | seq` every this many microseconds of TSC time: shows pauses, but keeps ticking
    /// while the guest's writes crawl.
    Time {
        /// Period in microseconds.
        us: u32,
    },
    /// `0x80 | seq` after every this many pages written (the fill included): a gap between two
    /// bytes is time in which the guest made no progress, whatever the cause. A guest that writes
    /// nothing (rate 0) falls back to a time tick every [`IDLE_TICK_US`] after its fill.
    Pages {
        /// Pages written per byte.
        every: u32,
    },
    /// An ASCII `.` (top bit clear: console text to any host) after every this many pages
    /// written, as a guest written outside the project would print its progress; no time tick.
    Dots {
        /// Pages written per dot.
        every: u32,
    },
    /// Nothing at all on COM1, not even the banner.
    None,
}

/// Period of the time tick a [`Heartbeat::Pages`] guest falls back to once it is idle.
pub const IDLE_TICK_US: u32 = 1000;

impl Heartbeat {
    /// Code of the kind in the mailbox `beat` field.
    pub fn code(self) -> u8 {
        match self {
            Heartbeat::Time { .. } => 0,
            Heartbeat::Pages { .. } => 1,
            Heartbeat::Dots { .. } => 2,
            Heartbeat::None => 3,
        }
    }

    /// The number in the mailbox `beat` field: microseconds or pages (0 for none).
    pub fn every(self) -> u32 {
        match self {
            Heartbeat::Time { us } => us,
            Heartbeat::Pages { every } | Heartbeat::Dots { every } => every,
            Heartbeat::None => 0,
        }
    }

    /// Pages written per progress byte, for the progress-driven kinds.
    pub fn pages_per_byte(self) -> Option<u32> {
        match self {
            Heartbeat::Pages { every } | Heartbeat::Dots { every } => Some(every),
            Heartbeat::Time { .. } | Heartbeat::None => None,
        }
    }

    /// Whether `byte` is one of this guest's heartbeat or progress bytes (the rest is text).
    pub fn is_beat(self, byte: u8) -> bool {
        match self {
            Heartbeat::Time { .. } | Heartbeat::Pages { .. } => byte & 0x80 != 0,
            Heartbeat::Dots { .. } => byte == b'.',
            Heartbeat::None => false,
        }
    }

    /// Packs kind and number into the mailbox `beat` field: `kind | every << 8`.
    pub fn pack(self) -> u64 {
        u64::from(self.code()) | u64::from(self.every()) << 8
    }

    /// Unpacks the mailbox `beat` field (None for an unknown kind).
    pub fn unpack(v: u64) -> Option<Heartbeat> {
        let every = u32::try_from(v >> 8).ok()?;
        match v & 0xFF {
            0 => Some(Heartbeat::Time { us: every }),
            1 => Some(Heartbeat::Pages { every }),
            2 => Some(Heartbeat::Dots { every }),
            3 => Some(Heartbeat::None),
            _ => None,
        }
    }
}

impl Default for Heartbeat {
    /// A byte every millisecond, driven by time (what hosts and tests that time pauses expect).
    fn default() -> Self {
        Heartbeat::Time { us: 1000 }
    }
}

impl FromStr for Heartbeat {
    type Err = ParseParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseParamError {
            what: "heartbeat",
            value: s.to_string(),
            expected: "time:MICROSECONDS, pages:N, dots:N or none (N pages written per byte, \
                       at least 1)",
        };
        let t = s.trim().to_ascii_lowercase();
        if t == "none" {
            return Ok(Heartbeat::None);
        }
        let (kind, n) = t.split_once(':').ok_or_else(err)?;
        let n: u32 = n.trim().parse().map_err(|_| err())?;
        if n == 0 {
            return Err(err());
        }
        match kind.trim() {
            "time" => Ok(Heartbeat::Time { us: n }),
            "pages" => Ok(Heartbeat::Pages { every: n }),
            "dots" => Ok(Heartbeat::Dots { every: n }),
            _ => Err(err()),
        }
    }
}

impl fmt::Display for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Heartbeat::Time { us } => write!(f, "time:{us}"),
            Heartbeat::Pages { every } => write!(f, "pages:{every}"),
            Heartbeat::Dots { every } => write!(f, "dots:{every}"),
            Heartbeat::None => f.write_str("none"),
        }
    }
}

/// What the bytes of a rewritten page look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entropy {
    /// All zero bytes; pages are not tagged.
    Zero,
    /// Letters from a 16-letter alphabet: compresses about 2x.
    Text,
    /// Pseudo-random bytes: incompressible.
    Random,
    /// Per page, fixed by its index ([`Entropy::of_page`]): about half zero pages, a quarter
    /// text, a quarter random.
    Mixed,
}

/// How much of the page each loop iteration rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteSize {
    /// Only the tag word (dirties the page, barely changes its content).
    Word,
    /// The whole page.
    Page,
}

/// How fast the loop writes pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// As fast as the guest can.
    Unlimited,
    /// At most this many page writes per second; 0 means idle (only heartbeats) after the fill.
    PagesPerSec(u64),
}

/// Everything that defines a guest image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Bytes of RAM the image expects (at least); the page tables map this much, rounded up to 1 GiB.
    pub memory: u64,
    /// Bytes of the working set (a multiple of 4096).
    pub working_set: u64,
    /// Page selection pattern.
    pub pattern: Pattern,
    /// Page content.
    pub entropy: Entropy,
    /// Bytes rewritten per loop iteration.
    pub write_size: WriteSize,
    /// Page write rate.
    pub rate: Rate,
    /// Whether to write every working-set page once before the loop.
    pub fill: bool,
    /// What the guest writes to COM1 (time-driven heartbeat, progress bytes, dots or nothing).
    pub heartbeat: Heartbeat,
    /// TSC frequency of the target host in Hz; 0 measures the building host.
    pub tsc_hz: u64,
    /// Seed of the tags and of the guest's pseudo-random generator.
    pub seed: u64,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            memory: 1 << 30,
            working_set: 256 << 20,
            pattern: Pattern::Random,
            entropy: Entropy::Random,
            write_size: WriteSize::Page,
            rate: Rate::Unlimited,
            fill: false,
            heartbeat: Heartbeat::default(),
            tsc_hz: 0,
            seed: 0x4645_5252_5953_4544,
        }
    }
}

impl Pattern {
    /// Code of the pattern in the mailbox `params` field.
    pub fn code(self) -> u8 {
        match self {
            Pattern::Sequential => 0,
            Pattern::Random => 1,
            Pattern::HotCold => 2,
            Pattern::Mixed => 3,
        }
    }
}

impl Entropy {
    /// Code of the entropy in the mailbox `params` field.
    pub fn code(self) -> u8 {
        match self {
            Entropy::Zero => 0,
            Entropy::Text => 1,
            Entropy::Random => 2,
            Entropy::Mixed => 3,
        }
    }

    /// The content of working-set page `index`: `self`, except that [`Entropy::Mixed`] picks zero,
    /// text or random by the top two bits of `index * MIXED_HASH` (bit 63 clear: zero; else bit 62
    /// clear: text; else random). A hash rather than `index % 4`, so every batch and every stretch
    /// of RAM holds all three kinds in about these shares, with no period a codec could latch on to.
    pub fn of_page(self, index: u64) -> Entropy {
        match self {
            Entropy::Mixed => {
                let h = index.wrapping_mul(MIXED_HASH);
                if h >> 63 == 0 {
                    Entropy::Zero
                } else if (h >> 62) & 1 == 0 {
                    Entropy::Text
                } else {
                    Entropy::Random
                }
            }
            e => e,
        }
    }
}

/// Multiplier of the page-class hash of [`Entropy::Mixed`] (the golden ratio in 64 bits).
pub const MIXED_HASH: u64 = 0x9E37_79B9_7F4A_7C15;

impl FromStr for Pattern {
    type Err = ParseParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sequential" => Ok(Pattern::Sequential),
            "random" => Ok(Pattern::Random),
            "hotcold" => Ok(Pattern::HotCold),
            "mixed" => Ok(Pattern::Mixed),
            _ => Err(ParseParamError {
                what: "pattern",
                value: s.to_string(),
                expected: "sequential, random, hotcold or mixed",
            }),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pattern::Sequential => "sequential",
            Pattern::Random => "random",
            Pattern::HotCold => "hotcold",
            Pattern::Mixed => "mixed",
        })
    }
}

impl FromStr for Entropy {
    type Err = ParseParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "zero" => Ok(Entropy::Zero),
            "text" => Ok(Entropy::Text),
            "random" => Ok(Entropy::Random),
            "mixed" => Ok(Entropy::Mixed),
            _ => Err(ParseParamError {
                what: "entropy",
                value: s.to_string(),
                expected: "zero, text, random or mixed",
            }),
        }
    }
}

impl fmt::Display for Entropy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entropy::Zero => "zero",
            Entropy::Text => "text",
            Entropy::Random => "random",
            Entropy::Mixed => "mixed",
        })
    }
}

impl FromStr for WriteSize {
    type Err = ParseParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "word" => Ok(WriteSize::Word),
            "page" => Ok(WriteSize::Page),
            _ => Err(ParseParamError {
                what: "write size",
                value: s.to_string(),
                expected: "word or page",
            }),
        }
    }
}

impl fmt::Display for WriteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteSize::Word => "word",
            WriteSize::Page => "page",
        })
    }
}

impl FromStr for Rate {
    type Err = ParseParamError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(Rate::Unlimited);
        }
        t.parse::<u64>()
            .map(Rate::PagesPerSec)
            .map_err(|_| ParseParamError {
                what: "rate",
                value: s.to_string(),
                expected: "\"unlimited\" or a number of pages per second",
            })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Unlimited => f.write_str("unlimited"),
            Rate::PagesPerSec(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for p in [
            Pattern::Sequential,
            Pattern::Random,
            Pattern::HotCold,
            Pattern::Mixed,
        ] {
            assert_eq!(p.to_string().parse::<Pattern>(), Ok(p));
        }
        for e in [
            Entropy::Zero,
            Entropy::Text,
            Entropy::Random,
            Entropy::Mixed,
        ] {
            assert_eq!(e.to_string().parse::<Entropy>(), Ok(e));
        }
        assert_eq!("MIXED".parse::<Entropy>(), Ok(Entropy::Mixed));
        for w in [WriteSize::Word, WriteSize::Page] {
            assert_eq!(w.to_string().parse::<WriteSize>(), Ok(w));
        }
        for r in [
            Rate::Unlimited,
            Rate::PagesPerSec(0),
            Rate::PagesPerSec(12345),
        ] {
            assert_eq!(r.to_string().parse::<Rate>(), Ok(r));
        }
    }

    #[test]
    fn parse_errors_name_the_parameter() {
        let e = "zigzag".parse::<Pattern>().unwrap_err();
        assert_eq!(e.what, "pattern");
        assert!(e
            .to_string()
            .contains("sequential, random, hotcold or mixed"));
        assert!("fast"
            .parse::<Rate>()
            .unwrap_err()
            .to_string()
            .contains("rate"));
        assert!("-1".parse::<Rate>().is_err());
        assert!("huge".parse::<WriteSize>().is_err());
        assert!("noise".parse::<Entropy>().is_err());
        assert_eq!("HotCold".parse::<Pattern>(), Ok(Pattern::HotCold));
    }

    #[test]
    fn heartbeat_forms() {
        for h in [
            Heartbeat::Time { us: 1000 },
            Heartbeat::Pages { every: 1024 },
            Heartbeat::Dots { every: 7 },
            Heartbeat::None,
        ] {
            assert_eq!(h.to_string().parse::<Heartbeat>(), Ok(h));
            assert_eq!(Heartbeat::unpack(h.pack()), Some(h));
        }
        assert_eq!(
            " Pages:64 ".parse::<Heartbeat>(),
            Ok(Heartbeat::Pages { every: 64 })
        );
        for bad in [
            "pages:0", "time:0", "pages", "dots:-1", "bytes:4", "", "time:1e3",
        ] {
            let e = bad.parse::<Heartbeat>().unwrap_err();
            assert_eq!(e.what, "heartbeat", "{bad}");
        }
        assert_eq!(Heartbeat::unpack(4), None);
        assert_eq!(Heartbeat::unpack(1 << 40 | 1), None);
        // Which bytes count as beats: the top bit for the binary kinds, only '.' for dots.
        let pages = Heartbeat::Pages { every: 1 };
        assert!(pages.is_beat(0x80) && pages.is_beat(0xAA) && !pages.is_beat(b'.'));
        let dots = Heartbeat::Dots { every: 1 };
        assert!(dots.is_beat(b'.') && !dots.is_beat(0x85) && !dots.is_beat(b'f'));
        assert!(!Heartbeat::None.is_beat(0x80));
        assert_eq!(pages.pages_per_byte(), Some(1));
        assert_eq!(Heartbeat::Time { us: 5 }.pages_per_byte(), None);
    }

    #[test]
    fn mixed_pages_split_half_quarter_quarter() {
        let n = 1u64 << 18;
        let mut counts = [0u64; 3];
        for i in 0..n {
            match Entropy::Mixed.of_page(i) {
                Entropy::Zero => counts[0] += 1,
                Entropy::Text => counts[1] += 1,
                Entropy::Random => counts[2] += 1,
                Entropy::Mixed => panic!("a page's class is never mixed"),
            }
        }
        let share = |c: u64| c as f64 / n as f64;
        assert!((share(counts[0]) - 0.5).abs() < 0.01, "{counts:?}");
        assert!((share(counts[1]) - 0.25).abs() < 0.01, "{counts:?}");
        assert!((share(counts[2]) - 0.25).abs() < 0.01, "{counts:?}");
        // Every 256-page batch holds all three kinds.
        for b in 0..64u64 {
            let mut seen = [false; 3];
            for i in b * 256..(b + 1) * 256 {
                seen[Entropy::Mixed.of_page(i).code() as usize] = true;
            }
            assert_eq!(seen, [true; 3], "batch {b}");
        }
        // The class follows the documented bits; other entropies are the same for every page.
        assert_eq!(Entropy::Mixed.of_page(0), Entropy::Zero);
        assert_eq!(Entropy::Mixed.of_page(1), Entropy::Text);
        assert_eq!(Entropy::Mixed.of_page(3), Entropy::Random);
        assert_eq!(Entropy::Text.of_page(1), Entropy::Text);
        assert_eq!(Entropy::Zero.of_page(12345), Entropy::Zero);
    }

    #[test]
    fn default_config() {
        let c = GuestConfig::default();
        assert_eq!(c.memory, 1 << 30);
        assert_eq!(c.working_set, 256 << 20);
        assert_eq!(c.pattern, Pattern::Random);
        assert_eq!(c.rate, Rate::Unlimited);
        assert_eq!(c.heartbeat, Heartbeat::Time { us: 1000 });
        assert_eq!(c.tsc_hz, 0);
        assert!(!c.fill);
    }
}
