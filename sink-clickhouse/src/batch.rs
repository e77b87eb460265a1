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
        Delivery::from_reply(message.reply.as_deref()?)
    }

    /// Reads the numbers settling needs from a `$JS.ACK` reply subject, in either form of
    /// ADR-15: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.
    /// <pending>`, or with `<domain>.<account hash>` before the stream and optionally more
    /// tokens after `<pending>`. `None` for anything else, as async-nats' `Message::info`.
    ///
    /// Written here rather than taken from `info()`, which also turns the publish time into a
    /// date the sink never reads: that conversion was most of the parse's 1,800 instructions
    /// per message under callgrind.
    pub fn from_reply(reply: &str) -> Option<Delivery> {
        let tokens = reply.strip_prefix("$JS.ACK.")?.as_bytes();
        let mut ends = [0_usize; 9];
        let count = token_ends(tokens, &mut ends);
        let token = |index: usize| {
            let start = if index == 0 { 0 } else { ends[index - 1] + 1 };
            &tokens[start..ends[index]]
        };
        // Seven tokens: the original form; nine or more: domain and account hash first.
        let first = match count {
            7 => 2,
            9 => 4,
            _ => return None,
        };
        decimal(token(first + 3))?;
        Some(Delivery {
            stream_sequence: StreamSequence(decimal(token(first + 1))?),
            consumer_sequence: ConsumerSequence(decimal(token(first + 2))?),
            delivered: i64::try_from(decimal(token(first))?).ok()?,
            pending: decimal(token(first + 4))?,
        })
    }
}

/// Fills `ends` with where each of the first `ends.len()` `.`-separated tokens of `tokens`
/// ends and returns how many it filled: a subject of fewer tokens ends its last at
/// `tokens.len()`, one of more has its `ends.len()`-th token end at a dot.
///
/// The dots are found eight bytes at a time (a byte loop, or `str::split`, cost as much as the
/// publish-time conversion this parse replaced). With `x` a word XOR eight dots, a byte of `x`
/// is zero exactly at a dot; `((x & LOW_BITS) + LOW_BITS) | x` sets a byte's high bit exactly
/// when the byte is not zero (the sum stays below 0x100 in every byte, so nothing carries
/// into the next), and the complement's high bits are the dots.
fn token_ends<const N: usize>(tokens: &[u8], ends: &mut [usize; N]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const LOW_BITS: u64 = ONES * 0x7f;
    let mut count = 0;
    let mut offset = 0;
    while let Some(chunk) = tokens.get(offset..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*chunk) ^ (ONES * u64::from(b'.'));
        let mut dots = !(((word & LOW_BITS) + LOW_BITS) | word | LOW_BITS);
        while dots != 0 {
            ends[count] = offset + (dots.trailing_zeros() / 8) as usize;
            count += 1;
            if count == N {
                return count;
            }
            dots &= dots - 1;
        }
        offset += 8;
    }
    for (at, byte) in tokens.iter().enumerate().skip(offset) {
        if *byte == b'.' {
            ends[count] = at;
            count += 1;
            if count == N {
                return count;
            }
        }
    }
    ends[count] = tokens.len();
    count + 1
}

/// A reply-subject token of ASCII digits as a number; `None` when empty, not digits or above
/// `u64::MAX` (the server writes plain decimal integers).
fn decimal(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    // Up to 19 digits cannot leave `u64` (its maximum has 20), so those need no checked
    // arithmetic: the checks were half of this parse under callgrind.
    if token.len() < 20 {
        let mut value = 0_u64;
        for byte in token {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value = value * 10 + u64::from(digit);
        }
        return Some(value);
    }
    token.iter().try_fold(0_u64, |value, byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
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
    /// Room made for this many messages when the first arrives: growing the vectors message
    /// by message copied them over and over (3 % of the sink's instructions per message).
    expected_rows: usize,
    /// The incarnation of the stream the messages came from.
    pub incarnation: Incarnation,
}

impl Batch {
    /// An empty batch of `incarnation` that will hold up to `policy.max_rows` messages.
    pub fn new(incarnation: Incarnation, policy: &BatchPolicy) -> Batch {
        Batch::empty(incarnation, policy.max_rows)
    }

    fn empty(incarnation: Incarnation, expected_rows: usize) -> Batch {
        Batch {
            messages: Vec::new(),
            deliveries: Vec::new(),
            bytes: 0,
            started: None,
            expected_rows,
            incarnation,
        }
    }

    /// Adds a message with its metadata ([`Delivery::of`]); the first starts the batch's age.
    pub fn push(&mut self, message: jetstream::Message, delivery: Option<Delivery>) {
        if self.started.is_none() {
            // Only once there is a message, so an idle sink holds no empty room.
            self.started = Some(Instant::now());
            self.messages.reserve_exact(self.expected_rows);
            self.deliveries.reserve_exact(self.expected_rows);
        }
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
        std::mem::replace(self, Batch::empty(self.incarnation, self.expected_rows))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(stream: u64, consumer: u64, delivered: i64, pending: u64) -> Delivery {
        Delivery {
            stream_sequence: StreamSequence(stream),
            consumer_sequence: ConsumerSequence(consumer),
            delivered,
            pending,
        }
    }

    #[test]
    fn both_reply_subject_forms_give_the_same_numbers() {
        let original = "$JS.ACK.WAVE.sink-clickhouse.2.1045.17.1764820800123456789.499";
        let with_domain =
            "$JS.ACK._.ACCHASH.WAVE.sink-clickhouse.2.1045.17.1764820800123456789.499.r4nd0m";
        let exactly_eleven = "$JS.ACK.hub.ACCHASH.WAVE.sink.2.1045.17.1764820800123456789.499";
        for reply in [original, with_domain, exactly_eleven] {
            assert_eq!(
                Delivery::from_reply(reply),
                Some(delivery(1045, 17, 2, 499)),
                "{reply}"
            );
        }
    }

    #[test]
    fn subjects_that_are_not_jetstream_metadata_give_none() {
        for reply in [
            "_INBOX.abc.def",
            "$JS.ACK.WAVE.sink.1.2.3.4",
            "$JS.ACK.WAVE.sink.1.2.3.4.5.6",
            "$JS.ACK.WAVE.sink.x.2.3.4.5",
            "$JS.ACK.WAVE.sink.1.2.3.4.",
            "$JS.ACK.WAVE.sink.1.-2.3.4.5",
            "$JS.ACK.WAVE.sink.1.18446744073709551616.3.4.5",
            "$JS.ACK.WAVE.sink.9223372036854775808.2.3.4.5",
            "$JS.ACK.WAVE.sink.1.2.3.later.5",
        ] {
            assert_eq!(Delivery::from_reply(reply), None, "{reply}");
        }
    }

    /// The parse as the reply subject's definition reads: split at every dot.
    fn from_reply_by_split(reply: &str) -> Option<Delivery> {
        let tokens: Vec<&str> = reply.strip_prefix("$JS.ACK.")?.split('.').collect();
        let first = match tokens.len() {
            7 => 2,
            9.. => 4,
            _ => return None,
        };
        let number = |index: usize| -> Option<u64> {
            let token: &str = tokens[index];
            (!token.is_empty() && token.bytes().all(|byte| byte.is_ascii_digit()))
                .then(|| token.parse().ok())
                .flatten()
        };
        number(first + 3)?;
        Some(Delivery {
            stream_sequence: StreamSequence(number(first + 1)?),
            consumer_sequence: ConsumerSequence(number(first + 2)?),
            delivered: i64::try_from(number(first)?).ok()?,
            pending: number(first + 4)?,
        })
    }

    proptest::proptest! {
        #[test]
        fn reply_subjects_parse_as_splitting_them_at_dots_does(
            tokens in proptest::collection::vec("[0-9]{0,21}|[a-zA-Z_.-]{0,12}|[0-9.]{0,9}", 0..14),
        ) {
            let reply = format!("$JS.ACK.{}", tokens.join("."));
            proptest::prop_assert_eq!(Delivery::from_reply(&reply), from_reply_by_split(&reply), "{}", reply);
        }

        #[test]
        fn server_shaped_reply_subjects_parse_as_splitting_them_does(
            names in proptest::collection::vec("[a-zA-Z0-9_-]{1,12}", 2..=4),
            numbers in proptest::collection::vec("[0-9]{1,20}", 5),
            tail in proptest::collection::vec("[a-z0-9]{1,6}", 0..3),
        ) {
            let reply = format!("$JS.ACK.{}.{}", names.join("."), numbers.join("."));
            let reply = tail.iter().fold(reply, |reply, token| format!("{reply}.{token}"));
            let parsed = Delivery::from_reply(&reply);
            proptest::prop_assert_eq!(parsed, from_reply_by_split(&reply), "{}", reply);
            let fits = numbers.iter().all(|number| number.parse::<u64>().is_ok())
                && numbers[0].parse::<i64>().is_ok();
            // The two forms with `numbers` where the server puts them.
            if names.len() == 4 || (names.len() == 2 && tail.is_empty()) {
                proptest::prop_assert_eq!(parsed.is_some(), fits, "{}", reply);
            }
        }
    }

    #[test]
    fn the_largest_sequences_are_read() {
        let reply = format!("$JS.ACK.WAVE.sink.1.{}.{}.0.0", u64::MAX, u64::MAX - 1);
        assert_eq!(
            Delivery::from_reply(&reply),
            Some(delivery(u64::MAX, u64::MAX - 1, 1, 0))
        );
    }
}
