//! The envelope every published event has, and its JSON encoding.
//!
//! On the wire an event is one flat JSON object: the envelope fields (`schema_version`, `kind`,
//! `event_id`, `source`, `ingested_at`) next to the observation's own fields, in that order.
//!
//! The serde impls are written by hand rather than derived with `#[serde(flatten)]`, which
//! buffered every member before the observation could read its own (see [`crate::members`]).
//! They accept and refuse exactly what the derived impls did: unknown members are read and
//! ignored, a missing required member or a second occurrence of one is an error, and an absent
//! or `null` optional measurement is `None`.
//!
//! [`Event::decode`] first tries [`crate::encoded_layout`], a fast path for exactly the bytes
//! [`Event::encode`] writes; the serde impls here still define what is accepted, and decode
//! everything the fast path gives up on.

use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use serde::de::{self, DeserializeSeed, MapAccess};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::encoded_layout::{
    self, EVENT_ID_KEY, INGESTED_AT_KEY, KIND_KEY, SCHEMA_VERSION_KEY, SOURCE_KEY,
};
use crate::id::{ContentHasher, EventId};
use crate::kind::Kind;
use crate::members::{write_json_value, MemberValue, SkipValue, Timestamp, TimestampSeed};
use crate::observation::{Observation, ValidationError};
use crate::SCHEMA_VERSION;

/// Largest message accepted as an event. Valid events are far smaller (site ids are bounded
/// by [`crate::observation::MAX_SITE_LEN`]); anything bigger is refused before parsing.
pub const MAX_EVENT_BYTES: usize = 16 * 1024;

/// A normalized observation with its envelope.
#[derive(Debug, Clone, PartialEq)]
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
    /// The measurements; on the wire its members follow the envelope's in the same object.
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
            DecodeError::Invalid(error) => error.reason(),
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

    /// Encodes the event as one JSON object: the same bytes as `serde_json::to_vec(self)`.
    ///
    /// The member names are written as the literal bytes they escape to, which saves serde_json
    /// scanning each of them for characters to escape (a third of the encoding time); values
    /// still go through serde_json. The tests check the bytes against `serde_json::to_vec`.
    /// [`Event::decode`]'s fast path reads this layout ([`crate::encoded_layout`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut json = Vec::with_capacity(ENCODED_CAPACITY);
        json.extend_from_slice(SCHEMA_VERSION_KEY);
        write_json_value(&mut json, &self.schema_version);
        json.extend_from_slice(KIND_KEY);
        write_json_value(&mut json, &self.kind);
        json.extend_from_slice(EVENT_ID_KEY);
        write_json_value(&mut json, &self.event_id);
        json.extend_from_slice(SOURCE_KEY);
        write_json_value(&mut json, &self.source);
        json.extend_from_slice(INGESTED_AT_KEY);
        self.ingested_at.write_json(&mut json);
        self.observation.write_members_json(&mut json);
        json.extend_from_slice(encoded_layout::END);
        json
    }

    /// Decodes and validates an event read from `O::KIND`'s stream.
    ///
    /// Bytes laid out exactly as [`Event::encode`] writes them (nearly every message) are read
    /// by a fast path without serde ([`crate::encoded_layout`]); everything else, including
    /// whatever that path is unsure of, goes to the serde decoder, which defines what is
    /// accepted. Either way the event gets the same checks, and the result, event or error, is
    /// the one the serde decoder alone gives.
    ///
    /// # Errors
    ///
    /// Returns a [`DecodeError`] naming why the bytes are not a valid event of this kind.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() <= MAX_EVENT_BYTES {
            if let Some(event) = encoded_layout::read_event::<O>(bytes) {
                return event.checked();
            }
        }
        Self::decode_with_serde(bytes)
    }

    /// [`Event::decode`] without the fast path: serde_json and the typed visitors, whatever
    /// the bytes.
    pub(crate) fn decode_with_serde(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: MAX_EVENT_BYTES,
            });
        }
        let event: Event<O> = match read_json(bytes) {
            Ok(event) => event,
            Err(error) => return Err(classify_undecodable(bytes, error)),
        };
        event.checked()
    }

    /// The checks after parsing: schema version, kind, physical ranges.
    fn checked(self) -> Result<Self, DecodeError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedSchemaVersion {
                found: self.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        if self.kind != O::KIND {
            return Err(DecodeError::WrongKind {
                expected: O::KIND,
                found: self.kind,
            });
        }
        crate::observation::require_storable_time("ingested_at", self.ingested_at)
            .map_err(DecodeError::Invalid)?;
        self.observation.validate().map_err(DecodeError::Invalid)?;
        Ok(self)
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

/// Reads JSON from bytes as `serde_json::from_slice` does, with the same result and the same
/// error for every input, but faster for valid UTF-8.
///
/// `from_slice` checks each string's UTF-8 on its own, a fifth of an event's decoding time;
/// checking the whole input at once and then reading it as `&str` (where serde_json skips the
/// per-string check) is cheaper. JSON outside strings is ASCII, so any input `from_slice`
/// accepts is valid UTF-8; input that is not goes to `from_slice` for its exact error.
///
/// # Errors
///
/// serde_json's error, as `from_slice` reports it.
pub fn read_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// Room reserved for an encoded event; typical events are 300 to 400 bytes.
const ENCODED_CAPACITY: usize = 512;

/// The envelope's members, in wire order.
const ENVELOPE_MEMBERS: [&str; 5] = [
    "schema_version",
    "kind",
    "event_id",
    "source",
    "ingested_at",
];

impl<O: Observation> Serialize for Event<O> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object =
            serializer.serialize_struct("Event", ENVELOPE_MEMBERS.len() + O::MEMBER_NAMES.len())?;
        object.serialize_field("schema_version", &self.schema_version)?;
        object.serialize_field("kind", &self.kind)?;
        object.serialize_field("event_id", &self.event_id)?;
        object.serialize_field("source", &self.source)?;
        object.serialize_field("ingested_at", &Timestamp(&self.ingested_at))?;
        self.observation.serialize_members(&mut object)?;
        object.end()
    }
}

impl<'de, O: Observation> Deserialize<'de> for Event<O> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A map, never a sequence: the derived impl with a flattened field refused arrays too.
        deserializer.deserialize_map(EventVisitor(PhantomData))
    }
}

/// What a member name of an event object refers to.
enum EventMember {
    SchemaVersion,
    Kind,
    EventId,
    Source,
    IngestedAt,
    /// The observation's member at this position of `O::MEMBER_NAMES`.
    Observation(usize),
    /// Not part of this version of the contract: its value is read and ignored.
    Unknown,
}

impl EventMember {
    fn classify<O: Observation>(name: &str) -> EventMember {
        match name {
            "schema_version" => EventMember::SchemaVersion,
            "kind" => EventMember::Kind,
            "event_id" => EventMember::EventId,
            "source" => EventMember::Source,
            "ingested_at" => EventMember::IngestedAt,
            _ => match O::member_position(name) {
                Some(position) => EventMember::Observation(position),
                None => EventMember::Unknown,
            },
        }
    }
}

/// Reads a member name of an `O` event object into an [`EventMember`], without allocating.
struct EventMemberSeed<O>(PhantomData<O>);

impl<'de, O: Observation> DeserializeSeed<'de> for EventMemberSeed<O> {
    type Value = EventMember;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<EventMember, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<O: Observation> de::Visitor<'_> for EventMemberSeed<O> {
    type Value = EventMember;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("field identifier")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<EventMember, E> {
        Ok(EventMember::classify::<O>(name))
    }

    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<EventMember, E> {
        Ok(match std::str::from_utf8(name) {
            Ok(name) => EventMember::classify::<O>(name),
            Err(_) => EventMember::Unknown,
        })
    }
}

struct EventVisitor<O>(PhantomData<O>);

impl<'de, O: Observation> de::Visitor<'de> for EventVisitor<O> {
    type Value = Event<O>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The derived impl's wording, so error messages stay the same.
        formatter.write_str("struct Event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event<O>, A::Error> {
        let mut schema_version: Option<u16> = None;
        let mut kind: Option<Kind> = None;
        let mut event_id: Option<EventId> = None;
        let mut source: Option<String> = None;
        let mut ingested_at: Option<DateTime<Utc>> = None;
        let mut observation = O::Partial::default();
        while let Some(member) = map.next_key_seed(EventMemberSeed::<O>(PhantomData))? {
            match member {
                EventMember::SchemaVersion => {
                    read_envelope_member(&mut schema_version, "schema_version", &mut map)?;
                }
                EventMember::Kind => read_envelope_member(&mut kind, "kind", &mut map)?,
                EventMember::EventId => read_envelope_member(&mut event_id, "event_id", &mut map)?,
                EventMember::Source => read_envelope_member(&mut source, "source", &mut map)?,
                EventMember::IngestedAt => {
                    if ingested_at.is_some() {
                        return Err(de::Error::duplicate_field("ingested_at"));
                    }
                    ingested_at = Some(map.next_value_seed(TimestampSeed)?);
                }
                EventMember::Observation(position) => {
                    O::read_member(&mut observation, position, &mut map)?;
                }
                EventMember::Unknown => {
                    map.next_value::<SkipValue>()?;
                }
            }
        }
        // Envelope first, then the observation, each in declaration order: the derived impl's
        // order, so the same member is named when several are missing.
        Ok(Event {
            schema_version: schema_version
                .ok_or_else(|| de::Error::missing_field("schema_version"))?,
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            event_id: event_id.ok_or_else(|| de::Error::missing_field("event_id"))?,
            source: source.ok_or_else(|| de::Error::missing_field("source"))?,
            ingested_at: ingested_at.ok_or_else(|| de::Error::missing_field("ingested_at"))?,
            observation: O::finish(observation)?,
        })
    }
}

/// Reads an envelope member's value into `slot`, refusing a second occurrence.
fn read_envelope_member<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    crate::members::read_once(slot, name, map, |map| map.next_value())
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
pub(crate) mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::{CarbonIntensity, WaveObservation, WeatherObservation};

    pub(crate) fn wave(height: f64) -> WaveObservation {
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
    fn times_a_datetime_column_cannot_hold_are_refused_with_their_reason() {
        let at = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        let with_time = |observed_at: DateTime<Utc>| WaveObservation {
            observed_at,
            ..wave(1.0)
        };
        for (time, reason) in [
            ("1969-12-31T23:59:59Z", "time_out_of_range"),
            ("2106-02-07T06:28:16Z", "time_out_of_range"),
            ("2024-03-06T19:00:00.250Z", "sub_second_time"),
        ] {
            let event = Event::new("pi-buoy", with_time(at(time)), ingested());
            let error = Event::<WaveObservation>::decode(&event.encode()).unwrap_err();
            assert_eq!(error.reason(), reason, "{time}: {error}");
            let validation = with_time(at(time)).validate().unwrap_err();
            assert!(
                validation.to_string().contains("observed_at"),
                "{validation}"
            );
        }
        for edge in ["1970-01-01T00:00:00Z", "2106-02-07T06:28:15Z"] {
            assert_eq!(with_time(at(edge)).validate(), Ok(()), "{edge}");
        }
        // The envelope's time too: a Pi running the bridge with an unset clock.
        let unset_clock = Event::new("pi-buoy", wave(1.0), at("1969-12-31T00:00:00Z"));
        let error = Event::<WaveObservation>::decode(&unset_clock.encode()).unwrap_err();
        assert_eq!(error.reason(), "time_out_of_range", "{error}");
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

/// The hand-written serde impls against the derived ones they replaced (`#[serde(flatten)]`),
/// kept here as the reference: same bytes out, same events and the same rejection reasons in.
#[cfg(test)]
pub(crate) mod flatten_equivalence_tests {
    use chrono::TimeZone;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    use super::*;
    use crate::{CarbonIntensity, WaveObservation, WeatherObservation};

    /// The envelope as it was derived before: the reference for encoding and decoding.
    #[derive(Serialize, Deserialize)]
    #[serde(bound = "O: Observation")]
    struct FlattenedEvent<O> {
        schema_version: u16,
        kind: Kind,
        event_id: EventId,
        source: String,
        ingested_at: DateTime<Utc>,
        #[serde(flatten)]
        observation: O,
    }

    /// `Event::decode` as it was, on the derived impls.
    fn decode_with_flatten<O: Observation>(bytes: &[u8]) -> Result<Event<O>, DecodeError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: MAX_EVENT_BYTES,
            });
        }
        let flattened: FlattenedEvent<O> = match serde_json::from_slice(bytes) {
            Ok(event) => event,
            Err(error) => return Err(classify_undecodable(bytes, error)),
        };
        let event = Event {
            schema_version: flattened.schema_version,
            kind: flattened.kind,
            event_id: flattened.event_id,
            source: flattened.source,
            ingested_at: flattened.ingested_at,
            observation: flattened.observation,
        };
        event.checked()
    }

    fn encode_with_flatten<O: Observation>(event: &Event<O>) -> Vec<u8> {
        serde_json::to_vec(&FlattenedEvent {
            schema_version: event.schema_version,
            kind: event.kind,
            event_id: event.event_id.clone(),
            source: event.source.clone(),
            ingested_at: event.ingested_at,
            observation: event.observation.clone(),
        })
        .unwrap()
    }

    /// Decodes `bytes` as an `O` event both ways and checks they agree.
    fn assert_same_decoding<O: Observation>(bytes: &[u8]) -> Result<Event<O>, DecodeError> {
        let decoded = Event::<O>::decode(bytes);
        let reference = decode_with_flatten::<O>(bytes);
        let text = String::from_utf8_lossy(bytes);
        match (&decoded, &reference) {
            (Ok(event), Ok(expected)) => assert_eq!(event, expected, "{text}"),
            (Err(error), Err(expected)) => {
                assert_eq!(error.reason(), expected.reason(), "{text}: {error:?}")
            }
            _ => panic!("{text}: decoded {decoded:?}, reference {reference:?}"),
        }
        decoded
    }

    fn assert_same_decoding_for_every_kind(bytes: &[u8]) {
        let _ = assert_same_decoding::<WaveObservation>(bytes);
        let _ = assert_same_decoding::<WeatherObservation>(bytes);
        let _ = assert_same_decoding::<CarbonIntensity>(bytes);
    }

    fn wave_event() -> Event<WaveObservation> {
        let observation = super::tests::wave(2.5);
        let ingested_at = Utc.with_ymd_and_hms(2025, 5, 5, 1, 31, 7).unwrap()
            + chrono::Duration::nanoseconds(123_456_789);
        Event::new("imos", observation, ingested_at)
    }

    /// `wave_event()` encoded, with `edit` applied to its members.
    fn edited_wave_event(
        edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
    ) -> Vec<u8> {
        let mut members = match serde_json::to_value(wave_event()).unwrap() {
            serde_json::Value::Object(members) => members,
            other => panic!("an event encodes as an object, not {other}"),
        };
        edit(&mut members);
        serde_json::to_vec(&members).unwrap()
    }

    #[test]
    fn members_are_written_in_the_derived_order() {
        let event = wave_event();
        let expected = format!(
            concat!(
                r#"{{"schema_version":1,"kind":"wave","event_id":"{}","source":"imos","#,
                r#""ingested_at":"2025-05-05T01:31:07.123456789Z","site":"Cape Sorell","#,
                r#""observed_at":"2025-05-05T01:30:00Z","wave_height_m":2.5,"wave_height_max_m":4.5,"#,
                r#""peak_period_s":12.5,"mean_period_s":null,"wave_direction_deg":245.0,"#,
                r#""sea_temp_c":null,"lat":-42.08,"lon":145.01}}"#
            ),
            event.event_id
        );
        assert_eq!(String::from_utf8(event.encode()).unwrap(), expected);
        assert_eq!(wave_event().encode(), encode_with_flatten(&wave_event()));
    }

    #[test]
    fn offsets_and_fractional_seconds_read_as_utc() {
        // observed_at is a whole second (a fraction is refused, see
        // times_a_datetime_column_cannot_hold_are_refused_with_their_reason); ingested_at may
        // carry one.
        let bytes = edited_wave_event(|members| {
            members.insert("observed_at".into(), "2025-05-05T11:30:00+10:00".into());
            members.insert("ingested_at".into(), "2025-05-05T01:31:07.5Z".into());
        });
        let event = assert_same_decoding::<WaveObservation>(&bytes).unwrap();
        let observed = Utc.with_ymd_and_hms(2025, 5, 5, 1, 30, 0).unwrap();
        assert_eq!(event.observation.observed_at, observed);
        let encoded = String::from_utf8(event.encode()).unwrap();
        assert!(
            encoded.contains(r#""observed_at":"2025-05-05T01:30:00"#),
            "{encoded}"
        );
        assert!(
            encoded.contains(r#""ingested_at":"2025-05-05T01:31:07.500Z""#),
            "{encoded}"
        );
    }

    #[test]
    fn unknown_members_are_ignored_but_still_read_in_full() {
        let bytes = edited_wave_event(|members| {
            members.insert(
                "firmware".into(),
                serde_json::json!({"version": [1, 2, {"x": null}]}),
            );
            members.insert("zone".into(), "BE".into());
        });
        assert_eq!(
            assert_same_decoding::<WaveObservation>(&bytes).unwrap(),
            wave_event()
        );
        // Values the reference refused while buffering them stay refused.
        let encoded = String::from_utf8(wave_event().encode()).unwrap();
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for unknown in ["1e400", deep.as_str(), r#""\ud800""#] {
            let bytes = encoded.replacen('{', &format!(r#"{{"extra":{unknown},"#), 1);
            let error = assert_same_decoding::<WaveObservation>(bytes.as_bytes()).unwrap_err();
            assert_eq!(error.reason(), "malformed_json", "{unknown}");
        }
    }

    #[test]
    fn absent_and_null_measurements_are_none_and_required_members_are_required() {
        let bytes = edited_wave_event(|members| {
            members.remove("wave_height_m");
            members.insert("lat".into(), serde_json::Value::Null);
        });
        let event = assert_same_decoding::<WaveObservation>(&bytes).unwrap();
        assert_eq!(event.observation.wave_height_m, None);
        assert_eq!(event.observation.lat, None);
        for required in [
            "schema_version",
            "kind",
            "event_id",
            "source",
            "ingested_at",
            "site",
            "observed_at",
        ] {
            let bytes = edited_wave_event(|members| {
                members.remove(required);
            });
            let error = assert_same_decoding::<WaveObservation>(&bytes).unwrap_err();
            assert_eq!(error.reason(), "malformed_json", "{required}");
            assert!(
                error_chain(&error).contains(&format!("missing field `{required}`")),
                "{error:?}"
            );
        }
    }

    #[test]
    fn other_shapes_are_refused_as_before() {
        let encoded = String::from_utf8(wave_event().encode()).unwrap();
        let duplicated = encoded.replacen('{', r#"{"site":"twice","#, 1);
        let cases = [
            format!("[{encoded}]"),
            r#"[1,"wave","id","imos","2025-05-05T01:31:07Z","site","2025-05-05T01:30:00Z"]"#
                .to_owned(),
            duplicated,
            encoded.replacen('{', r#"{"kind":"wave","#, 1),
            encoded.replace(r#""wave_height_m":2.5"#, r#""wave_height_m":"2.5""#),
            encoded.replace(r#""kind":"wave""#, r#""kind":"weather""#),
            encoded.replace(r#""schema_version":1"#, r#""schema_version":2"#),
            encoded.replace("2025-05-05T01:30:00Z", "2025-05-05 01:30:00"),
            "null".to_owned(),
            "{}".to_owned(),
        ];
        for case in cases {
            assert_same_decoding_for_every_kind(case.as_bytes());
        }
    }

    /// The error's message followed by each of its sources'.
    pub(crate) fn error_chain(error: &DecodeError) -> String {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    prop_compose! {
        pub(crate) fn any_time()(
            seconds in -62_000_000_000_i64..253_000_000_000,
            nanos in prop_oneof![Just(0_u32), 0_u32..1_000_000_000, (0_u32..1000).prop_map(|n| n * 1_000_000)],
        ) -> DateTime<Utc> {
            Utc.timestamp_opt(seconds, nanos).unwrap()
        }
    }

    prop_compose! {
        pub(crate) fn any_measurement()(value in proptest::option::of(prop_oneof![-1e6_f64..1e6, Just(-0.0), Just(0.0)])) -> Option<f64> {
            value
        }
    }

    /// A wave observation whose eight measurements, in declaration order, are `values`.
    pub(crate) fn wave_with_measurements(
        site: String,
        observed_at: DateTime<Utc>,
        values: &[Option<f64>],
    ) -> WaveObservation {
        let value = |index: usize| values.get(index).copied().flatten();
        WaveObservation {
            site,
            observed_at,
            wave_height_m: value(0),
            wave_height_max_m: value(1),
            peak_period_s: value(2),
            mean_period_s: value(3),
            wave_direction_deg: value(4),
            sea_temp_c: value(5),
            lat: value(6),
            lon: value(7),
        }
    }

    prop_compose! {
        pub(crate) fn any_wave()(
            site in "\\PC{1,12}",
            observed_at in any_time(),
            values in proptest::collection::vec(any_measurement(), 8),
        ) -> WaveObservation {
            wave_with_measurements(site, observed_at, &values)
        }
    }

    prop_compose! {
        pub(crate) fn any_weather()(
            site in "\\PC{1,12}",
            observed_at in any_time(),
            values in proptest::collection::vec(any_measurement(), 8),
        ) -> WeatherObservation {
            WeatherObservation {
                site,
                observed_at,
                wind_speed_ms: values[0],
                wind_gust_ms: values[1],
                wind_direction_deg: values[2],
                air_temp_c: values[3],
                pressure_hpa: values[4],
                rel_humidity_pct: values[5],
                swell_height_m: values[6],
                swell_period_s: values[7],
            }
        }
    }

    prop_compose! {
        pub(crate) fn any_carbon()(
            zone in "\\PC{1,12}",
            observed_at in any_time(),
            intensity in -10.0_f64..4000.0,
            is_estimated in proptest::option::of(any::<bool>()),
        ) -> CarbonIntensity {
            CarbonIntensity { zone, observed_at, carbon_intensity_g_per_kwh: intensity, is_estimated }
        }
    }

    /// Member names of every kind, plus some no kind has.
    const NAMES: &[&str] = &[
        "schema_version",
        "kind",
        "event_id",
        "source",
        "ingested_at",
        "site",
        "zone",
        "observed_at",
        "wave_height_m",
        "lat",
        "lon",
        "wind_speed_ms",
        "pressure_hpa",
        "carbon_intensity_g_per_kwh",
        "is_estimated",
        "firmware",
        "Site",
        "",
    ];

    /// Values of every type, some valid for some member.
    const VALUES: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1",
        "2",
        "-1.5",
        "45",
        "65536",
        "1e400",
        "18446744073709551616",
        r#""1.5""#,
        r#""""#,
        r#""wave""#,
        r#""weather""#,
        r#""carbon""#,
        r#""2025-05-05T01:30:00Z""#,
        r#""2025-05-05T11:30:00+10:00""#,
        r#""2025-05-05T01:30:00.123456789Z""#,
        r#""2016-12-31T23:59:60Z""#,
        r#""2025-02-29T00:00:00Z""#,
        r#""2025-05-05 01:30:00Z""#,
        r#""2025-05-05T01:30:00""#,
        r#""\ud800""#,
        r#""p\u0069""#,
        "[]",
        "[1,[2]]",
        "{}",
        r#"{"a":{"b":[null]}}"#,
    ];

    #[derive(Debug, Clone)]
    enum Edit {
        Remove(Index),
        Replace(Index, &'static str),
        Insert(Index, &'static str, &'static str),
    }

    fn any_edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            any::<Index>().prop_map(Edit::Remove),
            (any::<Index>(), select(VALUES)).prop_map(|(at, value)| Edit::Replace(at, value)),
            (any::<Index>(), select(NAMES), select(VALUES))
                .prop_map(|(at, name, value)| Edit::Insert(at, name, value)),
        ]
    }

    /// `bytes` (an encoded event) with `edits` applied to its members, as JSON text.
    fn edit_members(bytes: &[u8], edits: &[Edit]) -> String {
        let members = match serde_json::from_slice::<serde_json::Value>(bytes).unwrap() {
            serde_json::Value::Object(members) => members,
            other => panic!("an event encodes as an object, not {other}"),
        };
        let mut members: Vec<(String, String)> = members
            .into_iter()
            .map(|(name, value)| (name, value.to_string()))
            .collect();
        for edit in edits {
            match edit {
                Edit::Remove(at) if !members.is_empty() => {
                    members.remove(at.index(members.len()));
                }
                Edit::Replace(at, value) if !members.is_empty() => {
                    let at = at.index(members.len());
                    members[at].1 = (*value).to_owned();
                }
                Edit::Insert(at, name, value) => {
                    let at = at.index(members.len() + 1);
                    members.insert(at, ((*name).to_owned(), (*value).to_owned()));
                }
                _ => {}
            }
        }
        let members: Vec<String> = members
            .iter()
            .map(|(name, value)| format!("{}:{value}", serde_json::Value::from(name.as_str())))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    proptest! {
        #[test]
        fn encoding_is_byte_identical(
            wave in any_wave(),
            weather in any_weather(),
            carbon in any_carbon(),
            ingested_at in any_time(),
        ) {
            let wave = Event::new("imos", wave, ingested_at);
            prop_assert_eq!(wave.encode(), encode_with_flatten(&wave));
            prop_assert_eq!(wave.encode(), serde_json::to_vec(&wave).unwrap());
            let weather = Event::new("bom", weather, ingested_at);
            prop_assert_eq!(weather.encode(), encode_with_flatten(&weather));
            let carbon = Event::new("em", carbon, ingested_at);
            prop_assert_eq!(carbon.encode(), encode_with_flatten(&carbon));
        }

        #[test]
        fn every_kind_round_trips(
            wave in any_wave(),
            weather in any_weather(),
            carbon in any_carbon(),
            ingested_at in any_time(),
        ) {
            // Read without validation too, so out-of-range values are compared as well.
            let wave = Event::new("imos", wave, ingested_at);
            prop_assert_eq!(serde_json::from_slice::<Event<WaveObservation>>(&wave.encode()).unwrap(), wave.clone());
            let _ = assert_same_decoding::<WaveObservation>(&wave.encode());
            let weather = Event::new("bom", weather, ingested_at);
            prop_assert_eq!(serde_json::from_slice::<Event<WeatherObservation>>(&weather.encode()).unwrap(), weather.clone());
            let _ = assert_same_decoding::<WeatherObservation>(&weather.encode());
            let carbon = Event::new("em", carbon, ingested_at);
            prop_assert_eq!(serde_json::from_slice::<Event<CarbonIntensity>>(&carbon.encode()).unwrap(), carbon.clone());
            let _ = assert_same_decoding::<CarbonIntensity>(&carbon.encode());
        }

        #[test]
        fn edited_events_decode_as_before(
            wave in any_wave(),
            weather in any_weather(),
            carbon in any_carbon(),
            edits in proptest::collection::vec(any_edit(), 0..4),
        ) {
            for encoded in [
                Event::new("imos", wave, ingested_at_fixed()).encode(),
                Event::new("bom", weather, ingested_at_fixed()).encode(),
                Event::new("em", carbon, ingested_at_fixed()).encode(),
            ] {
                assert_same_decoding_for_every_kind(edit_members(&encoded, &edits).as_bytes());
            }
        }
    }

    fn ingested_at_fixed() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 5, 5, 1, 31, 7).unwrap()
    }
}
