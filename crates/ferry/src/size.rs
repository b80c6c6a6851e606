//! Byte sizes as users type them: `512M`, `1G`, `4096`.

/// Parses `N`, `NK`, `NM`, `NG` (binary units; an optional trailing `iB`/`B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mul) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("'{s}' is not a size (examples: 512M, 1G, 4096)"))
}

/// Parses a bandwidth: `N[K|M|G]` bytes per second (binary units), or `N[k|m|g]bit` bits per second
/// (decimal units, as network links are sold); `0` or `unlimited` means no limit.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "unlimited" {
        return Ok(0);
    }
    if let Some(bits) = t.strip_suffix("bit") {
        let (num, mul) = match bits.chars().last() {
            Some('k' | 'K') => (&bits[..bits.len() - 1], 1e3),
            Some('m' | 'M') => (&bits[..bits.len() - 1], 1e6),
            Some('g' | 'G') => (&bits[..bits.len() - 1], 1e9),
            _ => (bits, 1.0),
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("'{s}' is not a rate (examples: 100M, 1gbit, 800mbit)"))?;
        return Ok((n * mul / 8.0) as u64);
    }
    parse_size(t).map_err(|_| format!("'{s}' is not a rate (examples: 100M, 1gbit, 800mbit)"))
}

/// Human form of a byte count.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert_eq!(parse_rate("1gbit").unwrap(), 125_000_000);
        assert_eq!(parse_rate("100M").unwrap(), 100 << 20);
        assert_eq!(parse_rate("unlimited").unwrap(), 0);
        assert!(parse_rate("fast").is_err());
    }
}
