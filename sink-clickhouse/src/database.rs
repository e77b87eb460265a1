//! ClickHouse access: version detection, migrations, the redelivery check and inserts.
//!
//! This is the only module that talks to ClickHouse. It works on the Debian 18.16 server and on
//! current releases: `DateTime` (not `DateTime64`), no `LowCardinality`, and the client's
//! schema validation is switched on only where the server supports it.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clickhouse::sql::Identifier;
use clickhouse::Client;
use runtime::ErrorClass;
use thiserror::Error;

use crate::config::ClickHouseSettings;
use crate::delivery::{CheckScope, StreamSequence};
use crate::rows::StoredObservation;
use crate::tables;
pub use crate::version::ServerVersion;

/// A failed ClickHouse operation, with what was attempted.
///
/// When the server refused the credentials the message says so and names the flags to check
/// (the server's own text, which follows, names the user).
#[derive(Debug, Error)]
#[error("clickhouse {operation} on {target} failed{}", authentication_note(.source))]
pub struct DatabaseError {
    /// What was attempted: `insert`, `redelivery check`, `migrate`, `version query`.
    pub operation: &'static str,
    /// The database or table it was attempted on.
    pub target: String,
    /// The client's error.
    #[source]
    pub source: clickhouse::error::Error,
}

impl DatabaseError {
    /// Whether retrying can help; see [`classify_clickhouse_error`].
    pub fn class(&self) -> ErrorClass {
        classify_clickhouse_error(&self.source)
    }

    /// ClickHouse's numeric error code, when the server sent one.
    pub fn code(&self) -> Option<u32> {
        server_error_code(&self.source)
    }
}

/// Server codes of refused credentials: UNKNOWN_USER (192), WRONG_PASSWORD (193) and
/// REQUIRED_PASSWORD (194) up to 20.x, AUTHENTICATION_FAILED (516) since, which covers all three.
const AUTHENTICATION_CODES: &[u32] = &[192, 193, 194, 516];

/// Whether the server refused the user or password (never fixed by a retry).
pub fn is_authentication_failure(error: &clickhouse::error::Error) -> bool {
    server_error_code(error).is_some_and(|code| AUTHENTICATION_CODES.contains(&code))
}

fn authentication_note(error: &clickhouse::error::Error) -> &'static str {
    if is_authentication_failure(error) {
        ": authentication failed (wrong password or unknown user; check --clickhouse-user/CLICKHOUSE_USER and --clickhouse-password/CLICKHOUSE_PASSWORD or CLICKHOUSE_PASSWORD_FILE)"
    } else {
        ""
    }
}

/// Maps a client error to a retry class.
///
/// Network errors, timeouts and server errors that describe load or restarts are transient.
/// Authentication, unknown database/table/column and malformed queries are permanent: the
/// operator must act. Unknown server codes are treated as transient, so the sink applies
/// backpressure instead of losing data; every retry is logged and counted.
pub fn classify_clickhouse_error(error: &clickhouse::error::Error) -> ErrorClass {
    use clickhouse::error::Error as E;
    match error {
        E::Network(_) | E::TimedOut => ErrorClass::Transient,
        E::BadResponse(_) => match server_error_code(error) {
            Some(code) if PERMANENT_CODES.contains(&code) => ErrorClass::Permanent,
            _ => ErrorClass::Transient,
        },
        _ => ErrorClass::Permanent,
    }
}

/// Server codes no retry can fix: authentication (192-194, 497, 516), unknown
/// database/table/column (81, 60, 16, 47), syntax (62), type mismatch (53, 70), bad input (27, 33).
const PERMANENT_CODES: &[u32] = &[16, 27, 33, 47, 53, 60, 62, 70, 81, 192, 193, 194, 497, 516];

fn server_error_code(error: &clickhouse::error::Error) -> Option<u32> {
    let clickhouse::error::Error::BadResponse(text) = error else {
        return None;
    };
    let after = text.split("Code: ").nth(1)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A connection to the target database, with the server's version detected once.
#[derive(Clone)]
pub struct Database {
    /// Client bound to the target database.
    client: Client,
    /// Client without a database, for DDL and version queries that must work before
    /// the database exists.
    server: Client,
    database: String,
    version: ServerVersion,
    /// Bound on every statement (INSERTs carry it as their HTTP timeouts).
    timeout: Duration,
}

/// What the table holds of one stream incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct IncarnationRows {
    /// The incarnation (0: rows from before incarnations were stored).
    pub incarnation: u64,
    /// Rows.
    pub rows: u64,
    /// Highest stream sequence.
    pub last_sequence: u64,
    /// Newest `ingested_at`, Unix seconds.
    pub newest_ingest: u32,
}

/// Runs `query` under `timeout`; a query past it fails as [`clickhouse::error::Error::TimedOut`]
/// (transient), so no statement can hang a stream.
async fn bounded<T>(
    timeout: Duration,
    operation: &'static str,
    target: String,
    query: impl Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, DatabaseError> {
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(DatabaseError {
            operation,
            target,
            source,
        }),
        Err(_elapsed) => Err(DatabaseError {
            operation,
            target,
            source: clickhouse::error::Error::TimedOut,
        }),
    }
}

impl Database {
    /// Connects and detects the server version.
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] when the server cannot be reached or refuses the credentials.
    pub async fn connect(settings: &ClickHouseSettings) -> Result<Database, DatabaseError> {
        let mut server = Client::default()
            .with_url(&settings.url)
            .with_user(&settings.user)
            .with_compression(clickhouse::Compression::None);
        if let Some(password) = &settings.password {
            server = server.with_password(password.expose());
        }
        let version_error = |source| DatabaseError {
            operation: "version query",
            target: format!("{} as user '{}'", settings.url, settings.user),
            source,
        };
        let version_text: String = tokio::time::timeout(
            settings.timeout,
            server
                .clone()
                .with_validation(false)
                .query("SELECT version()")
                .fetch_one(),
        )
        .await
        .map_err(|_elapsed| version_error(clickhouse::error::Error::TimedOut))?
        .map_err(version_error)?;
        let version = ServerVersion::parse(&version_text).ok_or_else(|| {
            version_error(clickhouse::error::Error::Other(
                format!("unrecognised server version '{version_text}'").into(),
            ))
        })?;
        let validation = version.supports_row_validation();
        tracing::info!(%version, validation, "connected to clickhouse");
        let server = server.with_validation(validation);
        let client = server.clone().with_database(&settings.database);
        Ok(Database {
            client,
            server,
            database: settings.database.clone(),
            version,
            timeout: settings.timeout,
        })
    }

    /// The detected server version.
    pub fn version(&self) -> ServerVersion {
        self.version
    }

    /// The target database name.
    pub fn name(&self) -> &str {
        &self.database
    }

    /// The statement bound.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn table_target(&self, table: &str) -> String {
        format!("{}.{table}", self.database)
    }

    /// Creates the database and the event tables if missing, and brings tables an earlier
    /// version made up to date: missing columns are added (`stream_incarnation`, 0 in old
    /// rows), and on 22.2 and later the deduplication window is set where it is missing (a
    /// table created on 18.16 and now served by a current server).
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] naming the statement's target.
    pub async fn migrate(&self) -> Result<(), DatabaseError> {
        bounded(
            self.timeout,
            "migrate",
            self.database.clone(),
            self.server
                .query("CREATE DATABASE IF NOT EXISTS ?")
                .bind(Identifier(&self.database))
                .execute(),
        )
        .await?;
        for layout in tables::ALL {
            let target = self.table_target(layout.table);
            let create = layout.create_statement(self.version);
            bounded(
                self.timeout,
                "migrate",
                target.clone(),
                self.server
                    .query(&create.sql)
                    .bind(Identifier(&self.database))
                    .execute(),
            )
            .await?;
            let columns: Vec<String> = bounded(
                self.timeout,
                "migrate (columns)",
                target.clone(),
                self.server
                    .query("SELECT name FROM system.columns WHERE database = ? AND table = ?")
                    .bind(&self.database)
                    .bind(layout.table)
                    .fetch_all::<String>(),
            )
            .await?;
            let engine_full: String = bounded(
                self.timeout,
                "migrate (engine)",
                target.clone(),
                self.server
                    .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
                    .bind(&self.database)
                    .bind(layout.table)
                    .fetch_one::<String>(),
            )
            .await?;
            for statement in layout.upgrade_statements(&columns, &engine_full, self.version) {
                bounded(
                    self.timeout,
                    "migrate (upgrade)",
                    target.clone(),
                    self.server
                        .query(&statement.sql)
                        .bind(Identifier(&self.database))
                        .execute(),
                )
                .await?;
                tracing::warn!(table = %target, statement = %statement.sql, "table upgraded");
            }
            tracing::info!(table = %target, "table ready");
        }
        Ok(())
    }

    /// Rows per stream incarnation in `O`'s table (one small row each; read at startup).
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] when the query fails or times out.
    pub async fn incarnations<O: StoredObservation>(
        &self,
    ) -> Result<Vec<IncarnationRows>, DatabaseError> {
        bounded(
            self.timeout,
            "incarnation query",
            self.table_target(O::TABLE),
            self.client
                .query(
                    // Aliased to the field names: from 24.10 the client checks them.
                    "SELECT stream_incarnation AS incarnation, count() AS `rows`, \
                     max(stream_seq) AS last_sequence, \
                     toUInt32(max(ingested_at)) AS newest_ingest \
                     FROM ? GROUP BY stream_incarnation",
                )
                .bind(Identifier(O::TABLE))
                .fetch_all::<IncarnationRows>(),
        )
        .await
    }

    /// Highest stream sequence already written to `O`'s table for `scope`'s incarnation (0
    /// when none): the watermark of rule **check**.
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] when the query fails or times out.
    pub async fn max_sequence<O: StoredObservation>(
        &self,
        scope: CheckScope,
    ) -> Result<StreamSequence, DatabaseError> {
        bounded(
            self.timeout,
            "watermark query",
            self.table_target(O::TABLE),
            self.client
                .query(&format!(
                    "SELECT max(stream_seq) FROM ? WHERE stream_incarnation IN ({})",
                    scope.sql_list()
                ))
                .bind(Identifier(O::TABLE))
                .fetch_one::<u64>(),
        )
        .await
        .map(StreamSequence)
    }

    /// Which of the stream sequences in `first..=last` of `scope`'s incarnation are already in
    /// `O`'s table.
    ///
    /// This is the exact redelivery check: it looks at every sequence, so a batch that a crash
    /// left half-written (one partition's part committed, another's not) is completed without
    /// writing any row twice. `observed` (the batch's earliest and latest `observed_at`)
    /// bounds the read to the partitions and primary-key range those rows can be in, so its
    /// cost follows the batch, not the table.
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] when the query fails or times out.
    pub async fn existing_sequences<O: StoredObservation>(
        &self,
        scope: CheckScope,
        first: StreamSequence,
        last: StreamSequence,
        observed: (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<HashSet<u64>, DatabaseError> {
        let sequences = bounded(
            self.timeout,
            "redelivery check",
            self.table_target(O::TABLE),
            self.client
                .query(&format!(
                    "SELECT stream_seq FROM ? WHERE observed_at >= toDateTime(?) \
                     AND observed_at <= toDateTime(?) AND stream_incarnation IN ({}) \
                     AND stream_seq >= ? AND stream_seq <= ?",
                    scope.sql_list()
                ))
                .bind(Identifier(O::TABLE))
                .bind(observed.0.timestamp().max(0) as u32)
                .bind(observed.1.timestamp().clamp(0, i64::from(u32::MAX)) as u32)
                .bind(first.0)
                .bind(last.0)
                .fetch_all::<u64>(),
        )
        .await?;
        Ok(sequences.into_iter().collect())
    }

    /// The natural key of every row of `scope`'s incarnation with a stream sequence in
    /// `first..=last`: `(stream_seq, site or zone, observed_at as Unix seconds, source)`.
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] when the query fails or times out.
    pub async fn natural_keys<O: StoredObservation>(
        &self,
        scope: CheckScope,
        first: StreamSequence,
        last: StreamSequence,
    ) -> Result<Vec<(u64, String, u32, String)>, DatabaseError> {
        bounded(
            self.timeout,
            "verification query",
            self.table_target(O::TABLE),
            self.client
                .query(&format!(
                    "SELECT stream_seq, {}, toUnixTimestamp(observed_at), source FROM ? \
                     WHERE stream_incarnation IN ({}) AND stream_seq >= ? AND stream_seq <= ?",
                    O::LAYOUT.site_column,
                    scope.sql_list()
                ))
                .bind(Identifier(O::TABLE))
                .bind(first.0)
                .bind(last.0)
                .fetch_all::<(u64, String, u32, String)>(),
        )
        .await
    }

    /// Waits until no query with `query_id` runs on the server any more.
    ///
    /// After an INSERT whose outcome is unknown (timeout, dropped connection) the server may
    /// still be writing it; checking for its rows before it finished could write them twice.
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] when the query fails.
    pub async fn wait_until_finished(&self, query_id: &str) -> Result<(), DatabaseError> {
        loop {
            let running = bounded(
                self.timeout,
                "process check",
                query_id.to_owned(),
                self.server
                    .query("SELECT count() FROM system.processes WHERE query_id = ?")
                    .bind(query_id)
                    .fetch_one::<u64>(),
            )
            .await?;
            if running == 0 {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Writes `rows` with one INSERT.
    ///
    /// `query_id` names the INSERT on the server (see [`Database::wait_until_finished`]);
    /// `deduplication_token` is sent as `insert_deduplication_token` where the server knows it.
    ///
    /// # Errors
    ///
    /// A [`DatabaseError`] when the INSERT is not confirmed.
    pub async fn insert_rows<O: StoredObservation>(
        &self,
        rows: &[&O::Row],
        query_id: &str,
        deduplication_token: &str,
    ) -> Result<(), DatabaseError> {
        let timeout = self.timeout;
        let insert_error = |source| DatabaseError {
            operation: "insert",
            target: format!("{}.{}", self.database, O::TABLE),
            source,
        };
        let mut insert = self
            .client
            .insert::<O::Row>(O::TABLE)
            .await
            .map_err(insert_error)?
            .with_setting("query_id", query_id)
            .with_timeouts(Some(timeout), Some(timeout));
        if self.version.supports_insert_deduplication_token() {
            insert = insert.with_setting("insert_deduplication_token", deduplication_token);
        }
        if self.version.knows_async_insert() {
            // On by default from 26.3: an asynchronous INSERT returns before its rows are in a
            // part, and the sink acks on return.
            insert = insert.with_setting("async_insert", "0");
        }
        for row in rows {
            insert.write(*row).await.map_err(insert_error)?;
        }
        insert.end().await.map_err(insert_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_failures_say_so() {
        let error = DatabaseError {
            operation: "version query",
            target: "http://ch:8123 as user 'writer'".into(),
            source: clickhouse::error::Error::BadResponse(
                "Code: 193, e.displayText() = DB::Exception: Wrong password for user writer".into(),
            ),
        };
        assert_eq!(error.class(), ErrorClass::Permanent);
        assert!(
            error.to_string().starts_with(
                "clickhouse version query on http://ch:8123 as user 'writer' failed: authentication failed"
            ),
            "{error}"
        );
        let other = DatabaseError {
            operation: "insert",
            target: "db.t".into(),
            source: clickhouse::error::Error::BadResponse("Code: 60. Table x doesn't exist".into()),
        };
        assert_eq!(other.to_string(), "clickhouse insert on db.t failed");
    }

    #[test]
    fn classifies_server_codes() {
        let check = |text: &str, class: ErrorClass| {
            let error = clickhouse::error::Error::BadResponse(text.into());
            assert_eq!(classify_clickhouse_error(&error), class, "{text}");
        };
        check(
            "Code: 193, e.displayText() = DB::Exception: Wrong password for user default",
            ErrorClass::Permanent,
        );
        check(
            "Code: 60, e.displayText() = DB::Exception: Table x doesn't exist.",
            ErrorClass::Permanent,
        );
        check(
            "Code: 252. DB::Exception: Too many parts (300).",
            ErrorClass::Transient,
        );
        check(
            "Code: 241. DB::Exception: Memory limit exceeded",
            ErrorClass::Transient,
        );
        check(
            "Code: 192, e.displayText() = DB::Exception: Unknown user nobody",
            ErrorClass::Permanent,
        );
        check(
            "Code: 516. DB::Exception: writer: Authentication failed: password is incorrect, or there is no user with such name.",
            ErrorClass::Permanent,
        );
        check("no code at all", ErrorClass::Transient);
        assert_eq!(
            classify_clickhouse_error(&clickhouse::error::Error::TimedOut),
            ErrorClass::Transient
        );
    }
}
