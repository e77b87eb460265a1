//! ClickHouse row types, one per event kind, converted explicitly from schema events.
//!
//! Tables are `ReplacingMergeTree(stream_seq)` ordered by the natural key (site, observed_at,
//! source): a re-published or revised observation collapses to one row, the one with the
//! highest stream sequence, in `FINAL` queries and after merges. `stream_seq` is also the
//! column the exact redelivery check reads.

use chrono::{DateTime, Utc};
use schema::{CarbonIntensity, Event, Observation, WaveObservation, WeatherObservation};
use serde::Serialize;

use crate::database::ServerVersion;

/// An observation type the sink can store, with its table and row type.
pub trait StoredObservation: Observation + 'static {
    /// Row written to ClickHouse.
    type Row: clickhouse::Row
        + for<'a> clickhouse::RowWrite<Value<'a> = Self::Row>
        + Serialize
        + Send
        + Sync
        + 'static;
    /// Table name inside the target database.
    const TABLE: &'static str;
    /// The column holding the site (or zone) of the natural key.
    const SITE_COLUMN: &'static str;
    /// Converts a decoded event read at `stream_seq` into its row.
    fn to_row(event: Event<Self>, stream_seq: u64) -> Self::Row;
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
    /// JetStream sequence the event was read at.
    pub stream_seq: u64,
}

impl StoredObservation for WaveObservation {
    type Row = WaveRow;
    const TABLE: &'static str = "wave_observations";
    const SITE_COLUMN: &'static str = "site";

    fn to_row(event: Event<Self>, stream_seq: u64) -> WaveRow {
        let observation = event.observation;
        WaveRow {
            site: observation.site,
            observed_at: observation.observed_at,
            source: event.source,
            event_id: event.event_id.to_string(),
            schema_version: event.schema_version,
            ingested_at: event.ingested_at,
            wave_height_m: observation.wave_height_m,
            wave_height_max_m: observation.wave_height_max_m,
            peak_period_s: observation.peak_period_s,
            mean_period_s: observation.mean_period_s,
            wave_direction_deg: observation.wave_direction_deg,
            sea_temp_c: observation.sea_temp_c,
            lat: observation.lat,
            lon: observation.lon,
            stream_seq,
        }
    }
}

impl StoredObservation for WeatherObservation {
    type Row = WeatherRow;
    const TABLE: &'static str = "weather_observations";
    const SITE_COLUMN: &'static str = "site";

    fn to_row(event: Event<Self>, stream_seq: u64) -> WeatherRow {
        let observation = event.observation;
        WeatherRow {
            site: observation.site,
            observed_at: observation.observed_at,
            source: event.source,
            event_id: event.event_id.to_string(),
            schema_version: event.schema_version,
            ingested_at: event.ingested_at,
            wind_speed_ms: observation.wind_speed_ms,
            wind_gust_ms: observation.wind_gust_ms,
            wind_direction_deg: observation.wind_direction_deg,
            air_temp_c: observation.air_temp_c,
            pressure_hpa: observation.pressure_hpa,
            rel_humidity_pct: observation.rel_humidity_pct,
            swell_height_m: observation.swell_height_m,
            swell_period_s: observation.swell_period_s,
            stream_seq,
        }
    }
}

impl StoredObservation for CarbonIntensity {
    type Row = CarbonRow;
    const TABLE: &'static str = "carbon_intensity";
    const SITE_COLUMN: &'static str = "zone";

    fn to_row(event: Event<Self>, stream_seq: u64) -> CarbonRow {
        let observation = event.observation;
        CarbonRow {
            zone: observation.zone,
            observed_at: observation.observed_at,
            source: event.source,
            event_id: event.event_id.to_string(),
            schema_version: event.schema_version,
            ingested_at: event.ingested_at,
            carbon_intensity_g_per_kwh: observation.carbon_intensity_g_per_kwh,
            is_estimated: observation.is_estimated.map(u8::from),
            stream_seq,
        }
    }
}

/// One `CREATE TABLE` statement, with `?` standing for the database identifier.
pub struct TableStatement {
    /// Table it creates.
    pub table: &'static str,
    /// The statement.
    pub sql: String,
}

/// The `CREATE TABLE IF NOT EXISTS` statements for `version`.
///
/// From 22.2 on, tables keep a non-replicated deduplication window so that
/// `insert_deduplication_token` guards retried INSERTs as a second line of defence.
pub fn table_ddl(version: ServerVersion) -> Vec<TableStatement> {
    let settings = if version.supports_insert_deduplication_token() {
        " SETTINGS non_replicated_deduplication_window = 1000"
    } else {
        ""
    };
    let envelope = "event_id String, schema_version UInt16, ingested_at DateTime";
    let tables = [
        (
            WaveObservation::TABLE,
            "site",
            "wave_height_m Nullable(Float64), wave_height_max_m Nullable(Float64), \
             peak_period_s Nullable(Float64), mean_period_s Nullable(Float64), \
             wave_direction_deg Nullable(Float64), sea_temp_c Nullable(Float64), \
             lat Nullable(Float64), lon Nullable(Float64)",
        ),
        (
            WeatherObservation::TABLE,
            "site",
            "wind_speed_ms Nullable(Float64), wind_gust_ms Nullable(Float64), \
             wind_direction_deg Nullable(Float64), air_temp_c Nullable(Float64), \
             pressure_hpa Nullable(Float64), rel_humidity_pct Nullable(Float64), \
             swell_height_m Nullable(Float64), swell_period_s Nullable(Float64)",
        ),
        (
            CarbonIntensity::TABLE,
            "zone",
            "carbon_intensity_g_per_kwh Float64, is_estimated Nullable(UInt8)",
        ),
    ];
    tables
        .into_iter()
        .map(|(table, site, measurements)| TableStatement {
            table,
            sql: format!(
                "CREATE TABLE IF NOT EXISTS ?.{table} (\
                 {site} String, observed_at DateTime, source String, {envelope}, \
                 {measurements}, stream_seq UInt64) \
                 ENGINE = ReplacingMergeTree(stream_seq) \
                 PARTITION BY toYYYYMM(observed_at) \
                 ORDER BY ({site}, observed_at, source){settings}"
            ),
        })
        .collect()
}
