//! Internal events: each function logs and counts one thing the sink does, so a log line and a
//! metric can never disagree.
//!
//! Metric names (all carry the global `service` label):
//! - `nomadwave_sink_rows_written_total{kind}`
//! - `nomadwave_sink_batches_total{kind}`
//! - `nomadwave_sink_insert_seconds{kind}` (histogram)
//! - `nomadwave_sink_redeliveries_skipped_total{kind}`
//! - `nomadwave_dead_letters_total{kind, reason}`
//! - `nomadwave_retries_total{operation}` (from `runtime::retry`)
//! - `nomadwave_sink_consumer_pending{kind}` (gauge)
//! - `nomadwave_sink_last_insert_timestamp_seconds{kind}` (gauge)
//! - `nomadwave_sink_lease_held{consumer}` (gauge: 1 while this instance may ack the consumer,
//!   0 while it waits as a standby)
//! - `nomadwave_sink_recovered_total{kind}` (messages left un-acked by a previous instance or by
//!   another receiver, re-read and checked before the next ack)
//! - `nomadwave_sink_delivery_gaps_total{kind}` (deliveries of the consumer that did not reach
//!   this sink; each one triggers such a re-read)
//! - `nomadwave_sink_check_seconds{kind}` (histogram: the exact check's look-ups) and
//!   `nomadwave_sink_checked_rows_total{kind}`
//! - `nomadwave_sink_stream_incarnation{kind}` (gauge: creation time, Unix seconds, of the
//!   stream incarnation being consumed; a change means the stream was recreated)
//! - `nomadwave_sink_reread_readers_recreated_total{kind}` (a re-read's ephemeral consumer
//!   expired or vanished, e.g. during a long ClickHouse outage, and was made again)

use std::time::Duration;

use schema::Kind;

/// A batch was written (or found already written) and acked.
pub fn batch_written(
    kind: Kind,
    rows_written: usize,
    already_applied: usize,
    insert_time: Duration,
) {
    let label = kind.as_str();
    metrics::counter!("nomadwave_sink_rows_written_total", "kind" => label)
        .increment(rows_written as u64);
    metrics::counter!("nomadwave_sink_batches_total", "kind" => label).increment(1);
    metrics::histogram!("nomadwave_sink_insert_seconds", "kind" => label)
        .record(insert_time.as_secs_f64());
    metrics::gauge!("nomadwave_sink_last_insert_timestamp_seconds", "kind" => label)
        .set(chrono::Utc::now().timestamp() as f64);
    if already_applied > 0 {
        metrics::counter!("nomadwave_sink_redeliveries_skipped_total", "kind" => label)
            .increment(already_applied as u64);
        tracing::info!(
            kind = label,
            already_applied,
            "messages read again were already in clickhouse; settled without writing them"
        );
    }
    tracing::debug!(
        kind = label,
        rows_written,
        insert_ms = insert_time.as_millis() as u64,
        "batch written"
    );
}

/// A message was published to the dead-letter stream.
pub fn dead_lettered(kind: Kind, stream_sequence: u64, reason: &'static str, detail: &str) {
    metrics::counter!("nomadwave_dead_letters_total", "kind" => kind.as_str(), "reason" => reason)
        .increment(1);
    tracing::warn!(
        kind = kind.as_str(),
        stream_sequence,
        reason,
        detail,
        "message dead-lettered"
    );
}

/// Messages the consumer has not yet received, as JetStream reports with each message.
pub fn consumer_pending(kind: Kind, pending: u64) {
    metrics::gauge!("nomadwave_sink_consumer_pending", "kind" => kind.as_str()).set(pending as f64);
}

/// Whether this instance holds the lease on `consumer` (and so may ack it).
pub fn lease_held(consumer: &str, held: bool) {
    metrics::gauge!("nomadwave_sink_lease_held", "consumer" => consumer.to_owned()).set(if held {
        1.0
    } else {
        0.0
    });
}

/// Messages delivered but not acked (a previous holder's, another receiver's) were re-read and
/// settled before the next ack.
pub fn recovered(kind: Kind, messages: u64, first: u64, last: u64) {
    metrics::counter!("nomadwave_sink_recovered_total", "kind" => kind.as_str())
        .increment(messages);
    tracing::info!(
        kind = kind.as_str(),
        messages,
        first,
        last,
        "re-read messages delivered but not acked; each was checked against the table"
    );
}

/// A delivery of the consumer did not reach this sink: the batch is not acked and the
/// consumer's un-acked range is re-read first.
pub fn delivery_gap(kind: Kind, missing_consumer_sequence: u64) {
    metrics::counter!("nomadwave_sink_delivery_gaps_total", "kind" => kind.as_str()).increment(1);
    tracing::warn!(
        kind = kind.as_str(),
        missing_consumer_sequence,
        "a delivery of the consumer did not reach this sink (another process pulled it, or it was lost in a reconnect); re-reading the un-acked range before acking"
    );
}

/// The exact check looked `rows` up and found `found` of them already written.
pub fn checked(kind: Kind, rows: usize, found: usize, took: Duration) {
    let label = kind.as_str();
    metrics::histogram!("nomadwave_sink_check_seconds", "kind" => label).record(took.as_secs_f64());
    metrics::counter!("nomadwave_sink_checked_rows_total", "kind" => label).increment(rows as u64);
    tracing::debug!(
        kind = label,
        rows,
        found,
        check_ms = took.as_millis() as u64,
        "exact check"
    );
}

/// The stream incarnation being consumed, with what the table holds of others.
pub fn consuming_incarnation(
    kind: Kind,
    incarnation: crate::delivery::Incarnation,
    others: &[crate::database::IncarnationRows],
    legacy_counted: bool,
) {
    metrics::gauge!("nomadwave_sink_stream_incarnation", "kind" => kind.as_str())
        .set(incarnation.created_unix_seconds() as f64);
    for other in others {
        if other.incarnation == crate::delivery::Incarnation::LEGACY.0 && legacy_counted {
            tracing::info!(
                kind = kind.as_str(),
                rows = other.rows,
                last_sequence = other.last_sequence,
                "rows from before incarnations were stored are taken as this stream's (ingested after it was created)"
            );
            continue;
        }
        tracing::warn!(
            kind = kind.as_str(),
            current_incarnation = %incarnation,
            earlier_incarnation = other.incarnation,
            rows = other.rows,
            last_sequence = other.last_sequence,
            "the table holds rows of an earlier life of this stream (deleted and recreated, or restored): their sequences are not this stream's, so they are kept and never taken for new events; an observation replayed into the new stream is stored again under the new incarnation and collapses with its old row in FINAL queries"
        );
    }
}

/// A re-read's ephemeral consumer was gone and was made again from `next`.
pub fn reread_reader_recreated(kind: Kind, next: u64, error: &str) {
    metrics::counter!("nomadwave_sink_reread_readers_recreated_total", "kind" => kind.as_str())
        .increment(1);
    tracing::warn!(
        kind = kind.as_str(),
        next_sequence = next,
        error,
        "the re-read's consumer expired or vanished; reading on through a new one"
    );
}

/// Makes every sink metric appear on `/metrics` from startup, at zero.
pub fn register(kind: Kind) {
    let label = kind.as_str();
    metrics::counter!("nomadwave_sink_rows_written_total", "kind" => label).absolute(0);
    metrics::counter!("nomadwave_sink_batches_total", "kind" => label).absolute(0);
    metrics::counter!("nomadwave_sink_redeliveries_skipped_total", "kind" => label).absolute(0);
    metrics::gauge!("nomadwave_sink_consumer_pending", "kind" => label).set(0.0);
    metrics::counter!("nomadwave_sink_recovered_total", "kind" => label).absolute(0);
    metrics::counter!("nomadwave_sink_delivery_gaps_total", "kind" => label).absolute(0);
    metrics::counter!("nomadwave_sink_checked_rows_total", "kind" => label).absolute(0);
    metrics::counter!("nomadwave_sink_reread_readers_recreated_total", "kind" => label).absolute(0);
}
