//! Positions without acks (`--positions table`).
//!
//! In this mode the sink reads each stream through an ephemeral `AckPolicy::None` consumer,
//! so nats-server keeps no per-message ack state. What is written is what the table holds:
//! rule **check** looks up every sequence at or below the table's highest one for the
//! incarnation, so reading from too early a point never writes a row twice. Where to start
//! is a hint kept beside the lease: after each settled batch the sink records the highest
//! sequence it has settled, per consumer name and stream, in the KV bucket
//! [`POSITION_BUCKET`]. The record is always at or behind what the table holds (it is written
//! only after the INSERT returned), so resuming from it re-reads at most the batches written
//! since, and those are checked. A record of another incarnation (the stream was recreated)
//! or none at all resumes from the durable consumer's ack floor when one of that name exists
//! (the switch from `--positions acks`), else from the stream's first message.
//!
//! A sink writes its starting point as a record before it reads (and again, at 0, when the
//! stream was recreated), so a replay into the live tables always sees it: a sink in this
//! mode has settled through its record ([`recorded_for_stream`]; a record of an earlier
//! incarnation counts as 0), which bounds the replay as a durable consumer's ack floor does.
//! A sink taken out of service for good leaves its record behind, and with it the bound:
//! delete the key (`nats kv del nomadwave_sink_positions <consumer>.<STREAM>`).

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use schema::Kind;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::delivery::{Incarnation, StreamSequence};

/// KV bucket holding one settled position per sink consumer name and stream.
pub const POSITION_BUCKET: &str = "nomadwave_sink_positions";

/// Where a sink keeps its read positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PositionMode {
    /// A durable consumer with `AckPolicy::All`: nats-server tracks every delivery until the
    /// batch's ack (the default; partitioned sinks need it).
    Acks,
    /// An ephemeral `AckPolicy::None` consumer; the table decides what is written and a KV
    /// record says where to resume (unpartitioned sinks only).
    Table,
}

/// What a position record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledPosition {
    /// The stream incarnation the sequence belongs to.
    pub incarnation: u64,
    /// Every message of the consumer up to this sequence is in the table or dead-lettered.
    pub settled_through: u64,
}

/// A position store that cannot be used.
#[derive(Debug, Error)]
#[error("position {key} in KV bucket {POSITION_BUCKET}: {detail}")]
pub struct PositionError {
    /// The key (or `*` for the bucket).
    pub key: String,
    /// What failed.
    pub detail: String,
}

/// The key of `consumer`'s position in `kind`'s stream.
pub fn key(consumer: &str, kind: Kind) -> String {
    format!("{consumer}.{}", kind.stream_name())
}

/// Where reading resumes: after the record when it is of the stream's current incarnation,
/// else after the durable consumer's ack floor when one exists, else at the first message.
/// Too early is safe (rule **check**); too late would lose messages, so nothing here guesses
/// ahead of what a record or an ack floor proves.
pub fn resume_from(
    current: Incarnation,
    recorded: Option<SettledPosition>,
    durable_ack_floor: Option<StreamSequence>,
) -> StreamSequence {
    match recorded {
        Some(position) if position.incarnation == current.0 => {
            StreamSequence(position.settled_through.saturating_add(1))
        }
        _ => StreamSequence(
            durable_ack_floor
                .map_or(0, |floor| floor.0)
                .saturating_add(1),
        ),
    }
}

/// The positions bucket.
#[derive(Clone)]
pub struct PositionStore {
    store: kv::Store,
}

impl PositionStore {
    /// Opens (creating if missing) the bucket.
    ///
    /// # Errors
    ///
    /// A [`PositionError`] when the bucket cannot be declared.
    pub async fn open(jetstream: &jetstream::Context) -> Result<PositionStore, PositionError> {
        runtime::provision::ensure_kv(jetstream, POSITION_BUCKET, 1)
            .await
            .map(|store| PositionStore { store })
            .map_err(|error| PositionError {
                key: "*".to_owned(),
                detail: error.to_string(),
            })
    }

    /// The record of `consumer` in `kind`'s stream, if any.
    ///
    /// # Errors
    ///
    /// A [`PositionError`] when it cannot be read; an unreadable value reads as none (it is
    /// only a hint: resuming earlier is safe).
    pub async fn read(
        &self,
        consumer: &str,
        kind: Kind,
    ) -> Result<Option<SettledPosition>, PositionError> {
        let key = key(consumer, kind);
        let value = self.store.get(&key).await.map_err(|error| PositionError {
            key: key.clone(),
            detail: error.to_string(),
        })?;
        Ok(value.and_then(|bytes| parse(&key, &bytes)))
    }

    /// Records that `consumer` has settled `kind`'s stream through `position`.
    ///
    /// # Errors
    ///
    /// A [`PositionError`] when the put fails (the next batch's record covers it).
    pub async fn record(
        &self,
        consumer: &str,
        kind: Kind,
        position: SettledPosition,
    ) -> Result<(), PositionError> {
        let key = key(consumer, kind);
        let body = serde_json::to_vec(&position).map_err(|error| PositionError {
            key: key.clone(),
            detail: error.to_string(),
        })?;
        self.store
            .put(&key, body.into())
            .await
            .map(|_revision| ())
            .map_err(|error| PositionError {
                key,
                detail: error.to_string(),
            })
    }
}

/// What a record says is settled of `incarnation`'s life.
pub fn settled_in(position: SettledPosition, incarnation: Incarnation) -> StreamSequence {
    if position.incarnation == incarnation.0 {
        StreamSequence(position.settled_through)
    } else {
        StreamSequence(0)
    }
}

fn parse(key: &str, bytes: &[u8]) -> Option<SettledPosition> {
    match serde_json::from_slice(bytes) {
        Ok(position) => Some(position),
        Err(error) => {
            tracing::warn!(key, %error, "unreadable position record ignored; reading resumes earlier and the check skips what is written");
            None
        }
    }
}

/// Every consumer's record for `kind`'s stream, as (consumer name, settled through in
/// `incarnation`). A record of another incarnation counts as settled through 0: its sink has
/// not written anything of this life yet (it reads a recreated stream from its first
/// message). A missing bucket means no sink uses this mode.
///
/// # Errors
///
/// A [`PositionError`] when the bucket exists but cannot be listed or read.
pub async fn recorded_for_stream(
    jetstream: &jetstream::Context,
    kind: Kind,
    incarnation: Incarnation,
) -> Result<Vec<(String, StreamSequence)>, PositionError> {
    let Ok(store) = jetstream.get_key_value(POSITION_BUCKET).await else {
        return Ok(Vec::new());
    };
    let failed = |detail: String| PositionError {
        key: "*".to_owned(),
        detail,
    };
    let mut keys = store
        .keys()
        .await
        .map_err(|error| failed(error.to_string()))?;
    let suffix = format!(".{}", kind.stream_name());
    let mut found = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|error| failed(error.to_string()))?;
        let Some(consumer) = key.strip_suffix(&suffix) else {
            continue;
        };
        let value = store
            .get(&key)
            .await
            .map_err(|error| failed(error.to_string()))?;
        if let Some(position) = value.and_then(|bytes| parse(&key, &bytes)) {
            found.push((consumer.to_owned(), settled_in(position, incarnation)));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Incarnation = Incarnation(1_700_000_000_000_000_000);

    #[test]
    fn rule_resume_after_a_record_of_this_incarnation() {
        let recorded = SettledPosition {
            incarnation: NOW.0,
            settled_through: 41_999,
        };
        assert_eq!(
            resume_from(NOW, Some(recorded), Some(StreamSequence(10))),
            StreamSequence(42_000),
            "the record wins over an older ack floor"
        );
    }

    #[test]
    fn rule_resume_ignores_a_record_of_an_earlier_life() {
        let old_life = SettledPosition {
            incarnation: NOW.0 - 1,
            settled_through: 1_000_000,
        };
        assert_eq!(
            resume_from(NOW, Some(old_life), None),
            StreamSequence(1),
            "a recreated stream starts again at its first message"
        );
        assert_eq!(
            resume_from(NOW, Some(old_life), Some(StreamSequence(500))),
            StreamSequence(501)
        );
    }

    #[test]
    fn rule_resume_from_the_durable_floor_when_switching_modes() {
        assert_eq!(
            resume_from(NOW, None, Some(StreamSequence(7_000))),
            StreamSequence(7_001)
        );
        assert_eq!(resume_from(NOW, None, None), StreamSequence(1));
    }

    #[test]
    fn rule_a_record_of_another_life_has_settled_nothing_of_this_one() {
        let old_life = SettledPosition {
            incarnation: NOW.0 - 1,
            settled_through: 9_000,
        };
        assert_eq!(settled_in(old_life, NOW), StreamSequence(0));
        let this_life = SettledPosition {
            incarnation: NOW.0,
            settled_through: 9_000,
        };
        assert_eq!(settled_in(this_life, NOW), StreamSequence(9_000));
    }

    #[test]
    fn records_round_trip_and_a_bad_one_reads_as_none() {
        let position = SettledPosition {
            incarnation: NOW.0,
            settled_through: 12,
        };
        let bytes = serde_json::to_vec(&position).unwrap();
        assert_eq!(parse("k", &bytes), Some(position));
        assert_eq!(parse("k", b"{\"incarnation\":\"x\"}"), None);
        assert_eq!(key("sink-clickhouse", Kind::Wave), "sink-clickhouse.WAVE");
    }
}
