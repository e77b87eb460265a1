//! The per-stream loop: pull → batch → dead-letter → exact redelivery check → INSERT → ack.
//!
//! Two tasks per stream form a two-stage pipeline. The collector pulls messages and cuts
//! batches by rows, bytes or age; the writer writes one batch at a time and acks it. A bounded
//! channel of one batch between them overlaps pulling with inserting without ever holding more
//! than two batches (plus the client's prefetch) in memory.
//!
//! Delivery rules, visible in the order of the code:
//! 1. undecodable or invalid messages are published to the dead-letter stream, and that
//!    publish is acknowledged by JetStream, before the batch is acked;
//! 2. a message JetStream redelivered, or whose sequence is at or below the table's
//!    watermark at startup, is checked against the table sequence by sequence and, if
//!    present, acked without writing (counted as a skipped redelivery);
//! 3. a batch is acked only after its INSERT returned success; while ClickHouse is down the
//!    INSERT is retried forever and the batch's messages get progress acks, so JetStream
//!    neither redelivers them nor lets them go;
//! 4. an INSERT whose outcome is unknown is never blindly repeated: the retry first waits for
//!    the server to finish the old query, then re-checks which sequences landed;
//! 5. consumers this version creates use `AckPolicy::All`, and a batch is acked by acking its
//!    highest sequence, which acks every earlier message of the consumer. That is exact
//!    because (a) the writer settles batches one at a time in delivery order, so every message
//!    first delivered before that sequence is in this batch or an earlier one; (b) before its
//!    first ack, a sink re-reads and settles (with the exact check) every message left
//!    un-acked, the range between the consumer's ack floor and its last delivered sequence;
//!    (c) the writer follows the consumer sequence of each delivery, and a gap (another
//!    process received a delivery, or one was lost in a reconnect) leaves the batch un-acked
//!    until (b) is done again. The lease ([`crate::lease`]) keeps other sinks from pulling.
//!    A consumer created by an earlier version keeps `AckPolicy::Explicit` (nats-server cannot
//!    change it) and gets every message acked.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use runtime::provision::{ensure_pull_consumer, ensure_stream, event_stream_config};
use runtime::publish::publish_with_id;
use runtime::retry::{retry, RetryError};
use runtime::{ErrorClass, Health, RetryPolicy};
use schema::{dead_letter, Event, Kind};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{BatchPolicy, SinkSettings};
use crate::database::{Database, DatabaseError};
use crate::events;
use crate::lease::{ConsumerLease, LeaseError};
use crate::rows::StoredObservation;

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
    /// Fired when the drain timeout expires: interrupts endless retries.
    pub hard_stop: CancellationToken,
    /// The lease that makes this process the only one acking the consumer.
    pub lease: Arc<ConsumerLease>,
}

/// How a settled batch is acknowledged; follows the consumer's own ack policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// `AckPolicy::All` (consumers this version creates): one ack, of the highest sequence.
    HighestOfBatch,
    /// `AckPolicy::Explicit` (consumers created by earlier versions): every message.
    EachMessage,
    /// Recovery reads through an ordered consumer: nothing to acknowledge.
    Nothing,
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
    /// The drain timeout expired with work in flight; un-acked messages will be redelivered.
    #[error(
        "stopped before {kind} batch was settled (drain timeout); its messages will be redelivered"
    )]
    Interrupted {
        /// Stream kind.
        kind: Kind,
    },
}

/// A batch being collected: messages in stream order plus their payload size.
struct Batch {
    messages: Vec<jetstream::Message>,
    bytes: usize,
    started: Option<Instant>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            messages: Vec::new(),
            bytes: 0,
            started: None,
        }
    }

    fn push(&mut self, message: jetstream::Message) {
        self.started.get_or_insert_with(Instant::now);
        self.bytes += message.payload.len();
        self.messages.push(message);
    }

    fn is_full(&self, policy: &BatchPolicy) -> bool {
        self.messages.len() >= policy.max_rows || self.bytes >= policy.max_bytes
    }

    fn deadline(&self, policy: &BatchPolicy) -> Option<tokio::time::Instant> {
        self.started
            .map(|started| tokio::time::Instant::from_std(started + policy.max_age))
    }

    fn take(&mut self) -> Batch {
        std::mem::replace(self, Batch::new())
    }
}

/// Consumes `O`'s stream into its table until `shutdown` fires, then drains.
///
/// # Errors
///
/// A [`ConsumeError`] for a permanent failure; transient ones are retried here.
pub async fn consume_stream<O: StoredObservation>(
    context: Arc<SinkContext>,
    shutdown: CancellationToken,
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
    if let Ok(existing) = stream
        .consumer_info(&context.settings.consumer.durable_name)
        .await
    {
        if consumer_config.filter_subject.is_empty() {
            consumer_config.filter_subject = existing.config.filter_subject;
        }
        consumer_config.ack_policy = existing.config.ack_policy;
    }
    let consumer = ensure_pull_consumer(&stream, consumer_config.clone()).await?;
    let mut recovery = match consumer_config.ack_policy {
        consumer::AckPolicy::All => Some(Recovery {
            stream: stream.clone(),
            consumer: consumer.clone(),
            filter: consumer_config.filter_subject.clone(),
            next_delivery: 0,
        }),
        _ => None,
    };
    let ack_mode = match recovery {
        Some(_) => AckMode::HighestOfBatch,
        None => AckMode::EachMessage,
    };
    if let Some(recovery) = recovery.as_mut() {
        recovery.run::<O>(&context).await?;
    }
    let watermark = retry(
        RetryPolicy::INSERT.named("watermark"),
        &context.hard_stop,
        DatabaseError::class,
        || context.database.max_sequence::<O>(),
    )
    .await
    .map_err(|error| database_error(kind, error))?;
    let filter = match consumer_config.filter_subject.as_str() {
        "" => "(whole stream)",
        filter => filter,
    };
    tracing::info!(
        kind = %kind,
        watermark,
        consumer = %context.settings.consumer.durable_name,
        filter,
        ?ack_mode,
        "consuming stream"
    );

    let (batches, received) = mpsc::channel::<Batch>(1);
    let writer = tokio::spawn(write_batches::<O>(
        context.clone(),
        received,
        watermark,
        recovery,
    ));
    let collected = collect_batches(
        &context,
        kind,
        &stream,
        consumer,
        consumer_config,
        &batches,
        &shutdown,
    )
    .await;
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
        // One ack per batch (module docs, rule 5); an existing consumer keeps its own policy.
        ack_policy: consumer::AckPolicy::All,
        ack_wait: settings.consumer.ack_wait,
        max_ack_pending: settings.consumer.max_ack_pending as i64,
        // Never give up on a message: an observation that cannot be written waits.
        max_deliver: -1,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

async fn collect_batches(
    context: &SinkContext,
    kind: Kind,
    stream: &jetstream::stream::Stream,
    mut consumer: consumer::PullConsumer,
    consumer_config: consumer::pull::Config,
    batches: &mpsc::Sender<Batch>,
    shutdown: &CancellationToken,
) -> Result<(), ConsumeError> {
    let policy = context.settings.batch;
    let ack_wait = context.settings.consumer.ack_wait;
    let mut batch = Batch::new();
    let mut messages = open_messages(&consumer, kind, &policy).await?;
    loop {
        let deadline = batch.deadline(&policy);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = sleep_until(deadline) => {
                hand_off(batches, batch.take(), ack_wait).await?;
            }
            next = messages.next() => match next {
                Some(Ok(message)) => {
                    batch.push(message);
                    if batch.is_full(&policy) {
                        hand_off(batches, batch.take(), ack_wait).await?;
                    }
                }
                Some(Err(error)) => {
                    use consumer::pull::MessagesErrorKind as K;
                    tracing::warn!(kind = %kind, %error, "pull interrupted");
                    if matches!(error.kind(), K::ConsumerDeleted | K::NoResponders | K::RequestLimitExceeded) {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        consumer = ensure_pull_consumer(stream, consumer_config.clone()).await?;
                        messages = open_messages(&consumer, kind, &policy).await?;
                    }
                }
                None => {
                    tracing::warn!(kind = %kind, "pull stream ended; reopening");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    messages = open_messages(&consumer, kind, &policy).await?;
                }
            }
        }
    }
    // Stop intake first, then hand the partial batch to the writer for a final flush.
    drop(messages);
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
    let shutdown_never = CancellationToken::new();
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

/// Sends a full batch to the writer, keeping its messages alive with progress acks while the
/// writer is busy (for example retrying an INSERT while ClickHouse is down).
async fn hand_off(
    batches: &mpsc::Sender<Batch>,
    batch: Batch,
    ack_wait: Duration,
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
    let mut progress = progress_ticker(ack_wait);
    let reserve = batches.reserve();
    tokio::pin!(reserve);
    loop {
        tokio::select! {
            permit = &mut reserve => {
                return match permit {
                    Ok(permit) => {
                        permit.send(batch);
                        Ok(())
                    }
                    // The writer stopped; its own error is reported by consume_stream.
                    Err(_closed) => Err(ConsumeError::Interrupted { kind }),
                };
            }
            _ = progress.tick() => send_progress(&batch.messages).await,
        }
    }
}

fn progress_ticker(ack_wait: Duration) -> tokio::time::Interval {
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

async fn send_progress(messages: &[jetstream::Message]) {
    for message in messages {
        // A lost progress ack only means an earlier redelivery, which the check absorbs.
        let _ = message.ack_with(AckKind::Progress).await;
    }
}

/// Writes batches in order. Under `AckPolicy::All` it also follows the consumer sequence of
/// every delivery: consecutive numbers prove that this sink received every delivery of the
/// consumer since its last re-read. A gap means another process received some (a paused
/// predecessor's pull request) or some were lost in transit (a reconnect); then the batch is
/// written but not acked, and the un-acked range is re-read before anything else is acked.
async fn write_batches<O: StoredObservation>(
    context: Arc<SinkContext>,
    mut received: mpsc::Receiver<Batch>,
    mut watermark: u64,
    mut recovery: Option<Recovery>,
) -> Result<(), ConsumeError> {
    while let Some(batch) = received.recv().await {
        let Some(recovery) = recovery.as_mut() else {
            write_batch::<O>(&context, batch, watermark, AckMode::EachMessage, None).await?;
            continue;
        };
        let gap = write_batch::<O>(
            &context,
            batch,
            watermark,
            AckMode::HighestOfBatch,
            Some(&mut recovery.next_delivery),
        )
        .await?;
        if let Some(missing) = gap {
            events::delivery_gap(O::KIND, missing);
            let last_stream_sequence = recovery.run::<O>(&context).await?;
            // What was re-read may come again as ordinary deliveries: check those.
            watermark = watermark.max(last_stream_sequence);
        }
    }
    Ok(())
}

/// The consumer's position in deliveries, and what is needed to re-read its un-acked range
/// (`AckPolicy::All` only).
struct Recovery {
    stream: jetstream::stream::Stream,
    consumer: consumer::PullConsumer,
    /// The consumer's filter subject (empty: the whole stream).
    filter: String,
    /// Consumer sequence the next delivery carries if this sink received every one since the
    /// last re-read.
    next_delivery: u64,
}

impl Recovery {
    /// Re-reads the un-acked range (see [`reread_unacked`]) and restarts the delivery count
    /// after it; returns the last delivered stream sequence.
    async fn run<O: StoredObservation>(
        &mut self,
        context: &Arc<SinkContext>,
    ) -> Result<u64, ConsumeError> {
        let delivered =
            reread_unacked::<O>(context, &self.stream, &mut self.consumer, &self.filter).await?;
        self.next_delivery = delivered.consumer_sequence + 1;
        Ok(delivered.stream_sequence)
    }
}

/// Settles, before anything more is acked, every message of the consumer that was delivered
/// but not acked and so may not be written: what a previous holder left, or what another
/// receiver took. Under `AckPolicy::All` the next ack would otherwise ack them unwritten. They
/// lie between the consumer's ack floor and its last delivered sequence; they are read again
/// through an ephemeral consumer with the same filter and written with the exact check, so the
/// ones already in the table are skipped. Returns the consumer's delivered position as read
/// before the re-read.
async fn reread_unacked<O: StoredObservation>(
    context: &Arc<SinkContext>,
    stream: &jetstream::stream::Stream,
    consumer: &mut consumer::PullConsumer,
    filter: &str,
) -> Result<consumer::SequenceInfo, ConsumeError> {
    let kind = O::KIND;
    let info = consumer
        .info()
        .await
        .map_err(|error| ConsumeError::Pull {
            stream: kind.stream_name(),
            consumer: context.settings.consumer.durable_name.clone(),
            source: error.into(),
        })?
        .clone();
    if info.num_ack_pending == 0 {
        return Ok(info.delivered);
    }
    let first = info.ack_floor.stream_sequence + 1;
    let last = info.delivered.stream_sequence;
    let recovery_error = |source: async_nats::Error| ConsumeError::Recovery {
        stream: kind.stream_name(),
        first,
        last,
        source,
    };
    tracing::info!(
        kind = %kind,
        un_acked = info.num_ack_pending,
        first,
        last,
        "messages delivered but not acked; re-reading them before the next ack"
    );
    // An ephemeral consumer read with no-wait fetches: an empty fetch means nothing more.
    let reader = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            filter_subject: filter.to_owned(),
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            description: Some(format!(
                "sink-clickhouse: re-reading {kind} sequences {first}..={last}"
            )),
            ..Default::default()
        })
        .await
        .map_err(|error| recovery_error(error.into()))?;
    let policy = context.settings.batch;
    let mut batch = Batch::new();
    let mut read = 0_u64;
    'fetching: loop {
        let mut fetched = reader
            .fetch()
            .max_messages(policy.max_rows.clamp(1, 10_000))
            .messages()
            .await
            .map_err(|error| recovery_error(error.into()))?;
        let mut got_any = false;
        while let Some(message) = fetched.next().await {
            let message = message.map_err(&recovery_error)?;
            let Ok(meta) = message.info() else { continue };
            got_any = true;
            if meta.stream_sequence > last {
                break 'fetching;
            }
            read += 1;
            batch.push(message);
            if batch.is_full(&policy) {
                write_batch::<O>(context, batch.take(), u64::MAX, AckMode::Nothing, None).await?;
            }
        }
        if !got_any {
            break;
        }
    }
    if !batch.messages.is_empty() {
        write_batch::<O>(context, batch.take(), u64::MAX, AckMode::Nothing, None).await?;
    }
    let _ = stream.delete_consumer(&reader.cached_info().name).await;
    events::recovered(kind, read, first, last);
    Ok(info.delivered)
}

/// A decoded message waiting for its INSERT.
pub(crate) struct PendingRow<R> {
    pub(crate) sequence: u64,
    pub(crate) row: R,
}

/// Settles one batch and acks it as `ack_mode` says. With `next_delivery` (`AckPolicy::All`)
/// it follows the consumer sequences of the deliveries; if one is missing it does not ack and
/// returns the first missing number.
#[tracing::instrument(skip_all, fields(kind = %O::KIND, messages = batch.messages.len()))]
async fn write_batch<O: StoredObservation>(
    context: &Arc<SinkContext>,
    batch: Batch,
    watermark: u64,
    ack_mode: AckMode,
    mut next_delivery: Option<&mut u64>,
) -> Result<Option<u64>, ConsumeError> {
    let kind = O::KIND;
    let mut gap = None;
    let mut rows = Vec::with_capacity(batch.messages.len());
    let mut needs_check = false;
    let mut last_pending = None;
    // The message with the highest stream sequence, acked under `AckPolicy::All`. (`info()`
    // parses the reply subject, so it is read once per message.)
    let mut highest: Option<(u64, &jetstream::Message)> = None;
    for message in &batch.messages {
        let Ok(info) = message.info() else {
            // Not a JetStream delivery (no reply subject): nothing to ack either.
            tracing::error!(kind = %kind, subject = %message.subject, "message without jetstream metadata ignored");
            continue;
        };
        let sequence = info.stream_sequence;
        needs_check |= info.delivered > 1 || sequence <= watermark;
        last_pending = Some(info.pending);
        if highest.is_none_or(|(top, _)| sequence > top) {
            highest = Some((sequence, message));
        }
        if let Some(next) = next_delivery.as_deref_mut() {
            // Deliveries at or below `next` were covered by the last re-read.
            let delivery = info.consumer_sequence;
            if delivery > *next && gap.is_none() {
                gap = Some(*next);
            }
            *next = (*next).max(delivery + 1);
        }
        match Event::<O>::decode(&message.payload) {
            Ok(event) => rows.push(PendingRow {
                sequence,
                row: O::to_row(event, sequence),
            }),
            Err(error) => {
                publish_dead_letter(context, kind, message, sequence, &error).await?;
            }
        }
    }

    // A sink paused past its lease (a standby may have taken over and re-read this batch)
    // neither writes nor acks until a renewal proves nobody else holds the consumer.
    context.lease.confirm_held(&context.hard_stop).await?;
    let started = Instant::now();
    let rows = Arc::new(rows);
    let written =
        insert_with_retry::<O>(context, rows.clone(), needs_check, &batch.messages).await?;
    let insert_time = started.elapsed();
    let already_applied = rows.len() - written.len();
    // Every message is settled (inserted, already present, or safely dead-lettered): ack all.
    let mut ack_failures = 0_usize;
    match ack_mode {
        AckMode::EachMessage => {
            for message in &batch.messages {
                if message.ack().await.is_err() {
                    ack_failures += 1;
                }
            }
        }
        // With a gap the batch stays un-acked: the caller re-reads the range first.
        AckMode::HighestOfBatch if gap.is_some() => {}
        AckMode::HighestOfBatch => {
            // Acks every earlier message of the consumer too (module docs, rule 5).
            if let Some((_, message)) = highest {
                context.lease.confirm_held(&context.hard_stop).await?;
                if message.ack().await.is_err() {
                    ack_failures += batch.messages.len();
                }
            }
        }
        AckMode::Nothing => {}
    }
    if ack_failures > 0 {
        tracing::warn!(kind = %kind, ack_failures, "acks not sent; those messages will be redelivered and skipped by the check");
    }
    events::batch_written(kind, written.len(), already_applied, insert_time);
    if let Some(pending) = last_pending {
        events::consumer_pending(kind, pending);
    }
    context.health.set_ready("clickhouse");
    Ok(gap)
}

/// State carried across INSERT attempts of one batch.
#[derive(Default)]
struct AttemptState {
    attempt: u32,
    must_check: bool,
    previous_query_id: Option<String>,
}

/// Inserts the rows not yet in the table; returns the sequences this call wrote.
async fn insert_with_retry<O: StoredObservation>(
    context: &Arc<SinkContext>,
    rows: Arc<Vec<PendingRow<O::Row>>>,
    needs_check: bool,
    messages: &[jetstream::Message],
) -> Result<HashSet<u64>, ConsumeError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let kind = O::KIND;
    // A std mutex: it is only held for short updates, never across an await.
    let state = Arc::new(Mutex::new(AttemptState {
        must_check: needs_check,
        ..AttemptState::default()
    }));
    let batch_id: Arc<str> = batch_identity(kind, &rows).into();
    let attempt = || {
        next_attempt::<O>(
            context.clone(),
            rows.clone(),
            state.clone(),
            batch_id.clone(),
        )
    };
    let retried = retry(
        RetryPolicy::INSERT,
        &context.hard_stop,
        DatabaseError::class,
        attempt,
    );
    tokio::pin!(retried);
    let mut progress = progress_ticker(context.settings.consumer.ack_wait);
    loop {
        tokio::select! {
            result = &mut retried => {
                return match result {
                    Ok(written) => Ok(written),
                    Err(RetryError::Failed(source)) => Err(ConsumeError::Database { kind, source }),
                    Err(RetryError::Cancelled) => Err(ConsumeError::Interrupted { kind }),
                };
            }
            _ = progress.tick() => send_progress(messages).await,
        }
    }
}

/// One INSERT attempt; takes owned handles so the retried future borrows nothing.
async fn next_attempt<O: StoredObservation>(
    context: Arc<SinkContext>,
    rows: Arc<Vec<PendingRow<O::Row>>>,
    state: Arc<Mutex<AttemptState>>,
    batch_id: Arc<str>,
) -> Result<HashSet<u64>, DatabaseError> {
    let (query_id, must_check, previous) = {
        let mut state = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.attempt += 1;
        let query_id = format!("{batch_id}-{}", state.attempt);
        let previous = state.previous_query_id.replace(query_id.clone());
        let must_check = state.must_check;
        // Whatever happens to this attempt, the next one must look before it writes.
        state.must_check = true;
        (query_id, must_check, previous)
    };
    let result = attempt_insert::<O>(
        &context.database,
        context.settings.clickhouse.timeout,
        &rows,
        must_check,
        previous.as_deref(),
        &query_id,
        &batch_id,
    )
    .await;
    if let Err(error) = &result {
        context
            .health
            .set_not_ready("clickhouse", format!("{} insert failing: {error}", O::KIND));
    }
    result
}

/// Writes the rows of `rows` whose sequence is not in the table yet (all of them when
/// `must_check` is false: a first delivery above the watermark). Waits first for a previous
/// attempt's INSERT that may still be running. Returns the sequences written.
pub(crate) async fn attempt_insert<O: StoredObservation>(
    database: &Database,
    timeout: std::time::Duration,
    rows: &[PendingRow<O::Row>],
    must_check: bool,
    previous_query_id: Option<&str>,
    query_id: &str,
    batch_id: &str,
) -> Result<HashSet<u64>, DatabaseError> {
    if let Some(previous) = previous_query_id {
        database.wait_until_finished(previous).await?;
    }
    let existing = if must_check {
        let first = rows.iter().map(|row| row.sequence).min().unwrap_or(0);
        let last = rows.iter().map(|row| row.sequence).max().unwrap_or(0);
        database.existing_sequences::<O>(first, last).await?
    } else {
        HashSet::new()
    };
    let mut missing_rows: Vec<&O::Row> = Vec::with_capacity(rows.len());
    let mut missing_sequences = HashSet::with_capacity(rows.len());
    for pending in rows {
        if !existing.contains(&pending.sequence) {
            missing_rows.push(&pending.row);
            missing_sequences.insert(pending.sequence);
        }
    }
    if missing_rows.is_empty() {
        return Ok(missing_sequences);
    }
    database
        .insert_rows::<O>(&missing_rows, query_id, batch_id, timeout)
        .await?;
    Ok(missing_sequences)
}

/// Identity of a batch: stream, sequence range and a hash of its sequences. Used as the
/// INSERT's query id prefix and as `insert_deduplication_token`.
pub(crate) fn batch_identity<R>(kind: Kind, rows: &[PendingRow<R>]) -> String {
    let mut digest = Sha256::new();
    for row in rows {
        digest.update(row.sequence.to_be_bytes());
    }
    let hash = digest.finalize();
    let first = rows.first().map(|row| row.sequence).unwrap_or(0);
    let last = rows.last().map(|row| row.sequence).unwrap_or(0);
    format!(
        "nomadwave-{}-{first}-{last}-{:02x}{:02x}{:02x}{:02x}",
        kind.stream_name(),
        hash[0],
        hash[1],
        hash[2],
        hash[3]
    )
}

async fn publish_dead_letter(
    context: &SinkContext,
    kind: Kind,
    message: &jetstream::Message,
    sequence: u64,
    error: &schema::DecodeError,
) -> Result<(), ConsumeError> {
    let reason = error.reason();
    let detail = runtime::config::error_line(error);
    let sequence_text = sequence.to_string();
    let outgoing = runtime::publish::dead_letter(
        kind,
        reason,
        &detail,
        // One dead letter per source message, however often it is redelivered.
        format!("deadletter-{}-{sequence}", kind.stream_name()),
        &[
            (dead_letter::SOURCE_STREAM, kind.stream_name()),
            (dead_letter::SOURCE_SEQUENCE, &sequence_text),
            (dead_letter::SOURCE_SUBJECT, &message.subject),
        ],
        message.payload.clone(),
    );
    let published = publish_with_id(
        &context.jetstream,
        outgoing,
        RetryPolicy::PUBLISH.named("dead_letter"),
        &context.hard_stop,
    )
    .await;
    match published {
        Ok(_) => {
            events::dead_lettered(kind, sequence, reason, &detail);
            Ok(())
        }
        Err(RetryError::Failed(source)) => Err(ConsumeError::DeadLetter {
            stream: kind.stream_name(),
            sequence,
            source,
        }),
        Err(RetryError::Cancelled) => Err(ConsumeError::Interrupted { kind }),
    }
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
