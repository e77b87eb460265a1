//! Deterministic synthetic observations.
//!
//! Event `index` of a kind is always the same observation for the same seed: site
//! `sim-<index % sites>` at a time that grows with `index / sites`, so every index is a
//! distinct natural key. Time steps of ten minutes spread a large run over several months,
//! so batches span several table partitions, as after a long outage.

use chrono::{DateTime, Duration, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use schema::{CarbonIntensity, Event, Kind, WaveObservation, WeatherObservation};

/// Source name of simulated events.
pub const SOURCE: &str = "edge-sim";

/// Generates events of one kind.
#[derive(Debug, Clone)]
pub struct Synthesizer {
    /// Kind to generate.
    pub kind: Kind,
    /// Number of distinct sites (zones) the events rotate through.
    pub sites: u64,
    /// Seed of the measurement values.
    pub seed: u64,
}

impl Synthesizer {
    /// The encoded event number `index`, with its id and subject.
    pub fn event(&self, index: u64, ingested_at: DateTime<Utc>) -> SyntheticEvent {
        let site = format!("sim-{:03}", index % self.sites);
        let step = i64::try_from(index / self.sites).unwrap_or(i64::MAX / 1_000);
        let observed_at = base_time() + Duration::minutes(10 * step);
        let mut rng = StdRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match self.kind {
            Kind::Wave => encode(Event::new(
                SOURCE,
                WaveObservation {
                    site,
                    observed_at,
                    wave_height_m: Some(round(rng.random_range(0.3..6.0))),
                    wave_height_max_m: Some(round(rng.random_range(6.0..11.0))),
                    peak_period_s: Some(round(rng.random_range(6.0..18.0))),
                    mean_period_s: rng
                        .random_bool(0.8)
                        .then(|| round(rng.random_range(4.0..10.0))),
                    wave_direction_deg: Some(round(rng.random_range(0.0..360.0))),
                    sea_temp_c: rng
                        .random_bool(0.7)
                        .then(|| round(rng.random_range(12.0..26.0))),
                    lat: Some(-33.8),
                    lon: Some(151.3),
                },
                ingested_at,
            )),
            Kind::Weather => encode(Event::new(
                SOURCE,
                WeatherObservation {
                    site,
                    observed_at,
                    wind_speed_ms: Some(round(rng.random_range(0.0..20.0))),
                    wind_gust_ms: Some(round(rng.random_range(20.0..35.0))),
                    wind_direction_deg: Some(round(rng.random_range(0.0..360.0))),
                    air_temp_c: Some(round(rng.random_range(5.0..35.0))),
                    pressure_hpa: Some(round(rng.random_range(990.0..1030.0))),
                    rel_humidity_pct: Some(round(rng.random_range(20.0..100.0))),
                    swell_height_m: None,
                    swell_period_s: None,
                },
                ingested_at,
            )),
            Kind::Carbon => encode(Event::new(
                SOURCE,
                CarbonIntensity {
                    zone: site,
                    observed_at,
                    carbon_intensity_g_per_kwh: round(rng.random_range(20.0..700.0)),
                    is_estimated: Some(rng.random_bool(0.5)),
                },
                ingested_at,
            )),
        }
    }

    /// A malformed message; `index` picks which defect it has, in turn: truncated JSON, an
    /// unknown schema version, an out-of-range value.
    pub fn malformed(&self, index: u64, ingested_at: DateTime<Utc>) -> SyntheticEvent {
        let valid = self.event(index, ingested_at);
        let mut json: serde_json::Value = match serde_json::from_slice(&valid.payload) {
            Ok(json) => json,
            Err(_) => serde_json::Value::Null,
        };
        let (defect, payload) = match index % 3 {
            0 => (
                "malformed_json",
                valid.payload[..valid.payload.len() / 2].to_vec(),
            ),
            1 => {
                json["schema_version"] = 99.into();
                ("unsupported_schema_version", json.to_string().into_bytes())
            }
            _ => {
                let field = match self.kind {
                    Kind::Wave => "wave_height_m",
                    Kind::Weather => "wind_speed_ms",
                    Kind::Carbon => "carbon_intensity_g_per_kwh",
                };
                json[field] = 99_999.0.into();
                ("out_of_range", json.to_string().into_bytes())
            }
        };
        SyntheticEvent {
            event_id: format!("malformed-{}-{}-{index}", self.kind, self.seed),
            subject: valid.subject,
            payload: payload.into(),
            defect: Some(defect),
        }
    }
}

/// One encoded message ready to publish.
#[derive(Debug, Clone)]
pub struct SyntheticEvent {
    /// Sent as `Nats-Msg-Id`.
    pub event_id: String,
    /// Subject.
    pub subject: String,
    /// JSON body.
    pub payload: bytes::Bytes,
    /// For malformed messages: the dead-letter reason the sink should give.
    pub defect: Option<&'static str>,
}

fn encode<O: schema::Observation>(event: Event<O>) -> SyntheticEvent {
    SyntheticEvent {
        event_id: event.event_id.to_string(),
        subject: event.subject(),
        payload: event.encode().into(),
        defect: None,
    }
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::UNIX_EPOCH)
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn events_are_distinct_valid_and_repeatable() {
        for kind in Kind::ALL {
            let synthesizer = Synthesizer {
                kind,
                sites: 7,
                seed: 3,
            };
            let now = Utc::now();
            let ids: HashSet<String> = (0..500)
                .map(|index| synthesizer.event(index, now).event_id)
                .collect();
            assert_eq!(ids.len(), 500);
            assert_eq!(
                synthesizer.event(42, now).payload,
                synthesizer.event(42, now).payload
            );
        }
        let wave = Synthesizer {
            kind: Kind::Wave,
            sites: 7,
            seed: 3,
        }
        .event(1, Utc::now());
        Event::<WaveObservation>::decode(&wave.payload).unwrap();
    }

    #[test]
    fn malformed_messages_fail_for_the_stated_reason() {
        let synthesizer = Synthesizer {
            kind: Kind::Weather,
            sites: 2,
            seed: 1,
        };
        for index in 0..3 {
            let message = synthesizer.malformed(index, Utc::now());
            let error = Event::<WeatherObservation>::decode(&message.payload).unwrap_err();
            assert_eq!(Some(error.reason()), message.defect);
        }
    }
}
