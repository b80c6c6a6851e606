//! Ferry's forecast-driven overload detector: migrate *before* a host overloads.
//!
//! For each host it fits a line to the last few utilisation samples (the host's VMs' own
//! histories summed, so a VM that just arrived brings its past with it), projects it past
//! the time a migration off the host would take, and adds the recent forecast error
//! (residual standard deviation) as a safety margin. The host is flagged when either the
//! current demand or that upper forecast crosses `cap`. With a cap below 1 the relief
//! migrations start while there is still head-room, and the same test guards placement, so
//! a VM is never put where the forecast says it will soon have to leave again.

use crate::state::{Cluster, HostLoad, HISTORY_LEN};
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
    forecast_given(p, c, host, extra, &c.host_load(host))
}

/// [`forecast`] from the host's [`HostLoad`].
pub fn forecast_given(
    p: &ForecastParams,
    c: &Cluster,
    host: HostId,
    extra: Option<VmId>,
    load: &HostLoad,
) -> Option<(f64, f64)> {
    let full;
    let load = if load.depth < p.samples {
        full = c.host_load(host);
        &full
    } else {
        load
    };
    let mut hist = [0.0; HISTORY_LEN];
    let n = load.history(c, host, extra, &mut hist).min(p.samples);
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
    let h = horizon(p, c, host, extra, load);
    let point = my + slope * (nf - 1.0 - mx + h);
    Some((point, point.max(ys[n - 1]) + p.k_sigma * sigma))
}

/// Whether the host is (or is about to be) overloaded under `p`.
///
/// Without `extra` (overload detection) the host is flagged when its current demand or its
/// point forecast exceeds `cap`; with `extra` (a placement test) the stricter `place_cap`
/// must hold for the current demand and the upper forecast.
pub fn is_overloaded(p: &ForecastParams, c: &Cluster, host: HostId, extra: Option<VmId>) -> bool {
    is_overloaded_given(p, c, host, extra, &c.host_load(host))
}

/// [`is_overloaded`] from the host's [`HostLoad`].
pub fn is_overloaded_given(
    p: &ForecastParams,
    c: &Cluster,
    host: HostId,
    extra: Option<VmId>,
    load: &HostLoad,
) -> bool {
    let now = load.demand_util(c, host, extra);
    let cap = if extra.is_some() { p.place_cap } else { p.cap };
    if now > cap {
        return true;
    }
    match forecast_given(p, c, host, extra, load) {
        Some((point, upper)) => (if extra.is_some() { upper } else { point }) > cap,
        None => false,
    }
}

/// A least-squares line through a series and the size of its residuals. The forecast of a
/// sum of series is linear in the series, so the trend of a host with one more VM follows
/// from the host's and the VM's (see [`placement_surely_over`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Mean of the samples.
    pub mean: f64,
    /// Slope per sample.
    pub slope: f64,
    /// Euclidean norm of the residuals.
    pub resid_norm: f64,
    /// Newest sample.
    pub last: f64,
}

impl Trend {
    /// The trend of `hist` (newest first) over its first `n` entries (missing ones are 0).
    pub fn of(hist: &[f64], n: usize) -> Trend {
        let y = |i: usize| hist.get(n - 1 - i).copied().unwrap_or(0.0);
        let nf = n as f64;
        let mx = (nf - 1.0) / 2.0;
        let mean = (0..n).map(y).sum::<f64>() / nf;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for i in 0..n {
            let dx = i as f64 - mx;
            sxy += dx * (y(i) - mean);
            sxx += dx * dx;
        }
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let rss: f64 = (0..n)
            .map(|i| (y(i) - (mean + slope * (i as f64 - mx))).powi(2))
            .sum();
        Trend {
            mean,
            slope,
            resid_norm: rss.sqrt(),
            last: y(n - 1),
        }
    }

    /// The trend of the series multiplied by `f` (>= 0).
    pub fn scaled(&self, f: f64) -> Trend {
        Trend {
            mean: self.mean * f,
            slope: self.slope * f,
            resid_norm: self.resid_norm * f,
            last: self.last * f,
        }
    }
}

/// Whether the placement check of [`is_overloaded`] surely flags a host once a VM is added,
/// from the host's trend and the VM's over the last `p.samples` samples and the horizon
/// (`ceil(longest migration / interval) + lookahead`, in samples), without summing the
/// series: the sum's mean, slope and newest sample are the sums of the parts, and its
/// residual norm is at least the difference of theirs. Only valid when the host's own
/// history has `p.samples` non-zero samples (so the sum is fitted on exactly that many).
pub fn placement_surely_over(p: &ForecastParams, host: &Trend, vm: &Trend, horizon: f64) -> bool {
    if p.samples < 4 || p.k_sigma < 0.0 {
        return false;
    }
    let nf = p.samples as f64;
    let mx = (nf - 1.0) / 2.0;
    let point = host.mean + vm.mean + (host.slope + vm.slope) * (nf - 1.0 - mx + horizon);
    let sigma_min = (host.resid_norm - vm.resid_norm).abs() / (nf - 2.0).max(1.0).sqrt();
    let lower = point.max(host.last + vm.last) + p.k_sigma * sigma_min;
    lower > p.place_cap + 1e-9
}

/// A key of a host for its placement check against any VM: with `t` the host's trend and
/// the horizon anywhere in `h_lo..=h_hi`, the sum's upper forecast is at least
/// `host_key + vm_part`, where `vm_part` is the VM's share (see [`vm_allowance`]). From
/// [`placement_surely_over`]: the point forecast is the sum of the parts, and
/// `|S_h - S_v| >= S_h - S_v` for the residual sizes.
pub fn host_key(p: &ForecastParams, t: &Trend, h_lo: f64, h_hi: f64) -> f64 {
    let nf = p.samples as f64;
    let c0 = (nf - 1.0) / 2.0;
    let s = t.resid_norm / (nf - 2.0).max(1.0).sqrt();
    t.mean + (t.slope * (c0 + h_lo)).min(t.slope * (c0 + h_hi)) + p.k_sigma * s
}

/// The largest [`host_key`] a host may have and still pass the placement check with a VM
/// of trend `t` (already scaled to the host), horizon anywhere in `h_lo..=h_hi`: a host
/// whose key is above it is surely flagged.
pub fn vm_allowance(p: &ForecastParams, t: &Trend, h_lo: f64, h_hi: f64) -> f64 {
    if p.samples < 4 || p.k_sigma < 0.0 {
        return f64::INFINITY;
    }
    let nf = p.samples as f64;
    let c0 = (nf - 1.0) / 2.0;
    let s = t.resid_norm / (nf - 2.0).max(1.0).sqrt();
    let part = t.mean + (t.slope * (c0 + h_lo)).min(t.slope * (c0 + h_hi)) - p.k_sigma * s;
    p.place_cap + 1e-9 - part
}

/// The look-ahead horizon of [`forecast`] for `host` with `extra`, in samples.
pub fn horizon(
    p: &ForecastParams,
    c: &Cluster,
    host: HostId,
    extra: Option<VmId>,
    load: &HostLoad,
) -> f64 {
    let mig = load.max_migration_time(c, host, extra);
    (mig / c.interval_s).ceil().max(0.0) + p.lookahead
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::PowerModel;
    use crate::state::{HostView, VmView};

    #[test]
    fn rising_trend_is_flagged_before_overload() {
        let mut c = Cluster::new(
            vec![HostView::new(2000.0, 1000.0, 4096.0, 1000.0, 0)],
            vec![VmView::new(1000.0, 512.0), VmView::new(1000.0, 512.0)],
            vec![PowerModel::ml110_g4()],
            300.0,
        );
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

    #[test]
    fn the_decomposed_bound_flags_a_rising_host() {
        let mut c = Cluster::new(
            vec![HostView::new(2000.0, 1000.0, 1e9, 1000.0, 0)],
            vec![VmView::new(2000.0, 512.0), VmView::new(100.0, 870.0)],
            vec![PowerModel::ml110_g4()],
            300.0,
        );
        c.vm_create(0, 0);
        for i in 0..12 {
            c.vms[0].push_history(0.3 + 0.04 * i as f64);
            c.vms[1].push_history(0.1);
        }
        c.vms[0].demand_mips = 1400.0;
        c.vms[1].demand_mips = 10.0;
        let p = ForecastParams::with_cap(1.0);
        let load = c.host_load(0);
        let ht = Trend::of(&load.history, p.samples);
        let vt = Trend::of(&c.vms[1].history, p.samples).scaled(100.0 / 2000.0);
        let h = horizon(&p, &c, 0, Some(1), &load);
        assert!(placement_surely_over(&p, &ht, &vt, h));
        assert!(is_overloaded(&p, &c, 0, Some(1)));
        // A falling host is not flagged by the bound.
        for i in 0..12 {
            c.vms[0].push_history(0.6 - 0.04 * i as f64);
        }
        let ht = Trend::of(&c.host_load(0).history, p.samples);
        assert!(!placement_surely_over(&p, &ht, &vt, h));
    }

    proptest::proptest! {
        #[test]
        fn a_load_summed_to_the_fitted_depth_forecasts_the_same(
            hists in proptest::collection::vec(proptest::collection::vec(0.0f64..1.0, 0..30), 1..6),
            zeros in proptest::collection::vec(0usize..30, 0..10),
            extra_h in proptest::collection::vec(0.0f64..1.0, 0..30),
        ) {
            let mut vms: Vec<VmView> = hists.iter().map(|_| VmView::new(1000.0, 512.0)).collect();
            vms.push(VmView::new(500.0, 613.0));
            let mut c = Cluster::new(vec![HostView::new(8000.0, 2000.0, 1e9, 1000.0, 0)], vms, vec![PowerModel::ml110_g4()], 300.0);
            for (i, h) in hists.iter().enumerate() {
                c.vm_create(0, i);
                for &u in h.iter().rev() {
                    c.vms[i].push_history(u);
                }
                for &z in &zeros {
                    if z < c.vms[i].history.len() {
                        c.vms[i].history[z] = 0.0;
                    }
                }
            }
            let x = hists.len();
            for &u in extra_h.iter().rev() {
                c.vms[x].push_history(u);
            }
            let p = ForecastParams::with_cap(0.9);
            let full = c.host_load(0);
            let part = c.host_load_to(0, p.samples);
            for extra in [None, Some(x)] {
                proptest::prop_assert_eq!(forecast_given(&p, &c, 0, extra, &full), forecast_given(&p, &c, 0, extra, &part));
            }
        }

        #[test]
        fn the_decomposed_bound_never_flags_a_host_the_check_accepts(
            host_h in proptest::collection::vec(0.0f64..1.0, 12..30),
            vm_h in proptest::collection::vec(0.0f64..1.0, 0..30),
            vm_demand in 0.0f64..1.0,
            cap in 0.5f64..1.2,
        ) {
            let mut c = Cluster::new(
                vec![HostView::new(2000.0, 1000.0, 1e9, 1000.0, 0)],
                vec![VmView::new(1000.0, 512.0), VmView::new(1000.0, 870.0)],
                vec![PowerModel::ml110_g4()],
                300.0,
            );
            c.vm_create(0, 0);
            c.vms[0].demand_mips = 0.0;
            for &u in host_h.iter().rev() {
                c.vms[0].push_history(u.max(1e-3));
            }
            for &u in vm_h.iter().rev() {
                c.vms[1].push_history(u);
            }
            c.vms[1].demand_mips = vm_demand * 100.0;
            let p = ForecastParams::with_cap(cap);
            let load = c.host_load(0);
            let ht = Trend::of(&load.history, p.samples);
            let vt = Trend::of(&c.vms[1].history, p.samples).scaled(c.vms[1].mips / c.hosts[0].total_mips);
            let h = horizon(&p, &c, 0, Some(1), &load);
            if placement_surely_over(&p, &ht, &vt, h) {
                proptest::prop_assert!(is_overloaded(&p, &c, 0, Some(1)));
            }
            if host_key(&p, &ht, h - 1.0, h + 2.0) > vm_allowance(&p, &vt, h - 2.0, h + 1.0) {
                proptest::prop_assert!(is_overloaded(&p, &c, 0, Some(1)));
            }
        }
    }
}
