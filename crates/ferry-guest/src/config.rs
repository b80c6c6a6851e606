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
    /// Heartbeat period in microseconds.
    pub heartbeat_us: u32,
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
            heartbeat_us: 1000,
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
            _ => Err(ParseParamError {
                what: "pattern",
                value: s.to_string(),
                expected: "sequential, random or hotcold",
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
        for p in [Pattern::Sequential, Pattern::Random, Pattern::HotCold] {
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
        assert!(e.to_string().contains("sequential, random or hotcold"));
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
        assert_eq!(c.heartbeat_us, 1000);
        assert_eq!(c.tsc_hz, 0);
        assert!(!c.fill);
    }
}
