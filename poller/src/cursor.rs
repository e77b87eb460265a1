//! Each target's cursor: what it has already published, kept in a JetStream KV bucket and
//! advanced with compare-and-set only after JetStream acknowledged the events.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What one target has published.
///
/// `latest` is the newest `observed_at` published. `recent` maps every `observed_at` within the
/// revision window behind `latest` to the id of the event published for it, so a revised value
/// (same time, new content, new id) is published again while an unchanged one is not, and a
/// late record inside the window is still published.
///
/// `contested` holds the times for which two writers (two pollers racing on one site during a
/// deploy) published different revisions: their order in the stream, and so which one `FINAL`
/// keeps (the later stream sequence), is unknown, so the next poll publishes the upstream's
/// current revision again with a fresh message id, which makes it the stream's last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Newest observation time published.
    pub latest: Option<DateTime<Utc>>,
    /// Event id published per observation time, within the window behind `latest`.
    pub recent: BTreeMap<DateTime<Utc>, String>,
    /// Times two writers published different revisions of (absent in cursors written before).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub contested: std::collections::BTreeSet<DateTime<Utc>>,
}

/// What to do with one parsed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// New, late-but-in-window, or revised: publish it.
    Publish,
    /// Older than the revision window behind the newest published record.
    Stale,
    /// Exactly this event was published already.
    Unchanged,
    /// Another writer published a different revision of this time: publish the current one
    /// again under a fresh message id, so the stream's duplicate window cannot drop it and it
    /// lands after both.
    Republish,
}

impl Decision {
    /// Metric label for skipped records.
    pub fn label(self) -> &'static str {
        match self {
            Decision::Publish => "publish",
            Decision::Stale => "stale",
            Decision::Unchanged => "unchanged",
            Decision::Republish => "republish",
        }
    }
}

impl Cursor {
    /// Whether an event observed at `observed_at` with id `event_id` should be published.
    pub fn decide(&self, observed_at: DateTime<Utc>, event_id: &str, window: Duration) -> Decision {
        if self.contested.contains(&observed_at) {
            return Decision::Republish;
        }
        if self
            .recent
            .get(&observed_at)
            .is_some_and(|id| id == event_id)
        {
            return Decision::Unchanged;
        }
        match self.latest {
            Some(latest) if observed_at < floor(latest, window) => Decision::Stale,
            _ => Decision::Publish,
        }
    }

    /// The `Nats-Msg-Id` to publish `event_id` with, given `decision` (`Publish` or
    /// `Republish`) and `now_ms` (for a contested time).
    ///
    /// A first publication of a time uses the event id, so a retry or a restart inside the
    /// duplicate window is dropped by the stream. A revision (another id was published for the
    /// time) uses `<new>.after.<old>`: still stable across retries, but never equal to an id
    /// published before, so going back to a revision seen earlier (two pollers that fetched
    /// at different moments) is not dropped as a duplicate and lands last. A contested time
    /// adds `now_ms`: its history is unknown, so only a fresh id is sure to land.
    pub fn message_id(
        &self,
        observed_at: DateTime<Utc>,
        event_id: &str,
        decision: Decision,
        now_ms: i64,
    ) -> String {
        match (decision, self.recent.get(&observed_at)) {
            (Decision::Republish, _) => format!("{event_id}.again.{now_ms}"),
            (_, Some(previous)) if previous != event_id => format!("{event_id}.after.{previous}"),
            _ => event_id.to_owned(),
        }
    }

    /// Records that the event was acknowledged, and forgets what fell out of the window.
    pub fn record(&mut self, observed_at: DateTime<Utc>, event_id: &str, window: Duration) {
        self.recent.insert(observed_at, event_id.to_owned());
        self.contested.remove(&observed_at);
        if self.latest.is_none_or(|latest| observed_at > latest) {
            self.latest = Some(observed_at);
        }
        self.prune(window);
    }

    /// Folds in another writer's cursor (after a compare-and-set conflict).
    ///
    /// A time both published with different ids becomes contested: which revision the table
    /// keeps is unknown until it is published once more ([`Decision::Republish`]).
    pub fn merge(&mut self, other: &Cursor, window: Duration) {
        for (observed_at, id) in &other.recent {
            match self.recent.get(observed_at) {
                None => {
                    self.recent.insert(*observed_at, id.clone());
                }
                Some(ours) if ours != id => {
                    self.contested.insert(*observed_at);
                }
                Some(_) => {}
            }
        }
        self.contested.extend(other.contested.iter().copied());
        self.latest = self.latest.max(other.latest);
        self.prune(window);
    }

    fn prune(&mut self, window: Duration) {
        if let Some(latest) = self.latest {
            let floor = floor(latest, window);
            self.recent.retain(|observed_at, _| *observed_at >= floor);
            self.contested.retain(|observed_at| *observed_at >= floor);
        }
    }
}

fn floor(latest: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    latest
        .checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Why a cursor could not be read or written.
#[derive(Debug, Error)]
pub enum CursorError {
    /// The KV bucket refused or is unreachable.
    #[error("cursor {key} in bucket {bucket}: {detail}")]
    Store {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What happened.
        detail: String,
    },
    /// The stored value is not a cursor (written by something else?).
    #[error("cursor {key} in bucket {bucket} is not readable ({detail}); delete the key to start over from the upstream's whole response")]
    Corrupt {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// serde's message.
        detail: String,
    },
}

/// A cursor as read, with the KV revision to compare-and-set against.
#[derive(Debug, Clone, Default)]
pub struct StoredCursor {
    /// The cursor.
    pub cursor: Cursor,
    /// KV revision it was read at; `None` when the key does not exist yet.
    pub revision: Option<u64>,
}

/// The cursors of one feed in one KV bucket; key `<feed>.<site>`.
#[derive(Clone)]
pub struct CursorStore {
    store: kv::Store,
    bucket: String,
    feed: &'static str,
}

impl CursorStore {
    /// Wraps an opened bucket.
    pub fn new(store: kv::Store, bucket: &str, feed: &'static str) -> CursorStore {
        CursorStore {
            store,
            bucket: bucket.to_owned(),
            feed,
        }
    }

    /// The KV key of `site`: characters KV keys do not allow become `_`.
    pub fn key(&self, site: &str) -> String {
        let site: String = site
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}.{site}", self.feed)
    }

    /// Reads `site`'s cursor (empty when none was written yet).
    ///
    /// # Errors
    ///
    /// [`CursorError`] when the bucket cannot be read or holds something else.
    pub async fn load(&self, site: &str) -> Result<StoredCursor, CursorError> {
        let key = self.key(site);
        let entry = self
            .store
            .entry(&key)
            .await
            .map_err(|error| self.store_error(&key, error.to_string()))?;
        let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) else {
            return Ok(StoredCursor::default());
        };
        let cursor =
            serde_json::from_slice(&entry.value).map_err(|error| CursorError::Corrupt {
                bucket: self.bucket.clone(),
                key: key.clone(),
                detail: error.to_string(),
            })?;
        Ok(StoredCursor {
            cursor,
            revision: Some(entry.revision),
        })
    }

    /// Writes `stored.cursor` if the key is still at `stored.revision`; on a conflict (another
    /// instance moved it) merges the other cursor in and tries again. Returns the new revision.
    ///
    /// # Errors
    ///
    /// [`CursorError`] when the bucket refuses for another reason.
    pub async fn save(
        &self,
        site: &str,
        stored: &mut StoredCursor,
        window: Duration,
    ) -> Result<(), CursorError> {
        let key = self.key(site);
        for _ in 0..8 {
            let value = bytes::Bytes::from(serde_json::to_vec(&stored.cursor).unwrap_or_default());
            let written = match stored.revision {
                Some(revision) => self
                    .store
                    .update(&key, value, revision)
                    .await
                    .map_err(|error| error.to_string()),
                None => self
                    .store
                    .create(&key, value)
                    .await
                    .map_err(|error| error.to_string()),
            };
            match written {
                Ok(revision) => {
                    stored.revision = Some(revision);
                    return Ok(());
                }
                Err(detail) => {
                    let current = self.load(site).await?;
                    if current.revision == stored.revision {
                        // Not a conflict: the store itself failed.
                        return Err(self.store_error(&key, detail));
                    }
                    tracing::debug!(key, "cursor moved under us; merging and retrying");
                    stored.cursor.merge(&current.cursor, window);
                    stored.revision = current.revision;
                }
            }
        }
        Err(self.store_error(&key, "kept conflicting with another writer".to_owned()))
    }

    fn store_error(&self, key: &str, detail: String) -> CursorError {
        CursorError::Store {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 5, 5, hour, 0, 0)
            .single()
            .expect("valid time")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn publishes_new_revised_and_late_in_window_records_only() {
        let mut cursor = Cursor::default();
        assert_eq!(cursor.decide(at(1), "a", HOUR), Decision::Publish);
        cursor.record(at(5), "e", 2 * HOUR);
        cursor.record(at(4), "d", 2 * HOUR);
        assert_eq!(cursor.decide(at(5), "e", 2 * HOUR), Decision::Unchanged);
        assert_eq!(
            cursor.decide(at(5), "e2", 2 * HOUR),
            Decision::Publish,
            "revision"
        );
        assert_eq!(
            cursor.decide(at(3), "c", 2 * HOUR),
            Decision::Publish,
            "late, in window"
        );
        assert_eq!(cursor.decide(at(2), "b", 2 * HOUR), Decision::Stale);
        assert_eq!(cursor.decide(at(6), "f", 2 * HOUR), Decision::Publish);
    }

    #[test]
    fn window_bounds_what_is_remembered() {
        let mut cursor = Cursor::default();
        for hour in 0..10 {
            cursor.record(at(hour), &format!("id{hour}"), 2 * HOUR);
        }
        assert_eq!(cursor.latest, Some(at(9)));
        assert_eq!(cursor.recent.len(), 3, "hours 7, 8, 9");
        let json = serde_json::to_string(&cursor).expect("serializes");
        let back: Cursor = serde_json::from_str(&json).expect("round trips");
        assert_eq!(back, cursor);
    }

    #[test]
    fn merge_keeps_both_writers_progress() {
        let mut ours = Cursor::default();
        ours.record(at(3), "c", 4 * HOUR);
        let mut theirs = Cursor::default();
        theirs.record(at(5), "e", 4 * HOUR);
        ours.merge(&theirs, 4 * HOUR);
        assert_eq!(ours.latest, Some(at(5)));
        assert_eq!(ours.decide(at(3), "c", 4 * HOUR), Decision::Unchanged);
        assert_eq!(ours.decide(at(5), "e", 4 * HOUR), Decision::Unchanged);
    }

    #[test]
    fn racing_revisions_are_contested_until_published_again() {
        // Two pollers during a deploy: one published revision 1 of 05:00, the other revision 2.
        let mut ours = Cursor::default();
        ours.record(at(5), "rev1", 4 * HOUR);
        let mut theirs = Cursor::default();
        theirs.record(at(5), "rev2", 4 * HOUR);
        ours.merge(&theirs, 4 * HOUR);
        // Whichever id the merge kept, the next poll publishes the current revision again.
        assert_eq!(ours.decide(at(5), "rev2", 4 * HOUR), Decision::Republish);
        assert_eq!(ours.decide(at(5), "rev1", 4 * HOUR), Decision::Republish);
        // The mark survives a further merge (the other writer saves next) and a round trip.
        let mut stored = Cursor::default();
        stored.merge(&ours, 4 * HOUR);
        let back: Cursor = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        assert_eq!(back.decide(at(5), "rev2", 4 * HOUR), Decision::Republish);
        ours.record(at(5), "rev2", 4 * HOUR);
        assert_eq!(ours.decide(at(5), "rev2", 4 * HOUR), Decision::Unchanged);
        // Same id on both sides is no contest; a cursor from before the field reads as none.
        let mut same = Cursor::default();
        same.record(at(6), "x", 4 * HOUR);
        let other = same.clone();
        same.merge(&other, 4 * HOUR);
        assert_eq!(same.decide(at(6), "x", 4 * HOUR), Decision::Unchanged);
        let old: Cursor =
            serde_json::from_str(r#"{"latest":"2025-05-05T06:00:00Z","recent":{}}"#).unwrap();
        assert!(old.contested.is_empty());
    }

    #[test]
    fn revisions_never_reuse_an_earlier_message_id() {
        let mut cursor = Cursor::default();
        let id = |cursor: &Cursor, event: &str| {
            let decision = cursor.decide(at(5), event, 4 * HOUR);
            cursor.message_id(at(5), event, decision, 1_000)
        };
        assert_eq!(
            id(&cursor, "rev2"),
            "rev2",
            "first publication: the event id"
        );
        cursor.record(at(5), "rev2", 4 * HOUR);
        // A poller that fetched before the revision publishes rev1 over rev2 …
        assert_eq!(id(&cursor, "rev1"), "rev1.after.rev2");
        cursor.record(at(5), "rev1", 4 * HOUR);
        // … and the next poll's rev2 is not dropped as the duplicate of the first "rev2".
        assert_eq!(id(&cursor, "rev2"), "rev2.after.rev1");
        cursor.contested.insert(at(5));
        assert_eq!(id(&cursor, "rev2"), "rev2.again.1000");
    }
}
