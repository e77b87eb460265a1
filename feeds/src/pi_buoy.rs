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

use std::borrow::Cow;
use std::fmt;

use schema::{Observation, WaveObservation};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess};
use serde::{Deserialize, Deserializer};
use serde_json::{Number, Value};

use crate::parsed::{json_type, RejectedRecord};
use crate::units::{number, time_with_zone, NumberField};
use crate::PayloadError;

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
/// `missing_field`, `bad_time`, `wrong_type`, `site_mismatch`, `out_of_range`, `time_out_of_range`,
/// `sub_second_time`).
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
    let message = match schema::event::read_json::<Message<'_>>(payload) {
        Ok(Message::Object(message)) => message,
        Ok(Message::Other(document)) => {
            return Err(reject(
                "wrong_type",
                format!(
                    "the payload must be a JSON object, found {}",
                    json_type(&document)
                ),
            ))
        }
        Err(error) => {
            let error = PayloadError::from_json(&error, payload);
            return Err(reject("malformed_json", error.to_string()));
        }
    };
    match message.site {
        Member::Null => {}
        Member::Text(named) if named == site => {}
        other => {
            return Err(reject(
                "site_mismatch",
                format!(
                    "payload site {} differs from the topic's {site:?}",
                    other.into_value()
                ),
            ))
        }
    }
    let observed_at = match message.observed_at {
        // The common `…Z` form first; anything else as before.
        Member::Text(text) => schema::timestamp::parse_zulu(text.trim())
            .or_else(|| time_with_zone(&text))
            .ok_or_else(|| {
                reject(
                    "bad_time",
                    format!(
                        "observed_at {text:?} is not an RFC 3339 time with a zone (Z or ±hh:mm)"
                    ),
                )
            })?,
        Member::Null => return Err(reject("missing_field", "observed_at is missing".into())),
        other => {
            return Err(reject(
                "bad_time",
                format!(
                    "observed_at must be a string, found {}",
                    json_type(&other.into_value())
                ),
            ))
        }
    };
    let [wave_height_m, wave_height_max_m, peak_period_s, mean_period_s, wave_direction_deg, sea_temp_c, lat, lon] =
        message.measurements;
    let field = |name: &'static str, member: Member<'_>| {
        read_number(name, member).map_err(|detail| reject("wrong_type", detail))
    };
    let observation = WaveObservation {
        site: site.to_owned(),
        observed_at,
        wave_height_m: field("wave_height_m", wave_height_m)?,
        wave_height_max_m: field("wave_height_max_m", wave_height_max_m)?,
        peak_period_s: field("peak_period_s", peak_period_s)?,
        mean_period_s: field("mean_period_s", mean_period_s)?,
        wave_direction_deg: field("wave_direction_deg", wave_direction_deg)?,
        sea_temp_c: field("sea_temp_c", sea_temp_c)?,
        lat: field("lat", lat)?,
        lon: field("lon", lon)?,
    };
    observation
        .validate()
        .map_err(|error| reject(error.reason(), error.to_string()))?;
    Ok(observation)
}

/// The measurement members, in the order they are checked and a rejection names the first bad
/// one.
const MEASUREMENTS: [&str; 8] = [
    "wave_height_m",
    "wave_height_max_m",
    "peak_period_s",
    "mean_period_s",
    "wave_direction_deg",
    "sea_temp_c",
    "lat",
    "lon",
];

fn read_number(name: &str, member: Member<'_>) -> Result<Option<f64>, String> {
    let value = match member {
        Member::Null => return Ok(None),
        Member::Number(value) => Value::Number(value),
        other => other.into_value(),
    };
    match number(Some(&value)) {
        NumberField::Value(value) => Ok(Some(value)),
        NumberField::Missing => Ok(None),
        NumberField::Invalid(found) => Err(format!("{name} must be a number, found {found}")),
    }
}

/// A payload as read, before any check: the members `parse` looks at, each kept as found.
///
/// It is read in one pass instead of through a `serde_json::Value`, but accepts and refuses
/// the same bytes (every value, also of unknown members, is read in full), keeps the last of
/// repeated members as a `Value` map did, and keeps enough of each member to word a rejection
/// as before. A derived struct would refuse repeated members and read a top-level array as
/// the struct's fields, so the visitor is written by hand.
#[expect(
    clippy::large_enum_variant,
    reason = "lives on the stack for one parse; boxing the members would cost an allocation"
)]
enum Message<'payload> {
    /// The payload is a JSON object.
    Object(Members<'payload>),
    /// Any other JSON value, kept for the rejection message.
    Other(Value),
}

/// The members of a payload object that `parse` reads; an absent one is [`Member::Null`].
#[derive(Default)]
struct Members<'payload> {
    site: Member<'payload>,
    observed_at: Member<'payload>,
    /// In the order of [`MEASUREMENTS`].
    measurements: [Member<'payload>; 8],
}

/// One member's value as found. Absent and `null` are the same to `parse`.
#[derive(Default)]
enum Member<'payload> {
    #[default]
    Null,
    Number(Number),
    /// Borrowed from the payload unless it holds escapes.
    Text(Cow<'payload, str>),
    /// A boolean, array or object: only ever rejected, so kept as a `Value` for the message.
    Other(Value),
}

impl Member<'_> {
    /// The `Value` reading the payload into a `serde_json::Value` would have held.
    fn into_value(self) -> Value {
        match self {
            Member::Null => Value::Null,
            Member::Number(value) => Value::Number(value),
            Member::Text(text) => Value::String(text.into_owned()),
            Member::Other(value) => value,
        }
    }
}

impl<'de> Deserialize<'de> for Message<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> de::Visitor<'de> for MessageVisitor {
    type Value = Message<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message<'de>, A::Error> {
        let mut members = Members::default();
        while let Some(name) = map.next_key_seed(MemberNameSeed)? {
            let member = map.next_value::<Member<'de>>()?;
            // A repeated member replaces the earlier one, as in a `Value` map.
            match name {
                MemberName::Site => members.site = member,
                MemberName::ObservedAt => members.observed_at = member,
                MemberName::Measurement(position) => members.measurements[position] = member,
                MemberName::Unknown => {}
            }
        }
        Ok(Message::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Message<'de>, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Message::Other)
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Message<'de>, E> {
        Ok(Message::Other(Value::Bool(value)))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Message<'de>, E> {
        Ok(Message::Other(Value::from(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Message<'de>, E> {
        Ok(Message::Other(Value::from(value)))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Message<'de>, E> {
        Ok(Message::Other(Value::from(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Message<'de>, E> {
        Ok(Message::Other(Value::String(value.to_owned())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Message<'de>, E> {
        Ok(Message::Other(Value::Null))
    }
}

/// Which member a name refers to.
enum MemberName {
    Site,
    ObservedAt,
    /// Position in [`MEASUREMENTS`].
    Measurement(usize),
    /// Ignored, though its value is still read in full.
    Unknown,
}

/// Reads a member name without allocating.
struct MemberNameSeed;

impl<'de> DeserializeSeed<'de> for MemberNameSeed {
    type Value = MemberName;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<MemberName, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl de::Visitor<'_> for MemberNameSeed {
    type Value = MemberName;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<MemberName, E> {
        Ok(match name {
            "site" => MemberName::Site,
            "observed_at" => MemberName::ObservedAt,
            _ => match MEASUREMENTS
                .iter()
                .position(|measurement| *measurement == name)
            {
                Some(position) => MemberName::Measurement(position),
                None => MemberName::Unknown,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Member<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MemberVisitor)
    }
}

/// Keeps a value as `Value`'s own visitor would, except that numbers and text stay unboxed.
struct MemberVisitor;

impl<'de> de::Visitor<'de> for MemberVisitor {
    type Value = Member<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Member<'de>, E> {
        Ok(Member::Other(Value::Bool(value)))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Member<'de>, E> {
        Ok(Member::Number(Number::from(value)))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Member<'de>, E> {
        Ok(Member::Number(Number::from(value)))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Member<'de>, E> {
        // `Value` turns a non-finite float into null; JSON cannot spell one anyway.
        Ok(Number::from_f64(value).map_or(Member::Null, Member::Number))
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Member<'de>, E> {
        Ok(Member::Text(Cow::Borrowed(value)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Member<'de>, E> {
        Ok(Member::Text(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Member<'de>, E> {
        Ok(Member::Text(Cow::Owned(value)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Member<'de>, E> {
        Ok(Member::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Member<'de>, E> {
        Ok(Member::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Member<'de>, D::Error> {
        Member::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Member<'de>, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Member::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Member<'de>, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(Member::Other)
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

    #[test]
    fn reads_members_as_a_json_value_did() {
        // A repeated member: the last one counts.
        let observation = parse(
            TOPIC,
            br#"{"observed_at":"2026-11-25T01:20:00Z","lat":-33.8,"lat":null,"firmware":{"v":[1,2]}}"#,
        )
        .expect("valid");
        assert_eq!(observation.lat, None);
        // Numbers as text and placeholders, as `units::number` reads them.
        let observation = parse(
            TOPIC,
            br#"{"observed_at":"2026-11-25T01:20:00Z","wave_height_m":" 1.42 ","sea_temp_c":"-"}"#,
        )
        .expect("valid");
        assert_eq!(observation.wave_height_m, Some(1.42));
        assert_eq!(observation.sea_temp_c, None);
        let details = [
            (
                &br#"[1,2]"#[..],
                "the payload must be a JSON object, found an array",
            ),
            (
                br#"{"site":5,"observed_at":"2026-11-25T01:20:00Z"}"#,
                r#"payload site 5 differs from the topic's "pi-001""#,
            ),
            (
                br#"{"site":["pi-001"],"observed_at":"2026-11-25T01:20:00Z"}"#,
                r#"payload site ["pi-001"] differs from the topic's "pi-001""#,
            ),
            (
                br#"{"observed_at":5}"#,
                "observed_at must be a string, found the number 5",
            ),
            (
                br#"{"observed_at":"2026-11-25T01:20:00Z","lon":true}"#,
                "lon must be a number, found a boolean",
            ),
        ];
        for (payload, detail) in details {
            let error = parse(TOPIC, payload).expect_err(detail);
            assert_eq!(error.detail, detail);
        }
    }
}
