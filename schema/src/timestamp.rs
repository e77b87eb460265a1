//! Reading and writing event timestamps without chrono's general-purpose parser and formatter.
//!
//! Nearly every timestamp on the wire has the form chrono itself writes for a UTC time,
//! `YYYY-MM-DDTHH:MM:SSZ` with optional fractional seconds. That form is read and written here
//! directly; anything else (an offset such as `+10:00`, a space for the `T`, a leap second, a
//! year outside 0..=9999) goes to chrono, so the accepted texts, the instants they denote and
//! the error messages stay exactly chrono's.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Timelike, Utc};
use serde::{de, Serializer};

/// Reads the common `YYYY-MM-DDTHH:MM:SS[.f…]Z` form (1 to 9 fractional digits) of a UTC time.
///
/// Returns `None` for any other text, including valid RFC 3339 times with an offset, which the
/// caller hands to chrono. Whenever it returns a time, chrono's RFC 3339 parsers
/// (`DateTime::parse_from_rfc3339` and `str::parse::<DateTime<FixedOffset>>`) read the same
/// text as the same instant; the tests check that.
pub fn parse_zulu(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    if bytes.len() < ZULU_SECONDS_LEN
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[13] != b':'
        || bytes[16] != b':'
        || bytes.last() != Some(&b'Z')
    {
        return None;
    }
    let year = digits(&bytes[0..4])?;
    let month = digits(&bytes[5..7])?;
    let day = digits(&bytes[8..10])?;
    let hour = digits(&bytes[11..13])?;
    let minute = digits(&bytes[14..16])?;
    let second = digits(&bytes[17..19])?;
    let nanosecond = match &bytes[19..bytes.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            digits(fraction)? * FRACTION_SCALE[fraction.len()]
        }
        _ => return None,
    };
    // A leap second (`:60`) is left to chrono, which stores it in the nanoseconds.
    if second > 59 {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month, day)?;
    let time = date.and_hms_nano_opt(hour, minute, second, nanosecond)?;
    Some(time.and_utc())
}

/// Reads a timestamp the way chrono's `Deserialize` for `DateTime<Utc>` does, with
/// [`parse_zulu`] as the fast path.
///
/// # Errors
///
/// chrono's parse error, for text that is not an RFC 3339 time.
pub fn parse_rfc3339_utc(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match parse_zulu(text) {
        Some(time) => Ok(time),
        None => text
            .parse::<DateTime<FixedOffset>>()
            .map(|time| time.with_timezone(&Utc)),
    }
}

/// Longest text [`write_zulu`] produces: `YYYY-MM-DDTHH:MM:SS.fffffffffZ`.
pub const MAX_ZULU_LEN: usize = 30;

/// Writes `time` exactly as chrono's `Serialize` for `DateTime<Utc>` does (RFC 3339, `Z`,
/// fractional seconds only when non-zero, in groups of 3, 6 or 9 digits) into `buffer`.
///
/// Returns `None` for a year outside 0..=9999, which chrono writes with a sign; the caller
/// falls back to chrono for those.
pub fn write_zulu<'buffer>(
    time: &DateTime<Utc>,
    buffer: &'buffer mut [u8; MAX_ZULU_LEN],
) -> Option<&'buffer str> {
    let year = u32::try_from(time.year())
        .ok()
        .filter(|year| *year <= 9999)?;
    let mut second = time.second();
    let mut nanosecond = time.nanosecond();
    // chrono keeps a leap second as nanoseconds past 1e9 and prints it as second 60.
    if nanosecond >= NANOS_PER_SECOND {
        second += 1;
        nanosecond -= NANOS_PER_SECOND;
    }
    put_digits(&mut buffer[0..4], year);
    buffer[4] = b'-';
    put_digits(&mut buffer[5..7], time.month());
    buffer[7] = b'-';
    put_digits(&mut buffer[8..10], time.day());
    buffer[10] = b'T';
    put_digits(&mut buffer[11..13], time.hour());
    buffer[13] = b':';
    put_digits(&mut buffer[14..16], time.minute());
    buffer[16] = b':';
    put_digits(&mut buffer[17..19], second);
    let mut length = ZULU_SECONDS_LEN - 1;
    let (fraction, fraction_digits) = if nanosecond == 0 {
        (0, 0)
    } else if nanosecond.is_multiple_of(1_000_000) {
        (nanosecond / 1_000_000, 3)
    } else if nanosecond.is_multiple_of(1_000) {
        (nanosecond / 1_000, 6)
    } else {
        (nanosecond, 9)
    };
    if fraction_digits > 0 {
        buffer[length] = b'.';
        put_digits(
            &mut buffer[length + 1..length + 1 + fraction_digits],
            fraction,
        );
        length += 1 + fraction_digits;
    }
    buffer[length] = b'Z';
    length += 1;
    // Only ASCII digits and punctuation were written.
    std::str::from_utf8(&buffer[..length]).ok()
}

/// Serializes `time` as chrono does, through [`write_zulu`] when it can.
pub(crate) fn serialize_utc<S: Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut buffer = [0_u8; MAX_ZULU_LEN];
    match write_zulu(time, &mut buffer) {
        Some(text) => serializer.serialize_str(text),
        None => serde::Serialize::serialize(time, serializer),
    }
}

/// Deserializes a `DateTime<Utc>` exactly as chrono does (same accepted texts, same messages),
/// through [`parse_zulu`] when it can.
pub(crate) fn deserialize_utc<'de, D: de::Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(Rfc3339Visitor)
}

/// Length of `YYYY-MM-DDTHH:MM:SSZ`.
const ZULU_SECONDS_LEN: usize = 20;

const NANOS_PER_SECOND: u32 = 1_000_000_000;

/// Nanoseconds per unit of the last digit of an `n`-digit fraction, indexed by `n`.
const FRACTION_SCALE: [u32; 10] = [
    0,
    100_000_000,
    10_000_000,
    1_000_000,
    100_000,
    10_000,
    1_000,
    100,
    10,
    1,
];

/// The value of a run of at most 9 ASCII digits; `None` if any byte is not a digit.
fn digits(text: &[u8]) -> Option<u32> {
    text.iter().try_fold(0_u32, |value, byte| match byte {
        b'0'..=b'9' => Some(value * 10 + u32::from(byte - b'0')),
        _ => None,
    })
}

/// Writes `value` as exactly `target.len()` decimal digits, zero-padded on the left.
fn put_digits(target: &mut [u8], mut value: u32) {
    for slot in target.iter_mut().rev() {
        // `value % 10` is below 10, so the cast cannot truncate.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// chrono's own visitor for `DateTime<Utc>`, with the same expectation text.
struct Rfc3339Visitor;

impl de::Visitor<'_> for Rfc3339Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an RFC 3339 formatted date and time string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<DateTime<Utc>, E> {
        parse_rfc3339_utc(text).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn chrono_relaxed(text: &str) -> Option<DateTime<Utc>> {
        text.parse::<DateTime<FixedOffset>>()
            .ok()
            .map(|time| time.with_timezone(&Utc))
    }

    /// Our parse, errors as text.
    fn ours_with_message(text: &str) -> Result<DateTime<Utc>, String> {
        parse_rfc3339_utc(text).map_err(|error| error.to_string())
    }

    /// chrono's parse, errors as text.
    fn chrono_with_message(text: &str) -> Result<DateTime<Utc>, String> {
        text.parse::<DateTime<FixedOffset>>()
            .map(|time| time.with_timezone(&Utc))
            .map_err(|error| error.to_string())
    }

    fn chrono_strict(text: &str) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| time.with_timezone(&Utc))
    }

    fn chrono_text(time: &DateTime<Utc>) -> String {
        match serde_json::to_value(time) {
            Ok(serde_json::Value::String(text)) => text,
            other => panic!("chrono wrote {other:?}"),
        }
    }

    #[test]
    fn common_forms_read_as_chrono_reads_them() {
        for text in [
            "2025-05-05T01:30:00Z",
            "2025-05-05T01:30:00.5Z",
            "2025-05-05T01:30:00.000Z",
            "2025-05-05T01:30:00.123456Z",
            "2025-05-05T01:30:00.123456789Z",
            "2024-02-29T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
        ] {
            assert_eq!(parse_zulu(text), chrono_relaxed(text), "{text}");
            assert!(parse_zulu(text).is_some(), "{text}");
        }
    }

    #[test]
    fn other_forms_are_left_to_chrono() {
        for text in [
            "2025-05-05T11:30:00+10:00",
            "2025-05-05 01:30:00Z",
            "2025-05-05t01:30:00z",
            "2025-05-05T01:30:60Z",
            "2025-05-05T01:30:00.1234567891Z",
            "2025-05-05T01:30:00.Z",
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-05-05T24:00:00Z",
            "+12025-05-05T01:30:00Z",
            "2025-05-05T01:30:00",
            "",
        ] {
            assert_eq!(parse_zulu(text), None, "{text}");
        }
        let offset = parse_rfc3339_utc("2025-05-05T11:30:00+10:00").expect("offset");
        assert_eq!(offset, Utc.with_ymd_and_hms(2025, 5, 5, 1, 30, 0).unwrap());
        let leap = parse_rfc3339_utc("2016-12-31T23:59:60Z").expect("leap second");
        assert_eq!(leap.nanosecond(), 1_000_000_000);
        assert_eq!(
            parse_rfc3339_utc("yesterday").map_err(|error| error.to_string()),
            Err("input contains invalid characters".to_owned())
        );
    }

    #[test]
    fn writes_as_chrono_writes() {
        let base = Utc.with_ymd_and_hms(2025, 5, 5, 1, 30, 0).unwrap();
        for nanos in [0, 1, 1_000, 1_000_000, 5_000_000, 123_456_789, 999_999_999] {
            let time = base + chrono::Duration::nanoseconds(nanos);
            let mut buffer = [0_u8; MAX_ZULU_LEN];
            assert_eq!(
                write_zulu(&time, &mut buffer),
                Some(chrono_text(&time).as_str())
            );
        }
        let leap = parse_rfc3339_utc("2016-12-31T23:59:60.5Z").expect("leap second");
        let mut buffer = [0_u8; MAX_ZULU_LEN];
        assert_eq!(
            write_zulu(&leap, &mut buffer),
            Some(chrono_text(&leap).as_str())
        );
        let far = Utc.with_ymd_and_hms(12025, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(write_zulu(&far, &mut buffer), None);
    }

    proptest! {
        #[test]
        fn any_zulu_text_reads_as_chrono_reads_it(
            year in 0_u32..10_000,
            month in 0_u32..14,
            day in 0_u32..33,
            hour in 0_u32..26,
            minute in 0_u32..62,
            second in 0_u32..62,
            fraction in "[0-9]{0,11}",
        ) {
            let dot = if fraction.is_empty() { "" } else { "." };
            let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{dot}{fraction}Z");
            if let Some(time) = parse_zulu(&text) {
                prop_assert_eq!(Some(time), chrono_relaxed(&text));
                prop_assert_eq!(Some(time), chrono_strict(&text));
            }
            prop_assert_eq!(ours_with_message(&text), chrono_with_message(&text));
        }

        #[test]
        fn any_text_reads_as_chrono_reads_it(text in "[0-9T:.Z+ -]{0,32}") {
            prop_assert_eq!(ours_with_message(&text), chrono_with_message(&text));
        }

        #[test]
        fn any_time_writes_as_chrono_writes_it(
            seconds in -62_000_000_000_i64..260_000_000_000,
            nanos in prop_oneof![Just(0_u32), 0_u32..1_000_000_000, (0_u32..1000).prop_map(|n| n * 1_000_000), (0_u32..1_000_000).prop_map(|n| n * 1000)],
        ) {
            let time = Utc.timestamp_opt(seconds, nanos).unwrap();
            let mut buffer = [0_u8; MAX_ZULU_LEN];
            match write_zulu(&time, &mut buffer) {
                Some(text) => prop_assert_eq!(text, chrono_text(&time)),
                None => prop_assert!(!(0..=9999).contains(&time.year())),
            }
            let mut encoded = Vec::new();
            serialize_utc(&time, &mut serde_json::Serializer::new(&mut encoded)).unwrap();
            prop_assert_eq!(encoded, serde_json::to_vec(&time).unwrap());
            let decoded = deserialize_utc(&mut serde_json::Deserializer::from_str(&serde_json::to_string(&time).unwrap())).unwrap();
            prop_assert_eq!(decoded, time);
        }
    }
}
