//! Run results: the metrics table, CSV and JSON output.

use serde::Serialize;
use std::fmt::Write as _;

/// Outcome of a drain or evacuation request.
#[derive(Debug, Clone, Serialize)]
pub struct OpOutcome {
    /// `drain` or `evacuate`.
    pub kind: String,
    /// Host.
    pub host: usize,
    /// Deadline (drain) or failure time (evacuation), s.
    pub deadline_s: f64,
    /// When the host became empty (the end of the last migration off it), if it did.
    pub emptied_at_s: Option<f64>,
    /// The host was empty at or before the deadline (compared exactly, no slack).
    pub met: bool,
    /// Why it could not be done, if it could not.
    pub problem: Option<String>,
}

impl OpOutcome {
    /// One line for people: what was asked and what happened.
    pub fn summary(&self) -> String {
        let what = match self.emptied_at_s {
            Some(e) if self.met => {
                format!("emptied at {e:.1} s, {:.1} s early", self.deadline_s - e)
            }
            Some(e) => format!("emptied at {e:.1} s, LATE by {:.1} s", e - self.deadline_s),
            None => "NOT emptied".to_string(),
        };
        let problem = self
            .problem
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        format!(
            "{} host {} by {:.1} s: {what}{problem}",
            self.kind, self.host, self.deadline_s
        )
    }
}

/// Metrics of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Policy name.
    pub policy: String,
    /// Trace name.
    pub trace: String,
    /// Hosts.
    pub hosts: usize,
    /// VMs.
    pub vms: usize,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Energy, kWh.
    pub energy_kwh: f64,
    /// Migrations started.
    pub migrations: u64,
    /// SLA violation time per active host (fraction).
    pub slatah: f64,
    /// Performance degradation due to migrations (fraction).
    pub pdm: f64,
    /// SLATAH × PDM.
    pub slav: f64,
    /// Energy × SLAV.
    pub esv: f64,
    /// Active-to-off host transitions.
    pub host_shutdowns: u64,
    /// Data moved by migrations (pre-copy model), GB.
    pub moved_gb: f64,
    /// Summed stop-and-copy downtime, s.
    pub downtime_s: f64,
    /// VMs lost to host failures (not evacuated in time).
    pub vms_lost: u64,
    /// VMs that found no host at start (CloudSim does not create them).
    pub vms_not_created: u64,
    /// VMs dropped after requesting 0 MIPS at a measurement (CloudSim's completed VMs).
    pub vms_dropped: u64,
    /// Drains and evacuations.
    pub operations: Vec<OpOutcome>,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// Raw totals behind SLATAH and PDM (to merge pods): active host-seconds, violating
    /// host-seconds, requested MIPS·s, MIPS·s lost to migrations.
    pub raw: [f64; 4],
}

impl Report {
    /// Combines the reports of independent pods of one data centre.
    pub fn merge(parts: Vec<Report>) -> Option<Report> {
        let mut it = parts.into_iter();
        let mut m = it.next()?;
        for r in it {
            m.hosts += r.hosts;
            m.vms += r.vms;
            m.energy_kwh += r.energy_kwh;
            m.migrations += r.migrations;
            m.host_shutdowns += r.host_shutdowns;
            m.moved_gb += r.moved_gb;
            m.downtime_s += r.downtime_s;
            m.vms_lost += r.vms_lost;
            m.vms_not_created += r.vms_not_created;
            m.vms_dropped += r.vms_dropped;
            m.operations.extend(r.operations);
            m.wall_s = m.wall_s.max(r.wall_s);
            for i in 0..4 {
                m.raw[i] += r.raw[i];
            }
        }
        m.slatah = if m.raw[0] > 0.0 {
            m.raw[1] / m.raw[0]
        } else {
            0.0
        };
        m.pdm = if m.raw[2] > 0.0 {
            m.raw[3] / m.raw[2]
        } else {
            0.0
        };
        m.slav = m.slatah * m.pdm;
        m.esv = m.energy_kwh * m.slav;
        Some(m)
    }
}

/// Whether two reports describe the same run outcome: every field equal (floats to the
/// bit) except the wall time.
pub fn same_outcome(a: &Report, b: &Report) -> bool {
    let strip = |r: &Report| {
        let mut r = r.clone();
        r.wall_s = 0.0;
        serde_json::to_value(&r).ok()
    };
    let (x, y) = (strip(a), strip(b));
    x.is_some() && x == y
}

/// State of the data centre at the end of one scheduling interval (for plots).
#[derive(Debug, Clone, Serialize)]
pub struct IntervalStats {
    /// Time, s.
    pub t: f64,
    /// Hosts switched on.
    pub active_hosts: usize,
    /// Mean utilisation of active hosts.
    pub mean_util: f64,
    /// Migrations started in this interval.
    pub migrations: usize,
}

const HEADER: [&str; 12] = [
    "policy",
    "energy_kwh",
    "migrations",
    "slatah_%",
    "pdm_%",
    "slav_%",
    "esv",
    "shutdowns",
    "moved_gb",
    "downtime_s",
    "lost",
    "wall_s",
];

fn cells(r: &Report) -> [String; 12] {
    [
        r.policy.clone(),
        format!("{:.2}", r.energy_kwh),
        r.migrations.to_string(),
        format!("{:.2}", r.slatah * 100.0),
        format!("{:.3}", r.pdm * 100.0),
        format!("{:.5}", r.slav * 100.0),
        format!("{:.5}", r.esv),
        r.host_shutdowns.to_string(),
        format!("{:.1}", r.moved_gb),
        format!("{:.1}", r.downtime_s),
        r.vms_lost.to_string(),
        format!("{:.2}", r.wall_s),
    ]
}

/// Aligned text table of reports (ESV and SLAV in the literature's units: ×100).
pub fn table(reports: &[Report]) -> String {
    let rows: Vec<[String; 12]> = reports.iter().map(cells).collect();
    let mut w: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    format!("{c:<0$}", w[i])
                } else {
                    format!("{c:>0$}", w[i])
                }
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join("  "));
    };
    line(HEADER.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// CSV of reports (same columns as [`table`]).
pub fn csv(reports: &[Report]) -> String {
    let mut out = HEADER.join(",") + "\n";
    for r in reports {
        out += &cells(r).join(",");
        out.push('\n');
    }
    out
}
