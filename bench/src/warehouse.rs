//! ClickHouse side: the raw insert rate of the sink's own rows, and the queries the other
//! phases poll.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clickhouse::sql::Identifier;
use clickhouse::Client;
use schema::{Event, WaveObservation};
use sink_clickhouse::config::ClickHouseSettings;
use sink_clickhouse::database::Database;
use sink_clickhouse::delivery::{Incarnation, StreamPosition, StreamSequence};
use sink_clickhouse::rows::{StoredObservation as _, WaveRow};

/// The sink's table of wave events.
pub const TABLE: &str = "wave_observations";

/// A client configured as the sink's (`database.rs`): no compression, no row validation.
pub fn client(url: &str, database: &str) -> Client {
    Client::default()
        .with_url(url)
        .with_user("default")
        .with_compression(clickhouse::Compression::None)
        .with_validation(false)
        .with_database(database)
}

/// Creates `database` and its tables with the sink's own migration.
///
/// # Errors
///
/// When ClickHouse refuses.
pub async fn migrate(url: &str, database: &str) -> anyhow::Result<String> {
    let settings = ClickHouseSettings {
        url: url.to_owned(),
        database: database.to_owned(),
        user: "default".to_owned(),
        password: None,
        timeout: Duration::from_secs(60),
    };
    let connected = Database::connect(&settings)
        .await
        .context("connecting to ClickHouse")?;
    connected.migrate().await.context("creating the tables")?;
    Ok(connected.version().to_string())
}

/// Drops `database` (frees the disk and stops its merges).
///
/// # Errors
///
/// When ClickHouse refuses.
pub async fn drop_database(url: &str, database: &str) -> anyhow::Result<()> {
    client(url, "default")
        .query("DROP DATABASE IF EXISTS ?")
        .bind(Identifier(database))
        .execute()
        .await
        .with_context(|| format!("dropping database {database}"))
}

/// The sink's rows for `events` (decoded exactly as the sink decodes them).
///
/// # Errors
///
/// When a payload does not decode.
pub fn rows(events: &[(u64, Bytes)]) -> anyhow::Result<Vec<WaveRow>> {
    events
        .iter()
        .map(|(sequence, payload)| {
            let event = Event::<WaveObservation>::decode(payload)
                .with_context(|| format!("decoding the event at sequence {sequence}"))?;
            let position = StreamPosition {
                incarnation: Incarnation(1),
                sequence: StreamSequence(*sequence),
            };
            WaveObservation::to_row(event, position)
                .with_context(|| format!("the event at sequence {sequence} cannot be stored"))
        })
        .collect()
}

/// What the raw insert wrote.
pub struct Inserted {
    /// Rows written.
    pub rows: u64,
    /// INSERT statements.
    pub inserts: u64,
    /// Wall time of all INSERTs, serialisation included.
    pub seconds: f64,
}

/// Writes `rows` into `database.wave_observations` with one RowBinary INSERT per `batch` rows,
/// one INSERT at a time, as the sink's writer does.
///
/// # Errors
///
/// When an INSERT fails.
pub async fn raw_insert(
    url: &str,
    database: &str,
    rows: &[WaveRow],
    batch: usize,
) -> anyhow::Result<Inserted> {
    let client = client(url, database);
    let started = Instant::now();
    let mut inserts = 0_u64;
    for chunk in rows.chunks(batch.max(1)) {
        insert_rows(&client, chunk).await?;
        inserts += 1;
    }
    Ok(Inserted {
        rows: rows.len() as u64,
        inserts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One RowBinary INSERT of `rows` into the client's `wave_observations`.
///
/// # Errors
///
/// When ClickHouse refuses or does not answer within a minute.
pub async fn insert_rows(client: &Client, rows: &[WaveRow]) -> anyhow::Result<()> {
    let mut insert = client
        .insert::<WaveRow>(TABLE)
        .await
        .context("starting an INSERT")?
        .with_timeouts(Some(Duration::from_secs(60)), Some(Duration::from_secs(60)));
    for row in rows {
        insert.write(row).await.context("writing a row")?;
    }
    insert.end().await.context("finishing an INSERT")
}

/// Rows in `database.wave_observations`; 0 while the table does not exist yet.
pub async fn count(client: &Client) -> u64 {
    client
        .query("SELECT count() FROM ?")
        .bind(Identifier(TABLE))
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

/// Stream sequences above `after` that are in the table now.
///
/// # Errors
///
/// When the query fails.
pub async fn sequences_after(client: &Client, after: u64) -> anyhow::Result<Vec<u64>> {
    client
        .query("SELECT stream_seq FROM ? WHERE stream_seq > ?")
        .bind(Identifier(TABLE))
        .bind(after)
        .fetch_all::<u64>()
        .await
        .context("polling for new rows")
}

/// Waits (up to `limit`) until no merge runs, so one phase's merges do not slow the next;
/// only the merges of `database` when given (an external server merges its own tables too).
pub async fn wait_for_merges(url: &str, database: Option<&str>, limit: Duration) {
    let client = client(url, "default");
    let deadline = Instant::now() + limit;
    loop {
        let query = match database {
            Some(database) => client
                .query("SELECT count() FROM system.merges WHERE database = ?")
                .bind(database),
            None => client.query("SELECT count() FROM system.merges"),
        };
        let running = query.fetch_one::<u64>().await.unwrap_or(0);
        if running == 0 || Instant::now() >= deadline {
            if running > 0 {
                tracing::warn!(running, "merges still running; continuing anyway");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `SELECT version()`.
pub async fn version(url: &str) -> String {
    client(url, "default")
        .query("SELECT version()")
        .fetch_one::<String>()
        .await
        .unwrap_or_else(|error| format!("unknown ({error})"))
}
