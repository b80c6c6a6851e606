//! Host overload detection: static threshold (THR), inter-quartile range (IQR), median
//! absolute deviation (MAD), local regression (LR) and its robust variant (LRR), as in
//! Beloglazov and Buyya (2012), plus ferry's forecast detector.

use crate::forecast::ForecastParams;
use crate::state::{Cluster, HostLoad, HISTORY_LEN};
use crate::stats;
use crate::{HostId, VmId};

/// Samples needed before IQR and MAD replace their fallback threshold.
pub const ROBUST_MIN_SAMPLES: usize = 12;
/// Samples LR and LRR regress over.
pub const LR_SAMPLES: usize = 10;
/// Static threshold used until enough history exists.
pub const FALLBACK_THRESHOLD: f64 = 0.7;

/// An overload detection rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Detector {
    /// Overloaded when demand exceeds a static fraction of capacity.
    Thr(f64),
    /// Threshold `1 - s * IQR(history)`.
    Iqr(f64),
    /// Threshold `1 - s * MAD(history)`.
    Mad(f64),
    /// Overloaded when `s *` the local-regression forecast reaches 100 %.
    Lr(f64),
    /// Like [`Detector::Lr`] with the robust (bisquare) regression.
    Lrr(f64),
    /// Ferry's forecast detector (see [`crate::forecast`]).
    Forecast(ForecastParams),
    /// Never overloaded (no consolidation).
    Never,
}

impl Detector {
    /// Whether `host` is overloaded, counting `extra` as if already placed on it.
    pub fn is_overloaded(&self, c: &Cluster, host: HostId, extra: Option<VmId>) -> bool {
        match *self {
            Detector::Thr(t) => c.demand_util(host, extra) > t,
            Detector::Never => false,
            _ => self.is_overloaded_given(c, host, extra, &c.host_load(host)),
        }
    }

    /// [`Detector::is_overloaded`] from the host's [`HostLoad`] (which a caller asking about
    /// many VMs for one host can compute once).
    pub fn is_overloaded_given(
        &self,
        c: &Cluster,
        host: HostId,
        extra: Option<VmId>,
        load: &HostLoad,
    ) -> bool {
        let full;
        let load = if load.depth < HISTORY_LEN
            && !matches!(self, Detector::Thr(_) | Detector::Forecast(_))
        {
            full = c.host_load(host);
            &full
        } else {
            load
        };
        match *self {
            Detector::Thr(t) => load.demand_util(c, host, extra) > t,
            Detector::Iqr(s) | Detector::Mad(s) => {
                let mut hist = [0.0; HISTORY_LEN];
                let n = load.history(c, host, extra, &mut hist);
                if n < ROBUST_MIN_SAMPLES {
                    return load.demand_util(c, host, extra) > FALLBACK_THRESHOLD;
                }
                let spread = if matches!(self, Detector::Iqr(_)) {
                    stats::iqr(&hist[..n])
                } else {
                    stats::mad(&hist[..n])
                };
                load.demand_util(c, host, extra) > 1.0 - s * spread
            }
            Detector::Lr(s) | Detector::Lrr(s) => {
                let mut hist = [0.0; HISTORY_LEN];
                let n = load.history(c, host, extra, &mut hist);
                if n < LR_SAMPLES {
                    return load.demand_util(c, host, extra) > FALLBACK_THRESHOLD;
                }
                let mut rev = [0.0; LR_SAMPLES];
                for (i, r) in rev.iter_mut().enumerate() {
                    *r = hist[LR_SAMPLES - i - 1];
                }
                let [a, b] = if matches!(self, Detector::Lr(_)) {
                    stats::loess(&rev)
                } else {
                    stats::robust_loess(&rev)
                };
                let mig = load.max_migration_time(c, host, extra);
                let intervals = (mig / c.interval_s).ceil();
                let predicted = (a + b * (LR_SAMPLES as f64 + intervals)) * s;
                predicted >= 1.0
            }
            Detector::Forecast(ref p) => {
                crate::forecast::is_overloaded_given(p, c, host, extra, load)
            }
            Detector::Never => false,
        }
    }

    /// A utilisation above which the placement check (`is_overloaded` with the VM added)
    /// always flags a host, from the demand alone; `None` when the rule has no such cap.
    /// The placement index skips hosts above it without asking.
    pub fn placement_demand_cap(&self) -> Option<f64> {
        match self {
            Detector::Thr(t) => Some(*t),
            Detector::Forecast(p) => Some(p.place_cap),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::power::PowerModel;
    use crate::state::{HostView, VmView};

    fn cluster(demands: &[f64]) -> Cluster {
        let mut c = Cluster::new(
            vec![HostView::new(2000.0, 1000.0, 4096.0, 1000.0, 0)],
            demands
                .iter()
                .map(|&d| {
                    let mut v = VmView::new(1000.0, 512.0);
                    v.demand_mips = d;
                    v
                })
                .collect(),
            vec![PowerModel::ml110_g4()],
            300.0,
        );
        for v in 0..demands.len() {
            c.vm_create(0, v);
        }
        c
    }

    #[test]
    fn thr_uses_demand() {
        let c = cluster(&[900.0, 800.0]);
        assert!(Detector::Thr(0.8).is_overloaded(&c, 0, None));
        assert!(!Detector::Thr(0.9).is_overloaded(&c, 0, None));
    }

    #[test]
    fn lr_predicts_rising_load() {
        let mut c = cluster(&[900.0, 900.0]);
        for i in 0..12 {
            for v in 0..2 {
                c.vms[v].push_history(0.5 + 0.04 * i as f64);
            }
        }
        assert!(Detector::Lr(1.2).is_overloaded(&c, 0, None));
        assert!(!Detector::Never.is_overloaded(&c, 0, None));
    }
}
