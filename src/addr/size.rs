//! Parsing of the sizes (`64K`, `1M`) and durations (`0.5`, seconds) used on the command line
//! and in address options.

use std::time::Duration;

/// Parses a byte size with an optional binary suffix: `8192`, `64K`, `64KiB`, `1M`, `2G`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid size \"{text}\": expected a number like 64K or 1M"
        ));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "invalid size \"{text}\": unknown suffix \"{suffix}\" (use K, M or G)"
            ));
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("invalid size \"{text}\": number too large"))?;
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("invalid size \"{text}\": number too large"))
}

/// Parses a duration in seconds, fractions allowed: `1`, `0.5`, `2.25`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration \"{text}\": expected seconds like 1.5"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "invalid duration \"{text}\": must be zero or more seconds"
        ));
    }
    if secs > 1e9 {
        return Err(format!("invalid duration \"{text}\": too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("8192"), Ok(8192));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
    }

    #[test]
    fn size_errors_name_the_token() {
        assert_eq!(
            parse_size("12Q"),
            Err("invalid size \"12Q\": unknown suffix \"Q\" (use K, M or G)".to_string())
        );
        assert_eq!(
            parse_size("K"),
            Err("invalid size \"K\": expected a number like 64K or 1M".to_string())
        );
        assert!(
            parse_size("99999999999999999999G")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("-1"),
            Err("invalid duration \"-1\": must be zero or more seconds".to_string())
        );
        assert_eq!(
            parse_duration("soon"),
            Err("invalid duration \"soon\": expected seconds like 1.5".to_string())
        );
    }
}
