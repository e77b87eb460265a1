//! JetStream side: filling the `WAVE` stream with the events every phase uses, and the raw
//! consume rate of a plain pull consumer.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use edge_sim::synthetic::{Synthesizer, SyntheticEvent};
use futures::stream::{FuturesUnordered, StreamExt as _};
use schema::Kind;

/// Sites the synthetic events rotate through (edge-sim publish's default).
pub const SITES: u64 = 16;
/// Seed of the synthetic values (edge-sim publish's default).
pub const SEED: u64 = 1;
/// Publishes awaiting their ack at once while filling the stream.
const PREFILL_IN_FLIGHT: usize = 4096;
/// Messages acked together by [`AckMode::EachMessageInBursts`] (the sink's default batch).
const BURST: usize = 50_000;
/// Events generated per chunk handed to the publisher.
const CHUNK: usize = 4096;

/// The synthesizer every phase draws its events from.
pub fn synthesizer() -> Synthesizer {
    Synthesizer {
        kind: Kind::Wave,
        sites: SITES,
        seed: SEED,
    }
}

/// A JetStream context with generous timeouts for bulk work on a loaded machine.
pub fn context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(60))
        .build(client)
}

/// What a fill sent.
pub struct Filled {
    /// Events stored.
    pub events: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// Wall time from first publish to last ack.
    pub seconds: f64,
    /// `(stream sequence, payload)` of each event, when asked to keep them.
    pub kept: Vec<(u64, Bytes)>,
}

/// One message to publish.
pub struct ToPublish {
    /// Subject.
    pub subject: String,
    /// Sent as `Nats-Msg-Id`.
    pub id: String,
    /// Body.
    pub payload: Bytes,
}

impl From<SyntheticEvent> for ToPublish {
    fn from(event: SyntheticEvent) -> ToPublish {
        ToPublish {
            subject: event.subject,
            id: event.event_id,
            payload: event.payload,
        }
    }
}

/// Publishes events `offset..offset + count` (with `Nats-Msg-Id` = event id, as every NomadWave
/// publisher does) and waits for every ack.
///
/// # Errors
///
/// A publish that fails, or an event the stream already had (the stream must be new).
pub async fn fill(
    jetstream: &jetstream::Context,
    offset: u64,
    count: u64,
    keep: bool,
) -> anyhow::Result<Filled> {
    let synthesizer = synthesizer();
    let ingested_at = chrono::Utc::now();
    let (sender, chunks) = tokio::sync::mpsc::channel::<Vec<ToPublish>>(4);
    // Events are generated on a blocking thread, ahead of the publisher.
    let generator = tokio::task::spawn_blocking(move || {
        let mut index = offset;
        while index < offset + count {
            let end = (index + CHUNK as u64).min(offset + count);
            let chunk: Vec<ToPublish> = (index..end)
                .map(|index| synthesizer.event(index, ingested_at).into())
                .collect();
            if sender.blocking_send(chunk).is_err() {
                return;
            }
            index = end;
        }
    });
    let filled = publish_all(jetstream, chunks, count, PREFILL_IN_FLIGHT, keep).await?;
    generator.await.context("event generator failed")?;
    Ok(filled)
}

/// The bridge's events for the readings `edge-sim mqtt` sends, from another start time than
/// edge-sim's (so their ids differ from the bridge's own; each `start_year` gives other ids):
/// Pi-buoy payload → observation → event.
///
/// # Errors
///
/// When a reading does not parse.
pub fn bridge_events(count: u64, start_year: i32) -> anyhow::Result<Vec<ToPublish>> {
    let start = chrono::NaiveDate::from_ymd_opt(start_year, 1, 1)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc())
        .context("start time")?;
    let ingested_at = chrono::Utc::now();
    (0..count)
        .map(|index| {
            let buoy = (index % 50) as u32;
            let topic = edge_sim::swarm::topic(buoy);
            let payload = edge_sim::swarm::payload(buoy, index / 50, start);
            let observation = feeds::pi_buoy::parse(&topic, &payload)
                .map_err(|rejected| anyhow::anyhow!("{}: {}", rejected.reason, rejected.detail))?;
            let event = schema::Event::new(feeds::pi_buoy::SOURCE, observation, ingested_at);
            Ok(ToPublish {
                subject: event.subject(),
                id: event.event_id.as_str().to_owned(),
                payload: event.encode().into(),
            })
        })
        .collect()
}

/// Publishes `events` with at most `in_flight` acks outstanding; the raw JetStream publish rate.
///
/// # Errors
///
/// A publish that fails, or an event the stream already had.
pub async fn raw_publish(
    jetstream: &jetstream::Context,
    events: Vec<ToPublish>,
    in_flight: usize,
) -> anyhow::Result<Filled> {
    let count = events.len() as u64;
    let (sender, chunks) = tokio::sync::mpsc::channel::<Vec<ToPublish>>(1);
    sender
        .send(events)
        .await
        .map_err(|_| anyhow::anyhow!("publisher channel closed"))?;
    drop(sender);
    publish_all(jetstream, chunks, count, in_flight, false).await
}

async fn publish_all(
    jetstream: &jetstream::Context,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<ToPublish>>,
    count: u64,
    in_flight: usize,
    keep: bool,
) -> anyhow::Result<Filled> {
    let started = Instant::now();
    let mut kept = Vec::with_capacity(if keep { count as usize } else { 0 });
    let mut pending = FuturesUnordered::new();
    let mut bytes = 0_u64;
    let mut stored = 0_u64;
    let mut last_progress = Instant::now();
    while let Some(chunk) = chunks.recv().await {
        for event in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
            bytes += event.payload.len() as u64;
            let payload = keep.then(|| event.payload.clone());
            let ack = jetstream
                .publish_with_headers(event.subject, headers, event.payload)
                .await
                .context("publishing to WAVE")?;
            pending.push(async move { (ack.await, payload) });
            while pending.len() >= in_flight {
                settle(pending.next().await, &mut kept, &mut stored)?;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            last_progress = Instant::now();
            tracing::info!(stored, of = count, "publishing to WAVE");
        }
    }
    while let Some(result) = pending.next().await {
        settle(Some(result), &mut kept, &mut stored)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if stored != count {
        bail!("only {stored} of {count} events were stored");
    }
    kept.sort_unstable_by_key(|(sequence, _)| *sequence);
    Ok(Filled {
        events: stored,
        bytes,
        seconds,
        kept,
    })
}

type AckResult = (
    Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    Option<Bytes>,
);

fn settle(
    result: Option<AckResult>,
    kept: &mut Vec<(u64, Bytes)>,
    stored: &mut u64,
) -> anyhow::Result<()> {
    let Some((ack, payload)) = result else {
        return Ok(());
    };
    let ack = ack.context("waiting for a publish ack from WAVE")?;
    if ack.duplicate {
        bail!(
            "WAVE already had an event of this run (sequence {}): the benchmark needs a new stream",
            ack.sequence
        );
    }
    *stored += 1;
    if let Some(payload) = payload {
        kept.push((ack.sequence, payload));
    }
    Ok(())
}

/// The `WAVE` stream every phase reads and writes.
///
/// # Errors
///
/// When the stream cannot be read.
pub async fn wave_stream(
    jetstream: &jetstream::Context,
) -> anyhow::Result<jetstream::stream::Stream> {
    jetstream
        .get_stream(Kind::Wave.stream_name())
        .await
        .context("reading the WAVE stream")
}

/// Messages in the `WAVE` stream now.
///
/// # Errors
///
/// When the stream cannot be read.
pub async fn stream_messages(jetstream: &jetstream::Context) -> anyhow::Result<u64> {
    let stream = wave_stream(jetstream).await?;
    let info = stream.get_info().await.context("reading WAVE's info")?;
    Ok(info.state.messages)
}

/// How a raw consumer acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// `AckPolicy::None`: nothing to acknowledge.
    None,
    /// `AckPolicy::All`: one ack for the last message of each pull batch.
    AllPerBatch,
    /// `AckPolicy::Explicit`, every message acked on its own as it arrives.
    EachMessage,
    /// `AckPolicy::Explicit`, every message acked on its own, in bursts after each 50,000
    /// received (the sink's pattern: a whole batch is acked after its INSERT).
    EachMessageInBursts,
}

impl AckMode {
    /// Label in the report.
    pub fn label(self) -> &'static str {
        match self {
            AckMode::None => "AckPolicy::None",
            AckMode::AllPerBatch => "AckPolicy::All, one ack per pull batch",
            AckMode::EachMessage => "AckPolicy::Explicit, every message acked at once",
            AckMode::EachMessageInBursts => {
                "AckPolicy::Explicit, every message acked, in bursts of 50,000 (the sink's pattern)"
            }
        }
    }

    fn policy(self) -> consumer::AckPolicy {
        match self {
            AckMode::None => consumer::AckPolicy::None,
            AckMode::AllPerBatch => consumer::AckPolicy::All,
            AckMode::EachMessage | AckMode::EachMessageInBursts => consumer::AckPolicy::Explicit,
        }
    }
}

/// What a raw consume read.
pub struct Consumed {
    /// Messages read.
    pub messages: u64,
    /// Payload bytes read.
    pub bytes: u64,
    /// From the first pull request to the last message (and its ack).
    pub seconds: f64,
}

impl Consumed {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
}

/// The messages of `consumer`, `batch` per pull request (the raw consumers' one setting).
///
/// # Errors
///
/// When the first pull request fails.
pub async fn pull(
    consumer: &consumer::PullConsumer,
    batch: usize,
) -> anyhow::Result<consumer::pull::Stream> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .expires(Duration::from_secs(30))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .context("starting the pull")
}

/// Reads the first `count` messages of `WAVE` with a new durable pull consumer, pulling
/// `batch` messages per request, acknowledging as `mode` says and doing nothing else.
///
/// # Errors
///
/// When the consumer cannot be created or the pull fails.
pub async fn raw_consume(
    jetstream: &jetstream::Context,
    name: &str,
    count: u64,
    batch: usize,
    mode: AckMode,
    filter_subject: Option<String>,
) -> anyhow::Result<Consumed> {
    let stream = wave_stream(jetstream).await?;
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            ack_policy: mode.policy(),
            deliver_policy: consumer::DeliverPolicy::All,
            // As the sink: three of its batches may wait for their ack.
            max_ack_pending: 150_000,
            ack_wait: Duration::from_secs(120),
            filter_subject: filter_subject.unwrap_or_default(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating consumer {name}"))?;
    let started = Instant::now();
    let mut messages = pull(&consumer, batch).await?;
    let mut read = 0_u64;
    let mut bytes = 0_u64;
    let mut unacked = Vec::new();
    while read < count {
        let message = match messages.next().await {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::warn!(%error, consumer = name, "pull interrupted");
                continue;
            }
            None => bail!("pull of consumer {name} ended after {read} of {count} messages"),
        };
        read += 1;
        bytes += message.payload.len() as u64;
        let ack = match mode {
            AckMode::None => false,
            AckMode::AllPerBatch => read.is_multiple_of(batch as u64) || read == count,
            AckMode::EachMessage => true,
            AckMode::EachMessageInBursts => {
                unacked.push(message);
                if unacked.len() >= BURST || read == count {
                    for message in unacked.drain(..) {
                        message
                            .ack()
                            .await
                            .map_err(|error| anyhow::anyhow!("ack on {name}: {error}"))?;
                    }
                }
                continue;
            }
        };
        if ack {
            message
                .ack()
                .await
                .map_err(|error| anyhow::anyhow!("ack on {name}: {error}"))?;
        }
    }
    drop(messages);
    // The acks are only buffered by the client until flushed.
    jetstream
        .client()
        .flush()
        .await
        .context("flushing the last acks")?;
    let seconds = started.elapsed().as_secs_f64();
    if let Err(error) = stream.delete_consumer(name).await {
        tracing::warn!(%error, consumer = name, "cannot delete the benchmark consumer");
    }
    Ok(Consumed {
        messages: read,
        bytes,
        seconds,
    })
}
