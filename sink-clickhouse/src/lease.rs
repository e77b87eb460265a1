//! One sink at a time per durable consumer.
//!
//! The sink acks with `AckPolicy::All`: acking a message acks every earlier one of the
//! consumer. That is only safe while no other process holds un-written messages of the same
//! consumer, so a sink first takes a lease: a key in the KV bucket [`LEASE_BUCKET`] named after
//! the consumer, holding the holder's id and lease time. The holder rewrites it (compare and
//! set on the revision) every quarter lease; a second sink waits as a standby until the key is
//! deleted (the holder stopped cleanly), names the standby itself (a restart of the same
//! Nomad allocation), or stays unchanged for one and a half lease times (the holder died).
//!
//! Timing uses each process's own monotonic clock, so host clocks need not agree: the holder
//! stops acking once a whole lease time has passed since its last successful renewal, which is
//! before any standby can have seen the key unchanged for 1.5 lease times.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::events;

/// KV bucket holding one lease per durable consumer name.
pub const LEASE_BUCKET: &str = "nomadwave_sink_leases";

/// What a lease key holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    ttl_ms: u64,
}

/// Why the lease could not be taken or was lost.
#[derive(Debug, Error)]
pub enum LeaseError {
    /// The bucket could not be declared or read.
    #[error("consumer lease {key} in KV bucket {LEASE_BUCKET}: {detail}")]
    Store {
        /// Lease key (the durable consumer name).
        key: String,
        /// What the server said.
        detail: String,
    },
    /// Another instance took the consumer over (this one could not renew in time).
    #[error("consumer lease {key} was taken over by {holder}; stopping so only one sink acks the consumer (a restart waits as a standby)")]
    Lost {
        /// Lease key.
        key: String,
        /// The new holder.
        holder: String,
    },
    /// Not renewed for a whole lease time when the drain timeout ended the wait.
    #[error("consumer lease {key} lapsed (not renewed for {ttl:?}) and the drain timeout expired; the batch stays un-acked and its messages are settled again by the next holder")]
    Lapsed {
        /// Lease key.
        key: String,
        /// The lease time.
        ttl: Duration,
    },
    /// Shutdown came while waiting for the lease.
    #[error("stopped while waiting for consumer lease {key}")]
    Cancelled {
        /// Lease key.
        key: String,
    },
}

struct LeaseState {
    revision: u64,
    renewed: Instant,
}

/// A held lease on a durable consumer; renewed in the background until released.
pub struct ConsumerLease {
    store: kv::Store,
    key: String,
    holder: String,
    ttl: Duration,
    state: Arc<Mutex<LeaseState>>,
    lost: CancellationToken,
    renewal: tokio::task::JoinHandle<()>,
}

impl ConsumerLease {
    /// Takes the lease on `consumer`, waiting as a standby while another live sink holds it.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Store`] when the bucket is unusable, [`LeaseError::Cancelled`] on shutdown.
    pub async fn acquire(
        jetstream: &jetstream::Context,
        consumer: &str,
        holder: &str,
        ttl: Duration,
        shutdown: &CancellationToken,
    ) -> Result<ConsumerLease, LeaseError> {
        let key = consumer.to_owned();
        let store = runtime::provision::ensure_kv(jetstream, LEASE_BUCKET, 1)
            .await
            .map_err(|error| store_error(&key, error))?;
        let record = LeaseRecord {
            holder: holder.to_owned(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let value = bytes::Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        // The revision of another holder's key and when this process first saw it.
        let mut watched: Option<(u64, Instant)> = None;
        let mut announced = false;
        events::lease_held(consumer, false);
        loop {
            // A write that succeeds happened after this instant: the lease counts from here.
            let attempt_started = Instant::now();
            let entry = store
                .entry(key.as_str())
                .await
                .map_err(|error| store_error(&key, error))?;
            let live = entry.filter(|entry| entry.operation == kv::Operation::Put);
            let attempt = match live {
                None => store
                    .create(key.as_str(), value.clone())
                    .await
                    .map_err(|error| error.to_string()),
                Some(entry) => {
                    let other = serde_json::from_slice::<LeaseRecord>(&entry.value).ok();
                    let other_ttl = other
                        .as_ref()
                        .map_or(ttl, |other| Duration::from_millis(other.ttl_ms));
                    let mine = other.as_ref().is_some_and(|other| other.holder == holder);
                    let (seen_revision, first_seen) = match watched {
                        Some((revision, at)) if revision == entry.revision => (revision, at),
                        _ => (entry.revision, Instant::now()),
                    };
                    watched = Some((seen_revision, first_seen));
                    if mine || first_seen.elapsed() >= other_ttl.mul_f64(1.5) {
                        if !mine {
                            tracing::warn!(
                                consumer,
                                previous = other.as_ref().map_or("?", |other| other.holder.as_str()),
                                "consumer lease not renewed for 1.5 lease times; taking the consumer over"
                            );
                        }
                        store
                            .update(key.as_str(), value.clone(), entry.revision)
                            .await
                            .map_err(|error| error.to_string())
                    } else {
                        if !announced {
                            tracing::info!(
                                consumer,
                                holder = other.as_ref().map_or("?", |other| other.holder.as_str()),
                                "another sink holds the consumer: waiting as a standby"
                            );
                            announced = true;
                        }
                        Err(String::new())
                    }
                }
            };
            match attempt {
                Ok(revision) => {
                    tracing::info!(consumer, holder, ?ttl, "consumer lease taken");
                    events::lease_held(consumer, true);
                    return Ok(ConsumerLease::start_renewal(
                        store,
                        key,
                        holder,
                        ttl,
                        LeaseState {
                            revision,
                            renewed: attempt_started,
                        },
                        value,
                    ));
                }
                // Lost a race with another standby, or waiting: look again shortly.
                Err(_) => {
                    let pause = (ttl / 4).min(Duration::from_secs(1));
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(LeaseError::Cancelled { key }),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    fn start_renewal(
        store: kv::Store,
        key: String,
        holder: &str,
        ttl: Duration,
        state: LeaseState,
        value: bytes::Bytes,
    ) -> ConsumerLease {
        let state = Arc::new(Mutex::new(state));
        let lost = CancellationToken::new();
        let renewal = tokio::spawn(renew(
            store.clone(),
            key.clone(),
            holder.to_owned(),
            ttl,
            value,
            state.clone(),
            lost.clone(),
        ));
        ConsumerLease {
            store,
            key,
            holder: holder.to_owned(),
            ttl,
            state,
            lost,
            renewal,
        }
    }

    /// Waits until this sink may write and ack: the lease was renewed within the last lease
    /// time. After a lapse (NATS unreachable, process paused) that is the next successful
    /// renewal, whose compare-and-set proves no other sink took the lease meanwhile.
    ///
    /// # Errors
    ///
    /// [`LeaseError::Lost`] once another instance took the lease, or
    /// [`LeaseError::Lapsed`] when `give_up` fires first.
    pub async fn confirm_held(&self, give_up: &CancellationToken) -> Result<(), LeaseError> {
        let mut warned = false;
        loop {
            if self.lost.is_cancelled() {
                return Err(LeaseError::Lost {
                    key: self.key.clone(),
                    holder: "another sink".to_owned(),
                });
            }
            if self.lock().renewed.elapsed() < self.ttl {
                return Ok(());
            }
            if !warned {
                tracing::warn!(consumer = %self.key, ttl = ?self.ttl, "consumer lease lapsed; holding writes and acks until it is renewed");
                warned = true;
            }
            tokio::select! {
                () = give_up.cancelled() => {
                    return Err(LeaseError::Lapsed { key: self.key.clone(), ttl: self.ttl });
                }
                () = self.lost.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Fires when the lease is lost for good.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives the lease up (after the last ack), so a standby takes over at once.
    pub async fn release(&self) {
        self.renewal.abort();
        let revision = self.lock().revision;
        events::lease_held(&self.key, false);
        match self
            .store
            .delete_expect_revision(self.key.as_str(), Some(revision))
            .await
        {
            Ok(()) => {
                tracing::info!(consumer = %self.key, holder = %self.holder, "consumer lease released")
            }
            Err(error) => {
                tracing::warn!(consumer = %self.key, %error, "consumer lease not released; a standby takes over after 1.5 lease times")
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn renew(
    store: kv::Store,
    key: String,
    holder: String,
    ttl: Duration,
    value: bytes::Bytes,
    state: Arc<Mutex<LeaseState>>,
    lost: CancellationToken,
) {
    let period = ttl / 4;
    loop {
        tokio::time::sleep(period).await;
        let revision = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .revision;
        let attempt_started = Instant::now();
        let renewed = |next: u64| {
            let mut state = state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.revision = next;
            state.renewed = attempt_started;
        };
        match store.update(key.as_str(), value.clone(), revision).await {
            Ok(next) => renewed(next),
            Err(error) => {
                let current = store.entry(key.as_str()).await;
                let taken_by = match &current {
                    Ok(Some(entry)) if entry.revision != revision => {
                        let record = (entry.operation == kv::Operation::Put)
                            .then(|| serde_json::from_slice::<LeaseRecord>(&entry.value).ok())
                            .flatten();
                        match record {
                            // Our own write went through though its reply was lost.
                            Some(record) if record.holder == holder => {
                                renewed(entry.revision);
                                continue;
                            }
                            Some(record) => Some(record.holder),
                            None => Some("(deleted)".to_owned()),
                        }
                    }
                    Ok(None) => Some("(deleted)".to_owned()),
                    _ => None,
                };
                match taken_by {
                    Some(other) => {
                        tracing::error!(consumer = %key, holder = %other, "consumer lease taken over; stopping");
                        events::lease_held(&key, false);
                        lost.cancel();
                        return;
                    }
                    _ => {
                        tracing::warn!(consumer = %key, %error, "consumer lease not renewed; retrying (acks stop once a lease time passes)");
                    }
                }
            }
        }
    }
}

fn store_error(key: &str, error: impl std::fmt::Display) -> LeaseError {
    LeaseError::Store {
        key: key.to_owned(),
        detail: error.to_string(),
    }
}
