//! ClickHouse row types, one per event kind, converted explicitly from schema events.
//!
//! The columns and their order are [`crate::tables`]'s; a test checks each row type against
//! its table layout. A conversion fails, with a reason the sink dead-letters, for a value the
//! column cannot hold that validation let through.

use chrono::{DateTime, Utc};
use schema::{CarbonIntensity, Event, Observation, WaveObservation, WeatherObservation};
use serde::Serialize;
use thiserror::Error;

use crate::delivery::StreamPosition;
use crate::tables::{self, TableLayout};

/// A decoded event that its table cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field} {value} does not fit the {column_type} column (1970-01-01T00:00:00Z ..= 2106-02-07T06:28:15Z); the event is dead-lettered, fix the producer's clock")]
pub struct UnstorableValue {
    /// The field.
    pub field: &'static str,
    /// Its value, as text.
    pub value: String,
    /// The column type it does not fit.
    pub column_type: &'static str,
}

impl UnstorableValue {
    /// The dead-letter reason.
    pub const REASON: &'static str = "unstorable";
}

/// A time as a `DateTime` column holds it (UInt32 seconds), or why it cannot be.
fn storable_time(
    field: &'static str,
    time: DateTime<Utc>,
) -> Result<DateTime<Utc>, UnstorableValue> {
    if u32::try_from(time.timestamp()).is_ok() {
        Ok(time)
    } else {
        Err(UnstorableValue {
            field,
            value: time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            column_type: "DateTime",
        })
    }
}

/// An observation type the sink can store, with its table and row type.
pub trait StoredObservation: Observation + 'static {
    /// Row written to ClickHouse.
    type Row: clickhouse::Row
        + for<'a> clickhouse::RowWrite<Value<'a> = Self::Row>
        + Serialize
        + Send
        + Sync
        + 'static;
    /// The table's layout.
    const LAYOUT: TableLayout;
    /// Table name inside the target database.
    const TABLE: &'static str = Self::LAYOUT.table;
    /// Converts a decoded event stored at `position` into its row.
    ///
    /// # Errors
    ///
    /// [`UnstorableValue`] for a value no column of the table can hold.
    fn to_row(event: Event<Self>, position: StreamPosition) -> Result<Self::Row, UnstorableValue>;
    /// A row's event id and observation time (for batch identities and the check's bounds).
    fn row_key(row: &Self::Row) -> (&str, DateTime<Utc>);
}

/// Row of `wave_observations`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct WaveRow {
    /// Natural key: site.
    pub site: String,
    /// Natural key: observation time.
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub observed_at: DateTime<Utc>,
    /// Natural key: feed.
    pub source: String,
    /// Deterministic event id.
    pub event_id: String,
    /// Schema version of the event.
    pub schema_version: u16,
    /// Ingest time.
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub ingested_at: DateTime<Utc>,
    /// Significant wave height, m.
    pub wave_height_m: Option<f64>,
    /// Maximum wave height, m.
    pub wave_height_max_m: Option<f64>,
    /// Peak period, s.
    pub peak_period_s: Option<f64>,
    /// Mean period, s.
    pub mean_period_s: Option<f64>,
    /// Direction, degrees true.
    pub wave_direction_deg: Option<f64>,
    /// Sea temperature, °C.
    pub sea_temp_c: Option<f64>,
    /// Latitude.
    pub lat: Option<f64>,
    /// Longitude.
    pub lon: Option<f64>,
    /// Incarnation of the stream the event was read from (its creation time, ns).
    pub stream_incarnation: u64,
    /// JetStream sequence the event was read at: the watermark and the version column.
    pub stream_seq: u64,
}

/// Row of `weather_observations`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct WeatherRow {
    /// Natural key: station.
    pub site: String,
    /// Natural key: observation time.
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub observed_at: DateTime<Utc>,
    /// Natural key: feed.
    pub source: String,
    /// Deterministic event id.
    pub event_id: String,
    /// Schema version of the event.
    pub schema_version: u16,
    /// Ingest time.
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub ingested_at: DateTime<Utc>,
    /// Wind speed, m/s.
    pub wind_speed_ms: Option<f64>,
    /// Gust, m/s.
    pub wind_gust_ms: Option<f64>,
    /// Wind direction, degrees true.
    pub wind_direction_deg: Option<f64>,
    /// Air temperature, °C.
    pub air_temp_c: Option<f64>,
    /// Pressure, hPa.
    pub pressure_hpa: Option<f64>,
    /// Relative humidity, %.
    pub rel_humidity_pct: Option<f64>,
    /// Swell height, m.
    pub swell_height_m: Option<f64>,
    /// Swell period, s.
    pub swell_period_s: Option<f64>,
    /// Incarnation of the stream the event was read from (its creation time, ns).
    pub stream_incarnation: u64,
    /// JetStream sequence the event was read at.
    pub stream_seq: u64,
}

/// Row of `carbon_intensity`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize)]
pub struct CarbonRow {
    /// Natural key: grid zone.
    pub zone: String,
    /// Natural key: time the value describes.
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub observed_at: DateTime<Utc>,
    /// Natural key: feed.
    pub source: String,
    /// Deterministic event id.
    pub event_id: String,
    /// Schema version of the event.
    pub schema_version: u16,
    /// Ingest time.
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    pub ingested_at: DateTime<Utc>,
    /// gCO2eq/kWh.
    pub carbon_intensity_g_per_kwh: f64,
    /// Estimate flag, null when the source does not say.
    pub is_estimated: Option<u8>,
    /// Incarnation of the stream the event was read from (its creation time, ns).
    pub stream_incarnation: u64,
    /// JetStream sequence the event was read at.
    pub stream_seq: u64,
}

impl StoredObservation for WaveObservation {
    type Row = WaveRow;
    const LAYOUT: TableLayout = tables::WAVE;

    fn row_key(row: &WaveRow) -> (&str, DateTime<Utc>) {
        (&row.event_id, row.observed_at)
    }

    fn to_row(event: Event<Self>, position: StreamPosition) -> Result<WaveRow, UnstorableValue> {
        let observation = event.observation;
        Ok(WaveRow {
            site: observation.site,
            observed_at: storable_time("observed_at", observation.observed_at)?,
            source: event.source,
            event_id: event.event_id.into_string(),
            schema_version: event.schema_version,
            ingested_at: storable_time("ingested_at", event.ingested_at)?,
            wave_height_m: observation.wave_height_m,
            wave_height_max_m: observation.wave_height_max_m,
            peak_period_s: observation.peak_period_s,
            mean_period_s: observation.mean_period_s,
            wave_direction_deg: observation.wave_direction_deg,
            sea_temp_c: observation.sea_temp_c,
            lat: observation.lat,
            lon: observation.lon,
            stream_incarnation: position.incarnation.0,
            stream_seq: position.sequence.0,
        })
    }
}

impl StoredObservation for WeatherObservation {
    type Row = WeatherRow;
    const LAYOUT: TableLayout = tables::WEATHER;

    fn row_key(row: &WeatherRow) -> (&str, DateTime<Utc>) {
        (&row.event_id, row.observed_at)
    }

    fn to_row(event: Event<Self>, position: StreamPosition) -> Result<WeatherRow, UnstorableValue> {
        let observation = event.observation;
        Ok(WeatherRow {
            site: observation.site,
            observed_at: storable_time("observed_at", observation.observed_at)?,
            source: event.source,
            event_id: event.event_id.into_string(),
            schema_version: event.schema_version,
            ingested_at: storable_time("ingested_at", event.ingested_at)?,
            wind_speed_ms: observation.wind_speed_ms,
            wind_gust_ms: observation.wind_gust_ms,
            wind_direction_deg: observation.wind_direction_deg,
            air_temp_c: observation.air_temp_c,
            pressure_hpa: observation.pressure_hpa,
            rel_humidity_pct: observation.rel_humidity_pct,
            swell_height_m: observation.swell_height_m,
            swell_period_s: observation.swell_period_s,
            stream_incarnation: position.incarnation.0,
            stream_seq: position.sequence.0,
        })
    }
}

impl StoredObservation for CarbonIntensity {
    type Row = CarbonRow;
    const LAYOUT: TableLayout = tables::CARBON;

    fn row_key(row: &CarbonRow) -> (&str, DateTime<Utc>) {
        (&row.event_id, row.observed_at)
    }

    fn to_row(event: Event<Self>, position: StreamPosition) -> Result<CarbonRow, UnstorableValue> {
        let observation = event.observation;
        Ok(CarbonRow {
            zone: observation.zone,
            observed_at: storable_time("observed_at", observation.observed_at)?,
            source: event.source,
            event_id: event.event_id.into_string(),
            schema_version: event.schema_version,
            ingested_at: storable_time("ingested_at", event.ingested_at)?,
            carbon_intensity_g_per_kwh: observation.carbon_intensity_g_per_kwh,
            is_estimated: observation.is_estimated.map(u8::from),
            stream_incarnation: position.incarnation.0,
            stream_seq: position.sequence.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use clickhouse::Row as _;

    use super::*;

    fn row_order_matches_layout<O: StoredObservation>() {
        let layout: Vec<&str> = O::LAYOUT.column_names().collect();
        assert_eq!(
            O::Row::COLUMN_NAMES,
            layout.as_slice(),
            "{}: the row type's fields and the table's columns differ",
            O::TABLE
        );
    }

    #[test]
    fn row_types_follow_their_table_layouts() {
        row_order_matches_layout::<WaveObservation>();
        row_order_matches_layout::<WeatherObservation>();
        row_order_matches_layout::<CarbonIntensity>();
    }

    #[test]
    fn times_a_datetime_column_cannot_hold_are_refused() {
        use chrono::TimeZone as _;
        let before = Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap();
        let error = storable_time("observed_at", before).unwrap_err();
        assert_eq!(error.field, "observed_at");
        assert!(
            error.to_string().contains("1969-12-31T23:59:59Z"),
            "{error}"
        );
        let after = Utc.timestamp_opt(i64::from(u32::MAX) + 1, 0).unwrap();
        assert!(storable_time("ingested_at", after).is_err());
        for edge in [
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_opt(i64::from(u32::MAX), 0).unwrap(),
        ] {
            assert_eq!(storable_time("observed_at", edge), Ok(edge));
        }
    }
}
