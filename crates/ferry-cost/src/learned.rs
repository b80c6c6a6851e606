//! A cost model learned from recorded migrations.
//!
//! Each target is a linear function of a few features that the pre-copy mechanics make
//! roughly linear (seconds of link time for RAM and working set, their interaction with the
//! dirty rate, the round trip), fitted per strategy by ridge least squares. With at most five
//! coefficients per target, the normal equations are solved directly; a general ML crate
//! (linfa, smartcore) would bring ndarray and a solver for what is a 5x5 system here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Cost, MigrationInput};

/// One measured migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// What was known before it started.
    pub input: MigrationInput,
    /// The strategy the engine used (`precopy`, `postcopy`, ...).
    pub strategy: String,
    /// What it cost.
    pub cost: Cost,
}

/// Why a model cannot be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Too few samples for the features.
    #[error("{got} samples; at least {need} are needed")]
    TooFew {
        /// Samples given.
        got: usize,
        /// Needed.
        need: usize,
    },
}

/// Features of the time and downtime targets (seconds).
fn time_features(m: &MigrationInput) -> [f64; 5] {
    let bw = m.bandwidth.max(1.0);
    let ram_s = m.ram_bytes / bw;
    [
        1.0,
        ram_s * m.codec_ratio.clamp(0.01, 1.0),
        m.working_set_bytes / bw,
        ram_s * (m.dirty_rate / bw),
        m.rtt_ms / 1e3,
    ]
}

/// Features of the bytes target (MB).
fn byte_features(m: &MigrationInput) -> [f64; 5] {
    let bw = m.bandwidth.max(1.0);
    [
        1.0,
        m.ram_bytes * m.codec_ratio.clamp(0.01, 1.0) / 1e6,
        m.working_set_bytes / 1e6,
        m.dirty_rate * (m.ram_bytes / bw) / 1e6,
        0.0,
    ]
}

const K: usize = 5;
/// Ridge strength, relative to the features' scale: keeps unused features at zero.
const RIDGE: f64 = 1e-6;

/// Coefficients of one strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyModel {
    time: [f64; K],
    downtime: [f64; K],
    bytes: [f64; K],
    /// Samples it was fitted on.
    pub samples: usize,
}

/// Models per strategy, and one over every strategy for strategies with few samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    per_strategy: BTreeMap<String, StrategyModel>,
    all: StrategyModel,
}

fn dot(a: &[f64; K], b: &[f64; K]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Ridge least squares: argmin |Xw - y|² + λ|w|² by the normal equations.
fn solve(rows: &[[f64; K]], y: &[f64]) -> [f64; K] {
    let mut a = [[0.0; K]; K];
    let mut b = [0.0; K];
    for (x, &t) in rows.iter().zip(y) {
        for i in 0..K {
            b[i] += x[i] * t;
            for j in 0..K {
                a[i][j] += x[i] * x[j];
            }
        }
    }
    let scale = (0..K).map(|i| a[i][i]).fold(0.0, f64::max).max(1e-12);
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += RIDGE * scale;
    }
    // Gaussian elimination with partial pivoting.
    for c in 0..K {
        let p = (c..K)
            .max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs()))
            .unwrap_or(c);
        a.swap(c, p);
        b.swap(c, p);
        if a[c][c].abs() < 1e-300 {
            continue;
        }
        let pivot = a[c];
        for r in c + 1..K {
            let f = a[r][c] / pivot[c];
            for (x, p) in a[r][c..].iter_mut().zip(&pivot[c..]) {
                *x -= f * p;
            }
            b[r] -= f * b[c];
        }
    }
    let mut w = [0.0; K];
    for c in (0..K).rev() {
        if a[c][c].abs() < 1e-300 {
            continue;
        }
        let s: f64 = (c + 1..K).map(|k| a[c][k] * w[k]).sum();
        w[c] = (b[c] - s) / a[c][c];
    }
    w
}

fn fit_one(samples: &[&Sample]) -> StrategyModel {
    let tx: Vec<[f64; K]> = samples.iter().map(|s| time_features(&s.input)).collect();
    let bx: Vec<[f64; K]> = samples.iter().map(|s| byte_features(&s.input)).collect();
    let t: Vec<f64> = samples.iter().map(|s| s.cost.total_ms / 1e3).collect();
    let d: Vec<f64> = samples.iter().map(|s| s.cost.downtime_ms / 1e3).collect();
    let b: Vec<f64> = samples.iter().map(|s| s.cost.bytes / 1e6).collect();
    StrategyModel {
        time: solve(&tx, &t),
        downtime: solve(&tx, &d),
        bytes: solve(&bx, &b),
        samples: samples.len(),
    }
}

impl StrategyModel {
    fn predict(&self, m: &MigrationInput) -> Cost {
        let tf = time_features(m);
        let bf = byte_features(m);
        Cost {
            total_ms: (dot(&self.time, &tf) * 1e3).max(0.0),
            downtime_ms: (dot(&self.downtime, &tf) * 1e3).max(0.0),
            bytes: (dot(&self.bytes, &bf) * 1e6).max(0.0),
        }
    }
}

/// Samples a strategy needs before it gets its own model.
pub const MIN_SAMPLES: usize = 2 * K;

impl Model {
    /// Fits on `samples` (only completed migrations should be given).
    pub fn fit(samples: &[Sample]) -> Result<Model, FitError> {
        if samples.len() < MIN_SAMPLES {
            return Err(FitError::TooFew {
                got: samples.len(),
                need: MIN_SAMPLES,
            });
        }
        let all: Vec<&Sample> = samples.iter().collect();
        let mut groups: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            groups.entry(s.strategy.as_str()).or_default().push(s);
        }
        let per_strategy = groups
            .into_iter()
            .filter(|(_, g)| g.len() >= MIN_SAMPLES)
            .map(|(k, g)| (k.to_string(), fit_one(&g)))
            .collect();
        Ok(Model {
            per_strategy,
            all: fit_one(&all),
        })
    }

    /// The predicted cost of `m` with `strategy`.
    pub fn predict(&self, strategy: &str, m: &MigrationInput) -> Cost {
        self.per_strategy
            .get(strategy)
            .unwrap_or(&self.all)
            .predict(m)
    }

    /// Samples the model was fitted on.
    pub fn samples(&self) -> usize {
        self.all.samples
    }
}

/// Mean absolute percentage error of each target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    /// Of total time, %.
    pub total_pct: f64,
    /// Of downtime, %.
    pub downtime_pct: f64,
    /// Of bytes, %.
    pub bytes_pct: f64,
    /// Samples compared.
    pub n: usize,
}

/// The error of `predict` on `test`.
pub fn evaluate(test: &[Sample], predict: impl Fn(&Sample) -> Cost) -> Errors {
    let mut e = [0.0; 3];
    for s in test {
        let p = predict(s);
        let pct = |p: f64, m: f64| ((p - m).abs() / m.abs().max(1e-9)) * 100.0;
        e[0] += pct(p.total_ms, s.cost.total_ms);
        e[1] += pct(p.downtime_ms, s.cost.downtime_ms.max(0.1));
        e[2] += pct(p.bytes, s.cost.bytes);
    }
    let n = test.len().max(1) as f64;
    Errors {
        total_pct: e[0] / n,
        downtime_pct: e[1] / n,
        bytes_pct: e[2] / n,
        n: test.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ram: f64, ws: f64, dirty: f64) -> Sample {
        let input = MigrationInput {
            ram_bytes: ram,
            dirty_rate: dirty,
            working_set_bytes: ws,
            bandwidth: 100e6,
            rtt_ms: 0.5,
            codec_ratio: 0.8,
        };
        // A made-up "true" cost the model's features can express, plus a little noise.
        let noise = 1.0 + ((ram / 1e6) as u64 % 7) as f64 * 0.002;
        let cost = Cost {
            total_ms: (50.0 + 1e3 * 0.8 * ram / 100e6 + 1e3 * 2.0 * ws / 100e6) * noise,
            downtime_ms: 5.0 + 1e3 * 1.0 * ws / 100e6,
            bytes: 0.8 * ram + 1.5 * ws,
        };
        Sample {
            input,
            strategy: "precopy".into(),
            cost,
        }
    }

    #[test]
    fn learns_a_linear_cost_and_predicts_held_out_migrations() {
        let train: Vec<Sample> = (1..=24)
            .map(|i| sample(i as f64 * 32e6, (i % 5) as f64 * 4e6, (i % 3) as f64 * 1e6))
            .collect();
        let test: Vec<Sample> = [(400e6, 6e6, 1e6), (900e6, 10e6, 2e6)]
            .iter()
            .map(|&(r, w, d)| sample(r, w, d))
            .collect();
        let m = Model::fit(&train).unwrap();
        let e = evaluate(&test, |s| m.predict(&s.strategy, &s.input));
        assert!(e.total_pct < 3.0, "{e:?}");
        assert!(e.downtime_pct < 3.0, "{e:?}");
        assert!(e.bytes_pct < 3.0, "{e:?}");
        // The formula knows nothing of this host's overheads: it is further off.
        let f = evaluate(&test, |s| crate::formula::precopy(&s.input));
        assert!(f.total_pct > e.total_pct, "{f:?} vs {e:?}");
    }

    #[test]
    fn too_few_samples_are_refused() {
        let few: Vec<Sample> = (1..4).map(|i| sample(i as f64 * 1e6, 0.0, 0.0)).collect();
        assert_eq!(
            Model::fit(&few),
            Err(FitError::TooFew {
                got: 3,
                need: MIN_SAMPLES
            })
        );
    }
}
