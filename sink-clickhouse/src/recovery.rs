//! Rule **settle before first ack**, carried out: under `AckPolicy::All` the next ack would
//! also ack every message delivered before it, so whatever the consumer delivered but nobody
//! acked (a previous holder's batches, deliveries that went to another receiver) is read again
//! and written with the exact check before this sink acks anything.
//!
//! The range lies between the consumer's ack floor and its last delivered sequence; it is read
//! through an ephemeral consumer with the durable's filter. That reader may expire while a
//! batch waits for ClickHouse (its inactivity threshold); it is then made again from the next
//! unread sequence (`nomadwave_sink_reread_readers_recreated_total`), never given up on.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;

use crate::batch::{settle_batch, Batch, Delivery, Settlement};
use crate::consume::{ConsumeError, SinkContext};
use crate::delivery::{
    self, AckMode, CheckScope, ConsumerSequence, DeliveryTracker, Incarnation, StreamSequence,
};
use crate::events;
use crate::rows::StoredObservation;

/// Consecutive failures to (re)make or read the reader before the stream stops with an error.
const READER_ATTEMPTS: u32 = 10;
/// How long a re-read waits for the next message of a fetch before it takes its reader for
/// gone: a healthy fetch of stored messages answers within milliseconds.
const FETCH_SILENCE: Duration = Duration::from_secs(10);

/// A durable consumer's deliveries and what is needed to re-read its un-acked range.
pub struct Recovery {
    /// The stream.
    pub stream: jetstream::stream::Stream,
    /// The durable consumer.
    pub consumer: consumer::PullConsumer,
    /// Its filter subject (empty: the whole stream).
    pub filter: String,
    /// Its deliveries since the last re-read.
    pub tracker: DeliveryTracker,
}

impl Recovery {
    /// A recovery for `consumer`; [`Recovery::run`] must come before the first ack.
    pub fn new(
        stream: jetstream::stream::Stream,
        consumer: consumer::PullConsumer,
        filter: String,
    ) -> Recovery {
        Recovery {
            stream,
            consumer,
            filter,
            tracker: DeliveryTracker::after_reread(ConsumerSequence(0)),
        }
    }

    /// Re-reads and settles the un-acked range, then restarts the delivery count after it.
    /// Returns the last delivered stream sequence.
    ///
    /// # Errors
    ///
    /// A [`ConsumeError`] when the consumer cannot be read or a batch cannot be settled.
    pub async fn run<O: StoredObservation>(
        &mut self,
        context: &SinkContext,
        scope: CheckScope,
    ) -> Result<StreamSequence, ConsumeError> {
        let kind = O::KIND;
        let info = self
            .consumer
            .info()
            .await
            .map_err(|error| ConsumeError::Pull {
                stream: kind.stream_name(),
                consumer: context.settings.consumer.durable_name.clone(),
                source: error.into(),
            })?
            .clone();
        let delivered = StreamSequence(info.delivered.stream_sequence);
        if let Some(range) = delivery::unacked_range(
            StreamSequence(info.ack_floor.stream_sequence),
            delivered,
            info.num_ack_pending,
        ) {
            tracing::info!(
                kind = %kind,
                un_acked = info.num_ack_pending,
                first = range.first.0,
                last = range.last.0,
                "messages delivered but not acked; re-reading them before the next ack"
            );
            let read = self
                .reread::<O>(context, scope, range.first, range.last)
                .await?;
            events::recovered(kind, read, range.first.0, range.last.0);
        }
        self.tracker =
            DeliveryTracker::after_reread(ConsumerSequence(info.delivered.consumer_sequence));
        Ok(delivered)
    }

    async fn reread<O: StoredObservation>(
        &self,
        context: &SinkContext,
        scope: CheckScope,
        first: StreamSequence,
        last: StreamSequence,
    ) -> Result<u64, ConsumeError> {
        let kind = O::KIND;
        let incarnation = scope.current;
        let policy = context.settings.batch;
        let mut next = first;
        let mut read = 0_u64;
        let mut failures = 0_u32;
        let mut reader = None;
        let mut batch = Batch::new(incarnation, &policy);
        while next <= last {
            let recovery_error = |source: async_nats::Error| ConsumeError::Recovery {
                stream: kind.stream_name(),
                first: first.0,
                last: last.0,
                source,
            };
            let current = match reader.take() {
                Some(current) => current,
                None => match self
                    .make_reader(
                        context.settings.consumer.reread_inactive_threshold,
                        kind,
                        incarnation,
                        next,
                    )
                    .await
                {
                    Ok(made) => made,
                    Err(error) => {
                        failures += 1;
                        if failures >= READER_ATTEMPTS {
                            return Err(recovery_error(error));
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            let fetched = current
                .fetch()
                .max_messages(policy.max_rows.clamp(1, 10_000))
                .messages()
                .await;
            let mut fetched = match fetched {
                Ok(fetched) => fetched,
                Err(error) => {
                    failures += 1;
                    events::reread_reader_recreated(kind, next.0, &error.to_string());
                    if failures >= READER_ATTEMPTS {
                        return Err(recovery_error(error.into()));
                    }
                    continue;
                }
            };
            let mut got_any = false;
            let mut broken = false;
            loop {
                // A reader that expired while a batch was being settled (a ClickHouse outage
                // longer than --reread-inactive-threshold) never answers again: a silent
                // fetch is a broken reader, recreated at `next`.
                let message = match tokio::time::timeout(FETCH_SILENCE, fetched.next()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_silent) => {
                        failures += 1;
                        events::reread_reader_recreated(
                            kind,
                            next.0,
                            &format!("no answer for {FETCH_SILENCE:?}"),
                        );
                        if failures >= READER_ATTEMPTS {
                            return Err(recovery_error(
                                format!("the re-read's reader gave no answer for {FETCH_SILENCE:?}, {failures} times").into(),
                            ));
                        }
                        broken = true;
                        break;
                    }
                };
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        failures += 1;
                        events::reread_reader_recreated(kind, next.0, &error.to_string());
                        if failures >= READER_ATTEMPTS {
                            return Err(recovery_error(error));
                        }
                        broken = true;
                        break;
                    }
                };
                let Some(delivery) = Delivery::of(&message) else {
                    continue;
                };
                got_any = true;
                failures = 0;
                let sequence = delivery.stream_sequence;
                if sequence > last {
                    next = StreamSequence(last.0 + 1);
                    break;
                }
                next = StreamSequence(sequence.0 + 1);
                read += 1;
                batch.push(message, Some(delivery));
                if batch.is_full(&policy) {
                    self.settle::<O>(context, scope, batch.take()).await?;
                }
            }
            if broken {
                let _ = self
                    .stream
                    .delete_consumer(&current.cached_info().name)
                    .await;
                continue;
            }
            if !got_any {
                let mut current = current;
                if let Err(error) = current.info().await {
                    // The reader itself is gone (expired): an empty fetch proves nothing.
                    failures += 1;
                    events::reread_reader_recreated(kind, next.0, &error.to_string());
                    if failures >= READER_ATTEMPTS {
                        return Err(recovery_error(error.into()));
                    }
                    continue;
                }
                // Nothing more in range (the rest was deleted by retention or is not ours).
                let _ = self
                    .stream
                    .delete_consumer(&current.cached_info().name)
                    .await;
                break;
            }
            if next > last {
                let _ = self
                    .stream
                    .delete_consumer(&current.cached_info().name)
                    .await;
                break;
            }
            reader = Some(current);
        }
        if !batch.messages.is_empty() {
            self.settle::<O>(context, scope, batch.take()).await?;
        }
        Ok(read)
    }

    async fn make_reader(
        &self,
        inactive_threshold: Duration,
        kind: schema::Kind,
        incarnation: Incarnation,
        start: StreamSequence,
    ) -> Result<consumer::PullConsumer, async_nats::Error> {
        let reader = self
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.0,
                },
                filter_subject: self.filter.clone(),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold,
                description: Some(format!(
                    "sink-clickhouse: re-reading {kind} (incarnation {incarnation}) from {}",
                    start.0
                )),
                ..Default::default()
            })
            .await?;
        Ok(reader)
    }

    async fn settle<O: StoredObservation>(
        &self,
        context: &SinkContext,
        scope: CheckScope,
        batch: Batch,
    ) -> Result<(), ConsumeError> {
        settle_batch::<O>(
            context,
            batch,
            Settlement {
                scope,
                // Everything re-read may be in the table: always check.
                watermark: StreamSequence(u64::MAX),
                ack_mode: AckMode::Nothing,
                tracker: None,
            },
        )
        .await
        .map(|_gap| ())
    }
}
