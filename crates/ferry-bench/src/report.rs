//! Tables (Markdown pipe tables, readable as plain text too) and the BENCHMARKS.md section.

use std::fmt::Write as _;

use crate::record::Meta;
use crate::{Engine, HostLoad, Outcome, RunResult, ScenarioResult, VariantResult};

/// Median, min and max of some values (None if there are none).
pub fn stats(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

fn completed(v: &VariantResult) -> impl Iterator<Item = &RunResult> {
    v.runs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Completed))
}

/// The values of one metric over the completed runs of a variant.
pub fn metric(v: &VariantResult, f: impl Fn(&RunResult) -> Option<f64>) -> Vec<f64> {
    completed(v).filter_map(f).collect()
}

fn total(r: &RunResult) -> Option<f64> {
    r.total_ms
}
fn downtime(r: &RunResult) -> Option<f64> {
    r.engine_downtime_ms
}
fn gap(r: &RunResult) -> Option<f64> {
    r.guest_gap_ms
}
fn switch_over(r: &RunResult) -> Option<f64> {
    r.switch_over_gap_ms
}
fn wire(r: &RunResult) -> Option<f64> {
    r.wire_bytes.map(|b| b as f64)
}
fn first_pass(r: &RunResult) -> Option<f64> {
    r.first_pass_mb_s
}
fn cores(r: &RunResult) -> Option<f64> {
    r.cpu_cores
}
fn hog_cores(r: &RunResult) -> Option<f64> {
    r.hogs_cpu_cores
}

fn cell(v: &[f64], scale: f64, prec: usize) -> String {
    match stats(v) {
        None => "-".into(),
        Some((m, lo, hi)) if v.len() > 1 => format!(
            "{:.p$} [{:.p$}-{:.p$}]",
            m / scale,
            lo / scale,
            hi / scale,
            p = prec
        ),
        Some((m, _, _)) => format!("{:.p$}", m / scale, p = prec),
    }
}

/// A metric's cell over all runs of a variant (first pass: the guest's speed before the migration
/// does not depend on how the migration ends).
fn cell_all(v: &VariantResult, f: fn(&RunResult) -> Option<f64>, prec: usize) -> String {
    cell(&v.runs.iter().filter_map(f).collect::<Vec<_>>(), 1.0, prec)
}

fn median(v: &[f64]) -> Option<f64> {
    stats(v).map(|s| s.0)
}

fn ratio(f: &VariantResult, q: &VariantResult, m: fn(&RunResult) -> Option<f64>) -> String {
    match (median(&metric(f, m)), median(&metric(q, m))) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn outcome_cell(v: &VariantResult) -> String {
    let n = v.runs.len();
    let ok = completed(v).count();
    let mut s = if ok == n {
        format!("completed {ok}/{n}")
    } else {
        let mut other: Vec<String> = v
            .runs
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Completed))
            .map(|r| r.outcome.short())
            .collect();
        other.dedup();
        if ok == 0 {
            format!("{} ({}/{n})", other.join("; "), n - ok)
        } else {
            format!("completed {ok}/{n}; {}", other.join("; "))
        }
    };
    let checked = v.runs.iter().filter(|r| r.guest_check.is_some()).count();
    let bad = v
        .runs
        .iter()
        .filter(|r| r.guest_check.is_some_and(|c| !c.ok()))
        .count();
    if bad > 0 {
        let _ = write!(s, "; GUEST CHECK FAILED in {bad}");
    } else if checked < n && n > 0 {
        let _ = write!(s, "; guest checked in {checked}/{n}");
    }
    s
}

fn notes(v: &VariantResult) -> String {
    let mut n = vec![];
    let rates: Vec<f64> = v
        .runs
        .iter()
        .filter_map(|r| r.guest_writes_per_s)
        .filter(|&w| w > 0.0)
        .collect();
    if let Some((m, _, _)) = stats(&rates) {
        n.push(format!("guest {:.0}k writes/s", m / 1e3));
    }
    let before: Vec<f64> = v.runs.iter().filter_map(|r| r.before_mb_s).collect();
    if let Some((m, _, _)) = stats(&before) {
        n.push(format!("{m:.0} MB/s before the migration"));
    }
    let down = metric(v, downtime);
    if !down.is_empty() {
        n.push(format!("engine downtime {} ms", cell(&down, 1.0, 1)));
    }
    let hogs = metric(v, hog_cores);
    if !hogs.is_empty() {
        n.push(format!("busy loops got {} cores", cell(&hogs, 1.0, 2)));
    }
    n.extend(v.runs.first().map(|r| r.notes.clone()).unwrap_or_default());
    if v.runs.iter().any(|r| r.sequence_continues == Some(false)) {
        n.push("progress sequence broken (bytes lost)".into());
    }
    let dnc: Vec<f64> = v
        .runs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::DidNotConverge { .. }))
        .filter_map(|r| r.guest_gap_ms)
        .collect();
    if let Some((m, _, _)) = stats(&dnc) {
        n.push(format!("largest progress gap while trying {m:.1} ms"));
    }
    let dnc_bytes: Vec<f64> = v
        .runs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::DidNotConverge { .. }))
        .filter_map(wire)
        .collect();
    if let Some((m, _, _)) = stats(&dnc_bytes) {
        n.push(format!("{:.0} MB sent before the cancel", m / 1e6));
    }
    n.join("; ")
}

/// Per scenario and writer: a heading, the guest, and one row per variant with medians [min-max]
/// over the completed runs (the max is the worst run) and, on QEMU rows, the ratios ferry/QEMU of
/// total time and largest progress gap (below 1: ferry is faster / pauses less), against the ferry
/// row the QEMU row is paired with. The variants' settings follow the table.
pub fn render_table(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    for sc in results {
        let _ = writeln!(s, "### ({}, {}) {}\n", sc.id, sc.writer, sc.title);
        let _ = writeln!(s, "Guest: {}.\n", sc.guest);
        if let Some(n) = &sc.network {
            let _ = writeln!(s, "Link: {n}.\n");
        }
        if sc.load != HostLoad::Idle {
            let _ = writeln!(s, "Host: {}.\n", sc.load.describe());
        }
        if let Some(why) = &sc.skipped {
            let _ = writeln!(s, "Not run: {why}.\n");
            continue;
        }
        let _ = writeln!(
            s,
            "| variant | result | total ms | largest progress gap ms | switch-over gap ms | wire MB | first pass MB/s | CPU cores | ferry/QEMU total | ferry/QEMU gap | notes |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for v in &sc.variants {
            let paired = v.compare_with.unwrap_or(sc.reference);
            let ratios = match (v.engine, sc.variants.get(paired)) {
                (Engine::Qemu, Some(f)) if completed(v).count() > 0 => {
                    [ratio(f, v, total), ratio(f, v, gap)]
                }
                (Engine::Qemu, Some(_)) if !v.runs.is_empty() => {
                    ["QEMU did not finish".into(), "-".into()]
                }
                _ => [String::new(), String::new()],
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                v.label,
                outcome_cell(v),
                cell(&metric(v, total), 1.0, 0),
                cell(&metric(v, gap), 1.0, 1),
                cell(&metric(v, switch_over), 1.0, 1),
                cell(&metric(v, wire), 1e6, 0),
                cell_all(v, first_pass, 0),
                cell(&metric(v, cores), 1.0, 2),
                ratios[0],
                ratios[1],
                notes(v),
            );
        }
        s.push('\n');
        for v in &sc.variants {
            let _ = writeln!(s, "- {}: {}", v.label, v.settings);
        }
        s.push('\n');
    }
    s
}

/// The 1, 5 and 15 minute load averages of /proc/loadavg.
pub fn load_average() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Today's date (UTC), YYYY-MM-DD.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = (secs / 86400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The CPU's model name from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// A section for docs/BENCHMARKS.md: how it was run, then the tables.
pub fn markdown_section(results: &[ScenarioResult], meta: &Meta) -> String {
    let load = |l: Option<[f64; 3]>| {
        l.map_or("?".to_string(), |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
    };
    let mut s = String::new();
    let _ = writeln!(s, "## Ferry vs QEMU\n");
    let _ = writeln!(
        s,
        "Measured {} with `{}` ({} run(s) per row, pre-copy timeout {} s), {} (`-accel kvm`), on \
         {} cores of a {} (nested KVM), loopback TCP unless the scenario names a link; host memory \
         {}; load average (1, 5, 15 min) {} before, {} after.\n",
        meta.date,
        meta.command,
        meta.repeat,
        meta.timeout_s,
        meta.qemu,
        meta.cores,
        meta.cpu,
        if meta.host_memory == "cold" {
            "cold (no warm-up)"
        } else {
            "warmed before each migration"
        },
        load(meta.load_average[0]),
        load(meta.load_average[1]),
    );
    s.push_str(&render_table(results));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(stats(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(stats(&[]), None);
    }

    #[test]
    fn a_table_shows_every_column_and_the_pairing() {
        use crate::scenario::{all, HostLoad};
        use crate::{GuestCheck, VariantResult};
        let c = all().into_iter().find(|s| s.id == "c").unwrap();
        let run = |total: f64, gap: f64| {
            let mut r = RunResult::new(Outcome::Completed);
            r.total_ms = Some(total);
            r.guest_gap_ms = Some(gap);
            r.switch_over_gap_ms = Some(gap / 2.0);
            r.wire_bytes = Some(300_000_000);
            r.first_pass_mb_s = Some(125.0);
            r.cpu_cores = Some(1.5);
            r.guest_check = Some(GuestCheck {
                pages: 10,
                ..GuestCheck::default()
            });
            r
        };
        let variants: Vec<VariantResult> = c
            .variants
            .iter()
            .enumerate()
            .map(|(i, v)| VariantResult {
                label: v.label.clone(),
                engine: v.engine,
                settings: v.describe(),
                method: v.method.clone(),
                compare_with: v.compare_with,
                runs: vec![run(1000.0 * (i + 1) as f64, 10.0 * (i + 1) as f64)],
            })
            .collect();
        let res = ScenarioResult {
            id: "c".into(),
            title: c.title.clone(),
            guest: c.guest.describe(),
            guest_spec: c.guest.clone(),
            writer: "sequential".into(),
            load: HostLoad::Busy { hogs: 2 },
            skipped: None,
            network: None,
            reference: 0,
            variants,
        };
        let t = render_table(&[res]);
        assert!(t.contains("### (c, sequential)"), "{t}");
        assert!(t.contains("Host: 2 busy loops"), "{t}");
        // QEMU precopy (row 1, total 2000) against ferry auto (row 0, total 1000): 0.50.
        assert!(
            t.contains("| QEMU precopy | completed 1/1 | 2000 | 20.0 | 10.0 | 300 | 125 | 1.50 | 0.50 | 0.50 |"),
            "{t}"
        );
        // QEMU postcopy (row 5) against ferry postcopy (row 4): 5000 / 6000.
        assert!(t.contains("| 0.83 | 0.83 |"), "{t}");
        assert!(t.contains("- QEMU multifd 2 none: bw unlimited"), "{t}");
    }

    #[test]
    fn a_failed_guest_check_shows() {
        let mut r = RunResult::new(Outcome::Completed);
        r.guest_check = Some(crate::GuestCheck {
            pages: 5,
            errors: 1,
            ..crate::GuestCheck::default()
        });
        let v = VariantResult {
            label: "x".into(),
            engine: Engine::Ferry,
            settings: String::new(),
            method: crate::Method::NotApplicable(String::new()),
            compare_with: None,
            runs: vec![r, RunResult::new(Outcome::Completed)],
        };
        assert_eq!(outcome_cell(&v), "completed 2/2; GUEST CHECK FAILED in 1");
    }

    #[test]
    fn load_average_reads() {
        let l = load_average().unwrap();
        assert!(l.iter().all(|x| *x >= 0.0));
    }

    #[test]
    fn date_looks_like_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
