//! SVG plots (plotters): per scenario and writer, median total time and largest gap in the guest's
//! progress per variant.

use std::path::Path;

use plotters::prelude::*;

use crate::report::{metric, stats};
use crate::{BenchError, ScenarioResult};

fn draw(
    path: &Path,
    title: &str,
    unit: &str,
    bars: &[(String, f64)],
) -> Result<(), Box<dyn std::error::Error>> {
    // Plotters sizes SVG text with its registered fonts.
    ferry_fonts::register()?;
    let root = SVGBackend::new(path, (900, 120 + 40 * bars.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(220)
        .build_cartesian_2d(0.0..max, 0..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(unit)
        .y_labels(n)
        .y_label_formatter(&|i| {
            bars.get(n.saturating_sub(1).saturating_sub(*i))
                .map(|b| b.0.clone())
                .unwrap_or_default()
        })
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (label, v))| {
        let y = n - 1 - i;
        let color = if label.starts_with("ferry") {
            BLUE
        } else {
            RED
        };
        Rectangle::new([(0.0, y), (*v, y + 1)], color.mix(0.6).filled())
    }))?;
    root.present()?;
    Ok(())
}

/// Writes `<id>-time.svg` and `<id>-downtime.svg` for every scenario that ran into `dir`.
pub fn write_plots(results: &[ScenarioResult], dir: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| BenchError::io(format!("cannot create {}", dir.display()), e))?;
    for sc in results.iter().filter(|s| s.skipped.is_none()) {
        let bars = |f: fn(&crate::RunResult) -> Option<f64>, scale: f64| -> Vec<(String, f64)> {
            sc.variants
                .iter()
                .filter_map(|v| stats(&metric(v, f)).map(|s| (v.label.clone(), s.0 / scale)))
                .collect()
        };
        let plots = [
            (
                "time",
                "total migration time",
                "s",
                bars(|r| r.total_ms, 1e3),
            ),
            (
                "downtime",
                "largest gap in the guest's progress",
                "ms",
                bars(|r| r.guest_gap_ms, 1.0),
            ),
        ];
        for (name, what, unit, b) in plots {
            if b.is_empty() {
                continue;
            }
            let path = dir.join(format!("{}-{}-{name}.svg", sc.id, sc.writer));
            draw(
                &path,
                &format!("({}, {}) {what}", sc.id, sc.writer),
                unit,
                &b,
            )
            .map_err(|e| BenchError::Setup(format!("plot {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bar_plot_is_written_with_its_labels() {
        let dir = std::env::temp_dir().join(format!("ferry-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("t.svg");
        let bars = vec![
            ("ferry seq".to_string(), 1.5),
            ("qemu seq".to_string(), 2.0),
        ];
        let drawn = super::draw(&path, "total migration time", "s", &bars);
        let svg = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::remove_dir_all(&dir).ok();
        drawn.expect("plot drawn");
        assert!(svg.contains("total migration time") && svg.contains("qemu seq"));
    }
}
