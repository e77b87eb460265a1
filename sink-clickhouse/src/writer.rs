//! The one write path, live and replayed: per attempt, wait for the previous attempt's INSERT
//! to finish on the server, look up which sequences are already in the table (rule **check**),
//! INSERT the rest; retried with backoff on `runtime::retry` (logged, counted in
//! `nomadwave_retries_total{operation}`).
//!
//! Rule **no blind repeat**: an INSERT whose outcome is unknown (a timeout, a dropped
//! connection) is never sent again as it was: every attempt after the first checks first,
//! whatever the first one decided.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use runtime::retry::{retry, RetryError};
use runtime::{Health, RetryPolicy};
use tokio_util::sync::CancellationToken;

use crate::database::{Database, DatabaseError};
use crate::delivery::{BatchIdentity, CheckScope, StreamSequence};
use crate::events;
use crate::rows::StoredObservation;

/// A decoded message waiting for its INSERT.
pub struct PendingRow<R> {
    /// Its stream sequence (in the write's incarnation).
    pub sequence: StreamSequence,
    /// The row.
    pub row: R,
}

/// Where and how a write goes.
pub struct WriteTarget<'a> {
    /// The database.
    pub database: &'a Database,
    /// Which incarnation's rows the check looks at; also the rows' own.
    pub scope: CheckScope,
    /// Retry policy: unbounded for the live sink (backpressure), bounded for a replay.
    pub policy: RetryPolicy,
    /// Interrupts the retries.
    pub stop: &'a CancellationToken,
    /// Readiness to mark while attempts fail (the live sink's `/readyz`).
    pub health: Option<&'a Health>,
    /// Prefix of the INSERT's `query_id` and dedupe token (`""` live, `"replay-"` replay).
    pub label: &'static str,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOutcome {
    /// Rows this write inserted.
    pub written: usize,
    /// Rows found already in the table and left out.
    pub already_present: usize,
}

/// State carried across the INSERT attempts of one write.
struct InsertAttempts {
    attempt: u32,
    must_check: bool,
    previous_query_id: Option<String>,
}

/// Writes the rows not yet in the table. `must_check` false (every row a first delivery above
/// the watermark) lets the first attempt skip the look-up.
///
/// # Errors
///
/// [`RetryError::Failed`] with a permanent (or, under a bounded policy, the last) error;
/// [`RetryError::Cancelled`] when `target.stop` fired.
pub async fn write_rows<O: StoredObservation>(
    target: &WriteTarget<'_>,
    rows: &[PendingRow<O::Row>],
    must_check: bool,
) -> Result<WriteOutcome, RetryError<DatabaseError>> {
    if rows.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let attempts = Mutex::new(InsertAttempts {
        attempt: 0,
        must_check,
        previous_query_id: None,
    });
    let written = retry(target.policy, target.stop, DatabaseError::class, || {
        attempt_insert::<O>(target, rows, &attempts)
    })
    .await?;
    Ok(WriteOutcome {
        written,
        already_present: rows.len() - written,
    })
}

/// One attempt; returns how many rows it inserted.
async fn attempt_insert<O: StoredObservation>(
    target: &WriteTarget<'_>,
    rows: &[PendingRow<O::Row>],
    attempts: &Mutex<InsertAttempts>,
) -> Result<usize, DatabaseError> {
    let (attempt, must_check, previous) = {
        // Held only for this update, never across an await.
        let mut state = attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.attempt += 1;
        let must_check = state.must_check;
        // Whatever happens to this attempt, the next one must look before it writes.
        state.must_check = true;
        (state.attempt, must_check, state.previous_query_id.take())
    };
    let result = insert_missing::<O>(target, rows, must_check, previous.as_deref(), attempt).await;
    match result {
        Ok((written, query_id)) => {
            if let Some(health) = target.health {
                health.set_ready("clickhouse");
            }
            if let Some(query_id) = query_id {
                let mut state = attempts
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                state.previous_query_id = Some(query_id);
            }
            Ok(written)
        }
        Err((error, query_id)) => {
            if let Some(health) = target.health {
                health.set_not_ready("clickhouse", format!("{} insert failing: {error}", O::KIND));
            }
            let mut state = attempts
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.previous_query_id = query_id.or(previous);
            Err(error)
        }
    }
}

type AttemptResult = Result<(usize, Option<String>), (DatabaseError, Option<String>)>;

/// Waits for `previous`, checks if asked, inserts what is missing. Returns the rows written
/// and the query id of the INSERT sent (if one was).
async fn insert_missing<O: StoredObservation>(
    target: &WriteTarget<'_>,
    rows: &[PendingRow<O::Row>],
    must_check: bool,
    previous: Option<&str>,
    attempt: u32,
) -> AttemptResult {
    if let Some(previous) = previous {
        target
            .database
            .wait_until_finished(previous)
            .await
            .map_err(|error| (error, Some(previous.to_owned())))?;
    }
    let existing = if must_check {
        existing_sequences::<O>(target, rows)
            .await
            .map_err(|error| (error, None))?
    } else {
        HashSet::new()
    };
    let missing: Vec<&PendingRow<O::Row>> = rows
        .iter()
        .filter(|pending| !existing.contains(&pending.sequence.0))
        .collect();
    if missing.is_empty() {
        return Ok((0, None));
    }
    let identity = BatchIdentity::new(
        O::KIND,
        target.scope.current,
        missing
            .iter()
            .map(|pending| (pending.sequence, O::row_key(&pending.row).0)),
    );
    let token = format!("{}{identity}", target.label);
    let query_id = format!("{token}-{attempt}");
    let missing_rows: Vec<&O::Row> = missing.iter().map(|pending| &pending.row).collect();
    match target
        .database
        .insert_rows::<O>(&missing_rows, &query_id, &token)
        .await
    {
        Ok(()) => Ok((missing_rows.len(), Some(query_id))),
        Err(error) => Err((error, Some(query_id))),
    }
}

/// The sequences of `rows` already in the table, looked up within the rows' own sequence and
/// `observed_at` bounds.
async fn existing_sequences<O: StoredObservation>(
    target: &WriteTarget<'_>,
    rows: &[PendingRow<O::Row>],
) -> Result<HashSet<u64>, DatabaseError> {
    let mut first = StreamSequence(u64::MAX);
    let mut last = StreamSequence(0);
    let (_, time) = O::row_key(&rows[0].row);
    let (mut earliest, mut latest) = (time, time);
    for pending in rows {
        first = first.min(pending.sequence);
        last = last.max(pending.sequence);
        let (_, observed_at) = O::row_key(&pending.row);
        earliest = earliest.min(observed_at);
        latest = latest.max(observed_at);
    }
    let started = Instant::now();
    let existing = target
        .database
        .existing_sequences::<O>(target.scope, first, last, (earliest, latest))
        .await?;
    events::checked(O::KIND, rows.len(), existing.len(), started.elapsed());
    Ok(existing)
}
