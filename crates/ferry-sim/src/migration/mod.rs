//! Migration cost models: CloudSim's RAM / bandwidth, and pre-copy rounds with a dirty rate.

/// How long a migration takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MigrationModel {
    /// CloudSim: RAM / half the target's bandwidth (the other half carries VM traffic).
    CloudSim,
    /// Pre-copy rounds over half the bandwidth, pages dirtied in proportion to CPU load.
    PreCopy(PreCopy),
}

/// Parameters of the pre-copy model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreCopy {
    /// MB/s a VM dirties at 100 % CPU.
    pub dirty_mb_s_at_full: f64,
    /// Largest stop-and-copy pause accepted, s.
    pub downtime_target_s: f64,
    /// Rounds before forcing stop-and-copy.
    pub max_rounds: u32,
}

impl Default for PreCopy {
    fn default() -> Self {
        Self {
            dirty_mb_s_at_full: 20.0,
            downtime_target_s: 0.3,
            max_rounds: 30,
        }
    }
}

/// What one migration costs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MigrationCost {
    /// Wall time from start to switch-over, s.
    pub duration_s: f64,
    /// Data sent, MB.
    pub moved_mb: f64,
    /// Stop-and-copy pause, s.
    pub downtime_s: f64,
}

/// Pre-copy cost for `ram_mb` over `bw_mb_s` with pages dirtied at `dirty_mb_s`.
pub fn precopy(ram_mb: f64, bw_mb_s: f64, dirty_mb_s: f64, p: &PreCopy) -> MigrationCost {
    let mut moved = 0.0;
    let mut time = 0.0;
    let mut to_send = ram_mb;
    for _ in 0..p.max_rounds {
        let t = to_send / bw_mb_s;
        moved += to_send;
        time += t;
        let dirty = (dirty_mb_s * t).min(ram_mb);
        to_send = dirty;
        if dirty / bw_mb_s <= p.downtime_target_s {
            break;
        }
    }
    let downtime = to_send / bw_mb_s;
    MigrationCost {
        duration_s: time + downtime,
        moved_mb: moved + to_send,
        downtime_s: downtime,
    }
}

impl MigrationModel {
    /// Cost of moving a VM of `ram_mb` at utilisation `util` onto a host of `bw_mbps`.
    pub fn cost(&self, ram_mb: f64, util: f64, bw_mbps: f64) -> MigrationCost {
        let bw_mb_s = bw_mbps / 16.0;
        let pc = match self {
            MigrationModel::CloudSim => PreCopy::default(),
            MigrationModel::PreCopy(p) => *p,
        };
        let est = precopy(ram_mb, bw_mb_s, pc.dirty_mb_s_at_full * util, &pc);
        match self {
            MigrationModel::CloudSim => MigrationCost {
                duration_s: ram_mb / bw_mb_s,
                ..est
            },
            MigrationModel::PreCopy(_) => est,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precopy_converges_and_costs_more_than_ram() {
        let c = precopy(1024.0, 62.5, 10.0, &PreCopy::default());
        assert!(c.moved_mb > 1024.0 && c.moved_mb < 1300.0);
        assert!(c.downtime_s <= 0.3 + 1e-9);
        let cs = MigrationModel::CloudSim.cost(870.0, 0.5, 1000.0);
        assert!((cs.duration_s - 13.92).abs() < 1e-9);
    }
}
