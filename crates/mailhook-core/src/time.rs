//! Timestamps as Unix milliseconds, and their RFC 3339 form in payloads.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Latest timestamp accepted: 9999-12-31T23:59:59.999Z, so every value formats as RFC 3339.
pub const TIMESTAMP_MS_MAX: i64 = 253_402_300_799_999;

/// Formats Unix milliseconds as `2026-11-27T12:00:00.123Z` (always three fraction digits).
pub fn format_rfc3339_ms(ms: i64) -> String {
    debug_assert!((0..=TIMESTAMP_MS_MAX).contains(&ms));
    let ms = ms.clamp(0, TIMESTAMP_MS_MAX);
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Parses an RFC 3339 timestamp into Unix milliseconds (sub-millisecond digits are cut).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    (0..=TIMESTAMP_MS_MAX).contains(&ms).then_some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let cases = [
            ("2026-11-27T12:00:00.123Z", 1_795_780_800_123),
            ("1970-01-01T00:00:00.000Z", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_rfc3339_ms(text), Some(ms), "{text}");
            assert_eq!(format_rfc3339_ms(ms), text);
        }
        assert_eq!(
            parse_rfc3339_ms("2026-11-27T13:00:00.5+01:00"),
            Some(1_795_780_800_500)
        );
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59Z"), None);
    }
}
