//! Ordinary least squares: Apache's incremental `SimpleRegression` and multiple-regression R².

/// Incremental simple linear regression with intercept (Apache Commons Math's algorithm).
#[derive(Debug, Clone, Default)]
pub struct SimpleRegression {
    n: f64,
    sum_x: f64,
    sum_y: f64,
    sum_xx: f64,
    sum_xy: f64,
    xbar: f64,
    ybar: f64,
}

impl SimpleRegression {
    /// Adds one observation.
    pub fn add(&mut self, x: f64, y: f64) {
        if self.n == 0.0 {
            self.xbar = x;
            self.ybar = y;
        } else {
            let fact1 = 1.0 + self.n;
            let fact2 = self.n / (1.0 + self.n);
            let dx = x - self.xbar;
            let dy = y - self.ybar;
            self.sum_xx += dx * dx * fact2;
            self.sum_xy += dx * dy * fact2;
            self.xbar += dx / fact1;
            self.ybar += dy / fact1;
        }
        self.sum_x += x;
        self.sum_y += y;
        self.n += 1.0;
    }

    /// Slope of the fitted line (`NaN` with fewer than two distinct x).
    pub fn slope(&self) -> f64 {
        if self.n < 2.0 || self.sum_xx.abs() < 10.0 * f64::MIN_POSITIVE {
            return f64::NAN;
        }
        self.sum_xy / self.sum_xx
    }

    /// Intercept of the fitted line.
    pub fn intercept(&self) -> f64 {
        (self.sum_y - self.slope() * self.sum_x) / self.n
    }

    /// Fitted value at `x`.
    pub fn predict(&self, x: f64) -> f64 {
        self.intercept() + self.slope() * x
    }
}

/// Coefficient of determination of regressing `y` on the columns `xs` (with intercept);
/// `None` when there are no more observations than parameters or the system is singular.
pub fn r_squared(xs: &[&[f64]], y: &[f64]) -> Option<f64> {
    let m = y.len();
    let p = xs.len() + 1;
    if m <= p {
        return None;
    }
    // Normal equations (X'X) b = X'y with an intercept column.
    let col = |j: usize, i: usize| if j == 0 { 1.0 } else { xs[j - 1][i] };
    let mut a = vec![0.0; p * (p + 1)];
    for r in 0..p {
        for c in 0..p {
            a[r * (p + 1) + c] = (0..m).map(|i| col(r, i) * col(c, i)).sum();
        }
        a[r * (p + 1) + p] = (0..m).map(|i| col(r, i) * y[i]).sum();
    }
    let b = solve(&mut a, p)?;
    let mean = y.iter().sum::<f64>() / m as f64;
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    for (i, yi) in y.iter().enumerate() {
        let fit: f64 = b.iter().enumerate().map(|(j, bj)| bj * col(j, i)).sum();
        ss_res += (yi - fit).powi(2);
        ss_tot += (yi - mean).powi(2);
    }
    Some(1.0 - ss_res / ss_tot)
}

/// R² of regressing each column of `cols` on all the others (with intercept), as
/// [`r_squared`] would give column by column, but from one shared Gram matrix: one
/// O(m·n²) pass plus one small solve per column instead of rebuilding the normal equations
/// each time. `None` where [`r_squared`] gives `None`.
pub fn r_squared_each(cols: &[&[f64]]) -> Vec<Option<f64>> {
    let n = cols.len();
    let m = cols.first().map_or(0, |c| c.len());
    if n == 0 || m <= n {
        return vec![None; n];
    }
    // Gram matrix over [intercept, col 0, ..., col n-1].
    let q = n + 1;
    let col = |j: usize, i: usize| if j == 0 { 1.0 } else { cols[j - 1][i] };
    let mut g = vec![0.0; q * q];
    for r in 0..q {
        for c in r..q {
            let v: f64 = (0..m).map(|i| col(r, i) * col(c, i)).sum();
            g[r * q + c] = v;
            g[c * q + r] = v;
        }
    }
    let p = n; // parameters per fit: intercept + n - 1 regressors
    let mut a = vec![0.0; p * (p + 1)];
    let mut idx = Vec::with_capacity(p);
    (0..n)
        .map(|y| {
            idx.clear();
            idx.extend((0..q).filter(|&j| j != y + 1));
            for (r, &jr) in idx.iter().enumerate() {
                for (c, &jc) in idx.iter().enumerate() {
                    a[r * (p + 1) + c] = g[jr * q + jc];
                }
                a[r * (p + 1) + p] = g[jr * q + y + 1];
            }
            let rhs: Vec<f64> = idx.iter().map(|&j| g[j * q + y + 1]).collect();
            let b = solve(&mut a, p)?;
            let yy = g[(y + 1) * q + y + 1];
            let ss_res = yy - b.iter().zip(&rhs).map(|(b, r)| b * r).sum::<f64>();
            let sum_y = g[y + 1];
            let ss_tot = yy - sum_y * sum_y / m as f64;
            Some(1.0 - ss_res / ss_tot)
        })
        .collect()
}

fn solve(a: &mut [f64], p: usize) -> Option<Vec<f64>> {
    let w = p + 1;
    for c in 0..p {
        let piv = (c..p).max_by(|&i, &j| a[i * w + c].abs().total_cmp(&a[j * w + c].abs()))?;
        if a[piv * w + c].abs() < 1e-12 {
            return None;
        }
        for k in 0..w {
            a.swap(c * w + k, piv * w + k);
        }
        for r in 0..p {
            if r != c {
                let f = a[r * w + c] / a[c * w + c];
                for k in c..w {
                    a[r * w + k] -= f * a[c * w + k];
                }
            }
        }
    }
    Some((0..p).map(|r| a[r * w + p] / a[r * w + r]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r2_of_exact_fit_is_one() {
        let x1 = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [3.0, 5.0, 7.0, 9.0, 11.0];
        assert!((r_squared(&[&x1], &y).unwrap() - 1.0).abs() < 1e-9);
        assert!(r_squared(&[&x1, &x1, &x1, &x1], &y).is_none());
    }

    #[test]
    fn r2_each_matches_column_by_column() {
        let cols: Vec<Vec<f64>> = (0..4)
            .map(|k| {
                (0..12)
                    .map(|i| ((i * (k + 3) + k * k) % 7) as f64 * 0.1 + 0.01 * i as f64)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f64]> = cols.iter().map(|c| c.as_slice()).collect();
        let each = r_squared_each(&refs);
        for (i, r2) in each.iter().enumerate() {
            let xs: Vec<&[f64]> = (0..4).filter(|&j| j != i).map(|j| refs[j]).collect();
            let one = r_squared(&xs, refs[i]).expect("regular");
            assert!(
                (r2.expect("regular") - one).abs() < 1e-9,
                "{i}: {r2:?} vs {one}"
            );
        }
    }
}
