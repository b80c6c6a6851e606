//! Policy names (`npa`, `dvfs`, `lr-mmt-1.2`, `fc-mmt-1.0`, `balance`, ...) and their meaning.

use crate::consolidation::RoundOptions;
use crate::forecast::ForecastParams;
use crate::overload::Detector;
use crate::selection::Selector;

/// What the planner does every scheduling interval.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicySpec {
    /// No power awareness: hosts always draw full power, no migrations.
    Npa,
    /// Power follows utilisation (DVFS), hosts at 0 % are off, no migrations.
    Dvfs,
    /// Dynamic consolidation: overload detection + VM selection + PABFD + underload.
    Dynamic {
        /// Overload detector.
        detector: Detector,
        /// VM selection.
        selector: Selector,
        /// Round options.
        options: RoundOptions,
    },
    /// Load balancing (no consolidation).
    Balance {
        /// Migrations per interval at most.
        max_moves: usize,
        /// Minimum utilisation gain per move.
        min_gain: f64,
    },
}

/// A policy name that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// Unknown name.
    #[error("unknown policy '{0}'; known: {KNOWN}")]
    Unknown(String),
    /// Bad numeric parameter.
    #[error("policy '{name}': bad parameter '{param}' (expected a number{hint})")]
    BadParam {
        /// The policy name as given.
        name: String,
        /// The offending parameter.
        param: String,
        /// What range is valid.
        hint: &'static str,
    },
}

/// Human-readable list of policy forms.
pub const KNOWN: &str = "npa, dvfs, <det>-<sel>[-<param>] with det in thr|iqr|mad|lr|lrr|fc and sel in mmt|mc|rs|mu (e.g. lr-mmt-1.2, thr-mmt-0.8, fc-mmt-1.0), balance[-<gain>]";

/// The standard grid of `ferry sim compare` (the published CloudSim set plus ferry's own).
pub const STANDARD_GRID: &[&str] = &[
    "npa",
    "dvfs",
    "thr-mmt-0.8",
    "iqr-mmt-1.5",
    "mad-mmt-2.5",
    "lr-mmt-1.2",
    "lrr-mmt-1.2",
    "lr-mc-1.2",
    "fc-mmt-1.0",
    "balance",
];

/// Parses a policy name (case-insensitive).
pub fn parse(name: &str) -> Result<PolicySpec, PolicyError> {
    let lower = name.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('-').collect();
    let num = |p: &str, hint: &'static str| -> Result<f64, PolicyError> {
        p.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| PolicyError::BadParam {
                name: name.to_string(),
                param: p.to_string(),
                hint,
            })
    };
    match parts.as_slice() {
        ["npa"] => Ok(PolicySpec::Npa),
        ["dvfs"] => Ok(PolicySpec::Dvfs),
        ["balance"] => Ok(PolicySpec::Balance {
            max_moves: 50,
            min_gain: 0.05,
        }),
        ["balance", g] => Ok(PolicySpec::Balance {
            max_moves: 50,
            min_gain: num(g, ", a utilisation gain such as 0.05")?,
        }),
        [det, sel, rest @ ..] if rest.len() <= 1 => {
            let selector = match *sel {
                "mmt" => Selector::Mmt,
                "mc" => Selector::Mc,
                "rs" => Selector::Rs,
                "mu" => Selector::Mu,
                _ => return Err(PolicyError::Unknown(name.to_string())),
            };
            let param = rest.first().copied();
            let p = |default: f64, hint| param.map_or(Ok(default), |x| num(x, hint));
            let mut options = RoundOptions::cloudsim();
            let detector = match *det {
                "thr" => Detector::Thr(p(0.8, " in (0, 1], the utilisation threshold")?),
                "iqr" => Detector::Iqr(p(1.5, ", the safety parameter")?),
                "mad" => Detector::Mad(p(2.5, ", the safety parameter")?),
                "lr" => Detector::Lr(p(1.2, ", the safety parameter")?),
                "lrr" => Detector::Lrr(p(1.2, ", the safety parameter")?),
                "fc" => {
                    options.exclude_new_targets = true;
                    options.underload_below = 0.3;
                    Detector::Forecast(ForecastParams::with_cap(p(
                        1.0,
                        " in (0, 1], the utilisation cap",
                    )?))
                }
                _ => return Err(PolicyError::Unknown(name.to_string())),
            };
            Ok(PolicySpec::Dynamic {
                detector,
                selector,
                options,
            })
        }
        _ => Err(PolicyError::Unknown(name.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_standard_names() {
        for n in STANDARD_GRID {
            assert!(parse(n).is_ok(), "{n}");
        }
        assert_eq!(parse("LR-MMT-1.2").ok(), parse("lr-mmt").ok());
        assert!(matches!(parse("foo"), Err(PolicyError::Unknown(_))));
        assert!(matches!(
            parse("thr-mmt-x"),
            Err(PolicyError::BadParam { .. })
        ));
    }
}
