//! CPU utilisation traces: PlanetLab day files and a seeded synthetic generator.

mod synthetic;

use crate::error::SimError;
use std::path::{Path, PathBuf};
pub use synthetic::SyntheticParams;

/// Per-VM CPU utilisation over time, sampled every `interval_s` seconds.
#[derive(Debug, Clone)]
pub enum Trace {
    /// Stored samples in whole percent (PlanetLab), one row per VM.
    Stored {
        /// Source name (day or file).
        name: String,
        /// Row names.
        rows: Vec<String>,
        /// `rows.len() * samples` values, row-major, percent.
        data: Vec<u8>,
        /// Samples per row.
        samples: usize,
        /// Seconds between samples.
        interval_s: f64,
        /// Days the run lasts: the day repeats this many times, then its last sample holds.
        days: usize,
    },
    /// Generated on the fly from a seed (any scale, no storage).
    Synthetic(SyntheticParams),
}

impl Trace {
    /// Number of distinct rows (VMs are mapped onto rows round-robin).
    pub fn rows(&self) -> usize {
        match self {
            Trace::Stored { rows, .. } => rows.len(),
            Trace::Synthetic(p) => p.vms,
        }
    }

    /// Samples per row.
    pub fn samples(&self) -> usize {
        match self {
            Trace::Stored { samples, .. } => *samples,
            Trace::Synthetic(p) => p.samples(),
        }
    }

    /// Seconds between samples.
    pub fn interval_s(&self) -> f64 {
        match self {
            Trace::Stored { interval_s, .. } => *interval_s,
            Trace::Synthetic(p) => p.interval_s,
        }
    }

    /// Short name for reports.
    pub fn name(&self) -> String {
        match self {
            Trace::Stored { name, .. } => name.clone(),
            Trace::Synthetic(p) => format!("synthetic(seed={})", p.seed),
        }
    }

    /// Sample `k` of `row` as a fraction; past the end the last sample repeats, and a
    /// stored trace shorter than the run wraps around (day after day).
    pub fn sample(&self, row: usize, k: usize) -> f64 {
        match self {
            Trace::Stored {
                data,
                samples,
                days,
                ..
            } => {
                let k = k.min(samples * days.max(&1) - 1) % samples;
                data[row * samples + k] as f64 / 100.0
            }
            Trace::Synthetic(p) => p.sample(row, k),
        }
    }

    /// Utilisation of `row` at time `t`, linearly interpolated between samples exactly
    /// like CloudSim's `UtilizationModelPlanetLabInMemory`.
    pub fn at(&self, row: usize, t: f64) -> f64 {
        let iv = self.interval_s();
        if t % iv == 0.0 {
            return self.sample(row, (t / iv) as usize);
        }
        let k1 = (t / iv).floor();
        let k2 = (t / iv).ceil();
        let u1 = self.sample(row, k1 as usize);
        let u2 = self.sample(row, k2 as usize);
        let delta = (u2 - u1) / ((k2 - k1) * iv);
        u1 + delta * (t - k1 * iv)
    }
}

/// The two samples around the last time a row was read (synthetic samples are computed,
/// and one scheduling interval reads the same pair many times).
#[derive(Debug, Clone, Copy)]
pub struct SampleCache {
    k: usize,
    at_k: f64,
    at_next: f64,
}

impl Default for SampleCache {
    fn default() -> Self {
        Self {
            k: usize::MAX,
            at_k: 0.0,
            at_next: 0.0,
        }
    }
}

impl Trace {
    fn cached(&self, row: usize, k: usize, cache: &mut SampleCache) -> (f64, f64) {
        if cache.k != k {
            let at_k = if cache.k != usize::MAX && cache.k + 1 == k {
                cache.at_next
            } else {
                self.sample(row, k)
            };
            *cache = SampleCache {
                k,
                at_k,
                at_next: self.sample(row, k + 1),
            };
        }
        (cache.at_k, cache.at_next)
    }

    /// [`Trace::at`] through a per-row cache of the surrounding samples (same values).
    pub fn at_cached(&self, row: usize, t: f64, cache: &mut SampleCache) -> f64 {
        let iv = self.interval_s();
        let q = t / iv;
        if !(q >= 0.0 && q < u32::MAX as f64) {
            return self.at(row, t);
        }
        // `q` is not negative: truncation is `floor`, and only a `q` next to an integer can
        // be a multiple of the interval (so the slow `%` runs only there).
        let k1 = q as usize;
        let frac = q - k1 as f64;
        if !(1e-9..=1.0 - 1e-9).contains(&frac) && t % iv == 0.0 {
            let k = q as usize;
            return if cache.k == k {
                cache.at_k
            } else if cache.k != usize::MAX && cache.k + 1 == k {
                cache.at_next
            } else {
                self.sample(row, k)
            };
        }
        if frac == 0.0 {
            return self.at(row, t);
        }
        let (k1f, k2f) = (k1 as f64, k1 as f64 + 1.0);
        let (u1, u2) = self.cached(row, k1, cache);
        let delta = (u2 - u1) / ((k2f - k1f) * iv);
        u1 + delta * (t - k1f * iv)
    }
}

/// Loads a PlanetLab day file: `name<TAB>v1 v2 ...` per line, integers 0..=100.
pub fn load_planetlab(path: &Path) -> Result<Trace, SimError> {
    let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut samples = 0;
    for (i, line) in text.lines().enumerate() {
        let err = |msg: String| SimError::TraceLine {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, values) = line
            .split_once('\t')
            .ok_or_else(|| err("expected '<name><TAB><values>'".into()))?;
        let before = data.len();
        for (j, tok) in values.split_whitespace().enumerate() {
            let v: u16 = tok.parse().map_err(|_| {
                err(format!(
                    "value {} ('{tok}') is not an integer percentage",
                    j + 1
                ))
            })?;
            if v > 100 {
                return Err(err(format!("value {} is {v}, above 100 %", j + 1)));
            }
            data.push(v as u8);
        }
        let n = data.len() - before;
        if n == 0 {
            return Err(err("no samples".into()));
        }
        if samples == 0 {
            samples = n;
        } else if n != samples {
            return Err(err(format!(
                "{n} samples, but earlier lines have {samples}"
            )));
        }
        rows.push(name.to_string());
    }
    if rows.is_empty() {
        return Err(SimError::Config(format!(
            "{}: trace has no VMs",
            path.display()
        )));
    }
    let name = path.file_stem().map_or_else(
        || path.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    Ok(Trace::Stored {
        name,
        rows,
        data,
        samples,
        interval_s: 300.0,
        days: 1,
    })
}

/// Folders searched for PlanetLab days, in order: `dir` if given, then
/// `../shared/data/planetlab` from the working directory and from the repository, then the
/// sample bundled with this crate.
pub fn search_dirs(dir: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(d) = dir {
        out.push(d.to_path_buf());
    }
    out.push(PathBuf::from("../shared/data/planetlab"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    out.push(repo.join("../shared/data/planetlab"));
    out.push(bundled_dir());
    out
}

/// The small sample shipped in the crate (for tests and offline use).
pub fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/planetlab-sample")
}

/// Resolves `--trace`: an existing file path, or a day `YYYYMMDD` looked up in
/// [`search_dirs`].
pub fn resolve(spec: &str, dir: Option<&Path>) -> Result<PathBuf, SimError> {
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let dirs = search_dirs(dir);
    for d in &dirs {
        for cand in [d.join(format!("{spec}.tsv")), d.join(spec)] {
            if cand.is_file() {
                return Ok(cand);
            }
        }
    }
    Err(SimError::TraceNotFound {
        name: spec.to_string(),
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The PlanetLab days found in the first search folder that has any.
pub fn list_days(dir: Option<&Path>) -> Vec<String> {
    for d in search_dirs(dir) {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut days: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".tsv"))
                    .map(str::to_string)
            })
            .collect();
        if !days.is_empty() {
            days.sort();
            return days;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests;
