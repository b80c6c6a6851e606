//! Host power models (SPECpower tables) with optional sleep and wake costs.

use serde::{Deserialize, Serialize};

/// Power drawn by a host as a function of CPU utilisation, from 11 SPECpower points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerModel {
    /// Model name, e.g. `HP ProLiant ML110 G4`.
    pub name: String,
    /// Watts at 0 %, 10 %, ..., 100 % CPU utilisation.
    pub points: [f64; 11],
    /// Watts drawn while switched off (CloudSim: 0).
    pub sleep_w: f64,
    /// Joules spent to wake a switched-off host (CloudSim: 0).
    pub wake_j: f64,
}

impl PowerModel {
    /// HP ProLiant ML110 G4 (Xeon 3040), SPECpower.
    pub fn ml110_g4() -> Self {
        Self::from_points(
            "HP ProLiant ML110 G4",
            [
                86.0, 89.4, 92.6, 96.0, 99.5, 102.0, 106.0, 108.0, 112.0, 114.0, 117.0,
            ],
        )
    }

    /// HP ProLiant ML110 G5 (Xeon 3075), SPECpower.
    pub fn ml110_g5() -> Self {
        Self::from_points(
            "HP ProLiant ML110 G5",
            [
                93.7, 97.0, 101.0, 105.0, 110.0, 116.0, 121.0, 125.0, 129.0, 133.0, 135.0,
            ],
        )
    }

    /// A model from a name and 11 points, drawing nothing while off and waking for free.
    pub fn from_points(name: &str, points: [f64; 11]) -> Self {
        Self {
            name: name.to_string(),
            points,
            sleep_w: 0.0,
            wake_j: 0.0,
        }
    }

    /// Watts at utilisation `u` (clamped to [0, 1]), interpolated exactly like CloudSim's
    /// `PowerModelSpecPower.getPower`.
    pub fn power(&self, u: f64) -> f64 {
        let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
        // The ends of the table, where CloudSim's formula gives the table's values.
        if u == 0.0 {
            return self.points[0];
        }
        if u == 1.0 {
            return self.points[10];
        }
        let x = u * 10.0;
        // `x` is in [0, 10]: truncation is `floor`, and `x - floor(x)`, `floor(x) + 1 - x` are
        // exact, so this is CloudSim's formula without the library calls (measured: the
        // `floor`/`ceil`/`round`/`fmod` calls were a third of a planning round's time).
        let u1 = x as usize;
        let below = x - u1 as f64;
        // CloudSim tests `u % 0.1 == 0`; that can only hold next to a table point, so the
        // (slow) fmod is only evaluated there.
        if below.min(u1 as f64 + 1.0 - x) < 1e-6 && u % 0.1 == 0.0 {
            return self.points[u1];
        }
        let u2 = if below == 0.0 { u1 } else { (u1 + 1).min(10) };
        let p1 = self.points[u1];
        let p2 = self.points[u2];
        let delta = (p2 - p1) / 10.0;
        p1 + delta * (u - u1 as f64 / 10.0) * 100.0
    }

    /// CloudSim's formula as it was written (library `floor`, `ceil`, `round`, `%`), kept to
    /// check that [`PowerModel::power`] gives the same bits.
    #[cfg(test)]
    fn power_reference(&self, u: f64) -> f64 {
        let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
        let x = u * 10.0;
        if (x - x.round()).abs() < 1e-6 && u % 0.1 == 0.0 {
            return self.points[x as usize];
        }
        let u1 = (u * 10.0).floor() as usize;
        let u2 = ((u * 10.0).ceil() as usize).min(10);
        let p1 = self.points[u1];
        let p2 = self.points[u2];
        let delta = (p2 - p1) / 10.0;
        p1 + delta * (u - u1 as f64 / 10.0) * 100.0
    }

    /// Whether power never falls as utilisation rises (every SPECpower table does; the
    /// placement index relies on it and treats other models' hosts one by one).
    pub fn is_monotone(&self) -> bool {
        self.points.windows(2).all(|w| w[1] >= w[0])
    }

    /// Watts at full load.
    pub fn max_power(&self) -> f64 {
        self.points[10]
    }

    /// Energy (J) over `dt` seconds while utilisation moves linearly from `from` to `to`;
    /// a host at 0 % at the start of the segment is off (CloudSim's convention).
    pub fn energy_linear(&self, from: f64, to: f64, dt: f64) -> f64 {
        if from == 0.0 {
            return self.sleep_w * dt;
        }
        let p1 = self.power(from);
        let p2 = self.power(to);
        (p1 + (p2 - p1) / 2.0) * dt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_points_and_interpolation() {
        let g4 = PowerModel::ml110_g4();
        assert_eq!(g4.power(0.0), 86.0);
        assert_eq!(g4.power(1.0), 117.0);
        assert!((g4.power(0.05) - 87.7).abs() < 1e-9);
        let g5 = PowerModel::ml110_g5();
        assert!((g5.power(0.95) - 134.0).abs() < 1e-9);
        assert_eq!(g5.energy_linear(0.0, 0.5, 300.0), 0.0);
    }

    #[test]
    fn fast_power_has_the_reference_bits() {
        let models = [PowerModel::ml110_g4(), PowerModel::ml110_g5()];
        let mut probes: Vec<f64> = (0..=100_000).map(|i| i as f64 / 100_000.0).collect();
        for k in 0..=10 {
            let p = k as f64 / 10.0;
            for d in [0.0, 1e-7, 1e-6, 2e-6, 1e-12] {
                probes.extend([p - d, p + d, (p - d).next_down(), (p + d).next_up()]);
            }
            probes.push(k as f64 * 0.1);
        }
        probes.extend([-1.0, 1.5, f64::NAN, 0.3, 0.7, 0.30000000000000004]);
        for m in &models {
            for &u in &probes {
                assert_eq!(
                    m.power(u).to_bits(),
                    m.power_reference(u).to_bits(),
                    "{} at {u:e}",
                    m.name
                );
            }
        }
    }
}
