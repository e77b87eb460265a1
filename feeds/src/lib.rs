//! Parsers for the upstream formats NomadWave polls, written against the genuine payloads in
//! `../shared/fixtures` and the quirks `docs/formats.md` documents.
//!
//! The crate is pure (bytes in, observations out) so the `parse` subcommands, the pollers, the
//! tests and the fuzz targets all drive the same code.
//!
//! Layout:
//! - [`imos`]: AODN GeoServer wave-buoy GeoJSON (map and data layers) → [`WaveObservation`];
//! - [`bom`]: Bureau of Meteorology legacy `/fwo/` product JSON and the v1 API observations →
//!   [`WeatherObservation`];
//! - [`electricitymaps`]: Electricity Maps v3 carbon intensity (latest, history, past-range) →
//!   [`CarbonIntensity`];
//! - [`pi_buoy`]: NomadWave's own Pi buoy MQTT messages → [`WaveObservation`];
//! - [`rtl_433`]: rtl_433 JSON events from Pi weather stations → [`WeatherObservation`];
//! - this module: the result every parser returns ([`Parsed`]), the whole-payload error
//!   ([`PayloadError`]) and the small conversions they share ([`units`], [`normalize_site`]).
//!
//! Rules every parser follows:
//! - a missing value, JSON `null` or a placeholder string (`"-"`, `""`) becomes `None`, never 0;
//! - times become UTC;
//! - units become the SI units of the schema;
//! - one bad record is rejected with its location and reason; the good ones are kept;
//! - a record repeating an earlier record's natural key (site, `observed_at`) is dropped and
//!   counted as a duplicate;
//! - a payload that is not the expected document at all is a [`PayloadError`].
//!
//! [`WaveObservation`]: schema::WaveObservation
//! [`WeatherObservation`]: schema::WeatherObservation
//! [`CarbonIntensity`]: schema::CarbonIntensity

pub mod bom;
pub mod electricitymaps;
pub mod imos;
mod parsed;
pub mod pi_buoy;
pub mod rtl_433;
pub mod units;

pub use parsed::{normalize_site, Parsed, PayloadError, RejectedRecord};
