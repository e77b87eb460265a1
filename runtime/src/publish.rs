//! Publishing to JetStream with a message id, waiting for the ack.
//!
//! Every NomadWave publisher goes through [`publish_with_id`]: the id is sent as `Nats-Msg-Id`
//! so the stream drops repeats inside its duplicate window, a repeat is reported as success,
//! and a failure is retried (same id, so a retry can never add a second copy) until it is
//! acked or shutdown fires. A caller moves a cursor or acks a source only after this returns.

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::retry::{retry, ErrorClass, RetryError, RetryPolicy};

/// What JetStream did with a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored as a new message at `sequence`.
    Stored {
        /// Stream sequence of the new message.
        sequence: u64,
    },
    /// Dropped as a repeat of an id seen inside the duplicate window.
    Duplicate,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Subject to publish on.
    pub subject: String,
    /// Sent as `Nats-Msg-Id`.
    pub message_id: String,
    /// Extra headers.
    pub headers: HeaderMap,
    /// Body.
    pub payload: Bytes,
}

/// Publishes `outgoing` and waits for the stream's ack, retrying transient failures.
///
/// # Errors
///
/// [`RetryError::Cancelled`] when `shutdown` fires before the ack; the message may or may not
/// be stored, and publishing it again later is safe.
/// Builds the message that dead-letters `payload`: published on `kind`'s dead-letter subject
/// with the reason, a one-line detail and the `origin` headers (where the message came from),
/// deduplicated by `message_id` so a redelivered original yields one dead letter.
pub fn dead_letter(
    kind: schema::Kind,
    reason: &str,
    detail: &str,
    message_id: String,
    origin: &[(&'static str, &str)],
    payload: Bytes,
) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert(schema::dead_letter::REASON, reason);
    headers.insert(schema::dead_letter::DETAIL, header_safe(detail).as_str());
    for (name, value) in origin {
        headers.insert(*name, header_safe(value).as_str());
    }
    Outgoing {
        subject: kind.dead_letter_subject(),
        message_id,
        headers,
        payload,
    }
}

/// Header values must be one line of printable text.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(512)
        .collect()
}

pub async fn publish_with_id(
    jetstream: &jetstream::Context,
    outgoing: Outgoing,
    policy: RetryPolicy,
    shutdown: &CancellationToken,
) -> Result<Published, RetryError<async_nats::Error>> {
    retry(
        policy,
        shutdown,
        |_| ErrorClass::Transient,
        || publish_once(jetstream.clone(), outgoing.clone()),
    )
    .await
}

/// One attempt; takes owned values so the retried future borrows nothing.
async fn publish_once(
    jetstream: jetstream::Context,
    outgoing: Outgoing,
) -> Result<Published, async_nats::Error> {
    let mut headers = outgoing.headers;
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        outgoing.message_id.as_str(),
    );
    let ack = jetstream
        .publish_with_headers(outgoing.subject, headers, outgoing.payload)
        .await?
        .await?;
    Ok(if ack.duplicate {
        Published::Duplicate
    } else {
        Published::Stored {
            sequence: ack.sequence,
        }
    })
}
