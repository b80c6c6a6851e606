//! Parsing and printing of rates and durations in `tc` style (`100mbit`, `10ms`).

use std::time::Duration;

use crate::LabError;

/// Parses a rate in bits per second: `1000000`, `500kbit`, `100mbit`, `1gbit` (also `k`, `m`, `g`).
pub fn parse_rate(s: &str) -> Result<u64, LabError> {
    let bad = || LabError::Parse {
        what: "rate",
        input: s.to_string(),
    };
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("bit").unwrap_or(&t);
    let (num, mult) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 1_000u64),
        Some(b'm') => (&t[..t.len() - 1], 1_000_000),
        Some(b'g') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 {
        return Err(bad());
    }
    Ok((v * mult as f64).round() as u64)
}

/// Parses a duration: `0`, `250us`, `10ms`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, LabError> {
    let bad = || LabError::Parse {
        what: "duration",
        input: s.to_string(),
    };
    let t = s.trim().to_ascii_lowercase();
    let (num, unit) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if t == "0" {
        ("0", 1.0)
    } else {
        return Err(bad());
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(v * unit))
}

/// Formats a rate in bits per second the way `tc` would read it back (`100Mbit`).
pub fn format_rate(bits: u64) -> String {
    let v = bits as f64;
    if v >= 1e9 {
        format!("{:.3}Gbit", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}Mbit", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}Kbit", v / 1e3)
    } else {
        format!("{bits}bit")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("2.5m").unwrap(), 2_500_000);
        assert_eq!(parse_rate("64000").unwrap(), 64_000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("10").is_err());
    }
}
