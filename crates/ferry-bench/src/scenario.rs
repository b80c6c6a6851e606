//! The scenarios of issues 7 and 12: one guest workload each, run on several engine
//! configurations, with each of the writers (page patterns) the scenario lists.

use std::fmt::Display;

use ferry_guest::{Entropy, GuestConfig, Heartbeat, Pattern, Rate, WriteSize};
use ferry_host::RamBackingChoice;
use serde::{Serialize, Serializer};

const MIB: u64 = 1 << 20;
const HUGE_PAGE: u64 = 2 * MIB;
const GIB: u64 = 1 << 30;
/// QEMU's `max-bandwidth` for "unlimited" (bytes/s): 100 GiB/s, far above loopback.
pub const QEMU_UNLIMITED_BW: u64 = 100 * GIB;
/// Pages written per progress byte of the bench's guests (as the outside guest of issue 12).
pub const PAGES_PER_BEAT: u32 = 1024;

/// Serializes a value by its `Display` form ("sequential", "pages:1024").
fn display<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The guest both engines run.
#[derive(Clone, Debug, Serialize)]
pub struct GuestSpec {
    /// Guest RAM, bytes.
    pub memory: u64,
    /// Working set, bytes.
    pub working_set: u64,
    /// Page content.
    pub entropy: String,
    /// Which pages the loop writes.
    #[serde(serialize_with = "display")]
    pub pattern: Pattern,
    /// Page writes per second (None: unlimited; Some(0): idle after the fill).
    pub rate: Option<u64>,
    /// Write the working set once at boot.
    pub fill: bool,
    /// What the guest writes to COM1: progress bytes by default.
    #[serde(serialize_with = "display")]
    pub heartbeat: Heartbeat,
}

impl GuestSpec {
    /// Random full-page writes at full speed over `ws` bytes of a `memory`-byte guest, a progress
    /// byte per [`PAGES_PER_BEAT`] pages written.
    pub fn busy(memory: u64, ws: u64) -> GuestSpec {
        GuestSpec {
            memory,
            working_set: ws,
            entropy: "random".into(),
            pattern: Pattern::Random,
            rate: None,
            fill: false,
            heartbeat: Heartbeat::Pages {
                every: PAGES_PER_BEAT,
            },
        }
    }

    /// Whether the guest writes pages after its fill (an idle guest has no writer pattern).
    pub fn writes(&self) -> bool {
        self.rate != Some(0)
    }

    /// Working-set pages.
    pub fn ws_pages(&self) -> u64 {
        self.working_set / 4096
    }

    /// The guest image configuration.
    pub fn config(&self) -> GuestConfig {
        GuestConfig {
            memory: self.memory,
            working_set: self.working_set,
            pattern: self.pattern,
            entropy: match self.entropy.as_str() {
                "zero" => Entropy::Zero,
                "text" => Entropy::Text,
                _ => Entropy::Random,
            },
            write_size: WriteSize::Page,
            rate: self.rate.map_or(Rate::Unlimited, Rate::PagesPerSec),
            fill: self.fill,
            heartbeat: self.heartbeat,
            ..GuestConfig::default()
        }
    }

    /// The writer, for tables: "sequential", "random", "mixed", or "idle" for a guest that only
    /// fills its RAM.
    pub fn writer(&self) -> String {
        if self.writes() {
            self.pattern.to_string()
        } else {
            "idle".into()
        }
    }

    /// One line for tables.
    pub fn describe(&self) -> String {
        let rate = match self.rate {
            None => format!("full-speed {} full-page writes", self.pattern),
            Some(0) => "idle".to_string(),
            Some(r) => format!("{r} {} page writes/s", self.pattern),
        };
        let beat = match self.heartbeat {
            Heartbeat::Pages { every } if self.writes() => {
                format!("a progress byte per {every} pages written")
            }
            Heartbeat::Pages { every } => {
                format!("a progress byte per {every} pages during the fill, then a 1 ms tick")
            }
            Heartbeat::Dots { every } => format!("an ASCII '.' per {every} pages written"),
            Heartbeat::Time { us } => format!("a time-driven heartbeat every {us} us"),
            Heartbeat::None => "nothing on COM1".into(),
        };
        format!(
            "{} guest, {} {} working set{}, {rate}, {beat}, 1 vCPU",
            size(self.memory),
            size(self.working_set),
            self.entropy,
            if self.fill { " filled at boot" } else { "" }
        )
    }

    /// The same guest scaled down by `div` (RAM at least 128 MiB), for `--quick`.
    pub fn scaled(&self, div: u64) -> GuestSpec {
        let memory = (self.memory / div).max(128 * MIB);
        let ws = if self.working_set + 48 * MIB >= self.memory {
            memory - 16 * MIB
        } else {
            (self.working_set / div).clamp(4 * MIB, memory / 2)
        };
        GuestSpec {
            memory,
            working_set: ws,
            ..self.clone()
        }
    }
}

/// What else runs on the host while the two engines migrate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum HostLoad {
    /// Nothing but the two VM hosts (and whatever else the machine runs).
    Idle,
    /// This many busy loops (`yes > /dev/null`, nice 0) from before the guests boot until they are
    /// gone: with one per core, a host whose CPUs are all busy.
    Busy {
        /// Busy-loop processes.
        hogs: u32,
    },
}

impl HostLoad {
    /// "idle" / "2 busy loops".
    pub fn describe(self) -> String {
        match self {
            HostLoad::Idle => "idle".into(),
            HostLoad::Busy { hogs } => format!("{hogs} busy loops (`yes > /dev/null`, nice 0)"),
        }
    }
}

/// `ferry migrate` flags.
#[derive(Clone, Debug, Serialize)]
pub struct FerrySettings {
    /// --strategy
    pub strategy: String,
    /// --downtime (ms)
    pub downtime_ms: u64,
    /// --channels (None: `ferry migrate`'s default, chosen from the link and the cores)
    pub channels: Option<u16>,
    /// --compression
    pub compression: String,
    /// --max-rounds
    pub max_rounds: u32,
    /// `--ram-backing` of both VM hosts (`vm run` and `vm receive`).
    pub ram_backing: RamBackingChoice,
}

impl Default for FerrySettings {
    /// `ferry migrate`'s defaults.
    fn default() -> Self {
        FerrySettings {
            strategy: "auto".into(),
            downtime_ms: 10,
            channels: None,
            compression: "adaptive".into(),
            max_rounds: 30,
            ram_backing: RamBackingChoice::Auto,
        }
    }
}

impl FerrySettings {
    /// The defaults with another strategy.
    pub fn strategy(s: &str) -> FerrySettings {
        FerrySettings {
            strategy: s.into(),
            ..FerrySettings::default()
        }
    }

    /// Channels as the table shows them (`auto`: `ferry migrate` chooses from the link).
    pub fn channel_label(&self) -> String {
        self.channels
            .map_or_else(|| "auto".to_string(), |n| n.to_string())
    }

    fn describe(&self) -> String {
        format!(
            "{}, downtime {} ms, {} ch, {}, RAM {}",
            self.strategy,
            self.downtime_ms,
            self.channel_label(),
            self.compression,
            self.ram_backing
        )
    }
}

/// QEMU migration capabilities and parameters (None: QEMU's default).
#[derive(Clone, Debug, Default, Serialize)]
pub struct QemuSettings {
    /// `max-bandwidth`, bytes/s (QEMU 7.2 default: 128 MiB/s).
    pub max_bandwidth: Option<u64>,
    /// `downtime-limit`, ms (default 300).
    pub downtime_limit_ms: Option<u64>,
    /// `postcopy-ram`, and `migrate-start-postcopy` after the first round.
    pub postcopy: bool,
    /// `auto-converge`.
    pub auto_converge: bool,
    /// `xbzrle` (default cache size).
    pub xbzrle: bool,
    /// `multifd` with this many channels and this compression (none, zlib, zstd).
    pub multifd: Option<(u16, String)>,
}

impl QemuSettings {
    /// Unlimited bandwidth, everything else default.
    pub fn unlimited() -> QemuSettings {
        QemuSettings {
            max_bandwidth: Some(QEMU_UNLIMITED_BW),
            ..QemuSettings::default()
        }
    }

    fn describe(&self) -> String {
        let mut s = vec![match self.max_bandwidth {
            None => "bw 128 MiB/s (default)".to_string(),
            Some(b) if b >= QEMU_UNLIMITED_BW => "bw unlimited".to_string(),
            Some(b) => format!("bw {} MiB/s", b / MIB),
        }];
        s.push(format!(
            "downtime-limit {} ms",
            self.downtime_limit_ms.unwrap_or(300)
        ));
        if self.postcopy {
            s.push("postcopy-ram".into());
        }
        if self.auto_converge {
            s.push("auto-converge".into());
        }
        if self.xbzrle {
            s.push("xbzrle".into());
        }
        if let Some((n, c)) = &self.multifd {
            s.push(format!("multifd {n} ch {c}"));
        }
        s.join(", ")
    }
}

/// Which engine a variant runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Engine {
    /// ferry (`ferry vm run` / `ferry vm receive` / `ferry migrate`).
    Ferry,
    /// qemu-system-x86_64 with KVM.
    Qemu,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Ferry => "ferry",
            Engine::Qemu => "QEMU",
        })
    }
}

/// How a variant migrates.
#[derive(Clone, Debug, Serialize)]
pub enum Method {
    /// A ferry migration.
    Ferry(FerrySettings),
    /// A QEMU migration.
    Qemu(QemuSettings),
    /// The engine cannot do this yet: a row marked n/a.
    NotApplicable(String),
}

/// One engine configuration within a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    /// Short name ("QEMU postcopy").
    pub label: String,
    /// Engine.
    pub engine: Engine,
    /// Settings.
    pub method: Method,
    /// Index of the ferry variant this (QEMU) row is compared with, if not the scenario's reference.
    pub compare_with: Option<usize>,
}

impl Variant {
    /// A ferry variant.
    pub fn ferry(label: &str, s: FerrySettings) -> Variant {
        Variant {
            label: label.into(),
            engine: Engine::Ferry,
            method: Method::Ferry(s),
            compare_with: None,
        }
    }

    /// A QEMU variant.
    pub fn qemu(label: &str, s: QemuSettings) -> Variant {
        Variant {
            label: label.into(),
            engine: Engine::Qemu,
            method: Method::Qemu(s),
            compare_with: None,
        }
    }

    /// A row the engine cannot run.
    pub fn not_applicable(label: &str, engine: Engine, why: &str) -> Variant {
        Variant {
            label: label.into(),
            engine,
            method: Method::NotApplicable(why.into()),
            compare_with: None,
        }
    }

    /// The same row, compared with the scenario's variant `index` (e.g. QEMU's post-copy with
    /// ferry's).
    pub fn compared_with(mut self, index: usize) -> Variant {
        self.compare_with = Some(index);
        self
    }

    /// The settings, for tables.
    pub fn describe(&self) -> String {
        match &self.method {
            Method::Ferry(f) => f.describe(),
            Method::Qemu(q) => q.describe(),
            Method::NotApplicable(why) => format!("n/a: {why}"),
        }
    }
}

/// A link of the network lab between source and destination.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LabSpec {
    /// `tc tbf` rate of the link, both directions, bit/s.
    pub rate_bit: u64,
    /// Delay the proxy adds in each direction, ms (the round trip is twice this).
    pub one_way_delay_ms: u64,
    /// Bytes the proxy holds per direction and connection. It needs rate x delay to fill the link;
    /// what it holds beyond that is a queue in front of the link, which whatever is sent last (the
    /// switch-over's pages, a post-copy page the guest waits for) has to wait behind. The proxy's
    /// own default, 16 MiB, is 130 ms of queue at 1 Gbit/s: a loaded "20 ms" link then has a
    /// 150 ms round trip, so [`LabSpec::new`] gives it 4 x rate x delay (the least NETLAB.md
    /// recommends for a full link: 5 MB at 1 Gbit/s and 10 ms, about 30 ms of queue).
    pub proxy_buffer: usize,
}

impl LabSpec {
    /// A link of `rate_bit` with `one_way_delay_ms` each way and a proxy buffer of 4 x rate x
    /// delay (at least 1 MiB).
    pub fn new(rate_bit: u64, one_way_delay_ms: u64) -> LabSpec {
        let bdp = rate_bit / 8 * one_way_delay_ms / 1000;
        LabSpec {
            rate_bit,
            one_way_delay_ms,
            proxy_buffer: (4 * bdp).max(MIB) as usize,
        }
    }

    /// 1 Gbit/s, 20 ms round trip.
    pub fn gbit_20ms() -> LabSpec {
        LabSpec::new(1_000_000_000, 10)
    }

    /// "1 Gbit/s, 20 ms RTT".
    pub fn describe(&self) -> String {
        let r = self.rate_bit;
        let rate = if r >= 1_000_000_000 && r.is_multiple_of(1_000_000_000) {
            format!("{} Gbit/s", r / 1_000_000_000)
        } else if r >= 1_000_000 && r.is_multiple_of(1_000_000) {
            format!("{} Mbit/s", r / 1_000_000)
        } else {
            format!("{r} bit/s")
        };
        format!("{rate}, {} ms RTT", 2 * self.one_way_delay_ms)
    }
}

/// A guest and the variants that migrate it.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Short id ("a", "d-zero", ...), as given to `--scenario`.
    pub id: String,
    /// What it measures.
    pub title: String,
    /// The guest.
    pub guest: GuestSpec,
    /// Seconds the guest runs before the migration starts.
    pub warmup_s: f64,
    /// Engine configurations.
    pub variants: Vec<Variant>,
    /// Index of the ferry variant the QEMU rows are compared with.
    pub reference: usize,
    /// Why the scenario is not run here.
    pub skip: Option<String>,
    /// Run on this link of the network lab instead of loopback.
    pub lab: Option<LabSpec>,
    /// The writers the scenario runs with, one after the other (ignored for an idle guest).
    #[serde(serialize_with = "patterns")]
    pub patterns: Vec<Pattern>,
    /// What else keeps the host busy.
    pub load: HostLoad,
    /// Part of the baseline table of issue 12 (what `ferry bench qemu` runs by default).
    pub baseline: bool,
}

fn patterns<S: Serializer>(v: &[Pattern], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

impl Scenario {
    /// A scenario on loopback, idle host, run with sequential and random writers, not in the
    /// baseline.
    fn new(id: &str, title: &str, guest: GuestSpec, variants: Vec<Variant>) -> Scenario {
        Scenario {
            id: id.into(),
            title: title.into(),
            guest,
            warmup_s: 1.0,
            variants,
            reference: 0,
            skip: None,
            lab: None,
            patterns: vec![Pattern::Sequential, Pattern::Random],
            load: HostLoad::Idle,
            baseline: false,
        }
    }

    /// The same, in the baseline.
    fn baseline(mut self) -> Scenario {
        self.baseline = true;
        self
    }

    /// Keeps only the variants `keep` accepts, with the reference and the comparisons pointing at
    /// the same rows as before (a comparison with a row that is gone is dropped; the reference
    /// falls back to the first ferry row).
    pub fn retain_variants(&mut self, keep: impl Fn(&Variant) -> bool) {
        let kept: Vec<usize> = (0..self.variants.len())
            .filter(|&i| keep(&self.variants[i]))
            .collect();
        let new_index = |old: usize| kept.iter().position(|&k| k == old);
        let reference = new_index(self.reference);
        let mut variants: Vec<Variant> = kept.iter().map(|&i| self.variants[i].clone()).collect();
        for v in &mut variants {
            v.compare_with = v.compare_with.and_then(new_index);
        }
        self.reference = reference
            .or_else(|| variants.iter().position(|v| v.engine == Engine::Ferry))
            .unwrap_or(0);
        self.variants = variants;
    }

    /// The guests to run: one per pattern for a writing guest, the guest as it is for an idle one.
    pub fn guests(&self) -> Vec<GuestSpec> {
        if !self.guest.writes() || self.patterns.is_empty() {
            return vec![self.guest.clone()];
        }
        self.patterns
            .iter()
            .map(|&pattern| GuestSpec {
                pattern,
                ..self.guest.clone()
            })
            .collect()
    }
}

/// All scenarios, in order. Those marked [`Scenario::baseline`] make the table of issue 12 (b, c,
/// c-busy, d, e with QEMU alternating on the same image); the others (a, c-more, d-zero, f) are the
/// rest of issue 7's suite, and `ram` compares guest RAM backings (issue 12 item 2).
pub fn all() -> Vec<Scenario> {
    let ferry_auto = || Variant::ferry("ferry auto (default)", FerrySettings::default());
    let ferry_precopy = || Variant::ferry("ferry precopy", FerrySettings::strategy("precopy"));
    // Guest RAM as it was before huge-page backings (a memfd with 4 KiB pages here): the old
    // default, side by side with the new one.
    let ferry_memfd = || {
        Variant::ferry(
            "ferry memfd RAM (auto)",
            FerrySettings {
                ram_backing: RamBackingChoice::Memfd,
                ..FerrySettings::default()
            },
        )
    };
    // RAM from the host's 2 MiB hugetlb pool: a row only where the pool has room for this guest
    // (the source's RAM; a destination on a post-copy-capable strategy takes another backing).
    let ferry_hugetlb = |memory: u64| {
        const LABEL: &str = "ferry hugetlb RAM (auto)";
        let pool = ferry_host::HostMemory::read().hugetlb.unwrap_or_default();
        if pool.available() * HUGE_PAGE < memory {
            Variant::not_applicable(
                LABEL,
                Engine::Ferry,
                &format!(
                    "the 2 MiB hugetlb pool has {} free pages, {} needed (sysctl vm.nr_hugepages)",
                    pool.available(),
                    memory.div_ceil(HUGE_PAGE)
                ),
            )
        } else {
            Variant::ferry(
                LABEL,
                FerrySettings {
                    ram_backing: RamBackingChoice::Hugetlb,
                    ..FerrySettings::default()
                },
            )
        }
    };
    // QEMU's "postcopy" row is one pre-copy round, then post-copy: ferry's hybrid is the match.
    let ferry_hybrid = || Variant::ferry("ferry hybrid", FerrySettings::strategy("hybrid"));
    let ferry_postcopy = || Variant::ferry("ferry postcopy", FerrySettings::strategy("postcopy"));
    let qemu_precopy = || Variant::qemu("QEMU precopy", QemuSettings::unlimited());
    // Compared with ferry's post-copy row (at `ferry_row`).
    let qemu_postcopy = |ferry_row: usize| {
        Variant::qemu(
            "QEMU postcopy",
            QemuSettings {
                postcopy: true,
                ..QemuSettings::unlimited()
            },
        )
        .compared_with(ferry_row)
    };
    let multifd = |c: &str| {
        Variant::qemu(
            &format!("QEMU multifd 2 {c}"),
            QemuSettings {
                multifd: Some((2, c.into())),
                ..QemuSettings::unlimited()
            },
        )
    };
    let auto_converge = || {
        Variant::qemu(
            "QEMU auto-converge",
            QemuSettings {
                auto_converge: true,
                ..QemuSettings::unlimited()
            },
        )
    };
    // Variants alternate between the engines, so that whatever drifts during a repetition hits
    // both alike (the order is reversed every other repetition, too).
    let c_variants = || {
        vec![
            ferry_auto(),
            qemu_precopy(),
            ferry_precopy(),
            multifd("none"),
            ferry_postcopy(),
            qemu_postcopy(4),
            ferry_memfd(),
        ]
    };
    let busy = |id: &str, title: &str, memory, ws, variants| {
        Scenario::new(id, title, GuestSpec::busy(memory, ws), variants)
    };
    vec![
        Scenario {
            patterns: vec![Pattern::Random],
            ..busy(
                "a",
                "defaults against defaults",
                512 * MIB,
                64 * MIB,
                vec![
                    ferry_auto(),
                    Variant::qemu("QEMU defaults", QemuSettings::default()),
                ],
            )
        },
        busy(
            "b",
            "512 MiB guest, 64 MiB working set, unlimited bandwidth on both",
            512 * MIB,
            64 * MIB,
            vec![ferry_auto(), qemu_precopy(), ferry_memfd()],
        )
        .baseline(),
        Scenario {
            patterns: vec![Pattern::Sequential, Pattern::Random, Pattern::Mixed],
            ..busy(
                "c",
                "a busy 1 GiB guest (256 MiB working set): pre-copy, multifd, post-copy",
                GIB,
                256 * MIB,
                c_variants(),
            )
        }
        .baseline(),
        Scenario {
            load: HostLoad::Busy { hogs: 2 },
            ..busy(
                "c-busy",
                "scenario c on a host whose two cores are kept busy",
                GIB,
                256 * MIB,
                vec![ferry_auto(), qemu_precopy()],
            )
        }
        .baseline(),
        Scenario {
            patterns: vec![Pattern::Random],
            ..busy(
                "c-more",
                "scenario c, the other QEMU modes and ferry's hybrid",
                GIB,
                256 * MIB,
                vec![
                    ferry_hybrid(),
                    auto_converge(),
                    Variant::qemu(
                        "QEMU xbzrle",
                        QemuSettings {
                            xbzrle: true,
                            ..QemuSettings::unlimited()
                        },
                    ),
                    multifd("zstd"),
                ],
            )
        },
        Scenario {
            // The first pass (`first pass MB/s`) is the number here: the guest's first writes over
            // fresh RAM, on each backing ferry offers, against QEMU's anonymous THP.
            patterns: vec![Pattern::Sequential],
            ..busy(
                "ram",
                "guest RAM backings: scenario c's guest on each backing ferry offers",
                GIB,
                256 * MIB,
                vec![
                    ferry_auto(),
                    qemu_precopy(),
                    ferry_memfd(),
                    ferry_hugetlb(GIB),
                ],
            )
        },
        Scenario {
            // The guest's fill runs before the migration (the harness waits for it): the migration
            // starts on a guest that is idle, with all of its RAM holding data.
            warmup_s: 1.0,
            ..Scenario::new(
                "d",
                "bulk throughput: 2000 MiB of random data, idle",
                GuestSpec {
                    memory: 2 * GIB,
                    working_set: 2000 * MIB,
                    fill: true,
                    rate: Some(0),
                    pattern: Pattern::Sequential,
                    ..GuestSpec::busy(0, 0)
                },
                vec![ferry_auto(), qemu_precopy(), multifd("none")],
            )
        }
        .baseline(),
        Scenario::new(
            "d-zero",
            "an idle 2 GiB guest whose RAM is all zero",
            GuestSpec {
                memory: 2 * GIB,
                working_set: 16 * MIB,
                entropy: "zero".into(),
                rate: Some(0),
                ..GuestSpec::busy(0, 0)
            },
            vec![ferry_auto(), qemu_precopy()],
        ),
        busy(
            "e",
            "1 GiB guest, 512 MiB working set: does not converge under plain pre-copy",
            GIB,
            512 * MIB,
            vec![ferry_auto(), qemu_precopy()],
        )
        .baseline(),
        Scenario {
            lab: Some(LabSpec::gbit_20ms()),
            patterns: vec![Pattern::Random],
            ..busy(
                "f",
                "a 1 Gbit/s, 20 ms RTT link from the network lab",
                GIB,
                256 * MIB,
                vec![
                    ferry_auto(),
                    // Unlimited: the link is the limit.
                    qemu_precopy(),
                    ferry_precopy(),
                    ferry_postcopy(),
                    qemu_postcopy(3),
                ],
            )
        },
    ]
}

/// The smoke-test scenario: a 128 MiB guest writing over 16 MiB, both engines' defaults but with
/// unlimited bandwidth for QEMU.
pub fn smoke() -> Scenario {
    Scenario {
        warmup_s: 0.3,
        patterns: vec![Pattern::Sequential],
        ..Scenario::new(
            "smoke",
            "smoke test",
            GuestSpec::busy(128 * MIB, 16 * MIB),
            vec![
                Variant::ferry("ferry auto (default)", FerrySettings::default()),
                Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
            ],
        )
    }
}

/// Bytes as "512 MiB" / "2 GiB".
pub fn size(b: u64) -> String {
    if b >= GIB && b.is_multiple_of(GIB) {
        format!("{} GiB", b / GIB)
    } else {
        format!("{} MiB", b / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_consistent() {
        let all = all();
        let ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
        for want in ["b", "c", "c-busy", "d", "e"] {
            let sc = all.iter().find(|s| s.id == want).expect(want);
            assert!(sc.baseline, "{want} is in the baseline");
        }
        assert_eq!(ids.len(), all.iter().filter(|s| !s.id.is_empty()).count());
        for sc in &all {
            assert!(sc.guest.working_set < sc.guest.memory, "{}", sc.id);
            assert_eq!(sc.variants[sc.reference].engine, Engine::Ferry, "{}", sc.id);
            for v in &sc.variants {
                if let Some(i) = v.compare_with {
                    assert_eq!(
                        sc.variants[i].engine,
                        Engine::Ferry,
                        "{} {}",
                        sc.id,
                        v.label
                    );
                }
            }
            // Every guest builds.
            for g in sc.guests() {
                ferry_guest::build_image(&GuestConfig {
                    tsc_hz: 2_000_000_000,
                    ..g.config()
                })
                .unwrap();
            }
        }
        let c = all.iter().find(|s| s.id == "c").unwrap();
        assert_eq!(c.guests().len(), 3);
        assert_eq!(c.guests()[0].pattern, Pattern::Sequential);
        let qp = c
            .variants
            .iter()
            .find(|v| v.label == "QEMU postcopy")
            .unwrap();
        assert_eq!(c.variants[qp.compare_with.unwrap()].label, "ferry postcopy");
        let d = all.iter().find(|s| s.id == "d").unwrap();
        assert_eq!(d.guests().len(), 1, "an idle guest has no writers");
        assert_eq!(d.guests()[0].writer(), "idle");
        assert_eq!(d.guest.working_set, 2000 * MIB);
        let busy = all.iter().find(|s| s.id == "c-busy").unwrap();
        assert_eq!(busy.load, HostLoad::Busy { hogs: 2 });
    }

    #[test]
    fn filtering_variants_keeps_the_comparisons() {
        let mut c = all().into_iter().find(|s| s.id == "c").unwrap();
        c.retain_variants(|v| v.label.contains("postcopy"));
        let labels: Vec<&str> = c.variants.iter().map(|v| v.label.as_str()).collect();
        assert_eq!(labels, ["ferry postcopy", "QEMU postcopy"]);
        assert_eq!(c.variants[1].compare_with, Some(0));
        assert_eq!(c.reference, 0, "the reference row is gone: first ferry row");
        let mut c = all().into_iter().find(|s| s.id == "c").unwrap();
        c.retain_variants(|v| v.engine == Engine::Qemu);
        assert!(c.variants.iter().all(|v| v.compare_with.is_none()));
        let mut b = all().into_iter().find(|s| s.id == "b").unwrap();
        b.retain_variants(|v| v.engine == Engine::Qemu);
        assert_eq!((b.variants.len(), b.reference), (1, 0));
    }

    #[test]
    fn quick_guests_stay_consistent() {
        for sc in all() {
            let g = sc.guest.scaled(4);
            assert!(g.working_set < g.memory, "{}", sc.id);
            assert!(g.memory >= 128 * MIB);
        }
    }
}
