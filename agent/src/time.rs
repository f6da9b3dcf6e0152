//! Wall-clock helpers: event timestamps are RFC 3339 UTC with milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-27T10:00:00.123Z`.
pub fn format_rfc3339_ms(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses any RFC 3339 timestamp to ms since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_milliseconds_and_round_trip() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_795_773_600_123),
            "2026-11-27T10:00:00.123Z"
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T10:00:00.123Z"),
            Some(1_795_773_600_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T11:00:00+01:00"),
            Some(1_795_773_600_000)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}
