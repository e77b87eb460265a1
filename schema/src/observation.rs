//! The measurements each event kind carries, in SI units, with physical-range validation.
//!
//! Every measurement field names its unit. A value the source does not give is `None` (JSON
//! `null`), never 0.

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::id::ContentHasher;
use crate::kind::Kind;
use crate::members::{observation_members, ObservationMembers};

/// A measurement type that can travel in an [`Event`](crate::Event).
///
/// Its members sit next to the envelope's in the event's JSON object
/// ([`ObservationMembers`]); the structs below get that from the `observation_members!` macro.
pub trait Observation:
    Serialize + DeserializeOwned + ObservationMembers + Clone + Debug + PartialEq + Send + Sync
{
    /// The kind every event carrying this observation has.
    const KIND: Kind;

    /// The site or zone id: part of the natural key and of the subject.
    fn site(&self) -> &str;

    /// When the source observed it (UTC): part of the natural key.
    fn observed_at(&self) -> DateTime<Utc>;

    /// Checks every measurement against its physical range.
    ///
    /// # Errors
    ///
    /// Returns the first field that is out of range, or an empty site.
    fn validate(&self) -> Result<(), ValidationError>;

    /// Feeds every measurement, in a fixed order, into an event id.
    fn hash_content(&self, hasher: &mut ContentHasher);
}

/// Why an observation is physically implausible.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ValidationError {
    /// A measurement lies outside the range the sensor can produce.
    #[error("{field} = {value} is outside {min}..={max} {unit}")]
    OutOfRange {
        /// JSON name of the field.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// Smallest accepted value.
        min: f64,
        /// Largest accepted value.
        max: f64,
        /// Unit of the field.
        unit: &'static str,
    },
    /// A time lies outside what a ClickHouse `DateTime` column holds (whole seconds from
    /// 1970-01-01 to 2106-02-07 UTC): a device with an unset or runaway clock.
    #[error("{field} = {value} is outside {}..={} (the range a ClickHouse DateTime holds); check the device's clock", STORABLE_TIMES.start(), STORABLE_TIMES.end())]
    TimeOutOfRange {
        /// JSON name of the field.
        field: &'static str,
        /// The rejected time.
        value: DateTime<Utc>,
    },
    /// A time has a fraction of a second. Rows are keyed by whole seconds, so two readings
    /// within one second would become one row; such readings are refused instead of merged.
    #[error("{field} = {value} has a fraction of a second; events carry whole-second times (the row key is the second)")]
    SubSecondTime {
        /// JSON name of the field.
        field: &'static str,
        /// The rejected time.
        value: DateTime<Utc>,
    },
    /// The site or zone id is empty.
    #[error("{field} is empty")]
    EmptySite {
        /// JSON name of the field (`site` or `zone`).
        field: &'static str,
    },
    /// The site or zone id is longer than [`MAX_SITE_LEN`] or holds control characters.
    #[error(
        "{field} is not a usable id ({length} bytes; at most {MAX_SITE_LEN} printable characters)"
    )]
    BadSite {
        /// JSON name of the field (`site` or `zone`).
        field: &'static str,
        /// Its length in bytes.
        length: usize,
    },
}

impl ValidationError {
    /// Short machine-readable reason, used as rejection and dead-letter label.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::TimeOutOfRange { .. } => "time_out_of_range",
            ValidationError::SubSecondTime { .. } => "sub_second_time",
            ValidationError::OutOfRange { .. }
            | ValidationError::EmptySite { .. }
            | ValidationError::BadSite { .. } => "out_of_range",
        }
    }
}

/// The times a ClickHouse `DateTime` (an unsigned 32-bit count of seconds) can hold.
pub const STORABLE_TIMES: std::ops::RangeInclusive<DateTime<Utc>> = DateTime::<Utc>::UNIX_EPOCH
    ..=match DateTime::from_timestamp(u32::MAX as i64, 0) {
        Some(time) => time,
        None => DateTime::<Utc>::UNIX_EPOCH,
    };

/// Checks that `value` fits a `DateTime` column.
///
/// # Errors
///
/// [`ValidationError::TimeOutOfRange`] outside [`STORABLE_TIMES`].
pub fn require_storable_time(
    field: &'static str,
    value: DateTime<Utc>,
) -> Result<(), ValidationError> {
    if STORABLE_TIMES.contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::TimeOutOfRange { field, value })
    }
}

/// An observation's time: storable and a whole second.
fn require_observed_at(value: DateTime<Utc>) -> Result<(), ValidationError> {
    require_storable_time("observed_at", value)?;
    if chrono::Timelike::nanosecond(&value) != 0 {
        return Err(ValidationError::SubSecondTime {
            field: "observed_at",
            value,
        });
    }
    Ok(())
}

observation_members! {
    /// One wave buoy reading (IMOS/AODN or a Pi buoy).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct WaveObservation {
        /// Buoy site id.
        pub site: String,
        /// Time of the observation (RFC 3339, UTC).
        pub observed_at: DateTime<Utc>,
        /// Significant wave height, metres.
        pub wave_height_m: Option<f64>,
        /// Maximum wave height, metres.
        pub wave_height_max_m: Option<f64>,
        /// Peak wave period, seconds.
        pub peak_period_s: Option<f64>,
        /// Mean (zero-crossing) wave period, seconds.
        pub mean_period_s: Option<f64>,
        /// Direction waves come from, degrees true.
        pub wave_direction_deg: Option<f64>,
        /// Sea surface temperature, °C.
        pub sea_temp_c: Option<f64>,
        /// Latitude, decimal degrees.
        pub lat: Option<f64>,
        /// Longitude, decimal degrees.
        pub lon: Option<f64>,
    }
}

observation_members! {
    /// One weather station reading (Bureau of Meteorology, rtl_433 station).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct WeatherObservation {
        /// Station id.
        pub site: String,
        /// Time of the observation (RFC 3339, UTC).
        pub observed_at: DateTime<Utc>,
        /// Mean wind speed, m/s.
        pub wind_speed_ms: Option<f64>,
        /// Wind gust, m/s.
        pub wind_gust_ms: Option<f64>,
        /// Direction the wind comes from, degrees true.
        pub wind_direction_deg: Option<f64>,
        /// Air temperature, °C.
        pub air_temp_c: Option<f64>,
        /// Pressure, hPa.
        pub pressure_hpa: Option<f64>,
        /// Relative humidity, percent.
        pub rel_humidity_pct: Option<f64>,
        /// Swell height, metres.
        pub swell_height_m: Option<f64>,
        /// Swell period, seconds.
        pub swell_period_s: Option<f64>,
    }
}

observation_members! {
    /// Carbon intensity of a grid zone's electricity (Electricity Maps).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct CarbonIntensity {
        /// Grid zone id, e.g. `DK-DK2`.
        pub zone: String,
        /// Start of the hour or instant the value describes (RFC 3339, UTC).
        pub observed_at: DateTime<Utc>,
        /// Life-cycle carbon intensity, gCO2eq/kWh.
        pub carbon_intensity_g_per_kwh: f64,
        /// Whether the source marks the value as an estimate; `None` when it does not say.
        pub is_estimated: Option<bool>,
    }
}

impl Observation for WaveObservation {
    const KIND: Kind = Kind::Wave;

    fn site(&self) -> &str {
        &self.site
    }

    fn observed_at(&self) -> DateTime<Utc> {
        self.observed_at
    }

    fn validate(&self) -> Result<(), ValidationError> {
        require_site("site", &self.site)?;
        require_observed_at(self.observed_at)?;
        check("wave_height_m", self.wave_height_m, 0.0, 30.0, "m")?;
        check("wave_height_max_m", self.wave_height_max_m, 0.0, 40.0, "m")?;
        check("peak_period_s", self.peak_period_s, 0.0, 40.0, "s")?;
        check("mean_period_s", self.mean_period_s, 0.0, 40.0, "s")?;
        check(
            "wave_direction_deg",
            self.wave_direction_deg,
            0.0,
            360.0,
            "°",
        )?;
        check("sea_temp_c", self.sea_temp_c, -5.0, 40.0, "°C")?;
        check("lat", self.lat, -90.0, 90.0, "°")?;
        check("lon", self.lon, -180.0, 360.0, "°")
    }

    fn hash_content(&self, hasher: &mut ContentHasher) {
        for value in [
            self.wave_height_m,
            self.wave_height_max_m,
            self.peak_period_s,
            self.mean_period_s,
            self.wave_direction_deg,
            self.sea_temp_c,
            self.lat,
            self.lon,
        ] {
            hasher.optional_number(value);
        }
    }
}

impl Observation for WeatherObservation {
    const KIND: Kind = Kind::Weather;

    fn site(&self) -> &str {
        &self.site
    }

    fn observed_at(&self) -> DateTime<Utc> {
        self.observed_at
    }

    fn validate(&self) -> Result<(), ValidationError> {
        require_site("site", &self.site)?;
        require_observed_at(self.observed_at)?;
        check("wind_speed_ms", self.wind_speed_ms, 0.0, 120.0, "m/s")?;
        check("wind_gust_ms", self.wind_gust_ms, 0.0, 150.0, "m/s")?;
        check(
            "wind_direction_deg",
            self.wind_direction_deg,
            0.0,
            360.0,
            "°",
        )?;
        check("air_temp_c", self.air_temp_c, -90.0, 60.0, "°C")?;
        check("pressure_hpa", self.pressure_hpa, 800.0, 1100.0, "hPa")?;
        check("rel_humidity_pct", self.rel_humidity_pct, 0.0, 100.0, "%")?;
        check("swell_height_m", self.swell_height_m, 0.0, 30.0, "m")?;
        check("swell_period_s", self.swell_period_s, 0.0, 40.0, "s")
    }

    fn hash_content(&self, hasher: &mut ContentHasher) {
        for value in [
            self.wind_speed_ms,
            self.wind_gust_ms,
            self.wind_direction_deg,
            self.air_temp_c,
            self.pressure_hpa,
            self.rel_humidity_pct,
            self.swell_height_m,
            self.swell_period_s,
        ] {
            hasher.optional_number(value);
        }
    }
}

impl Observation for CarbonIntensity {
    const KIND: Kind = Kind::Carbon;

    fn site(&self) -> &str {
        &self.zone
    }

    fn observed_at(&self) -> DateTime<Utc> {
        self.observed_at
    }

    fn validate(&self) -> Result<(), ValidationError> {
        require_site("zone", &self.zone)?;
        require_observed_at(self.observed_at)?;
        check(
            "carbon_intensity_g_per_kwh",
            Some(self.carbon_intensity_g_per_kwh),
            0.0,
            3000.0,
            "gCO2eq/kWh",
        )
    }

    fn hash_content(&self, hasher: &mut ContentHasher) {
        hasher.number(self.carbon_intensity_g_per_kwh);
        hasher.optional_flag(self.is_estimated);
    }
}

/// Longest site or zone id, in bytes. It keeps every event small (about 1 KiB at most) and
/// subjects and KV keys short.
pub const MAX_SITE_LEN: usize = 128;

fn require_site(field: &'static str, site: &str) -> Result<(), ValidationError> {
    if site.trim().is_empty() {
        return Err(ValidationError::EmptySite { field });
    }
    if site.len() > MAX_SITE_LEN || site.chars().any(char::is_control) {
        return Err(ValidationError::BadSite {
            field,
            length: site.len(),
        });
    }
    Ok(())
}

fn check(
    field: &'static str,
    value: Option<f64>,
    min: f64,
    max: f64,
    unit: &'static str,
) -> Result<(), ValidationError> {
    match value {
        // `contains` is false for NaN, so NaN is rejected too.
        Some(number) if !(min..=max).contains(&number) => Err(ValidationError::OutOfRange {
            field,
            value: number,
            min,
            max,
            unit,
        }),
        _ => Ok(()),
    }
}
