//! Prometheus metrics (OpenMetrics text exposition via prometheus-client).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `ferry_migrations_started_total` | counter | strategy | migrations this host started sending |
//! | `ferry_migrations_completed_total` | counter | strategy | ... that ended with the VM on the destination |
//! | `ferry_migrations_failed_total` | counter | strategy | ... that failed |
//! | `ferry_migrations_received_total` | counter | | VMs that arrived here by migration |
//! | `ferry_migration_bytes_sent_total` | counter | | bytes on the wire of completed outgoing migrations |
//! | `ferry_migration_downtime_seconds` | histogram | | guest-observed pause at switch-over (ferry guests) |
//! | `ferry_migration_duration_seconds` | histogram | | total time of completed migrations |
//! | `ferry_migration_dirty_rate_bytes_per_second` | histogram | | guest dirty rate, one sample per live round |
//! | `ferry_migrations_in_flight` | gauge | | migrations in progress, in and out |
//! | `ferry_host_vms` | gauge | host | VMs on this host |
//! | `ferry_host_vm_memory_bytes` | gauge | host | their guest RAM |
//! | `ferry_host_cpu_usage_ratio` | gauge | host | busy fraction of all CPUs |
//! | `ferry_host_memory_used_bytes` | gauge | host | host RAM in use |
//! | `ferry_host_memory_total_bytes` | gauge | host | host RAM |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::types::LoadInfo;

/// The `strategy` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StrategyLabel {
    /// The strategy asked for.
    pub strategy: String,
}

/// The `host` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    /// The host's name.
    pub host: String,
}

/// Every metric the daemon exports, registered once.
pub struct Metrics {
    registry: Registry,
    host: HostLabel,
    started: Family<StrategyLabel, Counter>,
    completed: Family<StrategyLabel, Counter>,
    failed: Family<StrategyLabel, Counter>,
    received: Counter,
    bytes_sent: Counter,
    downtime: Histogram,
    duration: Histogram,
    dirty_rate: Histogram,
    in_flight: Gauge,
    vms: Family<HostLabel, Gauge>,
    vm_memory: Family<HostLabel, Gauge>,
    cpu_usage: Family<HostLabel, Gauge<f64, AtomicU64>>,
    memory_used: Family<HostLabel, Gauge>,
    memory_total: Family<HostLabel, Gauge>,
}

impl Metrics {
    /// Registers the metrics of host `host`.
    pub fn new(host: &str) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            host: HostLabel { host: host.into() },
            started: Family::default(),
            completed: Family::default(),
            failed: Family::default(),
            received: Counter::default(),
            bytes_sent: Counter::default(),
            // 0.5 ms .. about 8 s.
            downtime: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            // 50 ms .. about 14 min.
            duration: Histogram::new(exponential_buckets(0.05, 2.0, 15)),
            // 1 MB/s .. about 16 GB/s.
            dirty_rate: Histogram::new(exponential_buckets(1e6, 2.0, 15)),
            in_flight: Gauge::default(),
            vms: Family::default(),
            vm_memory: Family::default(),
            cpu_usage: Family::default(),
            memory_used: Family::default(),
            memory_total: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "ferry_migrations_started",
            "Migrations this host started sending",
            m.started.clone(),
        );
        r.register(
            "ferry_migrations_completed",
            "Outgoing migrations that ended with the VM on the destination",
            m.completed.clone(),
        );
        r.register(
            "ferry_migrations_failed",
            "Outgoing migrations that failed",
            m.failed.clone(),
        );
        r.register(
            "ferry_migrations_received",
            "VMs that arrived on this host by migration",
            m.received.clone(),
        );
        r.register(
            "ferry_migration_bytes_sent",
            "Bytes on the wire of completed outgoing migrations",
            m.bytes_sent.clone(),
        );
        r.register(
            "ferry_migration_downtime_seconds",
            "Guest-observed pause at switch-over (heartbeat gap across hosts)",
            m.downtime.clone(),
        );
        r.register(
            "ferry_migration_duration_seconds",
            "Total time of completed migrations",
            m.duration.clone(),
        );
        r.register(
            "ferry_migration_dirty_rate_bytes_per_second",
            "Rate at which guests dirtied memory, one sample per live round",
            m.dirty_rate.clone(),
        );
        r.register(
            "ferry_migrations_in_flight",
            "Migrations in progress on this host, in and out",
            m.in_flight.clone(),
        );
        r.register("ferry_host_vms", "VMs on this host", m.vms.clone());
        r.register(
            "ferry_host_vm_memory_bytes",
            "Guest RAM of the VMs on this host",
            m.vm_memory.clone(),
        );
        r.register(
            "ferry_host_cpu_usage_ratio",
            "Busy fraction of all the host's CPUs",
            m.cpu_usage.clone(),
        );
        r.register(
            "ferry_host_memory_used_bytes",
            "Host RAM in use (total minus available)",
            m.memory_used.clone(),
        );
        r.register(
            "ferry_host_memory_total_bytes",
            "Host RAM",
            m.memory_total.clone(),
        );
        Metrics { registry, ..m }
    }

    fn label(strategy: &str) -> StrategyLabel {
        StrategyLabel {
            strategy: strategy.into(),
        }
    }

    /// An outgoing migration started.
    pub fn started(&self, strategy: &str) {
        self.started.get_or_create(&Self::label(strategy)).inc();
    }

    /// An outgoing migration completed.
    pub fn completed(&self, strategy: &str, report: &ferry_migrate::Report) {
        self.completed.get_or_create(&Self::label(strategy)).inc();
        self.bytes_sent.inc_by(report.bytes_sent);
        self.duration.observe(report.total_ms / 1e3);
        if let Some(g) = report.guest_observed {
            self.downtime.observe(g.gap_ns as f64 / 1e9);
        }
    }

    /// An outgoing migration failed.
    pub fn failed(&self, strategy: &str) {
        self.failed.get_or_create(&Self::label(strategy)).inc();
    }

    /// A VM arrived here.
    pub fn received(&self) {
        self.received.inc();
    }

    /// A live round ended: the guest's dirty rate during it.
    pub fn round(&self, round: &ferry_model::RoundStats) {
        if round.round > 0 && round.seconds > 0.0 {
            self.dirty_rate.observe(round.dirty_rate() * PAGE_BYTES);
        }
    }

    /// Sets the host gauges.
    pub fn set_load(&self, load: &LoadInfo) {
        let h = &self.host;
        self.vms.get_or_create(h).set(load.vms as i64);
        self.vm_memory.get_or_create(h).set(load.vm_memory as i64);
        self.cpu_usage.get_or_create(h).set(load.cpu_usage);
        self.memory_used
            .get_or_create(h)
            .set(load.memory_used as i64);
        self.memory_total
            .get_or_create(h)
            .set(load.memory_total as i64);
        self.in_flight.set(load.migrations_in_flight as i64);
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// The guest page size the engine counts dirty pages in.
const PAGE_BYTES: f64 = 4096.0;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_histograms_appear_in_the_text() {
        let m = Metrics::new("node1");
        m.started("precopy");
        m.started("precopy");
        m.failed("precopy");
        let report = ferry_migrate::Report {
            total_ms: 1500.0,
            bytes_sent: 1 << 20,
            ..Default::default()
        };
        m.completed("precopy", &report);
        m.set_load(&LoadInfo {
            vms: 3,
            cpu_usage: 0.25,
            ..Default::default()
        });
        let t = m.encode();
        assert!(
            t.contains("ferry_migrations_started_total{strategy=\"precopy\"} 2"),
            "{t}"
        );
        assert!(t.contains("ferry_migrations_failed_total{strategy=\"precopy\"} 1"));
        assert!(t.contains("ferry_migration_bytes_sent_total 1048576"));
        assert!(t.contains("ferry_migration_duration_seconds_count 1"));
        assert!(t.contains("ferry_migration_duration_seconds_sum 1.5"));
        assert!(t.contains("ferry_host_vms{host=\"node1\"} 3"));
        assert!(t.contains("ferry_host_cpu_usage_ratio{host=\"node1\"} 0.25"));
        assert!(t.trim_end().ends_with("# EOF"));
    }
}
