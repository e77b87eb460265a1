//! One sink at a time per durable consumer.
//!
//! The sink acks with `AckPolicy::All`: acking a message acks every earlier one of the
//! consumer. That is only safe while no other process holds un-written messages of the same
//! consumer, so a sink first takes a lease: a key in the KV bucket [`LEASE_BUCKET`] named after
//! the consumer, holding the holder's instance id, a token drawn by its process at start, and
//! the lease time. The holder rewrites it (compare and set on the revision) every quarter lease;
//! a second sink waits as a standby until the key is deleted (the holder stopped cleanly) or
//! stays unchanged for one and a half lease times (the holder died). The token makes the
//! record unique per process: two processes started with one `--instance-id` (a restarted
//! allocation whose predecessor is still alive, an operator's copy-paste) are two holders, and
//! the second waits like any standby. The decisions are pure ([`Standby::decide`],
//! [`after_failed_renewal`]) and tested with paused time.
//!
//! Timing uses each process's own monotonic clock, so host clocks need not agree: the holder
//! stops acking once a whole lease time has passed since its last successful renewal, which is
//! before any standby can have seen the key unchanged for 1.5 lease times.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::events;

/// KV bucket holding one lease per durable consumer name.
pub const LEASE_BUCKET: &str = "nomadwave_sink_leases";

/// What a lease key holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The instance id the operator gave (or the Nomad allocation id).
    pub holder: String,
    /// Drawn once per process, so two processes with one instance id are told apart. Records
    /// written before tokens existed read as the empty token, which no process draws.
    #[serde(default)]
    pub token: String,
    /// The holder's lease time, in milliseconds.
    pub ttl_ms: u64,
}

impl LeaseRecord {
    /// This process's record for `holder`, with a token no other process has.
    pub fn for_this_process(holder: &str, ttl: Duration) -> LeaseRecord {
        LeaseRecord {
            holder: holder.to_owned(),
            token: process_token(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Whether `other` was written by the process this record belongs to.
    pub fn same_process(&self, other: &LeaseRecord) -> bool {
        !self.token.is_empty() && self.holder == other.holder && self.token == other.token
    }

    /// How an operator reads the holder in logs: the instance id, and the token when the id alone
    /// could name this process too.
    fn describe(&self, me: &LeaseRecord) -> String {
        if self.holder == me.holder {
            format!(
                "{} (another process with this instance id, token {})",
                self.holder, self.token
            )
        } else {
            self.holder.clone()
        }
    }
}

/// A token unique to this process: its pid, its start time and a per-process random seed.
pub(crate) fn process_token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos());
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            format!("{}-{nanos:x}-{random:016x}", std::process::id())
        })
        .clone()
}

/// The lease key as one read saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// No key, or a deleted one.
    Free,
    /// A live key at `revision`; `record` is `None` when its value is unreadable.
    Held {
        /// The key's revision.
        revision: u64,
        /// The record, when it parses.
        record: Option<LeaseRecord>,
    },
}

/// What a standby does after one read of the key.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseStep {
    /// Nobody holds it: create the key.
    Create,
    /// Write over the key at `revision` (compare and set): its holder is gone.
    TakeOver {
        /// Revision the write must find.
        revision: u64,
        /// Who held it, for the log.
        previous: String,
    },
    /// Someone else holds it and renewed within 1.5 of its lease times: look again later.
    Wait {
        /// Who holds it, for the log.
        holder: String,
    },
}

/// A waiting sink's memory of the key: which revision it saw and since when.
#[derive(Debug, Default)]
pub struct Standby {
    watched: Option<(u64, Instant)>,
}

impl Standby {
    /// The take-over rule. A key unchanged (same revision) for one and a half of its holder's
    /// lease times belongs to a holder that stopped renewing; a holder renews every quarter
    /// lease and stops acking after one whole lease without renewal, so by then it acks no more.
    /// Only a record written by this very process counts as ours; the same instance id with
    /// another token is another holder.
    pub fn decide(&mut self, observed: &Observed, me: &LeaseRecord, now: Instant) -> LeaseStep {
        let (revision, record) = match observed {
            Observed::Free => {
                self.watched = None;
                return LeaseStep::Create;
            }
            Observed::Held { revision, record } => (*revision, record.as_ref()),
        };
        let previous = record.map_or_else(|| "(unreadable record)".to_owned(), |r| r.describe(me));
        if record.is_some_and(|record| me.same_process(record)) {
            return LeaseStep::TakeOver { revision, previous };
        }
        let first_seen = match self.watched {
            Some((seen, at)) if seen == revision => at,
            _ => now,
        };
        self.watched = Some((revision, first_seen));
        let their_ttl = record.map_or(Duration::from_millis(me.ttl_ms), |record| {
            Duration::from_millis(record.ttl_ms)
        });
        if now.duration_since(first_seen) >= their_ttl.mul_f64(1.5) {
            LeaseStep::TakeOver { revision, previous }
        } else {
            LeaseStep::Wait { holder: previous }
        }
    }
}

/// What a renewal whose compare and set failed means, given a fresh read of the key.
#[derive(Debug, Clone, PartialEq)]
pub enum RenewalConflict {
    /// Our own write went through though its reply was lost: carry on from `revision`.
    StillOurs {
        /// The key's current revision.
        revision: u64,
    },
    /// Another process holds the key (or it was deleted): the lease is lost.
    TakenBy(String),
    /// Nothing shows a take-over (the write failed for another reason): retry.
    Unclear,
}

/// The renewal rule: a key changed since our last write is ours only if this very process
/// wrote it; a record naming our instance id with another token is another process's.
pub fn after_failed_renewal(
    current: Option<&Observed>,
    our_revision: u64,
    me: &LeaseRecord,
) -> RenewalConflict {
    match current {
        None => RenewalConflict::Unclear,
        Some(Observed::Free) => RenewalConflict::TakenBy("(deleted)".to_owned()),
        Some(Observed::Held { revision, .. }) if *revision == our_revision => {
            RenewalConflict::Unclear
        }
        Some(Observed::Held { revision, record }) => match record {
            Some(record) if me.same_process(record) => RenewalConflict::StillOurs {
                revision: *revision,
            },
            Some(record) => RenewalConflict::TakenBy(record.describe(me)),
            None => RenewalConflict::TakenBy("(unreadable record)".to_owned()),
        },
    }
}

fn observe(entry: Option<kv::Entry>) -> Observed {
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => Observed::Held {
            revision: entry.revision,
            record: serde_json::from_slice(&entry.value).ok(),
        },
        _ => Observed::Free,
    }
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
        let record = LeaseRecord::for_this_process(holder, ttl);
        let value = bytes::Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let mut standby = Standby::default();
        let mut announced = false;
        events::lease_held(consumer, false);
        loop {
            // A write that succeeds happened after this instant: the lease counts from here.
            let attempt_started = Instant::now();
            let entry = store
                .entry(key.as_str())
                .await
                .map_err(|error| store_error(&key, error))?;
            let attempt = match standby.decide(&observe(entry), &record, Instant::now()) {
                LeaseStep::Create => store
                    .create(key.as_str(), value.clone())
                    .await
                    .map_err(|error| error.to_string()),
                LeaseStep::TakeOver { revision, previous } => {
                    tracing::warn!(
                        consumer,
                        previous,
                        "consumer lease not renewed for 1.5 lease times; taking the consumer over"
                    );
                    store
                        .update(key.as_str(), value.clone(), revision)
                        .await
                        .map_err(|error| error.to_string())
                }
                LeaseStep::Wait { holder: other } => {
                    if !announced {
                        tracing::info!(
                            consumer,
                            holder = other,
                            "another sink holds the consumer: waiting as a standby"
                        );
                        announced = true;
                    }
                    Err(String::new())
                }
            };
            match attempt {
                Ok(revision) => {
                    tracing::info!(consumer, holder, token = %record.token, ?ttl, "consumer lease taken");
                    events::lease_held(consumer, true);
                    return Ok(ConsumerLease::start_renewal(
                        store,
                        key,
                        record,
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
        record: LeaseRecord,
        ttl: Duration,
        state: LeaseState,
        value: bytes::Bytes,
    ) -> ConsumerLease {
        let state = Arc::new(Mutex::new(state));
        let lost = CancellationToken::new();
        let holder = record.holder.clone();
        let renewal = tokio::spawn(renew(
            store.clone(),
            key.clone(),
            record,
            ttl,
            value,
            state.clone(),
            lost.clone(),
        ));
        ConsumerLease {
            store,
            key,
            holder,
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
    me: LeaseRecord,
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
        let error = match store.update(key.as_str(), value.clone(), revision).await {
            Ok(next) => {
                renewed(next);
                continue;
            }
            Err(error) => error,
        };
        let current = store.entry(key.as_str()).await.ok().map(observe);
        match after_failed_renewal(current.as_ref(), revision, &me) {
            RenewalConflict::StillOurs { revision } => renewed(revision),
            RenewalConflict::TakenBy(other) => {
                tracing::error!(consumer = %key, holder = %other, "consumer lease taken over; stopping");
                events::lease_held(&key, false);
                lost.cancel();
                return;
            }
            RenewalConflict::Unclear => {
                tracing::warn!(consumer = %key, %error, "consumer lease not renewed; retrying (acks stop once a lease time passes)");
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn other_process(holder: &str) -> LeaseRecord {
        LeaseRecord {
            holder: holder.to_owned(),
            token: "4242-another-process".to_owned(),
            ttl_ms: 10_000,
        }
    }

    fn held(revision: u64, record: &LeaseRecord) -> Observed {
        Observed::Held {
            revision,
            record: Some(record.clone()),
        }
    }

    #[test]
    fn rule_lease_free_key_is_created() {
        let me = LeaseRecord::for_this_process("sink-a", TTL);
        let mut standby = Standby::default();
        assert_eq!(
            standby.decide(&Observed::Free, &me, Instant::now()),
            LeaseStep::Create
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rule_lease_same_instance_id_in_another_process_is_another_holder() {
        let me = LeaseRecord::for_this_process("sink-a", TTL);
        let twin = other_process("sink-a");
        assert!(!me.same_process(&twin));
        let mut standby = Standby::default();
        let key = held(7, &twin);
        assert!(matches!(
            standby.decide(&key, &me, Instant::now()),
            LeaseStep::Wait { holder } if holder.contains("another process with this instance id")
        ));
        tokio::time::advance(TTL.mul_f64(1.5) - Duration::from_millis(1)).await;
        assert!(matches!(
            standby.decide(&key, &me, Instant::now()),
            LeaseStep::Wait { .. }
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(
            standby.decide(&key, &me, Instant::now()),
            LeaseStep::TakeOver { revision: 7, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rule_lease_a_renewal_restarts_the_standbys_wait() {
        let me = LeaseRecord::for_this_process("sink-b", TTL);
        let holder = other_process("sink-a");
        let mut standby = Standby::default();
        assert!(matches!(
            standby.decide(&held(1, &holder), &me, Instant::now()),
            LeaseStep::Wait { .. }
        ));
        tokio::time::advance(TTL).await;
        // The holder renewed: a new revision, seen fresh.
        assert!(matches!(
            standby.decide(&held(2, &holder), &me, Instant::now()),
            LeaseStep::Wait { .. }
        ));
        tokio::time::advance(TTL).await;
        assert!(matches!(
            standby.decide(&held(2, &holder), &me, Instant::now()),
            LeaseStep::Wait { .. }
        ));
        tokio::time::advance(TTL / 2).await;
        assert!(matches!(
            standby.decide(&held(2, &holder), &me, Instant::now()),
            LeaseStep::TakeOver { revision: 2, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rule_lease_waits_for_the_holders_own_lease_time() {
        let me = LeaseRecord::for_this_process("sink-b", Duration::from_secs(2));
        let holder = other_process("sink-a");
        let mut standby = Standby::default();
        standby.decide(&held(3, &holder), &me, Instant::now());
        // 1.5 × my 2 s has passed, but the holder's lease is 10 s.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(
            standby.decide(&held(3, &holder), &me, Instant::now()),
            LeaseStep::Wait { .. }
        ));
    }

    #[test]
    fn rule_lease_only_this_process_record_is_ours() {
        let me = LeaseRecord::for_this_process("sink-a", TTL);
        let again = LeaseRecord::for_this_process("sink-a", TTL);
        assert!(me.same_process(&again), "one token per process");
        let legacy: LeaseRecord =
            serde_json::from_str(r#"{"holder":"sink-a","ttl_ms":10000}"#).unwrap();
        assert!(
            !me.same_process(&legacy),
            "a record from before tokens is another process's"
        );
        let mut standby = Standby::default();
        assert!(matches!(
            standby.decide(&held(9, &me), &me, Instant::now()),
            LeaseStep::TakeOver { revision: 9, .. }
        ));
    }

    #[test]
    fn rule_renewal_conflict_naming_our_id_from_another_process_is_lost() {
        let me = LeaseRecord::for_this_process("sink-a", TTL);
        let twin = other_process("sink-a");
        match after_failed_renewal(Some(&held(5, &twin)), 4, &me) {
            RenewalConflict::TakenBy(holder) => assert!(holder.contains("sink-a"), "{holder}"),
            other => panic!("a twin's write was taken as ours: {other:?}"),
        }
    }

    #[test]
    fn rule_renewal_own_write_whose_reply_was_lost_is_kept() {
        let me = LeaseRecord::for_this_process("sink-a", TTL);
        assert_eq!(
            after_failed_renewal(Some(&held(5, &me)), 4, &me),
            RenewalConflict::StillOurs { revision: 5 }
        );
    }

    #[test]
    fn rule_renewal_deleted_key_is_lost_and_unread_key_is_retried() {
        let me = LeaseRecord::for_this_process("sink-a", TTL);
        assert!(matches!(
            after_failed_renewal(Some(&Observed::Free), 4, &me),
            RenewalConflict::TakenBy(_)
        ));
        assert_eq!(after_failed_renewal(None, 4, &me), RenewalConflict::Unclear);
        assert_eq!(
            after_failed_renewal(Some(&held(4, &me)), 4, &me),
            RenewalConflict::Unclear
        );
    }
}
