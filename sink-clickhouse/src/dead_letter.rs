//! Dead letters of the sink: a message that is not a storable event is published, with its
//! reason and origin in headers and its payload untouched, to the dead-letter stream, and that
//! publish is acknowledged by JetStream before the message itself is (rule **ack after
//! settle**).
//!
//! The publish is retried with backoff a bounded number of times (`nomadwave_retries_total
//! {operation="dead_letter"}`); while it is retrying `/readyz` fails with `dead_letters`, and
//! once the bound is spent the stream stops with an error, so the process exits and is
//! restarted instead of stalling silently. The message stays un-acked throughout.

use std::time::Duration;

use async_nats::jetstream;
use runtime::publish::publish_with_id;
use runtime::retry::RetryError;
use runtime::{Health, RetryPolicy};
use schema::{dead_letter, Kind};
use tokio_util::sync::CancellationToken;

use crate::delivery::{Incarnation, StreamSequence};
use crate::events;

/// Header naming the incarnation of the stream the original message was read from.
pub const SOURCE_INCARNATION: &str = "Nomadwave-Source-Incarnation";

/// Dead-letter publishing: retried about a minute (delays 0.1 s doubling to 10 s), then failed.
pub const DEAD_LETTER_POLICY: RetryPolicy = RetryPolicy {
    max_retries: Some(10),
    ..RetryPolicy::PUBLISH.named("dead_letter")
};

/// How long a dead-letter publish may take before readiness says it is retrying.
const SLOW_PUBLISH: Duration = Duration::from_secs(2);

/// Readiness component of dead-letter publishing.
pub const READINESS: &str = "dead_letters";

/// The message to dead-letter.
pub struct Rejected<'a> {
    /// Source kind.
    pub kind: Kind,
    /// The stream incarnation it was read from.
    pub incarnation: Incarnation,
    /// Its stream sequence.
    pub sequence: StreamSequence,
    /// Its subject.
    pub subject: &'a str,
    /// Its payload.
    pub payload: bytes::Bytes,
    /// Reason label.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
}

/// Why a dead letter could not be stored.
#[derive(Debug)]
pub enum DeadLetterFailure {
    /// The bounded retries are spent.
    Failed(async_nats::Error),
    /// Stopped while retrying.
    Cancelled,
}

/// Publishes `rejected` and waits for JetStream's ack.
///
/// # Errors
///
/// [`DeadLetterFailure`] when the retries ran out or `stop` fired.
pub async fn publish(
    jetstream: &jetstream::Context,
    health: Option<&Health>,
    stop: &CancellationToken,
    rejected: Rejected<'_>,
) -> Result<(), DeadLetterFailure> {
    let stream = rejected.kind.stream_name();
    let sequence_text = rejected.sequence.0.to_string();
    let incarnation_text = rejected.incarnation.to_string();
    let outgoing = runtime::publish::dead_letter(
        rejected.kind,
        rejected.reason,
        &rejected.detail,
        // One dead letter per source message and stream life, however often it is redelivered.
        format!(
            "deadletter-{stream}-{}-{}",
            rejected.incarnation, rejected.sequence.0
        ),
        &[
            (dead_letter::SOURCE_STREAM, stream),
            (dead_letter::SOURCE_SEQUENCE, &sequence_text),
            (SOURCE_INCARNATION, &incarnation_text),
            (dead_letter::SOURCE_SUBJECT, rejected.subject),
        ],
        rejected.payload,
    );
    let published = publish_with_id(jetstream, outgoing, DEAD_LETTER_POLICY, stop);
    tokio::pin!(published);
    let result = tokio::select! {
        result = &mut published => result,
        () = tokio::time::sleep(SLOW_PUBLISH) => {
            if let Some(health) = health {
                health.set_not_ready(
                    READINESS,
                    format!("dead letter of {stream} sequence {sequence_text} not stored yet; retrying"),
                );
            }
            published.await
        }
    };
    match result {
        Ok(_) => {
            if let Some(health) = health {
                health.set_ready(READINESS);
            }
            events::dead_lettered(
                rejected.kind,
                rejected.sequence.0,
                rejected.reason,
                &rejected.detail,
            );
            Ok(())
        }
        Err(RetryError::Failed(source)) => Err(DeadLetterFailure::Failed(source)),
        Err(RetryError::Cancelled) => Err(DeadLetterFailure::Cancelled),
    }
}
