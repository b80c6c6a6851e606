//! How many channels a migration opens when the user names no number: a plain function of what
//! the source knows after the first channel's handshake.
//!
//! One TCP stream moves at most its window per round trip. Linux sizes the window up to half of
//! the receiver's `tcp_rmem` maximum (and the sender's `tcp_wmem` maximum), so a single stream on a
//! long link is capped well below the link: with the default 6 MiB `tcp_rmem` at 20 ms that is
//! about 150 MB/s. Channels are added until their windows together cover the link, but never more
//! than the host has cores: each channel is a sending thread here and a receiving one there, and
//! on a short link one stream already moves more than one core can feed (3 GB/s on loopback here,
//! docs/BENCHMARKS.md). Post-copy and anything that may end in it keep a second channel so the
//! pages a running guest faults on never queue behind bulk pages.
//!
//! Between rounds the source may change how many of the opened channels carry pages
//! ([`round_channels`]): from the link's round-trip time (the longer of the handshake's and the
//! kernel's smoothed measure on the live connection, which grows with congestion) and from the
//! bandwidth limit, which a user may change while the migration runs.
//! Pages are sharded across the channels that carry them, and the destination relies on that
//! sharding to let each channel write its pages without locks, so the count changes only at a
//! round boundary that the destination has acknowledged on every channel; each channel learns the
//! new count from a `Channels` frame in its own stream, ahead of the round's pages.

use std::time::Duration;

/// Link speed assumed when there is no bandwidth limit to go by (a 10 Gbit/s data-centre link).
pub const ASSUMED_LINK_BYTES_PER_SEC: f64 = 1.25e9;
/// Most channels chosen automatically.
pub const MAX_AUTO_CHANNELS: u16 = 8;

/// What the source knows when it picks the channel count.
#[derive(Clone, Copy, Debug)]
pub struct LinkFacts {
    /// Round-trip time measured by the first channel's handshake.
    pub rtt: Duration,
    /// Cores this host may use.
    pub cores: usize,
    /// Largest window one TCP stream may reach here, in bytes.
    pub window_bytes: u64,
    /// The migration's bandwidth limit in bytes/s, if any.
    pub max_bandwidth: Option<u64>,
    /// The strategy may end in post-copy (requested pages get a channel of their own).
    pub needs_request_channel: bool,
}

/// The channel count for a migration that was not told one.
pub fn auto_channels(f: &LinkFacts) -> u16 {
    let base: u16 = if f.needs_request_channel { 2 } else { 1 };
    let target = f
        .max_bandwidth
        .filter(|&b| b > 0)
        .map_or(ASSUMED_LINK_BYTES_PER_SEC, |b| b as f64);
    let per_stream = f.window_bytes.max(64 << 10) as f64 / f.rtt.as_secs_f64().max(1e-6);
    let for_link = (target / per_stream).ceil().clamp(1.0, f64::from(u16::MAX)) as u16;
    let cap = u16::try_from(f.cores)
        .unwrap_or(u16::MAX)
        .clamp(base, MAX_AUTO_CHANNELS.max(base));
    for_link.max(base).min(cap)
}

/// Channels to open when the count may change between rounds: enough for any link the host's
/// cores can feed, so that a longer round trip or a higher bandwidth limit later can be met.
pub fn channels_to_open(f: &LinkFacts) -> u16 {
    let longest = LinkFacts {
        rtt: Duration::from_secs(1),
        max_bandwidth: None,
        ..*f
    };
    auto_channels(f).max(auto_channels(&longest))
}

/// Channels that carry the next round's pages, of the `opened` ones: [`auto_channels`] for the
/// link as measured now.
pub fn round_channels(now: &LinkFacts, opened: u16) -> u16 {
    auto_channels(now).clamp(1, opened.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(rtt_ms: f64, cores: usize) -> LinkFacts {
        LinkFacts {
            rtt: Duration::from_secs_f64(rtt_ms / 1e3),
            cores,
            window_bytes: 3 << 20,
            max_bandwidth: None,
            needs_request_channel: false,
        }
    }

    #[test]
    fn a_short_link_needs_one_stream() {
        assert_eq!(auto_channels(&facts(0.05, 16)), 1);
        let pc = LinkFacts {
            needs_request_channel: true,
            ..facts(0.05, 16)
        };
        assert_eq!(auto_channels(&pc), 2, "post-copy keeps its request channel");
    }

    #[test]
    fn a_long_link_gets_channels_up_to_the_cores() {
        // 3 MiB per 20 ms is about 157 MB/s a stream: 8 streams cover 10 Gbit/s.
        assert_eq!(auto_channels(&facts(20.0, 16)), 8);
        assert_eq!(auto_channels(&facts(20.0, 4)), 4);
        assert_eq!(auto_channels(&facts(20.0, 1)), 1);
        assert_eq!(
            auto_channels(&facts(2.0, 16)),
            1,
            "1.5 GB/s a stream at 2 ms"
        );
        assert_eq!(auto_channels(&facts(5.0, 16)), 2);
    }

    #[test]
    fn scaling_opens_what_the_cores_allow_and_follows_the_link() {
        let short = facts(0.05, 4);
        assert_eq!(auto_channels(&short), 1);
        assert_eq!(channels_to_open(&short), 4, "room for a longer link later");
        assert_eq!(channels_to_open(&facts(0.05, 1)), 1);
        assert_eq!(round_channels(&short, 4), 1);
        assert_eq!(round_channels(&facts(20.0, 4), 4), 4, "the round trip grew");
        assert_eq!(
            round_channels(&facts(20.0, 16), 3),
            3,
            "never more than opened"
        );
        let limited = LinkFacts {
            max_bandwidth: Some(100_000_000),
            ..facts(20.0, 4)
        };
        assert_eq!(round_channels(&limited, 4), 1, "a lower limit needs fewer");
        let pc = LinkFacts {
            needs_request_channel: true,
            ..short
        };
        assert_eq!(
            round_channels(&pc, 4),
            2,
            "post-copy's request channel stays"
        );
    }

    #[test]
    fn a_bandwidth_limit_is_the_link_to_cover() {
        let limited = LinkFacts {
            max_bandwidth: Some(125_000_000),
            ..facts(20.0, 16)
        };
        assert_eq!(
            auto_channels(&limited),
            1,
            "1 Gbit/s fits one 157 MB/s stream"
        );
        let tiny_window = LinkFacts {
            window_bytes: 0,
            ..limited
        };
        assert_eq!(auto_channels(&tiny_window), 16.min(MAX_AUTO_CHANNELS));
    }
}
