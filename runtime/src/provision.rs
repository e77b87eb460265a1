//! Idempotent declaration of every JetStream object NomadWave uses.
//!
//! Every long-running command calls these at startup, so any of them can start first and a
//! restart never fails because an object already exists. Settings we own (subjects, duplicate
//! window, retention) are brought up to date on existing streams.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use schema::kind::{DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECTS};
use schema::Kind;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::retry::{retry, ErrorClass, RetryPolicy};

/// Default window in which JetStream drops a repeated `Nats-Msg-Id`.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Default retention of event streams; long enough to replay a week of backfill.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Retention and dedupe settings of the event streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPolicy {
    /// Window in which a repeated `Nats-Msg-Id` is dropped by the server.
    pub duplicate_window: Duration,
    /// How long messages are kept (replay horizon).
    pub max_age: Duration,
    /// Stream replicas in a clustered JetStream.
    pub replicas: usize,
}

/// Stream retention and dedupe flags, flattened into every command that declares streams.
///
/// Every process declaring the streams must use the same values, or they would keep updating
/// each other's settings; set them once in the environment of all jobs.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Window in which JetStream drops a repeated Nats-Msg-Id.
    #[arg(long, env = "NOMADWAVE_DUPLICATE_WINDOW", default_value = "10m", value_parser = crate::config::parse_duration)]
    pub duplicate_window: Duration,
    /// How long event streams keep messages (the replay horizon).
    #[arg(long, env = "NOMADWAVE_STREAM_MAX_AGE", default_value = "30days", value_parser = crate::config::parse_duration)]
    pub stream_max_age: Duration,
    /// Replicas of each stream in a clustered JetStream.
    #[arg(long, env = "NOMADWAVE_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
}

impl StreamArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> StreamPolicy {
        StreamPolicy {
            duplicate_window: self.duplicate_window,
            max_age: self.stream_max_age,
            replicas: self.stream_replicas,
        }
    }
}

impl Default for StreamPolicy {
    fn default() -> StreamPolicy {
        StreamPolicy {
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: DEFAULT_MAX_AGE,
            replicas: 1,
        }
    }
}

/// Why a JetStream object could not be declared.
#[derive(Debug, Error)]
pub enum ProvisionError {
    /// The stream could not be read, created or updated.
    #[error("cannot declare stream {stream}: {detail}; check that JetStream is enabled on the server (-js) and that no other stream claims the subjects {stream} needs")]
    Stream {
        /// Stream name.
        stream: String,
        /// The server's or client's message.
        detail: String,
    },
    /// The consumer could not be created or updated.
    #[error("cannot declare consumer {consumer} on stream {stream}: {detail}")]
    Consumer {
        /// Stream name.
        stream: String,
        /// Durable consumer name.
        consumer: String,
        /// The server's or client's message.
        detail: String,
    },
    /// The key-value bucket could not be opened or created.
    #[error("cannot declare key-value bucket {bucket}: {detail}")]
    KeyValue {
        /// Bucket name.
        bucket: String,
        /// The server's or client's message.
        detail: String,
    },
}

/// Stream configuration of an event kind under `policy`.
pub fn event_stream_config(kind: Kind, policy: &StreamPolicy) -> stream::Config {
    stream::Config {
        name: kind.stream_name().to_owned(),
        description: Some(format!("NomadWave {kind} events")),
        subjects: vec![kind.subject_filter()],
        duplicate_window: policy.duplicate_window,
        max_age: policy.max_age,
        num_replicas: policy.replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Declares the `WAVE`, `WEATHER`, `CARBON` and dead-letter streams.
///
/// # Errors
///
/// Returns the first stream that could not be declared.
pub async fn ensure_event_streams(
    jetstream: &jetstream::Context,
    policy: &StreamPolicy,
) -> Result<(), ProvisionError> {
    for kind in Kind::ALL {
        ensure_stream(jetstream, event_stream_config(kind, policy)).await?;
    }
    ensure_stream(
        jetstream,
        stream::Config {
            name: DEAD_LETTER_STREAM.to_owned(),
            description: Some(
                "NomadWave messages rejected by a consumer, with the reason in headers".into(),
            ),
            subjects: vec![DEAD_LETTER_SUBJECTS.to_owned()],
            duplicate_window: policy.duplicate_window,
            // Dead letters wait for a human; keep them at least as long as the events.
            max_age: policy.max_age,
            num_replicas: policy.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Creates `config`'s stream, or brings the settings we own up to date on an existing one.
///
/// # Errors
///
/// Returns [`ProvisionError::Stream`] when the server refuses.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, ProvisionError> {
    let name = config.name.clone();
    let stream_error = |detail: String| ProvisionError::Stream {
        stream: name.clone(),
        detail,
    };
    let mut existing = get_or_create_racing(jetstream, &config)
        .await
        .map_err(stream_error)?;
    let info = existing
        .info()
        .await
        .map_err(|error| stream_error(error.to_string()))?;
    let current = &info.config;
    let differs = current.subjects != config.subjects
        || current.duplicate_window != config.duplicate_window
        || current.max_age != config.max_age;
    if differs {
        tracing::info!(stream = %name, "updating stream settings");
        let mut updated = current.clone();
        updated.subjects = config.subjects;
        updated.duplicate_window = config.duplicate_window;
        updated.max_age = config.max_age;
        jetstream
            .update_stream(updated)
            .await
            .map_err(|error| stream_error(error.to_string()))?;
    }
    jetstream
        .get_stream(&name)
        .await
        .map_err(|error| stream_error(error.to_string()))
}

/// `get_or_create_stream`, tolerant of another process creating the same stream at the same
/// moment.
///
/// Every command declares the streams at startup, so two of them starting together both see
/// "not found" and both create. nats-server 2.9 can then refuse the slower one with "subjects
/// overlap with an existing stream" (10065) or "stream name already in use" (10058) although
/// the stream it wanted now exists. Those two refusals are retried under
/// [`RetryPolicy::DECLARE`], each attempt looking the stream up again, and so is a request
/// that timed out (a server busy with many such declarations at once: seen in the race test
/// with the whole suite running on two cores; the next attempt finds the stream if the
/// timed-out one made it). Any other error, or a refusal that persists, is returned.
async fn get_or_create_racing(
    jetstream: &jetstream::Context,
    config: &stream::Config,
) -> Result<stream::Stream, String> {
    let lost_race = |error: &jetstream::context::CreateStreamError| match error.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(error)
            if error.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
                || error.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST =>
        {
            ErrorClass::Transient
        }
        jetstream::context::CreateStreamErrorKind::TimedOut => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    };
    // Declaration happens before a service has a shutdown token; the policy is bounded.
    let never = CancellationToken::new();
    retry(RetryPolicy::DECLARE, &never, lost_race, || {
        jetstream.get_or_create_stream(config.clone())
    })
    .await
    .map_err(|error| error.to_string())
}

/// Creates a durable pull consumer, or updates the editable settings of an existing one.
///
/// # Errors
///
/// Returns [`ProvisionError::Consumer`] when the server refuses, for example because a
/// non-editable setting (filter, deliver policy) changed.
pub async fn ensure_pull_consumer(
    stream: &stream::Stream,
    config: consumer::pull::Config,
) -> Result<consumer::PullConsumer, ProvisionError> {
    let consumer_name = config.durable_name.clone().unwrap_or_default();
    stream
        .create_consumer(config)
        .await
        .map_err(|error| ProvisionError::Consumer {
            stream: stream.cached_info().config.name.clone(),
            consumer: consumer_name,
            detail: error.to_string(),
        })
}

/// Opens a key-value bucket, creating it with `history` revisions per key if missing.
///
/// The bucket's backing stream (`KV_<bucket>` on `$KV.<bucket>.>`) is declared with
/// [`ensure_stream`] rather than async-nats' `create_key_value`, whose request nats-server 2.9
/// answers in a shape the client cannot read. The settings are the ones a KV bucket has.
///
/// # Errors
///
/// Returns [`ProvisionError::KeyValue`] when the bucket can be neither opened nor created.
pub async fn ensure_kv(
    jetstream: &jetstream::Context,
    bucket: &str,
    history: i64,
) -> Result<kv::Store, ProvisionError> {
    if let Ok(store) = jetstream.get_key_value(bucket).await {
        return Ok(store);
    }
    let kv_error = |detail: String| ProvisionError::KeyValue {
        bucket: bucket.to_owned(),
        detail,
    };
    ensure_stream(
        jetstream,
        stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..Default::default()
        },
    )
    .await
    .map_err(|error| kv_error(error.to_string()))?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|error| kv_error(error.to_string()))
}
