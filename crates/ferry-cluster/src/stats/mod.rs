//! Small statistics kit matching the estimators CloudSim uses (Apache Commons Math
//! percentiles, its `SimpleRegression`, CloudSim's `MathUtil` loess variants).

mod regression;

pub use regression::{r_squared, r_squared_each, SimpleRegression};

/// Percentile `p` (0..100) with Apache Commons Math's default estimator; `NaN` when empty.
pub fn percentile(data: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = data.to_vec();
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, p)
}

/// Percentile of already sorted data (see [`percentile`]).
pub fn percentile_sorted(v: &[f64], p: f64) -> f64 {
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n == 1 {
        return v[0];
    }
    let pos = p * (n as f64 + 1.0) / 100.0;
    let fpos = pos.floor();
    let int_pos = fpos as usize;
    let dif = pos - fpos;
    if pos < 1.0 {
        return v[0];
    }
    if pos >= n as f64 {
        return v[n - 1];
    }
    let lower = v[int_pos - 1];
    let upper = v[int_pos];
    lower + dif * (upper - lower)
}

/// Median (Apache's 50th percentile).
pub fn median(data: &[f64]) -> f64 {
    percentile(data, 50.0)
}

/// Median absolute deviation, as CloudSim's `MathUtil.mad`.
pub fn mad(data: &[f64]) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let m = median(data);
    let dev: Vec<f64> = data.iter().map(|x| (m - x).abs()).collect();
    median(&dev)
}

/// Inter-quartile range, as CloudSim's `MathUtil.iqr` (rounded ranks).
pub fn iqr(data: &[f64]) -> f64 {
    let mut v = data.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len() as f64;
    let q1 = java_round(0.25 * (n + 1.0)) - 1;
    let q3 = java_round(0.75 * (n + 1.0)) - 1;
    let at = |i: i64| v[i.clamp(0, v.len() as i64 - 1) as usize];
    at(q3) - at(q1)
}

fn java_round(x: f64) -> i64 {
    (x + 0.5).floor() as i64
}

/// Length of `data` once trailing zeros are trimmed (CloudSim's `countNonZeroBeginning`).
pub fn non_zero_len(data: &[f64]) -> usize {
    data.iter().rposition(|&x| x != 0.0).map_or(0, |i| i + 1)
}

/// CloudSim's tricube weights for `n` points.
pub fn tricube_weights(n: usize) -> Vec<f64> {
    let mut w = vec![0.0; n];
    let top = n as f64 - 1.0;
    let spread = top;
    for (i, wi) in w.iter_mut().enumerate().skip(2) {
        let k = (1.0 - ((top - i as f64) / spread).powi(3)).powi(3);
        *wi = if k > 0.0 { 1.0 / k } else { f64::MAX };
    }
    if n > 2 {
        w[0] = w[2];
        w[1] = w[2];
    }
    w
}

fn bisquare_weights(residuals: &[f64]) -> Vec<f64> {
    let n = residuals.len();
    let w = tricube_weights(n);
    let abs: Vec<f64> = residuals.iter().map(|r| r.abs()).collect();
    let s6 = median(&abs) * 6.0;
    let mut w2 = vec![0.0; n];
    for i in 2..n {
        let k = (1.0 - (residuals[i] / s6).powi(2)).powi(2);
        w2[i] = if k > 0.0 { (1.0 / k) * w[i] } else { f64::MAX };
    }
    if n > 2 {
        w2[0] = w2[2];
        w2[1] = w2[2];
    }
    w2
}

fn weighted_regression(x: &[f64], y: &[f64], w: &[f64]) -> SimpleRegression {
    let zeros = w.iter().filter(|&&wi| wi <= 0.0).count();
    let use_w = zeros as f64 >= 0.4 * w.len() as f64;
    let mut r = SimpleRegression::default();
    for i in 0..x.len() {
        if use_w {
            let s = w[i].sqrt();
            r.add(s * x[i], s * y[i]);
        } else {
            r.add(x[i], y[i]);
        }
    }
    r
}

/// CloudSim's local regression (`getLoessParameterEstimates`): `[intercept, slope]` over
/// x = 1..=n. As in CloudSim, the tricube weights only apply when 40 % of them are zero.
pub fn loess(y: &[f64]) -> [f64; 2] {
    let x: Vec<f64> = (1..=y.len()).map(|i| i as f64).collect();
    let r = weighted_regression(&x, y, &tricube_weights(y.len()));
    [r.intercept(), r.slope()]
}

/// CloudSim's robust local regression (`getRobustLoessParameterEstimates`).
pub fn robust_loess(y: &[f64]) -> [f64; 2] {
    let n = y.len();
    let x: Vec<f64> = (1..=n).map(|i| i as f64).collect();
    let tri = weighted_regression(&x, y, &tricube_weights(n));
    let residuals: Vec<f64> = (0..n).map(|i| y[i] - tri.predict(x[i])).collect();
    let bi = weighted_regression(&x, y, &bisquare_weights(&residuals));
    let est = [bi.intercept(), bi.slope()];
    if est[0].is_nan() || est[1].is_nan() {
        return [tri.intercept(), tri.slope()];
    }
    est
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_like_apache() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(mad(&[1.0, 1.0, 2.0, 2.0, 4.0, 6.0, 9.0]), 1.0);
        assert_eq!(iqr(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), 4.0);
        assert_eq!(non_zero_len(&[1.0, 0.0, 2.0, 0.0, 0.0]), 3);
    }

    #[test]
    fn loess_on_a_line_is_exact() {
        let y: Vec<f64> = (1..=10).map(|i| 0.1 + 0.05 * i as f64).collect();
        let [a, b] = loess(&y);
        assert!((a - 0.1).abs() < 1e-12 && (b - 0.05).abs() < 1e-12);
        let [a, b] = robust_loess(&y);
        assert!((a - 0.1).abs() < 1e-9 && (b - 0.05).abs() < 1e-9);
    }
}
