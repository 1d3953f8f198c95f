//! Lifetimes as operators write them: `90s`, `30m`, `1h`, `7d`.

use std::time::Duration;

/// Parses a duration such as `90s`, `30m`, `1h` or `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: s, m, h or d (for example 1h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 90s, 30m, 1h or 7d"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    if seconds == 0 {
        return Err("the TTL must be longer than zero".to_owned());
    }
    Ok(Duration::from_secs(seconds))
}

/// Writes a duration the way [`parse_ttl`] reads it, in the largest unit that divides it.
pub fn format_ttl(ttl: Duration) -> String {
    let seconds = ttl.as_secs();
    match seconds {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_units_and_refuses_the_rest() {
        assert_eq!(parse_ttl("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "1", "h", "1w", "0s", "-1h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_formatted_ttl_reads_back_the_same() {
        for text in ["90s", "30m", "1h", "30d", "365d"] {
            let ttl = parse_ttl(text).unwrap();
            assert_eq!(format_ttl(ttl), text);
            assert_eq!(parse_ttl(&format_ttl(ttl)), Ok(ttl));
        }
    }
}
