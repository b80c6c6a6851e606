//! Lower bounds of PABFD's power increase, per power model, utilisation bin and VM size.
//!
//! For a host of measured utilisation `u` whose live allocation is at least `u`, adding a VM
//! of `x` (fraction of the host's capacity) raises its power by at least
//! `phi_x(u) = P(min(1, u + x)) - P(u)`, because `P` never falls. `phi` is piecewise linear
//! in `u`, so its minimum over a bin of utilisations is at a bin edge or where `u` or `u + x`
//! crosses a point of the SPECpower table. A row of bounds holds that minimum for every bin
//! at one quantised `x`, rounded down (`phi` grows with `x`, so the row of the next lower
//! step bounds every `x` above it), and the bins sorted by it.

use std::sync::{Arc, Mutex, OnceLock};

/// Utilisation bins per power model (width 0.002).
pub(super) const BINS: usize = 500;
/// Steps of VM size (fraction of the host) between 0 and 1.
pub(super) const STEPS: usize = 1024;

/// Bounds for one power model; rows are computed when first asked for.
#[derive(Debug)]
pub(super) struct ModelBounds {
    points: [f64; 11],
    margin: f64,
    rows: Vec<OnceLock<Row>>,
}

/// Bounds at one VM size.
#[derive(Debug)]
pub(super) struct Row {
    /// Lower bound of the increase for hosts in each bin, W.
    pub lb: Box<[f32]>,
    /// Bins in increasing order of `lb`.
    pub order: Box<[u16]>,
}

/// The bin of a (clamped) utilisation.
pub(super) fn bin_of(u: f64) -> usize {
    ((u.clamp(0.0, 1.0) * BINS as f64) as usize).min(BINS - 1)
}

/// The step whose row bounds a VM of `x` (fraction of the host's capacity).
pub(super) fn step_of(x: f64) -> usize {
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    ((x * STEPS as f64) as usize).min(STEPS)
}

impl ModelBounds {
    fn new(points: [f64; 11]) -> Self {
        let max = points.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        Self {
            points,
            // Covers the difference between this exact interpolation and CloudSim's floating
            // formula, and live allocations a hair below the measured utilisation.
            margin: 1e-6 + 1e-8 * max,
            rows: (0..=STEPS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The row for step `s` (see [`step_of`]).
    pub(super) fn row(&self, s: usize) -> &Row {
        self.rows[s.min(STEPS)].get_or_init(|| self.compute(s.min(STEPS)))
    }

    fn p(&self, u: f64) -> f64 {
        let u = u.clamp(0.0, 1.0);
        let k = ((u * 10.0) as usize).min(9);
        self.points[k] + (self.points[k + 1] - self.points[k]) * (u * 10.0 - k as f64)
    }

    fn phi(&self, x: f64, u: f64) -> f64 {
        self.p((u + x).min(1.0)) - self.p(u)
    }

    fn compute(&self, s: usize) -> Row {
        let x = s as f64 / STEPS as f64;
        let mut lb = Vec::with_capacity(BINS);
        let mut cands: Vec<f64> = Vec::with_capacity(32);
        for b in 0..BINS {
            let lo = b as f64 / BINS as f64;
            let hi = if b + 1 == BINS {
                1.0
            } else {
                (b + 1) as f64 / BINS as f64
            };
            cands.clear();
            cands.extend([lo, hi, 1.0 - x]);
            for k in 0..=10 {
                let t = k as f64 / 10.0;
                cands.extend([t, t - x]);
            }
            let m = cands
                .iter()
                .filter(|&&t| t >= lo && t <= hi)
                .map(|&t| self.phi(x, t))
                .fold(f64::INFINITY, f64::min);
            let v = m - self.margin;
            let f = v as f32;
            lb.push(if f as f64 > v { f.next_down() } else { f });
        }
        let mut order: Vec<u16> = (0..BINS as u16).collect();
        order.sort_by(|&a, &b| lb[a as usize].total_cmp(&lb[b as usize]).then(a.cmp(&b)));
        Row {
            lb: lb.into_boxed_slice(),
            order: order.into_boxed_slice(),
        }
    }
}

type Cache = Mutex<Vec<([u64; 11], Arc<ModelBounds>)>>;

/// The bounds of a power model, shared by every index (and thread) that needs them.
pub(super) fn for_points(points: &[f64; 11]) -> Arc<ModelBounds> {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = points.map(f64::to_bits);
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut g = match cache.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((_, b)) = g.iter().find(|(k, _)| *k == key) {
        return b.clone();
    }
    let b = Arc::new(ModelBounds::new(*points));
    g.push((key, b.clone()));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::PowerModel;

    #[test]
    fn bounds_never_exceed_the_increase() {
        for m in [PowerModel::ml110_g4(), PowerModel::ml110_g5()] {
            let b = for_points(&m.points);
            for i in 0..=2000 {
                let u = i as f64 / 2000.0;
                for j in 0..=300 {
                    let x = j as f64 / 300.0 * 0.8;
                    let d = m.power((u + x).min(1.0)) - m.power(u);
                    let lb = b.row(step_of(x)).lb[bin_of(u)] as f64;
                    assert!(lb <= d, "{}: u {u} x {x}: bound {lb} > {d}", m.name);
                }
            }
        }
    }

    #[test]
    fn rows_are_sorted_and_tight_where_the_curve_is_straight() {
        let m = PowerModel::ml110_g4();
        let b = for_points(&m.points);
        let r = b.row(step_of(0.05));
        assert!(r
            .order
            .windows(2)
            .all(|w| r.lb[w[0] as usize] <= r.lb[w[1] as usize]));
        // Between 60 % and 65 % both ends stay in the 2 W-per-10 % segment.
        let d = m.power(0.66) - m.power(0.61);
        let lb = r.lb[bin_of(0.61)] as f64;
        assert!(d - lb < 0.05, "bound {lb} far below {d}");
    }
}
