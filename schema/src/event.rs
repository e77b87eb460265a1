//! The envelope every published event has, and its JSON encoding.
//!
//! On the wire an event is one flat JSON object: the envelope fields (`schema_version`, `kind`,
//! `event_id`, `source`, `ingested_at`) next to the observation's own fields.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::id::{ContentHasher, EventId};
use crate::kind::Kind;
use crate::observation::{Observation, ValidationError};
use crate::SCHEMA_VERSION;

/// Largest message accepted as an event. Valid events are far smaller (site ids are bounded
/// by [`crate::observation::MAX_SITE_LEN`]); anything bigger is refused before parsing.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// A normalized observation with its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "O: Observation")]
pub struct Event<O> {
    /// Version of this contract the producer wrote; see [`SCHEMA_VERSION`].
    pub schema_version: u16,
    /// Kind of observation; always `O::KIND` for a decoded event.
    pub kind: Kind,
    /// Deterministic id from natural key and content, sent as `Nats-Msg-Id`.
    pub event_id: EventId,
    /// Which feed produced it (`imos`, `bom`, `electricitymaps`, `pi-buoy`, `edge-sim`, …).
    pub source: String,
    /// When NomadWave first received it (UTC); not part of the id.
    pub ingested_at: DateTime<Utc>,
    /// The measurements.
    #[serde(flatten)]
    pub observation: O,
}

/// Why a message could not become an event; each variant is a dead-letter reason.
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The bytes are not JSON of the expected shape.
    #[error("malformed event json")]
    Malformed(#[source] serde_json::Error),
    /// The producer wrote a schema version this build does not understand.
    #[error("unsupported schema_version {found} (this build reads version {supported}); upgrade the consumer")]
    UnsupportedSchemaVersion {
        /// Version found in the message.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The event is of another kind than the stream it came from.
    #[error("event kind {found} does not belong in the {expected} stream")]
    WrongKind {
        /// Kind of the stream.
        expected: Kind,
        /// Kind found in the message.
        found: Kind,
    },
    /// A measurement is physically implausible.
    #[error("invalid observation")]
    Invalid(#[source] ValidationError),
    /// Larger than any event this schema produces: not read at all.
    #[error("{size} bytes is larger than the {limit}-byte limit of an event")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// [`MAX_EVENT_BYTES`].
        limit: usize,
    },
}

impl DecodeError {
    /// Short machine-readable reason, used as dead-letter header and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed_json",
            DecodeError::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            DecodeError::WrongKind { .. } => "wrong_kind",
            DecodeError::Invalid(_) => "out_of_range",
            DecodeError::TooLarge { .. } => "too_large",
        }
    }
}

impl<O: Observation> Event<O> {
    /// Wraps an observation from `source`, computing its id.
    pub fn new(source: impl Into<String>, observation: O, ingested_at: DateTime<Utc>) -> Self {
        let source = source.into();
        let event_id = event_id(&source, &observation);
        Event {
            schema_version: SCHEMA_VERSION,
            kind: O::KIND,
            event_id,
            source,
            ingested_at,
            observation,
        }
    }

    /// Subject to publish this event on.
    pub fn subject(&self) -> String {
        O::KIND.subject_for_site(self.observation.site())
    }

    /// Encodes the event as one JSON object.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings, numbers and timestamps to a Vec cannot fail.
        serde_json::to_vec(self).expect("events always serialize to JSON")
    }

    /// Decodes and validates an event read from `O::KIND`'s stream.
    ///
    /// # Errors
    ///
    /// Returns a [`DecodeError`] naming why the bytes are not a valid event of this kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: MAX_EVENT_BYTES,
            });
        }
        let event: Event<O> = match serde_json::from_slice(bytes) {
            Ok(event) => event,
            Err(error) => return Err(classify_undecodable(bytes, error)),
        };
        if event.schema_version != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedSchemaVersion {
                found: event.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if event.kind != O::KIND {
            return Err(DecodeError::WrongKind {
                expected: O::KIND,
                found: event.kind,
            });
        }
        event.observation.validate().map_err(DecodeError::Invalid)?;
        Ok(event)
    }
}

/// Computes the deterministic id of an observation from `source`.
pub fn event_id<O: Observation>(source: &str, observation: &O) -> EventId {
    let mut hasher = ContentHasher::new(
        O::KIND,
        source,
        observation.site(),
        observation.observed_at(),
    );
    observation.hash_content(&mut hasher);
    hasher.finish()
}

/// A message that does not decode may still be well-formed JSON from a newer producer; report
/// that as a version problem rather than as garbage.
fn classify_undecodable(bytes: &[u8], error: serde_json::Error) -> DecodeError {
    #[derive(Deserialize)]
    struct VersionOnly {
        schema_version: u16,
    }
    match serde_json::from_slice::<VersionOnly>(bytes) {
        Ok(VersionOnly { schema_version }) if schema_version != SCHEMA_VERSION => {
            DecodeError::UnsupportedSchemaVersion {
                found: schema_version,
                supported: SCHEMA_VERSION,
            }
        }
        _ => DecodeError::Malformed(error),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::{CarbonIntensity, WaveObservation, WeatherObservation};

    fn wave(height: f64) -> WaveObservation {
        WaveObservation {
            site: "Cape Sorell".into(),
            observed_at: Utc.with_ymd_and_hms(2025, 5, 5, 1, 30, 0).unwrap(),
            wave_height_m: Some(height),
            wave_height_max_m: Some(height * 1.8),
            peak_period_s: Some(12.5),
            mean_period_s: None,
            wave_direction_deg: Some(245.0),
            sea_temp_c: None,
            lat: Some(-42.08),
            lon: Some(145.01),
        }
    }

    fn ingested() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 5, 5, 1, 31, 7).unwrap()
    }

    #[test]
    fn oversized_messages_and_site_ids_are_refused() {
        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        let error = Event::<WaveObservation>::decode(&huge).unwrap_err();
        assert_eq!(error.reason(), "too_large");
        let mut long_site = wave(1.0);
        long_site.site = "x".repeat(crate::observation::MAX_SITE_LEN + 1);
        assert!(long_site.validate().is_err());
        let mut control = wave(1.0);
        control.site = "tathra\n".into();
        assert!(control.validate().is_err());
        // The largest valid event stays far below the limit.
        let mut biggest = wave(1.0);
        biggest.site = "x".repeat(crate::observation::MAX_SITE_LEN);
        let encoded = Event::new("s".repeat(64), biggest, ingested()).encode();
        assert!(
            encoded.len() < MAX_EVENT_BYTES / 8,
            "{} bytes",
            encoded.len()
        );
    }

    #[test]
    fn wire_format_has_design_field_names_and_nulls() {
        let event = Event::new("imos", wave(2.5), ingested());
        let json: serde_json::Value = serde_json::from_slice(&event.encode()).unwrap();
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["kind"], "wave");
        assert_eq!(json["site"], "Cape Sorell");
        assert_eq!(json["observed_at"], "2025-05-05T01:30:00Z");
        assert_eq!(json["wave_height_m"], 2.5);
        assert_eq!(json["mean_period_s"], serde_json::Value::Null);
        assert_eq!(json["event_id"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn id_ignores_ingest_time_and_json_field_order() {
        let first = Event::new("imos", wave(2.5), ingested());
        let later = Event::new("imos", wave(2.5), Utc::now());
        assert_eq!(first.event_id, later.event_id);

        let reordered = r#"{"lon":145.01,"lat":-42.08,"sea_temp_c":null,"wave_direction_deg":245.0,
            "mean_period_s":null,"peak_period_s":12.5,"wave_height_max_m":4.5,"wave_height_m":2.5,
            "observed_at":"2025-05-05T11:30:00+10:00","site":"Cape Sorell","ingested_at":"2030-01-01T00:00:00Z",
            "source":"imos","event_id":"whatever","kind":"wave","schema_version":1}"#;
        let decoded = Event::<WaveObservation>::decode(reordered.as_bytes()).unwrap();
        assert_eq!(event_id("imos", &decoded.observation), first.event_id);
    }

    #[test]
    fn id_is_stable_across_builds() {
        // A fixed vector: if this changes, every deployed dedupe window and table breaks.
        let event = Event::new("imos", wave(2.5), ingested());
        assert_eq!(event.event_id.as_str(), "182a85202bdc364c59a62940098876ca");
    }

    #[test]
    fn changed_value_source_or_time_changes_the_id() {
        let base = event_id("imos", &wave(2.5));
        assert_ne!(base, event_id("imos", &wave(2.6)));
        assert_ne!(base, event_id("pi-buoy", &wave(2.5)));
        let mut later = wave(2.5);
        later.observed_at += chrono::Duration::seconds(1);
        assert_ne!(base, event_id("imos", &later));
        let mut missing = wave(2.5);
        missing.sea_temp_c = Some(0.0);
        assert_ne!(base, event_id("imos", &missing), "null and 0 must differ");
    }

    #[test]
    fn rejections_name_the_reason() {
        let check = |bytes: &[u8], reason: &str| {
            let error = Event::<WaveObservation>::decode(bytes).unwrap_err();
            assert_eq!(error.reason(), reason, "{error}");
        };
        check(b"{not json", "malformed_json");
        check(
            br#"{"schema_version":9,"kind":"wave"}"#,
            "unsupported_schema_version",
        );
        let mut future = serde_json::to_value(Event::new("imos", wave(1.0), ingested())).unwrap();
        future["schema_version"] = 2.into();
        check(
            &serde_json::to_vec(&future).unwrap(),
            "unsupported_schema_version",
        );
        check(
            &Event::new("imos", wave(45.0), ingested()).encode(),
            "out_of_range",
        );
        let carbon = CarbonIntensity {
            zone: "BE".into(),
            observed_at: ingested(),
            carbon_intensity_g_per_kwh: 150.0,
            is_estimated: Some(false),
        };
        let mut wrong = serde_json::to_value(Event::new("em", carbon, ingested())).unwrap();
        wrong["kind"] = "wave".into();
        check(&serde_json::to_vec(&wrong).unwrap(), "malformed_json");
    }

    #[test]
    fn out_of_range_message_names_field_value_and_range() {
        let error = wave(45.0).validate().unwrap_err();
        assert_eq!(error.to_string(), "wave_height_m = 45 is outside 0..=30 m");
    }

    prop_compose! {
        fn any_weather()(
            site in "[A-Za-z0-9][A-Za-z0-9 ]{0,11}",
            seconds in 0_i64..4_000_000_000,
            wind in proptest::option::of(0.0_f64..100.0),
            temp in proptest::option::of(-40.0_f64..50.0),
            pressure in proptest::option::of(900.0_f64..1080.0),
            humidity in proptest::option::of(0.0_f64..100.0),
        ) -> WeatherObservation {
            WeatherObservation {
                site,
                observed_at: Utc.timestamp_opt(seconds, 0).unwrap(),
                wind_speed_ms: wind,
                wind_gust_ms: wind.map(|w| w * 1.3),
                wind_direction_deg: Some(90.0),
                air_temp_c: temp,
                pressure_hpa: pressure,
                rel_humidity_pct: humidity,
                swell_height_m: None,
                swell_period_s: None,
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip_keeps_every_value(observation in any_weather()) {
            let event = Event::new("bom", observation, ingested());
            let decoded = Event::<WeatherObservation>::decode(&event.encode()).unwrap();
            prop_assert_eq!(&decoded, &event);
            prop_assert_eq!(event_id("bom", &decoded.observation), event.event_id);
        }

        #[test]
        fn any_changed_measurement_changes_the_id(observation in any_weather(), delta in 0.001_f64..5.0) {
            let mut changed = observation.clone();
            changed.air_temp_c = Some(observation.air_temp_c.unwrap_or(0.0) + delta);
            prop_assert_ne!(event_id("bom", &observation), event_id("bom", &changed));
        }
    }
}
