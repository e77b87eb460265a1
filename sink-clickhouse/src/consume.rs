//! The per-stream orchestration: provision, then two tasks. The collector pulls messages and
//! cuts batches by rows, bytes or age; the writer settles one batch at a time and acks it
//! ([`crate::batch`]). A bounded channel of one batch between them overlaps pulling with
//! inserting without ever holding more than two batches (plus the client's prefetch) in
//! memory. The rules they follow are [`crate::delivery`]'s; this module only wires them.
//!
//! Consumers this version creates use `AckPolicy::All` (one ack per batch); one created by an
//! earlier version keeps `AckPolicy::Explicit` (nats-server cannot change it) and gets every
//! message acked.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt as _, StreamExt};
use runtime::provision::{ensure_pull_consumer, ensure_stream, event_stream_config};
use runtime::retry::{retry, RetryError};
use runtime::{ErrorClass, Health, RetryPolicy};
use schema::Kind;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::batch::{settle_batch, Batch, Delivery, Settlement};
use crate::config::{BatchPolicy, ConsumerSettings, SinkSettings};
use crate::database::{Database, DatabaseError};
use crate::delivery::{
    self, AckMode, CheckScope, ConsumerSequence, DeliveryTracker, Incarnation, StreamSequence,
};
use crate::events;
use crate::lease::{ConsumerLease, LeaseError};
use crate::positions::{self, PositionError, PositionMode, PositionStore, SettledPosition};
use crate::recovery::Recovery;
use crate::rows::StoredObservation;
use crate::shutdown::SinkShutdown;

/// What the sink shares between its per-stream tasks.
pub struct SinkContext {
    /// JetStream, for consumers and dead letters.
    pub jetstream: jetstream::Context,
    /// Target database.
    pub database: Database,
    /// Validated settings.
    pub settings: SinkSettings,
    /// Readiness reported on `/readyz`.
    pub health: Health,
    /// When to stop pulling and when to stop waiting.
    pub shutdown: SinkShutdown,
    /// The lease that makes this process the only one acking the consumer.
    pub lease: Arc<ConsumerLease>,
}

/// Why a stream's loop stopped.
#[derive(Debug, Error)]
pub enum ConsumeError {
    /// The stream or consumer could not be declared.
    #[error(transparent)]
    Provision(#[from] runtime::provision::ProvisionError),
    /// ClickHouse refused in a way no retry can fix (credentials, missing table, …).
    #[error("{kind} batch not written; its messages stay un-acked in JetStream and will be retried after the cause is fixed")]
    Database {
        /// Stream kind.
        kind: Kind,
        /// The ClickHouse error.
        #[source]
        source: DatabaseError,
    },
    /// A dead letter could not be published (only on shutdown or a permanent NATS error).
    #[error("cannot publish dead letter for {stream} sequence {sequence}")]
    DeadLetter {
        /// Source stream.
        stream: &'static str,
        /// Source sequence.
        sequence: u64,
        /// The publish error.
        #[source]
        source: async_nats::Error,
    },
    /// The JetStream pull could not be started.
    #[error("cannot pull from consumer {consumer} on {stream}")]
    Pull {
        /// Stream name.
        stream: &'static str,
        /// Consumer name.
        consumer: String,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// The consumer lease lapsed or was taken over: acking could ack another sink's messages.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// Messages delivered but not acked could not be re-read.
    #[error("cannot re-read {stream} sequences {first}..={last} (delivered, not acked); they stay un-acked, and a restarted sink re-reads them first")]
    Recovery {
        /// Stream name.
        stream: &'static str,
        /// First sequence of the range.
        first: u64,
        /// Last sequence of the range.
        last: u64,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// The positions bucket of `--positions table` could not be opened.
    #[error("{kind}: cannot read positions (--positions table)")]
    Positions {
        /// Stream kind.
        kind: Kind,
        /// The store's error.
        #[source]
        source: PositionError,
    },
    /// Another sink consumer of the stream covers the same subjects.
    #[error("{stream}: sink consumer(s) {others:?} read the same subjects as {own}, so both would write the same messages; stop the sinks using them, delete them ({removal}; the other streams likely need the same) and start again (the new consumer reads from the start and the check skips what is already written)")]
    LayoutConflict {
        /// Stream name.
        stream: &'static str,
        /// This sink's consumer.
        own: String,
        /// The overlapping consumers.
        others: Vec<String>,
        /// The commands that delete them.
        removal: String,
    },
    /// The drain timeout expired with work in flight; un-acked messages will be redelivered.
    #[error(
        "stopped before {kind} batch was settled (drain timeout); its messages will be redelivered"
    )]
    Interrupted {
        /// Stream kind.
        kind: Kind,
    },
}

/// The life of the stream being consumed: its incarnation, which table rows count as its own,
/// and the watermark of rule **check**.
#[derive(Debug, Clone, Copy)]
struct StreamLife {
    scope: CheckScope,
    watermark: StreamSequence,
}

impl StreamLife {
    /// Reads what the table holds for `incarnation`, logging earlier lives.
    async fn establish<O: StoredObservation>(
        context: &SinkContext,
        incarnation: Incarnation,
    ) -> Result<StreamLife, ConsumeError> {
        let kind = O::KIND;
        let stop = context.shutdown.abandoned();
        let lives = retry(
            RetryPolicy::INSERT.named("incarnations"),
            stop,
            DatabaseError::class,
            || context.database.incarnations::<O>(),
        )
        .await
        .map_err(|error| database_error(kind, error))?;
        let newest_legacy = lives
            .iter()
            .find(|life| life.incarnation == Incarnation::LEGACY.0)
            .map(|life| i64::from(life.newest_ingest));
        let scope = CheckScope::decide(incarnation, newest_legacy);
        let others: Vec<_> = lives
            .into_iter()
            .filter(|life| life.incarnation != incarnation.0)
            .collect();
        events::consuming_incarnation(kind, incarnation, &others, scope.include_legacy);
        let watermark = retry(
            RetryPolicy::INSERT.named("watermark"),
            stop,
            DatabaseError::class,
            || context.database.max_sequence::<O>(scope),
        )
        .await
        .map_err(|error| database_error(kind, error))?;
        Ok(StreamLife { scope, watermark })
    }
}

fn incarnation_of(stream: &jetstream::stream::Stream) -> Incarnation {
    Incarnation::from_created_nanos(stream.cached_info().created.unix_timestamp_nanos())
}

/// Consumes `O`'s stream into its table until intake stops, then drains.
///
/// # Errors
///
/// A [`ConsumeError`] for a permanent failure; transient ones are retried here.
pub async fn consume_stream<O: StoredObservation>(
    context: Arc<SinkContext>,
) -> Result<(), ConsumeError> {
    let kind = O::KIND;
    events::register(kind);
    let stream = ensure_stream(
        &context.jetstream,
        event_stream_config(kind, &context.settings.streams),
    )
    .await?;
    let mut consumer_config = consumer_config(kind, &context.settings);
    // nats-server cannot change a durable consumer's filter or ack policy: one created by an
    // earlier version keeps its whole-stream filter and explicit acks (correct, only slower).
    let existing = stream
        .consumer_info(&context.settings.consumer.durable_name)
        .await
        .ok();
    if let Some(existing) = &existing {
        if consumer_config.filter_subject.is_empty() {
            consumer_config.filter_subject = existing.config.filter_subject.clone();
        }
        consumer_config.ack_policy = existing.config.ack_policy;
    }
    refuse_overlapping_consumers(&context, kind, &stream, &consumer_config.filter_subject).await?;
    let incarnation = incarnation_of(&stream);
    let mut life = StreamLife::establish::<O>(&context, incarnation).await?;
    let (reader, recovery, ack_policy, positions) = match context.settings.consumer.positions {
        PositionMode::Table => {
            let store = PositionStore::open(&context.jetstream)
                .await
                .map_err(|source| ConsumeError::Positions { kind, source })?;
            let recorded = match store
                .read(&context.settings.consumer.durable_name, kind)
                .await
            {
                Ok(recorded) => recorded,
                Err(error) => {
                    tracing::warn!(kind = %kind, %error, "position record unreadable; reading from the durable floor or the stream's start, the check skips what is written");
                    None
                }
            };
            let floor = existing
                .as_ref()
                .map(|info| StreamSequence(info.ack_floor.stream_sequence));
            let start = positions::resume_from(incarnation, recorded, floor);
            // Recorded before the first read, so a replay into the live tables is bounded by
            // this sink from its start (rule **replay behind the live sink**).
            record_position(
                &context,
                &store,
                kind,
                SettledPosition {
                    incarnation: incarnation.0,
                    settled_through: start.0.saturating_sub(1),
                },
            )
            .await?;
            tracing::info!(kind = %kind, start = start.0, ?recorded, durable_ack_floor = floor.map(|floor| floor.0), "reading without acks from the recorded position");
            (
                Reader::positioned(&context.settings.consumer, start),
                None,
                consumer::AckPolicy::None,
                Some(store),
            )
        }
        PositionMode::Acks => {
            let consumer = ensure_pull_consumer(&stream, consumer_config.clone()).await?;
            let mut recovery = match consumer_config.ack_policy {
                consumer::AckPolicy::All => Some(Recovery::new(
                    stream.clone(),
                    consumer.clone(),
                    consumer_config.filter_subject.clone(),
                )),
                _ => None,
            };
            if let Some(recovery) = recovery.as_mut() {
                let last = recovery.run::<O>(&context, life.scope).await?;
                life.watermark = life.watermark.max(last);
            }
            let policy = consumer_config.ack_policy;
            (
                Reader::Durable {
                    consumer,
                    config: Box::new(consumer_config.clone()),
                },
                recovery,
                policy,
                None,
            )
        }
    };
    let filter = match consumer_config.filter_subject.as_str() {
        "" => "(whole stream)",
        filter => filter,
    };
    tracing::info!(
        kind = %kind,
        incarnation = %incarnation,
        watermark = life.watermark.0,
        consumer = %context.settings.consumer.durable_name,
        filter,
        ack_policy = ?ack_policy,
        "consuming stream"
    );

    let (batches, received) = mpsc::channel::<Batch>(1);
    let writer = tokio::spawn(write_batches::<O>(
        context.clone(),
        received,
        life,
        recovery,
        positions,
    ));
    let collected = collect_batches(&context, kind, stream, reader, &batches).await;
    drop(batches);
    let written = match writer.await {
        Ok(result) => result,
        Err(join_error) => {
            tracing::error!(kind = %kind, %join_error, "writer task failed");
            Err(ConsumeError::Interrupted { kind })
        }
    };
    // A writer error explains a collector that stopped because the writer went away.
    written.and(collected)
}

/// Writes a starting record (retried: a replay into the live tables must see it before this
/// sink writes anything without a look).
async fn record_position(
    context: &SinkContext,
    store: &PositionStore,
    kind: Kind,
    position: SettledPosition,
) -> Result<(), ConsumeError> {
    retry(
        RetryPolicy::CONNECT.named("position_record"),
        context.shutdown.abandoned(),
        |_| ErrorClass::Transient,
        || store.record(&context.settings.consumer.durable_name, kind, position),
    )
    .await
    .map_err(|error| match error {
        RetryError::Failed(source) => ConsumeError::Positions { kind, source },
        RetryError::Cancelled => ConsumeError::Interrupted { kind },
    })
}

/// Rule **one layout at a time**, checked against the consumers the stream has now.
async fn refuse_overlapping_consumers(
    context: &SinkContext,
    kind: Kind,
    stream: &jetstream::stream::Stream,
    own_filter: &str,
) -> Result<(), ConsumeError> {
    let mut listed = stream.consumers();
    let mut existing = Vec::new();
    while let Some(info) = listed.next().await {
        match info {
            Ok(info) => existing.push((info.name.clone(), info.config.filter_subject.clone())),
            Err(error) => {
                return Err(ConsumeError::Pull {
                    stream: kind.stream_name(),
                    consumer: context.settings.consumer.durable_name.clone(),
                    source: error.into(),
                })
            }
        }
    }
    let others = delivery::overlapping_sink_consumers(
        &context.settings.consumer.base_name,
        &context.settings.consumer.durable_name,
        own_filter,
        existing
            .iter()
            .map(|(name, filter)| (name.as_str(), filter.as_str())),
    );
    if others.is_empty() {
        Ok(())
    } else {
        let removal = others
            .iter()
            .map(|other| format!("`nats consumer rm {} {other}`", kind.stream_name()))
            .collect::<Vec<_>>()
            .join(", ");
        Err(ConsumeError::LayoutConflict {
            stream: kind.stream_name(),
            own: context.settings.consumer.durable_name.clone(),
            others,
            removal,
        })
    }
}

fn consumer_config(kind: Kind, settings: &SinkSettings) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(settings.consumer.durable_name.clone()),
        description: Some(format!("sink-clickhouse: {kind} events into clickhouse")),
        filter_subject: match settings.consumer.partition {
            Some(partition) => kind.partition_filter(partition.index),
            // No filter: the stream holds only this kind's subjects, and nats-server 2.9 delivers
            // about a quarter slower to a consumer whose filter merely repeats the stream's
            // subject than to one without (measured by `bench`, see BENCHMARKS.md).
            None => String::new(),
        },
        // One ack per batch (rule **ack all**); an existing consumer keeps its own policy.
        ack_policy: consumer::AckPolicy::All,
        ack_wait: settings.consumer.ack_wait,
        max_ack_pending: settings.consumer.max_ack_pending as i64,
        // Never give up on a message: an observation that cannot be written waits.
        max_deliver: -1,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// How the collector reads its stream.
enum Reader {
    /// Through the durable consumer (`--positions acks`).
    Durable {
        consumer: consumer::PullConsumer,
        config: Box<consumer::pull::Config>,
    },
    /// Through an ephemeral consumer without acks (`--positions table`), made again from the
    /// next stream sequence whenever deliveries skip a consumer sequence or the consumer is
    /// gone.
    Positioned(PositionedReader),
}

/// The state of a `--positions table` read.
struct PositionedReader {
    /// Base of the ephemeral consumers' names (`<durable>-table-<process token>`).
    name_prefix: String,
    /// Consumers made so far, suffixed to the name.
    serial: u64,
    /// The stream sequence to read next.
    next: StreamSequence,
    /// Rule **gap** over the current consumer's deliveries.
    tracker: DeliveryTracker,
    inactive_threshold: Duration,
    current: Option<consumer::PullConsumer>,
}

impl Reader {
    fn positioned(settings: &ConsumerSettings, start: StreamSequence) -> Reader {
        Reader::Positioned(PositionedReader {
            name_prefix: format!(
                "{}-table-{}",
                settings.durable_name,
                crate::lease::process_token()
            ),
            serial: 0,
            next: start,
            tracker: DeliveryTracker::after_reread(ConsumerSequence(0)),
            inactive_threshold: settings.reread_inactive_threshold,
            current: None,
        })
    }

    /// Pulls again after the message stream ended: from the same durable consumer, or from a
    /// new ephemeral one (an ephemeral consumer is only ever read once).
    async fn resume(
        &mut self,
        stream: &jetstream::stream::Stream,
        kind: Kind,
        policy: &BatchPolicy,
    ) -> Result<consumer::pull::Stream, ConsumeError> {
        match self {
            Reader::Durable { consumer, .. } => open_messages(consumer, kind, policy).await,
            Reader::Positioned(_) => self.open(stream, kind, policy).await,
        }
    }

    /// Opens the message stream: the durable consumer declared again, or a new ephemeral
    /// consumer from the next sequence (the previous one deleted).
    async fn open(
        &mut self,
        stream: &jetstream::stream::Stream,
        kind: Kind,
        policy: &BatchPolicy,
    ) -> Result<consumer::pull::Stream, ConsumeError> {
        match self {
            Reader::Durable { consumer, config } => {
                *consumer = ensure_pull_consumer(stream, config.as_ref().clone()).await?;
                open_messages(consumer, kind, policy).await
            }
            Reader::Positioned(reader) => {
                if let Some(previous) = reader.current.take() {
                    let name = previous.cached_info().name.clone();
                    // Best effort: an ephemeral consumer also expires by itself.
                    let _ = stream.delete_consumer(&name).await;
                }
                reader.serial += 1;
                let config = consumer::pull::Config {
                    name: Some(format!("{}-{}", reader.name_prefix, reader.serial)),
                    description: Some(format!(
                        "sink-clickhouse: {kind} events into clickhouse, positions in the table"
                    )),
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: reader.next.0.max(1),
                    },
                    inactive_threshold: reader.inactive_threshold,
                    memory_storage: true,
                    num_replicas: 1,
                    ..Default::default()
                };
                let consumer = retry(
                    RetryPolicy::CONNECT.named("positioned_consumer"),
                    &tokio_util::sync::CancellationToken::new(),
                    |_| ErrorClass::Transient,
                    || stream.create_consumer(config.clone()),
                )
                .await
                .map_err(|error| ConsumeError::Pull {
                    stream: kind.stream_name(),
                    consumer: reader.name_prefix.clone(),
                    source: match error {
                        RetryError::Failed(source) => source.into(),
                        RetryError::Cancelled => "cancelled".into(),
                    },
                })?;
                reader.tracker = DeliveryTracker::after_reread(ConsumerSequence(0));
                let messages = open_messages(&consumer, kind, policy).await;
                reader.current = Some(consumer);
                messages
            }
        }
    }

    /// Whether `message` continues the read. A positioned read that skipped a consumer
    /// sequence (a delivery lost between server and client) drops the message and must be
    /// opened again from the next stream sequence.
    fn accepts(&mut self, kind: Kind, delivery: Option<Delivery>) -> bool {
        let Reader::Positioned(reader) = self else {
            return true;
        };
        let Some(delivery) = delivery else {
            // Settling logs and skips it; it does not move the position.
            return true;
        };
        if let Some(missing) = reader.tracker.observe(delivery.consumer_sequence) {
            tracing::warn!(kind = %kind, missing = missing.0, delivered = delivery.consumer_sequence.0, next = reader.next.0, "deliveries skipped a consumer sequence; reading again from the next stream sequence");
            events::delivery_gap(kind, missing.0);
            return false;
        }
        reader.next = StreamSequence(delivery.stream_sequence.0 + 1);
        true
    }

    /// A recreated stream is read from its first message.
    fn restart_from_first(&mut self) {
        if let Reader::Positioned(reader) = self {
            reader.next = StreamSequence(1);
        }
    }

    /// Whether progress acks mean anything to this consumer.
    fn acks(&self) -> bool {
        matches!(self, Reader::Durable { .. })
    }
}

/// How many already-received messages `collect_batches` takes in a row before it looks at
/// shutdown and the batch's age again: a few milliseconds of work.
const READY_RUN: usize = 512;

async fn collect_batches(
    context: &SinkContext,
    kind: Kind,
    mut stream: jetstream::stream::Stream,
    mut reader: Reader,
    batches: &mpsc::Sender<Batch>,
) -> Result<(), ConsumeError> {
    let policy = context.settings.batch;
    let ack_wait = reader.acks().then_some(context.settings.consumer.ack_wait);
    let intake = context.shutdown.intake();
    let mut batch = Batch::new(incarnation_of(&stream), &policy);
    let mut messages = reader.resume(&stream, kind, &policy).await?;
    loop {
        let deadline = batch.deadline(&policy);
        let mut next = tokio::select! {
            biased;
            () = intake.cancelled() => break,
            () = sleep_until(deadline) => {
                hand_off(batches, batch.take(), ack_wait).await?;
                continue;
            }
            next = messages.next() => next,
        };
        // Messages already received are taken without building the select again (its
        // cancellation future and timer, made and dropped per message, cost the sink about
        // 1,300 instructions per message under callgrind), up to READY_RUN of them: then the
        // select sees a shutdown or a batch past its age bound again.
        let mut taken = 0;
        loop {
            match next {
                Some(Ok(message)) => {
                    let delivery = Delivery::of(&message);
                    if !reader.accepts(kind, delivery) {
                        drop(messages);
                        messages = reader.open(&stream, kind, &policy).await?;
                        break;
                    }
                    batch.push(message, delivery);
                    if batch.is_full(&policy) {
                        hand_off(batches, batch.take(), ack_wait).await?;
                    }
                }
                Some(Err(error)) => {
                    use consumer::pull::MessagesErrorKind as K;
                    tracing::warn!(kind = %kind, %error, "pull interrupted");
                    if matches!(
                        error.kind(),
                        K::ConsumerDeleted
                            | K::NoResponders
                            | K::RequestLimitExceeded
                            | K::MissingHeartbeat
                    ) {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        // The stream itself may have been deleted and recreated: provision
                        // again and cut the batch before messages of a new incarnation join it.
                        stream = ensure_stream(
                            &context.jetstream,
                            event_stream_config(kind, &context.settings.streams),
                        )
                        .await?;
                        let incarnation = incarnation_of(&stream);
                        if incarnation != batch.incarnation {
                            tracing::warn!(kind = %kind, previous = %batch.incarnation, %incarnation, "the stream was recreated; its sequences start again under a new incarnation");
                            hand_off(batches, batch.take(), ack_wait).await?;
                            batch = Batch::new(incarnation, &policy);
                            reader.restart_from_first();
                        }
                        drop(messages);
                        messages = reader.open(&stream, kind, &policy).await?;
                    }
                    break;
                }
                None => {
                    tracing::warn!(kind = %kind, "pull stream ended; reopening");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    drop(messages);
                    messages = reader.resume(&stream, kind, &policy).await?;
                    break;
                }
            }
            taken += 1;
            if taken == READY_RUN {
                break;
            }
            match messages.next().now_or_never() {
                Some(ready) => next = ready,
                None => break,
            }
        }
    }
    // Stop intake first, then hand the partial batch to the writer for a final flush.
    drop(messages);
    if let Reader::Positioned(PositionedReader {
        current: Some(consumer),
        ..
    }) = &reader
    {
        let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    }
    if !batch.messages.is_empty() {
        hand_off(batches, batch.take(), ack_wait).await?;
    }
    Ok(())
}

async fn open_messages(
    consumer: &consumer::PullConsumer,
    kind: Kind,
    policy: &BatchPolicy,
) -> Result<consumer::pull::Stream, ConsumeError> {
    let shutdown_never = tokio_util::sync::CancellationToken::new();
    retry(
        RetryPolicy::CONNECT.named("pull"),
        &shutdown_never,
        |_| ErrorClass::Transient,
        || pull_messages(consumer, policy.max_rows),
    )
    .await
    .map_err(|error| ConsumeError::Pull {
        stream: kind.stream_name(),
        consumer: consumer.cached_info().name.clone(),
        source: match error {
            RetryError::Failed(source) => source.into(),
            RetryError::Cancelled => "cancelled".into(),
        },
    })
}

async fn pull_messages(
    consumer: &consumer::PullConsumer,
    max_rows: usize,
) -> Result<consumer::pull::Stream, consumer::StreamError> {
    consumer
        .stream()
        .max_messages_per_batch(max_rows.clamp(1, 10_000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends a full batch to the writer, keeping its messages alive with progress acks (when
/// `ack_wait` is given: a consumer with acks) while the writer is busy (for example retrying
/// an INSERT while ClickHouse is down).
async fn hand_off(
    batches: &mpsc::Sender<Batch>,
    batch: Batch,
    ack_wait: Option<Duration>,
) -> Result<(), ConsumeError> {
    if batch.messages.is_empty() {
        return Ok(());
    }
    let kind = batch
        .messages
        .first()
        .and_then(|message| message.info().ok())
        .and_then(|info| Kind::from_stream_name(info.stream))
        .unwrap_or(Kind::Wave);
    // Room in the channel first, while the batch is still here to keep alive: handing it over
    // then cannot wait.
    let room = match ack_wait {
        Some(ack_wait) => {
            crate::batch::keep_alive(batches.reserve(), &batch.messages, ack_wait).await
        }
        None => batches.reserve().await,
    };
    // The writer stopped; its own error is reported by consume_stream.
    room.map_err(|_closed| ConsumeError::Interrupted { kind })?
        .send(batch);
    Ok(())
}

/// Settles batches in order. Under `AckPolicy::All` it also follows the consumer sequence of
/// every delivery (rule **gap**): a gap leaves the batch un-acked, and the un-acked range is
/// re-read before anything else is acked. A batch of a new stream incarnation (the stream was
/// recreated) re-reads what the table holds of it first.
async fn write_batches<O: StoredObservation>(
    context: Arc<SinkContext>,
    mut received: mpsc::Receiver<Batch>,
    mut life: StreamLife,
    mut recovery: Option<Recovery>,
    positions: Option<PositionStore>,
) -> Result<(), ConsumeError> {
    while let Some(batch) = received.recv().await {
        if batch.incarnation != life.scope.current {
            if let Some(store) = &positions {
                // The new life is read from its first message: nothing of it is settled.
                record_position(
                    &context,
                    store,
                    O::KIND,
                    SettledPosition {
                        incarnation: batch.incarnation.0,
                        settled_through: 0,
                    },
                )
                .await?;
            }
            life = StreamLife::establish::<O>(&context, batch.incarnation).await?;
            if let Some(recovery) = recovery.as_mut() {
                // The re-read writes the new life's un-acked range, which holds this batch and
                // the ones behind it: they are checked against the table, not written again.
                let last = recovery.run::<O>(&context, life.scope).await?;
                life.watermark = life.watermark.max(last);
            }
        }
        let ack_mode = match (&recovery, &positions) {
            (Some(_), _) => AckMode::HighestOfBatch,
            (None, Some(_)) => AckMode::Nothing,
            (None, None) => AckMode::EachMessage,
        };
        // Under `--positions table` the batch's last delivery is its highest sequence.
        let settled = batch.last_delivery().map(|delivery| SettledPosition {
            incarnation: batch.incarnation.0,
            settled_through: delivery.stream_sequence.0,
        });
        let settlement = Settlement {
            scope: life.scope,
            watermark: life.watermark,
            ack_mode,
            tracker: recovery.as_mut().map(|recovery| &mut recovery.tracker),
        };
        let gap = settle_batch::<O>(&context, batch, settlement).await?;
        if let (Some(store), Some(settled)) = (&positions, settled) {
            if let Err(error) = store
                .record(&context.settings.consumer.durable_name, O::KIND, settled)
                .await
            {
                // Only a hint: a restart resumes from the previous record and checks.
                tracing::warn!(kind = %O::KIND, %error, "position not recorded");
            }
        }
        if let (Some(missing), Some(recovery)) = (gap, recovery.as_mut()) {
            events::delivery_gap(O::KIND, missing.0);
            let last = recovery.run::<O>(&context, life.scope).await?;
            // What was re-read may come again as ordinary deliveries: check those.
            life.watermark = life.watermark.max(last);
        }
    }
    Ok(())
}

fn database_error(kind: Kind, error: RetryError<DatabaseError>) -> ConsumeError {
    match error {
        RetryError::Failed(source) => ConsumeError::Database { kind, source },
        RetryError::Cancelled => ConsumeError::Interrupted { kind },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    fn settings(args: &[&str]) -> SinkSettings {
        let mut argv = vec!["sink-clickhouse", "run"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("parsed another command")
        };
        run.settings().unwrap()
    }

    #[test]
    fn only_partitioned_consumers_filter() {
        let whole = consumer_config(Kind::Wave, &settings(&[]));
        assert_eq!(
            whole.filter_subject, "",
            "the stream holds only wave subjects"
        );
        let partitioned = consumer_config(
            Kind::Wave,
            &settings(&["--partitions", "4", "--partition", "2"]),
        );
        assert_eq!(partitioned.filter_subject, "nomadwave.wave.2.*");
        assert_eq!(
            partitioned.durable_name.as_deref(),
            Some("sink-clickhouse-p2")
        );
    }
}
