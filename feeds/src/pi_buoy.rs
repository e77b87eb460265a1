//! NomadWave's own Pi buoy messages (MQTT), the wave readings a Raspberry Pi on a buoy
//! publishes.
//!
//! Topic: `nomadwave/buoy/<site>/wave`, QoS 1. Payload: one JSON object whose members carry
//! the schema's names and units, so the Pi does the unit work once:
//!
//! ```json
//! {"site": "pi-001", "observed_at": "2026-11-25T01:20:00Z", "wave_height_m": 1.42,
//!  "wave_height_max_m": 2.31, "peak_period_s": 11.8, "mean_period_s": 7.2,
//!  "wave_direction_deg": 187.0, "sea_temp_c": 18.6, "lat": -33.80, "lon": 151.30}
//! ```
//!
//! `observed_at` is required and must carry its zone (`Z` or an offset): a Pi's local clock
//! time is ambiguous. `site` may be omitted (the topic names it); when present it must equal
//! the topic's. Every measurement is optional; `null` stays null. Unknown members are ignored.

use schema::{Observation, WaveObservation};
use serde_json::{Map, Value};

use crate::parsed::{json_type, json_value, RejectedRecord};
use crate::units::{number, time_with_zone, NumberField};

/// The `source` of events from Pi buoys.
pub const SOURCE: &str = "pi-buoy";

/// The topic filter the bridge subscribes to for Pi buoys.
pub const TOPIC_FILTER: &str = "nomadwave/buoy/+/wave";

/// The site a Pi buoy topic names: `nomadwave/buoy/<site>/wave` → `<site>`.
pub fn topic_site(topic: &str) -> Option<&str> {
    let mut levels = topic.split('/');
    match (
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
        levels.next(),
    ) {
        (Some("nomadwave"), Some("buoy"), Some(site), Some("wave"), None) if !site.is_empty() => {
            Some(site)
        }
        _ => None,
    }
}

/// Reads one Pi buoy message published on `topic`.
///
/// # Errors
///
/// A [`RejectedRecord`] located at the topic, with the reason (`malformed_json`, `wrong_topic`,
/// `missing_field`, `bad_time`, `wrong_type`, `site_mismatch`, `out_of_range`).
pub fn parse(topic: &str, payload: &[u8]) -> Result<WaveObservation, RejectedRecord> {
    let reject = |reason: &'static str, detail: String| RejectedRecord {
        location: topic.to_owned(),
        reason,
        detail,
    };
    let Some(site) = topic_site(topic) else {
        return Err(reject(
            "wrong_topic",
            format!("topic {topic:?} is not nomadwave/buoy/<site>/wave"),
        ));
    };
    let document =
        json_value(payload).map_err(|error| reject("malformed_json", error.to_string()))?;
    let Value::Object(object) = &document else {
        return Err(reject(
            "wrong_type",
            format!(
                "the payload must be a JSON object, found {}",
                json_type(&document)
            ),
        ));
    };
    match object.get("site") {
        None | Some(Value::Null) => {}
        Some(Value::String(named)) if named == site => {}
        Some(other) => {
            return Err(reject(
                "site_mismatch",
                format!("payload site {other} differs from the topic's {site:?}"),
            ))
        }
    }
    let observed_at = match object.get("observed_at") {
        Some(Value::String(text)) => time_with_zone(text).ok_or_else(|| {
            reject(
                "bad_time",
                format!("observed_at {text:?} is not an RFC 3339 time with a zone (Z or ±hh:mm)"),
            )
        })?,
        None | Some(Value::Null) => {
            return Err(reject("missing_field", "observed_at is missing".into()))
        }
        Some(other) => {
            return Err(reject(
                "bad_time",
                format!("observed_at must be a string, found {}", json_type(other)),
            ))
        }
    };
    let field = |name: &'static str| {
        read_number(object, name).map_err(|detail| reject("wrong_type", detail))
    };
    let observation = WaveObservation {
        site: site.to_owned(),
        observed_at,
        wave_height_m: field("wave_height_m")?,
        wave_height_max_m: field("wave_height_max_m")?,
        peak_period_s: field("peak_period_s")?,
        mean_period_s: field("mean_period_s")?,
        wave_direction_deg: field("wave_direction_deg")?,
        sea_temp_c: field("sea_temp_c")?,
        lat: field("lat")?,
        lon: field("lon")?,
    };
    observation
        .validate()
        .map_err(|error| reject("out_of_range", error.to_string()))?;
    Ok(observation)
}

fn read_number(object: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match number(object.get(name)) {
        NumberField::Value(value) => Ok(Some(value)),
        NumberField::Missing => Ok(None),
        NumberField::Invalid(found) => Err(format!("{name} must be a number, found {found}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "nomadwave/buoy/pi-001/wave";

    #[test]
    fn reads_a_reading_with_nulls_kept() {
        let payload = br#"{"site":"pi-001","observed_at":"2026-11-25T11:20:00+10:00","wave_height_m":1.42,"sea_temp_c":null,"lat":-33.8}"#;
        let observation = parse(TOPIC, payload).expect("valid");
        assert_eq!(observation.site, "pi-001");
        assert_eq!(
            observation.observed_at.to_rfc3339(),
            "2026-11-25T01:20:00+00:00"
        );
        assert_eq!(observation.wave_height_m, Some(1.42));
        assert_eq!(observation.sea_temp_c, None);
        assert_eq!(observation.peak_period_s, None);
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let cases: [(&str, &[u8], &str); 6] = [
            ("nomadwave/buoy/pi-001/status", br#"{}"#, "wrong_topic"),
            (
                TOPIC,
                br#"{"observed_at":"2026-11-25T01:20"#,
                "malformed_json",
            ),
            (TOPIC, br#"{"wave_height_m":1}"#, "missing_field"),
            (
                TOPIC,
                br#"{"observed_at":"2026-11-25 11:20:00"}"#,
                "bad_time",
            ),
            (
                TOPIC,
                br#"{"site":"pi-002","observed_at":"2026-11-25T01:20:00Z"}"#,
                "site_mismatch",
            ),
            (
                TOPIC,
                br#"{"observed_at":"2026-11-25T01:20:00Z","wave_height_m":99}"#,
                "out_of_range",
            ),
        ];
        for (topic, payload, reason) in cases {
            let error = parse(topic, payload).expect_err(reason);
            assert_eq!(error.reason, reason, "{error}");
            assert_eq!(error.location, topic);
        }
        let error = parse(
            TOPIC,
            br#"{"observed_at":"2026-11-25T01:20:00Z","lat":"north"}"#,
        )
        .expect_err("type");
        assert_eq!(error.reason, "wrong_type");
        assert!(error.detail.contains("lat"), "{error}");
    }
}
