//! Docker's timestamps.

use chrono::{DateTime, Utc};

/// An RFC 3339 timestamp as Docker writes them; `None` for Docker's "never" (year 1) or garbage.
pub(crate) fn parse_docker_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(text?)
        .ok()?
        .with_timezone(&Utc);
    (parsed.timestamp() > 0).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::parse_docker_time;

    #[test]
    fn docker_zero_time_reads_as_never() {
        assert_eq!(parse_docker_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(parse_docker_time(Some("not a time")), None);
        let started = parse_docker_time(Some("2026-11-30T12:00:01.123456789Z")).unwrap();
        assert_eq!(started.timestamp_subsec_nanos(), 123_456_789);
    }
}
