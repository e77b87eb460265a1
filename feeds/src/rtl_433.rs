//! rtl_433 JSON events (a Raspberry Pi decoding a cheap 433/868 MHz weather station) →
//! [`WeatherObservation`].
//!
//! rtl_433 publishes one JSON object per decoded radio message on `<base>/events` (base
//! `rtl_433/<hostname>` by default). What this reader does with its quirks:
//! - the site is built from the gateway and the device: `rtl433-<host>-<model>-<id>[-ch<channel>]`,
//!   normalised (host `raspi`, `Fineoffset-WHx080`, id 5 → `rtl433-raspi-fineoffset-whx080-5`).
//!   The host is the topic's level(s) between `rtl_433/` and `/events`: device ids are 8 bits
//!   and change with every battery swap, so two gateways often hear the same model and id,
//!   and without the host their readings would merge into one site. A topic without a host
//!   level (`rtl_433/events`) gives `rtl433-<model>-<id>[-ch<channel>]`;
//! - the unit is in the key: `temperature_C`/`temperature_F`, `wind_avg_m_s`/`wind_avg_km_h`/
//!   `wind_avg_mi_h` (and `wind_max_*` for gusts), `pressure_hPa`/`pressure_kPa`; all become
//!   the schema's SI units;
//! - `time` is a zoned ISO time, Unix seconds (`-M time:unix`), or a local time without a zone,
//!   which is ambiguous: it is refused unless the operator declared it UTC ([`TimeRule`]);
//!   file-playback offsets (`"@0.296320s"`) are always refused;
//! - a message with no weather value at all (a door sensor, a remote) is refused.

use chrono::{DateTime, Utc};
use schema::{Observation, WeatherObservation};
use serde_json::{Map, Value};

use crate::normalize_site;
use crate::parsed::{json_type, json_value, RejectedRecord};
use crate::units::{kmh_to_ms, number, time_assuming_utc, time_with_zone, NumberField};

/// The `source` of events from rtl_433.
pub const SOURCE: &str = "rtl_433";

/// The topic filter rtl_433 publishes events on by default.
pub const TOPIC_FILTER: &str = "rtl_433/+/events";

/// Metres per second in one mile per hour.
const MS_PER_MPH: f64 = 0.447_04;

/// How the `time` member of an event is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeRule {
    /// Only a time with a zone, or Unix seconds; a local time without zone is refused.
    RequireZone,
    /// A time without zone is UTC (rtl_433 runs with `-M time:utc`).
    NaiveIsUtc,
    /// Ignore `time`; the caller supplies the receive time.
    Receive(DateTime<Utc>),
}

/// Whether `topic` is an rtl_433 events topic (`…/events`).
pub fn is_events_topic(topic: &str) -> bool {
    topic.starts_with("rtl_433/") && topic.ends_with("/events")
}

/// Reads one rtl_433 event published on `topic`.
///
/// # Errors
///
/// A [`RejectedRecord`] located at the topic: `malformed_json`, `wrong_type`, `missing_field`,
/// `bad_time`, `no_weather_fields`, `out_of_range`, `time_out_of_range`, `sub_second_time`.
pub fn parse(
    topic: &str,
    payload: &[u8],
    time_rule: TimeRule,
) -> Result<WeatherObservation, RejectedRecord> {
    let reject = |reason: &'static str, detail: String| RejectedRecord {
        location: topic.to_owned(),
        reason,
        detail,
    };
    let document =
        json_value(payload).map_err(|error| reject("malformed_json", error.to_string()))?;
    let Value::Object(event) = &document else {
        return Err(reject(
            "wrong_type",
            format!(
                "an rtl_433 event is a JSON object, found {}",
                json_type(&document)
            ),
        ));
    };
    let site =
        device_site(topic_host(topic), event).map_err(|detail| reject("missing_field", detail))?;
    let observed_at = event_time(event, time_rule).map_err(|detail| reject("bad_time", detail))?;
    let read = |keys: &[(&str, f64, f64)]| -> Result<Option<f64>, RejectedRecord> {
        for (key, factor, offset) in keys {
            match number(event.get(*key)) {
                NumberField::Value(value) => return Ok(Some(value * factor + offset)),
                NumberField::Missing => {}
                NumberField::Invalid(found) => {
                    return Err(reject(
                        "wrong_type",
                        format!("{key} must be a number, found {found}"),
                    ))
                }
            }
        }
        Ok(None)
    };
    let observation = WeatherObservation {
        site,
        observed_at,
        wind_speed_ms: read(&[
            ("wind_avg_m_s", 1.0, 0.0),
            ("wind_avg_km_h", kmh_to_ms(1.0), 0.0),
            ("wind_avg_mi_h", MS_PER_MPH, 0.0),
        ])?,
        wind_gust_ms: read(&[
            ("wind_max_m_s", 1.0, 0.0),
            ("wind_max_km_h", kmh_to_ms(1.0), 0.0),
            ("wind_max_mi_h", MS_PER_MPH, 0.0),
        ])?,
        wind_direction_deg: read(&[("wind_dir_deg", 1.0, 0.0)])?,
        air_temp_c: read(&[
            ("temperature_C", 1.0, 0.0),
            ("temperature_F", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
        ])?,
        pressure_hpa: read(&[("pressure_hPa", 1.0, 0.0), ("pressure_kPa", 10.0, 0.0)])?,
        rel_humidity_pct: read(&[("humidity", 1.0, 0.0)])?,
        swell_height_m: None,
        swell_period_s: None,
    };
    let has_weather = [
        observation.wind_speed_ms,
        observation.wind_gust_ms,
        observation.wind_direction_deg,
        observation.air_temp_c,
        observation.pressure_hpa,
        observation.rel_humidity_pct,
    ]
    .iter()
    .any(Option::is_some);
    if !has_weather {
        return Err(reject(
            "no_weather_fields",
            format!(
                "the {} event carries no temperature, humidity, wind or pressure",
                observation.site
            ),
        ));
    }
    observation
        .validate()
        .map_err(|error| reject(error.reason(), error.to_string()))?;
    Ok(observation)
}

/// The gateway part of an events topic: what lies between `rtl_433/` and `/events`, normalised
/// (`rtl_433/Pi-Garden/events` → `pi-garden`); empty when the topic has none.
fn topic_host(topic: &str) -> String {
    let inner = topic
        .strip_prefix("rtl_433/")
        .and_then(|rest| rest.strip_suffix("/events"))
        .unwrap_or("");
    normalize_site(inner)
}

fn device_site(host: String, event: &Map<String, Value>) -> Result<String, String> {
    let model = match event.get("model") {
        Some(Value::String(model)) if !normalize_site(model).is_empty() => normalize_site(model),
        _ => return Err("model is missing: cannot tell which device sent it".to_owned()),
    };
    let id = match event.get("id") {
        Some(Value::Number(id)) => id.to_string(),
        Some(Value::String(id)) if !normalize_site(id).is_empty() => normalize_site(id),
        _ => {
            return Err(format!(
                "id is missing for model {model}: cannot tell devices apart"
            ))
        }
    };
    let channel = match event.get("channel") {
        Some(Value::Number(channel)) => format!("-ch{channel}"),
        Some(Value::String(channel)) if !normalize_site(channel).is_empty() => {
            format!("-ch{}", normalize_site(channel))
        }
        _ => String::new(),
    };
    Ok(match host.as_str() {
        "" => format!("rtl433-{model}-{id}{channel}"),
        host => format!("rtl433-{host}-{model}-{id}{channel}"),
    })
}

/// The event's time under `rule`.
///
/// A number (or numeric text) is Unix seconds, but only when finite: `f64::from_str` also reads
/// `"NaN"` and `"inf"`, and NaN used to cast to 0, so `"time":"NaN"` became 1970-01-01
/// (input `feeds/tests/fuzz-regressions/rtl_433_parse-nan-time`).
fn event_time(event: &Map<String, Value>, rule: TimeRule) -> Result<DateTime<Utc>, String> {
    if let TimeRule::Receive(at) = rule {
        return Ok(at);
    }
    let text = match event.get("time") {
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(Value::Number(seconds)) => seconds.to_string(),
        None | Some(Value::Null) => return Err("time is missing".to_owned()),
        Some(other) => return Err(format!("time must be a string, found {}", json_type(other))),
    };
    if text.starts_with('@') {
        return Err(format!(
            "time {text:?} is an offset into a recorded file (rtl_433 playback), not a wall-clock time"
        ));
    }
    if let Some(seconds) = text
        .parse::<f64>()
        .ok()
        .filter(|seconds| seconds.is_finite())
    {
        return DateTime::from_timestamp_millis((seconds * 1000.0).round() as i64)
            .ok_or_else(|| format!("time {text:?} is not a plausible Unix time"));
    }
    if let Some(time) = time_with_zone(&text) {
        return Ok(time);
    }
    match (rule, time_assuming_utc(&text)) {
        (TimeRule::NaiveIsUtc, Some(time)) => Ok(time),
        (_, Some(_)) => Err(format!(
            "time {text:?} has no zone: run rtl_433 with -M time:utc (and the bridge with --rtl433-time naive-utc) or -M time:iso:tz"
        )),
        (_, None) => Err(format!("time {text:?} is not a date and time")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "rtl_433/raspi/events";

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/../fixtures/mqtt/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).expect("fixture")
    }

    #[test]
    fn nexus_local_time_needs_a_declared_zone() {
        let payload = fixture("rtl_433_Nexus-TH_event_docs.json");
        let error = parse(TOPIC, &payload, TimeRule::RequireZone).expect_err("ambiguous");
        assert_eq!(error.reason, "bad_time");
        assert!(error.detail.contains("time:utc"), "{error}");
        let observation = parse(TOPIC, &payload, TimeRule::NaiveIsUtc).expect("declared UTC");
        assert_eq!(observation.site, "rtl433-raspi-nexus-th-42-ch2");
        assert_eq!(
            observation.observed_at.to_rfc3339(),
            "2019-08-29T08:38:19+00:00"
        );
        assert_eq!(observation.air_temp_c, Some(20.5));
        assert_eq!(observation.rel_humidity_pct, Some(83.0));
        assert_eq!(observation.wind_speed_ms, None, "no wind keys: null, not 0");
    }

    #[test]
    fn one_device_heard_by_two_gateways_is_two_sites() {
        let payload = fixture("rtl_433_Nexus-TH_event_docs.json");
        let site = |topic: &str| {
            parse(topic, &payload, TimeRule::NaiveIsUtc)
                .expect("declared UTC")
                .site
        };
        assert_eq!(
            site("rtl_433/pi-north/events"),
            "rtl433-pi-north-nexus-th-42-ch2"
        );
        assert_eq!(
            site("rtl_433/Pi South/events"),
            "rtl433-pi-south-nexus-th-42-ch2"
        );
        assert_eq!(site("rtl_433/events"), "rtl433-nexus-th-42-ch2");
    }

    #[test]
    fn fineoffset_playback_offset_is_refused_unless_receive_time() {
        let payload = fixture("rtl_433_Fineoffset-WHx080_event.json");
        let error = parse(TOPIC, &payload, TimeRule::NaiveIsUtc).expect_err("playback");
        assert_eq!(error.reason, "bad_time");
        let received = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let observation =
            parse(TOPIC, &payload, TimeRule::Receive(received)).expect("receive time");
        assert_eq!(observation.site, "rtl433-raspi-fineoffset-whx080-5");
        assert_eq!(observation.observed_at, received);
        assert_eq!(observation.wind_speed_ms, Some(0.0), "a real 0.000 stays 0");
        let gust = observation.wind_gust_ms.expect("gust");
        assert!((gust - 2.448 / 3.6).abs() < 1e-12, "{gust}");
        assert_eq!(observation.wind_direction_deg, Some(315.0));
        assert_eq!(observation.air_temp_c, Some(7.4));
    }

    #[test]
    fn zoned_and_unix_times_and_fahrenheit() {
        let zoned = br#"{"time":"2019-08-29T08:38:19+02:00","model":"Acurite-5n1","id":"A1","temperature_F":68.0,"wind_avg_mi_h":10}"#;
        let observation = parse(TOPIC, zoned, TimeRule::RequireZone).expect("zoned");
        assert_eq!(
            observation.observed_at.to_rfc3339(),
            "2019-08-29T06:38:19+00:00"
        );
        assert!((observation.air_temp_c.expect("temp") - 20.0).abs() < 1e-9);
        assert!((observation.wind_speed_ms.expect("wind") - 4.4704).abs() < 1e-9);
        let unix = br#"{"time":"1567060699","model":"WH24","id":1,"wind_avg_m_s":3.2}"#;
        let observation = parse(TOPIC, unix, TimeRule::RequireZone).expect("unix");
        assert_eq!(observation.observed_at.timestamp(), 1_567_060_699);
    }

    #[test]
    fn non_weather_devices_and_wrong_types_are_refused() {
        let remote = br#"{"time":"1567060699","model":"Generic-Remote","id":7,"cmd":1}"#;
        assert_eq!(
            parse(TOPIC, remote, TimeRule::RequireZone)
                .expect_err("remote")
                .reason,
            "no_weather_fields"
        );
        let wrong = br#"{"time":"1567060699","model":"WH24","id":1,"humidity":"wet"}"#;
        assert_eq!(
            parse(TOPIC, wrong, TimeRule::RequireZone)
                .expect_err("type")
                .reason,
            "wrong_type"
        );
        let anonymous = br#"{"time":"1567060699","model":"WH24","humidity":50}"#;
        assert_eq!(
            parse(TOPIC, anonymous, TimeRule::RequireZone)
                .expect_err("id")
                .reason,
            "missing_field"
        );
    }
}
