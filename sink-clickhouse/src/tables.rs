//! What each event table is: one column list per kind, from which the `CREATE TABLE`, the
//! upgrade of an older table and (checked by a test) the row types' field order all follow.
//!
//! Tables are `ReplacingMergeTree(stream_seq)` ordered by the natural key (site or zone,
//! `observed_at`, source), partitioned by month of `observed_at`. A row's identity in the
//! stream is `(stream_incarnation, stream_seq)`: the stream's creation time and the sequence
//! the event was stored at (see [`crate::delivery::StreamPosition`]).

use crate::version::ServerVersion;

/// One column: name and ClickHouse type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name, also the row type's field name.
    pub name: &'static str,
    /// ClickHouse type, valid on 18.16 and current servers.
    pub sql_type: &'static str,
}

const fn column(name: &'static str, sql_type: &'static str) -> Column {
    Column { name, sql_type }
}

const NULLABLE_NUMBER: &str = "Nullable(Float64)";

/// The columns every event table starts with after its site column.
macro_rules! event_table {
    ($site:literal, [$($measurement:expr),* $(,)?]) => {
        &[
            column($site, "String"),
            column("observed_at", "DateTime"),
            column("source", "String"),
            column("event_id", "String"),
            column("schema_version", "UInt16"),
            column("ingested_at", "DateTime"),
            $($measurement,)*
            column(INCARNATION_COLUMN, "UInt64"),
            column(SEQUENCE_COLUMN, "UInt64"),
        ]
    };
}

/// The column holding the stream's incarnation (its creation time, ns since the epoch); 0 in
/// rows written before the column existed.
pub const INCARNATION_COLUMN: &str = "stream_incarnation";
/// The column holding the stream sequence; also the `ReplacingMergeTree` version.
pub const SEQUENCE_COLUMN: &str = "stream_seq";

/// The layout of one event table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    /// Table name inside the target database.
    pub table: &'static str,
    /// The column holding the site (or zone) of the natural key.
    pub site_column: &'static str,
    /// Every column, in the row type's field order.
    pub columns: &'static [Column],
}

/// `wave_observations`.
pub const WAVE: TableLayout = TableLayout {
    table: "wave_observations",
    site_column: "site",
    columns: event_table!(
        "site",
        [
            column("wave_height_m", NULLABLE_NUMBER),
            column("wave_height_max_m", NULLABLE_NUMBER),
            column("peak_period_s", NULLABLE_NUMBER),
            column("mean_period_s", NULLABLE_NUMBER),
            column("wave_direction_deg", NULLABLE_NUMBER),
            column("sea_temp_c", NULLABLE_NUMBER),
            column("lat", NULLABLE_NUMBER),
            column("lon", NULLABLE_NUMBER),
        ]
    ),
};

/// `weather_observations`.
pub const WEATHER: TableLayout = TableLayout {
    table: "weather_observations",
    site_column: "site",
    columns: event_table!(
        "site",
        [
            column("wind_speed_ms", NULLABLE_NUMBER),
            column("wind_gust_ms", NULLABLE_NUMBER),
            column("wind_direction_deg", NULLABLE_NUMBER),
            column("air_temp_c", NULLABLE_NUMBER),
            column("pressure_hpa", NULLABLE_NUMBER),
            column("rel_humidity_pct", NULLABLE_NUMBER),
            column("swell_height_m", NULLABLE_NUMBER),
            column("swell_period_s", NULLABLE_NUMBER),
        ]
    ),
};

/// `carbon_intensity`.
pub const CARBON: TableLayout = TableLayout {
    table: "carbon_intensity",
    site_column: "zone",
    columns: event_table!(
        "zone",
        [
            column("carbon_intensity_g_per_kwh", "Float64"),
            column("is_estimated", "Nullable(UInt8)"),
        ]
    ),
};

/// Every event table.
pub const ALL: [TableLayout; 3] = [WAVE, WEATHER, CARBON];

/// Rows per table that `insert_deduplication_token` remembers (22.2 and later).
pub const DEDUPLICATION_WINDOW: u32 = 1000;

/// One statement, with `?` standing for the database identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStatement {
    /// Table it concerns.
    pub table: &'static str,
    /// The statement.
    pub sql: String,
}

impl TableLayout {
    /// The column names, in row order.
    pub fn column_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|column| column.name)
    }

    /// `CREATE TABLE IF NOT EXISTS` for `version`. From 22.2 on the table keeps a
    /// non-replicated deduplication window, so `insert_deduplication_token` guards retried
    /// INSERTs as a second line of defence.
    pub fn create_statement(&self, version: ServerVersion) -> TableStatement {
        let columns = self
            .columns
            .iter()
            .map(|column| format!("{} {}", column.name, column.sql_type))
            .collect::<Vec<_>>()
            .join(", ");
        let settings = if version.supports_insert_deduplication_token() {
            format!(" SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}")
        } else {
            String::new()
        };
        let (table, site) = (self.table, self.site_column);
        TableStatement {
            table,
            sql: format!(
                "CREATE TABLE IF NOT EXISTS ?.{table} ({columns}) \
                 ENGINE = ReplacingMergeTree({SEQUENCE_COLUMN}) \
                 PARTITION BY toYYYYMM(observed_at) \
                 ORDER BY ({site}, observed_at, source){settings}"
            ),
        }
    }

    /// What brings an existing table (made by an earlier version, perhaps on an older server)
    /// up to this layout: the columns it lacks, and on 22.2 and later the deduplication window
    /// when `engine_full` (from `system.tables`) does not set it yet.
    pub fn upgrade_statements(
        &self,
        existing_columns: &[String],
        engine_full: &str,
        version: ServerVersion,
    ) -> Vec<TableStatement> {
        let table = self.table;
        let mut statements: Vec<TableStatement> = self
            .columns
            .iter()
            .filter(|column| !existing_columns.iter().any(|name| name == column.name))
            .map(|column| TableStatement {
                table,
                sql: format!(
                    "ALTER TABLE ?.{table} ADD COLUMN {} {}",
                    column.name, column.sql_type
                ),
            })
            .collect();
        if version.supports_insert_deduplication_token()
            && !engine_full.contains("non_replicated_deduplication_window")
        {
            statements.push(TableStatement {
                table,
                sql: format!(
                    "ALTER TABLE ?.{table} MODIFY SETTING non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"
                ),
            });
        }
        statements
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: ServerVersion = ServerVersion {
        major: 18,
        minor: 16,
    };
    const CURRENT: ServerVersion = ServerVersion {
        major: 26,
        minor: 9,
    };

    #[test]
    fn every_table_is_keyed_by_the_natural_key_and_stores_the_position() {
        for layout in ALL {
            let sql = layout.create_statement(DEBIAN).sql;
            assert!(
                sql.contains(&format!(
                    "ORDER BY ({}, observed_at, source)",
                    layout.site_column
                )),
                "{sql}"
            );
            assert!(sql.contains("stream_incarnation UInt64"), "{sql}");
            assert!(sql.contains("ReplacingMergeTree(stream_seq)"), "{sql}");
            assert!(
                !sql.contains("SETTINGS"),
                "18.16 has no dedupe window: {sql}"
            );
            assert!(
                !sql.contains("DateTime64") && !sql.contains("LowCardinality"),
                "18.16 types only: {sql}"
            );
            let current = layout.create_statement(CURRENT).sql;
            assert!(current.ends_with("SETTINGS non_replicated_deduplication_window = 1000"));
        }
    }

    #[test]
    fn upgrade_adds_missing_columns_and_the_dedupe_window_only_where_known() {
        let old_columns: Vec<String> = WAVE
            .column_names()
            .filter(|name| *name != INCARNATION_COLUMN)
            .map(str::to_owned)
            .collect();
        let on_debian =
            WAVE.upgrade_statements(&old_columns, "ReplacingMergeTree(stream_seq)", DEBIAN);
        assert_eq!(
            on_debian,
            vec![TableStatement {
                table: "wave_observations",
                sql: "ALTER TABLE ?.wave_observations ADD COLUMN stream_incarnation UInt64".into()
            }]
        );
        let on_current =
            WAVE.upgrade_statements(&old_columns, "ReplacingMergeTree(stream_seq)", CURRENT);
        assert_eq!(on_current.len(), 2);
        assert!(on_current[1]
            .sql
            .contains("MODIFY SETTING non_replicated_deduplication_window = 1000"));
        let all: Vec<String> = WAVE.column_names().map(str::to_owned).collect();
        assert!(WAVE
            .upgrade_statements(
                &all,
                "ReplacingMergeTree(stream_seq) SETTINGS non_replicated_deduplication_window = 1000",
                CURRENT
            )
            .is_empty());
    }
}
