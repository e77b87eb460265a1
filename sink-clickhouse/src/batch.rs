//! One batch, from collection to acknowledgement.
//!
//! [`Batch`] gathers messages until [`BatchPolicy`] cuts it; [`settle_batch`] gives every
//! message an outcome (decoded and written, found already written, or dead-lettered) and then
//! acknowledges as [`delivery::ack_decision`] says.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use runtime::retry::RetryError;
use schema::Event;

use crate::config::BatchPolicy;
use crate::consume::{ConsumeError, SinkContext};
use crate::dead_letter::{self, DeadLetterFailure, Rejected};
use crate::delivery::{
    self, AckDecision, AckMode, CheckScope, ConsumerSequence, DeliveryTracker, Incarnation,
    StreamPosition, StreamSequence,
};
use crate::events;
use crate::rows::{StoredObservation, UnstorableValue};
use crate::writer::{self, PendingRow, WriteTarget};

/// What settling needs of a message's JetStream metadata, parsed once from its reply subject
/// (a second parse cost 5 % of the sink's instructions per message under callgrind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Stream sequence.
    pub stream_sequence: StreamSequence,
    /// Consumer sequence.
    pub consumer_sequence: ConsumerSequence,
    /// Delivery attempts.
    pub delivered: i64,
    /// Messages the server still holds for the consumer.
    pub pending: u64,
}

impl Delivery {
    /// The metadata of `message`; `None` for a message without JetStream metadata.
    pub fn of(message: &jetstream::Message) -> Option<Delivery> {
        message.info().ok().map(|info| Delivery {
            stream_sequence: StreamSequence(info.stream_sequence),
            consumer_sequence: ConsumerSequence(info.consumer_sequence),
            delivered: info.delivered,
            pending: info.pending,
        })
    }
}

/// A batch being collected: messages in delivery order plus their payload size, and the stream
/// incarnation they were pulled from.
pub struct Batch {
    /// The messages.
    pub messages: Vec<jetstream::Message>,
    /// Each message's metadata, in the same order.
    deliveries: Vec<Option<Delivery>>,
    bytes: usize,
    started: Option<Instant>,
    /// The incarnation of the stream the messages came from.
    pub incarnation: Incarnation,
}

impl Batch {
    /// An empty batch of `incarnation`.
    pub fn new(incarnation: Incarnation) -> Batch {
        Batch {
            messages: Vec::new(),
            deliveries: Vec::new(),
            bytes: 0,
            started: None,
            incarnation,
        }
    }

    /// Adds a message with its metadata ([`Delivery::of`]); the first starts the batch's age.
    pub fn push(&mut self, message: jetstream::Message, delivery: Option<Delivery>) {
        self.started.get_or_insert_with(Instant::now);
        self.bytes += message.payload.len();
        self.messages.push(message);
        self.deliveries.push(delivery);
    }

    /// The metadata of the last message.
    pub fn last_delivery(&self) -> Option<Delivery> {
        self.deliveries.last().copied().flatten()
    }

    /// Whether the batch reached its row or byte bound.
    pub fn is_full(&self, policy: &BatchPolicy) -> bool {
        self.messages.len() >= policy.max_rows || self.bytes >= policy.max_bytes
    }

    /// When the batch must be cut by age, once it has a message.
    pub fn deadline(&self, policy: &BatchPolicy) -> Option<tokio::time::Instant> {
        self.started
            .map(|started| tokio::time::Instant::from_std(started + policy.max_age))
    }

    /// Takes the batch, leaving an empty one of the same incarnation.
    pub fn take(&mut self) -> Batch {
        std::mem::replace(self, Batch::new(self.incarnation))
    }
}

/// How a batch is settled.
pub struct Settlement<'a> {
    /// Rows of which incarnations count as already written.
    pub scope: CheckScope,
    /// The highest sequence of this incarnation in the table at startup (rule **check**).
    pub watermark: StreamSequence,
    /// How to acknowledge.
    pub ack_mode: AckMode,
    /// The consumer's deliveries (under `AckPolicy::All`).
    pub tracker: Option<&'a mut DeliveryTracker>,
}

/// Settles one batch and acknowledges it. Returns the first missing consumer sequence when a
/// delivery did not reach this sink (then nothing was acked: rule **gap**).
///
/// # Errors
///
/// A [`ConsumeError`] for a permanent failure, a lost lease, or a stop while retrying.
#[tracing::instrument(skip_all, fields(kind = %O::KIND, messages = batch.messages.len()))]
pub async fn settle_batch<O: StoredObservation>(
    context: &SinkContext,
    batch: Batch,
    mut settlement: Settlement<'_>,
) -> Result<Option<ConsumerSequence>, ConsumeError> {
    let kind = O::KIND;
    let stop = context.shutdown.abandoned();
    let mut gap = None;
    let mut rows = Vec::with_capacity(batch.messages.len());
    let mut must_check = false;
    let mut last_pending = None;
    let mut highest: Option<(StreamSequence, &jetstream::Message)> = None;
    for (message, delivered) in batch.messages.iter().zip(&batch.deliveries) {
        let Some(info) = delivered else {
            tracing::error!(kind = %kind, subject = %message.subject, "message without jetstream metadata ignored");
            continue;
        };
        let sequence = info.stream_sequence;
        must_check |= delivery::needs_check(info.delivered, sequence, settlement.watermark);
        last_pending = Some(info.pending);
        if highest.is_none_or(|(top, _)| sequence > top) {
            highest = Some((sequence, message));
        }
        if let Some(tracker) = settlement.tracker.as_deref_mut() {
            let observed = tracker.observe(info.consumer_sequence);
            gap = gap.or(observed);
        }
        let position = StreamPosition {
            incarnation: batch.incarnation,
            sequence,
        };
        let converted = Event::<O>::decode(&message.payload)
            .map_err(|error| (error.reason(), runtime::config::error_line(&error)))
            .and_then(|event| {
                O::to_row(event, position)
                    .map_err(|error: UnstorableValue| (UnstorableValue::REASON, error.to_string()))
            });
        match converted {
            Ok(row) => rows.push(PendingRow { sequence, row }),
            Err((reason, detail)) => {
                let rejected = Rejected {
                    kind,
                    incarnation: batch.incarnation,
                    sequence,
                    subject: &message.subject,
                    payload: message.payload.clone(),
                    reason,
                    detail,
                };
                dead_letter::publish(&context.jetstream, Some(&context.health), stop, rejected)
                    .await
                    .map_err(|failure| match failure {
                        DeadLetterFailure::Failed(source) => ConsumeError::DeadLetter {
                            stream: kind.stream_name(),
                            sequence: sequence.0,
                            source,
                        },
                        DeadLetterFailure::Cancelled => ConsumeError::Interrupted { kind },
                    })?;
            }
        }
    }

    // A sink paused past its lease (a standby may have taken over and re-read this batch)
    // neither writes nor acks until a renewal proves nobody else holds the consumer.
    context.lease.confirm_held(stop).await?;
    let started = Instant::now();
    let target = WriteTarget {
        database: &context.database,
        scope: settlement.scope,
        policy: runtime::RetryPolicy::INSERT,
        stop,
        health: Some(&context.health),
        label: "",
    };
    let write = writer::write_rows::<O>(&target, &rows, must_check);
    let outcome = match settlement.ack_mode {
        AckMode::Nothing => write.await,
        _ => keep_alive(write, &batch.messages, context.settings.consumer.ack_wait).await,
    }
    .map_err(|error| match error {
        RetryError::Failed(source) => ConsumeError::Database { kind, source },
        RetryError::Cancelled => ConsumeError::Interrupted { kind },
    })?;
    let insert_time = started.elapsed();

    let decision = delivery::ack_decision(
        settlement.ack_mode,
        highest.map(|(sequence, _)| sequence),
        gap,
    );
    let mut ack_failures = 0_usize;
    match decision {
        AckDecision::Each => {
            for message in &batch.messages {
                if message.ack().await.is_err() {
                    ack_failures += 1;
                }
            }
        }
        AckDecision::Highest(_) => {
            if let Some((_, message)) = highest {
                context.lease.confirm_held(stop).await?;
                if message.ack().await.is_err() {
                    ack_failures += batch.messages.len();
                }
            }
        }
        AckDecision::HoldForReread { .. } | AckDecision::Nothing => {}
    }
    if ack_failures > 0 {
        tracing::warn!(kind = %kind, ack_failures, "acks not sent; those messages will be redelivered and skipped by the check");
    }
    events::batch_written(kind, outcome.written, outcome.already_present, insert_time);
    if let Some(pending) = last_pending {
        events::consumer_pending(kind, pending);
    }
    Ok(gap)
}

/// Runs `work` while sending progress acks for `messages`, so JetStream neither redelivers
/// them nor counts them lost while an INSERT is retried.
pub async fn keep_alive<T>(
    work: impl std::future::Future<Output = T>,
    messages: &[jetstream::Message],
    ack_wait: Duration,
) -> T {
    tokio::pin!(work);
    let mut progress = progress_ticker(ack_wait);
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = progress.tick() => send_progress(messages).await,
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
