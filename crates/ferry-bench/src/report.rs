//! Tables (Markdown pipe tables, readable as plain text too) and the BENCHMARKS.md section.

use std::fmt::Write as _;

use crate::{Engine, Outcome, RunResult, ScenarioResult, SuiteConfig, VariantResult};

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
fn wire(r: &RunResult) -> Option<f64> {
    r.wire_bytes.map(|b| b as f64)
}
fn cpu(r: &RunResult) -> Option<f64> {
    Some(r.source_cpu_ms? + r.destination_cpu_ms?)
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
    if ok == n {
        return format!("completed {ok}/{n}");
    }
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
}

fn notes(v: &VariantResult) -> String {
    let mut n = vec![];
    let rates: Vec<f64> = v.runs.iter().filter_map(|r| r.guest_writes_per_s).collect();
    if let Some((m, _, _)) = stats(&rates) {
        n.push(format!("guest {:.0}k writes/s", m / 1e3));
    }
    n.extend(v.runs.first().map(|r| r.notes.clone()).unwrap_or_default());
    if v.runs.iter().any(|r| r.sequence_continues == Some(false)) {
        n.push("heartbeat sequence broken (beats lost)".into());
    }
    let dnc: Vec<f64> = v
        .runs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::DidNotConverge { .. }))
        .filter_map(|r| r.guest_gap_ms)
        .collect();
    if let Some((m, _, _)) = stats(&dnc) {
        n.push(format!("largest guest pause while trying {m:.1} ms"));
    }
    let dnc_bytes: Vec<f64> = v
        .runs
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::DidNotConverge { .. }))
        .filter_map(wire)
        .collect();
    if let Some((m, _, _)) = stats(&dnc_bytes) {
        n.push(format!("{:.0} MiB sent before the cancel", m / 1048576.0));
    }
    n.join("; ")
}

/// Per scenario: a heading, the guest, and one row per variant with medians [min-max] over the
/// completed runs and, on QEMU rows, the ratios ferry/QEMU (the scenario's reference ferry row
/// over that row; below 1 means ferry is faster / pauses less / sends less / uses less CPU).
pub fn render_table(results: &[ScenarioResult]) -> String {
    let mut s = String::new();
    for sc in results {
        let _ = writeln!(s, "### ({}) {}\n", sc.id, sc.title);
        let _ = writeln!(s, "Guest: {}.\n", sc.guest);
        if let Some(n) = &sc.network {
            let _ = writeln!(s, "Link: {n}.\n");
        }
        if let Some(why) = &sc.skipped {
            let _ = writeln!(s, "Not run: {why}.\n");
            continue;
        }
        let reference = sc.variants.get(sc.reference);
        let _ = writeln!(
            s,
            "| variant | settings | result | total s | downtime (engine) ms | guest gap ms | wire MiB | CPU src+dst s | ferry/QEMU total | guest gap | wire | CPU | notes |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for v in &sc.variants {
            let ratios = match (v.engine, reference) {
                (Engine::Qemu, Some(f)) if completed(v).count() > 0 => [
                    ratio(f, v, total),
                    ratio(f, v, gap),
                    ratio(f, v, wire),
                    ratio(f, v, cpu),
                ],
                (Engine::Qemu, Some(_)) if !v.runs.is_empty() => [
                    "QEMU did not finish".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ],
                _ => ["".into(), "".into(), "".into(), "".into()],
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                v.label,
                v.settings,
                outcome_cell(v),
                cell(&metric(v, total), 1e3, 2),
                cell(&metric(v, downtime), 1.0, 1),
                cell(&metric(v, gap), 1.0, 1),
                cell(&metric(v, wire), 1048576.0, 0),
                cell(&metric(v, cpu), 1e3, 2),
                ratios[0],
                ratios[1],
                ratios[2],
                ratios[3],
                notes(v),
            );
        }
        s.push('\n');
    }
    s
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

fn cpu_model() -> String {
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

/// A "## Ferry vs QEMU" section for docs/BENCHMARKS.md: how it was run, then the tables.
pub fn markdown_section(
    results: &[ScenarioResult],
    command: &str,
    qemu_version: &str,
    cfg: &SuiteConfig,
) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut s = String::new();
    let _ = writeln!(s, "## Ferry vs QEMU\n");
    let _ = writeln!(
        s,
        "Measured {} with `{command}` ({} run(s) per row, pre-copy timeout {} s), {qemu_version} (`-accel kvm`), \
         on {cores} cores of a {} (nested KVM), loopback TCP unless the scenario names a link.\n",
        today(),
        cfg.repeat,
        cfg.timeout.as_secs(),
        cpu_model()
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
    fn date_looks_like_a_date() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
