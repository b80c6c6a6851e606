//! The scenarios of issue 7: one guest workload each, run on several engine configurations.

use ferry_guest::{Entropy, GuestConfig, Pattern, Rate, WriteSize};
use serde::Serialize;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// QEMU's `max-bandwidth` for "unlimited" (bytes/s): 100 GiB/s, far above loopback.
pub const QEMU_UNLIMITED_BW: u64 = 100 * GIB;

/// The guest both engines run.
#[derive(Clone, Debug, Serialize)]
pub struct GuestSpec {
    /// Guest RAM, bytes.
    pub memory: u64,
    /// Working set, bytes.
    pub working_set: u64,
    /// Page content.
    pub entropy: String,
    /// Page writes per second (None: unlimited; Some(0): idle after the fill).
    pub rate: Option<u64>,
    /// Write the working set once at boot.
    pub fill: bool,
}

impl GuestSpec {
    /// Random full-page writes at full speed over `ws` bytes of a `memory`-byte guest.
    pub fn busy(memory: u64, ws: u64) -> GuestSpec {
        GuestSpec {
            memory,
            working_set: ws,
            entropy: "random".into(),
            rate: None,
            fill: false,
        }
    }

    /// The guest image configuration.
    pub fn config(&self) -> GuestConfig {
        GuestConfig {
            memory: self.memory,
            working_set: self.working_set,
            pattern: Pattern::Random,
            entropy: match self.entropy.as_str() {
                "zero" => Entropy::Zero,
                "text" => Entropy::Text,
                _ => Entropy::Random,
            },
            write_size: WriteSize::Page,
            rate: self.rate.map_or(Rate::Unlimited, Rate::PagesPerSec),
            fill: self.fill,
            ..GuestConfig::default()
        }
    }

    /// One line for tables.
    pub fn describe(&self) -> String {
        let rate = match self.rate {
            None => "full-speed random page writes".to_string(),
            Some(0) => "idle".to_string(),
            Some(r) => format!("{r} page writes/s"),
        };
        format!(
            "{} guest, {} {} working set{}, {rate}, 1 vCPU",
            size(self.memory),
            size(self.working_set),
            self.entropy,
            if self.fill { " filled at boot" } else { "" }
        )
    }

    /// The same guest scaled down by `div` (RAM at least 128 MiB), for `--quick`.
    pub fn scaled(&self, div: u64) -> GuestSpec {
        let memory = (self.memory / div).max(128 * MIB);
        let ws = if self.working_set + 16 * MIB >= self.memory {
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
            "{}, downtime {} ms, {} ch, {}",
            self.strategy,
            self.downtime_ms,
            self.channel_label(),
            self.compression
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
}

impl Variant {
    /// A ferry variant.
    pub fn ferry(label: &str, s: FerrySettings) -> Variant {
        Variant {
            label: label.into(),
            engine: Engine::Ferry,
            method: Method::Ferry(s),
        }
    }

    /// A QEMU variant.
    pub fn qemu(label: &str, s: QemuSettings) -> Variant {
        Variant {
            label: label.into(),
            engine: Engine::Qemu,
            method: Method::Qemu(s),
        }
    }

    /// A row the engine cannot run.
    pub fn not_applicable(label: &str, engine: Engine, why: &str) -> Variant {
        Variant {
            label: label.into(),
            engine,
            method: Method::NotApplicable(why.into()),
        }
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
}

/// All scenarios of issue 7, in order.
pub fn all() -> Vec<Scenario> {
    let ferry_auto = || Variant::ferry("ferry auto (default)", FerrySettings::default());
    let ferry_precopy = || Variant::ferry("ferry precopy", FerrySettings::strategy("precopy"));
    // QEMU's "postcopy" row is one pre-copy round, then post-copy: ferry's hybrid is the match.
    let ferry_hybrid = || Variant::ferry("ferry hybrid", FerrySettings::strategy("hybrid"));
    let ferry_postcopy = || Variant::ferry("ferry postcopy", FerrySettings::strategy("postcopy"));
    let postcopy = || QemuSettings {
        postcopy: true,
        ..QemuSettings::unlimited()
    };
    let auto_converge = || QemuSettings {
        auto_converge: true,
        ..QemuSettings::unlimited()
    };
    vec![
        Scenario {
            id: "a".into(),
            title: "defaults against defaults".into(),
            guest: GuestSpec::busy(512 * MIB, 64 * MIB),
            warmup_s: 1.0,
            variants: vec![
                ferry_auto(),
                Variant::qemu("QEMU defaults", QemuSettings::default()),
            ],
            reference: 0,
            skip: None,
            lab: None,
        },
        Scenario {
            id: "b".into(),
            title: "unlimited bandwidth on both".into(),
            guest: GuestSpec::busy(512 * MIB, 64 * MIB),
            warmup_s: 1.0,
            variants: vec![
                ferry_auto(),
                Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
            ],
            reference: 0,
            skip: None,
            lab: None,
        },
        Scenario {
            id: "c".into(),
            title: "a busy 1 GiB guest, every QEMU mode".into(),
            guest: GuestSpec::busy(GIB, 256 * MIB),
            warmup_s: 1.0,
            variants: vec![
                ferry_auto(),
                ferry_precopy(),
                ferry_hybrid(),
                ferry_postcopy(),
                Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
                Variant::qemu("QEMU postcopy", postcopy()),
                Variant::qemu("QEMU auto-converge", auto_converge()),
                Variant::qemu(
                    "QEMU xbzrle",
                    QemuSettings {
                        xbzrle: true,
                        ..QemuSettings::unlimited()
                    },
                ),
                Variant::qemu(
                    "QEMU multifd 2 none",
                    QemuSettings {
                        multifd: Some((2, "none".into())),
                        ..QemuSettings::unlimited()
                    },
                ),
                Variant::qemu(
                    "QEMU multifd 2 zstd",
                    QemuSettings {
                        multifd: Some((2, "zstd".into())),
                        ..QemuSettings::unlimited()
                    },
                ),
            ],
            reference: 0,
            skip: None,
            lab: None,
        },
        Scenario {
            id: "d".into(),
            title: "bulk throughput: 2 GiB of random data, idle".into(),
            guest: GuestSpec {
                memory: 2 * GIB,
                working_set: 2 * GIB - 16 * MIB,
                entropy: "random".into(),
                rate: Some(0),
                fill: true,
            },
            warmup_s: 0.5,
            variants: vec![
                ferry_auto(),
                Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
                Variant::qemu(
                    "QEMU multifd 2 none",
                    QemuSettings {
                        multifd: Some((2, "none".into())),
                        ..QemuSettings::unlimited()
                    },
                ),
            ],
            reference: 0,
            skip: None,
            lab: None,
        },
        Scenario {
            id: "d-zero".into(),
            title: "an idle 2 GiB guest whose RAM is all zero".into(),
            guest: GuestSpec {
                memory: 2 * GIB,
                working_set: 16 * MIB,
                entropy: "zero".into(),
                rate: Some(0),
                fill: false,
            },
            warmup_s: 0.5,
            variants: vec![
                ferry_auto(),
                Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
            ],
            reference: 0,
            skip: None,
            lab: None,
        },
        Scenario {
            id: "e".into(),
            title: "a guest that does not converge under plain pre-copy".into(),
            guest: GuestSpec::busy(GIB, 512 * MIB),
            warmup_s: 1.0,
            variants: vec![
                ferry_auto(),
                ferry_precopy(),
                ferry_hybrid(),
                ferry_postcopy(),
                Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
                Variant::qemu("QEMU auto-converge", auto_converge()),
                Variant::qemu("QEMU postcopy", postcopy()),
            ],
            reference: 0,
            skip: None,
            lab: None,
        },
        Scenario {
            id: "f".into(),
            title: "a 1 Gbit/s, 20 ms RTT link from the network lab".into(),
            guest: GuestSpec::busy(GIB, 256 * MIB),
            warmup_s: 1.0,
            variants: vec![
                ferry_auto(),
                ferry_precopy(),
                ferry_postcopy(),
                // Unlimited: the link is the limit.
                Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
                Variant::qemu("QEMU postcopy", postcopy()),
            ],
            reference: 0,
            skip: None,
            lab: Some(LabSpec::gbit_20ms()),
        },
    ]
}

/// The smoke-test scenario: a 128 MiB guest writing over 16 MiB, both engines' defaults but with
/// unlimited bandwidth for QEMU.
pub fn smoke() -> Scenario {
    Scenario {
        id: "smoke".into(),
        title: "smoke test".into(),
        guest: GuestSpec::busy(128 * MIB, 16 * MIB),
        warmup_s: 0.3,
        variants: vec![
            Variant::ferry("ferry auto (default)", FerrySettings::default()),
            Variant::qemu("QEMU precopy", QemuSettings::unlimited()),
        ],
        reference: 0,
        skip: None,
        lab: None,
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
