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

/// The shortest inactivity timeout (`-T`, `idle-timeout`). A connection is idle between any
/// two reads, so a timeout of zero, or under the millisecond, cuts every connection.
pub(crate) const MIN_IDLE_TIMEOUT: Duration = Duration::from_millis(1);

/// Checks an inactivity timeout, `token` being how it was written: the one check for the
/// command line's `-T` and the file's `idle-timeout`, so the two cannot drift apart.
pub fn check_idle_timeout(token: &str, timeout: Duration) -> Result<Duration, String> {
    if timeout < MIN_IDLE_TIMEOUT {
        return Err(format!(
            "idle timeout \"{token}\" is less than 1 ms: a connection is idle between any two \
             reads, so it would cut every one (leave the option out for no timeout)"
        ));
    }
    Ok(timeout)
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
    fn idle_timeouts_of_zero_or_under_a_millisecond_are_refused_naming_the_token() {
        assert_eq!(
            check_idle_timeout("0.5", Duration::from_millis(500)),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            check_idle_timeout("1ms", MIN_IDLE_TIMEOUT),
            Ok(MIN_IDLE_TIMEOUT)
        );
        let e = check_idle_timeout("0ms", Duration::ZERO).unwrap_err();
        assert!(
            e.starts_with("idle timeout \"0ms\" is less than 1 ms"),
            "{e}"
        );
        let e = check_idle_timeout("1e-12", Duration::from_nanos(1)).unwrap_err();
        assert!(e.contains("\"1e-12\" is less than 1 ms"), "{e}");
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
