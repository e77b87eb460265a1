//! Log lines and metrics of the poll loop, emitted together so they never disagree.
//!
//! Every metric carries `feed` (`imos`, `bom`, `electricitymaps`) and `site` (the configured
//! target's id), so cardinality is bounded by configuration, never by upstream data.

use std::time::Duration;

use feeds::RejectedRecord;

use crate::feed::Target;

/// One HTTP response (or transport failure) with its class: `2xx`, `304`, `429`, `4xx`, `5xx`,
/// `timeout`, `connect`.
pub fn http_response(feed: &'static str, target: &Target, class: &'static str) {
    metrics::counter!(
        "nomadwave_poll_http_responses_total",
        "feed" => feed, "site" => target.site.clone(), "class" => class
    )
    .increment(1);
}

/// A transient failure that will be retried after `delay`.
pub fn retrying(
    feed: &'static str,
    target: &Target,
    attempt: usize,
    delay: Duration,
    failure: &str,
    server_asked: bool,
) {
    tracing::warn!(
        feed,
        site = %target.site,
        url = %target.url,
        attempt,
        delay_ms = delay.as_millis() as u64,
        retry_after = server_asked,
        failure,
        "poll failed transiently; retrying"
    );
    metrics::counter!("nomadwave_retries_total", "operation" => "http").increment(1);
}

/// What one successful poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Events JetStream stored.
    pub published: u64,
    /// Events JetStream dropped as duplicates of its window.
    pub duplicates_in_stream: u64,
    /// Records repeating another record of the same response.
    pub duplicates_in_response: u64,
    /// Records the cursor had already published unchanged.
    pub unchanged: u64,
    /// Records older than the revision window.
    pub stale: u64,
    /// Records rejected by the parser.
    pub rejected: u64,
    /// 304: nothing fetched.
    pub not_modified: bool,
}

/// A poll that fetched, parsed and published everything it had to.
pub fn poll_succeeded(feed: &'static str, target: &Target, report: &PollReport) {
    let site = target.site.clone();
    let outcome = if report.not_modified {
        "not_modified"
    } else {
        "ok"
    };
    metrics::counter!("nomadwave_polls_total", "feed" => feed, "site" => site.clone(), "outcome" => outcome)
        .increment(1);
    metrics::counter!("nomadwave_poll_events_published_total", "feed" => feed, "site" => site.clone())
        .increment(report.published);
    metrics::counter!("nomadwave_poll_duplicates_total", "feed" => feed, "site" => site.clone(), "where" => "stream")
        .increment(report.duplicates_in_stream);
    metrics::counter!("nomadwave_poll_duplicates_total", "feed" => feed, "site" => site.clone(), "where" => "response")
        .increment(report.duplicates_in_response);
    metrics::counter!("nomadwave_poll_records_skipped_total", "feed" => feed, "site" => site.clone(), "reason" => "unchanged")
        .increment(report.unchanged);
    metrics::counter!("nomadwave_poll_records_skipped_total", "feed" => feed, "site" => site.clone(), "reason" => "stale")
        .increment(report.stale);
    metrics::gauge!("nomadwave_poll_last_success_timestamp_seconds", "feed" => feed, "site" => site)
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    tracing::info!(
        feed,
        site = %target.site,
        not_modified = report.not_modified,
        published = report.published,
        duplicates_in_stream = report.duplicates_in_stream,
        duplicates_in_response = report.duplicates_in_response,
        unchanged = report.unchanged,
        stale = report.stale,
        rejected = report.rejected,
        "poll done"
    );
}

/// A poll that ended without processing a response.
pub fn poll_failed(
    feed: &'static str,
    target: &Target,
    reason: &'static str,
    error: &dyn std::error::Error,
) {
    metrics::counter!(
        "nomadwave_polls_total",
        "feed" => feed, "site" => target.site.clone(), "outcome" => reason
    )
    .increment(1);
    tracing::error!(
        feed,
        site = %target.site,
        url = %target.url,
        reason,
        error = %runtime::config::error_line(error),
        "poll failed; next attempt at the next interval"
    );
}

/// One record of a response the parser rejected; the others were kept.
pub fn record_rejected(feed: &'static str, target: &Target, record: &RejectedRecord) {
    metrics::counter!(
        "nomadwave_poll_records_rejected_total",
        "feed" => feed, "site" => target.site.clone(), "reason" => record.reason
    )
    .increment(1);
    tracing::warn!(
        feed,
        site = %target.site,
        location = %record.location,
        reason = record.reason,
        detail = %record.detail,
        "record rejected; the rest of the response is kept"
    );
}
