//! The fast path of [`Event::decode`]: reading bytes laid out exactly as [`Event::encode`]
//! writes them, without serde.
//!
//! Decoding is the sink's hottest function, and nearly every message it reads was written by
//! [`Event::encode`]: one flat object with the members in a fixed order (the envelope's
//! `schema_version, kind, event_id, source, ingested_at`, then the observation's in
//! [`ObservationMembers::MEMBER_NAMES`](crate::members::ObservationMembers::MEMBER_NAMES)
//! order), no whitespace, strings without escapes, numbers and timestamps as serde_json and
//! [`crate::timestamp::write_zulu`] write them, `null` for `None`. Going through serde_json
//! and the typed visitors costs about 9,600 instructions for such a wave event (callgrind);
//! `read_event` instead walks the bytes once with a [`LayoutCursor`], matching every member
//! name with its punctuation as one literal and reading each value in place, and allocates only
//! the `String`s the event owns: about 4,700 instructions, validation included (the
//! `print_decode_cost` test, with `DECODE_COST_EVENTS=200000`).
//!
//! The serde decoder stays the definition of what an event is. The fast path gives up
//! (returns `None`) on any deviation from the layout: another member order, whitespace, an
//! escape or control character in a string, an unknown, missing or repeated member, a number
//! form it does not read, a timestamp in another form, an integer that does not fit, trailing
//! bytes. [`Event::decode`] then hands the same bytes to serde, unchanged. Whenever the fast
//! path does return an event, serde would have returned the same event for those bytes, and
//! the same validation runs on it; so results and errors are serde's for every input. The
//! fast path has no errors of its own. Its tests check it against the serde decoder on encoded
//! events of every kind and on mutated encodings.

use chrono::{DateTime, Utc};

use crate::event::Event;
use crate::id::EventId;
use crate::kind::Kind;
use crate::observation::Observation;
use crate::timestamp;

/// What precedes `schema_version`'s value: the start of the object and the member name.
pub(crate) const SCHEMA_VERSION_KEY: &[u8] = b"{\"schema_version\":";
/// What precedes `kind`'s value.
pub(crate) const KIND_KEY: &[u8] = b",\"kind\":";
/// What precedes `event_id`'s value.
pub(crate) const EVENT_ID_KEY: &[u8] = b",\"event_id\":";
/// What precedes `source`'s value.
pub(crate) const SOURCE_KEY: &[u8] = b",\"source\":";
/// What precedes `ingested_at`'s value.
pub(crate) const INGESTED_AT_KEY: &[u8] = b",\"ingested_at\":";
/// What ends the object.
pub(crate) const END: &[u8] = b"}";

/// Reads `bytes` as an event in the encoded layout, or returns `None` for any other text.
///
/// The event is not validated: [`Event::decode`] runs the same checks on it as on serde's.
pub(crate) fn read_event<O: Observation>(bytes: &[u8]) -> Option<Event<O>> {
    // serde's reading goes through `read_json`, which checks the whole input at once too.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut cursor = LayoutCursor { text, position: 0 };
    cursor.literal(SCHEMA_VERSION_KEY)?;
    let schema_version = cursor.small_unsigned()?;
    cursor.literal(KIND_KEY)?;
    // The derived `Deserialize` of `Kind` takes exactly the names `from_name` knows.
    let kind = Kind::from_name(cursor.string()?)?;
    cursor.literal(EVENT_ID_KEY)?;
    let event_id = cursor.string()?;
    cursor.literal(SOURCE_KEY)?;
    let source = cursor.string()?;
    cursor.literal(INGESTED_AT_KEY)?;
    let ingested_at = cursor.timestamp()?;
    let observation = O::read_encoded_members(&mut cursor)?;
    cursor.literal(END)?;
    if !cursor.at_end() {
        return None;
    }
    Some(Event {
        schema_version,
        kind,
        event_id: EventId::from_wire(event_id.to_owned()),
        source: source.to_owned(),
        ingested_at,
        observation,
    })
}

/// Most exponent digits in a number the fast path reads; the encoder writes at most 3
/// (`e-324` to `e308`).
const MAX_EXPONENT_DIGITS: usize = 3;

/// A position in an event's JSON text, moving forwards.
///
/// Each read steps over one value or literal in the encoded form and returns it, or returns
/// `None` (the fast path gives up) when the text there is in any other form. Reads accept only
/// text that serde_json reads, and return what it reads from it. Only this crate creates and
/// reads one; it is public because
/// [`ObservationMembers::read_encoded_members`](crate::members::ObservationMembers::read_encoded_members)
/// takes it.
pub struct LayoutCursor<'text> {
    /// The whole event, valid UTF-8.
    text: &'text str,
    /// Byte offset of the next unread byte.
    position: usize,
}

impl<'text> LayoutCursor<'text> {
    /// Steps over `literal` (a member name with its punctuation), or gives up.
    pub(crate) fn literal(&mut self, literal: &[u8]) -> Option<()> {
        let end = self.position + literal.len();
        if self.text.as_bytes().get(self.position..end)? != literal {
            return None;
        }
        self.position = end;
        Some(())
    }

    /// Steps over `literal` if it comes next; whether it did.
    fn eat(&mut self, literal: &[u8]) -> bool {
        self.literal(literal).is_some()
    }

    /// Whether every byte was read.
    fn at_end(&self) -> bool {
        self.position == self.text.len()
    }

    /// A string without escapes or control characters (the text between its quotes); gives up
    /// on a `\` or a byte below 0x20 before the closing quote.
    pub(crate) fn string(&mut self) -> Option<&'text str> {
        self.literal(b"\"")?;
        let rest = self.text.as_bytes().get(self.position..)?;
        let length = unescaped_len(rest);
        if rest.get(length) != Some(&b'"') {
            return None;
        }
        // Both ends are next to an ASCII quote, so they are character boundaries.
        let content = self.text.get(self.position..self.position + length)?;
        self.position += length + 1;
        Some(content)
    }

    /// [`LayoutCursor::string`], owned.
    pub(crate) fn owned_string(&mut self) -> Option<String> {
        self.string().map(str::to_owned)
    }

    /// A UTC time in the `YYYY-MM-DDTHH:MM:SS[.f…]Z` form, read by
    /// [`timestamp::parse_zulu`], the fast path of the serde impl too; gives up on any other
    /// form (an offset, a leap second, a year chrono writes with a sign).
    pub(crate) fn timestamp(&mut self) -> Option<DateTime<Utc>> {
        timestamp::parse_zulu(self.string()?)
    }

    /// A JSON number as serde_json reads it into an `f64`: bit for bit the same value, since
    /// serde_json (with `float_roundtrip`) rounds correctly and so does this:
    /// [`DecimalNumber::exact_value`] when it applies, otherwise `str::parse`.
    ///
    /// Gives up on text that is not JSON number syntax
    /// (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`), on digits (without the point) that
    /// do not fit a `u64` (where serde_json leaves its common path for its long-number one; the
    /// encoder writes at most 17 significant digits), on more than [`MAX_EXPONENT_DIGITS`], and
    /// on a value too large for an `f64` (serde_json's "number out of range").
    pub(crate) fn number(&mut self) -> Option<f64> {
        let start = self.position;
        let number = DecimalNumber::scan(self.text.as_bytes(), start)?;
        let value = match number.exact_value() {
            Some(value) => value,
            None => self.text.get(start..number.end)?.parse().ok()?,
        };
        if !value.is_finite() {
            return None;
        }
        self.position = number.end;
        Some(value)
    }

    /// `null` as `None`, otherwise [`LayoutCursor::number`].
    pub(crate) fn optional_number(&mut self) -> Option<Option<f64>> {
        if self.eat(b"null") {
            Some(None)
        } else {
            self.number().map(Some)
        }
    }

    /// `null` as `None`, `true` or `false`.
    pub(crate) fn optional_flag(&mut self) -> Option<Option<bool>> {
        if self.eat(b"null") {
            Some(None)
        } else if self.eat(b"true") {
            Some(Some(true))
        } else if self.eat(b"false") {
            Some(Some(false))
        } else {
            None
        }
    }

    /// An integer without sign, fraction or exponent that fits a `u16`, as serde_json reads it
    /// into one; gives up on a leading zero (which serde_json refuses) and on a larger value
    /// (serde_json's error for it comes from the serde decoder).
    fn small_unsigned(&mut self) -> Option<u16> {
        let bytes = self.text.as_bytes();
        let start = self.position;
        let digits = digit_run(bytes, start);
        if digits == 0 || (digits > 1 && bytes.get(start) == Some(&b'0')) {
            return None;
        }
        let value = self.text.get(start..start + digits)?.parse().ok()?;
        self.position = start + digits;
        Some(value)
    }
}

/// A JSON number taken apart: `significand × 10^exponent`, negated when `negative`.
struct DecimalNumber {
    negative: bool,
    /// The digits before any exponent, as one integer.
    significand: u64,
    /// The exponent written, less the number of fraction digits.
    exponent: i32,
    /// Offset just past the number.
    end: usize,
}

impl DecimalNumber {
    /// Scans the number starting at `start`, if it is one [`LayoutCursor::number`] reads.
    fn scan(bytes: &[u8], start: usize) -> Option<DecimalNumber> {
        let mut at = start;
        let negative = bytes.get(at) == Some(&b'-');
        if negative {
            at += 1;
        }
        let mut significand = 0_u64;
        let integer_start = at;
        at = read_digits(bytes, at, &mut significand)?;
        let integer_digits = at - integer_start;
        // `0` alone or digits not starting with `0`: serde_json refuses `01`.
        if integer_digits == 0 || (integer_digits > 1 && bytes.get(integer_start) == Some(&b'0')) {
            return None;
        }
        let mut fraction_digits = 0;
        if bytes.get(at) == Some(&b'.') {
            let fraction_start = at + 1;
            at = read_digits(bytes, fraction_start, &mut significand)?;
            fraction_digits = at - fraction_start;
            if fraction_digits == 0 {
                return None;
            }
        }
        let mut exponent = 0_i32;
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            let negative_exponent = bytes.get(at) == Some(&b'-');
            if matches!(bytes.get(at), Some(b'+' | b'-')) {
                at += 1;
            }
            let exponent_start = at;
            while let Some(&digit @ b'0'..=b'9') = bytes.get(at) {
                if at - exponent_start == MAX_EXPONENT_DIGITS {
                    return None;
                }
                exponent = exponent * 10 + i32::from(digit - b'0');
                at += 1;
            }
            if at == exponent_start {
                return None;
            }
            if negative_exponent {
                exponent = -exponent;
            }
        }
        Some(DecimalNumber {
            negative,
            significand,
            exponent: exponent.checked_sub(i32::try_from(fraction_digits).ok()?)?,
            end: at,
        })
    }

    /// The value, when one correctly rounded operation gives it (Clinger's fast path): a
    /// significand up to 2^53 and a power of ten up to 10^22 are exact `f64`s, so their
    /// product or quotient is the correctly rounded value of the number.
    fn exact_value(&self) -> Option<f64> {
        if self.significand > 1 << 53 {
            return None;
        }
        let power =
            *EXACT_POWERS_OF_TEN.get(usize::try_from(self.exponent.unsigned_abs()).ok()?)?;
        // Exact: the significand is at most 2^53.
        let magnitude = self.significand as f64;
        let value = if self.exponent >= 0 {
            magnitude * power
        } else {
            magnitude / power
        };
        Some(if self.negative { -value } else { value })
    }
}

/// The powers of ten an `f64` holds exactly: 10^0 to 10^22.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Reads the run of digits from `start` into `significand` (as serde_json accumulates its
/// significand); returns where the run ends, or `None` once the value leaves `u64`.
fn read_digits(bytes: &[u8], start: usize, significand: &mut u64) -> Option<usize> {
    let mut at = start;
    while let Some(&digit @ b'0'..=b'9') = bytes.get(at) {
        *significand = significand
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        at += 1;
    }
    Some(at)
}

/// How many bytes at the start of `bytes` stand for themselves in a JSON string: the length
/// of the run before the first `"`, `\` or control byte below 0x20.
///
/// Strings are most of an event's bytes, so they are scanned eight bytes at a time: with
/// `ONES` = 0x0101…01, `(x - ONES) & !x & HIGH_BITS` flags each zero byte of `x`, and
/// `(x - 0x20 * ONES) & !x & HIGH_BITS` each byte below 0x20. A borrow only runs upwards from
/// a flagged byte, so bytes above the first flagged one may be flagged wrongly but the first
/// flag (the lowest byte, as the word is read little-endian) is always right.
fn unescaped_len(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH_BITS: u64 = ONES << 7;
    let mut scanned = 0;
    while let Some(chunk) = bytes.get(scanned..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*chunk);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let flagged = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH_BITS;
        if flagged != 0 {
            // At most 7: the cast cannot truncate.
            return scanned + (flagged.trailing_zeros() / 8) as usize;
        }
        scanned += 8;
    }
    let rest = bytes.get(scanned..).unwrap_or_default();
    scanned
        + rest
            .iter()
            .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
            .unwrap_or(rest.len())
}

/// How many ASCII digits follow `start`.
fn digit_run(bytes: &[u8], start: usize) -> usize {
    bytes.get(start..).map_or(0, |rest| {
        rest.iter().take_while(|byte| byte.is_ascii_digit()).count()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use chrono::TimeZone;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    use super::*;
    use crate::event::flatten_equivalence_tests::{
        self, any_carbon, any_time, any_wave, any_weather, wave_with_measurements,
    };
    use crate::event::tests::wave;
    use crate::event::DecodeError;
    use crate::members::ObservationMembers;
    use crate::{CarbonIntensity, WaveObservation, WeatherObservation};

    /// Decodes `bytes` as an `O` event through [`Event::decode`] and through the serde decoder
    /// alone, checks that both give the same event or the same error, and says whether the
    /// fast path took the bytes.
    fn assert_decodes_as_serde<O: Observation>(bytes: &[u8]) -> bool {
        let decoded = Event::<O>::decode(bytes);
        let reference = Event::<O>::decode_with_serde(bytes);
        let text = String::from_utf8_lossy(bytes);
        match (&decoded, &reference) {
            (Ok(event), Ok(expected)) => {
                assert_eq!(event, expected, "{text}");
                // `==` does not tell -0.0 from 0.0; the shortest round-trip encoding does.
                assert_eq!(event.encode(), expected.encode(), "{text}");
            }
            (Err(error), Err(expected)) => {
                assert_eq!(error.reason(), expected.reason(), "{text}");
                assert_eq!(error.to_string(), expected.to_string(), "{text}");
                assert_eq!(error_chain(error), error_chain(expected), "{text}");
            }
            _ => panic!("{text}: decoded {decoded:?}, serde alone {reference:?}"),
        }
        read_event::<O>(bytes).is_some()
    }

    fn assert_decodes_as_serde_for_every_kind(bytes: &[u8]) {
        assert_decodes_as_serde::<WaveObservation>(bytes);
        assert_decodes_as_serde::<WeatherObservation>(bytes);
        assert_decodes_as_serde::<CarbonIntensity>(bytes);
    }

    fn error_chain(error: &DecodeError) -> String {
        format!(
            "{error:?} / {}",
            flatten_equivalence_tests::error_chain(error)
        )
    }

    /// Whether serde_json escapes a character of `text`.
    fn needs_escape(text: &str) -> bool {
        text.chars().any(|c| c == '"' || c == '\\' || c < ' ')
    }

    /// Checks that the fast path reads `event`'s encoding as exactly `event` unless one of its
    /// strings is written with an escape, and that decoding agrees with serde.
    fn assert_fast_round_trip<O: Observation>(event: &Event<O>) {
        let bytes = event.encode();
        let read = read_event::<O>(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        if needs_escape(&event.source) || needs_escape(event.observation.site()) {
            assert!(read.is_none(), "{text}");
        } else {
            let read = read.unwrap_or_else(|| panic!("the fast path gave up on {text}"));
            assert_eq!(&read, event, "{text}");
            assert_eq!(read.encode(), bytes, "{text}");
        }
        assert_decodes_as_serde::<O>(&bytes);
    }

    fn ingested() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 5, 5, 1, 31, 7).unwrap()
            + chrono::Duration::nanoseconds(123_456_789)
    }

    fn wave_event() -> Event<WaveObservation> {
        Event::new("imos", wave(2.5), ingested())
    }

    fn carbon(is_estimated: Option<bool>) -> CarbonIntensity {
        CarbonIntensity {
            zone: "DK-DK2".into(),
            observed_at: Utc.with_ymd_and_hms(2025, 5, 5, 1, 0, 0).unwrap(),
            carbon_intensity_g_per_kwh: 151.25,
            is_estimated,
        }
    }

    #[test]
    fn fixture_events_take_the_fast_path() {
        let event = wave_event();
        let encoded = String::from_utf8(event.encode()).unwrap();
        for part in [
            r#""mean_period_s":null"#,
            r#""lat":-42.08"#,
            r#""ingested_at":"2025-05-05T01:31:07.123456789Z""#,
        ] {
            assert!(encoded.contains(part), "{encoded}");
        }
        assert_fast_round_trip(&event);
        assert!(Event::<WaveObservation>::decode(&event.encode()).is_ok());

        let mut extremes = wave(2.5);
        extremes.wave_height_m = Some(1e-7);
        extremes.sea_temp_c = Some(-0.0);
        extremes.lat = Some(-1.5e-300);
        extremes.lon = Some(f64::MIN_POSITIVE / 4.0);
        extremes.peak_period_s = Some(1e16);
        extremes.mean_period_s = Some(123_456_789.012_345_67);
        let extremes = Event::new("pi-buoy", extremes, ingested());
        let encoded = String::from_utf8(extremes.encode()).unwrap();
        for part in ["1e-7", "1e+16", "-0.0", "-1.5e-300", "e-309"] {
            assert!(encoded.contains(part), "{part} in {encoded}");
        }
        assert_fast_round_trip(&extremes);
        // Read by the fast path, refused by the same validation as serde's.
        let error = Event::<WaveObservation>::decode(&extremes.encode()).unwrap_err();
        assert_eq!(error.reason(), "out_of_range");

        for nanos in [0, 5_000_000, 123_456_000, 999_999_999] {
            let at = Utc.with_ymd_and_hms(2025, 5, 5, 1, 31, 7).unwrap()
                + chrono::Duration::nanoseconds(nanos);
            assert_fast_round_trip(&Event::new("imos", wave(1.0), at));
        }
        for is_estimated in [None, Some(true), Some(false)] {
            assert_fast_round_trip(&Event::new("em", carbon(is_estimated), ingested()));
        }
        let weather = WeatherObservation {
            site: "Tathra Ü".into(),
            observed_at: Utc.with_ymd_and_hms(2025, 5, 5, 1, 30, 0).unwrap(),
            wind_speed_ms: Some(4.0),
            wind_gust_ms: Some(7.25),
            wind_direction_deg: None,
            air_temp_c: Some(-3.5),
            pressure_hpa: Some(1013.2),
            rel_humidity_pct: Some(0.0),
            swell_height_m: None,
            swell_period_s: None,
        };
        let weather = Event::new("bom", weather, ingested());
        assert_fast_round_trip(&weather);
        assert!(Event::<WeatherObservation>::decode(&weather.encode()).is_ok());
    }

    #[test]
    fn deviations_fall_back_to_serde() {
        let encoded = String::from_utf8(wave_event().encode()).unwrap();
        let at = |from: &str, to: &str| {
            assert!(encoded.contains(from), "{from}");
            encoded.replacen(from, to, 1)
        };
        let height = r#""wave_height_m":2.5"#;
        let taken = [
            at(height, r#""wave_height_m":-0"#),
            at(height, r#""wave_height_m":0"#),
            at(height, r#""wave_height_m":25E-1"#),
            at(height, r#""wave_height_m":0.25e+1"#),
            at(height, r#""wave_height_m":3"#),
            at(height, r#""wave_height_m":1234567890123456789e-18"#),
            at(height, r#""wave_height_m":1e-400"#),
            at(height, r#""wave_height_m":null"#),
            at(r#""schema_version":1"#, r#""schema_version":2"#),
            at(r#""schema_version":1"#, r#""schema_version":65535"#),
            at(r#""kind":"wave""#, r#""kind":"weather""#),
            at("2025-05-05T01:30:00Z", "2025-05-05T01:30:00.000Z"),
            at("2025-05-05T01:30:00Z", "2025-05-05T01:30:00.5Z"),
        ];
        for bytes in &taken {
            assert!(
                assert_decodes_as_serde::<WaveObservation>(bytes.as_bytes()),
                "{bytes}"
            );
        }
        let left_to_serde = [
            at(height, r#""wave_height_m":01"#),
            at(height, r#""wave_height_m":1."#),
            at(height, r#""wave_height_m":.5"#),
            at(height, r#""wave_height_m":+1"#),
            at(height, r#""wave_height_m":-"#),
            at(height, r#""wave_height_m":1e"#),
            at(height, r#""wave_height_m":1e999"#),
            at(height, r#""wave_height_m":1e0001"#),
            at(height, r#""wave_height_m":18446744073709551616"#),
            at(height, r#""wave_height_m":0.18446744073709551616"#),
            at(height, r#""wave_height_m":"2.5""#),
            at(height, r#""wave_height_m":NaN"#),
            at(height, r#""wave_height_m":true"#),
            at(r#""schema_version":1"#, r#""schema_version":70000"#),
            at(r#""schema_version":1"#, r#""schema_version":01"#),
            at(r#""schema_version":1"#, r#""schema_version":1.0"#),
            at(r#""schema_version":1"#, r#""schema_version":-0"#),
            at(r#""kind":"wave""#, r#""kind":"Wave""#),
            at(r#""kind":"wave""#, r#""kind":"w\u0061ve""#),
            at("Cape Sorell", r"C\u0061pe Sorell"),
            at("Cape Sorell", "Cape\tSorell"),
            at("Cape Sorell", r#"Cape \"Sorell\""#),
            at("2025-05-05T01:30:00Z", "2025-05-05T11:30:00+10:00"),
            at("2025-05-05T01:30:00Z", "2016-12-31T23:59:60Z"),
            at("2025-05-05T01:30:00Z", "2025-05-05 01:30:00Z"),
            at(r#""lat":-42.08,"#, ""),
            at(r#""lat":-42.08,"#, r#""lat":-42.08,"lat":-42.08,"#),
            at(r#""lat":-42.08,"#, r#""firmware":"1.2","lat":-42.08,"#),
            at(
                r#""lat":-42.08,"lon":145.01"#,
                r#""lon":145.01,"lat":-42.08"#,
            ),
            at(r#""source":"imos","#, ""),
            at("{", "{ "),
            at(",", " ,"),
            format!("{encoded}\n"),
            format!("{encoded}x"),
            format!("{encoded}}}"),
            encoded[..encoded.len() - 1].to_owned(),
            encoded[..encoded.len() / 2].to_owned(),
            String::new(),
        ];
        for bytes in &left_to_serde {
            assert!(
                !assert_decodes_as_serde::<WaveObservation>(bytes.as_bytes()),
                "{bytes}"
            );
        }
        let mut invalid_utf8 = encoded.clone().into_bytes();
        let site = encoded.find("Cape").unwrap();
        invalid_utf8[site] = 0xff;
        assert!(!assert_decodes_as_serde::<WaveObservation>(&invalid_utf8));
    }

    #[test]
    fn kinds_ids_and_counts_read_as_their_serde_impls_read_them() {
        for name in ["wave", "weather", "carbon", "Wave", "tide", "", "wave "] {
            let quoted = serde_json::to_string(name).unwrap();
            assert_eq!(
                Kind::from_name(name),
                serde_json::from_str::<Kind>(&quoted).ok(),
                "{name}"
            );
        }
        for id in ["182a85202bdc364c59a62940098876ca", "", "whatever"] {
            let quoted = serde_json::to_string(id).unwrap();
            let expected: EventId = serde_json::from_str(&quoted).unwrap();
            assert_eq!(EventId::from_wire(id.to_owned()), expected);
        }
        for text in ["0", "1", "65535", "65536", "01", "00", "-1", "1.0", "1e2"] {
            let mut cursor = LayoutCursor { text, position: 0 };
            let read = cursor.small_unsigned().filter(|_| cursor.at_end());
            assert_eq!(read, serde_json::from_str::<u16>(text).ok(), "{text}");
        }
    }

    /// Reads all of `text` with [`LayoutCursor::number`]; `None` if it gives up, or if the
    /// number it reads is followed by more text (which the next literal would refuse).
    fn fast_number(text: &str) -> Option<f64> {
        let mut cursor = LayoutCursor { text, position: 0 };
        let value = cursor.number();
        if value.is_none() {
            assert_eq!(cursor.position, 0, "{text}");
        }
        value.filter(|_| cursor.at_end())
    }

    /// Checks that whenever the fast path reads `text` as a number, serde_json reads the same
    /// bits from it.
    fn assert_number_reads_as_serde(text: &str) -> Option<f64> {
        let fast = fast_number(text);
        if let Some(value) = fast {
            let expected = serde_json::from_str::<f64>(text)
                .unwrap_or_else(|error| panic!("{text}: fast {value}, serde_json {error}"));
            assert_eq!(value.to_bits(), expected.to_bits(), "{text}");
        }
        fast
    }

    proptest! {
        #[test]
        fn unescaped_len_is_the_run_before_a_quote_backslash_or_control_byte(
            bytes in proptest::collection::vec(
                prop_oneof![4 => 0x20_u8..=0xff, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0_u8..0x20],
                0..40,
            ),
            plain in 0_usize..40,
        ) {
            // Mostly plain bytes first, so the first stop falls in any of the eight-byte words.
            let mut text: Vec<u8> = (0..plain).map(|i| b'a' + (i % 26) as u8).collect();
            text.extend(&bytes);
            let expected = text
                .iter()
                .position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20)
                .unwrap_or(text.len());
            prop_assert_eq!(unescaped_len(&text), expected);
        }
    }

    #[test]
    fn number_forms() {
        for (text, value) in [
            ("0", 0.0),
            ("-0", -0.0),
            ("-0.0", -0.0),
            ("2.5", 2.5),
            ("-42.08", -42.08),
            ("1E5", 1e5),
            ("1e+5", 1e5),
            ("25e-1", 2.5),
            ("1e-400", 0.0),
            ("-1e-400", -0.0),
            ("1.7976931348623157e308", f64::MAX),
            ("5e-324", 5e-324),
            ("9999999999999999999", 1e19),
            ("18446744073709551615", 18446744073709551615.0),
            ("0.000018446744073709551615e5", 1.844_674_407_370_955_1),
        ] {
            let read = assert_number_reads_as_serde(text);
            assert_eq!(read.map(f64::to_bits), Some(value.to_bits()), "{text}");
        }
        // Short decimals take the exact path, the encoder's 17-digit forms `str::parse`.
        let exact = |text: &str| DecimalNumber::scan(text.as_bytes(), 0)?.exact_value();
        assert_eq!(exact("-42.08"), Some(-42.08));
        assert_eq!(exact("25e-1"), Some(2.5));
        assert_eq!(exact("-0").map(f64::to_bits), Some((-0.0_f64).to_bits()));
        assert_eq!(exact("123456789.01234567"), None);
        assert_eq!(exact("1e23"), None);
        for text in [
            "01",
            "-01",
            "1.",
            ".5",
            "+1",
            "-",
            "",
            "1e",
            "1e+",
            "e5",
            "1.e5",
            "1e999",
            "-1e999",
            "1.8e308",
            "1e0001",
            "NaN",
            "inf",
            "Infinity",
            "null",
            "0x10",
            "1_0",
            "18446744073709551616",
            "1.8446744073709551616",
            "0.000018446744073709551616e5",
            "\"1\"",
        ] {
            assert_eq!(assert_number_reads_as_serde(text), None, "{text}");
        }
    }

    prop_compose! {
        fn any_finite()(value in prop::num::f64::POSITIVE
            | prop::num::f64::NEGATIVE
            | prop::num::f64::NORMAL
            | prop::num::f64::SUBNORMAL
            | prop::num::f64::ZERO) -> f64 {
            value
        }
    }

    proptest! {
        #[test]
        fn encoded_events_take_the_fast_path(
            wave in any_wave(),
            weather in any_weather(),
            carbon in any_carbon(),
            ingested_at in any_time(),
            source in "\\PC{0,12}",
        ) {
            assert_fast_round_trip(&Event::new(source.clone(), wave, ingested_at));
            assert_fast_round_trip(&Event::new(source.clone(), weather, ingested_at));
            assert_fast_round_trip(&Event::new(source, carbon, ingested_at));
        }

        #[test]
        fn any_finite_measurement_takes_the_fast_path(
            values in proptest::collection::vec(proptest::option::of(any_finite()), 8),
            intensity in any_finite(),
        ) {
            let base = wave(1.0);
            let observation = wave_with_measurements(base.site, base.observed_at, &values);
            assert_fast_round_trip(&Event::new("imos", observation, ingested()));
            let carbon = CarbonIntensity { carbon_intensity_g_per_kwh: intensity, ..carbon(None) };
            assert_fast_round_trip(&Event::new("em", carbon, ingested()));
        }

        #[test]
        fn numbers_read_as_serde_json_reads_them(
            written in any::<f64>(),
            json_number in "-?(0|[1-9][0-9]{0,22})(\\.[0-9]{1,22})?([eE][+-]?[0-9]{1,4})?",
            short in "-?(0|[1-9][0-9]{0,8})(\\.[0-9]{1,8})?([eE][+-]?[0-9]{1,2})?",
            anything in "[-+.eE0-9]{1,12}",
        ) {
            let written = serde_json::to_string(&written).unwrap();
            let read = assert_number_reads_as_serde(&written);
            // Every finite value serde_json writes is read; it writes NaN and infinities as null.
            prop_assert_eq!(read.is_some(), written != "null", "{}", written);
            assert_number_reads_as_serde(&json_number);
            prop_assert!(assert_number_reads_as_serde(&short).is_some(), "{}", short);
            assert_number_reads_as_serde(&anything);
        }

        #[test]
        fn mutated_encodings_decode_as_serde_decodes_them(
            wave in any_wave(),
            weather in any_weather(),
            carbon in any_carbon(),
            ingested_at in any_time(),
            member_edits in proptest::collection::vec(any_member_edit(), 0..3),
            text_edit in proptest::option::of(any_text_edit()),
        ) {
            let encodings = [
                Event::new("imos", wave, ingested_at).encode(),
                Event::new("bom", weather, ingested_at).encode(),
                Event::new("em", carbon, ingested_at).encode(),
            ];
            for encoded in encodings {
                let mutated = mutate(&encoded, &member_edits, text_edit.as_ref());
                assert_decodes_as_serde_for_every_kind(&mutated);
            }
        }
    }

    /// Values put in place of a member's value: numbers in forms the encoder does not write,
    /// out-of-range versions, other kinds, other timestamp forms, other types.
    const REPLACEMENTS: &[&str] = &[
        "1e999",
        "-0",
        "01",
        "1.",
        r#""1""#,
        "2",
        "70000",
        "0",
        "1.0",
        "-1",
        "1E2",
        "1e+2",
        "2.5e-3",
        "-0.0",
        ".5",
        "+1",
        "12345678901234567890",
        "18446744073709551616",
        "1.2345678901234567890",
        "1e-400",
        "0e5000",
        "-9223372036854775809",
        "null",
        "true",
        "false",
        r#""wave""#,
        r#""weather""#,
        r#""carbon""#,
        r#""Wave""#,
        r#""""#,
        r#""2025-05-05T01:30:00Z""#,
        r#""2025-05-05T11:30:00+10:00""#,
        r#""2016-12-31T23:59:60Z""#,
        r#""2025-05-05T01:30:00.5Z""#,
        r#""2025-05-05T01:30:00.1234567891Z""#,
        r#""2025-05-05t01:30:00z""#,
        r#""1969-12-31T23:59:59Z""#,
        "[]",
        "{}",
    ];

    const UNKNOWN_NAMES: &[&str] = &["firmware", "Site", "", "kind ", "lat\u{0}"];

    const WHITESPACE: &[&str] = &[" ", "\n", "\t", "\r", "\u{a0}", "\0"];

    const GARBAGE: &[&str] = &[" ", "\n", "x", "}", ",", "{}", "\0", r#","lat":1"#];

    /// An edit of an encoded event's list of members.
    #[derive(Debug, Clone)]
    enum MemberEdit {
        Swap(Index, Index),
        Duplicate(Index, Index),
        Remove(Index),
        Unknown(Index, &'static str, &'static str),
        Replace(Index, &'static str),
        /// Writes one character of a string value as a `\u` escape.
        Escape(Index, Index),
    }

    /// An edit of the encoded bytes.
    #[derive(Debug, Clone)]
    enum TextEdit {
        Insert(Index, &'static str),
        Truncate(Index),
        Append(&'static str),
    }

    fn any_member_edit() -> impl Strategy<Value = MemberEdit> {
        prop_oneof![
            (any::<Index>(), any::<Index>()).prop_map(|(a, b)| MemberEdit::Swap(a, b)),
            (any::<Index>(), any::<Index>()).prop_map(|(a, b)| MemberEdit::Duplicate(a, b)),
            any::<Index>().prop_map(MemberEdit::Remove),
            (any::<Index>(), select(UNKNOWN_NAMES), select(REPLACEMENTS))
                .prop_map(|(at, name, value)| MemberEdit::Unknown(at, name, value)),
            (any::<Index>(), select(REPLACEMENTS))
                .prop_map(|(at, value)| MemberEdit::Replace(at, value)),
            (any::<Index>(), any::<Index>()).prop_map(|(a, b)| MemberEdit::Escape(a, b)),
        ]
    }

    fn any_text_edit() -> impl Strategy<Value = TextEdit> {
        prop_oneof![
            (any::<Index>(), select(WHITESPACE)).prop_map(|(at, text)| TextEdit::Insert(at, text)),
            any::<Index>().prop_map(TextEdit::Truncate),
            select(GARBAGE).prop_map(TextEdit::Append),
        ]
    }

    /// The members of an encoded event, as (name, value text) in wire order.
    ///
    /// The encoder writes every `"` inside a string as `\"`, so `,"` followed by a member name
    /// and `:` only occurs where that member starts.
    fn split_members(encoded: &str) -> Vec<(String, String)> {
        let body = encoded
            .strip_prefix("{\"")
            .and_then(|body| body.strip_suffix('}'))
            .unwrap();
        let mut members = Vec::new();
        for member in format!(",\"{body}").split(",\"").skip(1) {
            match members.last_mut() {
                // A piece without `":` right after a plain name is part of the previous value.
                Some((_, value)) if !starts_with_member_name(member) => {
                    *value = format!("{value},\"{member}");
                }
                _ => {
                    let (name, value) = member.split_once("\":").unwrap();
                    members.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        members
    }

    fn starts_with_member_name(piece: &str) -> bool {
        piece.split_once("\":").is_some_and(|(name, _)| {
            name.bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte == b'_')
        })
    }

    /// `encoded` with `member_edits` applied to its members and then `text_edit` to its bytes.
    fn mutate(
        encoded: &[u8],
        member_edits: &[MemberEdit],
        text_edit: Option<&TextEdit>,
    ) -> Vec<u8> {
        let encoded = std::str::from_utf8(encoded).unwrap();
        let mut members = split_members(encoded);
        for edit in member_edits {
            let count = members.len();
            if count == 0 {
                break;
            }
            match edit {
                MemberEdit::Swap(a, b) => members.swap(a.index(count), b.index(count)),
                MemberEdit::Duplicate(which, at) => {
                    let member = members[which.index(count)].clone();
                    members.insert(at.index(count + 1), member);
                }
                MemberEdit::Remove(at) => {
                    members.remove(at.index(count));
                }
                MemberEdit::Unknown(at, name, value) => {
                    members.insert(
                        at.index(count + 1),
                        ((*name).to_owned(), (*value).to_owned()),
                    );
                }
                MemberEdit::Replace(at, value) => members[at.index(count)].1 = (*value).to_owned(),
                MemberEdit::Escape(which, at) => {
                    let value = &mut members[which.index(count)].1;
                    *value = escape_one_char(value, |count| at.index(count));
                }
            }
        }
        let members: Vec<String> = members
            .iter()
            .map(|(name, value)| format!("{}:{value}", serde_json::to_string(name).unwrap()))
            .collect();
        let mut bytes = format!("{{{}}}", members.join(",")).into_bytes();
        match text_edit {
            Some(TextEdit::Insert(at, text)) => {
                let at = at.index(bytes.len() + 1);
                bytes.splice(at..at, text.bytes());
            }
            Some(TextEdit::Truncate(at)) => bytes.truncate(at.index(bytes.len() + 1)),
            Some(TextEdit::Append(text)) => bytes.extend_from_slice(text.as_bytes()),
            None => {}
        }
        bytes
    }

    /// `value` (a JSON value's text) with one character inside its string, if it is a string
    /// without escapes, written as a `\u` escape: the same string to serde. `choose` picks the
    /// character from their number.
    fn escape_one_char(value: &str, choose: impl FnOnce(usize) -> usize) -> String {
        let Some(content) = value
            .strip_prefix('"')
            .and_then(|value| value.strip_suffix('"'))
            .filter(|content| !content.is_empty() && !content.contains('\\'))
        else {
            return value.to_owned();
        };
        let chars: Vec<char> = content.chars().collect();
        let at = choose(chars.len());
        let escaped: String = chars[at]
            .encode_utf16(&mut [0; 2])
            .iter()
            .map(|unit| format!("\\u{unit:04x}"))
            .collect();
        let before: String = chars[..at].iter().collect();
        let after: String = chars[at + 1..].iter().collect();
        format!("\"{before}{escaped}{after}\"")
    }

    #[test]
    fn mutations_cover_the_layout() {
        let encoded = wave_event().encode();
        let members = split_members(std::str::from_utf8(&encoded).unwrap());
        let names: Vec<&str> = members.iter().map(|(name, _)| name.as_str()).collect();
        let mut expected = vec![
            "schema_version",
            "kind",
            "event_id",
            "source",
            "ingested_at",
        ];
        expected.extend(WaveObservation::MEMBER_NAMES);
        assert_eq!(names, expected);
        assert_eq!(mutate(&encoded, &[], None), encoded);
        // A site with the member separator in it stays one member.
        let tricky = Event::new(
            "imos",
            WaveObservation {
                site: r#"a","lat":1,"#.into(),
                ..wave(1.0)
            },
            ingested(),
        );
        let encoded = tricky.encode();
        assert_eq!(
            split_members(std::str::from_utf8(&encoded).unwrap()).len(),
            names.len()
        );
        assert_eq!(mutate(&encoded, &[], None), encoded);
        let escaped = escape_one_char(r#""Cape""#, |_| 0);
        assert_eq!(escaped, r#""\u0043ape""#);
        assert_eq!(serde_json::from_str::<String>(&escaped).unwrap(), "Cape");
        assert_eq!(escape_one_char("2.5", |_| 0), "2.5");
    }

    /// A wave event like the synthetic ones `edge-sim` publishes (the sink's benchmark load):
    /// ten-minute steps over 100 sites, measurements rounded to centimetres, some `null`s, an
    /// ingest time with nanoseconds.
    fn synthetic_wave(index: u64) -> Vec<u8> {
        let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66_D1CE_4E5B;
        let mut next = |low: f64, high: f64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1_u64 << 53) as f64;
            ((low + unit * (high - low)) * 100.0).round() / 100.0
        };
        let observed_at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + chrono::Duration::minutes(10 * (index / 100) as i64);
        let observation = WaveObservation {
            site: format!("sim-{:03}", index % 100),
            observed_at,
            wave_height_m: Some(next(0.3, 6.0)),
            wave_height_max_m: Some(next(6.0, 11.0)),
            peak_period_s: Some(next(6.0, 18.0)),
            mean_period_s: (next(0.0, 1.0) < 0.8).then(|| next(4.0, 10.0)),
            wave_direction_deg: Some(next(0.0, 360.0)),
            sea_temp_c: (next(0.0, 1.0) < 0.7).then(|| next(12.0, 26.0)),
            lat: Some(-33.8),
            lon: Some(151.3),
        };
        let ingested_at = observed_at + chrono::Duration::nanoseconds(1_234_567_891 + index as i64);
        Event::new("edge-sim", observation, ingested_at).encode()
    }

    /// Checks that synthetic wave events (edge-sim's shape) all take the fast path and decode
    /// as serde decodes them, then prints the cost of decoding them through `Event::decode`
    /// (fast path) and through the serde decoder alone: once over `DECODE_COST_EVENTS`
    /// distinct payloads (2,000 unless given; the measurement uses 200,000), as the sink
    /// meets them (each one new to the caches), and once as many decodes of the first 1,000
    /// over and over (in cache: the CPU cost alone). `DECODE_COST_PATHS` names the paths
    /// timed (`fast,serde`; empty for none, to measure the setup alone under callgrind).
    /// The measurement: `DECODE_COST_EVENTS=200000 cargo test -p schema --release --lib --
    /// --nocapture print_decode_cost`.
    #[test]
    fn print_decode_cost() {
        let count: usize =
            std::env::var("DECODE_COST_EVENTS").map_or(2_000, |count| count.parse().unwrap());
        let paths = std::env::var("DECODE_COST_PATHS").unwrap_or_else(|_| "fast,serde".into());
        let payloads: Vec<Vec<u8>> = (0..count as u64).map(synthetic_wave).collect();
        for payload in payloads.iter().take(2_000) {
            let fast = read_event::<WaveObservation>(payload).expect("takes the fast path");
            let serde = Event::<WaveObservation>::decode_with_serde(payload).unwrap();
            assert_eq!(fast, serde);
            assert_eq!(fast.encode(), *payload);
        }
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        println!(
            "{count} synthetic wave events, {} bytes on average",
            bytes / count.max(1)
        );
        let cached = &payloads[..count.min(1_000)];
        for path in paths.split(',').filter(|path| !path.is_empty()) {
            let decode: fn(&[u8]) -> Result<Event<WaveObservation>, DecodeError> = match path {
                "fast" => Event::decode,
                "serde" => Event::decode_with_serde,
                other => panic!("unknown path {other}"),
            };
            let distinct = time_decodes(decode, payloads.iter());
            let repeated = time_decodes(decode, cached.iter().cycle().take(count));
            println!(
                "{path:>5}: {distinct:.0} ns per decode ({count} distinct payloads), \
                 {repeated:.0} ns ({} payloads in cache)",
                cached.len()
            );
        }
    }

    /// Nanoseconds per decode of `payloads`, each of which must be a valid event.
    fn time_decodes<'a>(
        decode: fn(&[u8]) -> Result<Event<WaveObservation>, DecodeError>,
        payloads: impl Iterator<Item = &'a Vec<u8>>,
    ) -> f64 {
        let started = Instant::now();
        let mut decoded = 0_u32;
        for payload in payloads {
            assert!(std::hint::black_box(decode(std::hint::black_box(payload))).is_ok());
            decoded += 1;
        }
        started.elapsed().as_nanos() as f64 / f64::from(decoded.max(1))
    }
}
