//! Invariants the fuzz targets check on whatever a decoder accepts, beyond "it did not panic".
//!
//! Each check panics with a message naming the broken rule, so libFuzzer reports it as a crash
//! and keeps the input.

use std::collections::HashSet;

use feeds::Parsed;
use schema::{CarbonIntensity, Observation, WaveObservation, WeatherObservation};
use serde_json::Value;

/// The measurement values of an observation, so they can be checked for NaN and infinity.
pub trait Numbers: Observation {
    /// Every numeric field, `None` where the source gave no value.
    fn numbers(&self) -> Vec<Option<f64>>;
}

impl Numbers for WaveObservation {
    fn numbers(&self) -> Vec<Option<f64>> {
        vec![
            self.wave_height_m,
            self.wave_height_max_m,
            self.peak_period_s,
            self.mean_period_s,
            self.wave_direction_deg,
            self.sea_temp_c,
            self.lat,
            self.lon,
        ]
    }
}

impl Numbers for WeatherObservation {
    fn numbers(&self) -> Vec<Option<f64>> {
        vec![
            self.wind_speed_ms,
            self.wind_gust_ms,
            self.wind_direction_deg,
            self.air_temp_c,
            self.pressure_hpa,
            self.rel_humidity_pct,
            self.swell_height_m,
            self.swell_period_s,
        ]
    }
}

impl Numbers for CarbonIntensity {
    fn numbers(&self) -> Vec<Option<f64>> {
        vec![Some(self.carbon_intensity_g_per_kwh)]
    }
}

/// One accepted observation: it validates and holds no NaN or infinite value.
pub fn check_observation<O: Numbers>(observation: &O) {
    if let Err(error) = observation.validate() {
        panic!("an accepted observation does not validate: {error}: {observation:?}");
    }
    for value in observation.numbers().into_iter().flatten() {
        assert!(
            value.is_finite(),
            "an accepted observation holds {value}: {observation:?}"
        );
    }
}

/// A parser's whole result: every observation is valid, no two share (site, `observed_at`),
/// the source is one of `sources`, every rejection says where and why, and, when `records` is
/// known, every record is accounted for exactly once (kept, rejected or a duplicate).
pub fn check_parsed<O: Numbers>(parsed: &Parsed<O>, sources: &[&str], records: Option<usize>) {
    assert!(
        sources.contains(&parsed.source),
        "unexpected source {:?}",
        parsed.source
    );
    let mut keys = HashSet::new();
    for observation in &parsed.observations {
        check_observation(observation);
        assert!(
            keys.insert((observation.site().to_owned(), observation.observed_at())),
            "two observations share (site, observed_at): {observation:?}"
        );
    }
    for rejected in &parsed.rejected {
        assert!(
            !rejected.location.is_empty() && !rejected.reason.is_empty(),
            "a rejection without location or reason: {rejected:?}"
        );
    }
    if let Some(records) = records {
        let accounted = parsed.observations.len() + parsed.rejected.len() + parsed.duplicates;
        assert_eq!(
            accounted,
            records,
            "{records} records but {} kept + {} rejected + {} duplicates",
            parsed.observations.len(),
            parsed.rejected.len(),
            parsed.duplicates
        );
    }
}

/// The input as JSON, when it is JSON (to count its records independently of the parser).
pub fn json(data: &[u8]) -> Option<Value> {
    serde_json::from_slice(data).ok()
}

/// Length of the array at `member` of the root object, if there is one.
pub fn array_len(document: &Value, member: &str) -> Option<usize> {
    document.get(member).and_then(Value::as_array).map(Vec::len)
}
