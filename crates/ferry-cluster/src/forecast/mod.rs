//! Ferry's forecast-driven overload detector: migrate *before* a host overloads.
//!
//! For each host it fits a line to the last few utilisation samples (the host's VMs' own
//! histories summed, so a VM that just arrived brings its past with it), projects it past
//! the time a migration off the host would take, and adds the recent forecast error
//! (residual standard deviation) as a safety margin. The host is flagged when either the
//! current demand or that upper forecast crosses `cap`. With a cap below 1 the relief
//! migrations start while there is still head-room, and the same test guards placement, so
//! a VM is never put where the forecast says it will soon have to leave again.

use crate::state::{Cluster, HISTORY_LEN};
use crate::{HostId, VmId};

/// Parameters of the forecast detector.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastParams {
    /// Utilisation the forecast must stay under (e.g. 0.9).
    pub cap: f64,
    /// Samples the trend is fitted on.
    pub samples: usize,
    /// Standard deviations of forecast error added as margin.
    pub k_sigma: f64,
    /// Extra scheduling intervals to look ahead beyond the migration time.
    pub lookahead: f64,
    /// Cap a placement target must stay under, upper forecast included (head-room that
    /// keeps a VM from being placed where it would soon have to leave again).
    pub place_cap: f64,
}

impl ForecastParams {
    /// Default parameters with the given overload cap (placement keeps 0.2 below it).
    pub fn with_cap(cap: f64) -> Self {
        Self {
            cap,
            samples: 12,
            k_sigma: 1.0,
            lookahead: 1.0,
            place_cap: cap - 0.2,
        }
    }
}

/// Forecast of a host's utilisation: `(point, upper)` at the look-ahead horizon, or `None`
/// with too little history.
pub fn forecast(
    p: &ForecastParams,
    c: &Cluster,
    host: HostId,
    extra: Option<VmId>,
) -> Option<(f64, f64)> {
    let mut hist = [0.0; HISTORY_LEN];
    let n = c.host_history(host, extra, &mut hist).min(p.samples);
    if n < 4 {
        return None;
    }
    // x = 0 is the oldest sample used, x = n-1 the newest.
    let ys: Vec<f64> = (0..n).map(|i| hist[n - 1 - i]).collect();
    let nf = n as f64;
    let mx = (nf - 1.0) / 2.0;
    let my = ys.iter().sum::<f64>() / nf;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mx;
        sxy += dx * (y - my);
        sxx += dx * dx;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let resid: f64 = ys
        .iter()
        .enumerate()
        .map(|(i, y)| (y - (my + slope * (i as f64 - mx))).powi(2))
        .sum();
    let sigma = (resid / (nf - 2.0).max(1.0)).sqrt();
    let mut mig = c.max_migration_time(host);
    if let Some(v) = extra {
        mig = mig.max(c.vms[v].ram_mb / (c.hosts[host].bw_mbps / 16.0));
    }
    let h = (mig / c.interval_s).ceil().max(0.0) + p.lookahead;
    let point = my + slope * (nf - 1.0 - mx + h);
    Some((point, point.max(ys[n - 1]) + p.k_sigma * sigma))
}

/// Whether the host is (or is about to be) overloaded under `p`.
///
/// Without `extra` (overload detection) the host is flagged when its current demand or its
/// point forecast exceeds `cap`; with `extra` (a placement test) the stricter `place_cap`
/// must hold for the current demand and the upper forecast.
pub fn is_overloaded(p: &ForecastParams, c: &Cluster, host: HostId, extra: Option<VmId>) -> bool {
    let now = c.demand_util(host, extra);
    let cap = if extra.is_some() { p.place_cap } else { p.cap };
    if now > cap {
        return true;
    }
    match forecast(p, c, host, extra) {
        Some((point, upper)) => (if extra.is_some() { upper } else { point }) > cap,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::PowerModel;
    use crate::state::{HostView, VmView};

    #[test]
    fn rising_trend_is_flagged_before_overload() {
        let mut c = Cluster {
            hosts: vec![HostView::new(2000.0, 1000.0, 4096.0, 1000.0, 0)],
            vms: vec![VmView::new(1000.0, 512.0), VmView::new(1000.0, 512.0)],
            power_models: vec![PowerModel::ml110_g4()],
            interval_s: 300.0,
            enforce_ram: true,
        };
        c.vm_create(0, 0);
        c.vm_create(0, 1);
        for i in 0..12 {
            c.vms[0].push_history(0.3 + 0.04 * i as f64);
            c.vms[1].push_history(0.3 + 0.04 * i as f64);
        }
        c.vms[0].demand_mips = 740.0;
        c.vms[1].demand_mips = 740.0;
        let p = ForecastParams::with_cap(0.8);
        assert!(c.demand_util(0, None) < 0.8);
        assert!(is_overloaded(&p, &c, 0, None));
    }
}
