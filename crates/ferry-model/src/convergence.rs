//! When to stop copying live and switch over: plain functions of what the rounds measured, so the
//! engine, the planner and the simulator all apply the same rule.

use std::time::Duration;

use crate::RoundStats;

/// Knobs of the convergence rule.
#[derive(Clone, Copy, Debug)]
pub struct ConvergenceConfig {
    /// Largest pause we aim for.
    pub downtime_target: Duration,
    /// Live rounds at most before switching over anyway.
    pub max_rounds: u32,
    /// Whether throttling the guest is allowed.
    pub auto_converge: bool,
    /// Whether switching to post-copy is allowed when pre-copy does not converge.
    pub postcopy_fallback: bool,
    /// The pause a switch to post-copy is expected to cost (see [`expected_postcopy_pause`]):
    /// when set, pre-copy switches over only once it can pause for less than that, and otherwise
    /// goes on until it stalls and post-copy takes over (`auto`: the smallest pause it can reach).
    pub postcopy_pause: Option<Duration>,
}

/// Engine-side fixed cost of a post-copy switch-over (state, commit, resume), measured on the demo
/// guest on loopback: about 1.5 ms of engine downtime.
const POSTCOPY_FIXED_PAUSE: Duration = Duration::from_millis(2);

/// The pause post-copy is expected to cost over a link with round-trip time `rtt`: its fixed
/// cost, the state's trip (half a round trip, then the commit's), and the guest's first fault,
/// which waits a whole round trip.
pub fn expected_postcopy_pause(rtt: Duration) -> Duration {
    POSTCOPY_FIXED_PAUSE.saturating_add(rtt.saturating_mul(2))
}

/// What to do after a round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// Another live round.
    Continue,
    /// Throttle the guest to this percent and continue.
    Throttle(u8),
    /// Pause and send the rest: predicted pause fits the target (or we gave up waiting).
    SwitchOver,
    /// Resume on the destination now and let pages follow.
    Postcopy,
}

/// Predicted pause if we switched over now with `remaining` dirty pages at `bandwidth` bytes/s.
pub fn predicted_downtime(remaining_pages: u64, bytes_per_page: f64, bandwidth: f64) -> Duration {
    if bandwidth <= 0.0 {
        return Duration::MAX;
    }
    Duration::from_secs_f64(remaining_pages as f64 * bytes_per_page / bandwidth)
}

/// Rounds "stop shrinking" when the last `window` rounds did not cut the dirty set by 10%.
fn stalled(rounds: &[RoundStats], window: usize) -> bool {
    if rounds.len() < window + 1 {
        return false;
    }
    let recent = &rounds[rounds.len() - window - 1..];
    recent
        .windows(2)
        .all(|w| w[1].dirtied as f64 > 0.9 * w[0].dirtied as f64)
}

/// Decides the next step from the rounds so far and the pages now dirty.
pub fn decide(
    cfg: &ConvergenceConfig,
    rounds: &[RoundStats],
    remaining_pages: u64,
    throttle: u8,
) -> Decision {
    let Some(last) = rounds.last() else {
        return Decision::Continue;
    };
    // Dirty pages are written pages: the bulk round's average, diluted by never-touched pages sent
    // as zero flags, would predict a pause several times too short.
    let bytes_per_page = if last.pages > 0 && last.round > 0 {
        last.bytes as f64 / last.pages as f64
    } else {
        4096.0
    };
    // Bandwidth: best of the recent rounds (a short round under-measures).
    let bw = rounds
        .iter()
        .rev()
        .take(3)
        .map(RoundStats::bandwidth)
        .fold(0.0, f64::max);
    let predicted = predicted_downtime(remaining_pages, bytes_per_page, bw);
    let target = cfg
        .postcopy_pause
        .map_or(cfg.downtime_target, |p| p.min(cfg.downtime_target));
    if predicted <= target {
        return Decision::SwitchOver;
    }
    let live_rounds = rounds.len() as u32;
    if stalled(rounds, 2) || live_rounds >= cfg.max_rounds {
        if cfg.postcopy_fallback {
            return Decision::Postcopy;
        }
        if cfg.auto_converge && throttle < 99 && live_rounds < cfg.max_rounds * 4 {
            return Decision::Throttle(next_throttle(throttle));
        }
        if live_rounds >= cfg.max_rounds {
            return Decision::SwitchOver;
        }
    }
    Decision::Continue
}

/// QEMU-like stepping: start at 20%, add 10% per stalled round, cap at 99%.
pub fn next_throttle(current: u8) -> u8 {
    if current == 0 {
        20
    } else {
        (current + 10).min(99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(pages: u64, dirtied: u64) -> RoundStats {
        RoundStats {
            round: 0,
            pages,
            bytes: pages * 4096,
            seconds: pages as f64 * 4096.0 / 1e9,
            dirtied,
        }
    }

    fn cfg() -> ConvergenceConfig {
        ConvergenceConfig {
            downtime_target: Duration::from_millis(10),
            max_rounds: 30,
            auto_converge: false,
            postcopy_fallback: false,
            postcopy_pause: None,
        }
    }

    #[test]
    fn switches_over_when_the_rest_fits_the_target() {
        // 1 GB/s: 10 ms is about 2441 pages.
        let r = [round(262_144, 1000)];
        assert_eq!(decide(&cfg(), &r, 1000, 0), Decision::SwitchOver);
        assert_eq!(decide(&cfg(), &r, 100_000, 0), Decision::Continue);
    }

    #[test]
    fn non_converging_guest_falls_back() {
        let r = [
            round(262_144, 131_072),
            round(131_072, 131_072),
            round(131_072, 131_072),
        ];
        assert_eq!(decide(&cfg(), &r, 131_072, 0), Decision::Continue);
        let pc = ConvergenceConfig {
            postcopy_fallback: true,
            ..cfg()
        };
        assert_eq!(decide(&pc, &r, 131_072, 0), Decision::Postcopy);
        let ac = ConvergenceConfig {
            auto_converge: true,
            ..cfg()
        };
        assert_eq!(decide(&ac, &r, 131_072, 0), Decision::Throttle(20));
        assert_eq!(decide(&ac, &r, 131_072, 20), Decision::Throttle(30));
    }

    #[test]
    fn the_bulk_rounds_zero_pages_do_not_shrink_the_prediction() {
        // 1 GiB with 128 MiB of data: the bulk round averages 512 bytes a page on the wire.
        let bulk = RoundStats {
            round: 0,
            pages: 262_144,
            bytes: 134_217_728,
            seconds: 0.3,
            dirtied: 7747,
        };
        // 7747 written pages at ~447 MB/s take about 70 ms, not 9.
        assert_eq!(decide(&cfg(), &[bulk], 7747, 0), Decision::Continue);
    }

    #[test]
    fn auto_goes_post_copy_unless_pre_copy_pauses_less() {
        let auto = ConvergenceConfig {
            postcopy_fallback: true,
            postcopy_pause: Some(expected_postcopy_pause(Duration::from_micros(50))),
            ..cfg()
        };
        // 1 GB/s: 5 ms of pages fits the 10 ms target but not post-copy's 2.1 ms: keep going...
        let r = [round(262_144, 1200), round(1200, 1220)];
        assert_eq!(decide(&cfg(), &r, 1220, 0), Decision::SwitchOver);
        assert_eq!(decide(&auto, &r[..1], 1220, 0), Decision::Continue);
        // ...and once rounds stop shrinking, post-copy pauses less.
        let stalled = [round(262_144, 1200), round(1200, 1220), round(1220, 1210)];
        assert_eq!(decide(&auto, &stalled, 1210, 0), Decision::Postcopy);
        // A nearly idle guest: pre-copy's last round is shorter than post-copy's pause.
        assert_eq!(decide(&auto, &r, 200, 0), Decision::SwitchOver);
        // A long link makes post-copy's first fault expensive: pre-copy's target rules.
        let far = ConvergenceConfig {
            postcopy_pause: Some(expected_postcopy_pause(Duration::from_millis(20))),
            ..auto
        };
        assert_eq!(decide(&far, &r, 1220, 0), Decision::SwitchOver);
    }

    #[test]
    fn round_limit_forces_switch_over() {
        let c = ConvergenceConfig {
            max_rounds: 2,
            ..cfg()
        };
        let r = [round(1000, 900), round(900, 500)];
        assert_eq!(decide(&c, &r, 100_000, 0), Decision::SwitchOver);
    }

    #[test]
    fn no_bandwidth_means_infinite_downtime() {
        assert_eq!(predicted_downtime(10, 4096.0, 0.0), Duration::MAX);
    }
}
