//! Unit conversions and value readers shared by the parsers.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;

/// Metres per second in one knot (exactly 1852 m / 3600 s).
pub const MS_PER_KNOT: f64 = 1852.0 / 3600.0;

/// Metres per second in one km/h.
pub const MS_PER_KMH: f64 = 1000.0 / 3600.0;

/// Converts knots to m/s.
pub fn knots_to_ms(knots: f64) -> f64 {
    knots * MS_PER_KNOT
}

/// Converts km/h to m/s.
pub fn kmh_to_ms(kmh: f64) -> f64 {
    kmh * MS_PER_KMH
}

/// What a JSON member holds when a number is expected.
#[derive(Debug, Clone, PartialEq)]
pub enum NumberField {
    /// A finite number (from a JSON number or a numeric string such as `"15.2"`).
    Value(f64),
    /// Absent, `null`, or a placeholder string (`"-"`, `""`, `"--"`): the source gives no value.
    Missing,
    /// Something else: the text describes it for the rejection message.
    Invalid(String),
}

/// Reads a number the way the upstreams send them: JSON numbers, numbers as text, and the
/// placeholders `"-"`/`""` for a missing value.
pub fn number(value: Option<&Value>) -> NumberField {
    match value {
        None | Some(Value::Null) => NumberField::Missing,
        Some(Value::Number(number)) => match number.as_f64() {
            Some(value) if value.is_finite() => NumberField::Value(value),
            _ => NumberField::Invalid(format!("the number {number}")),
        },
        Some(Value::String(text)) => {
            let trimmed = text.trim();
            if trimmed.is_empty() || trimmed.chars().all(|c| c == '-') {
                return NumberField::Missing;
            }
            match trimmed.parse::<f64>() {
                Ok(value) if value.is_finite() => NumberField::Value(value),
                _ => NumberField::Invalid(format!("the string {text:?}")),
            }
        }
        Some(other) => NumberField::Invalid(crate::parsed::json_type(other)),
    }
}

/// Reads a text member: `None` when absent, `null`, empty or a `"-"` placeholder.
pub fn text(value: Option<&Value>) -> Option<&str> {
    match value {
        Some(Value::String(text)) => {
            let trimmed = text.trim();
            if trimmed.is_empty() || trimmed.chars().all(|c| c == '-') {
                None
            } else {
                Some(trimmed)
            }
        }
        _ => None,
    }
}

/// Degrees true for a 16-point compass name ("N", "ENE", "SW"...); `None` for "CALM", "VRB" or
/// anything else that is not a direction.
pub fn compass_degrees(point: &str) -> Option<f64> {
    const POINTS: [&str; 16] = [
        "N", "NNE", "NE", "ENE", "E", "ESE", "SE", "SSE", "S", "SSW", "SW", "WSW", "W", "WNW",
        "NW", "NNW",
    ];
    let upper = point.trim().to_ascii_uppercase();
    POINTS
        .iter()
        .position(|name| *name == upper)
        .map(|index| index as f64 * 22.5)
}

/// Reads an ISO-8601 time that carries its zone (`Z`, `±hh:mm` or `±hhmm`); fractional seconds
/// are accepted and a space may stand for the `T`. A time without a zone is `None`: it is
/// ambiguous.
pub fn time_with_zone(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"]
        .iter()
        .find_map(|format| DateTime::parse_from_str(text, format).ok())
        .map(|time| time.with_timezone(&Utc))
}

/// Like [`time_with_zone`], but a time without a zone is read as UTC (AODN's `TIME`, rtl_433
/// run with `-M time:utc`).
pub fn time_assuming_utc(text: &str) -> Option<DateTime<Utc>> {
    time_with_zone(text).or_else(|| {
        let text = text.trim();
        [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
        ]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .map(|time| time.and_utc())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_are_missing_not_zero() {
        assert_eq!(number(Some(&json!("-"))), NumberField::Missing);
        assert_eq!(number(Some(&json!(""))), NumberField::Missing);
        assert_eq!(number(Some(&Value::Null)), NumberField::Missing);
        assert_eq!(number(None), NumberField::Missing);
        assert_eq!(number(Some(&json!("15.2"))), NumberField::Value(15.2));
        assert_eq!(number(Some(&json!(0))), NumberField::Value(0.0));
        assert!(matches!(
            number(Some(&json!("abc"))),
            NumberField::Invalid(_)
        ));
        assert!(matches!(
            number(Some(&json!(true))),
            NumberField::Invalid(_)
        ));
    }

    #[test]
    fn compass_points_map_to_degrees_true() {
        assert_eq!(compass_degrees("N"), Some(0.0));
        assert_eq!(compass_degrees("ESE"), Some(112.5));
        assert_eq!(compass_degrees("wsw"), Some(247.5));
        assert_eq!(compass_degrees("CALM"), None);
        assert_eq!(compass_degrees("-"), None);
    }

    #[test]
    fn speeds_convert_to_metres_per_second() {
        assert!((knots_to_ms(10.0) - 5.144_444).abs() < 1e-6);
        assert!((kmh_to_ms(36.0) - 10.0).abs() < 1e-12);
    }

    #[test]
    fn zoned_times_convert_and_naive_ones_need_a_rule() {
        let utc = time_with_zone("2025-05-05T10:40:00+10:00").expect("offset");
        assert_eq!(utc.to_rfc3339(), "2025-05-05T00:40:00+00:00");
        assert_eq!(
            time_with_zone("2019-08-29 08:38:19+0200").map(|t| t.to_rfc3339()),
            Some("2019-08-29T06:38:19+00:00".into())
        );
        assert_eq!(
            time_with_zone("2019-08-29 08:38:19"),
            None,
            "no zone: ambiguous"
        );
        assert_eq!(
            time_assuming_utc("2019-08-29 08:38:19").map(|t| t.to_rfc3339()),
            Some("2019-08-29T08:38:19+00:00".into())
        );
    }
}
