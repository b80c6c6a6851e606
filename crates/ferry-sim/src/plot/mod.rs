//! Plots (plotters): SVG and PNG, both with titles, axes and labels (the font is embedded:
//! [`ferry_fonts`], no system fonts needed).

use crate::error::SimError;
use crate::report::{IntervalStats, Report};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Registers the embedded font (plotters knows no other).
fn fonts(path: &Path) -> Result<(), SimError> {
    ferry_fonts::register().map_err(|e| perr(path, e))
}

fn perr(path: &Path, e: impl std::fmt::Display) -> SimError {
    SimError::Plot {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Energy (x) against SLAV (y), one point per policy: `<base>.svg` and `<base>.png`.
pub fn energy_vs_slav(reports: &[Report], base: &Path) -> Result<(), SimError> {
    let svg = base.with_extension("svg");
    let png = base.with_extension("png");
    fonts(&svg)?;
    {
        let root = SVGBackend::new(&svg, (800, 600)).into_drawing_area();
        scatter(&root, reports).map_err(|e| perr(&svg, e))?;
        root.present().map_err(|e| perr(&svg, e))?;
    }
    let root = BitMapBackend::new(&png, (800, 600)).into_drawing_area();
    scatter(&root, reports).map_err(|e| perr(&png, e))?;
    root.present().map_err(|e| perr(&png, e))?;
    Ok(())
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn scatter<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, reports: &[Report]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let xmax = reports.iter().map(|r| r.energy_kwh).fold(1.0, f64::max) * 1.1;
    let ymax = reports.iter().map(|r| r.slav * 100.0).fold(1e-6, f64::max) * 1.2;
    let mut b = ChartBuilder::on(root);
    b.margin(20)
        .caption("Energy vs SLAV per policy", ("sans-serif", 22))
        .x_label_area_size(40)
        .y_label_area_size(70);
    let mut chart = b.build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("energy (kWh)")
        .y_desc("SLAV (%)")
        .draw()?;
    for (i, r) in reports.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let p = (r.energy_kwh, r.slav * 100.0);
        chart.draw_series(std::iter::once(Circle::new(p, 6, color.filled())))?;
        chart.draw_series(std::iter::once(Text::new(
            r.policy.clone(),
            (p.0, p.1),
            ("sans-serif", 13),
        )))?;
    }
    Ok(())
}

/// Active hosts, mean utilisation and migrations per interval: `<base>.svg` and `.png`.
pub fn timeline(series: &[IntervalStats], base: &Path) -> Result<(), SimError> {
    let svg = base.with_extension("svg");
    let png = base.with_extension("png");
    fonts(&svg)?;
    {
        let root = SVGBackend::new(&svg, (900, 900)).into_drawing_area();
        panels(&root, series).map_err(|e| perr(&svg, e))?;
        root.present().map_err(|e| perr(&svg, e))?;
    }
    let root = BitMapBackend::new(&png, (900, 900)).into_drawing_area();
    panels(&root, series).map_err(|e| perr(&png, e))?;
    root.present().map_err(|e| perr(&png, e))?;
    Ok(())
}

fn panels<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, s: &[IntervalStats]) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let areas = root.split_evenly((3, 1));
    let hours: Vec<f64> = s.iter().map(|x| x.t / 3600.0).collect();
    let tmax = hours.last().copied().unwrap_or(1.0).max(1.0);
    let series: [(&str, Vec<f64>, RGBColor); 3] = [
        (
            "active hosts",
            s.iter().map(|x| x.active_hosts as f64).collect(),
            BLUE,
        ),
        (
            "mean utilisation of active hosts",
            s.iter().map(|x| x.mean_util).collect(),
            GREEN,
        ),
        (
            "migrations per interval",
            s.iter().map(|x| x.migrations as f64).collect(),
            RED,
        ),
    ];
    for (area, (name, ys, color)) in areas.iter().zip(series) {
        let ymax = ys.iter().cloned().fold(1e-9, f64::max) * 1.1;
        let mut b = ChartBuilder::on(area);
        b.margin(15)
            .caption(name, ("sans-serif", 18))
            .x_label_area_size(30)
            .y_label_area_size(50);
        let mut chart = b.build_cartesian_2d(0.0..tmax, 0.0..ymax)?;
        chart.configure_mesh().x_desc("hours").draw()?;
        chart.draw_series(LineSeries::new(hours.iter().copied().zip(ys), &color))?;
    }
    Ok(())
}
